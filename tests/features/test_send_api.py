"""POST /api/v1/messages (issue 17, SPEC 12): a script sends with a client token. Stored and
pushed like new_msg / new_grp_msg (the recipient's receive sockets, the copies to the user's
other devices, Web Push), answered with the msg_sent fields (201; 200 for a retry with the same
sent_timestamp, stored once); the checks of the frames (400, 403 blocked or not a member, 404,
429 over the user's message rate); cookie requests refused (401). Against an in-process server,
on every store and hub engine; Web Push through the real push service of helpers/pushservice.py."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any, Final

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient, AiohttpServer

from chatserver.app import create_app
from chatserver.config import Config, Push
from helpers.accounts import PASSWORD, UserFactory
from helpers.backends import db_rows
from helpers.frames import SERVER_TS, new_instant, new_phone, plain
from helpers.groups import create_group, fetch_grp
from helpers.pushservice import Browser, PushService
from helpers.timing import TIMEOUT
from helpers.ws import assert_json_error, assert_quiet, fetch_all, open_receive, recv

pytestmark = [pytest.mark.filterwarnings(
    "ignore::aiohttp.web_exceptions.NotAppKeyWarning:aiohttp_session"), pytest.mark.backends]

PATH: Final = "/api/v1/messages"
MSG_SENT_KEYS: Final = {"message", "command", "msg_from", "msg_to", "sent_timestamp"}


@pytest.fixture
def config(config: Config) -> Config:
    """The suite's config with a push service on 127.0.0.1 allowed (helpers/pushservice.py)."""
    return dataclasses.replace(config, push=Push(
        allow_private_endpoints=True, min_interval_seconds=0.0, retry_seconds=0.05, workers=1,
        timeout_seconds=TIMEOUT))


@pytest.fixture
async def service() -> AsyncIterator[PushService]:
    running = await PushService().start()
    yield running
    await running.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def token_of(client: TestClient, label: str = "alerts") -> str:
    resp = await client.post("/chat/devices/token", json={"label": label})
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["token"])


async def post(script: TestClient, token: str, body: Any, status: int = 201) -> dict[str, Any]:
    resp = await script.post(PATH, json=body, headers=bearer(token))
    assert resp.status == status, await resp.text()
    reply = await resp.json()
    return dict(reply)


async def setup(as_user: UserFactory, aiohttp_client: AiohttpClient, server: TestServer
                ) -> tuple[str, TestClient, TestClient, str]:
    """A user with a browser login and a token, and a script client holding nothing but the
    token: (phone, browser, script, token)."""
    me = new_phone()
    browser = await as_user(me)
    return me, browser, await aiohttp_client(server), await token_of(browser)


def stored(config: Config, msg_from: str) -> list[tuple[Any, ...]]:
    return db_rows(config.database, "SELECT msg_to, message FROM personal_messages"
                                    " WHERE msg_from = ? ORDER BY id", (msg_from,))


# -- personal ---------------------------------------------------------------------------------------


async def test_a_personal_message_is_stored_pushed_copied_and_retried_once(
        as_user: UserFactory, aiohttp_client: AiohttpClient, server: TestServer,
        config: Config) -> None:
    me, browser, script, token = await setup(as_user, aiohttp_client, server)
    peer = new_phone()
    peer_ws = await open_receive(await as_user(peer), peer)
    my_browser_ws = await open_receive(browser, me)  # the user's other device gets the copy
    sent_timestamp = plain(new_instant())
    body = {"msg_to": peer, "message": "the door opened", "sent_timestamp": sent_timestamp}
    reply = await post(script, token, body)
    assert set(reply) == MSG_SENT_KEYS and SERVER_TS.fullmatch(reply["sent_timestamp"])
    assert (reply["message"], reply["command"], reply["msg_from"], reply["msg_to"]) == (
        sent_timestamp, "msg_sent", me, peer)
    pushed = {"message": "the door opened", "command": "new_msg", "msg_from": me, "msg_to": peer,
              "sent_timestamp": sent_timestamp}
    assert await recv(peer_ws) == pushed
    assert await recv(my_browser_ws) == pushed
    # A retry (same sent_timestamp, here in the other form of the same instant): 200, the same
    # fields, not stored twice and pushed nowhere again.
    again = await post(script, token, {**body, "sent_timestamp": sent_timestamp.replace(" ", "T")
                                       + "Z"}, 200)
    assert (again["message"], again["msg_to"]) == (sent_timestamp.replace(" ", "T") + "Z", peer)
    assert stored(config, me) == [(peer, "the door opened")]
    await assert_quiet(peer_ws, my_browser_ws)


