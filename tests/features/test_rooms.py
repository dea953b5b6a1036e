"""Rooms (SPEC 4, 5.4) over real sockets: creating and reading rooms, the history frame sent on
connect (oldest first, at most `rooms.history`, fetch-format timestamps), the stored history bounded
by `rooms.keep`, `room_msg` broadcast to every socket of the room (the sender's own included) and
not twice for a retry, `is_room_typing` as `is_typing` at most once a second per socket, the
SPEC 5.5 error frames of a room socket, and private rooms, whose password is given once per user
(issue 18, defect 7)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient, AiohttpServer

from chatserver.app import create_app
from chatserver.config import Config, Rooms
from chatserver.stores.base import Store
from helpers import frames
from helpers.accounts import PASSWORD, UserFactory
from helpers.backends import db_rows
from helpers.frames import FETCH_TS, SERVER_TS, TODAY, assert_error, iso, new_phone
from helpers.timing import QUIET, TIMEOUT
from helpers.ws import assert_json_error, assert_quiet, recv

# The same tests on every store and hub (tests/helpers/backends.py).
pytestmark = pytest.mark.backends

WS = aiohttp.ClientWebSocketResponse
ROOM_PASSWORD = "open sesame"
# How long a test lets a frame take that a correct server may also hold back on purpose.
HELD = 2.0

_rooms = itertools.count(1)
_instants = itertools.count(1)
# Client clocks hours behind the server's (within security.timestamp_skew_seconds), so that a
# server time is never mistaken for one; whole milliseconds, so that the ms form a client sends is
# the instant itself.
_BASE = datetime.now(UTC).replace(microsecond=230_000) - timedelta(hours=20)


def new_room() -> str:
    """A room name no other test in this module uses (with both `_` and `-` in it)."""
    return f"room_{next(_rooms)}-x"


def new_instant() -> datetime:
    """A client instant no other call returns."""
    return _BASE + timedelta(seconds=next(_instants))


def plain(dt: datetime) -> str:
    """`YYYY-MM-DD HH:MM:SS.fff`, a client form of SPEC 5."""
    return dt.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def room_frame(command: str, msg_from: str, room: str, message: str = "",
               sent_timestamp: str | None = None) -> dict[str, str]:
    """A room-socket frame (SPEC 5), by default at a fresh instant of this module's clock."""
    return frames.frame(command, msg_from, room, message,
                        sent_timestamp if sent_timestamp is not None else plain(new_instant()))


def history_frame(messages: list[dict[str, str]]) -> dict[str, Any]:
    """The frame a room socket gets on connect for these messages (as the clients sent them)."""
    return {"command": "fetch_room_msgs", "all": "True", "messages": messages}


def as_history(sent: dict[str, str], when: datetime) -> dict[str, str]:
    """A sent `room_msg` as the history lists it: the same, with the fetch-format timestamp."""
    return {**sent, "sent_timestamp": iso(when)}


async def create_room(client: TestClient, name: str, password: str | None = None,
                      **kwargs: Any) -> aiohttp.ClientResponse:
    """POST /chat/special/room."""
    body: dict[str, Any] = {"room_name": name}
    if password is not None:
        body["password"] = password
    return await client.post("/chat/special/room", json=body, **kwargs)


async def new_public_room(client: TestClient, creator: str) -> str:
    """Create a public room, which must succeed; returns its name."""
    name = new_room()
    resp = await create_room(client, name)
    assert resp.status == 201, await resp.text()
    assert await resp.json() == {"room_name": name, "created_by": creator, "private": False}
    return name


async def open_room(client: TestClient, room: str) -> tuple[WS, dict[str, Any]]:
    """Open a room socket; returns it with the first frame it gets (the history)."""
    ws = await client.ws_connect(f"/ws/chat/room/{room}/")
    return ws, await recv(ws)


async def open_empty_room(client: TestClient, room: str) -> WS:
    """Open a room socket on a room without history."""
    ws, first = await open_room(client, room)
    assert first == history_frame([]), first
    return ws


async def send_room_msg(ws: WS, msg_from: str, room: str, text: str,
                        when: datetime | None = None) -> tuple[dict[str, str], datetime]:
    """Send a `room_msg` and wait for its broadcast back to this socket (the confirmation)."""
    when = when or new_instant()
    sent = room_frame("room_msg", msg_from, room, text, plain(when))
    await ws.send_json(sent)
    assert await recv(ws) == sent
    return sent, when


