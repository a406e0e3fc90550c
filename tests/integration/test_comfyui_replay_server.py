"""The ComfyUI replay server (tests/fixtures/comfyui_replay) against the recordings it plays back.

Each test starts a fake checkout as a real process (`python <checkout>/main.py --listen … --port …`, as the
executor starts ComfyUI) and drives it with a plain aiohttp client. Frame sequences are compared with the
recorded ones after mapping the live ids back to the recorded ids and blanking timestamps and random file names:
the server must send the same frames, in the same order, with the same types and shapes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngImageFile

from service_runtime.processes import ManagedProcess, free_port
from tests.fixtures.comfyui_replay import ReplayOptions, make_fake_checkout
from tests.fixtures.comfyui_replay.__main__ import model_roots
from tests.fixtures.comfyui_replay.checkout import python_executable
from tests.fixtures.comfyui_replay.frames import decode_binary_frame
from tests.fixtures.comfyui_replay.server import replace_strings
from tests.fixtures.comfyui_replay.transcripts import (
    TranscriptsNotFoundError,
    read_transcript,
    recorded_graphs,
    recorded_prompt,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

try:
    read_transcript("image_ok")
except TranscriptsNotFoundError as exc:  # pragma: no cover - the recordings live in shared/
    if os.environ.get("CI"):  # CI has them: their absence is a broken checkout, not a reason to skip
        raise
    pytest.skip(str(exc), allow_module_level=True)

Frame = str | bytes
FAST = ReplayOptions(time_scale=0.05, startup_delay_seconds=0.05)


# -- the server process ------------------------------------------------------------------------------------


class Replay:
    """A fake checkout running as a process, and its directories."""

    def __init__(self, root: Path, options: ReplayOptions, preview_method: str | None = "auto") -> None:
        self.root = root
        self.checkout = make_fake_checkout(root / "comfyui", options)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.output, self.input, self.temp_root, self.user = (root / n for n in ("output", "input", "tmp", "user"))
        argv: list[str | Path] = [
            python_executable(), self.checkout / "main.py",
            "--listen", "127.0.0.1", "--port", str(self.port), "--disable-auto-launch", "--cpu",
            "--output-directory", self.output, "--input-directory", self.input,
            "--temp-directory", self.temp_root, "--user-directory", self.user,
            "--database-url", f"sqlite:///{root / 'user' / 'comfyui.db'}", "--some-future-flag",
        ]
        if preview_method is not None:
            argv += ["--preview-method", preview_method]
        # An extra model paths file as the executor writes one: ComfyUI lists the model files under it.
        self.models = root / "models"
        (root / "models").mkdir(parents=True, exist_ok=True)
        (root / "extra_model_paths.yaml").write_text(
            f'mine:\n    base_path: "{self.models}"\n    checkpoints: checkpoints/\n    loras: |\n        loras/\n'
            f'        more_loras/\n')
        argv += ["--extra-model-paths-config", root / "extra_model_paths.yaml"]
        self.process = ManagedProcess(argv, log_path=root / "replay.log", name="comfyui-replay", cwd=root)

    @property
    def temp(self) -> Path:
        return self.temp_root / "temp"  # ComfyUI puts temp files in <--temp-directory>/temp

    async def start(self) -> None:
        self.process.start()

        async def probe() -> bool:
            async with aiohttp.ClientSession() as session, session.get(f"{self.base}/prompt") as response:
                return response.status == 200

        await self.process.async_wait_ready(probe, timeout=20)


@pytest.fixture
async def start_replay(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    started: list[Replay] = []

    async def start(options: ReplayOptions = FAST, preview_method: str | None = "auto") -> Replay:
        replay = Replay(tmp_path / f"replay{len(started)}", options, preview_method)
        started.append(replay)
        await replay.start()
        return replay

    yield start
    for replay in started:
        replay.process.stop(grace=5)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:
        yield s


# -- a websocket client ------------------------------------------------------------------------------------


class Socket:
    """A /ws connection whose frames are collected in the background."""

    def __init__(self, session: aiohttp.ClientSession, replay: Replay, client_id: str | None = None) -> None:
        self.session = session
        self.replay = replay
        self.client_id = client_id or uuid.uuid4().hex
        self.frames: list[Frame] = []
        self.closed = asyncio.Event()
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def open(self, feature_flags: bool) -> dict[str, Any]:
        """Connect; return the on-connect status (and negotiate preview metadata when asked)."""
        self.ws = await self.session.ws_connect(f"{self.replay.base}/ws?clientId={self.client_id}")
        self._reader = asyncio.create_task(self._read())
        status = await self.next_json()
        if feature_flags:
            await self.ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
            # Its reply may follow frames sent on connect (the `executing` replayed to a client that reconnects).
            await self.wait_for(lambda frames: any(isinstance(f, str) and json.loads(f)["type"] == "feature_flags"
                                                   for f in frames))
            reply = next(f for f in self.frames if isinstance(f, str) and json.loads(f)["type"] == "feature_flags")
            self.frames.remove(reply)
            assert json.loads(reply)["data"] == recorded_ws("image_ok")[0]["data"]
        return status

    async def _read(self) -> None:
        assert self.ws is not None
        async for message in self.ws:
            if message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                self.frames.append(message.data)
            self._changed.set()
        self.closed.set()
        self._changed.set()

    async def next_json(self, timeout: float = 10) -> dict[str, Any]:
        await self.wait_for(lambda frames: bool(frames), timeout)
        frame = self.frames.pop(0)
        assert isinstance(frame, str), frame
        result: dict[str, Any] = json.loads(frame)
        return result

    async def wait_for(self, done: Callable[[list[Frame]], bool], timeout: float = 15) -> list[Frame]:
        async with asyncio.timeout(timeout):
            while not done(self.frames):
                if self.closed.is_set():
                    raise AssertionError(f"socket closed; frames so far: {self.frames[-5:]!r}")
                self._changed.clear()
                await self._changed.wait()
        return self.frames

    async def until_done(self, prompt_id: str, timeout: float = 15) -> list[Frame]:
        """All frames up to this prompt's `executing null`."""
        await self.wait_for(lambda frames: any(is_executing_null(f, prompt_id) for f in frames), timeout)
        end = next(i for i, f in enumerate(self.frames) if is_executing_null(f, prompt_id))
        return self.frames[: end + 1]

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await self._reader


