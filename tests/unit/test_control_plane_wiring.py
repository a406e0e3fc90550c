"""Names two services share without importing each other: they must stay equal."""

from __future__ import annotations

import pytest

from services.execution.component import QUEUE_OUTCOMES_STREAM
from services.queue.job_queue import DEFAULT_NAMESPACE, outcomes_stream

pytestmark = pytest.mark.unit


def test_the_execution_service_reads_the_stream_the_queue_writes() -> None:
    assert outcomes_stream(DEFAULT_NAMESPACE) == QUEUE_OUTCOMES_STREAM
