"""Registration modes and invites (SPEC 10, issue 12 finding 1): `security.registration` =
invite (the default) / open / closed, the first account free and an admin whatever the mode, the
403 reasons, invites used up, expired and revoked, invite attempts counted by the throttle, and
parallel registrations racing for the first account or an invite's last use."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import re
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient, AiohttpServer

from chatserver.app import create_app
from chatserver.config import Config, ConfigError, load_config
from chatserver.keys import store_key
from chatserver.protocol import now_micros
from chatserver.stores.base import Store
from helpers import backends
from helpers.accounts import PASSWORD
from helpers.timing import TIMEOUT

pytestmark = pytest.mark.filterwarnings(
    "ignore::aiohttp.web_exceptions.NotAppKeyWarning:aiohttp_session")

DAY_US = 86_400 * 1_000_000
_phones = itertools.count(5_552_000_000)


def new_phone() -> str:
    return str(next(_phones))


def with_mode(config: Config, mode: str, **limits: Any) -> Config:
    """`config` with `security.registration = mode` and some `[limits]` changed."""
    return dataclasses.replace(
        config, security=dataclasses.replace(config.security, registration=mode),
        limits=dataclasses.replace(config.limits, **limits))


async def serve(aiohttp_server: AiohttpServer, config: Config, mode: str,
                **limits: Any) -> tuple[TestServer, Store]:
    server = await aiohttp_server(create_app(with_mode(config, mode, **limits)))
    return server, server.app[store_key]


def alert(html: str) -> str:
    """The form's error paragraph."""
    m = re.search(r'<p class="error" role="alert">(.*?)</p>', html, re.S)
    assert m is not None, f"no error message in the page:\n{html}"
    return m.group(1).strip()


async def register(client: TestClient, phone: str, invite: str | None = None) -> aiohttp.ClientResponse:
    data = {"phone": phone, "name": f"user {phone}", "password": PASSWORD}
    if invite is not None:
        data["invite"] = invite
    return await client.post("/register", data=data, allow_redirects=False)


async def info(client: TestClient) -> dict[str, Any]:
    resp = await client.get("/chat/info")
    assert resp.status == 200, await resp.text()
    data: dict[str, Any] = await resp.json()
    return data


async def invite(store: Store, uses: int = 1, days: float = 7, code: str | None = None) -> str:
    code = code or f"code{next(_phones)}"
    assert await store.create_invite(code, None, uses, now_micros() + int(days * DAY_US))
    return code


# -- the modes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["invite", "open", "closed"])
async def test_the_first_account_is_free_and_an_admin_whatever_the_mode(
        aiohttp_client: AiohttpClient, aiohttp_server: AiohttpServer, config: Config,
        mode: str) -> None:
    server, store = await serve(aiohttp_server, config, mode)
    first = await aiohttp_client(server)
    page = await first.get("/register")
    assert page.status == 200
    assert "invitation" not in await page.text()  # a fresh server does not ask for an invite
    resp = await register(first, new_phone())
    assert resp.status == 302, await resp.text()
    assert (await info(first))["admin"] is True
    second = await aiohttp_client(server)
    phone = new_phone()
    resp = await register(second, phone)
    if mode == "open":
        assert resp.status == 302, await resp.text()
        assert (await info(second))["admin"] is False
    else:
        assert resp.status == 403, await resp.text()
        assert ("closed" if mode == "closed" else "invit") in alert(await resp.text())
        assert not await store.user_exists(phone)
        assert (await second.get("/chat/info")).status == 401


async def test_invite_is_the_default_mode_and_others_are_refused() -> None:
    assert Config().security.registration == "invite"
    for mode in ("invite", "open", "closed"):
        assert load_config(security__registration=mode).security.registration == mode
    for bad in ("Open", "", "yes"):
        with pytest.raises(ConfigError, match="registration must be one of"):
            load_config(security__registration=bad)
    with pytest.raises(ConfigError, match="must be a string"):
        load_config(security__registration=True)


async def test_a_closed_server_refuses_even_with_a_valid_invite(
        aiohttp_client: AiohttpClient, aiohttp_server: AiohttpServer, config: Config) -> None:
    server, store = await serve(aiohttp_server, config, "closed")
    assert (await register(await aiohttp_client(server), new_phone())).status == 302
    code = await invite(store)
    phone = new_phone()
    resp = await register(await aiohttp_client(server), phone, code)
    assert resp.status == 403
    assert "closed" in alert(await resp.text())
    assert not await store.user_exists(phone)
    left = await store.invite(code)
    assert left is not None and left.uses_left == 1


