"""Recorded websocket frames of the ComfyUI transcripts, decoded by the backend's own frame decoders."""

from __future__ import annotations

import base64
from typing import Any

from gpu_executor.comfyui.frames import BinaryImage, Frame, Message, decode_binary
from tests.fixtures.comfyui_replay.transcripts import read_transcript


def frames(scenario: str) -> list[Frame]:
    """Every frame the server sent in a scenario, in order (all sockets of the scenario)."""
    found: list[Frame] = []
    for record in read_transcript(scenario):
        if record["kind"] != "ws_recv":
            continue
        frame = record["frame"]
        if frame.get("binary"):
            found.append(decode_binary(base64.b64decode(frame["b64"])))
        else:
            found.append(Message(frame["type"], frame.get("data") or {}))
    return found


def posted(scenario: str, index: int = 0) -> dict[str, Any]:
    """The index-th POST /prompt body of a scenario."""
    bodies = [r["body"] for r in read_transcript(scenario) if r["kind"] == "http_request" and r["path"] == "/prompt"]
    body: dict[str, Any] = bodies[index]
    return body


def prompt_id(scenario: str, index: int = 0) -> str:
    """The prompt id the server answered the index-th POST /prompt with."""
    records = read_transcript(scenario)
    requests = [r["req"] for r in records if r["kind"] == "http_request" and r["path"] == "/prompt"]
    for record in records:
        if record["kind"] == "http_response" and record["req"] == requests[index]:
            return str(record["body"]["prompt_id"])
    raise LookupError(f"{scenario} has no answer to POST /prompt #{index}")


def history_entry(scenario: str, prompt: str) -> dict[str, Any]:
    """The recorded GET /history/{prompt} entry (the last one: the finished prompt's)."""
    records = read_transcript(scenario)
    requests = {r["req"] for r in records if r["kind"] == "http_request" and r["path"] == f"/history/{prompt}"}
    entries = [r["body"][prompt] for r in records
               if r["kind"] == "http_response" and r["req"] in requests and prompt in (r["body"] or {})]
    entry: dict[str, Any] = entries[-1]
    return entry


def is_image(frame: Frame) -> bool:
    return isinstance(frame, BinaryImage)
