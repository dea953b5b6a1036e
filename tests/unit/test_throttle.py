"""The throttle's counters (chatserver/throttle.py): in memory, one process's own; in Redis, shared by
every process that uses the same Redis and prefix (issue "Scale out": rate limits and login
throttling hold across processes). Two Throttle objects stand for two server processes.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as redis
from limits import RateLimitItemPerSecond

from chatserver import throttle as throttle_module
from chatserver.config import Limits
from chatserver.throttle import LocalWindows, PasswordPool, PoolFull, Throttle
from helpers import backends

TIMEOUT = 10.0
LIMITS = Limits(messages_per_second=2.0, typing_per_second=1.0, handshakes_per_minute=3,
                login_failures=2, login_window_seconds=60)


@pytest.fixture
async def shared(redis_prefix: str) -> AsyncIterator[Callable[[str], Throttle]]:
    """Make Throttles on Redis (closed at the end); the argument is the prefix."""
    made: list[Throttle] = []

    def make(chosen: str) -> Throttle:
        made.append(Throttle(LIMITS, backends.REDIS_URL, chosen))
        return made[-1]
    yield make
    for throttle in made:
        await throttle.close()


async def count_allowed(throttles: list[Throttle], n: int, what: str, key: str) -> int:
    """Send `n` events of kind `what` round-robin over `throttles`; how many passed."""
    allowed = 0
    for i in range(n):
        check = getattr(throttles[i % len(throttles)], f"allow_{what}")
        allowed += await asyncio.wait_for(check(key), TIMEOUT)
    return allowed


async def test_in_memory_counters_are_per_process() -> None:
    one, two = Throttle(LIMITS), Throttle(LIMITS)
    # messages_per_second 2.0: a budget of 4 per two-second window, in each process
    assert await count_allowed([one], 6, "message", "5550000001") == 4
    assert await count_allowed([two], 6, "message", "5550000001") == 4


@pytest.mark.parametrize(("what", "budget"), [("message", 4), ("typing", 2), ("handshake", 3)])
async def test_redis_counters_are_shared_by_processes(
        redis_prefix: str, shared: Callable[[str], Throttle], what: str, budget: int) -> None:
    one = shared(redis_prefix)
    two = shared(redis_prefix)
    assert await count_allowed([one, two], budget + 3, what, "5550000002") == budget
    # the other key has its own budget
    assert await count_allowed([two, one], budget + 3, what, "5550000003") == budget


async def test_redis_password_attempts_are_counted_for_every_process(
        redis_prefix: str, shared: Callable[[str], Throttle]) -> None:
    one = shared(redis_prefix)
    two = shared(redis_prefix)
    address = "192.0.2.7"
    assert await one.begin_attempt(address, "5550000010") is not None
    assert await two.begin_attempt(address, "5550000011") is not None
    # login_failures = 2 per address: refused everywhere, on any phone
    assert await one.begin_attempt(address, "5550000012") is None
    assert await two.begin_attempt(address, "5550000012") is None
    assert await two.begin_attempt("192.0.2.8", "5550000012") is not None


async def test_in_memory_refunds_give_slots_back_and_refusals_take_none() -> None:
    await refunds_and_refusals(Throttle(LIMITS))


async def test_in_redis_refunds_give_slots_back_and_refusals_take_none(
        redis_prefix: str, shared: Callable[[str], Throttle]) -> None:
    await refunds_and_refusals(shared(redis_prefix))


async def refunds_and_refusals(throttle: Throttle) -> None:
    """A refunded attempt gives its slot back; a refused one is taken off again."""
    address = "192.0.2.10"
    for _ in range(5):  # five right passwords in a row: each gives its slot back
        attempt = await throttle.begin_attempt(address, "5550000013")
        assert attempt is not None
        await throttle.refund(attempt)
    assert await throttle.begin_attempt(address, "5550000013") is not None
    assert await throttle.begin_attempt(address, "5550000014") is not None
    for _ in range(3):  # refused ones are taken off again: the count stays at the limit
        assert await throttle.begin_attempt(address, "5550000015") is None
    # per phone (5) and per pair (5) are not used up by the refusals
    assert await throttle.begin_attempt("192.0.2.11", "5550000015") is not None


async def attempt_counters(client: redis.Redis, prefix: str) -> dict[bytes, int]:
    """The password-attempt counters stored under `prefix`: key -> count."""
    keys = sorted([k async for k in client.scan_iter(match=f"{prefix}:*password*")])
    return dict(zip(keys, [int(v) for v in await client.mget(keys)], strict=True)) if keys else {}


async def test_a_redis_refund_after_the_window_ended_revives_no_counter(
        redis_prefix: str, shared: Callable[[str], Throttle]) -> None:
    """A right password whose check ends after the attempt's window rolled over: its refund must
    not leave the counters at -1 (one extra attempt in the next window, and keys that never
    expire)."""
    throttle = shared(redis_prefix)
    address, phone = "192.0.2.20", "5550000020"
    client = redis.Redis.from_url(backends.REDIS_URL)
    try:
        attempt = await throttle.begin_attempt(address, phone)
        assert attempt is not None
        counters = await attempt_counters(client, redis_prefix)
        assert sorted(counters.values()) == [1, 1, 1]  # per address, per phone, per pair
        await client.delete(*counters)  # the window ends: the counters expire
        await throttle.refund(attempt)
        assert await attempt_counters(client, redis_prefix) == {}
        # the next window has login_failures (2) attempts for the address, not one more
        assert [await throttle.begin_attempt(address, phone) is not None for _ in range(3)] == [
            True, True, False]
    finally:
        await client.aclose()


async def test_a_redis_refund_within_the_window_keeps_the_counters_expiry(
        redis_prefix: str, shared: Callable[[str], Throttle]) -> None:
    throttle = shared(redis_prefix)
    client = redis.Redis.from_url(backends.REDIS_URL)
    try:
        first = await throttle.begin_attempt("192.0.2.21", "5550000021")
        second = await throttle.begin_attempt("192.0.2.21", "5550000021")
        assert first is not None and second is not None
        await throttle.refund(second)
        counters = await attempt_counters(client, redis_prefix)
        assert sorted(counters.values()) == [1, 1, 1]
        ttls = [await client.ttl(key) for key in counters]
        assert all(0 < ttl <= LIMITS.login_window_seconds for ttl in ttls), ttls
        await throttle.refund(first)
        await throttle.refund(first)  # a second refund of one attempt: stays at 0
        assert sorted((await attempt_counters(client, redis_prefix)).values()) == [0, 0, 0]
    finally:
        await client.aclose()


async def test_per_phone_and_per_pair_limits() -> None:
    throttle = Throttle(Limits(login_failures=100, login_failures_per_phone=3,
                               login_failures_per_pair=2))
    phone = "5550000016"
    assert [await throttle.begin_attempt("192.0.2.1", phone) is not None for _ in range(3)] == [
        True, True, False]  # the pair's limit
    assert await throttle.begin_attempt("192.0.2.2", phone) is not None
    assert await throttle.begin_attempt("192.0.2.3", phone) is None  # the phone's limit
    assert await throttle.begin_attempt("192.0.2.3", "5550000017") is not None


async def test_the_password_pool_runs_at_most_workers_plus_queue_jobs() -> None:
    pool = PasswordPool(workers=1, queue=1)
    started, release = threading.Event(), threading.Event()

    def hold() -> str:
        started.set()
        release.wait(TIMEOUT)
        return "held"
    try:
        running = asyncio.ensure_future(pool.run(hold))
        assert await asyncio.to_thread(started.wait, TIMEOUT)
        waiting = asyncio.ensure_future(pool.run(str, 1))  # queued behind the running one
        await asyncio.sleep(0)  # let it take its slot
        with pytest.raises(PoolFull):
            await pool.run(str, 2)
    finally:
        release.set()
    assert (await running, await waiting) == ("held", "1")
    assert await pool.run(str, 3) == "3"  # the slots are free again
    pool.close()


async def test_redis_prefixes_keep_deployments_apart(
        redis_prefix: str, shared: Callable[[str], Throttle]) -> None:
    async with backends.redis_prefix() as other_prefix:
        mine = shared(redis_prefix)
        other = shared(other_prefix)
        assert await count_allowed([mine], 6, "message", "5550000004") == 4
        assert await count_allowed([other], 6, "message", "5550000004") == 4


async def test_unreachable_redis_falls_back_to_counting_in_memory(
        caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as probe:  # a port on which nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    throttle = Throttle(LIMITS, f"redis://127.0.0.1:{port}/0", "unreachable")
    try:
        # neither lifted nor refusing everything: the per-process budget of 4 holds
        assert await count_allowed([throttle], 6, "message", "5550000005") == 4
        assert await throttle.begin_attempt("192.0.2.9", "5550000006") is not None
        assert await throttle.begin_attempt("192.0.2.9", "5550000006") is not None
        assert await throttle.begin_attempt("192.0.2.9", "5550000006") is None
    finally:
        await throttle.close()
    warnings = [r for r in caplog.records if "counted in this process only" in r.getMessage()]
    assert len(warnings) == 1  # logged once per OUTAGE_LOG_SECONDS, not per event


def test_local_windows_count_every_event_and_start_a_new_window_after_expiry(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """LocalWindows keeps the `limits` fixed-window rule: refused events count too, a window
    lasts the item's expiry from its first event, keys and items are counted apart, and expired
    windows are swept once the table is full."""
    now = [1000.0]
    monkeypatch.setattr(throttle_module.time, "monotonic", lambda: now[0])
    windows = LocalWindows(sweep_at=3)
    item = RateLimitItemPerSecond(2, 2)
    assert [windows.hit(item, "ack", "a") for _ in range(3)] == [True, True, False]
    assert windows.hit(item, "ack", "b")  # another key
    assert windows.hit(RateLimitItemPerSecond(5, 2), "ack", "a")  # another item
    now[0] += 1.9
    assert not windows.hit(item, "ack", "a")  # the same window
    now[0] += 0.1
    assert windows.hit(item, "ack", "a") and windows.hit(item, "ack", "a")  # a new one
    assert not windows.hit(item, "ack", "a", cost=1)
    assert not windows.hit(item, "lookup", "c", cost=3)  # one request counting three
    now[0] += 10
    windows.hit(item, "ack", "d")  # 3 keys now, "a" and "c" expired
    windows.hit(item, "ack", "e")  # the table is full: the expired windows are swept first
    assert sorted(key[-1] for key in windows._windows) == ["d", "e"]
