"""The room catalogue (SPEC 13, issue 18): a room's `category`, `GET /chat/rooms` (search, filter,
order, limit, the private flag, users online in each room, in one process and across two),
saved rooms (`PUT` / `DELETE /chat/rooms/saved`, `saved_rooms` in `/chat/info`), and closing a
room by its creator (`DELETE /chat/special/room`: history, grants and saved rows gone, every
socket in it closed with 4404, on every server sharing the hub). Bad input is refused with a
clear error and changes nothing."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from chatserver.app import create_app
from chatserver.config import Config
from chatserver.stores.base import MAX_SAVED_ROOMS, Store
from helpers import backends
from helpers.accounts import PASSWORD, UserFactory, users_on
from helpers.backends import db_rows
from helpers.frames import frame, new_phone
from helpers.timing import POLL, TIMEOUT
from helpers.ws import WS, assert_json_error, assert_quiet, recv, wait_closed

# The same tests on every store and hub (tests/helpers/backends.py).
pytestmark = pytest.mark.backends

ROOM_PASSWORD = "open sesame"
ClientFactory = Callable[..., Awaitable[TestClient]]
ServerFactory = Callable[..., Awaitable[TestServer]]
# Two servers on one store and one hub, as two processes of a deployment are: Redis carries
# what crosses (with SQLite, or with PostgreSQL as `serve --workers` needs).
ACROSS = pytest.mark.backends(backends.REDIS, "postgres+redis")

_rooms = itertools.count(1)


def new_room(tag: str = "cat") -> str:
    return f"{tag}_{next(_rooms)}-r"


async def create_room(client: TestClient, name: str, *, password: str | None = None,
                      **fields: Any) -> aiohttp.ClientResponse:
    body: dict[str, Any] = {"room_name": name, **fields}
    if password is not None:
        body["password"] = password
    return await client.post("/chat/special/room", json=body)


async def made(client: TestClient, name: str, **fields: Any) -> str:
    resp = await create_room(client, name, **fields)
    assert resp.status == 201, await resp.text()
    return name


async def catalogue(client: TestClient, **params: str) -> list[dict[str, Any]]:
    resp = await client.get("/chat/rooms", params=params)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert set(body) == {"rooms"}, body
    for room in body["rooms"]:
        assert set(room) == {"room_name", "category", "private", "online", "saved", "mine"}, room
    return body["rooms"]


async def listed(client: TestClient, name: str) -> dict[str, Any]:
    """The catalogue's entry of room `name` (searched by its full name)."""
    found = [r for r in await catalogue(client, q=name) if r["room_name"] == name]
    assert len(found) == 1, found
    return found[0]


async def online_becomes(client: TestClient, name: str, n: int) -> None:
    """Poll the catalogue until room `name` counts `n` users online (a socket's leaving is
    counted once its handler has run, after its close handshake: no event says when)."""
    deadline = time.monotonic() + TIMEOUT
    while (got := (await listed(client, name))["online"]) != n:
        assert time.monotonic() < deadline, f"online stayed {got}, expected {n}"
        await asyncio.sleep(POLL)


async def enter(client: TestClient, name: str) -> WS:
    """A room socket, served (its history frame arrived: it is in the room's registry)."""
    ws = await client.ws_connect(f"/ws/chat/room/{name}/")
    assert (await recv(ws))["command"] == "fetch_room_msgs"
    return ws


async def info(client: TestClient) -> dict[str, Any]:
    resp = await client.get("/chat/info")
    assert resp.status == 200
    return await resp.json()


async def save(client: TestClient, name: str, method: str = "PUT") -> aiohttp.ClientResponse:
    return await client.request(method, "/chat/rooms/saved", params={"room_name": name})


async def close(client: TestClient, name: str, **kwargs: Any) -> aiohttp.ClientResponse:
    return await client.delete("/chat/special/room", params={"room_name": name}, **kwargs)


async def room_exists(client: TestClient, name: str) -> bool:
    resp = await client.get("/chat/info/room", params={"room_name": name})
    assert resp.status in (200, 404), await resp.text()
    return resp.status == 200


# -- category ----------------------------------------------------------------------------------


