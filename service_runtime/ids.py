"""Identifiers: time-ordered, URL-safe, unguessable.

Execution ids sort by creation time (the first 48 bits are milliseconds since the epoch, like UUIDv7), which keeps
B-tree inserts local and makes `ORDER BY id` a creation order; the other 80 bits are random.

Within one process the ids are strictly increasing, even within a millisecond or when the clock steps back: the
next id then takes the last one's milliseconds and its random part plus a random step (as monotonic ULIDs do), so
"newest first" is exact for what one process created. Ids of different processes in the same millisecond compare
in no particular order.
"""

from __future__ import annotations

import os
import threading
import time

_RANDOM_BITS = 80
_MAX_STEP = 1 << 32  # a random increment keeps the next id unguessable from the last one
_lock = threading.Lock()
_last = (0, 0)  # (milliseconds, random part) of the last id this process made


def time_ordered_id() -> str:
    """32 lowercase hex characters: 12 of milliseconds, 20 random."""
    global _last
    millis = time.time_ns() // 1_000_000
    random_part = int.from_bytes(os.urandom(_RANDOM_BITS // 8), "big")
    with _lock:
        last_millis, last_random = _last
        if millis <= last_millis:
            millis = last_millis
            random_part = last_random + 1 + random_part % _MAX_STEP
            if random_part >> _RANDOM_BITS:  # the random part overflowed: borrow the next millisecond
                millis, random_part = millis + 1, random_part % _MAX_STEP
        _last = (millis, random_part)
    return f"{millis:012x}{random_part:020x}"


def is_valid_id(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)
