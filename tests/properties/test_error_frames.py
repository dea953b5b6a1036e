"""Refused frames and refused handshakes (SPEC 5, 5.2, 5.5, 6).

Every refused frame is answered with one error frame of exactly the SPEC 5.5 shape on the same
socket, the socket stays open (each test proves it with a valid frame and its reply), and nothing
refused is stored. Frames over `limits.max_frame_bytes` close the socket with 1009. Handshakes are
refused before any upgrade: 403 for who or where the request comes from, 404 for an unknown peer.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer

from chatserver.app import create_app
from chatserver.config import Config
from chatserver.keys import store_key
from chatserver.stores.base import Store
from helpers.accounts import UserFactory, users_on
from helpers.configs import with_limits
from helpers.frames import FRAME_KEYS, assert_error, frame, new_phone
from helpers.timing import TIMEOUT
from helpers.ws import (
    WS,
    assert_alive,
    assert_quiet,
    fetch_all,
    open_personal,
    open_receive,
    recv,
    send_new_msg,
)

ClientFactory = Callable[..., Awaitable[TestClient]]
ServerFactory = Callable[..., Awaitable[TestServer]]
REFUSED = "must never be stored"


@dataclass
class Dialogue:
    """A logged-in A with a send socket to B, and B's receive socket (to see pushes)."""

    a: str
    b: str
    client_a: TestClient
    client_b: TestClient
    ws: WS
    inbox_b: WS


@pytest.fixture
async def dialogue(as_user: UserFactory) -> Dialogue:
    a, b = new_phone(), new_phone()
    client_a, client_b = await as_user(a), await as_user(b)
    inbox_b = await open_receive(client_b, b)
    return Dialogue(a, b, client_a, client_b, await open_personal(client_a, a, b), inbox_b)


async def refused(d: Dialogue, store: Store, type_: str) -> dict[str, Any]:
    """The next frame on A's socket is an error of `type_`; B was told nothing; the socket still
    works; and the only message stored for B is the one that proved it."""
    error = await recv(d.ws)
    assert_error(error, type_, d.a, d.b)
    alive = await assert_alive(d.ws, d.a, d.b)
    assert await recv(d.inbox_b) == alive  # the first push B sees: nothing refused was pushed
    assert [m.message for m in await store.pending_for(d.b)] == [alive["message"]]
    return error


# -- frames that are not a JSON object ----------------------------------------------------------


@pytest.mark.parametrize("text", [
    "{not json",
    "",
    "   ",
    '{"command": "new_msg"',
    "[]",
    '["new_msg"]',
    "{valid} trailing",
    '"new_msg"',
    "42",
    "null",
    "true",
], ids=["garbage", "empty", "blank", "truncated", "empty-array", "array", "trailing",
        "string", "number", "null", "bool"])
async def test_a_frame_that_is_not_a_json_object_is_refused(
        dialogue: Dialogue, store: Store, text: str) -> None:
    await dialogue.ws.send_str(text)
    await refused(dialogue, store, "invalid")


async def test_an_array_holding_a_valid_frame_is_refused(dialogue: Dialogue, store: Store) -> None:
    d = dialogue
    await d.ws.send_str(json.dumps([frame("new_msg", d.a, d.b, REFUSED)]))
    await refused(d, store, "invalid")


async def test_a_binary_frame_is_refused_even_with_a_valid_frame_inside(
        dialogue: Dialogue, store: Store) -> None:
    d = dialogue
    await d.ws.send_bytes(json.dumps(frame("new_msg", d.a, d.b, REFUSED)).encode())
    await refused(d, store, "invalid")


# -- missing and wrongly typed fields -----------------------------------------------------------


@pytest.mark.parametrize("field", FRAME_KEYS)
async def test_a_missing_field_is_refused(dialogue: Dialogue, store: Store, field: str) -> None:
    d = dialogue
    data = frame("new_msg", d.a, d.b, REFUSED)
    del data[field]
    await d.ws.send_json(data)
    await refused(d, store, "invalid" if field == "command" else "new_msg")


