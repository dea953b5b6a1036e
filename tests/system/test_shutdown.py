"""Graceful shutdown and database safety of the real server process (`python run.py serve`).

- SIGTERM and Ctrl-C (SIGINT) under a light load of personal and group messages: the server stops
  accepting connections first, closes every open socket with 1001 (going away), finishes the
  queued writes, leaves no write-ahead log behind and exits 0; after a restart on the same
  database, clients reconnect and every message that got `msg_sent` is delivered, and none whose
  acknowledgement was proven (receipt pushed) comes back (tests/helpers/chatload.py, `Ledger`).
- `run.py backup PATH` while the server runs under load: SQLite's online backup; the copy passes
  PRAGMA quick_check and holds every user and only intact messages; the server keeps serving;
  an existing PATH is refused (exit 1) and left untouched.
- Start-up integrity check: `run.py serve` on a file that is not a database, or on a database with
  a damaged page, exits 2 promptly with "error: ..." naming the file, and never listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import sqlite3
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from helpers.accounts import client, register, ws_open
from helpers.chatload import ChatNet, Ledger, make_party, phones
from helpers.configs import load_config_tables
from helpers.procs import refuses_connections
from helpers.server import REPO, ServerProcess, start_server, write_config
from helpers.timing import EXIT_TIMEOUT, NET_TIMEOUT, POLL, QUIET, until

GOING_AWAY = 1001
# How many messages the light load must have committed before the test acts.
WARM_UP = 60
# A refused start must end within this many seconds.
REFUSE_TIMEOUT = 10.0


async def warm_up(ledger: Ledger, server: ServerProcess, n: int = WARM_UP) -> None:
    """Wait until the load has had `n` messages committed (msg_sent seen)."""
    await until(lambda: len(ledger.confirmed) >= n or not server.alive(), NET_TIMEOUT,
                lambda: f"{n} msg_sent (got {len(ledger.confirmed)})")
    assert server.alive(), server.output()


# -- SIGTERM / SIGINT ---------------------------------------------------------------------------


def open_unfinished_request(port: int) -> socket.socket:
    """A POST whose body never completes: its handler waits for the rest, and aiohttp's shutdown
    waits for the handlers in progress (after it has stopped listening and run on_shutdown, and
    at most its shutdown_timeout, 60 s), so the process is still stopping, not exited, until this
    socket is closed."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=NET_TIMEOUT)
    sock.sendall(b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/x-www-form-urlencoded\r\n"
                 b"Content-Length: 1000\r\n\r\nphone=")
    return sock


def unexpected_tracebacks(output: str) -> list[str]:
    """The tracebacks in a server's output, but for the one of the request the test dropped
    (aiohttp logs a handler's lost connection as an error)."""
    blocks = output.split("Traceback (most recent call last):")[1:]
    return [b for b in blocks if not ("in _post_form" in b and "ConnectionResetError" in b)]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_graceful_stop_under_load_closes_1001_refuses_new_and_loses_nothing(
        tmp_path: Path, sig: signal.Signals) -> None:
    db = tmp_path / "chat.db"
    config = write_config(tmp_path / "config.toml", load_config_tables())
    a, b, c = phones(3, "33")
    servers = [start_server(db, config, tmp_path)]
    party = None
    ledger = Ledger(ack_probability=0.8, rng=random.Random(7))
    load: ChatNet | None = None
    drain: ChatNet | None = None
    unfinished: socket.socket | None = None
    try:
        server = servers[0]
        await server.wait_serving()
        party = await make_party(server, [a, b, c], [(a, b)], [a, b, c])
        load, drain = ChatNet(party, ledger), ChatNet(party, ledger)
        await load.connect(server, window=3)
        # A socket whose client does not read while the server stops: its 1001 must wait for it.
        idle = await ws_open(party.sessions[a], server.ws_url(f"/ws/chat/personal/{a}/{b}/"))
        load.start_load()
        await warm_up(ledger, server)
        unfinished = await asyncio.to_thread(open_unfinished_request, server.port)

        server.proc.send_signal(sig)
        await until(lambda: bool(ledger.closes), EXIT_TIMEOUT, "a socket closed by the server")
        # The first close proves shutdown began: the listening socket must already be gone.
        assert server.alive(), server.output()
        assert await asyncio.to_thread(refuses_connections, server.port), "still accepting"
        with pytest.raises(aiohttp.ClientConnectorError):
            async with client() as late:
                await ws_open(late, server.ws_url(f"/ws/chat/special/{a}/"))
        assert server.alive(), "the refusals above were not made during the shutdown"
        unfinished.close()  # (aiohttp reads no more of it once stopping: it can only be dropped)
        load.stop_load()

        await load.wait_all_closed(EXIT_TIMEOUT)
        codes = {label: code for phase, label, code in ledger.closes}
        assert len(codes) == len(load.sockets()), codes
        assert set(codes.values()) == {GOING_AWAY}, codes
        async with asyncio.timeout(EXIT_TIMEOUT):
            while (msg := await idle.receive()).type is aiohttp.WSMsgType.TEXT:
                pass  # (nothing is sent on it, so nothing is answered)
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == GOING_AWAY, msg

        assert await server.wait_exit() == 0, server.output()
        assert not unexpected_tracebacks(server.output()), server.output()
        assert not os.path.exists(f"{db}-wal") or os.path.getsize(f"{db}-wal") == 0, \
            "the write-ahead log was left behind"
        await load.close()

        servers.append(start_server(db, config, tmp_path, port=server.port))
        await servers[-1].wait_serving()
        await drain.drain(servers[-1], db)
        verdict = ledger.verdict()
        print(f"\n{sig.name}: {verdict.summary()}")
        verdict.assert_clean()
        assert verdict.confirmed >= WARM_UP and verdict.proven_before > 0, verdict.summary()
    finally:
        if unfinished is not None:
            unfinished.close()
        for net in (load, drain):
            if net is not None:
                await net.close()
        if party is not None:
            await party.close()
        for s in servers:
            s.kill()


