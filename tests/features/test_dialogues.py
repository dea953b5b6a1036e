"""Personal chat over real sockets (SPEC 5, 5.1, 5.2, 6): new_msg and its msg_sent, pushes to every
receive socket, safe retries, order, msg_received / msg_read / is_typing, store-and-forward with
chunked fetches and real deletion, tabs, logout, and a receiver too slow to keep up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer

from chatserver.app import create_app
from chatserver.config import Config, WebSocket
from chatserver.connection import TYPING_INTERVAL
from chatserver.keys import hub_key, store_key
from chatserver.stores.base import Store
from helpers.accounts import UserFactory, users_on
from helpers.backends import FILES_ARE_SQLITE, db_rows, has_files
from helpers.configs import with_limits
from helpers.frames import (
    FETCH_TS,
    FRAME_KEYS,
    TODAY,
    assert_server_time,
    frame,
    iso,
    new_instant,
    new_phone,
    plain,
    server_form,
)
from helpers.timing import TIMEOUT
from helpers.ws import (
    ProductionServer,
    assert_quiet,
    fetch_all,
    open_personal,
    open_receive,
    recv,
    recv_many,
    send_new_msg,
)

# The same tests on every store and hub (tests/helpers/backends.py).
pytestmark = pytest.mark.backends

# the default close timeout: an upper bound for the tests' smaller one
CLOSE_TIMEOUT = WebSocket().close_timeout

ClientFactory = Callable[..., Awaitable[TestClient]]
ServerFactory = Callable[..., Awaitable[TestServer]]


def with_fetch(config: Config, chunk_size: int) -> Config:
    """`config` with another `[fetch] chunk_size`."""
    fetch = dataclasses.replace(config.fetch, chunk_size=chunk_size)
    return dataclasses.replace(config, fetch=fetch)


async def dialogue_info(client: TestClient, msg_to: str) -> dict[str, Any]:
    """GET /chat/info/personal?msg_to=... as the client's user."""
    resp = await client.get("/chat/info/personal", params={"msg_to": msg_to})
    assert resp.status == 200, await resp.text()
    return await resp.json()


def db_bytes(config: Config) -> bytes:
    """The database file and its write-ahead log, as bytes (SQLite only: FILES_ARE_SQLITE)."""
    assert has_files(config.database), FILES_ARE_SQLITE
    data = b""
    for path in (config.database.path, config.database.path + "-wal"):
        if os.path.exists(path):
            data += Path(path).read_bytes()
    return data


# -- new_msg ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sent_timestamp", [
    f"{TODAY} 10:00:00.500",
    f"{TODAY} 10:00:00",
    f"{TODAY} 10:00:00.5",
    f"{TODAY} 10:00:00.123456",
    f"{TODAY}T10:00:00.500000Z",
    f"{TODAY}T10:00:00Z",
    f"{TODAY}T10:00:00.25",
])
async def test_new_msg_is_acknowledged_and_pushed_as_sent_to_every_receive_socket(
        as_user: UserFactory, sent_timestamp: str) -> None:
    a, b = new_phone(), new_phone()
    client_a, client_b = await as_user(a), await as_user(b)
    inbox_a = await open_receive(client_a, a)
    inbox_b1 = await open_receive(client_b, b)
    inbox_b2 = await open_receive(client_b, b)
    ws = await open_personal(client_a, a, b)

    sent = frame("new_msg", a, b, 'héllo "B" \\ 😀\nsecond line', sent_timestamp)
    await ws.send_json(sent)

    reply = await recv(ws)
    assert set(reply) == set(FRAME_KEYS), reply
    assert reply["message"] == sent_timestamp  # as sent, not normalised
    assert (reply["command"], reply["msg_from"], reply["msg_to"]) == ("msg_sent", a, b)
    assert_server_time(reply["sent_timestamp"])
    assert reply["sent_timestamp"] != sent_timestamp
    for inbox in (inbox_b1, inbox_b2):
        assert await recv(inbox) == sent
    await assert_quiet(inbox_a)  # the sender's own receive socket gets nothing
    await assert_quiet(ws)  # exactly one answer

    # Pushed, but still stored until B acknowledges it.
    [[stored]] = await fetch_all(inbox_b1, b)
    assert stored["message"] == sent["message"]


