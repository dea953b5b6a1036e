"""The JSON endpoints (SPEC 4): POST /chat/special/personal, GET /chat/info and
GET /chat/info/personal, their receipts and waiting counts as messages go over real sockets, and the
one error shape `{"error": str}` for every refusal."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient

from helpers.accounts import UserFactory
from helpers.frames import SERVER_TS, TODAY, frame, new_phone
from helpers.ws import assert_json_error, recv, send_new_msg

# The same tests on every store and hub (tests/helpers/backends.py). aiohttp-session 2.12 stores its state
# under str keys; aiohttp 3.14 warns once per key, which `filterwarnings = error` turns into a 500
# for whichever test makes the process's first request.
pytestmark = [
    pytest.mark.backends,
    pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning:aiohttp_session"),
]

EMPTY_SIDE = {"last_received_receiver": None, "last_seen_receiver": None, "waiting": 0}


async def personal_info(client: TestClient, msg_to: str) -> dict[str, Any]:
    """GET /chat/info/personal?msg_to=..., which must succeed."""
    resp = await client.get("/chat/info/personal", params={"msg_to": msg_to})
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/json"
    return await resp.json()


async def info(client: TestClient) -> dict[str, Any]:
    """GET /chat/info, which must succeed."""
    resp = await client.get("/chat/info")
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/json"
    return await resp.json()


def dialogue_peers(data: dict[str, Any]) -> list[str]:
    """The phones listed in /chat/info's `dialogues`."""
    return [d["msg_to"] for d in data["dialogues"]]


# -- POST /chat/special/personal ----------------------------------------------------------------


async def test_special_personal_opens_a_dialogue(as_user: UserFactory) -> None:
    a, b = new_phone(), new_phone()
    client = await as_user(a)
    await as_user(b)
    resp = await client.post("/chat/special/personal", json={"msg_to": b})
    assert resp.status == 201
    assert resp.content_type == "application/json"
    assert await resp.json() == {"msg_to": b, "outgoing": EMPTY_SIDE, "incoming": EMPTY_SIDE}
    # Opening it again is harmless.
    again = await client.post("/chat/special/personal", json={"msg_to": b})
    assert again.status == 201
    assert await again.json() == {"msg_to": b, "outgoing": EMPTY_SIDE, "incoming": EMPTY_SIDE}


async def test_special_personal_unknown_phone_is_404(as_user: UserFactory) -> None:
    a, ghost = new_phone(), new_phone()
    client = await as_user(a)
    resp = await client.post("/chat/special/personal", json={"msg_to": ghost})
    await assert_json_error(resp, 404)
    assert dialogue_peers(await info(client)) == []


@pytest.mark.parametrize("body", [
    json.dumps({"msg_to": "not a phone"}),
    json.dumps({"msg_to": "555123456"}),                 # 9 digits
    json.dumps({"msg_to": "5551234567890123"}),          # 16 digits
    json.dumps({"msg_to": "٠١٢٣٤٥٦٧٨٩"}),                # not ASCII digits
    json.dumps({"msg_to": 5551234567}),                  # a number, not a string
    json.dumps({"msg_to": None}),
    json.dumps({"msg_to": ["5551234567"]}),
    json.dumps({}),
    json.dumps({"phone": "5551234567"}),
    "not json",
    "{\"msg_to\": ",
    "",
    json.dumps(["5551234567"]),
    json.dumps("5551234567"),
    "null",
    "42",
], ids=["letters", "9-digits", "16-digits", "unicode-digits", "number", "null-value", "list-value",
        "empty-object", "wrong-key", "not-json", "truncated", "empty-body", "array", "string",
        "null", "number-body"])
async def test_special_personal_bad_body_is_400(as_user: UserFactory, body: str) -> None:
    client = await as_user(new_phone())
    await as_user("5551234567")
    resp = await client.post("/chat/special/personal", data=body,
                             headers={"Content-Type": "application/json"})
    await assert_json_error(resp, 400)
    assert dialogue_peers(await info(client)) == []


async def test_special_personal_body_not_utf8_is_400(as_user: UserFactory) -> None:
    client = await as_user(new_phone())
    resp = await client.post("/chat/special/personal", data=b'{"msg_to": "\xff\xfe"}',
                             headers={"Content-Type": "application/json"})
    await assert_json_error(resp, 400)


async def test_special_personal_deeply_nested_json_is_400(as_user: UserFactory) -> None:
    """JSON nested past the parser's recursion limit is bad input, not a server error."""
    client = await as_user(new_phone())
    resp = await client.post("/chat/special/personal", data="[" * 20_000,
                             headers={"Content-Type": "application/json"})
    await assert_json_error(resp, 400)


async def test_special_personal_too_large_is_413(as_user: UserFactory) -> None:
    client = await as_user(new_phone())
    peer = new_phone()
    await as_user(peer)
    resp = await client.post("/chat/special/personal",
                             json={"msg_to": peer, "padding": "x" * 70_000})
    await assert_json_error(resp, 413)
    assert dialogue_peers(await info(client)) == []


