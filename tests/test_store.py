"""The SQLite store, one Store per test on tmp_path: store-and-forward, group commit, secure delete
checked on the bytes of the database file and its WAL, sessions, users, corruption."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import pytest

import chatserver.store as store_module
from chatserver.protocol import parse_timestamp
from chatserver.store import CorruptDatabase, DialogueSide, Store, StoreClosed, StoredMessage

A, B, C = "1000000001", "1000000002", "1000000003"
NOT_A_USER = "1999999999"
TIMEOUT = 10.0  # every test body and every fixture await is bounded by this
T1 = parse_timestamp("2026-03-14 17:11:06.23")
T2 = parse_timestamp("2026-03-14 17:11:07")
T3 = parse_timestamp("2026-03-14 17:11:08")


@asynccontextmanager
async def opened(path: Path, scrub_seconds: float = 60.0) -> AsyncIterator[Store]:
    """A Store on `path` with users A, B and C; closed on exit."""
    store = await asyncio.wait_for(
        Store.open(path, synchronous="FULL", scrub_seconds=scrub_seconds), TIMEOUT)
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
async def store(db_path: Path) -> AsyncIterator[Store]:
    """A fresh standalone Store (not the server's) whose automatic scrub stays out of the way."""
    async with opened(db_path) as store:
        yield store


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
    """Every SQL statement the writer connection runs (sqlite3's trace callback)."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def __call__(self, statement: str) -> None:
        self.statements.append(statement.strip().upper())

    def count(self, statement: str) -> int:
        return self.statements.count(statement)


async def trace_writer(store: Store) -> Trace:
    """Trace the store's writer connection (private: the only way to count real COMMITs)."""
    trace = Trace()
    await store._writer.set_trace_callback(trace)
    return trace


# -- store and forward --------------------------------------------------------------------------


async def test_add_personal_is_stored_once_and_a_retry_returns_false(store: Store) -> None:
    async with asyncio.timeout(TIMEOUT):
        assert await store.add_personal(A, B, T1, "2026-03-14 17:11:06.23", "hello") is True
        # the same identity (msg_from, msg_to, instant), spelled differently: a retry
        assert await store.add_personal(A, B, T1, "2026-03-14T17:11:06.230000Z", "hello") is False
        assert await store.add_personal(A, B, T1, "2026-03-14 17:11:06.23", "changed") is False
        assert await store.pending_for(B) == [StoredMessage(A, B, "hello", T1)]
        assert (await store.dialogue_side(A, B)).waiting == 1


async def test_identity_includes_sender_and_recipient(store: Store) -> None:
    async with asyncio.timeout(TIMEOUT):
        assert await store.add_personal(A, B, T1, "t", "a to b")
        assert await store.add_personal(A, C, T1, "t", "a to c")
        assert await store.add_personal(C, B, T1, "t", "c to b")
        assert await store.add_personal(B, A, T1, "t", "b to a")
        assert [m.message for m in await store.pending_for(B)] == ["a to b", "c to b"]
        assert [m.message for m in await store.pending_for(C)] == ["a to c"]
        assert [m.message for m in await store.pending_for(A)] == ["b to a"]


async def test_pending_for_is_acceptance_order_not_timestamp_order(store: Store) -> None:
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


async def test_stored_body_is_kept_exactly(store: Store) -> None:
    body = "héllo 🎉\n\t\"quoted\" ' ; DROP TABLE users; --" + "x" * 5000
    async with asyncio.timeout(TIMEOUT):
        assert await store.add_personal(A, B, T1, "t", body)
        assert [m.message for m in await store.pending_for(B)] == [body]


async def test_ack_personal_deletes_and_sets_last_received_receiver(store: Store) -> None:
    async with asyncio.timeout(TIMEOUT):
        assert await store.add_personal(A, B, T1, "t1", "one")
        assert await store.add_personal(A, B, T2, "t2", "two")
        assert await store.dialogue_side(A, B) == DialogueSide(None, None, 2)
        # B has stored A's first message on its device
        assert await store.ack_personal(A, B, T1, "2026-03-14 17:12:00.000") is True
        assert await store.pending_for(B) == [StoredMessage(A, B, "two", T2)]
        assert await store.dialogue_side(A, B) == DialogueSide("2026-03-14 17:12:00.000", None, 1)
        assert await store.dialogue_side(B, A) == DialogueSide(None, None, 0)  # the other direction
        assert await store.ack_personal(A, B, T2, "2026-03-14 17:12:01.000") is True
        assert await store.pending_for(B) == []
        assert await store.dialogue_side(A, B) == DialogueSide("2026-03-14 17:12:01.000", None, 0)


async def test_ack_personal_of_no_such_message_returns_false_and_changes_nothing(store: Store) -> None:
    async with asyncio.timeout(TIMEOUT):
        assert await store.ack_personal(A, B, T1, "2026-03-14 17:12:00.000") is False  # nothing stored
        assert await store.add_personal(A, B, T1, "t1", "one")
        assert await store.ack_personal(B, A, T1, "2026-03-14 17:12:00.000") is False  # wrong direction
        assert await store.ack_personal(A, C, T1, "2026-03-14 17:12:00.000") is False  # wrong recipient
        assert await store.ack_personal(A, B, T2, "2026-03-14 17:12:00.000") is False  # wrong instant
        assert await store.pending_for(B) == [StoredMessage(A, B, "one", T1)]
        assert await store.dialogue_side(A, B) == DialogueSide(None, None, 1)
        assert await store.ack_personal(A, B, T1, "2026-03-14 17:12:00.000") is True
        assert await store.ack_personal(A, B, T1, "2026-03-14 17:13:00.000") is False  # twice
        assert (await store.dialogue_side(A, B)).last_received_receiver == "2026-03-14 17:12:00.000"


async def test_after_ack_the_same_identity_can_be_stored_again(store: Store) -> None:
    """The retry guard lasts while the first copy is stored (SPEC 5.1), not forever."""
    async with asyncio.timeout(TIMEOUT):
        assert await store.add_personal(A, B, T1, "t1", "one")
        assert await store.ack_personal(A, B, T1, "2026-03-14 17:12:00.000")
        assert await store.add_personal(A, B, T1, "t1", "one again") is True
        assert [m.message for m in await store.pending_for(B)] == ["one again"]


async def test_read_personal_sets_last_seen_receiver_and_deletes_nothing(store: Store) -> None:
    async with asyncio.timeout(TIMEOUT):
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
        assert await store.ack_personal(A, B, T1, "2026-03-14 17:12:30.000")
        assert await store.dialogue_side(A, B) == DialogueSide(
            "2026-03-14 17:12:30.000", "2026-03-14 17:13:00.000", 0)


async def test_dialogues(store: Store) -> None:
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


async def test_unknown_recipient_is_refused_by_the_foreign_key(store: Store) -> None:
    async with asyncio.timeout(TIMEOUT):
        with pytest.raises(sqlite3.IntegrityError):
            await store.add_personal(A, NOT_A_USER, T1, "t1", "to nobody")
        assert await store.pending_for(NOT_A_USER) == []
        assert await store.add_personal(A, B, T1, "t1", "still works")


async def test_reopening_keeps_stored_messages(db_path: Path) -> None:
    async with opened(db_path) as store:
        async with asyncio.timeout(TIMEOUT):
            assert await store.add_personal(A, B, T1, "t1", "survives a restart")
    async with opened(db_path) as store:  # add_user of A, B, C again: taken, no harm
        async with asyncio.timeout(TIMEOUT):
            assert await store.pending_for(B) == [StoredMessage(A, B, "survives a restart", T1)]


async def test_close_finishes_the_write_in_flight(db_path: Path) -> None:
    store = await asyncio.wait_for(Store.open(db_path, scrub_seconds=60.0), TIMEOUT)
    closed = False
    try:
        async with asyncio.timeout(TIMEOUT):
            await store.add_user(A, "a", b"h")
            await store.add_user(B, "b", b"h")
            # gather starts add_personal first: its write is queued when close() begins
            stored, _ = await asyncio.gather(store.add_personal(A, B, T1, "t1", "queued"), store.close())
        closed = True
        assert stored is True
        with pytest.raises(StoreClosed):
            await asyncio.wait_for(store.add_personal(A, B, T2, "t2", "too late"), TIMEOUT)
        with pytest.raises(StoreClosed):
            await asyncio.wait_for(store.scrub(), TIMEOUT)
    finally:
        if not closed:
            await asyncio.wait_for(store.close(), TIMEOUT)
    async with opened(db_path) as reopened:
        async with asyncio.timeout(TIMEOUT):
            assert [m.message for m in await reopened.pending_for(B)] == ["queued"]


# -- group commit -------------------------------------------------------------------------------


async def test_sequential_writes_commit_one_by_one(store: Store) -> None:
    """Control for the batching test: the trace really sees one COMMIT per lone write."""
    async with asyncio.timeout(TIMEOUT):
        trace = await trace_writer(store)
        for i in range(5):
            assert await store.add_personal(A, B, i, f"t{i}", f"m{i}")
        assert trace.count("COMMIT") == 5


async def test_group_commit_batches_concurrent_writes(store: Store) -> None:
    """200 concurrent add_personal share a few transactions, and each caller hears after COMMIT."""
    n = 200
    async with asyncio.timeout(TIMEOUT):
        trace = await trace_writer(store)
        results = await asyncio.gather(*(
            store.add_personal(A if i % 2 else C, B, i, f"t{i}", f"message {i}") for i in range(n)))
        assert results == [True] * n
        commits = trace.count("COMMIT")
        assert 1 <= commits <= n // 20, f"{n} concurrent writes took {commits} commits"
        assert trace.count("BEGIN IMMEDIATE") == commits
        # acceptance order is submission order, also inside one batch
        assert [m.message for m in await store.pending_for(B)] == [f"message {i}" for i in range(n)]


async def test_group_commit_resolves_only_after_commit(store: Store, db_path: Path) -> None:
    """msg_sent may go out only after the commit holding the row: when add_personal returns, an
    independent connection already sees the row (WAL readers see committed data only)."""
    async with asyncio.timeout(TIMEOUT):
        with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as other:
            visible: list[int] = []

            async def add(i: int) -> None:
                assert await store.add_personal(A, B, i, f"t{i}", f"m{i}")
                # checked at once, on this thread, before anything else can run
                (count,) = other.execute(
                    "SELECT count(*) FROM personal_messages WHERE sent_us = ?", (i,)).fetchone()
                visible.append(count)

            await asyncio.gather(*(add(i) for i in range(50)))
            assert visible == [1] * 50


async def test_a_failing_op_fails_alone_in_its_batch(store: Store) -> None:
    """A foreign-key violation in one write of a batch fails that write only."""
    async with asyncio.timeout(TIMEOUT):
        trace = await trace_writer(store)
        results = await asyncio.gather(
            store.add_personal(A, B, T1, "t1", "before"),
            store.add_personal(A, NOT_A_USER, T1, "t1", "to nobody"),
            store.add_personal(C, B, T1, "t1", "after"),
            return_exceptions=True,
        )
        assert results[0] is True
        assert isinstance(results[1], sqlite3.IntegrityError)
        assert results[2] is True
        # they did share a transaction: it was rolled back, and the good writes committed together
        assert trace.count("ROLLBACK") >= 1
        assert trace.count("COMMIT") == 1
        assert [m.message for m in await store.pending_for(B)] == ["before", "after"]
        assert await store.pending_for(NOT_A_USER) == []
        # the writer is still alive
        assert await store.add_personal(A, B, T2, "t2", "later") is True


async def test_several_failing_ops_in_one_batch(store: Store) -> None:
    async with asyncio.timeout(TIMEOUT):
        results = await asyncio.gather(*(
            store.add_personal(A, B if i % 3 else NOT_A_USER, i, f"t{i}", f"m{i}") for i in range(30)),
            return_exceptions=True)
        for i, result in enumerate(results):
            if i % 3:
                assert result is True
            else:
                assert isinstance(result, sqlite3.IntegrityError)
        assert [m.message for m in await store.pending_for(B)] == [f"m{i}" for i in range(30) if i % 3]


# -- secure delete (SPEC 6) ---------------------------------------------------------------------


def unique_body(size: int) -> tuple[str, bytes]:
    """A message body that cannot occur by chance in a database file, and the bytes to look for."""
    marker = f"secret-{uuid.uuid4().hex}"
    body = (marker + " ") * max(1, size // (len(marker) + 1))
    return body, marker.encode()


@pytest.mark.parametrize("size", [40, 20_000], ids=["in-page", "overflow-pages"])
async def test_scrub_removes_an_acknowledged_body_from_the_file_and_the_wal(
        store: Store, db_path: Path, size: int) -> None:
    body, needle = unique_body(size)
    async with asyncio.timeout(TIMEOUT):
        assert await store.add_personal(A, B, T1, "t1", body)
        assert await store.add_personal(A, B, T2, "t2", "another message that stays")
        assert files_holding(db_path, needle), "control: the stored body is in the files"
        assert await store.ack_personal(A, B, T1, "2026-03-14 17:12:00.000")
        await store.scrub()
        assert files_holding(db_path, needle) == []
        assert [m.message for m in await store.pending_for(B)] == ["another message that stays"]


async def test_the_writer_scrubs_by_itself_within_scrub_seconds(db_path: Path) -> None:
    scrub_seconds = 0.3
    body, needle = unique_body(40)
    async with opened(db_path, scrub_seconds=scrub_seconds) as store:
        async with asyncio.timeout(TIMEOUT):
            loop = asyncio.get_running_loop()
            assert await store.add_personal(A, B, T1, "t1", body)
            assert files_holding(db_path, needle), "control: the stored body is in the files"
            assert await store.ack_personal(A, B, T1, "2026-03-14 17:12:00.000")
            acked = loop.time()
            deadline = acked + scrub_seconds + 3.0  # generous slack for a loaded machine
            while files_holding(db_path, needle):  # poll for the background effect, no fixed wait
                assert loop.time() < deadline, f"body still in {files_holding(db_path, needle)}"
                await asyncio.sleep(0.02)


async def test_scrub_after_delete_user_removes_their_messages(store: Store, db_path: Path) -> None:
    body, needle = unique_body(40)
    async with asyncio.timeout(TIMEOUT):
        assert await store.add_personal(A, B, T1, "t1", body)
        assert files_holding(db_path, needle), "control: the stored body is in the files"
        assert await store.delete_user(A)
        await store.scrub()
        assert files_holding(db_path, needle) == []


async def test_close_leaves_no_acknowledged_body_behind(db_path: Path) -> None:
    body, needle = unique_body(40)
    async with opened(db_path) as store:
        async with asyncio.timeout(TIMEOUT):
            assert await store.add_personal(A, B, T1, "t1", body)
            assert files_holding(db_path, needle), "control: the stored body is in the files"
            assert await store.ack_personal(A, B, T1, "2026-03-14 17:12:00.000")
    assert files_holding(db_path, needle) == []


async def test_scrub_keeps_unacknowledged_messages(store: Store, db_path: Path) -> None:
    body, needle = unique_body(40)
    async with asyncio.timeout(TIMEOUT):
        assert await store.add_personal(A, B, T1, "t1", body)
        await store.scrub()
        assert files_holding(db_path, needle) == [db_path.name]  # checkpointed into the main file
        assert [m.message for m in await store.pending_for(B)] == [body]


# -- sessions -----------------------------------------------------------------------------------


async def test_sessions_add_lookup_delete(store: Store) -> None:
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


async def test_session_of_an_unknown_phone_is_refused(store: Store) -> None:
    async with asyncio.timeout(TIMEOUT):
        with pytest.raises(sqlite3.IntegrityError):
            await store.add_session("hash-x", NOT_A_USER)
        assert await store.session_user("hash-x", 3600) is None


async def test_session_expires_after_max_age(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    async with asyncio.timeout(TIMEOUT):
        two_hours_ago = store_module.now_micros() - 2 * 3600 * 1_000_000
        with monkeypatch.context() as m:
            m.setattr(store_module, "now_micros", lambda: two_hours_ago)
            await store.add_session("old", A)
        await store.add_session("new", A)
        assert await store.session_user("old", 3600) is None
        assert await store.session_user("old", 3 * 3600) == A
        assert await store.session_user("new", 3600) == A


# -- users --------------------------------------------------------------------------------------


async def test_add_user_of_a_taken_phone_returns_false(store: Store) -> None:
    async with asyncio.timeout(TIMEOUT):
        assert await store.add_user(A, "someone else", b"other hash") is False
        user = await store.get_user(A)
        assert user is not None
        assert (user.phone, user.name, user.password_hash) == (A, f"user {A}", b"hash")
        assert await store.add_user("1000000009", "new", b"h") is True
        assert await store.user_exists("1000000009")
        assert not await store.user_exists(NOT_A_USER)
        assert await store.get_user(NOT_A_USER) is None


async def test_set_password_replaces_the_hash_and_ends_sessions(store: Store) -> None:
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


async def test_delete_user_cascades(store: Store) -> None:
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
        store = await asyncio.wait_for(Store.open(path), TIMEOUT)
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
        store = await asyncio.wait_for(Store.open(path), TIMEOUT)
        await asyncio.wait_for(store.close(), TIMEOUT)
