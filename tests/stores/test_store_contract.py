"""The stores, one per test: the SQLite Store on tmp_path and, when CHAT_TEST_POSTGRES_URL is set,
the PostgreSQL PgStore on a fresh schema (tests/helpers/backends.py). Both: store-and-forward, group
commit, sessions, users. SQLite only: secure delete checked on the bytes of the database file and
its WAL, corruption. PostgreSQL only: two stores on one schema (as two processes would have), the
blocks mirror kept by NOTIFY, concurrent start-up, VACUUM as its scrub, lost connections."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import asyncpg
import pytest

from chatserver.protocol import Ref, fetch_timestamp, now_micros, parse_timestamp
from chatserver.stores.base import (
    MAX_SAVED_ROOMS,
    Ack,
    Contact,
    CorruptDatabase,
    DialogueSide,
    Expired,
    GroupMessage,
    IntegrityError,
    LastAdmin,
    MailboxFull,
    Room,
    StoreClosed,
    Stored,
    StoredMessage,
    StoreError,
)
from chatserver.stores.postgres import PgStore
from chatserver.stores.sqlite import SqliteStore
from helpers import backends

# The contract tests (those that take `store` or `place`) run once per store engine.
pytestmark = pytest.mark.backends(backends.LOCAL, backends.POSTGRES)

A, B, C = "1000000001", "1000000002", "1000000003"
NOT_A_USER = "1999999999"
TIMEOUT = 10.0  # every test body and every fixture await is bounded by this
T1 = parse_timestamp("2026-03-14 17:11:06.23")
T2 = parse_timestamp("2026-03-14 17:11:07")
T3 = parse_timestamp("2026-03-14 17:11:08")

AnyStore = SqliteStore | PgStore
# Where a store lives: a SQLite file, or a PostgreSQL URL (its test schema in search_path).
Place = Path | str


async def open_store(place: Place, scrub_seconds: float = 60.0, max_waiting: int = 10000,
                     session_seconds: float = 30 * 86_400, rooms_keep: int = 1000) -> AnyStore:
    """Open the store at `place` (bounded by TIMEOUT)."""
    if isinstance(place, Path):
        return await asyncio.wait_for(SqliteStore.open(
            place, synchronous="FULL", scrub_seconds=scrub_seconds, max_waiting=max_waiting,
            session_seconds=session_seconds, rooms_keep=rooms_keep), TIMEOUT)
    return await asyncio.wait_for(PgStore.open(
        place, scrub_seconds=scrub_seconds, max_waiting=max_waiting,
        session_seconds=session_seconds, rooms_keep=rooms_keep), TIMEOUT)


@asynccontextmanager
async def opened(place: Place, scrub_seconds: float = 60.0, max_waiting: int = 10000,
                 session_seconds: float = 30 * 86_400, rooms_keep: int = 1000) -> AsyncIterator[AnyStore]:
    """A store at `place` with users A, B and C; closed on exit."""
    store = await open_store(place, scrub_seconds, max_waiting, session_seconds, rooms_keep)
    try:
        async with asyncio.timeout(TIMEOUT):
            for phone in (A, B, C):
                await store.add_user(phone, f"user {phone}", b"hash")
        yield store
    finally:
        await asyncio.wait_for(store.close(), TIMEOUT)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "chat.db"


@pytest.fixture
def place(backend: backends.Backend, db_path: Path) -> Place:
    """The store of this test's engine: its SQLite file, or its PostgreSQL URL (a fresh schema)."""
    return backend.database_url or db_path


@pytest.fixture
async def store(place: Place) -> AsyncIterator[AnyStore]:
    """A fresh standalone store (not the server's) whose automatic scrub stays out of the way."""
    async with opened(place) as store:
        yield store


@pytest.fixture
async def sqlite_store(db_path: Path) -> AsyncIterator[SqliteStore]:
    """The SQLite store alone: for the checks of its file's bytes."""
    async with opened(db_path) as store:
        assert isinstance(store, SqliteStore)
        yield store


@pytest.fixture
async def pg_store(pg_url: str) -> AsyncIterator[PgStore]:
    """The PostgreSQL store alone."""
    async with opened(pg_url) as store:
        assert isinstance(store, PgStore)
        yield store


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own to the PostgreSQL schema at `url`."""
    conn = await asyncio.wait_for(asyncpg.connect(url), TIMEOUT)
    try:
        yield conn
    finally:
        await asyncio.wait_for(conn.close(), TIMEOUT)


def file_bytes(db_path: Path) -> dict[str, bytes]:
    """The raw bytes of the database file and of its write-ahead log, when present."""
    found = {}
    for path in (db_path, Path(f"{db_path}-wal")):
        if path.exists():
            found[path.name] = path.read_bytes()
    return found


def files_holding(db_path: Path, needle: bytes) -> list[str]:
    """Names of the files (database, -wal) whose bytes contain `needle`."""
    return [name for name, data in file_bytes(db_path).items() if needle in data]


class Trace:
    """Every SQL statement the writer connection runs, stripped and upper-cased."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def __call__(self, statement: str) -> None:
        self.statements.append(statement.strip().upper())

    def count(self, statement: str) -> int:
        return self.statements.count(statement)

    def starting(self, prefix: str) -> int:
        """How many statements start with `prefix` (upper case)."""
        return sum(s.startswith(prefix) for s in self.statements)


async def trace_writer(store: AnyStore) -> Trace:
    """Trace the store's writer connection (private: the only way to count real COMMITs):
    sqlite3's trace callback, or asyncpg's query logger (called soon after each query, before
    the futures of its batch are resolved)."""
    trace = Trace()
    if isinstance(store, PgStore):
        assert store._writer is not None
        store._writer.add_query_logger(lambda record: trace(record.query))
    else:
        await store._writer.set_trace_callback(trace)
    return trace


async def until(store: PgStore, predicate: Callable[[], bool]) -> None:
    """Wait, without polling, until `predicate()` holds after a notification has been applied
    to the store's blocks mirror (the caller bounds the wait)."""
    while True:
        event = store._mirror.updated
        if predicate():
            return
        await event.wait()


# -- store and forward --------------------------------------------------------------------------


async def test_add_personal_is_stored_once_and_a_retry_returns_none(store: AnyStore) -> None:
    async with asyncio.timeout(TIMEOUT):
        assert await store.add_personal(A, B, T1, "2026-03-14 17:11:06.23", "hello") == Stored([B], 0)
        # the same identity (msg_from, msg_to, instant), spelled differently: a retry
        assert await store.add_personal(A, B, T1, "2026-03-14T17:11:06.230000Z", "hello") is None
        assert await store.add_personal(A, B, T1, "2026-03-14 17:11:06.23", "changed") is None
        assert await store.pending_for(B) == [StoredMessage(A, B, "hello", T1)]
        assert (await store.dialogue_side(A, B)).waiting == 1


async def test_identity_includes_sender_and_recipient(store: AnyStore) -> None:
    async with asyncio.timeout(TIMEOUT):
        assert await store.add_personal(A, B, T1, "t", "a to b")
        assert await store.add_personal(A, C, T1, "t", "a to c")
        assert await store.add_personal(C, B, T1, "t", "c to b")
        assert await store.add_personal(B, A, T1, "t", "b to a")
        assert [m.message for m in await store.pending_for(B)] == ["a to b", "c to b"]
        assert [m.message for m in await store.pending_for(C)] == ["a to c"]
        assert [m.message for m in await store.pending_for(A)] == ["b to a"]


async def test_pending_for_is_acceptance_order_not_timestamp_order(store: AnyStore) -> None:
    async with asyncio.timeout(TIMEOUT):
        assert await store.pending_for(B) == []
        assert await store.add_personal(A, B, T3, "t3", "first")
        assert await store.add_personal(C, B, T1, "t1", "second")
        assert await store.add_personal(A, B, T1, "t1", "third")
        assert await store.add_personal(A, B, T2, "t2", "fourth")
        assert await store.pending_for(B) == [
            StoredMessage(A, B, "first", T3),
            StoredMessage(C, B, "second", T1),
            StoredMessage(A, B, "third", T1),
            StoredMessage(A, B, "fourth", T2),
        ]
        assert await store.pending_for(A) == []


async def test_stored_body_is_kept_exactly(store: AnyStore) -> None:
    body = "héllo 🎉\n\t\"quoted\" ' ; DROP TABLE users; --" + "x" * 5000
    async with asyncio.timeout(TIMEOUT):
        assert await store.add_personal(A, B, T1, "t", body)
        assert [m.message for m in await store.pending_for(B)] == [body]


async def test_ack_personal_deletes_and_sets_last_received_receiver(store: AnyStore) -> None:
    async with asyncio.timeout(TIMEOUT):
        await store.add_session("b-1", B)  # B's one device
        assert await store.add_personal(A, B, T1, "t1", "one")
        assert await store.add_personal(A, B, T2, "t2", "two")
        assert await store.dialogue_side(A, B) == DialogueSide(None, None, 2)
        # B has stored A's first message on its device
        assert await store.ack_personal(A, B, T1, "2026-03-14 17:12:00.000", "b-1") is Ack.FIRST
        assert await store.pending_for(B) == [StoredMessage(A, B, "two", T2)]
        assert await store.dialogue_side(A, B) == DialogueSide("2026-03-14 17:12:00.000", None, 1)
        assert await store.dialogue_side(B, A) == DialogueSide(None, None, 0)  # the other direction
        assert await store.ack_personal(A, B, T2, "2026-03-14 17:12:01.000", "b-1") is Ack.FIRST
        assert await store.pending_for(B) == []
        assert await store.dialogue_side(A, B) == DialogueSide("2026-03-14 17:12:01.000", None, 0)


async def test_ack_personal_of_no_such_message_returns_missing_and_changes_nothing(
        store: AnyStore) -> None:
    async with asyncio.timeout(TIMEOUT):
        for sid, phone in (("a-1", A), ("b-1", B), ("c-1", C)):
            await store.add_session(sid, phone)
        received = "2026-03-14 17:12:00.000"
        assert await store.ack_personal(A, B, T1, received, "b-1") is Ack.MISSING  # nothing stored
        # sent from A's only device: no copy waits for it (SPEC 7.2)
        assert await store.add_personal(A, B, T1, "t1", "one", "a-1") == Stored([B], 0)
        assert await store.ack_personal(B, A, T1, received, "a-1") is Ack.MISSING  # wrong direction
        assert await store.ack_personal(A, C, T1, received, "c-1") is Ack.MISSING  # wrong recipient
        assert await store.ack_personal(A, B, T2, received, "b-1") is Ack.MISSING  # wrong instant
        assert await store.pending_for(B) == [StoredMessage(A, B, "one", T1)]
        assert await store.dialogue_side(A, B) == DialogueSide(None, None, 1)
        assert await store.ack_personal(A, B, T1, received, "b-1") is Ack.FIRST
        assert await store.ack_personal(A, B, T1, "2026-03-14 17:13:00.000", "b-1") is Ack.MISSING  # twice
        assert (await store.dialogue_side(A, B)).last_received_receiver == received


async def test_after_ack_the_same_identity_can_be_stored_again(store: AnyStore) -> None:
    """The retry guard lasts while the first copy is stored (SPEC 5.1), not forever."""
    async with asyncio.timeout(TIMEOUT):
        await store.add_session("b-1", B)
        assert await store.add_personal(A, B, T1, "t1", "one")
        assert await store.ack_personal(A, B, T1, "2026-03-14 17:12:00.000", "b-1") is Ack.FIRST
        assert await store.add_personal(A, B, T1, "t1", "one again") == Stored([B], 0)
        assert [m.message for m in await store.pending_for(B)] == ["one again"]


async def test_read_personal_sets_last_seen_receiver_and_deletes_nothing(store: AnyStore) -> None:
    async with asyncio.timeout(TIMEOUT):
        await store.add_session("b-1", B)
        assert await store.add_personal(A, B, T1, "t1", "one")
        await store.read_personal(A, B, "2026-03-14 17:12:00.000")
        assert await store.dialogue_side(A, B) == DialogueSide(None, "2026-03-14 17:12:00.000", 1)
        assert await store.dialogue_side(B, A) == DialogueSide(None, None, 0)
        assert len(await store.pending_for(B)) == 1
        # needs no stored message and no dialogue before it
        await store.read_personal(C, A, "2026-03-14 17:12:05.000")
        assert await store.dialogue_side(C, A) == DialogueSide(None, "2026-03-14 17:12:05.000", 0)
        # a later read moves it; the received mark is independent
        await store.read_personal(A, B, "2026-03-14 17:13:00.000")
        assert await store.ack_personal(A, B, T1, "2026-03-14 17:12:30.000", "b-1") is Ack.FIRST
        assert await store.dialogue_side(A, B) == DialogueSide(
            "2026-03-14 17:12:30.000", "2026-03-14 17:13:00.000", 0)


async def test_dialogues(store: AnyStore) -> None:
    async with asyncio.timeout(TIMEOUT):
        assert await store.dialogues_of(A) == []
        assert await store.add_personal(A, B, T1, "t1", "one")
        assert await store.dialogues_of(A) == [B]
        assert await store.dialogues_of(B) == [A]
        await store.open_dialogue(C, A)
        await store.open_dialogue(C, A)  # idempotent
        await store.open_dialogue(A, C)
        assert await store.dialogues_of(A) == [B, C]
        assert await store.dialogues_of(C) == [A]


async def test_unknown_recipient_is_refused_by_the_foreign_key(store: AnyStore) -> None:
    async with asyncio.timeout(TIMEOUT):
        with pytest.raises(IntegrityError):
            await store.add_personal(A, NOT_A_USER, T1, "t1", "to nobody")
        assert await store.pending_for(NOT_A_USER) == []
        assert await store.add_personal(A, B, T1, "t1", "still works")


async def test_reopening_keeps_stored_messages(place: Place) -> None:
    async with opened(place) as store:
        async with asyncio.timeout(TIMEOUT):
            assert await store.add_personal(A, B, T1, "t1", "survives a restart")
    async with opened(place) as store:  # add_user of A, B, C again: taken, no harm
        async with asyncio.timeout(TIMEOUT):
            assert await store.pending_for(B) == [StoredMessage(A, B, "survives a restart", T1)]


async def test_close_finishes_the_write_in_flight(place: Place) -> None:
    store = await open_store(place)
    closed = False
    try:
        async with asyncio.timeout(TIMEOUT):
            await store.add_user(A, "a", b"h")
            await store.add_user(B, "b", b"h")
            # gather starts add_personal first: its write is queued when close() begins
            stored, _ = await asyncio.gather(store.add_personal(A, B, T1, "t1", "queued"), store.close())
        closed = True
        assert stored == Stored([B], 0)
        with pytest.raises(StoreClosed):
            await asyncio.wait_for(store.add_personal(A, B, T2, "t2", "too late"), TIMEOUT)
        with pytest.raises(StoreClosed):
            await asyncio.wait_for(store.scrub(), TIMEOUT)
    finally:
        if not closed:
            await asyncio.wait_for(store.close(), TIMEOUT)
    async with opened(place) as reopened:
        async with asyncio.timeout(TIMEOUT):
            assert [m.message for m in await reopened.pending_for(B)] == ["queued"]


