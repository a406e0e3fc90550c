"""Model names → local files in the worker process: the models directory, then the disk cache, then the object
store (fetched into the disk cache, sha256-verified, atomically).

`ModelResolver` is the engine's model source (`runtime.set_model_source`): `list_models` offers the names of the
models bucket and of the disk cache next to the models directory's, and `model_path` falls back to it for a name
the models directory lacks. It is synchronous, as the engine is; the disk and object-store tiers are asyncio code
(`ModelFileCache`), run on an event loop in a background thread. A download in progress is cancelled when the
execution is interrupted.

A cached file is handed to the loaders through a symlink named like the model (`<cache>/names/<sha256>/<file>`):
the cache itself stores files by digest only.

Disk tier statistics count a model file found in the models directory as a hit too (it is on local disk): the
disk tier is the models directory plus the content-addressed cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import grpc

from gpu_executor.engine import runtime
from gpu_executor.model_tiers.bucket import ModelBucket, RemoteModel, model_key, split_key
from gpu_executor.model_tiers.cache import ModelFileCache
from gpu_executor.model_tiers.disk import DiskTier
from gpu_executor.model_tiers.metrics import ModelTierMetrics
from gpu_executor.model_tiers.object_store import ObjectStoreTier
from gpu_executor.model_tiers.state import CachedEntry, TierStats
from service_runtime.errors import Reason, ServiceError
from service_runtime.object_store import ObjectStore

log = logging.getLogger(__name__)
NAMES_DIR = "names"
FETCH_CHUNK = 4 << 20  # object-store reads: fewer, larger chunks than the default for multi-GB files


@dataclass(frozen=True)
class StoreConfig:
    """How the worker reaches the models bucket (picklable: it travels to the worker process)."""

    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    secure: bool = False
    region: str = "us-east-1"


@dataclass(frozen=True)
class ResolverConfig:
    models_dir: Path | None
    disk_cache_dir: Path
    disk_cache_bytes: int
    store: StoreConfig | None = None
    listing_ttl_seconds: float = 10.0  # how stale the bucket listing (model names offered to graphs) may be


@dataclass(frozen=True)
class ModelRef:
    folder: str
    name: str
    sha256: str = ""


class _Recorder:
    """Stands in for the Prometheus metrics of `ModelFileCache` in the worker: load times are collected and sent
    to the server (which exports them); gauges are the server's business."""

    def __init__(self) -> None:
        self.loads: list[tuple[str, float]] = []
        self._lock = threading.Lock()

    def labels(self, tier: str) -> _Bound:
        return _Bound(self, tier)

    def add(self, tier: str, seconds: float) -> None:
        with self._lock:
            self.loads.append((tier, seconds))
            del self.loads[:-1000]

    def take(self) -> list[tuple[str, float]]:
        with self._lock:
            loads, self.loads = self.loads, []
            return loads


@dataclass
class _Bound:
    recorder: _Recorder
    tier: str

    def observe(self, seconds: float) -> None:
        self.recorder.add(self.tier, seconds)

    def set(self, value: float) -> None:
        pass


@dataclass
class _LocalCounters:
    hits: int = 0
    bytes_loaded: int = 0
    load_seconds: float = 0.0
    last_used: dict[tuple[str, str], float] = field(default_factory=dict)


