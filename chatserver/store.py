"""The SQLite store: the only module with SQL in it.

Two aiosqlite connections to one WAL-mode file: a writer, fed by one task that batches every write
queued so far into a single `BEGIN IMMEDIATE ... COMMIT` (group commit: one fsync serves every
message in the batch, and no caller's future resolves before the commit that holds its row), and a
query-only reader, which in WAL mode sees only committed data and never waits for the writer.
Each public method is one unit of work named for what it means; none returns a cursor.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiosqlite

from .protocol import now_micros

log = logging.getLogger(__name__)

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schema.sql"
Op = Callable[[aiosqlite.Connection], Awaitable[Any]]
# Runs one kind of write for a list of argument tuples in the open transaction and returns one
# result per tuple. The per-message kinds do it in one SQL statement whatever the list's length.
Runner = Callable[[aiosqlite.Connection, list[Any]], Awaitable[list[Any]]]


class StoreClosed(RuntimeError):
    """A write was submitted after `Store.close()` began."""


class CorruptDatabase(RuntimeError):
    """`PRAGMA quick_check` found the database file damaged; the server refuses to serve it."""


@dataclass(frozen=True, slots=True)
class User:
    phone: str
    name: str
    password_hash: bytes


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A personal message waiting for its recipient's `msg_received` (SPEC 5.2)."""

    msg_from: str
    msg_to: str
    message: str
    sent_us: int


@dataclass(frozen=True, slots=True)
class DialogueSide:
    """What the receiver has received and seen of one direction of a dialogue (SPEC 4)."""

    last_received_receiver: str | None
    last_seen_receiver: str | None
    waiting: int


@dataclass(slots=True)
class _Write:
    run: Runner
    args: Any
    future: asyncio.Future[Any]
    deletes: bool  # leaves freed bodies behind: the WAL must be scrubbed (SPEC 6)


def _rows_json(rows: list[Any]) -> str:
    # One JSON array carries a whole batch into one statement (json_each) instead of one
    # round trip to the database thread per message.
    return json.dumps(rows, ensure_ascii=False, separators=(",", ":"))


async def _call_ops(db: aiosqlite.Connection, ops: list[Op]) -> list[Any]:
    """Runner of the rare writes (accounts, sessions): each is its own small coroutine."""
    return [await op(db) for op in ops]


_INSERT_PERSONAL: Final = """
    INSERT INTO personal_messages (msg_from, msg_to, sent_us, sent_timestamp, message)
    SELECT value->>0, value->>1, value->>2, value->>3, value->>4 FROM json_each(?1) WHERE true
    ON CONFLICT DO NOTHING
    RETURNING msg_from, msg_to, sent_us"""


async def _add_personal_many(db: aiosqlite.Connection, rows: list[Any]) -> list[bool]:
    """Insert [msg_from, msg_to, sent_us, sent_timestamp, message] rows in array order (which is
    the acceptance order, `id`); True for each row stored, False for a repeated identity."""
    inserted = {tuple(r) for r in await db.execute_fetchall(_INSERT_PERSONAL, (_rows_json(rows),))}
    results = []
    for row in rows:
        key = (row[0], row[1], row[2])
        results.append(key in inserted)
        inserted.discard(key)  # the same identity twice in one batch: only the first is new
    return results


_DELETE_PERSONAL: Final = """
    DELETE FROM personal_messages WHERE id IN (
        SELECT p.id FROM json_each(?1) AS j JOIN personal_messages AS p
        ON p.msg_to = j.value->>1 AND p.msg_from = j.value->>0 AND p.sent_us = j.value->>2)
    RETURNING msg_from, msg_to, sent_us"""
_SET_RECEIVED: Final = """
    INSERT INTO dialogues (msg_from, msg_to, last_received_receiver)
    SELECT value->>0, value->>1, value->>3 FROM json_each(?1) WHERE true
    ON CONFLICT DO UPDATE SET last_received_receiver = excluded.last_received_receiver"""


async def _ack_personal_many(db: aiosqlite.Connection, rows: list[Any]) -> list[bool]:
    """Delete acknowledged messages, rows [msg_from, msg_to, sent_us, received_at]; True for each
    row that deleted a message, whose dialogue then gets last_received_receiver = received_at."""
    deleted = {tuple(r) for r in await db.execute_fetchall(_DELETE_PERSONAL, (_rows_json(rows),))}
    results, receipts = [], []
    for row in rows:
        key = (row[0], row[1], row[2])
        results.append(key in deleted)
        if key in deleted:
            receipts.append(row)
            deleted.discard(key)
    if receipts:
        await db.execute(_SET_RECEIVED, (_rows_json(receipts),))
    return results


