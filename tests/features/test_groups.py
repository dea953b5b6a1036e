"""Groups over real sockets (SPEC 4, 5, 5.2, 5.3, 5.5, 6): creating and changing a group through
the JSON endpoints, the group send socket (`new_grp_msg`, `grp_msg_received`, `grp_msg_read` and its
`msg_read` alias, `is_grp_typing`), `fetch_grp_msgs` with pending lists on the receive socket, and
store-and-forward: one stored row per message plus its pending recipients, the last
acknowledgement deleting it, checked on the database file through a read-only connection.

Project choices tested as the code makes them: any participant may remove only themselves without
being admin; when the last admin leaves, the longest-standing member becomes admin; when the last
member leaves, the group is deleted; GET /chat/info/group also answers "read": {phone: position}; a
user who blocked the creator cannot be put in the creator's groups; a group of one stores nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import WSCloseCode, WSServerHandshakeError
from aiohttp.test_utils import TestClient, TestServer

from chatserver.app import create_app
from chatserver.config import Config, Database, Fetch
from chatserver.stores.base import Store
from helpers import backends
from helpers.accounts import UserFactory, users_on
from helpers.backends import db_rows, has_files
from helpers.frames import (
    FETCH_TS,
    GROUP_KEY,
    GROUP_KEYS,
    assert_error,
    assert_server_time,
    frame,
    iso,
    new_instant,
    new_phone,
    plain,
    server_form,
)
from helpers.groups import (
    create_group,
    fetch_grp,
    files_holding,
    group_info,
    group_messages,
    open_group,
    patch,
    patch_ok,
    pending_of,
    pushed,
    recv_group_added,
    recv_group_event,
    send_grp,
    settle,
)
from helpers.timing import TIMEOUT
from helpers.ws import WS, assert_json_error, assert_quiet, recv, wait_closed
from helpers.ws import open_receive as open_receive_probed

# The same tests on every store and hub (tests/helpers/backends.py).
pytestmark = pytest.mark.backends

# A receive socket is proven served with `fetch_msgs`: group messages may be waiting for it.
open_receive = functools.partial(open_receive_probed, probe="fetch_msgs")


@dataclass
class Member:
    """One participant: phone, logged-in client, and (when online) an open receive socket."""

    phone: str
    client: TestClient
    inbox: WS | None = None


async def make_members(as_user: UserFactory, n: int, online: int | None = None) -> list[Member]:
    """`n` registered users; the first `online` of them (default all) with a receive socket."""
    members = []
    for i in range(n):
        phone = new_phone()
        client = await as_user(phone)
        ws = await open_receive(client, phone) if online is None or i < online else None
        members.append(Member(phone, client, ws))
    return members


async def make_group(as_user: UserFactory, n: int, online: int | None = None,
                     name: str = "friends") -> tuple[str, list[Member]]:
    """A group of `n` created by the first member; returns (key, members)."""
    members = await make_members(as_user, n, online)
    created = await create_group(members[0].client, name, [m.phone for m in members[1:]])
    for m in members[1:]:  # each online participant is told first (group_added)
        if m.inbox is not None:
            await recv_group_added(m.inbox, members[0].phone, m.phone, created["key"])
    return created["key"], members


def other_key(key: str) -> str:
    """A well-formed group key that is not `key` (and names no group in a fresh database)."""
    return "Q" * 10 if key != "Q" * 10 else "R" * 10


def inbox(member: Member) -> WS:
    """The member's receive socket (the member must be online)."""
    assert member.inbox is not None, f"{member.phone} has no receive socket"
    return member.inbox


# -- POST /chat/special/group (SPEC 4) -----------------------------------------------------------


async def test_create_group_answers_201_with_a_new_key_and_the_creator_as_admin(
        as_user: UserFactory) -> None:
    a, b, c = await make_members(as_user, 3, online=0)
    # the creator listed too, and a duplicate: neither counts twice
    resp = await a.client.post("/chat/special/group", json={
        "name": "  Hiking club  ", "participants": [c.phone, b.phone, a.phone, c.phone]})
    assert resp.status == 201, await resp.text()
    assert resp.content_type == "application/json"
    group = await resp.json()
    assert set(group) == GROUP_KEYS, group
    assert GROUP_KEY.fullmatch(group["key"]), group
    assert group["name"] == "Hiking club"
    assert group["participants"] == sorted([a.phone, b.phone, c.phone])
    assert group["admins"] == [a.phone]

    # GET answers the same object plus each participant's read position (none read yet) and name
    got = await group_info(b.client, group["key"])
    assert got == {**group, "read": {a.phone: None, b.phone: None, c.phone: None},
                   "names": {p.phone: f"user {p.phone}" for p in (a, b, c)}}

    # each participant sees it in /chat/info; a second group gets another key
    for member in (a, b, c):
        resp = await member.client.get("/chat/info")
        assert {"key": group["key"], "name": "Hiking club"} in (await resp.json())["groups"]
    again = await create_group(a.client, "Hiking club", [b.phone])
    assert again["key"] != group["key"] and GROUP_KEY.fullmatch(again["key"])


async def test_create_group_with_an_unknown_participant_is_404_and_creates_nothing(
        as_user: UserFactory, config: Config) -> None:
    a, b = await make_members(as_user, 2, online=0)
    ghost = new_phone()  # never registered
    resp = await a.client.post("/chat/special/group",
                               json={"name": "g", "participants": [b.phone, ghost]})
    assert ghost in await assert_json_error(resp, 404)
    assert (await (await a.client.get("/chat/info")).json())["groups"] == []
    assert db_rows(config.database, "SELECT count(*) FROM groups") == [(0,)]