async def test_special_personal_logged_out_is_401(aiohttp_client: AiohttpClient, server: TestServer,
                                                  as_user: UserFactory) -> None:
    peer = new_phone()
    await as_user(peer)
    client = await aiohttp_client(server)
    resp = await client.post("/chat/special/personal", json={"msg_to": peer})
    await assert_json_error(resp, 401)


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
], ids=repr)
async def test_special_personal_cross_site_is_403(as_user: UserFactory,
                                                  headers: dict[str, str]) -> None:
    a, b = new_phone(), new_phone()
    client = await as_user(a)
    peer = await as_user(b)
    resp = await client.post("/chat/special/personal", json={"msg_to": b}, headers=headers)
    await assert_json_error(resp, 403)
    assert dialogue_peers(await info(client)) == []
    assert dialogue_peers(await info(peer)) == []
    # The same request from the same origin goes through (the 403 was the headers' doing).
    resp = await client.post("/chat/special/personal", json={"msg_to": b},
                             headers={"Sec-Fetch-Site": "same-origin"})
    assert resp.status == 201


async def test_special_personal_wrong_method_is_json_405(as_user: UserFactory) -> None:
    client = await as_user(new_phone())
    await assert_json_error(await client.get("/chat/special/personal"), 405)


# -- GET /chat/info -----------------------------------------------------------------------------


async def test_info_of_a_new_user(as_user: UserFactory) -> None:
    a = new_phone()
    client = await as_user(a, name="Ada")
    data = await info(client)
    # SPEC 4 names these five; more keys (added features) are allowed.
    assert {k: data.get(k) for k in ("phone", "name", "dialogues", "groups", "rooms")} == {
        "phone": a, "name": "Ada", "dialogues": [], "groups": [], "rooms": []}


async def test_info_lists_an_opened_dialogue_on_both_sides(as_user: UserFactory) -> None:
    a, b, c = new_phone(), new_phone(), new_phone()
    alice = await as_user(a, name="Alice")
    bob = await as_user(b, name="Bob")
    carol = await as_user(c)
    assert (await alice.post("/chat/special/personal", json={"msg_to": b})).status == 201
    mine, theirs = await info(alice), await info(bob)
    assert dialogue_peers(mine) == [b]
    assert dialogue_peers(theirs) == [a]
    assert mine["dialogues"][0]["name"] == "Bob"
    assert theirs["dialogues"][0]["name"] == "Alice"
    assert dialogue_peers(await info(carol)) == []
    assert (mine["phone"], mine["name"], mine["groups"], mine["rooms"]) == (a, "Alice", [], [])


async def test_info_lists_a_dialogue_started_by_a_message(as_user: UserFactory) -> None:
    a, b = new_phone(), new_phone()
    alice = await as_user(a)
    bob = await as_user(b)
    ws = await alice.ws_connect(f"/ws/chat/personal/{a}/{b}/")
    await send_new_msg(ws, a, b, "hello", f"{TODAY} 00:00:00.000001")
    await ws.close()
    assert dialogue_peers(await info(alice)) == [b]
    assert dialogue_peers(await info(bob)) == [a]


async def test_info_logged_out_is_401(aiohttp_client: AiohttpClient, server: TestServer) -> None:
    client = await aiohttp_client(server)
    await assert_json_error(await client.get("/chat/info"), 401)


async def test_info_after_logout_is_401(as_user: UserFactory) -> None:
    client = await as_user(new_phone())
    assert (await client.post("/logout", allow_redirects=False)).status == 302
    await assert_json_error(await client.get("/chat/info"), 401)


# -- GET /chat/info/personal --------------------------------------------------------------------