class ModelResolver:
    def __init__(self, config: ResolverConfig, *, interrupted: Callable[[], bool] = lambda: False) -> None:
        self.config = config
        self.interrupted = interrupted
        self.disk = DiskTier(config.disk_cache_dir, config.disk_cache_bytes)
        self._recorder = _Recorder()
        metrics = cast(ModelTierMetrics, cast(Any, _Metrics(self._recorder)))
        self.bucket: ModelBucket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cache: ModelFileCache | None = None
        if config.store is not None:
            store = config.store
            self.bucket = ModelBucket.connect(store.endpoint, store.access_key, store.secret_key, store.bucket,
                                              secure=store.secure, region=store.region)
            objects = ObjectStore(store.endpoint, store.access_key, store.secret_key, secure=store.secure,
                                  region=store.region)
            self._cache = ModelFileCache(self.disk, ObjectStoreTier(objects, store.bucket, chunk_size=FETCH_CHUNK),
                                         metrics=metrics)
            self._loop = asyncio.new_event_loop()
            threading.Thread(target=self._loop.run_forever, name="model-fetch", daemon=True).start()
        self._listing: dict[str, RemoteModel] = {}
        self._listed_at = -1e9
        self._listing_lock = threading.Lock()
        self._digests: dict[tuple[str, str], str] = {}  # (key, etag) → sha256 from the object's metadata
        self._refs: dict[str, dict[tuple[str, str], ModelRef]] = {}  # resolved local path → the models it is
        self._local = _LocalCounters()
        self._lock = threading.Lock()
        self._sweep_names()

    # -- the engine's model source -------------------------------------------------------------------

    def names(self, folder: str) -> list[str]:
        names = {m.name for m in self.remote().values() if m.folder == folder}
        for entry in self.disk.entries():
            for key in entry.names:
                where = split_key(key)
                if where is not None and where[0] == folder:
                    names.add(where[1])
        return sorted(names)

    def used_local(self, folder: str, name: str, path: Path) -> None:
        with self._lock:
            self._local.last_used[(folder, name)] = time.time()
            self._refs.setdefault(str(path.resolve()), {})[(folder, name)] = ModelRef(folder, name)
        self._count_hit(path, 0.0)

    def _count_hit(self, path: Path, seconds: float) -> None:
        """A disk hit the ModelFileCache did not see (the models directory; the cache without an object store)."""
        started = time.perf_counter()
        try:
            size = path.stat().st_size
        except OSError:
            size = 0
        seconds += time.perf_counter() - started
        with self._lock:
            self._local.hits += 1
            self._local.bytes_loaded += size
            self._local.load_seconds += seconds
        self._recorder.add(self.disk.tier, seconds)

    def path(self, folder: str, name: str) -> Path | None:
        """The disk-cache file of a model the models directory lacks, downloaded first when needed; None when
        neither the cache nor the bucket has it."""
        key = model_key(folder, name)
        if key is None:
            return None
        remote = self.remote().get(key)
        cached = self.disk.sha256_for(key)
        if remote is None and cached is None:
            return None
        if self._cache is None:  # no object store configured: the cache is all there is
            assert cached is not None
            started = time.perf_counter()
            found = self.disk.path_for(cached, name=key)
            if found is None:
                return None
            sha256, path = cached, found
            self._count_hit(found, time.perf_counter() - started)
        else:
            sha256, size = self._expected(key, remote, cached)
            path = self._await(self._cache.local_path(key, sha256, size, key))
        self._remember(path, folder, name, sha256)
        return self._named(path, sha256, name)

    # -- reports -------------------------------------------------------------------------------------

    def refs_for(self, path: str) -> list[ModelRef]:
        """The models (names) a resolved local file was loaded as (one file may have several names)."""
        with self._lock:
            return list(self._refs.get(path, {}).values())

    def snapshot(self) -> tuple[list[CachedEntry], list[TierStats]]:
        """The disk tier's models (the cache's and the models directory's) and the disk and object-store stats."""
        entries: list[CachedEntry] = []
        for entry in self.disk.entries():
            for key in entry.names:
                where = split_key(key)
                if where is not None:
                    entries.append(CachedEntry(where[1], where[0], "disk", entry.size, entry.last_used,
                                               entry.sha256))
        local_bytes = 0
        with self._lock:
            last_used = dict(self._local.last_used)
            local = (self._local.hits, self._local.bytes_loaded, self._local.load_seconds)
        root = self.config.models_dir
        for folder in runtime.MODEL_FOLDERS if root is not None else ():
            assert root is not None
            directory = root / folder
            if not directory.is_dir():
                continue
            for path in sorted(directory.rglob("*")):
                if path.is_file() and path.suffix.lower() in runtime.MODEL_EXTENSIONS:
                    name = str(path.relative_to(directory))
                    size = path.stat().st_size
                    local_bytes += size
                    entries.append(CachedEntry(name, folder, "disk", size, last_used.get((folder, name), 0.0)))
        if self._cache is not None:
            disk, remote = self._cache.stats()
        else:
            disk = TierStats("disk", 0, 0, 0, 0.0, self.disk.bytes_used, self.disk.capacity_bytes)
            remote = None
        disk = TierStats("disk", disk.hits + local[0], disk.misses, disk.bytes_loaded + local[1],
                         disk.load_seconds + local[2], disk.bytes_used + local_bytes,
                         disk.bytes_capacity + local_bytes, disk.errors)
        return entries, [disk] if remote is None else [disk, remote]

    def take_loads(self) -> list[tuple[str, float]]:
        return self._recorder.take()

    def close(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)

    # -- internals -----------------------------------------------------------------------------------

    def remote(self) -> dict[str, RemoteModel]:
        """The bucket's models, listed again when the listing is older than the TTL (a failed listing keeps the
        previous one and is retried after the TTL)."""
        if self.bucket is None:
            return {}
        with self._listing_lock:
            if time.monotonic() - self._listed_at >= self.config.listing_ttl_seconds:
                self._listed_at = time.monotonic()
                try:
                    self._listing = self.bucket.list()
                except ServiceError as exc:
                    log.warning("cannot list the models bucket %s: %s", self.bucket.bucket, exc.message)
            return self._listing

    def refresh(self) -> None:
        """Forgets the listing (the next lookup lists the bucket again)."""
        with self._listing_lock:
            self._listed_at = -1e9

    def _expected(self, key: str, remote: RemoteModel | None, cached: str | None) -> tuple[str, int]:
        """(sha256, size) the local file must have: the bucket's current version, or the cached one when the
        bucket no longer lists the model or cannot say."""
        if remote is not None:
            digest = self._digests.get((key, remote.etag))
            if digest is None:
                try:
                    digest = self.bucket.sha256(key) if self.bucket is not None else None
                except ServiceError as exc:
                    if cached is None or exc.reason != Reason.BACKEND_UNAVAILABLE:
                        raise
                    log.warning("object store unavailable (%s); using the cached %s", exc.message, key)
                if digest is not None:
                    self._digests[(key, remote.etag)] = digest
                    return digest, remote.size
        assert cached is not None
        entry = next(e for e in self.disk.entries() if e.sha256 == cached)
        return cached, entry.size

    def _await(self, coroutine: Any) -> Path:
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        while True:
            try:
                result: Path = future.result(timeout=0.2)
                return result
            except TimeoutError:
                if self.interrupted():
                    future.cancel()
                    raise runtime.ExecutionInterrupted("interrupted while downloading a model") from None

    def _named(self, path: Path, sha256: str, name: str) -> Path:
        """The cached file under its model name (`<root>/names/<sha256>/<file name>`, a symlink): the loaders go by
        the suffix (only .safetensors files are opened) and their errors should name the model, not its digest."""
        link = self.disk.root / NAMES_DIR / sha256 / Path(name).name
        try:
            if link.is_symlink() and link.resolve() == path.resolve():
                return link
            link.parent.mkdir(parents=True, exist_ok=True)
            temp = link.with_name(f".tmp-{secrets.token_hex(4)}")
            temp.symlink_to(path.resolve())
            os.replace(temp, link)
        except OSError as exc:
            raise ServiceError(grpc.StatusCode.INTERNAL, Reason.INTERNAL_ERROR,
                               f"cannot link the cached model {name}: {exc}") from exc
        return link

    def _sweep_names(self) -> None:
        """Drops name links whose file the disk tier evicted (or never committed)."""
        names = self.disk.root / NAMES_DIR
        for link in names.glob("*/*") if names.is_dir() else ():
            if link.is_symlink() and not link.exists():
                with contextlib.suppress(OSError):
                    link.unlink()
        for directory in names.glob("*") if names.is_dir() else ():
            with contextlib.suppress(OSError):
                directory.rmdir()  # only when empty

    def _remember(self, path: Path, folder: str, name: str, sha256: str) -> None:
        with self._lock:
            self._refs.setdefault(str(path.resolve()), {})[(folder, name)] = ModelRef(folder, name, sha256)


@dataclass
class _Metrics:
    recorder: _Recorder

    @property
    def load_time(self) -> _Recorder:
        return self.recorder

    @property
    def hit_rate(self) -> _Recorder:
        return _NULL

    @property
    def cache_bytes(self) -> _Recorder:
        return _NULL


_NULL = _Recorder()