@pytest.mark.parametrize("value", [42, 4.5, None, ["text"], {"text": "x"}, True],
                         ids=["int", "float", "null", "list", "object", "bool"])
@pytest.mark.parametrize("field", FRAME_KEYS)
async def test_a_field_that_is_not_a_string_is_refused(
        dialogue: Dialogue, store: Store, field: str, value: object) -> None:
    d = dialogue
    data: dict[str, Any] = frame("new_msg", d.a, d.b, REFUSED)
    data[field] = value
    await d.ws.send_json(data)
    await refused(d, store, "invalid" if field == "command" else "new_msg")


@pytest.mark.parametrize("command", ["msg_received", "msg_read", "is_typing"])
@pytest.mark.parametrize("field", ["message", "msg_from", "msg_to", "sent_timestamp"])
async def test_other_commands_check_their_fields_too(
        dialogue: Dialogue, store: Store, command: str, field: str) -> None:
    d = dialogue
    data: dict[str, Any] = frame(command, d.a, d.b, "2026-11-28 10:00:00")
    data[field] = None
    await d.ws.send_json(data)
    await refused(d, store, command)


# -- commands and addresses --------------------------------------------------------------------


@pytest.mark.parametrize("command", [
    "fly", "", "NEW_MSG", "new_msg ", "msg_sent", "error", "fetch_msgs", "new_grp_msg",
    "room_msg",
])
async def test_an_unknown_command_is_refused_with_its_name_as_type(
        dialogue: Dialogue, store: Store, command: str) -> None:
    d = dialogue
    await d.ws.send_json(frame(command, d.a, d.b, REFUSED))
    await refused(d, store, command)


async def test_a_long_unknown_command_is_echoed_whole(dialogue: Dialogue, store: Store) -> None:
    d = dialogue
    command = "c" * 100
    await d.ws.send_json(frame(command, d.a, d.b, REFUSED))
    await refused(d, store, command)


@pytest.mark.parametrize("command", ["new_msg", "msg_received", "msg_read", "is_typing"])
@pytest.mark.parametrize("who", ["peer", "stranger", "not-a-phone", "empty"])
async def test_msg_from_must_be_the_sockets_user(
        dialogue: Dialogue, store: Store, as_user: UserFactory, command: str, who: str) -> None:
    d = dialogue
    stranger = new_phone()
    await as_user(stranger)
    msg_from = {"peer": d.b, "stranger": stranger, "not-a-phone": "alice", "empty": ""}[who]
    await d.ws.send_json(frame(command, msg_from, d.b, "2026-11-28 10:00:00"))
    await refused(d, store, command)


@pytest.mark.parametrize("command", ["new_msg", "msg_received", "msg_read", "is_typing"])
@pytest.mark.parametrize("who", ["self", "stranger", "not-a-phone", "empty"])
async def test_msg_to_must_be_the_sockets_peer(
        dialogue: Dialogue, store: Store, as_user: UserFactory, command: str, who: str) -> None:
    d = dialogue
    stranger = new_phone()
    client_s = await as_user(stranger)
    inbox_s = await open_receive(client_s, stranger)
    msg_to = {"self": d.a, "stranger": stranger, "not-a-phone": "bob", "empty": ""}[who]
    await d.ws.send_json(frame(command, d.a, msg_to, "2026-11-28 10:00:00"))
    await refused(d, store, command)
    await assert_quiet(inbox_s)
    assert await store.pending_for(stranger) == []


# -- message bodies ------------------------------------------------------------------------------


async def test_an_empty_message_is_refused(dialogue: Dialogue, store: Store) -> None:
    d = dialogue
    await d.ws.send_json(frame("new_msg", d.a, d.b, ""))
    await refused(d, store, "new_msg")


