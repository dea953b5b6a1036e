"""Rate limits under load (SPEC 5.5, README "Rate limit"): per user, messages (`new_msg`,
`new_grp_msg`, `room_msg`) and typing events from all of the user's sockets together; per client
address, WebSocket handshakes and failed logins (room passwords included).

Each test builds a server with small limits (`conftest.with_limits`). A rate R per second is a
budget of 2R per two-second window that starts at the user's first event; a burst sent in
milliseconds therefore gets exactly 2R through. Should a slow machine take longer than a window to
send the burst, the tests accept what a second window allows, and no more.

A second client address is real: a client bound to 127.0.0.2 reaches the server on 127.0.0.1 over
loopback, and the server sees that address.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from chatserver.app import create_app
from chatserver.config import Config
from chatserver.keys import store_key
from helpers.accounts import PASSWORD, from_address, users_on
from helpers.configs import with_limits
from helpers.frames import assert_error, frame, new_phone
from helpers.ws import WS, open_personal, open_receive, recv, send_new_msg

# The same tests on every store and hub (tests/helpers/backends.py): with the Redis hub, the limits are
# counted in Redis.
pytestmark = pytest.mark.backends

ClientFactory = Callable[..., Awaitable[TestClient]]
ServerFactory = Callable[..., Awaitable[TestServer]]
WINDOW: Final = 2.0  # seconds of one per-second limit's window
OTHER_ADDRESS: Final = "127.0.0.2"
ROOM_PASSWORD: Final = "the room password"


def within_one_window(started: float) -> bool:
    """True when everything since `started` happened inside one window (the usual case)."""
    return time.monotonic() - started < WINDOW * 0.9


async def start(aiohttp_server: ServerFactory, config: Config, **limits: Any) -> TestServer:
    return await aiohttp_server(create_app(with_limits(config, **limits)))


async def handshake_status(client: TestClient | aiohttp.ClientSession, url: Any,
                           **kwargs: Any) -> int:
    """101 (and the socket closed again) or the status of the refused handshake."""
    try:
        ws = await client.ws_connect(url, **kwargs)
    except aiohttp.WSServerHandshakeError as e:
        return e.status
    await ws.close()
    return 101


async def post_login(client: TestClient | aiohttp.ClientSession, url: Any, phone: str,
                     password: str) -> aiohttp.ClientResponse:
    resp = await client.post(url, data={"phone": phone, "password": password},
                             allow_redirects=False)
    await resp.read()
    return resp


async def open_room(client: TestClient, name: str) -> WS:
    """A room socket past its history frame."""
    ws = await client.ws_connect(f"/ws/chat/room/{name}/")
    assert (await recv(ws))["command"] == "fetch_room_msgs"
    return ws


async def create(client: TestClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = await client.post(path, json=body)
    assert resp.status == 201, await resp.text()
    data = await resp.json()
    assert isinstance(data, dict)
    return data


# -- messages per user ---------------------------------------------------------------------------


async def test_messages_from_two_sockets_of_one_user_share_one_limit(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config) -> None:
    """Two send sockets of A (to B and to C), five messages each at once: 2R pass in all (a limit
    per socket would let 2R through each), the rest get the "rate limit" error, are not stored and
    reach no one. Another user is not limited by A's use."""
    rate = 2
    server = await start(aiohttp_server, config, messages_per_second=rate)
    store = server.app[store_key]
    login = users_on(aiohttp_client, server)
    a, b, c, d = new_phone(), new_phone(), new_phone(), new_phone()
    client_a, client_b, client_c, client_d = [await login(p) for p in (a, b, c, d)]
    inbox = {b: await open_receive(client_b, b), c: await open_receive(client_c, c)}
    sockets = {b: await open_personal(client_a, a, b), c: await open_personal(client_a, a, c)}
    sent: dict[str, list[dict[str, str]]] = {b: [], c: []}

    started = time.monotonic()
    for i in range(5):
        for peer in (b, c):
            f = frame("new_msg", a, peer, f"burst {i} to {peer}")
            sent[peer].append(f)
            await sockets[peer].send_json(f)
    replies = {peer: [await recv(sockets[peer]) for _ in range(5)] for peer in (b, c)}
    in_one_window = within_one_window(started)

    accepted: dict[str, list[dict[str, str]]] = {}
    for peer in (b, c):
        acked = {r["message"] for r in replies[peer] if r["command"] == "msg_sent"}
        accepted[peer] = [f for f in sent[peer] if f["sent_timestamp"] in acked]
        assert accepted[peer] == sent[peer][:len(accepted[peer])]  # spent in frame order
        for error in (r for r in replies[peer] if r["command"] != "msg_sent"):
            assert_error(error, "new_msg", a, peer)
            assert "rate" in error["message"], error
    total = sum(len(v) for v in accepted.values())
    assert total == 2 * rate if in_one_window else 2 * rate <= total <= 4 * rate, accepted

    for peer in (b, c):
        assert [m.message for m in await store.pending_for(peer)] == [
            f["message"] for f in accepted[peer]]
        assert [await recv(inbox[peer]) for _ in accepted[peer]] == accepted[peer]
    # D is not limited by A; D's message is the next thing B sees (nothing refused was pushed)
    from_d = await send_new_msg(await open_personal(client_d, d, b), d, b, "from D")
    assert await recv(inbox[b]) == from_d


