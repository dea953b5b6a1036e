"""The SQLite store: the only module with SQL in it.

Two aiosqlite connections to one WAL-mode file: a writer, fed by one task that batches every write
queued so far into a single `BEGIN IMMEDIATE ... COMMIT` (group commit: one fsync serves every
message in the batch, and no caller's future resolves before the commit that holds its row), and a
query-only reader, which in WAL mode sees only committed data and never waits for the writer.
Each public method is one unit of work named for what it means; none returns a cursor.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final

import aiosqlite
import orjson

from .protocol import now_micros

log = logging.getLogger(__name__)

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schema.sql"
Op = Callable[[aiosqlite.Connection], Awaitable[Any]]
# Runs one kind of write for a list of argument tuples in the open transaction and returns one
# result per tuple. The per-message kinds do it in one SQL statement whatever the list's length.
Runner = Callable[[aiosqlite.Connection, list[Any]], Awaitable[list[Any]]]


class StoreClosed(RuntimeError):
    """A write was submitted after `Store.close()` began."""


class StoreError(Exception):
    """The database refused or failed an operation; a failed write committed nothing.

    PgStore (pgstore.py) raises it, with the driver's error as `__cause__`; this SQLite Store
    raises sqlite3.Error as it always has. Callers catch both as DATABASE_ERRORS.
    """


class IntegrityError(StoreError):
    """A constraint refused a write, e.g. a foreign key: a phone that has no account."""


class NotMember(IntegrityError, sqlite3.IntegrityError):
    """A group write by someone who is not (or no longer) a participant of the group."""


# What a caller catches for "the store failed; nothing was committed, the client may retry",
# whichever store it has: then it need not import sqlite3 or asyncpg.
DATABASE_ERRORS: Final = (sqlite3.Error, StoreError)
# A write refused by a constraint, from either store.
INTEGRITY_ERRORS: Final = (sqlite3.IntegrityError, IntegrityError)


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


@dataclass(frozen=True, slots=True)
class Group:
    """A group as SPEC 4 shows it: participants and admins are sorted phones."""

    key: str
    name: str
    participants: list[str]
    admins: list[str]


@dataclass(frozen=True, slots=True)
class GroupMessage:
    """A group message still pending for someone (SPEC 5.2 `fetch_grp_msgs`)."""

    grp: str
    msg_from: str
    message: str
    sent_us: int
    pending: list[str]


@dataclass(frozen=True, slots=True)
class Room:
    name: str
    created_by: str | None
    password_hash: bytes | None

    @property
    def private(self) -> bool:
        return self.password_hash is not None


@dataclass(frozen=True, slots=True)
class RoomMessage:
    id: int  # the room's order
    msg_from: str
    message: str
    sent_us: int


@dataclass(frozen=True, slots=True)
class Contact:
    phone: str
    name: str
    last_seen_us: int | None


@dataclass(slots=True)
class QueuedWrite:
    run: Runner
    args: Any
    future: asyncio.Future[Any]
    deletes: bool  # leaves freed bodies behind: the WAL must be scrubbed (SPEC 6)


def _rows_json(rows: list[Any]) -> str:
    # One JSON array carries a whole batch into one statement (json_each) instead of one
    # round trip to the database thread per message.
    return orjson.dumps(rows).decode()


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


_INSERT_GROUP: Final = """
    INSERT INTO group_messages (grp, msg_from, sent_us, sent_timestamp, message)
    SELECT value->>0, value->>1, value->>2, value->>3, value->>4 FROM json_each(?1)
    WHERE EXISTS (SELECT 1 FROM group_members WHERE grp = value->>0 AND phone = value->>1)
    ON CONFLICT DO NOTHING
    RETURNING id, grp, msg_from, sent_us"""
# The pending list is made here rather than by a trigger, so that RETURNING hands it back in the
# same statement (one pass over the new rows instead of an INSERT and a SELECT).
_INSERT_PENDING: Final = """
    INSERT INTO group_pending (phone, message_id)
    SELECT m.phone, g.id FROM json_each(?1) AS j
    JOIN group_messages AS g ON g.id = j.value
    JOIN group_members AS m ON m.grp = g.grp AND m.phone <> g.msg_from
    RETURNING message_id, phone"""
_DELETE_UNADDRESSED: Final = "DELETE FROM group_messages WHERE id IN (SELECT value FROM json_each(?1))"
_IS_MEMBER: Final = "SELECT 1 FROM group_members WHERE grp = ? AND phone = ?"


async def _add_group_many(db: aiosqlite.Connection, rows: list[Any]) -> list[list[str] | None]:
    """Insert [grp, msg_from, sent_us, sent_timestamp, message] rows. For each row: the phones it
    is pending for (stored; may be empty in a group of one), or None for a repeated identity.
    Raises NotMember (failing only that write) when msg_from is not in the group."""
    inserted = await db.execute_fetchall(_INSERT_GROUP, (_rows_json(rows),))
    ids = {(r[1], r[2], r[3]): r[0] for r in inserted}
    pending: dict[int, list[str]] = {i: [] for i in ids.values()}
    if ids:
        for message_id, phone in await db.execute_fetchall(
                _INSERT_PENDING, (_rows_json(list(ids.values())),)):
            pending[message_id].append(phone)
        unaddressed = [i for i, phones in pending.items() if not phones]
        if unaddressed:  # a group of one: nobody to deliver to, nothing to keep
            await db.execute(_DELETE_UNADDRESSED, (_rows_json(unaddressed),))
    results: list[list[str] | None] = []
    for row in rows:
        message_id = ids.pop((row[0], row[1], row[2]), None)
        if message_id is not None:
            results.append(pending[message_id])
        elif not await db.execute_fetchall(_IS_MEMBER, (row[0], row[1])):
            # In a batch of several, _commit then runs every write alone: only this one fails.
            raise NotMember(f"{row[1]} is not a participant of {row[0]}")
        else:
            results.append(None)
    return results


_GROUP_IDS: Final = """
    SELECT j.key, m.id FROM json_each(?1) AS j JOIN group_messages AS m
    ON m.grp = j.value->>0 AND m.msg_from = j.value->>1 AND m.sent_us = j.value->>2"""
_DELETE_PENDING: Final = """
    DELETE FROM group_pending WHERE (phone, message_id) IN
        (SELECT value->>0, value->>1 FROM json_each(?1))
    RETURNING phone, message_id"""


async def _ack_group_many(db: aiosqlite.Connection, rows: list[Any]) -> list[bool]:
    """Remove [grp, msg_from, sent_us, phone] from pending lists (the last one deletes the message,
    by trigger); True for each row that was pending."""
    ids = dict(await db.execute_fetchall(_GROUP_IDS, (_rows_json(rows),)))
    wanted = [[row[3], ids[i]] for i, row in enumerate(rows) if i in ids]
    removed = set()
    if wanted:
        removed = {tuple(r) for r in await db.execute_fetchall(_DELETE_PENDING, (_rows_json(wanted),))}
    results = []
    for i, row in enumerate(rows):
        key = (row[3], ids.get(i))
        results.append(key in removed)
        removed.discard(key)
    return results


_SET_GROUP_READ: Final = """
    UPDATE group_members SET last_read = max(coalesce(last_read, ''), j.value->>2)
    FROM json_each(?1) AS j WHERE grp = j.value->>0 AND phone = j.value->>1"""


async def _read_group_many(db: aiosqlite.Connection, rows: list[Any]) -> list[None]:
    """Move the read position of [grp, phone, read_up_to] forward (never back)."""
    await db.execute(_SET_GROUP_READ, (_rows_json(rows),))
    return [None] * len(rows)


_INSERT_ROOM: Final = """
    INSERT INTO room_messages (room, msg_from, sent_us, sent_timestamp, message)
    SELECT value->>0, value->>1, value->>2, value->>3, value->>4 FROM json_each(?1) WHERE true
    ON CONFLICT DO NOTHING
    RETURNING room, msg_from, sent_us, id"""
_TRIM_ROOMS: Final = """
    DELETE FROM room_messages WHERE id IN (
        SELECT id FROM (SELECT id, row_number() OVER (PARTITION BY room ORDER BY id DESC) AS n
                        FROM room_messages WHERE room IN (SELECT value FROM json_each(?1)))
        WHERE n > ?2)"""


async def _add_room_many(db: aiosqlite.Connection, rows: list[Any]) -> list[int | None]:
    """Append [room, msg_from, sent_us, sent_timestamp, message, keep] rows to room histories and
    drop what falls beyond `keep`; for each row its id (the room's order), or None for a
    repeated identity."""
    inserted = {(r[0], r[1], r[2]): r[3] for r in await db.execute_fetchall(
        _INSERT_ROOM, (_rows_json([row[:5] for row in rows]),))}
    rooms = sorted({row[0] for row in rows})
    await db.execute(_TRIM_ROOMS, (_rows_json(rooms), rows[0][5]))
    return [inserted.pop((row[0], row[1], row[2]), None) for row in rows]


def backup(source: str | Path, target: str | Path) -> None:
    """Copy the database at `source` into a new file `target` with SQLite's online backup API.

    Safe while the server runs: it reads a consistent snapshot (WAL readers never block the
    writer). Raises FileExistsError when `target` exists, FileNotFoundError when `source` does
    not, sqlite3.Error when the copy fails (then no partial `target` is left).
    """
    target = Path(target)
    if not Path(source).is_file():
        raise FileNotFoundError(f"no database at {source}")
    if target.exists():
        raise FileExistsError(f"{target} exists; choose a new file")
    src = sqlite3.connect(f"file:{Path(source).resolve()}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            dst.close()
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    finally:
        src.close()


@dataclass(frozen=True, slots=True)
class Runners:
    """A store's batch runners, one per kind of write: each runs its argument lists in the open
    transaction and returns one result per list (chatserver/store.py, chatserver/pgstore.py)."""

    add_personal: Runner
    ack_personal: Runner
    read_personal: Runner
    add_group: Runner
    ack_group: Runner
    read_group: Runner
    add_room: Runner
    call_ops: Runner  # the rare writes: one small coroutine each


class GroupCommitStore:
    """What the SQLite store and the PostgreSQL store share: the queue of writes for the next
    batch (group commit), the writes of SPEC 5 put on it, and the blocks mirrored in memory.

    A subclass sets RUNNERS and, in its __init__, `_queue`, `_wakeup`, `_closing`, `_rooms_keep`
    and `_blocks`; its writer task takes everything queued while a commit is in flight as the
    next batch and resolves each future after the COMMIT that holds its row, in submission order.
    """

    RUNNERS: ClassVar[Runners]
    _queue: list[QueuedWrite]
    _wakeup: asyncio.Event
    _closing: bool
    _rooms_keep: int
    _blocks: set[tuple[str, str]]  # (blocker, blocked) pairs
    _scrub_at: float | None  # loop time of the next scrub
    _scrub_waiters: list[asyncio.Future[None]]  # `scrub` callers, answered after the next one
    _scrub_wakeup: asyncio.Event  # wakes the task that scrubs

    def _submit(self, run: Runner, args: Any, *, deletes: bool = False) -> asyncio.Future[Any]:
        """Queue one write for the next batch; the future resolves after its COMMIT.

        Raises StoreClosed once `close()` has begun."""
        if self._closing:
            raise StoreClosed("the store is closing")
        future = asyncio.get_running_loop().create_future()
        self._queue.append(QueuedWrite(run, args, future, deletes))
        self._wakeup.set()
        return future

    async def _write(self, op: Op, *, deletes: bool = False) -> Any:
        """Run a rare write (one small coroutine taking the writer connection) in the next batch."""
        return await self._submit(self.RUNNERS.call_ops, op, deletes=deletes)

    def add_personal(self, msg_from: str, msg_to: str, sent_us: int, sent_timestamp: str,
                     message: str) -> asyncio.Future[bool]:
        """Store a message durably; the future resolves after COMMIT. False when the same identity
        (msg_from, msg_to, sent_us) is already stored: a retry, not stored twice (SPEC 5.1).
        The dialogue rows are created by a trigger (schema.sql, schema-postgres.sql). Fails with
        the database's integrity error for a phone that has no account."""
        return self._submit(
            self.RUNNERS.add_personal, [msg_from, msg_to, sent_us, sent_timestamp, message])

    def ack_personal(self, msg_from: str, msg_to: str, sent_us: int,
                     received_at: str) -> asyncio.Future[bool]:
        """msg_to acknowledges msg_from's message `sent_us` (SPEC 5.1 `msg_received`): delete it and
        set last_received_receiver of msg_from -> msg_to. False when no such message is stored."""
        return self._submit(
            self.RUNNERS.ack_personal, [msg_from, msg_to, sent_us, received_at], deletes=True)

    def read_personal(self, msg_from: str, msg_to: str, seen_at: str) -> asyncio.Future[None]:
        """msg_to has seen msg_from's messages (SPEC 5.1 `msg_read`): set last_seen_receiver."""
        return self._submit(self.RUNNERS.read_personal, [msg_from, msg_to, seen_at])

    def add_group_message(self, grp: str, msg_from: str, sent_us: int, sent_timestamp: str,
                          message: str) -> asyncio.Future[list[str] | None]:
        """Store a group message durably, pending for every other participant (SPEC 5.3).

        Resolves after COMMIT to the phones it is pending for, or None for a retry of a message
        still stored; fails with NotMember when msg_from is not a participant.
        """
        return self._submit(
            self.RUNNERS.add_group, [grp, msg_from, sent_us, sent_timestamp, message])

    def ack_group(self, grp: str, msg_from: str, sent_us: int, phone: str) -> asyncio.Future[bool]:
        """`phone` acknowledges msg_from's message in grp: remove it from the pending list (the
        last acknowledgement deletes the message). False when it was not pending for `phone`."""
        return self._submit(self.RUNNERS.ack_group, [grp, msg_from, sent_us, phone], deletes=True)

    def read_group(self, grp: str, phone: str, up_to: str) -> asyncio.Future[None]:
        """Move `phone`'s read position in grp forward to `up_to` (server format)."""
        return self._submit(self.RUNNERS.read_group, [grp, phone, up_to])

    def add_room_message(self, room: str, msg_from: str, sent_us: int, sent_timestamp: str,
                         message: str) -> asyncio.Future[int | None]:
        """Append to a room's history (keeping the latest `rooms_keep`); resolves to the
        message's id, or None for a retry. On PostgreSQL the ids come from one sequence shared by
        every process: they increase in each process's commit order."""
        return self._submit(
            self.RUNNERS.add_room,
            [room, msg_from, sent_us, sent_timestamp, message, self._rooms_keep], deletes=True)

    async def scrub(self) -> None:
        """Make deleted bodies go now, and return when it is done (SPEC 6). SQLite: checkpoint
        and truncate the WAL, so that they are gone from every file. PostgreSQL: VACUUM the
        message tables (pgstore.py's docstring says what that does and does not remove).

        The store does this by itself within `scrub_seconds` of a delete. Raises StoreClosed once
        close() has begun.
        """
        if self._closing:
            raise StoreClosed("the store is closing")
        waiter = asyncio.get_running_loop().create_future()
        self._scrub_waiters.append(waiter)
        self._scrub_at = asyncio.get_running_loop().time()
        self._scrub_wakeup.set()
        await waiter

    def is_blocked(self, blocker: str, blocked: str) -> bool:
        """True when `blocker` has blocked `blocked` (from memory: checked on every message; on
        PostgreSQL kept up to date across processes by the blocks' notifications)."""
        return (blocker, blocked) in self._blocks


class Store(GroupCommitStore):
    """All persistent state. Open with `await Store.open(...)`, close with `await store.close()`."""

    RUNNERS = Runners(_add_personal_many, _ack_personal_many, _read_personal_many,
                      _add_group_many, _ack_group_many, _read_group_many, _add_room_many,
                      _call_ops)

    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection,
                 scrub_seconds: float, rooms_keep: int, blocks: set[tuple[str, str]]) -> None:
        self._writer = writer
        self._reader = reader
        self._scrub_seconds = scrub_seconds
        self._rooms_keep = rooms_keep
        # (blocker, blocked) pairs, mirrored in memory: every new_msg is checked against them.
        self._blocks = blocks
        self._queue: list[QueuedWrite] = []
        self._wakeup = asyncio.Event()
        self._closing = False
        self._scrub_at: float | None = None  # loop time when the WAL must next be truncated
        self._scrub_waiters: list[asyncio.Future[None]] = []
        self._scrub_wakeup = self._wakeup  # the writer task scrubs, between batches
        self._task = asyncio.create_task(self._write_loop(), name="store-writer")

    @classmethod
    async def open(cls, path: str | Path, *, synchronous: str = "FULL",
                   scrub_seconds: float = 5.0, rooms_keep: int = 1000) -> Store:
        """Open (creating if needed) the database at `path`, apply schema.sql, check integrity.

        Raises CorruptDatabase when `PRAGMA quick_check` does not answer "ok".
        """
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; we write BEGIN/COMMIT ourselves.
        writer = await aiosqlite.connect(path, isolation_level=None)
        try:
            try:
                await cls._prepare(writer, synchronous)
                rows = await writer.execute_fetchall("PRAGMA quick_check")
            except sqlite3.DatabaseError as e:
                # Not a database at all, or a damaged page; a locked file is not called corrupt.
                if e.sqlite_errorcode not in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
                    raise
                raise CorruptDatabase(f"{path} is not a usable SQLite database: {e}") from None
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
        blocks = {(r[0], r[1]) for r in await reader.execute_fetchall("SELECT blocker, blocked FROM blocks")}
        return cls(writer, reader, scrub_seconds, rooms_keep, blocks)

    @staticmethod
    async def _prepare(writer: aiosqlite.Connection, synchronous: str) -> None:
        """The writer's pragmas, each for a reason."""
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

    async def _commit(self, batch: list[QueuedWrite]) -> None:
        """Run `batch` in one transaction, one statement per kind of write.

        When a statement fails, the batch is rolled back and run again with every write on its
        own statement, so that only the write at fault fails and the others are committed.
        """
        db = self._writer
        alone = False
        while batch:
            groups: dict[Runner, list[QueuedWrite]] = {}
            for write in batch:
                groups.setdefault(write.run, []).append(write)
            steps = ([(w.run, [w]) for w in batch] if alone else list(groups.items()))
            results: dict[int, Any] = {}  # id(write) -> result
            failed: tuple[list[QueuedWrite], sqlite3.Error] | None = None
            try:
                await db.execute("BEGIN IMMEDIATE")
                for run, writes in steps:
                    try:
                        outcome = await run(db, [w.args for w in writes])
                    except sqlite3.Error as e:  # these writes' fault, not the transaction's
                        failed = (writes, e)
                        break
                    results.update(zip(map(id, writes), outcome, strict=True))
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
                # In submission order: a socket's callbacks then run in the order of its frames.
                for write in batch:
                    if not write.future.done():  # the caller may have been cancelled
                        write.future.set_result(results[id(write)])
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

    async def pending_for(self, msg_to: str) -> list[StoredMessage]:
        """Personal messages stored for msg_to, in the order the server accepted them (SPEC 5.2)."""
        rows = await self._reader.execute_fetchall(
            "SELECT msg_from, msg_to, message, sent_us FROM personal_messages"
            " WHERE msg_to = ? ORDER BY id", (msg_to,))
        return [StoredMessage(*r) for r in rows]

    # -- groups (SPEC 4, 5.3) -----------------------------------------------------------------

    async def create_group(self, key: str, name: str, creator: str, participants: list[str]) -> bool:
        """Create a group with `creator` as participant and admin; False when the key is taken."""
        async def op(db: aiosqlite.Connection) -> bool:
            now = now_micros()
            cur = await db.execute(
                "INSERT INTO groups (key, name, created_us) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (key, name, now))
            if cur.rowcount != 1:
                return False
            await db.executemany(
                "INSERT INTO group_members (grp, phone, is_admin, joined_us) VALUES (?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                [(key, creator, 1, now)] + [(key, p, 0, now) for p in participants if p != creator])
            return True
        return await self._write(op)

    async def group(self, key: str) -> Group | None:
        """The group with this key, or None."""
        rows = await self._reader.execute_fetchall(
            "SELECT g.name, m.phone, m.is_admin FROM groups AS g"
            " JOIN group_members AS m ON m.grp = g.key WHERE g.key = ? ORDER BY m.phone", (key,))
        if not rows:
            return None
        return Group(key, rows[0][0], [r[1] for r in rows], [r[1] for r in rows if r[2]])

    async def groups_of(self, phone: str) -> list[tuple[str, str]]:
        """(key, name) of every group `phone` is in, by name."""
        rows = await self._reader.execute_fetchall(
            "SELECT g.key, g.name FROM group_members AS m JOIN groups AS g ON g.key = m.grp"
            " WHERE m.phone = ? ORDER BY g.name, g.key", (phone,))
        return [(r[0], r[1]) for r in rows]

    async def is_member(self, key: str, phone: str) -> bool:
        """True when `phone` is a participant of group `key`."""
        return bool(await self._reader.execute_fetchall(_IS_MEMBER, (key, phone)))

    async def update_group(self, key: str, *, name: str | None = None, add: list[str] = (),  # type: ignore[assignment]
                           remove: list[str] = (), admins: list[str] = ()) -> None:  # type: ignore[assignment]
        """Rename, add and remove participants, grant admin, in one transaction (SPEC 4 PATCH).

        Removing drops the member from every pending list of the group (messages left with no one
        pending are deleted, by trigger). When the last admin leaves, the longest-standing
        remaining member becomes admin; when the last member leaves, the group is deleted.
        """
        async def op(db: aiosqlite.Connection) -> None:
            now = now_micros()
            if name is not None:
                await db.execute("UPDATE groups SET name = ? WHERE key = ?", (name, key))
            await db.executemany(
                "INSERT INTO group_members (grp, phone, is_admin, joined_us) VALUES (?, ?, 0, ?)"
                " ON CONFLICT DO NOTHING", [(key, p, now) for p in add])
            await db.executemany("DELETE FROM group_members WHERE grp = ? AND phone = ?",
                                 [(key, p) for p in remove])
            await db.executemany("UPDATE group_members SET is_admin = 1 WHERE grp = ? AND phone = ?",
                                 [(key, p) for p in admins])
            await db.execute(
                "UPDATE group_members SET is_admin = 1 WHERE grp = ?1 AND phone = ("
                " SELECT phone FROM group_members WHERE grp = ?1 ORDER BY joined_us, phone LIMIT 1)"
                " AND NOT EXISTS (SELECT 1 FROM group_members WHERE grp = ?1 AND is_admin)", (key,))
            await db.execute(
                "DELETE FROM groups WHERE key = ?1"
                " AND NOT EXISTS (SELECT 1 FROM group_members WHERE grp = ?1)", (key,))
        await self._write(op, deletes=bool(remove))

    async def members(self, key: str) -> list[tuple[str, str, str | None]]:
        """(phone, name, read position) of each participant, by phone; the read position is the
        server time of the last message read, or None."""
        rows = await self._reader.execute_fetchall(
            "SELECT m.phone, u.name, m.last_read FROM group_members AS m"
            " JOIN users AS u ON u.phone = m.phone WHERE m.grp = ? ORDER BY m.phone", (key,))
        return [(r[0], r[1], r[2]) for r in rows]

    async def pending_group_for(self, phone: str) -> list[GroupMessage]:
        """Group messages still pending for `phone`, oldest first, each with its pending list."""
        rows = await self._reader.execute_fetchall(
            "SELECT m.grp, m.msg_from, m.message, m.sent_us,"
            " (SELECT json_group_array(phone) FROM (SELECT phone FROM group_pending AS q"
            "  WHERE q.message_id = m.id ORDER BY phone))"
            " FROM group_pending AS p JOIN group_messages AS m ON m.id = p.message_id"
            " WHERE p.phone = ? ORDER BY m.id", (phone,))
        return [GroupMessage(r[0], r[1], r[2], r[3], orjson.loads(r[4])) for r in rows]

    # -- rooms (SPEC 5.4) ---------------------------------------------------------------------

    async def create_room(self, name: str, created_by: str, password_hash: bytes | None) -> bool:
        """Create a room (private when it has a password hash); False when the name is taken."""
        async def op(db: aiosqlite.Connection) -> bool:
            cur = await db.execute(
                "INSERT INTO rooms (name, created_by, password_hash, created_us) VALUES (?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING", (name, created_by, password_hash, now_micros()))
            return cur.rowcount == 1
        return await self._write(op)

    async def room(self, name: str) -> Room | None:
        """The room with this name, or None."""
        rows = await self._reader.execute_fetchall(
            "SELECT name, created_by, password_hash FROM rooms WHERE name = ?", (name,))
        if not rows:
            return None
        r = rows[0]
        return Room(r[0], r[1], bytes(r[2]) if r[2] is not None else None)

    async def rooms(self) -> list[Room]:
        """Every room, by name."""
        rows = await self._reader.execute_fetchall(
            "SELECT name, created_by, password_hash FROM rooms ORDER BY name")
        return [Room(r[0], r[1], bytes(r[2]) if r[2] is not None else None) for r in rows]

    async def room_history(self, room: str, limit: int) -> list[RoomMessage]:
        """The latest `limit` messages of a room, oldest first."""
        rows = await self._reader.execute_fetchall(
            "SELECT id, msg_from, message, sent_us FROM (SELECT id, msg_from, message, sent_us"
            " FROM room_messages WHERE room = ? ORDER BY id DESC LIMIT ?) ORDER BY id",
            (room, limit))
        return [RoomMessage(*r) for r in rows]

    async def grant_room(self, sid_hash: str, room: str) -> None:
        """Remember that a login session gave a private room's password."""
        async def op(db: aiosqlite.Connection) -> None:
            await db.execute("INSERT INTO session_rooms (sid_hash, room) VALUES (?, ?)"
                             " ON CONFLICT DO NOTHING", (sid_hash, room))
        await self._write(op)

    async def room_granted(self, sid_hash: str, room: str) -> bool:
        """True when this login session has given the room's password."""
        return bool(await self._reader.execute_fetchall(
            "SELECT 1 FROM session_rooms WHERE sid_hash = ? AND room = ?", (sid_hash, room)))

    # -- contacts, blocks, presence -----------------------------------------------------------

    async def set_contact(self, owner: str, phone: str, name: str) -> None:
        """Add `phone` to owner's contacts under `name`, or rename it."""
        async def op(db: aiosqlite.Connection) -> None:
            await db.execute(
                "INSERT INTO contacts (owner, phone, name) VALUES (?, ?, ?)"
                " ON CONFLICT DO UPDATE SET name = excluded.name", (owner, phone, name))
        await self._write(op)

    async def remove_contact(self, owner: str, phone: str) -> bool:
        """Remove a contact; False when it was not there."""
        async def op(db: aiosqlite.Connection) -> bool:
            cur = await db.execute("DELETE FROM contacts WHERE owner = ? AND phone = ?", (owner, phone))
            return cur.rowcount == 1
        return await self._write(op)

    async def contacts_of(self, owner: str) -> list[Contact]:
        """Owner's contacts by name, with when each was last seen online (microseconds) or None."""
        rows = await self._reader.execute_fetchall(
            "SELECT c.phone, c.name, u.last_seen_us FROM contacts AS c JOIN users AS u"
            " ON u.phone = c.phone WHERE c.owner = ? ORDER BY c.name, c.phone", (owner,))
        return [Contact(*r) for r in rows]

    async def watchers_of(self, phone: str) -> list[str]:
        """Who is told of `phone`'s presence: its contacts and those who have it as a contact,
        except anyone `phone` has blocked."""
        rows = await self._reader.execute_fetchall(
            "SELECT phone FROM contacts WHERE owner = ?1 UNION SELECT owner FROM contacts WHERE phone = ?1"
            " EXCEPT SELECT blocked FROM blocks WHERE blocker = ?1", (phone,))
        return [r[0] for r in rows]

    async def set_last_seen(self, phone: str, us: int) -> None:
        """Record when `phone` was last online."""
        async def op(db: aiosqlite.Connection) -> None:
            await db.execute("UPDATE users SET last_seen_us = ? WHERE phone = ?", (us, phone))
        await self._write(op)

    async def block(self, blocker: str, blocked: str) -> None:
        """`blocker` no longer accepts messages, typing or new groups from `blocked`."""
        async def op(db: aiosqlite.Connection) -> None:
            await db.execute("INSERT INTO blocks (blocker, blocked) VALUES (?, ?)"
                             " ON CONFLICT DO NOTHING", (blocker, blocked))
        await self._write(op)
        self._blocks.add((blocker, blocked))

    async def unblock(self, blocker: str, blocked: str) -> bool:
        """Lift a block; False when there was none."""
        async def op(db: aiosqlite.Connection) -> bool:
            cur = await db.execute("DELETE FROM blocks WHERE blocker = ? AND blocked = ?",
                                   (blocker, blocked))
            return cur.rowcount == 1
        done = await self._write(op)
        self._blocks.discard((blocker, blocked))
        return done

    async def blocked_by(self, blocker: str) -> list[str]:
        """The phones `blocker` has blocked, sorted."""
        rows = await self._reader.execute_fetchall(
            "SELECT blocked FROM blocks WHERE blocker = ? ORDER BY blocked", (blocker,))
        return [r[0] for r in rows]