@pytest.mark.parametrize(("first", "retry"), [
    (f"{TODAY} 10:00:00.5", f"{TODAY}T10:00:00.500000Z"),
    (f"{TODAY}T10:00:00.500000Z", f"{TODAY} 10:00:00.500"),
    (f"{TODAY} 17:11:06.23", f"{TODAY} 17:11:06.230000"),
    (f"{TODAY} 10:00:00", f"{TODAY}T10:00:00Z"),
    (f"{TODAY} 10:00:00.5", f"{TODAY} 10:00:00.5"),
])
async def test_retry_with_same_identity_is_acknowledged_again_but_stored_and_pushed_once(
        as_user: UserFactory, store: Store, first: str, retry: str) -> None:
    a, b = new_phone(), new_phone()
    client_a, client_b = await as_user(a), await as_user(b)
    inbox_b = await open_receive(client_b, b)
    ws = await open_personal(client_a, a, b)

    original = await send_new_msg(ws, a, b, "only once", first)
    assert await recv(inbox_b) == original

    again = frame("new_msg", a, b, "only once", retry)
    await ws.send_json(again)
    reply = await recv(ws)
    assert (reply["command"], reply["message"]) == ("msg_sent", retry)
    assert_server_time(reply["sent_timestamp"])
    await assert_quiet(inbox_b)  # not pushed twice

    assert [m.message for m in await store.pending_for(b)] == ["only once"]
    [[fetched]] = await fetch_all(inbox_b, b)
    assert fetched["message"] == "only once"


async def test_two_copies_sent_back_to_back_are_stored_and_pushed_once(
        as_user: UserFactory, store: Store) -> None:
    """Both copies are in flight at once (no waiting between them): still one message."""
    a, b = new_phone(), new_phone()
    client_a, client_b = await as_user(a), await as_user(b)
    inbox_b = await open_receive(client_b, b)
    ws = await open_personal(client_a, a, b)
    first = frame("new_msg", a, b, "twice", f"{TODAY} 10:00:00.5")
    second = frame("new_msg", a, b, "twice", f"{TODAY}T10:00:00.500000Z")
    await ws.send_json(first)
    await ws.send_json(second)
    replies = await recv_many(ws, 2)
    assert sorted((r["command"], r["message"]) for r in replies) == sorted(
        [("msg_sent", first["sent_timestamp"]), ("msg_sent", second["sent_timestamp"])])
    assert await recv(inbox_b) == first
    await assert_quiet(inbox_b)
    assert [m.message for m in await store.pending_for(b)] == ["twice"]


async def test_a_different_instant_is_a_different_message(as_user: UserFactory,
                                                          store: Store) -> None:
    """One microsecond apart is another identity: stored and pushed as a second message."""
    a, b = new_phone(), new_phone()
    client_a, client_b = await as_user(a), await as_user(b)
    inbox_b = await open_receive(client_b, b)
    ws = await open_personal(client_a, a, b)
    first = await send_new_msg(ws, a, b, "one", f"{TODAY} 10:00:00.500000")
    second = await send_new_msg(ws, a, b, "two", f"{TODAY} 10:00:00.500001")
    assert await recv_many(inbox_b, 2) == [first, second]
    assert [m.message for m in await store.pending_for(b)] == ["one", "two"]


async def test_messages_arrive_in_the_order_the_socket_sent_them(as_user: UserFactory) -> None:
    """Order is the socket's, not the timestamps': these go back in time on purpose."""
    a, b = new_phone(), new_phone()
    client_a, client_b = await as_user(a), await as_user(b)
    inbox_b = await open_receive(client_b, b)
    ws = await open_personal(client_a, a, b)
    start = new_instant()
    sent = [frame("new_msg", a, b, f"message {i}", plain(start - timedelta(seconds=i)))
            for i in range(150)]
    for f in sent:  # all at once, without waiting for the acknowledgements
        await ws.send_json(f)

    replies = await recv_many(ws, len(sent))
    assert [r["command"] for r in replies] == ["msg_sent"] * len(sent)
    assert [r["message"] for r in replies] == [f["sent_timestamp"] for f in sent]
    assert await recv_many(inbox_b, len(sent)) == sent
    fetched = [m for chunk in await fetch_all(inbox_b, b) for m in chunk]
    assert [m["message"] for m in fetched] == [f["message"] for f in sent]