def stored_room_messages(config: Config, room: str) -> list[tuple[str, str]]:
    """(msg_from, message) of every stored row of `room`, read on a connection of its own."""
    return db_rows(config.database,  # type: ignore[return-value]
                   "SELECT msg_from, message FROM room_messages WHERE room = ? ORDER BY id", (room,))


LoginOn = Callable[[TestServer, str], Awaitable[TestClient]]


@pytest.fixture
def login_on(aiohttp_client: AiohttpClient) -> LoginOn:
    """Register `phone` on a server the test built itself; returns its logged-in client."""
    async def login(srv: TestServer, phone: str) -> TestClient:
        client = await aiohttp_client(srv)
        resp = await client.post("/register", data={"phone": phone, "name": f"user {phone}",
                                                    "password": PASSWORD}, allow_redirects=False)
        assert resp.status == 302, await resp.text()
        return client
    return login


async def server_with_rooms(aiohttp_server: AiohttpServer, config: Config, *, history: int,
                            keep: int) -> tuple[TestServer, Config]:
    """A server like the `server` fixture's, with other `[rooms]` settings."""
    cfg = dataclasses.replace(config, rooms=Rooms(history=history, keep=keep))
    return await aiohttp_server(create_app(cfg)), cfg


# -- POST /chat/special/room, GET /chat/info/room ----------------------------------------------


async def test_create_room_then_read_it(as_user: UserFactory) -> None:
    a, b = new_phone(), new_phone()
    alice, bob = await as_user(a), await as_user(b)
    name = await new_public_room(alice, a)
    # The creator's phone only to the creator (issue 12, finding 6).
    for client, created_by in ((alice, a), (bob, None)):
        expected = {"room_name": name, "created_by": created_by, "private": False}
        resp = await client.get("/chat/info/room", params={"room_name": name})
        assert resp.status == 200
        assert await resp.json() == expected
        rooms = (await (await client.get("/chat/info")).json())["rooms"]
        assert rooms == [expected]


async def test_create_taken_room_is_409(as_user: UserFactory) -> None:
    a, b = new_phone(), new_phone()
    alice, bob = await as_user(a), await as_user(b)
    name = await new_public_room(alice, a)
    await assert_json_error(await create_room(bob, name), 409)
    await assert_json_error(await create_room(alice, name, ROOM_PASSWORD), 409)
    # The room is still the first one: public, created by A.
    resp = await alice.get("/chat/info/room", params={"room_name": name})
    assert await resp.json() == {"room_name": name, "created_by": a, "private": False}


@pytest.mark.parametrize("room_name", [
    "", "a b", "x" * 65, "caf\u00e9", "a/b", "a.b", "\u0661\u0662", 42, None, ["lobby"],
], ids=["empty", "space", "65-chars", "non-ascii", "slash", "dot", "unicode-digits", "number",
        "null", "list"])
async def test_create_room_bad_name_is_400(as_user: UserFactory, room_name: object) -> None:
    client = await as_user(new_phone())
    resp = await client.post("/chat/special/room", json={"room_name": room_name})
    await assert_json_error(resp, 400)
    assert (await (await client.get("/chat/info")).json())["rooms"] == []


@pytest.mark.parametrize("body", ["not json", "[]", '"lobby"', "{}"],
                         ids=["not-json", "array", "string", "no-name"])
async def test_create_room_bad_body_is_400(as_user: UserFactory, body: str) -> None:
    client = await as_user(new_phone())
    resp = await client.post("/chat/special/room", data=body,
                             headers={"Content-Type": "application/json"})
    await assert_json_error(resp, 400)


async def test_room_name_of_64_chars_is_accepted(as_user: UserFactory) -> None:
    a = new_phone()
    client = await as_user(a)
    name = "A-z_9" * 12 + "abcd"
    assert len(name) == 64
    resp = await create_room(client, name)
    assert resp.status == 201
    ws, first = await open_room(client, name)
    assert first == history_frame([])
    await ws.close()


@pytest.mark.parametrize("password", ["short", "", "x7#kq9!mz", "x" * 1025, "\u00e9" * 513,
                                      "1234567890", 12345678, ["pw"]],
                         ids=["5-chars", "empty", "9-chars", "1025-bytes", "1026-utf8-bytes",
                              "common", "number", "list"])
