"""Groups and rooms created per user per day (SPEC 10 `limits.groups_per_day`,
`limits.rooms_per_day`; issue 12, finding 6: 1,000 groups in 0.6 s, 2,000 rooms in 1.5 s), on
every store and hub (with the Redis hub the counters are in Redis, shared by every process).

A creation is counted before it is made, atomically, so that requests sent in parallel cannot
all pass; one that then fails (a taken room name) gives its slot back. Past the limit: 429
`{"error"}` and nothing created. Another user has a budget of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from chatserver.app import create_app
from chatserver.config import Config
from chatserver.keys import store_key
from chatserver.stores.base import Store
from helpers.accounts import users_on
from helpers.configs import with_limits
from helpers.frames import new_phone
from helpers.ws import assert_json_error

pytestmark = pytest.mark.backends

ClientFactory = Callable[..., Awaitable[TestClient]]
ServerFactory = Callable[..., Awaitable[TestServer]]
ROOM_PASSWORD = "the room password"


async def post(client: TestClient, path: str, body: dict[str, Any]) -> int:
    async with client.post(path, json=body) as resp:
        if resp.status != 201:
            await assert_json_error(resp, resp.status)  # every refusal is {"error"}
        return resp.status


async def test_parallel_group_creations_pass_the_daily_limit_exactly(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config) -> None:
    server = await aiohttp_server(create_app(with_limits(config, groups_per_day=3)))
    store: Store = server.app[store_key]
    login = users_on(aiohttp_client, server)
    a, b, c = new_phone(), new_phone(), new_phone()
    alice, bob = await login(a), await login(b)
    await login(c)

    statuses = await asyncio.gather(*(
        post(alice, "/chat/special/group", {"name": f"g{i}", "participants": [c]}) for i in range(10)))
    assert sorted(statuses) == [201] * 3 + [429] * 7
    assert len(await store.groups_of(a)) == 3
    assert len(await store.groups_of(c)) == 3
    # Another user is not limited by A's use.
    assert await post(bob, "/chat/special/group", {"name": "bob's", "participants": [c]}) == 201
    assert await post(alice, "/chat/special/group", {"name": "again", "participants": []}) == 429
    assert len(await store.groups_of(a)) == 3


async def test_parallel_room_creations_pass_the_daily_limit_exactly(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config) -> None:
    server = await aiohttp_server(create_app(with_limits(config, rooms_per_day=3)))
    store: Store = server.app[store_key]
    login = users_on(aiohttp_client, server)
    a, b = new_phone(), new_phone()
    alice, bob = await login(a), await login(b)

    # Public and private ones (hashing a password) count alike.
    statuses = await asyncio.gather(*(
        post(alice, "/chat/special/room",
             {"room_name": f"r{a}{i}", **({"password": ROOM_PASSWORD} if i % 2 else {})})
        for i in range(10)))
    assert sorted(statuses) == [201] * 3 + [429] * 7
    assert len([r for r in await store.rooms() if r.created_by == a]) == 3
    assert await post(bob, "/chat/special/room", {"room_name": f"r{b}"}) == 201


async def test_a_creation_that_fails_gives_its_slot_back(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config) -> None:
    """A taken name (409) or a bad password (400) creates nothing and uses up nothing."""
    server = await aiohttp_server(create_app(with_limits(config, rooms_per_day=2)))
    store: Store = server.app[store_key]
    login = users_on(aiohttp_client, server)
    a, b = new_phone(), new_phone()
    alice, bob = await login(a), await login(b)
    taken = f"taken{b}"
    assert await post(bob, "/chat/special/room", {"room_name": taken}) == 201
    for _ in range(5):  # one after the other: each gives its slot back
        assert await post(alice, "/chat/special/room", {"room_name": taken}) == 409
    # In parallel, a slot is held while its request runs (some may see 429), and given back after.
    statuses = await asyncio.gather(*(post(alice, "/chat/special/room", {"room_name": taken})
                                      for _ in range(5)))
    assert set(statuses) <= {409, 429} and 409 in statuses, statuses
    assert await post(alice, "/chat/special/room", {"room_name": f"x{a}", "password": "short"}) == 400
    assert await post(alice, "/chat/special/room", {"room_name": f"one{a}"}) == 201
    assert await post(alice, "/chat/special/room", {"room_name": f"two{a}"}) == 201
    assert await post(alice, "/chat/special/room", {"room_name": f"three{a}"}) == 429
    assert sorted(r.name for r in await store.rooms() if r.created_by == a) == [f"one{a}", f"two{a}"]


async def test_groups_refused_for_other_reasons_use_up_nothing(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config) -> None:
    """An unknown participant (404) or one who has blocked the creator (403) is refused before
    the day's count is touched."""
    server = await aiohttp_server(create_app(with_limits(config, groups_per_day=1)))
    login = users_on(aiohttp_client, server)
    a, b = new_phone(), new_phone()
    alice, bob = await login(a), await login(b)
    assert await post(bob, "/chat/special/block", {"phone": a}) == 201
    for _ in range(3):
        assert await post(alice, "/chat/special/group",
                          {"name": "x", "participants": [new_phone()]}) == 404
        assert await post(alice, "/chat/special/group", {"name": "x", "participants": [b]}) == 403
    assert await post(alice, "/chat/special/group", {"name": "mine", "participants": []}) == 201
    assert await post(alice, "/chat/special/group", {"name": "more", "participants": []}) == 429