async def test_personal_group_and_room_messages_share_the_users_limit(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config) -> None:
    rate = 2
    server = await start(aiohttp_server, config, messages_per_second=rate)
    store = server.app[store_key]
    login = users_on(aiohttp_client, server)
    a, b = new_phone(), new_phone()
    client_a, client_b = await login(a), await login(b)
    group = (await create(client_a, "/chat/special/group", {"name": "g", "participants": [b]}))
    key = group["key"]
    room = f"limits_{a}"
    await create(client_a, "/chat/special/room", {"room_name": room})
    personal = await open_personal(client_a, a, b)
    grp = await client_a.ws_connect(f"/ws/chat/group/{a}/{key}/")
    room_ws = await open_room(client_a, room)
    in_room_b = await open_room(client_b, room)

    async def say(ws: WS, command: str, to: str, text: str) -> dict[str, Any]:
        await ws.send_json(frame(command, a, to, text))
        return await recv(ws)

    started = time.monotonic()
    answers = [await say(personal, "new_msg", b, "p1"), await say(grp, "new_grp_msg", key, "g1"),
               await say(room_ws, "room_msg", room, "r1"), await say(personal, "new_msg", b, "p2")]
    over = [(await say(grp, "new_grp_msg", key, "g2"), "new_grp_msg", key),
            (await say(room_ws, "room_msg", room, "r2"), "room_msg", room),
            (await say(personal, "new_msg", b, "p3"), "new_msg", b)]
    if not within_one_window(started):
        pytest.skip("the machine took longer than one rate window to send six frames")
    assert [x["command"] for x in answers] == ["msg_sent", "msg_sent", "room_msg", "msg_sent"]
    for error, command, to in over:
        assert_error(error, command, a, to)
        assert "rate" in error["message"], error
    assert [m.message for m in await store.pending_for(b)] == ["p1", "p2"]
    assert [m.message for m in await store.pending_group_for(b)] == ["g1"]
    assert (await recv(in_room_b))["message"] == "r1"
    # B's own budget is untouched: B's message is the next thing in the room
    b_says = frame("room_msg", b, room, "b1")
    await in_room_b.send_json(b_says)
    assert await recv(in_room_b) == b_says
    history = await open_room(client_b, room)
    await history.close()
    assert [m.message for m in await store.room_history(room, 10)] == ["r1", "b1"]


# -- typing per user -----------------------------------------------------------------------------