@pytest.mark.parametrize("body", [
    {"name": "", "participants": []},
    {"name": "   ", "participants": []},
    {"name": "x" * 65, "participants": []},
    {"name": 5, "participants": []},
    {"participants": []},
    {"name": "g", "participants": "1234567890"},
    {"name": "g", "participants": ["123"]},
    {"name": "g", "participants": [12345678901]},
    {"name": "g", "participants": ["1234567890a"]},
    {"name": "g", "participants": None},
    ["not", "an", "object"],
], ids=["empty-name", "blank-name", "long-name", "name-not-str", "no-name", "participants-str",
        "short-phone", "phone-int", "phone-letters", "participants-null", "body-list"])
async def test_create_group_refuses_a_bad_name_or_participants_with_400(
        as_user: UserFactory, config: Config, body: object) -> None:
    a = (await make_members(as_user, 1, online=0))[0]
    resp = await a.client.post("/chat/special/group", json=body)
    await assert_json_error(resp, 400)
    assert db_rows(config.database, "SELECT count(*) FROM groups") == [(0,)]


async def test_create_group_with_a_body_that_is_not_json_is_400(as_user: UserFactory) -> None:
    a = (await make_members(as_user, 1, online=0))[0]
    resp = await a.client.post("/chat/special/group", data=b"{name",
                               headers={"Content-Type": "application/json"})
    await assert_json_error(resp, 400)


async def test_create_group_logged_out_is_401(aiohttp_client: Any, server: TestServer,
                                              as_user: UserFactory, config: Config) -> None:
    b = (await make_members(as_user, 1, online=0))[0]
    anonymous = await aiohttp_client(server)
    resp = await anonymous.post("/chat/special/group",
                                json={"name": "g", "participants": [b.phone]})
    await assert_json_error(resp, 401)
    assert db_rows(config.database, "SELECT count(*) FROM groups") == [(0,)]


async def test_a_user_who_blocked_the_creator_cannot_be_put_in_their_group(
        as_user: UserFactory) -> None:
    a, b, c = await make_members(as_user, 3, online=0)
    resp = await b.client.post("/chat/special/block", json={"phone": a.phone})
    assert resp.status == 201, await resp.text()

    resp = await a.client.post("/chat/special/group",
                               json={"name": "g", "participants": [c.phone, b.phone]})
    await assert_json_error(resp, 403)
    assert (await (await c.client.get("/chat/info")).json())["groups"] == []

    group = await create_group(a.client, "g", [c.phone])
    await assert_json_error(await patch(a.client, group["key"], {"add": [b.phone]}), 403)
    assert (await group_info(a.client, group["key"]))["participants"] == sorted([a.phone, c.phone])

    # the block is B's: C (not blocked by B) may still add B
    await patch_ok(a.client, group["key"], {"admins": [c.phone]})
    await patch_ok(c.client, group["key"], {"add": [b.phone]})
    assert b.phone in (await group_info(a.client, group["key"]))["participants"]


# -- new_grp_msg (SPEC 5.3) ------------------------------------------------------------------


async def test_new_grp_msg_is_stored_answered_and_pushed_to_every_other_participant(
        as_user: UserFactory, config: Config) -> None:
    key, (a, b, c) = await make_group(as_user, 3)
    b_second = await open_receive(await as_user(b.phone), b.phone)  # another tab of B
    ws = await open_group(a.client, a.phone, key)

    sent = await send_grp(ws, a.phone, key, "hello all")

    assert await recv(inbox(b)) == pushed(sent, key, b.phone)
    assert await recv(b_second) == pushed(sent, key, b.phone)
    assert await recv(inbox(c)) == pushed(sent, key, c.phone)
    assert pushed(sent, key, b.phone)["msg_from"] == f"{key}-{a.phone}"
    await assert_quiet(inbox(a), ws, inbox(b), b_second, inbox(c))  # not to the sender, once each

    assert group_messages(config.database, key) == [(a.phone, sent["sent_timestamp"],
                                                          "hello all")]
    assert pending_of(config.database, key) == {"hello all": sorted([b.phone, c.phone])}


async def test_messages_sent_without_waiting_are_answered_pushed_and_fetched_in_order(
        as_user: UserFactory) -> None:
    key, (a, b) = await make_group(as_user, 2)
    ws_a = await open_group(a.client, a.phone, key)
    frames = [frame("new_grp_msg", a.phone, key, f"burst {i}") for i in range(20)]
    for sent in frames:  # no wait between them: the server may pipeline their writes
        await ws_a.send_json(sent)
    replies = [await recv(ws_a) for _ in frames]
    assert [r["command"] for r in replies] == ["msg_sent"] * len(frames)
    assert [r["message"] for r in replies] == [f["sent_timestamp"] for f in frames]
    assert [await recv(inbox(b)) for _ in frames] == [pushed(f, key, b.phone) for f in frames]
    fetched = [m for r in await fetch_grp(inbox(b), b.phone) for m in r["messages"]]
    assert [m["message"] for m in fetched] == [f["message"] for f in frames]


async def test_a_retried_new_grp_msg_is_answered_again_but_stored_and_pushed_once(
        as_user: UserFactory, config: Config) -> None:
    key, (a, b) = await make_group(as_user, 2)
    ws = await open_group(a.client, a.phone, key)
    when = new_instant()
    first = await send_grp(ws, a.phone, key, "only once", plain(when))
    assert await recv(inbox(b)) == pushed(first, key, b.phone)

    # the same instant written the other way is the same identity (SPEC 5)
    retry = await send_grp(ws, a.phone, key, "only once", iso(when))
    assert retry["sent_timestamp"] != first["sent_timestamp"]
    await assert_quiet(inbox(b))
    assert group_messages(config.database, key) == [(a.phone, plain(when), "only once")]
    assert pending_of(config.database, key) == {"only once": [b.phone]}

    # control: another identity with the same text is a new message, stored and pushed
    later = await send_grp(ws, a.phone, key, "only once")
    assert await recv(inbox(b)) == pushed(later, key, b.phone)
    assert len(group_messages(config.database, key)) == 2


