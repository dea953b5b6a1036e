"""The PostgreSQL store: the same methods, results and errors as `store.Store`, for several server
processes (on one host or many) sharing one database (README "Scaling out").

Connections, all made from the one URL (`[database] url`; query parameters asyncpg does not know,
such as `search_path`, go to the server as settings, and the tables live in the first schema of
that search_path):

- one writer connection, fed by one task: every write queued while a commit is in flight forms
  the next batch, run in one transaction with one SQL statement per kind of write (arrays in,
  `unnest(...) WITH ORDINALITY` to keep their order, RETURNING to hand each row's outcome back);
  no caller's future resolves before the COMMIT that holds its row, and futures resolve in
  submission order. A statement that fails rolls the batch back and it is run again one write at
  a time, so that only the write at fault fails (as `Store._commit` does). A deadlock or
  serialization failure with another process's transaction is nobody's fault: the batch is run
  again as it was. The writer commits with `synchronous_commit` on (turned on for its session if
  the server's default is off): an acknowledged message is on disk.
- a small pool for reads: READ COMMITTED, so a read sees what any process has committed.
- a listener connection for the blocks: `is_blocked` is synchronous and asked on every message,
  so each process keeps the blocks in memory. A trigger on `blocks` (schema-postgres.sql) calls
  `pg_notify` inside every transaction that changes them, also a deluser's cascade, and every
  process applies what it hears. The listener LISTENs before it reads the table, so that no
  change committed in between is missed; when its connection drops, it reconnects and reads the
  table again. Nothing else is kept in memory: any process answers from the database.

Deletion (SPEC 6) on PostgreSQL. An acknowledged message is deleted for real in the commit of its
last acknowledgement (statements and triggers as in schema.sql): no query, process, replica or
`pg_dump` made afterwards can read it. But PostgreSQL has nothing like SQLite's secure_delete,
and the bytes of the body are not overwritten when the row is deleted:

- the deleted row stays in the table's file as a dead tuple until VACUUM removes it; VACUUM only
  marks the space free (it does not zero it), and the bytes are gone when a later row is written
  over them, which may be soon on a busy server or never on a quiet one;
- the write-ahead log holds the row as it was inserted until the segment is recycled or removed
  after a checkpoint, and forever in a WAL archive, a base backup or a replica's copy of them.

`scrub()`, and the writer's own scrub within `scrub_seconds` of a delete, run VACUUM on the
message tables (and so on their TOAST tables), on a pool connection since VACUUM cannot run in a
transaction block: dead message tuples become free space at once instead of when autovacuum gets
there. That is the closest PostgreSQL comes; it does not meet "its body cannot be read back from
the database file nor from its write-ahead log". Where that matters, keep the data directory, the
WAL and any archive or backup on full-disk (or filesystem) encryption, or use the SQLite store.
There is no `backup`: copy a PostgreSQL database with `pg_dump` (`run.py backup` refuses a
`[database] url`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Final

import asyncpg

from .protocol import now_micros
from .store import (
    Contact,
    GroupCommitStore,
    QueuedWrite,
    Runners,
    DialogueSide,
    Group,
    GroupMessage,
    IntegrityError,
    NotMember,
    Room,
    RoomMessage,
    StoreClosed,
    StoredMessage,
    StoreError,
    User,
)

log = logging.getLogger(__name__)

SCHEMA_PATH: Final = Path(__file__).resolve().parent.parent / "schema-postgres.sql"
# Reads are short single queries; a few connections serve a process (each costs a backend).
POOL_SIZE: Final = 4
# A batch that lost a deadlock or a serialization failure to another process is run again up to
# this many times before its writes fail.
MAX_ATTEMPTS: Final = 5
# The tables that hold message bodies: what scrub() vacuums.
MESSAGE_TABLES: Final = "personal_messages, group_messages, room_messages"
# The listener's reconnection delays, seconds: from the first to the longest.
RELISTEN_DELAYS: Final = (0.1, 5.0)
# One lock per schema: processes starting at once apply the schema one after the other.
_SCHEMA_LOCK: Final = ("SELECT pg_advisory_xact_lock("
                       "hashtext('chatserver schema ' || coalesce(current_schema(), '')))")
# The blocks' notification channel of this schema; the trigger blocks_notify() names it alike.
_CHANNEL: Final = "SELECT 'chat_blocks_' || left(md5(current_schema()), 20)"

Conn = asyncpg.Connection
Op = Callable[[Conn], Awaitable[Any]]
# Runs one kind of write for a list of argument lists in the open transaction and returns one
# result per list, in one SQL statement whatever the list's length (the rare writes excepted).
Runner = Callable[[Conn, list[Any]], Awaitable[list[Any]]]
# Errors of the connection rather than of a statement: the batch fails, nothing is committed.
_CONNECTION_ERRORS: Final = (asyncpg.InterfaceError, asyncpg.PostgresConnectionError, OSError,
                             asyncpg.exceptions.OperatorInterventionError)




def _columns(rows: list[Any], n: int) -> list[list[Any]]:
    """The first `n` fields of each row as `n` arrays, one per column (for unnest)."""
    return [[row[i] for row in rows] for i in range(n)]


def _count(status: str) -> int:
    """The row count of a command status such as "INSERT 0 1", "DELETE 3", "UPDATE 0"."""
    return int(status.rsplit(" ", 1)[1])


def _wrap(error: BaseException) -> BaseException:
    """What a caller gets for a failed operation: NotMember and StoreError as they are, the
    driver's errors as IntegrityError (a constraint) or StoreError, with the cause attached."""
    if isinstance(error, (StoreError, StoreClosed)) or not isinstance(error, Exception):
        return error
    constraint = isinstance(error, asyncpg.IntegrityConstraintViolationError)
    wrapped = (IntegrityError if constraint else StoreError)(f"{type(error).__name__}: {error}")
    wrapped.__cause__ = error
    return wrapped


