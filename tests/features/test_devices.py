"""A user's devices (issue 13, SPEC 7): `GET /chat/devices` (labels from the login's User-Agent,
`current`, newest first), `DELETE /chat/devices?id=` (the device's receive socket closed at once,
its cookie refused after; 404 for an id that is not the user's), expiry after the last use (a
request, or a socket open at a session check), and read receipts pushed to the reader's own
receive sockets (SPEC 7.2). Against an in-process server (aiohttp's TestServer), per engine."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from typing import Any, Final

import aiohttp
import pytest
from aiohttp import WSCloseCode
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient, AiohttpServer

from chatserver.app import create_app
from chatserver.config import Config
from helpers import backends
from helpers.accounts import PASSWORD, UserFactory
from helpers.frames import SERVER_TS, assert_error, frame
from helpers.groups import create_group, open_group, send_grp
from helpers.ws import assert_json_error, assert_quiet, open_receive, recv, wait_closed

pytestmark = [pytest.mark.filterwarnings(
    "ignore::aiohttp.web_exceptions.NotAppKeyWarning:aiohttp_session"),
    pytest.mark.backends(backends.LOCAL, backends.POSTGRES)]

_phones = itertools.count(5_557_000_000)
FIREFOX_LINUX: Final = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
CHROME_ANDROID: Final = ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like "
                         "Gecko) Chrome/131.0.0.0 Mobile Safari/537.36")
SAFARI_IPHONE: Final = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
                        "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1")


def new_phone() -> str:
    return str(next(_phones))


async def ok_json(resp: aiohttp.ClientResponse, status: int = 200) -> Any:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    return await resp.json()


async def device(aiohttp_client: AiohttpClient, server: TestServer, phone: str,
                 user_agent: str | None = None) -> TestClient:
    """A new device of `phone`: a client of its own (cookie jar, User-Agent) that registers the
    phone, or logs in when it exists."""
    headers = {"User-Agent": user_agent} if user_agent else None
    client = await aiohttp_client(server, headers=headers)
    resp = await client.post("/register", data={"phone": phone, "name": f"user {phone}",
                                                "password": PASSWORD}, allow_redirects=False)
    if resp.status == 409:
        resp = await client.post("/login", data={"phone": phone, "password": PASSWORD},
                                 allow_redirects=False)
    assert resp.status == 302, await resp.text()
    return client


async def devices_of(client: TestClient) -> list[dict[str, Any]]:
    body = await ok_json(await client.get("/chat/devices"))
    assert set(body) == {"devices"}
    return list(body["devices"])


async def server_with(aiohttp_server: AiohttpServer, config: Config, **security: Any) -> TestServer:
    return await aiohttp_server(create_app(dataclasses.replace(
        config, security=dataclasses.replace(config.security, **security))))


# -- the list -----------------------------------------------------------------------------------


async def test_devices_are_listed_with_labels_newest_first_and_this_one_marked(
        aiohttp_client: AiohttpClient, server: TestServer) -> None:
    phone = new_phone()
    laptop = await device(aiohttp_client, server, phone, FIREFOX_LINUX)
    mobile = await device(aiohttp_client, server, phone, CHROME_ANDROID)
    iphone = await device(aiohttp_client, server, phone, SAFARI_IPHONE)
    await device(aiohttp_client, server, new_phone(), FIREFOX_LINUX)  # someone else's
    listed = await devices_of(mobile)
    assert [(d["label"], d["current"]) for d in listed] == [
        ("Safari on iPhone", False), ("Chrome on Android", True), ("Firefox on Linux", False)]
    for d in listed:
        assert set(d) == {"id", "label", "created", "last_active", "current"}
        assert SERVER_TS.fullmatch(d["created"]) and SERVER_TS.fullmatch(d["last_active"]), d
        assert d["last_active"] >= d["created"]
    assert [d["created"] for d in listed] == sorted((d["created"] for d in listed), reverse=True)
    ids = [d["id"] for d in listed]
    assert len(set(ids)) == 3
    # Each device sees the same list, itself marked.
    assert [d["current"] for d in await devices_of(laptop)] == [False, False, True]
    assert [d["id"] for d in await devices_of(iphone)] == ids


async def test_a_client_without_a_user_agent_is_an_unknown_device(
        aiohttp_client: AiohttpClient, server: TestServer) -> None:
    client = await aiohttp_client(server, skip_auto_headers=["User-Agent"])
    phone = new_phone()
    resp = await client.post("/register", data={"phone": phone, "name": "x", "password": PASSWORD},
                             allow_redirects=False)
    assert resp.status == 302
    assert [d["label"] for d in await devices_of(client)] == ["Unknown device"]


async def test_not_logged_in_is_401(aiohttp_client: AiohttpClient, server: TestServer) -> None:
    client = await aiohttp_client(server)
    await assert_json_error(await client.get("/chat/devices"), 401)
    await assert_json_error(await client.delete("/chat/devices", params={"id": "x"}), 401)


# -- ending a device ----------------------------------------------------------------------------


async def test_deleting_a_device_closes_its_socket_at_once_and_refuses_its_cookie(
        aiohttp_client: AiohttpClient, aiohttp_server: AiohttpServer, config: Config) -> None:
    """No session check would close it within the test (one an hour): the delete does."""
    server = await server_with(aiohttp_server, config, session_check_seconds=3600.0)
    phone = new_phone()
    laptop = await device(aiohttp_client, server, phone, FIREFOX_LINUX)
    mobile = await device(aiohttp_client, server, phone, CHROME_ANDROID)
    laptop_ws = await open_receive(laptop, phone)
    mobile_ws = await open_receive(mobile, phone)
    laptop_id = next(d["id"] for d in await devices_of(mobile) if d["label"] == "Firefox on Linux")
    resp, closed = await asyncio.gather(
        mobile.delete("/chat/devices", params={"id": laptop_id}), wait_closed(laptop_ws))
    assert await ok_json(resp) == {"id": laptop_id, "removed": True}
    assert closed is not None and closed[0] == WSCloseCode.POLICY_VIOLATION
    await assert_json_error(await laptop.get("/chat/devices"), 401)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await laptop.ws_connect(f"/ws/chat/special/{phone}/")
    assert refused.value.status == 403
    # The other device is untouched: listed alone, its socket served.
    assert [(d["label"], d["current"]) for d in await devices_of(mobile)] == [
        ("Chrome on Android", True)]
    await mobile_ws.send_json({"command": "fetch_msgs", "msg_to": phone})
    assert (await recv(mobile_ws))["command"] == "fetch_msgs"
    await assert_json_error(await mobile.delete("/chat/devices", params={"id": laptop_id}), 404)


async def test_deleting_this_device_logs_it_out(
        aiohttp_client: AiohttpClient, server: TestServer) -> None:
    phone = new_phone()
    client = await device(aiohttp_client, server, phone)
    other = await device(aiohttp_client, server, phone)
    mine = next(d["id"] for d in await devices_of(client) if d["current"])
    assert await ok_json(await client.delete("/chat/devices", params={"id": mine})) == {
        "id": mine, "removed": True}
    await assert_json_error(await client.get("/chat/devices"), 401)
    assert len(await devices_of(other)) == 1


@pytest.mark.parametrize("query", [{"id": "no-such-device"}, {"id": ""}, {}, {"id": "x" * 5000}])
async def test_an_unknown_id_is_404(aiohttp_client: AiohttpClient, server: TestServer,
                                    query: dict[str, str]) -> None:
    client = await device(aiohttp_client, server, new_phone())
    await assert_json_error(await client.delete("/chat/devices", params=query), 404)
    assert len(await devices_of(client)) == 1


async def test_another_users_device_is_404_and_stays(
        aiohttp_client: AiohttpClient, server: TestServer) -> None:
    """Never 403: an answer that differs for others' ids would confirm they exist."""
    attacker = await device(aiohttp_client, server, new_phone())
    victim_phone = new_phone()
    victim = await device(aiohttp_client, server, victim_phone)
    victim_ws = await open_receive(victim, victim_phone)
    (theirs,) = await devices_of(victim)
    error = await assert_json_error(
        await attacker.delete("/chat/devices", params={"id": theirs["id"]}), 404)
    assert error == await assert_json_error(
        await attacker.delete("/chat/devices", params={"id": "no-such-device"}), 404)
    assert [d["id"] for d in await devices_of(victim)] == [theirs["id"]]
    await assert_quiet(victim_ws)


