"""The PostgreSQL engine, for several server processes (on one host or many) sharing one database
(README "Scaling out"): a writer connection fed by the group commit (groupcommit.py), a small
pool for reads, and the blocks mirror (pgblocks.py). docs/storage.md says how it works and what
deletion does and does not remove on PostgreSQL.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import asyncpg

from ..config import Config
from ..protocol import now_micros
from . import migrate
from .base import BackupUnsupported, Expired, GroupMessage, IntegrityError, NotMember, StoreError
from .groupcommit import Runners, call_ops
from .pgblocks import CHANNEL_QUERY, CONNECTION_ERRORS, BlocksMirror, PgConnection
from .queries import POSTGRES, SqlStore, admit, expired, mailbox_full

log = logging.getLogger(__name__)

SCHEMA_PATH: Final = Path(__file__).resolve().parent.parent.parent / "schema-postgres.sql"
# Reads are short single queries; a few connections serve a process (each costs a backend).
POOL_SIZE: Final = 4
# The tables that hold message bodies: what scrub() vacuums.
MESSAGE_TABLES: Final = "personal_messages, group_messages, room_messages"
# One lock per schema: processes starting at once upgrade the schema one after the other.
_SCHEMA_LOCK: Final = ("SELECT pg_advisory_xact_lock("
                       "hashtext('chatserver schema ' || coalesce(current_schema(), '')))")
# One lock per schema for the account checks that must see other processes' accounts: is there
# any account yet (SPEC 10: the first is free and an admin), is another admin left.
_ACCOUNTS_LOCK: Final = ("SELECT pg_advisory_xact_lock("
                         "hashtext('chatserver accounts ' || coalesce(current_schema(), '')))")
# A failed VACUUM is tried again after this many seconds.
VACUUM_RETRY_SECONDS: Final = 1.0


def _columns(rows: list[Any], n: int) -> list[list[Any]]:
    """The first `n` fields of each row as `n` arrays, one per column (for unnest)."""
    return [[row[i] for row in rows] for i in range(n)]


def _count(status: str) -> int:
    """The row count of a command status such as "INSERT 0 1", "DELETE 3", "UPDATE 0"."""
    return int(status.rsplit(" ", 1)[1])


def _wrap(error: BaseException) -> BaseException:
    """What a caller gets for a failed operation: StoreError & co as they are, the driver's
    errors as IntegrityError (a constraint) or StoreError, with the cause attached."""
    if isinstance(error, StoreError) or not isinstance(error, Exception):
        return error
    constraint = isinstance(error, asyncpg.IntegrityConstraintViolationError)
    wrapped = (IntegrityError if constraint else StoreError)(f"{type(error).__name__}: {error}")
    wrapped.__cause__ = error
    return wrapped


def _firsts(rows: list[Any], done: Iterable[Any], width: int) -> list[bool]:
    """For each row, True when its key (first `width` fields) is in `done`; a key that occurs
    twice in one batch counts for its first occurrence only (as in sqlite.py)."""
    left = {tuple(k) for k in done}
    results = []
    for row in rows:
        key = tuple(row[:width])
        results.append(key in left)
        left.discard(key)
    return results


# Messages waiting for each phone (SPEC 10), counted on the indexes (msg_to, id) and
# (phone, message_id) and only up to the limit $2: a full mailbox costs at most `limit` index
# entries per batch, a usual one (a few waiting) next to nothing. Another process may commit
# messages for the same phone meanwhile (READ COMMITTED): the limit can be passed by what the
# processes commit at the same moment, never by more.
_WAITING: Final = """
    SELECT r.phone,
        (SELECT count(*) FROM (SELECT 1 FROM personal_messages WHERE msg_to = r.phone LIMIT $2) AS a)
      + (SELECT count(*) FROM (SELECT 1 FROM group_pending WHERE phone = r.phone LIMIT $2) AS b)
    FROM unnest($1::text[]) AS r(phone)"""


async def _waiting(db: PgConnection, phones: set[str], limit: int) -> dict[str, int]:
    """How many messages wait for each of `phones`, counted up to `limit`."""
    return {r[0]: r[1] for r in await db.fetch(_WAITING, sorted(phones), limit)}


# accepted_us ($6) is the batch's time, one value for the whole batch (SPEC 10 retention); the
# column's default would do, but both engines take it from the server's clock the same way.
_INSERT_PERSONAL: Final = """
    INSERT INTO personal_messages (msg_from, msg_to, sent_us, sent_timestamp, message, accepted_us)
    SELECT msg_from, msg_to, sent_us, sent_timestamp, message, $6
    FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[])
         WITH ORDINALITY AS j(msg_from, msg_to, sent_us, sent_timestamp, message, n)
    ORDER BY n
    ON CONFLICT DO NOTHING
    RETURNING msg_from, msg_to, sent_us"""


async def _add_personal_many(db: PgConnection, rows: list[Any]) -> list[bool | StoreError]:
    """Insert [msg_from, msg_to, sent_us, sent_timestamp, message, max_waiting] rows in array
    order (which is the acceptance order, `id`); True for each row stored, False for a repeated
    identity, MailboxFull for a row whose recipient already has max_waiting messages waiting.
    The dialogues are opened by the table's trigger."""
    limit = rows[0][5]
    admitted = admit((row[1] for row in rows), await _waiting(db, {row[1] for row in rows}, limit),
                     limit)
    taken = [row for row, ok in zip(rows, admitted, strict=True) if ok]
    stored = iter(_firsts(taken, await db.fetch(_INSERT_PERSONAL, *_columns(taken, 5), now_micros()),
                          3) if taken else [])
    results: list[bool | StoreError] = []
    for row, ok in zip(rows, admitted, strict=True):
        if ok:
            results.append(next(stored))
        elif await db.fetchval(POSTGRES.is_stored, row[1], row[0], row[2]) is not None:
            results.append(False)  # a retry of a message stored before the mailbox filled up
        else:
            results.append(mailbox_full())
    return results


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