async def test_create_private_room_bad_password_is_400(as_user: UserFactory,
                                                       password: object) -> None:
    client = await as_user(new_phone())
    name = new_room()
    resp = await client.post("/chat/special/room", json={"room_name": name, "password": password})
    await assert_json_error(resp, 400)
    await assert_json_error(await client.get("/chat/info/room", params={"room_name": name}), 404)


async def test_create_room_logged_out_is_401(aiohttp_client: AiohttpClient,
                                             server: TestServer) -> None:
    client = await aiohttp_client(server)
    await assert_json_error(await create_room(client, new_room()), 401)
    await assert_json_error(await client.get("/chat/info/room", params={"room_name": "x"}), 401)


@pytest.mark.parametrize("headers", [{"Origin": "http://evil.example"},
                                     {"Sec-Fetch-Site": "cross-site"}], ids=repr)
async def test_create_room_cross_site_is_403(as_user: UserFactory,
                                             headers: dict[str, str]) -> None:
    client = await as_user(new_phone())
    name = new_room()
    await assert_json_error(await create_room(client, name, headers=headers), 403)
    await assert_json_error(await client.get("/chat/info/room", params={"room_name": name}), 404)


@pytest.mark.parametrize("query", ["", "?room_name=", "?room_name=a%20b", "?room_name=" + "x" * 65],
                         ids=["missing", "empty", "space", "65-chars"])
async def test_info_room_bad_name_is_400(as_user: UserFactory, query: str) -> None:
    client = await as_user(new_phone())
    await assert_json_error(await client.get(f"/chat/info/room{query}"), 400)


async def test_info_room_unknown_is_404(as_user: UserFactory) -> None:
    client = await as_user(new_phone())
    await assert_json_error(await client.get("/chat/info/room",
                                             params={"room_name": new_room()}), 404)


# -- the room socket's handshake ----------------------------------------------------------------


@pytest.mark.parametrize("path", ["never-made", "bad.name", "x" * 65, "caf%C3%A9"],
                         ids=["unknown", "dot", "65-chars", "non-ascii"])
async def test_room_socket_unknown_or_malformed_room_is_404(as_user: UserFactory,
                                                            path: str) -> None:
    client = await as_user(new_phone())
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await client.ws_connect(f"/ws/chat/room/{path}/")
    assert err.value.status == 404


async def test_room_socket_logged_out_is_403(aiohttp_client: AiohttpClient, server: TestServer,
                                             as_user: UserFactory) -> None:
    a = new_phone()
    name = await new_public_room(await as_user(a), a)
    stranger = await aiohttp_client(server)
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await stranger.ws_connect(f"/ws/chat/room/{name}/")
    assert err.value.status == 403


async def test_room_socket_foreign_origin_is_403(as_user: UserFactory) -> None:
    a = new_phone()
    client = await as_user(a)
    name = await new_public_room(client, a)
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await client.ws_connect(f"/ws/chat/room/{name}/", headers={"Origin": "http://evil.example"})
    assert err.value.status == 403


async def test_logout_closes_room_socket(as_user: UserFactory) -> None:
    a = new_phone()
    client = await as_user(a)
    name = await new_public_room(client, a)
    ws = await open_empty_room(client, name)
    assert (await client.post("/logout", allow_redirects=False)).status == 302
    msg = await ws.receive(timeout=TIMEOUT)
    assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING), msg
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await client.ws_connect(f"/ws/chat/room/{name}/")
    assert err.value.status == 403


# -- history on connect, broadcast --------------------------------------------------------------


async def test_room_msg_reaches_every_socket_in_the_room_and_no_other(
        as_user: UserFactory) -> None:
    a, b, c = new_phone(), new_phone(), new_phone()
    alice, bob, carol = await as_user(a), await as_user(b), await as_user(c)
    name = await new_public_room(alice, a)
    other = await new_public_room(carol, c)
    a1, a2 = await open_empty_room(alice, name), await open_empty_room(alice, name)
    b1 = await open_empty_room(bob, name)
    c_other = await open_empty_room(carol, other)

    sent = room_frame("room_msg", a, name, "hello room")
    await a1.send_json(sent)
    # The sender's own socket gets it as its confirmation, the frame as sent.
    for ws in (a1, a2, b1):
        assert await recv(ws) == sent
    await assert_quiet(c_other)
    for ws in (a1, a2, b1):
        await assert_quiet(ws)  # exactly once each
    for ws in (a1, a2, b1, c_other):
        await ws.close()


