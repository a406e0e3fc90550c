"""Render the Envoy config from the one template, `envoy/envoy.yaml.j2`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import jinja2

from gateway.config import REFLECTION_COMPONENT, GatewayConfig, component_of, split_host_port

TEMPLATE_NAME = "envoy.yaml.j2"
#: The template in a checkout (editable installs, containers that copy the repo).
REPO_TEMPLATE = Path(__file__).resolve().parent.parent / "envoy" / TEMPLATE_NAME

HEALTH_CHECK_PATH = "/healthz"

# Envoy's own (local) replies → the google.rpc.Code in their JSON body. Evaluated in order; the last is the fallback.
_LOCAL_REPLY_CODES: tuple[tuple[str, int, int], ...] = (
    ("EQ", 400, 3),  # INVALID_ARGUMENT: bad JSON, wrong field type, unknown query parameter
    ("EQ", 401, 16),  # UNAUTHENTICATED
    ("EQ", 403, 7),  # PERMISSION_DENIED
    ("EQ", 404, 5),  # NOT_FOUND: no such REST path or gRPC service
    ("EQ", 405, 12),  # UNIMPLEMENTED
    ("EQ", 408, 4),  # DEADLINE_EXCEEDED
    ("EQ", 413, 8),  # RESOURCE_EXHAUSTED: body over max_request_body_size
    ("EQ", 429, 8),  # RESOURCE_EXHAUSTED: the outer token bucket
    ("EQ", 431, 8),  # RESOURCE_EXHAUSTED: headers too large
    ("EQ", 500, 13),  # INTERNAL
    ("EQ", 501, 12),  # UNIMPLEMENTED
    ("EQ", 502, 14),  # UNAVAILABLE
    ("EQ", 503, 14),  # UNAVAILABLE: no healthy upstream, connection refused
    ("EQ", 504, 4),  # DEADLINE_EXCEEDED
    ("GE", 400, 2),  # UNKNOWN: any other error Envoy itself produces
)


class TemplateNotFoundError(FileNotFoundError):
    pass


def template_source() -> str:
    """The template text: from the checkout's envoy/ dir, else packaged as gateway/templates/ (wheel builds)."""
    if REPO_TEMPLATE.is_file():
        return REPO_TEMPLATE.read_text(encoding="utf-8")
    packaged = resources.files("gateway").joinpath("templates", TEMPLATE_NAME)
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    raise TemplateNotFoundError(
        f"Envoy template not found at {REPO_TEMPLATE} nor packaged as gateway/templates/{TEMPLATE_NAME}"
    )


def _duration(seconds: float) -> str:
    """A protobuf Duration in YAML form: 5 → "5s", 0.25 → "0.25s"."""
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return f"{text}s"


def render_envoy_config(config: GatewayConfig) -> str:
    """The complete Envoy bootstrap (YAML) for `config`."""
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - renders YAML, not HTML; every value is emitted with `tojson`
        keep_trailing_newline=True,
    )
    template = env.from_string(template_source())
    clusters = []
    for component in config.components:
        host, port = split_host_port(config.upstreams[component])
        services = config.services_of(component)
        clusters.append(
            {
                "name": component,
                "host": host,
                "port": port,
                # One health check per cluster: the component's first public service (grpc.health.v1 per service).
                "health_service": services[0] if services else "",
            }
        )
    routes = [{"prefix": f"/{service}/", "cluster": component_of(service)} for service in config.public_services]
    text = template.render(
        cfg=config,
        clusters=clusters,
        routes=routes,
        reflection_cluster=REFLECTION_COMPONENT,
        local_replies=[{"op": op, "status": status, "code": code} for op, status, code in _LOCAL_REPLY_CODES],
        health_check_path=HEALTH_CHECK_PATH,
        health_check_interval=_duration(config.health_check_interval_s),
        health_check_timeout=_duration(config.health_check_timeout_s),
    )
    return text