@pytest.mark.parametrize("body", ["x" * 4097, "é" * 4097, "x" * 60_000])
async def test_a_message_over_max_message_chars_is_refused(
        dialogue: Dialogue, store: Store, body: str) -> None:
    d = dialogue
    await d.ws.send_json(frame("new_msg", d.a, d.b, body))
    await refused(d, store, "new_msg")


@pytest.mark.parametrize("body", ["x" * 4096, "é" * 4096, "y"])
async def test_a_message_up_to_max_message_chars_is_accepted(
        dialogue: Dialogue, store: Store, body: str) -> None:
    d = dialogue
    sent = await send_new_msg(d.ws, d.a, d.b, body)
    assert await recv(d.inbox_b) == sent
    assert [m.message for m in await store.pending_for(d.b)] == [body]


async def test_max_message_chars_comes_from_the_config(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config) -> None:
    server = await aiohttp_server(create_app(with_limits(config, max_message_chars=10)))
    login = users_on(aiohttp_client, server)
    a, b = new_phone(), new_phone()
    client_a = await login(a)
    await login(b)
    ws = await open_personal(client_a, a, b)
    await ws.send_json(frame("new_msg", a, b, "12345678901"))
    assert_error(await recv(ws), "new_msg", a, b)
    await send_new_msg(ws, a, b, "1234567890")
    stored = await server.app[store_key].pending_for(b)
    assert [m.message for m in stored] == ["1234567890"]


# -- timestamps -----------------------------------------------------------------------------------

BAD_TIMESTAMPS = [
    "",
    "yesterday",
    "2026-11-28",
    "2026-11-28 10:00",
    "2026/11/28 10:00:00",
    "28-11-2026 10:00:00",
    "2026-11-28 10:00:00.1234567",
    "2026-11-28 10:00:00.",
    "2026-11-28  10:00:00",
    "2026-02-30 10:00:00",
    "2026-13-01 10:00:00",
    "2026-11-28 24:00:00",
    "2026-11-28 10:60:00",
    "0000-01-01 00:00:00",
    "2026-11-28T10:00:00ZZ",
    " 2026-11-28 10:00:00",
    "2026-11-28 10:00:00Z ",
    "1764324000",
]


@pytest.mark.parametrize("sent_timestamp", BAD_TIMESTAMPS)
@pytest.mark.parametrize("command", ["new_msg", "is_typing"])
async def test_an_unparseable_sent_timestamp_is_refused(
        dialogue: Dialogue, store: Store, command: str, sent_timestamp: str) -> None:
    d = dialogue
    await d.ws.send_json(frame(command, d.a, d.b, REFUSED, sent_timestamp))
    await refused(d, store, command)


@pytest.mark.parametrize("message", ["", "now", "2026-11-28 25:00:00", "2026-11-28T10:00:00+01"])
@pytest.mark.parametrize("command", ["msg_received", "msg_read"])
async def test_an_acknowledgement_naming_an_unparseable_timestamp_is_refused(
        dialogue: Dialogue, store: Store, command: str, message: str) -> None:
    d = dialogue
    await d.ws.send_json(frame(command, d.a, d.b, message))
    await refused(d, store, command)


# -- nothing to acknowledge ---------------------------------------------------------------------


async def test_msg_received_with_nothing_to_acknowledge(dialogue: Dialogue, store: Store) -> None:
    d = dialogue
    await d.ws.send_json(frame("msg_received", d.a, d.b, "2026-11-28 10:00:00.000"))
    error = await refused(d, store, "msg_received")
    assert error["message"] == "couldn't find a message to delete"


