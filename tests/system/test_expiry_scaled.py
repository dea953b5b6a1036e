"""Expiry (SPEC 10, `[retention]`) in the scaled deployment: two `run.py serve` processes share
one PostgreSQL store and one Redis hub, and both run the retention check. Each undelivered message
expires once (the process whose DELETE removed it tells the sender), and the sender's receive
sockets on both processes get exactly one `msg_expired` for it, through the Redis hub.

Skipped without CHAT_TEST_POSTGRES_URL and CHAT_TEST_REDIS_URL. Every wait has a timeout; every
process is killed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import asyncpg
import pytest

from helpers import backends
from helpers.accounts import client, create_group, register, ws_open
from helpers.frames import frame, new_phone
from helpers.scaled import receive_on, two_servers
from helpers.server import ServerProcess
from helpers.timing import NET_TIMEOUT, TIMEOUT
from helpers.ws import assert_quiet, recv

pytestmark = pytest.mark.skipif(
    not (backends.POSTGRES_URL and backends.REDIS_URL),
    reason=f"{backends.POSTGRES_ENV} and {backends.REDIS_ENV} must both be set")

KEEP_SECONDS: Final = 2.0
MESSAGES: Final = 30  # each kind
EXPIRED_LOG: Final = re.compile(r"([0-9]+) undelivered message\(s\) expired")


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[tuple[ServerProcess, ServerProcess, str]]:
    """Two servers sharing a fresh PostgreSQL schema and Redis prefix, both expiring messages
    kept KEEP_SECONDS and checking every 0.05 s (so that their checks overlap); and the URL."""
    async with two_servers(tmp_path, {"retention": {"undelivered_days": KEEP_SECONDS / 86400,
                                                    "check_seconds": 0.05}}) as servers:
        yield servers


async def test_each_message_expires_once_and_the_sender_hears_it_on_every_process(
        two: tuple[ServerProcess, ServerProcess, str]) -> None:
    one, other, url = two
    async with contextlib.AsyncExitStack() as stack:
        alice = await stack.enter_async_context(client())
        bob = await stack.enter_async_context(client())
        a, b, c = new_phone(), new_phone(), new_phone()
        await register(alice, one, a)
        await register(bob, other, b)
        async with client() as carol:
            await register(carol, other, c)  # b and c never connect: nothing is acknowledged
        key = await create_group(alice, one, "expiry", [b, c])
        devices = [await receive_on(alice, one, a), await receive_on(alice, other, a)]
        to_b = await ws_open(alice, one.ws_url(f"/ws/chat/personal/{a}/{b}/"))
        in_group = await ws_open(alice, other.ws_url(f"/ws/chat/group/{a}/{key}/"))
        sent: list[tuple[str, str]] = []
        for i in range(MESSAGES):
            for ws, to, command in ((to_b, b, "new_msg"), (in_group, key, "new_grp_msg")):
                f = frame(command, a, to, f"{command} {i}")
                await ws.send_json(f)
                assert (await recv(ws))["command"] == "msg_sent"
                sent.append((f["sent_timestamp"], to))
        for ws in devices:  # every message once on each device, whichever process expired it
            got = []
            async with asyncio.timeout(KEEP_SECONDS + 3 * TIMEOUT):
                while len(got) < len(sent):
                    data = await recv(ws, KEEP_SECONDS + TIMEOUT)
                    assert data["command"] == "msg_expired" and data["msg_from"] == a, data
                    got.append((data["message"], data["msg_to"]))
            assert sorted(got) == sorted(sent)
        await assert_quiet(*devices)
        conn = await asyncpg.connect(url, timeout=NET_TIMEOUT)
        try:
            for table in ("personal_messages", "group_messages", "group_pending"):
                assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
        finally:
            await conn.close()
        for ws in (*devices, to_b, in_group):
            await ws.close()
        assert not one.errors_logged() and not other.errors_logged(), (one.output(), other.output())
        # what each process expired (its log) adds up to every message once
        told = [sum(int(n) for n in EXPIRED_LOG.findall(s.err())) for s in (one, other)]
        assert sum(told) == len(sent), told