async def test_a_cross_site_delete_is_refused(
        aiohttp_client: AiohttpClient, server: TestServer) -> None:
    phone = new_phone()
    client = await device(aiohttp_client, server, phone)
    other = await device(aiohttp_client, server, phone)
    target = next(d["id"] for d in await devices_of(client) if not d["current"])
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"}):
        await assert_json_error(await client.delete("/chat/devices", params={"id": target},
                                                    headers=headers), 403)
    assert len(await devices_of(other)) == 2


# -- expiry after the last use (SPEC 7) ----------------------------------------------------------


async def test_a_session_in_use_outlives_session_seconds_and_an_unused_one_expires(
        aiohttp_client: AiohttpClient, aiohttp_server: AiohttpServer, config: Config) -> None:
    """session_seconds = 2: a device that makes a request every 0.5 s, and one that only holds
    a receive socket open (the session check, every 0.25 s, counts it as used), are both still
    logged in 3 s after they logged in; a device unused since its login is not. Time has to
    pass here: the wait is the clock, not an event."""
    lifetime = 2
    server = await server_with(aiohttp_server, config, session_seconds=lifetime,
                               session_check_seconds=0.25)
    phone = new_phone()
    busy = await device(aiohttp_client, server, phone)
    holder = await device(aiohttp_client, server, phone)
    idle = await device(aiohttp_client, server, phone)
    started = time.monotonic()
    holder_ws = await open_receive(holder, phone)
    while time.monotonic() - started < lifetime + 1:
        r = await busy.get("/chat/info")
        assert r.status == 200, (time.monotonic() - started, await r.text())
        await asyncio.sleep(0.5)
    await assert_json_error(await idle.get("/chat/devices"), 401)
    assert (await busy.get("/chat/info")).status == 200
    assert not holder_ws.closed
    await holder_ws.send_json({"command": "fetch_msgs", "msg_to": phone})
    assert (await recv(holder_ws))["command"] == "fetch_msgs"
    assert (await holder.get("/chat/info")).status == 200
    assert len(await devices_of(busy)) == 2  # the expired one is no device any more


