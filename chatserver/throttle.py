"""Rate limits on the `limits` library's fixed windows: in memory for one process, in Redis when the
Redis hub is configured, so that they hold across processes and hosts (`limits`' own Redis storage).

- messages per user (SPEC 5.5 `limits.messages_per_second`): `new_msg`, `new_grp_msg` and
  `room_msg` from all of a user's sockets together; over the limit, the error frame.
- typing events per user (`limits.typing_per_second`), on top of SPEC 5.1's one per second per
  socket; over the limit, dropped silently.
- acknowledgements per user (SPEC 10 `limits.acks_per_second`): `msg_received`, `msg_read`,
  `grp_msg_received`, `grp_msg_read` from all of a user's sockets together; over it, the error frame.
- WebSocket handshakes per client address (`limits.handshakes_per_minute`): 429.
- lookups of other users' phones per user (`limits.lookups_per_minute`, issue 12 finding 6):
  every request that answers whether a phone has an account counts each phone it names; 429.
- groups and rooms created per user per day (SPEC 10 `limits.groups_per_day`,
  `limits.rooms_per_day`): counted before the creation (`begin_daily`), given back when it fails.
- password attempts (SPEC 10: logins, registrations, private-room passwords), counted before the
  password is checked, per client address (`limits.login_failures`), per account (a phone, or a
  room: `limits.login_failures_per_phone`) and per pair (`limits.login_failures_per_pair`) within
  `limits.login_window_seconds`; past any of them, 429. A successful attempt gives its slot back.
- Web Push per device and conversation (SPEC 9 `push.min_interval_seconds`): at most one push in
  a window of that many seconds (rounded up to whole seconds; 0: no limit); past it, not sent.
- bcrypt work (`PasswordPool`): at most `limits.password_workers` at once and
  `limits.password_queue` waiting; beyond, `PoolFull` (503).

A rate of R per second is enforced as round(2R) per two-second window, which lets a burst of twice
the rate through, as a client reconnecting with a backlog needs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import redis.asyncio as redis
from limits import (
    RateLimitItem,
    RateLimitItemPerDay,
    RateLimitItemPerMinute,
    RateLimitItemPerSecond,
    storage,
)
from limits.aio import storage as aio_storage
from limits.aio import strategies as aio_strategies
from limits.errors import StorageError
from redis.commands.core import AsyncScript

from .config import Limits
from .stores.base import Store

log = logging.getLogger(__name__)
T = TypeVar("T")

# Seconds: a Redis command of the limiter that takes longer fails (and the event is counted in
# memory); and how often an outage is logged at most.
REDIS_TIMEOUT: Final = 2.0
OUTAGE_LOG_SECONDS: Final = 60.0
# The reason of the 429 past `limits.lookups_per_minute` (api, pages and ws answer it alike).
LOOKUPS_REFUSED: Final = "too many phone numbers looked up; wait a minute"


# A refund in Redis: one less, never below 0, and nothing when the counter has expired (its window
# ended): DECRBY on a missing key would make it -1 with no expiry, one extra attempt in a later
# window per refund (and a key that never expires). One script: atomic, as the INCRBY it undoes.
# DECRBY keeps the key's TTL.
_REFUND_LUA: Final = """
local current = tonumber(redis.call("get", KEYS[1]) or "0")
if current and current > 0 then
    return redis.call("decrby", KEYS[1], 1)
