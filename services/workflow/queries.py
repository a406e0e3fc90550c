"""Reading executions: get and list, scoped to the caller's tenant, with AIP-158 pagination."""

from __future__ import annotations

from service_runtime.errors import FieldViolation, Reason, invalid_argument, not_found
from service_runtime.ids import is_valid_id
from service_runtime.pagination import PageSize, PageTokenCodec
from services.execution_store.domain import ExecutionFilter, ExecutionRecord
from services.execution_store.repository import ExecutionRepository

LIST_PAGE_SIZE = PageSize(default=50, maximum=1000)


def check_execution_id(execution_id: str, field: str = "id") -> None:
    if not is_valid_id(execution_id):
        raise invalid_argument(f"{field} must be an execution id (32 lowercase hex characters)",
                               FieldViolation(field, f"{execution_id[:64]!r} is not an execution id", "INVALID_ID"))


class ExecutionQueries:
    def __init__(self, repository: ExecutionRepository, tokens: PageTokenCodec) -> None:
        self._repository = repository
        self._tokens = tokens

    async def get(self, tenant: str, execution_id: str) -> ExecutionRecord:
        check_execution_id(execution_id)
        record = await self._repository.get(tenant, execution_id)
        if record is None:
            # Another tenant's execution answers the same as a missing one, so ids do not leak.
            raise not_found(f"execution {execution_id} not found", Reason.EXECUTION_NOT_FOUND,
                            execution_id=execution_id)
        return record

    async def list(self, tenant: str, flt: ExecutionFilter, page_size: int, page_token: str
                   ) -> tuple[list[ExecutionRecord], str]:
        limit = LIST_PAGE_SIZE.resolve(page_size)
        query = {"tenant": tenant, **flt.as_query()}
        cursor = self._tokens.decode(page_token, query)
        before_id = cursor["before"] if cursor else None
        records, next_cursor = await self._repository.list(tenant, flt, before_id=before_id, limit=limit)
        token = self._tokens.encode({"before": next_cursor}, query) if next_cursor else ""
        return records, token
