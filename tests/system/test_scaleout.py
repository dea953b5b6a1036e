"""The scale-out deployment with real processes: several `run.py serve` sharing one PostgreSQL
store (`[database] url`) and one Redis hub (`[hub] url`, `[hub] prefix`).

- Two servers on two ports: users connected to different processes chat both ways with live
  pushes; an acknowledgement on one process deletes the row (read back from PostgreSQL) and its
  receipt reaches the sender on the other; groups, presence, typing, logout and rooms cross too.
- `serve --workers 2` on one port: both workers serve (each client socket is traced to the worker
  that holds its server end), SIGTERM to the parent stops everything with status 0, a worker killed
  with SIGKILL makes the parent stop the other one and exit non-zero.
- `serve --workers 2` without both URLs refuses to start (status 2) and listens nowhere.

Each test gets a schema of its own in PostgreSQL and a key prefix of its own in Redis
(tests/helpers/backends.py); without CHAT_TEST_POSTGRES_URL and CHAT_TEST_REDIS_URL those tests are skipped.
Every wait has a timeout (NET_TIMEOUT, TIMEOUT, EXIT_TIMEOUT); nothing synchronises with a sleep;
every process is killed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import WSMsgType

from helpers import backends
from helpers.accounts import client, create_group, login, register, ws_open
from helpers.configs import load_config_tables, scaled_config_tables
from helpers.frames import assert_server_time, frame, new_phone
from helpers.procs import is_gone, parent_pid, refuses_connections, serving_process
from helpers.server import REPO, ServerProcess, free_port, start_server, write_config
from helpers.timing import EXIT_TIMEOUT, NET_TIMEOUT, TIMEOUT
from helpers.ws import WS, assert_quiet, recv

needs_engines = pytest.mark.skipif(
    not (backends.POSTGRES_URL and backends.REDIS_URL),
    reason=f"{backends.POSTGRES_ENV} and {backends.REDIS_ENV} must both be set: the scale-out "
           "tests need a PostgreSQL store and a Redis hub")

# Receive sockets one user opens through a `--workers 2` port: the kernel spreads connections
# over the workers by a hash of the client's address and port, so all of them (and the sender's
# socket) land on one worker with probability 2**-SPREAD.
SPREAD = 16


# -- set-up ---------------------------------------------------------------------------------------


@dataclass
class Shared:
    """The engines of one test and a config file that points at them."""

    database_url: str  # with ?search_path=<this test's schema>
    config: Path
    tmp: Path

    def start(self, name: str, *extra_args: str, group: bool = False) -> ServerProcess:
        """Start a server on a free port; its SQLite path is unused (PostgreSQL holds the data)."""
        return start_server(self.tmp / f"{name}.db", self.config, self.tmp, extra_args=extra_args,
                            group=group)

    async def count(self, query: str, *args: object) -> int:
        """A count read straight from PostgreSQL, in this test's schema."""
        conn = await asyncpg.connect(self.database_url, timeout=NET_TIMEOUT)
        try:
            return int(await conn.fetchval(query, *args, timeout=NET_TIMEOUT))
        finally:
            await conn.close(timeout=NET_TIMEOUT)


@pytest.fixture
async def shared(tmp_path: Path) -> AsyncIterator[Shared]:
    """A fresh PostgreSQL schema and Redis prefix, and the TOML config of every server of the
    test: both engines, fast bcrypt, one cookie secret (a login on one process is valid on all)."""
    async with backends.postgres_schema() as database_url, backends.redis_prefix() as prefix:
        config = write_config(tmp_path / "scaled.toml", scaled_config_tables(database_url, prefix))
        yield Shared(database_url, config, tmp_path)


async def wait_started(server: ServerProcess) -> None:
    """The server answers HTTP and has printed its start-up line, naming its own pid."""
    await server.wait_serving(processes=1)
    assert server.serving_pids() == [server.pid], server.output()


