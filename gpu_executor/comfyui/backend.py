"""ComfyUI as the executor's engine (COMFYMESH_EXECUTOR_ENGINE=comfyui): an `ExecutionBackend` like the built-in
engine's `WorkerSupervisor`.

The executor starts ComfyUI from a checkout on a private loopback port and supervises it (process.py), or attaches to
a running one (COMFYMESH_COMFYUI_URL: not supervised). Each job:

1. its inputs are uploaded (POST /upload/image), a websocket is opened with this executor's private client id and
   the preview-metadata feature negotiated;
2. the graph is posted with `prompt_id` derived from (execution id, attempt): a retry on the same ComfyUI never
   collides with its own history entry, and a lost socket can always be reconciled by id;
3. the prompt's frames are translated into engine events (translate.py); at its end the outputs are fetched into
   the job's directories (outputs.py) and the terminal event goes out.

It never hangs and never loses a result: a dropped socket is reopened and a silent one (COMFYMESH_COMFYUI_SILENCE_
SECONDS) is checked against /history (history.py) and ComfyUI's health; a ComfyUI that died or stopped answering is
restarted and the job ends with a retryable `WorkerLost` (EXECUTOR_LOST); a node that ignores the interrupt for
COMFYMESH_INTERRUPT_GRACE_SECONDS gets ComfyUI restarted, with the same retryable ending. Validation errors (HTTP
400) end the job with WORKFLOW_INVALID and each bad input as a field violation, like the built-in engine's.

The catalog is ComfyUI's own /object_info (fetched again after a prefetch, since model lists are part of it).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import logging
import shlex
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from gpu_executor.comfyui.client import ComfyClient, ComfyUnavailableError, PromptRejectedError
from gpu_executor.comfyui.frames import Frame, FrameError, decode_binary, decode_text
from gpu_executor.comfyui.history import entry_of, replay
from gpu_executor.comfyui.models import ModelView, is_tenant_path, without_tenant_models
from gpu_executor.comfyui.outputs import UnsafeOutputNameError, collect
from gpu_executor.comfyui.process import ComfyLayout, ComfyProcess, ComfyStartError, wait_until_answering
from gpu_executor.comfyui.translate import Completed, PromptTranslator
from gpu_executor.comfyui.validation import validation_failure
from gpu_executor.engine.events import Cancelled, Event, Failed, Succeeded
from gpu_executor.engine.model_inputs import model_inputs, model_names
from gpu_executor.model_tiers.resolver import ResolverConfig
from gpu_executor.model_tiers.state import CacheState, PrefetchOutcome
from gpu_executor.worker.child import Job, Ready
from gpu_executor.worker.supervisor import WorkerLost

log = logging.getLogger(__name__)
PROMPT_NAMESPACE = uuid.UUID("5b0c1f53-64d6-4b0e-9a53-6f3e2c1d0a77")  # ComfyMesh's prompt ids (uuid5)
TICK_SECONDS = 0.25  # how often a waiting job checks the process, the interrupt grace and the silence
HANDSHAKE_SECONDS = 10.0
FEATURE_REPLY_SECONDS = 2.0
FEATURE_FLAGS = {"type": "feature_flags", "data": {"supports_preview_metadata": True}}


def prompt_id_for(execution_id: str, attempt: int) -> str:
    """The canonical (lowercase) UUID a job's prompt runs under in ComfyUI."""
    return str(uuid.uuid5(PROMPT_NAMESPACE, f"{execution_id}/{attempt}"))