def is_executing_null(frame: Frame, prompt_id: str) -> bool:
    if not isinstance(frame, str):
        return False
    data = json.loads(frame)
    return bool(data["type"] == "executing" and data["data"] == {"node": None, "prompt_id": prompt_id})


def frame_type(frame: Frame) -> str:
    return f"binary{decode_binary_frame(frame).event_type}" if isinstance(frame, bytes) else json.loads(frame)["type"]


# -- comparing with the recordings -------------------------------------------------------------------------

_TEMP_NAME = re.compile(r"ComfyUI_temp_[a-z]{5}_")


def _blank(value: Any) -> Any:
    """Timestamps and create times blanked, PreviewImage's random file names made fixed."""
    if isinstance(value, dict):
        return {k: (0 if k in ("timestamp", "create_time") else _blank(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_blank(v) for v in value]
    if isinstance(value, str):
        return _TEMP_NAME.sub("ComfyUI_temp_XXXXX_", value)
    return value


def normalize_binary(data: bytes, mapping: dict[str, str]) -> tuple[Any, ...]:
    decoded = decode_binary_frame(data)
    metadata = replace_strings(decoded.metadata, mapping) if decoded.metadata is not None else None
    return ("binary", decoded.event_type, decoded.image_type, hashlib.sha256(decoded.image).hexdigest(), metadata)


def normalize_live(frames: list[Frame], mapping: dict[str, str]) -> list[Any]:
    return [
        normalize_binary(f, mapping) if isinstance(f, bytes) else _blank(replace_strings(json.loads(f), mapping))
        for f in frames
    ]


def normalize_recorded(frames: list[dict[str, Any]]) -> list[Any]:
    return [
        normalize_binary(base64.b64decode(f["b64"]), {}) if f.get("binary") else _blank(f) for f in frames
    ]


def recorded_ws(scenario: str) -> list[dict[str, Any]]:
    """The frames the recorder received after the on-connect status (and the feature_flags reply)."""
    frames = [r["frame"] for r in read_transcript(scenario) if r["kind"] == "ws_recv"][1:]
    return frames


def recorded_prompt_frames(scenario: str) -> list[dict[str, Any]]:
    frames = recorded_ws(scenario)
    return frames[1:] if frames and not frames[0].get("binary") and frames[0]["type"] == "feature_flags" else frames


def recorded_ids(scenario: str, index: int = 0) -> tuple[str, str]:
    records = read_transcript(scenario)
    posts = [r for r in records if r["kind"] == "http_request" and r["path"] == "/prompt" and r["method"] == "POST"]
    response = next(r for r in records if r["kind"] == "http_response" and r["req"] == posts[index]["req"])
    return response["body"]["prompt_id"], records[0]["client_id"]


def recorded_history(scenario: str, prompt_id: str) -> dict[str, Any]:
    for record in read_transcript(scenario):
        body = record.get("body")
        if record["kind"] == "http_response" and isinstance(body, dict) and prompt_id in body:
            entry: dict[str, Any] = body[prompt_id]
            return entry
    raise KeyError(prompt_id)


def to_legacy(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a client without preview metadata gets (README observation 6): type-1 previews, sent after the
    step's `progress` frame instead of before it."""
    out = list(frames)
    for i, frame in enumerate(out):
        if frame.get("binary") and frame["event_type"] == 4:
            raw = base64.b64decode(frame["b64"])
            decoded = decode_binary_frame(raw)
            fmt = 1 if decoded.image_type == "image/jpeg" else 2
            legacy = (1).to_bytes(4, "big") + fmt.to_bytes(4, "big") + decoded.image
            out[i] = {"binary": True, "event_type": 1, "b64": base64.b64encode(legacy).decode()}
    i = 0
    while i + 1 < len(out):
        if out[i].get("binary") and not out[i + 1].get("binary") and out[i + 1]["type"] == "progress":
            out[i], out[i + 1] = out[i + 1], out[i]
            i += 2
        else:
            i += 1
    return out


async def post_prompt(
    session: aiohttp.ClientSession, replay: Replay, graph: dict[str, Any], client_id: str | None, **extra: Any
) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {"prompt": graph, **extra}
    if client_id is not None:
        body["client_id"] = client_id
    async with session.post(f"{replay.base}/prompt", json=body) as response:
        return response.status, await response.json()


async def post_ok(
    session: aiohttp.ClientSession, replay: Replay, graph: dict[str, Any], client_id: str | None, **extra: Any
) -> dict[str, Any]:
    code, body = await post_prompt(session, replay, graph, client_id, **extra)
    assert code == 200, body
    return body


async def get_json(session: aiohttp.ClientSession, replay: Replay, path: str) -> Any:
    async with session.get(f"{replay.base}{path}") as response:
        assert response.status == 200, (path, response.status)
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        return await response.json()


async def run_scenario(
    session: aiohttp.ClientSession, replay: Replay, scenario: str, feature_flags: bool, **extra: Any
) -> tuple[Socket, str, list[Frame]]:
    """Post the scenario's graph on a fresh socket; return the socket, the prompt id and its frames."""
    socket = Socket(session, replay)
    status = await socket.open(feature_flags)
    assert status == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}},
                                                  "sid": socket.client_id}}
    code, body = await post_prompt(session, replay, recorded_prompt(scenario), socket.client_id, **extra)
    assert code == 200, body
    assert set(body) == {"prompt_id", "number", "node_errors"} and body["node_errors"] == {}
    frames = await socket.until_done(body["prompt_id"])
    return socket, body["prompt_id"], frames