async def test_without_sent_timestamp_the_servers_time_is_used(
        as_user: UserFactory, aiohttp_client: AiohttpClient, server: TestServer,
        config: Config) -> None:
    """Two messages in a row without one are two messages."""
    me, _, script, token = await setup(as_user, aiohttp_client, server)
    peer = new_phone()
    await as_user(peer)
    first = await post(script, token, {"msg_to": peer, "message": "one"})
    second = await post(script, token, {"msg_to": peer, "message": "two"})
    assert first["message"] != second["message"]
    assert stored(config, me) == [(peer, "one"), (peer, "two")]


async def test_the_recipient_fetches_it_when_offline(
        as_user: UserFactory, aiohttp_client: AiohttpClient, server: TestServer) -> None:
    _, _, script, token = await setup(as_user, aiohttp_client, server)
    peer = new_phone()
    peer_client = await as_user(peer)
    await post(script, token, {"msg_to": peer, "message": "while you were out"})
    ws = await open_receive(peer_client, peer)
    assert [m["message"] for c in await fetch_all(ws, peer) for m in c] == ["while you were out"]


async def test_web_push_reaches_the_recipients_offline_device(
        as_user: UserFactory, aiohttp_client: AiohttpClient, server: TestServer,
        service: PushService) -> None:
    me, _, script, token = await setup(as_user, aiohttp_client, server)
    peer = new_phone()
    peer_client = await as_user(peer)
    browser = Browser.subscribe(service)
    resp = await peer_client.post("/chat/push/subscription", json=browser.json())
    assert resp.status == 201, await resp.text()
    await post(script, token, {"msg_to": peer, "message": "smoke alarm"})
    got = await service.next()
    assert got.id == browser.id and got.status == 201
    payload = browser.payload(got)
    assert (payload["kind"], payload["conversation"]) == ("new_msg", f"personal:{me}")


# -- groups ------------------------------------------------------------------------------------------


async def test_a_group_message_reaches_every_other_participant_and_a_copy_the_user(
        as_user: UserFactory, aiohttp_client: AiohttpClient, server: TestServer) -> None:
    me, browser, script, token = await setup(as_user, aiohttp_client, server)
    peer = new_phone()
    peer_client = await as_user(peer)
    key = (await create_group(browser, "house", [peer]))["key"]
    peer_ws = await open_receive(peer_client, peer, probe="fetch_msgs")
    mine = await open_receive(browser, me, probe="fetch_msgs")
    sent_timestamp = plain(new_instant())
    reply = await post(script, token, {"msg_to": f"group:{key}", "message": "dinner at 7",
                                       "sent_timestamp": sent_timestamp})
    assert (reply["command"], reply["msg_from"], reply["msg_to"], reply["message"]) == (
        "msg_sent", me, key, sent_timestamp)
    assert await recv(peer_ws) == {"message": "dinner at 7", "command": "new_msg",
                                   "msg_from": f"{key}-{me}", "msg_to": peer,
                                   "sent_timestamp": sent_timestamp}
    assert (await recv(mine))["msg_to"] == me  # SPEC 7.2: the copy
    await post(script, token, {"msg_to": f"group:{key}", "message": "dinner at 7",
                               "sent_timestamp": sent_timestamp}, 200)
    await assert_quiet(peer_ws, mine)
    assert [m["message"] for r in await fetch_grp(peer_ws, peer) for m in r["messages"]] == [
        "dinner at 7"]


async def test_not_a_member_is_403_and_an_unknown_group_404(
        as_user: UserFactory, aiohttp_client: AiohttpClient, server: TestServer) -> None:
    _, _, script, token = await setup(as_user, aiohttp_client, server)
    other = new_phone()
    key = (await create_group(await as_user(other), "theirs", []))["key"]
    await assert_json_error(await script.post(PATH, json={"msg_to": f"group:{key}", "message": "x"},
                                              headers=bearer(token)), 403)
    await assert_json_error(await script.post(PATH, json={"msg_to": "group:ABCDEFGHIJ",
                                                          "message": "x"},
                                              headers=bearer(token)), 404)


# -- refusals ---------------------------------------------------------------------------------------


