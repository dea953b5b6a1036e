"""Versioned schema migrations (SPEC 10, "Upgrades"), on both engines.

The fixtures were made by release version 1 (before versions were recorded), with the store of
that release: tests/fixtures/chat-v1.db (SQLite) and tests/fixtures/chat-v1-postgres.sql (pg_dump
of a schema named chat_v1_fixture). They hold users, sessions, dialogues with receipts, personal
messages, a group with pending messages, rooms with history and a grant, contacts, last seen and
blocks. A version-4 database (issue 13, before per-device delivery) is made from the v1 fixture
with this release's migrations up to 0004, plus a few rows in that version's shape (AT_V4): more
devices and messages; a version-5 one (before attachments, issue 14) with the migrations up to
0005 and a message stored as that version stored it (write_at_v5); a version-6 one (before Web
Push, issue 15) with the migrations up to 0006 and a message with an attachment (write_at_v6); a
version-7 one (before tokens, issue 17) with the migrations up to 0007 (write_at_v7). This
release's store writes a message with the session kinds of version 8 (its deliveries look at
`sessions.kind`), so the messages of those older versions are written with their SQL, as those
releases' stores wrote them; the attachments go through the store. The PostgreSQL
tests run when CHAT_TEST_POSTGRES_URL is set, each in a fresh schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import shutil
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import asyncpg
import pytest

from chatserver.cli import main
from chatserver.protocol import fetch_timestamp, server_timestamp
from chatserver.stores.base import (
    FILE_PART,
    Ack,
    Attachment,
    Contact,
    DialogueSide,
    Group,
    GroupMessage,
    PushSubscription,
    Room,
    RoomMessage,
    SchemaTooNew,
    Stored,
    StoredMessage,
    StoreError,
)
from chatserver.stores.migrate import latest
from chatserver.stores.postgres import PgStore
from chatserver.stores.sqlite import SqliteStore
from helpers import backends

FIXTURES: Final = Path(__file__).resolve().parent.parent / "fixtures"
V1_SQLITE: Final = FIXTURES / "chat-v1.db"
V1_POSTGRES: Final = FIXTURES / "chat-v1-postgres.sql"
FIXTURE_SCHEMA: Final = "chat_v1_fixture"  # the schema the dump was taken from
TIMEOUT: Final = 10.0
# What the fixtures hold (the script that made them used these values).
A, B, C, D = "15550000001", "15550000002", "15550000003", "15550000004"
HASH: Final = b"$2b$04$abcdefghijklmnopqrstuu5Yb3mCXO0kYyW0y1z1Zb5rQy6dQ1nKa"
T0: Final = 1_780_000_000_000_000
GROUP_KEY: Final = "Grp0000001"
ALICE_SESSION, BOB_SESSION = "s" * 64, "t" * 64
AGES: Final = 10**9  # seconds: the fixture's sessions are not expired for this test

# The versions this release makes (1 + its migrations), per engine.
LATEST_SQLITE: Final = latest(SqliteStore.MIGRATIONS)
LATEST_PG: Final = latest(PgStore.MIGRATIONS)
ADD_COLUMN: Final = "ALTER TABLE users ADD COLUMN nickname TEXT;\n"
# Changes the schema, then fails: the whole upgrade must be undone.
FAILS_HALFWAY: Final = ("ALTER TABLE users ADD COLUMN motto TEXT;\n"
                        "DELETE FROM contacts;\n"
                        "INSERT INTO no_such_table VALUES (1);\n")

AnyStore = SqliteStore | PgStore


async def assert_v1_contents(store: AnyStore) -> None:
    """Everything the v1 fixture holds is found through the store's methods."""
    alice = await store.get_user(A)
    assert alice is not None and (alice.name, alice.password_hash) == ("Alice", HASH)
    assert [await store.user_exists(p) for p in (A, B, C, D, "15559999999")] == [True] * 4 + [False]
    assert await store.session_user(ALICE_SESSION, AGES) == A
    assert await store.session_user(BOB_SESSION, AGES) == B
    assert await store.dialogues_of(A) == [B, C]
    assert await store.dialogue_side(A, B) == DialogueSide(
        server_timestamp(T0 + 100), server_timestamp(T0 + 200), 2)
    assert await store.pending_for(B) == [
        StoredMessage(A, B, "hello 1", T0 + 1), StoredMessage(A, B, "hello 2", T0 + 2)]
    assert await store.pending_for(A) == [StoredMessage(C, A, "from carol", T0 + 5)]
    assert await store.group(GROUP_KEY) == Group(GROUP_KEY, "Friends", [A, B, C], [A])
    assert await store.groups_of(B) == [(GROUP_KEY, "Friends")]
    assert await store.pending_group_for(C) == [
        GroupMessage(GROUP_KEY, A, "group one", T0 + 10, [C]),
        GroupMessage(GROUP_KEY, B, "group two", T0 + 11, [A, C])]
    assert await store.pending_group_for(B) == []
    assert (await store.members(GROUP_KEY))[1] == (B, "Bob", server_timestamp(T0 + 10))
    assert await store.rooms() == [Room("lobby", A, None), Room("secret", B, HASH)]
    assert await store.room_history("lobby", 10) == [
        RoomMessage(i + 1, [A, B, C][i], f"room {i}", T0 + 20 + i) for i in range(3)]
    assert await store.room_granted(BOB_SESSION, "secret")
    assert not await store.room_granted(ALICE_SESSION, "secret")
    assert await store.contacts_of(A) == [Contact(B, "Bobby", T0 + 30, True),
                                           Contact(C, "Carol C", None, False)]
    assert await store.watchers_of(A) == [B]  # C is not a contact both ways (issue 12)
    assert store.is_blocked(C, D) and store.is_blocked(A, D) and not store.is_blocked(D, C)
    assert await store.blocked_by(A) == [D]
    # ... and the upgraded database takes new writes where the old ones left off (B's session of
    # before is a device its stored messages wait for, SPEC 7.1).
    assert await store.ack_personal(A, B, T0 + 1, server_timestamp(T0 + 300), BOB_SESSION) is Ack.FIRST
    assert await store.add_room_message("lobby", D, T0 + 40, server_timestamp(T0 + 40), "new") == 4
    assert (await store.add_group_message(GROUP_KEY, C, T0 + 41, server_timestamp(T0 + 41), "g")
            == Stored([A, B], 0))


# -- version 5 (issue 13, SPEC 7.1): every device gets every message -------------------------------

# Two more devices, and a personal and a group message, stored by a release of version 4.
BOB_PHONE, CAROL_SESSION = "u" * 64, "v" * 64
AT_V4: Final = (
    "INSERT INTO sessions (sid_hash, phone, created_us, id, label, last_used_us) VALUES"
    f" ('{BOB_PHONE}', '{B}', {T0 + 50}, 'bob-phone-device', 'Phone', {T0 + 50}),"
    f" ('{CAROL_SESSION}', '{C}', {T0 + 51}, 'carol-device-id', 'Laptop', {T0 + 51})",
    "INSERT INTO personal_messages (msg_from, msg_to, sent_us, sent_timestamp, message, accepted_us)"
    f" VALUES ('{D}', '{B}', {T0 + 52}, '{server_timestamp(T0 + 52)}', 'at version 4', {T0 + 52})",
    "INSERT INTO group_messages (grp, msg_from, sent_us, sent_timestamp, message, accepted_us)"
    f" VALUES ('{GROUP_KEY}', '{A}', {T0 + 53}, '{server_timestamp(T0 + 53)}', 'g at version 4',"
    f" {T0 + 53})",
    *(f"INSERT INTO group_pending (phone, message_id) SELECT '{phone}', id FROM group_messages"
      " WHERE message = 'g at version 4'" for phone in (B, C)))