def assert_same_frames(scenario: str, live: list[Frame], prompt_id: str, client_id: str,
                       expected: list[dict[str, Any]] | None = None, index: int = 0) -> None:
    recorded_prompt_id, recorded_client = recorded_ids(scenario, index)
    mapping = {prompt_id: recorded_prompt_id, client_id: recorded_client}
    want = normalize_recorded(expected if expected is not None else recorded_prompt_frames(scenario))
    got = normalize_live(live, mapping)
    assert [frame_label(f) for f in got] == [frame_label(f) for f in want]
    assert got == want


def frame_label(frame: Any) -> str:
    if isinstance(frame, tuple):
        return f"binary{frame[1]}"
    return f"{frame['type']}({frame['data'].get('node', '')})"


async def history_entry(session: aiohttp.ClientSession, replay: Replay, prompt_id: str) -> dict[str, Any]:
    body = await get_json(session, replay, f"/history/{prompt_id}")
    assert list(body) == [prompt_id]
    entry: dict[str, Any] = body[prompt_id]
    return entry


def assert_same_history(scenario: str, entry: dict[str, Any], prompt_id: str, client_id: str | None,
                        index: int = 0) -> None:
    recorded_prompt_id, recorded_client = recorded_ids(scenario, index)
    mapping = {prompt_id: recorded_prompt_id}
    if client_id is not None:
        mapping[client_id] = recorded_client
    live = _blank(replace_strings(entry, mapping))
    want = _blank(recorded_history(scenario, recorded_prompt_id))
    live["prompt"][0] = want["prompt"][0]  # the queue number depends on what ran before
    assert live == want


# -- scenarios ---------------------------------------------------------------------------------------------