@pytest.fixture
async def two(shared: Shared) -> AsyncIterator[tuple[ServerProcess, ServerProcess]]:
    """Two servers on two ports sharing the test's PostgreSQL schema and Redis prefix."""
    servers = [shared.start("one"), shared.start("two")]
    try:
        for server in servers:
            await wait_started(server)
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.kill()


class Clients:
    """The test's HTTP sessions (one cookie jar per user or login) and WebSockets; every socket
    and session is closed at the end, each close bounded."""

    def __init__(self) -> None:
        self.sessions: list[aiohttp.ClientSession] = []
        self.sockets: list[WS] = []

    def session(self) -> aiohttp.ClientSession:
        session = client()
        self.sessions.append(session)
        return session

    async def user(self, server: ServerProcess) -> tuple[str, aiohttp.ClientSession]:
        """A new user registered on `server`, and its logged-in session."""
        phone, session = new_phone(), self.session()
        await register(session, server, phone)
        return phone, session

    async def ws(self, session: aiohttp.ClientSession, server: ServerProcess, path: str) -> WS:
        ws = await ws_open(session, server.ws_url(path))
        self.sockets.append(ws)
        return ws

    async def receive_socket(self, session: aiohttp.ClientSession, server: ServerProcess,
                             phone: str) -> WS:
        """`phone`'s receive socket on `server`, after one round trip: it is registered with
        the hub (and its presence announced) before its loop answers anything."""
        ws = await self.ws(session, server, f"/ws/chat/special/{phone}/")
        await ws.send_json({"command": "fetch_grp_msgs", "msg_to": phone})
        assert await recv(ws) == {"command": "fetch_grp_msgs", "all": "True", "messages": []}
        return ws

    async def close(self) -> None:
        for ws in self.sockets:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(NET_TIMEOUT):
                    await ws.close()
        for session in self.sessions:
            await session.close()


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    """Requested after the servers' fixture, so closed before the servers are killed."""
    made = Clients()
    try:
        yield made
    finally:
        await made.close()


async def send(ws: WS, data: dict[str, str]) -> None:
    await ws.send_str(json.dumps(data))


async def expect_close(ws: WS, code: int) -> None:
    """The server closes `ws` with `code` within TIMEOUT."""
    msg = await ws.receive(timeout=TIMEOUT)
    assert msg.type is WSMsgType.CLOSE, f"expected a close, got {msg.type!r} {msg.data!r}"
    assert msg.data == code, msg


def msg_sent(data: dict[str, Any], sent: dict[str, str]) -> None:
    """`data` is the msg_sent answer to `sent`."""
    assert (data["command"], data["message"], data["msg_from"], data["msg_to"]) == (
        "msg_sent", sent["sent_timestamp"], sent["msg_from"], sent["msg_to"]), data
    assert_server_time(data["sent_timestamp"])


PERSONAL_ROWS = "SELECT count(*) FROM personal_messages WHERE msg_from = $1 AND msg_to = $2"
GROUP_ROWS = "SELECT count(*) FROM group_messages WHERE grp = $1"
GROUP_PENDING = ("SELECT count(*) FROM group_pending p JOIN group_messages m ON m.id = p.message_id "
                 "WHERE m.grp = $1 AND p.phone = $2")


# -- two servers, two ports -----------------------------------------------------------------------


async def _one_message_across(shared: Shared, x: str, x_send: WS, x_recv: WS,
                              y: str, y_send: WS, y_recv: WS, text: str) -> None:
    """x sends `text` to y, whose sockets are on the other process: stored, pushed live, the row
    there until y acknowledges; the receipt and the read receipt cross back after the commit, and
    the read receipt reaches y's own receive socket too."""
    message = frame("new_msg", x, y, text)
    await send(x_send, message)
    msg_sent(await recv(x_send), message)
    assert await recv(y_recv) == message
    assert await shared.count(PERSONAL_ROWS, x, y) == 1
    ack = frame("msg_received", y, x, message["sent_timestamp"])
    await send(y_send, ack)
    assert await recv(x_recv) == ack
    assert await shared.count(PERSONAL_ROWS, x, y) == 0
    seen = frame("msg_read", y, x, message["sent_timestamp"])
    await send(y_send, seen)
    assert await recv(x_recv) == seen
    assert await recv(y_recv) == seen  # SPEC 7.2: also to the reader's own receive sockets