async def test_messages_of_two_senders_are_fetched_in_acceptance_order(
        as_user: UserFactory) -> None:
    a, c, b = new_phone(), new_phone(), new_phone()
    client_a, client_c, client_b = await as_user(a), await as_user(c), await as_user(b)
    ws_a = await open_personal(client_a, a, b)
    ws_c = await open_personal(client_c, c, b)
    await send_new_msg(ws_c, c, b, "first", f"{TODAY} 12:00:00")
    await send_new_msg(ws_a, a, b, "second", f"{TODAY} 11:00:00")
    await send_new_msg(ws_c, c, b, "third", f"{TODAY} 10:00:00")
    inbox_b = await open_receive(client_b, b)
    [fetched] = await fetch_all(inbox_b, b)
    assert [(m["msg_from"], m["message"]) for m in fetched] == [
        (c, "first"), (a, "second"), (c, "third")]


# -- msg_received and msg_read ------------------------------------------------------------------


async def test_msg_received_deletes_sets_last_received_and_is_pushed_as_sent(
        as_user: UserFactory) -> None:
    a, b = new_phone(), new_phone()
    client_a, client_b = await as_user(a), await as_user(b)
    inbox_a1, inbox_a2 = await open_receive(client_a, a), await open_receive(client_a, a)
    inbox_b = await open_receive(client_b, b)
    to_b = await open_personal(client_a, a, b)
    to_a = await open_personal(client_b, b, a)
    sent = await send_new_msg(to_b, a, b, "please confirm", f"{TODAY} 09:30:15.25")
    assert await recv(inbox_b) == sent

    before = await dialogue_info(client_a, b)
    assert before["outgoing"] == {"last_received_receiver": None, "last_seen_receiver": None,
                                  "waiting": 1}

    # The acknowledgement names the message in the other timestamp form.
    ack_at = new_instant()
    ack = frame("msg_received", b, a, f"{TODAY}T09:30:15.250000Z", iso(ack_at))
    await to_a.send_json(ack)
    for inbox in (inbox_a1, inbox_a2):
        assert await recv(inbox) == ack
    await assert_quiet(inbox_b)

    assert await fetch_all(inbox_b, b) == [[]]
    mine = await dialogue_info(client_a, b)
    assert mine["outgoing"]["last_received_receiver"] == server_form(ack_at)
    assert mine["outgoing"]["waiting"] == 0
    theirs = await dialogue_info(client_b, a)
    assert theirs["incoming"] == mine["outgoing"]


async def test_msg_read_is_pushed_and_sets_last_seen_without_a_stored_message(
        as_user: UserFactory) -> None:
    a, b = new_phone(), new_phone()
    client_a, client_b = await as_user(a), await as_user(b)
    inbox_b = await open_receive(client_b, b)
    ws = await open_personal(client_a, a, b)

    read_at = new_instant()
    read = frame("msg_read", a, b, f"{TODAY} 08:00:00.000", plain(read_at))
    await ws.send_json(read)
    assert await recv(inbox_b) == read
    await assert_quiet(ws)  # no error: no stored message is needed

    mine = await dialogue_info(client_a, b)
    assert mine["incoming"]["last_seen_receiver"] == server_form(read_at)
    theirs = await dialogue_info(client_b, a)
    assert theirs["outgoing"]["last_seen_receiver"] == server_form(read_at)
    assert theirs["outgoing"]["last_received_receiver"] is None


async def test_msg_read_deletes_nothing(as_user: UserFactory) -> None:
    a, b = new_phone(), new_phone()
    client_a, client_b = await as_user(a), await as_user(b)
    inbox_a = await open_receive(client_a, a)
    to_a = await open_personal(client_b, b, a)
    to_b = await open_personal(client_a, a, b)
    sent = await send_new_msg(to_a, b, a, "read but not stored yet")
    assert await recv(inbox_a) == sent

    read = frame("msg_read", a, b, sent["sent_timestamp"])
    await to_b.send_json(read)
    assert await recv(inbox_a) == read  # SPEC 7.2: the reader's own devices hear of it too
    await assert_quiet(to_b)
    [[still]] = await fetch_all(inbox_a, a)
    assert still["message"] == "read but not stored yet"
    assert (await dialogue_info(client_a, b))["incoming"]["waiting"] == 1


# -- is_typing ------------------------------------------------------------------------------------


