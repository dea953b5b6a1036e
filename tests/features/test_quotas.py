"""Stored messages cannot fill the disk (issue 12, finding 4; SPEC 10), over real sockets:

- `limits.max_waiting_per_recipient`: with a limit of 1000, the 1,001st message waiting for one
  recipient is refused with `recipient's mailbox is full` and nothing is stored; one
  acknowledgement makes room for one more. Group messages pending for someone count too; a
  group message skips a member whose mailbox is full, and is refused when all of them are.
- `limits.max_message_bytes`: a body is measured in UTF-8 bytes, not only characters.
- fetches read the store a chunk at a time and answer exactly as before (`"all"` on the last).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any, Final

import pytest
from aiohttp.test_utils import TestClient, TestServer

from chatserver.app import create_app
from chatserver.config import Config
from chatserver.keys import store_key
from chatserver.stores.base import Store
from helpers.accounts import users_on
from helpers.backends import db_rows
from helpers.configs import with_limits
from helpers.frames import FETCH_TS, assert_error, frame, new_phone
from helpers.groups import create_group, open_group, send_grp
from helpers.ws import WS, assert_quiet, fetch_all, open_personal, open_receive, recv, send_new_msg

pytestmark = pytest.mark.backends

ClientFactory = Callable[..., Awaitable[TestClient]]
ServerFactory = Callable[..., Awaitable[TestServer]]
FULL: Final = "recipient's mailbox is full"
WINDOW: Final = 100  # new_msg frames sent before their msg_sent are read


async def start(aiohttp_server: ServerFactory, config: Config,
                **limits: Any) -> tuple[TestServer, Store]:
    server = await aiohttp_server(create_app(with_limits(config, **limits)))
    return server, server.app[store_key]


async def send_many(ws: WS, msg_from: str, msg_to: str, n: int) -> list[dict[str, str]]:
    """Send `n` new_msg, WINDOW at a time, each answered msg_sent; the frames as sent."""
    sent: list[dict[str, str]] = []
    while len(sent) < n:
        burst = [frame("new_msg", msg_from, msg_to, f"m{len(sent) + i}")
                 for i in range(min(WINDOW, n - len(sent)))]
        for f in burst:
            await ws.send_json(f)
        for f in burst:
            reply = await recv(ws)
            assert (reply["command"], reply["message"]) == ("msg_sent", f["sent_timestamp"]), reply
        sent += burst
    return sent


async def test_the_1001st_waiting_message_is_refused_and_an_acknowledgement_makes_room(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config) -> None:
    server, store = await start(aiohttp_server, config, max_waiting_per_recipient=1000)
    login = users_on(aiohttp_client, server)
    a, b = new_phone(), new_phone()
    client_a, client_b = await login(a), await login(b)
    to_b = await open_personal(client_a, a, b)
    sent = await send_many(to_b, a, b, 1000)

    refused = frame("new_msg", a, b, "the one too many")
    await to_b.send_json(refused)
    assert_error(await recv(to_b), "new_msg", a, b, FULL)
    stored = await store.pending_for(b)
    assert [m.message for m in stored] == [f["message"] for f in sent]  # nothing more stored

    # a retry of a stored message is still answered msg_sent (SPEC 5.1), not refused
    await send_new_msg(to_b, a, b, sent[5]["message"], sent[5]["sent_timestamp"])
    # nor is anyone else's mailbox affected
    await send_new_msg(await open_personal(client_b, b, a), b, a, "b can still write to a")

    # B takes one message off the server: there is room for exactly one more
    inbox_a = await open_receive(client_a, a, probe="fetch_grp_msgs")
    from_a = await open_personal(client_b, b, a)
    await from_a.send_json(frame("msg_received", b, a, sent[0]["sent_timestamp"]))
    receipt = await recv(inbox_a)  # the receipt, pushed to A once the deletion is committed
    assert (receipt["command"], receipt["message"]) == ("msg_received", sent[0]["sent_timestamp"])
    await send_new_msg(to_b, a, b, "room for one")
    await to_b.send_json(frame("new_msg", a, b, "and no more"))
    assert_error(await recv(to_b), "new_msg", a, b, FULL)
    assert len(await store.pending_for(b)) == 1000


async def test_group_messages_count_and_a_full_member_is_left_out(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config) -> None:
    """A group message pending for B counts in B's mailbox; a group message skips a member whose
    mailbox is full (the others get it), and is refused when every other member is full."""
    server, store = await start(aiohttp_server, config, max_waiting_per_recipient=3)
    login = users_on(aiohttp_client, server)
    a, b, c = new_phone(), new_phone(), new_phone()
    client_a, client_b, client_c = await login(a), await login(b), await login(c)
    key = (await create_group(client_a, "quota", [b, c]))["key"]
    in_group = await open_group(client_a, a, key)
    inbox_b = await open_receive(client_b, b, probe="fetch_msgs")
    inbox_c = await open_receive(client_c, c, probe="fetch_msgs")

    first = await send_grp(in_group, a, key, "pending for b and c")
    for inbox in (inbox_b, inbox_c):
        assert (await recv(inbox))["message"] == first["message"]
    to_b = await open_personal(client_a, a, b)
    await send_new_msg(to_b, a, b, "b: 2 of 3")
    await send_new_msg(to_b, a, b, "b: 3 of 3")
    await recv(inbox_b)
    await recv(inbox_b)
    await to_b.send_json(frame("new_msg", a, b, "b is full"))
    assert_error(await recv(to_b), "new_msg", a, b, FULL)

    second = await send_grp(in_group, a, key, "for c only")  # msg_sent: stored for C
    assert (await recv(inbox_c))["message"] == second["message"]
    replies = await fetch_all(inbox_c, c, "fetch_grp_msgs")
    assert [(m["message"], m["pending"]) for m in replies[0]] == [
        (first["message"], sorted([b, c])), (second["message"], [c])]
    assert [m.message for m in await store.pending_group_for(b)] == [first["message"]]

    await send_new_msg(await open_personal(client_a, a, c), a, c, "c: 3 of 3")
    await recv(inbox_c)
    await in_group.send_json(frame("new_grp_msg", a, key, "for nobody"))
    assert_error(await recv(in_group), "new_grp_msg", a, key, FULL)
    assert len(db_rows(config.database, "SELECT id FROM group_messages WHERE grp = ?", (key,))) == 2
    await assert_quiet(inbox_b, inbox_c)


@pytest.mark.parametrize("command", ["new_msg", "new_grp_msg"])
async def test_max_message_bytes_counts_utf8_bytes(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config,
        command: str) -> None:
    """Finding 4: 4,096 four-byte characters are 16 KiB. The byte limit holds whatever the
    character count: 250 emoji (1000 bytes) pass a limit of 1000 bytes, 251 are refused."""
    server, store = await start(aiohttp_server, config, max_message_bytes=1000)
    login = users_on(aiohttp_client, server)
    a, b = new_phone(), new_phone()
    client_a = await login(a)
    await login(b)
    if command == "new_msg":
        ws, to = await open_personal(client_a, a, b), b
    else:
        to = (await create_group(client_a, "bytes", [b]))["key"]
        ws = await open_group(client_a, a, to)
    fits = "🎉" * 250
    await ws.send_json(frame(command, a, to, fits))
    assert (await recv(ws))["command"] == "msg_sent"
    await ws.send_json(frame(command, a, to, fits + "🎉"))
    assert_error(await recv(ws), command, a, to, "the message is longer than 1000 bytes")
    await ws.send_json(frame(command, a, to, "x" * 1001))  # one byte a character: the same limit
    assert_error(await recv(ws), command, a, to, "the message is longer than 1000 bytes")
    stored = [m.message for m in await store.pending_for(b)] + \
        [m.message for m in await store.pending_group_for(b)]
    assert stored == [fits]


async def test_the_default_byte_limit_takes_any_text_of_max_message_chars(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config) -> None:
    """The default (16384) lets 4,096 characters of four bytes through: the character limit of
    SPEC 5.1 stays the one a person meets; the byte limit is what an operator lowers."""
    server, store = await start(aiohttp_server, config)
    login = users_on(aiohttp_client, server)
    a, b = new_phone(), new_phone()
    client_a = await login(a)
    await login(b)
    ws = await open_personal(client_a, a, b)
    await send_new_msg(ws, a, b, "😀" * 4096)
    assert [len(m.message.encode()) for m in await store.pending_for(b)] == [16384]


@pytest.mark.parametrize(("stored", "sizes"), [(25, [10, 10, 5]), (20, [10, 10]), (0, [0])])
async def test_a_fetch_answers_chunk_by_chunk_as_before(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config,
        stored: int, sizes: list[int]) -> None:
    """Paginated reads give the same wire: chunks of fetch.chunk_size, oldest first, "all":
    "True" on the last one only (also when the backlog is a whole number of chunks)."""
    cfg = dataclasses.replace(config, fetch=dataclasses.replace(config.fetch, chunk_size=10))
    server = await aiohttp_server(create_app(cfg))
    login = users_on(aiohttp_client, server)
    a, b = new_phone(), new_phone()
    client_a, client_b = await login(a), await login(b)
    key = (await create_group(client_a, "pages", [b]))["key"]
    sent = await send_many(await open_personal(client_a, a, b), a, b, stored)
    in_group = await open_group(client_a, a, key)
    sent_grp = [await send_grp(in_group, a, key, f"g{i}") for i in range(stored)]
    inbox = await client_b.ws_connect(f"/ws/chat/special/{b}/")
    for command, frames, sender in (("fetch_msgs", sent, a), ("fetch_grp_msgs", sent_grp, f"{key}-{a}")):
        chunks = await fetch_all(inbox, b, command)
        assert [len(c) for c in chunks] == sizes
        messages = [m for c in chunks for m in c]
        assert [m["message"] for m in messages] == [f["message"] for f in frames]
        assert all(m["msg_from"] == sender and m["msg_to"] == b and m["command"] == "new_msg"
                   and FETCH_TS.fullmatch(m["sent_timestamp"]) for m in messages), messages