async def test_a_group_of_one_stores_nothing_but_answers_msg_sent(
        as_user: UserFactory, config: Config) -> None:
    a = (await make_members(as_user, 1))[0]
    key = (await create_group(a.client, "just me", []))["key"]
    ws = await open_group(a.client, a.phone, key)
    await send_grp(ws, a.phone, key, "note to self")
    await assert_quiet(inbox(a))
    assert group_messages(config.database, key) == []
    assert db_rows(config.database, "SELECT count(*) FROM group_pending") == [(0,)]


# -- grp_msg_received and the three-member scenario (SPEC 5.3, 6) ---------------------------------


async def test_grp_msg_received_removes_one_recipient_and_tells_the_sender(
        as_user: UserFactory, config: Config) -> None:
    key, (a, b, c) = await make_group(as_user, 3)
    ws_a = await open_group(a.client, a.phone, key)
    ws_b = await open_group(b.client, b.phone, key)
    sent = await send_grp(ws_a, a.phone, key, "ack me")
    await recv(inbox(b))
    await recv(inbox(c))

    await ws_b.send_json(frame("grp_msg_received", b.phone, a.phone, sent["sent_timestamp"]))
    push = await recv(inbox(a))
    assert set(push) == {"message", "command", "msg_from", "msg_to", "sent_timestamp"}, push
    assert push["command"] == "msg_received"
    assert push["msg_from"] == f"{key}-{b.phone}"
    assert push["msg_to"] == a.phone
    assert push["message"] == sent["sent_timestamp"]
    assert_server_time(push["sent_timestamp"])
    await assert_quiet(ws_b, inbox(b), inbox(c))
    assert pending_of(config.database, key) == {"ack me": [c.phone]}

    # a second acknowledgement by B finds nothing of B's left to delete
    await ws_b.send_json(frame("grp_msg_received", b.phone, a.phone, sent["sent_timestamp"]))
    assert_error(await recv(ws_b), "grp_msg_received", b.phone, key,
                 "couldn't find a message to delete")
    await assert_quiet(inbox(a))
    assert pending_of(config.database, key) == {"ack me": [c.phone]}


async def test_three_members_one_offline_the_row_goes_only_with_the_last_ack(
        as_user: UserFactory, config: Config, store: Store) -> None:
    """A and B online, C offline; C fetches later and acknowledges last: only then the stored row
    and its pending entries go, and after a scrub the body is in neither the file nor the WAL."""
    db = config.database
    key, (a, b, c) = await make_group(as_user, 3, online=2)
    marker = f"group-body-{new_phone()}"
    body = f"{marker} meet at noon"
    ws_a = await open_group(a.client, a.phone, key)
    when = new_instant()
    sent = await send_grp(ws_a, a.phone, key, body, plain(when))
    assert await recv(inbox(b)) == pushed(sent, key, b.phone)
    assert db_rows(db, "SELECT count(*) FROM group_messages WHERE grp = ?", (key,)) == [(1,)]
    assert pending_of(db, key) == {body: sorted([b.phone, c.phone])}

    ws_b = await open_group(b.client, b.phone, key)
    await ws_b.send_json(frame("grp_msg_received", b.phone, a.phone, sent["sent_timestamp"]))
    assert (await recv(inbox(a)))["msg_from"] == f"{key}-{b.phone}"
    assert pending_of(db, key) == {body: [c.phone]}  # still stored: C has not got it

    # C comes online and fetches: the message, still pending for C alone
    c.inbox = await open_receive(c.client, c.phone)
    replies = await fetch_grp(inbox(c), c.phone)
    assert replies == [{"command": "fetch_grp_msgs", "all": "True", "messages": [{
        "msg_from": f"{key}-{a.phone}", "msg_to": c.phone, "message": body,
        "command": "new_msg", "sent_timestamp": iso(when), "pending": [c.phone]}]}]
    assert pending_of(db, key) == {body: [c.phone]}  # fetching deletes nothing
    await store.scrub()
    if has_files(db):  # else FILES_ARE_SQLITE
        assert files_holding(db, marker.encode()), "control: the stored body is in the files"

    ws_c = await open_group(c.client, c.phone, key)
    # the same instant in the other form names the same message (SPEC 5)
    await ws_c.send_json(frame("grp_msg_received", c.phone, a.phone, iso(when)))
    push = await recv(inbox(a))
    assert (push["command"], push["msg_from"], push["msg_to"]) == (
        "msg_received", f"{key}-{c.phone}", a.phone)
    assert db_rows(db, "SELECT count(*) FROM group_messages") == [(0,)]
    assert db_rows(db, "SELECT count(*) FROM group_pending") == [(0,)]
    assert (await fetch_grp(inbox(c), c.phone))[0]["messages"] == []

    await asyncio.wait_for(store.scrub(), TIMEOUT)
    if has_files(db):
        assert files_holding(db, marker.encode()) == []


