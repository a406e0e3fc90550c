"""`comfymesh executions list|get|cancel|watch`."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from comfymesh.cli._context import cli_context, timestamp
from comfymesh.cli.exit_codes import ExitCode, exit_code_for_state
from comfymesh.cli.output import message_dict
from comfymesh.cli.progress import progress_view
from comfymesh.client.events import ExecutionState
from comfymesh.workflow.v1 import execution_pb2

app = typer.Typer(help="List, inspect, cancel and follow executions.", no_args_is_help=True)
JsonOption = Annotated[bool, typer.Option("--json", help="Print proto3 JSON instead of a table.")]


def _state_name(execution: execution_pb2.Execution) -> str:
    return ExecutionState(execution.state).name.lower()


@app.command("list")
def list_(ctx: typer.Context,
          state: Annotated[list[str] | None, typer.Option(help="Only these states (queued, running, succeeded, "
                                                                "failed, cancelled, dispatching). Repeatable.")] = None,
          limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 20,
          json_: JsonOption = False) -> None:
    """The caller's executions, newest first."""
    context = cli_context(ctx)
    try:
        states = [ExecutionState.parse(text) for text in state or []]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--state") from None
    with context.client() as client:
        executions = list(client.list(states=states, limit=limit))
    if json_:
        context.output.json(executions)
        return
    context.output.table(("ID", "STATE", "PRIORITY", "CREATED", "OUTPUTS"), (
        (e.id, _state_name(e), e.priority, timestamp(e.timings.create_time), len(e.outputs)) for e in executions))


@app.command()
def get(ctx: typer.Context, execution_id: Annotated[str, typer.Argument(metavar="ID")],
        json_: JsonOption = False) -> None:
    """One execution: state, timings, error and outputs."""
    context = cli_context(ctx)
    with context.client() as client:
        execution = client.get(execution_id)
    if json_:
        context.output.json(execution)
        return
    fields: list[tuple[str, object]] = [
        ("id", execution.id), ("state", _state_name(execution)), ("priority", execution.priority),
        ("attempts", execution.attempt_count), ("executor", execution.executor_id),
        ("created", timestamp(execution.timings.create_time)), ("started", timestamp(execution.timings.start_time)),
        ("ended", timestamp(execution.timings.end_time))]
    if ExecutionState(execution.state) is ExecutionState.QUEUED:
        fields.append(("queue position", execution.queue_position))
    if execution.HasField("error"):
        fields.append(("error", execution.error.message))
    fields.extend(("output", f"{o.subfolder + '/' if o.subfolder else ''}{o.filename} ({o.content_type}, "
                             f"{o.size_bytes} bytes)") for o in execution.outputs)
    context.output.fields(fields)


@app.command()
def cancel(ctx: typer.Context, execution_id: Annotated[str, typer.Argument(metavar="ID")],
           reason: Annotated[str, typer.Option(help="Recorded in the cancelled event.")] = "") -> None:
    """Cancel a queued or running execution."""
    context = cli_context(ctx)
    with context.client() as client:
        execution = client.cancel(execution_id, reason)
    context.output.line(f"{execution.id} {_state_name(execution)}")


@app.command()
def watch(ctx: typer.Context, execution_id: Annotated[str, typer.Argument(metavar="ID")],
          after: Annotated[str, typer.Option(help="Resume after this event id.")] = "",
          json_: Annotated[bool, typer.Option("--json", help="Print each event as one JSON line "
                                                             "(NDJSON).")] = False) -> None:
    """Follow an execution's events to the end; exits like `run` (0 succeeded, 1 failed, 4 cancelled)."""
    context = cli_context(ctx)
    with context.client() as client:
        final: ExecutionState | None = None
        try:
            if json_:
                for event in client.watch(execution_id, after_event_id=after):
                    print(json.dumps(message_dict(event.raw), sort_keys=True), flush=True)
                    final = event.state if event.terminal else final
            else:
                with progress_view(context.output.err, context.output.err.is_terminal) as view:
                    for event in client.watch(execution_id, after_event_id=after):
                        view.show(event)
                        final = event.state if event.terminal else final
        except KeyboardInterrupt:
            raise typer.Exit(ExitCode.INTERRUPTED) from None
    raise typer.Exit(exit_code_for_state(final or ExecutionState.FAILED))
