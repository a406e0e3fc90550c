"""The asyncio client: `AsyncComfyMesh(url, api_key)`, the same surface as `ComfyMesh` with awaitables and async
iterators."""

from __future__ import annotations

import asyncio
import builtins
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc
import grpc.aio

from comfymesh.auth.v1 import auth_service_pb2 as auth_pb
from comfymesh.auth.v1 import auth_service_pb2_grpc as auth_grpc
from comfymesh.client import _requests as requests
from comfymesh.client._channel import call_metadata, default_api_key, default_url, open_aio_channel, parse_target
from comfymesh.client._watch import Deadline, ReconnectPolicy, WatchCursor
from comfymesh.client.errors import ComfyMeshError, DeadlineExceededError, from_rpc_error
from comfymesh.client.events import Event, ExecutionState
from comfymesh.client.sync import DEFAULT_TIMEOUT, TRANSFER_TIMEOUT
from comfymesh.client.workflow import Override
from comfymesh.common.v1 import catalog_pb2
from comfymesh.model.v1 import model_service_pb2 as model_pb
from comfymesh.model.v1 import model_service_pb2_grpc as model_grpc
from comfymesh.queue.v1 import queue_service_pb2 as queue_pb
from comfymesh.queue.v1 import queue_service_pb2_grpc as queue_grpc
from comfymesh.webhook.v1 import webhook_service_pb2 as webhook_pb
from comfymesh.webhook.v1 import webhook_service_pb2_grpc as webhook_grpc
from comfymesh.workflow.v1 import execution_pb2
from comfymesh.workflow.v1 import workflow_service_pb2 as workflow_pb
from comfymesh.workflow.v1 import workflow_service_pb2_grpc as workflow_grpc

T = TypeVar("T")
P = TypeVar("P")  # a List RPC's response page


