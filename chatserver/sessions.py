"""Sockets that end with their session (issue 12, finding 2; SPEC 4 /logout, SPEC 10).

Every socket is bound to the login session it was opened with (`Hub.session_socket`). Logout
closes that session's sockets at once, in every process (`Hub.close_session`, the Redis control
channel). Every other way a session ends happens where the server cannot hear it: `run.py passwd`
and `run.py deluser` are other processes writing the database, an admin's change or a password
change may be served by another worker, and expiry is only a time passing. So each server process
also re-checks, every `security.session_check_seconds`, that the sessions of its open sockets are
still recorded and used within the last `security.session_seconds`, with ONE store query
(`Store.live_sessions`) whatever the number of sockets, and closes the sockets of the others with
1008 "session ended". An open socket is a use of its session (SPEC 7, issue 13): the same call
records it for the live ones, with one UPDATE of those last recorded more than a minute ago
(`stores.base.touch_after_us`), none when all are recent.

Why a periodic check rather than a notification: the database is the one thing every writer
(server workers, the CLI, either engine) already shares, so the check needs no new channel and no
change to any writer, and it cannot miss an end that happened while a process was starting, while
Redis was away, or between a handshake's session check and its registration. Its cost is one
indexed lookup per open session per interval per process (a few milliseconds for thousands).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from .hubs.local import Hub
from .keys import config_key, hub_key, store_key
from .stores.base import Store, StoreError

log = logging.getLogger(__name__)


class SessionWatch:
    """Closes the sockets of this process whose session has ended: `check()` once, `run()`
    every `interval` seconds until cancelled. `max_age`: `security.session_seconds`."""

    def __init__(self, hub: Hub, store: Store, interval: float, max_age: float) -> None:
        self._hub, self._store = hub, store
        self._interval, self._max_age = interval, max_age
        self._failing = False  # the store failed the last check (logged once per outage)

    async def check(self) -> int:
        """One check: the sessions of this process's open sockets are looked up in one query,
        the sockets of those gone or expired are being closed. Returns how many sockets.
        Raises StoreError when the store fails."""
        hashes = self._hub.session_hashes()
        if not hashes:
            return 0
        live = await self._store.live_sessions(hashes, self._max_age)
        ended = [h for h in hashes if h not in live]
        closing = self._hub.end_sessions(ended) if ended else 0
        if closing:
            log.info("sessions: %d ended session(s), closing %d socket(s)", len(ended), closing)
        return closing

    async def run(self) -> None:
        """Check every `interval` seconds until cancelled; a failing store is logged (once per
        outage) and checked again at the next interval."""
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.check()
            except StoreError as e:
                if not self._failing:
                    log.warning("sessions: cannot check the open sockets' sessions: %s", e)
                self._failing = True
                continue
            if self._failing:
                log.warning("sessions: the open sockets' sessions are checked again")
                self._failing = False


async def session_watch_ctx(app: web.Application) -> AsyncIterator[None]:
    """aiohttp cleanup context: a SessionWatch runs while the app serves (after the store and
    the hub have started; stopped before they stop)."""
    config = app[config_key]
    watch = SessionWatch(app[hub_key], app[store_key], config.security.session_check_seconds,
                         config.security.session_seconds)
    task = asyncio.create_task(watch.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