# -- group commit -------------------------------------------------------------------------------


async def test_sequential_writes_commit_one_by_one(store: AnyStore) -> None:
    """Control for the batching test: the trace really sees one COMMIT per lone write."""
    async with asyncio.timeout(TIMEOUT):
        trace = await trace_writer(store)
        for i in range(5):
            assert await store.add_personal(A, B, i, f"t{i}", f"m{i}")
        assert trace.count("COMMIT") == 5


async def test_group_commit_batches_concurrent_writes(store: AnyStore) -> None:
    """200 concurrent add_personal share a few transactions, and each caller hears after COMMIT."""
    n = 200
    async with asyncio.timeout(TIMEOUT):
        trace = await trace_writer(store)
        results = await asyncio.gather(*(
            store.add_personal(A if i % 2 else C, B, i, f"t{i}", f"message {i}") for i in range(n)))
        assert results == [Stored([B], 0)] * n
        commits = trace.count("COMMIT")
        assert 1 <= commits <= n // 20, f"{n} concurrent writes took {commits} commits"
        assert trace.starting("BEGIN") == commits
        if isinstance(store, PgStore):  # sqlite3's trace repeats the text for each trigger run
            # one statement per kind of write per batch, whatever the batch's size
            assert trace.starting("INSERT INTO PERSONAL_MESSAGES") == commits
        # acceptance order is submission order, also inside one batch
        assert [m.message for m in await store.pending_for(B)] == [f"message {i}" for i in range(n)]


async def test_group_commit_resolves_only_after_commit(sqlite_store: SqliteStore, db_path: Path) -> None:
    """msg_sent may go out only after the commit holding the row: when add_personal returns, an
    independent connection already sees the row (WAL readers see committed data only)."""
    async with asyncio.timeout(TIMEOUT):
        with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as other:
            visible: list[int] = []

            async def add(i: int) -> None:
                assert await sqlite_store.add_personal(A, B, i, f"t{i}", f"m{i}")
                # checked at once, on this thread, before anything else can run
                (count,) = other.execute(
                    "SELECT count(*) FROM personal_messages WHERE sent_us = ?", (i,)).fetchone()
                visible.append(count)

            await asyncio.gather(*(add(i) for i in range(50)))
            assert visible == [1] * 50


async def test_a_failing_op_fails_alone_in_its_batch(store: AnyStore) -> None:
    """A foreign-key violation in one write of a batch fails that write only."""
    async with asyncio.timeout(TIMEOUT):
        trace = await trace_writer(store)
        results = await asyncio.gather(
            store.add_personal(A, B, T1, "t1", "before"),
            store.add_personal(A, NOT_A_USER, T1, "t1", "to nobody"),
            store.add_personal(C, B, T1, "t1", "after"),
            return_exceptions=True,
        )
        assert results[0] == Stored([B], 0)
        assert isinstance(results[1], IntegrityError)
        assert results[2] == Stored([B], 0)
        # they did share a transaction: it was rolled back, and the good writes committed together
        assert trace.count("ROLLBACK") >= 1
        assert trace.count("COMMIT") == 1
        assert [m.message for m in await store.pending_for(B)] == ["before", "after"]
        assert await store.pending_for(NOT_A_USER) == []
        # the writer is still alive
        assert await store.add_personal(A, B, T2, "t2", "later") == Stored([B], 0)


async def test_several_failing_ops_in_one_batch(store: AnyStore) -> None:
    async with asyncio.timeout(TIMEOUT):
        results = await asyncio.gather(*(
            store.add_personal(A, B if i % 3 else NOT_A_USER, i, f"t{i}", f"m{i}") for i in range(30)),
            return_exceptions=True)
        for i, result in enumerate(results):
            if i % 3:
                assert result == Stored([B], 0)
            else:
                assert isinstance(result, IntegrityError)
        assert [m.message for m in await store.pending_for(B)] == [f"m{i}" for i in range(30) if i % 3]


# -- secure delete (SPEC 6) ---------------------------------------------------------------------