async def test_category_is_stored_trimmed_and_listed(as_user: UserFactory) -> None:
    a = new_phone()
    alice = await as_user(a)
    sports = await made(alice, new_room(), category="  Sports  ")
    plain = await made(alice, new_room())
    nulled = await made(alice, new_room(), category=None)
    # 32 characters, an emoji sequence joined by a zero-width joiner counted in code points.
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467" + "f" * 27
    assert len(family) == 32
    fam = await made(alice, new_room(), category=family)
    assert (await listed(alice, sports))["category"] == "Sports"
    assert (await listed(alice, plain))["category"] is None
    assert (await listed(alice, nulled))["category"] is None
    assert (await listed(alice, fam))["category"] == family


@pytest.mark.parametrize("category", [
    "", "   ", "x" * 33, "a\u0000b", "a\nb", "a\u202eb", "a\u200bb", 42, ["Sports"], {"a": 1}, True,
], ids=["empty", "blank", "33-chars", "nul", "newline", "rtl-override", "zero-width-space",
        "number", "list", "object", "bool"])
async def test_bad_category_is_400_and_creates_nothing(as_user: UserFactory,
                                                       category: object) -> None:
    alice = await as_user(new_phone())
    name = new_room()
    error = await assert_json_error(await create_room(alice, name, category=category), 400)
    assert "category" in error.lower()
    assert not await room_exists(alice, name)
    assert await catalogue(alice) == []


async def test_bad_category_does_not_use_up_the_daily_rooms(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config) -> None:
    cfg = dataclasses.replace(config, limits=dataclasses.replace(config.limits, rooms_per_day=1))
    alice = await users_on(aiohttp_client, await aiohttp_server(create_app(cfg)))(new_phone())
    await assert_json_error(await create_room(alice, new_room(), category=""), 400)
    await made(alice, new_room(), category="ok")


# -- GET /chat/rooms ---------------------------------------------------------------------------


async def test_search_is_case_insensitive_and_wildcards_are_plain(as_user: UserFactory) -> None:
    alice = await as_user(new_phone())
    tag = f"Srch{next(_rooms)}"
    underscore = await made(alice, f"{tag}_one")
    letter = await made(alice, f"{tag}Xone")
    other = await made(alice, f"other{next(_rooms)}")
    names = lambda rooms: {r["room_name"] for r in rooms}  # noqa: E731
    assert names(await catalogue(alice, q=tag.upper())) == {underscore, letter}
    assert names(await catalogue(alice, q=f"  {tag.lower()}  ")) == {underscore, letter}
    # `_` and `%` are characters here, not LIKE's wildcards.
    assert names(await catalogue(alice, q=f"{tag}_o")) == {underscore}
    assert names(await catalogue(alice, q="%")) == set()
    assert names(await catalogue(alice, q="\\")) == set()
    assert names(await catalogue(alice, q="caf\u00e9")) == set()
    # No q, or an empty one: every room.
    assert names(await catalogue(alice)) == {underscore, letter, other}
    assert names(await catalogue(alice, q="")) == {underscore, letter, other}


async def test_category_filter_is_exact(as_user: UserFactory) -> None:
    alice = await as_user(new_phone())
    games = await made(alice, new_room(), category="Games")
    games2 = await made(alice, new_room(), category=" Games ")
    await made(alice, new_room(), category="games")
    await made(alice, new_room(), category="Games night")
    await made(alice, new_room())
    got = await catalogue(alice, category="Games")
    assert [r["room_name"] for r in got] == [games2, games]  # newest first
    assert all(r["category"] == "Games" for r in got)
    # Both filters together; an empty category is no filter.
    assert [r["room_name"] for r in await catalogue(alice, q=games, category="Games")] == [games]
    assert len(await catalogue(alice, category="")) == 5
    assert await catalogue(alice, category="Nothing") == []


async def test_newest_first_at_most_100(as_user: UserFactory, store: Store) -> None:
    a = new_phone()
    alice = await as_user(a)
    # Made through the store (the daily limit is the API's); names run the other way from the
    # creation order, so that ordering by name would fail.
    names = [f"n{999 - i:03d}" for i in range(101)]
    for name in names:
        assert await store.create_room(name, a, None)
    got = [r["room_name"] for r in await catalogue(alice)]
    assert got == list(reversed(names))[:100]
    assert names[0] not in got  # the oldest is past the limit