async def test_history_on_connect_oldest_first_in_fetch_format(as_user: UserFactory) -> None:
    """Acceptance order, not the order of the client clocks; every client timestamp form comes
    back in the fetch form of SPEC 5."""
    a, b = new_phone(), new_phone()
    alice, bob = await as_user(a), await as_user(b)
    name = await new_public_room(alice, a)
    ws = await open_empty_room(alice, name)
    day = datetime.fromisoformat(TODAY).replace(tzinfo=UTC)  # client clocks decreasing
    spellings = [
        (day.replace(hour=3, minute=2, second=3, microsecond=7), f"{TODAY} 03:02:03.000007"),
        (day.replace(hour=2, minute=2, second=3, microsecond=120_000), f"{TODAY}T02:02:03.12Z"),
        (day.replace(hour=1, minute=2, second=3), f"{TODAY} 01:02:03"),
    ]
    sent = []
    for n, (_, ts) in enumerate(spellings):
        frame = room_frame("room_msg", a, name, f"message {n} \u00e9\U0001f600", ts)
        await ws.send_json(frame)
        assert await recv(ws) == frame
        sent.append(frame)
    b_ws, first = await open_room(bob, name)
    assert first == history_frame([as_history(s, when) for s, (when, _) in zip(sent, spellings, strict=True)])
    for m in first["messages"]:
        assert FETCH_TS.fullmatch(m["sent_timestamp"]), m
    # B's later messages follow in the history of the next socket, after A's.
    mine, when = await send_room_msg(b_ws, b, name, "from bob")
    assert await recv(ws) == mine
    a_ws2, again = await open_room(alice, name)
    assert again["messages"][-1] == as_history(mine, when)
    assert again["messages"][:-1] == first["messages"]
    for socket in (ws, b_ws, a_ws2):
        await socket.close()


async def test_history_is_limited_to_rooms_history(aiohttp_server: AiohttpServer, config: Config,
                                                   login_on: LoginOn) -> None:
    srv, cfg = await server_with_rooms(aiohttp_server, config, history=3, keep=1000)
    a, b = new_phone(), new_phone()
    alice, bob = await login_on(srv, a), await login_on(srv, b)
    name = await new_public_room(alice, a)
    ws = await open_empty_room(alice, name)
    sent = [await send_room_msg(ws, a, name, f"m{n}") for n in range(5)]
    b_ws, first = await open_room(bob, name)
    assert first == history_frame([as_history(s, w) for s, w in sent[-3:]])
    # Only the socket's view is limited: all five are still stored.
    assert stored_room_messages(cfg, name) == [(a, f"m{n}") for n in range(5)]
    await ws.close()
    await b_ws.close()


async def test_stored_history_is_bounded_by_rooms_keep(aiohttp_server: AiohttpServer,
                                                       config: Config,
                                                       login_on: LoginOn) -> None:
    """More than `rooms.keep` messages: the oldest are dropped from the database, per room."""
    srv, cfg = await server_with_rooms(aiohttp_server, config, history=50, keep=5)
    a, b = new_phone(), new_phone()
    alice, bob = await login_on(srv, a), await login_on(srv, b)
    name, other = await new_public_room(alice, a), await new_public_room(bob, b)
    o_ws = await open_empty_room(bob, other)
    kept_elsewhere = [await send_room_msg(o_ws, b, other, f"other {n}") for n in range(2)]

    ws = await open_empty_room(alice, name)
    # One at a time, then a burst that the store may commit as one batch.
    sent = [await send_room_msg(ws, a, name, f"m{n}") for n in range(4)]
    burst = [(room_frame("room_msg", a, name, f"m{n}", plain(w)), w)
             for n, w in ((n, new_instant()) for n in range(4, 9))]
    for frame, _ in burst:
        await ws.send_json(frame)
    for frame, _ in burst:
        assert await recv(ws) == frame
    sent += burst

    assert stored_room_messages(cfg, name) == [(a, f"m{n}") for n in range(4, 9)]
    # The other room is bounded on its own, not by this room's traffic.
    assert stored_room_messages(cfg, other) == [(b, "other 0"), (b, "other 1")]
    _, first = await open_room(bob, name)
    assert first == history_frame([as_history(s, w) for s, w in sent[-5:]])
    _, first_other = await open_room(alice, other)
    assert first_other == history_frame([as_history(s, w) for s, w in kept_elsewhere])
    await ws.close()
    await o_ws.close()


