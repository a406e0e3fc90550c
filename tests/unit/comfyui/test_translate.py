"""The per-prompt translator fed with the frames ComfyUI 0.27 really sent (shared/comfyui-transcripts)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from gpu_executor.comfyui.frames import BinaryImage, Frame, Message
from gpu_executor.comfyui.history import entry_of, replay
from gpu_executor.comfyui.translate import Completed, PromptTranslator
from gpu_executor.engine.events import (
    Cancelled,
    Event,
    Failed,
    NodeExecuted,
    NodeProgress,
    NodesCached,
    NodeStarted,
    Preview,
    Started,
)
from tests.unit.comfyui.recorded import frames, history_entry, posted, prompt_id

pytestmark = pytest.mark.unit
OUTPUT_CLASSES = frozenset({"SaveImage", "PreviewImage", "PreviewAny", "SaveImageWebsocket"})


def translator(scenario: str, index: int = 0) -> PromptTranslator:
    clock = itertools.count(1000.0, 0.5)
    return PromptTranslator("exec-1", prompt_id(scenario, index), posted(scenario, index)["prompt"], OUTPUT_CLASSES,
                            clock=lambda: next(clock))


def run(machine: PromptTranslator, feed: list[Frame]) -> list[Event]:
    produced: list[Event] = []
    for frame in feed:
        produced += machine.feed(frame)
    return produced


def kinds(produced: list[Event]) -> list[tuple[str, Any]]:
    summary: list[tuple[str, Any]] = []
    for event in produced:
        if isinstance(event, NodeStarted):
            summary.append(("started", event.node_id))
        elif isinstance(event, NodeExecuted):
            summary.append(("executed", event.node_id))
        elif isinstance(event, NodesCached):
            summary.append(("cached", event.node_ids))
        elif isinstance(event, Started):
            summary.append(("start", event.execution_id))
    return summary


def test_an_uncached_run_becomes_node_events_and_success() -> None:
    machine = translator("image_ok")
    produced = run(machine, frames("image_ok"))
    assert kinds(produced) == [("start", "exec-1"), ("started", "1"), ("started", "2"), ("started", "3"),
                               ("executed", "3")]
    (executed,) = [e for e in produced if isinstance(e, NodeExecuted)]
    assert executed.class_type == "SaveImage" and not executed.cached
    assert executed.ui["images"][0]["type"] == "output" and executed.seconds > 0
    assert isinstance(machine.result, Completed) and set(machine.result.ui) == {"3"}
    assert [(t.node_id, t.cached) for t in machine.timings] == [("1", False), ("2", False), ("3", False)]
    assert machine.idle  # executing null arrived: history is written


def test_a_fully_cached_run_reports_cached_nodes_and_the_old_output() -> None:
    machine = translator("image_cached")
    produced = run(machine, frames("image_cached"))
    assert kinds(produced) == [("start", "exec-1"), ("cached", ("1", "2", "3")), ("executed", "3")]
    (executed,) = [e for e in produced if isinstance(e, NodeExecuted)]
    assert executed.cached
    assert isinstance(machine.result, Completed)
    assert all(t.cached for t in machine.timings)


def test_sampler_steps_become_progress_and_metadata_previews() -> None:
    machine = translator("ksampler_progress")
    produced = run(machine, frames("ksampler_progress"))
    progress = [(e.node_id, e.value, e.max) for e in produced if isinstance(e, NodeProgress)]
    assert progress == [("3", step, 6) for step in range(1, 7)]
    previews = [e for e in produced if isinstance(e, Preview)]
    assert len(previews) == 6
    assert {(p.node_id, p.content_type) for p in previews} == {("3", "image/jpeg")}
    assert all(p.data[:2] == b"\xff\xd8" for p in previews)  # the JPEG itself, without the frame header
    assert isinstance(machine.result, Completed)


def test_legacy_previews_belong_to_the_running_node_and_interrupt_cancels() -> None:
    machine = translator("interrupt")
    produced = run(machine, frames("interrupt"))
    previews = [e for e in produced if isinstance(e, Preview)]
    assert len(previews) == 3 and {p.node_id for p in previews} == {"3"}
    assert isinstance(machine.result, Cancelled) and machine.result.node_id == "3"


def test_a_runtime_error_fails_with_the_node_and_its_exception() -> None:
    machine = translator("runtime_error")
    run(machine, frames("runtime_error"))
    failed = machine.result
    assert isinstance(failed, Failed)
    assert (failed.reason, failed.node_id, failed.class_type, failed.exception_type) == (
        "NODE_EXECUTION_FAILED", "2", "SaveImage", "Exception")
    assert "outside the output folder" in failed.message and "save_images" in failed.traceback


def test_every_output_kind_is_reported_and_the_websocket_image_is_an_output() -> None:
    machine = translator("multi_output")
    produced = run(machine, frames("multi_output"))
    assert sorted(e.node_id for e in produced if isinstance(e, NodeExecuted)) == ["3", "4", "6"]
    assert not [e for e in produced if isinstance(e, Preview)]  # SaveImageWebsocket's PNG is no preview
    (image,) = machine.images
    assert (image.node_id, image.content_type, image.data[:4]) == ("7", "image/png", b"\x89PNG")
    assert isinstance(machine.result, Completed)
    assert machine.result.ui["6"] == {"text": ["hello from the recorder"]}


def test_frames_of_other_prompts_never_leak() -> None:
    stranger = PromptTranslator("exec-1", "00000000-0000-0000-0000-000000000000", posted("image_ok")["prompt"],
                                OUTPUT_CLASSES)
    assert run(stranger, frames("foreign_prompts")) == []
    assert run(stranger, frames("ksampler_progress")) == []
    assert stranger.result is None


def test_foreign_broadcasts_between_our_nodes_do_not_become_our_events() -> None:
    """A prompt without a client id broadcasts progress and type-1 previews; ours only sees its own frames, and a
    type-1 preview is taken only while one of our nodes runs."""
    foreign = [f for f in frames("foreign_prompts") if isinstance(f, BinaryImage) or
               (isinstance(f, Message) and f.type in ("progress", "progress_state"))]
    assert foreign
    ours = frames("image_ok")
    before_start = ours.index(next(f for f in ours if isinstance(f, Message) and f.type == "execution_start"))
    machine = translator("image_ok")
    mixed = [*ours[:before_start], *foreign, *ours[before_start:]]
    produced = run(machine, mixed)
    assert not [e for e in produced if isinstance(e, NodeProgress | Preview)]
    assert isinstance(machine.result, Completed)


def test_history_completes_a_run_whose_socket_dropped_without_repeating_events() -> None:
    ours = frames("image_ok")
    cut = next(i for i, f in enumerate(ours) if isinstance(f, Message) and f.type == "executing"
               and f.data.get("node") == "2")
    machine = translator("image_ok")
    seen = run(machine, ours[:cut + 1])
    entry = entry_of({machine.prompt_id: history_entry("image_ok", machine.prompt_id)}, machine.prompt_id)
    assert entry is not None
    rest = replay(entry, machine)
    assert kinds(seen) == [("start", "exec-1"), ("started", "1"), ("started", "2")]
    assert kinds(rest) == [("executed", "3")]
    assert isinstance(machine.result, Completed) and machine.result.ui["3"]["images"]


def test_history_of_a_failed_prompt_fails_the_run() -> None:
    machine = translator("runtime_error")
    entry = entry_of({machine.prompt_id: history_entry("runtime_error", machine.prompt_id)}, machine.prompt_id)
    assert entry is not None
    produced = replay(entry, machine)
    assert kinds(produced)[0] == ("start", "exec-1")
    assert isinstance(machine.result, Failed) and machine.result.node_id == "2"


def test_an_unfinished_prompt_has_no_history_entry() -> None:
    assert entry_of({}, "p") is None
    assert entry_of({"p": {"prompt": []}}, "p") is None
    assert entry_of([], "p") is None


def test_a_reconnect_replay_without_prompt_id_is_ignored() -> None:
    machine = translator("image_ok")
    assert machine.feed(Message("executing", {"node": "2"})) == []
