"""The `comfymesh` command tree: global options, `up`, `run`, `nodes`, and the command groups."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from comfymesh.cli import executions, keys, models
from comfymesh.cli._context import CliContext, cli_context
from comfymesh.cli.exit_codes import describe
from comfymesh.cli.run import run
from comfymesh.client._channel import API_KEY_ENV, DEFAULT_URL, URL_ENV, default_api_key

# "\b" keeps the parser from re-wrapping the table into one paragraph.
EPILOG = "\b\nExit codes:\n" + describe()

app = typer.Typer(name="comfymesh", help="Run ComfyUI workflows on a ComfyMesh platform.", epilog=EPILOG,
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None)
app.add_typer(executions.app, name="executions")
app.add_typer(models.app, name="models")
app.add_typer(keys.app, name="keys")
queue_app = typer.Typer(help="The execution queue.", no_args_is_help=True)
app.add_typer(queue_app, name="queue")
app.command(help="Run a workflow: live progress on stderr, the saved output paths on stdout.")(run)


@app.callback()
def root(ctx: typer.Context,
         url: Annotated[str, typer.Option(envvar=URL_ENV, help="The gateway: host:port, http://host:port or "
                                                               "https://host (TLS).")] = DEFAULT_URL,
         api_key: Annotated[str | None, typer.Option(
             envvar=API_KEY_ENV, show_default=False,
             help="The API key (default: $COMFYMESH_HOME/admin.key, which `comfymesh up` writes; "
                  "COMFYMESH_HOME defaults to .comfymesh).")] = None) -> None:
    """Run ComfyUI workflows on a ComfyMesh platform."""
    ctx.obj = CliContext(url, api_key or default_api_key())


@app.command()
def up() -> None:
    """Start the whole platform on this machine (what `make run` does) until Ctrl-C."""
    # exec, not a child: Ctrl-C and SIGTERM reach the launcher itself, which stops everything it started.
    os.execv(sys.executable, [sys.executable, "-m", "launcher"])  # noqa: S606 - our own interpreter and module


@app.command()
def nodes(ctx: typer.Context,
          category: Annotated[str, typer.Option(help="Only this category (prefix, e.g. image).")] = "",
          json_: Annotated[bool, typer.Option("--json", help="Print proto3 JSON.")] = False) -> None:
    """The node classes the fleet can run (the catalog)."""
    context = cli_context(ctx)
    with context.client() as client:
        catalog = client.nodes(category=category)
    if json_:
        context.output.json(catalog)
        return
    context.output.table(("NAME", "CATEGORY", "OUTPUT NODE", "INPUTS"), (
        (n.name, n.category, n.output_node, ", ".join(i.name for i in n.inputs)) for n in catalog))


@queue_app.command()
def stats(ctx: typer.Context,
          json_: Annotated[bool, typer.Option("--json", help="Print proto3 JSON.")] = False) -> None:
    """Queue depth, running jobs and executors."""
    context = cli_context(ctx)
    with context.client() as client:
        current = client.queue_stats()
    if json_:
        context.output.json(current)
        return
    context.output.fields([
        ("queued", current.queued_total), ("running", current.running), ("paused", current.paused),
        ("executors free", current.executors_free), ("executors busy", current.executors_busy),
        ("oldest queued", f"{current.oldest_age.ToTimedelta().total_seconds():.1f}s"),
        ("dead letters", current.dead_letters),
        *((f"priority {d.priority}", d.depth) for d in current.depths)])
