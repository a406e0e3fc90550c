"""The CLI's exit codes and one-line errors, for everything decided before a server answers."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from comfymesh.cli import run_cli
from comfymesh.cli.app import EPILOG
from comfymesh.cli.exit_codes import ExitCode, exit_code_for_error, exit_code_for_state
from comfymesh.client import ComfyMeshError, DeadlineExceededError, ExecutionState, InvalidArgumentError
from comfymesh.client.errors import from_status
from service_runtime.errors import Reason, ServiceError, invalid_argument
from service_runtime.errors.status import to_status_proto

pytestmark = pytest.mark.unit


def test_documented_codes() -> None:
    assert [int(code) for code in ExitCode] == [0, 1, 2, 3, 4, 5, 130]
    for code in ExitCode:
        assert f"{int(code):>3}  " in EPILOG
    import comfymesh.cli as cli

    assert cli.__doc__ is not None and all(f"\n    {int(c):<5}" in cli.__doc__ for c in ExitCode)


def test_final_states() -> None:
    assert exit_code_for_state(ExecutionState.SUCCEEDED) is ExitCode.OK
    assert exit_code_for_state(ExecutionState.FAILED) is ExitCode.EXECUTION_FAILED
    assert exit_code_for_state(ExecutionState.CANCELLED) is ExitCode.CANCELLED


@pytest.mark.parametrize(("error", "code"), [
    (from_status(to_status_proto(invalid_argument("bad", reason=Reason.WORKFLOW_INVALID))), ExitCode.USAGE),
    (from_status(to_status_proto(ServiceError(grpc.StatusCode.UNAUTHENTICATED, Reason.UNAUTHENTICATED, "no"))),
     ExitCode.API_ERROR),
    (from_status(to_status_proto(ServiceError(grpc.StatusCode.NOT_FOUND, Reason.EXECUTION_NOT_FOUND, "no"))),
     ExitCode.API_ERROR),
    (ComfyMeshError(grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE", "refused", from_server=False), ExitCode.API_ERROR),
    (DeadlineExceededError(grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", "slow", from_server=False),
     ExitCode.TIMED_OUT),
    (InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "bad url", from_server=False),
     ExitCode.USAGE),
])
def test_errors(error: ComfyMeshError, code: ExitCode) -> None:
    assert exit_code_for_error(error) is code


@pytest.fixture
def workflow_file(tmp_path: Path) -> Path:
    path = tmp_path / "workflow_api.json"
    path.write_text(json.dumps({"1": {"class_type": "EmptyImage", "_meta": {"title": "Canvas"},
                                      "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}}))
    return path


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = run_cli(["--url", "127.0.0.1:1", "--api-key", "k", *args])
    return code, capsys.readouterr().err


def test_a_bad_override_is_a_usage_error_on_one_line(capsys: pytest.CaptureFixture[str], workflow_file: Path) -> None:
    code, err = _run(capsys, "run", str(workflow_file), "--set", "Canvas.colour=1")
    assert code == ExitCode.USAGE
    assert err.strip().splitlines() == [
        "error: INVALID_ARGUMENT: node 1 (EmptyImage) has no input 'colour'; inputs: batch_size, color, height, width"]


def test_missing_files_and_bad_options_are_usage_errors(capsys: pytest.CaptureFixture[str],
                                                        workflow_file: Path, tmp_path: Path) -> None:
    assert _run(capsys, "run", str(tmp_path / "absent.json"))[0] == ExitCode.USAGE
    code, err = _run(capsys, "run", str(workflow_file), "--input", f"image={tmp_path / 'absent.png'}")
    assert code == ExitCode.USAGE and "is not a readable file" in err
    assert _run(capsys, "run", str(workflow_file), "--priority", "101")[0] == ExitCode.USAGE
    assert _run(capsys, "run")[0] == ExitCode.USAGE
    assert _run(capsys, "no-such-command")[0] == ExitCode.USAGE
    code, err = _run(capsys, "executions", "list", "--state", "sleeping")
    assert code == ExitCode.USAGE and "unknown state 'sleeping'" in err
    code, err = run_cli(["--url", "ftp://x", "nodes"]), capsys.readouterr().err
    assert code == ExitCode.USAGE and err.startswith("error: INVALID_ARGUMENT: invalid URL 'ftp://x'")


def test_an_unreachable_gateway_is_an_api_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(capsys, "queue", "stats")
    assert code == ExitCode.API_ERROR and err.startswith("error: UNAVAILABLE: ") and len(err.splitlines()) == 1