async def test_an_open_server_ignores_an_invite(
        aiohttp_client: AiohttpClient, aiohttp_server: AiohttpServer, config: Config) -> None:
    server, store = await serve(aiohttp_server, config, "open")
    assert (await register(await aiohttp_client(server), new_phone())).status == 302
    code = await invite(store)
    assert (await register(await aiohttp_client(server), new_phone(), "junk!")).status == 302
    assert (await register(await aiohttp_client(server), new_phone(), code)).status == 302
    left = await store.invite(code)
    assert left is not None and left.uses_left == 1


# -- invites ------------------------------------------------------------------------------------


@pytest.fixture
async def invite_server(aiohttp_client: AiohttpClient, aiohttp_server: AiohttpServer,
                        config: Config) -> tuple[TestServer, Store]:
    """An invite-only server whose first account (an admin) exists."""
    server, store = await serve(aiohttp_server, config, "invite")
    assert (await register(await aiohttp_client(server), new_phone())).status == 302
    return server, store


async def test_the_invite_link_puts_the_code_in_the_form(
        aiohttp_client: AiohttpClient, invite_server: tuple[TestServer, Store]) -> None:
    server, store = invite_server
    client = await aiohttp_client(server)
    code = await invite(store)
    html = await (await client.get(f"/register?invite={code}")).text()
    assert f'<input type="hidden" name="invite" value="{code}">' in html
    assert "invitation" not in html
    html = await (await client.get("/register")).text()
    assert 'name="invite"' not in html and "invitation" in html
    # what is not a code is not put in the page
    html = await (await client.get('/register?invite="><script>x</script>')).text()
    assert 'name="invite"' not in html and "<script>x" not in html


async def test_an_invite_with_two_uses_registers_two_accounts_then_no_more(
        aiohttp_client: AiohttpClient, invite_server: tuple[TestServer, Store]) -> None:
    server, store = invite_server
    code = await invite(store, uses=2)
    for _ in range(2):
        client = await aiohttp_client(server)
        assert (await register(client, new_phone(), code)).status == 302
        assert (await info(client))["admin"] is False
    phone = new_phone()
    resp = await register(await aiohttp_client(server), phone, code)
    assert resp.status == 403
    assert "used up" in alert(await resp.text())
    assert not await store.user_exists(phone)


@pytest.mark.parametrize("case", ["expired", "unknown", "revoked", "malformed", "missing"])
async def test_an_unusable_invite_is_refused_with_its_reason_and_nothing_changes(
        aiohttp_client: AiohttpClient, invite_server: tuple[TestServer, Store], case: str) -> None:
    server, store = invite_server
    code: str | None
    if case == "expired":
        code = await invite(store, days=-0.001)
    elif case == "revoked":
        code = await invite(store)
        assert await store.revoke_invite(code)
    else:
        code = {"unknown": "NoSuchCode123", "malformed": "not a code!", "missing": None}[case]
    before = len(await store.accounts(3600))
    phone = new_phone()
    client = await aiohttp_client(server)
    resp = await register(client, phone, code)
    assert resp.status == 403, await resp.text()
    reason = alert(await resp.text())
    expected = {"expired": "expired", "unknown": "not valid", "revoked": "not valid",
                "malformed": "not valid", "missing": "invite link"}[case]
    assert expected in reason, reason
    assert len(await store.accounts(3600)) == before
    assert (await client.get("/chat/info")).status == 401
    # the form keeps what was typed (but not a malformed code)
    html = await resp.text()
    assert f'value="{phone}"' in html
    if case in ("expired", "unknown", "revoked"):
        assert f'name="invite" value="{code}"' in html


async def test_a_taken_phone_takes_no_use_and_is_not_told_without_a_live_invite(
        aiohttp_client: AiohttpClient, invite_server: tuple[TestServer, Store]) -> None:
    server, store = invite_server
    code = await invite(store)
    phone = new_phone()
    assert (await register(await aiohttp_client(server), phone, code)).status == 302
    # without a live code, a taken phone is not revealed: the invite is refused first
    assert (await register(await aiohttp_client(server), phone)).status == 403
    assert (await register(await aiohttp_client(server), phone, code)).status == 403
    code2 = await invite(store)
    assert (await register(await aiohttp_client(server), phone, code2)).status == 409
    left = await store.invite(code2)
    assert left is not None and left.uses_left == 1