async def test_msg_received_acknowledges_only_the_peers_messages_to_the_user(
        as_user: UserFactory) -> None:
    """A cannot delete its own message to B, nor B's message to someone else."""
    a, b, c = new_phone(), new_phone(), new_phone()
    client_a, client_b, client_c = await as_user(a), await as_user(b), await as_user(c)
    to_b = await open_personal(client_a, a, b)
    mine = await send_new_msg(to_b, a, b, "A to B")
    b_to_c = await send_new_msg(await open_personal(client_b, b, c), b, c, "B to C")

    for named in (mine, b_to_c):
        await to_b.send_json(frame("msg_received", a, b, named["sent_timestamp"]))
        error = await recv(to_b)
        assert_error(error, "msg_received", a, b)
        assert error["message"] == "couldn't find a message to delete"
    [[still_b]] = await fetch_all(await open_receive(client_b, b), b)
    assert still_b["message"] == "A to B"
    [[still_c]] = await fetch_all(await open_receive(client_c, c), c)
    assert still_c["message"] == "B to C"


async def test_a_second_msg_received_for_the_same_message_is_refused(as_user: UserFactory) -> None:
    a, b = new_phone(), new_phone()
    client_a, client_b = await as_user(a), await as_user(b)
    inbox_a = await open_receive(client_a, a)
    sent = await send_new_msg(await open_personal(client_a, a, b), a, b, "once")
    to_a = await open_personal(client_b, b, a)
    ack = frame("msg_received", b, a, sent["sent_timestamp"])
    await to_a.send_json(ack)
    assert await recv(inbox_a) == ack
    await to_a.send_json(frame("msg_received", b, a, sent["sent_timestamp"]))
    error = await recv(to_a)
    assert_error(error, "msg_received", b, a)
    assert error["message"] == "couldn't find a message to delete"
    await assert_quiet(inbox_a)  # a refused acknowledgement is not pushed


# -- blocks ---------------------------------------------------------------------------------------


async def test_a_message_to_a_recipient_who_blocked_the_sender_is_refused(
        dialogue: Dialogue, store: Store) -> None:
    d = dialogue
    resp = await d.client_b.post("/chat/special/block", json={"phone": d.a})
    assert resp.status == 201, await resp.text()

    await d.ws.send_json(frame("new_msg", d.a, d.b, REFUSED))
    error = await recv(d.ws)
    assert_error(error, "new_msg", d.a, d.b)
    assert "block" in error["message"]
    await d.ws.send_json(frame("is_typing", d.a, d.b))  # not pushed either (error or silence)
    await assert_quiet(d.inbox_b)
    assert await store.pending_for(d.b) == []

    # Lifting the block lets the next message through; the refused one never comes back.
    resp = await d.client_b.delete("/chat/special/block", params={"phone": d.a})
    assert resp.status == 200, await resp.text()
    sent = frame("new_msg", d.a, d.b, "after the block")
    await d.ws.send_json(sent)
    reply = await recv(d.ws)
    if reply["command"] == "error":  # the typing refusal, when typing is refused out loud
        assert_error(reply, "is_typing", d.a, d.b)
        reply = await recv(d.ws)
    assert (reply["command"], reply["message"]) == ("msg_sent", sent["sent_timestamp"])
    assert await recv(d.inbox_b) == sent
    assert [m.message for m in await store.pending_for(d.b)] == ["after the block"]


# -- message rate -------------------------------------------------------------------------------


async def test_a_burst_over_the_message_rate_is_refused_and_not_stored(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config) -> None:
    rate = 2
    server = await aiohttp_server(create_app(with_limits(config, messages_per_second=rate)))
    store = server.app[store_key]
    login = users_on(aiohttp_client, server)
    a, b = new_phone(), new_phone()
    client_a, client_b = await login(a), await login(b)
    inbox_b = await open_receive(client_b, b)
    ws = await open_personal(client_a, a, b)

    burst = [frame("new_msg", a, b, f"burst {i}") for i in range(4 * rate + 2)]
    for f in burst:  # all at once: a burst of up to 2x the rate is allowed, then refusals
        await ws.send_json(f)
    replies = [await recv(ws) for _ in burst]
    # Match acknowledgements to frames by timestamp: replies need not come in frame order.
    acknowledged = {r["message"] for r in replies if r["command"] == "msg_sent"}
    errors = [r for r in replies if r["command"] != "msg_sent"]
    accepted = [f for f in burst if f["sent_timestamp"] in acknowledged]
    assert accepted == burst[: len(accepted)]  # the allowance is spent in frame order
    assert 2 * rate <= len(accepted) <= 2 * rate + 1  # + what refills while the burst is handled
    assert len(errors) == len(burst) - len(accepted)
    for error in errors:
        assert_error(error, "new_msg", a, b)
        assert "rate" in error["message"]

    assert [m.message for m in await store.pending_for(b)] == [f["message"] for f in accepted]
    pushed = [await recv(inbox_b) for _ in accepted]
    assert pushed == accepted
    await assert_quiet(inbox_b)
    fetched = [m["message"] for chunk in await fetch_all(inbox_b, b) for m in chunk]
    assert fetched == [f["message"] for f in accepted]