# Every delivery row: ('p' or 'g', device, message).
DELIVERIES: Final = (
    "SELECT 'p', d.sid_hash, p.message FROM personal_deliveries AS d"
    " JOIN personal_messages AS p ON p.id = d.message_id"
    " UNION ALL SELECT 'g', d.sid_hash, m.message FROM group_deliveries AS d"
    " JOIN group_messages AS m ON m.id = d.message_id ORDER BY 1, 2, 3")
NOT_ACKED: Final = "SELECT count(*) FROM personal_messages WHERE NOT acked"


def up_to(release: Path, version: int, folder: Path) -> Path:
    """`folder` holding `release`'s migrations up to schema `version` (an older release's)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in release.glob("*.sql"):
        if int(path.name[:4]) <= version:
            shutil.copyfile(path, folder / path.name)
    assert latest(folder) == version
    return folder


async def rows(place: Path | str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of one query on a connection of the test's own."""
    if isinstance(place, Path):
        with contextlib.closing(sqlite3.connect(f"file:{place}?mode=ro", uri=True)) as con:
            return con.execute(sql).fetchall()
    return await fetch(place, sql)


async def assert_v1_waits_per_device(store: AnyStore, place: Path | str) -> None:
    """Migration 0005: each message stored before waits for each session of its recipient
    (C, pending for two group messages, has none: they wait for C's next device); nothing is
    lost or counted as acknowledged, and the sessions acknowledge per device."""
    assert await rows(place, DELIVERIES) == [
        ("g", ALICE_SESSION, "group two"), ("p", ALICE_SESSION, "from carol"),
        ("p", BOB_SESSION, "hello 1"), ("p", BOB_SESSION, "hello 2")]
    assert await rows(place, NOT_ACKED) == [(3,)]
    assert [m for _, m in await store.pending_page(BOB_SESSION, 0, 10)] == [
        StoredMessage(A, B, "hello 1", T0 + 1), StoredMessage(A, B, "hello 2", T0 + 2)]
    assert [m for _, m in await store.pending_page(ALICE_SESSION, 0, 10)] == [
        StoredMessage(C, A, "from carol", T0 + 5)]
    assert [m for _, m in await store.pending_group_page(ALICE_SESSION, 0, 10)] == [
        GroupMessage(GROUP_KEY, B, "group two", T0 + 11, [A, C])]
    assert await store.pending_group_page(BOB_SESSION, 0, 10) == []
    await assert_v1_contents(store)  # which acknowledges "hello 1" on BOB_SESSION, and C sends "g"
    # C's first device gets what waited for C, and no copy of C's own "g" (SPEC 7.2)
    await store.add_session("c-new", C)
    assert [m.message for _, m in await store.pending_group_page("c-new", 0, 10)] == [
        "group one", "group two"]


async def assert_v4_waits_per_device(store: AnyStore, place: Path | str) -> None:
    """Migration 0005 on a version-4 database where B has two devices and C one: every stored
    message waits for each of them; B's two devices acknowledge in turn."""
    assert await rows(place, DELIVERIES) == [
        ("g", ALICE_SESSION, "group two"),
        ("g", BOB_SESSION, "g at version 4"),
        ("g", BOB_PHONE, "g at version 4"),
        ("g", CAROL_SESSION, "g at version 4"), ("g", CAROL_SESSION, "group one"),
        ("g", CAROL_SESSION, "group two"),
        ("p", ALICE_SESSION, "from carol"),
        ("p", BOB_SESSION, "at version 4"), ("p", BOB_SESSION, "hello 1"), ("p", BOB_SESSION, "hello 2"),
        ("p", BOB_PHONE, "at version 4"), ("p", BOB_PHONE, "hello 1"), ("p", BOB_PHONE, "hello 2")]
    assert await rows(place, NOT_ACKED) == [(4,)]
    for device in (BOB_SESSION, BOB_PHONE):
        assert [m.message for _, m in await store.pending_page(device, 0, 10)] == [
            "hello 1", "hello 2", "at version 4"]
    assert await store.ack_personal(A, B, T0 + 1, server_timestamp(T0 + 300), BOB_PHONE) is Ack.FIRST
    assert await store.ack_personal(A, B, T0 + 1, server_timestamp(T0 + 301), BOB_SESSION) is Ack.LATER
    assert [m.message for m in await store.pending_for(B)] == ["hello 2", "at version 4"]
    assert await store.ack_group(GROUP_KEY, A, T0 + 53, C, CAROL_SESSION) is Ack.FIRST
    assert await store.ack_group(GROUP_KEY, A, T0 + 53, B, BOB_PHONE) is Ack.FIRST
    assert await store.ack_group(GROUP_KEY, A, T0 + 53, B, BOB_SESSION) is Ack.LATER
    assert [m.message for m in await store.pending_group_for(C)] == ["group one", "group two"]
    assert await rows(place, "SELECT count(*) FROM group_messages") == [(2,)]


# -- version 6 (issue 14, SPEC 8): photos and files ---------------------------------------------------

# C's device, logged in once the database is upgraded (C had none before).
CAROL_V6: Final = "w" * 64
# The schema objects migration 0006 adds, by name (SQLite's UNIQUE of attachment_chunks is an
# automatic index).
V6_TABLES: Final = {
    "attachments": ["id", "owner", "name", "content_type", "size", "width", "height",
                    "thumbnail_size", "created_us", "complete", "personal_id", "group_id",
                    "room_id", "position"],
    "attachment_chunks": ["attachment_id", "part", "n", "data"]}
V6_INDEXES: Final = {"attachments_owner", "attachments_personal", "attachments_group",
                     "attachments_room", "attachments_created"}


async def write_sql(place: Path | str, *statements: str) -> None:
    """Run `statements` in one transaction on a connection of the test's own (beside an open
    store: the SQLite store holds no lock between its batches)."""
    if isinstance(place, Path):
        with contextlib.closing(sqlite3.connect(place, timeout=TIMEOUT)) as con, con:
            for statement in statements:
                con.execute(statement)
    else:
        await execute(place, ";\n".join(statements))


def old_message(msg_from: str, msg_to: str, sent_us: int, message: str) -> str:
    """The INSERT of a personal message as releases of versions 5 to 7 made it; B -> C here, and
    neither C (no device) nor B (its one device sent it) had a device to wait for it."""
    return ("INSERT INTO personal_messages (msg_from, msg_to, sent_us, sent_timestamp, message,"
            f" accepted_us) VALUES ('{msg_from}', '{msg_to}', {sent_us},"
            f" '{server_timestamp(sent_us)}', '{message}', {int(time.time() * 1e6)})")


