"""End to end: `python run.py serve` in a subprocess on a free port, real HTTP and WebSocket
clients, a conversation both ways (push, receipts, fetch after being offline), a clean stop on
SIGTERM / SIGINT, and the cookie secret file that keeps sessions valid across a restart (SPEC 3)."""

from __future__ import annotations

import asyncio
import signal
import stat
from pathlib import Path

import aiohttp

from helpers.accounts import COOKIE, client, register
from helpers.frames import TODAY, frame
from helpers.server import ServerProcess, running, write_config
from helpers.timing import TIMEOUT
from helpers.ws import recv, send_new_msg

A, B = "5553000001", "5553000002"


def config_file(tmp_path: Path) -> Path:
    """A config file with a fast bcrypt cost; everything else at its default."""
    return write_config(tmp_path / "config.toml", {"security": {"bcrypt_rounds": 4}})


async def stop(server: ServerProcess, sig: signal.Signals) -> None:
    """Send `sig` and require a clean exit (status 0, no traceback) within EXIT_TIMEOUT."""
    assert await server.stop(sig) == 0, server.output()
    assert "Traceback" not in server.output(), server.output()


async def chat_page_status(session: aiohttp.ClientSession, server: ServerProcess) -> int:
    """The status of GET /chat without following a redirect."""
    async with session.get(server.url("/chat"), allow_redirects=False) as resp:
        return resp.status


async def test_two_users_chat_end_to_end(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    async with running(db, config_file(tmp_path), tmp_path) as server, \
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
        hello = await send_new_msg(a_send, A, B, "hello Bob", f"{TODAY} 10:00:00.000001")
        assert await recv(b_recv) == hello
        receipt = frame("msg_received", B, A, hello["sent_timestamp"], f"{TODAY} 10:00:01")
        await b_send.send_json(receipt)
        assert await recv(a_recv) == receipt

        # B -> A, and A's receipt back.
        reply = await send_new_msg(b_send, B, A, "hi Alice 👋", f"{TODAY}T10:00:02.5Z")
        assert await recv(a_recv) == reply
        receipt = frame("msg_received", A, B, reply["sent_timestamp"], f"{TODAY} 10:00:03")
        await a_send.send_json(receipt)
        assert await recv(b_recv) == receipt

        # B goes offline; A's message waits on the server and is fetched when B is back.
        await b_recv.close()
        later = await send_new_msg(a_send, A, B, "are you there?", f"{TODAY} 10:00:04.000400")
        b_recv = await bob.ws_connect(server.ws_url(f"/ws/chat/special/{B}/"))
        await b_recv.send_json({"command": "fetch_msgs", "msg_to": B})
        assert await recv(b_recv) == {
            "command": "fetch_msgs", "all": "True",
            "messages": [{"msg_from": A, "msg_to": B, "message": "are you there?",
                          "command": "new_msg", "sent_timestamp": f"{TODAY}T10:00:04.000400Z"}],
        }
        receipt = frame("msg_received", B, A, later["sent_timestamp"], f"{TODAY} 10:00:05")
        await b_send.send_json(receipt)
        assert await recv(a_recv) == receipt
        await b_recv.send_json({"command": "fetch_msgs", "msg_to": B})
        assert await recv(b_recv) == {"command": "fetch_msgs", "all": "True", "messages": []}

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
    config = config_file(tmp_path)
    secret = Path(f"{db}.secret")
    async with running(db, config, tmp_path) as server, client() as alice:
        assert secret.is_file()
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        key = secret.read_bytes()
        assert key.strip()
        cookie = await register(alice, server, A)
        assert await chat_page_status(alice, server) == 200
        await stop(server, signal.SIGINT)

    async with running(db, config, tmp_path) as server:
        assert secret.read_bytes() == key
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        async with aiohttp.ClientSession(cookies={COOKIE: cookie}) as returning:
            async with returning.get(server.url("/chat"), allow_redirects=False) as resp:
                assert resp.status == 200
                assert A in await resp.text()
            ws = await returning.ws_connect(server.ws_url(f"/ws/chat/special/{A}/"))
            await ws.send_json({"command": "fetch_msgs", "msg_to": A})
            assert await recv(ws) == {"command": "fetch_msgs", "all": "True", "messages": []}
            await ws.close()
        # Without the cookie, the same request is sent to log in (the 200 above was the cookie's).
        async with aiohttp.ClientSession() as stranger:
            assert await chat_page_status(stranger, server) == 302
        await stop(server, signal.SIGTERM)
