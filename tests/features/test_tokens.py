"""Client tokens (issue 17, SPEC 12): made by POST /chat/devices/token and `run.py token`, used as
`Authorization: Bearer` on HTTP and WebSocket handshakes or as the subprotocols `chat.v1` +
`bearer.TOKEN` (the server selects `chat.v1`), listed and revoked as devices (SPEC 7), exempt from
the cross-site checks and from nothing else, waited for by messages like any device (SPEC 7.1),
never expired by age, and ended by a password change. Against an in-process server (aiohttp's
TestServer), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
from aiohttp import WSCloseCode
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient, AiohttpServer

from chatserver.app import create_app
from chatserver.cli import main
from chatserver.config import Config
from helpers import backends
from helpers.accounts import PASSWORD, UserFactory
from helpers.frames import SERVER_TS, frame, new_phone
from helpers.ws import (
    assert_json_error,
    fetch_all,
    open_personal,
    open_receive,
    recv,
    send_new_msg,
    wait_closed,
)

pytestmark = [pytest.mark.filterwarnings(
    "ignore::aiohttp.web_exceptions.NotAppKeyWarning:aiohttp_session"),
    pytest.mark.backends(backends.LOCAL, backends.POSTGRES)]

TOKEN_CHARS: Final = 46  # "ct_" + token_urlsafe(32)
FOREIGN: Final = {"Origin": "https://evil.example"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def make_token(client: TestClient, label: str = "door sensor") -> tuple[str, str]:
    """POST /chat/devices/token with the browser login `client`: (device id, token)."""
    resp = await client.post("/chat/devices/token", json={"label": label})
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert set(body) == {"id", "token"}, body
    assert body["token"].startswith("ct_") and len(body["token"]) == TOKEN_CHARS, body
    return body["id"], body["token"]


async def devices_with(client: TestClient, headers: dict[str, str] | None = None) -> list[Any]:
    resp = await client.get("/chat/devices", headers=headers)
    assert resp.status == 200, await resp.text()
    return list((await resp.json())["devices"])


async def bare(aiohttp_client: AiohttpClient, server: TestServer) -> TestClient:
    """A client with no login (a script): only its token authenticates it."""
    return await aiohttp_client(server)


# -- making, using, listing ---------------------------------------------------------------------


async def test_a_token_is_made_used_listed_and_revoked(
        aiohttp_client: AiohttpClient, aiohttp_server: AiohttpServer, config: Config,
        as_user: UserFactory) -> None:
    """No session check would close the socket within the test (one an hour): the revocation
    does, at once; later requests with the token get 401."""
    server = await aiohttp_server(create_app(dataclasses.replace(
        config, security=dataclasses.replace(config.security, session_check_seconds=3600.0))))
    phone = new_phone()
    browser = await (await _users(aiohttp_client, server))(phone)
    device_id, token = await make_token(browser, "backup script")
    script = await bare(aiohttp_client, server)
    info = await script.get("/chat/info", headers=bearer(token))
    assert info.status == 200 and (await info.json())["phone"] == phone
    listed = await devices_with(browser)
    assert [(d["id"], d["label"], d["current"]) for d in listed][0] == (device_id, "backup script",
                                                                         False)
    assert SERVER_TS.fullmatch(listed[0]["created"]) and set(listed[0]) == {
        "id", "label", "created", "last_active", "current"}
    # The token's own view: it is the current device; its secret is in no listing.
    assert [d["current"] for d in await devices_with(script, bearer(token))] == [True, False]
    assert token not in str(listed)

    ws = await open_receive(script, phone, headers=bearer(token))
    resp, closed = await asyncio.gather(
        browser.delete("/chat/devices", params={"id": device_id}), wait_closed(ws))
    assert resp.status == 200 and await resp.json() == {"id": device_id, "removed": True}
    assert closed is not None and closed[0] == WSCloseCode.POLICY_VIOLATION
    await assert_json_error(await script.get("/chat/info", headers=bearer(token)), 401)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await script.ws_connect(f"/ws/chat/special/{phone}/", headers=bearer(token))
    assert refused.value.status == 401
    assert device_id not in [d["id"] for d in await devices_with(browser)]


async def _users(aiohttp_client: AiohttpClient, server: TestServer) -> UserFactory:
    async def login(phone: str) -> TestClient:
        client = await aiohttp_client(server)
        resp = await client.post("/register", data={"phone": phone, "name": f"user {phone}",
                                                    "password": PASSWORD}, allow_redirects=False)
        assert resp.status == 302, await resp.text()
        return client
    return login


@pytest.mark.parametrize("label", ["", "   ", "x" * 65, "a\u202eb", None, 7])
async def test_a_bad_label_is_400_and_makes_nothing(as_user: UserFactory, label: object) -> None:
    browser = await as_user(new_phone())
    await assert_json_error(await browser.post("/chat/devices/token", json={"label": label}), 400)
    await assert_json_error(await browser.post("/chat/devices/token", data="not json"), 400)
    assert len(await devices_with(browser)) == 1


async def test_making_a_token_needs_a_login_and_a_token_cannot_make_one(
        as_user: UserFactory, aiohttp_client: AiohttpClient, server: TestServer) -> None:
    browser = await as_user(new_phone())
    _, token = await make_token(browser)
    script = await bare(aiohttp_client, server)
    await assert_json_error(await script.post("/chat/devices/token", json={"label": "x"}), 401)
    await assert_json_error(await script.post("/chat/devices/token", json={"label": "x"},
                                              headers=bearer(token)), 403)
    # ... even with the user's cookie alongside: the token alone speaks for a token request.
    await assert_json_error(await browser.post("/chat/devices/token", json={"label": "x"},
                                               headers=bearer(token)), 403)
    assert len(await devices_with(browser)) == 2


async def test_run_py_token_prints_a_working_token(
        aiohttp_client: AiohttpClient, server: TestServer, config: Config, as_user: UserFactory,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`run.py token PHONE --label L` on the server's database: the token alone on standard
    output, `id=DEVICE` on standard error; 1 for an unknown phone."""
    phone = new_phone()
    browser = await as_user(phone)
    cfg = tmp_path / "cli.toml"
    cfg.write_text(f'[database]\npath = "{config.database.path}"\nurl = "{config.database.url}"\n',
                   encoding="utf-8")
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["--config", str(cfg), "token", phone, "--label",
                                          "cron job"]) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert out == token + "\n" and len(token) == TOKEN_CHARS, out
    assert err.startswith("id=") and token not in err
    device_id = err.strip().removeprefix("id=")
    listed = await devices_with(browser)
    assert (listed[0]["id"], listed[0]["label"]) == (device_id, "cron job")
    script = await bare(aiohttp_client, server)
    assert (await script.get("/chat/info", headers=bearer(token))).status == 200
    assert await asyncio.to_thread(main, ["--config", str(cfg), "token", new_phone(), "--label",
                                          "x"]) == 1
    assert await asyncio.to_thread(main, ["--config", str(cfg), "token", phone, "--label",
                                          ""]) == 1
    assert len(await devices_with(browser)) == 2


