"""The Envoy gateway config: rendered from the one template, validated by the real Envoy binary, and (integration)
run in front of a tiny gRPC upstream to check health, reflection, transcoding and JSON errors end to end."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest
import yaml
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway.__main__ import envoy_binary, main, validate_config_file
from gateway.config import DEFAULT_DESCRIPTOR_PATH, GatewayConfig, component_of, public_services
from gateway.render import REPO_TEMPLATE, render_envoy_config
from service_runtime.settings import Settings

EXECUTOR_SERVICE = "comfymesh.executor.v1.GpuExecutorService"
EXPECTED_FILTERS = [
    "envoy.filters.http.health_check",
    "envoy.filters.http.local_ratelimit",
    "envoy.filters.http.grpc_json_transcoder",
    "envoy.filters.http.router",
]


def _settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "bind_host": "127.0.0.1",
        "gateway_port": 8080,
        "gateway_admin_port": 9901,
        "workflow_port": 50051,
        "queue_port": 50052,
        "execution_port": 50053,
        "model_port": 50054,
        "auth_port": 50055,
        "webhook_port": 50056,
        **{f"{c}_addr": "" for c in ("workflow", "queue", "execution", "model", "auth", "webhook")},
    }
    base.update(overrides)
    return Settings(**base)


def _expected_public_services() -> list[str]:
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(DEFAULT_DESCRIPTOR_PATH.read_bytes())
    names = [f"{f.package}.{s.name}" for f in fds.file if f.package.startswith("comfymesh.") for s in f.service]
    return sorted(n for n in names if n != EXECUTOR_SERVICE)


# --- structure checks, shared by the parsed YAML and Envoy's own /config_dump (same proto field names) ---


def _hcm(listener: dict[str, Any]) -> dict[str, Any]:
    (chain,) = listener["filter_chains"]
    (network_filter,) = chain["filters"]
    assert network_filter["name"] == "envoy.filters.network.http_connection_manager"
    hcm: dict[str, Any] = network_filter["typed_config"]
    return hcm


def _seconds(value: Any) -> float:
    text = str(value)
    assert text.endswith("s"), text
    return float(text[:-1])


def _check_structure(hcm: dict[str, Any], clusters: list[dict[str, Any]], config: GatewayConfig) -> None:
    filters = hcm["http_filters"]
    assert [f["name"] for f in filters] == EXPECTED_FILTERS
    by_name = {f["name"]: f["typed_config"] for f in filters}

    health_check = by_name["envoy.filters.http.health_check"]
    assert health_check["pass_through_mode"] is False
    percentages = health_check["cluster_min_healthy_percentages"]
    assert {name: p["value"] for name, p in percentages.items()} == {c["name"]: 100 for c in clusters}

    ratelimit = by_name["envoy.filters.http.local_ratelimit"]
    assert ratelimit["rate_limited_as_resource_exhausted"] is True
    assert int(ratelimit["token_bucket"]["max_tokens"]) == config.rate_limit_burst

    transcoder = by_name["envoy.filters.http.grpc_json_transcoder"]
    assert sorted(transcoder["services"]) == _expected_public_services()
    assert EXECUTOR_SERVICE not in transcoder["services"]
    assert transcoder["proto_descriptor"] == str(config.descriptor_path)
    assert transcoder["convert_grpc_status"] is True
    assert transcoder["print_options"]["stream_newline_delimited"] is True
    assert transcoder["request_validation_options"]["reject_unknown_method"] is True
    assert transcoder["request_validation_options"]["reject_unknown_query_parameters"] is True
    assert int(transcoder["max_request_body_size"]) == config.max_request_body_bytes

    (vhost,) = hcm["route_config"]["virtual_hosts"]
    routes = vhost["routes"]
    prefixed = {r["match"].get("prefix"): r for r in routes}
    cluster_names = {c["name"] for c in clusters}
    for service in config.public_services:
        route = prefixed[f"/{service}/"]["route"]
        assert route["cluster"] == component_of(service)
        assert route["cluster"] in cluster_names
        assert _seconds(route["timeout"]) == 0
        assert _seconds(route["max_stream_duration"]["grpc_timeout_header_max"]) == 0
    assert not [r for r in routes if "executor" in str(r["match"].get("prefix", ""))]
    for prefix in ("/grpc.health.v1.Health/", "/grpc.reflection."):
        assert prefixed[prefix]["route"]["cluster"] == "workflow"
    catch_all = routes[-1]
    assert catch_all["match"] == {"prefix": "/"}
    assert int(catch_all["direct_response"]["status"]) == 404
    assert len(routes) == len(config.public_services) + 3

    for cluster in clusters:
        assert cluster["type"] == "STRICT_DNS"
        assert _seconds(cluster["connect_timeout"]) == 1
        options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        assert "http2_protocol_options" in options["explicit_http_config"]
        assert "http2_protocol_options" not in cluster
        (thresholds,) = cluster["circuit_breakers"]["thresholds"]
        assert {"max_connections", "max_pending_requests", "max_requests", "max_retries"} <= set(thresholds)
        (check,) = cluster["health_checks"]
        assert component_of(check["grpc_health_check"]["service_name"]) == cluster["name"]


def _parse(text: str) -> dict[str, Any]:
    parsed: dict[str, Any] = yaml.safe_load(text)
    return parsed


# --- unit ---


@pytest.mark.unit
def test_public_services_come_from_the_descriptor_and_exclude_the_executor() -> None:
    services = public_services(DEFAULT_DESCRIPTOR_PATH)
    assert services == _expected_public_services()
    assert EXECUTOR_SERVICE not in services
    assert "comfymesh.workflow.v1.WorkflowService" in services
    assert component_of("comfymesh.queue.v1.QueueService") == "queue"


@pytest.mark.unit
def test_from_settings_maps_each_component_to_its_address() -> None:
    config = GatewayConfig.from_settings(_settings(queue_addr="queue:6000"))
    assert config.upstreams["workflow"] == "127.0.0.1:50051"
    assert config.upstreams["queue"] == "queue:6000"
    assert config.listen_port == 8080
    assert config.admin_port == 9901
    assert config.max_request_body_bytes == 32 << 20
    assert config.max_response_body_bytes == 64 << 20
    assert set(config.components) == {component_of(s) for s in config.public_services}

    one_process = GatewayConfig.from_settings(_settings(), upstream_override="127.0.0.1:50050")
    assert set(one_process.upstreams.values()) == {"127.0.0.1:50050"}
    assert set(one_process.upstreams) == set(config.upstreams)


@pytest.mark.unit
def test_config_rejects_missing_or_bad_upstreams() -> None:
    good = GatewayConfig.from_settings(_settings())
    missing = {k: v for k, v in good.upstreams.items() if k != "queue"}
    with pytest.raises(ValueError, match="queue"):
        GatewayConfig(
            listen_host="127.0.0.1",
            listen_port=1,
            admin_port=2,
            descriptor_path=DEFAULT_DESCRIPTOR_PATH,
            upstreams=missing,
            rate_limit_rps=1,
            rate_limit_burst=1,
        )
    with pytest.raises(ValueError, match="host:port"):
        GatewayConfig.from_settings(_settings(), upstream_override="no-port")
    with pytest.raises(ValueError, match="internal"):
        GatewayConfig(
            listen_host="127.0.0.1",
            listen_port=1,
            admin_port=2,
            descriptor_path=DEFAULT_DESCRIPTOR_PATH,
            upstreams=good.upstreams,
            rate_limit_rps=1,
            rate_limit_burst=1,
            public_services=(EXECUTOR_SERVICE,),
        )


@pytest.mark.unit
@pytest.mark.parametrize("override", [None, "127.0.0.1:50050"])
def test_rendered_yaml_structure(override: str | None) -> None:
    config = GatewayConfig.from_settings(_settings(), upstream_override=override)
    parsed = _parse(render_envoy_config(config))
    (listener,) = parsed["static_resources"]["listeners"]
    clusters = parsed["static_resources"]["clusters"]
    assert sorted(c["name"] for c in clusters) == config.components
    _check_structure(_hcm(listener), clusters, config)
    assert parsed["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    hcm = _hcm(listener)
    assert hcm["codec_type"] == "AUTO"
    assert hcm["http_protocol_options"]["enable_trailers"] is True
    assert hcm["use_remote_address"] is True
    assert hcm["generate_request_id"] is True
    log_keys = set(hcm["access_log"][0]["typed_config"]["log_format"]["json_format"])
    assert {"time", "method", "path", "status", "grpc_status", "duration_ms", "request_id"} <= log_keys
    assert {"upstream_cluster", "bytes"} <= log_keys
    ports = {c["name"]: c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"] for c in clusters}
    if override is None:
        assert ports["queue"]["address"]["socket_address"]["port_value"] == 50052
    else:
        assert {p["address"]["socket_address"]["port_value"] for p in ports.values()} == {50050}


@pytest.mark.unit
def test_render_is_deterministic_and_marks_the_ext_authz_slot() -> None:
    config = GatewayConfig.from_settings(_settings())
    text = render_envoy_config(config)
    assert text == render_envoy_config(config)
    assert "{{" not in text
    assert "{%" not in text
    # The slot is a Jinja block/comment in the template, after the transcoder and before the router.
    template = REPO_TEMPLATE.read_text()
    assert "EXT_AUTHZ INSERTION POINT" in template
    assert template.index("grpc_json_transcoder") < template.index("EXT_AUTHZ INSERTION POINT")
    assert template.index("EXT_AUTHZ INSERTION POINT") < template.index("envoy.filters.http.router\n")


@pytest.mark.unit
@pytest.mark.parametrize("override", [None, "127.0.0.1:50050", "control-plane:50050"])
def test_envoy_validates_the_rendered_config(tmp_path: Path, override: str | None) -> None:
    config = GatewayConfig.from_settings(_settings(), upstream_override=override)
    path = tmp_path / "envoy.yaml"
    path.write_text(render_envoy_config(config))
    result = validate_config_file(path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.unit
def test_envoy_validate_catches_an_unknown_service(tmp_path: Path) -> None:
    config = GatewayConfig.from_settings(_settings())
    path = tmp_path / "envoy.yaml"
    bogus = "comfymesh.workflow.v1.NoSuchService"
    path.write_text(render_envoy_config(config).replace('"comfymesh.workflow.v1.WorkflowService"\n', f'"{bogus}"\n'))
    result = validate_config_file(path)
    assert result.returncode != 0
    assert bogus in result.stdout + result.stderr


@pytest.mark.unit
def test_cli_render_and_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "nested" / "envoy.yaml"
    assert main(["render", "--out", str(out), "--upstream", "127.0.0.1:50050"]) == 0
    assert "127.0.0.1" in out.read_text()
    assert "50050" in out.read_text()
    assert main(["render", "--upstream", "127.0.0.1:50050"]) == 0
    assert capsys.readouterr().out == out.read_text()
    assert main(["validate", "--upstream", "127.0.0.1:50050"]) == 0
    assert main(["render", "--upstream", "bad"]) == 2
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "validate"], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr


# --- integration: the real Envoy in front of a tiny gRPC upstream ---


class _Upstream:
    """A grpc.aio server on its own loop/thread: health SERVING, reflection, and the generated servicer bases, whose
    every RPC answers UNIMPLEMENTED. The bases must be registered: a server without the method answers
    UNIMPLEMENTED as soon as the headers arrive, racing Envoy's own 400 for a body it cannot transcode."""

    def __init__(self, services: list[str]) -> None:
        self.services = services
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="upstream", daemon=True)
        self.server: grpc.aio.Server | None = None
        self.port = 0

    def start(self) -> int:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=30)
        return self.port

    async def _start(self) -> None:
        server = grpc.aio.server(
            options=[("grpc.so_reuseport", 0), ("grpc.http2.min_ping_interval_without_data_ms", 10_000)]
        )
        servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        names = []
        fds = descriptor_pb2.FileDescriptorSet()
        fds.ParseFromString(DEFAULT_DESCRIPTOR_PATH.read_bytes())
        files = {f"{f.package}.{s.name}": f.name for f in fds.file for s in f.service}
        for service in self.services:
            module_name = files[service].removesuffix(".proto").replace("/", ".")
            module = importlib.import_module(module_name + "_pb2")
            short = service.rsplit(".", 1)[1]
            names.append(module.DESCRIPTOR.services_by_name[short].full_name)
            stubs = importlib.import_module(module_name + "_pb2_grpc")
            getattr(stubs, f"add_{short}Servicer_to_server")(getattr(stubs, f"{short}Servicer")(), server)
        reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        for name in names:
            await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self.server = server

    def stop(self) -> None:
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.stop(grace=None), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


