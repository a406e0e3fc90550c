"""ComfyUI's HTTP API and websocket, over aiohttp: the handful of calls the backend makes.

Every call has a deadline: a ComfyUI that stops answering raises `ComfyUnavailableError`, never hangs its caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import aiohttp

REQUEST_SECONDS = 30.0
DOWNLOAD_SECONDS = 600.0
PROBE_SECONDS = 3.0


class ComfyUnavailableError(Exception):
    """ComfyUI did not answer (refused, reset, timed out) or answered with a server error."""


class PromptRejectedError(Exception):
    """POST /prompt answered 400: the graph failed ComfyUI's validation."""

    def __init__(self, error: dict[str, Any], node_errors: dict[str, Any]) -> None:
        super().__init__(str(error.get("message") or "the prompt was rejected"))
        self.error = error
        self.node_errors = node_errors


class ComfyClient:
    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session

    async def _json(self, method: str, path: str, *, body: Any = None, seconds: float = REQUEST_SECONDS,
                    params: dict[str, str] | None = None) -> Any:
        try:
            async with self.session.request(method, self.base_url + path, json=body, params=params,
                                            timeout=aiohttp.ClientTimeout(total=seconds)) as response:
                if response.status >= 500:
                    raise ComfyUnavailableError(f"{method} {path}: HTTP {response.status}")
                text = await response.text()
                if response.status == 400 and path == "/prompt":
                    document = _loads(text)
                    error = document.get("error") if isinstance(document, dict) else None
                    errors = document.get("node_errors") if isinstance(document, dict) else None
                    raise PromptRejectedError(error if isinstance(error, dict) else {"message": text[:500]},
                                         errors if isinstance(errors, dict) else {})
                if response.status >= 400:
                    raise ComfyUnavailableError(f"{method} {path}: HTTP {response.status} {text[:200]}")
                return _loads(text) if text else None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ComfyUnavailableError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc

    async def post_prompt(self, prompt: dict[str, Any], prompt_id: str, client_id: str) -> dict[str, Any]:
        answer = await self._json("POST", "/prompt",
                                  body={"prompt": prompt, "client_id": client_id, "prompt_id": prompt_id})
        return answer if isinstance(answer, dict) else {}

    async def interrupt(self, prompt_id: str) -> None:
        """Interrupts this prompt if it runs (ComfyUI's targeted interrupt) and drops it if it is still queued."""
        await self._json("POST", "/interrupt", body={"prompt_id": prompt_id})
        with contextlib.suppress(ComfyUnavailableError):  # best effort: it only matters for a prompt still queued
            await self._json("POST", "/queue", body={"delete": [prompt_id]})

    async def history(self, prompt_id: str) -> Any:
        return await self._json("GET", f"/history/{prompt_id}")

    async def queue(self) -> Any:
        return await self._json("GET", "/queue")

    async def object_info(self) -> dict[str, Any]:
        answer = await self._json("GET", "/object_info", seconds=120.0)
        if not isinstance(answer, dict):
            raise ComfyUnavailableError("GET /object_info did not answer an object")
        return answer

    async def responsive(self) -> bool:
        """Whether ComfyUI answers a cheap request within a few seconds."""
        try:
            await self._json("GET", "/system_stats", seconds=PROBE_SECONDS)
        except ComfyUnavailableError:
            return False
        return True

    async def download(self, filename: str, subfolder: str, kind: str, destination: Path) -> None:
        """GET /view of one output file into `destination` (streamed: videos can be large)."""
        params = {"filename": filename, "subfolder": subfolder, "type": kind}
        try:
            async with self.session.get(self.base_url + "/view", params=params,
                                        timeout=aiohttp.ClientTimeout(total=DOWNLOAD_SECONDS)) as response:
                if response.status != 200:
                    raise ComfyUnavailableError(f"GET /view {kind}/{subfolder}/{filename}: HTTP {response.status}")
                destination.parent.mkdir(parents=True, exist_ok=True)
                with destination.open("wb") as handle:
                    async for chunk in response.content.iter_chunked(1 << 20):
                        await asyncio.to_thread(handle.write, chunk)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ComfyUnavailableError(f"GET /view {filename}: {type(exc).__name__}: {exc}") from exc

    async def upload_input(self, path: Path, name: str) -> str:
        """POST /upload/image of an input file under its name (a/b.png: subfolder a); returns the name the graph
        must use, as ComfyUI stored it."""
        subfolder, _, filename = name.rpartition("/")
        form = aiohttp.FormData()
        form.add_field("image", await asyncio.to_thread(path.read_bytes), filename=filename,
                       content_type="application/octet-stream")
        form.add_field("overwrite", "true")
        form.add_field("type", "input")
        if subfolder:
            form.add_field("subfolder", subfolder)
        try:
            async with self.session.post(self.base_url + "/upload/image", data=form,
                                         timeout=aiohttp.ClientTimeout(total=REQUEST_SECONDS)) as response:
                text = await response.text()
                if response.status != 200:
                    raise ComfyUnavailableError(f"POST /upload/image {name}: HTTP {response.status} {text[:200]}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ComfyUnavailableError(f"POST /upload/image {name}: {type(exc).__name__}: {exc}") from exc
        stored = _loads(text)
        if not isinstance(stored, dict) or not isinstance(stored.get("name"), str):
            raise ComfyUnavailableError(f"POST /upload/image {name}: unexpected answer {text[:200]}")
        return "/".join(p for p in (str(stored.get("subfolder") or ""), stored["name"]) if p)

    async def connect(self, client_id: str) -> aiohttp.ClientWebSocketResponse:
        try:
            return await self.session.ws_connect(self.base_url + "/ws", params={"clientId": client_id},
                                                 timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                                                 max_msg_size=64 << 20, autoping=True)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ComfyUnavailableError(f"websocket: {type(exc).__name__}: {exc}") from exc


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise ComfyUnavailableError(f"ComfyUI answered something that is not JSON: {text[:200]!r}") from None
