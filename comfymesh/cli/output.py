"""What the CLI prints: JSON for scripts, rich tables on a terminal, plain tab-separated lines otherwise, and
one-line errors on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table


class Output:
    """stdout for results, stderr for progress and errors; rich only when stdout is a terminal."""

    def __init__(self) -> None:
        self.out = Console(soft_wrap=True, highlight=False)
        self.err = Console(stderr=True, soft_wrap=True, highlight=False)

    @property
    def interactive(self) -> bool:
        return self.out.is_terminal

    def json(self, value: Message | Sequence[Message]) -> None:
        """Prints a proto message (or a list of them) as proto3 JSON with the proto field names."""
        data: Any = message_dict(value) if isinstance(value, Message) else [message_dict(item) for item in value]
        # print, not rich: JSON must reach pipes byte for byte, unwrapped and uncoloured
        print(json.dumps(data, indent=2, sort_keys=True), flush=True)

    def table(self, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
        """A table on a terminal; tab-separated lines with a header otherwise (for grep, cut and awk)."""
        materialised = [[_cell(value) for value in row] for row in rows]
        if self.interactive:
            table = Table(*columns, header_style="bold")
            for row in materialised:
                table.add_row(*row)
            self.out.print(table)
            return
        print("\t".join(columns))
        for row in materialised:
            print("\t".join(row))
        sys.stdout.flush()

    def fields(self, pairs: Sequence[tuple[str, object]]) -> None:
        """`name: value` lines."""
        width = max((len(name) for name, _ in pairs), default=0)
        for name, value in pairs:
            self.line(f"{name + ':':<{width + 1}} {_cell(value)}")

    def line(self, text: str) -> None:
        """A result line on stdout (no markup interpretation)."""
        self.out.print(text, markup=False)

    def note(self, text: str) -> None:
        """A progress or status line on stderr."""
        self.err.print(text, markup=False)

    def error(self, text: str) -> None:
        """`error: ...` on stderr, always one line."""
        self.err.print("error: " + " ".join(text.split()), markup=False, style="red" if self.err.is_terminal else "")


def message_dict(message: Message) -> dict[str, Any]:
    """A message as proto3 JSON (field names as in the .proto, enums by name, defaults omitted)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)
