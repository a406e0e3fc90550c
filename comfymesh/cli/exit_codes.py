"""The exit codes scripts can rely on, and how errors and final states map onto them."""

from __future__ import annotations

import enum

import grpc

from comfymesh.client.errors import ComfyMeshError
from comfymesh.client.events import ExecutionState


class ExitCode(enum.IntEnum):
    """`comfymesh` exit statuses (documented in `comfymesh --help` and the package docstring)."""

    OK = 0  # success (for `run`: the execution succeeded and its outputs are saved)
    EXECUTION_FAILED = 1  # the execution finished FAILED
    USAGE = 2  # bad usage or invalid input: unknown option, unreadable file, bad override, invalid graph
    API_ERROR = 3  # the API refused the call or could not be reached (auth, not found, unavailable, ...)
    CANCELLED = 4  # the execution was cancelled
    TIMED_OUT = 5  # --timeout passed before the execution finished
    INTERRUPTED = 130  # Ctrl-C (the execution keeps running; cancel it with `executions cancel`)


# Codes that mean "what you asked for is wrong", as opposed to "the service said no or is unreachable".
_INPUT_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE}


def exit_code_for_error(error: ComfyMeshError) -> ExitCode:
    """USAGE for invalid input (client- or server-side), TIMED_OUT for a client deadline, else API_ERROR."""
    if error.code in _INPUT_CODES:
        return ExitCode.USAGE
    if error.code is grpc.StatusCode.DEADLINE_EXCEEDED and not error.from_server:
        return ExitCode.TIMED_OUT
    return ExitCode.API_ERROR


def exit_code_for_state(state: ExecutionState) -> ExitCode:
    """The exit code of a finished execution."""
    if state is ExecutionState.SUCCEEDED:
        return ExitCode.OK
    if state is ExecutionState.CANCELLED:
        return ExitCode.CANCELLED
    return ExitCode.EXECUTION_FAILED


def describe() -> str:
    """The exit codes as help text lines."""
    return "\n".join(f"{int(code):>3}  {text}" for code, text in (
        (ExitCode.OK, "success"),
        (ExitCode.EXECUTION_FAILED, "the execution failed"),
        (ExitCode.USAGE, "usage error or invalid input (bad option, file, override or graph)"),
        (ExitCode.API_ERROR, "API or connection error (auth, not found, unavailable, ...)"),
        (ExitCode.CANCELLED, "the execution was cancelled"),
        (ExitCode.TIMED_OUT, "timed out (--timeout)"),
        (ExitCode.INTERRUPTED, "interrupted by Ctrl-C"),
    ))