end
return 0
"""


class LocalWindows:
    """Fixed-window counters in this process's memory for the per-frame limits (messages, typing,
    acknowledgements) and the other `allow_*` checks when no Redis is configured: the `limits`
    semantics (a window starts at a key's first event and lasts the item's expiry; every event
    is counted, refused ones too; the event passes while the count is at most the amount).

    Why not the `limits` library's MemoryStorage here, which the rest of this module uses: it costs
    about 30 microseconds per event inside the server (a lock, key formatting, an expiry timer), which
    was 13% of the CPU of a whole message cycle once acknowledgements were counted too (issue 12,
    `bench/bench.py --cases full`). This costs one dict lookup. Expired windows are swept once the
    table holds more than `sweep_at` keys, so that it stays bounded by the active keys."""

    def __init__(self, sweep_at: int = 10_000) -> None:
        self._windows: dict[tuple[Any, ...], list[float]] = {}  # key -> [window end, count]
        self._sweep_at = sweep_at

    def hit(self, item: RateLimitItem, *keys: str, cost: int = 1) -> bool:
        """Count `cost` events of `item` for `keys`; True while the window's count is at most
        `item.amount`."""
        now = time.monotonic()
        key = (item.amount, item.get_expiry(), *keys)
        window = self._windows.get(key)
        if window is None or now >= window[0]:
            if len(self._windows) >= self._sweep_at:
                self._windows = {k: w for k, w in self._windows.items() if w[0] > now}
            window = self._windows[key] = [now + item.get_expiry(), 0]
        window[1] += cost
        return window[1] <= item.amount


def _per_second(rate: float) -> RateLimitItemPerSecond:
    return RateLimitItemPerSecond(max(1, round(2 * rate)), 2)


class Throttle:
    """The server's rate limits; `allow_*` methods count one event and say whether it may pass;
    `begin_attempt` / `refund` count password attempts (README "Choices where the spec is silent").

    `redis_url` (the `[hub] url`): count in Redis under keys starting with `prefix`, shared by
    every process; empty: count in this process's memory. While Redis cannot be reached, events
    are counted in memory instead (each process enforcing the limits on its own, as a single
    process does) and a warning is logged at most every OUTAGE_LOG_SECONDS: a Redis outage
    neither lifts the limits nor refuses every message.
    """

    def __init__(self, limits: Limits, redis_url: str = "", prefix: str = "chat",
                 push_interval_seconds: float = 0.0) -> None:
        # Fixed windows: O(1) per event (a moving window keeps every event of the window). The
        # in-memory limiter is synchronous: it costs no coroutine per message.
        self._local_storage = storage.MemoryStorage()
        self._windows = LocalWindows()  # the allow_* checks (see LocalWindows)
        self._shared_storage: aio_storage.RedisStorage | None = None
        self._shared: aio_strategies.FixedWindowRateLimiter | None = None
        self._pool: redis.ConnectionPool | None = None
        self._refund_script: AsyncScript | None = None
        self._key_prefix = f"{prefix}:limits"
        self._outage_logged = -math.inf  # time.monotonic() of the last outage warning
        if redis_url:
            # Our own pool, so that `close` can release its connections; a short timeout, so
            # that an unreachable Redis costs a message little before it falls back to memory.
            self._pool = redis.ConnectionPool.from_url(
                redis_url, socket_connect_timeout=REDIS_TIMEOUT, socket_timeout=REDIS_TIMEOUT)
            # limits types RedisStorage's **options as scalars, but passes them to redis-py,
            # whose connection_pool is what we mean.
            options: dict[str, Any] = {"connection_pool": self._pool}
            self._shared_storage = aio_storage.RedisStorage(
                "async+" + redis_url, implementation="redispy", key_prefix=self._key_prefix,
                wrap_exceptions=True, **options)
            self._shared = aio_strategies.FixedWindowRateLimiter(self._shared_storage)
            self._refund_script = redis.Redis(connection_pool=self._pool).register_script(_REFUND_LUA)
        self._message = _per_second(limits.messages_per_second)
        self._typing = _per_second(limits.typing_per_second)
        self._ack = _per_second(limits.acks_per_second)
        self._handshake = RateLimitItemPerMinute(limits.handshakes_per_minute)
        self._lookup = RateLimitItemPerMinute(limits.lookups_per_minute)
        self._daily = {"group": RateLimitItemPerDay(limits.groups_per_day),
                       "room": RateLimitItemPerDay(limits.rooms_per_day)}
        # `limits` windows are whole seconds: a fraction is rounded up (never more than asked).
        self._push: RateLimitItem | None = (
            RateLimitItemPerSecond(1, max(1, math.ceil(push_interval_seconds)))
            if push_interval_seconds > 0 else None)
        window = limits.login_window_seconds
        self._attempt_address = RateLimitItemPerSecond(limits.login_failures, window)
        self._attempt_account = RateLimitItemPerSecond(limits.login_failures_per_phone, window)
        self._attempt_pair = RateLimitItemPerSecond(limits.login_failures_per_pair, window)

    async def close(self) -> None:
        """Release the Redis connections (nothing to do in memory)."""
        if self._pool is not None:
            await self._pool.aclose()

    def _outage(self, error: Exception) -> None:
        now = time.monotonic()
        if now - self._outage_logged >= OUTAGE_LOG_SECONDS:
            self._outage_logged = now
            log.warning("rate limits counted in this process only: Redis failed (%s)", error)

    async def _hit(self, item: RateLimitItem, *keys: str, cost: int = 1) -> bool:
        if self._shared is not None:
            try:
                return await self._shared.hit(item, *keys, cost=cost)
            except StorageError as e:
                self._outage(e)
        return self._windows.hit(item, *keys, cost=cost)

    async def allow_message(self, phone: str) -> bool:
        """Count a message from `phone`; False when over `limits.messages_per_second`."""
        return await self._hit(self._message, "message", phone)

    async def allow_typing(self, phone: str) -> bool:
        """Count a typing event from `phone`; False when over `limits.typing_per_second`."""
        return await self._hit(self._typing, "typing", phone)

    async def allow_ack(self, phone: str) -> bool:
        """Count an acknowledgement or read receipt from `phone`; False when over
        `limits.acks_per_second` (SPEC 10)."""
        return await self._hit(self._ack, "ack", phone)

    async def allow_lookups(self, phone: str, count: int = 1) -> bool:
        """Count `count` lookups of other users' phones by `phone` at once (a request naming
        several phones counts each); False when that would pass `limits.lookups_per_minute`. A
        refused request's lookups stay counted: a client past its limit keeps paying for trying."""
        if count <= 0:
            return True
        return await self._hit(self._lookup, "lookup", phone, cost=count)

    async def push_allowed(self, device: str, conversation: str) -> bool:
        """Count a Web Push to `device` (a session hash) for `conversation` ("personal:PHONE",
        "group:KEY"); False when one was already sent within `push.min_interval_seconds` (SPEC 9).
        Shared by every process through Redis when the Redis hub is configured."""
        if self._push is None:
            return True
        return await self._hit(self._push, "push", device, conversation)

    async def allow_handshake(self, address: str) -> bool:
        """Count a WebSocket handshake from `address`; False when over the per-minute limit."""
        return await self._hit(self._handshake, "handshake", address)

    async def _add(self, keys: tuple[str, ...], amount: int, shared: bool,
                   expiry: int | None = None) -> list[int]:
        """Add `amount` (1 or -1) to each counter, in Redis when `shared`; the new counts. A new
        counter lives `expiry` seconds (default: the password attempts' window). A refund (-1)
        never takes a counter below 0 and never revives an expired one (`_REFUND_LUA`; the
        in-memory storage's `decr` clamps at 0 too). Raises StorageError, or redis.RedisError for
        a refund, when Redis fails."""
        if expiry is None:
            expiry = self._attempt_address.get_expiry()
        if shared:
            assert self._shared_storage is not None and self._refund_script is not None
            if amount < 0:
                # The limits library's key for `key`: its prefix, a colon, the key.
                return [int(await self._refund_script(keys=[f"{self._key_prefix}:{key}"]))
                        for key in keys]
            return [await self._shared_storage.incr(key, expiry, amount) for key in keys]
        if amount > 0:
            return [self._local_storage.incr(key, expiry, amount) for key in keys]
        return [self._local_storage.decr(key, -amount) for key in keys]

    async def begin_daily(self, kind: str, phone: str) -> PasswordAttempt | None:
        """Count one creation of a `kind` ("group" or "room") by `phone` against
        `limits.groups_per_day` / `limits.rooms_per_day` (SPEC 10), before it is made; None
        (answer 429) when that would pass the limit. As `begin_attempt`: raised first and compared
        after, atomically, so that parallel requests cannot all pass; `refund` the slot when the
        creation then fails (a taken name, a refused password hash)."""
        item = self._daily[kind]
        keys = (item.key_for("daily", kind, phone),)
        counts: list[int] | None = None
        if self._shared_storage is not None:
            try:
                counts = await self._add(keys, 1, True, item.get_expiry())
            except StorageError as e:
                self._outage(e)
        slot = PasswordAttempt(keys, shared=counts is not None)
        if counts is None:
            counts = await self._add(keys, 1, False, item.get_expiry())
        if counts[0] > item.amount:
            await self.refund(slot)
            return None
        return slot

    async def begin_attempt(self, address: str, account: str) -> PasswordAttempt | None:
        """Count one password attempt from client `address` on `account` (a phone, or "room NAME"),
        before the password is checked (SPEC 10); None (answer 429) when that would pass
        `limits.login_failures` per address, `limits.login_failures_per_phone` per account or
        `limits.login_failures_per_pair` per pair within `limits.login_window_seconds`.

        The counters are raised first and compared after (one atomic increment each, in Redis or
        in memory), so that parallel attempts cannot all pass a check made before any is counted.
        A refused attempt is taken off again: it reached no password check. Call `refund` when the
        password was right (or the check never ran), so that successes use up nothing.
        """
        items = (self._attempt_address, self._attempt_account, self._attempt_pair)
        keys = (self._attempt_address.key_for("password", address),
                self._attempt_account.key_for("password-account", account),
                self._attempt_pair.key_for("password-pair", address, account))
        counts: list[int] | None = None
        if self._shared_storage is not None:
            try:
                counts = await self._add(keys, 1, True)
            except StorageError as e:
                self._outage(e)
        attempt = PasswordAttempt(keys, shared=counts is not None)
        if counts is None:
            counts = await self._add(keys, 1, False)
        if any(count > item.amount for count, item in zip(counts, items, strict=True)):
            await self.refund(attempt)
            return None
        return attempt

    async def refund(self, attempt: PasswordAttempt) -> None:
        """Give back the slots of an attempt counted by `begin_attempt` (a right password, or a
        check that did not run)."""
        try:
            await self._add(attempt.keys, -1, attempt.shared)
        except (StorageError, redis.RedisError) as e:  # the slots stay used until the window ends
            self._outage(e)


