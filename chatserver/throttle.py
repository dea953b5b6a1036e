"""Rate limits on the `limits` library's fixed windows: in memory for one process, in Redis when the
Redis hub is configured, so that they hold across processes and hosts (`limits`' own Redis storage).

- messages per user (SPEC 5.5 `limits.messages_per_second`): `new_msg`, `new_grp_msg` and
  `room_msg` from all of a user's sockets together; over the limit, the error frame.
- typing events per user (`limits.typing_per_second`), on top of SPEC 5.1's one per second per
  socket; over the limit, dropped silently.
- WebSocket handshakes per client address (`limits.handshakes_per_minute`): 429.
- failed logins per client address (`limits.login_failures` per `limits.login_window_seconds`):
  once reached, every login from that address answers 429 until the window has passed.

A rate of R per second is enforced as round(2R) per two-second window, which lets a burst of twice
the rate through, as a client reconnecting with a backlog needs.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Final

import redis.asyncio as redis
from limits import RateLimitItemPerMinute, RateLimitItemPerSecond, storage, strategies
from limits.aio import storage as aio_storage
from limits.aio import strategies as aio_strategies
from limits.errors import StorageError

from .config import Limits

log = logging.getLogger(__name__)

# Seconds: a Redis command of the limiter that takes longer fails (and the event is counted in
# memory); and how often an outage is logged at most.
REDIS_TIMEOUT: Final = 2.0
OUTAGE_LOG_SECONDS: Final = 60.0


def _per_second(rate: float) -> RateLimitItemPerSecond:
    return RateLimitItemPerSecond(max(1, round(2 * rate)), 2)


class Throttle:
    """The server's rate limits; `allow_*` methods count one event and say whether it may pass.

    `redis_url` (the `[hub] url`): count in Redis under keys starting with `prefix`, shared by
    every process; empty: count in this process's memory. While Redis cannot be reached, events
    are counted in memory instead (each process enforcing the limits on its own, as a single
    process does) and a warning is logged at most every OUTAGE_LOG_SECONDS: a Redis outage
    neither lifts the limits nor refuses every message.
    """

    def __init__(self, limits: Limits, redis_url: str = "", prefix: str = "chat") -> None:
        # Fixed windows: O(1) per event (a moving window keeps every event of the window). The
        # in-memory limiter is synchronous: it costs no coroutine per message.
        self._local = strategies.FixedWindowRateLimiter(storage.MemoryStorage())
        self._shared: aio_strategies.FixedWindowRateLimiter | None = None
        self._pool: redis.ConnectionPool | None = None
        self._outage_logged = -math.inf  # time.monotonic() of the last outage warning
        if redis_url:
            # Our own pool, so that `close` can release its connections; a short timeout, so
            # that an unreachable Redis costs a message little before it falls back to memory.
            self._pool = redis.ConnectionPool.from_url(
                redis_url, socket_connect_timeout=REDIS_TIMEOUT, socket_timeout=REDIS_TIMEOUT)
            # limits types RedisStorage's **options as scalars, but passes them to redis-py,
            # whose connection_pool is what we mean.
            options: dict[str, Any] = {"connection_pool": self._pool}
            self._shared = aio_strategies.FixedWindowRateLimiter(aio_storage.RedisStorage(
                "async+" + redis_url, implementation="redispy", key_prefix=f"{prefix}:limits",
                wrap_exceptions=True, **options))
        self._message = _per_second(limits.messages_per_second)
        self._typing = _per_second(limits.typing_per_second)
        self._handshake = RateLimitItemPerMinute(limits.handshakes_per_minute)
        self._login = RateLimitItemPerSecond(limits.login_failures, limits.login_window_seconds)

    async def close(self) -> None:
        """Release the Redis connections (nothing to do in memory)."""
        if self._pool is not None:
            await self._pool.aclose()

    def _outage(self, error: Exception) -> None:
        now = time.monotonic()
        if now - self._outage_logged >= OUTAGE_LOG_SECONDS:
            self._outage_logged = now
            log.warning("rate limits counted in this process only: Redis failed (%s)", error)

    async def _hit(self, item: RateLimitItemPerSecond | RateLimitItemPerMinute, *keys: str) -> bool:
        if self._shared is not None:
            try:
                return await self._shared.hit(item, *keys)
            except StorageError as e:
                self._outage(e)
        return self._local.hit(item, *keys)

    async def allow_message(self, phone: str) -> bool:
        """Count a message from `phone`; False when over `limits.messages_per_second`."""
        return await self._hit(self._message, "message", phone)

    async def allow_typing(self, phone: str) -> bool:
        """Count a typing event from `phone`; False when over `limits.typing_per_second`."""
        return await self._hit(self._typing, "typing", phone)

    async def allow_handshake(self, address: str) -> bool:
        """Count a WebSocket handshake from `address`; False when over the per-minute limit."""
        return await self._hit(self._handshake, "handshake", address)

    async def login_blocked(self, address: str) -> bool:
        """True while `address` has used up its failed logins for the window."""
        if self._shared is not None:
            try:
                return not await self._shared.test(self._login, "login", address)
            except StorageError as e:
                self._outage(e)
        return not self._local.test(self._login, "login", address)

    async def login_failed(self, address: str) -> None:
        """Count a failed login from `address`."""
        await self._hit(self._login, "login", address)
