"""SPEC 11: no log line, at any level, in either format, carries a message body, a password, a
cookie value, an invite code or a client token (SPEC 12).

The server's own handler (chatserver/logs.py `make_handler`, what `run.py serve` installs) writes
to a buffer with the root logger at DEBUG, every library's logger included, and the access log
on (`AccessLogger`, as `server.access_log = true` sets it). Then, with distinctive markers: a first
registration, an invite made by that admin and used (its code in a page's query string and in a
form), a login, a failed login, personal and room messages and their fetch and acknowledgement, a
refused frame, and an upload. No line may hold a marker, and the lines must be there (the access
log, the authentication events, the libraries' DEBUG records), so that an empty log cannot pass.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from chatserver.app import create_app
from chatserver.config import Config
from chatserver.logs import AccessLogger, make_handler
from helpers.accounts import COOKIE, client, register
from helpers.frames import frame, new_phone
from helpers.server import running, write_config
from helpers.ws import open_personal, open_receive, recv, send_new_msg

PASSWORD_MARK = "pw-MARK-7c1e0b Horse Battery"
WRONG_PASSWORD_MARK = "wrong-MARK-55aa01 staple"
BODY_MARK = "body-MARK-93f2d4 meet at noon"
ROOM_BODY_MARK = "room-MARK-41b7e9 hello all"
FILE_MARK = b"file-MARK-d00d1e contents"


class Raw(logging.Handler):
    """Every record as emitted, before the server's handler filters anything."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def raw() -> Raw:
    return Raw()


@pytest.fixture
def log_buffer(raw: Raw) -> Iterator[list[io.StringIO]]:
    """The root logger at DEBUG into buffers, one per format's handler (text and JSON at once: the
    same run is written both ways), and into `raw`; restored afterwards."""
    root = logging.getLogger()
    buffers = {fmt: io.StringIO() for fmt in ("text", "json")}
    handlers: list[logging.Handler] = [make_handler(fmt, buffers[fmt]) for fmt in buffers]
    handlers.append(raw)
    old_level = root.level
    # Libraries' loggers that something set to a level of their own: down to DEBUG too.
    quiet = {name: logging.getLogger(name).level for name in ("aiosqlite", "aiohttp.access")}
    for name in quiet:
        logging.getLogger(name).setLevel(logging.DEBUG)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield [buffers["text"], buffers["json"]]
    finally:
        for handler in handlers:
            root.removeHandler(handler)
        root.setLevel(old_level)
        for name, level in quiet.items():
            logging.getLogger(name).setLevel(level)