async def write_at_v5(place: Path | str) -> None:
    """Store, on a version-5 database, a personal message as version 5 did (no attachment);
    assert_v1_contents does not look at messages to C."""
    await write_sql(place, old_message(B, C, T0 + 60, "at version 5"))


async def assert_v6_works(store: AnyStore) -> None:
    """On the upgraded database: everything of before is found (the v1 fixture's rows, the
    version-5 message with no attachment), and attachments go through their whole life: an upload,
    a message that carries it to B, B's download, and its end with the last acknowledgement."""
    await assert_v1_contents(store)  # which has C send "g" to the group
    await store.add_session(CAROL_V6, C)
    assert [m for _, m in await store.pending_page(CAROL_V6, 0, 10)] == [
        StoredMessage(B, C, "at version 5", T0 + 60, [])]
    photo = Attachment("upgraded-" + "x" * 20, A, "photo.png", "image/png", 3, 1, 1, None)
    await store.reserve_attachment(photo, 1 << 30)
    await store.put_attachment_chunk(photo.id, FILE_PART, 0, b"png")
    await store.complete_attachment(photo.id)
    assert isinstance(await store.add_personal(A, B, T0 + 70, server_timestamp(T0 + 70), "",
                                               None, [photo.id]), Stored)
    assert [(m.message, m.attachments) for _, m in await store.pending_page(BOB_SESSION, 0, 10)] == [
        ("hello 2", []), ("", [photo.wire()])]
    assert await store.attachment_for(photo.id, B, BOB_SESSION) == photo
    assert await store.attachment_chunk(photo.id, FILE_PART, 0) == b"png"
    assert await store.ack_personal(A, B, T0 + 70, server_timestamp(T0 + 80), BOB_SESSION) is Ack.FIRST
    assert await store.ack_personal(B, A, T0 + 70, server_timestamp(T0 + 80), ALICE_SESSION) is Ack.LATER
    assert await store.attachment_for(photo.id, A, ALICE_SESSION) is None
    assert await store.attachment_chunk(photo.id, FILE_PART, 0) is None
    assert await store.attachment_bytes() == 0


# -- version 7 (issue 15, SPEC 9): Web Push subscriptions and mutes ----------------------------------

V7_TABLES: Final = {
    "push_subscriptions": ["sid_hash", "phone", "endpoint", "p256dh", "auth", "created_us"],
    "mutes": ["phone", "conversation", "until_us"]}
V7_INDEXES: Final = {"push_subscriptions_phone", "push_subscriptions_endpoint"}
ENDPOINT: Final = "https://push.example.com/send/upgraded"


async def write_at_v6(store: AnyStore, place: Path | str) -> None:
    """Store, on a version-6 database, what version 6 stored: a message to C with an attachment
    (and the version-5 message of write_at_v5; assert_v1_contents does not look at messages to
    C)."""
    await write_at_v5(place)
    photo = Attachment("at-v6-" + "y" * 20, B, "v6.png", "image/png", 2, 1, 1, None)
    await store.reserve_attachment(photo, 1 << 30)
    await store.put_attachment_chunk(photo.id, FILE_PART, 0, b"v6")
    await store.complete_attachment(photo.id)
    await write_sql(place, old_message(B, C, T0 + 65, "v6 photo"),
                    "UPDATE attachments SET personal_id = (SELECT id FROM personal_messages"
                    f" WHERE message = 'v6 photo'), position = 0 WHERE id = '{photo.id}'")


async def assert_v7_works(store: AnyStore) -> None:
    """On the upgraded database: everything of before is found; the messages of versions 5 and
    6 wait for C's first device, the photo with its bytes; the push tables work on sessions of
    before (A's) and of after (C's)."""
    await assert_v1_contents(store)  # which has C send "g" to the group
    await store.add_session(CAROL_V6, C)
    assert [(m.message, [a["name"] for a in m.attachments])
            for _, m in await store.pending_page(CAROL_V6, 0, 10)] == [
        ("at version 5", []), ("v6 photo", ["v6.png"])]
    assert await store.attachment_chunk("at-v6-" + "y" * 20, FILE_PART, 0) == b"v6"
    assert await store.set_push_subscription(ALICE_SESSION, ENDPOINT, "key", "auth")
    assert await store.set_push_subscription(CAROL_V6, ENDPOINT + "/c", "c-key", "c-auth")
    await store.set_mute(A, "group:" + GROUP_KEY, T0 * 2)
    assert await store.waiting_count(CAROL_V6, C, "personal:" + B) == 2
    assert await store.waiting_count(ALICE_SESSION, A, "group:" + GROUP_KEY) == 2
    assert await store.push_targets(
        [(A, "personal:" + C), (A, "group:" + GROUP_KEY), (C, "personal:" + B)], T0) == [
        PushSubscription(ALICE_SESSION, A, ENDPOINT, "key", "auth", "personal:" + C),
        PushSubscription(CAROL_V6, C, ENDPOINT + "/c", "c-key", "c-auth", "personal:" + B)]


# -- version 8 (issue 17, SPEC 12): client tokens -----------------------------------------------------

CAROL_TOKEN: Final = "x" * 64  # the SHA-256 of C's token, made once the database is upgraded
# The sessions' columns before version 8; it adds `kind`.
SESSION_COLUMNS: Final = ["sid_hash", "phone", "created_us", "id", "label", "last_used_us"]
# Every session of before: a cookie session (SQL run on the upgraded database).
SESSION_KINDS: Final = "SELECT sid_hash, kind FROM sessions ORDER BY sid_hash"


async def write_at_v7(store: AnyStore, place: Path | str) -> None:
    """Store, on a version-7 database, what version 7 stored: the messages of write_at_v6 (to
    C, who has no device) and a push subscription of A's session of before."""
    await write_at_v6(store, place)
    assert await store.set_push_subscription(ALICE_SESSION, ENDPOINT, "key", "auth")


async def assert_v8_works(store: AnyStore, place: Path | str) -> None:
    """On the upgraded database: every session of before is a cookie session (found as such,
    not as a token, and its push subscription still served), everything of before is found, and
    a token of C, made now, is a device that what waited for C waits for (SPEC 7.1), that is
    listed and that no age ends."""
    assert await rows(place, SESSION_KINDS) == [(ALICE_SESSION, "cookie"), (BOB_SESSION, "cookie")]
    assert await store.session_user(ALICE_SESSION, AGES, token=True) is None
    await assert_v1_contents(store)  # the cookie sessions of before, found as such
    device_id = await store.add_session(CAROL_TOKEN, C, "door sensor", token=True)
    assert [(m.message, [a["name"] for a in m.attachments])
            for _, m in await store.pending_page(CAROL_TOKEN, 0, 10)] == [
        ("at version 5", []), ("v6 photo", ["v6.png"])]
    assert await store.session_user(CAROL_TOKEN, 1, token=True) == C
    assert await store.session_user(CAROL_TOKEN, AGES) is None  # not a cookie session
    assert [(d.id, d.label) for d in await store.devices(C, CAROL_TOKEN, 1)] == [
        (device_id, "door sensor")]
    assert await store.push_targets([(A, "personal:" + C)], T0) == [
        PushSubscription(ALICE_SESSION, A, ENDPOINT, "key", "auth", "personal:" + C)]