@needs_engines
async def test_personal_chat_across_processes(
        shared: Shared, two: tuple[ServerProcess, ServerProcess],
        clients: Clients) -> None:
    p1, p2 = two
    a, alice = await clients.user(p1)
    b, bob = await clients.user(p2)
    a_recv = await clients.receive_socket(alice, p1, a)
    a_send = await clients.ws(alice, p1, f"/ws/chat/personal/{a}/{b}/")
    b_recv = await clients.receive_socket(bob, p2, b)
    b_send = await clients.ws(bob, p2, f"/ws/chat/personal/{b}/{a}/")

    # A (process 1) -> B (process 2), then back, each acknowledged and read on the other process.
    await _one_message_across(shared, a, a_send, a_recv, b, b_send, b_recv, "hello from process 1")
    await _one_message_across(shared, b, b_send, b_recv, a, a_send, a_recv, "and back from process 2")

    # Typing crosses too; the dialogue's state is the same seen from either process.
    await send(a_send, frame("is_typing", a, b))
    typing = await recv(b_recv)
    assert (typing["command"], typing["msg_from"], typing["msg_to"]) == ("is_typing", a, b), typing
    assert_server_time(typing["sent_timestamp"])
    for session, server, peer in ((alice, p2, b), (alice, p1, b)):
        async with session.get(server.url("/chat/info/personal"), params={"msg_to": peer},
                               timeout=aiohttp.ClientTimeout(total=NET_TIMEOUT)) as resp:
            assert resp.status == 200, await resp.text()
            info = await resp.json()
        assert info["outgoing"]["waiting"] == info["incoming"]["waiting"] == 0, info
        assert info["outgoing"]["last_received_receiver"] is not None, info
        assert info["outgoing"]["last_seen_receiver"] is not None, info

    for ws in (a_recv, a_send, b_recv, b_send):  # nothing twice, nothing else
        await assert_quiet(ws)