@pytest.mark.parametrize("query", [
    {"q": "x" * 65}, {"q": "a\u0000"}, {"q": "a\u202e"}, {"category": "x" * 33},
    {"category": "a\tb"}, {"category": "a\u200bb"},
], ids=["q-65", "q-nul", "q-rtl-override", "category-33", "category-tab", "category-zwsp"])
async def test_bad_query_is_400(as_user: UserFactory, query: dict[str, str]) -> None:
    alice = await as_user(new_phone())
    await made(alice, new_room())
    await assert_json_error(await alice.get("/chat/rooms", params=query), 400)


async def test_64_character_query_is_accepted(as_user: UserFactory) -> None:
    alice = await as_user(new_phone())
    name = await made(alice, "Q" * 64)
    assert [r["room_name"] for r in await catalogue(alice, q="q" * 64)] == [name]


async def test_catalogue_needs_a_login(aiohttp_client: ClientFactory, server: TestServer) -> None:
    client = await aiohttp_client(server)
    await assert_json_error(await client.get("/chat/rooms"), 401)
    await assert_json_error(await save(client, "lobby"), 401)
    await assert_json_error(await save(client, "lobby", "DELETE"), 401)
    await assert_json_error(await close(client, "lobby"), 401)


async def test_private_rooms_are_listed_without_their_activity(as_user: UserFactory) -> None:
    a, b, c = new_phone(), new_phone(), new_phone()
    alice, bob, carol = await as_user(a), await as_user(b), await as_user(c)
    secret = await made(alice, new_room("secret"), password=ROOM_PASSWORD, category="Club")
    lobby = await made(bob, new_room("lobby"))
    resp = await bob.post("/chat/special/room/join", json={"room_name": secret,
                                                             "password": ROOM_PASSWORD})
    assert resp.status == 200, await resp.text()
    ws = await enter(bob, secret)
    assert await listed(alice, secret) == {"room_name": secret, "category": "Club",
                                           "private": True, "online": 1, "saved": False,
                                           "mine": True}
    assert (await listed(bob, secret))["online"] == 1  # this session gave the password
    # Carol may see that it exists (its name is no secret), not who is in it.
    assert await listed(carol, secret) == {"room_name": secret, "category": "Club",
                                           "private": True, "online": 0, "saved": False,
                                           "mine": False}
    assert await listed(carol, lobby) == {"room_name": lobby, "category": None, "private": False,
                                          "online": 0, "saved": False, "mine": False}
    await ws.close()


# -- online ------------------------------------------------------------------------------------


async def test_online_counts_users_with_a_socket_in_the_room(as_user: UserFactory) -> None:
    a, b = new_phone(), new_phone()
    alice, bob = await as_user(a), await as_user(b)
    name = await made(alice, new_room())
    other = await made(alice, new_room())
    assert (await listed(bob, name))["online"] == 0
    first = await enter(alice, name)
    assert (await listed(bob, name))["online"] == 1
    second = await enter(await as_user(a), name)  # another device of the same user
    assert (await listed(bob, name))["online"] == 1
    third = await enter(bob, name)
    assert (await listed(alice, name))["online"] == 2
    assert (await listed(alice, other))["online"] == 0
    await third.close()
    await online_becomes(alice, name, 1)
    await first.close()
    await second.close()
    await online_becomes(alice, name, 0)


@ACROSS
async def test_online_counts_users_on_every_server(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config) -> None:
    one = await aiohttp_server(create_app(config))
    two = await aiohttp_server(create_app(config))
    a, b = new_phone(), new_phone()
    alice = await users_on(aiohttp_client, one)(a)
    bob = await users_on(aiohttp_client, two)(b)
    alice_two = await log_in(aiohttp_client, two, a)
    name = await made(alice, new_room())
    on_one = await enter(alice, name)
    assert (await listed(bob, name))["online"] == 1  # asked of the other server
    on_two = await enter(alice_two, name)  # the same user in both processes counts once
    assert (await listed(bob, name))["online"] == 1
    assert (await listed(alice, name))["online"] == 1
    bob_ws = await enter(bob, name)
    assert (await listed(alice, name))["online"] == 2
    await on_one.close()
    await on_two.close()
    await online_becomes(alice, name, 1)
    await bob_ws.close()
    await online_becomes(alice, name, 0)
    await online_becomes(bob, name, 0)


