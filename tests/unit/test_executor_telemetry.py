"""Device telemetry: NVML when there is a GPU, the CPU description otherwise, and never an exception."""

from __future__ import annotations

import builtins
import sys
from types import SimpleNamespace
from typing import Any

import pynvml  # type: ignore[import-untyped]
import pytest

from gpu_executor.device import cpu_device
from gpu_executor.telemetry import gpu
from gpu_executor.telemetry.gpu import DeviceInfo, describe_devices

pytestmark = pytest.mark.unit


def nvml_device_count() -> int:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    finally:
        pynvml.nvmlShutdown()


HAS_GPU = nvml_device_count() > 0


def assert_is_the_cpu(devices: list[DeviceInfo]) -> None:
    cpu = cpu_device()
    [device] = devices
    assert (device.kind, device.name, device.index, device.memory_total_bytes) == (
        cpu.kind, cpu.name, cpu.index, cpu.memory_total_bytes)
    assert 0 < device.memory_free_bytes <= device.memory_total_bytes
    assert (device.utilization_percent, device.temperature_celsius, device.driver_version,
            device.compute_capability) == (None, None, None, None)


@pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU: NVML describes it (see the gpu test)")
def test_without_a_gpu_the_cpu_is_described() -> None:
    assert_is_the_cpu(describe_devices())


def test_nvml_init_failure_falls_back_to_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_driver() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_driver)
    assert_is_the_cpu(describe_devices())


def test_missing_library_falls_back_to_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def without_pynvml(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "pynvml":
            raise ImportError("No module named 'pynvml'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "pynvml")
    monkeypatch.setattr(builtins, "__import__", without_pynvml)
    assert_is_the_cpu(describe_devices())


class FakeNVML:
    """Two GPUs; the second one (a MIG-like slice) reports neither temperature nor utilisation."""

    def __init__(self, count: int = 2) -> None:
        self.count = count
        self.initialised = 0
        self.shut_down = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in ("nvmlInit", "nvmlShutdown", "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex",
                     "nvmlDeviceGetName", "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetUtilizationRates",
                     "nvmlDeviceGetTemperature", "nvmlDeviceGetCudaComputeCapability", "nvmlDeviceGetUUID",
                     "nvmlSystemGetDriverVersion"):
            monkeypatch.setattr(pynvml, name, getattr(self, name))

    def nvmlInit(self) -> None:
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.shut_down += 1

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> Any:
        return [b"NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB MIG 1g.5gb"][handle]

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return SimpleNamespace(total=80 << 30, free=(70 << 30) - handle, used=10 << 30)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        if handle == 1:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return SimpleNamespace(gpu=37, memory=12)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        if handle == 1:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return 41

    def nvmlDeviceGetCudaComputeCapability(self, handle: int) -> tuple[int, int]:
        return [(9, 0), (8, 0)][handle]

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return f"GPU-{handle:08d}"

    def nvmlSystemGetDriverVersion(self) -> bytes:
        return b"570.86.15"


def test_nvml_devices_are_described(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNVML()
    fake.install(monkeypatch)
    assert describe_devices() == [
        DeviceInfo("cuda", "NVIDIA H100 80GB HBM3", 0, 80 << 30, 70 << 30, 37, 41, "570.86.15", "9.0",
                   "GPU-00000000"),
        DeviceInfo("cuda", "NVIDIA A100-SXM4-40GB MIG 1g.5gb", 1, 80 << 30, (70 << 30) - 1, None, None,
                   "570.86.15", "8.0", "GPU-00000001"),
    ]
    assert (fake.initialised, fake.shut_down) == (1, 1)


def test_zero_devices_falls_back_to_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNVML(count=0)
    fake.install(monkeypatch)
    assert_is_the_cpu(describe_devices())
    assert fake.shut_down == 1


def test_a_failing_device_query_falls_back_instead_of_raising(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNVML()
    fake.install(monkeypatch)

    def lost(handle: int) -> Any:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    monkeypatch.setattr(pynvml, "nvmlDeviceGetMemoryInfo", lost)
    assert_is_the_cpu(describe_devices())
    assert fake.shut_down == 1  # NVML is shut down on every path


def test_the_cpu_description_reuses_device_py() -> None:
    assert_is_the_cpu(gpu.cpu_description())


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU with its driver")
def test_real_gpus_are_described_by_nvml() -> None:
    devices = describe_devices()
    assert len(devices) == nvml_device_count()
    for index, device in enumerate(devices):
        assert device.kind == "cuda" and device.index == index and device.name
        assert 0 < device.memory_free_bytes <= device.memory_total_bytes
        assert device.driver_version and device.compute_capability
        major, minor = device.compute_capability.split(".")
        assert int(major) >= 3 and int(minor) >= 0
        assert device.utilization_percent is None or 0 <= device.utilization_percent <= 100
        assert device.temperature_celsius is None or 0 < device.temperature_celsius < 120
