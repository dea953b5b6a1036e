"""Accounts for the tests: the one password, logging in against an in-process server (aiohttp's
TestServer), and browser-like clients of a server process (helpers.server.ServerProcess)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from helpers.server import ServerProcess
from helpers.timing import NET_TIMEOUT, TIMEOUT

PASSWORD = "correct horse"
# The session cookie's name (chatserver/app.py).
COOKIE = "chat_session"

# `as_user(phone, password=PASSWORD, name=None)` -> a client logged in as `phone` (tests/conftest.py).
UserFactory = Callable[..., Awaitable[TestClient]]


def users_on(aiohttp_client: Callable[..., Awaitable[TestClient]],
             server: TestServer) -> UserFactory:
    """`as_user` for a server a test built itself (e.g. with other limits): registers `phone`."""
    async def login(phone: str) -> TestClient:
        client = await aiohttp_client(server)
        resp = await client.post("/register", data={"phone": phone, "name": f"user {phone}",
                                                    "password": PASSWORD},
                                 allow_redirects=False)
        assert resp.status == 302, await resp.text()
        return client
    return login


@contextlib.asynccontextmanager
async def from_address(address: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A client session of any server whose connections come from `address` (a loopback alias)."""
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(local_addr=(address, 0)),
        cookie_jar=aiohttp.CookieJar(unsafe=True),
        timeout=aiohttp.ClientTimeout(total=TIMEOUT))
    try:
        yield session
    finally:
        await session.close()


# -- clients of a server process ----------------------------------------------------------------


def client() -> aiohttp.ClientSession:
    """A browser-like client with its own cookie jar (which keeps cookies of an IP address);
    each request and handshake is bounded by NET_TIMEOUT."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                 timeout=aiohttp.ClientTimeout(total=NET_TIMEOUT))


async def register(session: aiohttp.ClientSession, server: ServerProcess, phone: str) -> str:
    """Register `phone` (SPEC 3: 302 to /chat); the cookie stays in `session`'s jar and its
    value is returned."""
    async with session.post(server.url("/register"), allow_redirects=False,
                            data={"phone": phone, "name": f"user {phone}",
                                  "password": PASSWORD}) as resp:
        assert resp.status == 302, await resp.text()
        assert resp.headers["Location"] == "/chat"
    return session.cookie_jar.filter_cookies(URL(server.base))[COOKIE].value


async def login(session: aiohttp.ClientSession, server: ServerProcess, phone: str) -> None:
    """Log `phone` in (a new session); the cookie stays in `session`'s jar."""
    async with session.post(server.url("/login"), allow_redirects=False,
                            data={"phone": phone, "password": PASSWORD}) as resp:
        assert resp.status == 302, await resp.text()


async def cookies_for(server: ServerProcess, phones: list[str]) -> dict[str, str]:
    """Register every phone (one session, its jar emptied in between); phone -> cookie value."""
    found: dict[str, str] = {}
    async with client() as session:
        for phone in phones:
            session.cookie_jar.clear()
            found[phone] = await register(session, server, phone)
    return found


async def create_group(session: aiohttp.ClientSession, server: ServerProcess, name: str,
                       participants: list[str]) -> str:
    """Create a group as the session's user (SPEC 4: 201); returns its key."""
    async with session.post(server.url("/chat/special/group"),
                            json={"name": name, "participants": participants}) as resp:
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["key"])


async def ws_open(session: aiohttp.ClientSession, url: str,
                  max_msg_size: int = 64 * 1024 * 1024) -> aiohttp.ClientWebSocketResponse:
    """Open a WebSocket, the handshake bounded by NET_TIMEOUT; frames up to `max_msg_size` bytes
    are accepted (the slow-peer tests receive large ones)."""
    async with asyncio.timeout(NET_TIMEOUT):
        return await session.ws_connect(url, max_msg_size=max_msg_size)