async def test_version_8_upgrades_a_version_7_file_keeping_everything_and_adding_session_kinds(
        v1_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Migration 0008 on a version-7 file: every table, index and trigger of before, and every
    row, as they were, but the sessions' new column `kind` ('cookie' for each session of
    before) and the index sessions_live, which now covers it; the release then serves the old
    rows and tokens."""
    with monkeypatch.context() as m:
        m.setattr(SqliteStore, "MIGRATIONS", up_to(SqliteStore.MIGRATIONS, 7, tmp_path / "v7"))
        async with opened(v1_file) as store:
            await write_at_v7(store, v1_file)
    assert sqlite_version(v1_file) == 7
    before = sqlite_contents(v1_file)
    with monkeypatch.context() as m:
        m.setattr(SqliteStore, "MIGRATIONS", up_to(SqliteStore.MIGRATIONS, 8, tmp_path / "v8"))
        async with opened(v1_file):
            pass
    assert sqlite_version(v1_file) == 8
    after = sqlite_contents(v1_file)
    for table in set(before) - {"objects", "schema_version", "sessions"}:
        assert after[table] == before[table], table
    assert [c[0] for c in before["sessions"][0]] == SESSION_COLUMNS
    assert [c[0] for c in after["sessions"][0]] == [*SESSION_COLUMNS, "kind"]
    assert len(after["sessions"][1]) == len(before["sessions"][1]) == 2
    changed = set(after["objects"]) ^ set(before["objects"])
    assert {(kind, name) for kind, name, _, _ in changed} == {
        ("table", "sessions"), ("index", "sessions_live")}
    async with opened(v1_file) as store:
        await assert_v8_works(store, v1_file)


# -- version 9 (issue 18, SPEC 13): references on messages, room categories, saved rooms ------------

# The message tables gain `ref`, rooms gain `category` (NULL for every row of before).
V9_COLUMNS: Final = {"personal_messages": "ref", "group_messages": "ref", "room_messages": "ref",
                     "rooms": "category"}
V9_TABLES: Final = {"saved_rooms": ["phone", "room", "saved_us"]}
V9_INDEXES: Final = {"rooms_created", "saved_rooms_room"}
DAVE_TOKEN: Final = "z" * 64  # the SHA-256 of a token of D, made at version 8


async def write_at_v8(store: AnyStore, place: Path | str) -> None:
    """Store, on a version-8 database, what version 8 stored: the messages of write_at_v7 (to C,
    one with a photo), and a token of D (assert_v1_contents has D send to a room only)."""
    await write_at_v7(store, place)
    await store.add_session(DAVE_TOKEN, D, "door sensor", token=True)


async def assert_v9_works(store: AnyStore, place: Path | str) -> None:
    """On the upgraded database: everything of before is found, with no reference; a reply to
    a message of before is stored and read back with its `ref`, and a delete_of takes back a
    message of before (with its photo) in the commit that stores it."""
    await assert_v1_contents(store)
    assert await store.session_user(DAVE_TOKEN, 1, token=True) == D
    await store.add_session(CAROL_TOKEN, C, "laptop", token=True)
    assert [(m.message, m.ref) for _, m in await store.pending_page(CAROL_TOKEN, 0, 10)] == [
        ("at version 5", None), ("v6 photo", None)]
    assert all(m.ref is None for m in await store.room_history("lobby", 10))
    # the microsecond form: T0 + 60 and T0 + 65 are one millisecond
    reply = json.dumps({"reply_to": {"msg_from": B, "sent_timestamp": fetch_timestamp(T0 + 60)}})
    unsend = json.dumps({"delete_of": {"msg_from": B, "sent_timestamp": fetch_timestamp(T0 + 65)}})
    assert isinstance(await store.add_personal(B, C, T0 + 90, server_timestamp(T0 + 90), "re",
                                               ref=reply), Stored)
    assert isinstance(await store.add_personal(B, C, T0 + 91, server_timestamp(T0 + 91), "",
                                               ref=unsend), Stored)
    assert [(m.message, m.ref) for _, m in await store.pending_page(CAROL_TOKEN, 0, 10)] == [
        ("at version 5", None), ("re", reply), ("", unsend)]
    assert await store.attachment_chunk("at-v6-" + "y" * 20, FILE_PART, 0) is None
    assert await store.add_room_message("lobby", A, T0 + 92, server_timestamp(T0 + 92), "+1",
                                        ref=reply.replace("reply_to", "react_to")) is not None
    assert (await store.room_history("lobby", 1))[0].ref == reply.replace("reply_to", "react_to")


def sqlite_rows(path: Path, table: str, columns: list[str]) -> list[str]:
    """The rows of `table`, of those columns only, as sorted_contents sorts them."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
        return sorted(map(repr, con.execute(f"SELECT {', '.join(columns)} FROM {table}")))


