"""The Kubernetes manifests (deploy/kubernetes), checked without a cluster.

- Every Kubernetes object validates, in strict mode (unknown fields fail), against the official OpenAPI schemas of
  the oldest and newest Kubernetes versions we support, shipped offline by the `kubernetes-validate` package.
- KEDA's ScaledObject is a custom resource whose CRD schema is not available offline (no pip or npm package here
  carries it), so its structure is checked explicitly against KEDA 2.x's documented fields instead.
- Structure that a schema cannot see: every compose component has a counterpart; every Deployment probes
  grpc.health.v1 on the port its own settings listen on; every workload has compose's hardening; every environment
  variable and ConfigMap key is a real setting and the settings parse per container; Services and PDBs select
  existing pods; the executor requests a GPU and drains within its grace period; the HPA and the KEDA alternative
  target the executor Deployment with the seeds' scaling policy; the gateway's Envoy ConfigMap is current and
  passes `envoy --mode validate`; the kustomizations list exactly the manifests.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from gateway.__main__ import validate_config_file
from gateway.config import DEFAULT_DESCRIPTOR_PATH, REFLECTION_COMPONENT
from gateway.render import render_envoy_config
from gpu_executor.app import STREAM_FLUSH_SECONDS
from service_runtime.settings import CONTROL_PLANE_SERVICES, Settings
from services.execution.scaling import ScalingPolicy
from services.queue.job_queue import DEFAULT_NAMESPACE, queue_metrics
from tests.unit.test_containers import DOCKERFILE, environment_of, interpolate, stage
from tests.unit.test_containers import services as compose_services
from tools import gen_k8s_gateway_config as gateway_tool

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
KEDA_DIR = K8S / "keda"
SECRETS_TEMPLATE = K8S / "secrets.example.yaml"
NAMESPACE = "comfymesh"

#: The oldest Kubernetes release the manifests promise to work on, and the newest the validator ships.
KUBERNETES_VERSIONS = ("1.33.0", "1.37.0")
APP_UID = 10001
HOME = "/var/lib/comfymesh"
MODEL_CACHE = "/var/cache/comfymesh/models"
GPU = "nvidia.com/gpu"
#: gpu_executor/app.py drain(): after the interrupt the worker gets interrupt_grace_seconds plus this much.
WORKER_INTERRUPT_MARGIN_SECONDS = 15.0
#: The seeds' section 4.2 scaling behaviour: (stabilisation window, pods per period, period) up and down.
SCALE_UP = (60, 2, 60)
SCALE_DOWN = (300, 1, 300)
#: The only environment variables that are not settings: the downward API values settings are built from.
DOWNWARD_API_VARIABLES = frozenset({"POD_IP"})
#: Settings that carry credentials: they must come from a Secret, never a literal or a ConfigMap.
SECRET_SETTINGS = frozenset({
    "COMFYMESH_DATABASE_URL", "COMFYMESH_REDIS_URL", "COMFYMESH_SECRET_KEY", "COMFYMESH_S3_ACCESS_KEY",
    "COMFYMESH_S3_SECRET_KEY", "COMFYMESH_EXECUTOR_API_KEY", "COMFYMESH_AUTH_INTERNAL_CREDENTIAL",
})
DATASTORE_SETTINGS = frozenset({"COMFYMESH_DATABASE_URL", "COMFYMESH_REDIS_URL"})
#: KEDA 2.x ScaledObject fields (keda.sh/v1alpha1), for the structural check.
KEDA_SPEC_FIELDS = frozenset({
    "scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod", "idleReplicaCount",
    "minReplicaCount", "maxReplicaCount", "fallback", "advanced", "triggers",
})
KEDA_TRIGGER_FIELDS = frozenset({"type", "name", "metadata", "authenticationRef", "metricType", "useCachedMetrics"})
KEDA_METRIC_TYPES = frozenset({"AverageValue", "Value", "Utilization"})

_VARIABLE_REFERENCE = re.compile(r"\$\((?P<name>[A-Za-z_][A-Za-z0-9_]*)\)")
_QUANTITY = re.compile(r"^(?P<number>\d+(\.\d+)?)(?P<unit>Ki|Mi|Gi|Ti|k|M|G|T)?$")
_UNITS = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
          "Ti": 2**40}


# ---------------------------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class Manifest:
    path: Path
    document: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.document["kind"])

    @property
    def name(self) -> str:
        return str(self.document["metadata"]["name"])

    @property
    def label(self) -> str:
        return f"{self.path.relative_to(K8S)}:{self.kind}/{self.name}"


def is_kustomization(path: Path) -> bool:
    return path.name == "kustomization.yaml"


@cache
def manifests() -> tuple[Manifest, ...]:
    """Every object in every YAML file under deploy/kubernetes (kustomizations apart), the Secret template too."""
    found = []
    for path in sorted(K8S.rglob("*.yaml")):
        if is_kustomization(path):
            continue
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document is None:
                continue
            assert isinstance(document, dict), f"{path}: a document is not a mapping"
            found.append(Manifest(path, document))
    assert found, "no manifests under deploy/kubernetes"
    return tuple(found)


def applied() -> list[Manifest]:
    """What `kubectl apply -k deploy/kubernetes` creates (the KEDA overlay and the Secret template excluded)."""
    return [m for m in manifests() if m.path.parent != KEDA_DIR and m.path != SECRETS_TEMPLATE]


def of_kind(kind: str, items: list[Manifest] | None = None) -> list[Manifest]:
    return [m for m in (applied() if items is None else items) if m.kind == kind]


def deployments() -> dict[str, dict[str, Any]]:
    return {m.name: m.document for m in of_kind("Deployment")}


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def main_container(name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [c for c in pod_spec(deployments()[name])["containers"] if c["name"] == name]
    assert len(found) == 1, f"{name}: its container must be named after it"
    return found[0]


def all_containers(deployment: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = pod_spec(deployment)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


@cache
def shared_settings() -> dict[str, str]:
    (configmap,) = [m for m in of_kind("ConfigMap") if m.name == "comfymesh-settings"]
    return {str(k): str(v) for k, v in configmap.document["data"].items()}


@cache
def secret_template() -> dict[str, set[str]]:
    """Secret name → its keys, from the template."""
    return {
        m.name: set(m.document.get("stringData", {})) | set(m.document.get("data", {}))
        for m in manifests()
        if m.path == SECRETS_TEMPLATE and m.kind == "Secret"
    }


def container_environment(container: dict[str, Any]) -> dict[str, str]:
    """The environment a container starts with: its ConfigMaps, then its own env (later wins, $(VAR) expanded).
    Values from Secrets and the downward API become placeholders of the right shape."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert set(source) == {"configMapRef"}, f"{container['name']}: only ConfigMaps are loaded whole"
        assert source["configMapRef"]["name"] == "comfymesh-settings", container["name"]
        env.update(shared_settings())
    for item in container.get("env", []):
        if "value" in item:
            value = _VARIABLE_REFERENCE.sub(lambda match: env[match["name"]], str(item["value"]))
        elif "secretKeyRef" in item["valueFrom"]:
            value = "placeholder"
        else:
            assert item["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP", item
            value = "10.0.0.7"
        env[item["name"]] = value
    return env


def settings_for(container: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """`Settings()` as the process in `container` reads it from its environment."""
    for key in list(os.environ):
        if key.startswith("COMFYMESH_"):
            monkeypatch.delenv(key)
    for key, value in container_environment(container).items():
        monkeypatch.setenv(key, value)
    return Settings()


def component_of(container: dict[str, Any]) -> str:
    """The settings component a container's command runs: services.<name>, or the executor."""
    command = container["command"]
    if command == ["python", "-m", "gpu_executor", "serve"]:
        return "executor"
    assert command[:2] == ["python", "-m"] and command[2].startswith("services."), command
    return str(command[2].removeprefix("services."))


def quantity_bytes(text: str) -> int:
    match = _QUANTITY.match(text)
    assert match is not None, f"not a byte quantity: {text}"
    return int(float(match["number"]) * _UNITS[match["unit"]])


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def kustomization(directory: Path) -> dict[str, Any]:
    loaded = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def behaviour_of(behavior: dict[str, Any]) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    def rule(direction: str) -> tuple[int, int, int]:
        section = behavior[direction]
        (policy,) = section["policies"]
        assert policy["type"] == "Pods", direction
        return section["stabilizationWindowSeconds"], policy["value"], policy["periodSeconds"]

    return rule("scaleUp"), rule("scaleDown")


# ---------------------------------------------------------------------------------------------------------------
# Schemas


def kubernetes_objects() -> list[Manifest]:
    return [m for m in manifests() if not m.document["apiVersion"].startswith("keda.sh/")]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("manifest", kubernetes_objects(), ids=lambda m: m.label)
def test_object_validates_against_the_kubernetes_schema(manifest: Manifest, version: str) -> None:
    try:
        kubernetes_validate.validate(manifest.document, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = "/".join(str(p) for p in exc.path)
        pytest.fail(f"{manifest.label} is invalid for Kubernetes {version} at {path or '/'}: {exc.message}")


def test_strict_validation_rejects_unknown_fields() -> None:
    """Guards the check above: a misspelt field must fail, not be ignored."""
    broken = yaml.safe_load(yaml.safe_dump(deployments()["queue"]))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"grpc": {"port": 50052}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_every_object_is_namespaced_and_unique() -> None:
    seen: set[tuple[str, str]] = set()
    for manifest in applied():
        key = (manifest.kind, manifest.name)
        assert key not in seen, f"{manifest.label}: duplicate {key}"
        seen.add(key)
        if manifest.kind == "Namespace":
            assert manifest.name == NAMESPACE
            continue
        assert manifest.document["metadata"].get("namespace") == NAMESPACE, manifest.label
        assert manifest.document["metadata"]["labels"]["app.kubernetes.io/part-of"] == "comfymesh", manifest.label


def test_kustomizations_list_exactly_the_manifests() -> None:
    base = kustomization(K8S)
    overlay = kustomization(KEDA_DIR)
    assert base["namespace"] == overlay["namespace"] == NAMESPACE
    listed = {(K8S / r).resolve() for r in base["resources"]}
    overlay_listed = {(KEDA_DIR / r).resolve() for r in overlay["resources"]}
    assert K8S.resolve() in overlay_listed, "the KEDA overlay builds on the base"
    listed |= overlay_listed - {K8S.resolve()}
    for path in listed:
        assert path.is_file(), f"a kustomization lists {path}, which does not exist"
    files = {m.path.resolve() for m in manifests()}
    assert files - listed == {SECRETS_TEMPLATE.resolve()}, "every manifest but the Secret template is applied"
    assert not any(m.kind == "Secret" for m in applied()), "no Secret is ever applied from the repository"


# ---------------------------------------------------------------------------------------------------------------
# Compose parity


def test_every_compose_component_has_a_kubernetes_counterpart() -> None:
    compose = compose_services()
    for name in (*CONTROL_PLANE_SERVICES, "gateway", "executor"):
        assert name in compose, name
        assert name in deployments(), f"compose's {name} has no Deployment"
        container = main_container(name)
        assert container["image"] == interpolate(compose[name]["image"]), f"{name}: the image compose builds"
        if "command" in compose[name]:
            assert container["command"] == compose[name]["command"], name
    # compose's one-shot `migrate` runs before each control-plane process starts: its init container.
    for name in CONTROL_PLANE_SERVICES:
        (migrate,) = pod_spec(deployments()[name])["initContainers"]
        assert migrate["name"] == "migrate"
        assert migrate["command"] == compose["migrate"]["command"]
        assert migrate["image"] == main_container(name)["image"]
        assert "COMFYMESH_DATABASE_URL" in container_environment(migrate)
    # PostgreSQL, Redis and S3 are external: reached through settings, never deployed here.
    for backing in ("postgres", "redis", "minio"):
        assert backing in compose
        assert backing not in deployments() and not of_kind("StatefulSet"), backing
    assert shared_settings()["COMFYMESH_S3_ENDPOINT"]
    assert set(deployments()) == {*CONTROL_PLANE_SERVICES, "gateway", "executor"}


def test_shared_settings_mirror_compose() -> None:
    compose_env = environment_of(compose_services()["queue"])
    for key in ("COMFYMESH_ENVIRONMENT", "COMFYMESH_HOME", "COMFYMESH_BIND_HOST", "COMFYMESH_LOG_FORMAT",
                *(f"COMFYMESH_{c.upper()}_ADDR" for c in CONTROL_PLANE_SERVICES)):
        assert shared_settings()[key] == interpolate(compose_env[key]), key
    reflecting = {
        name for name in deployments() if container_environment(main_container(name)).get(
            "COMFYMESH_REFLECT_ALL_PUBLIC_SERVICES") == "true"
    }
    assert reflecting == {REFLECTION_COMPONENT}


# ---------------------------------------------------------------------------------------------------------------
# Settings


def test_every_variable_is_a_real_setting() -> None:
    for key in shared_settings():
        assert key.startswith("COMFYMESH_"), key
        assert key.removeprefix("COMFYMESH_").lower() in Settings.model_fields, f"ConfigMap: no such setting {key}"
    for name, deployment in deployments().items():
        for container in all_containers(deployment):
            for item in container.get("env", []):
                key = item["name"]
                if key in DOWNWARD_API_VARIABLES:
                    continue
                assert key.startswith("COMFYMESH_"), f"{name}/{container['name']}: {key} is not a setting"
                assert key.removeprefix("COMFYMESH_").lower() in Settings.model_fields, (
                    f"{name}/{container['name']}: no such setting {key}")


def test_credentials_come_only_from_the_secrets() -> None:
    assert not set(shared_settings()) & SECRET_SETTINGS, "no credential in the ConfigMap"
    templates = secret_template()
    assert set(templates) == {"comfymesh-datastores", "comfymesh-platform"}
    for manifest in manifests():
        if manifest.path == SECRETS_TEMPLATE:
            values = {**manifest.document.get("stringData", {}), **manifest.document.get("data", {})}
            assert all(value == "" for value in values.values()), "the template holds no secret value"
    for name, deployment in deployments().items():
        for container in all_containers(deployment):
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if item["name"] in SECRET_SETTINGS:
                    assert ref is not None, f"{name}: {item['name']} must come from a Secret"
                if ref is not None:
                    assert ref["key"] in templates.get(ref["name"], set()), f"{name}: {ref} is not in the template"
                    assert not ref.get("optional", False), f"{name}: {ref} must be required"
    executor_env = container_environment(main_container("executor"))
    assert not set(executor_env) & DATASTORE_SETTINGS, "the executor gets no database or Redis credentials"
    executor_secrets = {
        item["valueFrom"]["secretKeyRef"]["name"]
        for item in main_container("executor")["env"] if "secretKeyRef" in item.get("valueFrom", {})
    }
    assert executor_secrets == {"comfymesh-platform"}, "GPU nodes never receive the datastore Secret"


@pytest.mark.parametrize("name", [*CONTROL_PLANE_SERVICES, "executor"])
def test_settings_parse_in_each_container(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for container in all_containers(deployments()[name]):
        settings = settings_for(container, monkeypatch)
        assert settings.environment == "production"
        assert str(settings.home) == HOME
        assert settings.bind_host == "0.0.0.0"
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        assert HOME in mounts, f"{name}/{container['name']}: COMFYMESH_HOME must be writable (root is read-only)"
        for component in CONTROL_PLANE_SERVICES:
            assert settings.address_of(component) == f"{component}:{settings.port_of(component)}"


# ---------------------------------------------------------------------------------------------------------------
# Probes, ports, Services


@pytest.mark.parametrize("name", [*CONTROL_PLANE_SERVICES, "executor"])
def test_grpc_probes_on_the_port_the_settings_listen_on(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    container = main_container(name)
    settings = settings_for(container, monkeypatch)
    component = component_of(container)
    assert component == name
    port = settings.port_of(component)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": port, "metrics": settings.metrics_port_for(port)}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        spec = container.get(probe)
        if probe == "startupProbe" and spec is None:
            continue
        assert spec is not None, f"{name}: no {probe}"
        assert spec.get("grpc") == {"port": port}, f"{name}.{probe}: grpc.health.v1 on {port} (overall health)"
    annotations = deployments()[name]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(settings.metrics_port_for(port))
    if component == "executor":
        host, _, advertised = settings.executor_advertise_addr.rpartition(":")
        assert host and int(advertised) == port, "executors advertise their pod IP and own port"


def test_gateway_probes_and_port_mirror_compose() -> None:
    container = main_container("gateway")
    compose_check = compose_services()["gateway"]["healthcheck"]["test"]
    assert compose_check[0] == "CMD"
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["exec"]["command"] == compose_check[1:], probe
    gateway_port = int(shared_settings()["COMFYMESH_GATEWAY_PORT"])
    assert [p["containerPort"] for p in container["ports"]] == [gateway_port]


def test_services_select_existing_pods_and_ports() -> None:
    services = {m.name: m.document for m in of_kind("Service")}
    assert set(services) == set(deployments())
    for name, service in services.items():
        selector = service["spec"]["selector"]
        matched = [d for d, deployment in deployments().items() if selects(selector, pod_labels(deployment))]
        assert matched == [name], f"Service {name} selects {matched}"
        container_ports = {p["name"]: p["containerPort"] for p in main_container(name)["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in container_ports, f"Service {name}: no container port {port['targetPort']}"
            assert port["port"] == container_ports[port["targetPort"]], f"Service {name}: {port}"
    # The ConfigMap's addresses are these Services; headless, so Envoy balances requests across every pod.
    for component in CONTROL_PLANE_SERVICES:
        host, _, port = shared_settings()[f"COMFYMESH_{component.upper()}_ADDR"].rpartition(":")
        assert host in services, f"{component}: no Service {host}"
        assert int(port) in {p["port"] for p in services[host]["spec"]["ports"]}
        assert services[host]["spec"].get("clusterIP") == "None", f"{host} must be headless"


def test_deployment_selectors_match_their_pods() -> None:
    for name, deployment in deployments().items():
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selects(selector, pod_labels(deployment)), name
        others = [other for other, d in deployments().items() if other != name and selects(selector, pod_labels(d))]
        assert not others, f"{name}'s selector also matches {others}"


def test_pod_disruption_budgets_select_existing_pods() -> None:
    covered: list[str] = []
    for pdb in of_kind("PodDisruptionBudget"):
        spec = pdb.document["spec"]
        matched = [n for n, d in deployments().items() if selects(spec["selector"]["matchLabels"], pod_labels(d))]
        assert len(matched) == 1, f"{pdb.label} selects {matched}"
        covered += matched
        assert spec.get("maxUnavailable", 0) >= 1 or "minAvailable" in spec, pdb.label
        replicas = deployments()[matched[0]]["spec"].get("replicas")
        if "minAvailable" in spec and replicas is not None:
            assert spec["minAvailable"] < replicas, f"{pdb.label} would block every voluntary eviction"
    assert sorted(covered) == sorted(deployments()), "every Deployment has exactly one PodDisruptionBudget"


# ---------------------------------------------------------------------------------------------------------------
# Hardening and resources


@pytest.mark.parametrize("name", [*CONTROL_PLANE_SERVICES, "gateway", "executor"])
def test_workload_is_hardened(name: str) -> None:
    spec = pod_spec(deployments()[name])
    pod_security = spec["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] == pod_security["runAsGroup"] == APP_UID
    assert pod_security["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] in {m.name for m in of_kind("ServiceAccount")}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not spec.get(key, False), f"{name}: {key}"
    volumes = {v["name"]: v for v in spec["volumes"]}
    for volume in volumes.values():
        assert "hostPath" not in volume, f"{name}: no host paths"
    for container in all_containers(deployments()[name]):
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, container["name"]
        assert security["readOnlyRootFilesystem"] is True, container["name"]
        assert security.get("privileged", False) is False, container["name"]
        assert security["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert "runAsUser" not in security or security["runAsUser"] == APP_UID
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        assert "/tmp" in mounts, f"{name}/{container['name']}: /tmp must be writable (compose's tmpfs)"
        assert "emptyDir" in volumes[mounts["/tmp"]]
        for path, volume in mounts.items():
            assert volume in volumes, f"{name}/{container['name']}: {path} mounts an undefined volume"


@pytest.mark.parametrize("name", [*CONTROL_PLANE_SERVICES, "gateway", "executor"])
def test_workload_has_resource_requests_and_limits(name: str) -> None:
    compose_limit = compose_services()[name]["deploy"]["resources"]["limits"]["memory"]
    for container in all_containers(deployments()[name]):
        resources = container["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[kind]), f"{name}/{container['name']}: {kind}"
        limit = quantity_bytes(resources["limits"]["memory"])
        assert quantity_bytes(resources["requests"]["memory"]) <= limit
        if container["name"] == name:
            assert limit == quantity_bytes(compose_limit.upper().replace("G", "Gi").replace("M", "Mi")), name


def test_shutdown_grace_fits_the_termination_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CONTROL_PLANE_SERVICES:
        settings = settings_for(main_container(name), monkeypatch)
        grace = pod_spec(deployments()[name])["terminationGracePeriodSeconds"]
        assert grace > settings.shutdown_grace_seconds, name
    settings = settings_for(main_container("executor"), monkeypatch)
    drain = (settings.shutdown_grace_seconds + settings.interrupt_grace_seconds + WORKER_INTERRUPT_MARGIN_SECONDS
             + STREAM_FLUSH_SECONDS)
    grace = pod_spec(deployments()["executor"])["terminationGracePeriodSeconds"]
    assert grace >= drain, f"the executor's drain takes up to {drain:.0f} s, SIGKILL comes after {grace} s"
    assert settings.shutdown_grace_seconds >= 60, "a running execution deserves more than compose's minute"


# ---------------------------------------------------------------------------------------------------------------
# The executor


def test_executor_requests_one_gpu_on_gpu_nodes() -> None:
    container = main_container("executor")
    resources = container["resources"]
    assert resources["limits"][GPU] == 1
    assert resources["requests"].get(GPU, 1) == resources["limits"][GPU], "extended resources: request == limit"
    spec = pod_spec(deployments()["executor"])
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(t["key"] == GPU and t["effect"] == "NoSchedule" for t in spec["tolerations"])
    for name in (*CONTROL_PLANE_SERVICES, "gateway"):
        assert GPU not in main_container(name)["resources"]["limits"], f"{name} must not hold a GPU"


def test_executor_keeps_its_model_cache_on_a_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    container = main_container("executor")
    settings = settings_for(container, monkeypatch)
    assert str(settings.model_cache_dir) == MODEL_CACHE
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(deployments()["executor"])["volumes"]}
    cache_volume = volumes[mounts[MODEL_CACHE]]
    assert cache_volume["emptyDir"].get("medium") != "Memory", "models are cached on disk, not in RAM"
    size_limit = quantity_bytes(cache_volume["emptyDir"]["sizeLimit"])
    assert settings.executor_disk_cache_bytes < size_limit, "the cache evicts before the kubelet evicts the pod"
    shm = volumes[mounts["/dev/shm"]]["emptyDir"]
    assert shm["medium"] == "Memory"
    assert quantity_bytes(shm["sizeLimit"]) == 2 * 2**30, "compose's shm_size"


def test_executor_replicas_belong_to_the_autoscaler() -> None:
    assert "replicas" not in deployments()["executor"]["spec"], "applying the manifests must not reset the HPA's count"


# ---------------------------------------------------------------------------------------------------------------
# Autoscaling


def test_queue_depth_is_the_metric_the_queue_exports() -> None:
    (family,) = queue_metrics().depth.describe()
    assert family.name == "queue_depth"


def test_hpa_scales_the_executor_on_queue_depth() -> None:
    (hpa,) = of_kind("HorizontalPodAutoscaler")
    spec = hpa.document["spec"]
    assert hpa.document["apiVersion"] == "autoscaling/v2"
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "executor"}
    assert "executor" in deployments()
    (metric,) = spec["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["name"] == "queue_depth"
    target = metric["external"]["target"]
    assert target["type"] == "AverageValue"
    assert float(target["averageValue"]) == ScalingPolicy().depth_target, "the seeds' target depth per executor"
    assert 1 <= spec["minReplicas"] <= spec["maxReplicas"] <= ScalingPolicy().max_executors
    assert behaviour_of(spec["behavior"]) == (SCALE_UP, SCALE_DOWN)


@cache
def scaled_object() -> dict[str, Any]:
    (found,) = [m.document for m in manifests() if m.path.parent == KEDA_DIR]
    return found


def test_keda_scaled_object_structure() -> None:
    """KEDA's CRD schema is not available offline: its fields are checked here against KEDA 2.x's API."""
    document = scaled_object()
    assert document["apiVersion"] == "keda.sh/v1alpha1"
    assert document["kind"] == "ScaledObject"
    assert set(document) == {"apiVersion", "kind", "metadata", "spec"}
    assert document["metadata"]["namespace"] == NAMESPACE
    spec = document["spec"]
    assert set(spec) <= KEDA_SPEC_FIELDS, f"unknown ScaledObject fields {set(spec) - KEDA_SPEC_FIELDS}"
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "executor"}
    for key in ("pollingInterval", "cooldownPeriod", "minReplicaCount", "maxReplicaCount"):
        assert isinstance(spec[key], int) and spec[key] >= 0, key
    assert spec["minReplicaCount"] == ScalingPolicy().min_executors, "KEDA scales to zero as the policy does"
    assert spec["minReplicaCount"] < spec["maxReplicaCount"]
    assert set(spec["fallback"]) == {"failureThreshold", "replicas"}
    assert set(spec["advanced"]) == {"horizontalPodAutoscalerConfig"}
    assert set(spec["advanced"]["horizontalPodAutoscalerConfig"]) == {"behavior"}
    assert spec["triggers"], "at least one trigger"
    for trigger in spec["triggers"]:
        assert set(trigger) <= KEDA_TRIGGER_FIELDS, f"unknown trigger fields {set(trigger) - KEDA_TRIGGER_FIELDS}"
        assert trigger.get("metricType", "AverageValue") in KEDA_METRIC_TYPES
        assert all(isinstance(v, str) for v in trigger["metadata"].values()), "trigger metadata values are strings"
    # The fallback works only with AverageValue triggers.
    assert all(t.get("metricType", "AverageValue") == "AverageValue" for t in spec["triggers"])


def test_keda_scales_on_queue_depth_like_the_hpa() -> None:
    spec = scaled_object()["spec"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    metadata = trigger["metadata"]
    assert {"serverAddress", "query", "threshold"} <= set(metadata)
    assert re.match(r"^https?://", metadata["serverAddress"])
    assert re.search(r"\bqueue_depth\b", metadata["query"])
    assert "max by (priority)" in metadata["query"], "every queue replica exports the same depth: no double count"
    assert float(metadata["threshold"]) == ScalingPolicy().depth_target
    (hpa,) = of_kind("HorizontalPodAutoscaler")
    assert spec["maxReplicaCount"] == hpa.document["spec"]["maxReplicas"]
    assert behaviour_of(spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]) == (SCALE_UP, SCALE_DOWN)
    # The Redis list scaler cannot read the queue: its depth is a sorted set, which is what the manifest says.
    assert f"{DEFAULT_NAMESPACE}:ready" in (KEDA_DIR / "scaledobject.yaml").read_text(encoding="utf-8")


def test_keda_overlay_replaces_the_hpa() -> None:
    (patch,) = kustomization(KEDA_DIR)["patches"]
    target = patch["target"]
    (hpa,) = of_kind("HorizontalPodAutoscaler")
    assert (target["kind"], target["name"]) == ("HorizontalPodAutoscaler", hpa.name)
    body = yaml.safe_load(patch["patch"])
    assert body["$patch"] == "delete"
    assert (body["kind"], body["metadata"]["name"]) == ("HorizontalPodAutoscaler", hpa.name)


# ---------------------------------------------------------------------------------------------------------------
# The gateway's Envoy config


def envoy_configmap() -> dict[str, Any]:
    (found,) = [m.document for m in of_kind("ConfigMap") if m.name == gateway_tool.CONFIGMAP_NAME]
    return found


def test_gateway_config_is_current() -> None:
    result = subprocess.run([sys.executable, "tools/gen_k8s_gateway_config.py", "--check"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    envoy_yaml = envoy_configmap()["data"][gateway_tool.CONFIG_KEY]
    expected = render_envoy_config(gateway_tool.gateway_config(gateway_tool.settings_from_configmap()))
    assert envoy_yaml == expected, "the ConfigMap's YAML block must hold the rendered config byte for byte"
    annotations = deployments()["gateway"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations[gateway_tool.HASH_ANNOTATION] == hashlib.sha256(envoy_yaml.encode()).hexdigest()


def test_gateway_mounts_the_config_it_runs() -> None:
    container = main_container("gateway")
    volumes = {v["name"]: v for v in pod_spec(deployments()["gateway"])["volumes"]}
    (config_mount,) = [m for m in container["volumeMounts"] if "configMap" in volumes[m["name"]]]
    assert volumes[config_mount["name"]]["configMap"]["name"] == gateway_tool.CONFIGMAP_NAME
    assert config_mount.get("readOnly") is True
    command = container["command"]
    config_path = Path(command[command.index("--config-path") + 1])
    assert config_path == Path(config_mount["mountPath"]) / gateway_tool.CONFIG_KEY
    # The descriptor stays in the image, where the gateway stage of docker/Dockerfile puts it.
    copies = " ".join(stage(DOCKERFILE, "gateway-config").all("COPY"))
    assert f"gen/descriptor/comfymesh.binpb {gateway_tool.IMAGE_DESCRIPTOR_PATH}" in copies
    assert f'"{gateway_tool.IMAGE_DESCRIPTOR_PATH}"' in envoy_configmap()["data"][gateway_tool.CONFIG_KEY]


def test_gateway_config_passes_envoy_validate(tmp_path: Path) -> None:
    config = envoy_configmap()["data"][gateway_tool.CONFIG_KEY]
    descriptor = tmp_path / "comfymesh.binpb"
    shutil.copyfile(DEFAULT_DESCRIPTOR_PATH, descriptor)
    local = config.replace(f'"{gateway_tool.IMAGE_DESCRIPTOR_PATH}"', f'"{descriptor}"')
    assert local != config
    path = tmp_path / "envoy.yaml"
    path.write_text(local, encoding="utf-8")
    result = validate_config_file(path)
    assert result.returncode == 0, result.stdout + result.stderr
    parsed = yaml.safe_load(config)
    services = {m.name: m.document for m in of_kind("Service")}
    for cluster in parsed["static_resources"]["clusters"]:
        for locality in cluster["load_assignment"]["endpoints"]:
            for endpoint in locality["lb_endpoints"]:
                socket = endpoint["endpoint"]["address"]["socket_address"]
                assert socket["address"] in services, f"the gateway routes to {socket['address']}, no such Service"
                assert socket["port_value"] in {p["port"] for p in services[socket["address"]]["spec"]["ports"]}


def test_gateway_tool_refuses_unknown_settings(tmp_path: Path) -> None:
    configmap = yaml.safe_load((K8S / "settings-configmap.yaml").read_text(encoding="utf-8"))
    configmap["data"]["COMFYMESH_GATEWAY_RATE_LIMIT_RSP"] = "10"
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(configmap), encoding="utf-8")
    with pytest.raises(gateway_tool.ManifestError, match="COMFYMESH_GATEWAY_RATE_LIMIT_RSP"):
        gateway_tool.settings_from_configmap(path)
    configmap["data"] = {"COMFYMESH_GATEWAY_PORT": "not a port"}
    path.write_text(yaml.safe_dump(configmap), encoding="utf-8")
    with pytest.raises(ValueError, match="gateway_port"):
        gateway_tool.settings_from_configmap(path)


def test_gateway_tool_requires_the_hash_annotation() -> None:
    with pytest.raises(gateway_tool.ManifestError):
        gateway_tool.with_config_hash("kind: Deployment\n", "0" * 64)
    text = 'metadata:\n  annotations:\n    comfymesh.io/envoy-config-sha256: ""\n'
    assert gateway_tool.with_config_hash(text, "ab" * 32).endswith(f'sha256: "{"ab" * 32}"\n')