async def test_is_typing_is_pushed_with_server_time_and_limited_per_socket(
        as_user: UserFactory, store: Store) -> None:
    a, b = new_phone(), new_phone()
    client_a, client_b = await as_user(a), await as_user(b)
    inbox_b = await open_receive(client_b, b)
    ws = await open_personal(client_a, a, b)

    await ws.send_json(frame("is_typing", a, b, "ignored", f"{TODAY} 04:05:06.789"))
    push = await recv(inbox_b)
    assert set(push) == {"command", "msg_from", "msg_to", "sent_timestamp"}, push
    assert (push["command"], push["msg_from"], push["msg_to"]) == ("is_typing", a, b)
    assert_server_time(push["sent_timestamp"])

    # A second one within the second is dropped silently: no push, no error.
    await ws.send_json(frame("is_typing", a, b))
    await assert_quiet(inbox_b)
    await assert_quiet(ws)
    # The socket goes on: what comes next on B's socket is the message, not a late typing push.
    sent = await send_new_msg(ws, a, b, "typed")
    assert await recv(inbox_b) == sent
    assert [m.message for m in await store.pending_for(b)] == ["typed"]  # typing is never stored

    # The limit is per socket: another socket of A may push at once.
    other = await open_personal(client_a, a, b)
    await other.send_json(frame("is_typing", a, b))
    assert (await recv(inbox_b))["command"] == "is_typing"

    # Once the second has passed, the first socket may push again (waiting out the rate window).
    await asyncio.sleep(TYPING_INTERVAL + 0.05)
    await ws.send_json(frame("is_typing", a, b))
    assert (await recv(inbox_b))["command"] == "is_typing"


# -- store-and-forward ----------------------------------------------------------------------------