# -- the two forms of authentication ------------------------------------------------------------


async def test_bearer_and_subprotocol_open_every_socket_kind_and_chat_v1_is_selected(
        as_user: UserFactory, aiohttp_client: AiohttpClient, server: TestServer) -> None:
    me, peer = new_phone(), new_phone()
    browser = await as_user(me)
    peer_client = await as_user(peer)
    _, token = await make_token(browser)
    script = await bare(aiohttp_client, server)
    # The receive socket, both ways; the subprotocol form is answered with chat.v1 selected.
    by_header = await open_receive(script, me, headers=bearer(token))
    by_subprotocol = await open_receive(script, me, protocols=("chat.v1", "bearer." + token))
    assert by_subprotocol.protocol == "chat.v1"
    assert by_header.protocol is None  # offered nothing: nothing selected, as before
    with_header_and_chat = await open_receive(script, me, headers=bearer(token),
                                              protocols=("chat.v1",))
    assert with_header_and_chat.protocol == "chat.v1"
    # A send socket with the subprotocol form: the message reaches the peer.
    peer_ws = await open_receive(peer_client, peer)
    send = await open_personal(script, me, peer, protocols=("chat.v1", "bearer." + token))
    assert send.protocol == "chat.v1"
    sent = await send_new_msg(send, me, peer, "from a bot")
    assert await recv(peer_ws) == sent
    for ws in (by_header, by_subprotocol, with_header_and_chat, peer_ws, send):
        await ws.close()