async def test_typing_over_the_users_rate_is_dropped_silently_across_sockets(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config) -> None:
    """Four sockets of A to B, one `is_typing` each (each within its socket's one a second):
    B gets 2 x typing_per_second of them; A gets no error for the rest."""
    rate = 1
    server = await start(aiohttp_server, config, typing_per_second=rate)
    login = users_on(aiohttp_client, server)
    a, b = new_phone(), new_phone()
    client_a, client_b = await login(a), await login(b)
    inbox_b = await open_receive(client_b, b)
    sockets = [await open_personal(client_a, a, b) for _ in range(4)]

    started = time.monotonic()
    for ws in sockets:
        await ws.send_json(frame("is_typing", a, b))
    # The next answer on each socket is the acknowledgement of a message: no error for typing.
    messages = [await send_new_msg(ws, a, b, f"after typing {i}") for i, ws in enumerate(sockets)]
    in_one_window = within_one_window(started)
    seen: list[dict[str, Any]] = []
    while sum(1 for f in seen if f["command"] == "new_msg") < len(messages):
        seen.append(await recv(inbox_b))
    typing = [f for f in seen if f["command"] == "is_typing"]
    assert all(set(f) == {"command", "msg_from", "msg_to", "sent_timestamp"} and
               (f["msg_from"], f["msg_to"]) == (a, b) for f in typing), typing
    assert len(typing) == 2 * rate if in_one_window else 2 * rate <= len(typing) <= 4, seen
    assert [f for f in seen if f["command"] == "new_msg"] == messages


async def test_personal_group_and_room_typing_share_the_users_rate(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config) -> None:
    """With a budget of two: personal and group typing reach B, the room typing after them is
    dropped without an answer (neither A's room socket nor another member sees it)."""
    server = await start(aiohttp_server, config, typing_per_second=1)
    login = users_on(aiohttp_client, server)
    a, b, d = new_phone(), new_phone(), new_phone()
    client_a, client_b, client_d = await login(a), await login(b), await login(d)
    key = (await create(client_a, "/chat/special/group", {"name": "g", "participants": [b]}))["key"]
    room = f"typing_{a}"
    await create(client_a, "/chat/special/room", {"room_name": room})
    inbox_b = await open_receive(client_b, b)
    personal = await open_personal(client_a, a, b)
    grp = await client_a.ws_connect(f"/ws/chat/group/{a}/{key}/")
    room_a, room_d = await open_room(client_a, room), await open_room(client_d, room)

    started = time.monotonic()
    await personal.send_json(frame("is_typing", a, b))
    sent = await send_new_msg(personal, a, b, "one")
    await grp.send_json(frame("is_grp_typing", a, key))
    g = frame("new_grp_msg", a, key, "two")
    await grp.send_json(g)
    assert (await recv(grp))["command"] == "msg_sent"
    await room_a.send_json(frame("is_room_typing", a, room))
    r = frame("room_msg", a, room, "three")
    await room_a.send_json(r)
    # the next frame everyone in the room sees is the message: the typing was dropped
    assert await recv(room_a) == r
    assert await recv(room_d) == r
    if not within_one_window(started):
        pytest.skip("the machine took longer than one rate window to send six frames")
    got = [await recv(inbox_b) for _ in range(4)]
    assert [(f["command"], f["msg_from"]) for f in got] == [
        ("is_typing", a), ("new_msg", a), ("is_typing", f"{key}-{a}"), ("new_msg", f"{key}-{a}")]
    assert got[1] == sent and got[3]["message"] == g["message"]


# -- handshakes per address ----------------------------------------------------------------------


async def test_handshakes_over_the_limit_per_address_answer_429(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config) -> None:
    """Five handshakes a minute from 127.0.0.1, of any kind and any user: the sixth of every kind,
    for every user and for no user at all answers 429 with no upgrade. Sockets already open keep
    working, HTTP is not limited, and another address is not affected."""
    limit = 5
    server = await start(aiohttp_server, config, handshakes_per_minute=limit)
    login = users_on(aiohttp_client, server)
    a, c = new_phone(), new_phone()
    client_a, client_c = await login(a), await login(c)
    key = (await create(client_a, "/chat/special/group", {"name": "g", "participants": [c]}))["key"]
    room = f"hs_{a}"
    await create(client_a, "/chat/special/room", {"room_name": room})

    inbox_c = await open_receive(client_c, c)  # 1
    to_c = await open_personal(client_a, a, c)  # 2
    paths = {"receive": f"/ws/chat/special/{a}/", "group": f"/ws/chat/group/{a}/{key}/",
             "room": f"/ws/chat/room/{room}/"}
    for path in paths.values():  # 3, 4, 5
        assert await handshake_status(client_a, path) == 101, path

    for path in [*paths.values(), f"/ws/chat/personal/{a}/{c}/"]:
        assert await handshake_status(client_a, path) == 429, path
    assert await handshake_status(client_c, f"/ws/chat/special/{c}/") == 429
    anonymous = await aiohttp_client(server)
    assert await handshake_status(anonymous, f"/ws/chat/special/{a}/") == 429

    sent = await send_new_msg(to_c, a, c, "open sockets still work")
    assert await recv(inbox_c) == sent
    assert (await client_a.get("/chat/info")).status == 200

    async with from_address(OTHER_ADDRESS) as elsewhere:
        resp = await post_login(elsewhere, server.make_url("/login"), c, PASSWORD)
        assert resp.status == 302
        ws = await elsewhere.ws_connect(server.make_url(f"/ws/chat/special/{c}/"))
        await ws.send_json({"command": "fetch_msgs", "msg_to": c})
        reply = await recv(ws)
        assert reply["command"] == "fetch_msgs", reply
        await ws.close()


