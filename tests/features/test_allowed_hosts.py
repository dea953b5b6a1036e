"""`server.allowed_hosts` (issue 12, finding 7: DNS rebinding against a LAN server): a request or a
WebSocket handshake whose `Host` names a host the server does not know is answered 400 before
anything else (chatserver/hosts.py, chatserver/middlewares.py). A real server process, real
clients; the Host header is set by hand, as a page on a rebound name would make the browser send.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp

from helpers.accounts import PASSWORD, client, register
from helpers.server import ServerProcess, running, write_config

PHONE = "5556000001"
EVIL = ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example", "localhost.evil.example",
        "EVIL.example.", "[evil]", "user@127.0.0.1", "127.0.0.1:{port}:1", ""]


def quick(tmp_path: Path, **server: object) -> Path:
    tables: dict[str, dict[str, object]] = {"security": {"bcrypt_rounds": 4}}
    if server:
        tables["server"] = dict(server)
    return write_config(tmp_path / "config.toml", tables)


async def status(session: aiohttp.ClientSession, server: ServerProcess, host: str,
                 method: str = "GET", path: str = "/login", **kwargs: object) -> int:
    async with session.request(method, server.url(path), headers={"Host": host},
                               allow_redirects=False, **kwargs) as resp:  # type: ignore[arg-type]
        await resp.read()
        return resp.status


async def ws_status(session: aiohttp.ClientSession, server: ServerProcess, host: str) -> int:
    """101 when PHONE's receive socket opens with this Host, else the handshake's status."""
    try:
        ws = await session.ws_connect(server.ws_url(f"/ws/chat/special/{PHONE}/"),
                                      headers={"Host": host}, timeout=aiohttp.ClientWSTimeout(ws_close=5))
    except aiohttp.WSServerHandshakeError as e:
        return e.status
    await ws.close()
    return 101


async def test_by_default_a_host_name_not_ours_is_refused_400_on_http_and_websocket(
        tmp_path: Path) -> None:
    async with running(tmp_path / "chat.db", quick(tmp_path), tmp_path) as server, \
            client() as session:
        await register(session, server, PHONE)  # a logged-in victim: the cookie is sent below
        for template in EVIL:
            host = template.format(port=server.port)
            assert await status(session, server, host) == 400, host
            assert await status(session, server, host, "POST", "/login",
                                data={"phone": PHONE, "password": PASSWORD}) == 400, host
            assert await status(session, server, host, path="/static/app.js") == 400, host
            assert await status(session, server, host, path="/chat/info") == 400, host
            assert await ws_status(session, server, host) == 400, host
        # a JSON endpoint says why in JSON
        async with session.get(server.url("/chat/info"), headers={"Host": "evil.example"}) as resp:
            assert resp.status == 400
            assert "allowed_hosts" in (await resp.json())["error"]
        # the same session with a Host we know: served
        for template in ["127.0.0.1:{port}", "127.0.0.1", "localhost:{port}", "LOCALHOST.",
                         "[::1]:{port}", "192.168.1.20:8080", "[fe80::1]"]:
            host = template.format(port=server.port)
            assert await status(session, server, host) == 200, host
            assert await status(session, server, host, path="/chat/info") == 200, host
            assert await ws_status(session, server, host) == 101, host
    assert "refused Host" in server.output()


async def test_configured_allowed_hosts_replace_the_defaults(tmp_path: Path) -> None:
    config = quick(tmp_path, allowed_hosts=["chat.example", ".family.example", "127.0.0.1"])
    async with running(tmp_path / "chat.db", config, tmp_path) as server, client() as session:
        await register(session, server, PHONE)
        for host in ["chat.example", "Chat.Example:8080", "family.example", "kids.family.example:1"]:
            assert await status(session, server, host) == 200, host
            assert await status(session, server, host, path="/chat/info") == 200, host
            assert await ws_status(session, server, host) == 101, host
        for host in ["evil.example", "localhost", "[::1]", "192.168.1.20", "chat.example.evil.example",
                     "otherfamily.example"]:
            assert await status(session, server, host) == 400, host
            assert await ws_status(session, server, host) == 400, host


async def test_a_star_allows_every_host(tmp_path: Path) -> None:
    async with running(tmp_path / "chat.db", quick(tmp_path, allowed_hosts=["*"]), tmp_path) as server, \
            client() as session:
        for host in ["evil.example", "anything.at.all:1"]:
            assert await status(session, server, host) == 200, host
