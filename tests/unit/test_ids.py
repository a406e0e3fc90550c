"""Time-ordered ids: strictly increasing within a process, even within a millisecond or when the clock steps back."""

from __future__ import annotations

import threading

import pytest

from service_runtime import ids
from service_runtime.ids import is_valid_id, time_ordered_id

pytestmark = pytest.mark.unit


def test_ids_made_in_a_burst_are_strictly_increasing_and_valid() -> None:
    made = [time_ordered_id() for _ in range(20_000)]  # many share a millisecond
    assert made == sorted(made) and len(set(made)) == len(made)
    assert all(is_valid_id(value) for value in made)


def test_a_clock_that_steps_back_does_not_reorder(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [2_000_000_000_000 * 1_000_000]
    monkeypatch.setattr(ids.time, "time_ns", lambda: now[0])
    first = time_ordered_id()
    now[0] -= 5_000 * 1_000_000  # five seconds back (NTP)
    second = time_ordered_id()
    assert second > first and second[:12] == first[:12]


def test_an_overflowing_random_part_moves_to_the_next_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ids, "_last", (1_000, (1 << 80) - 1))
    monkeypatch.setattr(ids.time, "time_ns", lambda: 1_000 * 1_000_000)
    made = time_ordered_id()
    assert int(made[:12], 16) == 1_001 and is_valid_id(made)


def test_threads_never_make_the_same_id() -> None:
    made: list[str] = []

    def burst() -> None:
        made.extend(time_ordered_id() for _ in range(5_000))

    threads = [threading.Thread(target=burst) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(made)) == len(made) == 20_000