# -- failed logins per address -------------------------------------------------------------------


async def test_failed_logins_over_the_limit_answer_429_even_with_the_right_password(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config) -> None:
    """Failures count per address, whatever phone they name; below the limit the right password
    still works (and does not wipe the count: an attacker with an account of their own must not be
    able to reset it); at the limit every login from that address answers 429 without a session,
    while another address logs in."""
    failures = 3
    server = await start(aiohttp_server, config, login_failures=failures)
    login = users_on(aiohttp_client, server)
    a, b = new_phone(), new_phone()
    await login(a)
    await login(b)
    client = await aiohttp_client(server)

    assert (await post_login(client, "/login", a, "wrong password")).status == 401
    assert (await post_login(client, "/login", new_phone(), PASSWORD)).status == 401
    assert (await post_login(client, "/login", b, PASSWORD)).status == 302  # 2 of 3 used
    assert (await post_login(client, "/login", b, "wrong again")).status == 401  # 3 of 3

    fresh = await aiohttp_client(server)
    for phone, password in ((a, PASSWORD), (b, PASSWORD), (a, "wrong password")):
        resp = await post_login(fresh, "/login", phone, password)
        assert resp.status == 429, (phone, password, resp.status)
        assert "chat_session" not in resp.cookies
        assert resp.content_type == "text/html"
    chat = await fresh.get("/chat", allow_redirects=False)
    assert (chat.status, chat.headers.get("Location")) == (302, "/login")

    async with from_address(OTHER_ADDRESS) as elsewhere:
        resp = await post_login(elsewhere, server.make_url("/login"), a, PASSWORD)
        assert resp.status == 302


async def test_wrong_room_passwords_count_as_failed_logins(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config) -> None:
    """One wrong login and two wrong room passwords reach a limit of three: the right room password
    and the right login password both answer 429 then; another address is not affected."""
    server = await start(aiohttp_server, config, login_failures=3)
    login = users_on(aiohttp_client, server)
    a, b = new_phone(), new_phone()
    client_a, client_b = await login(a), await login(b)
    room = f"private_{a}"
    await create(client_a, "/chat/special/room", {"room_name": room, "password": ROOM_PASSWORD})

    assert (await post_login(await aiohttp_client(server), "/login", b, "nope")).status == 401
    for wrong in ("not it", ROOM_PASSWORD.upper()):
        resp = await client_b.post("/chat/special/room/join",
                                   json={"room_name": room, "password": wrong})
        assert resp.status == 403, await resp.text()
    resp = await client_b.post("/chat/special/room/join",
                               json={"room_name": room, "password": ROOM_PASSWORD})
    assert resp.status == 429, await resp.text()
    assert resp.content_type == "application/json"
    assert set(await resp.json()) == {"error"}
    assert await handshake_status(client_b, f"/ws/chat/room/{room}/") == 403  # not granted
    assert (await post_login(await aiohttp_client(server), "/login", b, PASSWORD)).status == 429

    async with from_address(OTHER_ADDRESS) as elsewhere:
        assert (await post_login(elsewhere, server.make_url("/login"), b, PASSWORD)).status == 302
        resp = await elsewhere.post(server.make_url("/chat/special/room/join"),
                                    json={"room_name": room, "password": ROOM_PASSWORD})
        assert resp.status == 200, await resp.text()
        ws = await elsewhere.ws_connect(server.make_url(f"/ws/chat/room/{room}/"))
        assert (await recv(ws))["command"] == "fetch_room_msgs"
        await ws.close()