async def gone_within_scrub_seconds(db: Database, needle: bytes, scrub_seconds: float) -> None:
    """Poll the files (no fixed wait) until `needle` is in neither; fail past the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + scrub_seconds + 3.0  # generous slack for a loaded machine
    while found := files_holding(db, needle):
        assert loop.time() < deadline, f"body still in {found}"
        await asyncio.sleep(0.02)


# Reads the SQLite file's bytes: not on PostgreSQL (FILES_ARE_SQLITE).
@pytest.mark.backends(backends.LOCAL, backends.REDIS)
@pytest.mark.parametrize("how", ["last-ack", "removal"])
async def test_the_writer_scrubs_a_deleted_group_body_by_itself(
        as_user: UserFactory, config: Config, store: Store, how: str) -> None:
    """SPEC 6: within `database.scrub_seconds` of the deletion, without anyone asking for it."""
    db = config.database
    key, (a, b) = await make_group(as_user, 2)
    marker = f"auto-scrub-{new_phone()}"
    ws_a = await open_group(a.client, a.phone, key)
    ws_b = await open_group(b.client, b.phone, key)
    sent = await send_grp(ws_a, a.phone, key, marker)
    await recv(inbox(b))
    # settle() acknowledges nothing, which may have scheduled a scrub: have it done now, so
    # that only the deletion below can schedule the next one
    await asyncio.wait_for(store.scrub(), TIMEOUT)
    assert files_holding(db, marker.encode()), "control: the stored body is in the files"
    if how == "last-ack":
        await ws_b.send_json(frame("grp_msg_received", b.phone, a.phone, sent["sent_timestamp"]))
        await recv(inbox(a))
    else:
        resp, _ = await asyncio.gather(patch(a.client, key, {"remove": [b.phone]}),
                                       wait_closed(ws_b))
        assert resp.status == 200, await resp.text()
    assert group_messages(db, key) == []
    await gone_within_scrub_seconds(db, marker.encode(), config.database.scrub_seconds)


async def test_an_acknowledgement_on_one_groups_socket_cannot_touch_another_groups_message(
        as_user: UserFactory, config: Config) -> None:
    """B is in G1 and G2; X's message in G2 waits for B. B's ack of it on B's G1 socket names
    X and the right timestamp, but G1 is the socket's group: nothing is found, nothing deleted."""
    key1, (a, b) = await make_group(as_user, 2)
    x = (await make_members(as_user, 1))[0]
    key2 = (await create_group(x.client, "g2", [b.phone]))["key"]
    ws_x = await open_group(x.client, x.phone, key2)
    sent = await send_grp(ws_x, x.phone, key2, "for b in g2")
    await recv(inbox(b))
    ws_b1 = await open_group(b.client, b.phone, key1)
    await ws_b1.send_json(frame("grp_msg_received", b.phone, x.phone, sent["sent_timestamp"]))
    assert_error(await recv(ws_b1), "grp_msg_received", b.phone, key1,
                 "couldn't find a message to delete")
    await assert_quiet(inbox(x), inbox(a))
    assert pending_of(config.database, key2) == {"for b in g2": [b.phone]}


# -- fetch_grp_msgs (SPEC 5.2) ----------------------------------------------------------------


async def test_fetch_grp_msgs_answers_pending_messages_oldest_first_in_chunks(
        aiohttp_server: Any, aiohttp_client: Any, config: Config) -> None:
    small_chunks = dataclasses.replace(config, fetch=Fetch(chunk_size=2))
    server = await aiohttp_server(create_app(small_chunks))
    login = users_on(aiohttp_client, server)
    phones = [new_phone() for _ in range(4)]
    a, b, c, d = phones
    clients = {p: await login(p) for p in phones}
    g1 = await create_group(clients[a], "one", [b, c])
    g2 = await create_group(clients[d], "two", [c])
    k1, k2 = g1["key"], g2["key"]
    ws_a = await open_group(clients[a], a, k1)
    ws_b = await open_group(clients[b], b, k1)
    ws_d = await open_group(clients[d], d, k2)

    inbox_c = await open_receive(clients[c], c)
    assert await fetch_grp(inbox_c, c) == [
        {"command": "fetch_grp_msgs", "all": "True", "messages": []}]  # nothing: one empty chunk
    await inbox_c.close()  # C offline from here

    when = [new_instant() for _ in range(5)]
    # acceptance order differs from client clock order: "oldest first" is acceptance order
    sent = [
        await send_grp(ws_a, a, k1, "m1 from a", plain(when[3])),
        await send_grp(ws_b, b, k1, "m2 from b", iso(when[1])),
        await send_grp(ws_d, d, k2, "m3 from d", plain(when[0])[:-3]),  # milliseconds
        await send_grp(ws_a, a, k1, "m4 from a", plain(when[4])),
        await send_grp(ws_d, d, k2, "m5 from d", plain(when[2])),
    ]
    # B acknowledges m1: it stays pending for C only
    await ws_b.send_json(frame("grp_msg_received", b, a, sent[0]["sent_timestamp"]))
    await settle(ws_b, b, k1)

    inbox_c = await open_receive(clients[c], c)
    replies = await fetch_grp(inbox_c, c)
    assert [r["all"] for r in replies] == ["False", "False", "True"]
    assert [len(r["messages"]) for r in replies] == [2, 2, 1]
    messages = [m for r in replies for m in r["messages"]]
    expect_ts = [when[3], when[1], when[0].replace(microsecond=234_000), when[4], when[2]]
    assert messages == [
        {"msg_from": f"{k1}-{a}", "msg_to": c, "message": "m1 from a", "command": "new_msg",
         "sent_timestamp": iso(expect_ts[0]), "pending": [c]},
        {"msg_from": f"{k1}-{b}", "msg_to": c, "message": "m2 from b", "command": "new_msg",
         "sent_timestamp": iso(expect_ts[1]), "pending": sorted([a, c])},
        {"msg_from": f"{k2}-{d}", "msg_to": c, "message": "m3 from d", "command": "new_msg",
         "sent_timestamp": iso(expect_ts[2]), "pending": [c]},
        {"msg_from": f"{k1}-{a}", "msg_to": c, "message": "m4 from a", "command": "new_msg",
         "sent_timestamp": iso(expect_ts[3]), "pending": sorted([b, c])},
        {"msg_from": f"{k2}-{d}", "msg_to": c, "message": "m5 from d", "command": "new_msg",
         "sent_timestamp": iso(expect_ts[4]), "pending": [c]},
    ]
    assert all(FETCH_TS.fullmatch(m["sent_timestamp"]) for m in messages)
    # fetching deletes nothing; the personal fetch does not see group messages
    assert [m for r in await fetch_grp(inbox_c, c) for m in r["messages"]] == messages
    await inbox_c.send_json({"command": "fetch_msgs", "msg_to": c})
    assert await recv(inbox_c) == {"command": "fetch_msgs", "all": "True", "messages": []}


# -- grp_msg_read and msg_read (SPEC 5.3) -----------------------------------------------------


