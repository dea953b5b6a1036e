"""Sockets per user across processes (SPEC 10 `limits.sockets_per_user`, default 10): with the
Redis hub, a user's sockets are counted over every process of the deployment (a sorted set per
slot in Redis, scored by Redis's clock), and the oldest past the cap is closed with 4429 in
whichever process holds it (the control channel). Two `run.py serve` processes on two ports
sharing one PostgreSQL schema and one Redis prefix; skipped without both engines."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatserver.hubs.local import CLOSE_TOO_MANY_SOCKETS
from helpers import backends
from helpers.accounts import client, login, register, ws_open
from helpers.frames import new_phone
from helpers.scaled import receive_on, two_servers
from helpers.server import ServerProcess
from helpers.ws import WS, assert_quiet, recv, send_new_msg, wait_closed

pytestmark = pytest.mark.skipif(
    not (backends.POSTGRES_URL and backends.REDIS_URL),
    reason=f"{backends.POSTGRES_ENV} and {backends.REDIS_ENV} must both be set: the cross-process "
           "socket cap needs a PostgreSQL store and a Redis hub")

CAP = 10


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[tuple[ServerProcess, ServerProcess]]:
    async with two_servers(tmp_path, {"limits": {"sockets_per_user": CAP}}) as (one, other, _):
        yield one, other


async def test_the_oldest_socket_in_another_process_is_closed_with_4429(
        two: tuple[ServerProcess, ServerProcess]) -> None:
    one, other = two
    a, b = new_phone(), new_phone()
    async with client() as alice, client() as alice_too, client() as bob:
        sockets: list[WS] = []
        try:
            await register(alice, one, a)
            await login(alice_too, other, a)
            await register(bob, other, b)
            # 6 on the first process, 4 on the second: at the cap, nothing is closed.
            sockets += [await receive_on(alice, one, a) for _ in range(6)]
            sockets += [await receive_on(alice_too, other, a) for _ in range(CAP - 6)]
            await assert_quiet(*sockets)
            # One more on the second process: the oldest, on the first, makes room.
            sockets.append(await receive_on(alice_too, other, a))
            assert await wait_closed(sockets[0]) == (CLOSE_TOO_MANY_SOCKETS, b"too many sockets")
            # And once more: the next oldest goes.
            sockets.append(await receive_on(alice_too, other, a))
            assert await wait_closed(sockets[1]) == (CLOSE_TOO_MANY_SOCKETS, b"too many sockets")
            served = sockets[2:]
            assert len(served) == CAP
            send = await ws_open(bob, one.ws_url(f"/ws/chat/personal/{b}/{a}/"))
            sockets.append(send)
            sent = await send_new_msg(send, b, a, "to the ten left")
            for ws in served:
                assert (await recv(ws))["message"] == sent["message"]
            assert not any(ws.closed for ws in served)
        finally:
            for ws in sockets:
                await asyncio.wait_for(ws.close(), 2.0)