class _Calls:
    """Runs calls with the credential and a deadline, turning grpc errors into typed ComfyMesh errors."""

    def __init__(self, api_key: str | None, timeout: float) -> None:
        self.metadata = call_metadata(api_key)
        self.timeout = timeout

    async def unary(self, method: Callable[..., Awaitable[T]], request: object, seconds: float | None = None) -> T:
        try:
            return await method(request, metadata=self.metadata, timeout=seconds or self.timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    async def pages(self, method: Callable[..., Awaitable[P]], request: Any,
                    items: Callable[[P], Iterable[T]]) -> AsyncIterator[T]:
        """The items of a List RPC across all its pages (`request.page_token` is advanced in place)."""
        while True:
            page: Any = await self.unary(method, request)
            for item in items(page):
                yield item
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    async def stream(self, method: Callable[..., Any], request: object,
                     seconds: float | None = None) -> AsyncIterator[Any]:
        call = method(request, metadata=self.metadata, timeout=seconds)
        try:
            async for message in call:
                yield message
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()  # the caller stopped early: free the stream now


class AsyncComfyMesh:
    """A connection to a ComfyMesh gateway (or one service) with an API key, for asyncio code.

    Defaults as `ComfyMesh`: COMFYMESH_URL or 127.0.0.1:8080; COMFYMESH_API_KEY or `$COMFYMESH_HOME/admin.key`.
    Use `async with`, or await `close()`.
    """

    def __init__(self, url: str | None = None, api_key: str | None = None, *, timeout: float = DEFAULT_TIMEOUT,
                 reconnect: ReconnectPolicy | None = None) -> None:
        self.target = parse_target(url or default_url())
        self._channel = open_aio_channel(self.target)
        self._calls = _Calls(api_key if api_key is not None else default_api_key(), timeout)
        self._reconnect = reconnect or ReconnectPolicy()
        self._workflow = workflow_grpc.WorkflowServiceStub(self._channel)
        self._queue = queue_grpc.QueueServiceStub(self._channel)
        self._auth = auth_grpc.AuthServiceStub(self._channel)
        self.models = AsyncModels(model_grpc.ModelServiceStub(self._channel), self._calls)
        self.keys = AsyncKeys(self._auth, self._calls)
        self.webhooks = AsyncWebhooks(webhook_grpc.WebhookServiceStub(self._channel), self._calls)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    # --- executions ---

    async def submit(self, workflow: requests.WorkflowSource, *, overrides: Iterable[Override | str] = (),
                     inputs: Mapping[str, bytes | str | os.PathLike[str]] | None = None, priority: int = 0,
                     labels: Mapping[str, str] | None = None, request_id: str | None = None,
                     webhook_url: str = "", queue_timeout: float | timedelta | None = None,
                     run_timeout: float | timedelta | None = None) -> execution_pb2.Execution:
        """Queues a workflow with overrides applied; see `ComfyMesh.submit`."""
        keys = {name: await self.upload_input(source, name) for name, source in (inputs or {}).items()}
        request = requests.submit_request(workflow, overrides=overrides, priority=priority, inputs=keys,
                                          labels=labels, request_id=request_id, webhook_url=webhook_url,
                                          queue_timeout=queue_timeout, run_timeout=run_timeout)
        return await self._calls.unary(self._workflow.SubmitExecution, request)

    async def validate(self, workflow: requests.WorkflowSource, *,
                       overrides: Iterable[Override | str] = ()) -> workflow_pb.ValidateWorkflowResponse:
        """Checks a workflow against the fleet's catalog without running it."""
        graph = requests.as_workflow(workflow).with_overrides(overrides)
        return await self._calls.unary(self._workflow.ValidateWorkflow,
                                       workflow_pb.ValidateWorkflowRequest(workflow_json=graph.to_json()))

    async def upload_input(self, source: bytes | str | os.PathLike[str], name: str) -> str:
        """Uploads an input file; returns the object key a submission references."""
        filename, data = await asyncio.to_thread(requests.input_bytes, source, name)
        response = await self._calls.unary(self._workflow.UploadInput, workflow_pb.UploadInputRequest(
            filename=filename, data=data), seconds=TRANSFER_TIMEOUT)
        return response.object_key

    async def get(self, execution_id: str) -> execution_pb2.Execution:
        """An execution with its state, timings, error and outputs."""
        return await self._calls.unary(self._workflow.GetExecution,
                                       workflow_pb.GetExecutionRequest(id=execution_id))

    async def list(self, *, states: Iterable[ExecutionState | str] = (), labels: Mapping[str, str] | None = None,
                   limit: int | None = None, page_size: int = 0) -> AsyncIterator[execution_pb2.Execution]:
        """The caller's executions, newest first, across pages (at most `limit`)."""
        request = requests.list_request(states=states, labels=labels, page_size=page_size)
        if limit is not None and limit <= 0:
            return
        yielded = 0
        async for execution in self._calls.pages(self._workflow.ListExecutions, request,
                                                 lambda page: page.executions):
            yield execution
            yielded += 1
            if limit is not None and yielded >= limit:
                return

    async def cancel(self, execution_id: str, reason: str = "") -> execution_pb2.Execution:
        """Cancels a queued or running execution (EXECUTION_FINISHED when it already ended)."""
        return await self._calls.unary(self._workflow.CancelExecution,
                                       workflow_pb.CancelExecutionRequest(id=execution_id, reason=reason))

    async def watch(self, execution_id: str, *, after_event_id: str = "", include_previews: bool = False,
                    include_heartbeats: bool = False,
                    timeout: float | None = None,  # noqa: ASYNC109 - bounds the whole watch, across reconnections
                    ) -> AsyncIterator[Event]:
        """The execution's typed events, ending with the terminal event, resumed transparently after a drop."""
        cursor = WatchCursor(execution_id, after_event_id=after_event_id, include_previews=include_previews,
                             include_heartbeats=include_heartbeats, policy=self._reconnect)
        deadline = Deadline(execution_id, timeout)
        while not cursor.finished:
            error: ComfyMeshError | None = None
            try:
                async for message in self._calls.stream(self._workflow.WatchExecution, cursor.request(),
                                                        seconds=deadline.remaining()):
                    event = cursor.accept(message)
                    if event is not None:
                        yield event
                    if cursor.finished:
                        return
            except DeadlineExceededError as exc:
                raise deadline.expired() if deadline.bounded else exc from None
            except ComfyMeshError as exc:
                error = exc
            delay = cursor.retry_delay(error)
            deadline.remaining()
            await asyncio.sleep(delay)

    async def wait(self, execution_id: str, *,
                   timeout: float | None = None,  # noqa: ASYNC109 - the same keyword as ComfyMesh.wait
                   on_event: Callable[[Event], None] | None = None) -> execution_pb2.Execution:
        """Follows the execution to its end and returns it (check `.state`); DeadlineExceeded after `timeout`."""
        async for event in self.watch(execution_id, timeout=timeout):
            if on_event is not None:
                on_event(event)
        return await self.get(execution_id)

    async def download_outputs(self, execution: str | execution_pb2.Execution,
                               directory: str | os.PathLike[str]) -> builtins.list[Path]:
        """Saves every output file under `directory` (keeping subfolders); returns their paths."""
        found = await self.get(execution) if isinstance(execution, str) else execution
        target = Path(directory)
        paths: builtins.list[Path] = []
        for output in found.outputs:
            path = requests.output_path(target, output)
            await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
            partial = path.with_name(path.name + ".part")
            file = await asyncio.to_thread(partial.open, "wb")  # disk I/O off the event loop
            try:
                async for body in self._calls.stream(self._workflow.DownloadOutput, workflow_pb.DownloadOutputRequest(
                        id=found.id, filename=requests.output_name(output)), seconds=TRANSFER_TIMEOUT):
                    await asyncio.to_thread(file.write, body.data)
            finally:
                file.close()
            await asyncio.to_thread(partial.replace, path)
            paths.append(path)
        return paths

    # --- the fleet ---

    async def nodes(self, *, category: str = "") -> builtins.list[catalog_pb2.NodeDefinition]:
        """The node classes the fleet can run."""
        response = await self._calls.unary(self._workflow.ListNodes, workflow_pb.ListNodesRequest(category=category))
        return builtins.list(response.nodes)

    async def queue_stats(self) -> queue_pb.QueueStats:
        """Queue depth per priority, running jobs, executors, wait times."""
        return await self._calls.unary(self._queue.GetQueueStats, queue_pb.GetQueueStatsRequest())

    async def whoami(self) -> auth_pb.WhoAmIResponse:
        """The caller's principal, tenant and scopes."""
        return await self._calls.unary(self._auth.WhoAmI, auth_pb.WhoAmIRequest())


class AsyncModels:
    """Model files: upload (streamed, with progress), list, get, delete."""

    def __init__(self, stub: model_grpc.ModelServiceAsyncStub, calls: _Calls) -> None:
        self._stub = stub
        self._calls = calls

    async def upload(self, path: str | os.PathLike[str], kind: str | int, *, name: str | None = None,
                     progress: requests.ProgressCallback | None = None,
                     request_id: str | None = None) -> model_pb.Model:
        """Streams a safetensors file; `progress(sent, total)` is called after each chunk."""
        file = Path(path)
        kind_value = requests.model_kind(kind)
        size, digest = await asyncio.to_thread(requests.file_digest, file)
        first = requests.upload_metadata(file, name=name or file.name, kind=kind_value,
                                         request_id=request_id or str(uuid.uuid4()), size=size, digest=digest)

        async def messages() -> AsyncIterator[model_pb.UploadModelRequest]:
            yield first
            sent = 0
            reader = await asyncio.to_thread(file.open, "rb")
            try:
                while chunk := await asyncio.to_thread(reader.read, requests.CHUNK_BYTES):
                    yield model_pb.UploadModelRequest(chunk=chunk)
                    sent += len(chunk)
                    if progress is not None:
                        progress(sent, size)
            finally:
                reader.close()

        return await self._calls.unary(self._stub.UploadModel, messages(), seconds=TRANSFER_TIMEOUT)

    async def get(self, model_id: str) -> model_pb.Model:
        return await self._calls.unary(self._stub.GetModel, model_pb.GetModelRequest(model_id=model_id))

    async def list(self, *, kind: str | int | None = None, name_contains: str = "") -> AsyncIterator[model_pb.Model]:
        """Models visible to the caller, by name, across pages."""
        request = model_pb.ListModelsRequest(name_contains=name_contains)
        if kind is not None:
            request.kind = requests.model_kind(kind)
        async for model in self._calls.pages(self._stub.ListModels, request, lambda page: page.models):
            yield model

    async def delete(self, model_id: str) -> None:
        """Deletes a model (MODEL_IN_USE while queued or running executions reference it)."""
        await self._calls.unary(self._stub.DeleteModel, model_pb.DeleteModelRequest(model_id=model_id))


class AsyncKeys:
    """API keys: create (the secret is returned once), list, revoke."""

    def __init__(self, stub: auth_grpc.AuthServiceAsyncStub, calls: _Calls) -> None:
        self._stub = stub
        self._calls = calls

    async def create(self, display_name: str = "", *, scopes: Iterable[str] = (),
                     ttl: float | timedelta | None = None, principal_id: str = "") -> auth_pb.CreateApiKeyResponse:
        request = auth_pb.CreateApiKeyRequest(display_name=display_name, scopes=builtins.list(scopes),
                                              principal_id=principal_id, request_id=str(uuid.uuid4()))
        if (lifetime := requests.duration(ttl)) is not None:
            request.ttl.CopyFrom(lifetime)
        return await self._calls.unary(self._stub.CreateApiKey, request)

    async def list(self, *, principal_id: str = "") -> AsyncIterator[auth_pb.ApiKey]:
        request = auth_pb.ListApiKeysRequest(principal_id=principal_id)
        async for key in self._calls.pages(self._stub.ListApiKeys, request, lambda page: page.api_keys):
            yield key

    async def revoke(self, key_id: str) -> auth_pb.ApiKey:
        return await self._calls.unary(self._stub.RevokeApiKey, auth_pb.RevokeApiKeyRequest(key_id=key_id))


class AsyncWebhooks:
    """Webhook subscriptions: create (the signing secret is returned once), list, get, delete."""

    def __init__(self, stub: webhook_grpc.WebhookServiceAsyncStub, calls: _Calls) -> None:
        self._stub = stub
        self._calls = calls

    async def create(self, url: str, *, event_types: Iterable[str] = (),
                     progress_interval: float | timedelta | None = None) -> webhook_pb.CreateSubscriptionResponse:
        subscription = webhook_pb.Subscription(url=url, event_types=requests.webhook_event_types(event_types))
        if (interval := requests.duration(progress_interval)) is not None:
            subscription.progress_interval.CopyFrom(interval)
        return await self._calls.unary(self._stub.CreateSubscription, webhook_pb.CreateSubscriptionRequest(
            subscription=subscription, request_id=str(uuid.uuid4())))

    async def get(self, subscription_id: str) -> webhook_pb.Subscription:
        return await self._calls.unary(self._stub.GetSubscription,
                                       webhook_pb.GetSubscriptionRequest(subscription_id=subscription_id))

    async def list(self) -> AsyncIterator[webhook_pb.Subscription]:
        request = webhook_pb.ListSubscriptionsRequest()
        async for subscription in self._calls.pages(self._stub.ListSubscriptions, request,
                                                    lambda page: page.subscriptions):
            yield subscription

    async def delete(self, subscription_id: str) -> None:
        await self._calls.unary(self._stub.DeleteSubscription,
                                webhook_pb.DeleteSubscriptionRequest(subscription_id=subscription_id))