async def test_info_personal_counts_and_receipts(as_user: UserFactory) -> None:
    a, b = new_phone(), new_phone()
    alice = await as_user(a)
    bob = await as_user(b)
    assert await personal_info(alice, b) == {"msg_to": b, "outgoing": EMPTY_SIDE,
                                             "incoming": EMPTY_SIDE}

    a_recv = await alice.ws_connect(f"/ws/chat/special/{a}/")
    a_send = await alice.ws_connect(f"/ws/chat/personal/{a}/{b}/")
    b_send = await bob.ws_connect(f"/ws/chat/personal/{b}/{a}/")
    sent = [f"{TODAY} 00:00:01.000001", f"{TODAY} 00:00:02.000002",
            f"{TODAY}T00:00:03.000003Z"]
    for n, ts in enumerate(sent):
        await send_new_msg(a_send, a, b, f"message {n}", ts)

    mine = await personal_info(alice, b)
    assert mine["msg_to"] == b
    assert mine["outgoing"] == {**EMPTY_SIDE, "waiting": 3}
    assert mine["incoming"] == EMPTY_SIDE
    theirs = await personal_info(bob, a)
    assert theirs["msg_to"] == a
    assert theirs["incoming"] == {**EMPTY_SIDE, "waiting": 3}
    assert theirs["outgoing"] == EMPTY_SIDE

    # B acknowledges the first message; A's receive socket gets the receipt after the commit.
    ack = frame("msg_received", b, a, sent[0], f"{TODAY}T03:04:05.678901Z")
    await b_send.send_json(ack)
    assert await recv(a_recv) == ack
    mine = await personal_info(alice, b)
    assert mine["outgoing"] == {"last_received_receiver": f"{TODAY} 03:04:05.678",
                                "last_seen_receiver": None, "waiting": 2}
    assert SERVER_TS.fullmatch(mine["outgoing"]["last_received_receiver"])
    assert mine["incoming"] == EMPTY_SIDE
    assert (await personal_info(bob, a))["incoming"] == mine["outgoing"]

    # B has read up to the first message.
    read = frame("msg_read", b, a, sent[0], f"{TODAY} 03:04:06.5")
    await b_send.send_json(read)
    assert await recv(a_recv) == read
    mine = await personal_info(alice, b)
    assert mine["outgoing"] == {"last_received_receiver": f"{TODAY} 03:04:05.678",
                                "last_seen_receiver": f"{TODAY} 03:04:06.500", "waiting": 2}
    assert (await personal_info(bob, a))["incoming"] == mine["outgoing"]

    # The last message, acknowledged under its other spelling of the same instant.
    ack = frame("msg_received", b, a, f"{TODAY} 00:00:03.000003", f"{TODAY} 03:04:07")
    await b_send.send_json(ack)
    assert await recv(a_recv) == ack
    mine = await personal_info(alice, b)
    assert mine["outgoing"] == {"last_received_receiver": f"{TODAY} 03:04:07.000",
                                "last_seen_receiver": f"{TODAY} 03:04:06.500", "waiting": 1}
    assert mine["incoming"] == EMPTY_SIDE
    for ws in (a_recv, a_send, b_send):
        await ws.close()


async def test_info_personal_incoming_direction(as_user: UserFactory) -> None:
    """B -> A messages show under A's `incoming` and B's `outgoing`, not the other way round."""
    a, b = new_phone(), new_phone()
    alice = await as_user(a)
    bob = await as_user(b)
    b_send = await bob.ws_connect(f"/ws/chat/personal/{b}/{a}/")
    b_recv = await bob.ws_connect(f"/ws/chat/special/{b}/")
    a_send = await alice.ws_connect(f"/ws/chat/personal/{a}/{b}/")
    await send_new_msg(b_send, b, a, "from bob", f"{TODAY} 00:00:01")
    assert (await personal_info(alice, b))["incoming"] == {**EMPTY_SIDE, "waiting": 1}
    assert (await personal_info(alice, b))["outgoing"] == EMPTY_SIDE
    assert (await personal_info(bob, a))["outgoing"] == {**EMPTY_SIDE, "waiting": 1}

    ack = frame("msg_received", a, b, f"{TODAY} 00:00:01", f"{TODAY} 04:05:06.007")
    await a_send.send_json(ack)
    assert await recv(b_recv) == ack
    expected = {"last_received_receiver": f"{TODAY} 04:05:06.007", "last_seen_receiver": None,
                "waiting": 0}
    assert (await personal_info(alice, b))["incoming"] == expected
    assert (await personal_info(bob, a))["outgoing"] == expected
    assert (await personal_info(alice, b))["outgoing"] == EMPTY_SIDE
    for ws in (b_send, b_recv, a_send):
        await ws.close()


@pytest.mark.parametrize("query", [
    "", "?msg_to=", "?msg_to=abc", "?msg_to=555123456", "?msg_to=5551234567890123",
    "?msg_to=%D9%A0%D9%A1%D9%A2%D9%A3%D9%A4%D9%A5%D9%A6%D9%A7%D9%A8%D9%A9",
], ids=["missing", "empty", "letters", "9-digits", "16-digits", "unicode-digits"])
async def test_info_personal_bad_msg_to_is_400(as_user: UserFactory, query: str) -> None:
    client = await as_user(new_phone())
    await assert_json_error(await client.get(f"/chat/info/personal{query}"), 400)


async def test_info_personal_unknown_phone_is_404(as_user: UserFactory) -> None:
    client = await as_user(new_phone())
    resp = await client.get("/chat/info/personal", params={"msg_to": new_phone()})
    await assert_json_error(resp, 404)


async def test_info_personal_logged_out_is_401(aiohttp_client: AiohttpClient, server: TestServer,
                                               as_user: UserFactory) -> None:
    peer = new_phone()
    await as_user(peer)
    client = await aiohttp_client(server)
    resp = await client.get("/chat/info/personal", params={"msg_to": peer})
    await assert_json_error(resp, 401)


async def test_unknown_json_path_is_json_404(as_user: UserFactory) -> None:
    client = await as_user(new_phone())
    await assert_json_error(await client.get("/chat/info/nothing-here"), 404)