async def _ack_personal_many(db: PgConnection, rows: list[Any]) -> list[bool]:
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


async def _read_personal_many(db: PgConnection, rows: list[Any]) -> list[None]:
    """Set last_seen_receiver for rows [msg_from, msg_to, seen_at] (the last one per dialogue wins)."""
    await db.execute(_SET_SEEN, *_columns(rows, 3))
    return [None] * len(rows)


# The messages, and for each the members it is for (all but the sender, sorted) with how many
# messages wait for each of them (as _WAITING), in one statement. The members are locked (FOR KEY
# SHARE): a member removed by another process at the same moment is then either removed before
# this reads the members (and not pending) or after this commits (and dropped from the pending
# list by the trigger group_members_left); without the lock the message could wait for them
# forever. accepted_us ($6): as for personal messages.
_INSERT_GROUP: Final = """
    WITH j AS (
        SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[])
                      WITH ORDINALITY AS j(grp, msg_from, sent_us, sent_timestamp, message, n)),
    inserted AS (
        INSERT INTO group_messages (grp, msg_from, sent_us, sent_timestamp, message, accepted_us)
        SELECT grp, msg_from, sent_us, sent_timestamp, message, $6 FROM j
        WHERE EXISTS (SELECT 1 FROM group_members AS s WHERE s.grp = j.grp AND s.phone = j.msg_from)
        ORDER BY n
        ON CONFLICT DO NOTHING
        RETURNING id, grp, msg_from, sent_us),
    pairs AS (
        SELECT i.id, m.phone FROM inserted AS i
        JOIN group_members AS m ON m.grp = i.grp AND m.phone <> i.msg_from
        ORDER BY i.id, m.phone
        FOR KEY SHARE OF m),
    waiting AS (
        SELECT d.phone,
            (SELECT count(*) FROM (SELECT 1 FROM personal_messages
                                   WHERE msg_to = d.phone LIMIT $7) AS a)
          + (SELECT count(*) FROM (SELECT 1 FROM group_pending WHERE phone = d.phone LIMIT $7) AS b)
            AS n
        FROM (SELECT DISTINCT phone FROM pairs) AS d)
    SELECT i.grp, i.msg_from, i.sent_us, i.id,
           coalesce((SELECT array_agg(p.phone ORDER BY p.phone) FROM pairs AS p
                     WHERE p.id = i.id), '{}'),
           coalesce((SELECT array_agg(w.n ORDER BY p.phone) FROM pairs AS p
                     JOIN waiting AS w USING (phone) WHERE p.id = i.id), '{}')
    FROM inserted AS i ORDER BY i.id"""
