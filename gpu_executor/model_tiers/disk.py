"""The local-disk tier: a content-addressed directory of model files with a byte budget.

Layout under `root`:

    index.json                 {"version": 1, "files": {sha256: {"size", "last_used"}}, "names": {name: sha256}}
    <sha256[:2]>/<sha256>      the verified files
    <sha256[:2]>/.tmp-…        downloads in progress (deleted on start: a crash leaves nothing that is used)

A file reaches its final path only by `os.replace` of a fsynced temp file whose sha256 (computed while writing)
and size matched; the index is rewritten atomically the same way, so a restarted executor keeps its cache. On
start the tier deletes leftover temp files, drops index entries whose file is missing or has the wrong size (and
such files), adopts verified files the index missed (a crash between the rename and the index write), and evicts
down to the budget.

Eviction is size-aware LRU and never touches a pinned file (`pin`: a load in progress). Concurrent admissions of
the same sha256 (threads or asyncio tasks) write once: the first caller downloads, the others wait for it and
get its file (or its error; when the first was cancelled, one of them takes over). One process owns a root.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import grpc

from service_runtime.errors import Reason, ServiceError, invalid_argument, resource_exhausted

log = logging.getLogger(__name__)

INDEX_NAME = "index.json"
INDEX_VERSION = 1
TEMP_PREFIX = ".tmp-"
READ_CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHARD = re.compile(r"[0-9a-f]{2}")
T = TypeVar("T")

SyncSource = str | os.PathLike[str] | BinaryIO | Iterable[bytes]
"""A path to copy from, a binary file object (read, not closed) or an iterable of byte chunks."""
Source = SyncSource | AsyncIterable[bytes]
_Claim = tuple[Path | None, "concurrent.futures.Future[Path | None] | None", bool]


@dataclass(frozen=True)
class DiskEntry:
    sha256: str
    size: int
    last_used: float  # time.time() of the last admission or hit
    names: tuple[str, ...] = ()


def checksum_mismatch(sha256: str, message: str, **metadata: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.DATA_LOSS, Reason.MODEL_CHECKSUM_MISMATCH, message,
                        {"expected_sha256": sha256, **metadata})


def _normalize_sha256(sha256: str) -> str:
    digest = sha256.strip().lower()
    if not _SHA256.fullmatch(digest):
        raise invalid_argument(f"not a sha256 hex digest: {sha256!r}", sha256=sha256)
    return digest


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_chunks(source: SyncSource) -> Iterator[bytes]:
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as file:
            while chunk := file.read(READ_CHUNK):
                yield chunk
    elif hasattr(source, "read"):
        while chunk := source.read(READ_CHUNK):
            yield chunk
    else:
        yield from source


PARALLEL_HASH_BYTES = 256 << 10
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _hash_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="disk-tier-hash")
        return _pool


class _TempWriter:
    """One download into a temp file next to its final path; `write`, `commit` and `abort` are serialized, so an
    abort (e.g. from a cancelled task) never races a write still running in a worker thread."""

    def __init__(self, tier: DiskTier, sha256: str, size: int, name: str | None) -> None:
        self._tier, self.sha256, self.size, self._name = tier, sha256, size, name
        self.final_path = tier.file_path(sha256)
        self.final_path.parent.mkdir(parents=True, exist_ok=True)
        self.temp_path = self.final_path.parent / f"{TEMP_PREFIX}{sha256}-{secrets.token_hex(4)}"
        self._file: BinaryIO = open(self.temp_path, "xb")  # noqa: SIM115 - closed by commit/abort
        self._hash = hashlib.sha256()
        self._lock = threading.Lock()
        self._state = "open"  # then "committed" or "aborted"
        self.written = 0

    def write(self, chunk: bytes) -> None:
        with self._lock:
            if self._state != "open":
                raise RuntimeError(f"download of {self.sha256} is already {self._state}")
            if self.written + len(chunk) > self.size:
                raise checksum_mismatch(self.sha256, f"more than the expected {self.size} bytes for {self.sha256}",
                                        expected_size=str(self.size))
            if len(chunk) >= PARALLEL_HASH_BYTES:  # hash on another thread while this one writes (both drop the GIL)
                hashing = _hash_pool().submit(self._hash.update, chunk)
                try:
                    self._file.write(chunk)
                finally:
                    hashing.result()
            else:
                self._file.write(chunk)
                self._hash.update(chunk)
            self.written += len(chunk)

    def commit(self) -> Path:
        with self._lock:
            if self._state != "open":
                raise RuntimeError(f"download of {self.sha256} is already {self._state}")
            if self.written != self.size:
                raise checksum_mismatch(self.sha256, f"got {self.written} bytes, expected {self.size}",
                                        expected_size=str(self.size), actual_size=str(self.written))
            actual = self._hash.hexdigest()
            if actual != self.sha256:
                raise checksum_mismatch(self.sha256, f"sha256 of the downloaded bytes is {actual}, expected "
                                        f"{self.sha256}", actual_sha256=actual)
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self.temp_path, self.final_path)
            self._state = "committed"
            self._tier._committed(self.sha256, self.size, self._name)
        try:
            _fsync_dir(self.final_path.parent)
        except OSError as exc:  # the file is complete and verified; only the rename's durability is in doubt
            log.warning("fsync of %s failed: %s", self.final_path.parent, exc)
        return self.final_path

    def abort(self) -> None:
        with self._lock:
            if self._state != "open":
                return
            self._state = "aborted"
            with contextlib.suppress(OSError):
                self._file.close()
            with contextlib.suppress(FileNotFoundError):
                self.temp_path.unlink()
            self._tier._release(self.size)


async def _in_thread(fn: Callable[[], T], on_orphan: Callable[[T], None] | None = None) -> T:
    """Runs `fn` in a worker thread. Cancelling the caller does not interrupt the thread; what it returns after
    the caller has gone is handed to `on_orphan` (so a resource it created is released, not leaked)."""
    task = asyncio.ensure_future(asyncio.to_thread(fn))

    def _done(done: asyncio.Future[T]) -> None:
        if done.cancelled() or done.exception() is not None:
            return
        if on_orphan is not None:
            on_orphan(done.result())

    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_done)
        raise


class DiskTier:
    """Model files on local disk under a byte budget; thread- and asyncio-safe."""

    tier = "disk"

    def __init__(self, root: Path, capacity_bytes: int) -> None:
        if capacity_bytes <= 0:
            raise ValueError(f"capacity_bytes must be positive, got {capacity_bytes}")
        self.root = Path(root)
        self.capacity_bytes = capacity_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, DiskEntry] = OrderedDict()  # least recently used first
        self._names: dict[str, str] = {}
        self._pins: dict[str, int] = {}
        self._inflight: dict[str, concurrent.futures.Future[Path | None]] = {}
        self._used = 0
        self._reserved = 0
        self._recover()

    # -- queries -------------------------------------------------------------------------------------

    @property
    def bytes_used(self) -> int:
        with self._lock:
            return self._used

    @property
    def bytes_reserved(self) -> int:
        """Bytes set aside for downloads in progress."""
        with self._lock:
            return self._reserved

    def file_path(self, sha256: str) -> Path:
        """Where the file with this digest lives (whether or not it is there)."""
        digest = _normalize_sha256(sha256)
        return self.root / digest[:2] / digest

    def entries(self) -> list[DiskEntry]:
        """The cached files, least recently used first."""
        with self._lock:
            return list(self._entries.values())

    def sha256_for(self, name: str) -> str | None:
        with self._lock:
            return self._names.get(name)

    def is_pinned(self, sha256: str) -> bool:
        with self._lock:
            return self._pins.get(_normalize_sha256(sha256), 0) > 0

    def path_for(self, sha256: str, *, name: str | None = None) -> Path | None:
        """The file's path when it is cached (a hit makes it most recently used), else None."""
        digest = _normalize_sha256(sha256)
        with self._lock:
            return self._hit_locked(digest, name)

    # -- pins and removal ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def pin(self, sha256: str) -> Iterator[None]:
        """Protects a file from eviction while a load reads it (it may be pinned before it is admitted)."""
        digest = _normalize_sha256(sha256)
        with self._lock:
            self._pins[digest] = self._pins.get(digest, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                count = self._pins[digest] - 1
                if count:
                    self._pins[digest] = count
                else:
                    del self._pins[digest]

    def discard(self, sha256: str) -> bool:
        """Removes a file (e.g. one a loader found corrupt); refused with MODEL_IN_USE while it is pinned."""
        digest = _normalize_sha256(sha256)
        with self._lock:
            if digest not in self._entries:
                return False
            if self._pins.get(digest):
                raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, Reason.MODEL_IN_USE,
                                   f"{digest} is pinned by a load in progress", {"sha256": digest})
            self._evict_locked(digest)
            self._persist_locked()
            return True

    # -- admission -----------------------------------------------------------------------------------

    def admit(self, sha256: str, source: SyncSource, size: int, *, name: str | None = None) -> Path:
        """Stores `size` bytes from `source` as the file `sha256` (verified, atomic) and returns its path.

        Already cached: returns the path without reading `source`. Being written by another caller: waits for
        it. A wrong size or digest raises MODEL_CHECKSUM_MISMATCH and leaves nothing behind.
        """
        digest = self._check(sha256, size)
        while True:
            path, future, leader = self._claim(digest, name)
            if path is not None:
                return path
            assert future is not None
            if not leader:
                future.result()  # the leader's error propagates; success or an interrupted leader: look again
                continue
            try:
                writer = self._begin(digest, size, name)
                try:
                    for chunk in _sync_chunks(source):
                        writer.write(chunk)
                    path = writer.commit()
                except BaseException:
                    writer.abort()
                    raise
            except BaseException as exc:
                self._settle(digest, future, None, exc)
                raise
            self._settle(digest, future, path, None)
            return path

    async def admit_async(self, sha256: str, source: Source, size: int, *, name: str | None = None) -> Path:
        """`admit` for asyncio: an async iterable of chunks is written from worker threads chunk by chunk (the
        loop never blocks on disk); other sources go through `admit` in a thread. Does not close `source`."""
        if not isinstance(source, AsyncIterable):
            return await asyncio.to_thread(self.admit, sha256, source, size, name=name)
        digest = self._check(sha256, size)
        while True:
            claimed: _Claim = await _in_thread(functools.partial(self._claim, digest, name),
                                               on_orphan=functools.partial(self._abandon, digest))
            path, future, leader = claimed
            if path is not None:
                return path
            assert future is not None
            if not leader:
                # The future is already running, so a cancelled waiter cannot cancel it for the others.
                await asyncio.wrap_future(future)
                continue
            try:
                path = await self._write_async(digest, source, size, name)
            except BaseException as exc:
                self._settle(digest, future, None, exc)
                raise
            self._settle(digest, future, path, None)
            return path

    async def _write_async(self, digest: str, source: AsyncIterable[bytes], size: int, name: str | None) -> Path:
        writer = await _in_thread(lambda: self._begin(digest, size, name), on_orphan=lambda w: w.abort())
        try:
            async for chunk in source:
                await _in_thread(functools.partial(writer.write, chunk))
            return await _in_thread(writer.commit)
        except BaseException:
            writer.abort()  # waits at most for the one chunk a worker thread may still be writing
            raise

    # -- internals -----------------------------------------------------------------------------------

    def _check(self, sha256: str, size: int) -> str:
        digest = _normalize_sha256(sha256)
        if size < 0:
            raise invalid_argument(f"negative size {size} for {digest}", sha256=digest)
        return digest

    def _claim(self, digest: str, name: str | None) -> _Claim:
        """(path, None, False) on a hit, else the in-flight future and whether this caller must download."""
        with self._lock:
            path = self._hit_locked(digest, name)
            if path is not None:
                return path, None, False
            future = self._inflight.get(digest)
            if future is not None:
                return None, future, False
            future = concurrent.futures.Future()
            future.set_running_or_notify_cancel()
            self._inflight[digest] = future
            return None, future, True

    def _abandon(self, digest: str, claimed: _Claim) -> None:
        """A claim whose caller was cancelled before it saw the result: hand the download over to a waiter."""
        _, future, leader = claimed
        if leader and future is not None:
            self._settle(digest, future, None, asyncio.CancelledError())

    def _settle(self, digest: str, future: concurrent.futures.Future[Path | None], path: Path | None,
                error: BaseException | None) -> None:
        with self._lock:
            if self._inflight.get(digest) is future:
                del self._inflight[digest]
        if error is None:
            future.set_result(path)
        elif isinstance(error, Exception):
            future.set_exception(error)
        else:  # cancelled or interrupted: not the source's fault, a waiter takes over
            future.set_result(None)

    def _begin(self, digest: str, size: int, name: str | None) -> _TempWriter:
        with self._lock:
            if size > self.capacity_bytes:
                raise resource_exhausted(f"{digest} has {size} bytes, more than the disk cache's "
                                         f"{self.capacity_bytes}", Reason.MODEL_TOO_LARGE, retry_after_seconds=None,
                                         sha256=digest, size=str(size), capacity_bytes=str(self.capacity_bytes))
            self._make_room_locked(size)
            self._reserved += size
        try:
            return _TempWriter(self, digest, size, name)
        except BaseException:
            self._release(size)
            raise

    def _release(self, size: int) -> None:
        with self._lock:
            self._reserved -= size

    def _committed(self, digest: str, size: int, name: str | None) -> None:
        with self._lock:
            self._reserved -= size
            previous = self._entries.pop(digest, None)
            if previous is not None:
                self._used -= previous.size
            names = set(previous.names) if previous else set()
            self._entries[digest] = DiskEntry(digest, size, time.time(), tuple(sorted(names)))
            self._used += size
            if name is not None:
                self._name_locked(digest, name)
            self._persist_locked()

    def _hit_locked(self, digest: str, name: str | None) -> Path | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        path = self.root / digest[:2] / digest
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            actual = -1
        if actual != entry.size:  # removed or truncated behind our back
            log.warning("cached model %s is gone or has the wrong size (%d, expected %d)", digest, actual,
                        entry.size)
            self._evict_locked(digest)
            self._persist_locked()
            return None
        self._entries[digest] = DiskEntry(digest, entry.size, time.time(), entry.names)
        self._entries.move_to_end(digest)
        if name is not None:
            self._name_locked(digest, name)
        self._persist_locked()
        return path

    def _name_locked(self, digest: str, name: str) -> None:
        old = self._names.get(name)
        if old == digest:
            return
        if old is not None and old in self._entries:
            stale = self._entries[old]
            self._entries[old] = DiskEntry(old, stale.size, stale.last_used,
                                           tuple(n for n in stale.names if n != name))
        self._names[name] = digest
        entry = self._entries[digest]
        self._entries[digest] = DiskEntry(digest, entry.size, entry.last_used, tuple(sorted({*entry.names, name})))

    def _make_room_locked(self, needed: int) -> None:
        free = self.capacity_bytes - self._used - self._reserved
        if free >= needed:
            return
        victims: list[str] = []
        for digest, entry in self._entries.items():  # least recently used first
            if self._pins.get(digest):
                continue
            victims.append(digest)
            free += entry.size
            if free >= needed:
                break
        if free < needed:
            raise resource_exhausted(
                f"the disk cache cannot free {needed} bytes: the rest is pinned by loads or reserved by downloads "
                "in progress", Reason.MODEL_IN_USE, retry_after_seconds=5.0, needed_bytes=str(needed),
                capacity_bytes=str(self.capacity_bytes))
        for digest in victims:
            self._evict_locked(digest)
        self._persist_locked()

    def _evict_locked(self, digest: str) -> None:
        entry = self._entries.pop(digest)
        self._used -= entry.size
        for name in entry.names:
            if self._names.get(name) == digest:
                del self._names[name]
        with contextlib.suppress(FileNotFoundError):
            (self.root / digest[:2] / digest).unlink()
        log.info("evicted model %s (%d bytes) from the disk cache", digest, entry.size)

    def _persist_locked(self) -> None:
        """Rewrites the index atomically. A failure (e.g. a full disk) is logged: the index only carries names
        and LRU order; the verified files themselves are adopted again on the next start."""
        payload = {
            "version": INDEX_VERSION,
            "files": {e.sha256: {"size": e.size, "last_used": e.last_used} for e in self._entries.values()},
            "names": dict(sorted(self._names.items())),
        }
        temp = self.root / f"{TEMP_PREFIX}{INDEX_NAME}-{secrets.token_hex(4)}"
        try:
            with open(temp, "w", encoding="utf-8") as file:
                json.dump(payload, file, separators=(",", ":"))
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, self.root / INDEX_NAME)
            _fsync_dir(self.root)
        except OSError as exc:
            log.warning("could not write the disk cache index %s: %s", self.root / INDEX_NAME, exc)
            with contextlib.suppress(OSError):
                temp.unlink()

    # -- start-up ------------------------------------------------------------------------------------

    def _recover(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        shards = [p for p in self.root.iterdir() if p.is_dir() and _SHARD.fullmatch(p.name)]
        for directory in (self.root, *shards):
            for leftover in directory.glob(f"{TEMP_PREFIX}*"):
                log.info("deleting leftover temp file %s", leftover)
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()

        files, names = self._read_index()
        entries: list[DiskEntry] = []
        for digest, (size, last_used) in files.items():
            path = self.root / digest[:2] / digest
            try:
                actual = path.stat().st_size
            except FileNotFoundError:
                log.warning("index entry %s has no file; dropped", digest)
                continue
            if actual != size:
                log.warning("cached model %s has %d bytes, the index says %d; deleted", digest, actual, size)
                path.unlink()
                continue
            entries.append(DiskEntry(digest, size, last_used))
        known = {e.sha256 for e in entries}
        for shard in shards:  # files renamed into place whose index write never happened
            for path in shard.iterdir():
                if path.is_file() and _SHA256.fullmatch(path.name) and path.name[:2] == shard.name \
                        and path.name not in known:
                    stat = path.stat()
                    log.info("adopting cached model %s missing from the index", path.name)
                    entries.append(DiskEntry(path.name, stat.st_size, stat.st_mtime))

        with self._lock:
            for entry in sorted(entries, key=lambda e: e.last_used):
                self._entries[entry.sha256] = entry
                self._used += entry.size
            for name, digest in names.items():
                if digest in self._entries:
                    self._name_locked(digest, name)
            self._make_room_locked(0)  # the budget may have shrunk since the last run
            self._persist_locked()

    def _read_index(self) -> tuple[dict[str, tuple[int, float]], dict[str, str]]:
        path = self.root / INDEX_NAME
        try:
            raw: Any = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}, {}
        except (OSError, ValueError) as exc:
            log.warning("disk cache index %s is unreadable (%s); rebuilding it from the files", path, exc)
            return {}, {}
        files: dict[str, tuple[int, float]] = {}
        names: dict[str, str] = {}
        if not isinstance(raw, dict) or raw.get("version") != INDEX_VERSION:
            log.warning("disk cache index %s has an unknown format; rebuilding it from the files", path)
            return files, names
        for digest, info in (raw.get("files") or {}).items():
            try:
                if _SHA256.fullmatch(digest):
                    files[digest] = (int(info["size"]), float(info["last_used"]))
            except (KeyError, TypeError, ValueError):
                continue
        for name, digest in (raw.get("names") or {}).items():
            if isinstance(name, str) and isinstance(digest, str):
                names[name] = digest
        return files, names