async def _call_ops(db: Conn, ops: list[Op]) -> list[Any]:
    """Runner of the rare writes (accounts, sessions, groups): each is its own small coroutine."""
    return [await op(db) for op in ops]


def _firsts(rows: list[Any], done: Iterable[Any], width: int) -> list[bool]:
    """For each row, True when its key (first `width` fields) is in `done`; a key that occurs
    twice in one batch counts for its first occurrence only (as in store.py)."""
    left = {tuple(k) for k in done}
    results = []
    for row in rows:
        key = tuple(row[:width])
        results.append(key in left)
        left.discard(key)
    return results


_INSERT_PERSONAL: Final = """
    INSERT INTO personal_messages (msg_from, msg_to, sent_us, sent_timestamp, message)
    SELECT msg_from, msg_to, sent_us, sent_timestamp, message
    FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[])
         WITH ORDINALITY AS j(msg_from, msg_to, sent_us, sent_timestamp, message, n)
    ORDER BY n
    ON CONFLICT DO NOTHING
    RETURNING msg_from, msg_to, sent_us"""


async def _add_personal_many(db: Conn, rows: list[Any]) -> list[bool]:
    """Insert [msg_from, msg_to, sent_us, sent_timestamp, message] rows in array order (which is
    the acceptance order, `id`); True for each row stored, False for a repeated identity. The
    dialogues are opened by the table's trigger."""
    return _firsts(rows, await db.fetch(_INSERT_PERSONAL, *_columns(rows, 5)), 3)


# One statement: delete, and move last_received_receiver of each dialogue to the receipt of its
# latest deleted message in the batch. A dialogue may be touched only once by an upsert (DISTINCT
# ON); a message acknowledged twice in one batch counts the first time.
_ACK_PERSONAL: Final = """
    WITH j AS (
        SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[])
                      WITH ORDINALITY AS j(msg_from, msg_to, sent_us, received_at, n)),
    deleted AS (
        DELETE FROM personal_messages AS p USING j
        WHERE p.msg_to = j.msg_to AND p.msg_from = j.msg_from AND p.sent_us = j.sent_us
        RETURNING p.msg_from, p.msg_to, p.sent_us),
    firsts AS (
        SELECT DISTINCT ON (j.msg_from, j.msg_to, j.sent_us) j.*
        FROM deleted JOIN j USING (msg_from, msg_to, sent_us)
        ORDER BY j.msg_from, j.msg_to, j.sent_us, j.n),
    receipts AS (
        INSERT INTO dialogues (msg_from, msg_to, last_received_receiver)
        SELECT DISTINCT ON (msg_from, msg_to) msg_from, msg_to, received_at FROM firsts
        ORDER BY msg_from, msg_to, n DESC
        ON CONFLICT (msg_from, msg_to)
        DO UPDATE SET last_received_receiver = excluded.last_received_receiver)
    SELECT n FROM firsts"""


async def _ack_personal_many(db: Conn, rows: list[Any]) -> list[bool]:
    """Delete acknowledged messages, rows [msg_from, msg_to, sent_us, received_at]; True for each
    row that deleted a message, whose dialogue then gets last_received_receiver = received_at."""
    deleted = {r[0] for r in await db.fetch(_ACK_PERSONAL, *_columns(rows, 4))}
    return [n in deleted for n in range(1, len(rows) + 1)]


_SET_SEEN: Final = """
    INSERT INTO dialogues (msg_from, msg_to, last_seen_receiver)
    SELECT DISTINCT ON (msg_from, msg_to) msg_from, msg_to, seen_at
    FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS j(msg_from, msg_to, seen_at, n)
    ORDER BY msg_from, msg_to, n DESC
    ON CONFLICT (msg_from, msg_to) DO UPDATE SET last_seen_receiver = excluded.last_seen_receiver"""


async def _read_personal_many(db: Conn, rows: list[Any]) -> list[None]:
    """Set last_seen_receiver for rows [msg_from, msg_to, seen_at] (the last one per dialogue wins)."""
    await db.execute(_SET_SEEN, *_columns(rows, 3))
    return [None] * len(rows)