def catalog_hash(catalog: dict[str, Any]) -> str:
    """Same recipe as the built-in registry's: the executors' catalogs are compared by it."""
    return hashlib.sha256(json.dumps(catalog, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ComfyUIConfig:
    home: Path  # where a supervised ComfyUI keeps its directories, log and model view
    checkout: Path | None = None
    python: str = ""
    url: str = ""  # attach to this ComfyUI instead of starting one
    extra_args: tuple[str, ...] = ()
    startup_timeout: float = 300.0
    silence_seconds: float = 30.0
    interrupt_grace: float = 10.0
    models_dir: Path | None = None
    resolver: ResolverConfig | None = None
    client_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @classmethod
    def from_settings(cls, settings: Any, resolver: ResolverConfig | None) -> ComfyUIConfig:
        if not settings.comfyui_url and settings.comfyui_path is None:
            raise ValueError("COMFYMESH_EXECUTOR_ENGINE=comfyui needs COMFYMESH_COMFYUI_PATH (a ComfyUI checkout "
                             "to start) or COMFYMESH_COMFYUI_URL (a running ComfyUI to attach to)")
        return cls(home=(settings.home / "comfyui").resolve(),
                   checkout=settings.comfyui_path.resolve() if settings.comfyui_path else None,
                   python=settings.comfyui_python or sys.executable, url=settings.comfyui_url.rstrip("/"),
                   extra_args=tuple(shlex.split(settings.comfyui_extra_args)),
                   startup_timeout=settings.comfyui_startup_timeout_seconds,
                   silence_seconds=settings.comfyui_silence_seconds,
                   interrupt_grace=settings.interrupt_grace_seconds, models_dir=settings.models_dir,
                   resolver=resolver)


class ComfyLostError(Exception):
    """ComfyUI is gone or wedged mid-job: the job ends with a retryable WorkerLost."""

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Socket:
    """A job's websocket: a reader task turns frames into a queue; None in the queue means it closed."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.frames: asyncio.Queue[Frame | None] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read(), name="comfyui-websocket")

    async def reopen(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Continues on a new connection; nothing of the old one is read any more."""
        await self.close()
        self.ws = ws
        self.frames = asyncio.Queue()
        self._reader = asyncio.create_task(self._read(), name="comfyui-websocket")

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                try:
                    if message.type == aiohttp.WSMsgType.TEXT:
                        self.frames.put_nowait(decode_text(message.data))
                    elif message.type == aiohttp.WSMsgType.BINARY:
                        self.frames.put_nowait(decode_binary(message.data))
                except FrameError as exc:
                    log.warning("skipping a websocket frame from ComfyUI: %s", exc)
        except (aiohttp.ClientError, OSError) as exc:
            log.warning("ComfyUI websocket failed: %s", exc)
        finally:
            self.frames.put_nowait(None)

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError, OSError):
            await self._reader
        with contextlib.suppress(aiohttp.ClientError, OSError):
            await self.ws.close()


class ComfyUIBackend:
    def __init__(self, config: ComfyUIConfig) -> None:
        self.config = config
        layout = ComfyLayout(config.home)
        self.models = ModelView(config.models_dir, config.home / "models-view", config.resolver)
        self.paths_file = config.home / "extra_model_paths.yaml"
        self._process = (ComfyProcess(config.checkout, config.python, layout, self.paths_file, config.extra_args,
                                      config.startup_timeout)
                         if not config.url and config.checkout is not None else None)
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()  # one job or prefetch at a time
        self._starting = False
        self._reachable = False  # an attached ComfyUI answered the last time it was asked
        self._interrupt_at: float | None = None
        self._interrupts: set[asyncio.Task[None]] = set()  # POST /interrupt calls in flight (kept referenced)
        self._prompt_in_flight: str | None = None
        self.ready: Ready | None = None
        self.catalog_hash = ""
        self.restarts = 0
        self.on_state: Callable[[CacheState], None] = lambda state: None
        self.on_worker_lost: Callable[[], None] = lambda: None

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self.config.url or (self._process.base_url if self._process is not None else "")

    @property
    def client(self) -> ComfyClient:
        assert self._session is not None, "the backend is not started"
        return ComfyClient(self.base_url, self._session)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def alive(self) -> bool:
        """A supervised ComfyUI's process runs; an attached one answered the last time it was asked."""
        return self._process.alive if self._process is not None else self._reachable

    @property
    def starting(self) -> bool:
        return self._starting

    async def start(self) -> None:
        """Starts (or reaches) ComfyUI and reads its catalog; raises when it does not come up."""
        self._starting = True
        try:
            if self._session is None:
                self._session = aiohttp.ClientSession()
            await asyncio.to_thread(self.models.write_paths_file, self.paths_file)
            if self._process is not None:
                await self._process.start()
            else:
                await wait_until_answering(self.config.url, self.config.startup_timeout)
                self._reachable = True
            await self._load_catalog()
        finally:
            self._starting = False

    async def _load_catalog(self) -> None:
        # Tenants' private models linked into the view are listed by ComfyUI; the fleet's catalog must not be.
        catalog = without_tenant_models(await self.client.object_info())
        state = await asyncio.to_thread(self.models.state)
        self.ready = Ready(catalog, catalog_hash(catalog), (), state)
        self.catalog_hash = self.ready.catalog_hash
        self.on_state(state)

    async def stop(self) -> None:
        if self._process is not None:
            await self._process.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None
        await asyncio.to_thread(self.models.close)

    async def ensure_running(self) -> None:
        """Replaces a supervised ComfyUI that died while idle. An attached one that is down is only polled (the
        executor's watchdog calls this every few seconds): that is not an error of the executor's."""
        async with self._lock:
            try:
                await self._ensure_running()
            except ComfyLostError:
                if self._process is not None:
                    raise

    async def _ensure_running(self) -> None:
        if self._process is None:
            answering = self._session is not None and await self.client.responsive()
            if answering != self._reachable:
                log.log(logging.INFO if answering else logging.WARNING, "ComfyUI at %s is %s", self.config.url,
                        "answering again" if answering else "not answering")
            self._reachable = answering
            if not answering:
                raise ComfyLostError(f"ComfyUI at {self.config.url} is not answering")
            if self.ready is None:
                await self._load_catalog()
            return
        if self._process.alive and self._session is not None:
            return
        if self.ready is not None:
            log.warning("ComfyUI exited while idle (code %s); starting it again", self._process.exit_code)
            self.restarts += 1
            self.on_worker_lost()
        await self.start()

    async def _restart(self, why: str) -> None:
        """Kills a supervised ComfyUI and starts it again (an attached one is only polled until it answers)."""
        self.restarts += 1
        self.on_worker_lost()
        if self._process is None:
            self._reachable = False  # polled by ensure_running until it answers again
            log.error("ComfyUI at %s: %s; it is not supervised here, so it is not restarted", self.config.url, why)
            return
        log.warning("%s; restarting ComfyUI", why)
        await self._process.kill()
        try:
            await self.start()
        except (ComfyStartError, ComfyUnavailableError) as exc:
            log.error("ComfyUI did not come back: %s", exc)  # the next job (or the watchdog) tries again

    # -- jobs --------------------------------------------------------------------------------------

    def interrupt(self) -> None:
        """Interrupts the running job (ComfyUI's targeted interrupt); the grace period starts now."""
        if self._interrupt_at is None:
            self._interrupt_at = time.monotonic()
        prompt_id = self._prompt_in_flight
        if prompt_id is not None and self._session is not None:
            task = asyncio.get_running_loop().create_task(self._send_interrupt(prompt_id))
            self._interrupts.add(task)
            task.add_done_callback(self._interrupts.discard)

    async def _send_interrupt(self, prompt_id: str) -> None:
        try:
            await self.client.interrupt(prompt_id)
        except ComfyUnavailableError as exc:
            log.warning("interrupting ComfyUI failed: %s", exc)  # the grace period still applies

    async def run(self, job: Job) -> AsyncIterator[Event | WorkerLost]:
        """Runs a job, yielding engine events until the terminal one (or WorkerLost)."""
        async with self._lock:
            self._interrupt_at = None
            try:
                async for item in self._run(job):
                    yield item
            finally:
                self._prompt_in_flight = None

    async def _run(self, job: Job) -> AsyncIterator[Event | WorkerLost]:
        try:
            await self._ensure_running()
        except (ComfyLostError, ComfyStartError, ComfyUnavailableError) as exc:
            yield WorkerLost(f"ComfyUI is not available: {exc}", None)
            return
        socket: _Socket | None = None
        try:
            prompt = await self._upload_inputs(job)
            refused = _tenant_paths_named(prompt)
            if refused:
                yield validation_failure(_NOT_IN_LIST_ERROR, refused, prompt)
                return
            prompt = await self._tenant_models(prompt, job.tenant)
            await self._fetch_models(prompt)
            socket = await self._open_socket()
            translator = PromptTranslator(job.execution_id, prompt_id_for(job.execution_id, job.attempt), prompt,
                                          self._output_classes())
            if self._interrupt_at is not None:  # interrupted before anything ran
                yield Cancelled("")
                return
            try:
                await self.client.post_prompt(prompt, translator.prompt_id, self.config.client_id)
            except PromptRejectedError as rejected:
                yield validation_failure(rejected.error, rejected.node_errors, prompt)
                return
            self._prompt_in_flight = translator.prompt_id
            if self._interrupt_at is not None:
                self.interrupt()
            async for event in self._follow(translator, socket):
                yield event
            result = translator.result
            assert result is not None
            if isinstance(result, Completed):
                outputs = await collect(result.ui, translator.images, job.output_dir, job.temp_dir,
                                        self.client.download)
                yield Succeeded(outputs, translator.timings, result.ui)
            else:
                yield result
        except ComfyLostError as exc:
            await self._restart(str(exc))
            yield WorkerLost(self._lost_message(exc), exc.exit_code)
        except ComfyUnavailableError as exc:
            lost = await self._classify(exc)
            await self._restart(str(lost))
            yield WorkerLost(self._lost_message(lost), lost.exit_code)
        except UnsafeOutputNameError as exc:
            yield Failed("INTERNAL_ERROR", f"ComfyUI reported an unusable output: {exc}")
        finally:
            if socket is not None:
                await socket.close()

    async def _tenant_models(self, prompt: dict[str, Any], tenant: str) -> dict[str, Any]:
        """The graph with each model name the tenant owns a model of replaced by the path ComfyUI lists that model
        under (linked into the view first): the tenant's own model wins over a shared one, as on the built-in
        engine. The graph is returned as it was when the tenant has none of the names."""
        names = list(dict.fromkeys(model_names(prompt)))
        if not names or not tenant:
            return prompt
        private = {}
        for name in names:
            found = await asyncio.to_thread(self.models.tenant_model, name, tenant)
            if found is not None:
                private[name] = found
        if not private:
            return prompt
        rewritten = copy.deepcopy(prompt)
        for _node_id, inputs, input_name, value in list(model_inputs(rewritten)):
            if value in private:
                inputs[input_name] = private[value]  # type: ignore[index]  # the graph's own dict
        return rewritten

    async def _fetch_models(self, prompt: dict[str, Any]) -> None:
        """Fetches the models the graph names that ComfyUI does not list yet (uploaded to the models bucket, never
        prefetched here) into the disk tier and the view, so ComfyUI's own validation finds them. A name found
        nowhere is left to that validation, which reports it per node."""
        unlisted = self.models.unlisted(model_names(prompt))
        if not unlisted:
            return
        outcome = await asyncio.to_thread(self.models.prefetch, tuple(unlisted))
        if outcome.models:
            with contextlib.suppress(ComfyUnavailableError):
                await self._load_catalog()

    def _lost_message(self, lost: ComfyLostError) -> str:
        return f"{lost}; ComfyUI was restarted" if self._process is not None else str(lost)

    async def _classify(self, error: ComfyUnavailableError) -> ComfyLostError:
        if self._process is not None and not self._process.alive:
            return ComfyLostError(f"ComfyUI exited with code {self._process.exit_code} during the job",
                         self._process.exit_code)
        return ComfyLostError(f"ComfyUI stopped answering during the job: {error}")

    def _output_classes(self) -> frozenset[str]:
        catalog = self.ready.catalog if self.ready is not None else {}
        return frozenset(name for name, info in catalog.items() if isinstance(info, dict) and info.get("output_node"))

    async def _upload_inputs(self, job: Job) -> dict[str, Any]:
        """Uploads the job's input files; the graph, with any input renamed as ComfyUI stored it."""
        prompt: dict[str, Any] = job.prompt
        renamed: dict[str, str] = {}
        for name, path in job.inputs.items():
            stored = await self.client.upload_input(path, name)
            if stored != name:
                renamed[name] = stored
        if not renamed:
            return prompt
        return {node_id: {**node, "inputs": {k: renamed.get(v, v) if isinstance(v, str) else v
                                             for k, v in node.get("inputs", {}).items()}}
                for node_id, node in prompt.items()}

    async def _open_socket(self) -> _Socket:
        socket = _Socket(await self.client.connect(self.config.client_id))
        await self._handshake(socket)
        return socket

    async def _handshake(self, socket: _Socket) -> None:
        """Reads ComfyUI's greeting and negotiates preview metadata (previews then name their prompt and node)."""
        try:
            greeting = await asyncio.wait_for(socket.frames.get(), HANDSHAKE_SECONDS)
        except TimeoutError:
            await socket.close()
            raise ComfyUnavailableError("the websocket sent no status frame") from None
        if greeting is None:
            await socket.close()
            raise ComfyUnavailableError("the websocket closed right after it opened")
        try:
            await socket.ws.send_json(FEATURE_FLAGS)
        except (aiohttp.ClientError, OSError) as exc:
            await socket.close()
            raise ComfyUnavailableError(f"the websocket failed during the handshake: {exc}") from exc
        deadline = time.monotonic() + FEATURE_REPLY_SECONDS
        while time.monotonic() < deadline:  # frames before our POST are never ours
            with contextlib.suppress(TimeoutError):
                frame = await asyncio.wait_for(socket.frames.get(), max(0.0, deadline - time.monotonic()))
                if frame is None:
                    await socket.close()
                    raise ComfyUnavailableError("the websocket closed during the handshake")
                if getattr(frame, "type", None) == "feature_flags":
                    break

    async def _follow(self, translator: PromptTranslator, socket: _Socket) -> AsyncIterator[Event]:
        """Yields the prompt's events until its outcome is known (`translator.result`)."""
        heard = time.monotonic()
        while translator.result is None:
            self._check_health_of_process()
            self._check_interrupt_grace()
            try:
                frame = await asyncio.wait_for(socket.frames.get(), TICK_SECONDS)
            except TimeoutError:
                if time.monotonic() - heard > self.config.silence_seconds:
                    log.warning("ComfyUI sent nothing for %.0f s; checking its history", self.config.silence_seconds)
                    for event in await self._reconcile(translator):
                        yield event
                    heard = time.monotonic()
                continue
            if frame is None:  # the socket dropped: reopen it, then ask history what we missed meanwhile
                log.warning("the ComfyUI websocket closed during prompt %s; reconnecting", translator.prompt_id)
                await socket.reopen(await self.client.connect(self.config.client_id))
                await self._handshake(socket)
                for event in await self._reconcile(translator):
                    yield event
                heard = time.monotonic()
                continue
            heard = time.monotonic()
            for event in translator.feed(frame):
                yield event

    async def _reconcile(self, translator: PromptTranslator) -> list[Event]:
        """Ends the prompt from /history when it finished; checks it is still queued or running otherwise."""
        entry = entry_of(await self.client.history(translator.prompt_id), translator.prompt_id)
        if entry is not None:
            return replay(entry, translator)
        if not await self.client.responsive():
            raise ComfyLostError("ComfyUI stopped answering during the job")
        queue = await self.client.queue()
        if not _queued(queue, translator.prompt_id):
            if self._interrupt_at is not None:  # dropped from the queue by our interrupt before it ran
                translator.result = Cancelled("", translator.timings)
                return []
            raise ComfyLostError(f"ComfyUI lost prompt {translator.prompt_id}: it is neither queued, running nor "
                                 "in history")
        return []

    def _check_health_of_process(self) -> None:
        if self._process is not None and not self._process.alive:
            code = self._process.exit_code
            raise ComfyLostError(f"ComfyUI exited with code {code} during the job", code)

    def _check_interrupt_grace(self) -> None:
        if self._interrupt_at is not None and time.monotonic() - self._interrupt_at > self.config.interrupt_grace:
            raise ComfyLostError(f"a node ignored the interrupt for {self.config.interrupt_grace:.0f} s")

    # -- models ------------------------------------------------------------------------------------

    async def refresh_catalog(self) -> bool | None:
        """Reads ComfyUI's /object_info again (it rescans its model folders itself); True when it changed. Skipped
        (None) while a job or a prefetch runs."""
        if self._lock.locked() or self.ready is None:
            return None
        async with self._lock:
            before = self.catalog_hash
            with contextlib.suppress(ComfyUnavailableError):
                await self._load_catalog()
            return self.catalog_hash != before

    async def prefetch(self, names: tuple[str, ...], tier: str) -> PrefetchOutcome:
        """Brings models to the disk tier and into ComfyUI's lists (models.py); the catalog is read again, since its
        model lists changed."""
        async with self._lock:
            outcome = await asyncio.to_thread(self.models.prefetch, names)
            if outcome.models:
                with contextlib.suppress(ComfyUnavailableError):
                    await self._load_catalog()
            return outcome


def _queued(queue: Any, prompt_id: str) -> bool:
    if not isinstance(queue, dict):
        return False
    for key in ("queue_running", "queue_pending"):
        for item in queue.get(key) or ():
            if isinstance(item, list) and len(item) > 1 and item[1] == prompt_id:
                return True
    return False


# ComfyUI's top-level error for a prompt whose inputs failed validation (its 400 body's "error").
_NOT_IN_LIST_ERROR = {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                      "details": "", "extra_info": {}}


def _tenant_paths_named(prompt: dict[str, Any]) -> dict[str, Any]:
    """ComfyUI-shaped node_errors for every model input naming a `tenants/...` path itself: those are storage
    paths of tenants' private models, which ComfyUI lists (they are linked into the shared view) but no graph may
    name. Empty when there is none. The refusal is ComfyUI's own "value not in list", as for any unknown model."""
    errors: dict[str, Any] = {}
    for node_id, _inputs, input_name, value in model_inputs(prompt):
        if is_tenant_path(value):
            entry = errors.setdefault(node_id, {"errors": [], "dependent_outputs": [],
                                                "class_type": prompt[node_id].get("class_type", "")})
            entry["errors"].append({"type": "value_not_in_list", "message": "Value not in list",
                                    "details": f"{input_name}: '{value}' not in list",
                                    "extra_info": {"input_name": input_name, "received_value": value}})
    return errors
