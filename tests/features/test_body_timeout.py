"""Slow request bodies (issue 12, finding 5; `limits.body_timeout_seconds`, default 10): a POST
whose body has not arrived in full within the timeout is answered 408 and its connection closed,
fifty at once as well as one; a body that arrives in time is served as before, and one over the
size limit is still 413. Raw TCP clients against a server with production's handler settings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestServer

from chatserver.app import create_app
from chatserver.config import Config, Limits
from helpers.accounts import PASSWORD
from helpers.configs import with_limits
from helpers.frames import new_phone
from helpers.timing import TIMEOUT
from helpers.ws import ProductionServer

pytestmark = pytest.mark.filterwarnings(
    "ignore::aiohttp.web_exceptions.NotAppKeyWarning:aiohttp_session")

BODY_TIMEOUT = 1.0
# How late a 408 may come after the timeout on a busy 2-core box.
MARGIN = 2.0


@pytest.fixture
async def slow_server(config: Config) -> AsyncIterator[TestServer]:
    server = ProductionServer(create_app(with_limits(config, body_timeout_seconds=BODY_TIMEOUT)))
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


def head(path: str, length: int, content_type: str = "application/x-www-form-urlencoded") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


async def slow_post(server: TestServer, path: str, partial: bytes, length: int,
                    content_type: str = "application/x-www-form-urlencoded") -> tuple[bytes, float]:
    """Send a request's head and `partial` of a body of `length` bytes, then nothing more; read
    until the server closes. Returns what it answered and how long after the head it closed."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        start = time.monotonic()
        writer.write(head(path, length, content_type) + partial)
        await writer.drain()
        async with asyncio.timeout(BODY_TIMEOUT + MARGIN + TIMEOUT):
            answer = await reader.read()  # to EOF: the server closed the connection
        return answer, time.monotonic() - start
    finally:
        writer.close()


def test_the_default() -> None:
    assert Limits().body_timeout_seconds == 10.0


async def test_a_body_that_does_not_arrive_gets_408_and_the_connection_closes(
        slow_server: TestServer) -> None:
    answer, took = await slow_post(slow_server, "/login", b"phone=1", 200)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert BODY_TIMEOUT - 0.1 <= took <= BODY_TIMEOUT + MARGIN, took


async def test_a_json_endpoint_answers_408_as_json(slow_server: TestServer) -> None:
    answer, _ = await slow_post(slow_server, "/chat/special/room", b'{"room_', 100,
                                "application/json")
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert answer.endswith(b'{"error": "the request body did not arrive in time"}'), answer


async def test_fifty_slow_bodies_at_once_are_all_cut(slow_server: TestServer) -> None:
    results = await asyncio.gather(*(slow_post(slow_server, "/register", b"phone=", 1000)
                                     for _ in range(50)))
    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer, _ in results), results
    assert max(took for _, took in results) <= BODY_TIMEOUT + MARGIN


async def test_a_body_that_arrives_in_time_is_served(slow_server: TestServer) -> None:
    """A body sent in two parts, the second well before the timeout: the registration works (the
    handler's `post()` gets the body the guard read)."""
    phone = new_phone()
    body = f"phone={phone}&name=Ada&password={PASSWORD.replace(' ', '+')}".encode()
    reader, writer = await asyncio.open_connection(slow_server.host, slow_server.port)
    try:
        writer.write(head("/register", len(body)) + body[:10])
        await writer.drain()
        await asyncio.sleep(BODY_TIMEOUT / 4)  # the delay under test: a slow, not a stuck, client
        writer.write(body[10:])
        await writer.drain()
        async with asyncio.timeout(TIMEOUT):
            status = await reader.readline()
        assert status.startswith(b"HTTP/1.1 302 "), status
    finally:
        writer.close()


async def test_a_body_over_the_size_limit_is_still_413(slow_server: TestServer) -> None:
    reader, writer = await asyncio.open_connection(slow_server.host, slow_server.port)
    try:
        size = 200 * 1024
        writer.write(head("/login", size) + b"x" * size)
        await writer.drain()
        async with asyncio.timeout(TIMEOUT):
            status = await reader.readline()
        assert status.startswith(b"HTTP/1.1 413 "), status
    finally:
        writer.close()