@needs_engines
async def test_group_across_processes(
        shared: Shared, two: tuple[ServerProcess, ServerProcess],
        clients: Clients) -> None:
    p1, p2 = two
    a, alice = await clients.user(p1)
    b, bob = await clients.user(p2)
    c, carol = await clients.user(p1)
    key = await create_group(alice, p1, "across", [b, c])
    where = {a: (alice, p1), b: (bob, p2), c: (carol, p1)}
    recv_ws = {p: await clients.receive_socket(s, srv, p) for p, (s, srv) in where.items()}
    grp_ws = {p: await clients.ws(s, srv, f"/ws/chat/group/{p}/{key}/")
              for p, (s, srv) in where.items()}

    # A on process 1 writes: B on process 2 and C on process 1 get it live.
    sent = frame("new_grp_msg", a, key, "to the group")
    await send(grp_ws[a], sent)
    msg_sent(await recv(grp_ws[a]), sent)
    for p in (b, c):
        assert await recv(recv_ws[p]) == frame("new_msg", f"{key}-{a}", p, "to the group",
                                               sent["sent_timestamp"])
    assert await shared.count(GROUP_ROWS, key) == 1

    # B acknowledges on process 2: still stored for C; then C on process 1: gone.
    for p, left in ((b, 1), (c, 0)):
        await send(grp_ws[p], frame("grp_msg_received", p, a, sent["sent_timestamp"]))
        receipt = await recv(recv_ws[a])
        assert (receipt["command"], receipt["message"], receipt["msg_from"], receipt["msg_to"]) == (
            "msg_received", sent["sent_timestamp"], f"{key}-{p}", a), receipt
        assert await shared.count(GROUP_PENDING, key, p) == 0
        assert await shared.count(GROUP_ROWS, key) == left

    # B on process 2 writes: A and C on process 1 get it; read receipts and typing cross.
    back = frame("new_grp_msg", b, key, "from process 2")
    await send(grp_ws[b], back)
    msg_sent(await recv(grp_ws[b]), back)
    for p in (a, c):
        pushed = await recv(recv_ws[p])
        assert (pushed["command"], pushed["msg_from"], pushed["msg_to"], pushed["message"]) == (
            "new_msg", f"{key}-{b}", p, "from process 2"), pushed
    for p in (a, c):
        await send(grp_ws[p], frame("grp_msg_received", p, b, back["sent_timestamp"]))
        assert (await recv(recv_ws[b]))["msg_from"] == f"{key}-{p}"
    assert await shared.count(GROUP_ROWS, key) == 0
    await send(grp_ws[c], frame("grp_msg_read", c, b, back["sent_timestamp"]))
    read = await recv(recv_ws[b])
    assert (read["command"], read["msg_from"], read["msg_to"]) == ("msg_read", f"{key}-{c}", b), read
    assert await recv(recv_ws[c]) == read  # SPEC 7.2: also to the reader's own receive sockets
    await send(grp_ws[b], frame("is_grp_typing", b, key))
    for p in (a, c):
        typing = await recv(recv_ws[p])
        assert (typing["command"], typing["msg_from"], typing["msg_to"]) == (
            "is_typing", f"{key}-{b}", p), typing

    for ws in (*recv_ws.values(), *grp_ws.values()):
        await assert_quiet(ws)


@needs_engines
async def test_presence_across_processes(
        two: tuple[ServerProcess, ServerProcess], clients: Clients) -> None:
    p1, p2 = two
    a, alice = await clients.user(p1)
    b, bob = await clients.user(p2)
    # Presence is shared between contacts both ways only (issue 12, finding 6).
    for session, server, phone, name in ((bob, p2, a, "Alice"), (alice, p1, b, "Bob")):
        async with session.post(server.url("/chat/special/contact"), json={"phone": phone, "name": name},
                                timeout=aiohttp.ClientTimeout(total=NET_TIMEOUT)) as resp:
            assert resp.status == 201, await resp.text()

    async def alice_online() -> bool:
        async with bob.get(p2.url("/chat/info/contacts"),
                           timeout=aiohttp.ClientTimeout(total=NET_TIMEOUT)) as resp:
            assert resp.status == 200, await resp.text()
            [contact] = (await resp.json())["contacts"]
            return bool(contact["online"])

    b_recv = await clients.receive_socket(bob, p2, b)
    assert not await alice_online()
    a_recv = await clients.receive_socket(alice, p1, a)
    presence = await recv(b_recv)
    assert (presence["command"], presence["msg_from"], presence["msg_to"], presence["message"]) == (
        "presence", a, b, "online"), presence
    assert await alice_online()  # process 2 sees a receive socket held by process 1

    # A second tab on process 2 is no new arrival; closing the first (on process 1) is no
    # departure while the second is open elsewhere.
    a_recv2 = await clients.receive_socket(alice, p2, a)
    await assert_quiet(b_recv)
    await a_recv.close()
    await assert_quiet(b_recv)
    assert await alice_online()
    await a_recv2.close()
    presence = await recv(b_recv)
    assert (presence["command"], presence["msg_from"], presence["message"]) == (
        "presence", a, "offline"), presence
    assert not await alice_online()