async def test_a_blocked_sender_gets_403_and_nothing_is_stored(
        as_user: UserFactory, aiohttp_client: AiohttpClient, server: TestServer,
        config: Config) -> None:
    me, _, script, token = await setup(as_user, aiohttp_client, server)
    peer = new_phone()
    peer_client = await as_user(peer)
    resp = await peer_client.post("/chat/special/block", json={"phone": me})
    assert resp.status == 201
    error = await assert_json_error(
        await script.post(PATH, json={"msg_to": peer, "message": "hi"}, headers=bearer(token)), 403)
    assert error == "the recipient has blocked you; nothing was sent"
    assert stored(config, me) == []


@pytest.mark.parametrize("body", [
    {"message": "no recipient"},
    {"msg_to": "123", "message": "x"},
    {"msg_to": 15550000000, "message": "x"},
    {"msg_to": "group:short", "message": "x"},
    {"msg_to": "PEER", "message": ""},
    {"msg_to": "PEER", "message": "x" * 4097},
    {"msg_to": "PEER", "message": 5},
    {"msg_to": "PEER"},
    {"msg_to": "PEER", "message": "x", "sent_timestamp": "yesterday"},
    {"msg_to": "PEER", "message": "x", "sent_timestamp": "1999-01-01 00:00:00"},
    {"msg_to": "PEER", "message": "x", "sent_timestamp": 17},
    {"msg_to": "PEER", "message": "x", "extra": 1},
    {"msg_to": "PEER", "message": "x", "attachments": ["../../etc/passwd"]},
    ["PEER", "x"],
])
async def test_bad_input_is_400_and_nothing_is_stored(
        as_user: UserFactory, aiohttp_client: AiohttpClient, server: TestServer, config: Config,
        body: Any) -> None:
    me, _, script, token = await setup(as_user, aiohttp_client, server)
    peer = new_phone()
    await as_user(peer)
    if isinstance(body, dict):
        body = {k: (peer if v == "PEER" else v) for k, v in body.items()}
    await assert_json_error(await script.post(PATH, json=body, headers=bearer(token)), 400)
    await assert_json_error(await script.post(PATH, data=b"{not json",
                                              headers=bearer(token)), 400)
    assert stored(config, me) == []


async def test_an_unknown_phone_is_404(as_user: UserFactory, aiohttp_client: AiohttpClient,
                                       server: TestServer) -> None:
    _, _, script, token = await setup(as_user, aiohttp_client, server)
    await assert_json_error(await script.post(PATH, json={"msg_to": new_phone(), "message": "x"},
                                              headers=bearer(token)), 404)


async def test_a_cookie_request_is_401_and_a_wrong_token_too(
        as_user: UserFactory, aiohttp_client: AiohttpClient, server: TestServer,
        config: Config) -> None:
    me, browser, script, token = await setup(as_user, aiohttp_client, server)
    peer = new_phone()
    await as_user(peer)
    body = {"msg_to": peer, "message": "x"}
    await assert_json_error(await browser.post(PATH, json=body), 401)
    await assert_json_error(await script.post(PATH, json=body, headers=bearer(token + "x")), 401)
    await assert_json_error(await script.post(PATH, json=body), 401)
    assert stored(config, me) == []


async def test_over_the_users_message_rate_is_429(
        aiohttp_client: AiohttpClient, aiohttp_server: AiohttpServer, config: Config) -> None:
    """limits.messages_per_second = 1 (bursts of 2): the third request in a row is refused and
    not stored; the user's sockets and requests share the rate."""
    server = await aiohttp_server(create_app(dataclasses.replace(
        config, limits=dataclasses.replace(config.limits, messages_per_second=1.0))))
    me, peer = new_phone(), new_phone()
    clients = []
    for phone in (me, peer):
        client = await aiohttp_client(server)
        resp = await client.post("/register", data={"phone": phone, "name": "x",
                                                    "password": PASSWORD}, allow_redirects=False)
        assert resp.status == 302
        clients.append(client)
    token = await token_of(clients[0])
    script = await aiohttp_client(server)
    statuses = [(await script.post(PATH, json={"msg_to": peer, "message": f"m{i}"},
                                   headers=bearer(token))).status for i in range(3)]
    assert statuses == [201, 201, 429]
    resp = await script.post(PATH, json={"msg_to": peer, "message": "m3"}, headers=bearer(token))
    error = await assert_json_error(resp, 429)
    assert "rate limit" in error
    assert len(stored(config, me)) == 2
