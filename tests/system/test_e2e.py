"""End to end: `python run.py serve` in a subprocess on a free port, real HTTP and WebSocket
clients, a conversation both ways (push, receipts, fetch after being offline), a clean stop on
SIGTERM / SIGINT, and the cookie secret file that keeps sessions valid across a restart (SPEC 3)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from conftest import PASSWORD, TIMEOUT
from procutil import Listening, free_port

REPO = Path(__file__).resolve().parent.parent
COOKIE = "chat_session"
# Seconds the server may take to answer HTTP after start, and to exit after a signal.
START_TIMEOUT = 20.0
EXIT_TIMEOUT = 15.0
A, B = "5553000001", "5553000002"


@dataclass
class Running(Listening):
    """A server subprocess and where it listens."""

    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")



def write_config(tmp_path: Path) -> Path:
    """A config file with a fast bcrypt cost; everything else at its default."""
    path = tmp_path / "config.toml"
    path.write_text("[security]\nbcrypt_rounds = 4\n")
    return path


async def wait_until_serving(server: Running) -> None:
    """Poll until the server answers HTTP, failing early when the process has died."""
    deadline = time.monotonic() + START_TIMEOUT
    async with aiohttp.ClientSession() as session:
        while True:
            assert server.proc.poll() is None, f"server exited early:\n{server.output()}"
            try:
                async with session.get(server.url("/login"),
                                       timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError):
                pass
            assert time.monotonic() < deadline, f"server did not answer:\n{server.output()}"
            await asyncio.sleep(0.05)  # polling interval, not synchronisation


@contextlib.asynccontextmanager
async def serve(tmp_path: Path, db: Path, config: Path) -> AsyncIterator[Running]:
    """Start `run.py serve` on a free port and yield once it answers; always kill it at the end."""
    port = free_port()
    log = tmp_path / f"server-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "run.py", "serve", "--port", str(port), "--db", str(db),
             "--config", str(config)],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    server = Running(proc, port, log)
    try:
        await wait_until_serving(server)
        yield server
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=EXIT_TIMEOUT)


async def stop(server: Running, sig: signal.Signals) -> None:
    """Send `sig` and require a clean exit (status 0) within EXIT_TIMEOUT."""
    server.proc.send_signal(sig)
    code = await asyncio.to_thread(server.proc.wait, EXIT_TIMEOUT)
    assert code == 0, server.output()
    assert "Traceback" not in server.output(), server.output()


def client() -> aiohttp.ClientSession:
    """A browser-like client: its own cookie jar, which accepts cookies from an IP address."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def register(session: aiohttp.ClientSession, server: Running, phone: str) -> str:
    """Register `phone` and return its session cookie."""
    async with session.post(server.url("/register"), allow_redirects=False,
                            data={"phone": phone, "name": f"user {phone}",
                                  "password": PASSWORD}) as resp:
        assert resp.status == 302, await resp.text()
        assert resp.headers["Location"] == "/chat"
    return session.cookie_jar.filter_cookies(server.base)[COOKIE].value


async def chat_page_status(session: aiohttp.ClientSession, server: Running) -> int:
    """The status of GET /chat without following a redirect."""
    async with session.get(server.url("/chat"), allow_redirects=False) as resp:
        return resp.status


def frame(command: str, msg_from: str, msg_to: str, message: str,
          sent_timestamp: str) -> dict[str, str]:
    """A client frame with the five fields of SPEC 5."""
    return {"message": message, "command": command, "msg_from": msg_from, "msg_to": msg_to,
            "sent_timestamp": sent_timestamp}


async def receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    """The next JSON frame on `ws`, waiting at most TIMEOUT."""
    data = await ws.receive_json(timeout=TIMEOUT)
    assert isinstance(data, dict)
    return data


async def send_new_msg(ws: aiohttp.ClientWebSocketResponse, msg: dict[str, str]) -> None:
    """Send a `new_msg` and require its `msg_sent`."""
    await ws.send_json(msg)
    reply = await receive(ws)
    assert reply["command"] == "msg_sent", reply
    assert reply["message"] == msg["sent_timestamp"]
    assert (reply["msg_from"], reply["msg_to"]) == (msg["msg_from"], msg["msg_to"])