@needs_engines
async def test_logout_on_one_process_closes_the_sessions_sockets_on_the_other(
        two: tuple[ServerProcess, ServerProcess], clients: Clients) -> None:
    p1, p2 = two
    a, alice = await clients.user(p1)
    b, bob = await clients.user(p2)
    other_tab = clients.session()  # A logged in a second time: another session
    await login(other_tab, p2, a)
    on_p2 = await clients.receive_socket(alice, p2, a)
    send_p2 = await clients.ws(alice, p2, f"/ws/chat/personal/{a}/{b}/")
    on_p1 = await clients.receive_socket(alice, p1, a)
    kept = await clients.receive_socket(other_tab, p2, a)
    b_recv = await clients.receive_socket(bob, p2, b)
    cookie = "; ".join(f"{c.key}={c.value}" for c in alice.cookie_jar)

    async with alice.post(p1.url("/logout"), allow_redirects=False,
                          timeout=aiohttp.ClientTimeout(total=NET_TIMEOUT)) as resp:
        assert resp.status == 302, await resp.text()
    for ws in (on_p2, send_p2, on_p1):
        await expect_close(ws, 1008)

    # The other session and other users keep their sockets, on both processes.
    hello = frame("new_msg", b, a, "still there?")
    b_send = await clients.ws(bob, p2, f"/ws/chat/personal/{b}/{a}/")
    await send(b_send, hello)
    msg_sent(await recv(b_send), hello)
    assert await recv(kept) == hello
    await assert_quiet(b_recv)

    # The ended session's cookie is refused by the other process too.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                     headers={"Cookie": cookie}) as replay:
        for server in (p1, p2):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await clients.ws(replay, server, f"/ws/chat/special/{a}/")
            assert refused.value.status == 403


@needs_engines
async def test_room_across_processes(
        two: tuple[ServerProcess, ServerProcess], clients: Clients) -> None:
    p1, p2 = two
    a, alice = await clients.user(p1)
    b, bob = await clients.user(p2)
    room = f"across_{a}"
    async with alice.post(p1.url("/chat/special/room"), json={"room_name": room},
                          timeout=aiohttp.ClientTimeout(total=NET_TIMEOUT)) as resp:
        assert resp.status == 201, await resp.text()
    sockets = {}
    for phone, session, server in ((a, alice, p1), (b, bob, p2), (b, bob, p1)):
        ws = await clients.ws(session, server, f"/ws/chat/room/{room}/")
        assert await recv(ws) == {"command": "fetch_room_msgs", "all": "True", "messages": []}
        sockets[(phone, server.port)] = ws

    for phone, port in ((a, p1.port), (b, p2.port)):
        sent = frame("room_msg", phone, room, f"hello room from {phone}")
        await send(sockets[(phone, port)], sent)
        for ws in sockets.values():  # every socket in the room, the sender's own included
            assert await recv(ws) == sent
    for ws in sockets.values():
        await assert_quiet(ws)

    # A socket that joins later, on process 2, gets both in its history.
    late = await clients.ws(alice, p2, f"/ws/chat/room/{room}/")
    history = await recv(late)
    assert [m["msg_from"] for m in history["messages"]] == [a, b], history


# -- serve --workers 2 ----------------------------------------------------------------------------


@pytest.fixture
async def workers_server(shared: Shared) -> AsyncIterator[ServerProcess]:
    """`run.py serve --workers 2` started (in a process group of its own); at the end the whole
    group is killed, whatever happened."""
    server = shared.start("workers", "--workers", "2", group=True)
    try:
        yield server
    finally:
        server.kill()


async def wait_workers(server: ServerProcess) -> list[int]:
    """Wait until `serve --workers 2` serves; returns its two workers' pids."""
    await server.wait_serving(processes=2)
    workers = server.serving_pids()
    assert len(set(workers)) == 2 and server.pid not in workers, server.output()
    assert [parent_pid(pid) for pid in workers] == [server.pid, server.pid], workers
    return workers