async def test_image_ok_sequence_history_and_view(start_replay, session) -> None:
    replay = await start_replay()
    socket, prompt_id, frames = await run_scenario(session, replay, "image_ok", feature_flags=True)
    assert_same_frames("image_ok", frames, prompt_id, socket.client_id)
    entry = await history_entry(session, replay, prompt_id)
    assert_same_history("image_ok", entry, prompt_id, socket.client_id)
    assert entry["prompt"][0] == 0  # the first prompt of this server

    image = entry["outputs"]["3"]["images"][0]
    assert image == {"filename": "rec_image_00001_.png", "subfolder": "", "type": "output"}
    assert (replay.output / "rec_image_00001_.png").is_file()
    async with session.get(f"{replay.base}/view", params={**image}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "image/png"
        assert response.headers["Content-Disposition"] == 'filename="rec_image_00001_.png"'
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "ETag" in response.headers and "Last-Modified" in response.headers
        png = Image.open(io.BytesIO(await response.read()))
    assert isinstance(png, PngImageFile)
    assert (png.size, png.mode) == ((64, 64), "RGB")
    assert json.loads(png.text["prompt"]) == recorded_prompt("image_ok")
    async with session.get(f"{replay.base}/view", params={"filename": "nope.png", "type": "output"}) as response:
        assert response.status == 404
    await socket.close()


async def test_image_cached_after_image_ok(start_replay, session) -> None:
    replay = await start_replay()
    first, first_id, _ = await run_scenario(session, replay, "image_ok", feature_flags=True)
    second, prompt_id, frames = await run_scenario(session, replay, "image_cached", feature_flags=False)
    # The first socket saw only the second prompt's status broadcasts.
    assert [frame_type(f) for f in first.frames[len(await first.until_done(first_id)):]] == ["status"] * 3
    assert_same_frames("image_cached", frames, prompt_id, second.client_id)
    entry = await history_entry(session, replay, prompt_id)
    assert_same_history("image_cached", entry, prompt_id, second.client_id)
    assert entry["prompt"][0] == 1
    assert sorted(p.name for p in replay.output.iterdir()) == ["rec_image_00001_.png"]  # no new file
    await first.close()
    await second.close()


@pytest.mark.parametrize("feature_flags", [True, False], ids=["type4", "type1"])
async def test_ksampler_progress_previews(start_replay, session, feature_flags: bool) -> None:
    replay = await start_replay()
    socket, prompt_id, frames = await run_scenario(session, replay, "ksampler_progress", feature_flags)
    recorded = recorded_prompt_frames("ksampler_progress")
    assert_same_frames("ksampler_progress", frames, prompt_id, socket.client_id,
                       expected=recorded if feature_flags else to_legacy(recorded))
    previews = [decode_binary_frame(f) for f in frames if isinstance(f, bytes)]
    assert len(previews) == 6
    assert {p.event_type for p in previews} == {4 if feature_flags else 1}
    for preview in previews:
        assert Image.open(io.BytesIO(preview.image)).size == (512, 512)
        if feature_flags:
            assert preview.metadata is not None and preview.metadata["prompt_id"] == prompt_id
    entry = await history_entry(session, replay, prompt_id)
    assert_same_history("ksampler_progress", entry, prompt_id, socket.client_id)
    await socket.close()


async def test_no_previews_without_preview_method(start_replay, session) -> None:
    """ComfyUI's default --preview-method is none: progress frames but no preview images."""
    replay = await start_replay(preview_method=None)
    socket, prompt_id, frames = await run_scenario(session, replay, "ksampler_progress", feature_flags=True)
    recorded = [f for f in recorded_prompt_frames("ksampler_progress") if not f.get("binary")]
    assert_same_frames("ksampler_progress", frames, prompt_id, socket.client_id, expected=recorded)
    await socket.close()


async def test_validation_error_and_unknown_graph(start_replay, session) -> None:
    replay = await start_replay()
    socket = Socket(session, replay)
    await socket.open(feature_flags=True)
    code, body = await post_prompt(session, replay, recorded_prompt("validation_error"), socket.client_id)
    recorded = next(r for r in read_transcript("validation_error") if r["kind"] == "http_response")
    assert (code, body) == (400, recorded["body"])
    assert set(body["node_errors"]) == {"1", "4"}

    unknown = {"1": {"class_type": "EmptyImage", "inputs": {"width": 7, "height": 7, "batch_size": 1, "color": 1}}}
    code, body = await post_prompt(session, replay, unknown, socket.client_id)
    assert code == 400
    assert body["node_errors"] == {} and body["error"]["type"] == "invalid_prompt"
    assert set(body["error"]) == {"type", "message", "details", "extra_info"}

    await asyncio.sleep(0.3)
    assert socket.frames == []  # nothing on the websocket, not even status
    assert await get_json(session, replay, "/queue") == {"queue_running": [], "queue_pending": []}
    # The rejected prompts consumed numbers 0 and 1.
    body = await post_ok(session, replay, recorded_prompt("image_ok"), socket.client_id)
    assert body["number"] == 2
    await socket.until_done(body["prompt_id"])
    await socket.close()


async def test_loose_match_seed_and_prefix(start_replay, session) -> None:
    replay = await start_replay()
    graph = recorded_prompt("image_ok")
    graph["3"]["inputs"]["filename_prefix"] = "sub/mine"
    socket = Socket(session, replay)
    await socket.open(feature_flags=True)
    code, body = await post_prompt(session, replay, graph, socket.client_id)
    assert code == 200
    frames = await socket.until_done(body["prompt_id"])
    executed = [json.loads(f) for f in frames if isinstance(f, str) and json.loads(f)["type"] == "executed"]
    assert executed[0]["data"]["output"]["images"] == [{"filename": "mine_00001_.png", "subfolder": "sub",
                                                        "type": "output"}]
    assert (replay.output / "sub" / "mine_00001_.png").is_file()
    await socket.close()


async def test_a_model_file_listed_under_the_extra_model_paths_may_replace_the_recorded_one(
        start_replay, session) -> None:
    """As ComfyUI, which accepts any model file it lists: the same graph naming another listed model plays the
    recording; naming a file that is nowhere is refused, as an unknown graph."""
    replay = await start_replay()
    graph = recorded_prompt("ksampler_progress")
    (loader,) = [node for node in graph.values() if "ckpt_name" in node["inputs"]]
    for name in ("tenants/acme/mine.safetensors", "../escape.safetensors"):
        loader["inputs"]["ckpt_name"] = name
        code, _ = await post_prompt(session, replay, graph, None)
        assert code == 400, name
    (replay.models / "checkpoints" / "tenants" / "acme").mkdir(parents=True)
    (replay.models / "checkpoints" / "tenants" / "acme" / "mine.safetensors").write_bytes(b"weights")
    (replay.models / "escape.safetensors").write_bytes(b"outside the folders")  # checkpoints/../escape
    loader["inputs"]["ckpt_name"] = "tenants/acme/mine.safetensors"
    await post_ok(session, replay, graph, None)
    loader["inputs"]["ckpt_name"] = "../escape.safetensors"
    code, _ = await post_prompt(session, replay, graph, None)
    assert code == 400
    # A folder given as several directories (a YAML block, one per line) lists all of them.
    assert model_roots([str(replay.root / "extra_model_paths.yaml")])["loras"] == (
        replay.models / "loras", replay.models / "more_loras")


async def test_runtime_error(start_replay, session) -> None:
    replay = await start_replay()
    socket, prompt_id, frames = await run_scenario(session, replay, "runtime_error", feature_flags=False)
    assert_same_frames("runtime_error", frames, prompt_id, socket.client_id)
    entry = await history_entry(session, replay, prompt_id)
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert_same_history("runtime_error", entry, prompt_id, socket.client_id)
    await socket.close()


async def _start_interrupt_prompt(session, replay: Replay) -> tuple[Socket, str]:
    socket = Socket(session, replay)
    await socket.open(feature_flags=False)
    code, body = await post_prompt(session, replay, recorded_prompt("interrupt"), socket.client_id)
    assert code == 200

    def at_step_3(frames: list[Frame]) -> bool:
        return any(isinstance(f, str) and json.loads(f)["type"] == "progress"
                   and json.loads(f)["data"]["value"] == 3 for f in frames)

    await socket.wait_for(at_step_3)
    return socket, body["prompt_id"]


async def test_interrupt_plays_the_recorded_ending(start_replay, session) -> None:
    replay = await start_replay()
    socket, prompt_id = await _start_interrupt_prompt(session, replay)
    # The sampler stalls at step 3; an interrupt aimed at another prompt changes nothing.
    async with session.post(f"{replay.base}/interrupt", json={"prompt_id": str(uuid.uuid4())}) as response:
        assert response.status == 200
    await asyncio.sleep(0.3)
    assert not any(frame_type(f) == "execution_interrupted" for f in socket.frames)
    queue = await get_json(session, replay, "/queue")
    assert [item[1] for item in queue["queue_running"]] == [prompt_id]
    assert await get_json(session, replay, f"/history/{prompt_id}") == {}

    async with session.post(f"{replay.base}/interrupt", json={"prompt_id": prompt_id}) as response:
        assert response.status == 200
        assert "Content-Type" not in response.headers and await response.read() == b""
    frames = await socket.until_done(prompt_id)
    assert_same_frames("interrupt", frames, prompt_id, socket.client_id)
    entry = await history_entry(session, replay, prompt_id)
    assert_same_history("interrupt", entry, prompt_id, socket.client_id)
    await socket.close()


async def test_interrupt_between_sampler_steps_ends_as_recorded(start_replay, session) -> None:
    """At real speed an interrupt after step 1 lands between sampler steps: the recorded ending follows at once."""
    replay = await start_replay(ReplayOptions(time_scale=1.0, startup_delay_seconds=0.05))
    socket = Socket(session, replay)
    await socket.open(feature_flags=True)
    body = await post_ok(session, replay, recorded_prompt("interrupt"), socket.client_id)
    prompt_id = body["prompt_id"]
    await socket.wait_for(lambda fs: any(frame_type(f) == "progress" for f in fs))
    async with session.post(f"{replay.base}/interrupt", json={"prompt_id": prompt_id}) as response:
        assert response.status == 200
    frames = await socket.until_done(prompt_id)
    progress = [json.loads(f)["data"]["value"] for f in frames if frame_type(f) == "progress"]
    assert progress == [1]
    recorded_id, recorded_client = recorded_ids("interrupt")
    got = normalize_live(frames[-3:], {prompt_id: recorded_id, socket.client_id: recorded_client})
    assert got == normalize_recorded(recorded_prompt_frames("interrupt")[-3:])
    await socket.close()


async def test_ignore_interrupt_never_continues_and_sigkill(start_replay, session) -> None:
    replay = await start_replay(ReplayOptions(time_scale=0.05, startup_delay_seconds=0.05, ignore_interrupt=True))
    socket, prompt_id = await _start_interrupt_prompt(session, replay)
    async with session.post(f"{replay.base}/interrupt", json={"prompt_id": prompt_id}) as response:
        assert response.status == 200
    await asyncio.sleep(0.5)
    assert frame_type(socket.frames[-1]) in ("progress", "binary1")
    assert await get_json(session, replay, f"/history/{prompt_id}") == {}
    assert (await get_json(session, replay, "/queue"))["queue_running"][0][1] == prompt_id
    replay.process.send_signal(signal.SIGKILL)
    assert replay.process.wait(timeout=5) == -signal.SIGKILL
    await asyncio.wait_for(socket.closed.wait(), 5)


async def test_interrupt_other_scenarios_is_synthesised(start_replay, session) -> None:
    """hold_after_executing_node stalls after `executing(2)`; /interrupt then ends the prompt like ComfyUI does."""
    replay = await start_replay(ReplayOptions(time_scale=0.05, startup_delay_seconds=0.05,
                                              hold_after_executing_node="2"))
    socket = Socket(session, replay)
    await socket.open(feature_flags=True)
    body = await post_ok(session, replay, recorded_prompt("image_ok"), socket.client_id)
    prompt_id = body["prompt_id"]
    await socket.wait_for(lambda fs: any(isinstance(f, str) and json.loads(f)["type"] == "executing"
                                         and json.loads(f)["data"]["node"] == "2" for f in fs))
    await asyncio.sleep(0.3)
    assert frame_type(socket.frames[-1]) == "executing"  # held
    async with session.post(f"{replay.base}/interrupt") as response:  # untargeted
        assert response.status == 200
    frames = await socket.until_done(prompt_id)
    tail = [json.loads(f) for f in frames[-3:]]
    assert [f["type"] for f in tail] == ["execution_interrupted", "status", "executing"]
    interrupted = tail[0]["data"]
    assert set(interrupted) == {"prompt_id", "node_id", "node_type", "executed", "timestamp"}
    assert (interrupted["prompt_id"], interrupted["node_id"], interrupted["node_type"], interrupted["executed"]) == (
        prompt_id, "2", "ImageInvert", ["1"])
    assert tail[1]["data"] == {"status": {"exec_info": {"queue_remaining": 0}}}
    entry = await history_entry(session, replay, prompt_id)
    assert entry["status"]["status_str"] == "error" and entry["outputs"] == {}
    assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_cached",
                                                          "execution_interrupted"]
    await socket.close()


