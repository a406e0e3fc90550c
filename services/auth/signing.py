"""The token-signing key ring: the newest key signs, older ones verify until the tokens they signed have expired.

Keys are Ed25519; the private half is stored encrypted with the deployment secret. The first token creates the
first key; a key older than `rotation_seconds` is replaced on the next signature (or by the `maintain` loop), and
the keys it replaces are scheduled to retire once every token they could have signed has expired
(`max_token_ttl_seconds` plus the verifiers' leeway). Two replicas rotating at once create two keys: both verify,
the newer signs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from service_runtime.auth.tokens import (
    LEEWAY_SECONDS,
    SigningKeyPair,
    decrypt_private_key,
    encrypt_private_key,
    new_signing_key,
)
from services.auth.repository import AuthRepository

log = logging.getLogger(__name__)
_RECHECK_SECONDS = 30.0  # how long this replica trusts its idea of the newest key


class SigningKeyRing:
    def __init__(self, repository: AuthRepository, password: bytes, *, rotation_seconds: float,
                 max_token_ttl_seconds: float, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._repository = repository
        self._password = password
        self._rotation = timedelta(seconds=rotation_seconds)
        self._max_ttl = timedelta(seconds=max_token_ttl_seconds + LEEWAY_SECONDS)
        self._clock = clock
        self._current: SigningKeyPair | None = None
        self._checked = -1e18
        self._lock = asyncio.Lock()

    async def current(self) -> SigningKeyPair:
        """The key to sign with now (rotating first when the newest is due)."""
        async with self._lock:
            now = self._clock()
            pair = self._current
            if pair is None or time.monotonic() - self._checked >= _RECHECK_SECONDS:
                pair = await self._load()
                self._checked = time.monotonic()
            if pair is None or now - pair.public.create_time >= self._rotation:
                pair = await self._rotate(now)
            self._current = pair
            return pair

    async def rotate(self) -> SigningKeyPair:
        """A new signing key now; the others retire once the tokens they signed have expired."""
        async with self._lock:
            self._current = await self._rotate(self._clock())
            self._checked = time.monotonic()
            return self._current

    async def _load(self) -> SigningKeyPair | None:
        found = await self._repository.newest_signing_key()
        if found is None:
            return None
        public, encrypted = found
        if self._current is not None and self._current.public.kid == public.kid:
            return self._current
        return SigningKeyPair(public, await asyncio.to_thread(decrypt_private_key, encrypted, self._password))

    async def _rotate(self, now: datetime) -> SigningKeyPair:
        pair = new_signing_key(now)
        encrypted = await asyncio.to_thread(encrypt_private_key, pair.private_key, self._password)
        await self._repository.add_signing_key(pair.public, encrypted)
        retired = await self._repository.retire_signing_keys(pair.public.kid, now + self._max_ttl)
        log.info("token signing key %s in use; %d older key(s) retire at %s", pair.public.kid, retired,
                 (now + self._max_ttl).isoformat())
        return pair

    async def maintain(self, interval_seconds: float = 3600.0) -> None:
        """Keeps a fresh signing key, forever (a background loop of the auth component)."""
        while True:
            await self.current()
            await asyncio.sleep(interval_seconds)
