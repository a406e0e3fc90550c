"""Executor telemetry: what the executor runs on (GPUs through NVML, the CPU otherwise)."""