@pytest.mark.parametrize("command", ["grp_msg_read", "msg_read"])
async def test_grp_msg_read_tells_the_sender_and_moves_the_read_position_forward_only(
        as_user: UserFactory, config: Config, command: str) -> None:
    key, (a, b, c) = await make_group(as_user, 3)
    ws_a = await open_group(a.client, a.phone, key)
    ws_b = await open_group(b.client, b.phone, key)
    early, late = new_instant(), new_instant()
    first = await send_grp(ws_a, a.phone, key, "first", plain(early))
    second = await send_grp(ws_a, a.phone, key, "second", iso(late))
    for _ in range(2):
        await recv(inbox(b))
        await recv(inbox(c))

    await ws_b.send_json(frame(command, b.phone, a.phone, second["sent_timestamp"]))
    push = await recv(inbox(a))
    assert push["command"] == "msg_read", push
    assert push["msg_from"] == f"{key}-{b.phone}"
    assert push["msg_to"] == a.phone
    assert_server_time(push["sent_timestamp"])
    assert await recv(inbox(b)) == push  # SPEC 7.2: the same frame to the reader's devices
    await assert_quiet(ws_b, inbox(b), inbox(c))
    read = (await group_info(c.client, key))["read"]
    assert read == {a.phone: None, b.phone: server_form(late), c.phone: None}
    # reading deletes nothing
    assert pending_of(config.database, key) == {"first": sorted([b.phone, c.phone]),
                                                     "second": sorted([b.phone, c.phone])}

    # an older message read later does not move the position back (still told to the sender)
    await ws_b.send_json(frame(command, b.phone, a.phone, first["sent_timestamp"]))
    assert (await recv(inbox(a)))["command"] == (await recv(inbox(b)))["command"] == "msg_read"
    assert (await group_info(a.client, key))["read"][b.phone] == server_form(late)


async def test_grp_msg_read_to_someone_outside_the_group_is_refused(as_user: UserFactory) -> None:
    key, (a, b) = await make_group(as_user, 2)
    outsider = (await make_members(as_user, 1))[0]
    ws_b = await open_group(b.client, b.phone, key)
    await ws_b.send_json(frame("grp_msg_read", b.phone, outsider.phone, plain(new_instant())))
    assert_error(await recv(ws_b), "grp_msg_read", b.phone, key)
    await assert_quiet(inbox(outsider), inbox(a))
    assert (await group_info(a.client, key))["read"][b.phone] is None


# -- is_grp_typing (SPEC 5.3) -----------------------------------------------------------------


async def test_is_grp_typing_reaches_every_other_participant_once_a_second_per_socket(
        as_user: UserFactory, config: Config) -> None:
    key, (a, b, c) = await make_group(as_user, 3)
    b_second = await open_receive(await as_user(b.phone), b.phone)
    ws_a = await open_group(a.client, a.phone, key)

    await ws_a.send_json(frame("is_grp_typing", a.phone, key))
    for ws, to in ((inbox(b), b.phone), (b_second, b.phone), (inbox(c), c.phone)):
        push = await recv(ws)
        assert set(push) == {"command", "msg_from", "msg_to", "sent_timestamp"}, push
        assert (push["command"], push["msg_from"], push["msg_to"]) == (
            "is_typing", f"{key}-{a.phone}", to)
        assert_server_time(push["sent_timestamp"])

    # a second one within the second is dropped silently: no push, no answer
    await ws_a.send_json(frame("is_grp_typing", a.phone, key))
    await assert_quiet(ws_a, inbox(a), inbox(b), b_second, inbox(c))

    # the limit is per socket: another socket of A may type at once
    ws_a2 = await open_group(a.client, a.phone, key)
    await ws_a2.send_json(frame("is_grp_typing", a.phone, key))
    assert (await recv(inbox(c)))["command"] == "is_typing"
    assert (await recv(inbox(b)))["command"] == "is_typing"
    assert db_rows(config.database, "SELECT count(*) FROM group_messages") == [(0,)]


# -- refused frames (SPEC 5.5) ----------------------------------------------------------------


@pytest.mark.parametrize("case", [
    "ack-of-nothing", "read-msg-to-not-phone", "msg_to-not-the-key", "msg_to-other-group",
    "msg_from-forged", "personal-new_msg", "room_msg", "empty-message", "bad-timestamp",
])
async def test_a_refused_group_frame_gets_an_error_stores_nothing_and_the_socket_stays_open(
        as_user: UserFactory, config: Config, case: str) -> None:
    key, (a, b) = await make_group(as_user, 2)
    # a group A is not in: a forged msg_to naming it must not reach its members
    x = (await make_members(as_user, 1))[0]
    other = (await create_group(x.client, "other", [b.phone]))["key"]
    await recv_group_added(inbox(b), x.phone, b.phone, other)
    ws = await open_group(a.client, a.phone, key)
    bad, says = {
        "ack-of-nothing": (frame("grp_msg_received", a.phone, b.phone, plain(new_instant())),
                           "couldn't find a message to delete"),
        "read-msg-to-not-phone": (frame("grp_msg_read", a.phone, key, plain(new_instant())),
                                  None),
        "msg_to-not-the-key": (frame("new_grp_msg", a.phone, b.phone, "hi"), None),
        "msg_to-other-group": (frame("new_grp_msg", a.phone, other, "hi"), None),
        "msg_from-forged": (frame("new_grp_msg", b.phone, key, "hi"), None),
        "personal-new_msg": (frame("new_msg", a.phone, key, "hi"), None),
        "room_msg": (frame("room_msg", a.phone, key, "hi"), None),
        "empty-message": (frame("new_grp_msg", a.phone, key, ""), None),
        "bad-timestamp": (frame("new_grp_msg", a.phone, key, "hi", "yesterday"), None),
    }[case]
    await ws.send_json(bad)
    assert_error(await recv(ws), bad["command"], a.phone, key, says)
    await assert_quiet(inbox(a), inbox(b), inbox(x))
    assert db_rows(config.database, "SELECT count(*) FROM group_messages") == [(0,)]

    sent = await send_grp(ws, a.phone, key, "still open")  # the socket still works
    assert await recv(inbox(b)) == pushed(sent, key, b.phone)


