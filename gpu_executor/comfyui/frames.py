"""ComfyUI websocket frames, decoded: JSON text messages and binary preview images.

Binary frames start with a big-endian u32 event type:
- 1 (PREVIEW_IMAGE, the legacy format): a u32 image format (1 = JPEG, 2 = PNG), then the image. It names neither
  the prompt nor the node: it may belong to any prompt the server runs, including one without a client id.
- 4 (PREVIEW_IMAGE_WITH_METADATA, sent once the client negotiated `supports_preview_metadata`): a u32 length, that
  many bytes of JSON metadata (`prompt_id`, `node_id`, `display_node_id`, `image_type`, ...), then the image.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
_LEGACY_FORMATS = {1: "image/jpeg", 2: "image/png"}


class FrameError(ValueError):
    """A frame that does not follow ComfyUI's protocol (it is skipped, never trusted)."""


@dataclass(frozen=True)
class Message:
    """A JSON frame: {"type": ..., "data": {...}}."""

    type: str
    data: dict[str, Any]

    @property
    def prompt_id(self) -> str | None:
        value = self.data.get("prompt_id")
        return value if isinstance(value, str) else None


@dataclass(frozen=True)
class BinaryImage:
    """A preview (or a SaveImageWebsocket output) image. `prompt_id` and `node_id` are None for type 1."""

    event_type: int
    content_type: str
    data: bytes
    prompt_id: str | None = None
    node_id: str | None = None


Frame = Message | BinaryImage


def decode_text(text: str) -> Message:
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise FrameError(f"a text frame is not JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("type"), str):
        raise FrameError("a text frame has no type")
    data = document.get("data")
    return Message(document["type"], data if isinstance(data, dict) else {})


def decode_binary(payload: bytes) -> BinaryImage:
    if len(payload) < 8:
        raise FrameError(f"a binary frame of {len(payload)} bytes is too short")
    event_type, word = struct.unpack_from(">II", payload)
    if event_type == PREVIEW_IMAGE:
        return BinaryImage(event_type, _LEGACY_FORMATS.get(word, "image/jpeg"), payload[8:])
    if event_type == PREVIEW_IMAGE_WITH_METADATA:
        end = 8 + word
        if end > len(payload):
            raise FrameError("a preview frame's metadata runs past its end")
        try:
            metadata = json.loads(payload[8:end])
        except ValueError as exc:
            raise FrameError(f"a preview frame's metadata is not JSON: {exc}") from None
        if not isinstance(metadata, dict):
            raise FrameError("a preview frame's metadata is not an object")
        prompt_id, node_id = metadata.get("prompt_id"), metadata.get("display_node_id") or metadata.get("node_id")
        return BinaryImage(event_type, str(metadata.get("image_type") or "image/jpeg"), payload[end:],
                           prompt_id if isinstance(prompt_id, str) else None,
                           str(node_id) if node_id is not None else None)
    raise FrameError(f"unknown binary event type {event_type}")