async def test_typing_and_receipts_do_not_spend_the_message_rate(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config) -> None:
    server = await aiohttp_server(create_app(with_limits(config, messages_per_second=1)))
    login = users_on(aiohttp_client, server)
    a, b = new_phone(), new_phone()
    client_a = await login(a)
    await login(b)
    ws = await open_personal(client_a, a, b)
    for _ in range(5):
        await ws.send_json(frame("msg_read", a, b, "2026-11-28 10:00:00"))
        await ws.send_json(frame("is_typing", a, b))
    await send_new_msg(ws, a, b, "first")
    await send_new_msg(ws, a, b, "second")


# -- the receive socket ---------------------------------------------------------------------------


@dataclass
class Inbox:
    a: str
    b: str
    ws: WS


@pytest.fixture
async def inbox(as_user: UserFactory) -> Inbox:
    """A's receive socket, with one message from B waiting for A and one from A waiting for B."""
    a, b = new_phone(), new_phone()
    client_a, client_b = await as_user(a), await as_user(b)
    await send_new_msg(await open_personal(client_b, b, a), b, a, "for A")
    await send_new_msg(await open_personal(client_a, a, b), a, b, "for B")
    return Inbox(a, b, await open_receive(client_a, a))


async def receive_refused(box: Inbox, type_: str) -> None:
    """The next frame on A's receive socket is an error of `type_`, and the socket still works."""
    error = await recv(box.ws)
    assert_error(error, type_, box.a, None)
    [[only]] = await fetch_all(box.ws, box.a)
    assert (only["msg_to"], only["message"]) == (box.a, "for A")


@pytest.mark.parametrize(("data", "type_"), [
    ({"msg_to": "A"}, "invalid"),
    ({"command": None, "msg_to": "A"}, "invalid"),
    ({"command": 7, "msg_to": "A"}, "invalid"),
    ({"command": ["fetch_msgs"], "msg_to": "A"}, "invalid"),
    ({"command": "fetch_msgs"}, "fetch_msgs"),
    ({"command": "fetch_msgs", "msg_to": None}, "fetch_msgs"),
    ({"command": "fetch_msgs", "msg_to": 12345678901}, "fetch_msgs"),
    ({"command": "fetch_msgs", "msg_to": "B"}, "fetch_msgs"),
    ({"command": "fetch_msgs", "msg_to": ""}, "fetch_msgs"),
    ({"command": "fetch_grp_msgs", "msg_to": "B"}, "fetch_grp_msgs"),
    ({"command": "new_msg", "msg_to": "A"}, "new_msg"),
    ({"command": "msg_received", "msg_to": "A"}, "msg_received"),
    ({"command": "dance", "msg_to": "A"}, "dance"),
], ids=["no-command", "null-command", "int-command", "list-command", "no-msg_to", "null-msg_to",
        "int-msg_to", "other-msg_to", "empty-msg_to", "grp-other-msg_to", "send-command",
        "ack-command", "unknown-command"])