async def test_store_and_forward_fetch_in_chunks_then_acknowledge_and_scrub(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config) -> None:
    cfg = with_fetch(config, 3)
    server = await aiohttp_server(create_app(cfg))
    store = server.app[store_key]
    login = users_on(aiohttp_client, server)
    a, b = new_phone(), new_phone()
    client_a, client_b = await login(a), await login(b)
    inbox_a = await open_receive(client_a, a)
    ws = await open_personal(client_a, a, b)

    # B is offline: eight messages, more than two chunks.
    token = os.urandom(8).hex()
    bodies = [f"secret-{token}-{i:02d}-" + "z" * 40 for i in range(8)]
    instants = [new_instant() for _ in bodies]
    for body, when in zip(bodies, instants, strict=True):
        await send_new_msg(ws, a, b, body, plain(when, 3))
    await store.scrub()
    if has_files(cfg.database):  # else FILES_ARE_SQLITE
        assert all(body.encode() in db_bytes(cfg) for body in bodies)  # the search below can see them

    inbox_b = await open_receive(client_b, b)
    chunks = await fetch_all(inbox_b, b)
    assert [len(c) for c in chunks] == [3, 3, 2]
    fetched = [m for c in chunks for m in c]
    assert fetched == [
        {"msg_from": a, "msg_to": b, "message": body, "command": "new_msg",
         "sent_timestamp": iso(when.replace(microsecond=when.microsecond // 1000 * 1000))}
        for body, when in zip(bodies, instants, strict=True)
    ]
    assert all(FETCH_TS.fullmatch(m["sent_timestamp"]) for m in fetched)
    assert await fetch_all(inbox_b, b) == chunks  # fetching deletes nothing

    to_a = await open_personal(client_b, b, a)
    for m in fetched:
        ack = frame("msg_received", b, a, m["sent_timestamp"])
        await to_a.send_json(ack)
        assert await recv(inbox_a) == ack
    assert await fetch_all(inbox_b, b) == [[]]

    assert db_rows(cfg.database, "SELECT count(*) FROM personal_messages") == [(0,)]
    await store.scrub()
    if has_files(cfg.database):
        leftover = db_bytes(cfg)
        assert token.encode() not in leftover
        for body in bodies:
            assert body.encode() not in leftover


async def test_fetch_with_nothing_stored_answers_one_empty_final_chunk(
        as_user: UserFactory) -> None:
    a = new_phone()
    inbox = await open_receive(await as_user(a), a)
    await inbox.send_json({"command": "fetch_msgs", "msg_to": a})
    assert await recv(inbox) == {"command": "fetch_msgs", "all": "True", "messages": []}
    await assert_quiet(inbox)


async def test_fetch_grp_msgs_answers_one_empty_final_chunk(as_user: UserFactory) -> None:
    a, b = new_phone(), new_phone()
    client_a = await as_user(a)
    await as_user(b)
    await send_new_msg(await open_personal(client_a, a, b), a, b, "personal, not group")
    client_b = await as_user(b)
    inbox = await client_b.ws_connect(f"/ws/chat/special/{b}/")
    await inbox.send_json({"command": "fetch_grp_msgs", "msg_to": b})
    assert await recv(inbox) == {"command": "fetch_grp_msgs", "all": "True", "messages": []}
    await assert_quiet(inbox)


async def test_fetch_answers_only_the_users_own_messages(as_user: UserFactory) -> None:
    a, b, c = new_phone(), new_phone(), new_phone()
    client_a, client_c = await as_user(a), await as_user(c)
    await as_user(b)
    await send_new_msg(await open_personal(client_a, a, b), a, b, "for b only")
    await send_new_msg(await open_personal(client_a, a, c), a, c, "for c")
    inbox_c = await open_receive(client_c, c)
    [[only]] = await fetch_all(inbox_c, c)
    assert (only["msg_to"], only["message"]) == (c, "for c")


# -- tabs and sessions ----------------------------------------------------------------------------


async def test_every_tab_and_device_gets_every_push(as_user: UserFactory) -> None:
    a, b = new_phone(), new_phone()
    client_a, client_b = await as_user(a), await as_user(b)
    phone_b = await as_user(b)  # a second device: another session of the same user
    tabs_b = [await open_receive(client_b, b), await open_receive(client_b, b),
              await open_receive(phone_b, b)]
    tabs_a = [await open_receive(client_a, a), await open_receive(client_a, a)]
    to_b = await open_personal(client_a, a, b)
    to_a = await open_personal(phone_b, b, a)

    sent = await send_new_msg(to_b, a, b, "to all of B")
    typing = frame("is_typing", a, b)
    await to_b.send_json(typing)
    for tab in tabs_b:
        assert await recv(tab) == sent
        assert (await recv(tab))["command"] == "is_typing"

    received = frame("msg_received", b, a, sent["sent_timestamp"])
    read = frame("msg_read", b, a, sent["sent_timestamp"])
    await to_a.send_json(received)
    await to_a.send_json(read)
    for tab in tabs_a:
        assert await recv_many(tab, 2) == [received, read]
    for tab in tabs_b:  # the reader's own devices get its read, not its acknowledgement (SPEC 7.2)
        assert await recv(tab) == read
        await assert_quiet(tab)


async def test_logout_closes_the_sessions_sockets_and_the_old_cookie_is_refused(
        server: TestServer, aiohttp_client: ClientFactory, as_user: UserFactory) -> None:
    a, b = new_phone(), new_phone()
    client_a = await as_user(a)
    other_device = await as_user(a)
    client_b = await as_user(b)
    cookie = client_a.session.cookie_jar.filter_cookies(client_a.make_url("/"))["chat_session"]
    replay = {"Cookie": f"chat_session={cookie.value}"}

    inbox = await open_receive(client_a, a)
    to_b = await open_personal(client_a, a, b)
    # The same cookie from elsewhere is the same session: it works, and logout closes it too.
    thief = await aiohttp_client(server)
    stolen = await open_receive(thief, a, headers=replay)
    survivor = await open_receive(other_device, a)

    async def closed(ws: aiohttp.ClientWebSocketResponse) -> WSMsgType:
        msg = await ws.receive(timeout=TIMEOUT)
        return msg.type

    resp, *kinds = await asyncio.gather(
        client_a.post("/logout", allow_redirects=False),
        closed(inbox), closed(to_b), closed(stolen))
    assert resp.status == 302
    assert resp.headers["Location"] == "/login"
    assert kinds == [WSMsgType.CLOSE] * 3
    assert inbox.closed and to_b.closed and stolen.closed

    for path in (f"/ws/chat/special/{a}/", f"/ws/chat/personal/{a}/{b}/"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await (await aiohttp_client(server)).ws_connect(path, headers=replay)
        assert refused.value.status == 403
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client_a.ws_connect(f"/ws/chat/special/{a}/")
    assert refused.value.status == 403

    # The other session of the same user is untouched.
    sent = await send_new_msg(await open_personal(client_b, b, a), b, a, "still here?")
    assert await recv(survivor) == sent


# -- a receiver that does not keep up -------------------------------------------------------------


def _buffer_bytes() -> int:
    """Bytes the kernel may buffer between a writer and a reader that stopped reading, plus margin:
    the receive buffer's and the send buffer's maximum sizes, read from /proc when there."""
    total = 8 << 20
    for name in ("tcp_rmem", "tcp_wmem"):
        try:
            total += int(Path(f"/proc/sys/net/ipv4/{name}").read_text().split()[2])
        except (OSError, IndexError, ValueError):
            total += 32 << 20
    return total


def _slow_config(config: Config) -> Config:
    """Tiny outgoing queue, big messages (so that few of them fill the kernel buffers), no fsync
    (only speed: durability is not what these tests look at), and small fetch chunks."""
    cfg = with_limits(config, outgoing_queue=5, max_message_chars=100_000, max_message_bytes=100_000,
                      max_frame_bytes=200_000, messages_per_second=100_000.0)
    cfg = with_fetch(cfg, 5)
    return dataclasses.replace(cfg, database=dataclasses.replace(cfg.database, synchronous="OFF"))


async def test_a_receiver_that_never_reads_does_not_block_the_sender_and_is_closed(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config) -> None:
    cfg = _slow_config(config)
    server = await aiohttp_server(create_app(cfg))
    login = users_on(aiohttp_client, server)
    a, b = new_phone(), new_phone()
    client_a, client_b = await login(a), await login(b)
    slow = await open_receive(client_b, b)  # from here on, nobody reads it
    ws = await open_personal(client_a, a, b)

    size = 100_000
    count = _buffer_bytes() // size + 1
    for i in range(count):  # every msg_sent within TIMEOUT: the sender never waits for B
        await send_new_msg(ws, a, b, f"{i:06d}" + "x" * (size - 6))

    # The slow socket was closed: what was buffered before the close is read, then it ends.
    pushed = 0
    async with asyncio.timeout(CLOSE_TIMEOUT + TIMEOUT):
        while (msg := await slow.receive()).type is WSMsgType.TEXT:
            pushed += 1
    assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED), msg
    assert pushed < count

    # Every message stays stored, in order, for the next connection.
    inbox = await open_receive(client_b, b)
    fetched = [m for chunk in await fetch_all(inbox, b) for m in chunk]
    assert [m["message"][:6] for m in fetched] == [f"{i:06d}" for i in range(count)]


async def test_a_receive_socket_closed_while_answering_a_fetch_is_released(
        aiohttp_client: ClientFactory, config: Config) -> None:
    """A receive socket that stops reading in the middle of a big fetch, and is then closed for
    falling behind, must let go of its handler like any other socket (production settings: aiohttp
    does not cancel handlers when a connection drops, see ProductionServer)."""
    cfg = _slow_config(config)
    server = ProductionServer(create_app(cfg))
    await server.start_server()
    try:
        login = users_on(aiohttp_client, server)
        a, b = new_phone(), new_phone()
        client_a, client_b = await login(a), await login(b)
        ws = await open_personal(client_a, a, b)
        size = 100_000
        count = _buffer_bytes() // size + 1
        for i in range(count):
            await send_new_msg(ws, a, b, f"{i:06d}" + "x" * (size - 6))

        slow = await open_receive(client_b, b)
        await slow.send_json({"command": "fetch_msgs", "msg_to": b})
        assert (await recv(slow))["all"] == "False"  # the fetch is under way; now stop reading
        # Pushes while the fetch is stuck: the socket falls behind, is closed and must leave the
        # hub (its handler finished). How soon the kernel's buffers fill depends on the machine:
        # push until it has happened (bounded), rather than a fixed number of pushes.
        hub = server.app[hub_key]
        async with asyncio.timeout(CLOSE_TIMEOUT + 4 * TIMEOUT):
            while hub.has_receivers(b):
                await send_new_msg(ws, a, b, "push" + "x" * (size - 4))
        async with asyncio.timeout(CLOSE_TIMEOUT + TIMEOUT):
            while (msg := await slow.receive()).type is WSMsgType.TEXT:
                pass
        assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED), msg
    finally:
        await server.close()
