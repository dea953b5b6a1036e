"""The admin JSON API (SPEC 10): who may use it (401 / 403 / 200 for every endpoint and method),
accounts listed, disabled (sessions deleted, open sockets closed, login refused), made admin or
not (the last admin kept), deleted; invites made, listed and revoked; stats; `admin` in
/chat/info. The first account registered in each test is the admin (SPEC 10)."""

from __future__ import annotations

import asyncio
import itertools
import re
from typing import Any

import aiohttp
import pytest
from aiohttp import WSCloseCode
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient

from chatserver.protocol import now_micros, parse_timestamp
from chatserver.stores.base import Store
from helpers.accounts import PASSWORD, UserFactory
from helpers.ws import assert_json_error, open_receive, send_new_msg, wait_closed

pytestmark = pytest.mark.filterwarnings(
    "ignore::aiohttp.web_exceptions.NotAppKeyWarning:aiohttp_session")

_phones = itertools.count(5_553_000_000)
TS_RE = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3}")


def new_phone() -> str:
    return str(next(_phones))


async def call(client: TestClient, method: str, path: str, body: Any = None) -> aiohttp.ClientResponse:
    return await client.request(method, path, json=body)


async def ok_json(resp: aiohttp.ClientResponse, status: int = 200) -> Any:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    return await resp.json()


