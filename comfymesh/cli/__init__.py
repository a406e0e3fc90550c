"""`comfymesh`: the command line of ComfyMesh.

    comfymesh up                                        # the whole platform on this machine (= make run)
    comfymesh run workflow_api.json --set 3.seed=42 --set "Positive Prompt.text=a cat" --output-dir out
    comfymesh executions list|get|cancel|watch
    comfymesh models upload|list|rm
    comfymesh keys create|list|revoke
    comfymesh queue stats
    comfymesh nodes

Global options: `--url` (env COMFYMESH_URL, default 127.0.0.1:8080) and `--api-key` (env COMFYMESH_API_KEY,
default: the contents of `$COMFYMESH_HOME/admin.key`, COMFYMESH_HOME defaulting to `.comfymesh`, so the quickstart
works right after `make run`). List and get commands take `--json`. Errors are one line on stderr:
`error: REASON: message`. Output degrades to plain lines when not on a terminal.

Exit codes (stable; scripts may rely on them):
    0    success (`run`: the execution succeeded and its outputs are saved)
    1    the execution failed
    2    usage error or invalid input (bad option, unreadable file, bad override, invalid graph)
    3    API or connection error (unauthenticated, permission denied, not found, unavailable, ...)
    4    the execution was cancelled
    5    timed out (`run --timeout`)
    130  interrupted by Ctrl-C (the execution keeps running)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import typer

from comfymesh.cli.app import app
from comfymesh.cli.exit_codes import ExitCode, exit_code_for_error
from comfymesh.cli.output import Output
from comfymesh.client.errors import ComfyMeshError

__all__ = ["app", "main", "run_cli"]


def run_cli(argv: Sequence[str] | None = None) -> int:
    """Runs the command line and returns its exit code (every failure mapped to an ExitCode)."""
    command = typer.main.get_command(app)
    try:
        result = command.main(args=list(argv) if argv is not None else None, prog_name="comfymesh",
                              standalone_mode=False)
    except ComfyMeshError as exc:
        Output().error(str(exc))
        return exit_code_for_error(exc)
    except (typer.Abort, KeyboardInterrupt):  # Ctrl-C (the parser turns KeyboardInterrupt into Abort)
        Output().error("interrupted")
        return ExitCode.INTERRUPTED
    except typer.TyperException as exc:  # bad option, missing argument, bad value, unreadable file
        show = getattr(exc, "show", None)
        if callable(show):
            show()  # the usage line and `Error: ...`, as the parser words it
        else:
            Output().error(str(exc))
        return ExitCode.USAGE
    return result if isinstance(result, int) else ExitCode.OK


def main() -> None:
    """The `comfymesh` console script."""
    sys.exit(run_cli())
