"""Two `run.py serve` processes of one scaled deployment (a fresh PostgreSQL schema and Redis key
prefix shared by both), and a receive socket served by one of them: what the system tests of
cross-process behaviour start from. Needs CHAT_TEST_POSTGRES_URL and CHAT_TEST_REDIS_URL."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from helpers import backends
from helpers.accounts import ws_open
from helpers.configs import scaled_config_tables
from helpers.server import ServerProcess, Tables, merge_tables, start_server, write_config
from helpers.ws import WS, recv


@contextlib.asynccontextmanager
async def two_servers(tmp_path: Path, extra: Tables
                      ) -> AsyncIterator[tuple[ServerProcess, ServerProcess, str]]:
    """Two serving processes on their own ports with the scaled config plus `extra` tables;
    yields them and the database URL; both are killed at the end whatever happened."""
    async with backends.postgres_schema() as url, backends.redis_prefix() as prefix:
        config = write_config(tmp_path / "scaled.toml",
                              merge_tables(scaled_config_tables(url, prefix), extra))
        servers = [start_server(tmp_path / f"{n}.db", config, tmp_path) for n in ("one", "two")]
        try:
            for server in servers:
                await server.wait_serving(processes=1)
            yield servers[0], servers[1], url
        finally:
            for server in servers:
                server.kill()


async def receive_on(session: aiohttp.ClientSession, server: ServerProcess, phone: str) -> WS:
    """`phone`'s receive socket on `server`, after one round trip answered (so it is registered
    with the hub before the caller goes on)."""
    ws = await ws_open(session, server.ws_url(f"/ws/chat/special/{phone}/"))
    await ws.send_json({"command": "fetch_grp_msgs", "msg_to": phone})
    assert await recv(ws) == {"command": "fetch_grp_msgs", "all": "True", "messages": []}
    return ws
