"""`sent_timestamp` within `security.timestamp_skew_seconds` of the server's clock (SPEC 10; issue
12, finding 7: timestamps from year 1 to 9999 were accepted and shown). Only the frame's own
`sent_timestamp` is checked: an acknowledgement's `message` names an older message's timestamp."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from pytest_aiohttp import AiohttpClient, AiohttpServer

from chatserver.app import create_app
from chatserver.config import Config
from chatserver.protocol import parse_timestamp
from chatserver.stores.base import Store
from helpers.accounts import PASSWORD, UserFactory
from helpers.frames import assert_error, frame, new_phone, plain
from helpers.ws import assert_quiet, open_personal, open_receive, recv, send_new_msg

pytestmark = pytest.mark.filterwarnings(
    "ignore::aiohttp.web_exceptions.NotAppKeyWarning:aiohttp_session")

SKEWED = {
    "two-days-ago": lambda now: plain(now - timedelta(days=2)),
    "two-days-ahead": lambda now: plain(now + timedelta(days=2)),
    "year-1": lambda now: "0001-01-01 00:00:00",
    "year-9999": lambda now: "9999-12-31T23:59:59.999999Z",
}


@pytest.mark.parametrize("command", ["new_msg", "msg_read", "msg_received", "is_typing"])
@pytest.mark.parametrize("when", SKEWED.values(), ids=SKEWED.keys())
async def test_a_frame_far_from_the_servers_clock_is_refused_and_nothing_stored(
        as_user: UserFactory, store: Store, command: str, when) -> None:
    a, b = new_phone(), new_phone()
    client_a = await as_user(a)
    inbox_b = await open_receive(await as_user(b), b)
    ws = await open_personal(client_a, a, b)
    ts = when(datetime.now(UTC))
    message = "hello" if command in ("new_msg", "is_typing") else plain(datetime.now(UTC))
    await ws.send_json(frame(command, a, b, message, ts))
    reply = await recv(ws)
    assert_error(reply, command, a, b)
    assert "server's clock" in reply["message"], reply
    await assert_quiet(inbox_b)
    assert await store.pending_for(b) == []
    side = await store.dialogue_side(b, a)
    assert (side.last_received_receiver, side.last_seen_receiver) == (None, None)


async def test_a_frame_within_the_skew_is_accepted(as_user: UserFactory) -> None:
    a, b = new_phone(), new_phone()
    client_a = await as_user(a)
    await as_user(b)
    ws = await open_personal(client_a, a, b)
    for delta in (timedelta(hours=-23), timedelta(hours=23)):
        await send_new_msg(ws, a, b, "close enough", plain(datetime.now(UTC) + delta))


async def test_an_acknowledgement_of_an_old_message_is_accepted(as_user: UserFactory, store: Store) -> None:
    """`message` of msg_received / msg_read names a message that waited longer than the skew."""
    a, b = new_phone(), new_phone()
    client_a, client_b = await as_user(a), await as_user(b)
    old = plain(datetime.now(UTC) - timedelta(days=10))
    assert await store.add_personal(a, b, parse_timestamp(old), old, "waited ten days")
    inbox_a = await open_receive(client_a, a)
    to_a = await open_personal(client_b, b, a)
    for command in ("msg_received", "msg_read"):
        ack = frame(command, b, a, old)
        await to_a.send_json(ack)
        assert await recv(inbox_a) == ack
    assert await store.pending_for(b) == []


async def test_the_skew_is_configurable(
        aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, config: Config) -> None:
    tight = dataclasses.replace(config, security=dataclasses.replace(
        config.security, timestamp_skew_seconds=60))
    server = await aiohttp_server(create_app(tight))
    a = new_phone()
    client = await aiohttp_client(server)
    resp = await client.post("/register", allow_redirects=False, data={
        "phone": a, "name": "A", "password": PASSWORD})
    assert resp.status == 302
    ws = await open_personal(client, a, a)
    await ws.send_json(frame("new_msg", a, a, "two minutes ago",
                             plain(datetime.now(UTC) - timedelta(minutes=2))))
    assert_error(await recv(ws), "new_msg", a, a)
    await send_new_msg(ws, a, a, "now", plain(datetime.now(UTC)))
