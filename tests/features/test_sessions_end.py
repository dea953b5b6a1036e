"""Sockets end with their session (issue 12, finding 2): a session ended by `run.py passwd` or
`run.py deluser` run as a separate process closes that session's open receive and send sockets
within `[security] session_check_seconds` (plus the closing handshake), on one server process
(SQLite) and on both workers of `serve --workers 2` (PostgreSQL + Redis); so does expiry
(`[security] session_seconds` after the last recorded use, SPEC 7);
logout closes them at once. The close code is 1008.

Real processes throughout: the servers are `run.py serve` (helpers/server.py), the CLI another
`run.py` started with the same database. Every wait is bounded; none synchronises with a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSCloseCode

from helpers import backends
from helpers.accounts import PASSWORD, client, register, ws_open
from helpers.configs import quick_config_tables, scaled_config_tables
from helpers.frames import new_phone
from helpers.procs import serving_process
from helpers.server import REPO, ServerProcess, merge_tables, running, start_server, write_config
from helpers.timing import NET_TIMEOUT
from helpers.ws import WS, assert_alive, recv, send_new_msg, wait_closed

# Seconds between two session checks in these servers, and the closing handshake's bound.
CHECK = 0.5
CLOSE_TIMEOUT = 1.0
# What a socket of an ended session may take to close: one check interval, the query, the
# close handshake (answered at once by aiohttp's client), and scheduling on a busy 2-core box.
CLOSES_WITHIN = CHECK + CLOSE_TIMEOUT + 2.0
NEW_PASSWORD = "a brand new passphrase 42"

needs_engines = pytest.mark.skipif(
    not (backends.POSTGRES_URL and backends.REDIS_URL),
    reason=f"{backends.POSTGRES_ENV} and {backends.REDIS_ENV} must both be set: the two-process "
           "test needs a PostgreSQL store and a Redis hub")


def tables(**security: object) -> dict[str, dict[str, object]]:
    return quick_config_tables(security={"session_check_seconds": CHECK, **security},
                               websocket={"close_timeout": CLOSE_TIMEOUT})


async def run_cli(config: Path, db: Path, *args: str, stdin: str = "") -> str:
    """`python run.py ARGS --db DB --config CONFIG` as a process of its own; its stdout. Fails
    unless it exits 0 within NET_TIMEOUT."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "run.py", *args, "--db", str(db), "--config", str(config), cwd=REPO,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), NET_TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 0, (out, err)
    return out.decode()


async def closed_in_time(ws: WS, within: float = CLOSES_WITHIN) -> float:
    """Wait until the server closes `ws` with 1008; returns how long it took (seconds)."""
    start = time.monotonic()
    closed = await wait_closed(ws, timeout=within)
    assert closed is not None and closed[0] == WSCloseCode.POLICY_VIOLATION, closed
    return time.monotonic() - start


class Clients:
    """The test's HTTP sessions (one cookie jar each) and WebSockets, all closed at the end."""

    def __init__(self) -> None:
        self.sessions: list[aiohttp.ClientSession] = []
        self.sockets: list[WS] = []

    def session(self) -> aiohttp.ClientSession:
        session = client()
        self.sessions.append(session)
        return session

    async def ws(self, session: aiohttp.ClientSession, server: ServerProcess, path: str) -> WS:
        ws = await ws_open(session, server.ws_url(path))
        self.sockets.append(ws)
        return ws

    async def receive(self, session: aiohttp.ClientSession, server: ServerProcess,
                      phone: str) -> WS:
        """`phone`'s receive socket, served (one round trip answered)."""
        ws = await self.ws(session, server, f"/ws/chat/special/{phone}/")
        await ws.send_json({"command": "fetch_grp_msgs", "msg_to": phone})
        assert await recv(ws) == {"command": "fetch_grp_msgs", "all": "True", "messages": []}
        return ws

    async def close(self) -> None:
        for ws in self.sockets:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), CLOSE_TIMEOUT)
        for session in self.sessions:
            await session.close()


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    opened = Clients()
    try:
        yield opened
    finally:
        await opened.close()


# -- one process, SQLite --------------------------------------------------------------------------


async def test_passwd_in_another_process_closes_the_receive_and_send_sockets(
        tmp_path: Path, clients: Clients) -> None:
    db, config = tmp_path / "chat.db", write_config(tmp_path / "chat.toml", tables())
    async with running(db, config, tmp_path) as server:
        a, b, c = new_phone(), new_phone(), new_phone()
        alice, bob, carol = (clients.session() for _ in range(3))
        for session, phone in ((alice, a), (bob, b), (carol, c)):
            await register(session, server, phone)
        inbox = await clients.receive(alice, server, a)
        send = await clients.ws(alice, server, f"/ws/chat/personal/{a}/{b}/")
        await assert_alive(send, a, b)
        # Someone else's sockets stay open.
        other_inbox = await clients.receive(carol, server, c)
        other_send = await clients.ws(carol, server, f"/ws/chat/personal/{c}/{b}/")

        out = await run_cli(config, db, "passwd", a, "--password-stdin", stdin=NEW_PASSWORD + "\n")
        assert "sessions are ended" in out and "open sockets" in out, out

        took = await asyncio.gather(closed_in_time(inbox), closed_in_time(send))
        assert max(took) <= CLOSES_WITHIN
        await assert_alive(other_send, c, b)
        sent = await send_new_msg(await clients.ws(bob, server, f"/ws/chat/personal/{b}/{c}/"),
                                  b, c, "to carol")
        assert (await recv(other_inbox))["message"] == sent["message"]
        # The old cookie opens nothing any more.
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await clients.ws(alice, server, f"/ws/chat/special/{a}/")
        assert refused.value.status == 403


