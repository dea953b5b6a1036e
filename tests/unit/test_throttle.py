"""The throttle's counters (chatserver/throttle.py): in memory, one process's own; in Redis, shared by
every process that uses the same Redis and prefix (issue "Scale out": rate limits and login
throttling hold across processes). Two Throttle objects stand for two server processes.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable

import pytest

from chatserver.config import Limits
from chatserver.throttle import Throttle
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


async def test_redis_failed_logins_block_every_process(
        redis_prefix: str, shared: Callable[[str], Throttle]) -> None:
    one = shared(redis_prefix)
    two = shared(redis_prefix)
    address = "192.0.2.7"
    assert not await one.login_blocked(address)
    await one.login_failed(address)
    assert not await two.login_blocked(address)
    await two.login_failed(address)  # login_failures = 2: now blocked everywhere
    assert await one.login_blocked(address)
    assert await two.login_blocked(address)
    assert not await two.login_blocked("192.0.2.8")


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
        await throttle.login_failed("192.0.2.9")
        assert not await throttle.login_blocked("192.0.2.9")
        await throttle.login_failed("192.0.2.9")
        assert await throttle.login_blocked("192.0.2.9")
    finally:
        await throttle.close()
    warnings = [r for r in caplog.records if "counted in this process only" in r.getMessage()]
    assert len(warnings) == 1  # logged once per OUTAGE_LOG_SECONDS, not per event