_SET_SEEN: Final = """
    INSERT INTO dialogues (msg_from, msg_to, last_seen_receiver)
    SELECT value->>0, value->>1, value->>2 FROM json_each(?1) WHERE true
    ON CONFLICT DO UPDATE SET last_seen_receiver = excluded.last_seen_receiver"""


async def _read_personal_many(db: aiosqlite.Connection, rows: list[Any]) -> list[None]:
    """Set last_seen_receiver for rows [msg_from, msg_to, seen_at] (the last one per dialogue wins)."""
    await db.execute(_SET_SEEN, (_rows_json(rows),))
    return [None] * len(rows)


class Store:
    """All persistent state. Open with `await Store.open(...)`, close with `await store.close()`."""

    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection,
                 scrub_seconds: float) -> None:
        self._writer = writer
        self._reader = reader
        self._scrub_seconds = scrub_seconds
        self._queue: list[_Write] = []
        self._wakeup = asyncio.Event()
        self._closing = False
        self._scrub_at: float | None = None  # loop time when the WAL must next be truncated
        self._scrub_waiters: list[asyncio.Future[None]] = []
        self._task = asyncio.create_task(self._write_loop(), name="store-writer")

    @classmethod
    async def open(cls, path: str | Path, *, synchronous: str = "FULL",
                   scrub_seconds: float = 5.0) -> Store:
        """Open (creating if needed) the database at `path`, apply schema.sql, check integrity.

        Raises CorruptDatabase when `PRAGMA quick_check` does not answer "ok".
        """
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; we write BEGIN/COMMIT ourselves.
        writer = await aiosqlite.connect(path, isolation_level=None)
        try:
            # WAL: readers never block the writer and a commit appends instead of rewriting pages.
            await writer.execute("PRAGMA journal_mode=WAL")
            # FULL fsyncs the WAL at every commit: an acknowledged message survives power loss.
            await writer.execute(f"PRAGMA synchronous={synchronous.upper()}")
            # Overwrite deleted content with zeros (SPEC 1). In WAL mode this reaches the main file
            # only at checkpoint, and old frames stay in the -wal file until it is truncated: scrub().
            await writer.execute("PRAGMA secure_delete=ON")
            await writer.execute("PRAGMA foreign_keys=ON")
            # A second process (run.py adduser while serving) may hold the lock for a moment.
            await writer.execute("PRAGMA busy_timeout=5000")
            rows = await writer.execute_fetchall("PRAGMA quick_check")
            result = [r[0] for r in rows]
            if result != ["ok"]:
                raise CorruptDatabase(f"{path} failed PRAGMA quick_check: {'; '.join(result[:5])}")
            await writer.executescript(SCHEMA_PATH.read_text())
            reader = await aiosqlite.connect(path, isolation_level=None)
        except BaseException:
            await writer.close()
            raise
        await reader.execute("PRAGMA query_only=ON")
        await reader.execute("PRAGMA busy_timeout=5000")
        return cls(writer, reader, scrub_seconds)

    async def close(self) -> None:
        """Finish every queued write, truncate the WAL and close both connections."""
        self._closing = True
        self._wakeup.set()
        await self._task
        await self._reader.close()
        try:
            await self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            await self._writer.close()

    # -- group commit -------------------------------------------------------------------------

    def _submit(self, run: Runner, args: Any, *, deletes: bool = False) -> asyncio.Future[Any]:
        """Queue one write for the next batch; the future resolves after its COMMIT."""
        if self._closing:
            raise StoreClosed("the store is closing")
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Write(run, args, future, deletes))
        self._wakeup.set()
        return future

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._scrub_at is not None and loop.time() >= self._scrub_at:
                await self._scrub()
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                try:
                    async with asyncio.timeout_at(self._scrub_at):
                        await self._wakeup.wait()
                except TimeoutError:
                    pass
                continue
            # Everything queued while the previous commit was in flight forms this batch.
            batch, self._queue = self._queue, []
            await self._commit(batch)
            if self._scrub_at is None and any(w.deletes for w in batch):
                self._scrub_at = loop.time() + self._scrub_seconds

    async def _commit(self, batch: list[_Write]) -> None:
        """Run `batch` in one transaction, one statement per kind of write.

        When a statement fails, the batch is rolled back and run again with every write on its
        own statement, so that only the write at fault fails and the others are committed.
        """
        db = self._writer
        alone = False
        while batch:
            groups: dict[Runner, list[_Write]] = {}
            for write in batch:
                groups.setdefault(write.run, []).append(write)
            steps = ([(w.run, [w]) for w in batch] if alone else list(groups.items()))
            results: list[tuple[_Write, Any]] = []
            failed: tuple[list[_Write], sqlite3.Error] | None = None
            try:
                await db.execute("BEGIN IMMEDIATE")
                for run, writes in steps:
                    try:
                        outcome = await run(db, [w.args for w in writes])
                    except sqlite3.Error as e:  # these writes' fault, not the transaction's
                        failed = (writes, e)
                        break
                    results.extend(zip(writes, outcome, strict=True))
                if failed is None:
                    await db.execute("COMMIT")
            except BaseException as e:  # the transaction itself failed: nothing is stored
                log.exception("commit of %d writes failed", len(batch))
                await self._rollback()
                for write in batch:
                    if not write.future.done():
                        write.future.set_exception(e)
                if not isinstance(e, Exception):
                    raise
                return
            if failed is None:
                for write, result in results:
                    if not write.future.done():  # the caller may have been cancelled
                        write.future.set_result(result)
                return
            await self._rollback()
            writes, error = failed
            if len(writes) > 1:
                alone = True
                continue
            if not writes[0].future.done():
                writes[0].future.set_exception(error)
            batch = [w for w in batch if w is not writes[0]]

    async def _rollback(self) -> None:
        try:
            await self._writer.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # no transaction was open

    async def _write(self, op: Op, *, deletes: bool = False) -> Any:
        """Run a rare write (one small coroutine) in the next batch."""
        return await self._submit(_call_ops, op, deletes=deletes)

    async def _scrub(self) -> None:
        """Checkpoint and truncate the WAL (between batches, on the writer task only)."""
        loop = asyncio.get_running_loop()
        try:
            rows = await self._writer.execute_fetchall("PRAGMA wal_checkpoint(TRUNCATE)")
            busy = bool(rows[0][0]) if rows else True
        except sqlite3.Error:
            log.exception("WAL checkpoint failed")
            busy = True
        # A reader in the middle of a query holds old frames: try again shortly.
        self._scrub_at = loop.time() + 0.1 if busy else None
        if not busy:
            waiters, self._scrub_waiters = self._scrub_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def scrub(self) -> None:
        """Truncate the WAL now, so that deleted bodies are gone from every file (SPEC 6).

        The writer task does this by itself within `scrub_seconds` of a delete; this asks for it
        at once and returns when the log has been checkpointed and truncated.
        """
        if self._closing:
            raise StoreClosed("the store is closing")
        waiter = asyncio.get_running_loop().create_future()
        self._scrub_waiters.append(waiter)
        self._scrub_at = asyncio.get_running_loop().time()
        self._wakeup.set()
        await waiter

    # -- users and sessions -------------------------------------------------------------------

    async def add_user(self, phone: str, name: str, password_hash: bytes) -> bool:
        """Create an account; False when the phone is taken."""
        async def op(db: aiosqlite.Connection) -> bool:
            cur = await db.execute(
                "INSERT INTO users (phone, name, password_hash, created_us) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (phone) DO NOTHING",
                (phone, name, password_hash, now_micros()),
            )
            return cur.rowcount == 1
        return await self._write(op)

    async def get_user(self, phone: str) -> User | None:
        """The account with this phone, or None."""
        rows = await self._reader.execute_fetchall(
            "SELECT phone, name, password_hash FROM users WHERE phone = ?", (phone,))
        return User(rows[0][0], rows[0][1], bytes(rows[0][2])) if rows else None

    async def user_exists(self, phone: str) -> bool:
        """True when an account has this phone."""
        rows = await self._reader.execute_fetchall("SELECT 1 FROM users WHERE phone = ?", (phone,))
        return bool(rows)

    async def set_password(self, phone: str, password_hash: bytes) -> bool:
        """Replace a password and end every session of that account; False for an unknown phone."""
        async def op(db: aiosqlite.Connection) -> bool:
            cur = await db.execute("UPDATE users SET password_hash = ? WHERE phone = ?",
                                   (password_hash, phone))
            await db.execute("DELETE FROM sessions WHERE phone = ?", (phone,))
            return cur.rowcount == 1
        return await self._write(op)

    async def delete_user(self, phone: str) -> bool:
        """Delete an account with its sessions, dialogues and stored messages; False if unknown."""
        async def op(db: aiosqlite.Connection) -> bool:
            cur = await db.execute("DELETE FROM users WHERE phone = ?", (phone,))
            return cur.rowcount == 1
        return await self._write(op, deletes=True)

    async def add_session(self, sid_hash: str, phone: str) -> None:
        """Record a login (SPEC 4: the cookie names a session the server records)."""
        async def op(db: aiosqlite.Connection) -> None:
            await db.execute("INSERT INTO sessions (sid_hash, phone, created_us) VALUES (?, ?, ?)",
                             (sid_hash, phone, now_micros()))
        await self._write(op)

    async def delete_session(self, sid_hash: str) -> None:
        """Forget a login, so that a replayed cookie is refused."""
        async def op(db: aiosqlite.Connection) -> None:
            await db.execute("DELETE FROM sessions WHERE sid_hash = ?", (sid_hash,))
        await self._write(op)

    async def session_user(self, sid_hash: str, max_age_seconds: int) -> str | None:
        """The phone logged in under this session, or None when unknown or older than max_age."""
        rows = await self._reader.execute_fetchall(
            "SELECT phone FROM sessions WHERE sid_hash = ? AND created_us > ?",
            (sid_hash, now_micros() - max_age_seconds * 1_000_000))
        return rows[0][0] if rows else None

    # -- dialogues ----------------------------------------------------------------------------

    async def open_dialogue(self, a: str, b: str) -> None:
        """Record a dialogue between a and b (both directions); idempotent."""
        async def op(db: aiosqlite.Connection) -> None:
            await db.executemany(
                "INSERT INTO dialogues (msg_from, msg_to) VALUES (?, ?) ON CONFLICT DO NOTHING",
                [(a, b), (b, a)])
        await self._write(op)

    async def dialogues_of(self, phone: str) -> list[str]:
        """The phones `phone` has a dialogue with, sorted."""
        rows = await self._reader.execute_fetchall(
            "SELECT msg_to FROM dialogues WHERE msg_from = ?"
            " UNION SELECT msg_from FROM dialogues WHERE msg_to = ? ORDER BY 1", (phone, phone))
        return [r[0] for r in rows]

    async def dialogue_side(self, msg_from: str, msg_to: str) -> DialogueSide:
        """What msg_to has received and seen of msg_from's messages, and how many still wait."""
        rows = await self._reader.execute_fetchall(
            "SELECT (SELECT last_received_receiver FROM dialogues WHERE msg_from = ?1 AND msg_to = ?2),"
            " (SELECT last_seen_receiver FROM dialogues WHERE msg_from = ?1 AND msg_to = ?2),"
            " (SELECT count(*) FROM personal_messages WHERE msg_from = ?1 AND msg_to = ?2)",
            (msg_from, msg_to))
        return DialogueSide(*rows[0])

    # -- personal messages (group commit) -----------------------------------------------------

    async def add_personal(self, msg_from: str, msg_to: str, sent_us: int, sent_timestamp: str,
                           message: str) -> bool:
        """Store a message durably; returns after COMMIT. False when the same identity
        (msg_from, msg_to, sent_us) is already stored: a retry, not stored twice (SPEC 5.1).
        The dialogue rows are created by a trigger (schema.sql)."""
        return await self._submit(
            _add_personal_many, [msg_from, msg_to, sent_us, sent_timestamp, message])

    async def ack_personal(self, msg_from: str, msg_to: str, sent_us: int, received_at: str) -> bool:
        """msg_to acknowledges msg_from's message `sent_us` (SPEC 5.1 `msg_received`): delete it and
        set last_received_receiver of msg_from -> msg_to. False when no such message is stored."""
        return await self._submit(
            _ack_personal_many, [msg_from, msg_to, sent_us, received_at], deletes=True)

    async def read_personal(self, msg_from: str, msg_to: str, seen_at: str) -> None:
        """msg_to has seen msg_from's messages (SPEC 5.1 `msg_read`): set last_seen_receiver."""
        await self._submit(_read_personal_many, [msg_from, msg_to, seen_at])

    async def pending_for(self, msg_to: str) -> list[StoredMessage]:
        """Personal messages stored for msg_to, in the order the server accepted them (SPEC 5.2)."""
        rows = await self._reader.execute_fetchall(
            "SELECT msg_from, msg_to, message, sent_us FROM personal_messages"
            " WHERE msg_to = ? ORDER BY id", (msg_to,))
        return [StoredMessage(*r) for r in rows]