# The message and its pending rows in one statement. The members are locked (FOR KEY SHARE):
# a member removed by another process at the same moment is then either removed before this
# reads the members (and not pending) or after this commits (and dropped from the pending list
# by the trigger group_members_left); without the lock the message could wait for them forever.
_INSERT_GROUP: Final = """
    WITH j AS (
        SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[])
                      WITH ORDINALITY AS j(grp, msg_from, sent_us, sent_timestamp, message, n)),
    inserted AS (
        INSERT INTO group_messages (grp, msg_from, sent_us, sent_timestamp, message)
        SELECT grp, msg_from, sent_us, sent_timestamp, message FROM j
        WHERE EXISTS (SELECT 1 FROM group_members AS s WHERE s.grp = j.grp AND s.phone = j.msg_from)
        ORDER BY n
        ON CONFLICT DO NOTHING
        RETURNING id, grp, msg_from, sent_us),
    pending AS (
        INSERT INTO group_pending (phone, message_id)
        SELECT m.phone, i.id FROM inserted AS i
        JOIN group_members AS m ON m.grp = i.grp AND m.phone <> i.msg_from
        ORDER BY i.id, m.phone
        FOR KEY SHARE OF m
        RETURNING message_id, phone)
    SELECT i.grp, i.msg_from, i.sent_us, i.id,
           coalesce((SELECT array_agg(p.phone ORDER BY p.phone) FROM pending AS p
                     WHERE p.message_id = i.id), '{}')
    FROM inserted AS i"""
_DELETE_UNADDRESSED: Final = "DELETE FROM group_messages WHERE id = ANY($1::bigint[])"
_IS_MEMBER: Final = "SELECT 1 FROM group_members WHERE grp = $1 AND phone = $2"


async def _add_group_many(db: Conn, rows: list[Any]) -> list[list[str] | None]:
    """Insert [grp, msg_from, sent_us, sent_timestamp, message] rows. For each row: the phones it
    is pending for (stored; may be empty in a group of one), or None for a repeated identity.
    Raises NotMember (failing only that write) when msg_from is not in the group."""
    inserted = await db.fetch(_INSERT_GROUP, *_columns(rows, 5))
    stored = {(r[0], r[1], r[2]): list(r[4]) for r in inserted}
    unaddressed = [r[3] for r in inserted if not r[4]]
    if unaddressed:  # a group of one: nobody to deliver to, nothing to keep
        await db.execute(_DELETE_UNADDRESSED, unaddressed)
    results: list[list[str] | None] = []
    for row in rows:
        pending = stored.pop((row[0], row[1], row[2]), None)
        if pending is not None:
            results.append(pending)
        elif await db.fetchval(_IS_MEMBER, row[0], row[1]) is None:
            # In a batch of several, _commit then runs every write alone: only this one fails.
            raise NotMember(f"{row[1]} is not a participant of {row[0]}")
        else:
            results.append(None)
    return results


# The last pending row of a message deletes it (trigger group_pending_last).
_ACK_GROUP: Final = """
    WITH j AS (
        SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[])
                      AS j(grp, msg_from, sent_us, phone))
    DELETE FROM group_pending AS p USING j, group_messages AS m
    WHERE m.grp = j.grp AND m.msg_from = j.msg_from AND m.sent_us = j.sent_us
      AND p.message_id = m.id AND p.phone = j.phone
    RETURNING j.grp, j.msg_from, j.sent_us, j.phone"""


async def _ack_group_many(db: Conn, rows: list[Any]) -> list[bool]:
    """Remove [grp, msg_from, sent_us, phone] from pending lists (the last one deletes the message,
    by trigger); True for each row that was pending."""
    return _firsts(rows, await db.fetch(_ACK_GROUP, *_columns(rows, 4)), 4)


_SET_GROUP_READ: Final = """
    UPDATE group_members AS g SET last_read = greatest(coalesce(g.last_read, ''), j.up_to)
    FROM (SELECT grp, phone, max(up_to COLLATE "C") AS up_to
          FROM unnest($1::text[], $2::text[], $3::text[]) AS u(grp, phone, up_to)
          GROUP BY grp, phone) AS j
    WHERE g.grp = j.grp AND g.phone = j.phone"""


async def _read_group_many(db: Conn, rows: list[Any]) -> list[None]:
    """Move the read position of [grp, phone, read_up_to] forward (never back)."""
    await db.execute(_SET_GROUP_READ, *_columns(rows, 3))
    return [None] * len(rows)


_INSERT_ROOM: Final = """
    INSERT INTO room_messages (room, msg_from, sent_us, sent_timestamp, message)
    SELECT room, msg_from, sent_us, sent_timestamp, message
    FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[])
         WITH ORDINALITY AS j(room, msg_from, sent_us, sent_timestamp, message, n)
    ORDER BY n
    ON CONFLICT DO NOTHING
    RETURNING room, msg_from, sent_us, id"""
# Per room, the id of the newest message beyond `keep` (index room_messages_room), and everything
# up to it goes.
_TRIM_ROOMS: Final = """
    DELETE FROM room_messages AS m USING (
        SELECT r.room, (SELECT id FROM room_messages WHERE room = r.room
                        ORDER BY id DESC OFFSET $2 LIMIT 1) AS cut
        FROM unnest($1::text[]) AS r(room)) AS c
    WHERE m.room = c.room AND m.id <= c.cut"""


async def _add_room_many(db: Conn, rows: list[Any]) -> list[int | None]:
    """Append [room, msg_from, sent_us, sent_timestamp, message, keep] rows to room histories and
    drop what falls beyond `keep`; for each row its id (the room's order), or None for a
    repeated identity."""
    inserted = {(r[0], r[1], r[2]): r[3] for r in await db.fetch(_INSERT_ROOM, *_columns(rows, 5))}
    await db.execute(_TRIM_ROOMS, sorted({row[0] for row in rows}), rows[0][5])
    return [inserted.pop((row[0], row[1], row[2]), None) for row in rows]