# -- the handshake (SPEC 5) -------------------------------------------------------------------


@pytest.mark.parametrize(("case", "status"), [
    ("non-member", 403), ("unknown-group", 404), ("short-key", 404), ("long-key", 404),
    ("symbol-key", 404), ("msg_from-not-me", 403), ("foreign-origin", 403),
    ("cross-site-fetch", 403), ("logged-out", 403),
])
async def test_the_group_socket_handshake_is_refused(
        as_user: UserFactory, aiohttp_client: Any, server: TestServer, case: str,
        status: int) -> None:
    key, (a, b) = await make_group(as_user, 2, online=0)
    x = (await make_members(as_user, 1, online=0))[0]
    client, path, headers = x.client, f"/ws/chat/group/{x.phone}/{key}/", {}
    if case == "unknown-group":
        client, path = a.client, f"/ws/chat/group/{a.phone}/{other_key(key)}/"
    elif case == "short-key":
        client, path = a.client, f"/ws/chat/group/{a.phone}/{key[:9]}/"
    elif case == "long-key":
        client, path = a.client, f"/ws/chat/group/{a.phone}/{key}0/"
    elif case == "symbol-key":
        client, path = a.client, f"/ws/chat/group/{a.phone}/{key[:9]}_/"
    elif case == "msg_from-not-me":
        client, path = a.client, f"/ws/chat/group/{b.phone}/{key}/"
    elif case == "foreign-origin":
        client, path = a.client, f"/ws/chat/group/{a.phone}/{key}/"
        headers = {"Origin": "https://evil.example"}
    elif case == "cross-site-fetch":
        client, path = a.client, f"/ws/chat/group/{a.phone}/{key}/"
        headers = {"Sec-Fetch-Site": "cross-site"}
    elif case == "logged-out":
        client, path = await aiohttp_client(server), f"/ws/chat/group/{a.phone}/{key}/"
    with pytest.raises(WSServerHandshakeError) as refused:
        await client.ws_connect(path, headers=headers)
    assert refused.value.status == status
    # control: the member on the right path with no foreign Origin is let in
    ws = await open_group(a.client, a.phone, key)
    await ws.close()


async def test_the_group_socket_handshake_accepts_the_servers_own_origin(
        as_user: UserFactory, server: TestServer) -> None:
    key, (a, b) = await make_group(as_user, 2)
    origin = str(server.make_url("/")).rstrip("/")
    ws = await open_group(a.client, a.phone, key, headers={"Origin": origin})
    sent = await send_grp(ws, a.phone, key, "same origin")
    assert await recv(inbox(b)) == pushed(sent, key, b.phone)
    ws2 = await open_group(b.client, b.phone, key, headers={"Sec-Fetch-Site": "same-origin"})
    await ws2.close()


async def test_acknowledgements_arriving_together_delete_the_message_once_all_are_in(
        as_user: UserFactory, config: Config) -> None:
    db = config.database
    key, members = await make_group(as_user, 4)
    a, others = members[0], members[1:]
    ws_a = await open_group(a.client, a.phone, key)
    sockets = [await open_group(m.client, m.phone, key) for m in others]
    sent = await send_grp(ws_a, a.phone, key, "all at once")
    for m in others:
        assert await recv(inbox(m)) == pushed(sent, key, m.phone)
    await asyncio.gather(*(ws.send_json(frame("grp_msg_received", m.phone, a.phone,
                                              sent["sent_timestamp"]))
                           for ws, m in zip(sockets, others, strict=True)))
    pushes = [await recv(inbox(a)) for _ in others]
    assert sorted(p["msg_from"] for p in pushes) == sorted(f"{key}-{m.phone}" for m in others)
    assert all(p["command"] == "msg_received" and p["msg_to"] == a.phone for p in pushes)
    assert db_rows(db, "SELECT count(*) FROM group_messages") == [(0,)]
    assert db_rows(db, "SELECT count(*) FROM group_pending") == [(0,)]
    await assert_quiet(*sockets)  # no error for anyone


# -- PATCH /chat/info/group (SPEC 4) ----------------------------------------------------------


async def test_patch_renames_the_group(as_user: UserFactory) -> None:
    key, (a, b) = await make_group(as_user, 2, online=0, name="old name")
    updated = await patch_ok(a.client, key, {"name": " new name "})
    assert updated["name"] == "new name"
    assert set(updated) == GROUP_KEYS | {"read", "names"}
    assert (await group_info(b.client, key))["name"] == "new name"
    assert {"key": key, "name": "new name"} in (await (await b.client.get("/chat/info")).json())[
        "groups"]


async def test_an_added_member_gets_later_messages_not_earlier_ones(
        as_user: UserFactory, config: Config) -> None:
    key, (a, b) = await make_group(as_user, 2)
    d = (await make_members(as_user, 1))[0]
    ws_a = await open_group(a.client, a.phone, key)
    await send_grp(ws_a, a.phone, key, "before D")
    await recv(inbox(b))
    with pytest.raises(WSServerHandshakeError) as refused:
        await d.client.ws_connect(f"/ws/chat/group/{d.phone}/{key}/")
    assert refused.value.status == 403

    updated = await patch_ok(a.client, key, {"add": [d.phone]})
    assert updated["participants"] == sorted([a.phone, b.phone, d.phone])
    assert updated["admins"] == [a.phone]
    assert updated["read"][d.phone] is None
    await recv_group_added(inbox(d), a.phone, d.phone, key)  # D is told who added it, B not
    for member in (a, b, d):  # everyone sees who joined (issue 18)
        await recv_group_event(inbox(member), a.phone, key, "added", [d.phone])
    await assert_quiet(inbox(d), inbox(b))  # nothing of before is pushed on joining

    after = await send_grp(ws_a, a.phone, key, "after D")
    assert await recv(inbox(d)) == pushed(after, key, d.phone)
    assert await recv(inbox(b)) == pushed(after, key, b.phone)
    fetched = [m for r in await fetch_grp(inbox(d), d.phone) for m in r["messages"]]
    assert [m["message"] for m in fetched] == ["after D"]
    assert pending_of(config.database, key) == {
        "before D": [b.phone], "after D": sorted([b.phone, d.phone])}

    ws_d = await open_group(d.client, d.phone, key)  # and D may now send
    mine = await send_grp(ws_d, d.phone, key, "hi from D")
    assert await recv(inbox(a)) == pushed(mine, key, a.phone)


