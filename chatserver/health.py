"""`GET /healthz` (SPEC 11): is this process serving, and did its database (and Redis, when the
hub uses it) answer recently?

The answer is cached: a background task asks the store (a trivial read through its normal path)
and the hub (its broker's PING) every CHECK_SECONDS, and the handler only reads what the last
check found, so that a burst of probes costs the database nothing. A component whose last
check failed, or that has not answered for STALE_SECONDS (a check that hangs), is reported
failed. Imports nothing of the package but the store and hub interfaces, so that the app can
wire it (chatserver/app.py) and a test can drive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

from .hubs.local import Hub
from .stores.base import Store

log = logging.getLogger(__name__)

# Seconds between two checks, and the bound of one check.
CHECK_SECONDS: Final = 2.0
CHECK_TIMEOUT: Final = 2.0
# A component that has not answered for this long is failed, whatever its last check said (the
# checker itself may be stuck).
STALE_SECONDS: Final = 3 * CHECK_SECONDS + CHECK_TIMEOUT
HEALTHZ_PATH: Final = "/healthz"
DATABASE: Final = "database"
REDIS: Final = "redis"


class HealthCheck:
    """The cached health of one app. `start(store, hub)` once both are open (checks once before
    it returns, so the first probe already has an answer), `stop()` before they close; `handle`
    is the /healthz handler. `redis`: whether the hub shares a Redis (`[hub] url` set)."""

    def __init__(self, redis: bool, interval: float = CHECK_SECONDS,
                 timeout: float = CHECK_TIMEOUT) -> None:
        self._redis = redis
        self._interval, self._timeout = interval, timeout
        self._probes: dict[str, Callable[[], Awaitable[object]]] = {}
        self._ok_at: dict[str, float] = {}  # component -> time.monotonic() of its last answer
        self._failing: set[str] = set()  # components whose latest check failed
        self._task: asyncio.Task[None] | None = None
        self._rounds = 0  # checks completed
        self._checking = False
        self._round_done: asyncio.Event = asyncio.Event()

    async def start(self, store: Store, hub: Hub) -> None:
        """Check once, then keep checking every `interval` seconds in a task of its own."""
        self._probes = {DATABASE: store.has_users}
        if self._redis:
            self._probes[REDIS] = hub.ping
        await self.check()
        self._task = asyncio.create_task(self._run(), name="healthz")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.check()

    async def check(self) -> None:
        """Ask every component once, at the same time, each bounded by `timeout` seconds."""
        names = list(self._probes)
        self._checking = True
        try:
            results = await asyncio.gather(*(self._probe(name) for name in names))
        finally:
            self._checking = False
        for name, ok in zip(names, results, strict=True):
            if ok:
                self._ok_at[name] = time.monotonic()
                if name in self._failing:
                    self._failing.discard(name)
                    log.warning("healthz: the %s answers again", name)
            elif name not in self._failing:
                self._failing.add(name)
        self._rounds += 1
        self._round_done.set()
        self._round_done = asyncio.Event()

    async def _probe(self, name: str) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                await self._probes[name]()
        except Exception as e:  # whatever it is, the component did not answer
            if name not in self._failing:  # once per outage
                log.warning("healthz: the %s does not answer (%s)", name, type(e).__name__)
            return False
        return True

    def failed(self) -> list[str]:
        """The components that did not answer their latest check or not within STALE_SECONDS,
        in the order database, redis; empty when all is well."""
        now = time.monotonic()
        return [name for name in self._probes
                if name in self._failing or now - self._ok_at.get(name, float("-inf")) > STALE_SECONDS]

    async def checked(self) -> None:
        """Return once a check that started after this call has finished (for tests: what a
        probe says next reflects the components' state now)."""
        # The check in progress, if any, started before: the next one then.
        target = self._rounds + (2 if self._checking else 1)
        while self._rounds < target:
            await self._round_done.wait()

    async def handle(self, request: web.Request) -> web.Response:
        """GET /healthz: 200 `{"status": "ok"}`, or 503 `{"status": "unavailable", "failed":
        ["database" | "redis", ...]}` (SPEC 11). No login, nothing secret; not in the access log
        (chatserver/logs.py)."""
        failed = self.failed()
        if failed:
            return web.json_response({"status": "unavailable", "failed": failed}, status=503)
        return web.json_response({"status": "ok"})
