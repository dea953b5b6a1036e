"""Expiry of undelivered messages (SPEC 10, `[retention]`; issue 12, finding 4), over real
sockets: a personal or group message still stored `retention.undelivered_days` after the server
accepted it is deleted with its pending rows, and every receive socket of its sender gets
`msg_expired` (pushed, not stored); a message acknowledged in time is not. The retention here is
a fraction of a day (a couple of seconds) and the check runs every RETENTION_CHECK seconds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import pytest
from aiohttp.test_utils import TestClient, TestServer

from chatserver.app import create_app
from chatserver.config import Config, Retention
from chatserver.keys import store_key
from helpers import backends
from helpers.accounts import PASSWORD, users_on
from helpers.backends import FILES_ARE_SQLITE, db_rows, has_files
from helpers.frames import assert_error, assert_server_time, frame, new_phone
from helpers.groups import create_group, files_holding, open_group, send_grp
from helpers.timing import TIMEOUT, until
from helpers.ws import WS, assert_quiet, fetch_all, open_personal, open_receive, recv, send_new_msg

pytestmark = pytest.mark.backends

ClientFactory = Callable[..., Awaitable[TestClient]]
ServerFactory = Callable[..., Awaitable[TestServer]]
KEEP_SECONDS: Final = 2.0  # how long an undelivered message is kept in these tests
RETENTION_CHECK: Final = 0.1


async def start(aiohttp_server: ServerFactory, config: Config) -> TestServer:
    retention = Retention(undelivered_days=KEEP_SECONDS / 86400, check_seconds=RETENTION_CHECK)
    return await aiohttp_server(create_app(dataclasses.replace(config, retention=retention)))


async def second_device(aiohttp_client: ClientFactory, server: TestServer, phone: str) -> TestClient:
    """Another login of `phone` (another device: its own cookie jar and session)."""
    client = await aiohttp_client(server)
    resp = await client.post("/login", data={"phone": phone, "password": PASSWORD},
                             allow_redirects=False)
    assert resp.status == 302, await resp.text()
    return client


async def expired_on(ws: WS, timeout: float = KEEP_SECONDS + TIMEOUT) -> dict[str, Any]:
    """The next frame on `ws`, which must be a msg_expired of exactly SPEC 10's shape."""
    got = await recv(ws, timeout)
    assert set(got) == {"command", "message", "msg_from", "msg_to", "sent_timestamp"}, got
    assert got["command"] == "msg_expired", got
    assert_server_time(got["sent_timestamp"])
    return got


