"""A finished prompt's outputs → files in the job's output and temp directories, which ExecutionRunner uploads.

ComfyUI output nodes report files as UI entries `{filename, subfolder, type}` under a key naming their kind
("images", "gifs", "video", "audio", "3d", "meshes", ... custom nodes add their own): each is fetched with /view,
whatever the key. `type` "output" lands in the output directory, anything else ("temp" previews) in the temp
directory, as the built-in engine does. Text outputs ({"text": [...]}, e.g. PreviewAny) are written as .txt
files, and images an output node only sent over the websocket (SaveImageWebsocket) as image files.
"""

from __future__ import annotations

import asyncio
import mimetypes
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from gpu_executor.comfyui.translate import WebsocketImage
from gpu_executor.engine.events import OutputRef

TEXT_KIND = "text"
WEBSOCKET_KIND = "websocket_images"

Download = Callable[[str, str, str, Path], Awaitable[None]]  # (filename, subfolder, type, destination)


class UnsafeOutputNameError(ValueError):
    """ComfyUI named an output file with a path that would leave the job's directories."""


@dataclass(frozen=True)
class FileOutput:
    ref: OutputRef

    def destination(self, output_dir: Path, temp_dir: Path) -> Path:
        root = output_dir if self.ref.type == "output" else temp_dir
        return root.joinpath(*PurePosixPath(self.ref.subfolder).parts, self.ref.filename)


def _safe_part(value: Any, what: str, *, allow_empty: bool = False) -> str:
    text = str(value if value is not None else "").replace("\\", "/").strip("/")
    if not text:
        if allow_empty:
            return ""
        raise UnsafeOutputNameError(f"an output {what} is empty")
    parts = PurePosixPath(text).parts
    if any(p in ("..", ".") for p in parts) or (what == "filename" and len(parts) != 1) or "\x00" in text:
        raise UnsafeOutputNameError(f"output {what} {value!r} is not a plain relative name")
    return text


def file_outputs(ui_by_node: dict[str, dict[str, Any]]) -> list[FileOutput]:
    """Every file entry of every node's UI output, in node order."""
    found: list[FileOutput] = []
    for node_id, ui in ui_by_node.items():
        for kind, items in ui.items():
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, dict) and "filename" in item:
                    found.append(FileOutput(OutputRef(
                        node_id, _safe_part(item["filename"], "filename"),
                        _safe_part(item.get("subfolder"), "subfolder", allow_empty=True),
                        str(item.get("type") or "output"), kind)))
    return found


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


async def collect(ui_by_node: dict[str, dict[str, Any]], images: list[WebsocketImage], output_dir: Path,
                  temp_dir: Path, download: Download) -> tuple[OutputRef, ...]:
    """Fetches or writes every output; returns their references (in ComfyUI's terms, as the engine reports)."""
    refs: list[OutputRef] = []
    for output in file_outputs(ui_by_node):
        await download(output.ref.filename, output.ref.subfolder, output.ref.type,
                       output.destination(output_dir, temp_dir))
        refs.append(output.ref)
    for node_id, ui in ui_by_node.items():
        texts = ui.get(TEXT_KIND)
        for index, text in enumerate(texts if isinstance(texts, list) else ()):
            if isinstance(text, str):
                name = f"text_{node_id}_{index + 1:05}.txt"
                await asyncio.to_thread(_write, output_dir / name, text.encode())
                refs.append(OutputRef(node_id, name, "", "output", TEXT_KIND))
    for index, image in enumerate(images):
        extension = mimetypes.guess_extension(image.content_type) or ".bin"
        name = f"websocket_{image.node_id}_{index + 1:05}{extension}"
        await asyncio.to_thread(_write, output_dir / name, image.data)
        refs.append(OutputRef(image.node_id, name, "", "output", WEBSOCKET_KIND))
    return tuple(refs)