async def log_in(aiohttp_client: ClientFactory, server: TestServer, phone: str) -> TestClient:
    """A new login of an existing `phone` on `server`."""
    client = await aiohttp_client(server)
    resp = await client.post("/login", data={"phone": phone, "password": PASSWORD},
                             allow_redirects=False)
    assert resp.status == 302, await resp.text()
    return client


# -- saved rooms -------------------------------------------------------------------------------


async def test_save_and_unsave_rooms(as_user: UserFactory) -> None:
    a, b = new_phone(), new_phone()
    alice, bob = await as_user(a), await as_user(b)
    zed = await made(bob, "zed" + new_room())
    abc = await made(bob, "abc" + new_room())
    secret = await made(bob, new_room(), password=ROOM_PASSWORD)
    assert (await info(alice))["saved_rooms"] == []
    for name in (zed, abc, secret, zed):  # again: still 204, once
        resp = await save(alice, name)
        assert resp.status == 204, await resp.text()
    assert (await info(alice))["saved_rooms"] == sorted([zed, abc, secret])
    assert (await info(bob))["saved_rooms"] == []  # per user
    assert (await info(await as_user(a)))["saved_rooms"] == sorted([zed, abc, secret])
    assert (await listed(alice, zed))["saved"] is True
    assert (await listed(bob, zed))["saved"] is False
    for _ in range(2):  # again: still 204
        resp = await save(alice, zed, "DELETE")
        assert resp.status == 204, await resp.text()
    assert (await info(alice))["saved_rooms"] == sorted([abc, secret])
    assert (await listed(alice, zed))["saved"] is False


async def test_saving_an_unknown_or_malformed_room(as_user: UserFactory) -> None:
    alice = await as_user(new_phone())
    await assert_json_error(await save(alice, new_room()), 404)
    await assert_json_error(await save(alice, new_room(), "DELETE"), 404)
    for bad in ("", "a b", "x" * 65, "caf\u00e9"):
        await assert_json_error(await save(alice, bad), 400)
        await assert_json_error(await save(alice, bad, "DELETE"), 400)
    await assert_json_error(await alice.put("/chat/rooms/saved"), 400)
    assert (await info(alice))["saved_rooms"] == []


async def test_saved_rooms_are_limited(as_user: UserFactory, store: Store) -> None:
    a = new_phone()
    alice = await as_user(a)
    names = [f"s{i:03d}" for i in range(MAX_SAVED_ROOMS + 1)]
    await asyncio.gather(*(store.create_room(name, a, None) for name in names))
    assert all(await asyncio.gather(*(store.save_room(a, n) for n in names[:-1])))
    await assert_json_error(await save(alice, names[-1]), 409)
    saved = (await info(alice))["saved_rooms"]
    assert saved == names[:-1]
    resp = await save(alice, names[0])  # one already saved: no change, no refusal
    assert resp.status == 204
    assert (await save(alice, names[0], "DELETE")).status == 204
    assert (await save(alice, names[-1])).status == 204  # room again under the limit
    assert (await info(alice))["saved_rooms"] == names[1:]


async def test_saved_room_goes_with_the_room(as_user: UserFactory) -> None:
    a, b = new_phone(), new_phone()
    alice, bob = await as_user(a), await as_user(b)
    name = await made(alice, new_room())
    kept = await made(alice, new_room())
    for room in (name, kept):
        assert (await save(bob, room)).status == 204
    assert (await close(alice, name)).status == 204
    assert (await info(bob))["saved_rooms"] == [kept]
    await assert_json_error(await save(bob, name), 404)
    await assert_json_error(await save(bob, name, "DELETE"), 404)


# -- closing a room ----------------------------------------------------------------------------


