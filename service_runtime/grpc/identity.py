"""Who is calling: the tenant every read and write is scoped to.

Until authentication lands (identity issue), every caller belongs to the single tenant "default". Servicers ask
this one function, so the interceptor that authenticates callers only has to change what it returns.
"""

from __future__ import annotations

from typing import Any

import grpc.aio

DEFAULT_TENANT = "default"


def caller_tenant(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    return DEFAULT_TENANT