async def test_a_bad_receive_socket_frame_is_refused(
        inbox: Inbox, data: dict[str, Any], type_: str) -> None:
    """Also: naming another user's phone fetches nothing of theirs."""
    names = {"A": inbox.a, "B": inbox.b}
    sent = {k: names.get(v, v) if isinstance(v, str) else v for k, v in data.items()}
    await inbox.ws.send_json(sent)
    await receive_refused(inbox, type_)


@pytest.mark.parametrize("text", ["{not json", "[]", '"fetch_msgs"', "7"])
async def test_a_receive_socket_frame_that_is_not_a_json_object_is_refused(
        inbox: Inbox, text: str) -> None:
    await inbox.ws.send_str(text)
    await receive_refused(inbox, "invalid")


async def test_a_binary_frame_on_the_receive_socket_is_refused(inbox: Inbox) -> None:
    await inbox.ws.send_bytes(json.dumps({"command": "fetch_msgs", "msg_to": inbox.a}).encode())
    await receive_refused(inbox, "invalid")


# -- frame size ----------------------------------------------------------------------------------


def padded(data: dict[str, str], size: int) -> str:
    """`data` as JSON text padded with trailing blanks (still valid JSON) to `size` bytes."""
    text = json.dumps(data)
    assert len(text.encode()) <= size
    return text + " " * (size - len(text.encode()))


@pytest.mark.parametrize("kind", ["personal", "receive"])
@pytest.mark.parametrize("size", [65_537, 200_000])
async def test_a_frame_over_max_frame_bytes_closes_the_socket_with_1009(
        dialogue: Dialogue, store: Store, kind: str, size: int) -> None:
    d = dialogue
    if kind == "personal":
        ws = await open_personal(d.client_a, d.a, d.b)
        text = padded(frame("new_msg", d.a, d.b, REFUSED), size)
    else:
        ws = await open_receive(d.client_a, d.a)
        text = padded({"command": "fetch_msgs", "msg_to": d.a}, size)
    await ws.send_str(text)
    msg = await ws.receive(timeout=TIMEOUT)
    assert msg.type is WSMsgType.CLOSE, msg
    assert msg.data == 1009
    assert ws.close_code == 1009
    # Only that socket is closed; nothing of the frame was stored.
    alive = await assert_alive(d.ws, d.a, d.b)
    assert [m.message for m in await store.pending_for(d.b)] == [alive["message"]]


async def test_a_binary_frame_over_max_frame_bytes_closes_the_socket_with_1009(
        dialogue: Dialogue) -> None:
    d = dialogue
    await d.ws.send_bytes(b"x" * 65_537)
    msg = await d.ws.receive(timeout=TIMEOUT)
    assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1009)


async def test_a_frame_just_under_max_frame_bytes_is_accepted(
        dialogue: Dialogue, store: Store) -> None:
    d = dialogue
    sent = frame("new_msg", d.a, d.b, "padded")
    await d.ws.send_str(padded(sent, 65_535))
    reply = await recv(d.ws)
    assert (reply["command"], reply["message"]) == ("msg_sent", sent["sent_timestamp"])


async def test_a_frame_of_exactly_max_frame_bytes_is_accepted(
        dialogue: Dialogue, store: Store) -> None:
    d = dialogue
    sent = frame("new_msg", d.a, d.b, "padded")
    await d.ws.send_str(padded(sent, 65_536))
    reply = await recv(d.ws)
    assert (reply["command"], reply["message"]) == ("msg_sent", sent["sent_timestamp"])


async def test_max_frame_bytes_comes_from_the_config(
        aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config) -> None:
    server = await aiohttp_server(create_app(with_limits(config, max_frame_bytes=1000)))
    login = users_on(aiohttp_client, server)
    a, b = new_phone(), new_phone()
    client_a = await login(a)
    await login(b)
    ws = await open_personal(client_a, a, b)
    await send_new_msg(ws, a, b, "small")
    await ws.send_str(padded(frame("new_msg", a, b, REFUSED), 1001))
    msg = await ws.receive(timeout=TIMEOUT)
    assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1009)