async def test_deluser_in_another_process_closes_the_sockets(
        tmp_path: Path, clients: Clients) -> None:
    db, config = tmp_path / "chat.db", write_config(tmp_path / "chat.toml", tables())
    async with running(db, config, tmp_path) as server:
        a, b = new_phone(), new_phone()
        alice, bob = clients.session(), clients.session()
        await register(alice, server, a)
        await register(bob, server, b)
        inbox = await clients.receive(alice, server, a)
        send = await clients.ws(alice, server, f"/ws/chat/personal/{a}/{b}/")
        out = await run_cli(config, db, "deluser", a)
        assert "deleted" in out and "open sockets" in out, out
        await asyncio.gather(closed_in_time(inbox), closed_in_time(send))


async def test_an_expired_session_closes_its_socket(
        tmp_path: Path, clients: Clients) -> None:
    """An open socket is a use of its session (SPEC 7, issue 13): the session check records it,
    so the session outlives `session_seconds`. Once its recorded last use is older than that
    anyway (here set back in the database, as when the checks could not record it: a store
    outage), the next check closes the socket."""
    lifetime = 2
    db = tmp_path / "chat.db"
    config = write_config(tmp_path / "chat.toml", tables(session_seconds=lifetime))
    async with running(db, config, tmp_path) as server:
        a = new_phone()
        alice = clients.session()
        await register(alice, server, a)
        inbox = await clients.receive(alice, server, a)
        # Time must pass here: the session outlives its lifetime while the socket is open.
        await asyncio.sleep(lifetime + 1)
        await inbox.send_json({"command": "fetch_grp_msgs", "msg_to": a})
        assert await recv(inbox) == {"command": "fetch_grp_msgs", "all": "True", "messages": []}
        with contextlib.closing(sqlite3.connect(db)) as con, con:
            con.execute("UPDATE sessions SET last_used_us = last_used_us - ?", (10 * lifetime * 10**6,))
        await closed_in_time(inbox)


async def test_logout_closes_the_sessions_sockets_at_once(
        tmp_path: Path, clients: Clients) -> None:
    """Logout does not wait for the periodic check (here one a minute)."""
    db = tmp_path / "chat.db"
    config = write_config(tmp_path / "chat.toml", merge_tables(tables(), {
        "security": {"session_check_seconds": 60.0}}))
    async with running(db, config, tmp_path) as server:
        a, b = new_phone(), new_phone()
        alice, bob, alice_phone = clients.session(), clients.session(), clients.session()
        await register(alice, server, a)
        await register(bob, server, b)
        async with alice_phone.post(server.url("/login"), allow_redirects=False,
                                    data={"phone": a, "password": PASSWORD}) as resp:
            assert resp.status == 302
        inbox = await clients.receive(alice, server, a)
        send = await clients.ws(alice, server, f"/ws/chat/personal/{a}/{b}/")
        other_device = await clients.receive(alice_phone, server, a)
        async with alice.post(server.url("/logout"), allow_redirects=False) as resp:
            assert resp.status == 302
        await asyncio.gather(closed_in_time(inbox, within=2.0), closed_in_time(send, within=2.0))
        # The same user's other session (another device) keeps its socket.
        sent = await send_new_msg(await clients.ws(bob, server, f"/ws/chat/personal/{b}/{a}/"),
                                  b, a, "still here?")
        assert (await recv(other_device))["message"] == sent["message"]


# -- serve --workers 2, PostgreSQL + Redis ------------------------------------------------------


@needs_engines
async def test_passwd_closes_the_sockets_on_every_worker(
        tmp_path: Path, clients: Clients) -> None:
    async with backends.postgres_schema() as database_url, backends.redis_prefix() as prefix:
        config = write_config(tmp_path / "scaled.toml", merge_tables(
            scaled_config_tables(database_url, prefix),
            {"security": {"session_check_seconds": CHECK},
             "websocket": {"close_timeout": CLOSE_TIMEOUT}}))
        db = tmp_path / "unused.db"
        server = start_server(db, config, tmp_path, extra_args=("--workers", "2"), group=True)
        try:
            await server.wait_serving(processes=2)
            workers = server.serving_pids()
            a, b = new_phone(), new_phone()
            alice, bob = clients.session(), clients.session()
            await register(alice, server, a)
            await register(bob, server, b)
            # The kernel spreads connections over the workers: 16 sockets land on both but with
            # probability 2**-15; each is traced to the worker that holds it.
            sockets = [await clients.receive(alice, server, a) for _ in range(10)]
            sockets += [await clients.ws(alice, server, f"/ws/chat/personal/{a}/{b}/")
                        for _ in range(6)]
            for ws in sockets[10:]:
                await assert_alive(ws, a, b)
            held_by = {serving_process(ws, server.port, workers) for ws in sockets}
            assert held_by == set(workers), (held_by, workers)

            out = await run_cli(config, db, "passwd", a, "--password-stdin",
                                stdin=NEW_PASSWORD + "\n")
            assert "sessions are ended" in out, out
            await asyncio.gather(*(closed_in_time(ws) for ws in sockets))
        finally:
            server.kill()