_INSERT_PENDING: Final = """
    INSERT INTO group_pending (phone, message_id)
    SELECT * FROM unnest($1::text[], $2::bigint[]) ORDER BY 2, 1"""
_DELETE_UNADDRESSED: Final = "DELETE FROM group_messages WHERE id = ANY($1::bigint[])"


async def _add_group_many(db: PgConnection, rows: list[Any]) -> list[list[str] | None | StoreError]:
    """Insert [grp, msg_from, sent_us, sent_timestamp, message, max_waiting] rows. For each
    row: the phones it is pending for (stored; may be empty in a group of one; members whose
    mailbox is full are left out), None for a repeated identity, or MailboxFull when every
    other member's mailbox is full (then nothing is kept). Raises NotMember (failing only that
    write) when msg_from is not in the group."""
    limit = rows[0][5]
    inserted = await db.fetch(_INSERT_GROUP, *_columns(rows, 5), now_micros(), limit)
    waiting: dict[str, int] = {}
    for r in inserted:
        waiting.update(zip(r[4], r[5], strict=True))  # counted before this batch
    stored: dict[tuple[Any, ...], list[str] | StoreError] = {}
    taken: tuple[list[str], list[int]] = ([], [])
    unaddressed = []
    for r in inserted:  # in id order: the earlier message takes the last places in a mailbox
        phones = [p for p, ok in zip(r[4], admit(r[4], waiting, limit), strict=True) if ok]
        taken[0].extend(phones)
        taken[1].extend([r[3]] * len(phones))
        if not phones:  # a group of one, or every recipient full: nothing to keep
            unaddressed.append(r[3])
        stored[(r[0], r[1], r[2])] = mailbox_full() if r[4] and not phones else phones
    if taken[0]:
        await db.execute(_INSERT_PENDING, *taken)
    if unaddressed:
        await db.execute(_DELETE_UNADDRESSED, unaddressed)
    results: list[list[str] | None | StoreError] = []
    for row in rows:
        pending = stored.pop((row[0], row[1], row[2]), None)
        if pending is not None:
            results.append(pending)
        elif await db.fetchval(POSTGRES.is_member, row[0], row[1]) is None:
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


async def _ack_group_many(db: PgConnection, rows: list[Any]) -> list[bool]:
    """Remove [grp, msg_from, sent_us, phone] from pending lists (the last one deletes the message,
    by trigger); True for each row that was pending."""
    return _firsts(rows, await db.fetch(_ACK_GROUP, *_columns(rows, 4)), 4)


_SET_GROUP_READ: Final = """
    UPDATE group_members AS g SET last_read = greatest(coalesce(g.last_read, ''), j.up_to)
    FROM (SELECT grp, phone, max(up_to COLLATE "C") AS up_to
          FROM unnest($1::text[], $2::text[], $3::text[]) AS u(grp, phone, up_to)
          GROUP BY grp, phone) AS j
    WHERE g.grp = j.grp AND g.phone = j.phone"""


async def _read_group_many(db: PgConnection, rows: list[Any]) -> list[None]:
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