async def test_retry_of_a_room_msg_is_not_broadcast_twice(config: Config,
                                                          as_user: UserFactory) -> None:
    a, b = new_phone(), new_phone()
    alice, bob = await as_user(a), await as_user(b)
    name = await new_public_room(alice, a)
    a_ws, b_ws = await open_empty_room(alice, name), await open_empty_room(bob, name)
    when = new_instant()
    sent = room_frame("room_msg", a, name, "once", plain(when))
    await a_ws.send_json(sent)
    assert await recv(a_ws) == sent
    assert await recv(b_ws) == sent
    # The same identity, the same instant spelled in the ISO form: confirmed to the sender again.
    retry = {**sent, "sent_timestamp": iso(when)}
    await a_ws.send_json(retry)
    assert await recv(a_ws) == retry
    await assert_quiet(b_ws)
    await assert_quiet(a_ws)
    assert stored_room_messages(config, name) == [(a, "once")]
    _, first = await open_room(bob, name)
    assert first == history_frame([as_history(sent, when)])
    # The same instant from another user is another message.
    theirs = room_frame("room_msg", b, name, "same time", plain(when))
    await b_ws.send_json(theirs)
    assert await recv(b_ws) == theirs
    assert await recv(a_ws) == theirs
    await a_ws.close()
    await b_ws.close()



@pytest.mark.parametrize("read", ["after", "before"])
async def test_history_comes_first_and_holds_a_concurrent_message_once(
        store: Store, as_user: UserFactory, monkeypatch: pytest.MonkeyPatch, read: str) -> None:
    """A message sent while a new socket's history is being read (the read held here, as a slow
    read would be) reaches that socket once, after the history frame."""
    a, b = new_phone(), new_phone()
    alice, bob = await as_user(a), await as_user(b)
    name = await new_public_room(alice, a)
    a_ws = await open_empty_room(alice, name)
    old, _ = await send_room_msg(a_ws, a, name, "before B")

    entered, release = asyncio.Event(), asyncio.Event()
    room_history = store.room_history

    async def slow_room_history(room: str, limit: int) -> Any:
        entered.set()
        if read == "before":
            history = await room_history(room, limit)
            await release.wait()
            return history
        await release.wait()
        return await room_history(room, limit)

    monkeypatch.setattr(store, "room_history", slow_room_history)
    b_ws = await bob.ws_connect(f"/ws/chat/room/{name}/")
    async with asyncio.timeout(TIMEOUT):
        await entered.wait()
    sent = room_frame("room_msg", a, name, "while B connects")
    await a_ws.send_json(sent)
    try:  # here the message is committed and broadcast while B's history is held...
        confirmed = await recv(a_ws, timeout=HELD)
    except TimeoutError:  # ...unless the server makes it wait until B's socket is set up
        release.set()
        confirmed = await recv(a_ws)
    assert confirmed == sent
    release.set()

    first = await recv(b_ws)
    assert first["command"] == "fetch_room_msgs", first
    frames = [*first["messages"]]
    while True:
        try:
            frames.append(await recv(b_ws, timeout=QUIET))
        except TimeoutError:
            break
    texts = [f["message"] for f in frames]
    assert texts == [old["message"], sent["message"]], texts
    await a_ws.close()
    await b_ws.close()


# -- is_room_typing -----------------------------------------------------------------------------