async def test_queue_ops_delete(start_replay, session) -> None:
    replay = await start_replay(ReplayOptions(time_scale=0.2, startup_delay_seconds=0.05))
    socket = Socket(session, replay)
    await socket.open(feature_flags=True)
    ids = []
    for index in range(3):
        code, body = await post_prompt(session, replay, recorded_prompt("queue_ops", index), socket.client_id)
        assert code == 200
        ids.append(body["prompt_id"])
    queue = await get_json(session, replay, "/queue")
    assert [item[1] for item in queue["queue_running"]] == ids[:1]
    assert [item[1] for item in queue["queue_pending"]] == ids[1:]
    item = queue["queue_pending"][0]
    assert item[2] == recorded_prompt("queue_ops", 1) and item[4] == ["4"]
    assert set(item[3]) == {"client_id", "create_time"} and item[3]["client_id"] == socket.client_id
    assert await get_json(session, replay, "/prompt") == {"exec_info": {"queue_remaining": 3}}
    async with session.post(f"{replay.base}/queue", json={"delete": [ids[2]]}) as response:
        assert response.status == 200 and await response.read() == b""
    queue = await get_json(session, replay, "/queue")
    assert [item[1] for item in queue["queue_pending"]] == ids[1:2]

    frames = await socket.until_done(ids[1])
    recorded_prompt_ids = [recorded_ids("queue_ops", i)[0] for i in range(2)]
    mapping = {ids[0]: recorded_prompt_ids[0], ids[1]: recorded_prompt_ids[1]}
    # Every frame but the status broadcasts (whose interleaving with HTTP is timing) is as recorded.
    got = [f for f in normalize_live(frames, mapping) if frame_label(f) != "status()"]
    want = [f for f in normalize_recorded(recorded_prompt_frames("queue_ops")) if frame_label(f) != "status()"]
    assert got == want
    statuses = [json.loads(f)["data"]["status"]["exec_info"]["queue_remaining"] for f in frames
                if frame_type(f) == "status"]
    assert statuses == [1, 1, 2, 3, 2, 1, 1, 0]
    assert await get_json(session, replay, f"/history/{ids[2]}") == {}
    for index in range(2):
        entry = await history_entry(session, replay, ids[index])
        assert_same_history("queue_ops", entry, ids[index], socket.client_id, index)
    history = await get_json(session, replay, "/history?max_items=1")
    assert list(history) == [ids[1]]
    await socket.close()


