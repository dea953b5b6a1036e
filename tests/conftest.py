"""Shared fixtures: a Config on a temporary database, a real server on a real socket, and
`as_user(phone)` -> a client logged in as that phone with its own cookie jar."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from chatserver.app import create_app
from chatserver.config import Config, Database, HubSettings, Limits, Security, WebSocket
from chatserver.keys import store_key
from chatserver.stores.base import Store

import backends

PASSWORD = "correct horse"
# Every receive_json() in the tests waits at most this long; "nothing arrives" uses QUIET.
TIMEOUT = 5.0
QUIET = 0.3


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"WARNING: {line}" for line in backends.missing()]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in backends.missing():
        terminalreporter.write_line(f"WARNING: {line}", yellow=True, bold=True)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked `backends` run once per store/hub backend (tests/backends.py): every one, or
    those the marker names, e.g. `@pytest.mark.backends(backends.LOCAL, backends.REDIS)`."""
    marker = metafunc.definition.get_closest_marker("backends")
    if "backend" in metafunc.fixturenames and marker is not None:
        metafunc.parametrize("backend", marker.args or backends.ALL, indirect=True)


@pytest.fixture
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[backends.Backend]:
    """The store/hub engines of this test: the local default unless parametrised."""
    name = getattr(request, "param", backends.LOCAL)
    backends.require(name)
    async with backends.backend(name) as chosen:
        yield chosen


@pytest.fixture
def config(tmp_path: Path, backend: backends.Backend) -> Config:
    """Spec defaults, except a fast bcrypt cost and a database in tmp_path (or a fresh schema of
    PostgreSQL, and a fresh Redis prefix, for those backends)."""
    return Config(
        database=Database(path=str(tmp_path / "chat.db"), scrub_seconds=0.2,
                          url=backend.database_url),
        security=Security(bcrypt_rounds=4),
        limits=Limits(messages_per_second=1000.0, handshakes_per_minute=100_000),
        # test clients left open at teardown do not answer the shutdown's close frame
        websocket=WebSocket(close_timeout=0.1),
        hub=HubSettings(url=backend.hub_url, prefix=backend.hub_prefix),
    )


def with_limits(config: Config, **changes: object) -> Config:
    """`config` with some `[limits]` keys changed."""
    return dataclasses.replace(config, limits=dataclasses.replace(config.limits, **changes))


@pytest.fixture
async def server(aiohttp_server, config: Config) -> TestServer:
    return await aiohttp_server(create_app(config))


@pytest.fixture
def store(server: TestServer) -> Store:
    """The running server's store."""
    return server.app[store_key]


UserFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def as_user(aiohttp_client, server: TestServer) -> UserFactory:
    """Register `phone` (or log in again when it exists) and return its own logged-in client.

    """
    async def login(phone: str, password: str = PASSWORD, name: str | None = None) -> TestClient:
        client = await aiohttp_client(server)
        resp = await client.post("/register", data={"phone": phone, "name": name or f"user {phone}",
                                                    "password": password}, allow_redirects=False)
        if resp.status == 409:
            resp = await client.post("/login", data={"phone": phone, "password": password},
                                     allow_redirects=False)
        assert resp.status == 302, await resp.text()
        return client
    return login
