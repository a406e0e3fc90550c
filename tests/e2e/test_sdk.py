"""The Python SDK against the real platform, through the gateway: submit with overrides, typed watch events, a
watch resumed after a break and after a dropped connection, wait/get/list/cancel/download, typed errors, models,
API keys and webhooks, with the blocking and the asyncio clients."""

from __future__ import annotations

import contextlib
import hashlib
import io
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from comfymesh.client import (
    AsyncComfyMesh,
    Cancelled,
    ComfyMesh,
    Event,
    ExecutionFailedError,
    ExecutionState,
    Failed,
    FailedPreconditionError,
    InvalidArgumentError,
    NodeExecuted,
    NodeProgress,
    NodesCached,
    NodeStarted,
    NotFoundError,
    Queued,
    ReconnectPolicy,
    Started,
    Succeeded,
    UnauthenticatedError,
    Workflow,
)
from launcher.platform import Endpoints
from services.model.testing import write_safetensors
from tests.e2e.node_pack import image_graph

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def titled_graph(**kwargs: Any) -> Workflow:
    """The node pack's image graph with ComfyUI `_meta` titles, as a saved workflow_api.json has them."""
    graph: dict[str, Any] = image_graph(**kwargs)
    titles = {"1": "Canvas", "2": "Invert", "3": "Save", "4": "Slow", "5": "Fail"}
    for node_id, node in graph.items():
        node["_meta"] = {"title": titles[node_id]}
    return Workflow(graph)


@pytest.fixture
def mesh(endpoints: Endpoints) -> Iterator[ComfyMesh]:
    with ComfyMesh(endpoints.gateway, endpoints.admin_key) as client:
        yield client


def _ids(events: list[Event]) -> list[str]:
    return [event.event_id for event in events]


def test_submit_with_overrides_watch_wait_get_list_and_download(mesh: ComfyMesh, tmp_path: Path) -> None:
    label = secrets.token_hex(4)
    execution = mesh.submit(titled_graph(), overrides=["Canvas.width=40", "1.height=24", "Save.filename_prefix=sdk"],
                            labels={"sdk": label}, priority=3)
    assert ExecutionState(execution.state) is ExecutionState.QUEUED and execution.priority == 3

    events = list(mesh.watch(execution.id))
    assert isinstance(events[0], Queued) and isinstance(events[-1], Succeeded)
    assert any(isinstance(e, Started) for e in events)
    # The executor caches node outputs across executions, so an earlier test's identical canvas may be reused: the
    # output node always runs, its input ran or came from the cache, and a node needed only by cached nodes does
    # neither (the canvas, when the inverted image was cached).
    started = {e.node_id for e in events if isinstance(e, NodeStarted)}
    cached = {node for e in events if isinstance(e, NodesCached) for node in e.node_ids}
    assert "3" in started and "2" in started | cached, (started, cached)
    assert "1" in started | cached if "2" in started else "1" not in started, (started, cached)
    assert [e.class_type for e in events if isinstance(e, NodeExecuted) and e.node_id == "3"] == ["SaveImage"]
    assert isinstance(events[-1], Succeeded) and events[-1].outputs[0].filename.startswith("sdk")
    assert len(set(_ids(events))) == len(events) and all(e.execution_id == execution.id for e in events)

    final = mesh.wait(execution.id, timeout=60)  # already finished: returns at once with the outputs
    assert ExecutionState(final.state) is ExecutionState.SUCCEEDED and final.last_event_id == events[-1].event_id
    assert [o.sha256 for o in mesh.get(execution.id).outputs] == [o.sha256 for o in final.outputs]
    listed = list(mesh.list(labels={"sdk": label}))
    assert [e.id for e in listed] == [execution.id]
    assert execution.id in [e.id for e in mesh.list(states=["succeeded"], limit=50)]
    # Across pages: one execution a page gives the same list, and `limit` stops within it.
    everything = [e.id for e in mesh.list()]
    assert [e.id for e in mesh.list(page_size=1)] == everything and len(everything) >= 1
    assert [e.id for e in mesh.list(page_size=1, limit=2)] == everything[:2]
    assert list(mesh.list(limit=0)) == []

    [path] = mesh.download_outputs(execution.id, tmp_path / "out")
    data = path.read_bytes()
    assert path.is_relative_to(tmp_path / "out") and hashlib.sha256(data).hexdigest() == final.outputs[0].sha256
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (40, 24)


