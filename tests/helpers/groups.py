"""Helpers for the group tests (tests/test_ws_group.py): unique phones and client timestamps, the
group JSON endpoints, group and receive sockets opened and proven served, timed receives, and
read-only looks at the database (backends.db_rows) and at the SQLite file's bytes.

Every receive here has a timeout (TIMEOUT); "nothing arrives" waits QUIET and expects a timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import ClientWebSocketResponse, WSMsgType
from aiohttp.test_utils import TestClient, TestServer

from backends import FILES_ARE_SQLITE, db_rows, has_files
from chatserver.config import Database
from conftest import PASSWORD, QUIET, TIMEOUT

WS = ClientWebSocketResponse
UserFactory = Callable[..., Awaitable[TestClient]]

# SPEC 4 / 5: group keys, the server's timestamps, timestamps in fetch results.
GROUP_KEY = re.compile(r"[A-Za-z0-9]{10}")
SERVER_TS = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}")
FETCH_TS = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")
ERROR_KEYS = frozenset({"message", "command", "type", "msg_from", "msg_to", "sent_timestamp"})
GROUP_KEYS = frozenset({"key", "name", "participants", "admins"})

# 13 digits: "7" + 5 digits of the pid + a 7-digit counter; increasing, so creation order is
# also phone order (some tests rely on that to tell "longest standing" from "smallest phone").
_phones = itertools.count(1)
# Client clocks years away from the server's, so a server time is never mistaken for one.
_instants = itertools.count(1)
_BASE = datetime(2031, 5, 6, 8, 0, 0, tzinfo=UTC)


def new_phone() -> str:
    """A phone (SPEC 1) that no other call in this process returns; later calls are larger."""
    return f"7{os.getpid() % 100_000:05d}{next(_phones):07d}"


def new_instant() -> datetime:
    """A client instant no earlier call returned (later calls are later), microseconds non-zero."""
    return _BASE + timedelta(seconds=next(_instants), microseconds=234_567)


def plain(dt: datetime) -> str:
    """`YYYY-MM-DD HH:MM:SS.ffffff` (SPEC 5's first client form)."""
    return dt.strftime("%Y-%m-%d %H:%M:%S.%f")


def iso(dt: datetime) -> str:
    """`YYYY-MM-DDTHH:MM:SS.ffffffZ` (ISO 8601, and the fetch form of SPEC 5)."""
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def server_form(dt: datetime) -> str:
    """The server's format `YYYY-MM-DD HH:MM:SS.fff` of an instant (microseconds cut to ms)."""
    return dt.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def frame(command: str, msg_from: str, msg_to: str, message: str = "",
          sent_timestamp: str | None = None) -> dict[str, str]:
    """A send-socket frame with the five fields of SPEC 5 (a fresh timestamp unless given)."""
    if sent_timestamp is None:
        sent_timestamp = plain(new_instant())
    return {"message": message, "command": command, "msg_from": msg_from, "msg_to": msg_to,
            "sent_timestamp": sent_timestamp}


# -- receiving ---------------------------------------------------------------------------------


async def recv(ws: WS, timeout: float = TIMEOUT) -> dict[str, Any]:
    """The next frame on `ws` as a JSON object; fails on a close, an error or a timeout."""
    msg = await ws.receive(timeout=timeout)
    assert msg.type is WSMsgType.TEXT, f"expected a text frame, got {msg.type!r} {msg.data!r}"
    data = json.loads(msg.data)
    assert isinstance(data, dict), data
    return data


async def assert_quiet(*sockets: WS) -> None:
    """Nothing arrives on any of `sockets` within QUIET seconds (waited once, for all together)."""
    async def one(ws: WS) -> str | None:
        try:
            msg = await ws.receive(timeout=QUIET)
        except TimeoutError:
            return None
        return f"{msg.type!r} {msg.data!r}"
    got = [g for g in await asyncio.gather(*(one(ws) for ws in sockets)) if g is not None]
    assert not got, f"expected nothing, got {got}"


async def wait_closed(ws: WS, timeout: float = TIMEOUT) -> tuple[int, bytes] | None:
    """Read until the socket ends (any frame still buffered is skipped). Returns the code and
    reason of the server's close frame, or None when the connection ended without one.

    The code is taken from the close frame itself, not `ws.close_code`: the client overwrites
    that with 1006 when its own close reply cannot be written any more.
    """
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.CLOSE:
                return msg.data, msg.extra.encode() if isinstance(msg.extra, str) else msg.extra
            if msg.type in (WSMsgType.CLOSED, WSMsgType.CLOSING, WSMsgType.ERROR):
                return None


def near_now(text: str, slack: float = 60.0) -> bool:
    """True when a server-format timestamp is within `slack` seconds of this machine's clock."""
    when = datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
    return abs((datetime.now(UTC) - when).total_seconds()) < slack


def assert_server_time(text: object) -> None:
    """`text` is the server's clock in the server's format (SPEC 5)."""
    assert isinstance(text, str) and SERVER_TS.fullmatch(text), text
    assert near_now(text), text


def assert_error(data: dict[str, Any], type_: str, msg_from: str, msg_to: str,
                 says: str | None = None) -> None:
    """`data` is a SPEC 5.5 error frame of exactly that shape (and message, when `says`)."""
    assert set(data) == ERROR_KEYS, data
    assert data["command"] == "error", data
    assert data["type"] == type_, data
    assert isinstance(data["message"], str) and data["message"].strip(), data
    if says is not None:
        assert data["message"] == says, data
    assert data["msg_from"] == msg_from, data
    assert data["msg_to"] == msg_to, data
    assert_server_time(data["sent_timestamp"])


# -- sockets -------------------------------------------------------------------------------------


async def open_receive(client: TestClient, phone: str) -> WS:
    """Open `phone`'s receive socket and wait until the server serves it (one round trip).

    The socket is registered for pushes before its loop answers a fetch, so once `fetch_msgs` is
    answered no push can be missed.
    """
    ws = await client.ws_connect(f"/ws/chat/special/{phone}/")
    await ws.send_json({"command": "fetch_msgs", "msg_to": phone})
    reply = await recv(ws)
    assert reply["command"] == "fetch_msgs" and reply["all"] == "True", reply
    return ws


async def settle(ws: WS, phone: str, key: str) -> None:
    """One round trip on a group socket that also passes through the store: an acknowledgement
    of nothing is refused only once the store has handled it, and the store commits a socket's
    writes in the order they were submitted. So when this returns, the socket is registered, its
    loop runs, and every write sent on it before has been committed (and its pushes queued)."""
    await ws.send_json(frame("grp_msg_received", phone, phone, plain(new_instant())))
    assert_error(await recv(ws), "grp_msg_received", phone, key,
                 "couldn't find a message to delete")


async def open_group(client: TestClient, phone: str, key: str, **kwargs: Any) -> WS:
    """Open `phone`'s send socket in group `key` and wait until the server serves it."""
    ws = await client.ws_connect(f"/ws/chat/group/{phone}/{key}/", **kwargs)
    await settle(ws, phone, key)
    return ws


async def send_grp(ws: WS, msg_from: str, key: str, message: str,
                   sent_timestamp: str | None = None) -> dict[str, str]:
    """Send a `new_grp_msg`, check its `msg_sent` (SPEC 5.3), return the frame as sent."""
    sent = frame("new_grp_msg", msg_from, key, message, sent_timestamp)
    await ws.send_json(sent)
    reply = await recv(ws)
    assert set(reply) == {"message", "command", "msg_from", "msg_to", "sent_timestamp"}, reply
    assert reply["command"] == "msg_sent", reply
    assert reply["message"] == sent["sent_timestamp"], reply
    assert reply["msg_from"] == msg_from and reply["msg_to"] == key, reply
    assert_server_time(reply["sent_timestamp"])
    return sent


def pushed(sent: dict[str, str], key: str, to: str) -> dict[str, str]:
    """What SPEC 5.3 pushes to participant `to` for the `new_grp_msg` frame `sent`."""
    return {"message": sent["message"], "command": "new_msg",
            "msg_from": f"{key}-{sent['msg_from']}", "msg_to": to,
            "sent_timestamp": sent["sent_timestamp"]}


async def fetch_grp(ws: WS, phone: str) -> list[dict[str, Any]]:
    """Send `fetch_grp_msgs` on a receive socket; the reply frames until `"all": "True"`."""
    await ws.send_json({"command": "fetch_grp_msgs", "msg_to": phone})
    replies: list[dict[str, Any]] = []
    while True:
        reply = await recv(ws)
        assert set(reply) == {"command", "all", "messages"}, reply
        assert reply["command"] == "fetch_grp_msgs", reply
        assert reply["all"] in ("True", "False"), reply
        replies.append(reply)
        if reply["all"] == "True":
            return replies


# -- the JSON endpoints (SPEC 4) ------------------------------------------------------------


async def json_error(resp: aiohttp.ClientResponse, status: int) -> str:
    """`resp` is exactly `{"error": <non-empty str>}` with `status`; returns the message."""
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert isinstance(body["error"], str) and body["error"], body
    return body["error"]


async def create_group(client: TestClient, name: str, participants: list[str]) -> dict[str, Any]:
    """POST /chat/special/group, which must answer 201; returns the group object."""
    resp = await client.post("/chat/special/group",
                             json={"name": name, "participants": participants})
    assert resp.status == 201, await resp.text()
    assert resp.content_type == "application/json"
    return await resp.json()


async def group_info(client: TestClient, key: str) -> dict[str, Any]:
    """GET /chat/info/group?key=..., which must answer 200."""
    resp = await client.get("/chat/info/group", params={"key": key})
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/json"
    return await resp.json()


async def patch(client: TestClient, key: str, body: object) -> aiohttp.ClientResponse:
    """PATCH /chat/info/group?key=... with a JSON body (the response, unchecked)."""
    return await client.patch("/chat/info/group", params={"key": key}, json=body)


async def patch_ok(client: TestClient, key: str, body: object) -> dict[str, Any]:
    """PATCH /chat/info/group, which must answer 200; returns the updated group."""
    resp = await patch(client, key, body)
    assert resp.status == 200, await resp.text()
    return await resp.json()


def users_on(aiohttp_client: Callable[..., Awaitable[TestClient]],
             server: TestServer) -> UserFactory:
    """`as_user` for a server a test built itself (e.g. with another fetch chunk size)."""
    async def login(phone: str) -> TestClient:
        client = await aiohttp_client(server)
        resp = await client.post("/register", data={"phone": phone, "name": f"user {phone}",
                                                    "password": PASSWORD},
                                 allow_redirects=False)
        assert resp.status == 302, await resp.text()
        return client
    return login


# -- the database, read-only (SPEC 6) ------------------------------------------------------------


def group_messages(database: Database, key: str) -> list[tuple[str, str, str]]:
    """(msg_from, sent_timestamp, message) of every stored message of group `key`, by id."""
    return [tuple(r) for r in db_rows(  # type: ignore[misc]
        database, "SELECT msg_from, sent_timestamp, message FROM group_messages WHERE grp = ?"
        " ORDER BY id", (key,))]


def pending_of(database: Database, key: str) -> dict[str, list[str]]:
    """{message body: sorted phones still pending} for group `key`."""
    out: dict[str, list[str]] = {}
    for message, phone in db_rows(
            database, "SELECT m.message, p.phone FROM group_messages AS m"
            " JOIN group_pending AS p ON p.message_id = m.id WHERE m.grp = ?"
            " ORDER BY m.id, p.phone", (key,)):
        out.setdefault(message, []).append(phone)
    return out


def files_holding(database: Database, needle: bytes) -> list[str]:
    """Names of the files (the database and its -wal) whose bytes contain `needle` (SQLite only:
    backends.FILES_ARE_SQLITE)."""
    assert has_files(database), FILES_ARE_SQLITE
    path = database.path
    found = []
    for p in (Path(path), Path(f"{path}-wal")):
        if p.exists() and needle in p.read_bytes():
            found.append(p.name)
    return found
