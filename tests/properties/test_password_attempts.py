"""Password attempts under concurrency (SPEC 10; issue 12, findings 3 and 5): logins, registrations
and private-room passwords are counted before the password is checked, per client address, per
account (a phone or a room) and per pair, so that parallel attempts cannot pass the limit; a right
password gives its slot back; a taken phone is answered before any bcrypt work; bcrypt runs in a
bounded pool that answers 503 when full.

bcrypt's own functions are wrapped to count (or hold) the password work the server does: the server
looks them up on the `bcrypt` module at each call. Other client addresses are loopback aliases
(127.0.0.x), as in test_limits.py.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Final

import aiohttp
import bcrypt
import pytest
from aiohttp.test_utils import TestClient, TestServer

from chatserver.app import create_app
from chatserver.config import Config
from helpers import backends
from helpers.accounts import PASSWORD, from_address, users_on
from helpers.configs import with_limits
from helpers.frames import new_phone
from helpers.timing import TIMEOUT

# The counters live in memory or in Redis; the store does not matter here.
pytestmark = pytest.mark.backends(backends.LOCAL, backends.REDIS)

ClientFactory = Callable[..., Awaitable[TestClient]]
ServerFactory = Callable[..., Awaitable[TestServer]]
ROOM_PASSWORD: Final = "the room password"
# Limits no test reaches unless it sets them lower.
HIGH: Final = 1000


async def start(aiohttp_server: ServerFactory, config: Config, **limits: Any) -> TestServer:
    changes: dict[str, Any] = {"login_failures": HIGH, "login_failures_per_phone": HIGH,
                               "login_failures_per_pair": HIGH}
    return await aiohttp_server(create_app(with_limits(config, **(changes | limits))))


async def post(client: TestClient | aiohttp.ClientSession, url: Any,
               data: dict[str, str]) -> aiohttp.ClientResponse:
    resp = await client.post(url, data=data, allow_redirects=False)
    await resp.read()
    return resp


async def login_status(client: TestClient | aiohttp.ClientSession, url: Any, phone: str,
                       password: str = PASSWORD) -> int:
    return (await post(client, url, {"phone": phone, "password": password})).status


async def register_status(client: TestClient | aiohttp.ClientSession, url: Any, phone: str) -> int:
    return (await post(client, url, {"phone": phone, "name": "someone", "password": PASSWORD})).status


async def create_private_room(client: TestClient, room: str) -> str:
    """Create `room` with ROOM_PASSWORD as `client`'s user; returns its name."""
    resp = await client.post("/chat/special/room", json={"room_name": room, "password": ROOM_PASSWORD})
    assert resp.status == 201, await resp.text()
    return room


def count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[object]:
    """Wrap `bcrypt.<name>` so that each call appends to the returned list (from any thread)."""
    calls: list[object] = []
    original = getattr(bcrypt, name)

    def counted(*args: Any) -> Any:
        calls.append(args)  # list.append is atomic
        return original(*args)
    monkeypatch.setattr(bcrypt, name, counted)
    return calls


# -- counted before the check ----------------------------------------------------------------------


