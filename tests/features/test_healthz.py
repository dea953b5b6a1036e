"""GET /healthz (SPEC 11): 200 `{"status": "ok"}` while the process serves and its database (and
Redis, when the hub uses it) answered recently; 503 `{"status": "unavailable", "failed": [...]}`
otherwise. No login; asked by address whatever `server.allowed_hosts` says; not in the access log.

Outages are real: the SQLite store closed under the running server, PostgreSQL and Redis reached
through a TCP forwarder (helpers/forwarder.py) that the test cuts and restores. The answer is a
cached check (chatserver/health.py): each test awaits the next check (`HealthCheck.checked`),
never a sleep.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from chatserver.app import create_app
from chatserver.config import Config, HubSettings
from chatserver.health import HealthCheck
from chatserver.keys import health_key, store_key
from chatserver.logs import AccessLogger
from helpers import backends
from helpers.forwarder import Forwarder, forwarding
from helpers.timing import NET_TIMEOUT

OK = {"status": "ok"}


async def get(server: TestServer, path: str, host: str | None = None) -> tuple[int, object]:
    """Status and body (JSON when it is) of GET `path` from a client without a cookie, with
    `Host: host` when given."""
    headers = {"Host": host} if host else {}
    async with aiohttp.ClientSession() as session, \
            session.get(server.make_url(path), headers=headers) as resp:
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, await resp.text()


async def healthz(server: TestServer, host: str | None = None) -> tuple[int, object]:
    return await get(server, "/healthz", host)


async def settled(health: HealthCheck, want_failed: list[str]) -> None:
    """Await checks until the health check reports `want_failed` (bounded: a reconnecting engine
    may need a few checks)."""
    async with asyncio.timeout(NET_TIMEOUT):
        while health.failed() != want_failed:
            await health.checked()


async def test_ok_without_login_and_by_address_whatever_allowed_hosts_says(
        aiohttp_server, config: Config) -> None:
    config = dataclasses.replace(config, server=dataclasses.replace(
        config.server, allowed_hosts=("chat.example.org",)))
    server = await aiohttp_server(create_app(config))
    port = server.port
    assert await healthz(server) == (200, OK)
    for host in (f"127.0.0.1:{port}", "127.0.0.1", f"[::1]:{port}", f"chat.example.org:{port}"):
        assert await healthz(server, host) == (200, OK), host
    # A name the server does not know is still refused (DNS rebinding), here as everywhere.
    assert (await healthz(server, "evil.example"))[0] == 400
    # The exemption is the probes': other pages asked by address are refused as before.
    assert (await get(server, "/login", f"127.0.0.1:{port}"))[0] == 400


async def test_a_closed_database_is_503_database(server: TestServer) -> None:
    health = server.app[health_key]
    assert await healthz(server) == (200, OK)
    await server.app[store_key].close()  # every query now fails: the database is gone
    await health.checked()
    assert await healthz(server) == (503, {"status": "unavailable", "failed": ["database"]})


@pytest.mark.backends(backends.POSTGRES)
async def test_postgresql_out_of_reach_is_503_database_and_ok_again_once_back(
        aiohttp_server, config: Config) -> None:
    url = urlsplit(config.database.url)
    async with forwarding(url.hostname or "127.0.0.1", url.port or 5432) as forwarder:
        via = url._replace(netloc=f"{url.username or ''}{'@' if url.username else ''}"
                                  f"127.0.0.1:{forwarder.port}")
        server = await aiohttp_server(create_app(dataclasses.replace(
            config, database=dataclasses.replace(config.database, url=urlunsplit(via)))))
        health = server.app[health_key]
        assert await healthz(server) == (200, OK)
        await forwarder.cut()
        await settled(health, ["database"])
        assert await healthz(server) == (503, {"status": "unavailable", "failed": ["database"]})
        await forwarder.start()
        await settled(health, [])
        assert await healthz(server) == (200, OK)


@pytest.mark.backends(backends.REDIS)
async def test_redis_out_of_reach_is_503_redis_and_ok_again_once_back(
        aiohttp_server, config: Config) -> None:
    url = urlsplit(config.hub.url)
    forwarder = Forwarder(url.hostname or "127.0.0.1", url.port or 6379)
    await forwarder.start()
    try:
        via = url._replace(netloc=f"127.0.0.1:{forwarder.port}")
        server = await aiohttp_server(create_app(dataclasses.replace(
            config, hub=HubSettings(url=urlunsplit(via), prefix=config.hub.prefix))))
        health = server.app[health_key]
        assert await healthz(server) == (200, OK)
        await forwarder.cut()
        await settled(health, ["redis"])
        assert await healthz(server) == (503, {"status": "unavailable", "failed": ["redis"]})
        await forwarder.start()
        await settled(health, [])
        assert await healthz(server) == (200, OK)
    finally:
        await forwarder.cut()


async def test_a_burst_of_probes_asks_the_database_nothing(server: TestServer) -> None:
    """The answer is the cached check's: 200 probes while no check runs cost no query."""
    store = server.app[store_key]
    asked = 0
    real = store.has_users

    async def counted() -> bool:
        nonlocal asked
        asked += 1
        return await real()

    store.has_users = counted  # type: ignore[method-assign]
    try:
        await server.app[health_key].checked()  # a check just finished: the next is 2 s away
        before = asked
        answers = await asyncio.gather(*(healthz(server) for _ in range(200)))
        assert all(a == (200, OK) for a in answers)
        assert asked == before
    finally:
        store.has_users = real  # type: ignore[method-assign]


async def test_probes_are_not_in_the_access_log(aiohttp_server, config: Config,
                                                caplog: pytest.LogCaptureFixture) -> None:
    server = await aiohttp_server(create_app(config), access_log_class=AccessLogger,
                                  access_log=logging.getLogger("aiohttp.access"))
    with caplog.at_level(logging.INFO, logger="aiohttp.access"):
        assert (await healthz(server))[0] == 200
        assert (await get(server, "/metrics"))[0] == 200
        assert (await get(server, "/login"))[0] == 200
        async with asyncio.timeout(NET_TIMEOUT):  # the line is written after the answer is sent
            while not any("/login" in r.getMessage() for r in caplog.records):
                await asyncio.sleep(0.01)  # polling for a log line, not synchronisation
    access = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert any(" GET /login 200 " in line for line in access), access
    assert not any("/healthz" in line or "/metrics" in line for line in access), access