# -- handshakes -----------------------------------------------------------------------------------


@dataclass
class Pair:
    a: str
    b: str
    client_a: TestClient


@pytest.fixture
async def pair(as_user: UserFactory) -> Pair:
    a, b = new_phone(), new_phone()
    client_a = await as_user(a)
    await as_user(b)
    return Pair(a, b, client_a)


def paths(p: Pair) -> dict[str, str]:
    return {"receive": f"/ws/chat/special/{p.a}/", "personal": f"/ws/chat/personal/{p.a}/{p.b}/"}


async def assert_refused(client: TestClient, path: str, status: int, **kwargs: Any) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refusal:
        await client.ws_connect(path, **kwargs)
    assert refusal.value.status == status


@pytest.mark.parametrize("kind", ["receive", "personal"])
async def test_no_session_is_refused_with_403(pair: Pair, server: TestServer,
                                              aiohttp_client: ClientFactory, kind: str) -> None:
    anonymous = await aiohttp_client(server)
    await assert_refused(anonymous, paths(pair)[kind], 403)
    forged = await aiohttp_client(server)
    await assert_refused(forged, paths(pair)[kind], 403, headers={"Cookie": "chat_session=forged"})


async def test_a_socket_for_another_user_is_refused_with_403(pair: Pair) -> None:
    p = pair
    await assert_refused(p.client_a, f"/ws/chat/special/{p.b}/", 403)
    await assert_refused(p.client_a, f"/ws/chat/personal/{p.b}/{p.a}/", 403)
    await assert_refused(p.client_a, f"/ws/chat/personal/{new_phone()}/{p.b}/", 403)


@pytest.mark.parametrize("kind", ["receive", "personal"])
@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example"},
    {"Origin": "null"},
    {"Origin": "https://127.0.0.1"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    {"Sec-Fetch-Site": "cross-site", "Origin": "SELF"},
], ids=["foreign-origin", "null-origin", "other-scheme", "cross-site", "same-site",
        "cross-site-with-own-origin"])
async def test_a_cross_site_handshake_is_refused_with_403(
        pair: Pair, kind: str, headers: dict[str, str]) -> None:
    own = str(pair.client_a.make_url("")).rstrip("/")
    sent = {k: own if v == "SELF" else v for k, v in headers.items()}
    await assert_refused(pair.client_a, paths(pair)[kind], 403, headers=sent)


@pytest.mark.parametrize("kind", ["receive", "personal"])
@pytest.mark.parametrize("headers", [
    {"Origin": "SELF"},
    {"Sec-Fetch-Site": "same-origin"},
    {"Sec-Fetch-Site": "none"},
    {},
], ids=["own-origin", "same-origin", "fetch-none", "non-browser"])
async def test_a_same_origin_handshake_is_accepted(
        pair: Pair, kind: str, headers: dict[str, str]) -> None:
    own = str(pair.client_a.make_url("")).rstrip("/")
    sent = {k: own if v == "SELF" else v for k, v in headers.items()}
    if kind == "receive":
        await open_receive(pair.client_a, pair.a, headers=sent)  # answers a fetch
    else:
        ws = await open_personal(pair.client_a, pair.a, pair.b, headers=sent)
        await assert_alive(ws, pair.a, pair.b)


@pytest.mark.parametrize("msg_to", [
    "unregistered", "abc", "123456789", "1234567890123456", "12345678901x", "+12345678901",
    "１２３４５６７８９０",
], ids=["unregistered", "letters", "9-digits", "16-digits", "trailing-letter", "plus",
        "fullwidth-digits"])
async def test_an_unknown_peer_is_refused_with_404(pair: Pair, msg_to: str) -> None:
    peer = new_phone() if msg_to == "unregistered" else msg_to
    await assert_refused(pair.client_a, f"/ws/chat/personal/{pair.a}/{peer}/", 404)