async def test_multi_output(start_replay, session) -> None:
    replay = await start_replay()
    socket = Socket(session, replay)
    await socket.open(feature_flags=True)
    prompt_id = str(uuid.uuid4())
    code, body = await post_prompt(session, replay, recorded_prompt("multi_output"), socket.client_id,
                                   prompt_id=prompt_id)
    assert code == 200 and body["prompt_id"] == prompt_id
    frames = await socket.until_done(prompt_id)
    assert_same_frames("multi_output", frames, prompt_id, socket.client_id)
    executed = {json.loads(f)["data"]["node"]: json.loads(f)["data"]["output"] for f in frames
                if frame_type(f) == "executed"}
    assert set(executed) == {"3", "4", "6"}
    assert executed["6"] == {"text": ["hello from the recorder"]}
    (png_frame,) = [decode_binary_frame(f) for f in frames if isinstance(f, bytes)]
    assert png_frame.event_type == 4 and png_frame.metadata is not None
    assert png_frame.metadata["image_type"] == "image/png" and png_frame.metadata["node_id"] == "7"
    assert Image.open(io.BytesIO(png_frame.image)).size == (64, 64)

    entry = await history_entry(session, replay, prompt_id)
    assert_same_history("multi_output", entry, prompt_id, socket.client_id)
    temp = executed["4"]["images"][0]
    assert temp["type"] == "temp" and re.fullmatch(r"ComfyUI_temp_[a-z]{5}_00001_\.png", temp["filename"])
    assert (replay.temp / temp["filename"]).is_file()
    for image in (executed["3"]["images"][0], temp):
        async with session.get(f"{replay.base}/view", params=image) as response:
            assert response.status == 200
            png = Image.open(io.BytesIO(await response.read()))
            assert isinstance(png, PngImageFile)
            assert (png.size, png.mode, list(png.text)) == ((64, 64), "RGB", ["prompt"])
    await socket.close()