async def _add_room_many(db: PgConnection, rows: list[Any]) -> list[int | None]:
    """Append [room, msg_from, sent_us, sent_timestamp, message, keep] rows to room histories and
    drop what falls beyond `keep`; for each row its id (the room's order), or None for a
    repeated identity."""
    inserted = {(r[0], r[1], r[2]): r[3] for r in await db.fetch(_INSERT_ROOM, *_columns(rows, 5))}
    await db.execute(_TRIM_ROOMS, sorted({row[0] for row in rows}), rows[0][5])
    return [inserted.pop((row[0], row[1], row[2]), None) for row in rows]



# Retention (SPEC 10): the oldest first, on the index of accepted_us (migration 0002). Several
# processes run it: SKIP LOCKED leaves a row another one is deleting (or acknowledging) to that
# transaction, and a row is returned only by the DELETE that removed it, so each expired message
# is told to its sender once.
_EXPIRE_PERSONAL: Final = """
    DELETE FROM personal_messages WHERE id IN (
        SELECT id FROM personal_messages WHERE accepted_us < $1 ORDER BY accepted_us LIMIT $2
        FOR UPDATE SKIP LOCKED)
    RETURNING msg_from, msg_to, sent_timestamp, sent_us"""
_EXPIRE_GROUP: Final = """
    DELETE FROM group_messages WHERE id IN (
        SELECT id FROM group_messages WHERE accepted_us < $1 ORDER BY accepted_us LIMIT $2
        FOR UPDATE SKIP LOCKED)
    RETURNING msg_from, grp, sent_timestamp, sent_us"""


async def _synchronous_commit(writer: PgConnection) -> None:
    # SPEC 6: an acknowledged message must survive a crash. "off" would acknowledge commits that
    # are not flushed yet; every other setting waits for the local flush.
    if await writer.fetchval("SHOW synchronous_commit") == "off":
        await writer.execute("SET synchronous_commit = on")