def _poll(check: Callable[[], Any], *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (httpx.HTTPError, OSError, ValueError) as exc:
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}: {last!r}")


@dataclass
class _Envoy:
    config: GatewayConfig
    admin: str  # http://127.0.0.1:<admin port>
    listen: str  # 127.0.0.1:<listener port>


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[_Envoy]:
    upstream = _Upstream(public_services(DEFAULT_DESCRIPTOR_PATH))
    proc: subprocess.Popen[bytes] | None = None
    try:
        port = upstream.start()
        config = GatewayConfig.from_settings(_settings(), upstream_override=f"127.0.0.1:{port}")
        # Port 0 everywhere: Envoy picks free ports and reports them (admin file, /listeners); no races.
        config = replace(
            config, listen_port=0, admin_port=0, health_check_interval_s=0.5, max_request_body_bytes=64 << 10
        )
        path = tmp_path / "envoy.yaml"
        path.write_text(render_envoy_config(config))
        admin_file = tmp_path / "admin.address"
        log = (tmp_path / "envoy.log").open("wb")
        envoy = subprocess.Popen(
            [
                envoy_binary(),
                "-c",
                str(path),
                "--base-id",
                str(100_000 + os.getpid() % 100_000),
                "--disable-hot-restart",  # no shared memory or domain socket at all: never clashes
                "--admin-address-path",
                str(admin_file),
                "--log-level",
                "warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        proc = envoy
        log.close()

        def admin_address() -> str:
            assert envoy.poll() is None, (tmp_path / "envoy.log").read_text()
            return admin_file.read_text().strip() if admin_file.exists() else ""

        admin = "http://" + _poll(admin_address, timeout=30, what="the admin address file")
        _poll(lambda: httpx.get(f"{admin}/ready", timeout=2).status_code == 200, timeout=30, what="/ready")
        listeners = httpx.get(f"{admin}/listeners?format=json", timeout=2).json()
        (status,) = listeners["listener_statuses"]
        listen_port = status["local_address"]["socket_address"]["port_value"]
        yield _Envoy(config, admin, f"127.0.0.1:{listen_port}")
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        upstream.stop()


def _grpcurl() -> str:
    candidate = Path(sys.executable).parent / "grpcurl"
    if candidate.exists():
        return str(candidate)
    import shutil

    found = shutil.which("grpcurl")
    assert found, "grpcurl not found"
    return found


def _status_json(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body: dict[str, Any] = response.json()
    assert isinstance(body["code"], int), body
    assert isinstance(body["message"], str), body
    return body


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_gateway_end_to_end(gateway: _Envoy) -> None:
    base = f"http://{gateway.listen}"
    services = public_services(DEFAULT_DESCRIPTOR_PATH)

    # Envoy's view of the config it loaded: same checks as on the rendered YAML.
    dump = httpx.get(f"{gateway.admin}/config_dump", timeout=5).json()["configs"]
    listeners_dump = next(c for c in dump if c["@type"].endswith("ListenersConfigDump"))
    clusters_dump = next(c for c in dump if c["@type"].endswith("ClustersConfigDump"))
    (listener,) = [entry["listener"] for entry in listeners_dump["static_listeners"]]
    clusters = [entry["cluster"] for entry in clusters_dump["static_clusters"]]
    config = gateway.config
    _check_structure(_hcm(listener), clusters, config)

    with httpx.Client(base_url=base, timeout=10) as client:
        # /healthz: 200 once every cluster's gRPC health check has passed.
        _poll(lambda: client.get("/healthz").status_code == 200, timeout=30, what="GET /healthz == 200")

        # grpcurl through the gateway: reflection lists every public service (and never the executor).
        listed = subprocess.run(
            [_grpcurl(), "-plaintext", "-max-time", "20", gateway.listen, "list"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert listed.returncode == 0, listed.stderr
        names = set(listed.stdout.split())
        assert set(services) <= names
        assert EXECUTOR_SERVICE not in names

        # A routed REST call: the upstream has no servicer, so it answers UNIMPLEMENTED, which
        # convert_grpc_status renders as google.rpc.Status JSON with HTTP 501 (gRPC→HTTP mapping), not Envoy 503.
        response = client.get("/v1/executions/abc")
        assert response.status_code == 501
        assert _status_json(response)["code"] == 12
        assert response.headers.get("x-request-id")

        # No such path → JSON 404 (the transcoder's reject_unknown_method, wrapped by local_reply_config).
        response = client.get("/no/such/path")
        assert response.status_code == 404
        assert _status_json(response)["code"] == 5

        # Malformed JSON → 400 INVALID_ARGUMENT.
        response = client.post("/v1/executions", content=b"{not json", headers={"content-type": "application/json"})
        assert response.status_code == 400
        assert _status_json(response)["code"] == 3

        # Wrong field type → 400.
        response = client.post("/v1/executions", json={"priority": "high"})
        assert response.status_code == 400
        body = _status_json(response)
        assert body["code"] == 3
        assert "priority" in body["message"]

        # Unknown query parameter → 400.
        response = client.get("/v1/executions/abc", params={"bogus": "1"})
        assert response.status_code == 400
        body = _status_json(response)
        assert body["code"] == 3
        assert "bogus" in body["message"]

        # Body over max_request_body_size → 413 JSON, never a 5xx.
        too_big = json.dumps({"request_id": "x" * (config.max_request_body_bytes + 1)})
        response = client.post("/v1/executions", content=too_big, headers={"content-type": "application/json"})
        assert response.status_code == 413
        assert _status_json(response)["code"] == 8

    # Native gRPC to an unknown service: the catch-all route → UNIMPLEMENTED, not a 503.
    with grpc.insecure_channel(gateway.listen) as channel:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/no.such.v1.Service/Method")
        with pytest.raises(grpc.RpcError) as caught:
            call(b"", timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert caught.value.details() == "no such path"
        # A public service is routed (and reaches the upstream, which has no servicer).
        call = channel.unary_unary("/comfymesh.workflow.v1.WorkflowService/GetExecution")
        with pytest.raises(grpc.RpcError) as caught:
            call(b"", timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
