"""The SQLite engine: one WAL-mode file, a writer connection fed by the group commit
(groupcommit.py) and a query-only reader, which in WAL mode sees only committed data and never
waits for the writer. docs/storage.md says why each choice was made.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import aiosqlite
import orjson

from ..config import Config
from ..protocol import now_micros
from . import migrate
from .base import CorruptDatabase, Expired, GroupMessage, IntegrityError, NotMember, StoreError
from .groupcommit import Runners, call_ops
from .queries import SQLITE, SqlStore, admit, expired, mailbox_full

log = logging.getLogger(__name__)

SCHEMA_PATH: Final = Path(__file__).resolve().parent.parent.parent / "schema.sql"
# A busy WAL checkpoint (a reader in the middle of a query holds old frames) is tried again after
# this many seconds.
CHECKPOINT_RETRY_SECONDS: Final = 0.1
# The database, its -wal/-shm and backups hold every waiting message and every password hash: owner
# only, whatever the umask (0644 under the usual 022). The folder the server creates: the same.
FILE_MODE: Final = 0o600
FOLDER_MODE: Final = 0o700
# Beside the database: SQLite's write-ahead log and shared memory, and auth.py's cookie secret.
_COMPANIONS: Final = ("-wal", "-shm", "-journal", ".secret")


def _create_private(path: Path) -> None:
    """Create the empty file `path` with FILE_MODE (SQLite takes an empty file for a new database,
    and makes its -wal and -shm with the main file's mode). Raises FileExistsError when it exists."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))


def make_private(path: str | Path) -> None:
    """Create the database's folder (FOLDER_MODE) and file (FILE_MODE) if missing, and tighten the
    modes of an existing deployment's files: the database, its -wal/-shm/-journal, the secret.

    The folder of an existing database is tightened only when everything in it belongs to the
    database (`var/` as the server made it): a database kept in a shared folder leaves it alone.
    Raises OSError when the folder or the file cannot be made.
    """
    path = Path(path)
    folder = path.parent
    if not folder.exists():
        folder.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
    elif folder.resolve() != Path.cwd().resolve() and all(
            p.name.startswith(path.name) for p in folder.iterdir()):
        folder.chmod(FOLDER_MODE)
    try:
        _create_private(path)
    except FileExistsError:
        pass
    for p in [path, *(Path(f"{path}{suffix}") for suffix in _COMPANIONS)]:
        try:
            if p.stat().st_mode & 0o077:
                p.chmod(FILE_MODE)
        except FileNotFoundError:
            pass


def _rows_json(rows: list[Any]) -> str:
    # One JSON array carries a whole batch into one statement (json_each) instead of one
    # round trip to the database thread per message.
    return orjson.dumps(rows).decode()


# Messages waiting for each phone (SPEC 10), counted on the indexes (msg_to, id) and
# (phone, message_id) and only up to the limit ?2: a full mailbox costs at most `limit` index
# entries per batch, a usual one (a few waiting) next to nothing.
_WAITING: Final = """
    SELECT value,
        (SELECT count(*) FROM (SELECT 1 FROM personal_messages WHERE msg_to = value LIMIT ?2))
      + (SELECT count(*) FROM (SELECT 1 FROM group_pending WHERE phone = value LIMIT ?2))
    FROM json_each(?1)"""


async def _waiting(db: aiosqlite.Connection, phones: set[str], limit: int) -> dict[str, int]:
    """How many messages wait for each of `phones`, counted up to `limit`."""
    rows = await db.execute_fetchall(_WAITING, (_rows_json(sorted(phones)), limit))
    return {r[0]: r[1] for r in rows}


# accepted_us (?2) is the batch's time, one value for the whole batch (SPEC 10 retention).
_INSERT_PERSONAL: Final = """
    INSERT INTO personal_messages (msg_from, msg_to, sent_us, sent_timestamp, message, accepted_us)
    SELECT value->>0, value->>1, value->>2, value->>3, value->>4, ?2 FROM json_each(?1) WHERE true
    ON CONFLICT DO NOTHING
    RETURNING msg_from, msg_to, sent_us"""


async def _add_personal_many(db: aiosqlite.Connection, rows: list[Any]) -> list[bool | StoreError]:
    """Insert [msg_from, msg_to, sent_us, sent_timestamp, message, max_waiting] rows in array
    order (which is the acceptance order, `id`); True for each row stored, False for a repeated
    identity, MailboxFull for a row whose recipient already has max_waiting messages waiting."""
    limit = rows[0][5]
    admitted = admit((row[1] for row in rows), await _waiting(db, {row[1] for row in rows}, limit),
                     limit)
    taken = [row[:5] for row, ok in zip(rows, admitted, strict=True) if ok]
    inserted: set[tuple[Any, ...]] = set()
    if taken:
        inserted = {tuple(r) for r in await db.execute_fetchall(
            _INSERT_PERSONAL, (_rows_json(taken), now_micros()))}
    results: list[bool | StoreError] = []
    for row, ok in zip(rows, admitted, strict=True):
        key = (row[0], row[1], row[2])
        if ok:
            results.append(key in inserted)
            inserted.discard(key)  # the same identity twice in one batch: only the first is new
        elif await db.execute_fetchall(SQLITE.is_stored, (row[1], row[0], row[2])):
            results.append(False)  # a retry of a message stored before the mailbox filled up
        else:
            results.append(mailbox_full())
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
    INSERT INTO group_messages (grp, msg_from, sent_us, sent_timestamp, message, accepted_us)
    SELECT value->>0, value->>1, value->>2, value->>3, value->>4, ?2 FROM json_each(?1)
    WHERE EXISTS (SELECT 1 FROM group_members WHERE grp = value->>0 AND phone = value->>1)
    ON CONFLICT DO NOTHING
    RETURNING id, grp, msg_from, sent_us"""
# Every member but the sender, as membership is at this commit, for each new message.
_RECIPIENTS: Final = """
    SELECT g.id, m.phone FROM json_each(?1) AS j
    JOIN group_messages AS g ON g.id = j.value
    JOIN group_members AS m ON m.grp = g.grp AND m.phone <> g.msg_from
    ORDER BY g.id, m.phone"""
_INSERT_PENDING: Final = """
    INSERT INTO group_pending (phone, message_id)
    SELECT value->>0, value->>1 FROM json_each(?1) WHERE true"""
_DELETE_UNADDRESSED: Final = "DELETE FROM group_messages WHERE id IN (SELECT value FROM json_each(?1))"


async def _add_group_many(db: aiosqlite.Connection,
                          rows: list[Any]) -> list[list[str] | None | StoreError]:
    """Insert [grp, msg_from, sent_us, sent_timestamp, message, max_waiting] rows. For each
    row: the phones it is pending for (stored; may be empty in a group of one; members whose
    mailbox is full are left out), None for a repeated identity, or MailboxFull when every
    other member's mailbox is full (then nothing is kept). Raises NotMember (failing only that
    write) when msg_from is not in the group."""
    limit = rows[0][5]
    inserted = await db.execute_fetchall(
        _INSERT_GROUP, (_rows_json([row[:5] for row in rows]), now_micros()))
    ids = {(r[1], r[2], r[3]): r[0] for r in inserted}
    pending: dict[int, list[str]] = {i: [] for i in ids.values()}
    refused: set[int] = set()
    if ids:
        pairs = list(await db.execute_fetchall(_RECIPIENTS, (_rows_json(list(ids.values())),)))
        waiting = await _waiting(db, {phone for _, phone in pairs}, limit)
        taken = []
        for (message_id, phone), ok in zip(pairs, admit((p for _, p in pairs), waiting, limit),
                                           strict=True):
            if ok:
                pending[message_id].append(phone)
                taken.append((phone, message_id))
            else:
                refused.add(message_id)
        if taken:
            await db.execute(_INSERT_PENDING, (_rows_json(taken),))
        unaddressed = [i for i, phones in pending.items() if not phones]
        if unaddressed:  # a group of one, or every recipient full: nothing to keep
            await db.execute(_DELETE_UNADDRESSED, (_rows_json(unaddressed),))
    results: list[list[str] | None | StoreError] = []
    for row in rows:
        message_id = ids.pop((row[0], row[1], row[2]), None)
        if message_id is not None:
            full = message_id in refused and not pending[message_id]
            results.append(mailbox_full() if full else pending[message_id])
        elif not await db.execute_fetchall(SQLITE.is_member, (row[0], row[1])):
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
    ids: dict[int, int] = {r[0]: r[1] for r in await db.execute_fetchall(_GROUP_IDS, (_rows_json(rows),))}
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


# Retention (SPEC 10): the oldest first, on the index of accepted_us (migration 0002).
_EXPIRE_PERSONAL: Final = """
    DELETE FROM personal_messages WHERE id IN (
        SELECT id FROM personal_messages WHERE accepted_us < ?1 ORDER BY accepted_us LIMIT ?2)
    RETURNING msg_from, msg_to, sent_timestamp, sent_us"""
_EXPIRE_GROUP: Final = """
    DELETE FROM group_messages WHERE id IN (
        SELECT id FROM group_messages WHERE accepted_us < ?1 ORDER BY accepted_us LIMIT ?2)
    RETURNING msg_from, grp, sent_timestamp, sent_us"""


def backup_file(source: str | Path, target: str | Path) -> None:
    """Copy the database at `source` into a new file `target` with SQLite's online backup API.

    Safe while the server runs: it reads a consistent snapshot (WAL readers never block the
    writer). Raises FileExistsError when `target` exists, FileNotFoundError when `source` does
    not, StoreError when the copy fails (then no partial `target` is left).
    """
    target = Path(target)
    if not Path(source).is_file():
        raise FileNotFoundError(f"no database at {source}")
    if target.exists():
        raise FileExistsError(f"{target} exists; choose a new file")
    try:
        src = sqlite3.connect(f"file:{Path(source).resolve()}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise _wrap(e) from e
    try:
        # A backup holds what the database holds: owner only (FILE_MODE), made before SQLite opens it.
        _create_private(target)
    except BaseException:
        src.close()
        raise
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            dst.close()
    except BaseException as e:
        target.unlink(missing_ok=True)
        if isinstance(e, sqlite3.Error):
            raise _wrap(e) from e
        raise
    finally:
        src.close()



def _statements(script: str) -> list[str]:
    """The statements of an SQL script, one by one: sqlite3's executescript would commit the
    transaction the migration runs in, so the script is run statement by statement."""
    statements, buffer = [], ""
    for piece in script.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):  # a trigger's body or a string holds `;` too
            if buffer.strip(" \t\n;"):
                statements.append(buffer)
            buffer = ""
    if buffer.strip(" \t\n;"):
        statements.append(buffer)
    return statements


def _wrap(error: BaseException) -> BaseException:
    """StoreError & co as they are; sqlite3's errors as IntegrityError (a constraint) or
    StoreError, with the cause attached."""
    if isinstance(error, StoreError) or not isinstance(error, Exception):
        return error
    constraint = isinstance(error, sqlite3.IntegrityError)
    wrapped = (IntegrityError if constraint else StoreError)(f"{type(error).__name__}: {error}")
    wrapped.__cause__ = error
    return wrapped


class SqliteStore(SqlStore[aiosqlite.Connection]):
    """All persistent state in one SQLite file. Open with `await SqliteStore.open(path)` (or
    `connect(config)`), close with `await store.close()`."""

    SQL = SQLITE
    LIVE_SESSIONS = ("SELECT s.sid_hash, s.last_used_us FROM sessions AS s JOIN users AS u"
                     " ON u.phone = s.phone WHERE s.sid_hash IN (SELECT value FROM json_each(?1))"
                     " AND s.last_used_us > ?2 AND NOT u.disabled")
    TOUCH_SESSIONS = ("UPDATE sessions SET last_used_us = ?2 WHERE sid_hash IN"
                      " (SELECT value FROM json_each(?1)) AND last_used_us < ?3 AND last_used_us > ?4")
    SCHEMA = SCHEMA_PATH
    MIGRATIONS = migrate.MIGRATIONS_DIR / "sqlite"
    RUNNERS = Runners(_add_personal_many, _ack_personal_many, _read_personal_many,
                      _add_group_many, _ack_group_many, _read_group_many, _add_room_many,
                      call_ops)

    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection,
                 scrub_seconds: float, rooms_keep: int, max_waiting: int = 10000) -> None:
        super().__init__(scrub_seconds, rooms_keep, max_waiting)
        self._writer = writer
        self._reader = reader

    @classmethod
    async def connect(cls, config: Config) -> SqliteStore:
        """The store at `[database] path`, with the config's settings."""
        db = config.database
        return await cls.open(db.path, synchronous=db.synchronous, scrub_seconds=db.scrub_seconds,
                              rooms_keep=config.rooms.keep,
                              max_waiting=config.limits.max_waiting_per_recipient)

    @classmethod
    async def open(cls, path: str | Path, *, synchronous: str = "FULL",
                   scrub_seconds: float = 5.0, rooms_keep: int = 1000,
                   max_waiting: int = 10000) -> SqliteStore:
        """Open (creating if needed) the database at `path`, check its integrity, bring its schema
        to this release's version (migrate.py).

        Raises CorruptDatabase when `PRAGMA quick_check` does not answer "ok", SchemaTooNew for a
        database of a newer release, StoreError when SQLite fails otherwise.
        """
        make_private(path)
        try:
            # isolation_level=None: no implicit transactions; we write BEGIN/COMMIT ourselves.
            writer = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as e:
            raise _wrap(e) from e
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
            make_private(path)  # the -wal and -shm exist now; an old deployment's are tightened
            await cls._migrate(writer, str(path))
            reader = await aiosqlite.connect(path, isolation_level=None)
            await reader.execute("PRAGMA query_only=ON")
            await reader.execute("PRAGMA busy_timeout=5000")
            blocks = await reader.execute_fetchall(SQLITE.all_blocks)
        except BaseException as e:
            await writer.close()
            if isinstance(e, sqlite3.Error):
                raise _wrap(e) from e
            raise
        store = cls(writer, reader, scrub_seconds, rooms_keep, max_waiting)
        store._blocks.update((r[0], r[1]) for r in blocks)
        store._start("store")
        return store

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

    @classmethod
    async def _migrate(cls, db: aiosqlite.Connection, where: str) -> None:
        """Bring the schema to this release's version in one transaction (migrate.py). BEGIN
        IMMEDIATE takes the write lock first: two processes opening one file upgrade it in turn."""
        await db.execute("BEGIN IMMEDIATE")
        try:
            tables = {r[0] for r in await db.execute_fetchall(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
                " AND name IN ('schema_version', 'users')")}
            if "schema_version" in tables:
                version = list(await db.execute_fetchall(migrate.READ_VERSION))[0][0]
            else:
                version = 1 if "users" in tables else 0
            steps = migrate.plan(cls.SCHEMA, cls.MIGRATIONS, version, where)
            for number, script in steps:
                log.info("%s: applying schema version %d", where, number)
                for statement in _statements(script):
                    await db.execute(statement)
            if steps or "schema_version" not in tables:
                for statement in migrate.record(steps[-1][0] if steps else version):
                    await db.execute(statement)
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise

    @classmethod
    def backup(cls, config: Config, target: str | Path) -> str:
        """Copy the database at `[database] path` into the new file `target` (`backup_file`);
        returns the path copied."""
        backup_file(config.database.path, target)
        return str(config.database.path)

    # -- group commit hooks -------------------------------------------------------------------

    async def _connection(self) -> aiosqlite.Connection:
        return self._writer

    async def _begin(self, db: aiosqlite.Connection) -> None:
        await db.execute("BEGIN IMMEDIATE")

    async def _commit_transaction(self, db: aiosqlite.Connection) -> None:
        await db.execute("COMMIT")

    async def _rollback(self, db: aiosqlite.Connection | None) -> None:
        try:
            await self._writer.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # no transaction was open

    def _write_fault(self, error: Exception) -> bool:
        return isinstance(error, (sqlite3.Error, NotMember))

    def _wrap(self, error: BaseException) -> BaseException:
        return _wrap(error)

    async def _scrub_once(self) -> float | None:
        """Checkpoint and truncate the WAL, never inside a batch's transaction."""
        async with self._writing:
            try:
                rows = list(await self._writer.execute_fetchall("PRAGMA wal_checkpoint(TRUNCATE)"))
                busy = bool(rows[0][0]) if rows else True
            except sqlite3.Error:
                log.exception("WAL checkpoint failed")
                busy = True
        return CHECKPOINT_RETRY_SECONDS if busy else None

    async def _close_connections(self) -> None:
        await self._reader.close()
        try:
            await self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            await self._writer.close()

    # -- reads and writes of the shared queries (queries.py) ----------------------------------

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        try:
            return list(await self._reader.execute_fetchall(sql, args))
        except sqlite3.Error as e:
            raise _wrap(e) from e

    @staticmethod
    def _text_list(texts: list[str]) -> str:
        return _rows_json(texts)

    @staticmethod
    async def _execute(db: aiosqlite.Connection, sql: str, *args: Any) -> int:
        return (await db.execute(sql, args)).rowcount

    @staticmethod
    async def _execute_many(db: aiosqlite.Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
        await db.executemany(sql, rows)

    @staticmethod
    async def _query(db: aiosqlite.Connection, sql: str, *args: Any) -> list[Any]:
        return list(await db.execute_fetchall(sql, args))

    async def _database_bytes(self) -> int:
        rows = await self._fetch("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()")
        return int(rows[0][0])

    # -- what SQLite says in its own SQL ------------------------------------------------------

    async def update_group(self, key: str, *, name: str | None = None, add: Sequence[str] = (),
                           remove: Sequence[str] = (), admins: Sequence[str] = ()) -> None:
        async def op(db: aiosqlite.Connection) -> None:
            now = now_micros()
            if name is not None:
                await db.execute("UPDATE groups SET name = ? WHERE key = ?", (name, key))
            await db.executemany(SQLITE.add_member, [(key, p, False, now) for p in add])
            await db.executemany("DELETE FROM group_members WHERE grp = ? AND phone = ?",
                                 [(key, p) for p in remove])
            await db.executemany("UPDATE group_members SET is_admin = 1 WHERE grp = ? AND phone = ?",
                                 [(key, p) for p in admins])
            await db.execute(SQLITE.keep_an_admin, (key,))
            await db.execute(SQLITE.drop_empty_group, (key,))
        await self._write(op, deletes=bool(remove))

    async def pending_group_page(self, phone: str, after: int,
                                 limit: int) -> list[tuple[int, GroupMessage]]:
        # keyset pagination on group_pending's primary key (phone, message_id)
        rows = await self._fetch(
            "SELECT m.id, m.grp, m.msg_from, m.message, m.sent_us,"
            " (SELECT json_group_array(phone) FROM (SELECT phone FROM group_pending AS q"
            "  WHERE q.message_id = m.id ORDER BY phone))"
            " FROM group_pending AS p JOIN group_messages AS m ON m.id = p.message_id"
            " WHERE p.phone = ? AND p.message_id > ? ORDER BY p.message_id LIMIT ?",
            phone, after, limit)
        return [(r[0], GroupMessage(r[1], r[2], r[3], r[4], orjson.loads(r[5]))) for r in rows]

    async def expire(self, before_us: int, limit: int) -> list[Expired]:
        async def op(db: aiosqlite.Connection) -> list[Expired]:
            personal = await db.execute_fetchall(_EXPIRE_PERSONAL, (before_us, limit))
            # group_pending rows go with their message (ON DELETE CASCADE)
            group = await db.execute_fetchall(_EXPIRE_GROUP, (before_us, limit))
            return expired(personal, False) + expired(group, True)
        result: list[Expired] = await self._write(op)
        if result:  # only then: an hourly check that found nothing costs no scrub
            self._scrub_soon()
        return result

    async def pending_group_for(self, phone: str) -> list[GroupMessage]:
        rows = await self._fetch(
            "SELECT m.grp, m.msg_from, m.message, m.sent_us,"
            " (SELECT json_group_array(phone) FROM (SELECT phone FROM group_pending AS q"
            "  WHERE q.message_id = m.id ORDER BY phone))"
            " FROM group_pending AS p JOIN group_messages AS m ON m.id = p.message_id"
            " WHERE p.phone = ? ORDER BY m.id", phone)
        return [GroupMessage(r[0], r[1], r[2], r[3], orjson.loads(r[4])) for r in rows]
