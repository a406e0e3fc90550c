"""The devices this executor offers, from NVML (`pynvml`, package nvidia-ml-py), or the CPU when there is no GPU.

`describe_devices` never raises: a missing library, a missing driver, zero devices or an NVML failure all give the
CPU description of `gpu_executor.device.cpu_device`. A field one GPU does not report (temperature or utilisation
on some MIG or virtualised devices) is None on that device instead of dropping the device.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from gpu_executor.device import cpu_device

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "cuda" or "cpu"
    name: str
    index: int
    memory_total_bytes: int
    memory_free_bytes: int
    utilization_percent: int | None = None  # GPU busy time over NVML's last sample period
    temperature_celsius: int | None = None
    driver_version: str | None = None
    compute_capability: str | None = None  # CUDA compute capability, e.g. "9.0"
    uuid: str | None = None


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def cpu_description() -> list[DeviceInfo]:
    cpu = cpu_device()
    return [DeviceInfo(cpu.kind, cpu.name, cpu.index, cpu.memory_total_bytes, cpu.memory_free_bytes)]


def _optional(nvml: Any, read: Callable[[], T]) -> T | None:
    try:
        return read()
    except nvml.NVMLError:
        return None


def _describe_gpu(nvml: Any, index: int, driver: str | None) -> DeviceInfo:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    utilization = _optional(nvml, lambda: int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu))
    temperature = _optional(nvml, lambda: int(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)))
    capability = _optional(nvml, lambda: "{}.{}".format(*nvml.nvmlDeviceGetCudaComputeCapability(handle)))
    uuid = _optional(nvml, lambda: _text(nvml.nvmlDeviceGetUUID(handle)))
    return DeviceInfo("cuda", _text(nvml.nvmlDeviceGetName(handle)), index, int(memory.total), int(memory.free),
                      utilization, temperature, driver, capability, uuid)


def _nvml_devices() -> list[DeviceInfo]:
    import pynvml  # type: ignore[import-untyped]  # nvidia-ml-py ships no type information

    nvml: Any = pynvml
    nvml.nvmlInit()
    try:
        driver = _optional(nvml, lambda: _text(nvml.nvmlSystemGetDriverVersion()))
        return [_describe_gpu(nvml, index, driver) for index in range(int(nvml.nvmlDeviceGetCount()))]
    finally:
        with contextlib.suppress(nvml.NVMLError):
            nvml.nvmlShutdown()


def describe_devices() -> list[DeviceInfo]:
    """The GPUs NVML reports, or the CPU when there are none; never raises."""
    try:
        devices = _nvml_devices()
    except ImportError:
        log.debug("nvidia-ml-py is not installed; describing the CPU")
        devices = []
    except Exception as exc:  # noqa: BLE001 - NVML failures (no driver, no library, a bad device) mean "no GPU"
        log.debug("NVML unavailable (%s: %s); describing the CPU", type(exc).__name__, exc)
        devices = []
    return devices or cpu_description()