async def test_version_9_upgrades_a_version_8_file_keeping_every_message_with_no_reference(
        v1_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Migration 0009 on a version-8 file: every table, index and trigger of before, and every
    row, as they were, but the new NULL columns (`ref` of the three message tables,
    rooms.category) and the saved_rooms table with its indexes; the release then serves the
    old rows and stores references."""
    with monkeypatch.context() as m:
        m.setattr(SqliteStore, "MIGRATIONS", up_to(SqliteStore.MIGRATIONS, 8, tmp_path / "v8"))
        async with opened(v1_file) as store:
            await write_at_v8(store, v1_file)
    assert sqlite_version(v1_file) == 8
    before = sqlite_contents(v1_file)
    with monkeypatch.context() as m:
        m.setattr(SqliteStore, "MIGRATIONS", up_to(SqliteStore.MIGRATIONS, 9, tmp_path / "v9"))
        async with opened(v1_file):
            pass
    assert sqlite_version(v1_file) == 9
    after = sqlite_contents(v1_file)
    for table in set(before) - {"objects", "schema_version", *V9_COLUMNS}:
        assert after[table] == before[table], table
    for table, column in V9_COLUMNS.items():
        names = [c[0] for c in before[table][0]]
        assert [c[0] for c in after[table][0]] == [*names, column], table
        assert sqlite_rows(v1_file, table, names) == before[table][1], table
        assert sqlite_rows(v1_file, table, [column]) == ["(None,)"] * len(before[table][1]), table
    assert len(before["personal_messages"][1]) >= 3 and len(before["room_messages"][1]) == 3
    changed = set(after["objects"]) ^ set(before["objects"])
    assert {(kind, name) for kind, name, _, _ in changed} == {
        *(("table", t) for t in V9_COLUMNS), *(("table", t) for t in V9_TABLES),
        *(("index", i) for i in V9_INDEXES)}
    assert [c[0] for c in after["saved_rooms"][0]] == V9_TABLES["saved_rooms"]
    async with opened(v1_file) as store:
        await assert_v9_works(store, v1_file)


V10_GRANTS: Final = [repr((B, "secret"))]  # the fixture's grant to B's session "ttt..."


async def assert_v10_grants(store: AnyStore) -> None:
    """On a version-10 database: B's grant of the private room "secret" (given by a login session
    at version 9) lets every later login of B in, and no one else (issue 18, defect 7)."""
    later_login = "u" * 64
    await store.add_session(later_login, B)
    assert await store.room_granted(later_login, "secret")
    assert "secret" in [r.name for r in await store.rooms_for(B, later_login, 0)]
    assert not await store.room_granted("s" * 64, "secret")  # A's session: A never gave it
    assert "secret" not in [r.name for r in await store.rooms_for(A, "s" * 64, 0)]


async def test_version_10_upgrades_a_version_9_file_giving_each_session_grant_to_its_user(
        v1_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Migration 0010 on a version-9 file: every table, index, trigger and row of before as it
    was (session_rooms too, for an older release), and room_grants holding the user of each
    session's grant; the release then lets a new login of that user into the room."""
    with monkeypatch.context() as m:
        m.setattr(SqliteStore, "MIGRATIONS", up_to(SqliteStore.MIGRATIONS, 9, tmp_path / "v9"))
        async with opened(v1_file):
            pass
    assert sqlite_version(v1_file) == 9
    before = sqlite_contents(v1_file)
    assert before["session_rooms"][1] == [repr(("t" * 64, "secret"))]
    with monkeypatch.context() as m:
        m.setattr(SqliteStore, "MIGRATIONS", up_to(SqliteStore.MIGRATIONS, 10, tmp_path / "v10"))
        async with opened(v1_file):
            pass
    assert sqlite_version(v1_file) == 10
    after = sqlite_contents(v1_file)
    for table in set(before) - {"objects", "schema_version"}:
        assert after[table] == before[table], table
    changed = set(after["objects"]) ^ set(before["objects"])
    assert {(kind, name) for kind, name, _, _ in changed} == {
        ("table", "room_grants"), ("index", "room_grants_room")}
    assert sqlite_rows(v1_file, "room_grants", ["phone", "room"]) == V10_GRANTS
    async with opened(v1_file) as store:
        await assert_v10_grants(store)