async def test_parallel_logins_from_one_address_reach_the_check_at_most_the_limit(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """40 logins at once from one address, 39 wrong and 1 right, limit 10: at most 10 wrong
    passwords are checked (the right one, if it got a slot, gave it back), the rest answer 429
    without a password check. Before the fix all 40 were checked: 39 x 401 and one 302."""
    limit = 10
    server = await start(aiohttp_server, config, login_failures=limit)
    a = new_phone()
    await users_on(aiohttp_client, server)(a)
    checks = count_calls(monkeypatch, "checkpw")
    client = await aiohttp_client(server)

    passwords = ["wrong password"] * 20 + [PASSWORD] + ["wrong password"] * 19
    statuses = await asyncio.gather(*(login_status(client, "/login", a, p) for p in passwords))

    assert set(statuses) <= {302, 401, 429}, statuses
    assert statuses.count(401) <= limit, statuses
    assert len(checks) == statuses.count(401) + statuses.count(302), (len(checks), statuses)
    assert statuses.count(429) >= len(passwords) - limit - 1, statuses


async def test_parallel_wrong_room_passwords_reach_the_check_at_most_the_rooms_limit(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """20 wrong passwords for one private room at once: at most the per-account limit (here the
    room's) are checked (403), the rest answer 429; the right password answers 429 too then."""
    limit = 5
    server = await start(aiohttp_server, config, login_failures_per_phone=limit)
    login = users_on(aiohttp_client, server)
    a, b = new_phone(), new_phone()
    client_a, client_b = await login(a), await login(b)
    room = await create_private_room(client_a, f"private_{a}")
    checks = count_calls(monkeypatch, "checkpw")

    async def join(password: str) -> int:
        resp = await client_b.post("/chat/special/room/join",
                                   json={"room_name": room, "password": password})
        await resp.read()
        return resp.status

    statuses = await asyncio.gather(*(join(f"wrong {i}") for i in range(20)))
    assert sorted(set(statuses)) == [403, 429], statuses
    assert statuses.count(403) == limit == len(checks), (len(checks), statuses)
    assert await join(ROOM_PASSWORD) == 429


async def test_attempts_on_one_phone_are_limited_across_addresses(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config) -> None:
    """Per phone: wrong passwords from three addresses use up a limit of three; then the right
    password from a fourth address answers 429, and so does registering that phone; another phone
    logs in from there."""
    server = await start(aiohttp_server, config, login_failures_per_phone=3)
    login = users_on(aiohttp_client, server)
    a, b = new_phone(), new_phone()
    await login(a)
    await login(b)
    url = server.make_url("/login")
    for address in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
        async with from_address(address) as elsewhere:
            assert await login_status(elsewhere, url, a, "wrong password") == 401
    async with from_address("127.0.0.5") as fourth:
        assert await login_status(fourth, url, a) == 429
        assert await register_status(fourth, server.make_url("/register"), a) == 429
        assert await login_status(fourth, url, b) == 302


async def test_attempts_on_one_phone_from_one_address_are_limited_per_pair(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config) -> None:
    """Per pair: two wrong passwords for A from one address use up a pair limit of two; the right
    one answers 429 from there, 302 from another address; B still logs in from the first."""
    server = await start(aiohttp_server, config, login_failures_per_pair=2)
    login = users_on(aiohttp_client, server)
    a, b = new_phone(), new_phone()
    await login(a)
    await login(b)
    url = server.make_url("/login")
    async with from_address("127.0.0.2") as first, from_address("127.0.0.3") as second:
        for _ in range(2):
            assert await login_status(first, url, a, "wrong password") == 401
        assert await login_status(first, url, a) == 429
        assert await login_status(first, url, b) == 302
        assert await login_status(second, url, a) == 302


async def test_right_passwords_and_registrations_use_up_no_attempt(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config) -> None:
    """A household behind one address: with every limit at 2, five registrations and ten right
    logins all pass (a success gives its counted slot back)."""
    server = await start(aiohttp_server, config, login_failures=2, login_failures_per_phone=2,
                         login_failures_per_pair=2)
    client = await aiohttp_client(server)
    phones = [new_phone() for _ in range(5)]
    for phone in phones:
        assert await register_status(client, "/register", phone) == 302
    for i in range(10):
        assert await login_status(client, "/login", phones[i % 2]) == 302


# -- registration --------------------------------------------------------------------------------


async def test_taken_phone_is_answered_409_before_any_hashing(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config,
        monkeypatch: pytest.MonkeyPatch) -> None:
    server = await start(aiohttp_server, config)
    a = new_phone()
    await users_on(aiohttp_client, server)(a)
    hashes = count_calls(monkeypatch, "hashpw")
    client = await aiohttp_client(server)
    assert await register_status(client, "/register", a) == 409
    assert hashes == []
    assert await register_status(client, "/register", new_phone()) == 302
    assert len(hashes) == 1  # the counter does see a real registration's hash


async def test_refused_registrations_count_against_the_address_limit(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config) -> None:
    """Three registrations of taken phones use up an address limit of three: a fourth registration
    (of a free phone) and a login from that address answer 429; another address registers."""
    server = await start(aiohttp_server, config, login_failures=3)
    login = users_on(aiohttp_client, server)
    taken = [new_phone() for _ in range(3)]
    for phone in taken:
        await login(phone)
    client = await aiohttp_client(server)
    for phone in taken:
        assert await register_status(client, "/register", phone) == 409
    assert await register_status(client, "/register", new_phone()) == 429
    assert await login_status(client, "/login", taken[0]) == 429
    async with from_address("127.0.0.2") as elsewhere:
        assert await register_status(elsewhere, server.make_url("/register"), new_phone()) == 302


# -- the bcrypt pool -----------------------------------------------------------------------------


async def test_a_full_bcrypt_pool_answers_503(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One worker and no queue: while a login's check holds the worker, another login, a
    registration and a private-room join answer 503 with the reason (and use up no attempt); once
    it is done, all work."""
    server = await start(aiohttp_server, config, password_workers=1, password_queue=0)
    login = users_on(aiohttp_client, server)
    a, b = new_phone(), new_phone()
    client_a, client_b = await login(a), await login(b)
    room = await create_private_room(client_a, f"private_{a}")

    entered, release = threading.Event(), threading.Event()
    original = bcrypt.checkpw
    calls: list[object] = []

    def held_once(*args: Any) -> Any:
        calls.append(args)
        if len(calls) == 1:  # the first check holds its worker until released
            entered.set()
            release.wait(TIMEOUT)
        return original(*args)
    monkeypatch.setattr(bcrypt, "checkpw", held_once)

    first = asyncio.ensure_future(login_status(await aiohttp_client(server), "/login", a))
    try:
        assert await asyncio.to_thread(entered.wait, TIMEOUT)
        other = await aiohttp_client(server)
        busy = await post(other, "/login", {"phone": b, "password": PASSWORD})
        assert busy.status == 503
        assert "busy" in await busy.text()
        assert await register_status(other, "/register", new_phone()) == 503
        resp = await client_b.post("/chat/special/room/join",
                                   json={"room_name": room, "password": ROOM_PASSWORD})
        assert resp.status == 503, await resp.text()
        assert "busy" in (await resp.json())["error"]
    finally:
        release.set()
    assert await first == 302
    assert await login_status(other, "/login", b) == 302
    assert await register_status(other, "/register", new_phone()) == 302
    resp = await client_b.post("/chat/special/room/join",
                               json={"room_name": room, "password": ROOM_PASSWORD})
    assert resp.status == 200, await resp.text()