async def lookup_allowed(throttle: Throttle, store: Store, me: str, phone: str) -> bool:
    """Whether `me` may learn if `phone` has an account (issue 12, finding 6): always for
    itself and for a phone it has a dialogue with (that cost a lookup once, or the peer wrote
    first: nothing new is learnt, and a client re-checking its dialogues at every reconnect is
    not refused); otherwise one lookup against `limits.lookups_per_minute`."""
    if phone == me or await store.has_dialogue(me, phone):
        return True
    return await throttle.allow_lookups(me)


@dataclass(frozen=True, slots=True)
class PasswordAttempt:
    """One attempt counted by `Throttle.begin_attempt` (or one creation by `begin_daily`): its
    counters' keys, and whether they are in Redis (`shared`) or in this process's memory."""
    keys: tuple[str, ...]
    shared: bool


class PoolFull(Exception):
    """The bcrypt pool already has `limits.password_workers` running and `limits.password_queue`
    waiting: answer 503."""


class PasswordPool:
    """Threads for bcrypt (hashing and checking, ~0.2 s each at cost 12 by design): at most
    `workers` at once, at most `queue` more waiting, so that a burst of registrations or logins
    cannot queue unbounded CPU work in front of a real login (issue 12, finding 5).
    """

    def __init__(self, workers: int, queue: int) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="bcrypt")
        # Released from the worker thread when a job ends (or at once when it is cancelled
        # before it started): a thread-safe semaphore, not a counter on the event loop.
        self._slots = threading.BoundedSemaphore(workers + queue)

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` on one of the pool's threads; raises PoolFull when the pool is full."""
        if not self._slots.acquire(blocking=False):
            raise PoolFull("the server is busy checking passwords; try again in a few seconds")
        try:
            future = self._executor.submit(function, *args)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        """Drop the jobs still waiting; running ones finish on their own."""
        self._executor.shutdown(wait=False, cancel_futures=True)