async def test_undelivered_messages_expire_and_every_device_of_the_sender_is_told(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config) -> None:
    server = await start(aiohttp_server, config)
    store = server.app[store_key]
    login = users_on(aiohttp_client, server)
    a, b, c = new_phone(), new_phone(), new_phone()
    client_a, client_b, client_c = await login(a), await login(b), await login(c)
    phone_a = await second_device(aiohttp_client, server, a)
    devices = [await open_receive(client_a, a, probe="fetch_msgs"),
               await open_receive(phone_a, a, probe="fetch_msgs")]
    key = (await create_group(client_a, "expiry", [b, c]))["key"]
    to_b = await open_personal(client_a, a, b)
    in_group = await open_group(client_a, a, key)

    # acknowledged in time: never expires, though A's phone keeps its copy unacknowledged
    # (SPEC 7.2): expiry then deletes it without telling anyone (SPEC 7.1, every recipient had it)
    kept = await send_new_msg(to_b, a, b, "acknowledged in time")
    copy = await recv(devices[1])
    assert (copy["command"], copy["msg_from"], copy["message"]) == ("new_msg", a, kept["message"])
    from_a = await open_personal(client_b, b, a)
    await from_a.send_json(frame("msg_received", b, a, kept["sent_timestamp"]))
    for ws in devices:
        assert (await recv(ws))["command"] == "msg_received"

    # a group message acknowledged by one of its two recipients, and a personal one by nobody
    accepted = time.monotonic()
    personal = await send_new_msg(to_b, a, b, "never acknowledged")
    group = await send_grp(in_group, a, key, "acknowledged by c only")
    copies = [await recv(devices[1]), await recv(devices[1])]  # A's phone: copies, unacknowledged
    assert [(m["msg_from"], m["msg_to"]) for m in copies] == [(a, b), (f"{key}-{a}", a)]
    c_in_group = await open_group(client_c, c, key)
    await c_in_group.send_json(frame("grp_msg_received", c, a, group["sent_timestamp"]))
    for ws in devices:
        assert (await recv(ws))["command"] == "msg_received"  # C's receipt, on both devices
    # not before its time: still stored now (well within KEEP_SECONDS of its acceptance)
    assert [m.message for m in await store.pending_for(b)] == [personal["message"]]
    assert [m.message for m in await store.pending_group_for(b)] == [group["message"]]

    for ws in devices:  # each device gets both, once each
        got = [await expired_on(ws), await expired_on(ws)]
        assert time.monotonic() - accepted >= KEEP_SECONDS * 0.9  # not expired early
        assert sorted((g["message"], g["msg_from"], g["msg_to"]) for g in got) == sorted([
            (personal["sent_timestamp"], a, b), (group["sent_timestamp"], a, key)])
    await assert_quiet(*devices)  # the acknowledged one never expires; nothing is told twice

    # gone from the store: nothing to fetch, nothing pending, nothing to acknowledge
    inbox_b = await open_receive(client_b, b, probe="fetch_msgs")
    assert await fetch_all(inbox_b, b, "fetch_grp_msgs") == [[]]
    assert db_rows(config.database, "SELECT count(*) FROM group_pending") == [(0,)]
    assert db_rows(config.database, "SELECT count(*) FROM group_messages") == [(0,)]
    await from_a.send_json(frame("msg_received", b, a, personal["sent_timestamp"]))
    assert_error(await recv(from_a), "msg_received", b, a, "couldn't find a message to delete")
    # msg_expired is pushed, not stored: a device that connects later fetches nothing
    late = await second_device(aiohttp_client, server, a)
    assert await fetch_all(await late.ws_connect(f"/ws/chat/special/{a}/"), a) == [[]]


@pytest.mark.backends(backends.LOCAL, backends.REDIS)  # FILES_ARE_SQLITE
async def test_an_expired_body_is_scrubbed_from_the_files(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config) -> None:
    """SPEC 6 holds for expiry as for acknowledgement: within database.scrub_seconds of the
    deletion, the body is in neither the database file nor its WAL (SQLite's files)."""
    assert has_files(config.database), FILES_ARE_SQLITE
    server = await start(aiohttp_server, config)
    login = users_on(aiohttp_client, server)
    a, b = new_phone(), new_phone()
    client_a = await login(a)
    await login(b)
    inbox = await open_receive(client_a, a, probe="fetch_msgs")
    needle = f"secret-{new_phone()}-expiring"
    await send_new_msg(await open_personal(client_a, a, b), a, b, needle)
    assert files_holding(config.database, needle.encode()), "control: the body is in the files"
    await expired_on(inbox)
    await until(lambda: not files_holding(config.database, needle.encode()),
                config.database.scrub_seconds + TIMEOUT, "the expired body to be scrubbed")


async def test_the_check_keeps_running_after_checks_that_found_nothing(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config) -> None:
    """The check runs every check_seconds, not once: a message sent several checks after the
    server started still expires."""
    server = await start(aiohttp_server, config)
    login = users_on(aiohttp_client, server)
    a, b = new_phone(), new_phone()
    client_a = await login(a)
    await login(b)
    inbox = await open_receive(client_a, a, probe="fetch_msgs")
    await asyncio.sleep(5 * RETENTION_CHECK)  # let several empty checks pass: the point of the test
    sent = await send_new_msg(await open_personal(client_a, a, b), a, b, "late")
    assert (await expired_on(inbox))["message"] == sent["sent_timestamp"]