TCP_ESTABLISHED = 1


def tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of `sock` (Linux TCP_INFO: tcpi_state is its first byte)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


def buffered(sock: socket.socket) -> bytes:
    """What waits unread in `sock`'s receive buffer (peeked, not consumed)."""
    try:
        return sock.recv(65536, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return b""


@pytest.mark.skipif(sys.platform != "linux", reason="reads the TCP state with Linux's TCP_INFO")
async def test_shutdown_waits_for_the_clients_answer_to_its_close_frame(tmp_path: Path) -> None:
    """RFC 6455 7.1.1 / hub.close_socket: after sending its close frame the server keeps the
    connection until the client answers (or websocket.close_timeout passes). Dropping it at once resets
    connections with unread input, and a client that is sending loses the 1001 (under load: 1006)."""
    db = tmp_path / "chat.db"
    config = write_config(tmp_path / "config.toml", load_config_tables())
    (a,) = phones(1, "36")
    server = start_server(db, config, tmp_path)
    try:
        await server.wait_serving()
        async with client() as session:
            await register(session, server, a)
            ws = await ws_open(session, server.ws_url(f"/ws/chat/special/{a}/"))
            await ws.send_str(f'{{"command": "fetch_msgs", "msg_to": "{a}"}}')
            assert (await ws.receive_json(timeout=NET_TIMEOUT))["command"] == "fetch_msgs"
            transport = ws._response.connection.transport  # noqa: SLF001 - the raw socket's fd
            raw = socket.socket(fileno=os.dup(transport.get_extra_info("socket").fileno()))
            try:
                server.proc.send_signal(signal.SIGTERM)
                # This client is busy elsewhere (its loop blocked here), so the close frame
                # stays unanswered while we look at the connection.
                deadline = time.monotonic() + EXIT_TIMEOUT
                while not buffered(raw).startswith(b"\x88"):
                    assert time.monotonic() < deadline, "no close frame"
                    time.sleep(POLL)  # polling interval
                assert buffered(raw)[2:4] == GOING_AWAY.to_bytes(2, "big")
                quiet_until = time.monotonic() + QUIET
                while time.monotonic() < quiet_until:
                    assert tcp_state(raw) == TCP_ESTABLISHED, \
                        "the server dropped the connection before the client answered its close"
                    time.sleep(POLL)  # polling interval
            finally:
                raw.close()
            msg = await ws.receive(timeout=NET_TIMEOUT)
            assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == GOING_AWAY, msg
        assert await server.wait_exit() == 0, server.output()
    finally:
        server.kill()


# -- backup while serving -----------------------------------------------------------------------


async def run_py(*args: str) -> tuple[int, str, str]:
    """`python run.py ARGS` in the repository: (exit status, stdout, stderr), bounded in time."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "run.py", *args, cwd=REPO, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def test_backup_while_serving_under_load(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    config = write_config(tmp_path / "config.toml", load_config_tables())
    users = phones(4, "34")
    copy, taken = tmp_path / "copy.db", tmp_path / "taken.db"
    taken.write_bytes(b"an older backup, not to be overwritten\n")
    party = None
    ledger = Ledger(ack_probability=0.5, rng=random.Random(11))
    load: ChatNet | None = None
    server = start_server(db, config, tmp_path)
    try:
        await server.wait_serving()
        party = await make_party(server, users, [(users[0], users[1]), (users[2], users[3])],
                                 users[:3])
        load = ChatNet(party, ledger)
        await load.connect(server, window=8)
        load.start_load()
        await warm_up(ledger, server)

        code, out, err = await run_py("--config", str(config), "--db", str(db), "backup", str(copy))
        assert code == 0, (out, err)
        assert str(copy) in out, out
        during = len(ledger.confirmed)
        code, out, err = await run_py("--config", str(config), "--db", str(db), "backup", str(taken))
        assert code == 1, (out, err)
        assert "error:" in err and str(taken) in err, err
        assert taken.read_bytes() == b"an older backup, not to be overwritten\n"
        # The server kept serving through both.
        await warm_up(ledger, server, during + WARM_UP)
        load.stop_load()
        assert not ledger.errors and not ledger.bad, (ledger.errors[:3], ledger.bad[:3])
        assert not ledger.closes, ledger.closes

        with contextlib.closing(sqlite3.connect(f"file:{copy}?mode=ro", uri=True)) as con:
            assert con.execute("PRAGMA quick_check").fetchall() == [("ok",)]
            assert {r[0] for r in con.execute("SELECT phone FROM users")} == set(users)
            personal = con.execute("SELECT msg_from, msg_to, sent_us, message FROM personal_messages")
            group = con.execute("SELECT grp, msg_from, sent_us, message FROM group_messages")
            rows = [(("p", f, t, us), m) for f, t, us, m in personal] + \
                   [(("g", f, g, us), m) for g, f, us, m in group]
        # A snapshot of what was stored: each message intact, as it was sent.
        assert all(ledger.texts.get(mid) == text for mid, text in rows), "altered rows in the copy"
        print(f"\nbackup: {len(rows)} messages stored in the copy, "
              f"{len(ledger.confirmed)} msg_sent in all")
    finally:
        if load is not None:
            await load.close()
        if party is not None:
            await party.close()
        server.kill()


# -- integrity check on start -------------------------------------------------------------------


def start_refused(db: Path, config: Path, log_dir: Path) -> tuple[ServerProcess, float, bool]:
    """Start `run.py serve` on `db` and wait for its exit, trying to connect all along.

    Returns the process, the seconds it ran, and whether a connection ever succeeded.
    """
    server = start_server(db, config, log_dir)
    started = time.monotonic()
    connected = False
    try:
        while server.alive() and time.monotonic() - started < REFUSE_TIMEOUT:
            connected = connected or not refuses_connections(server.port)
            time.sleep(POLL)  # polling interval
        return server, time.monotonic() - started, connected
    finally:
        server.kill()


def assert_refused(server: ServerProcess, ran: float, connected: bool, db: Path) -> None:
    assert ran < REFUSE_TIMEOUT, f"still running after {ran:.1f} s:\n{server.output()}"
    assert server.proc.returncode == 2, server.output()
    assert not connected, "it listened"
    err = server.err()
    assert f"error: {db}" in err or ("error:" in err and str(db) in err), err
    assert "Traceback" not in server.output(), server.output()


def test_serve_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    content = b"this is not a database\n" * 1000
    db.write_bytes(content)
    config = write_config(tmp_path / "config.toml", load_config_tables())
    server, ran, connected = start_refused(db, config, tmp_path)
    assert_refused(server, ran, connected, db)
    assert db.read_bytes() == content, "the refused file was changed"


async def make_database(tmp_path: Path, db: Path, config: Path) -> None:
    """A real database: served, a user registered, stopped cleanly (WAL folded into the file)."""
    server = start_server(db, config, tmp_path)
    try:
        await server.wait_serving()
        async with client() as session:
            await register(session, server, phones(1, "35")[0])
        server.proc.send_signal(signal.SIGTERM)
        assert await server.wait_exit() == 0, server.output()
    finally:
        server.kill()


async def test_serve_refuses_a_database_with_a_damaged_page(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    config = write_config(tmp_path / "config.toml", load_config_tables())
    await make_database(tmp_path, db, config)
    with contextlib.closing(sqlite3.connect(db)) as con:
        page_size = con.execute("PRAGMA page_size").fetchone()[0]
        (root,) = con.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'sessions_phone'").fetchone()
    with open(db, "r+b") as fh:  # a page of an index: PRAGMA quick_check reports it
        fh.seek((root - 1) * page_size)
        fh.write(b"\xff" * 100)
    content = db.read_bytes()
    server, ran, connected = await asyncio.to_thread(start_refused, db, config, tmp_path)
    assert_refused(server, ran, connected, db)
    assert "quick_check" in server.err() or "malformed" in server.err(), server.err()
    assert db.read_bytes() == content, "the refused file was changed"


def test_a_refused_database_is_not_announced_as_served(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    db.write_bytes(b"this is not a database\n" * 1000)
    config = write_config(tmp_path / "config.toml", load_config_tables())
    server, ran, connected = start_refused(db, config, tmp_path)
    assert_refused(server, ran, connected, db)
    assert "Serving on" not in server.out(), server.out()
