"""Helpers shared by the WebSocket tests: unique phones and timestamps, frame builders, timed
receives, the format checks of SPEC 5 and 5.5, and logging in against a server built by the test.

Every receive here has a timeout (TIMEOUT); "nothing arrives" waits QUIET and expects a timeout.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from aiohttp import ClientWebSocketResponse, WSMsgType
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_runner import BaseRunner

from conftest import PASSWORD, QUIET, TIMEOUT

# SPEC 5: timestamps the server makes, and timestamps in fetch results.
SERVER_TS = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}")
FETCH_TS = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")
# SPEC 5.5: the exact keys of an error frame.
ERROR_KEYS = frozenset({"message", "command", "type", "msg_from", "msg_to", "sent_timestamp"})
# A frame as a client sends it on a send socket (SPEC 5).
FRAME_KEYS = ("message", "command", "msg_from", "msg_to", "sent_timestamp")

# Unique per process and per call: 13 digits, "4" + 5 digits of the pid + a 7-digit counter.
_phones = itertools.count(1)
# Client clocks far from the server's, so that a server time can never be mistaken for one.
_instants = itertools.count(1)
_BASE = datetime(2026, 11, 28, 10, 0, 0, tzinfo=UTC)

WS = ClientWebSocketResponse
UserFactory = Callable[..., Awaitable[TestClient]]


def new_phone() -> str:
    """A phone number (SPEC 1) no other call in this process returns."""
    return f"4{os.getpid() % 100_000:05d}{next(_phones):07d}"


def new_instant() -> datetime:
    """A client instant no other call in this process returns, with a non-zero microsecond part."""
    return _BASE + timedelta(seconds=next(_instants), microseconds=123_456)


def plain(dt: datetime, digits: int = 6) -> str:
    """`YYYY-MM-DD HH:MM:SS.f{digits}` (SPEC 5's first client form)."""
    text = dt.strftime("%Y-%m-%d %H:%M:%S.%f")
    return text[: len(text) - 6 + digits] if digits else text[:-7]


def iso(dt: datetime) -> str:
    """`YYYY-MM-DDTHH:MM:SS.ffffffZ` (ISO 8601; also the fetch form of SPEC 5)."""
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def server_form(dt: datetime) -> str:
    """The server's own format `YYYY-MM-DD HH:MM:SS.fff` for an instant (milliseconds cut)."""
    return dt.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def stamp() -> str:
    """A fresh client `sent_timestamp` in the plain form with milliseconds."""
    return plain(new_instant(), 3)


def frame(command: str, msg_from: str, msg_to: str, message: str = "",
          sent_timestamp: str | None = None) -> dict[str, str]:
    """A send-socket frame with the five fields of SPEC 5 (a fresh timestamp unless given)."""
    return {"message": message, "command": command, "msg_from": msg_from, "msg_to": msg_to,
            "sent_timestamp": sent_timestamp if sent_timestamp is not None else stamp()}


async def recv(ws: WS, timeout: float = TIMEOUT) -> dict[str, Any]:
    """The next frame on `ws` as a JSON object; fails on a close, an error or a timeout."""
    msg = await ws.receive(timeout=timeout)
    assert msg.type is WSMsgType.TEXT, f"expected a text frame, got {msg.type!r} {msg.data!r}"
    data = json.loads(msg.data)
    assert isinstance(data, dict), data
    return data


async def recv_many(ws: WS, n: int) -> list[dict[str, Any]]:
    """The next `n` frames on `ws`."""
    return [await recv(ws) for _ in range(n)]


async def assert_quiet(ws: WS) -> None:
    """Nothing arrives on `ws` within QUIET seconds."""
    try:
        msg = await ws.receive(timeout=QUIET)
    except TimeoutError:
        return
    raise AssertionError(f"expected nothing, got {msg.type!r} {msg.data!r}")


async def assert_json_error(resp: aiohttp.ClientResponse, status: int) -> None:
    """`resp` is exactly `{"error": <non-empty str>}` with `status` (SPEC 4)."""
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert isinstance(body["error"], str) and body["error"], body


def near_now(text: str, slack: float = 60.0) -> bool:
    """True when a server-format timestamp is within `slack` seconds of this machine's clock."""
    when = datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
    return abs((datetime.now(UTC) - when).total_seconds()) < slack


def assert_server_time(text: object) -> None:
    """`text` is the server's clock in the server's format (SPEC 5)."""
    assert isinstance(text, str) and SERVER_TS.fullmatch(text), text
    assert near_now(text), text


def assert_error(data: dict[str, Any], type_: str, msg_from: str, msg_to: str | None) -> None:
    """`data` is a SPEC 5.5 error frame of exactly that shape (msg_to None: any string)."""
    assert set(data) == ERROR_KEYS, data
    assert data["command"] == "error", data
    assert data["type"] == type_, data
    assert isinstance(data["message"], str) and data["message"].strip(), data
    assert data["msg_from"] == msg_from, data
    if msg_to is None:
        assert isinstance(data["msg_to"], str), data
    else:
        assert data["msg_to"] == msg_to, data
    assert_server_time(data["sent_timestamp"])


async def send_new_msg(ws: WS, msg_from: str, msg_to: str, message: str,
                       sent_timestamp: str | None = None) -> dict[str, str]:
    """Send a `new_msg`, wait for its `msg_sent`, and return the frame as sent."""
    sent = frame("new_msg", msg_from, msg_to, message, sent_timestamp)
    await ws.send_json(sent)
    reply = await recv(ws)
    assert reply["command"] == "msg_sent", reply
    assert reply["message"] == sent["sent_timestamp"], reply
    return sent


async def assert_alive(ws: WS, msg_from: str, msg_to: str) -> dict[str, str]:
    """Prove a personal send socket still works: a valid `new_msg` gets its `msg_sent`."""
    return await send_new_msg(ws, msg_from, msg_to, "still open")


async def open_receive(client: TestClient, phone: str, **kwargs: Any) -> WS:
    """Open `phone`'s receive socket and wait until the server serves it (one round trip).

    `fetch_grp_msgs` is answered only once the socket's loop runs, and the socket is registered
    for pushes before that loop starts, so no push can be missed after this returns.
    """
    ws = await client.ws_connect(f"/ws/chat/special/{phone}/", **kwargs)
    await ws.send_json({"command": "fetch_grp_msgs", "msg_to": phone})
    reply = await recv(ws)
    assert reply == {"command": "fetch_grp_msgs", "all": "True", "messages": []}, reply
    return ws


async def open_personal(client: TestClient, msg_from: str, msg_to: str, **kwargs: Any) -> WS:
    """Open the personal send socket msg_from -> msg_to."""
    return await client.ws_connect(f"/ws/chat/personal/{msg_from}/{msg_to}/", **kwargs)


async def fetch_all(ws: WS, phone: str, command: str = "fetch_msgs") -> list[list[dict[str, Any]]]:
    """Send a fetch on a receive socket and collect its chunks until `"all": "True"`."""
    await ws.send_json({"command": command, "msg_to": phone})
    chunks: list[list[dict[str, Any]]] = []
    while True:
        reply = await recv(ws)
        assert reply["command"] == command, reply
        assert set(reply) == {"command", "all", "messages"}, reply
        assert reply["all"] in ("True", "False"), reply
        chunks.append(reply["messages"])
        if reply["all"] == "True":
            return chunks


def users_on(aiohttp_client: Callable[..., Awaitable[TestClient]],
             server: TestServer) -> UserFactory:
    """`as_user` for a server a test built itself (e.g. with other limits)."""
    async def login(phone: str) -> TestClient:
        client = await aiohttp_client(server)
        resp = await client.post("/register", data={"phone": phone, "name": f"user {phone}",
                                                    "password": PASSWORD},
                                 allow_redirects=False)
        assert resp.status == 302, await resp.text()
        return client
    return login


class ProductionServer(TestServer):
    """A TestServer with production's handler settings: aiohttp's TestServer cancels a request
    handler when its connection drops, `web.run_app` (what `run.py serve` uses) does not, so a
    handler that hangs only shows up here. Shutdown waits at most one second for handlers."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        kwargs["handler_cancellation"] = False
        kwargs["shutdown_timeout"] = 1.0
        return await super()._make_runner(**kwargs)