async def test_no_secret_reaches_any_log_line(aiohttp_server, aiohttp_client, config: Config,
                                              log_buffer: list[io.StringIO], raw: Raw) -> None:
    config = dataclasses.replace(config, security=dataclasses.replace(
        config.security, registration="invite"))
    server: TestServer = await aiohttp_server(
        create_app(config), access_log_class=AccessLogger,
        access_log=logging.getLogger("aiohttp.access"))
    admin, guest = new_phone(), new_phone()

    # The first account is free (and an admin); it makes an invite.
    admin_client: TestClient = await aiohttp_client(server)
    resp = await admin_client.post("/register", data={"phone": admin, "name": "admin",
                                                      "password": PASSWORD_MARK},
                                   allow_redirects=False)
    assert resp.status == 302, await resp.text()
    resp = await admin_client.post("/chat/admin/invites", json={"uses": 1})
    assert resp.status == 201
    invite = (await resp.json())["code"]

    # The guest opens the invite link (the code in the query) and registers with it.
    guest_client: TestClient = await aiohttp_client(server)
    resp = await guest_client.get(f"/register?invite={invite}")
    assert resp.status == 200
    resp = await guest_client.post(f"/register?invite={invite}",
                                   data={"phone": guest, "name": "guest", "password": PASSWORD_MARK,
                                         "invite": invite},
                                   headers={"Referer": str(server.make_url(f"/register?invite={invite}"))},
                                   allow_redirects=False)
    assert resp.status == 302, await resp.text()
    cookies = [c.value for c in (*admin_client.session.cookie_jar, *guest_client.session.cookie_jar)
               if c.key == COOKIE]
    assert len(cookies) == 2

    # A login, and a failed one.
    again: TestClient = await aiohttp_client(server)
    resp = await again.post("/login", data={"phone": admin, "password": PASSWORD_MARK},
                            allow_redirects=False)
    assert resp.status == 302
    cookies += [c.value for c in again.session.cookie_jar if c.key == COOKIE]
    wrong: TestClient = await aiohttp_client(server)
    resp = await wrong.post("/login", data={"phone": admin, "password": WRONG_PASSWORD_MARK},
                            allow_redirects=False)
    assert resp.status == 401

    # Messages: personal (stored, pushed, fetched, acknowledged), a refused frame carrying a body,
    # and a room.
    a_send = await open_personal(admin_client, admin, guest)
    sent = await send_new_msg(a_send, admin, guest, BODY_MARK)
    g_recv = await open_receive(guest_client, guest, probe="fetch_grp_msgs")
    await g_recv.send_json({"command": "fetch_msgs", "msg_to": guest})
    assert (await recv(g_recv))["messages"][0]["message"] == BODY_MARK
    g_send = await open_personal(guest_client, guest, admin)
    await g_send.send_json(frame("msg_received", guest, admin, sent["sent_timestamp"]))
    await g_send.send_json({"command": "new_msg", "message": BODY_MARK})  # refused: no fields
    assert (await recv(g_send))["command"] == "error"
    resp = await admin_client.post("/chat/special/room", json={"room_name": "secrets-room"})
    assert resp.status == 201
    room = await admin_client.ws_connect("/ws/chat/room/secrets-room/")
    assert (await recv(room))["command"] == "fetch_room_msgs"
    await room.send_json(frame("room_msg", admin, "secrets-room", ROOM_BODY_MARK))
    assert (await recv(room))["message"] == ROOM_BODY_MARK

    # An upload.
    form = aiohttp.FormData()
    form.add_field("file", FILE_MARK, filename="notes.txt", content_type="text/plain")
    resp = await admin_client.post("/chat/special/attachment", data=form)
    assert resp.status == 201, await resp.text()

    for ws in (a_send, g_recv, g_send, room):
        await ws.close()
    # The access log writes a WebSocket's line when its handler ends, after the close.
    async with asyncio.timeout(5):
        while "/ws/chat/room/secrets-room/" not in log_buffer[0].getvalue():
            await asyncio.sleep(0.01)  # polling for a log line, not synchronisation

    text, as_json = (buffer.getvalue() for buffer in log_buffer)
    secrets = [PASSWORD_MARK, WRONG_PASSWORD_MARK, BODY_MARK, ROOM_BODY_MARK,
               FILE_MARK.decode(), invite, *cookies]
    for output in (text, as_json):
        for secret in secrets:
            found = [line for line in output.splitlines() if secret in line]
            assert not found, (secret, found[:3])
        # The same event may have been escaped differently in JSON: look at the parsed values too.
    for line in as_json.splitlines():
        record = json.loads(line)  # one JSON object per line
        assert {"time", "level", "logger", "message"} <= set(record), record
        blob = json.dumps(record, ensure_ascii=False)
        assert not any(secret in blob for secret in secrets), record

    # The log is not empty: the access log and the authentication events are in it.
    assert " GET /register 200 " in text  # without its query string
    assert "auth registration ok" in text and "auth login failed" in text
    # DEBUG was on, and what the libraries emitted there did carry bodies (aiosqlite's SQL
    # arguments): the handler is what kept them out.
    assert any(BODY_MARK in r.getMessage() for r in raw.records if r.levelno == logging.DEBUG)