async def send_room_msg(ws: WS, phone: str, room: str, text: str) -> None:
    sent = frame("room_msg", phone, room, text)
    await ws.send_json(sent)
    assert await recv(ws) == sent


async def test_close_room_by_creator(as_user: UserFactory, config: Config) -> None:
    a, b = new_phone(), new_phone()
    alice, bob = await as_user(a), await as_user(b)
    name = await made(alice, new_room(), password=ROOM_PASSWORD, category="Gone")
    resp = await bob.post("/chat/special/room/join", json={"room_name": name,
                                                             "password": ROOM_PASSWORD})
    assert resp.status == 200
    alice_ws, bob_ws = await enter(alice, name), await enter(bob, name)
    await send_room_msg(alice_ws, a, name, "a message that goes with its room")
    assert (await recv(bob_ws))["message"] == "a message that goes with its room"
    assert (await save(bob, name)).status == 204
    rows = "SELECT count(*) FROM {} WHERE room = ?"
    assert db_rows(config.database, rows.format("room_messages"), (name,)) == [(1,)]

    resp = await close(alice, name)
    assert resp.status == 204, await resp.text()
    for ws in (alice_ws, bob_ws):
        code, _ = await wait_closed(ws) or (None, b"")
        assert code == 4404
    assert not await room_exists(alice, name)
    for table in ("room_messages", "session_rooms", "saved_rooms"):
        assert db_rows(config.database, rows.format(table), (name,)) == [(0,)], table
    assert await catalogue(bob, q=name) == []
    assert (await info(bob))["saved_rooms"] == []
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await bob.ws_connect(f"/ws/chat/room/{name}/")
    assert refused.value.status == 404
    await assert_json_error(await close(alice, name), 404)
    # The name is free again, and the new room starts empty: no history, no password.
    await made(bob, name)
    ws = await bob.ws_connect(f"/ws/chat/room/{name}/")
    assert await recv(ws) == {"command": "fetch_room_msgs", "all": "True", "messages": []}
    await ws.close()


async def test_close_room_by_anyone_else_is_403_and_changes_nothing(as_user: UserFactory,
                                                                    config: Config) -> None:
    a, b = new_phone(), new_phone()
    alice, bob = await as_user(a), await as_user(b)
    name = await made(alice, new_room())
    alice_ws, bob_ws = await enter(alice, name), await enter(bob, name)
    await assert_json_error(await close(bob, name), 403)
    await assert_json_error(await close(bob, name, headers={"Origin": "http://evil.example"}), 403)
    await assert_json_error(await close(alice, name, headers={"Origin": "http://evil.example"}),
                            403)
    for bad in ("", "a b", "x" * 65):
        await assert_json_error(await close(alice, bad), 400)
    await assert_json_error(await close(alice, new_room()), 404)
    assert await room_exists(bob, name)
    await assert_quiet(alice_ws, bob_ws)
    await send_room_msg(bob_ws, b, name, "still open")  # both sockets still served
    assert (await recv(alice_ws))["message"] == "still open"
    assert db_rows(config.database, "SELECT count(*) FROM room_messages WHERE room = ?",
                   (name,)) == [(1,)]
    await alice_ws.close()
    await bob_ws.close()


@ACROSS
async def test_close_room_closes_its_sockets_on_every_server(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config) -> None:
    one = await aiohttp_server(create_app(config))
    two = await aiohttp_server(create_app(config))
    a, b = new_phone(), new_phone()
    alice = await users_on(aiohttp_client, one)(a)
    bob = await users_on(aiohttp_client, two)(b)
    name = await made(alice, new_room())
    kept = await made(alice, new_room())
    bob_ws, bob_kept = await enter(bob, name), await enter(bob, kept)
    alice_ws = await enter(alice, name)
    assert (await close(alice, name)).status == 204
    for ws in (alice_ws, bob_ws):
        code, _ = await wait_closed(ws) or (None, b"")
        assert code == 4404
    await assert_quiet(bob_kept)  # another room's socket stays
    await send_room_msg(bob_kept, b, kept, "still here")
    await online_becomes(bob, kept, 1)
    await bob_kept.close()