def write_migration(folder: Path, name: str, sql: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(sql, encoding="utf-8")
    return folder


# -- SQLite ---------------------------------------------------------------------------------------


@pytest.fixture
def v1_file(tmp_path: Path) -> Path:
    """A copy of the v1 SQLite fixture (opening upgrades it in place)."""
    path = tmp_path / "chat.db"
    shutil.copyfile(V1_SQLITE, path)
    return path


def sqlite_version(path: Path) -> int | None:
    """The version the file records, or None (a file made before versions were recorded)."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
        if not con.execute("SELECT 1 FROM sqlite_master WHERE name = 'schema_version'").fetchall():
            return None
        return con.execute("SELECT version FROM schema_version").fetchone()[0]


def sqlite_dump(path: Path) -> list[str]:
    """Every table, index, trigger and row of the file, as SQL."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
        return list(con.iterdump())


@contextlib.asynccontextmanager
async def opened(place: Path | str) -> AsyncIterator[AnyStore]:
    if isinstance(place, Path):
        store: AnyStore = await asyncio.wait_for(SqliteStore.open(place), TIMEOUT)
    else:
        store = await asyncio.wait_for(PgStore.open(place), TIMEOUT)
    try:
        yield store
    finally:
        await asyncio.wait_for(store.close(), TIMEOUT)


async def open_and_close(place: Path | str) -> None:
    """Open the store at `place` and close it (so that a store that should have been refused
    does not keep the test's process alive)."""
    async with opened(place):
        pass


async def test_the_v1_file_opens_and_everything_in_it_is_found(v1_file: Path) -> None:
    assert sqlite_version(v1_file) is None
    async with opened(v1_file) as store:
        await assert_v1_contents(store)
    assert sqlite_version(v1_file) == LATEST_SQLITE


async def test_version_2_makes_the_oldest_account_admin_and_stamps_stored_messages(
        v1_file: Path) -> None:
    """Migration 0002 (issue 12): the oldest account becomes the admin, nothing else changes, and
    every stored message counts as accepted at the upgrade (none expires at once)."""
    before_us = int(time.time() * 1e6)
    async with opened(v1_file):
        pass
    after_us = int(time.time() * 1e6)
    with contextlib.closing(sqlite3.connect(v1_file)) as con:
        assert con.execute("SELECT phone, admin, disabled, hide_presence FROM users ORDER BY phone"
                           ).fetchall() == [(A, 1, 0, 0), (B, 0, 0, 0), (C, 0, 0, 0), (D, 0, 0, 0)]
        stamps = [r[0] for r in con.execute("SELECT accepted_us FROM personal_messages UNION ALL "
                                            "SELECT accepted_us FROM group_messages")]
        assert con.execute("SELECT count(*) FROM invites").fetchone() == (0,)
    assert len(stamps) == 5 and all(before_us - 10**6 <= s <= after_us + 10**6 for s in stamps)


async def assert_v1_sessions_are_devices(store: AnyStore) -> None:
    """Migration 0004 (issue 13, SPEC 7): each session of before is a device, labelled "Unknown
    device", last used when it was created, with an id of its own (neither the hash nor shared);
    still valid, and its first use is recorded."""
    listed = await store.devices(A, ALICE_SESSION, AGES) + await store.devices(B, None, AGES)
    assert [(d.label, d.current) for d in listed] == [("Unknown device", True),
                                                       ("Unknown device", False)]
    assert all(d.last_used_us == d.created_us for d in listed)
    ids = [d.id for d in listed]
    assert len(set(ids)) == 2 and all(len(i) >= 16 for i in ids)
    assert not set(ids) & {ALICE_SESSION, BOB_SESSION}
    assert await store.session_user(ALICE_SESSION, AGES) == A
    assert (await store.devices(A, None, AGES))[0].last_used_us > listed[0].created_us
    assert await store.delete_device(A, ids[0]) == ALICE_SESSION


async def test_version_4_makes_the_sessions_devices(v1_file: Path) -> None:
    async with opened(v1_file) as store:
        await assert_v1_sessions_are_devices(store)


async def test_version_5_makes_what_is_stored_wait_for_each_session_of_its_recipient(
        v1_file: Path) -> None:
    async with opened(v1_file) as store:
        await assert_v1_waits_per_device(store, v1_file)


async def test_version_5_upgrades_a_version_4_file_with_several_devices_per_user(
        v1_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        m.setattr(SqliteStore, "MIGRATIONS", up_to(SqliteStore.MIGRATIONS, 4, tmp_path / "v4"))
        async with opened(v1_file):
            pass
    assert sqlite_version(v1_file) == 4
    with contextlib.closing(sqlite3.connect(v1_file)) as con, con:
        for statement in AT_V4:
            con.execute(statement)
    async with opened(v1_file) as store:
        await assert_v4_waits_per_device(store, v1_file)
    assert sqlite_version(v1_file) == LATEST_SQLITE


def sqlite_contents(path: Path) -> dict[str, Any]:
    """The file's schema objects (type, name, table, SQL) and each table's columns and rows."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
        objects = con.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY 1, 2").fetchall()
        return {"objects": objects, **{
            name: ([c[1:] for c in con.execute(f"PRAGMA table_info({name})")],
                   sorted(map(repr, con.execute(f"SELECT * FROM {name}"))))
            for kind, name, _, _ in objects if kind == "table"}}


async def test_version_6_upgrades_a_version_5_file_keeping_everything_and_adding_attachments(
        v1_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Migration 0006 on a version-5 file: every table, index and trigger of before, and every
    row, as they were; the attachment tables and their indexes added, empty; and the release then
    serves the old rows and stores attachments."""
    with monkeypatch.context() as m:
        m.setattr(SqliteStore, "MIGRATIONS", up_to(SqliteStore.MIGRATIONS, 5, tmp_path / "v5"))
        async with opened(v1_file):
            await write_at_v5(v1_file)
    assert sqlite_version(v1_file) == 5
    before = sqlite_contents(v1_file)
    with monkeypatch.context() as m:
        m.setattr(SqliteStore, "MIGRATIONS", up_to(SqliteStore.MIGRATIONS, 6, tmp_path / "v6"))
        async with opened(v1_file):
            pass
    assert sqlite_version(v1_file) == 6
    after = sqlite_contents(v1_file)
    for table in set(before) - {"objects", "schema_version"}:
        assert after[table] == before[table], table
    added = set(after["objects"]) - set(before["objects"])
    assert set(before["objects"]) <= set(after["objects"])
    assert {name for _, name, _, _ in added} == {
        *V6_TABLES, *V6_INDEXES, "sqlite_autoindex_attachment_chunks_1"}
    for table, columns in V6_TABLES.items():
        assert [c[0] for c in after[table][0]] == columns
        assert after[table][1] == []
    async with opened(v1_file) as store:
        await assert_v6_works(store)


async def test_version_7_upgrades_a_version_6_file_keeping_everything_and_adding_push_tables(
        v1_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Migration 0007 on a version-6 file holding a message with an attachment: every table,
    index and trigger of before, and every row, as they were; the push tables and their indexes
    added, empty; the release then serves the old rows and the push tables."""
    with monkeypatch.context() as m:
        m.setattr(SqliteStore, "MIGRATIONS", up_to(SqliteStore.MIGRATIONS, 6, tmp_path / "v6"))
        async with opened(v1_file) as store:
            await write_at_v6(store, v1_file)
    assert sqlite_version(v1_file) == 6
    before = sqlite_contents(v1_file)
    with monkeypatch.context() as m:
        m.setattr(SqliteStore, "MIGRATIONS", up_to(SqliteStore.MIGRATIONS, 7, tmp_path / "v7"))
        async with opened(v1_file):
            pass
    assert sqlite_version(v1_file) == 7
    after = sqlite_contents(v1_file)
    for table in set(before) - {"objects", "schema_version"}:
        assert after[table] == before[table], table
    assert set(before["objects"]) <= set(after["objects"])
    added = set(after["objects"]) - set(before["objects"])
    assert {name for _, name, _, _ in added} == {*V7_TABLES, *V7_INDEXES}
    for table, columns in V7_TABLES.items():
        assert [c[0] for c in after[table][0]] == columns
        assert after[table][1] == []
    async with opened(v1_file) as store:
        await assert_v7_works(store)


async def test_a_new_database_records_the_latest_version(tmp_path: Path) -> None:
    async with opened(tmp_path / "new.db") as store:
        assert await store.add_user(A, "Alice", HASH)
    assert sqlite_version(tmp_path / "new.db") == LATEST_SQLITE
    async with opened(tmp_path / "new.db") as store:  # opened again: nothing to apply
        assert await store.user_exists(A)
    assert sqlite_version(tmp_path / "new.db") == LATEST_SQLITE


async def test_a_migration_upgrades_the_v1_file(
        v1_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # This release's migrations (its code writes their columns) and one more after them.
    folder = one_beyond(SqliteStore.MIGRATIONS, tmp_path / "migrations")
    monkeypatch.setattr(SqliteStore, "MIGRATIONS", folder)
    async with opened(v1_file) as store:
        await assert_v1_contents(store)
    assert sqlite_version(v1_file) == LATEST_SQLITE + 1
    with contextlib.closing(sqlite3.connect(v1_file)) as con:
        assert con.execute("SELECT phone, nickname FROM users WHERE phone = ?", (A,)).fetchall() == [
            (A, None)]


async def test_a_migration_that_fails_halfway_changes_nothing(
        v1_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_migration(tmp_path / "migrations", "0002_user_nickname.sql", ADD_COLUMN)
    write_migration(folder, "0003_broken.sql", FAILS_HALFWAY)
    monkeypatch.setattr(SqliteStore, "MIGRATIONS", folder)
    before = sqlite_dump(v1_file)
    with pytest.raises(StoreError, match="no_such_table"):
        await open_and_close(v1_file)
    assert sqlite_version(v1_file) is None  # still version 1, as made by that release
    assert sqlite_dump(v1_file) == before


def one_beyond(release: Path, folder: Path) -> Path:
    """`folder` holding `release`'s migrations and one more (a newer release's)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in release.glob("*.sql"):
        shutil.copyfile(path, folder / path.name)
    return write_migration(folder, f"{latest(release) + 1:04d}_user_nickname.sql", ADD_COLUMN)


async def test_a_database_newer_than_the_release_is_refused(
        v1_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = one_beyond(SqliteStore.MIGRATIONS, tmp_path / "migrations")
    monkeypatch.setattr(SqliteStore, "MIGRATIONS", folder)
    async with opened(v1_file):
        pass
    assert sqlite_version(v1_file) == LATEST_SQLITE + 1
    monkeypatch.undo()  # this release again: it knows one version less
    before = sqlite_dump(v1_file)
    with pytest.raises(SchemaTooNew, match=f"version {LATEST_SQLITE + 1}, newer than this "
                                           f"release's {LATEST_SQLITE}"):
        await open_and_close(v1_file)
    assert sqlite_dump(v1_file) == before


def test_the_command_line_refuses_a_newer_database_in_one_line(
        v1_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Exit status 2 and one line, as for a damaged file; the file is left alone."""
    with contextlib.closing(sqlite3.connect(v1_file)) as con, con:
        con.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        con.execute("INSERT INTO schema_version VALUES (?)", (LATEST_SQLITE + 1,))
    before = sqlite_dump(v1_file)
    config = tmp_path / "config.toml"
    config.write_text("", encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    capsys.readouterr()
    assert main(["--config", str(config), "--db", str(v1_file), "deluser", A]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {v1_file} has schema version {LATEST_SQLITE + 1}, newer than this release's "
                   f"{LATEST_SQLITE}: it was upgraded by a newer release; run that release (or "
                   "newer) on it\n")
    assert sqlite_dump(v1_file) == before


# -- PostgreSQL -----------------------------------------------------------------------------------


async def execute(url: str, sql: str) -> None:
    conn = await asyncio.wait_for(asyncpg.connect(url), TIMEOUT)
    try:
        await asyncio.wait_for(conn.execute(sql), TIMEOUT)
    finally:
        await conn.close()


async def fetch(url: str, sql: str) -> list[tuple[Any, ...]]:
    conn = await asyncio.wait_for(asyncpg.connect(url), TIMEOUT)
    try:
        return [tuple(r) for r in await asyncio.wait_for(conn.fetch(sql), TIMEOUT)]
    finally:
        await conn.close()


async def restore_v1(url: str) -> None:
    """Load the v1 dump into the (empty) schema of `url`: its name replaces the fixture's."""
    schema = (await fetch(url, "SELECT current_schema()"))[0][0]
    lines = [line for line in V1_POSTGRES.read_text(encoding="utf-8").splitlines()
             if not line.startswith("\\")]  # psql's own commands (\restrict)
    dump = "\n".join(lines).replace(f"CREATE SCHEMA {FIXTURE_SCHEMA};", "")
    await execute(url, dump.replace(FIXTURE_SCHEMA, schema))


async def pg_version(url: str) -> int | None:
    if not (await fetch(url, "SELECT to_regclass('schema_version') IS NOT NULL"))[0][0]:
        return None
    return (await fetch(url, "SELECT version FROM schema_version"))[0][0]


async def pg_snapshot(url: str) -> dict[str, Any]:
    """Every column of every table of the schema, and every row of each table."""
    columns = await fetch(url, "SELECT table_name, column_name, data_type FROM information_schema.columns"
                               " WHERE table_schema = current_schema() ORDER BY 1, 2")
    tables = sorted({c[0] for c in columns})
    return {"columns": columns,
            **{t: sorted(map(repr, await fetch(url, f"SELECT * FROM {t}"))) for t in tables}}


@pytest.fixture
async def pg_v1() -> AsyncIterator[str]:
    """A fresh schema holding the v1 PostgreSQL fixture; yields its URL."""
    backends.require(backends.POSTGRES)
    async with backends.postgres_schema() as url:
        await restore_v1(url)
        yield url


async def test_pg_the_v1_schema_opens_and_everything_in_it_is_found(pg_v1: str) -> None:
    assert await pg_version(pg_v1) is None
    async with opened(pg_v1) as store:
        await assert_v1_contents(store)
    assert await pg_version(pg_v1) == LATEST_PG


async def test_pg_version_2_makes_the_oldest_account_admin_and_stamps_stored_messages(
        pg_v1: str) -> None:
    before_us = int(time.time() * 1e6)
    async with opened(pg_v1):
        pass
    after_us = int(time.time() * 1e6)
    assert await fetch(pg_v1, "SELECT phone, admin, disabled, hide_presence FROM users ORDER BY phone"
                       ) == [(A, True, False, False), (B, False, False, False),
                             (C, False, False, False), (D, False, False, False)]
    stamps = [r[0] for r in await fetch(pg_v1, "SELECT accepted_us FROM personal_messages UNION ALL "
                                               "SELECT accepted_us FROM group_messages")]
    assert await fetch(pg_v1, "SELECT count(*) FROM invites") == [(0,)]
    assert len(stamps) == 5 and all(before_us - 10**6 <= s <= after_us + 10**6 for s in stamps)


async def test_pg_version_4_makes_the_sessions_devices(pg_v1: str) -> None:
    async with opened(pg_v1) as store:
        await assert_v1_sessions_are_devices(store)


async def test_pg_version_5_makes_what_is_stored_wait_for_each_session_of_its_recipient(
        pg_v1: str) -> None:
    async with opened(pg_v1) as store:
        await assert_v1_waits_per_device(store, pg_v1)


async def test_pg_version_5_upgrades_a_version_4_schema_with_several_devices_per_user(
        pg_v1: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        m.setattr(PgStore, "MIGRATIONS", up_to(PgStore.MIGRATIONS, 4, tmp_path / "v4"))
        async with opened(pg_v1):
            pass
    assert await pg_version(pg_v1) == 4
    await execute(pg_v1, ";\n".join(AT_V4))
    async with opened(pg_v1) as store:
        await assert_v4_waits_per_device(store, pg_v1)
    assert await pg_version(pg_v1) == LATEST_PG


async def pg_indexes(url: str) -> set[tuple[str, str]]:
    return set(await fetch(url, "SELECT indexname, indexdef FROM pg_indexes"
                                " WHERE schemaname = current_schema()"))


async def test_pg_version_6_upgrades_a_version_5_schema_keeping_everything_and_adding_attachments(
        pg_v1: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        m.setattr(PgStore, "MIGRATIONS", up_to(PgStore.MIGRATIONS, 5, tmp_path / "v5"))
        async with opened(pg_v1):
            await write_at_v5(pg_v1)
    assert await pg_version(pg_v1) == 5
    before, before_indexes = await pg_snapshot(pg_v1), await pg_indexes(pg_v1)
    with monkeypatch.context() as m:
        m.setattr(PgStore, "MIGRATIONS", up_to(PgStore.MIGRATIONS, 6, tmp_path / "v6"))
        async with opened(pg_v1):
            pass
    assert await pg_version(pg_v1) == 6
    after, after_indexes = await pg_snapshot(pg_v1), await pg_indexes(pg_v1)
    for table in set(before) - {"columns", "schema_version"}:
        assert after[table] == before[table], table
    assert set(before["columns"]) <= set(after["columns"])
    added = sorted(set(after["columns"]) - set(before["columns"]))
    for table, columns in V6_TABLES.items():
        assert sorted(c[1] for c in added if c[0] == table) == sorted(columns)
        assert after[table] == []
    assert {c[0] for c in added} == set(V6_TABLES)
    assert before_indexes <= after_indexes
    assert {name for name, _ in after_indexes - before_indexes} == {
        *V6_INDEXES, "attachments_pkey", "attachment_chunks_pkey"}
    async with opened(pg_v1) as store:
        await assert_v6_works(store)


async def test_pg_version_7_upgrades_a_version_6_schema_keeping_everything_and_adding_push_tables(
        pg_v1: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        m.setattr(PgStore, "MIGRATIONS", up_to(PgStore.MIGRATIONS, 6, tmp_path / "v6"))
        async with opened(pg_v1) as store:
            await write_at_v6(store, pg_v1)
    assert await pg_version(pg_v1) == 6
    before, before_indexes = await pg_snapshot(pg_v1), await pg_indexes(pg_v1)
    with monkeypatch.context() as m:
        m.setattr(PgStore, "MIGRATIONS", up_to(PgStore.MIGRATIONS, 7, tmp_path / "v7"))
        async with opened(pg_v1):
            pass
    assert await pg_version(pg_v1) == 7
    after, after_indexes = await pg_snapshot(pg_v1), await pg_indexes(pg_v1)
    for table in set(before) - {"columns", "schema_version"}:
        assert after[table] == before[table], table
    assert set(before["columns"]) <= set(after["columns"])
    added = sorted(set(after["columns"]) - set(before["columns"]))
    for table, columns in V7_TABLES.items():
        assert sorted(c[1] for c in added if c[0] == table) == sorted(columns)
        assert after[table] == []
    assert {c[0] for c in added} == set(V7_TABLES)
    assert before_indexes <= after_indexes
    assert {name for name, _ in after_indexes - before_indexes} == {
        *V7_INDEXES, "push_subscriptions_pkey", "mutes_pkey"}
    async with opened(pg_v1) as store:
        await assert_v7_works(store)


async def test_pg_version_9_upgrades_a_version_8_schema_keeping_every_message_with_no_reference(
        pg_v1: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Migration 0009 on a version-8 schema, as on SQLite."""
    with monkeypatch.context() as m:
        m.setattr(PgStore, "MIGRATIONS", up_to(PgStore.MIGRATIONS, 8, tmp_path / "v8"))
        async with opened(pg_v1) as store:
            await write_at_v8(store, pg_v1)
    assert await pg_version(pg_v1) == 8
    before, before_indexes = await pg_snapshot(pg_v1), await pg_indexes(pg_v1)
    with monkeypatch.context() as m:
        m.setattr(PgStore, "MIGRATIONS", up_to(PgStore.MIGRATIONS, 9, tmp_path / "v9"))
        async with opened(pg_v1):
            pass
    assert await pg_version(pg_v1) == 9
    after, after_indexes = await pg_snapshot(pg_v1), await pg_indexes(pg_v1)
    for table in set(before) - {"columns", "schema_version", *V9_COLUMNS}:
        assert after[table] == before[table], table
    for table, column in V9_COLUMNS.items():
        names = [r[0] for r in await fetch(
            pg_v1, "SELECT column_name FROM information_schema.columns WHERE table_schema ="
                   f" current_schema() AND table_name = '{table}' ORDER BY ordinal_position")]
        assert names[-1] == column, table  # added last: the others read as before
        kept = sorted(map(repr, await fetch(pg_v1, f"SELECT {', '.join(names[:-1])} FROM {table}")))
        assert kept == before[table], table
        assert await fetch(pg_v1, f"SELECT count(*) FROM {table} WHERE {column} IS NOT NULL") == [(0,)]
    assert len(before["personal_messages"]) >= 3 and len(before["room_messages"]) == 3
    added = sorted(set(after["columns"]) - set(before["columns"]))
    assert sorted((c[0], c[1]) for c in added) == sorted(
        [*V9_COLUMNS.items(), *(("saved_rooms", c) for c in V9_TABLES["saved_rooms"])])
    assert set(before["columns"]) <= set(after["columns"])
    assert before_indexes <= after_indexes
    assert {name for name, _ in after_indexes - before_indexes} == {*V9_INDEXES, "saved_rooms_pkey"}
    async with opened(pg_v1) as store:
        await assert_v9_works(store, pg_v1)


async def test_pg_version_10_upgrades_a_version_9_schema_giving_each_session_grant_to_its_user(
        pg_v1: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Migration 0010 on a version-9 schema, as on SQLite."""
    with monkeypatch.context() as m:
        m.setattr(PgStore, "MIGRATIONS", up_to(PgStore.MIGRATIONS, 9, tmp_path / "v9"))
        async with opened(pg_v1):
            pass
    assert await pg_version(pg_v1) == 9
    before = await pg_snapshot(pg_v1)
    assert before["session_rooms"] == [repr(("t" * 64, "secret"))]
    with monkeypatch.context() as m:
        m.setattr(PgStore, "MIGRATIONS", up_to(PgStore.MIGRATIONS, 10, tmp_path / "v10"))
        async with opened(pg_v1):
            pass
    assert await pg_version(pg_v1) == 10
    after = await pg_snapshot(pg_v1)
    for table in set(before) - {"columns", "schema_version"}:
        assert after[table] == before[table], table
    added = sorted(set(after["columns"]) - set(before["columns"]))
    assert sorted(c[:2] for c in added) == [("room_grants", "phone"), ("room_grants", "room")]
    assert sorted(map(repr, await fetch(pg_v1, "SELECT phone, room FROM room_grants"))) == V10_GRANTS
    async with opened(pg_v1) as store:
        await assert_v10_grants(store)


async def test_pg_a_migration_upgrades_the_v1_schema(
        pg_v1: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # This release's migrations (its code writes their columns) and one more after them.
    folder = one_beyond(PgStore.MIGRATIONS, tmp_path / "migrations")
    monkeypatch.setattr(PgStore, "MIGRATIONS", folder)
    async with opened(pg_v1) as store:
        await assert_v1_contents(store)
    assert await pg_version(pg_v1) == LATEST_PG + 1
    assert await fetch(pg_v1, f"SELECT phone, nickname FROM users WHERE phone = '{A}'") == [(A, None)]


async def test_pg_a_migration_that_fails_halfway_changes_nothing(
        pg_v1: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_migration(tmp_path / "migrations", "0002_user_nickname.sql", ADD_COLUMN)
    write_migration(folder, "0003_broken.sql", FAILS_HALFWAY)
    monkeypatch.setattr(PgStore, "MIGRATIONS", folder)
    before = await pg_snapshot(pg_v1)
    with pytest.raises(StoreError, match="no_such_table"):
        await open_and_close(pg_v1)
    assert await pg_version(pg_v1) is None
    assert await pg_snapshot(pg_v1) == before


async def test_pg_a_schema_newer_than_the_release_is_refused(
        pg_v1: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = one_beyond(PgStore.MIGRATIONS, tmp_path / "migrations")
    monkeypatch.setattr(PgStore, "MIGRATIONS", folder)
    async with opened(pg_v1):
        pass
    monkeypatch.undo()
    before = await pg_snapshot(pg_v1)
    with pytest.raises(SchemaTooNew, match=f"version {LATEST_PG + 1}, newer than this "
                                           f"release's {LATEST_PG}"):
        await open_and_close(pg_v1)
    assert await pg_snapshot(pg_v1) == before


async def test_pg_version_8_upgrades_a_version_7_schema_keeping_everything_and_adding_session_kinds(
        pg_v1: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        m.setattr(PgStore, "MIGRATIONS", up_to(PgStore.MIGRATIONS, 7, tmp_path / "v7"))
        async with opened(pg_v1) as store:
            await write_at_v7(store, pg_v1)
    assert await pg_version(pg_v1) == 7
    before, before_indexes = await pg_snapshot(pg_v1), await pg_indexes(pg_v1)
    with monkeypatch.context() as m:
        m.setattr(PgStore, "MIGRATIONS", up_to(PgStore.MIGRATIONS, 8, tmp_path / "v8"))
        async with opened(pg_v1):
            pass
    assert await pg_version(pg_v1) == 8
    after, after_indexes = await pg_snapshot(pg_v1), await pg_indexes(pg_v1)
    for table in set(before) - {"columns", "schema_version", "sessions"}:
        assert after[table] == before[table], table
    assert len(after["sessions"]) == len(before["sessions"]) == 2
    assert set(after["columns"]) - set(before["columns"]) == {("sessions", "kind", "text")}
    assert set(before["columns"]) <= set(after["columns"])
    assert {name for name, _ in after_indexes ^ before_indexes} == {"sessions_live"}
    async with opened(pg_v1) as store:
        await assert_v8_works(store, pg_v1)