async def test_two_users_chat_end_to_end(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    async with serve(tmp_path, db, write_config(tmp_path)) as server, \
            client() as alice, client() as bob:
        await register(alice, server, A)
        await register(bob, server, B)
        assert await chat_page_status(alice, server) == 200
        assert await chat_page_status(bob, server) == 200

        a_recv = await alice.ws_connect(server.ws_url(f"/ws/chat/special/{A}/"))
        b_recv = await bob.ws_connect(server.ws_url(f"/ws/chat/special/{B}/"))
        a_send = await alice.ws_connect(server.ws_url(f"/ws/chat/personal/{A}/{B}/"))
        b_send = await bob.ws_connect(server.ws_url(f"/ws/chat/personal/{B}/{A}/"))

        # A -> B: pushed as sent; B's receipt reaches A.
        hello = frame("new_msg", A, B, "hello Bob", "2030-05-01 10:00:00.000001")
        await send_new_msg(a_send, hello)
        assert await receive(b_recv) == hello
        receipt = frame("msg_received", B, A, hello["sent_timestamp"], "2030-05-01 10:00:01")
        await b_send.send_json(receipt)
        assert await receive(a_recv) == receipt

        # B -> A, and A's receipt back.
        reply = frame("new_msg", B, A, "hi Alice 👋", "2030-05-01T10:00:02.5Z")
        await send_new_msg(b_send, reply)
        assert await receive(a_recv) == reply
        receipt = frame("msg_received", A, B, reply["sent_timestamp"], "2030-05-01 10:00:03")
        await a_send.send_json(receipt)
        assert await receive(b_recv) == receipt

        # B goes offline; A's message waits on the server and is fetched when B is back.
        await b_recv.close()
        later = frame("new_msg", A, B, "are you there?", "2030-05-01 10:00:04.000400")
        await send_new_msg(a_send, later)
        b_recv = await bob.ws_connect(server.ws_url(f"/ws/chat/special/{B}/"))
        await b_recv.send_json({"command": "fetch_msgs", "msg_to": B})
        assert await receive(b_recv) == {
            "command": "fetch_msgs", "all": "True",
            "messages": [{"msg_from": A, "msg_to": B, "message": "are you there?",
                          "command": "new_msg", "sent_timestamp": "2030-05-01T10:00:04.000400Z"}],
        }
        receipt = frame("msg_received", B, A, later["sent_timestamp"], "2030-05-01 10:00:05")
        await b_send.send_json(receipt)
        assert await receive(a_recv) == receipt
        await b_recv.send_json({"command": "fetch_msgs", "msg_to": B})
        assert await receive(b_recv) == {"command": "fetch_msgs", "all": "True", "messages": []}

        for ws in (b_recv, a_send, b_send):
            await ws.close()
        # Stop with a socket still open: it is closed with 1001 going away, and the process
        # exits cleanly. Reading while it stops lets the close handshake complete.
        stopping = asyncio.ensure_future(stop(server, signal.SIGTERM))
        msg = await a_recv.receive(timeout=TIMEOUT)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
        assert a_recv.close_code == aiohttp.WSCloseCode.GOING_AWAY
        await stopping
    assert db.is_file()
    assert db.stat().st_size > 0


async def test_cookie_secret_file_and_sessions_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "data" / "chat.db"
    config = write_config(tmp_path)
    secret = Path(f"{db}.secret")
    async with serve(tmp_path, db, config) as server, client() as alice:
        assert secret.is_file()
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        key = secret.read_bytes()
        assert key.strip()
        cookie = await register(alice, server, A)
        assert await chat_page_status(alice, server) == 200
        await stop(server, signal.SIGINT)

    async with serve(tmp_path, db, config) as server:
        assert secret.read_bytes() == key
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        async with aiohttp.ClientSession(cookies={COOKIE: cookie}) as returning:
            async with returning.get(server.url("/chat"), allow_redirects=False) as resp:
                assert resp.status == 200
                assert A in await resp.text()
            ws = await returning.ws_connect(server.ws_url(f"/ws/chat/special/{A}/"))
            await ws.send_json({"command": "fetch_msgs", "msg_to": A})
            assert await receive(ws) == {"command": "fetch_msgs", "all": "True", "messages": []}
            await ws.close()
        # Without the cookie, the same request is sent to log in (the 200 above was the cookie's).
        async with aiohttp.ClientSession() as stranger:
            assert await chat_page_status(stranger, server) == 302
        await stop(server, signal.SIGTERM)
