"""The run progress views: plain lines for pipes (step lines every 10%), rich bars for terminals."""

from __future__ import annotations

import io

import pytest
from google.protobuf import duration_pb2
from rich.console import Console

from comfymesh.cli.progress import PlainProgress, RichProgress
from comfymesh.client.events import Event, event_from_proto
from comfymesh.common.v1 import execution_event_pb2 as pb

pytestmark = pytest.mark.unit


def _events() -> list[Event]:
    messages = [
        pb.ExecutionEvent(state=pb.EXECUTION_STATE_QUEUED, queued=pb.ExecutionQueued(priority=0, queue_position=2)),
        pb.ExecutionEvent(state=pb.EXECUTION_STATE_RUNNING, attempt=1, started=pb.ExecutionStarted(
            executor_id="executor-1", queue_duration=duration_pb2.Duration(seconds=1))),
        pb.ExecutionEvent(nodes_cached=pb.NodesCached(node_ids=["1"])),
        pb.ExecutionEvent(node_started=pb.NodeStarted(node_id="3", class_type="KSampler")),
        *(pb.ExecutionEvent(node_progress=pb.NodeProgress(node_id="3", value=step, max=20)) for step in range(1, 21)),
        pb.ExecutionEvent(node_started=pb.NodeStarted(node_id="9", class_type="SaveImage")),
        pb.ExecutionEvent(node_executed=pb.NodeExecuted(node_id="9", class_type="SaveImage",
                                                        duration=duration_pb2.Duration(nanos=250_000_000))),
        pb.ExecutionEvent(state=pb.EXECUTION_STATE_SUCCEEDED, succeeded=pb.ExecutionSucceeded(
            outputs=[pb.OutputFile(filename="a.png")])),
    ]
    return [event_from_proto(message) for message in messages]


def test_plain_lines() -> None:
    sink = io.StringIO()
    with PlainProgress(Console(file=sink, width=200)) as view:
        for event in _events():
            view.show(event)
        view.queue_position(2)  # unchanged: no line
    lines = sink.getvalue().splitlines()
    steps = [line for line in lines if " step " in line]
    assert lines[:4] == ["queued: position 2 (priority 0)", "started on executor-1 (attempt 1, 1.0s in the queue)",
                         "cached: node(s) 1", "node 3 (KSampler) started"]
    assert steps[0] == "node 3 (KSampler) step 1/20 (5%)" and steps[-1] == "node 3 (KSampler) step 20/20 (100%)"
    assert len(steps) == 11  # one per 10% bucket, not one per step
    assert lines[-2:] == ["node 9 (SaveImage) done in 0.25s", "succeeded: 1 output(s)"]


def test_rich_bars_fill_per_node() -> None:
    sink = io.StringIO()
    view = RichProgress(Console(file=sink, force_terminal=True, width=120))
    with view:
        for event in _events():
            view.show(event)
    tasks = {task.description: (task.completed, task.total) for task in view._progress.tasks}
    assert tasks["node 3 (KSampler)"] == (20, 20)  # filled by the sampler steps
    assert tasks["node 9 (SaveImage)"] == (1, 1) and tasks["node 1 (cached)"] == (1, 1)
    assert "succeeded: 1 output(s)" in tasks
    assert "node 3 (KSampler)" in sink.getvalue()