async def test_removing_a_member_drops_their_pending_entries_and_closes_their_group_socket(
        as_user: UserFactory, config: Config, store: Store) -> None:
    db = config.database
    key, (a, b, c) = await make_group(as_user, 3)
    # B's pending entries in another group stay
    other = (await create_group(c.client, "other", [b.phone]))["key"]
    await recv_group_added(inbox(b), c.phone, b.phone, other)
    ws_a = await open_group(a.client, a.phone, key)
    ws_b = await open_group(b.client, b.phone, key)
    ws_b_other = await open_group(b.client, b.phone, other)
    ws_c = await open_group(c.client, c.phone, key)
    ws_c_other = await open_group(c.client, c.phone, other)
    only_b = await send_grp(ws_a, a.phone, key, "left for b only")
    await send_grp(ws_a, a.phone, key, "for b and c")
    await send_grp(ws_c_other, c.phone, other, "in the other group")
    for _ in range(3):
        await recv(inbox(b))
    for _ in range(2):
        await recv(inbox(c))
    await ws_c.send_json(frame("grp_msg_received", c.phone, a.phone, only_b["sent_timestamp"]))
    await recv(inbox(a))
    assert pending_of(db, key) == {"left for b only": [b.phone],
                                     "for b and c": sorted([b.phone, c.phone])}

    # B's socket of the group in another login session (another device) is closed too
    ws_b_device = await open_group(await as_user(b.phone), b.phone, key)

    # read while the PATCH runs: the server's close waits for the client to take its close frame
    resp, code, code_device = await asyncio.gather(
        patch(a.client, key, {"remove": [b.phone]}), wait_closed(ws_b), wait_closed(ws_b_device))
    assert resp.status == 200, await resp.text()
    assert code == (WSCloseCode.POLICY_VIOLATION, b"removed from group")
    assert code_device == (WSCloseCode.POLICY_VIOLATION, b"removed from group")
    assert ws_b.closed and ws_b_device.closed
    updated = await resp.json()
    assert updated["participants"] == sorted([a.phone, c.phone])
    assert b.phone not in updated["read"]
    for member in (a, b, c):  # the removed member is told too (issue 18)
        await recv_group_event(inbox(member), a.phone, key, "removed", [b.phone])

    # the message left with no one pending is deleted; B is gone from the other's list
    assert pending_of(db, key) == {"for b and c": [c.phone]}
    assert [m[2] for m in group_messages(db, key)] == ["for b and c"]
    assert pending_of(db, other) == {"in the other group": [b.phone]}
    await asyncio.wait_for(store.scrub(), TIMEOUT)
    if has_files(db):  # else FILES_ARE_SQLITE
        assert files_holding(db, b"left for b only") == []
        assert files_holding(db, b"for b and c"), "control: a body still pending stays"
    fetched = [m for r in await fetch_grp(inbox(b), b.phone) for m in r["messages"]]
    assert [m["message"] for m in fetched] == ["in the other group"]

    # B's socket of the other group, and B's receive socket, stay open
    mine = await send_grp(ws_b_other, b.phone, other, "still here")
    assert await recv(inbox(c)) == pushed(mine, other, c.phone)

    # B gets nothing more from the group and cannot come back in
    later = await send_grp(ws_a, a.phone, key, "after b left")
    assert await recv(inbox(c)) == pushed(later, key, c.phone)
    await assert_quiet(inbox(b))
    with pytest.raises(WSServerHandshakeError) as refused:
        await b.client.ws_connect(f"/ws/chat/group/{b.phone}/{key}/")
    assert refused.value.status == 403
    await assert_json_error(await b.client.get("/chat/info/group", params={"key": key}), 403)


async def test_granting_admin_lets_that_member_change_the_group(as_user: UserFactory) -> None:
    key, (a, b, c) = await make_group(as_user, 3, online=0)
    await assert_json_error(await patch(b.client, key, {"name": "by b"}), 403)
    updated = await patch_ok(a.client, key, {"admins": [b.phone]})
    assert updated["admins"] == sorted([a.phone, b.phone])
    updated = await patch_ok(b.client, key, {"name": "by b", "admins": [c.phone]})
    assert updated["name"] == "by b"
    assert updated["admins"] == sorted([a.phone, b.phone, c.phone])


@pytest.mark.parametrize("body", [
    {"name": "mine now"},
    {"add": ["<outsider>"]},
    {"remove": ["<c>"]},
    {"admins": ["<b>"]},
    {"remove": ["<b>"], "name": "bye"},
    {"remove": ["<b>", "<c>"]},
], ids=["rename", "add", "remove-other", "grant-self", "leave-and-rename", "leave-with-other"])
async def test_a_non_admin_may_not_change_the_group(
        as_user: UserFactory, body: dict[str, Any]) -> None:
    key, (a, b, c) = await make_group(as_user, 3, online=0)
    outsider = (await make_members(as_user, 1, online=0))[0]
    names = {"<outsider>": outsider.phone, "<b>": b.phone, "<c>": c.phone}
    filled = {k: [names[p] for p in v] if isinstance(v, list) else v for k, v in body.items()}
    before = await group_info(a.client, key)
    await assert_json_error(await patch(b.client, key, filled), 403)
    assert await group_info(a.client, key) == before


@pytest.mark.parametrize("body", [
    {"admins": ["<outsider>"]},
    {"admins": ["<b>"], "remove": ["<b>"]},
    {"nickname": "x"},
    {"name": ""},
    {"add": "<outsider>"},
    {"remove": ["123"]},
    {"admins": [None]},
], ids=["admin-outsider", "admin-removed", "unknown-field", "empty-name", "add-not-list",
        "remove-bad-phone", "admins-null"])