# -- acknowledgements per user (SPEC 10 acks_per_second) ------------------------------------------


async def answers_until_sent(ws: WS, msg_from: str, msg_to: str) -> list[dict[str, Any]]:
    """Send a `new_msg` and return every frame answered on `ws` before its `msg_sent`: the
    socket answers in the order of its frames, so these are the answers to what was sent before."""
    sent = frame("new_msg", msg_from, msg_to, "after the acknowledgements")
    await ws.send_json(sent)
    before = []
    while (reply := await recv(ws))["command"] != "msg_sent":
        before.append(reply)
    assert reply["message"] == sent["sent_timestamp"], reply
    return before


async def test_acknowledgements_over_the_users_rate_get_the_error_and_change_nothing(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config) -> None:
    """Two sockets of A to B, three acknowledgements each (msg_received and msg_read): 2R pass in
    all, the rest get the "rate limit" error, delete nothing and reach no one."""
    rate = 2
    server = await start(aiohttp_server, config, acks_per_second=rate)
    store = server.app[store_key]
    login = users_on(aiohttp_client, server)
    a, b = new_phone(), new_phone()
    client_a, client_b = await login(a), await login(b)
    inbox_b = await open_receive(client_b, b, probe="fetch_msgs")
    to_a = await open_personal(client_b, b, a)
    stored = [await send_new_msg(to_a, b, a, f"m{i}") for i in range(6)]
    sockets = [await open_personal(client_a, a, b) for _ in range(2)]

    started = time.monotonic()
    for i, m in enumerate(stored):
        command = "msg_read" if i == 5 else "msg_received"
        await sockets[i % 2].send_json(frame(command, a, b, m["sent_timestamp"]))
    errors = [e for ws in sockets for e in await answers_until_sent(ws, a, b)]
    in_one_window = within_one_window(started)
    for error in errors:
        assert_error(error, error["type"], a, b)
        assert error["type"] in ("msg_received", "msg_read") and "rate" in error["message"], error
    passed = 6 - len(errors)
    assert passed == 2 * rate if in_one_window else 2 * rate <= passed <= 4 * rate, errors

    # B was told of each acknowledgement that passed, and of nothing refused.
    seen = []
    while sum(f["command"] == "new_msg" for f in seen) < 2:  # the two messages sent after
        seen.append(await recv(inbox_b))
    acks = [f for f in seen if f["command"] in ("msg_received", "msg_read")]
    assert len(acks) == passed, seen
    deleted = {f["message"] for f in acks if f["command"] == "msg_received"}
    assert [m.message for m in await store.pending_for(a)] == [
        m["message"] for m in stored if m["sent_timestamp"] not in deleted]


async def test_group_acknowledgements_share_the_users_rate(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config) -> None:
    """grp_msg_received and grp_msg_read count against the same budget as the personal ones."""
    rate = 1
    server = await start(aiohttp_server, config, acks_per_second=rate)
    store = server.app[store_key]
    login = users_on(aiohttp_client, server)
    a, b = new_phone(), new_phone()
    client_a, client_b = await login(a), await login(b)
    key = (await create(client_b, "/chat/special/group", {"name": "g", "participants": [a]}))["key"]
    grp_b = await client_b.ws_connect(f"/ws/chat/group/{b}/{key}/")
    sent = []
    for i in range(3):
        sent.append(frame("new_grp_msg", b, key, f"g{i}"))
        await grp_b.send_json(sent[-1])
        assert (await recv(grp_b))["command"] == "msg_sent"
    grp_a = await client_a.ws_connect(f"/ws/chat/group/{a}/{key}/")

    started = time.monotonic()
    for command, m in (("grp_msg_received", sent[0]), ("grp_msg_read", sent[0]),
                       ("grp_msg_received", sent[1])):
        await grp_a.send_json(frame(command, a, b, m["sent_timestamp"]))
    # A group socket answers a frame it refuses at once; the third is over 2R and refused.
    error = await recv(grp_a)
    if not within_one_window(started):
        pytest.skip("the machine took longer than one rate window to send three frames")
    assert_error(error, "grp_msg_received", a, key)
    assert "rate" in error["message"], error
    assert [m.message for m in await store.pending_group_for(a)] == ["g1", "g2"]