def test_a_bad_graph_raises_invalid_argument_with_reason_and_field_violations(mesh: ComfyMesh) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        mesh.submit(titled_graph(), overrides=["Canvas.width=0"])
    error = caught.value
    assert error.reason == "WORKFLOW_INVALID" and error.from_server
    assert any("width" in violation.field for violation in error.field_violations), error.field_violations
    assert str(error).startswith("WORKFLOW_INVALID: ") and "\n" not in str(error)
    with pytest.raises(NotFoundError) as missing:
        mesh.get("0" * 32)
    assert missing.value.reason == "EXECUTION_NOT_FOUND"


def test_a_failed_execution_and_a_cancelled_one(mesh: ComfyMesh) -> None:
    failing = mesh.submit(titled_graph(fail=True))
    seen: list[Event] = []
    final = mesh.wait(failing.id, timeout=60, on_event=seen.append)
    assert ExecutionState(final.state) is ExecutionState.FAILED
    assert isinstance(seen[-1], Failed) and isinstance(seen[-1].error, ExecutionFailedError)
    assert seen[-1].error.reason == "NODE_EXECUTION_FAILED" and not seen[-1].retryable

    slow = mesh.submit(titled_graph(seconds=30))
    for event in mesh.watch(slow.id):
        if isinstance(event, NodeProgress):
            break  # running now
    mesh.cancel(slow.id, reason="sdk test")
    events = list(mesh.watch(slow.id))
    assert isinstance(events[-1], Cancelled) and events[-1].state is ExecutionState.CANCELLED
    with pytest.raises(FailedPreconditionError) as finished:
        mesh.cancel(slow.id)
    assert finished.value.reason == "EXECUTION_FINISHED"


def test_a_watch_broken_off_resumes_from_the_last_event_id(mesh: ComfyMesh) -> None:
    execution = mesh.submit(titled_graph(seconds=0.6))
    first: list[Event] = []
    for event in mesh.watch(execution.id):
        first.append(event)
        if len(first) == 3:
            break
    rest = list(mesh.watch(execution.id, after_event_id=first[-1].event_id))
    full = list(mesh.watch(execution.id))
    assert _ids(first + rest) == _ids(full) and isinstance(full[-1], Succeeded)