async def test_wrong_invite_codes_are_counted_as_failed_attempts(
        aiohttp_client: AiohttpClient, aiohttp_server: AiohttpServer, config: Config) -> None:
    """Three wrong codes from one address use up its `login_failures` = 3: the fourth attempt,
    even with a valid code, is answered 429; successes use up nothing."""
    server, store = await serve(aiohttp_server, config, "invite", login_failures=3)
    assert (await register(await aiohttp_client(server), new_phone())).status == 302
    good = await invite(store, uses=10)
    for _ in range(3):  # a success before the failures gives its attempt back
        assert (await register(await aiohttp_client(server), new_phone(), good)).status == 302
    for i in range(3):
        assert (await register(await aiohttp_client(server), new_phone(), f"wrong{i}")).status == 403
    phone = new_phone()
    resp = await register(await aiohttp_client(server), phone, good)
    assert resp.status == 429, await resp.text()
    assert not await store.user_exists(phone)


async def test_one_invite_code_is_counted_on_its_own_key(
        aiohttp_client: AiohttpClient, aiohttp_server: AiohttpServer, config: Config) -> None:
    """Per-account limit 2: two refused tries of one used-up code block that code (429), not
    another."""
    server, store = await serve(aiohttp_server, config, "invite", login_failures_per_phone=2,
                                login_failures_per_pair=2)
    assert (await register(await aiohttp_client(server), new_phone())).status == 302
    used = await invite(store)
    assert (await register(await aiohttp_client(server), new_phone(), used)).status == 302
    for _ in range(2):
        assert (await register(await aiohttp_client(server), new_phone(), used)).status == 403
    assert (await register(await aiohttp_client(server), new_phone(), used)).status == 429
    assert (await register(await aiohttp_client(server), new_phone(), await invite(store))).status == 302


async def test_the_code_is_never_logged(
        aiohttp_client: AiohttpClient, invite_server: tuple[TestServer, Store],
        caplog: pytest.LogCaptureFixture) -> None:
    server, store = invite_server
    caplog.set_level(logging.DEBUG, logger="chatserver")
    code = await invite(store)
    assert (await register(await aiohttp_client(server), new_phone(), code)).status == 302
    assert (await register(await aiohttp_client(server), new_phone(), code)).status == 403
    assert (await register(await aiohttp_client(server), new_phone(), "guessed1234")).status == 403
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("chatserver"))
    assert "registration refused (invalid invite)" in ours
    assert code not in ours and "guessed1234" not in ours


# -- races --------------------------------------------------------------------------------------


@pytest.mark.backends(backends.LOCAL, backends.POSTGRES)
async def test_ten_parallel_registrations_take_a_single_use_invite_once(
        aiohttp_client: AiohttpClient, aiohttp_server: AiohttpServer, config: Config) -> None:
    """Every one of the ten passes the form's check of the code (one use left), is hashed, and
    reaches the transaction that takes the use: exactly one 302, nine 403 (limits raised so that
    the throttle stops none of them)."""
    server, store = await serve(aiohttp_server, config, "invite", login_failures=100,
                                login_failures_per_phone=100, login_failures_per_pair=100)
    assert (await register(await aiohttp_client(server), new_phone())).status == 302
    code = await invite(store)
    clients = [await aiohttp_client(server) for _ in range(10)]
    phones = [new_phone() for _ in clients]
    async with asyncio.timeout(TIMEOUT):
        responses = await asyncio.gather(*(register(c, p, code)
                                           for c, p in zip(clients, phones, strict=True)))
    statuses = sorted(r.status for r in responses)
    assert statuses == [302] + [403] * 9, statuses
    assert sum([await store.user_exists(p) for p in phones]) == 1
    left = await store.invite(code)
    assert left is not None and left.uses_left == 0


@pytest.mark.backends(backends.LOCAL, backends.POSTGRES)
@pytest.mark.parametrize("mode", ["closed", "invite"])
async def test_parallel_first_registrations_make_one_account_and_one_admin(
        aiohttp_client: AiohttpClient, aiohttp_server: AiohttpServer, config: Config,
        mode: str) -> None:
    server, store = await serve(aiohttp_server, config, mode, login_failures=100)
    clients = [await aiohttp_client(server) for _ in range(10)]
    phones = [new_phone() for _ in clients]
    async with asyncio.timeout(TIMEOUT):
        responses = await asyncio.gather(*(register(c, p) for c, p in zip(clients, phones, strict=True)))
    statuses = sorted(r.status for r in responses)
    assert statuses == [302] + [403] * 9, statuses
    accounts = await store.accounts(3600)
    assert len(accounts) == 1 and accounts[0].admin