@pytest.mark.parametrize("how", ["header", "subprotocol"])
async def test_a_wrong_token_is_401_on_http_and_handshakes(
        as_user: UserFactory, aiohttp_client: AiohttpClient, server: TestServer, how: str) -> None:
    me = new_phone()
    browser = await as_user(me)
    _, token = await make_token(browser)
    wrong = token[:-1] + ("A" if token[-1] != "A" else "B")
    kwargs: dict[str, Any] = ({"headers": bearer(wrong)} if how == "header"
                              else {"protocols": ("chat.v1", "bearer." + wrong)})
    # With the user's valid cookie alongside: still refused (the token alone authenticates).
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await browser.ws_connect(f"/ws/chat/special/{me}/", **kwargs)
    assert refused.value.status == 401
    if how == "header":
        for path in ("/chat/info", "/chat/devices"):
            await assert_json_error(await browser.get(path, headers=bearer(wrong)), 401)
        await assert_json_error(await browser.get("/chat/info", headers={"Authorization": "Bearer"}),
                                401)


async def test_a_bearer_subprotocol_without_chat_v1_is_refused_before_the_upgrade(
        as_user: UserFactory, aiohttp_client: AiohttpClient, server: TestServer) -> None:
    """No subprotocol to select (a browser would fail the socket with 1002): 400, no upgrade."""
    me = new_phone()
    _, token = await make_token(await as_user(me))
    script = await bare(aiohttp_client, server)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await script.ws_connect(f"/ws/chat/special/{me}/", protocols=("bearer." + token,))
    assert refused.value.status == 400