# -- read receipts on the reader's other devices (SPEC 7.2) ---------------------------------------


async def test_msg_read_is_pushed_to_every_receive_socket_of_the_reader(
        aiohttp_client: AiohttpClient, server: TestServer, as_user: UserFactory) -> None:
    a, b = new_phone(), new_phone()
    a1, a2 = await device(aiohttp_client, server, a), await device(aiohttp_client, server, a)
    bob = await as_user(b)
    a1_recv, a2_recv, b_recv = (await open_receive(a1, a), await open_receive(a2, a),
                                await open_receive(bob, b))
    b_send = await bob.ws_connect(f"/ws/chat/personal/{b}/{a}/")
    sent = frame("new_msg", b, a, "hello")
    await b_send.send_json(sent)
    assert (await recv(b_send))["command"] == "msg_sent"
    assert await recv(a1_recv) == sent and await recv(a2_recv) == sent
    a_send = await a1.ws_connect(f"/ws/chat/personal/{a}/{b}/")
    read = frame("msg_read", a, b, sent["sent_timestamp"])
    await a_send.send_json(read)
    assert await recv(b_recv) == read
    assert await recv(a1_recv) == read and await recv(a2_recv) == read  # the same frame
    await assert_quiet(a1_recv, a2_recv, b_recv)


async def test_grp_msg_read_is_pushed_to_every_receive_socket_of_the_reader(
        aiohttp_client: AiohttpClient, server: TestServer, as_user: UserFactory) -> None:
    a, b = new_phone(), new_phone()
    a1, a2 = await device(aiohttp_client, server, a), await device(aiohttp_client, server, a)
    bob = await as_user(b)
    key = (await create_group(bob, "pals", [a]))["key"]
    a1_recv, a2_recv, b_recv = (await open_receive(a1, a, "fetch_msgs"),
                                await open_receive(a2, a, "fetch_msgs"),
                                await open_receive(bob, b, "fetch_msgs"))
    sent = await send_grp(await open_group(bob, b, key), b, key, "hi all")
    assert (await recv(a1_recv))["message"] == (await recv(a2_recv))["message"] == "hi all"
    a_grp = await open_group(a1, a, key)
    await a_grp.send_json(frame("grp_msg_read", a, b, sent["sent_timestamp"]))
    to_sender = await recv(b_recv)
    assert (to_sender["command"], to_sender["msg_from"], to_sender["msg_to"]) == (
        "msg_read", f"{key}-{a}", b)
    assert await recv(a1_recv) == to_sender and await recv(a2_recv) == to_sender
    await assert_quiet(a1_recv, a2_recv, b_recv)


async def test_a_refused_read_is_pushed_to_no_device(
        aiohttp_client: AiohttpClient, server: TestServer, as_user: UserFactory) -> None:
    """B blocked A: A's msg_read is refused (issue 12) and none of A's devices hears of it."""
    a, b = new_phone(), new_phone()
    a1, a2 = await device(aiohttp_client, server, a), await device(aiohttp_client, server, a)
    bob = await as_user(b)
    a_to_b = await a1.ws_connect(f"/ws/chat/personal/{a}/{b}/")
    sent = frame("new_msg", a, b, "before the block")
    await a_to_b.send_json(sent)
    assert (await recv(a_to_b))["command"] == "msg_sent"
    assert (await bob.post("/chat/special/block", json={"phone": a})).status == 201
    a1_recv, a2_recv = await open_receive(a1, a), await open_receive(a2, a)
    await a_to_b.send_json(frame("msg_read", a, b, sent["sent_timestamp"]))
    assert_error(await recv(a_to_b), "msg_read", a, b, "the recipient has blocked you; nothing was sent")
    await assert_quiet(a1_recv, a2_recv)