async def test_a_bad_patch_is_400_and_changes_nothing(
        as_user: UserFactory, body: dict[str, Any]) -> None:
    key, (a, b, c) = await make_group(as_user, 3, online=0)
    outsider = (await make_members(as_user, 1, online=0))[0]
    names = {"<outsider>": outsider.phone, "<b>": b.phone, "<c>": c.phone}

    def fill(v: Any) -> Any:
        if isinstance(v, list):
            return [names.get(p, p) for p in v]
        return names.get(v, v) if isinstance(v, str) else v

    before = await group_info(a.client, key)
    await assert_json_error(await patch(a.client, key, {k: fill(v) for k, v in body.items()}), 400)
    assert await group_info(a.client, key) == before


async def test_patch_and_get_by_a_non_member_or_for_an_unknown_group(as_user: UserFactory) -> None:
    key, (a, b) = await make_group(as_user, 2, online=0)
    x = (await make_members(as_user, 1, online=0))[0]
    await assert_json_error(await x.client.get("/chat/info/group", params={"key": key}), 403)
    await assert_json_error(await patch(x.client, key, {"remove": [x.phone]}), 403)
    await assert_json_error(await patch(x.client, key, {"add": [x.phone]}), 403)
    assert x.phone not in (await group_info(a.client, key))["participants"]
    for missing in (other_key(key), "short", key + "x"):
        await assert_json_error(await a.client.get("/chat/info/group", params={"key": missing}), 404)
        await assert_json_error(await patch(a.client, missing, {"name": "n"}), 404)


async def test_a_participant_may_leave_without_being_admin(
        as_user: UserFactory, config: Config) -> None:
    key, (a, b, c) = await make_group(as_user, 3)
    ws_a = await open_group(a.client, a.phone, key)
    ws_b = await open_group(b.client, b.phone, key)
    await send_grp(ws_a, a.phone, key, "pending for b and c")
    await recv(inbox(b))
    await recv(inbox(c))

    resp, code = await asyncio.gather(patch(b.client, key, {"remove": [b.phone]}),
                                      wait_closed(ws_b))
    assert resp.status == 200, await resp.text()
    assert code == (WSCloseCode.POLICY_VIOLATION, b"removed from group")
    assert (await resp.json())["participants"] == sorted([a.phone, c.phone])
    assert pending_of(config.database, key) == {"pending for b and c": [c.phone]}
    assert {"key": key, "name": "friends"} not in (await (await b.client.get("/chat/info")).json())[
        "groups"]
    await assert_json_error(await b.client.get("/chat/info/group", params={"key": key}), 403)


async def test_when_the_last_admin_leaves_the_longest_standing_member_becomes_admin(
        as_user: UserFactory) -> None:
    a, d, b = await make_members(as_user, 3, online=0)  # phone order: a < d < b
    key = (await create_group(a.client, "g", [b.phone]))["key"]
    await patch_ok(a.client, key, {"add": [d.phone]})  # d joins later, with a smaller phone than b
    updated = await patch_ok(a.client, key, {"remove": [a.phone]})
    assert updated["participants"] == sorted([b.phone, d.phone])
    assert updated["admins"] == [b.phone]
    # with an admin left, nobody is promoted
    await patch_ok(b.client, key, {"add": [a.phone]})
    updated = await patch_ok(d.client, key, {"remove": [d.phone]})
    assert updated["admins"] == [b.phone]


async def test_when_the_last_member_leaves_the_group_is_deleted(
        as_user: UserFactory, config: Config) -> None:
    db = config.database
    key, (a, b) = await make_group(as_user, 2, name="short-lived")
    ws_b = await open_group(b.client, b.phone, key)
    await send_grp(ws_b, b.phone, key, "pending for a")
    await recv(inbox(a))
    resp, _ = await asyncio.gather(patch(b.client, key, {"remove": [b.phone]}), wait_closed(ws_b))
    assert resp.status == 200, await resp.text()
    assert pending_of(db, key) == {"pending for a": [a.phone]}

    ws_a = await open_group(a.client, a.phone, key)
    resp, code = await asyncio.gather(patch(a.client, key, {"remove": [a.phone]}),
                                      wait_closed(ws_a))
    assert resp.status == 200, await resp.text()
    assert code == (WSCloseCode.POLICY_VIOLATION, b"removed from group")
    assert await resp.json() == {"key": key, "name": "short-lived", "participants": [],
                                 "admins": []}
    await assert_json_error(await a.client.get("/chat/info/group", params={"key": key}), 404)
    for table, column in (("groups", "key"), ("group_members", "grp"), ("group_messages", "grp")):
        assert db_rows(db, f"SELECT count(*) FROM {table} WHERE {column} = ?", (key,)) == [(0,)]
    assert db_rows(db, "SELECT count(*) FROM group_pending") == [(0,)]


# -- the page /chat/group/<msg_from>/<grp>/ (SPEC 4) ------------------------------------------


async def test_the_group_page_is_for_members_only(as_user: UserFactory, aiohttp_client: Any,
                                                  server: TestServer) -> None:
    key, (a, b) = await make_group(as_user, 2, online=0)
    x = (await make_members(as_user, 1, online=0))[0]
    resp = await a.client.get(f"/chat/group/{a.phone}/{key}/")
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "text/html"
    assert key in await resp.text()
    assert (await x.client.get(f"/chat/group/{x.phone}/{key}/")).status == 403
    assert (await a.client.get(f"/chat/group/{b.phone}/{key}/")).status == 403
    assert (await a.client.get(f"/chat/group/{a.phone}/{other_key(key)}/")).status == 404
    assert (await a.client.get(f"/chat/group/{a.phone}/{key[:5]}/")).status == 404
    anonymous = await aiohttp_client(server)
    resp = await anonymous.get(f"/chat/group/{a.phone}/{key}/", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/login"