async def recv_until_room_msg(ws: WS) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Frames on `ws` up to the next `room_msg`: (those before it, the room_msg)."""
    before: list[dict[str, Any]] = []
    while True:
        data = await recv(ws)
        if data["command"] == "room_msg":
            return before, data
        before.append(data)


async def test_is_room_typing_is_broadcast_as_is_typing_once_a_second(
        config: Config, as_user: UserFactory) -> None:
    a, b = new_phone(), new_phone()
    alice, bob = await as_user(a), await as_user(b)
    name = await new_public_room(alice, a)
    a_ws, b_ws = await open_empty_room(alice, name), await open_empty_room(bob, name)
    for _ in range(3):
        await a_ws.send_json(room_frame("is_room_typing", a, name, "ignored"))
    # A room_msg after the typing frames: whatever they caused arrives before it.
    sent = room_frame("room_msg", a, name, "typed")
    await a_ws.send_json(sent)
    before, msg = await recv_until_room_msg(b_ws)
    assert msg == sent
    assert len(before) == 1, before
    typing = before[0]
    assert set(typing) == {"command", "msg_from", "msg_to", "sent_timestamp"}, typing
    assert (typing["command"], typing["msg_from"], typing["msg_to"]) == ("is_typing", a, name)
    assert SERVER_TS.fullmatch(typing["sent_timestamp"]), typing
    # The sender may see its own typing, but at most once too, and never an error.
    own, msg = await recv_until_room_msg(a_ws)
    assert msg == sent
    assert len(own) <= 1 and all(f["command"] == "is_typing" for f in own), own

    # The limit is per socket: B types at once although A just did.
    await b_ws.send_json(room_frame("is_room_typing", b, name))
    typing = await recv(a_ws)
    assert (typing["command"], typing["msg_from"], typing["msg_to"]) == ("is_typing", b, name)
    # Never stored.
    assert stored_room_messages(config, name) == [(a, "typed")]
    # A second later A may type again (waiting out the rate window, not synchronising).
    await asyncio.sleep(1.1)
    await a_ws.send_json(room_frame("is_room_typing", a, name))
    frames = [await recv(b_ws)]
    if frames[0]["msg_from"] == b:  # B's own typing echoed back to B
        frames.append(await recv(b_ws))
    assert (frames[-1]["command"], frames[-1]["msg_from"]) == ("is_typing", a), frames
    await a_ws.close()
    await b_ws.close()


# -- error frames on a room socket (SPEC 5.5) ---------------------------------------------------


BAD_FRAMES: list[tuple[str, Callable[[str, str, str], Any], str]] = [
    ("msg_to-another-room", lambda a, b, room: room_frame("room_msg", a, "elsewhere", "hi"),
     "room_msg"),
    ("msg_to-a-phone", lambda a, b, room: room_frame("room_msg", a, b, "hi"), "room_msg"),
    ("msg_from-forged", lambda a, b, room: room_frame("room_msg", b, room, "hi"), "room_msg"),
    ("unknown-command", lambda a, b, room: room_frame("new_msg", a, room, "hi"), "new_msg"),
    ("receive-command", lambda a, b, room: room_frame("fetch_msgs", a, room, "hi"), "fetch_msgs"),
    ("empty-message", lambda a, b, room: room_frame("room_msg", a, room, ""), "room_msg"),
    ("too-long", lambda a, b, room: room_frame("room_msg", a, room, "x" * 4097), "room_msg"),
    ("bad-timestamp", lambda a, b, room: room_frame("room_msg", a, room, "hi", "yesterday"),
     "room_msg"),
    ("missing-field", lambda a, b, room: {k: v for k, v in room_frame("room_msg", a, room, "hi")
                                          .items() if k != "sent_timestamp"}, "room_msg"),
    ("message-not-string", lambda a, b, room: {**room_frame("room_msg", a, room), "message": 5},
     "room_msg"),
    ("command-not-string", lambda a, b, room: {**room_frame("room_msg", a, room, "hi"),
                                               "command": 1}, "invalid"),
    ("not-an-object", lambda a, b, room: ["room_msg"], "invalid"),
    ("not-json", lambda a, b, room: "{room_msg", "invalid"),
    ("binary", lambda a, b, room: b'{"command": "room_msg"}', "invalid"),
]


@pytest.mark.parametrize("make,type_", [(m, t) for _, m, t in BAD_FRAMES],
                         ids=[i for i, _, _ in BAD_FRAMES])
async def test_refused_room_frame_is_an_error_and_changes_nothing(
        config: Config, as_user: UserFactory, make: Callable[[str, str, str], Any],
        type_: str) -> None:
    a, b = new_phone(), new_phone()
    alice, bob = await as_user(a), await as_user(b)
    name = await new_public_room(alice, a)
    a_ws, b_ws = await open_empty_room(alice, name), await open_empty_room(bob, name)
    bad = make(a, b, name)
    if isinstance(bad, bytes):
        await a_ws.send_bytes(bad)
    elif isinstance(bad, str):
        await a_ws.send_str(bad)
    else:
        await a_ws.send_json(bad)
    assert_error(await recv(a_ws), type_, a, name)
    await assert_quiet(b_ws)
    assert stored_room_messages(config, name) == []
    # The socket stays open and works.
    sent, _ = await send_room_msg(a_ws, a, name, "after the error")
    assert await recv(b_ws) == sent
    await a_ws.close()
    await b_ws.close()


# -- private rooms ------------------------------------------------------------------------------


async def test_private_room_needs_its_password_once_per_user(
        config: Config, as_user: UserFactory) -> None:
    a, b = new_phone(), new_phone()
    alice, bob = await as_user(a), await as_user(b)
    name = new_room()
    resp = await create_room(alice, name, ROOM_PASSWORD)
    assert resp.status == 201, await resp.text()
    assert await resp.json() == {"room_name": name, "created_by": a, "private": True}
    room = {"room_name": name, "created_by": None, "private": True}  # as others see it
    resp = await bob.get("/chat/info/room", params={"room_name": name})
    assert await resp.json() == room  # no hash or password in the room's JSON

    # The creator's session was granted at creation.
    a_ws = await open_empty_room(alice, name)

    async def refused(client: TestClient) -> None:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await client.ws_connect(f"/ws/chat/room/{name}/")
        assert err.value.status == 403

    await refused(bob)
    # Four wrong attempts, then the right one: five, the room's limit per address (SPEC 10).
    for wrong in ({"room_name": name, "password": ROOM_PASSWORD.upper()},
                  {"room_name": name, "password": ""},
                  {"room_name": name, "password": 12345678},
                  {"room_name": name}):
        await assert_json_error(await bob.post("/chat/special/room/join", json=wrong), 403)
        await refused(bob)
    resp = await bob.post("/chat/special/room/join",
                          json={"room_name": name, "password": ROOM_PASSWORD})
    assert resp.status == 200
    assert await resp.json() == room
    b_ws = await open_empty_room(bob, name)
    sent, _ = await send_room_msg(b_ws, b, name, "let in")
    assert await recv(a_ws) == sent
    # Granted for the session: a second socket needs no second join.
    b_ws2, first = await open_room(bob, name)
    assert [m["message"] for m in first["messages"]] == ["let in"]

    # Granted to the user (issue 18, defect 7): a new login of Bob, or of the creator, is let in
    # without the password again; another user still is not.
    bob_again = await as_user(b)
    ws3, first = await open_room(bob_again, name)
    alice_again = await as_user(a)
    ws4, _ = await open_room(alice_again, name)
    await refused(await as_user(new_phone()))
    assert [m["message"] for m in first["messages"]] == ["let in"]
    for ws in (a_ws, b_ws, b_ws2, ws3, ws4):
        await ws.close()

    # The password is stored as a bcrypt hash, never as given.
    (stored,), = db_rows(config.database, "SELECT password_hash FROM rooms WHERE name = ?", (name,))
    assert bytes(stored).startswith(b"$hmac-sha256$$2") and ROOM_PASSWORD.encode() not in bytes(stored)


async def test_join_unknown_room_is_404_and_bad_name_400(as_user: UserFactory) -> None:
    client = await as_user(new_phone())
    resp = await client.post("/chat/special/room/join",
                             json={"room_name": new_room(), "password": ROOM_PASSWORD})
    await assert_json_error(resp, 404)
    resp = await client.post("/chat/special/room/join",
                             json={"room_name": "a b", "password": ROOM_PASSWORD})
    await assert_json_error(resp, 400)


async def test_join_private_room_cross_site_is_403(as_user: UserFactory) -> None:
    a, b = new_phone(), new_phone()
    alice, bob = await as_user(a), await as_user(b)
    name = new_room()
    assert (await create_room(alice, name, ROOM_PASSWORD)).status == 201
    resp = await bob.post("/chat/special/room/join",
                          json={"room_name": name, "password": ROOM_PASSWORD},
                          headers={"Origin": "http://evil.example"})
    await assert_json_error(resp, 403)
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await bob.ws_connect(f"/ws/chat/room/{name}/")
    assert err.value.status == 403


async def test_join_public_room_needs_no_password(as_user: UserFactory) -> None:
    a, b = new_phone(), new_phone()
    alice, bob = await as_user(a), await as_user(b)
    name = await new_public_room(alice, a)
    resp = await bob.post("/chat/special/room/join", json={"room_name": name})
    assert resp.status == 200
    assert await resp.json() == {"room_name": name, "created_by": None, "private": False}
    ws = await open_empty_room(bob, name)
    await ws.close()
