"""Serving a contract before its implementation: generated servicer bases answer UNIMPLEMENTED for every RPC."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

S = TypeVar("S")


def contract_only(servicer_class: Callable[[], S]) -> S:
    """An instance of a generated servicer base, or a partial subclass, whose missing RPCs answer UNIMPLEMENTED.

    mypy-protobuf marks every servicer method abstract; the runtime base classes implement each one by raising
    NotImplementedError, which the error interceptor turns into UNIMPLEMENTED with reason NOT_IMPLEMENTED.
    """
    return servicer_class()