# Every endpoint and method of the admin API, with a harmless request for the 401/403 rows.
ENDPOINTS = [
    ("GET", "/chat/admin/users", None),
    ("PATCH", "/chat/admin/users?phone={user}", {"disabled": True}),
    ("DELETE", "/chat/admin/users?phone={user}", None),
    ("GET", "/chat/admin/invites", None),
    ("POST", "/chat/admin/invites", {"uses": 1, "days": 1}),
    ("DELETE", "/chat/admin/invites?code={code}", None),
    ("GET", "/chat/admin/stats", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
async def test_not_logged_in_is_401_and_not_an_admin_is_403_and_nothing_changes(
        aiohttp_client: AiohttpClient, server: TestServer, as_user: UserFactory, store: Store,
        method: str, path: str, body: Any) -> None:
    admin_phone, user_phone = new_phone(), new_phone()
    await as_user(admin_phone)
    user = await as_user(user_phone)
    assert await store.create_invite("keepme", admin_phone, 1, now_micros() + 10**10)
    url = path.format(user=user_phone, code="keepme")
    await assert_json_error(await call(await aiohttp_client(server), method, url, body), 401)
    await assert_json_error(await call(user, method, url, body), 403)
    account = await store.account(user_phone, 3600)
    assert account is not None and not account.disabled and account.devices == 1
    assert [i.code for i in await store.invites(now_micros())] == ["keepme"]


async def test_an_admin_gets_200_or_201_from_every_endpoint(
        as_user: UserFactory, store: Store) -> None:
    admin_phone, user_phone = new_phone(), new_phone()
    admin = await as_user(admin_phone)
    await as_user(user_phone)
    users = (await ok_json(await call(admin, "GET", "/chat/admin/users")))["users"]
    assert [u["phone"] for u in users] == [admin_phone, user_phone]
    patched = await ok_json(await call(admin, "PATCH", f"/chat/admin/users?phone={user_phone}",
                                       {"admin": True}))
    assert patched["phone"] == user_phone and patched["admin"] is True
    made = await ok_json(await call(admin, "POST", "/chat/admin/invites", {"uses": 2, "days": 3}), 201)
    listed = (await ok_json(await call(admin, "GET", "/chat/admin/invites")))["invites"]
    assert [i["code"] for i in listed] == [made["code"]]
    assert await ok_json(await call(admin, "DELETE", f"/chat/admin/invites?code={made['code']}")) == {
        "code": made["code"], "revoked": True}
    stats = await ok_json(await call(admin, "GET", "/chat/admin/stats"))
    assert stats["users"] == 2
    assert await ok_json(await call(admin, "DELETE", f"/chat/admin/users?phone={user_phone}")) == {
        "phone": user_phone, "deleted": True}
    assert not await store.user_exists(user_phone)


async def test_users_lists_every_field(
        as_user: UserFactory, server: TestServer, store: Store) -> None:
    admin_phone, a, b = new_phone(), new_phone(), new_phone()
    admin = await as_user(admin_phone)
    client_a = await as_user(a)
    await as_user(b)
    await as_user(b)  # a second device of b (a second login)
    ws = await client_a.ws_connect(f"/ws/chat/personal/{a}/{b}/")
    for i in range(2):
        await send_new_msg(ws, a, b, f"waiting {i}")
    await ws.close()
    users = {u["phone"]: u for u in (await ok_json(await call(admin, "GET", "/chat/admin/users")))["users"]}
    assert set(users) == {admin_phone, a, b}
    for u in users.values():
        assert set(u) == {"phone", "name", "admin", "disabled", "created", "last_seen", "devices",
                          "waiting"}
        assert TS_RE.fullmatch(u["created"]), u
        assert abs(parse_timestamp(u["created"]) - now_micros()) < 60 * 1_000_000
    assert (users[admin_phone]["admin"], users[a]["admin"]) == (True, False)
    assert users[b]["name"] == f"user {b}" and users[b]["disabled"] is False
    assert (users[b]["devices"], users[b]["waiting"]) == (2, 2)
    assert (users[a]["devices"], users[a]["waiting"]) == (1, 0)
    assert users[b]["last_seen"] is None


async def test_info_says_who_is_an_admin(as_user: UserFactory) -> None:
    admin = await as_user(new_phone())
    user = await as_user(new_phone())
    assert (await ok_json(await admin.get("/chat/info")))["admin"] is True
    assert (await ok_json(await user.get("/chat/info")))["admin"] is False


# -- disable, admin flag, delete ----------------------------------------------------------------


async def login(client: TestClient, phone: str) -> aiohttp.ClientResponse:
    return await client.post("/login", data={"phone": phone, "password": PASSWORD},
                             allow_redirects=False)


@pytest.mark.backends()  # every engine: the Redis hub closes through its broker too
async def test_disabling_closes_open_sockets_ends_sessions_and_refuses_login(
        aiohttp_client: AiohttpClient, server: TestServer, as_user: UserFactory,
        store: Store) -> None:
    admin_phone, phone, peer = new_phone(), new_phone(), new_phone()
    admin = await as_user(admin_phone)
    await as_user(peer)
    device_1 = await as_user(phone)
    device_2 = await as_user(phone)
    receive = await open_receive(device_1, phone)
    send = await device_2.ws_connect(f"/ws/chat/personal/{phone}/{peer}/")
    await send_new_msg(send, phone, peer, "before")
    resp, closed_receive, closed_send = await asyncio.gather(
        call(admin, "PATCH", f"/chat/admin/users?phone={phone}", {"disabled": True}),
        wait_closed(receive), wait_closed(send))
    body = await ok_json(resp)
    assert body["disabled"] is True and body["devices"] == 0
    assert closed_receive == (WSCloseCode.POLICY_VIOLATION, b"logged out")
    assert closed_send == (WSCloseCode.POLICY_VIOLATION, b"logged out")
    for device in (device_1, device_2):
        assert (await device.get("/chat/info")).status == 401
    # the right password: told that the account is disabled, and no session made
    fresh = await aiohttp_client(server)
    resp = await login(fresh, phone)
    assert resp.status == 403
    assert "disabled" in await resp.text()
    assert (await fresh.get("/chat/info")).status == 401
    account = await store.account(phone, 3600)
    assert account is not None and account.devices == 0
    # a wrong password: the neutral 401 as ever (nothing told about the account)
    resp = await fresh.post("/login", data={"phone": phone, "password": "wrong password"},
                            allow_redirects=False)
    assert resp.status == 401
    # enabled again: logs in
    await ok_json(await call(admin, "PATCH", f"/chat/admin/users?phone={phone}", {"disabled": False}))
    assert (await login(fresh, phone)).status == 302


async def test_the_last_admin_cannot_drop_the_flag_but_can_with_another_admin(
        as_user: UserFactory) -> None:
    admin_phone, other = new_phone(), new_phone()
    admin = await as_user(admin_phone)
    await as_user(other)
    for change in ({"admin": False}, {"disabled": True}):
        await assert_json_error(await call(admin, "PATCH", f"/chat/admin/users?phone={admin_phone}",
                                           change), 409)
    await assert_json_error(await call(admin, "DELETE", f"/chat/admin/users?phone={admin_phone}"), 409)
    assert (await ok_json(await admin.get("/chat/info")))["admin"] is True
    await ok_json(await call(admin, "PATCH", f"/chat/admin/users?phone={other}", {"admin": True}))
    body = await ok_json(await call(admin, "PATCH", f"/chat/admin/users?phone={admin_phone}",
                                    {"admin": False}))
    assert body["admin"] is False
    await assert_json_error(await call(admin, "GET", "/chat/admin/users"), 403)


@pytest.mark.parametrize("body", [{}, {"disabled": "yes"}, {"admin": 1}, {"admin": None},
                                  {"disabled": True, "color": "red"}, [True]])
async def test_a_bad_patch_is_400_and_changes_nothing(
        as_user: UserFactory, store: Store, body: Any) -> None:
    admin = await as_user(new_phone())
    phone = new_phone()
    await as_user(phone)
    await assert_json_error(await call(admin, "PATCH", f"/chat/admin/users?phone={phone}", body), 400)
    account = await store.account(phone, 3600)
    assert account is not None and not account.disabled and not account.admin


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
async def test_an_unknown_or_malformed_phone(as_user: UserFactory, method: str) -> None:
    admin = await as_user(new_phone())
    body = {"disabled": True} if method == "PATCH" else None
    await assert_json_error(await call(admin, method, "/chat/admin/users?phone=5559999999", body), 404)
    await assert_json_error(await call(admin, method, "/chat/admin/users?phone=12ab", body), 400)
    await assert_json_error(await call(admin, method, "/chat/admin/users", body), 400)


async def test_deleting_a_user_closes_its_sockets_and_removes_everything(
        as_user: UserFactory, store: Store) -> None:
    admin = await as_user(new_phone())
    phone = new_phone()
    device = await as_user(phone)
    receive = await open_receive(device, phone)
    resp, closed = await asyncio.gather(call(admin, "DELETE", f"/chat/admin/users?phone={phone}"),
                                        wait_closed(receive))
    assert await ok_json(resp) == {"phone": phone, "deleted": True}
    assert closed == (WSCloseCode.POLICY_VIOLATION, b"logged out")
    assert not await store.user_exists(phone)
    assert (await device.get("/chat/info")).status == 401
    await assert_json_error(await call(admin, "DELETE", f"/chat/admin/users?phone={phone}"), 404)


async def test_a_cross_site_patch_is_refused(as_user: UserFactory, store: Store) -> None:
    admin = await as_user(new_phone())
    phone = new_phone()
    await as_user(phone)
    resp = await admin.patch(f"/chat/admin/users?phone={phone}", json={"disabled": True},
                             headers={"Sec-Fetch-Site": "cross-site"})
    await assert_json_error(resp, 403)
    account = await store.account(phone, 3600)
    assert account is not None and not account.disabled


# -- invites ------------------------------------------------------------------------------------


async def test_invites_made_listed_used_and_revoked(
        aiohttp_client: AiohttpClient, server: TestServer, as_user: UserFactory) -> None:
    admin_phone = new_phone()
    admin = await as_user(admin_phone)
    made = await ok_json(await call(admin, "POST", "/chat/admin/invites", {"uses": 3, "days": 2}), 201)
    assert set(made) == {"code", "url", "uses", "expires"}
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", made["code"]), made
    assert made["url"] == f"http://127.0.0.1:8080/register?invite={made['code']}"
    assert made["uses"] == 3
    assert abs(parse_timestamp(made["expires"]) - now_micros() - 2 * 86_400_000_000) < 60_000_000
    default = await ok_json(await call(admin, "POST", "/chat/admin/invites", {}), 201)
    assert default["uses"] == 1
    assert abs(parse_timestamp(default["expires"]) - now_micros() - 7 * 86_400_000_000) < 60_000_000
    listed = (await ok_json(await call(admin, "GET", "/chat/admin/invites")))["invites"]
    assert [i["code"] for i in listed] == [made["code"], default["code"]]
    assert listed[0] == {"code": made["code"], "url": made["url"], "uses": 3, "uses_left": 3,
                         "expires": made["expires"], "created_by": admin_phone}
    await assert_json_error(await call(admin, "DELETE", "/chat/admin/invites?code=nosuchcode"), 404)
    await assert_json_error(await call(admin, "DELETE", "/chat/admin/invites?code=bad%20code"), 404)
    assert await ok_json(await call(admin, "DELETE", f"/chat/admin/invites?code={default['code']}")) \
        == {"code": default["code"], "revoked": True}
    await assert_json_error(await call(admin, "DELETE", f"/chat/admin/invites?code={default['code']}"), 404)
    listed = (await ok_json(await call(admin, "GET", "/chat/admin/invites")))["invites"]
    assert [i["code"] for i in listed] == [made["code"]]


@pytest.mark.parametrize("body", [{"uses": 0}, {"uses": 1001}, {"uses": "2"}, {"uses": True},
                                  {"uses": 1.5}, {"days": 0}, {"days": 366}, {"days": -1},
                                  {"uses": 1, "extra": 1}, [1]])
async def test_a_bad_invite_request_is_400_and_makes_nothing(
        as_user: UserFactory, store: Store, body: Any) -> None:
    admin = await as_user(new_phone())
    await assert_json_error(await call(admin, "POST", "/chat/admin/invites", body), 400)
    assert await store.invites(now_micros()) == []


async def test_invite_bounds_are_accepted(as_user: UserFactory) -> None:
    admin = await as_user(new_phone())
    made = await ok_json(await call(admin, "POST", "/chat/admin/invites", {"uses": 1000, "days": 365}), 201)
    assert made["uses"] == 1000


# -- stats --------------------------------------------------------------------------------------


async def test_stats_count_users_devices_sockets_and_messages(
        as_user: UserFactory) -> None:
    admin_phone, a, b = new_phone(), new_phone(), new_phone()
    admin = await as_user(admin_phone)
    client_a = await as_user(a)
    await as_user(b)
    receive = await open_receive(client_a, a)
    send = await client_a.ws_connect(f"/ws/chat/personal/{a}/{b}/")
    await send_new_msg(send, a, b, "one")
    await send_new_msg(send, a, b, "two")
    stats = await ok_json(await call(admin, "GET", "/chat/admin/stats"))
    assert set(stats) == {"users", "devices", "sockets", "stored_messages", "attachment_bytes",
                          "database_bytes"}
    assert (stats["users"], stats["devices"], stats["sockets"]) == (3, 3, 2)
    assert (stats["stored_messages"], stats["attachment_bytes"]) == (2, 0)
    assert isinstance(stats["database_bytes"], int) and stats["database_bytes"] > 0
    await receive.close()
    await send.close()