class DroppingProxy:
    """A real TCP forwarder in front of the gateway whose open connections the test can cut, as a network would."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._upstream)
            with self._lock:
                self.connections += 1
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def drop_all(self) -> None:
        with self._lock:
            dropped, self._sockets = self._sockets, []
        for end in dropped:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def close(self) -> None:
        self._listener.close()
        self.drop_all()


def test_a_dropped_connection_is_resumed_transparently(endpoints: Endpoints, mesh: ComfyMesh) -> None:
    proxy = DroppingProxy(endpoints.gateway)
    try:
        with ComfyMesh(proxy.address, endpoints.admin_key,
                       reconnect=ReconnectPolicy(initial_backoff=0.05, max_backoff=0.5)) as through_proxy:
            execution = through_proxy.submit(titled_graph(seconds=2))
            events: list[Event] = []
            dropped = False
            for event in through_proxy.watch(execution.id):
                events.append(event)
                if isinstance(event, NodeProgress) and not dropped:
                    proxy.drop_all()  # mid-stream, while the node is still running
                    dropped = True
        assert dropped and proxy.connections >= 2
        full = list(mesh.watch(execution.id))
        assert _ids(events) == _ids(full), "events were lost or repeated across the reconnection"
        assert isinstance(events[-1], Succeeded)
    finally:
        proxy.close()


def test_models_upload_with_progress_list_and_delete(mesh: ComfyMesh, tmp_path: Path) -> None:
    layout: dict[str, tuple[int, ...]] = {}
    for name, (cout, cin) in {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": (320, 768),
                              "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (768, 768)}.items():
        layout[f"{name}.lora_down.weight"] = (4, cin)
        layout[f"{name}.lora_up.weight"] = (cout, 4)
    path = write_safetensors(tmp_path / "style.safetensors", layout, metadata={"tag": secrets.token_hex(4)},
                             fill="random")
    name = f"sdk/{secrets.token_hex(4)}.safetensors"
    progress: list[tuple[int, int]] = []
    model = mesh.models.upload(path, "lora", name=name, progress=lambda sent, total: progress.append((sent, total)))
    size = path.stat().st_size
    assert (model.name, model.size_bytes, model.lora_rank) == (name, size, 4)
    assert model.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert progress[-1] == (size, size) and [sent for sent, _ in progress] == sorted(sent for sent, _ in progress)
    assert [m.model_id for m in mesh.models.list(name_contains=name)] == [model.model_id]
    assert [m.model_id for m in mesh.models.list(kind="lora", name_contains=name)] == [model.model_id]
    mesh.models.delete(model.model_id)
    with pytest.raises(NotFoundError):
        mesh.models.get(model.model_id)
    with pytest.raises(InvalidArgumentError, match="unknown model kind"):
        mesh.models.upload(path, "pickles")


def test_api_keys_create_list_and_revoke(endpoints: Endpoints, mesh: ComfyMesh) -> None:
    created = mesh.keys.create(f"sdk-{secrets.token_hex(3)}")
    assert created.secret and created.api_key.key_id
    with ComfyMesh(endpoints.gateway, created.secret) as as_new_key:
        assert as_new_key.whoami().principal.principal_id
        assert created.api_key.key_id in [k.key_id for k in mesh.keys.list()]
        revoked = mesh.keys.revoke(created.api_key.key_id)
        assert revoked.HasField("revoke_time")
        deadline = time.monotonic() + 15  # "stops working within seconds"
        with pytest.raises(UnauthenticatedError) as refused:  # noqa: PT012 - polls until the revocation is seen
            while time.monotonic() < deadline:
                as_new_key.whoami()
                time.sleep(0.5)
        assert refused.value.reason == "UNAUTHENTICATED"


def test_webhooks_create_list_and_delete(mesh: ComfyMesh) -> None:
    # A public address literal: accepted without DNS; only cancellations would be sent to it, and it is deleted.
    created = mesh.webhooks.create(f"https://1.1.1.1/comfymesh/{secrets.token_hex(4)}", event_types=["cancelled"])
    subscription = created.subscription
    try:
        assert created.secret and list(subscription.event_types) == [6]
        assert subscription.subscription_id in [s.subscription_id for s in mesh.webhooks.list()]
        assert mesh.webhooks.get(subscription.subscription_id).url == subscription.url
    finally:
        mesh.webhooks.delete(subscription.subscription_id)
    with pytest.raises(NotFoundError) as gone:
        mesh.webhooks.get(subscription.subscription_id)
    assert gone.value.reason == "WEBHOOK_NOT_FOUND"
    with pytest.raises(InvalidArgumentError) as refused:
        mesh.webhooks.create("http://127.0.0.1/hook")
    assert refused.value.reason == "URL_NOT_ALLOWED" and refused.value.field_violations


def test_a_service_port_is_addressed_like_the_gateway(endpoints: Endpoints) -> None:
    with ComfyMesh(f"http://{endpoints.control_plane}", endpoints.admin_key) as direct:
        assert direct.queue_stats().max_queue_size > 0
        assert any(node.name == "SaveImage" for node in direct.nodes())


async def test_the_async_client(endpoints: Endpoints, tmp_path: Path) -> None:
    async with AsyncComfyMesh(endpoints.gateway, endpoints.admin_key) as mesh:
        execution = await mesh.submit(titled_graph(), overrides=["Canvas.width=20", "Canvas.height=10"])
        events = [event async for event in mesh.watch(execution.id)]
        assert isinstance(events[0], Queued) and isinstance(events[-1], Succeeded)
        final = await mesh.wait(execution.id, timeout=60)
        assert ExecutionState(final.state) is ExecutionState.SUCCEEDED
        assert execution.id in [e.id async for e in mesh.list(limit=20)]
        everything = [e.id async for e in mesh.list()]
        assert [e.id async for e in mesh.list(page_size=1)] == everything and len(everything) >= 2
        assert [e.id async for e in mesh.list(page_size=1, limit=2)] == everything[:2]
        assert [e async for e in mesh.list(limit=0)] == []
        [path] = await mesh.download_outputs(final, tmp_path)
        with Image.open(path) as image:
            assert image.size == (20, 10)

        first: list[Event] = []
        async for event in mesh.watch(execution.id):
            first.append(event)
            if len(first) == 2:
                break
        rest = [event async for event in mesh.watch(execution.id, after_event_id=first[-1].event_id)]
        assert _ids(first + rest) == _ids(events)

        with pytest.raises(InvalidArgumentError) as caught:
            await mesh.submit(titled_graph(), overrides=["Canvas.width=0"])
        assert caught.value.reason == "WORKFLOW_INVALID" and caught.value.field_violations
        failing = await mesh.submit(titled_graph(fail=True))
        failed = await mesh.wait(failing.id, timeout=60)
        assert ExecutionState(failed.state) is ExecutionState.FAILED
        assert any(node.name == "EmptyImage" for node in await mesh.nodes())
        assert (await mesh.queue_stats()).max_queue_size > 0