async def test_a_token_is_still_bound_to_its_user(
        as_user: UserFactory, aiohttp_client: AiohttpClient, server: TestServer) -> None:
    """SPEC 6: no path lets a token act as someone else."""
    me, other = new_phone(), new_phone()
    _, token = await make_token(await as_user(me))
    await as_user(other)
    script = await bare(aiohttp_client, server)
    for path in (f"/ws/chat/special/{other}/", f"/ws/chat/personal/{other}/{me}/"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await script.ws_connect(path, headers=bearer(token))
        assert refused.value.status == 403


# -- cross-site checks: token requests skip them, cookie requests do not --------------------------


async def test_a_token_request_from_a_foreign_origin_passes_a_cookie_one_does_not(
        as_user: UserFactory, aiohttp_client: AiohttpClient, server: TestServer) -> None:
    me, peer = new_phone(), new_phone()
    browser = await as_user(me)
    await as_user(peer)
    _, token = await make_token(browser)
    script = await bare(aiohttp_client, server)
    # HTTP, an unsafe method: the token request is served, the cookie request refused.
    resp = await script.post("/chat/special/personal", json={"msg_to": peer},
                             headers={**bearer(token), **FOREIGN})
    assert resp.status == 201, await resp.text()
    for headers in (FOREIGN, {"Sec-Fetch-Site": "cross-site"}):
        await assert_json_error(await browser.post("/chat/special/personal", json={"msg_to": peer},
                                                   headers=headers), 403)
    # WebSocket handshakes, both token forms; the cookie handshake from there is refused.
    ws = await open_receive(script, me, headers={**bearer(token), **FOREIGN})
    ws2 = await open_receive(script, me, headers=FOREIGN, protocols=("chat.v1", "bearer." + token))
    assert ws2.protocol == "chat.v1"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await browser.ws_connect(f"/ws/chat/special/{me}/", headers=FOREIGN)
    assert refused.value.status == 403
    await ws.close()
    await ws2.close()


async def test_token_handshakes_count_against_the_address_limit(
        aiohttp_client: AiohttpClient, aiohttp_server: AiohttpServer, config: Config) -> None:
    server = await aiohttp_server(create_app(dataclasses.replace(
        config, limits=dataclasses.replace(config.limits, handshakes_per_minute=2))))
    me = new_phone()
    browser = await (await _users(aiohttp_client, server))(me)
    _, token = await make_token(browser)
    script = await bare(aiohttp_client, server)
    opened = [await script.ws_connect(f"/ws/chat/special/{me}/", headers=bearer(token))
              for _ in range(2)]
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await script.ws_connect(f"/ws/chat/special/{me}/", headers=bearer(token))
    assert refused.value.status == 429
    for ws in opened:
        await ws.close()


# -- a token is a device (SPEC 7) -----------------------------------------------------------------


async def test_a_message_to_the_bots_user_waits_for_the_token_device_too(
        as_user: UserFactory, aiohttp_client: AiohttpClient, server: TestServer) -> None:
    """SPEC 7.1: the browser acknowledging a message does not take it from the token device,
    which fetches it and acknowledges it on its own."""
    bot, person = new_phone(), new_phone()
    bot_browser = await as_user(bot)
    _, token = await make_token(bot_browser)
    person_client = await as_user(person)
    sent = await send_new_msg(await open_personal(person_client, person, bot), person, bot, "ping")
    # The browser device gets it and acknowledges it.
    browser_recv = await open_receive(bot_browser, bot)
    assert [m["message"] for c in await fetch_all(browser_recv, bot) for m in c] == ["ping"]
    browser_send = await open_personal(bot_browser, bot, person)
    await browser_send.send_json(frame("msg_received", bot, person, sent["sent_timestamp"]))
    # The token device still has it waiting, and acknowledges it itself.
    script = await bare(aiohttp_client, server)
    token_recv = await open_receive(script, bot, probe="fetch_grp_msgs", headers=bearer(token))
    assert [m["message"] for c in await fetch_all(token_recv, bot) for m in c] == ["ping"]
    token_send = await open_personal(script, bot, person, headers=bearer(token))
    await token_send.send_json(frame("msg_received", bot, person, sent["sent_timestamp"]))
    await token_send.send_json(frame("msg_received", bot, person, sent["sent_timestamp"]))
    error = await recv(token_send)  # the second: nothing waits for this device any more
    assert error["command"] == "error" and error["message"] == "couldn't find a message to delete"
    assert await fetch_all(token_recv, bot) == [[]]


async def test_a_password_change_ends_the_tokens(
        as_user: UserFactory, aiohttp_client: AiohttpClient, server: TestServer) -> None:
    """SPEC 7: every device but the one that changed it, tokens included; their sockets close."""
    me = new_phone()
    browser = await as_user(me)
    _, token = await make_token(browser)
    script = await bare(aiohttp_client, server)
    ws = await open_receive(script, me, headers=bearer(token))
    resp, closed = await asyncio.gather(
        browser.post("/chat/account/password", json={"current": PASSWORD,
                                                     "new": "another horse battery"}),
        wait_closed(ws))
    assert resp.status == 200, await resp.text()
    assert closed is not None and closed[0] == WSCloseCode.POLICY_VIOLATION
    await assert_json_error(await script.get("/chat/info", headers=bearer(token)), 401)
    assert len(await devices_with(browser)) == 1


async def test_a_token_outlives_session_seconds(
        aiohttp_client: AiohttpClient, aiohttp_server: AiohttpServer, config: Config,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """session_seconds = 2: a cookie login unused for longer is gone; a token unused as long is
    not (the stores' clock is moved instead of waiting)."""
    server = await aiohttp_server(create_app(dataclasses.replace(
        config, security=dataclasses.replace(config.security, session_seconds=2))))
    me = new_phone()
    browser = await (await _users(aiohttp_client, server))(me)
    _, token = await make_token(browser)
    later = sys.modules["chatserver.protocol"].now_micros() + 3_000_000
    monkeypatch.setattr(sys.modules["chatserver.stores.queries"], "now_micros", lambda: later)
    script = await bare(aiohttp_client, server)
    await assert_json_error(await browser.get("/chat/info"), 401)
    assert (await script.get("/chat/info", headers=bearer(token))).status == 200
