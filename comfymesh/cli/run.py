"""`comfymesh run`: submit a workflow file with overrides and inputs, follow it live, save its outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from comfymesh.cli._context import cli_context, parse_pairs
from comfymesh.cli.exit_codes import ExitCode, exit_code_for_state
from comfymesh.cli.progress import ProgressView, progress_view
from comfymesh.client import ComfyMesh, Workflow
from comfymesh.client.errors import execution_failure
from comfymesh.client.events import Event, ExecutionState, Heartbeat
from comfymesh.client.workflow import Override
from comfymesh.workflow.v1 import execution_pb2


def run(
    ctx: typer.Context,
    workflow: Annotated[Path, typer.Argument(help="A ComfyUI workflow_api.json (\"Save (API)\").",
                                             show_default=False)],
    set_: Annotated[list[str] | None, typer.Option(
        "--set", "-s", metavar="NODE.INPUT=VALUE",
        help="Override an input of a node named by id or _meta.title, e.g. 3.seed=42 or "
             "\"Positive Prompt.text=a cat\". VALUE is JSON when it parses, else a string. Repeatable.")] = None,
    input_: Annotated[list[str] | None, typer.Option(
        "--input", "-i", metavar="NAME=FILE",
        help="Upload FILE as the input NAME nodes read (e.g. LoadImage's image). Repeatable.")] = None,
    priority: Annotated[int, typer.Option(min=-100, max=100, help="Higher runs first.")] = 0,
    label: Annotated[list[str] | None, typer.Option(metavar="KEY=VALUE", help="Label the execution. "
                                                                             "Repeatable.")] = None,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Where outputs are saved.")] = Path("outputs"),
    timeout: Annotated[float | None, typer.Option(min=0.001, help="Give up (exit 5) after this many seconds; "
                                                                  "the execution keeps running.")] = None,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Print the execution id and exit at once.")] = False,
) -> None:
    """Run a workflow: live progress on stderr, the saved output paths on stdout."""
    context = cli_context(ctx)
    output = context.output
    graph = Workflow.load(workflow).with_overrides(Override.parse(text) for text in set_ or [])
    files = {name: Path(path) for name, path in parse_pairs(input_ or [], "--input").items()}
    for name, path in files.items():
        if not path.is_file():
            raise typer.BadParameter(f"input {name!r}: {path} is not a readable file", param_hint="--input")
    with context.client() as client:
        execution = client.submit(graph, inputs=files, priority=priority,
                                  labels=parse_pairs(label or [], "--label"))
        if detach:
            output.line(execution.id)
            return
        output.note(f"execution {execution.id}")
        try:
            final = _follow(client, execution.id, progress_view(output.err, output.err.is_terminal), timeout)
        except KeyboardInterrupt:
            output.note(f"interrupted; execution {execution.id} keeps running "
                        f"(comfymesh executions cancel {execution.id})")
            raise typer.Exit(ExitCode.INTERRUPTED) from None
        state = ExecutionState(final.state)
        if state is ExecutionState.SUCCEEDED:
            for path in client.download_outputs(final, output_dir):
                output.line(str(path))
        elif state is ExecutionState.FAILED:
            output.error(_failure(final))
        raise typer.Exit(exit_code_for_state(state))


def _follow(client: ComfyMesh, execution_id: str, view: ProgressView,
            timeout: float | None) -> execution_pb2.Execution:
    """Shows events until the terminal one; while queued, each heartbeat refreshes the queue position."""
    with view:
        for event in client.watch(execution_id, include_heartbeats=True, timeout=timeout):
            if isinstance(event, Heartbeat):
                _refresh_position(client, execution_id, event, view)
            else:
                view.show(event)
    return client.get(execution_id)


def _refresh_position(client: ComfyMesh, execution_id: str, event: Event, view: ProgressView) -> None:
    if event.state is ExecutionState.QUEUED:
        current = client.get(execution_id)
        if ExecutionState(current.state) is ExecutionState.QUEUED:
            view.queue_position(current.queue_position)


def _failure(execution: execution_pb2.Execution) -> str:
    """`REASON: message` of a failed execution's error."""
    return str(execution_failure(execution.error))
