"""The blocks mirrored in memory on PostgreSQL, kept up to date across processes.

`is_blocked` is synchronous and asked on every message, so each process keeps the blocks in
memory. A trigger on `blocks` (schema-postgres.sql) calls `pg_notify` inside every transaction
that changes them, also a deluser's cascade, and every process applies what it hears on its own
listener connection. The listener LISTENs before it reads the table, so that no change committed
in between is missed; when its connection drops, it reconnects and reads the table again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final, TypeAlias

import asyncpg

log = logging.getLogger(__name__)

PgConnection: TypeAlias = asyncpg.Connection
# Errors of the connection rather than of a statement.
CONNECTION_ERRORS: Final = (asyncpg.InterfaceError, asyncpg.PostgresConnectionError, OSError,
                            asyncpg.exceptions.OperatorInterventionError)
# The listener's reconnection delays, seconds: from the first to the longest.
RELISTEN_DELAYS: Final = (0.1, 5.0)
# The blocks' notification channel of this schema; the trigger blocks_notify() names it alike.
CHANNEL_QUERY: Final = "SELECT 'chat_blocks_' || left(md5(current_schema()), 20)"


class BlocksMirror:
    """The (blocker, blocked) pairs of the database at `url`, in `blocks` (updated in place)."""

    def __init__(self, url: str, channel: str, blocks: set[tuple[str, str]]) -> None:
        self.blocks = blocks
        self.listener: PgConnection | None = None
        # Set (and replaced) whenever a notification has been applied: tests await it.
        self.updated = asyncio.Event()
        self._url = url
        self._channel = channel
        self._heard: list[str] | None = None  # notifications held while the table is (re)read
        self._relisten: asyncio.Task[None] | None = None
        self._closing = False

    async def listen(self) -> None:
        """LISTEN on a new connection, then read the blocks: a change committed after the LISTEN
        is heard (and held until the table is read, then applied on top of it); one committed
        before is in the table. Applying them in commit order converges on the table's state.
        Raises asyncpg's errors or OSError when the database cannot be reached."""
        conn = await asyncpg.connect(self._url)
        try:
            self._heard = []
            await conn.add_listener(self._channel, self._on_notification)
            rows = await conn.fetch("SELECT blocker, blocked FROM blocks")
        except BaseException:
            self._heard = None
            await conn.close()
            raise
        blocks = {(r[0], r[1]) for r in rows}
        heard, self._heard = self._heard, None
        for payload in heard:
            self._apply(blocks, payload)
        self.blocks.clear()
        self.blocks.update(blocks)
        conn.add_termination_listener(self._on_listener_lost)
        self.listener = conn
        self._notify()

    async def close(self) -> None:
        """Stop listening (and reconnecting)."""
        self._closing = True
        if self._relisten is not None:
            self._relisten.cancel()
            await asyncio.gather(self._relisten, return_exceptions=True)
        if self.listener is not None:
            await self.listener.close()

    def _on_notification(self, conn: object, pid: int, channel: str, payload: object) -> None:
        payload = str(payload)
        if self._heard is not None:
            self._heard.append(payload)
            return
        self._apply(self.blocks, payload)
        self._notify()

    @staticmethod
    def _apply(blocks: set[tuple[str, str]], payload: str) -> None:
        """Apply "+blocker blocked" or "-blocker blocked" (trigger blocks_notify)."""
        blocker, _, blocked = payload[1:].partition(" ")
        if payload.startswith("+"):
            blocks.add((blocker, blocked))
        else:
            blocks.discard((blocker, blocked))

    def _notify(self) -> None:
        event, self.updated = self.updated, asyncio.Event()
        event.set()

    def _on_listener_lost(self, conn: object) -> None:
        if self._closing or conn is not self.listener:
            return
        # Changes made while nobody listens would be missed: listen again and re-read the table.
        log.warning("lost the blocks listener connection; reconnecting")
        self.listener = None
        self._relisten = asyncio.create_task(self._listen_again(), name="pgstore-relisten")

    async def _listen_again(self) -> None:
        delay, longest = RELISTEN_DELAYS
        while not self._closing:
            try:
                await self.listen()
                log.info("blocks listener reconnected")
                return
            except (*CONNECTION_ERRORS, asyncpg.PostgresError):
                log.warning("blocks listener: reconnection failed; retrying in %.1f s", delay)
            await asyncio.sleep(delay)  # a back-off between attempts, not a synchronisation
            delay = min(delay * 2, longest)