async def test_run_py_serve_logs_json_lines(tmp_path: Path) -> None:
    """`server.log_format = "json"` in a real `run.py serve`: every line of its log (standard
    error) is one JSON object with the event, its level, time and logger, and a failed login
    carries its request context."""
    config = write_config(tmp_path / "config.toml", {"server": {"log_format": "json"},
                                                     "security": {"bcrypt_rounds": 4}})
    async with running(tmp_path / "chat.db", config, tmp_path) as server, client() as session:
        phone = new_phone()
        await register(session, server, phone)
        async with session.post(server.url("/login"), allow_redirects=False,
                                data={"phone": phone, "password": WRONG_PASSWORD_MARK}) as resp:
            assert resp.status == 401
        assert await server.stop() == 0
    lines = server.err().splitlines()
    assert lines
    records = [json.loads(line) for line in lines]  # each line is one JSON object
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record), record
    failed = [r for r in records if r.get("event") == "auth login failed (wrong password)"]
    assert failed and failed[0]["remote"] == "127.0.0.1" and failed[0]["path"] == "/login", records
    assert failed[0]["level"] == "WARNING" and failed[0]["logger"] == "chatserver.pages"
    assert WRONG_PASSWORD_MARK not in server.err()


async def test_no_token_reaches_any_log_line(aiohttp_server, aiohttp_client, config: Config,
                                             log_buffer: list[io.StringIO], raw: Raw) -> None:
    """SPEC 12: a client token is in no log line, raw record included: made (its answer), used
    as `Authorization: Bearer` on requests and handshakes, as the subprotocol `bearer.TOKEN`
    (also offered without `chat.v1`, refused before aiohttp would log the offered subprotocols),
    wrong, on the send API, and revoked; with the access log on and every logger at DEBUG."""
    server: TestServer = await aiohttp_server(
        create_app(config), access_log_class=AccessLogger,
        access_log=logging.getLogger("aiohttp.access"))
    me, peer = new_phone(), new_phone()
    clients = []
    for phone in (me, peer):
        client_: TestClient = await aiohttp_client(server)
        resp = await client_.post("/register", data={"phone": phone, "name": "x",
                                                     "password": PASSWORD_MARK},
                                  allow_redirects=False)
        assert resp.status == 302
        clients.append(client_)
    resp = await clients[0].post("/chat/devices/token", json={"label": "bot"})
    assert resp.status == 201
    made = await resp.json()
    token = made["token"]
    script: TestClient = await aiohttp_client(server)
    auth = {"Authorization": f"Bearer {token}"}
    assert (await script.get("/chat/info", headers=auth)).status == 200
    resp = await script.post("/api/v1/messages", json={"msg_to": peer, "message": BODY_MARK},
                             headers=auth)
    assert resp.status == 201
    wrong = {"Authorization": f"Bearer {token}x"}
    assert (await script.get("/chat/info", headers=wrong)).status == 401
    ws = await open_receive(script, me, protocols=("chat.v1", "bearer." + token))
    ws2 = await open_receive(script, me, headers=auth)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await script.ws_connect(f"/ws/chat/special/{me}/", protocols=("bearer." + token,))
    assert refused.value.status == 400
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await script.ws_connect(f"/ws/chat/special/{me}/", protocols=("chat.v1", f"bearer.{token}x"))
    resp = await clients[0].delete("/chat/devices", params={"id": made["id"]})
    assert resp.status == 200
    for socket in (ws, ws2):
        await socket.close()
    async with asyncio.timeout(5):
        while f"/ws/chat/special/{me}/" not in log_buffer[0].getvalue():
            await asyncio.sleep(0.01)  # polling for a log line, not synchronisation

    text, as_json = (buffer.getvalue() for buffer in log_buffer)
    secrets = [token, token[3:], PASSWORD_MARK, BODY_MARK]
    for output in (text, as_json):
        for secret in secrets:
            found = [line for line in output.splitlines() if secret in line]
            assert not found, (secret, found[:3])
    for record in raw.records:  # before any handler: not even a DEBUG record carries it
        assert token[3:] not in record.getMessage(), (record.name, record.getMessage())
    assert "auth token created" in text and " POST /api/v1/messages 201 " in text