@needs_engines
async def test_workers_share_one_port_and_stop_together(
        shared: Shared, workers_server: ServerProcess, clients: Clients) -> None:
    server = workers_server
    workers = await wait_workers(server)
    a, alice = await clients.user(server)
    b, bob = await clients.user(server)
    a_recv = await clients.receive_socket(alice, server, a)
    a_send = await clients.ws(alice, server, f"/ws/chat/personal/{a}/{b}/")
    b_recvs = [await clients.receive_socket(bob, server, b) for _ in range(SPREAD)]
    b_send = await clients.ws(bob, server, f"/ws/chat/personal/{b}/{a}/")

    # Which worker serves each socket: both serve some, and B has receive sockets on the
    # worker that does not hold A's send socket, so a push there crosses processes.
    served = {id(ws): serving_process(ws, server.port, workers)
              for ws in (a_recv, a_send, b_send, *b_recvs)}
    assert None not in served.values(), served
    assert set(served.values()) == set(workers), served
    assert any(served[id(ws)] != served[id(a_send)] for ws in b_recvs), served

    hello = frame("new_msg", a, b, "through one port")
    await send(a_send, hello)
    msg_sent(await recv(a_send), hello)
    for ws in b_recvs:  # every one of B's receive sockets, on both workers
        assert await recv(ws) == hello
    ack = frame("msg_received", b, a, hello["sent_timestamp"])
    await send(b_send, ack)
    assert await recv(a_recv) == ack
    assert await shared.count(PERSONAL_ROWS, a, b) == 0
    reply = frame("new_msg", b, a, "and back")
    await send(b_send, reply)
    msg_sent(await recv(b_send), reply)
    assert await recv(a_recv) == reply
    await asyncio.gather(*(assert_quiet(ws) for ws in b_recvs))

    # SIGTERM to the parent: both workers stop (closing their sockets), then the parent, 0.
    server.proc.send_signal(signal.SIGTERM)
    assert await server.wait_exit() == 0, server.output()
    assert all(is_gone(pid) for pid in workers), workers
    assert refuses_connections(server.port)
    for ws in (a_recv, a_send, b_send, *b_recvs):
        await expect_close(ws, 1001)


@needs_engines
async def test_a_worker_killed_stops_the_other_and_the_parent_fails(
        workers_server: ServerProcess, clients: Clients) -> None:
    server = workers_server
    workers = await wait_workers(server)
    a, alice = await clients.user(server)  # both serve before one is killed
    await clients.receive_socket(alice, server, a)
    os.kill(workers[0], signal.SIGKILL)
    code = await server.wait_exit()
    assert code != 0, server.output()
    assert all(is_gone(pid) for pid in workers), workers
    assert refuses_connections(server.port)
    assert "exited" in server.err(), server.output()  # the parent says why it stopped


@pytest.mark.parametrize("engines", [
    {},  # the default config: SQLite and the in-memory hub
    {"database": {"url": "postgresql://nobody@127.0.0.1:1/none"}},
    {"hub": {"url": "redis://127.0.0.1:1/0"}},
], ids=["sqlite+memory", "postgres-only", "redis-only"])
async def test_workers_need_postgres_and_redis(
        tmp_path: Path, engines: dict[str, dict[str, object]]) -> None:
    """Refused before anything is opened, so the URLs here need not answer."""
    config = (REPO / "config.toml") if not engines else write_config(
        tmp_path / "half.toml", load_config_tables(**engines))
    server = start_server(tmp_path / "chat.db", config, tmp_path, port=free_port(),
                          extra_args=("--workers", "2"), group=True)
    try:
        assert await server.wait_exit(EXIT_TIMEOUT) == 2, server.output()
        assert "[database] url" in server.err() and "[hub] url" in server.err(), server.output()
        assert "Serving on" not in server.out(), server.output()
        assert refuses_connections(server.port)
        assert not (tmp_path / "chat.db").exists()
    finally:
        server.kill()