async def test_reconnect_replays_executing(start_replay, session) -> None:
    """The recorded reconnect: the client closes its socket while the blur runs and comes back."""
    replay = await start_replay(ReplayOptions(time_scale=0.2, startup_delay_seconds=0.05))
    socket = Socket(session, replay)
    await socket.open(feature_flags=False)
    body = await post_ok(session, replay, recorded_prompt("reconnect"), socket.client_id)
    prompt_id = body["prompt_id"]
    await socket.wait_for(lambda fs: any(frame_type(f) == "executing" and json.loads(f)["data"]["node"] == "2"
                                         for f in fs))
    await socket.close()
    before = list(socket.frames)
    queue = await get_json(session, replay, "/queue")
    assert queue["queue_running"][0][1] == prompt_id
    assert await get_json(session, replay, f"/history/{prompt_id}") == {}

    again = Socket(session, replay, socket.client_id)
    status = await again.open(feature_flags=False)
    assert status["data"] == {"status": {"exec_info": {"queue_remaining": 1}}, "sid": socket.client_id}
    frames = await again.until_done(prompt_id)
    recorded = recorded_ws("reconnect")
    cut = next(i for i, f in enumerate(recorded) if f["type"] == "status" and "sid" in f["data"])
    assert_same_frames("reconnect", before, prompt_id, socket.client_id, expected=recorded[:cut])
    assert_same_frames("reconnect", frames, prompt_id, socket.client_id, expected=recorded[cut + 1:])
    await again.close()


async def test_dropped_websocket_and_reconnect(start_replay, session) -> None:
    replay = await start_replay(ReplayOptions(time_scale=0.2, startup_delay_seconds=0.05,
                                              drop_websocket_after_frames=6))
    socket = Socket(session, replay)
    await socket.open(feature_flags=True)
    body = await post_ok(session, replay, recorded_prompt("reconnect"), socket.client_id)
    prompt_id = body["prompt_id"]
    await asyncio.wait_for(socket.closed.wait(), 5)
    # status x2, then the prompt's first 6 frames: start, cached, progress_state, executing(1), 2 x progress_state
    assert [frame_type(f) for f in socket.frames] == ["status", "status", "execution_start", "execution_cached",
                                                      "progress_state", "executing", "progress_state",
                                                      "progress_state"]
    again = Socket(session, replay, socket.client_id)
    await again.open(feature_flags=True)
    replayed = await again.next_json()
    assert replayed == {"type": "executing", "data": {"node": "2"}}
    frames = await again.until_done(prompt_id)
    assert frame_type(frames[0]) == "progress_state", [f[:100] for f in frames[:3]]
    assert json.loads(frames[0])["data"]["nodes"]["2"]["state"] == "finished"
    entry = await history_entry(session, replay, prompt_id)
    assert entry["status"]["status_str"] == "success"
    await again.close()


async def test_silent_websocket_still_completes(start_replay, session) -> None:
    replay = await start_replay(ReplayOptions(time_scale=0.05, startup_delay_seconds=0.05, silent_websocket=True))
    socket = Socket(session, replay)
    await socket.open(feature_flags=True)
    body = await post_ok(session, replay, recorded_prompt("image_ok"), socket.client_id)
    prompt_id = body["prompt_id"]
    deadline = time.monotonic() + 10
    while (entry := await get_json(session, replay, f"/history/{prompt_id}")) == {}:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert entry[prompt_id]["status"]["status_str"] == "success"
    await asyncio.sleep(0.2)
    assert [frame_type(f) for f in socket.frames] == ["status", "status", "execution_start"]
    await socket.close()


async def test_foreign_frames(start_replay, session) -> None:
    replay = await start_replay(ReplayOptions(time_scale=0.05, startup_delay_seconds=0.05,
                                              inject_foreign_frames=True))
    socket, prompt_id, frames = await run_scenario(session, replay, "image_ok", feature_flags=True)
    foreign_ids = {json.loads(f)["data"]["prompt_id"] for f in frames
                   if isinstance(f, str) and json.loads(f)["type"] in ("progress_state", "progress")} - {prompt_id}
    assert len(foreign_ids) == 1

    def stranger(frame: Frame) -> bool:
        return isinstance(frame, bytes) or json.loads(frame)["data"].get("prompt_id") in foreign_ids

    own = [f for f in frames if not stranger(f)]
    assert_same_frames("image_ok", own, prompt_id, socket.client_id)
    strangers = [f for f in frames if stranger(f)]
    assert {frame_type(f) for f in strangers} == {"progress_state", "progress", "binary1"}  # type 1 despite flags
    success = next(i for i, f in enumerate(frames) if frame_type(f) == "execution_success")
    assert not any(stranger(f) for f in frames[success:])  # all stranger frames came before our ending

    # A prompt posted without client_id: our socket sees only its broadcast frames (and status).
    code, body = await post_prompt(session, replay, recorded_prompt("foreign_prompts", 1), None)
    assert code == 200
    anonymous = body["prompt_id"]
    deadline = time.monotonic() + 10
    while await get_json(session, replay, f"/history/{anonymous}") == {}:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    later = socket.frames[len(frames):]
    assert {frame_type(f) for f in later} <= {"status", "progress_state", "progress", "binary1"}
    assert sum(1 for f in later if isinstance(f, bytes)) >= 3
    await socket.close()


