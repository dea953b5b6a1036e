"""WebSocket clients of an in-process server (aiohttp's TestServer): timed receives, "nothing
arrives", sockets opened and proven served, sending a message and fetching, and a TestServer with
production's handler settings.

Every receive here has a timeout (TIMEOUT); "nothing arrives" waits QUIET and expects a timeout.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from aiohttp import ClientWebSocketResponse, WSMsgType
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_runner import BaseRunner

from helpers.frames import frame
from helpers.timing import QUIET, TIMEOUT

WS = ClientWebSocketResponse


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


async def assert_json_error(resp: aiohttp.ClientResponse, status: int) -> str:
    """`resp` is exactly `{"error": <non-empty str>}` with `status` (SPEC 4); returns the text."""
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert isinstance(body["error"], str) and body["error"], body
    return body["error"]


async def send_new_msg(ws: WS, msg_from: str, msg_to: str, message: str,
                       sent_timestamp: str | None = None) -> dict[str, str]:
    """Send a `new_msg`, wait for its `msg_sent` (SPEC 5.1), and return the frame as sent."""
    sent = frame("new_msg", msg_from, msg_to, message, sent_timestamp)
    await ws.send_json(sent)
    reply = await recv(ws)
    assert reply["command"] == "msg_sent", reply
    assert reply["message"] == sent["sent_timestamp"], reply
    assert (reply["msg_from"], reply["msg_to"]) == (msg_from, msg_to), reply
    return sent


async def assert_alive(ws: WS, msg_from: str, msg_to: str) -> dict[str, str]:
    """Prove a personal send socket still works: a valid `new_msg` gets its `msg_sent`."""
    return await send_new_msg(ws, msg_from, msg_to, "still open")


async def open_receive(client: TestClient, phone: str, probe: str = "fetch_grp_msgs",
                       **kwargs: Any) -> WS:
    """Open `phone`'s receive socket and wait until the server serves it (one round trip).

    `probe` is a fetch that finds nothing at this point of the test (`fetch_msgs` where group
    messages may be waiting). A fetch is answered only once the socket's loop runs, and the
    socket is registered for pushes before that loop starts, so no push can be missed after this
    returns.
    """
    ws = await client.ws_connect(f"/ws/chat/special/{phone}/", **kwargs)
    await ws.send_json({"command": probe, "msg_to": phone})
    reply = await recv(ws)
    assert reply == {"command": probe, "all": "True", "messages": []}, reply
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


class ProductionServer(TestServer):
    """A TestServer with production's handler settings: aiohttp's TestServer cancels a request
    handler when its connection drops, `web.run_app` (what `run.py serve` uses) does not, so a
    handler that hangs only shows up here. Shutdown waits at most one second for handlers."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        kwargs["handler_cancellation"] = False
        kwargs["shutdown_timeout"] = 1.0
        return await super()._make_runner(**kwargs)
