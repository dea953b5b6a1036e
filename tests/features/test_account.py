"""Self service (SPEC 10, "Every user"): `PATCH /chat/account` (name, hide_presence),
`POST /chat/account/password` (current password required; the other devices end, this one
stays), `DELETE /chat/account` (password required; every socket closed, the cookie cleared),
wrong passwords counted by the attempt throttle."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from typing import Any

import aiohttp
import pytest
from aiohttp import WSCloseCode
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient, AiohttpServer

from chatserver.app import create_app
from chatserver.config import Config
from chatserver.keys import store_key
from chatserver.stores.base import Store
from helpers.accounts import COOKIE, PASSWORD, UserFactory, users_on
from helpers.ws import assert_json_error, open_receive, send_new_msg, wait_closed

pytestmark = pytest.mark.filterwarnings(
    "ignore::aiohttp.web_exceptions.NotAppKeyWarning:aiohttp_session")

_phones = itertools.count(5_554_000_000)
NEW_PASSWORD = "a new passphrase"


def new_phone() -> str:
    return str(next(_phones))


async def ok_json(resp: aiohttp.ClientResponse, status: int = 200) -> Any:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    return await resp.json()


async def login(client: TestClient, phone: str, password: str) -> int:
    resp = await client.post("/login", data={"phone": phone, "password": password},
                             allow_redirects=False)
    return resp.status


# -- name and presence --------------------------------------------------------------------------


async def test_patch_account_sets_name_and_hide_presence(as_user: UserFactory, store: Store) -> None:
    await as_user(new_phone())  # the admin
    phone = new_phone()
    client = await as_user(phone)
    body = await ok_json(await client.patch("/chat/account", json={"name": "  Grandma  "}))
    assert body == {"phone": phone, "name": "Grandma", "admin": False, "hide_presence": False}
    body = await ok_json(await client.patch("/chat/account", json={"hide_presence": True}))
    assert body == {"phone": phone, "name": "Grandma", "admin": False, "hide_presence": True}
    account = await store.account(phone, 3600)
    assert account is not None and (account.name, account.hide_presence) == ("Grandma", True)
    info = await ok_json(await client.get("/chat/info"))
    assert (info["name"], info["hide_presence"]) == ("Grandma", True)  # every device sees it
    body = await ok_json(await client.patch("/chat/account", json={"name": "G", "hide_presence": False}))
    assert (body["name"], body["hide_presence"]) == ("G", False)


@pytest.mark.parametrize("body", [{"name": "evil\u202egnp"}, {"name": ""}, {"name": "x" * 65},
                                  {"name": 5}, {"hide_presence": "yes"}, {"hide_presence": 1},
                                  {"name": "ok", "admin": True}, ["name"]])
async def test_a_bad_patch_is_400_and_changes_nothing(
        as_user: UserFactory, store: Store, body: Any) -> None:
    phone = new_phone()
    client = await as_user(phone)
    await assert_json_error(await client.patch("/chat/account", json=body), 400)
    account = await store.account(phone, 3600)
    assert account is not None
    assert (account.name, account.hide_presence, account.admin) == (f"user {phone}", False, True)


@pytest.mark.parametrize(("method", "path"), [("PATCH", "/chat/account"),
                                              ("POST", "/chat/account/password"),
                                              ("DELETE", "/chat/account")])
async def test_not_logged_in_is_401(aiohttp_client: AiohttpClient, server: TestServer,
                                    method: str, path: str) -> None:
    client = await aiohttp_client(server)
    await assert_json_error(await client.request(method, path, json={}), 401)


# -- password -----------------------------------------------------------------------------------


async def test_password_change_ends_the_other_devices_and_keeps_this_one(
        aiohttp_client: AiohttpClient, server: TestServer, as_user: UserFactory,
        store: Store) -> None:
    peer = new_phone()
    await as_user(peer)
    phone = new_phone()
    this, other = await as_user(phone), await as_user(phone)
    this_ws = await open_receive(this, phone)
    other_ws = await open_receive(other, phone)
    other_send = await other.ws_connect(f"/ws/chat/personal/{phone}/{peer}/")
    resp, closed, closed_send = await asyncio.gather(
        this.post("/chat/account/password", json={"current": PASSWORD, "new": NEW_PASSWORD}),
        wait_closed(other_ws), wait_closed(other_send))
    assert await ok_json(resp) == {"changed": True}
    assert closed == closed_send == (WSCloseCode.POLICY_VIOLATION, b"logged out")
    assert (await other.get("/chat/info")).status == 401
    # this device: still logged in, its socket still served
    assert (await this.get("/chat/info")).status == 200
    await this_ws.send_json({"command": "fetch_grp_msgs", "msg_to": phone})
    assert (await this_ws.receive_json(timeout=5))["command"] == "fetch_grp_msgs"
    this_send = await this.ws_connect(f"/ws/chat/personal/{phone}/{peer}/")
    await send_new_msg(this_send, phone, peer, "still here")
    fresh = await aiohttp_client(server)
    assert await login(fresh, phone, PASSWORD) == 401
    assert await login(fresh, phone, NEW_PASSWORD) == 302
    account = await store.account(phone, 3600)
    assert account is not None and account.devices == 2  # this one and the fresh login


async def test_a_wrong_current_password_is_403_counted_and_changes_nothing(
        aiohttp_client: AiohttpClient, aiohttp_server: AiohttpServer, config: Config) -> None:
    limited = dataclasses.replace(config, limits=dataclasses.replace(
        config.limits, login_failures_per_phone=2, login_failures_per_pair=2))
    server = await aiohttp_server(create_app(limited))
    as_user = users_on(aiohttp_client, server)
    phone = new_phone()
    client = await as_user(phone)
    store: Store = server.app[store_key]
    before = await store.get_user(phone)
    for _ in range(2):
        await assert_json_error(await client.post("/chat/account/password", json={
            "current": "not my password", "new": NEW_PASSWORD}), 403)
    # past the per-phone limit even the right password waits
    await assert_json_error(await client.post("/chat/account/password", json={
        "current": PASSWORD, "new": NEW_PASSWORD}), 429)
    assert await store.get_user(phone) == before
    assert (await client.get("/chat/info")).status == 200


@pytest.mark.parametrize("body", [{"current": PASSWORD, "new": "short"},
                                  {"current": PASSWORD, "new": "x" * 1025},
                                  {"current": PASSWORD, "new": "1234567890"},
                                  {"current": PASSWORD}, {"current": PASSWORD, "new": 12345678901}])
async def test_a_refused_new_password_is_400_and_changes_nothing(
        aiohttp_client: AiohttpClient, server: TestServer, as_user: UserFactory,
        body: dict[str, Any]) -> None:
    phone = new_phone()
    client, other = await as_user(phone), await as_user(phone)
    await assert_json_error(await client.post("/chat/account/password", json=body), 400)
    assert (await other.get("/chat/info")).status == 200
    assert await login(await aiohttp_client(server), phone, PASSWORD) == 302


# -- delete -------------------------------------------------------------------------------------


async def test_delete_account_needs_the_password_then_closes_everything(
        as_user: UserFactory, store: Store) -> None:
    await as_user(new_phone())  # the admin
    phone = new_phone()
    this, other = await as_user(phone), await as_user(phone)
    this_ws, other_ws = await open_receive(this, phone), await open_receive(other, phone)
    await assert_json_error(await this.delete("/chat/account", json={"password": "wrong one"}), 403)
    await assert_json_error(await this.delete("/chat/account", json={}), 403)
    assert await store.user_exists(phone)
    resp, closed_this, closed_other = await asyncio.gather(
        this.delete("/chat/account", json={"password": PASSWORD}),
        wait_closed(this_ws), wait_closed(other_ws))
    assert await ok_json(resp) == {"deleted": True}
    assert closed_this == closed_other == (WSCloseCode.POLICY_VIOLATION, b"logged out")
    cleared = resp.cookies.get(COOKIE)
    assert cleared is not None and cleared.value == "", resp.headers.getall("Set-Cookie", [])
    assert not await store.user_exists(phone)
    for device in (this, other):
        assert (await device.get("/chat/info")).status == 401


async def test_the_last_admin_cannot_delete_themselves_while_others_remain(
        as_user: UserFactory, store: Store) -> None:
    admin_phone = new_phone()
    admin = await as_user(admin_phone)
    await as_user(new_phone())
    await assert_json_error(await admin.delete("/chat/account", json={"password": PASSWORD}), 409)
    assert await store.user_exists(admin_phone)
    assert (await admin.get("/chat/info")).status == 200