class PgStore(SqlStore[PgConnection]):
    """All persistent state, in PostgreSQL. Open with `await PgStore.open(url)` (or
    `connect(config)`), close with `await store.close()`."""

    SQL = POSTGRES
    LIVE_SESSIONS = ("SELECT s.sid_hash, s.last_used_us FROM sessions AS s JOIN users AS u"
                     " ON u.phone = s.phone WHERE s.sid_hash = ANY($1::text[]) AND s.last_used_us > $2"
                     " AND NOT u.disabled")
    TOUCH_SESSIONS = ("UPDATE sessions SET last_used_us = $2 WHERE sid_hash = ANY($1::text[])"
                      " AND last_used_us < $3 AND last_used_us > $4")
    SCHEMA = SCHEMA_PATH
    MIGRATIONS = migrate.MIGRATIONS_DIR / "postgres"
    RUNNERS = Runners(_add_personal_many, _ack_personal_many, _read_personal_many,
                      _add_group_many, _ack_group_many, _read_group_many, _add_room_many,
                      call_ops)

    def __init__(self, url: str, writer: PgConnection, pool: asyncpg.Pool, channel: str,
                 scrub_seconds: float, rooms_keep: int, max_waiting: int = 10000) -> None:
        super().__init__(scrub_seconds, rooms_keep, max_waiting)
        self._url = url
        self._writer: PgConnection | None = writer  # None: lost, reconnected before the next batch
        self._pool = pool
        self._mirror = BlocksMirror(url, channel, self._blocks)

    @classmethod
    async def connect(cls, config: Config) -> PgStore:
        """The store at `[database] url`, with the config's settings."""
        return await cls.open(config.database.url, scrub_seconds=config.database.scrub_seconds,
                              rooms_keep=config.rooms.keep,
                              max_waiting=config.limits.max_waiting_per_recipient)

    @classmethod
    async def open(cls, url: str, *, scrub_seconds: float = 5.0, rooms_keep: int = 1000,
                   max_waiting: int = 10000) -> PgStore:
        """Connect to the database at `url`, bring its schema to this release's version
        (migrate.py) under an advisory lock per schema, so that processes starting at once do it
        one after the other; load the blocks and listen for their changes.

        Raises OSError when the server cannot be reached, SchemaTooNew for a database of a newer
        release, StoreError when it refuses the connection or an upgrade fails.
        """
        try:
            writer = await asyncpg.connect(url)
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            # e.g. an unknown role or database: one line for `run.py`, not a traceback
            raise StoreError(f"cannot use the PostgreSQL database: {e}") from e
        pool: asyncpg.Pool | None = None
        try:
            await cls._migrate(writer)
            await _synchronous_commit(writer)
            channel = await writer.fetchval(CHANNEL_QUERY)
            pool = await asyncpg.create_pool(url, min_size=1, max_size=POOL_SIZE)
            store = cls(url, writer, pool, channel, scrub_seconds, rooms_keep, max_waiting)
            await store._mirror.listen()
        except BaseException as e:
            if pool is not None:
                await pool.close()
            await writer.close()
            if isinstance(e, asyncpg.PostgresError):
                raise _wrap(e) from e
            raise
        store._start("pgstore")
        return store

    @classmethod
    async def _migrate(cls, writer: PgConnection) -> None:
        """Bring the schema to this release's version in one transaction (migrate.py)."""
        async with writer.transaction():
            await writer.execute(_SCHEMA_LOCK)
            has_version = await writer.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
            has_users = await writer.fetchval("SELECT to_regclass('users') IS NOT NULL")
            where = await writer.fetchval("SELECT format('PostgreSQL schema %s', current_schema())")
            if has_version:
                version = await writer.fetchval(migrate.READ_VERSION)
            else:
                version = 1 if has_users else 0
            steps = migrate.plan(cls.SCHEMA, cls.MIGRATIONS, version, where)
            for _, script in steps:
                await writer.execute(script)
            if steps or not has_version:
                for statement in migrate.record(steps[-1][0] if steps else version):
                    await writer.execute(statement)

    @classmethod
    def backup(cls, config: Config, target: str | Path) -> str:
        """Refused: PostgreSQL has its own tools."""
        raise BackupUnsupported("backup copies the SQLite file; for a PostgreSQL [database] url "
                                "use pg_dump")

    # -- group commit hooks -------------------------------------------------------------------

    async def _connection(self) -> PgConnection:
        """The writer connection, made again when it was lost (a server restart, a network cut)."""
        if self._writer is None or self._writer.is_closed():
            self._writer = None
            writer = await asyncpg.connect(self._url)
            await _synchronous_commit(writer)
            self._writer = writer
        return self._writer

    async def _begin(self, db: PgConnection) -> None:
        await db.execute("BEGIN")

    async def _commit_transaction(self, db: PgConnection) -> None:
        await db.execute("COMMIT")

    async def _rollback(self, db: PgConnection | None) -> None:
        if db is None or db.is_closed():
            return
        try:
            await db.execute("ROLLBACK")
        except (*CONNECTION_ERRORS, asyncpg.PostgresError):
            # The connection is in an unknown state: drop it, the next batch makes a new one.
            log.warning("ROLLBACK failed; the writer connection is dropped")
            db.terminate()

    def _write_fault(self, error: Exception) -> bool:
        return (isinstance(error, (asyncpg.PostgresError, NotMember))
                and not isinstance(error, CONNECTION_ERRORS))

    def _retryable(self, error: Exception) -> bool:
        return isinstance(error, asyncpg.TransactionRollbackError)

    def _wrap(self, error: BaseException) -> BaseException:
        return _wrap(error)

    async def _scrub_once(self) -> float | None:
        """VACUUM the message tables, on a pool connection: VACUUM cannot run in a transaction
        block, and it need not wait for the writer."""
        try:
            async with self._pool.acquire() as conn:
                await conn.execute(f"VACUUM {MESSAGE_TABLES}")
        except (*CONNECTION_ERRORS, asyncpg.PostgresError):
            log.exception("VACUUM of the message tables failed")
            return VACUUM_RETRY_SECONDS
        return None

    async def _close_connections(self) -> None:
        try:
            await self._mirror.close()
        finally:
            await self._pool.close()
            if self._writer is not None:
                await self._writer.close()

    # -- reads and writes of the shared queries (queries.py) ----------------------------------

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        try:
            return await self._pool.fetch(sql, *args)
        except (*CONNECTION_ERRORS, asyncpg.PostgresError) as e:
            raise _wrap(e) from e

    @staticmethod
    def _text_list(texts: list[str]) -> list[str]:
        return texts

    @staticmethod
    async def _execute(db: PgConnection, sql: str, *args: Any) -> int:
        return _count(await db.execute(sql, *args))

    @staticmethod
    async def _execute_many(db: PgConnection, sql: str, rows: list[tuple[Any, ...]]) -> None:
        await db.executemany(sql, rows)

    @staticmethod
    async def _query(db: PgConnection, sql: str, *args: Any) -> list[Any]:
        return list(await db.fetch(sql, *args))

    async def _lock_accounts(self, db: PgConnection) -> None:
        # Held until the batch commits: another process's registration or admin change waits,
        # then sees this one's accounts (READ COMMITTED reads anew at each statement).
        await db.execute(_ACCOUNTS_LOCK)

    async def _database_bytes(self) -> int:
        return int((await self._fetch("SELECT pg_database_size(current_database())"))[0][0])

    # -- what PostgreSQL says in its own SQL --------------------------------------------------

    async def update_group(self, key: str, *, name: str | None = None, add: Sequence[str] = (),
                           remove: Sequence[str] = (), admins: Sequence[str] = ()) -> None:
        async def op(db: PgConnection) -> None:
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
            await db.execute(POSTGRES.keep_an_admin, key)
            await db.execute(POSTGRES.drop_empty_group, key)
        await self._write(op, deletes=bool(remove))

    async def pending_group_page(self, phone: str, after: int,
                                 limit: int) -> list[tuple[int, GroupMessage]]:
        # keyset pagination on group_pending's primary key (phone, message_id)
        rows = await self._fetch(
            "SELECT m.id, m.grp, m.msg_from, m.message, m.sent_us,"
            " (SELECT array_agg(q.phone ORDER BY q.phone) FROM group_pending AS q"
            "  WHERE q.message_id = m.id)"
            " FROM group_pending AS p JOIN group_messages AS m ON m.id = p.message_id"
            " WHERE p.phone = $1 AND p.message_id > $2 ORDER BY p.message_id LIMIT $3",
            phone, after, limit)
        return [(r[0], GroupMessage(r[1], r[2], r[3], r[4], list(r[5]))) for r in rows]

    async def expire(self, before_us: int, limit: int) -> list[Expired]:
        async def op(db: PgConnection) -> list[Expired]:
            personal = await db.fetch(_EXPIRE_PERSONAL, before_us, limit)
            # group_pending rows go with their message (ON DELETE CASCADE)
            group = await db.fetch(_EXPIRE_GROUP, before_us, limit)
            return expired(personal, False) + expired(group, True)
        result: list[Expired] = await self._write(op)
        if result:  # only then: an hourly check that found nothing costs no scrub
            self._scrub_soon()
        return result

    async def pending_group_for(self, phone: str) -> list[GroupMessage]:
        rows = await self._fetch(
            "SELECT m.grp, m.msg_from, m.message, m.sent_us,"
            " (SELECT array_agg(q.phone ORDER BY q.phone) FROM group_pending AS q"
            "  WHERE q.message_id = m.id)"
            " FROM group_pending AS p JOIN group_messages AS m ON m.id = p.message_id"
            " WHERE p.phone = $1 ORDER BY m.id", phone)
        return [GroupMessage(r[0], r[1], r[2], r[3], list(r[4])) for r in rows]