async def test_upload_and_loadimage(start_replay, session) -> None:
    replay = await start_replay()
    socket = Socket(session, replay)
    await socket.open(feature_flags=False)
    request = next(r for r in read_transcript("upload_and_loadimage") if r["kind"] == "http_request")
    upload = request["body"]["multipart"]
    form = aiohttp.FormData()
    form.add_field("image", base64.b64decode(upload["image"]["b64"]), filename="rec_rgba.png",
                   content_type="image/png")
    form.add_field("type", "input")
    form.add_field("overwrite", "true")
    async with session.post(f"{replay.base}/upload/image", data=form) as response:
        assert response.status == 200
        assert await response.json() == {"name": "rec_rgba.png", "subfolder": "", "type": "input"}
    assert (replay.input / "rec_rgba.png").read_bytes() == base64.b64decode(upload["image"]["b64"])
    info = await get_json(session, replay, "/object_info/LoadImage")
    assert info["LoadImage"]["input"]["required"]["image"][0] == ["rec_rgba.png"]

    body = await post_ok(session, replay, recorded_prompt("upload_and_loadimage"), socket.client_id)
    frames = await socket.until_done(body["prompt_id"])
    assert_same_frames("upload_and_loadimage", frames, body["prompt_id"], socket.client_id)
    async with session.get(f"{replay.base}/view", params={"filename": "rec_upload_00001_.png",
                                                          "type": "output", "subfolder": ""}) as response:
        png = Image.open(io.BytesIO(await response.read()))
    assert (png.size, png.mode) == ((32, 32), "RGB")
    await socket.close()


async def test_catalog_endpoints(start_replay, session) -> None:
    replay = await start_replay()
    records = read_transcript("object_info")
    requests = {r["req"]: r["path"] for r in records if r["kind"] == "http_request"}
    for record in records:
        if record["kind"] == "http_response" and requests[record["req"]] not in ("/system_stats",
                                                                                  "/object_info/LoadImage"):
            assert await get_json(session, replay, requests[record["req"]]) == record["body"]
    everything = await get_json(session, replay, "/object_info")
    assert len(everything) == 16 and "SaveImageWebsocket" in everything
    stats = await get_json(session, replay, "/system_stats")
    assert stats["system"]["comfyui_version"] == "0.27.0"
    assert stats["system"]["argv"][:3] == ["main.py", "--listen", "127.0.0.1"]
    async with session.get(f"{replay.base}/models/nonsense") as response:
        assert response.status == 404
    # ComfyUI also serves its API under /api.
    assert await get_json(session, replay, "/api/prompt") == {"exec_info": {"queue_remaining": 0}}
    assert await get_json(session, replay, "/api/object_info/NoSuchNode") == {}



async def test_every_recorded_graph_plays_to_its_end(start_replay, session) -> None:
    """Each recorded graph, posted by a client that negotiated metadata and by one that did not, ends with its
    terminal frame, status and executing null, and gets its history (validation_error is the recorded 400)."""
    replay = await start_replay(ReplayOptions(time_scale=0.0, startup_delay_seconds=0.05))
    for feature_flags in (True, False):
        socket = Socket(session, replay)
        await socket.open(feature_flags)
        for label, graph in recorded_graphs().items():
            code, body = await post_prompt(session, replay, graph, socket.client_id)
            if label == "validation_error":
                assert code == 400
                continue
            assert code == 200, (label, body)
            prompt_id = body["prompt_id"]
            if label == "interrupt":
                await socket.wait_for(lambda fs: any(frame_type(f) == "progress" for f in fs))
                async with session.post(f"{replay.base}/interrupt", json={"prompt_id": prompt_id}):
                    pass
            frames = await socket.until_done(prompt_id)
            own = [json.loads(f) for f in frames if isinstance(f, str) and json.loads(f)["type"] != "status"]
            assert own[0]["type"] == "execution_start" and own[-1]["data"] == {"node": None, "prompt_id": prompt_id}
            terminal = own[-2]["type"]
            assert terminal == {"runtime_error": "execution_error", "interrupt": "execution_interrupted"}.get(
                label, "execution_success"), label
            entry = await history_entry(session, replay, prompt_id)
            assert entry["status"]["messages"][-1][0] == terminal
            previews = [decode_binary_frame(f) for f in frames if isinstance(f, bytes)]
            assert {p.event_type for p in previews} <= {4 if feature_flags else 1}
            socket.frames.clear()
        await socket.close()


async def test_startup_delay_and_sigterm(tmp_path: Path) -> None:
    replay = Replay(tmp_path, ReplayOptions(startup_delay_seconds=1.0))
    started = time.monotonic()
    replay.process.start()
    try:
        async def probe() -> bool:
            async with aiohttp.ClientSession() as s, s.get(f"{replay.base}/system_stats") as response:
                return response.status == 200

        await replay.process.async_wait_ready(probe, timeout=20)
        assert time.monotonic() - started >= 1.0
        assert "To see the GUI go to: http://127.0.0.1:" in replay.process.log_tail()
        replay.process.send_signal(signal.SIGTERM)
        assert replay.process.wait(timeout=10) == 0
    finally:
        replay.process.stop(grace=2)