def unique_body(size: int) -> tuple[str, bytes]:
    """A message body that cannot occur by chance in a database file, and the bytes to look for."""
    marker = f"secret-{uuid.uuid4().hex}"
    body = (marker + " ") * max(1, size // (len(marker) + 1))
    return body, marker.encode()


@pytest.mark.parametrize("size", [40, 20_000], ids=["in-page", "overflow-pages"])
async def test_scrub_removes_an_acknowledged_body_from_the_file_and_the_wal(
        sqlite_store: SqliteStore, db_path: Path, size: int) -> None:
    body, needle = unique_body(size)
    async with asyncio.timeout(TIMEOUT):
        await sqlite_store.add_session("b-1", B)
        assert await sqlite_store.add_personal(A, B, T1, "t1", body)
        assert await sqlite_store.add_personal(A, B, T2, "t2", "another message that stays")
        assert files_holding(db_path, needle), "control: the stored body is in the files"
        assert await sqlite_store.ack_personal(A, B, T1, "2026-03-14 17:12:00.000", "b-1") is Ack.FIRST
        await sqlite_store.scrub()
        assert files_holding(db_path, needle) == []
        assert [m.message for m in await sqlite_store.pending_for(B)] == ["another message that stays"]


async def test_the_writer_scrubs_by_itself_within_scrub_seconds(db_path: Path) -> None:
    scrub_seconds = 0.3
    body, needle = unique_body(40)
    async with opened(db_path, scrub_seconds=scrub_seconds) as store:
        async with asyncio.timeout(TIMEOUT):
            loop = asyncio.get_running_loop()
            await store.add_session("b-1", B)
            assert await store.add_personal(A, B, T1, "t1", body)
            assert files_holding(db_path, needle), "control: the stored body is in the files"
            assert await store.ack_personal(A, B, T1, "2026-03-14 17:12:00.000", "b-1") is Ack.FIRST
            acked = loop.time()
            deadline = acked + scrub_seconds + 3.0  # generous slack for a loaded machine
            while files_holding(db_path, needle):  # poll for the background effect, no fixed wait
                assert loop.time() < deadline, f"body still in {files_holding(db_path, needle)}"
                await asyncio.sleep(0.02)


async def test_scrub_after_delete_user_removes_their_messages(
        sqlite_store: SqliteStore, db_path: Path) -> None:
    body, needle = unique_body(40)
    async with asyncio.timeout(TIMEOUT):
        assert await sqlite_store.add_personal(A, B, T1, "t1", body)
        assert files_holding(db_path, needle), "control: the stored body is in the files"
        assert await sqlite_store.delete_user(A)
        await sqlite_store.scrub()
        assert files_holding(db_path, needle) == []


async def test_close_leaves_no_acknowledged_body_behind(db_path: Path) -> None:
    body, needle = unique_body(40)
    async with opened(db_path) as store:
        async with asyncio.timeout(TIMEOUT):
            await store.add_session("b-1", B)
            assert await store.add_personal(A, B, T1, "t1", body)
            assert files_holding(db_path, needle), "control: the stored body is in the files"
            assert await store.ack_personal(A, B, T1, "2026-03-14 17:12:00.000", "b-1") is Ack.FIRST
    assert files_holding(db_path, needle) == []


async def test_scrub_keeps_unacknowledged_messages(sqlite_store: SqliteStore, db_path: Path) -> None:
    body, needle = unique_body(40)
    async with asyncio.timeout(TIMEOUT):
        assert await sqlite_store.add_personal(A, B, T1, "t1", body)
        await sqlite_store.scrub()
        assert files_holding(db_path, needle) == [db_path.name]  # checkpointed into the main file
        assert [m.message for m in await sqlite_store.pending_for(B)] == [body]


# -- retention, mailbox limit, pages (SPEC 10; issue 12 finding 4) ------------------------------

G: Final = "G123456789"


async def place_rows(place: Place, sql: str) -> list[tuple[Any, ...]]:
    """Rows of one query on a connection of the test's own (the SQLite file read-only)."""
    if isinstance(place, Path):
        with contextlib.closing(sqlite3.connect(f"file:{place}?mode=ro", uri=True)) as con:
            return con.execute(sql).fetchall()
    async with connected(place) as conn:
        return [tuple(r) for r in await conn.fetch(sql)]


async def test_every_insert_records_when_it_was_accepted(store: AnyStore, place: Place) -> None:
    """accepted_us is the server's clock at the commit (SQLite's column default is 0, and would
    make every message expire at the first check)."""
    async with asyncio.timeout(TIMEOUT):
        assert await store.create_group(G, "g", A, [B, C])
        before = now_micros()
        assert await store.add_personal(A, B, T1, "t1", "personal")
        assert await store.add_group_message(G, A, T1, "t1", "group") == Stored([B, C], 0)
        after = now_micros()
        stamps = await place_rows(place, "SELECT accepted_us FROM personal_messages"
                                         " UNION ALL SELECT accepted_us FROM group_messages")
        assert len(stamps) == 2 and all(before <= s <= after for (s,) in stamps), (before, stamps, after)


async def test_expire_deletes_what_was_accepted_before_and_returns_it_once(
        store: AnyStore, place: Place) -> None:
    async with asyncio.timeout(TIMEOUT):
        await store.add_session("b-1", B)  # waited for by B's device until it expires
        assert await store.create_group(G, "g", A, [B, C])
        assert await store.add_personal(A, B, T1, "2026-03-14 17:11:06.23", "old personal")
        assert (await store.add_group_message(G, C, T1, "2026-03-14T17:11:06.230Z", "old group")
                == Stored([A, B], 0))
        cut = now_micros()
        assert await store.add_personal(A, B, T2, "t2", "new personal")
        assert await store.add_group_message(G, C, T2, "t2", "new group") == Stored([A, B], 0)
        assert await store.expire(cut, 100) == [
            Expired(A, B, "2026-03-14 17:11:06.23", T1, False),
            Expired(C, G, "2026-03-14T17:11:06.230Z", T1, True)]
        assert await store.expire(cut, 100) == []  # gone: told once
        assert await store.pending_for(B) == [StoredMessage(A, B, "new personal", T2)]
        assert await store.pending_group_for(B) == [GroupMessage(G, C, "new group", T2, [A, B])]
        assert await store.pending_group_for(A) == [GroupMessage(G, C, "new group", T2, [A, B])]
        # the expired message's pending rows went with it
        assert await place_rows(place, "SELECT count(*) FROM group_pending") == [(2,)]
        # nothing is left that an acknowledgement could find, nor any delivery row
        assert await store.ack_personal(A, B, T1, "2026-03-14 17:12:00.000", "b-1") is Ack.MISSING
        assert await store.ack_group(G, C, T1, B, "b-1") is Ack.MISSING
        assert [m for _, m in await store.pending_page("b-1", 0, 10)] == [
            StoredMessage(A, B, "new personal", T2)]
        assert [m for _, m in await store.pending_group_page("b-1", 0, 10)] == [
            GroupMessage(G, C, "new group", T2, [A, B])]


async def test_expire_takes_the_oldest_first_and_at_most_limit(store: AnyStore) -> None:
    async with asyncio.timeout(TIMEOUT):
        for i in range(5):
            assert await store.add_personal(A, B, T1 + i, f"t{i}", f"m{i}")
        cut = now_micros()
        got = []
        for want in (2, 2, 1, 0):
            batch = await store.expire(cut, 2)
            assert len(batch) == want
            got += [e.sent_timestamp for e in batch]
        assert got == [f"t{i}" for i in range(5)]
        assert await store.pending_for(B) == []


async def test_expired_bodies_are_scrubbed_by_the_store_s_timer(db_path: Path) -> None:
    """SPEC 6 for expiry: the expired body is gone from the file and its WAL within scrub_seconds,
    without anyone calling scrub()."""
    scrub_seconds = 0.3
    body, needle = unique_body(40)
    async with opened(db_path, scrub_seconds=scrub_seconds) as store:
        async with asyncio.timeout(TIMEOUT):
            loop = asyncio.get_running_loop()
            assert await store.add_personal(A, B, T1, "t1", body)
            assert files_holding(db_path, needle), "control: the stored body is in the files"
            assert len(await store.expire(now_micros(), 10)) == 1
            deadline = loop.time() + scrub_seconds + 3.0  # generous slack for a loaded machine
            while files_holding(db_path, needle):  # poll for the background effect, no fixed wait
                assert loop.time() < deadline, f"body still in {files_holding(db_path, needle)}"
                await asyncio.sleep(0.02)


async def test_pg_two_processes_expiring_at_once_tell_each_message_once(
        pg_store: PgStore, pg_url: str) -> None:
    async with asyncio.timeout(3 * TIMEOUT), opened(pg_url) as second:
        assert await pg_store.create_group(G, "g", A, [B, C])
        for round_ in range(3):
            base = round_ * 1000
            for i in range(60):
                assert await pg_store.add_personal(A, B, base + i, f"p{base + i}", "m")
                assert (await second.add_group_message(G, A, base + i, f"g{base + i}", "m")
                        == Stored([B, C], 0))
            cut = now_micros()
            found: list[Expired] = []
            while True:  # as retention.expire_once does, in both processes at once
                one, two = await asyncio.gather(pg_store.expire(cut, 7), second.expire(cut, 7))
                found += one + two
                if not one and not two:
                    break
            stamps = sorted(e.sent_timestamp for e in found)
            assert stamps == sorted([f"p{base + i}" for i in range(60)] + [f"g{base + i}" for i in range(60)])
            assert await pg_store.pending_for(B) == []
            assert await pg_store.pending_group_for(C) == []


async def test_a_full_mailbox_refuses_a_new_message_and_stores_nothing(place: Place) -> None:
    """limits.max_waiting_per_recipient (SPEC 10): personal messages to B and group messages
    pending for B count together; a retry of a stored message is still a retry."""
    async with opened(place, max_waiting=3) as store, asyncio.timeout(TIMEOUT):
        await store.add_session("b-1", B)
        assert await store.create_group(G, "g", A, [B, C])
        assert await store.add_personal(A, B, T1, "t1", "one")
        assert await store.add_group_message(G, C, T1, "t1", "two") == Stored([A, B], 0)
        assert await store.add_personal(C, B, T1, "t1", "three")
        with pytest.raises(MailboxFull, match="^recipient's mailbox is full$"):
            await store.add_personal(A, B, T2, "t2", "four")
        assert await store.add_personal(A, B, T1, "t1", "one") is None  # a retry, not refused
        assert [m.message for m in await store.pending_for(B)] == ["one", "three"]
        assert await store.dialogue_side(A, B) == DialogueSide(None, None, 1)
        # a group message skips a full member, and is refused when everyone is full
        assert await store.add_group_message(G, A, T2, "t2", "to c only") == Stored([C], 0)
        assert await store.add_group_message(G, A, T3, "t3", "to c again") == Stored([C], 0)
        assert await store.add_personal(B, C, T1, "t1", "c is full now") == Stored([C], 1)
        with pytest.raises(MailboxFull):
            await store.add_group_message(G, A, T3 + 1, "t4", "to nobody")
        assert [m.message for m in await store.pending_group_for(C)] == ["to c only", "to c again"]
        assert await place_rows(place, "SELECT count(*) FROM group_messages") == [(3,)]
        # one acknowledgement makes room for one
        assert await store.ack_personal(A, B, T1, "2026-03-14 17:12:00.000", "b-1") is Ack.FIRST
        assert await store.add_personal(A, B, T2, "t2", "four") == Stored([B], 0)
        with pytest.raises(MailboxFull):
            await store.add_personal(A, B, T3, "t3", "five")


async def test_a_batch_fills_a_mailbox_exactly(place: Place) -> None:
    """Messages committed in one batch are counted one by one: the first ones fill the mailbox,
    the rest fail alone, and the other writes of the batch commit."""
    async with opened(place, max_waiting=3) as store, asyncio.timeout(TIMEOUT):
        writes = [store.add_personal(A, B, T1 + i, f"t{i}", f"m{i}") for i in range(5)]
        writes.append(store.add_personal(A, C, T1, "t", "to c"))
        results = await asyncio.gather(*writes, return_exceptions=True)
        assert results[:3] == [Stored([B], 0)] * 3 and results[5] == Stored([C], 0), results
        assert all(isinstance(r, MailboxFull) for r in results[3:5]), results
        assert [m.message for m in await store.pending_for(B)] == ["m0", "m1", "m2"]


async def test_pages_come_back_complete_in_order(store: AnyStore) -> None:
    """A backlog of 2.5 pages in 3 keyset pages, each starting after the last one's position: all
    that waits for B's device."""
    async with asyncio.timeout(TIMEOUT):
        await store.add_session("b-1", B)
        assert await store.create_group(G, "g", A, [B, C])
        for i in range(25):
            assert await store.add_personal(A if i % 2 else C, B, T1 + i, f"t{i}", f"p{i}")
            assert await store.add_group_message(G, A if i % 2 else C, T1 + i, f"t{i}", f"g{i}")
        for read, everything in ((store.pending_page, await store.pending_for(B)),
                                 (store.pending_group_page, await store.pending_group_for(B))):
            pages, after = [], 0
            while True:
                page = await read("b-1", after, 10)  # type: ignore[operator]  # either page method
                pages.append(page)
                if len(page) < 10:
                    break
                after = page[-1][0]
            assert [len(p) for p in pages] == [10, 10, 5]
            positions = [n for p in pages for n, _ in p]
            assert positions == sorted(positions) and len(set(positions)) == 25
            assert [m for p in pages for _, m in p] == everything
            assert len(everything) == 25
        # a device of C, added later: no personal message to C, and no copy of C's own ones
        await store.add_session("c-1", C)
        assert await store.pending_page("c-1", 0, 10) == []
        assert await store.pending_page("no-such-device", 0, 10) == []


# -- sessions -----------------------------------------------------------------------------------


async def test_sessions_add_lookup_delete(store: AnyStore) -> None:
    async with asyncio.timeout(TIMEOUT):
        await store.add_session("hash-a", A)
        await store.add_session("hash-b", B)
        assert await store.session_user("hash-a", 3600) == A
        assert await store.session_user("hash-b", 3600) == B
        assert await store.session_user("no-such-hash", 3600) is None
        await store.delete_session("hash-a")
        assert await store.session_user("hash-a", 3600) is None
        assert await store.session_user("hash-b", 3600) == B
        await store.delete_session("no-such-hash")  # harmless


async def test_session_of_an_unknown_phone_is_refused(store: AnyStore) -> None:
    async with asyncio.timeout(TIMEOUT):
        with pytest.raises(IntegrityError):
            await store.add_session("hash-x", NOT_A_USER)
        assert await store.session_user("hash-x", 3600) is None


async def test_session_expires_after_max_age(store: AnyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    async with asyncio.timeout(TIMEOUT):
        two_hours_ago = now_micros() - 2 * 3600 * 1_000_000
        with monkeypatch.context() as m:  # the clock of the shared queries
            m.setattr(sys.modules["chatserver.stores.queries"], "now_micros", lambda: two_hours_ago)
            await store.add_session("old", A)
        await store.add_session("new", A)
        assert await store.session_user("old", 3600) is None
        assert await store.session_user("old", 3 * 3600) == A
        assert await store.session_user("new", 3600) == A


async def test_live_sessions_keeps_the_recorded_and_unexpired(
        store: AnyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 12: the one query a server process makes about its sockets' sessions."""
    async with asyncio.timeout(TIMEOUT):
        two_hours_ago = now_micros() - 2 * 3600 * 1_000_000
        with monkeypatch.context() as m:
            m.setattr(sys.modules["chatserver.stores.queries"], "now_micros", lambda: two_hours_ago)
            await store.add_session("old", A)
        for sid_hash in ("a-1", "a-2", "b-1", "quote'\"]"):
            await store.add_session(sid_hash, A if sid_hash != "b-1" else B)
        asked = ["a-1", "a-2", "b-1", "old", "gone", "quote'\"]", "a-1"]
        assert await store.live_sessions(asked, 3600) == {"a-1", "a-2", "b-1", "quote'\"]"}
        assert await store.live_sessions(asked, 3 * 3600) == {"a-1", "a-2", "b-1", "old",
                                                               "quote'\"]"}
        assert await store.live_sessions([], 3600) == set()
        assert await store.live_sessions(("gone",), 3600) == set()
        await store.delete_session("a-1")
        assert await store.set_password(B, b"new hash")
        # Asked while live (at 3 hours), "old" was used (SPEC 7: an open socket): live again.
        assert await store.live_sessions(asked, 3600) == {"a-2", "old", "quote'\"]"}
        assert await store.delete_user(A)
        assert await store.live_sessions(asked, 3 * 3600) == set()


async def test_live_sessions_leaves_out_a_disabled_account(store: AnyStore, place: Place) -> None:
    """SPEC 10: a disabled user's devices end, whoever set the flag (here: another connection,
    as an admin's request served by another process, or a hand-made UPDATE)."""
    async with asyncio.timeout(TIMEOUT):
        await store.add_session("a-1", A)
        await store.add_session("b-1", B)
        if isinstance(place, Path):
            with contextlib.closing(sqlite3.connect(place)) as con, con:
                con.execute("UPDATE users SET disabled = 1 WHERE phone = ?", (A,))
        else:
            async with connected(place) as conn:
                await conn.execute("UPDATE users SET disabled = true WHERE phone = $1", A)
        assert await store.live_sessions(["a-1", "b-1"], 3600) == {"b-1"}


async def test_live_sessions_past_one_batch(store: AnyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """More hashes than one query carries: every batch is asked."""
    monkeypatch.setattr(sys.modules["chatserver.stores.queries"], "LIVE_SESSIONS_BATCH", 3)
    async with asyncio.timeout(TIMEOUT):
        live = [f"live-{i}" for i in range(7)]
        for sid_hash in live:
            await store.add_session(sid_hash, A)
        asked = [h for i, h in enumerate(live) for h in (h, f"gone-{i}")]
        assert await store.live_sessions(asked, 3600) == set(live)


@contextlib.contextmanager
def clock_at(monkeypatch: pytest.MonkeyPatch, when_us: int) -> Iterator[None]:
    """The shared queries' clock (every session time is taken there) reads `when_us`."""
    with monkeypatch.context() as m:
        m.setattr(sys.modules["chatserver.stores.queries"], "now_micros", lambda: when_us)
        yield


async def last_used(store: AnyStore, phone: str, device_id: str) -> int:
    found = [d.last_used_us for d in await store.devices(phone, None, 10**9) if d.id == device_id]
    assert len(found) == 1
    return found[0]


async def test_a_session_expires_after_its_last_use_not_its_creation(
        store: AnyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """SPEC 7: a request (session_user) is a use; both made 2 hours ago with a lifetime of one,
    one used 90 and 40 minutes ago: that one lives on, the other expired an hour after its
    creation."""
    async with asyncio.timeout(TIMEOUT):
        now = now_micros()
        hour = 3600 * 1_000_000
        with clock_at(monkeypatch, now - 2 * hour):
            await store.add_session("used", A)
            await store.add_session("unused", A)
        for minutes_ago in (90, 40):
            with clock_at(monkeypatch, now - minutes_ago * 60 * 1_000_000):
                assert await store.session_user("used", 3600) == A
        assert await store.session_user("used", 3600) == A
        assert await store.session_user("unused", 3600) is None
        # Refused is not a use: still expired when asked with a longer lifetime.
        assert await store.session_user("unused", 3 * 3600) == A
        assert await store.session_user("unused", 3600) == A  # ... which was a use


async def test_a_use_is_recorded_at_most_once_a_minute(
        store: AnyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    async with asyncio.timeout(TIMEOUT):
        now = now_micros()
        with clock_at(monkeypatch, now - 30_000_000):
            device = await store.add_session("s", A)
        assert await last_used(store, A, device) == now - 30_000_000
        with clock_at(monkeypatch, now):
            assert await store.session_user("s", 3600) == A  # 30 s after the last: not recorded
            assert await store.live_sessions(["s"], 3600) == {"s"}
        assert await last_used(store, A, device) == now - 30_000_000
        with clock_at(monkeypatch, now + 31_000_000):
            assert await store.session_user("s", 3600) == A  # 61 s: recorded
        assert await last_used(store, A, device) == now + 31_000_000
        # A short lifetime records a use after a tenth of it (here 1 s).
        with clock_at(monkeypatch, now + 32_100_000):
            assert await store.session_user("s", 10) == A
        assert await last_used(store, A, device) == now + 32_100_000


async def test_live_sessions_records_a_use_of_the_live_ones(
        store: AnyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """SPEC 7: a socket open at the session check is a use of its session."""
    async with asyncio.timeout(TIMEOUT):
        now = now_micros()
        hour = 3600 * 1_000_000
        with clock_at(monkeypatch, now - 2 * hour):
            ids = {h: await store.add_session(h, A) for h in ("open", "closed", "expired")}
        with clock_at(monkeypatch, now - 90 * 60 * 1_000_000):
            assert await store.live_sessions(["open", "closed"], 3600) == {"open", "closed"}
        with clock_at(monkeypatch, now - 40 * 60 * 1_000_000):
            assert await store.live_sessions(["open", "expired"], 3600) == {"open"}
        assert await last_used(store, A, ids["open"]) == now - 40 * 60 * 1_000_000
        assert await last_used(store, A, ids["closed"]) == now - 90 * 60 * 1_000_000
        assert await last_used(store, A, ids["expired"]) == now - 2 * hour  # not brought back
        assert await store.live_sessions(["open", "closed", "expired"], 3600) == {"open"}
        assert (await store.account(A, 3600)).devices == 1  # type: ignore[union-attr]
        assert (await store.stats(3600)).devices == 1


async def test_devices_lists_a_users_live_sessions_newest_first(
        store: AnyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    async with asyncio.timeout(TIMEOUT):
        now = now_micros()
        with clock_at(monkeypatch, now - 3 * 3600 * 1_000_000):
            await store.add_session("a-gone", A, "Safari on iPhone")
        with clock_at(monkeypatch, now - 20_000_000):
            laptop = await store.add_session("a-laptop", A, "Firefox on Linux")
        with clock_at(monkeypatch, now - 10_000_000):
            phone = await store.add_session("a-phone", A, "Chrome on Android")
        await store.add_session("b-1", B, "Edge on Windows")
        listed = await store.devices(A, "a-laptop", 3600)
        assert [(d.id, d.label, d.created_us, d.last_used_us, d.current) for d in listed] == [
            (phone, "Chrome on Android", now - 10_000_000, now - 10_000_000, False),
            (laptop, "Firefox on Linux", now - 20_000_000, now - 20_000_000, True)]
        assert len({laptop, phone}) == 2 and all(len(i) == 16 for i in (laptop, phone))
        assert not {laptop, phone} & {"a-laptop", "a-phone"}
        assert [d.current for d in await store.devices(A, None, 3600)] == [False, False]
        assert await store.devices(C, None, 3600) == []


async def test_delete_device_takes_only_the_users_own(store: AnyStore) -> None:
    async with asyncio.timeout(TIMEOUT):
        mine = await store.add_session("a-1", A)
        await store.add_session("a-2", A)
        theirs = await store.add_session("b-1", B)
        assert await store.delete_device(A, theirs) is None  # B's device: not A's to end
        assert await store.delete_device(A, "no-such-id") is None
        assert await store.session_user("b-1", 3600) == B
        assert await store.delete_device(A, mine) == "a-1"
        assert await store.session_user("a-1", 3600) is None
        assert await store.session_user("a-2", 3600) == A
        assert await store.delete_device(A, mine) is None  # once


# -- per-device delivery (SPEC 7.1, 7.2) --------------------------------------------------------

R1: Final = "2026-03-14 17:12:00.000"  # received_at of a first acknowledgement
R2: Final = "2026-03-14 17:12:01.000"  # ... of a later one


async def waiting_for(store: AnyStore, device: str) -> list[StoredMessage]:
    """The personal messages (copies included) waiting for `device`, in order (one big page)."""
    return [m for _, m in await store.pending_page(device, 0, 1000)]


async def group_waiting_for(store: AnyStore, device: str) -> list[GroupMessage]:
    """The group messages (copies included) waiting for `device`, in order (one big page)."""
    return [m for _, m in await store.pending_group_page(device, 0, 1000)]


async def stored(store: AnyStore) -> int:
    """How many personal and group messages are stored."""
    return (await store.stats(3600)).stored_messages


async def deliveries(place: Place) -> list[tuple[Any, ...]]:
    """Every delivery row left, personal then group: ('p' or 'g', device, message)."""
    return await place_rows(
        place, "SELECT 'p', d.sid_hash, p.message FROM personal_deliveries AS d"
               " JOIN personal_messages AS p ON p.id = d.message_id"
               " UNION ALL SELECT 'g', d.sid_hash, m.message FROM group_deliveries AS d"
               " JOIN group_messages AS m ON m.id = d.message_id ORDER BY 1, 2, 3")


async def add_sessions(store: AnyStore, *devices: tuple[str, str]) -> None:
    """Log in each (session hash, phone): a device of that user."""
    for sid_hash, phone in devices:
        await store.add_session(sid_hash, phone)


async def test_each_device_of_the_recipient_acknowledges_once_the_first_one_is_the_receipt(
        store: AnyStore, place: Place) -> None:
    """Two devices of B: the first acknowledgement is FIRST (the receipt, B's `waiting` and
    account no longer count the message), the message stays for the other device, whose
    acknowledgement is LATER and changes nothing else; then it is gone, and a third is MISSING."""
    async with asyncio.timeout(TIMEOUT):
        await add_sessions(store, ("b-1", B), ("b-2", B))
        one = StoredMessage(A, B, "one", T1)
        assert await store.add_personal(A, B, T1, "t1", "one") == Stored([B], 0)
        assert await waiting_for(store, "b-1") == await waiting_for(store, "b-2") == [one]
        assert await store.dialogue_side(A, B) == DialogueSide(None, None, 1)
        assert (await store.account(B, 3600)).waiting == 1  # type: ignore[union-attr]

        assert await store.ack_personal(A, B, T1, R1, "b-2") is Ack.FIRST
        assert await store.dialogue_side(A, B) == DialogueSide(R1, None, 0)
        assert (await store.account(B, 3600)).waiting == 0  # type: ignore[union-attr]
        assert await waiting_for(store, "b-1") == [one]
        assert await waiting_for(store, "b-2") == []
        # acknowledged by one device of B: no longer waiting for B, still stored for b-1
        assert await store.pending_for(B) == [] and await stored(store) == 1
        assert await store.ack_personal(A, B, T1, R1, "b-2") is Ack.MISSING  # b-2 is done

        assert await store.ack_personal(A, B, T1, R2, "b-1") is Ack.LATER
        assert await store.dialogue_side(A, B) == DialogueSide(R1, None, 0)  # not moved to R2
        assert await waiting_for(store, "b-1") == []
        assert await store.pending_for(B) == [] and await stored(store) == 0
        assert await deliveries(place) == []
        for device in ("b-1", "b-2"):
            assert await store.ack_personal(A, B, T1, R2, device) is Ack.MISSING

        # both devices in one batch: one FIRST, one LATER, and the message goes
        assert await store.add_personal(A, B, T2, "t2", "two") == Stored([B], 0)
        assert await asyncio.gather(store.ack_personal(A, B, T2, R2, "b-1"),
                                    store.ack_personal(A, B, T2, R1, "b-2")) == [Ack.FIRST, Ack.LATER]
        assert await store.dialogue_side(A, B) == DialogueSide(R2, None, 0)
        assert await stored(store) == 0 and await deliveries(place) == []


async def test_a_copy_waits_for_the_senders_other_devices_only(store: AnyStore, place: Place) -> None:
    """SPEC 7.2: A's message waits, as a copy, for A's devices but the sending one (None: every
    one), counted in Stored.copies. A copy's acknowledgement is LATER and moves no receipt; the
    message goes once B acknowledged it and no copy waits, whichever comes first."""
    async with asyncio.timeout(TIMEOUT):
        await add_sessions(store, ("a-1", A), ("a-2", A), ("a-3", A), ("b-1", B))
        hi, later = StoredMessage(A, B, "hi", T1), StoredMessage(A, B, "later", T2)
        assert await store.add_personal(A, B, T1, "t1", "hi", "a-1") == Stored([B], 2)
        assert await store.add_personal(A, B, T2, "t2", "later") == Stored([B], 3)
        assert await waiting_for(store, "a-1") == [later]
        for device in ("a-2", "a-3", "b-1"):
            assert await waiting_for(store, device) == [hi, later]

        # the copies first: the message still waits for B
        for device in ("a-1", "a-2", "a-3"):  # on A's dialogue with B: msg_from B, msg_to A
            assert await store.ack_personal(B, A, T2, R1, device) is Ack.LATER
        assert await store.dialogue_side(A, B) == DialogueSide(None, None, 2)
        assert await store.dialogue_side(B, A) == DialogueSide(None, None, 0)
        assert await store.pending_for(B) == [hi, later]
        assert await store.ack_personal(A, B, T2, R1, "b-1") is Ack.FIRST
        assert await store.pending_for(B) == [hi]

        # the recipient first: the copies keep it
        assert await store.ack_personal(A, B, T1, R2, "b-1") is Ack.FIRST
        assert await store.dialogue_side(A, B) == DialogueSide(R2, None, 0)
        # B has it (pending_for: what no device of B acknowledged); the copies keep it stored
        assert await store.pending_for(B) == [] and await stored(store) == 1
        assert await store.ack_personal(B, A, T1, R2, "a-1") is Ack.MISSING  # sent from it: no copy
        assert await store.ack_personal(B, A, T1, R2, "a-2") is Ack.LATER
        assert await store.dialogue_side(B, A) == DialogueSide(None, None, 0)
        assert await stored(store) == 1  # a-3's copy
        assert await store.ack_personal(B, A, T1, R2, "a-3") is Ack.LATER
        assert await stored(store) == 0 and await deliveries(place) == []


async def test_a_peer_message_and_an_own_copy_with_one_timestamp_are_acknowledged_in_turn(
        store: AnyStore, place: Place) -> None:
    """SPEC 7.2: B's message to A and A's own message to B (sent from a-1) at the same instant
    both wait for a-2 under one identity on A's dialogue with B. The first acknowledgement takes
    B's message (FIRST: the receipt), the second A's copy (LATER), a third finds nothing; also
    when the three are in one batch."""
    async with asyncio.timeout(TIMEOUT):
        await add_sessions(store, ("a-1", A), ("a-2", A), ("b-1", B))
        for t in (T1, T2):
            assert await store.add_personal(A, B, t, "t", "mine", "a-1") == Stored([B], 1)
            assert await store.add_personal(B, A, t, "t", "theirs", "b-1") == Stored([A], 0)
        mine, theirs = (StoredMessage(A, B, "mine", T1), StoredMessage(A, B, "mine", T2)), \
            (StoredMessage(B, A, "theirs", T1), StoredMessage(B, A, "theirs", T2))
        assert await waiting_for(store, "a-2") == [mine[0], theirs[0], mine[1], theirs[1]]

        # one at a time
        assert await store.ack_personal(B, A, T1, R1, "a-2") is Ack.FIRST
        assert await store.dialogue_side(B, A) == DialogueSide(R1, None, 1)
        assert await waiting_for(store, "a-2") == [mine[0], mine[1], theirs[1]]
        assert await store.ack_personal(B, A, T1, R2, "a-2") is Ack.LATER
        assert await store.dialogue_side(B, A) == DialogueSide(R1, None, 1)
        assert await waiting_for(store, "a-2") == [mine[1], theirs[1]]
        assert await store.ack_personal(B, A, T1, R2, "a-2") is Ack.MISSING

        # in one batch (submitted without awaiting in between: one transaction), with a-1's
        # acknowledgement of B's message, which is then a later device's
        trace = await trace_writer(store)
        acks = await asyncio.gather(*(store.ack_personal(B, A, T2, R2, "a-2") for _ in range(3)),
                                    store.ack_personal(B, A, T2, R1, "a-1"))
        assert trace.count("COMMIT") == 1
        assert acks == [Ack.FIRST, Ack.LATER, Ack.MISSING, Ack.LATER]
        assert await store.dialogue_side(B, A) == DialogueSide(R2, None, 0)
        assert await waiting_for(store, "a-2") == []
        assert await waiting_for(store, "a-1") == [theirs[0]]
        # A's messages wait for B still; B's T2 went with its last device
        assert await waiting_for(store, "b-1") == list(mine)
        # theirs[0] waits for a-1 only: A acknowledged it on a-2, so it no longer waits for A
        assert await store.pending_for(A) == [] and await waiting_for(store, "a-1") == [theirs[0]]


# The ways a device ends (SPEC 7), each ending device "b-2" of B; "passwd" (the command line's
# set_password) and "disabled" end b-1 too.
ENDINGS: Final = ("logout", "devices", "password", "passwd", "disabled", "expired")


async def end_device(store: AnyStore, how: str, device_id: str) -> None:
    """End B's device "b-2" (its id `device_id`, last used two hours ago) the way `how` says."""
    if how == "logout":
        await store.delete_session("b-2")
    elif how == "devices":
        assert await store.delete_device(B, device_id) == "b-2"
    elif how == "password":
        assert await store.change_password(B, b"new", "b-1") == ["b-2"]
    elif how == "passwd":
        assert await store.set_password(B, b"new")
    elif how == "disabled":
        assert sorted(await store.set_account_flags(B, disabled=True) or []) == ["b-1", "b-2"]
        assert await store.set_account_flags(B, disabled=False) == []
    else:
        assert await store.drop_expired_sessions(3600) == 1


@pytest.mark.parametrize("how", ENDINGS)
async def test_a_device_that_ends_stops_waiting_and_lets_acknowledged_messages_go(
        store: AnyStore, place: Place, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """SPEC 7.1: what waited for a device goes with it; a message B acknowledged on another
    device is then deleted, one that no device of B acknowledged stays for B's next device."""
    async with asyncio.timeout(TIMEOUT):
        with clock_at(monkeypatch, now_micros() - 2 * 3600 * 1_000_000):
            b2 = await store.add_session("b-2", B)
        await store.add_session("b-1", B)
        assert await store.create_group(G, "g", A, [B])
        assert await store.add_personal(A, B, T1, "t1", "acked") == Stored([B], 0)
        assert await store.add_personal(A, B, T2, "t2", "unacked") == Stored([B], 0)
        assert await store.add_group_message(G, A, T1, "t1", "g acked") == Stored([B], 0)
        assert await store.add_group_message(G, A, T2, "t2", "g unacked") == Stored([B], 0)
        assert await store.ack_personal(A, B, T1, R1, "b-1") is Ack.FIRST
        assert await store.ack_group(G, A, T1, B, "b-1") is Ack.FIRST
        assert len(await waiting_for(store, "b-2")) == len(await group_waiting_for(store, "b-2")) == 2
        assert await stored(store) == 4

        await end_device(store, how, b2)

        assert await store.session_user("b-2", 10**6) is None
        assert await stored(store) == 2
        unacked = StoredMessage(A, B, "unacked", T2)
        g_unacked = GroupMessage(G, A, "g unacked", T2, [B])
        assert await store.pending_for(B) == [unacked]
        assert await store.pending_group_for(B) == [g_unacked]
        b1_left = how not in ("passwd", "disabled")
        assert await deliveries(place) == ([("g", "b-1", "g unacked"), ("p", "b-1", "unacked")]
                                           if b1_left else [])
        assert await store.ack_personal(A, B, T2, R2, "b-2") is Ack.MISSING
        assert await store.ack_group(G, A, T2, B, "b-2") is Ack.MISSING
        # B's next device gets what B never acknowledged
        await store.add_session("b-3", B)
        assert await waiting_for(store, "b-3") == [unacked]
        assert await group_waiting_for(store, "b-3") == [g_unacked]
        assert await store.ack_personal(A, B, T2, R2, "b-3") is Ack.FIRST
        assert await store.ack_group(G, A, T2, B, "b-3") is Ack.FIRST
        assert await stored(store) == (2 if b1_left else 0)


@pytest.mark.parametrize("how", ENDINGS)
async def test_a_message_let_go_by_a_device_that_ends_is_scrubbed_within_scrub_seconds(
        db_path: Path, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """SPEC 6 for SPEC 7.1: the message deleted because its last waiting device ended is gone
    from the file and its WAL within scrub_seconds, as an acknowledged one is."""
    scrub_seconds = 0.3
    body, needle = unique_body(40)
    async with opened(db_path, scrub_seconds=scrub_seconds) as store:
        async with asyncio.timeout(TIMEOUT):
            loop = asyncio.get_running_loop()
            with clock_at(monkeypatch, now_micros() - 2 * 3600 * 1_000_000):
                b2 = await store.add_session("b-2", B)
            await store.add_session("b-1", B)
            assert await store.add_personal(A, B, T1, "t1", body)
            assert await store.ack_personal(A, B, T1, R1, "b-1") is Ack.FIRST
            await store.scrub()  # the scrub the acknowledgement asked for, done now
            assert files_holding(db_path, needle), "control: kept for b-2, the body is in the files"
            await end_device(store, how, b2)
            assert await stored(store) == 0
            deadline = loop.time() + scrub_seconds + 3.0  # generous slack for a loaded machine
            while files_holding(db_path, needle):  # poll for the background effect, no fixed wait
                assert loop.time() < deadline, f"body still in {files_holding(db_path, needle)}"
                await asyncio.sleep(0.02)


async def test_a_session_unused_for_session_seconds_gets_no_new_message(
        place: Place, monkeypatch: pytest.MonkeyPatch) -> None:
    """SPEC 7: a session unused for `security.session_seconds` (here an hour) is no device, even
    before the hourly check drops it: what is committed now waits neither for it nor, as a copy,
    for such a session of the sender."""
    async with opened(place, session_seconds=3600) as store, asyncio.timeout(TIMEOUT):
        with clock_at(monkeypatch, now_micros() - 2 * 3600 * 1_000_000):
            await add_sessions(store, ("a-old", A), ("b-old", B))
        await add_sessions(store, ("a-1", A), ("b-1", B))
        assert await store.create_group(G, "g", A, [B])
        assert await store.add_personal(A, B, T1, "t1", "hi", "a-1") == Stored([B], 0)
        assert await store.add_group_message(G, A, T1, "t1", "g hi", "a-1") == Stored([B], 0)
        assert await deliveries(place) == [("g", "b-1", "g hi"), ("p", "b-1", "hi")]


async def test_a_token_unused_for_session_seconds_is_still_a_device(
        place: Place, monkeypatch: pytest.MonkeyPatch) -> None:
    """SPEC 12: a token does not expire by inactivity. Made and last used two hours ago with
    session_seconds an hour, beside a cookie session of the same age: the token is still found
    (as a token only), live for the session check, listed, not dropped by expiry, a device new
    messages and copies wait for, and a push target; the cookie session is none of these. A
    password change ends it like any other device."""
    async with opened(place, session_seconds=3600) as store, asyncio.timeout(TIMEOUT):
        with clock_at(monkeypatch, now_micros() - 2 * 3600 * 1_000_000):
            await store.add_session("a-old", A)
            token_id = await store.add_session("a-token", A, "backup script", token=True)
            await store.add_session("b-token", B, "bot", token=True)
        await add_sessions(store, ("a-1", A), ("b-1", B))
        # First, while no lookup has recorded a use of the tokens (each of those below does).
        assert await store.create_group(G, "g", A, [B])
        assert await store.add_personal(A, B, T1, "t1", "hi", "a-1") == Stored([B], 1)
        assert await store.add_group_message(G, A, T1, "t1", "g hi", "a-1") == Stored([B], 1)
        assert await deliveries(place) == [
            ("g", "a-token", "g hi"), ("g", "b-1", "g hi"), ("g", "b-token", "g hi"),
            ("p", "a-token", "hi"), ("p", "b-1", "hi"), ("p", "b-token", "hi")]
        assert await store.set_push_subscription("b-token", "https://push.example/b", "k", "a")
        assert [t.device for t in await store.push_targets([(B, "personal:" + A)], T1)] == [
            "b-token"]
        assert [d.id for d in await store.devices(A, "a-1", 3600)][1:] == [token_id]
        assert await store.session_user("a-token", 3600, token=True) == A
        assert await store.session_user("a-token", 3600) is None  # not a cookie session
        assert await store.session_user("a-1", 3600, token=True) is None  # nor this a token
        assert await store.session_user("a-old", 3600) is None
        assert await store.live_sessions(["a-old", "a-token", "b-token", "a-1"], 3600) == {
            "a-token", "b-token", "a-1"}
        assert [(d.id, d.label) for d in await store.devices(A, "a-1", 3600)][1:] == [
            (token_id, "backup script")]
        assert await store.drop_expired_sessions(3600) == 1  # "a-old" alone
        assert await store.live_sessions(["a-token", "b-token"], 10**9) == {"a-token", "b-token"}
        assert sorted(await store.change_password(A, b"new", "a-1") or []) == ["a-token"]
        assert await store.session_user("a-token", 3600, token=True) is None


async def test_the_sending_devices_copy_ends_with_it(store: AnyStore, place: Place) -> None:
    """A copy waiting for a device that ends goes with it, and with it the message B had."""
    async with asyncio.timeout(TIMEOUT):
        await add_sessions(store, ("a-1", A), ("a-2", A), ("b-1", B))
        assert await store.create_group(G, "g", A, [B])
        assert await store.add_personal(A, B, T1, "t1", "hi", "a-1") == Stored([B], 1)
        assert await store.add_group_message(G, A, T1, "t1", "g hi", "a-1") == Stored([B], 1)
        assert await store.ack_personal(A, B, T1, R1, "b-1") is Ack.FIRST
        assert await store.ack_group(G, A, T1, B, "b-1") is Ack.FIRST
        assert await deliveries(place) == [("g", "a-2", "g hi"), ("p", "a-2", "hi")]
        await store.delete_session("a-2")
        assert await stored(store) == 0 and await deliveries(place) == []


async def test_a_message_for_a_user_without_a_device_waits_for_the_next_one(store: AnyStore) -> None:
    """SPEC 7.1: B has no device when A's messages are committed: they wait, and each device B
    adds while they are stored gets them; SPEC 7.2: but no copy of what B sent before it existed
    (nor of what B sent while it had no device)."""
    async with asyncio.timeout(TIMEOUT):
        assert await store.create_group(G, "g", A, [B, C])
        away = StoredMessage(A, B, "while away", T1)
        assert await store.add_personal(A, B, T1, "t1", "while away") == Stored([B], 0)
        assert await store.add_personal(B, A, T1, "t1", "own, no device") == Stored([A], 0)
        assert await store.add_group_message(G, C, T1, "t1", "g while away") == Stored([A, B], 0)
        assert await store.add_group_message(G, B, T1, "t1", "g own, no device") == Stored([A, C], 0)
        assert (await store.account(B, 3600)).waiting == 2  # type: ignore[union-attr]

        await store.add_session("b-1", B)
        assert await waiting_for(store, "b-1") == [away]
        assert await group_waiting_for(store, "b-1") == [GroupMessage(G, C, "g while away", T1, [A, B])]
        # sent with no sending device named: b-1 gets copies ...
        assert await store.add_personal(B, C, T2, "t2", "own") == Stored([C], 1)
        assert await store.add_group_message(G, B, T2, "t2", "g own") == Stored([A, C], 1)
        # ... a device added later gets none of them, but what waits for B as a recipient
        await store.add_session("b-2", B)
        assert await waiting_for(store, "b-2") == [away]
        assert await group_waiting_for(store, "b-2") == [GroupMessage(G, C, "g while away", T1, [A, B])]
        assert [m.message for m in await waiting_for(store, "b-1")] == ["while away", "own"]
        assert [m.message for m in await group_waiting_for(store, "b-1")] == ["g while away", "g own"]

        # acknowledged by B on b-1, still stored for b-2: a device added now gets it too
        assert await store.ack_personal(A, B, T1, R1, "b-1") is Ack.FIRST
        assert await store.ack_group(G, C, T1, B, "b-1") is Ack.FIRST
        await store.add_session("b-3", B)
        assert await waiting_for(store, "b-3") == [away]
        assert await group_waiting_for(store, "b-3") == [GroupMessage(G, C, "g while away", T1, [A])]
        assert await store.ack_personal(A, B, T1, R2, "b-3") is Ack.LATER
        assert await store.ack_group(G, C, T1, B, "b-3") is Ack.LATER


async def test_group_messages_wait_per_device_and_a_member_removed_stops_waiting(
        store: AnyStore, place: Place) -> None:
    """SPEC 7.1 for groups: the first device of each participant takes it off `pending`, later
    ones and the sender's copies are LATER; a participant removed from the group is done, and
    their devices stop waiting (the message goes when no one else waits)."""
    async with asyncio.timeout(TIMEOUT):
        await add_sessions(store, ("a-1", A), ("a-2", A), ("b-1", B), ("b-2", B), ("c-1", C))
        assert await store.create_group(G, "g", A, [B, C])
        assert await store.add_group_message(G, A, T1, "t1", "hello", "a-1") == Stored([B, C], 1)
        assert await store.add_group_message(G, A, T2, "t2", "again", "a-1") == Stored([B, C], 1)
        hello, again = GroupMessage(G, A, "hello", T1, [B, C]), GroupMessage(G, A, "again", T2, [B, C])
        assert await group_waiting_for(store, "a-1") == []
        for device in ("a-2", "b-1", "b-2", "c-1"):
            assert await group_waiting_for(store, device) == [hello, again]

        assert await store.ack_group(G, A, T1, B, "b-2") is Ack.FIRST
        assert await store.pending_group_for(B) == [again]
        assert await group_waiting_for(store, "b-1") == [GroupMessage(G, A, "hello", T1, [C]), again]
        assert await store.ack_group(G, A, T1, B, "b-1") is Ack.LATER
        assert await store.ack_group(G, A, T1, B, "b-1") is Ack.MISSING
        assert await store.ack_group(G, A, T1, A, "a-1") is Ack.MISSING  # the sending device
        assert await store.ack_group(G, A, T1, A, "a-2") is Ack.LATER  # its copy: silent
        assert await store.pending_group_for(C) == [GroupMessage(G, A, "hello", T1, [C]), again]
        assert await stored(store) == 2

        await store.update_group(G, remove=[C])
        assert await group_waiting_for(store, "c-1") == []
        assert await store.ack_group(G, A, T2, C, "c-1") is Ack.MISSING
        # "hello" waited for c-1 only: gone; "again" still waits for B and for A's copy
        assert await stored(store) == 1
        assert await deliveries(place) == [("g", "a-2", "again"), ("g", "b-1", "again"),
                                           ("g", "b-2", "again")]
        assert await group_waiting_for(store, "b-1") == [GroupMessage(G, A, "again", T2, [B])]


async def test_a_group_of_one_keeps_a_copy_for_the_senders_other_device(store: AnyStore) -> None:
    async with asyncio.timeout(TIMEOUT):
        await store.add_session("a-1", A)
        assert await store.create_group(G, "alone", A, [])
        # nobody to wait for: nothing kept (as before SPEC 7)
        assert await store.add_group_message(G, A, T1, "t1", "to myself", "a-1") == Stored([], 0)
        assert await stored(store) == 0
        await store.add_session("a-2", A)
        assert await store.add_group_message(G, A, T2, "t2", "to my other device", "a-1") == Stored([], 1)
        assert await stored(store) == 1
        assert await group_waiting_for(store, "a-2") == [GroupMessage(G, A, "to my other device", T2, [])]
        assert await store.ack_group(G, A, T2, A, "a-2") is Ack.LATER
        assert await stored(store) == 0


# -- SPEC 13: references and unsending ----------------------------------------------------------------


def ref_json(field: str, msg_from: str, sent_us: int) -> str:
    """A message's `ref` as the commands store it (protocol.Ref.json)."""
    return Ref(field, msg_from, fetch_timestamp(sent_us), sent_us).json()


async def test_a_ref_is_kept_and_read_back_by_every_read(store: AnyStore) -> None:
    """`ref` goes with the message: pending_page, pending_for, pending_group_page,
    pending_group_for, room_history; an ordinary message's is None."""
    reply, react = ref_json("reply_to", B, T1), ref_json("react_to", A, T1)
    async with asyncio.timeout(TIMEOUT):
        await add_sessions(store, ("a-1", A), ("b-1", B))
        assert await store.add_personal(A, B, T1, "t1", "plain", "a-1") == Stored([B], 0)
        assert await store.add_personal(A, B, T2, "t2", "re", "a-1", ref=reply) == Stored([B], 0)
        assert [(m.message, m.ref) for m in await waiting_for(store, "b-1")] == [
            ("plain", None), ("re", reply)]
        assert [m.ref for m in await store.pending_for(B)] == [None, reply]
        assert await store.create_group(G, "g", A, [B])
        assert await store.add_group_message(G, A, T1, "t1", "\U0001F44D", "a-1", ref=react) == Stored([B], 0)
        assert [m.ref for m in await group_waiting_for(store, "b-1")] == [react]
        assert [m.ref for m in await store.pending_group_for(B)] == [react]
        assert await store.create_room("r", A, None)
        assert await store.add_room_message("r", A, T1, "t1", "x") is not None
        assert await store.add_room_message("r", B, T2, "t2", "re", ref=reply) is not None
        assert [m.ref for m in await store.room_history("r", 10)] == [None, reply]


async def test_delete_of_deletes_the_original_for_every_waiting_device(
        store: AnyStore, place: Place) -> None:
    """The original goes in the delete_of's commit with every device's row (B's two, A's other
    device's copy): none of them ever gets it; only the delete_of waits."""
    async with asyncio.timeout(TIMEOUT):
        await add_sessions(store, ("a-1", A), ("a-2", A), ("b-1", B), ("b-2", B))
        assert await store.add_personal(A, B, T1, "t1", "oops", "a-1") == Stored([B], 1)
        unsend = ref_json("delete_of", A, T1)
        assert await store.add_personal(A, B, T2, "t2", "", "a-1", ref=unsend) == Stored([B], 1)
        for device in ("a-2", "b-1", "b-2"):
            assert [(m.message, m.ref) for m in await waiting_for(store, device)] == [("", unsend)]
        assert await stored(store) == 1
        assert await deliveries(place) == [("p", "a-2", ""), ("p", "b-1", ""), ("p", "b-2", "")]
        assert await store.ack_personal(A, B, T1, "r", "b-1") is Ack.MISSING


async def test_delete_of_takes_only_the_senders_own_message_of_that_conversation(
        store: AnyStore) -> None:
    """Same sent_us elsewhere: B's message to A, A's message to C, and a group message stay."""
    async with asyncio.timeout(TIMEOUT):
        await add_sessions(store, ("a-1", A), ("b-1", B), ("c-1", C))
        assert await store.create_group(G, "g", A, [B, C])
        await store.add_personal(B, A, T1, "t1", "from b")
        await store.add_personal(A, C, T1, "t1", "to c")
        await store.add_group_message(G, A, T1, "t1", "to the group")
        assert await store.add_personal(A, B, T2, "t2", "", ref=ref_json("delete_of", A, T1))
        assert [m.message for m in await store.pending_for(A)] == ["from b"]
        assert [m.message for m in await store.pending_for(C)] == ["to c"]
        assert [m.message for m in await store.pending_group_for(B)] == ["to the group"]


async def test_delete_of_in_the_batch_of_its_original(store: AnyStore) -> None:
    """An original and its delete_of submitted together share one batch (one statement per kind
    of write): the original is stored, then deleted in the same transaction; the same for a
    group and a room. A retry of the delete_of is a retry (None) and deletes nothing more."""
    unsend = ref_json("delete_of", A, T1)
    async with asyncio.timeout(TIMEOUT):
        await add_sessions(store, ("b-1", B), ("c-1", C))
        assert await store.create_group(G, "g", A, [B, C])
        assert await store.create_room("r", A, None)
        trace = await trace_writer(store)
        results = await asyncio.gather(
            store.add_personal(A, B, T1, "t1", "gone at once"),
            store.add_personal(A, B, T2, "t2", "", ref=unsend),
            store.add_group_message(G, A, T1, "t1", "gone at once"),
            store.add_group_message(G, A, T2, "t2", "", ref=unsend),
            store.add_room_message("r", A, T1, "t1", "gone at once"),
            store.add_room_message("r", A, T2, "t2", "", ref=unsend))
        assert trace.count("COMMIT") == 1
        assert results[:4] == [Stored([B], 0), Stored([B], 0), Stored([B, C], 0), Stored([B, C], 0)]
        assert None not in results
        assert [(m.message, m.ref) for m in await waiting_for(store, "b-1")] == [("", unsend)]
        assert [(m.message, m.ref) for m in await group_waiting_for(store, "c-1")] == [("", unsend)]
        assert [(m.message, m.ref) for m in await store.room_history("r", 10)] == [("", unsend)]
        assert await stored(store) == 2
        assert await store.add_personal(A, B, T2, "t2", "", ref=unsend) is None


async def test_delete_of_an_original_already_gone_is_stored_as_any_message(store: AnyStore) -> None:
    async with asyncio.timeout(TIMEOUT):
        await add_sessions(store, ("b-1", B))
        await store.add_personal(A, B, T1, "t1", "read")
        assert await store.ack_personal(A, B, T1, "r", "b-1") is Ack.FIRST
        for sent_us in (T1, T3):  # acknowledged, and never stored
            assert await store.add_personal(A, B, sent_us + 1, "t", "",
                                            ref=ref_json("delete_of", A, sent_us)) == Stored([B], 0)
        assert len(await waiting_for(store, "b-1")) == 2


@pytest.mark.parametrize("bad", ["", "null", "[]", '{"delete_of": 1}', '{"nope": {}}',
                                 '{"delete_of": {"msg_from": "1", "sent_timestamp": "x"}}',
                                 '{"reply_to": {"msg_from": "1"}}',
                                 '{"reply_to": {"msg_from": "1", "sent_timestamp": "2026-03-14 17:11:06"},'
                                 ' "edit_of": {"msg_from": "1", "sent_timestamp": "2026-03-14 17:11:06"}}'])
async def test_a_malformed_ref_is_refused_before_anything_is_queued(store: AnyStore, bad: str) -> None:
    with pytest.raises(ValueError):
        store.add_personal(A, B, T1, "t1", "x", ref=bad)
    with pytest.raises(ValueError):
        store.add_room_message("r", A, T1, "t1", "x", ref=bad)
    assert await store.pending_for(B) == []


async def test_expire_says_delivered_for_a_message_only_a_device_kept(store: AnyStore) -> None:
    """SPEC 10 with SPEC 7.1: a message every recipient acknowledged, kept only for a copy or a
    second device, expires with `delivered` (no msg_expired is due to its sender)."""
    async with asyncio.timeout(TIMEOUT):
        await add_sessions(store, ("a-1", A), ("a-2", A), ("b-1", B), ("b-2", B))
        assert await store.create_group(G, "g", A, [B])
        for t, body in ((T1, "kept by a copy"), (T2, "kept by b-2"), (T3, "undelivered")):
            assert await store.add_personal(A, B, t, body, body, "a-1") == Stored([B], 1)
        assert await store.ack_personal(A, B, T1, R1, "b-1") is Ack.FIRST
        assert await store.ack_personal(A, B, T1, R1, "b-2") is Ack.LATER
        assert await store.ack_personal(A, B, T2, R1, "b-1") is Ack.FIRST
        assert await store.ack_personal(B, A, T2, R1, "a-2") is Ack.LATER
        for t, body in ((T1, "g delivered"), (T2, "g undelivered")):
            assert await store.add_group_message(G, A, t, body, body, "a-1") == Stored([B], 1)
        assert await store.ack_group(G, A, T1, B, "b-1") is Ack.FIRST
        assert await store.ack_group(G, A, T1, B, "b-2") is Ack.LATER
        assert await store.ack_group(G, A, T2, A, "a-2") is Ack.LATER  # the copy, not B
        assert await store.expire(now_micros(), 100) == [
            Expired(A, B, "kept by a copy", T1, False, True),
            Expired(A, B, "kept by b-2", T2, False, True),
            Expired(A, B, "undelivered", T3, False, False),
            Expired(A, G, "g delivered", T1, True, True),
            Expired(A, G, "g undelivered", T2, True, False)]
        assert await stored(store) == 0


async def test_a_message_its_recipient_acknowledged_does_not_fill_their_mailbox(place: Place) -> None:
    """SPEC 10 counts what waits for the recipient: a message B acknowledged, kept only for A's
    other device's copy or for B's other device, no longer counts against B's mailbox."""
    async with opened(place, max_waiting=2) as store, asyncio.timeout(TIMEOUT):
        await add_sessions(store, ("a-1", A), ("a-2", A), ("b-1", B), ("b-2", B))
        assert await store.create_group(G, "g", A, [B])
        for t in (T1, T2):
            assert await store.add_personal(A, B, t, "t", "acknowledged", "a-1") == Stored([B], 1)
            assert await store.ack_personal(A, B, t, R1, "b-1") is Ack.FIRST
        assert await stored(store) == 2
        assert (await store.account(B, 3600)).waiting == 0  # type: ignore[union-attr]
        assert await store.add_group_message(G, A, T1, "t1", "room for it", "a-1") == Stored([B], 1)
        assert await store.add_personal(C, B, T3, "t3", "and for this") == Stored([B], 0)
        with pytest.raises(MailboxFull):
            await store.add_personal(C, B, T1, "t1", "full now")
        with pytest.raises(MailboxFull):
            await store.add_group_message(G, A, T2, "t2", "full now", "a-1")


# -- users --------------------------------------------------------------------------------------


async def test_add_user_of_a_taken_phone_returns_false(store: AnyStore) -> None:
    async with asyncio.timeout(TIMEOUT):
        assert await store.add_user(A, "someone else", b"other hash") is False
        user = await store.get_user(A)
        assert user is not None
        assert (user.phone, user.name, user.password_hash) == (A, f"user {A}", b"hash")
        assert await store.add_user("1000000009", "new", b"h") is True
        assert await store.user_exists("1000000009")
        assert not await store.user_exists(NOT_A_USER)
        assert await store.get_user(NOT_A_USER) is None


async def test_set_password_replaces_the_hash_and_ends_sessions(store: AnyStore) -> None:
    async with asyncio.timeout(TIMEOUT):
        await store.add_session("a-1", A)
        await store.add_session("a-2", A)
        await store.add_session("b-1", B)
        assert await store.set_password(A, b"new hash") is True
        user = await store.get_user(A)
        assert user is not None and user.password_hash == b"new hash"
        assert await store.session_user("a-1", 3600) is None
        assert await store.session_user("a-2", 3600) is None
        assert await store.session_user("b-1", 3600) == B  # someone else's sessions stay
        assert await store.set_password(NOT_A_USER, b"x") is False


async def test_upgrade_password_hash_replaces_only_an_unchanged_hash_and_keeps_sessions(
        store: AnyStore) -> None:
    """The login's re-hash of an old-format password (issue 12): no session ends, and a hash
    changed meanwhile (a `passwd` racing the login) is not overwritten."""
    async with asyncio.timeout(TIMEOUT):
        await store.add_session("a-1", A)
        assert await store.upgrade_password_hash(A, b"hash", b"$hmac-sha256$new") is True
        user = await store.get_user(A)
        assert user is not None and user.password_hash == b"$hmac-sha256$new"
        assert await store.session_user("a-1", 3600) == A
        # the stored hash is no longer b"hash": a second upgrade from it changes nothing
        assert await store.upgrade_password_hash(A, b"hash", b"$hmac-sha256$other") is False
        assert await store.set_password(B, b"set by passwd") is True
        assert await store.upgrade_password_hash(B, b"hash", b"$hmac-sha256$late") is False
        user_a, user_b = await store.get_user(A), await store.get_user(B)
        assert user_a is not None and user_a.password_hash == b"$hmac-sha256$new"
        assert user_b is not None and user_b.password_hash == b"set by passwd"
        assert await store.upgrade_password_hash(NOT_A_USER, b"hash", b"x") is False
        assert await store.get_user(NOT_A_USER) is None


async def test_delete_user_cascades(store: AnyStore) -> None:
    async with asyncio.timeout(TIMEOUT):
        assert await store.add_personal(A, B, T1, "t1", "from a")
        assert await store.add_personal(B, A, T1, "t1", "to a")
        assert await store.add_personal(C, B, T1, "t1", "from c")
        await store.add_session("a-1", A)
        await store.read_personal(A, C, "2026-03-14 17:12:00.000")
        assert await store.delete_user(A) is True
        assert await store.get_user(A) is None
        assert await store.pending_for(A) == []
        assert await store.pending_for(B) == [StoredMessage(C, B, "from c", T1)]
        assert await store.session_user("a-1", 3600) is None
        assert await store.dialogues_of(B) == [C]
        assert await store.dialogues_of(C) == [B]
        assert await store.dialogue_side(A, B) == DialogueSide(None, None, 0)
        assert await store.delete_user(A) is False
        # the phone is free again
        assert await store.add_user(A, "new a", b"h") is True
        assert await store.pending_for(A) == []


# -- registration, administration, self service (SPEC 10) --------------------------------------

DAY_US: Final = 86_400 * 1_000_000


async def test_the_first_account_is_an_admin_and_the_next_are_not(place: Place) -> None:
    store = await open_store(place)
    try:
        async with asyncio.timeout(TIMEOUT):
            assert not await store.has_users()
            # Whatever the mode, the first account is free (SPEC 10) and an admin.
            first = await store.register_user(A, "a", b"h", mode="closed")
            assert (first.outcome, first.admin) == ("created", True)
            assert await store.has_users()
            assert (await store.register_user(B, "b", b"h", mode="closed")).outcome == "closed"
            assert (await store.register_user(B, "b", b"h", mode="invite")).outcome == "invite"
            second = await store.register_user(B, "b", b"h", mode="open")
            assert (second.outcome, second.admin) == ("created", False)
            assert (await store.register_user(B, "b", b"h", mode="open")).outcome == "taken"
            forced = await store.register_user(C, "c", b"h", mode="closed", admin=True)
            assert forced.outcome == "closed"  # `admin` does not open a closed server
            forced = await store.register_user(C, "c", b"h", mode="open", admin=True)
            assert (forced.outcome, forced.admin) == ("created", True)
            admins = {a.phone for a in await store.accounts(3600) if a.admin}
            assert admins == {A, C}
    finally:
        await store.close()


async def test_an_invite_is_used_up_expires_and_is_given_back_for_a_taken_phone(
        store: AnyStore) -> None:
    now = now_micros()
    async with asyncio.timeout(TIMEOUT):
        assert await store.create_invite("two-uses", A, 2, now + DAY_US)
        assert not await store.create_invite("two-uses", B, 5, now + DAY_US)  # the code exists
        assert await store.create_invite("expired", A, 3, now - 1)
        assert (await store.register_user("1000000009", "x", b"h", mode="invite",
                                          invite="expired")).outcome == "invite"
        assert (await store.register_user("1000000009", "x", b"h", mode="invite",
                                          invite="unknown")).outcome == "invite"
        assert (await store.register_user("1000000009", "x", b"h", mode="invite")).outcome == "invite"
        # a taken phone takes no use
        assert (await store.register_user(B, "x", b"h", mode="invite",
                                          invite="two-uses")).outcome == "taken"
        invite = await store.invite("two-uses")
        assert invite is not None and (invite.uses, invite.uses_left, invite.created_by) == (2, 2, A)
        for phone in ("1000000009", "1000000010"):
            done = await store.register_user(phone, "x", b"h", mode="invite", invite="two-uses")
            assert (done.outcome, done.admin) == ("created", False)
        assert (await store.register_user("1000000011", "x", b"h", mode="invite",
                                          invite="two-uses")).outcome == "invite"
        assert not await store.user_exists("1000000011")
        invite = await store.invite("two-uses")
        assert invite is not None and invite.uses_left == 0
        # an open server ignores the code and takes no use
        assert await store.create_invite("spare", None, 1, now + DAY_US)
        assert (await store.register_user("1000000012", "x", b"h", mode="open",
                                          invite="spare")).outcome == "created"
        spare = await store.invite("spare")
        assert spare is not None and spare.uses_left == 1 and spare.created_by is None


async def test_invites_lists_live_ones_and_revoke_deletes(store: AnyStore) -> None:
    now = now_micros()
    async with asyncio.timeout(TIMEOUT):
        assert await store.create_invite("live-1", A, 1, now + DAY_US)
        assert await store.create_invite("live-2", B, 3, now + 2 * DAY_US)
        assert await store.create_invite("expired", A, 1, now - 1)
        assert await store.create_invite("used", A, 1, now + DAY_US)
        assert (await store.register_user("1000000009", "x", b"h", mode="invite",
                                          invite="used")).outcome == "created"
        live = await store.invites(now_micros())
        assert [i.code for i in live] == ["live-1", "live-2"]
        assert (live[1].created_by, live[1].uses, live[1].uses_left) == (B, 3, 3)
        assert live[1].expires_us == now + 2 * DAY_US
        assert await store.revoke_invite("live-1")
        assert not await store.revoke_invite("live-1")
        assert await store.invite("live-1") is None
        assert [i.code for i in await store.invites(now_micros())] == ["live-2"]
        # the maker's account goes, the invite stays (made by nobody now)
        assert await store.delete_user(B)
        remaining = await store.invite("live-2")
        assert remaining is not None and remaining.created_by is None


async def test_invites_long_expired_are_dropped_when_one_is_made(store: AnyStore) -> None:
    now = now_micros()
    async with asyncio.timeout(TIMEOUT):
        assert await store.create_invite("ancient", A, 1, now - 31 * DAY_US)
        assert await store.create_invite("recent", A, 1, now - DAY_US)
        assert await store.create_invite("new", A, 1, now + DAY_US)
        assert await store.invite("ancient") is None
        assert await store.invite("recent") is not None


async def test_disabling_ends_every_session_and_keeps_the_last_admin(store: AnyStore) -> None:
    async with asyncio.timeout(TIMEOUT):
        await store.add_session("b-1", B)
        await store.add_session("b-2", B)
        await store.add_session("c-1", C)
        assert sorted(await store.set_account_flags(B, disabled=True) or []) == ["b-1", "b-2"]
        assert await store.session_user("b-1", 3600) is None
        assert await store.session_user("c-1", 3600) == C
        account = await store.account(B, 3600)
        assert account is not None and account.disabled and account.devices == 0
        assert await store.set_account_flags(B, disabled=False) == []
        account = await store.account(B, 3600)
        assert account is not None and not account.disabled
        assert await store.set_account_flags(NOT_A_USER, disabled=True) is None
        # A (the first account) is the only admin: it can neither lose the flag nor be disabled
        with pytest.raises(LastAdmin):
            await store.set_account_flags(A, admin=False)
        with pytest.raises(LastAdmin):
            await store.set_account_flags(A, disabled=True)
        with pytest.raises(LastAdmin):
            await store.delete_account(A)
        account = await store.account(A, 3600)
        assert account is not None and account.admin and not account.disabled
        # with a second admin it can
        assert await store.set_account_flags(C, admin=True) == []
        assert await store.set_account_flags(A, admin=False) == []
        account = await store.account(A, 3600)
        assert account is not None and not account.admin
        # a disabled admin does not count as the other admin
        assert await store.set_account_flags(A, admin=True, disabled=True) == []
        with pytest.raises(LastAdmin):
            await store.set_account_flags(C, admin=False)


async def test_the_only_account_may_go_although_it_is_the_last_admin(place: Place) -> None:
    store = await open_store(place)
    try:
        async with asyncio.timeout(TIMEOUT):
            await store.register_user(A, "a", b"h", mode="open")
            await store.add_session("a-1", A)
            assert await store.delete_account(A) == ["a-1"]
            assert not await store.has_users()
            assert await store.delete_account(A) is None
    finally:
        await store.close()


async def test_change_password_keeps_one_session(store: AnyStore) -> None:
    async with asyncio.timeout(TIMEOUT):
        for sid in ("a-1", "a-2", "a-3"):
            await store.add_session(sid, A)
        await store.add_session("b-1", B)
        assert sorted(await store.change_password(A, b"new", "a-2") or []) == ["a-1", "a-3"]
        user = await store.get_user(A)
        assert user is not None and user.password_hash == b"new"
        assert await store.session_user("a-2", 3600) == A
        assert await store.session_user("a-1", 3600) is None
        assert await store.session_user("b-1", 3600) == B
        assert await store.change_password(A, b"newer", None) == ["a-2"]
        assert await store.change_password(NOT_A_USER, b"x", None) is None


async def test_accounts_count_devices_and_waiting_messages(store: AnyStore) -> None:
    async with asyncio.timeout(TIMEOUT):
        assert await store.add_personal(A, B, T1, "t1", "one")
        assert await store.add_personal(C, B, T1, "t1", "two")
        assert await store.create_group("grp0000001", "g", A, [B, C])
        assert await store.add_group_message("grp0000001", A, T2, "t2", "three") == Stored([B, C], 0)
        await store.add_session("b-1", B)
        await store.add_session("b-2", B)
        await store.set_last_seen(B, T3)
        assert await store.update_profile(B, name="Bee", hide_presence=True)
        assert not await store.update_profile(NOT_A_USER, name="x")
        b = await store.account(B, 3600)
        assert b is not None
        assert (b.phone, b.name, b.admin, b.disabled, b.hide_presence) == (B, "Bee", False, False, True)
        assert (b.devices, b.waiting, b.last_seen_us) == (2, 3, T3)
        assert abs(b.created_us - now_micros()) < 60 * 1_000_000
        assert await store.account(NOT_A_USER, 3600) is None
        everyone = await store.accounts(3600)
        assert [a.phone for a in everyone] == [A, B, C]
        assert [(a.waiting, a.devices) for a in everyone] == [(0, 0), (3, 2), (1, 0)]
        assert everyone[0].admin and everyone[0].last_seen_us is None
        stats = await store.stats(3600)
        assert (stats.users, stats.devices, stats.stored_messages) == (3, 2, 3)
        assert stats.database_bytes > 0


async def test_registrations_at_once_take_an_invite_once(store: AnyStore) -> None:
    """One use, ten registrations in one batch or several: exactly one account."""
    async with asyncio.timeout(TIMEOUT):
        assert await store.create_invite("once", A, 1, now_micros() + DAY_US)
        phones = [f"10000001{i:02d}" for i in range(10)]
        done = await asyncio.gather(*(store.register_user(p, "x", b"h", mode="invite", invite="once")
                                      for p in phones))
        assert sorted(d.outcome for d in done) == ["created"] + ["invite"] * 9
        assert sum([await store.user_exists(p) for p in phones]) == 1


async def test_pg_two_processes_cannot_both_be_first_or_both_take_the_last_use(pg_url: str) -> None:
    """Two stores on one schema, as two server processes: the first account and an invite's
    last use are each had by one registration only."""
    stores = [await open_store(pg_url) for _ in range(2)]
    try:
        async with asyncio.timeout(TIMEOUT):
            done = await asyncio.gather(*(
                s.register_user(f"100000010{i}", "x", b"h", mode="closed")
                for i, s in enumerate(stores * 3)))
            assert sorted(d.outcome for d in done) == ["closed"] * 5 + ["created"]
            assert [d.admin for d in done if d.outcome == "created"] == [True]
            assert await stores[0].create_invite("last", None, 1, now_micros() + DAY_US)
            done = await asyncio.gather(*(
                s.register_user(f"100000020{i}", "x", b"h", mode="invite", invite="last")
                for i, s in enumerate(stores * 5)))
            assert sorted(d.outcome for d in done) == ["created"] + ["invite"] * 9
            # two admins revoking each other at once: one stays
            first = next(a.phone for a in await stores[0].accounts(3600) if a.admin)
            other = "1000000300"
            await stores[0].register_user(other, "x", b"h", mode="open", admin=True)
            results = await asyncio.gather(stores[0].set_account_flags(first, admin=False),
                                           stores[1].set_account_flags(other, admin=False),
                                           return_exceptions=True)
            assert sorted(type(r).__name__ for r in results) == ["LastAdmin", "list"]
            assert len([a for a in await stores[1].accounts(3600) if a.admin]) == 1
    finally:
        for s in stores:
            await s.close()
async def test_has_dialogue_either_way_once_opened(store: AnyStore) -> None:
    async with asyncio.timeout(TIMEOUT):
        assert not await store.has_dialogue(A, B)
        assert await store.add_personal(B, A, T1, "t1", "first from B")
        assert await store.has_dialogue(A, B) and await store.has_dialogue(B, A)
        await store.open_dialogue(A, C)
        assert await store.has_dialogue(C, A)
        assert not await store.has_dialogue(B, C)
        assert not await store.has_dialogue(A, NOT_A_USER)


# -- presence and rooms shown (issue 12, finding 6) ----------------------------------------------


async def test_presence_is_shared_only_between_mutual_contacts(store: AnyStore) -> None:
    """watchers_of and contacts_of agree: presence and last seen only when each has the other as a
    contact, no block either way, and the user does not hide them."""
    async with asyncio.timeout(TIMEOUT):
        await store.set_last_seen(A, 1_000)
        await store.set_last_seen(B, 2_000)
        await store.set_contact(B, A, "Alice")  # one-sided: B has A, A does not have B
        assert await store.watchers_of(A) == []
        assert await store.watchers_of(B) == []
        assert await store.contacts_of(B) == [Contact(A, "Alice", None, False)]
        await store.set_contact(A, B, "Bob")  # now both ways
        assert await store.watchers_of(A) == [B]
        assert await store.watchers_of(B) == [A]
        assert await store.contacts_of(B) == [Contact(A, "Alice", 1_000, True)]
        assert await store.contacts_of(A) == [Contact(B, "Bob", 2_000, True)]
        await store.set_contact(C, A, "Alice")  # C: one-sided, gets nothing
        assert await store.watchers_of(A) == [B]
        assert await store.contacts_of(C) == [Contact(A, "Alice", None, False)]

        await store.set_hide_presence(A, True)  # A hides: nobody sees A; A still sees B
        assert await store.watchers_of(A) == []
        assert await store.contacts_of(B) == [Contact(A, "Alice", None, False)]
        assert await store.watchers_of(B) == [A]
        assert await store.contacts_of(A) == [Contact(B, "Bob", 2_000, True)]
        await store.set_hide_presence(A, False)
        assert await store.watchers_of(A) == [B]
        await store.set_hide_presence(NOT_A_USER, True)  # nothing to hide: no error

        for blocker, blocked in ((A, B), (B, A)):  # a block either way ends the sharing
            await store.block(blocker, blocked)
            assert await store.watchers_of(A) == []
            assert await store.watchers_of(B) == []
            assert [c.shares_presence for c in await store.contacts_of(A)] == [False]
            assert await store.contacts_of(B) == [Contact(A, "Alice", None, False)]
            assert await store.unblock(blocker, blocked)
        assert await store.watchers_of(A) == [B]
        assert await store.remove_contact(A, B)
        assert await store.watchers_of(A) == []
        assert await store.watchers_of(B) == []


async def test_rooms_for_shows_own_granted_and_newest_public_rooms(store: AnyStore) -> None:
    async with asyncio.timeout(TIMEOUT):
        await store.add_session("a-1", A)
        await store.add_session("a-2", A)
        for name in ("pub1", "pub2", "pub3"):  # created in this order: pub3 is the newest
            assert await store.create_room(name, B, None)
        assert await store.create_room("mine", A, None)
        assert await store.create_room("minesecret", A, b"h")
        assert await store.create_room("secret", B, b"h")
        assert await store.create_room("other", C, b"h")
        await store.grant_room("a-1", "secret")

        def names(rooms: list[Room]) -> list[str]:
            return [r.name for r in rooms]

        # A's own rooms (public and private), the private room A gave the password for (on any
        # session: grants are per user, issue 18), and the 2 newest public rooms ("mine" is one).
        assert names(await store.rooms_for(A, "a-1", 2)) == ["mine", "minesecret", "pub3", "secret"]
        assert names(await store.rooms_for(A, "a-2", 2)) == ["mine", "minesecret", "pub3", "secret"]
        assert names(await store.rooms_for(A, "a-2", 10)) == ["mine", "minesecret", "pub1", "pub2",
                                                              "pub3", "secret"]
        assert await store.room_granted("a-2", "secret") and not await store.room_granted("a-2", "other")
        assert names(await store.rooms_for(C, "none", 1)) == ["mine", "other"]
        assert Room("secret", B, b"h") in await store.rooms_for(A, "a-1", 2)


async def test_room_catalogue_search_save_and_delete(store: AnyStore) -> None:
    """SPEC 13: a room's category; search by name (ASCII case ignored, LIKE's wildcards plain),
    by category, newest first, limited; saved rooms (idempotent, unknown room, MAX_SAVED_ROOMS);
    deleting a room by its creator only, with its saved rows and mutes."""
    async with asyncio.timeout(TIMEOUT):
        assert await store.create_room("Chess_club", A, None, "Games")
        assert await store.create_room("chessXclub", B, b"h")
        assert await store.create_room("poker", A, None, "Games")
        assert (await store.room("Chess_club")) == Room("Chess_club", A, None, "Games")

        def names(rooms: list[Room]) -> list[str]:
            return [r.name for r in rooms]

        assert names(await store.search_rooms("CHESS", None, 10)) == ["chessXclub", "Chess_club"]
        assert names(await store.search_rooms("s_c", None, 10)) == ["Chess_club"]
        assert names(await store.search_rooms("%", None, 10)) == []
        assert names(await store.search_rooms("", "Games", 10)) == ["poker", "Chess_club"]
        assert names(await store.search_rooms("", "games", 10)) == []
        assert names(await store.search_rooms("", None, 1)) == ["poker"]

        assert await store.save_room(A, "poker")
        assert await store.save_room(A, "poker")  # again: no change
        assert await store.save_room(A, "chessXclub")
        assert not await store.save_room(A, "nothing")
        assert await store.saved_rooms(A) == ["chessXclub", "poker"]
        assert await store.unsave_room(A, "chessXclub")
        assert not await store.unsave_room(A, "chessXclub")
        assert await store.saved_rooms(A) == ["poker"]

        await store.set_mute(A, "room:poker", 2**60)
        assert not await store.delete_room("poker", B)  # not its creator
        assert not await store.delete_room("nothing", A)
        assert await store.room("poker") is not None
        assert await store.delete_room("poker", A)
        assert await store.room("poker") is None
        assert await store.saved_rooms(A) == []
        assert await store.mutes(A, 0) == []


async def test_saved_rooms_are_limited(store: AnyStore) -> None:
    async with asyncio.timeout(TIMEOUT):
        rooms = [f"r{i}" for i in range(MAX_SAVED_ROOMS + 1)]
        await asyncio.gather(*(store.create_room(r, B, None) for r in rooms))
        assert all(await asyncio.gather(*(store.save_room(A, r) for r in rooms[:-1])))
        with pytest.raises(ValueError):
            await store.save_room(A, rooms[-1])
        assert len(await store.saved_rooms(A)) == MAX_SAVED_ROOMS
        assert await store.save_room(A, rooms[0])  # one already saved is no new one


# -- corruption ---------------------------------------------------------------------------------


def build_db(path: Path) -> None:
    """A real database with a few rows, closed cleanly (WAL checkpointed into the file)."""
    async def build() -> None:
        async with opened(path) as store:
            for i in range(20):
                await store.add_personal(A, B, i, f"t{i}", "body" * 40)
            await store.add_session("s", A)
    asyncio.run(build())


def corrupt_root_page(path: Path, name: str) -> None:
    """Overwrite the first 100 bytes of the root page of table or index `name`."""
    with contextlib.closing(sqlite3.connect(path)) as con:
        page_size = con.execute("PRAGMA page_size").fetchone()[0]
        (rootpage,) = con.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (name,)).fetchone()
    with open(path, "r+b") as fh:
        fh.seek((rootpage - 1) * page_size)
        fh.write(b"\xff" * 100)


async def test_open_refuses_a_damaged_index_page(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    await asyncio.to_thread(build_db, path)
    corrupt_root_page(path, "sessions_phone")
    with pytest.raises(CorruptDatabase):
        store = await asyncio.wait_for(SqliteStore.open(path), TIMEOUT)
        await asyncio.wait_for(store.close(), TIMEOUT)


@pytest.mark.parametrize(
    "damage", ["garbage-file", "table-root-page"])
async def test_open_refuses_a_corrupt_file(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "chat.db"
    if damage == "garbage-file":
        path.write_bytes(bytes(range(256)) * 64)
    else:
        await asyncio.to_thread(build_db, path)
        corrupt_root_page(path, "personal_messages")
    with pytest.raises(CorruptDatabase):
        store = await asyncio.wait_for(SqliteStore.open(path), TIMEOUT)
        await asyncio.wait_for(store.close(), TIMEOUT)


# -- PostgreSQL only ----------------------------------------------------------------------------


async def test_pg_a_write_resolves_after_its_commit_is_visible_to_another_connection(
        pg_store: PgStore, pg_url: str) -> None:
    """msg_sent may go out only after the commit holding the row: when add_personal returns,
    another session (another process) already sees the row."""
    async with asyncio.timeout(TIMEOUT), connected(pg_url) as other:
        visible: list[int] = []
        one_at_a_time = asyncio.Lock()  # one connection runs one query at a time

        async def add(i: int) -> None:
            assert await pg_store.add_personal(A, B, i, f"t{i}", f"m{i}")
            async with one_at_a_time:
                visible.append(await other.fetchval(
                    "SELECT count(*) FROM personal_messages WHERE sent_us = $1", i))

        await asyncio.gather(*(add(i) for i in range(50)))
        assert visible == [1] * 50


async def test_pg_a_write_whose_commit_fails_is_not_acknowledged(
        pg_store: PgStore, pg_url: str) -> None:
    """Every statement of the batch succeeds, then COMMIT fails (a deferred constraint trigger
    the test adds): the future fails, so it was not resolved before the COMMIT, and nothing is
    stored. Later writes go through."""
    async with asyncio.timeout(TIMEOUT), connected(pg_url) as other:
        await other.execute("""
            CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.message = 'refused at commit' THEN RAISE EXCEPTION 'refused at commit'; END IF;
                RETURN NULL;
            END $$;
            CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON personal_messages
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_at_commit();""")
        with pytest.raises(StoreError):
            await pg_store.add_personal(A, B, T1, "t1", "refused at commit")
        assert await pg_store.pending_for(B) == []
        assert await pg_store.add_personal(A, B, T2, "t2", "accepted") == Stored([B], 0)
        assert [m.message for m in await pg_store.pending_for(B)] == ["accepted"]


async def test_pg_two_stores_on_one_schema_see_each_others_writes(
        pg_store: PgStore, pg_url: str) -> None:
    """Two stores on one schema, as two server processes have: what one commits, the other reads;
    an identity stored by both at once is stored once."""
    async with asyncio.timeout(TIMEOUT), opened(pg_url) as second:
        await second.add_session("b-1", B)
        assert await pg_store.add_personal(A, B, T1, "t1", "from the first")
        assert await second.pending_for(B) == [StoredMessage(A, B, "from the first", T1)]
        assert await second.ack_personal(A, B, T1, "2026-03-14 17:12:00.000", "b-1") is Ack.FIRST
        assert await pg_store.pending_for(B) == []
        assert await pg_store.dialogue_side(A, B) == DialogueSide("2026-03-14 17:12:00.000", None, 0)
        assert await pg_store.ack_personal(A, B, T1, "2026-03-14 17:12:01.000", "b-1") is Ack.MISSING

        for i in range(20):  # the same retry reaching both processes at once
            results = await asyncio.gather(pg_store.add_personal(A, C, i, f"t{i}", "once"),
                                           second.add_personal(A, C, i, f"t{i}", "once"))
            assert sorted(results, key=lambda r: r is not None) == [None, Stored([C], 0)]
        assert len(await second.pending_for(C)) == 20

        assert await pg_store.create_group("G123456789", "g", A, [B, C])
        group = await second.group("G123456789")
        assert group is not None and group.participants == [A, B, C]
        # from B, whose device b-1 (made by the other process) gets a copy (SPEC 7.2)
        assert await second.add_group_message("G123456789", B, T1, "t1", "hi") == Stored([A, C], 1)
        assert [m.message for m in await pg_store.pending_group_for(C)] == ["hi"]


async def test_pg_the_blocks_mirror_follows_every_process(pg_store: PgStore, pg_url: str) -> None:
    """is_blocked answers from memory; a block, an unblock or an account deletion made by another
    process reaches it by NOTIFY (waited for as an event, never a fixed sleep)."""
    async with asyncio.timeout(TIMEOUT), opened(pg_url) as second:
        assert isinstance(second, PgStore)
        assert not second.is_blocked(A, B)
        await pg_store.block(A, B)
        assert pg_store.is_blocked(A, B)  # the process that blocked knows at once
        await until(second, lambda: second.is_blocked(A, B))
        assert not second.is_blocked(B, A)  # one way

        await second.unblock(A, B)
        assert not second.is_blocked(A, B)
        await until(pg_store, lambda: not pg_store.is_blocked(A, B))

        # a cascade (deluser) announces its deleted blocks too
        await pg_store.block(C, A)
        await pg_store.block(B, C)
        await until(second, lambda: second.is_blocked(C, A) and second.is_blocked(B, C))
        assert await second.delete_user(C)
        await until(pg_store, lambda: not pg_store.is_blocked(C, A) and not pg_store.is_blocked(B, C))
        await until(second, lambda: not second.is_blocked(C, A) and not second.is_blocked(B, C))

        # a process started later reads the blocks at start
        await second.block(A, B)
        async with opened(pg_url) as third:
            assert third.is_blocked(A, B) and not third.is_blocked(B, A)


async def test_pg_the_blocks_listener_reconnects_and_rereads(pg_store: PgStore, pg_url: str) -> None:
    """A listener whose connection is lost (here: terminated by the server) listens again and
    reads the table again, so that a change made meanwhile is not missed."""
    async with asyncio.timeout(TIMEOUT), opened(pg_url) as second, connected(pg_url) as admin:
        assert isinstance(second, PgStore)
        lost = second._mirror.listener
        assert lost is not None
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", lost.get_server_pid())
        await pg_store.block(A, B)  # maybe before, maybe after the new LISTEN: both must work
        await until(second, lambda: second._mirror.listener not in (None, lost) and second.is_blocked(A, B))
        await pg_store.unblock(A, B)  # heard on the new connection
        await until(second, lambda: not second.is_blocked(A, B))


async def test_pg_the_writer_reconnects_after_losing_its_connection(
        pg_store: PgStore, pg_url: str) -> None:
    """A write that meets the lost connection fails as StoreError (nothing committed: the client
    may retry); the next batch runs on a new connection."""
    async with asyncio.timeout(TIMEOUT), connected(pg_url) as admin:
        assert pg_store._writer is not None
        assert await admin.fetchval("SELECT pg_terminate_backend($1)",
                                    pg_store._writer.get_server_pid())
        try:  # whether the client has noticed yet is a race: either outcome is correct
            first = await pg_store.add_personal(A, B, T1, "t1", "maybe") is not None
        except StoreError:
            first = False
        assert await pg_store.add_personal(A, B, T2, "t2", "surely") == Stored([B], 0)
        expected = ["maybe", "surely"] if first else ["surely"]
        assert [m.message for m in await pg_store.pending_for(B)] == expected


async def test_pg_stores_opening_a_fresh_schema_at_once_all_start(pg_url: str) -> None:
    """Several processes starting together on an empty schema: the advisory lock makes them
    apply the schema one after the other (CREATE ... IF NOT EXISTS alone races)."""
    results = await asyncio.wait_for(asyncio.gather(
        *(PgStore.open(pg_url) for _ in range(6)), return_exceptions=True), TIMEOUT)
    stores = [r for r in results if isinstance(r, PgStore)]
    try:
        assert len(stores) == len(results), [r for r in results if not isinstance(r, PgStore)]
        async with asyncio.timeout(TIMEOUT):
            assert await stores[0].add_user(A, "a", b"h")
            assert await stores[-1].user_exists(A)
    finally:
        for store in stores:
            await asyncio.wait_for(store.close(), TIMEOUT)


async def test_pg_last_acknowledgements_in_two_processes_delete_the_message(
        pg_store: PgStore, pg_url: str) -> None:
    """B's and C's acknowledgements of the same messages, committed at the same moment by two
    processes: each must see the other's (the trigger locks the message), so every message goes."""
    n = 20
    async with asyncio.timeout(TIMEOUT), opened(pg_url) as second, connected(pg_url) as other:
        await pg_store.add_session("b-1", B)
        await pg_store.add_session("c-1", C)
        assert await pg_store.create_group("G123456789", "g", A, [B, C])
        for round_ in range(5):  # the first round also prepares the statements on both writers
            sent = range(round_ * n, (round_ + 1) * n)
            for i in sent:
                assert await pg_store.add_group_message("G123456789", A, i, "t", "m") == Stored([B, C], 0)
            acks = await asyncio.gather(
                *(pg_store.ack_group("G123456789", A, i, B, "b-1") for i in sent),
                *(second.ack_group("G123456789", A, i, C, "c-1") for i in sent))
            assert acks == [Ack.FIRST] * (2 * n)
            assert await other.fetchval("SELECT count(*) FROM group_pending") == 0
            assert await other.fetchval("SELECT count(*) FROM group_deliveries") == 0
            assert await other.fetchval("SELECT count(*) FROM group_messages") == 0, f"round {round_}"


async def test_pg_devices_acknowledging_in_two_processes_at_once_make_one_first_and_let_go(
        pg_store: PgStore, pg_url: str) -> None:
    """SPEC 7.1 across processes: two devices of B acknowledge the same messages in two processes
    at the same moment: exactly one acknowledgement of each is FIRST (one receipt). Then B's two
    other devices do the same: both LATER, and each process must see the other's delete (the
    triggers lock the message), so nothing is left."""
    n = 20
    async with asyncio.timeout(3 * TIMEOUT), opened(pg_url) as second, connected(pg_url) as other:
        await add_sessions(pg_store, ("b-1", B), ("b-2", B), ("b-3", B), ("b-4", B))
        assert await pg_store.create_group(G, "g", A, [B])
        for round_ in range(5):  # the first round also prepares the statements on both writers
            sent = range(round_ * n, (round_ + 1) * n)
            for i in sent:
                assert await pg_store.add_personal(A, B, i, f"t{i}", "m") == Stored([B], 0)
                assert await pg_store.add_group_message(G, A, i, f"t{i}", "m") == Stored([B], 0)
            for first, second_device, expected in (("b-1", "b-2", {Ack.FIRST, Ack.LATER}),
                                                   ("b-3", "b-4", {Ack.LATER})):
                acks = await asyncio.gather(
                    *(pg_store.ack_personal(A, B, i, f"r{i}", first) for i in sent),
                    *(pg_store.ack_group(G, A, i, B, first) for i in sent),
                    *(second.ack_personal(A, B, i, f"r{i}", second_device) for i in sent),
                    *(second.ack_group(G, A, i, B, second_device) for i in sent))
                for k in range(2 * n):  # each message's pair of acknowledgements
                    pair = [acks[k], acks[2 * n + k]]
                    assert set(pair) == expected and pair.count(Ack.FIRST) <= 1, (round_, k, pair)
            assert await other.fetchval("SELECT count(*) FROM personal_messages") == 0, f"round {round_}"
            assert await other.fetchval("SELECT count(*) FROM group_messages") == 0, f"round {round_}"
            assert await other.fetchval("SELECT count(*) FROM personal_deliveries") == 0
            assert await other.fetchval("SELECT count(*) FROM group_deliveries") == 0
            assert await other.fetchval("SELECT count(*) FROM group_pending") == 0
            assert (await pg_store.dialogue_side(A, B)).waiting == 0


async def test_pg_a_device_added_while_another_process_stores_a_message_gets_it(
        pg_store: PgStore, pg_url: str) -> None:
    """SPEC 7.1: a device B adds while a message for B is being stored by another process gets
    it, whichever commits first (add_session locks B's user row and memberships, which the
    message's foreign key and its group's member lookup share)."""
    rounds = 40
    async with asyncio.timeout(3 * TIMEOUT), opened(pg_url) as second:
        assert await pg_store.create_group(G, "g", A, [B])
        for i in range(rounds):
            device = f"b-{i}"
            await asyncio.gather(pg_store.add_session(device, B),
                                 second.add_personal(A, B, i, f"t{i}", f"m{i}"))
            # every message stored so far, none acknowledged: the new device waits for all
            assert [m.message for m in await waiting_for(pg_store, device)] == [
                f"m{k}" for k in range(i + 1)], i
        for i in range(rounds):  # alone: a group message locks no row of B's user
            device = f"b-g{i}"
            await asyncio.gather(pg_store.add_session(device, B),
                                 second.add_group_message(G, A, i, f"t{i}", f"g{i}"))
            assert [m.message for m in await group_waiting_for(pg_store, device)] == [
                f"g{k}" for k in range(i + 1)], i


async def test_pg_a_member_removed_while_another_process_stores_messages_is_never_pending(
        pg_store: PgStore, pg_url: str) -> None:
    """C is removed by one process while the other stores messages for the group: no message may
    stay pending for C (it would never be acknowledged, so never deleted)."""
    async with asyncio.timeout(TIMEOUT), opened(pg_url) as second:
        for round_ in range(10):
            key = f"G{round_:09d}"
            assert await pg_store.create_group(key, "g", A, [B, C])
            results = await asyncio.gather(
                *(second.add_group_message(key, A, i, f"t{i}", f"m{i}") for i in range(20)),
                pg_store.update_group(key, remove=[C]))
            assert all(isinstance(r, Stored) and r.pending in ([B], [B, C]) for r in results[:-1])
            assert [m.message for m in await pg_store.pending_group_for(C)] == []


async def test_pg_scrub_vacuums_the_message_tables(pg_store: PgStore, pg_url: str) -> None:
    async with asyncio.timeout(TIMEOUT), connected(pg_url) as other:
        counts = ("SELECT relname, vacuum_count FROM pg_stat_user_tables"
                  " WHERE schemaname = current_schema() AND relname LIKE '%messages' ORDER BY 1")
        before = dict(await other.fetch(counts))
        assert set(before) == {"group_messages", "personal_messages", "room_messages"}
        await pg_store.scrub()
        after = dict(await other.fetch(counts))
        assert all(after[t] == before[t] + 1 for t in before), (before, after)


async def test_pg_the_writer_vacuums_by_itself_within_scrub_seconds(pg_url: str) -> None:
    scrub_seconds = 0.3
    count = ("SELECT vacuum_count FROM pg_stat_user_tables"
             " WHERE schemaname = current_schema() AND relname = 'personal_messages'")
    async with opened(pg_url, scrub_seconds=scrub_seconds) as store, connected(pg_url) as other:
        async with asyncio.timeout(TIMEOUT):
            loop = asyncio.get_running_loop()
            await store.add_session("b-1", B)
            assert await store.add_personal(A, B, T1, "t1", "body")
            before = await other.fetchval(count)
            assert await store.ack_personal(A, B, T1, "2026-03-14 17:12:00.000", "b-1") is Ack.FIRST
            deadline = loop.time() + scrub_seconds + 3.0  # generous slack for a loaded machine
            while await other.fetchval(count) == before:  # poll the background effect
                assert loop.time() < deadline, "no VACUUM within scrub_seconds of the delete"
                await asyncio.sleep(0.02)


async def test_pg_close_vacuums_after_an_unscrubbed_delete(pg_url: str) -> None:
    count = ("SELECT vacuum_count FROM pg_stat_user_tables"
             " WHERE schemaname = current_schema() AND relname = 'personal_messages'")
    async with connected(pg_url) as other:
        async with opened(pg_url) as store:  # scrub_seconds 60: only close() can vacuum here
            async with asyncio.timeout(TIMEOUT):
                await store.add_session("b-1", B)
                assert await store.add_personal(A, B, T1, "t1", "body")
                assert await store.ack_personal(A, B, T1, "2026-03-14 17:12:00.000", "b-1") is Ack.FIRST
                before = await other.fetchval(count)
        assert await asyncio.wait_for(other.fetchval(count), TIMEOUT) == before + 1


# Tuples of personal_messages and of its TOAST table whose data hold $1 (pageinspect).
_TUPLES_HOLDING: Final = """
    SELECT count(*) FROM (VALUES ('personal_messages'::regclass), ((SELECT reltoastrelid FROM pg_class
                                  WHERE oid = 'personal_messages'::regclass)::regclass)) AS r(rel),
         generate_series(0, pg_relation_size(r.rel) / current_setting('block_size')::int - 1) AS b,
         {schema}.heap_page_items({schema}.get_raw_page(r.rel::text, b::int)) AS t
    WHERE position($1::bytea IN t.t_data) > 0"""


@pytest.mark.parametrize("size", [40, 20_000], ids=["in-page", "toasted"])
async def test_pg_after_scrub_no_tuple_holds_an_acknowledged_body(
        pg_store: PgStore, pg_url: str, size: int) -> None:
    """What VACUUM does and the delete alone does not: the deleted tuple, which still holds the
    body after the commit, is removed. (Its bytes may stay in the page's free space until
    overwritten: docs/storage.md. This looks at tuples, not at free space.)"""
    marker = f"secret-{uuid.uuid4().hex}"
    # random hex does not compress: the large body goes to the TOAST table as it is
    body = marker + " " + secrets.token_hex(size // 2)
    async with asyncio.timeout(TIMEOUT), connected(pg_url) as other:
        try:
            await other.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")  # in the test schema
            schema = await other.fetchval(
                "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'pageinspect'")
            tuples_holding = _TUPLES_HOLDING.format(schema=schema)
            await other.fetchval(tuples_holding, b"x")
        except asyncpg.PostgresError as e:  # not installed, or not a superuser
            pytest.skip(f"pageinspect is not usable here: {e}")
        await pg_store.add_session("b-1", B)
        assert await pg_store.add_personal(A, B, T1, "t1", body)
        assert await pg_store.add_personal(A, B, T2, "t2", "another message that stays")
        assert await other.fetchval(tuples_holding, marker.encode()) == 1, "control: stored"
        assert await pg_store.ack_personal(A, B, T1, "2026-03-14 17:12:00.000", "b-1") is Ack.FIRST
        # SPEC 7.1: the acknowledgement marks the message `acked` (a new row version) before the
        # delete, so two dead tuples hold the body, the old version and the deleted one
        assert await other.fetchval(tuples_holding, marker.encode()) >= 1, \
            "control: a deleted row stays in its tuple until VACUUM"
        await pg_store.scrub()
        assert await other.fetchval(tuples_holding, marker.encode()) == 0
        assert [m.message for m in await pg_store.pending_for(B)] == ["another message that stays"]


async def test_pg_a_batch_that_loses_a_deadlock_is_run_again(pg_store: PgStore, pg_url: str) -> None:
    """Two processes' batches that lock the same rows in opposite orders deadlock; PostgreSQL
    aborts one (after its deadlock_timeout, 1 s by default), and that store runs its batch again
    instead of failing its writes (stores.groupcommit.MAX_ATTEMPTS). The two writes are made to meet inside
    their transactions by events, so the deadlock happens every time."""
    first_locked, second_locked = asyncio.Event(), asyncio.Event()
    runs = {"first": 0, "second": 0}

    def crossing(name: str, mine: asyncio.Event, theirs: asyncio.Event,
                 one: str, two: str) -> Callable[[Any], Awaitable[None]]:
        async def op(db: Any) -> None:
            runs[name] += 1
            await db.execute("UPDATE users SET name = name || '.' WHERE phone = $1", one)
            mine.set()
            await asyncio.wait_for(theirs.wait(), TIMEOUT)
            await db.execute("UPDATE users SET name = name || '.' WHERE phone = $1", two)
        return op

    async with asyncio.timeout(3 * TIMEOUT), opened(pg_url) as second:
        assert isinstance(second, PgStore)
        await asyncio.gather(
            pg_store._write(crossing("first", first_locked, second_locked, A, B)),  # noqa: SLF001
            second._write(crossing("second", second_locked, first_locked, B, A)))  # noqa: SLF001
        assert sorted(runs.values()) == [1, 2]  # the loser ran again, and nothing failed
        names = {u.phone: u.name for u in [await second.get_user(A), await second.get_user(B)]
                 if u is not None}
        assert names == {A: f"user {A}..", B: f"user {B}.."}  # both writes committed, once each
