"""What every command shares: the endpoint and credential from the global options, the output, and the client."""

from __future__ import annotations

from dataclasses import dataclass, field

import typer
from google.protobuf import timestamp_pb2

from comfymesh.cli.output import Output
from comfymesh.client import ComfyMesh


@dataclass
class CliContext:
    """The global options, resolved (the API key falls back to `$COMFYMESH_HOME/admin.key`)."""

    url: str
    api_key: str | None
    output: Output = field(default_factory=Output)

    def client(self) -> ComfyMesh:
        return ComfyMesh(self.url, self.api_key)


def cli_context(ctx: typer.Context) -> CliContext:
    """The CliContext the root callback stored."""
    found = ctx.find_object(CliContext)
    if found is None:  # only when a command is invoked without the root group, i.e. a programming error
        raise RuntimeError("comfymesh commands run under the comfymesh group")
    return found


def timestamp(value: timestamp_pb2.Timestamp) -> str:
    """An ISO time in UTC, or "" when unset."""
    if not value.seconds and not value.nanos:
        return ""
    return value.ToDatetime().replace(microsecond=0).isoformat() + "Z"


def parse_pairs(values: list[str], what: str) -> dict[str, str]:
    """`name=value` options into a dict; a malformed one is a usage error naming the option."""
    pairs: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"{value!r} is not NAME=VALUE", param_hint=what)
        pairs[name.strip()] = rest
    return pairs