def _room(r: Any) -> Room:
    return Room(r[0], r[1], bytes(r[2]) if r[2] is not None else None)


class PgStore(GroupCommitStore):
    """All persistent state, in PostgreSQL. Open with `await PgStore.open(url)`, close with
    `await store.close()`. Every public method is `store.Store`'s, with the same arguments and
    results (read its docstrings); what differs is said here. Errors: where Store raises
    sqlite3.Error this raises store.StoreError (store.IntegrityError for a constraint, such as
    an unknown phone), with asyncpg's error as its cause; NotMember and StoreClosed as Store."""

    RUNNERS = Runners(_add_personal_many, _ack_personal_many, _read_personal_many,
                      _add_group_many, _ack_group_many, _read_group_many, _add_room_many,
                      _call_ops)

    def __init__(self, url: str, writer: Conn, pool: asyncpg.Pool, channel: str,
                 scrub_seconds: float, rooms_keep: int) -> None:
        self._url = url
        self._writer: Conn | None = writer  # None: lost, reconnected before the next batch
        self._pool = pool
        self._channel = channel
        self._scrub_seconds = scrub_seconds
        self._rooms_keep = rooms_keep
        # (blocker, blocked) pairs, mirrored in memory from the table and its notifications.
        self._blocks: set[tuple[str, str]] = set()
        self._listener: Conn | None = None
        self._heard: list[str] | None = None  # notifications held while the table is (re)read
        self._relisten: asyncio.Task[None] | None = None
        # Set (and replaced) whenever a notification has been applied: tests await it.
        self._mirror_updated = asyncio.Event()
        self._queue: list[QueuedWrite] = []
        self._wakeup = asyncio.Event()
        self._closing = False
        self._scrub_at: float | None = None  # loop time when the message tables must be vacuumed
        self._scrub_wakeup = asyncio.Event()
        self._scrub_waiters: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None
        self._scrubber: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str, *, scrub_seconds: float = 5.0, rooms_keep: int = 1000) -> PgStore:
        """Connect to the database at `url`, apply schema-postgres.sql, load the blocks and listen
        for their changes.

        Applying the schema is idempotent and takes an advisory lock per schema, so processes
        starting at once do it one after the other. Raises OSError when
        the server cannot be reached, StoreError when it refuses the connection.
        """
        try:
            writer = await asyncpg.connect(url)
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            # e.g. an unknown role or database: one line for `run.py`, not a traceback
            raise StoreError(f"cannot use the PostgreSQL database: {e}") from e
        pool: asyncpg.Pool | None = None
        try:
            async with writer.transaction():
                await writer.execute(_SCHEMA_LOCK)
                await writer.execute(SCHEMA_PATH.read_text())
            # SPEC 6: an acknowledged message must survive a crash. "off" would acknowledge
            # commits that are not flushed yet; every other setting waits for the local flush.
            if await writer.fetchval("SHOW synchronous_commit") == "off":
                await writer.execute("SET synchronous_commit = on")
            channel = await writer.fetchval(_CHANNEL)
            pool = await asyncpg.create_pool(url, min_size=1, max_size=POOL_SIZE)
            store = cls(url, writer, pool, channel, scrub_seconds, rooms_keep)
            await store._listen()
        except BaseException:
            if pool is not None:
                await pool.close()
            await writer.close()
            raise
        store._task = asyncio.create_task(store._write_loop(), name="pgstore-writer")
        store._scrubber = asyncio.create_task(store._scrub_loop(), name="pgstore-scrubber")
        return store

    async def close(self) -> None:
        """Finish every queued write, vacuum if a delete is not scrubbed yet, close the connections."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        for task in (self._scrubber, self._relisten):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        try:
            if self._scrub_at is not None or self._scrub_waiters:
                await self._run_scrub()
        finally:
            for waiter in self._scrub_waiters:  # that last VACUUM failed: nobody retries it
                if not waiter.done():
                    waiter.set_exception(StoreClosed("the store closed before the scrub"))
            if self._listener is not None:
                await self._listener.close()
            await self._pool.close()
            if self._writer is not None:
                await self._writer.close()

    # -- the blocks mirror ----------------------------------------------------------------------

    async def _listen(self) -> None:
        """LISTEN on a new connection, then read the blocks: a change committed after the LISTEN
        is heard (and held until the table is read, then applied on top of it); one committed
        before is in the table. Applying them in commit order converges on the table's state."""
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
        self._blocks = blocks
        conn.add_termination_listener(self._on_listener_lost)
        self._listener = conn
        self._notify_mirror()

    def _on_notification(self, conn: Conn, pid: int, channel: str, payload: str) -> None:
        if self._heard is not None:
            self._heard.append(payload)
            return
        self._apply(self._blocks, payload)
        self._notify_mirror()

    @staticmethod
    def _apply(blocks: set[tuple[str, str]], payload: str) -> None:
        """Apply "+blocker blocked" or "-blocker blocked" (trigger blocks_notify)."""
        blocker, _, blocked = payload[1:].partition(" ")
        if payload.startswith("+"):
            blocks.add((blocker, blocked))
        else:
            blocks.discard((blocker, blocked))

    def _notify_mirror(self) -> None:
        event, self._mirror_updated = self._mirror_updated, asyncio.Event()
        event.set()

    def _on_listener_lost(self, conn: Conn) -> None:
        if self._closing or conn is not self._listener:
            return
        # Changes made while nobody listens would be missed: listen again and re-read the table.
        log.warning("lost the blocks listener connection; reconnecting")
        self._listener = None
        self._relisten = asyncio.create_task(self._listen_again(), name="pgstore-relisten")

    async def _listen_again(self) -> None:
        delay, longest = RELISTEN_DELAYS
        while not self._closing:
            try:
                await self._listen()
                log.info("blocks listener reconnected")
                return
            except (*_CONNECTION_ERRORS, asyncpg.PostgresError):
                log.warning("blocks listener: reconnection failed; retrying in %.1f s", delay)
            await asyncio.sleep(delay)  # a back-off between attempts, not a synchronisation
            delay = min(delay * 2, longest)

    # -- group commit ---------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # Everything queued while the previous commit was in flight forms this batch.
            batch, self._queue = self._queue, []
            await self._commit(batch)
            if self._scrub_at is None and any(w.deletes for w in batch):
                self._scrub_at = loop.time() + self._scrub_seconds
                self._scrub_wakeup.set()

    async def _connection(self) -> Conn:
        """The writer connection, made again when it was lost (a server restart, a network cut)."""
        if self._writer is None or self._writer.is_closed():
            self._writer = None
            writer = await asyncpg.connect(self._url)
            if await writer.fetchval("SHOW synchronous_commit") == "off":
                await writer.execute("SET synchronous_commit = on")
            self._writer = writer
        return self._writer

    async def _commit(self, batch: list[QueuedWrite]) -> None:
        """Run `batch` in one transaction, one statement per kind of write.

        When a statement fails, the batch is rolled back and run again with every write on its
        own statement, so that only the write at fault fails and the others are committed. A
        deadlock or serialization failure runs the same batch again (MAX_ATTEMPTS in all).
        """
        alone = False
        attempts = 0
        while batch:
            groups: dict[Runner, list[QueuedWrite]] = {}
            for write in batch:
                groups.setdefault(write.run, []).append(write)
            steps = [(w.run, [w]) for w in batch] if alone else list(groups.items())
            results: dict[int, Any] = {}  # id(write) -> result
            failed: tuple[list[QueuedWrite], BaseException] | None = None
            db: Conn | None = None
            try:
                db = await self._connection()
                await db.execute("BEGIN")
                for run, writes in steps:
                    try:
                        outcome = await run(db, [w.args for w in writes])
                    except (asyncpg.PostgresError, NotMember) as e:
                        if isinstance(e, _CONNECTION_ERRORS):
                            raise
                        failed = (writes, e)  # these writes' fault, not the transaction's
                        break
                    results.update(zip(map(id, writes), outcome, strict=True))
                if failed is None:
                    await db.execute("COMMIT")
            except BaseException as e:  # the transaction itself failed: nothing is stored
                log.exception("commit of %d writes failed", len(batch))
                await self._rollback(db)
                for write in batch:
                    if not write.future.done():
                        write.future.set_exception(_wrap(e))
                if not isinstance(e, Exception):
                    raise
                return
            if failed is None:
                # In submission order: a socket's callbacks then run in the order of its frames.
                for write in batch:
                    if not write.future.done():  # the caller may have been cancelled
                        write.future.set_result(results[id(write)])
                return
            await self._rollback(db)
            writes, error = failed
            if isinstance(error, asyncpg.TransactionRollbackError) and attempts + 1 < MAX_ATTEMPTS:
                attempts += 1  # lost to another process's transaction: nobody's fault
                continue
            if len(writes) > 1:
                alone = True
                continue
            if not writes[0].future.done():
                writes[0].future.set_exception(_wrap(error))
            batch = [w for w in batch if w is not writes[0]]

    async def _rollback(self, db: Conn | None) -> None:
        if db is None or db.is_closed():
            return
        try:
            await db.execute("ROLLBACK")
        except (*_CONNECTION_ERRORS, asyncpg.PostgresError):
            # The connection is in an unknown state: drop it, the next batch makes a new one.
            log.warning("ROLLBACK failed; the writer connection is dropped")
            db.terminate()

    # -- reads ----------------------------------------------------------------------------------

    async def _fetch(self, query: str, *args: Any) -> list[Any]:
        """Rows of one read on a pool connection; the driver's errors come out as StoreError."""
        try:
            return await self._pool.fetch(query, *args)
        except (*_CONNECTION_ERRORS, asyncpg.PostgresError) as e:
            raise _wrap(e) from e

    # -- scrub (SPEC 6, as far as PostgreSQL goes: see the module docstring) --------------------

    async def _scrub_loop(self) -> None:
        """Vacuum the message tables `scrub_seconds` after the first delete since the last one."""
        loop = asyncio.get_running_loop()
        while True:
            if self._scrub_at is None:
                self._scrub_wakeup.clear()
                await self._scrub_wakeup.wait()
                continue
            delay = self._scrub_at - loop.time()
            if delay > 0:
                self._scrub_wakeup.clear()
                try:  # scrub() wakes this early
                    async with asyncio.timeout(delay):
                        await self._scrub_wakeup.wait()
                except TimeoutError:
                    pass
                continue
            await self._run_scrub()

    async def _run_scrub(self) -> None:
        """VACUUM once; resolves the scrub() calls made before it began. On failure they wait for
        the next attempt, a second later."""
        self._scrub_at = None
        waiters, self._scrub_waiters = self._scrub_waiters, []
        try:
            # Not in a transaction block (VACUUM refuses one): a pool connection is in none.
            async with self._pool.acquire() as conn:
                await conn.execute(f"VACUUM {MESSAGE_TABLES}")
        except (*_CONNECTION_ERRORS, asyncpg.PostgresError):
            log.exception("VACUUM of the message tables failed")
            self._scrub_waiters[:0] = waiters
            if self._scrub_at is None:
                self._scrub_at = asyncio.get_running_loop().time() + 1.0
            return
        except BaseException:  # cancelled by close(), which answers the waiters
            self._scrub_waiters[:0] = waiters
            raise
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- users and sessions ---------------------------------------------------------------------

    async def add_user(self, phone: str, name: str, password_hash: bytes) -> bool:
        """Create an account; False when the phone is taken."""
        async def op(db: Conn) -> bool:
            return _count(await db.execute(
                "INSERT INTO users (phone, name, password_hash, created_us) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (phone) DO NOTHING", phone, name, password_hash, now_micros())) == 1
        return await self._write(op)

    async def get_user(self, phone: str) -> User | None:
        """The account with this phone, or None."""
        rows = await self._fetch("SELECT phone, name, password_hash FROM users WHERE phone = $1", phone)
        return User(rows[0][0], rows[0][1], bytes(rows[0][2])) if rows else None

    async def user_exists(self, phone: str) -> bool:
        """True when an account has this phone."""
        return bool(await self._fetch("SELECT 1 FROM users WHERE phone = $1", phone))

    async def set_password(self, phone: str, password_hash: bytes) -> bool:
        """Replace a password and end every session of that account; False for an unknown phone."""
        async def op(db: Conn) -> bool:
            status = await db.execute("UPDATE users SET password_hash = $1 WHERE phone = $2",
                                      password_hash, phone)
            await db.execute("DELETE FROM sessions WHERE phone = $1", phone)
            return _count(status) == 1
        return await self._write(op)

    async def delete_user(self, phone: str) -> bool:
        """Delete an account with its sessions, dialogues and stored messages; False if unknown.
        Its blocks go by cascade, and every process hears of it (trigger blocks_notify)."""
        async def op(db: Conn) -> bool:
            return _count(await db.execute("DELETE FROM users WHERE phone = $1", phone)) == 1
        return await self._write(op, deletes=True)

    async def add_session(self, sid_hash: str, phone: str) -> None:
        """Record a login (SPEC 4: the cookie names a session the server records)."""
        async def op(db: Conn) -> None:
            await db.execute("INSERT INTO sessions (sid_hash, phone, created_us) VALUES ($1, $2, $3)",
                             sid_hash, phone, now_micros())
        await self._write(op)

    async def delete_session(self, sid_hash: str) -> None:
        """Forget a login, so that a replayed cookie is refused."""
        async def op(db: Conn) -> None:
            await db.execute("DELETE FROM sessions WHERE sid_hash = $1", sid_hash)
        await self._write(op)

    async def session_user(self, sid_hash: str, max_age_seconds: int) -> str | None:
        """The phone logged in under this session, or None when unknown or older than max_age."""
        rows = await self._fetch(
            "SELECT phone FROM sessions WHERE sid_hash = $1 AND created_us > $2",
            sid_hash, now_micros() - max_age_seconds * 1_000_000)
        return rows[0][0] if rows else None

    # -- dialogues ------------------------------------------------------------------------------

    async def open_dialogue(self, a: str, b: str) -> None:
        """Record a dialogue between a and b (both directions); idempotent."""
        async def op(db: Conn) -> None:
            # Sorted: two processes opening one dialogue from both ends lock in the same order.
            await db.execute(
                "INSERT INTO dialogues (msg_from, msg_to) SELECT * FROM (VALUES ($1, $2), ($2, $1))"
                " AS v ORDER BY 1, 2 ON CONFLICT DO NOTHING", a, b)
        await self._write(op)

    async def dialogues_of(self, phone: str) -> list[str]:
        """The phones `phone` has a dialogue with, sorted."""
        rows = await self._fetch(
            "SELECT msg_to FROM dialogues WHERE msg_from = $1"
            " UNION SELECT msg_from FROM dialogues WHERE msg_to = $1 ORDER BY 1", phone)
        return [r[0] for r in rows]

    async def dialogue_side(self, msg_from: str, msg_to: str) -> DialogueSide:
        """What msg_to has received and seen of msg_from's messages, and how many still wait."""
        rows = await self._fetch(
            "SELECT (SELECT last_received_receiver FROM dialogues WHERE msg_from = $1 AND msg_to = $2),"
            " (SELECT last_seen_receiver FROM dialogues WHERE msg_from = $1 AND msg_to = $2),"
            " (SELECT count(*) FROM personal_messages WHERE msg_from = $1 AND msg_to = $2)",
            msg_from, msg_to)
        return DialogueSide(*rows[0])

    # -- personal messages (group commit) -------------------------------------------------------

    async def pending_for(self, msg_to: str) -> list[StoredMessage]:
        """Personal messages stored for msg_to, in the order the server accepted them (SPEC 5.2)."""
        rows = await self._fetch(
            "SELECT msg_from, msg_to, message, sent_us FROM personal_messages"
            " WHERE msg_to = $1 ORDER BY id", msg_to)
        return [StoredMessage(*r) for r in rows]

    # -- groups (SPEC 4, 5.3) -------------------------------------------------------------------

    async def create_group(self, key: str, name: str, creator: str, participants: list[str]) -> bool:
        """Create a group with `creator` as participant and admin; False when the key is taken."""
        async def op(db: Conn) -> bool:
            now = now_micros()
            if _count(await db.execute(
                    "INSERT INTO groups (key, name, created_us) VALUES ($1, $2, $3)"
                    " ON CONFLICT DO NOTHING", key, name, now)) != 1:
                return False
            await db.execute(
                "INSERT INTO group_members (grp, phone, is_admin, joined_us)"
                " SELECT $1, phone, phone = $2, $4"
                " FROM unnest(array_prepend($2::text, $3::text[])) AS p(phone)"
                " ON CONFLICT DO NOTHING", key, creator, [p for p in participants if p != creator], now)
            return True
        return await self._write(op)

    async def group(self, key: str) -> Group | None:
        """The group with this key, or None."""
        rows = await self._fetch(
            "SELECT g.name, m.phone, m.is_admin FROM groups AS g"
            " JOIN group_members AS m ON m.grp = g.key WHERE g.key = $1 ORDER BY m.phone", key)
        if not rows:
            return None
        return Group(key, rows[0][0], [r[1] for r in rows], [r[1] for r in rows if r[2]])

    async def groups_of(self, phone: str) -> list[tuple[str, str]]:
        """(key, name) of every group `phone` is in, by name."""
        rows = await self._fetch(
            "SELECT g.key, g.name FROM group_members AS m JOIN groups AS g ON g.key = m.grp"
            " WHERE m.phone = $1 ORDER BY g.name, g.key", phone)
        return [(r[0], r[1]) for r in rows]

    async def is_member(self, key: str, phone: str) -> bool:
        """True when `phone` is a participant of group `key`."""
        return bool(await self._fetch(_IS_MEMBER, key, phone))

    async def update_group(self, key: str, *, name: str | None = None, add: list[str] = (),  # type: ignore[assignment]
                           remove: list[str] = (), admins: list[str] = ()) -> None:  # type: ignore[assignment]
        """Rename, add and remove participants, grant admin, in one transaction (SPEC 4 PATCH).

        Removing drops the member from every pending list of the group (messages left with no one
        pending are deleted, by trigger). When the last admin leaves, the longest-standing
        remaining member becomes admin; when the last member leaves, the group is deleted.
        """
        async def op(db: Conn) -> None:
            now = now_micros()
            # Two processes updating one group would each check "no admin left" or "no member
            # left" without seeing the other's change: the group's row makes them take turns
            # (NO KEY: new messages of the group, whose foreign key only shares it, need not wait).
            await db.execute("SELECT 1 FROM groups WHERE key = $1 FOR NO KEY UPDATE", key)
            if name is not None:
                await db.execute("UPDATE groups SET name = $1 WHERE key = $2", name, key)
            if add:
                await db.execute(
                    "INSERT INTO group_members (grp, phone, is_admin, joined_us)"
                    " SELECT $1, phone, false, $3 FROM unnest($2::text[]) AS p(phone)"
                    " ON CONFLICT DO NOTHING", key, list(add), now)
            if remove:
                await db.execute("DELETE FROM group_members WHERE grp = $1 AND phone = ANY($2::text[])",
                                 key, list(remove))
            if admins:
                await db.execute("UPDATE group_members SET is_admin = true"
                                 " WHERE grp = $1 AND phone = ANY($2::text[])", key, list(admins))
            await db.execute(
                "UPDATE group_members SET is_admin = true WHERE grp = $1 AND phone = ("
                " SELECT phone FROM group_members WHERE grp = $1 ORDER BY joined_us, phone LIMIT 1)"
                " AND NOT EXISTS (SELECT 1 FROM group_members WHERE grp = $1 AND is_admin)", key)
            await db.execute(
                "DELETE FROM groups WHERE key = $1"
                " AND NOT EXISTS (SELECT 1 FROM group_members WHERE grp = $1)", key)
        await self._write(op, deletes=bool(remove))

    async def members(self, key: str) -> list[tuple[str, str, str | None]]:
        """(phone, name, read position) of each participant, by phone; the read position is the
        server time of the last message read, or None."""
        rows = await self._fetch(
            "SELECT m.phone, u.name, m.last_read FROM group_members AS m"
            " JOIN users AS u ON u.phone = m.phone WHERE m.grp = $1 ORDER BY m.phone", key)
        return [(r[0], r[1], r[2]) for r in rows]

    async def pending_group_for(self, phone: str) -> list[GroupMessage]:
        """Group messages still pending for `phone`, oldest first, each with its pending list."""
        rows = await self._fetch(
            "SELECT m.grp, m.msg_from, m.message, m.sent_us,"
            " (SELECT array_agg(q.phone ORDER BY q.phone) FROM group_pending AS q"
            "  WHERE q.message_id = m.id)"
            " FROM group_pending AS p JOIN group_messages AS m ON m.id = p.message_id"
            " WHERE p.phone = $1 ORDER BY m.id", phone)
        return [GroupMessage(r[0], r[1], r[2], r[3], list(r[4])) for r in rows]

    # -- rooms (SPEC 5.4) -----------------------------------------------------------------------

    async def create_room(self, name: str, created_by: str, password_hash: bytes | None) -> bool:
        """Create a room (private when it has a password hash); False when the name is taken."""
        async def op(db: Conn) -> bool:
            return _count(await db.execute(
                "INSERT INTO rooms (name, created_by, password_hash, created_us)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                name, created_by, password_hash, now_micros())) == 1
        return await self._write(op)

    async def room(self, name: str) -> Room | None:
        """The room with this name, or None."""
        rows = await self._fetch(
            "SELECT name, created_by, password_hash FROM rooms WHERE name = $1", name)
        return _room(rows[0]) if rows else None

    async def rooms(self) -> list[Room]:
        """Every room, by name."""
        rows = await self._fetch("SELECT name, created_by, password_hash FROM rooms ORDER BY name")
        return [_room(r) for r in rows]

    async def room_history(self, room: str, limit: int) -> list[RoomMessage]:
        """The latest `limit` messages of a room, oldest first."""
        rows = await self._fetch(
            "SELECT id, msg_from, message, sent_us FROM (SELECT id, msg_from, message, sent_us"
            " FROM room_messages WHERE room = $1 ORDER BY id DESC LIMIT $2) AS h ORDER BY id",
            room, limit)
        return [RoomMessage(*r) for r in rows]

    async def grant_room(self, sid_hash: str, room: str) -> None:
        """Remember that a login session gave a private room's password."""
        async def op(db: Conn) -> None:
            await db.execute("INSERT INTO session_rooms (sid_hash, room) VALUES ($1, $2)"
                             " ON CONFLICT DO NOTHING", sid_hash, room)
        await self._write(op)

    async def room_granted(self, sid_hash: str, room: str) -> bool:
        """True when this login session has given the room's password."""
        return bool(await self._fetch(
            "SELECT 1 FROM session_rooms WHERE sid_hash = $1 AND room = $2", sid_hash, room))

    # -- contacts, blocks, presence -------------------------------------------------------------

    async def set_contact(self, owner: str, phone: str, name: str) -> None:
        """Add `phone` to owner's contacts under `name`, or rename it."""
        async def op(db: Conn) -> None:
            await db.execute(
                "INSERT INTO contacts (owner, phone, name) VALUES ($1, $2, $3)"
                " ON CONFLICT (owner, phone) DO UPDATE SET name = excluded.name", owner, phone, name)
        await self._write(op)

    async def remove_contact(self, owner: str, phone: str) -> bool:
        """Remove a contact; False when it was not there."""
        async def op(db: Conn) -> bool:
            return _count(await db.execute(
                "DELETE FROM contacts WHERE owner = $1 AND phone = $2", owner, phone)) == 1
        return await self._write(op)

    async def contacts_of(self, owner: str) -> list[Contact]:
        """Owner's contacts by name, with when each was last seen online (microseconds) or None."""
        rows = await self._fetch(
            "SELECT c.phone, c.name, u.last_seen_us FROM contacts AS c JOIN users AS u"
            " ON u.phone = c.phone WHERE c.owner = $1 ORDER BY c.name, c.phone", owner)
        return [Contact(*r) for r in rows]

    async def watchers_of(self, phone: str) -> list[str]:
        """Who is told of `phone`'s presence: its contacts and those who have it as a contact,
        except anyone `phone` has blocked (sorted)."""
        rows = await self._fetch(
            "SELECT phone FROM contacts WHERE owner = $1 UNION SELECT owner FROM contacts WHERE phone = $1"
            " EXCEPT SELECT blocked FROM blocks WHERE blocker = $1 ORDER BY 1", phone)
        return [r[0] for r in rows]

    async def set_last_seen(self, phone: str, us: int) -> None:
        """Record when `phone` was last online."""
        async def op(db: Conn) -> None:
            await db.execute("UPDATE users SET last_seen_us = $1 WHERE phone = $2", us, phone)
        await self._write(op)

    async def block(self, blocker: str, blocked: str) -> None:
        """`blocker` no longer accepts messages, typing or new groups from `blocked`. This process
        knows at once; the others when they hear the notification of the commit."""
        async def op(db: Conn) -> None:
            await db.execute("INSERT INTO blocks (blocker, blocked) VALUES ($1, $2)"
                             " ON CONFLICT DO NOTHING", blocker, blocked)
        await self._write(op)
        self._blocks.add((blocker, blocked))

    async def unblock(self, blocker: str, blocked: str) -> bool:
        """Lift a block; False when there was none."""
        async def op(db: Conn) -> bool:
            return _count(await db.execute(
                "DELETE FROM blocks WHERE blocker = $1 AND blocked = $2", blocker, blocked)) == 1
        done = await self._write(op)
        self._blocks.discard((blocker, blocked))
        return done

    async def blocked_by(self, blocker: str) -> list[str]:
        """The phones `blocker` has blocked, sorted."""
        rows = await self._fetch(
            "SELECT blocked FROM blocks WHERE blocker = $1 ORDER BY blocked", blocker)
        return [r[0] for r in rows]
