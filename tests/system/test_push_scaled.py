"""Web Push (SPEC 9) in the scaled deployment: two `run.py serve` processes share one PostgreSQL
store and one Redis hub, and push to a real push service on 127.0.0.1 (helpers/pushservice.py).

- Messages committed on either process are pushed exactly once each to every offline device of
  the recipient (one sender per message's commit, never one per process), with one VAPID key
  (`push.vapid_private_key`, the same in both configs) and the key that `GET /chat/push/key`
  gives on either process.
- A device whose receive socket is open on one process is not pushed for a message committed on
  the other one (the per-device presence held in Redis, `Hub.device_online`).

Skipped, loudly (a skip reason in the summary and the WARNING lines of tests/conftest.py),
without CHAT_TEST_POSTGRES_URL and CHAT_TEST_REDIS_URL. Every wait has a timeout; both
processes are killed at the end.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from helpers import backends
from helpers.accounts import client, login, register, ws_open
from helpers.frames import frame, new_phone
from helpers.pushservice import Browser, PushService, b64url, check_vapid
from helpers.scaled import receive_on, two_servers
from helpers.server import ServerProcess
from helpers.ws import recv

pytestmark = pytest.mark.skipif(
    not (backends.POSTGRES_URL and backends.REDIS_URL),
    reason=f"{backends.POSTGRES_ENV} and {backends.REDIS_ENV} must both be set: "
           "the scaled Web Push test is SKIPPED")

SENDERS = 12  # one conversation each, half of them sending through each process


def push_tables(service: PushService) -> dict[str, dict[str, object]]:
    """`[push]` for both processes: one VAPID key, private endpoints allowed, previews on (a push
    is told from another by its text), no min_interval (every message is pushed)."""
    raw = ec.generate_private_key(ec.SECP256R1()).private_numbers().private_value.to_bytes(32, "big")
    return {"push": {"vapid_private_key": b64url(raw), "allow_private_endpoints": True,
                     "previews": True, "min_interval_seconds": 0.0, "retry_seconds": 0.05}}


async def server_key(session: aiohttp.ClientSession, server: ServerProcess) -> str:
    async with session.get(server.url("/chat/push/key")) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["public_key"])


async def subscribe(session: aiohttp.ClientSession, server: ServerProcess, browser: Browser) -> None:
    async with session.post(server.url("/chat/push/subscription"), json=browser.json()) as resp:
        assert resp.status == 201, await resp.text()


async def say(session: aiohttp.ClientSession, server: ServerProcess, me: str, peer: str,
              text: str) -> None:
    """`me` sends `text` to `peer` through `server`; returns once it is committed (msg_sent)."""
    ws = await ws_open(session, server.ws_url(f"/ws/chat/personal/{me}/{peer}/"))
    try:
        sent = frame("new_msg", me, peer, text)
        await ws.send_json(sent)
        reply = await recv(ws)
        assert reply["command"] == "msg_sent" and reply["message"] == sent["sent_timestamp"], reply
    finally:
        await ws.close()


async def test_each_message_is_pushed_exactly_once_across_processes(tmp_path: Path) -> None:
    service = await PushService().start()
    try:
        async with two_servers(tmp_path, push_tables(service)) as (one, two, _), \
                contextlib.AsyncExitStack() as stack:
            servers = (one, two)
            b = new_phone()
            # b's two offline devices, one logged in through each process
            devices = []
            for n, server in enumerate(servers):
                session = await stack.enter_async_context(client())
                await (register if n == 0 else login)(session, server, b)
                browser = Browser.subscribe(service)
                await subscribe(session, server, browser)
                devices.append(browser)
            assert await server_key(session, one) == await server_key(session, two)
            key = await server_key(session, one)

            texts = []
            for i in range(SENDERS):
                a = new_phone()
                server = servers[i % 2]
                sender = await stack.enter_async_context(client())
                await register(sender, server, a)
                text = f"message {i} from {a}"
                await say(sender, server, a, b, text)
                texts.append(text)

            got: Counter[tuple[str, str]] = Counter()
            for _ in range(SENDERS * len(devices)):
                push = await service.next()
                browser = next(d for d in devices if d.id == push.id)
                payload: dict[str, Any] = browser.payload(push)
                check_vapid(push.headers, key, service.base)
                got[(push.id, payload["text"])] += 1
            assert got == Counter({(d.id, t): 1 for d in devices for t in texts}), got

            # no second push of any of them: a control push after them arrives next
            control = Browser.subscribe(service)
            c = new_phone()
            c_session = await stack.enter_async_context(client())
            await register(c_session, two, c)
            await subscribe(c_session, two, control)
            await say(sender, one, a, c, "control")
            last = await service.next()
            assert last.id == control.id and json.loads(control.decrypt(last.body))["text"] == "control"
            assert service.pending() == 0
    finally:
        await service.stop()


async def test_an_open_socket_on_one_process_stops_the_push_from_the_other(tmp_path: Path) -> None:
    service = await PushService().start()
    try:
        async with two_servers(tmp_path, push_tables(service)) as (one, two, _), \
                contextlib.AsyncExitStack() as stack:
            a, b = new_phone(), new_phone()
            online = await stack.enter_async_context(client())
            offline = await stack.enter_async_context(client())
            sender = await stack.enter_async_context(client())
            await register(online, one, b)
            await login(offline, one, b)
            await register(sender, two, a)
            online_browser, offline_browser = Browser.subscribe(service), Browser.subscribe(service)
            await subscribe(online, one, online_browser)
            await subscribe(offline, one, offline_browser)
            # served (and present in Redis) on process one; held open to the end of the test
            inbox = await receive_on(online, one, b)

            await say(sender, two, a, b, "committed on two")
            push = await service.next()
            assert push.id == offline_browser.id
            assert offline_browser.payload(push)["text"] == "committed on two"
            assert service.pending() == 0 and service.count(online_browser.id) == 0
            assert not inbox.closed
    finally:
        await service.stop()
