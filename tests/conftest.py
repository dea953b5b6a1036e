"""Fixtures for every test, and how the suite is laid out.

    unit/        plain functions: protocol, config, throttle (no server)
    stores/      the store contract, run against every engine
    hubs/        the hub on Redis, several "processes" in one test
    features/    one module per feature, against an in-process server (aiohttp's TestServer)
    properties/  what must hold everywhere: authorization, hostile input, limits, error frames
    system/      real `run.py serve` processes: e2e, crash, shutdown, scale-out, slow peers, bench
    browser/     Playwright on Debian's Chromium against a server process
    helpers/     the helpers package, imported as `from helpers.ws import recv` (pytest.ini puts
                 tests/ on sys.path): frames, sockets, accounts, configs, engines, the one
                 server-process harness (helpers/server.py, bench/'s too), chat loads

Markers (pytest.ini):
- `system`: set here on everything under tests/system and tests/browser (real processes, a
  browser: minutes). `pytest -m "not system"` is the fast loop.
- `backends`: a test (or module) so marked runs once per store/hub engine (helpers/backends.py),
  or once per engine it names: `@pytest.mark.backends(backends.LOCAL, backends.POSTGRES)`. It
  is the one way to run a test per engine; an engine whose variable (CHAT_TEST_POSTGRES_URL,
  CHAT_TEST_REDIS_URL) is not set is skipped, and the run says so at its start and end.

Fixtures: `config` (a Config on a temporary database, or a fresh PostgreSQL schema / Redis
prefix for those engines), `server` (create_app(config) on a real socket), `store`, and
`as_user(phone)` -> a client logged in as that phone with its own cookie jar.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from chatserver.app import create_app
from chatserver.config import Config, Database, HubSettings, Limits, Security, WebSocket
from chatserver.keys import store_key
from chatserver.stores.base import Store
from helpers import backends
from helpers.accounts import PASSWORD, UserFactory

TESTS = Path(__file__).resolve().parent
# Real processes and a browser: what `-m "not system"` leaves out.
SYSTEM_DIRS = (TESTS / "system", TESTS / "browser")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark everything under SYSTEM_DIRS `system`."""
    for item in items:
        if any(d in item.path.parents for d in SYSTEM_DIRS):
            item.add_marker(pytest.mark.system)


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"WARNING: {line}" for line in backends.missing()]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in backends.missing():
        terminalreporter.write_line(f"WARNING: {line}", yellow=True, bold=True)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked `backends` run once per store/hub backend (helpers/backends.py): every one, or
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
async def pg_url() -> AsyncIterator[str]:
    """The URL of a fresh PostgreSQL schema, dropped afterwards (for tests of that engine alone);
    skipped without CHAT_TEST_POSTGRES_URL."""
    backends.require(backends.POSTGRES)
    async with backends.postgres_schema() as url:
        yield url


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A fresh key and channel prefix on CHAT_TEST_REDIS_URL, its keys deleted afterwards (for
    tests of that engine alone); skipped without the variable."""
    backends.require(backends.REDIS)
    async with backends.redis_prefix() as chosen:
        yield chosen


@pytest.fixture
def config(tmp_path: Path, backend: backends.Backend) -> Config:
    """Spec defaults, except a fast bcrypt cost, open registration, and a database in tmp_path
    (or a fresh schema of PostgreSQL, and a fresh Redis prefix, for those backends)."""
    return Config(
        database=Database(path=str(tmp_path / "chat.db"), scrub_seconds=0.2,
                          url=backend.database_url),
        # Tests register their users through /register; the registration modes' own tests
        # (features/test_registration.py) set `registration` themselves.
        security=Security(bcrypt_rounds=4, registration="open"),
        limits=Limits(messages_per_second=1000.0, handshakes_per_minute=100_000),
        # test clients left open at teardown do not answer the shutdown's close frame
        websocket=WebSocket(close_timeout=0.1),
        hub=HubSettings(url=backend.hub_url, prefix=backend.hub_prefix),
    )


@pytest.fixture
async def server(aiohttp_server, config: Config) -> TestServer:
    return await aiohttp_server(create_app(config))


@pytest.fixture
def store(server: TestServer) -> Store:
    """The running server's store."""
    return server.app[store_key]


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
