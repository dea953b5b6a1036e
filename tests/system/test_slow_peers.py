"""Load and slow peers against the real server process (`python run.py serve`, production
settings): a receiver that never reads, thousands of idle sockets, connections that never finish
their handshake, and a sender flooding frames. For each: the server's memory stays bounded
(VmRSS / VmHWM of the process, read from /proc), other users keep their latency, and the offender
is cut off.

The figures (RSS in MB, latencies in ms, sockets cut off) are printed: run with `-s` to see them.

Order matters for time only: the never-finished handshakes are opened first (module fixture
`stalled`), and whether the server closes them is checked by the last test of the file, about
75 s later (aiohttp's keep-alive timeout under `web.run_app`), so that the wait overlaps the others.
"""

from __future__ import annotations

import asyncio
import errno
import json
import resource
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from helpers.accounts import client, cookies_for, register
from helpers.chatload import Pair, percentile
from helpers.configs import quick_config_tables
from helpers.frames import frame
from helpers.procs import server_end_state
from helpers.rawws import MB, OP_CLOSE, OP_CONT, OP_TEXT, RawSocket, client_frame, close_code
from helpers.server import ServerProcess, start_server, write_config
from helpers.timing import NET_TIMEOUT, until


def start_quick(tmp: Path, **tables: dict[str, object]) -> ServerProcess:
    """A server started on the QUICK settings (helpers.configs) with `tables` on top; its
    database, config and logs in `tmp`."""
    config = write_config(tmp / "config.toml", quick_config_tables(**tables))
    return start_server(tmp / "chat.db", config, tmp)


def cutoffs(server: ServerProcess) -> int:
    """How many sockets the server has closed for falling behind (its log says so)."""
    return server.output().count("frames behind; closing it")


KIB = 1024
# Latency every bystander (and the flooding sender's msg_sent) must keep, p99.
P99_LIMIT_MS = 1000.0
# The server's own close timeout (websocket.close_timeout), plus slack for a busy box.
CLOSE_WAIT = 5.0 + 10.0


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to the hard limit; returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 16
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def mb(n: float) -> str:
    return f"{n / MB:.1f} MB"


# -- connections that never complete their handshake (part 1: opened first) ---------------------

STALLED_SILENT = 240  # connect and send nothing
STALLED_PARTIAL = 240  # send part of the upgrade request, then nothing
STALLED_DRIBBLE = 20  # send part of the request, then one more byte every second (slowloris)
STALLED = STALLED_SILENT + STALLED_PARTIAL + STALLED_DRIBBLE
# `web.run_app` (what `run.py serve` calls) gives aiohttp's server keepalive_timeout=75 s, and
# aiohttp arms that timer when a connection is made: a connection that has not sent a complete
# request is closed after it, whatever it sends meanwhile. The server does not change it.
KEEPALIVE_TIMEOUT = 75.0
PARTIAL_REQUEST = (b"GET /ws/chat/special/5550000001/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   b"Upgrade: websocket\r\nConnection: Upgrade\r\n")


@dataclass
class Stalled:
    """A server holding STALLED connections that never complete a request."""

    server: ServerProcess
    socks: dict[str, list[socket.socket]]
    opened_at: float  # time.monotonic() once the last one was connected
    rss_before: int
    rss_with: int
    fds_before: int
    dribbled: list[int] = field(default_factory=lambda: [0])


def _dribble(socks: list[socket.socket], stop: threading.Event, count: list[int]) -> None:
    """One more header byte on every dribbling socket each second, until `stop` or closed."""
    alive = list(socks)
    while alive and not stop.wait(1.0):  # the pace of the attack, not a synchronisation
        for s in tuple(alive):
            try:
                s.send(b"X")
                count[0] += 1
            except OSError:
                alive.remove(s)


@pytest.fixture(scope="module")
def stalled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stalled]:
    tmp = tmp_path_factory.mktemp("stalled")
    raise_fd_limit()
    server = start_quick(tmp)
    socks: dict[str, list[socket.socket]] = {"silent": [], "partial": [], "dribble": []}
    stop = threading.Event()
    dribbler: threading.Thread | None = None
    try:
        server.wait_serving_sync()
        rss_before, fds_before = server.rss(), server.open_fds()
        for kind, n in (("silent", STALLED_SILENT), ("partial", STALLED_PARTIAL),
                        ("dribble", STALLED_DRIBBLE)):
            for _ in range(n):
                s = socket.create_connection(("127.0.0.1", server.port), timeout=NET_TIMEOUT)
                if kind != "silent":
                    s.sendall(PARTIAL_REQUEST)
                s.setblocking(False)
                socks[kind].append(s)
        opened_at = time.monotonic()
        # The server has accepted every one of them (each is an open file of the process).
        deadline = time.monotonic() + NET_TIMEOUT
        while server.open_fds() < fds_before + STALLED:
            assert time.monotonic() < deadline, (server.open_fds(), fds_before)
            time.sleep(0.02)  # polling interval
        rss_with = server.rss()
        result = Stalled(server, socks, opened_at, rss_before, rss_with, fds_before)
        dribbler = threading.Thread(target=_dribble, daemon=True,
                                    args=(socks["dribble"], stop, result.dribbled))
        dribbler.start()
        yield result
    finally:
        stop.set()
        if dribbler is not None:
            dribbler.join(timeout=5)
        for group in socks.values():
            for s in group:
                s.close()
        server.kill()


def _closed_by_peer(s: socket.socket) -> bool:
    """True when the server has closed (EOF) or reset the connection; never blocks."""
    try:
        while s.recv(4096):
            pass  # an HTTP error answer would be fine too: read past it to the EOF
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True


async def test_connections_that_never_complete_the_handshake_do_not_hurt_others(
        stalled: Stalled) -> None:
    server = stalled.server
    growth = stalled.rss_with - stalled.rss_before
    print(f"\n[stalled handshakes] {STALLED} connections ({STALLED_SILENT} silent, "
          f"{STALLED_PARTIAL} partial request, {STALLED_DRIBBLE} dribbling): server RSS "
          f"{mb(stalled.rss_before)} -> {mb(stalled.rss_with)}, "
          f"{growth / STALLED / KIB:.1f} KiB per connection")
    assert growth / STALLED < 40 * KIB, growth

    # Others are served as usual, from the same address: handshakes, messages, pushes.
    async with client() as s1, client() as s2:
        pair = await Pair.open(server, s1, s2, "5550100001", "5550100002")
        for _ in range(50):
            await pair.one()
        await pair.close()
    print(f"[stalled handshakes] a pair meanwhile: {pair.summary()}")
    assert pair.p99_ms() < P99_LIMIT_MS
    rss = server.rss()
    print(f"[stalled handshakes] server RSS after the pair: {mb(rss)}")
    assert rss - stalled.rss_before < 30 * MB


# -- a receiver that never reads ------------------------------------------------------------------


async def test_a_receiver_that_never_reads_is_cut_off_and_nobody_waits_for_it(
        tmp_path: Path) -> None:
    """The default outgoing queue (1000 frames) and FULL sync, messages of 4000 characters.
    (That the server then lets go of the connection is the next test.)"""
    server = start_quick(tmp_path)
    a, b = "5550200001", "5550200002"
    window, extra, cap = 32, 200, 8000
    slow: RawSocket | None = None
    try:
        await server.wait_serving()
        async with client() as sa, client() as sb, client() as sc, client() as sd:
            await register(sa, server, a)
            cookie_b = await register(sb, server, b)
            pair = await Pair.open(server, sc, sd, "5550200003", "5550200004")
            # B's stalled tab: a raw socket with a tiny receive buffer, never read after one
            # round trip (which proves it is registered for pushes).
            slow = await RawSocket.connect(server.port, f"/ws/chat/special/{b}/", cookie_b,
                                           rcvbuf=4096)
            await slow.send_json({"command": "fetch_grp_msgs", "msg_to": b})
            assert await slow.recv_json() == {"command": "fetch_grp_msgs", "all": "True",
                                              "messages": []}
            # B's healthy tab, read all along: every push must reach it.
            healthy = await sb.ws_connect(server.ws_url(f"/ws/chat/special/{b}/"),
                                          max_msg_size=64 * MB)
            await healthy.send_json({"command": "fetch_grp_msgs", "msg_to": b})
            assert (await healthy.receive_json(timeout=NET_TIMEOUT))["all"] == "True"
            send = await sa.ws_connect(server.ws_url(f"/ws/chat/personal/{a}/{b}/"))
            mem0 = server.memory()

            stop = asyncio.Event()
            bystander = asyncio.create_task(pair.chat(stop))
            pushed: list[str] = []
            sent: list[str] = []
            sent_at: dict[str, float] = {}
            ack_ms: list[float] = []
            room = asyncio.Semaphore(window)
            cut = asyncio.Event()
            cut_info: dict[str, float] = {}

            async def read_healthy() -> None:
                async for msg in healthy:
                    data = json.loads(msg.data)
                    if data.get("command") == "new_msg":
                        pushed.append(data["message"][:6])

            async def read_acks() -> None:
                async for msg in send:  # bounded by the waits on `ack_ms` below
                    data = json.loads(msg.data)
                    assert data["command"] == "msg_sent", data
                    ack_ms.append((time.perf_counter() - sent_at[data["message"]]) * 1000)
                    room.release()

            async def watch_log() -> None:
                await until(lambda: cutoffs(server) > 0, 60.0, "the slow socket to be cut off",
                            poll=0.02)
                cut_info["at"], cut_info["sent"] = time.perf_counter(), len(sent)
                cut.set()

            reader = asyncio.create_task(read_healthy())
            acks = asyncio.create_task(read_acks())
            watcher = asyncio.create_task(watch_log())
            t0 = time.perf_counter()
            try:
                for i in range(cap):
                    if cut.is_set() and len(sent) >= cut_info["sent"] + extra:
                        break
                    async with asyncio.timeout(NET_TIMEOUT):
                        await room.acquire()
                    msg = frame("new_msg", a, b, f"{i:06d} " + "x" * 3993)
                    sent_at[msg["sent_timestamp"]] = time.perf_counter()
                    sent.append(f"{i:06d}")
                    await send.send_json(msg)
                assert cut.is_set(), f"no cut-off after {len(sent)} messages:\n{server.output()}"
                await until(lambda: len(ack_ms) == len(sent), NET_TIMEOUT, "every msg_sent")
                flood_s = time.perf_counter() - t0
                # The healthy tab keeps up and gets every push, in order.
                await until(lambda: len(pushed) == len(sent), NET_TIMEOUT,
                            lambda: f"pushes to the healthy tab: {len(pushed)} of {len(sent)}")
                assert pushed == sent
            finally:
                stop.set()
                for task in (acks, watcher):
                    task.cancel()
            await bystander
            mem1 = server.memory()
            await send.close()
            await healthy.close()
            await reader

            # Nothing is lost: a fresh socket of B fetches every message, in order.
            inbox = await sb.ws_connect(server.ws_url(f"/ws/chat/special/{b}/"),
                                        max_msg_size=64 * MB)
            await inbox.send_json({"command": "fetch_msgs", "msg_to": b})
            fetched: list[str] = []
            while True:
                chunk = await inbox.receive_json(timeout=NET_TIMEOUT)
                assert chunk["command"] == "fetch_msgs", chunk
                fetched += [m["message"][:6] for m in chunk["messages"]]
                if chunk["all"] == "True":
                    break
            await inbox.close()
            await pair.close()

        peak = mem1["VmHWM"] - mem0["VmRSS"]
        print(f"\n[slow receiver] {len(sent)} messages of 4000 chars in {flood_s:.1f} s; cut off "
              f"after {cut_info['sent']:.0f} (outgoing_queue 1000); sockets cut off: "
              f"{cutoffs(server)}")
        print(f"[slow receiver] sender send->msg_sent p50 {percentile(ack_ms, 50):.1f} ms, "
              f"p99 {percentile(ack_ms, 99):.1f} ms, max {max(ack_ms):.1f} ms")
        print(f"[slow receiver] bystander pair: {pair.summary()}")
        print(f"[slow receiver] server RSS {mb(mem0['VmRSS'])} -> {mb(mem1['VmRSS'])}, "
              f"peak {mb(mem1['VmHWM'])} (peak growth {mb(peak)})")
        assert percentile(ack_ms, 99) < P99_LIMIT_MS
        assert pair.p99_ms() < P99_LIMIT_MS
        assert peak < 50 * MB
        assert cutoffs(server) == 1, server.output()  # the slow tab only
        assert fetched == sent
    finally:
        if slow is not None:
            slow.close()
        server.kill()


async def test_a_socket_cut_off_for_falling_behind_is_released_by_the_server(
        tmp_path: Path) -> None:
    """B's only receive socket never reads and is cut off: the server must then let go of the
    connection (within its close timeout) and B must be reported offline to its contacts."""
    server = start_quick(tmp_path, limits={"outgoing_queue": 50})
    a, b = "5550210001", "5550210002"
    slow: RawSocket | None = None
    try:
        await server.wait_serving()
        async with client() as sa, client() as sb:
            await register(sa, server, a)
            cookie_b = await register(sb, server, b)
            async with sa.post(server.url("/chat/special/contact"),
                               json={"phone": b, "name": "B"}) as resp:
                assert resp.status == 201, await resp.text()
            slow = await RawSocket.connect(server.port, f"/ws/chat/special/{b}/", cookie_b,
                                           rcvbuf=4096)
            await slow.send_json({"command": "fetch_grp_msgs", "msg_to": b})
            assert (await slow.recv_json())["command"] == "fetch_grp_msgs"
            send = await sa.ws_connect(server.ws_url(f"/ws/chat/personal/{a}/{b}/"))
            sent = 0
            while cutoffs(server) == 0:
                assert sent < 5000, "no cut-off"
                await send.send_json(frame("new_msg", a, b, "z" * 4000))
                assert (await send.receive_json(timeout=NET_TIMEOUT))["command"] == "msg_sent"
                sent += 1
            t0 = time.perf_counter()
            await until(lambda: slow.released_by(server), CLOSE_WAIT,
                        lambda: f"the server to let go of the cut-off socket (its end is in TCP "
                                f"state {server_end_state(server.port, slow.local_port())}, "
                                f"{server.open_fds()} files open)", poll=0.05)
            released_s = time.perf_counter() - t0

            async def b_online() -> bool:
                async with sa.get(server.url("/chat/info/contacts")) as resp:
                    contacts = (await resp.json())["contacts"]
                return bool(next(c for c in contacts if c["phone"] == b)["online"])

            deadline = time.monotonic() + NET_TIMEOUT
            while await b_online():
                assert time.monotonic() < deadline, "B is still reported online"
                await asyncio.sleep(0.05)  # polling interval
            await send.close()
        print(f"\n[cut-off release] cut off after {sent} messages; released "
              f"{released_s:.1f} s after the cut-off")
    finally:
        if slow is not None:
            slow.close()
        server.kill()


# -- thousands of idle sockets --------------------------------------------------------------------


async def test_thousands_of_idle_sockets_cost_little_memory_and_nobody_waits(
        tmp_path: Path) -> None:
    users, per_user = 100, 20
    total = users * per_user
    assert raise_fd_limit() > total + 200
    # The raw sockets do not answer pings: a heartbeat longer than the test keeps them open
    # (the per-socket heartbeat timer exists all the same).
    server = start_quick(tmp_path, websocket={"heartbeat": 300.0})
    phones = [f"55503{i:05d}" for i in range(users)]
    owner = "5550399999"
    socks: list[RawSocket] = []
    try:
        await server.wait_serving()
        cookies = await cookies_for(server, phones)
        async with client() as so, client() as s1, client() as s2:
            await register(so, server, owner)
            async with so.post(server.url("/chat/special/group"),
                               json={"name": "everyone", "participants": phones}) as resp:
                assert resp.status == 201, await resp.text()
                key = (await resp.json())["key"]
            group_ws = await so.ws_connect(server.ws_url(f"/ws/chat/group/{owner}/{key}/"))
            pair = await Pair.open(server, s1, s2, "5550310001", "5550310002")
            for _ in range(20):  # warm-up, then the baseline
                await pair.one()
            rss0 = server.rss()
            fds0 = server.open_fds()

            stop = asyncio.Event()
            bystander = asyncio.create_task(pair.chat(stop))
            gate = asyncio.Semaphore(50)

            async def open_one(i: int) -> RawSocket:
                phone = phones[i % users]
                async with gate:
                    return await RawSocket.connect(server.port, f"/ws/chat/special/{phone}/",
                                                   cookies[phone])

            t0 = time.perf_counter()
            try:
                results = await asyncio.gather(*(open_one(i) for i in range(total)),
                                               return_exceptions=True)
                socks = [r for r in results if isinstance(r, RawSocket)]
                failed = [r for r in results if not isinstance(r, RawSocket)]
                assert not failed, failed[:3]
                open_s = time.perf_counter() - t0
                # Every handler is past its setup: the server holds every socket.
                await until(lambda: server.open_fds() >= fds0 + total, NET_TIMEOUT,
                            lambda: f"{server.open_fds() - fds0} of {total} sockets held")
                # A few more messages of the pair while the sockets sit idle.
                await until(lambda: len(pair.latencies) >= 40, NET_TIMEOUT, "the pair to chat")
            finally:
                stop.set()
            await bystander
            rss_idle = server.rss()

            # Every idle socket still works: one group message reaches all of them.
            text = "hello everyone"
            await group_ws.send_json(frame("new_grp_msg", owner, key, text))
            ack = await group_ws.receive_json(timeout=NET_TIMEOUT)
            assert ack["command"] == "msg_sent", ack

            async def one_push(s: RawSocket) -> dict[str, object]:
                async with gate:
                    return await s.recv_json(timeout=NET_TIMEOUT)

            pushes = await asyncio.gather(*(one_push(s) for s in socks))
            assert all(p["command"] == "new_msg" and p["message"] == text
                       and p["msg_from"] == f"{key}-{owner}" for p in pushes), pushes[:3]
            rss_pushed = server.rss()
            await group_ws.close()
            await pair.close()

        for s in socks:
            s.close()
        socks = []
        # The server lets go of them all.
        await until(lambda: server.open_fds() <= fds0 + 5, NET_TIMEOUT,
                    lambda: f"the server still holds {server.open_fds() - fds0} more files")
        rss_closed = server.rss()
        per_socket = (rss_idle - rss0) / total
        print(f"\n[idle sockets] {total} receive sockets of {users} users opened in "
              f"{open_s:.1f} s; "
              f"server RSS {mb(rss0)} -> {mb(rss_idle)}: {per_socket / KIB:.1f} KiB per idle "
              f"socket; after a push to all of them {mb(rss_pushed)} "
              f"({(rss_pushed - rss0) / total / KIB:.1f} KiB per socket); after closing them "
              f"{mb(rss_closed)}")
        print(f"[idle sockets] bystander pair meanwhile: {pair.summary()}")
        assert per_socket < 25 * KIB
        assert pair.p99_ms() < P99_LIMIT_MS
    finally:
        for s in socks:
            s.close()
        server.kill()


# -- a sender flooding frames ---------------------------------------------------------------------


async def test_a_flood_of_messages_beyond_the_rate_limit_is_refused_and_not_stored(
        tmp_path: Path) -> None:
    rate = 5.0  # messages per second per user: round(2 * rate) = 10 per two-second window
    flood = 200
    server = start_quick(tmp_path, limits={"messages_per_second": rate})
    a, b, c = "5550400001", "5550400002", "5550400003"
    try:
        await server.wait_serving()
        async with client() as sa, client() as sb, client() as sc:
            for session, phone in ((sa, a), (sb, b), (sc, c)):
                await register(session, server, phone)
            send = await sa.ws_connect(server.ws_url(f"/ws/chat/personal/{a}/{b}/"))
            frames = [frame("new_msg", a, b, f"flood {i}") for i in range(flood)]
            t0 = time.perf_counter()
            for f in frames:  # as fast as possible, reading nothing meanwhile
                await send.send_json(f)
            burst_s = time.perf_counter() - t0
            # Another user is not limited by A's flood.
            other = await sc.ws_connect(server.ws_url(f"/ws/chat/personal/{c}/{b}/"))
            mine = frame("new_msg", c, b, "not me")
            await other.send_json(mine)
            reply = await other.receive_json(timeout=NET_TIMEOUT)
            assert reply["command"] == "msg_sent", reply

            answers = [await send.receive_json(timeout=NET_TIMEOUT) for _ in frames]
            answered_s = time.perf_counter() - t0
            acked = [f["sent_timestamp"] for f, r in zip(frames, answers, strict=True)
                     if r["command"] == "msg_sent"]
            refused = [r for r in answers if r["command"] == "error"]
            assert len(acked) + len(refused) == flood, answers
            assert all(r["type"] == "new_msg" and "rate limit" in r["message"] for r in refused), \
                refused[:3]
            assert [r["message"] for r in answers if r["command"] == "msg_sent"] == acked
            # Fixed windows of two seconds: the burst touches at most floor(t / 2) + 2 of them.
            windows = int(answered_s // 2) + 2
            assert 10 <= len(acked) <= 10 * windows, (len(acked), answered_s)

            # Nothing beyond the limit is stored: B's inbox holds exactly the acknowledged ones.
            inbox = await sb.ws_connect(server.ws_url(f"/ws/chat/special/{b}/"))
            await inbox.send_json({"command": "fetch_msgs", "msg_to": b})
            stored: list[str] = []
            while True:
                chunk = await inbox.receive_json(timeout=NET_TIMEOUT)
                stored += [m["message"] for m in chunk["messages"] if m["msg_from"] == a]
                if chunk["all"] == "True":
                    break
            assert stored == [f"flood {i}" for i, r in enumerate(answers)
                              if r["command"] == "msg_sent"]

            # The flooder is throttled, not cut off: once the window has passed, it may send again.
            deadline = time.monotonic() + 3 * 2.0
            while True:
                await send.send_json(frame("new_msg", a, b, "later"))
                reply = await send.receive_json(timeout=NET_TIMEOUT)
                if reply["command"] == "msg_sent":
                    break
                assert time.monotonic() < deadline, reply
                await asyncio.sleep(0.25)  # polling interval
            for ws in (send, other, inbox):
                await ws.close()
        print(f"\n[message flood] {flood} new_msg in {burst_s * 1000:.0f} ms at "
              f"messages_per_second {rate:g}: {len(acked)} stored and acknowledged, "
              f"{len(refused)} refused with the error frame, answered within "
              f"{answered_s * 1000:.0f} ms")
    finally:
        server.kill()


async def test_a_flood_of_garbage_frames_from_a_client_that_never_reads_is_cut_off(
        tmp_path: Path) -> None:
    """Every garbage frame is answered with an error frame; a client that never reads them
    makes its own outbox overflow (default outgoing_queue, 1000), and the server closes that
    socket (1013, when the close frame gets through).

    It must be the client's not reading that fills the queue, not one read of more than a
    queue's worth of frames (that case is the burst tests below): the frames are 600 bytes
    each, so that one read of the server (at most 256 KiB, then aiohttp pauses reading until its
    handler has taken the frames) never holds 1000 of them."""
    queue = 1000
    server = start_quick(tmp_path)
    a, b = "5550500001", "5550500002"
    flooder: RawSocket | None = None
    try:
        await server.wait_serving()
        async with client() as sa, client() as sb, client() as sc, client() as sd:
            cookie_a = await register(sa, server, a)
            await register(sb, server, b)
            pair = await Pair.open(server, sc, sd, "5550500003", "5550500004")
            for _ in range(10):
                await pair.one()
            mem0 = server.memory()
            flooder = await RawSocket.connect(server.port, f"/ws/chat/personal/{a}/{b}/",
                                              cookie_a, rcvbuf=4096)
            stop = asyncio.Event()
            bystander = asyncio.create_task(pair.chat(stop))
            batch = b"".join(client_frame(b"this is not JSON {" + bytes([65 + i % 26]) * 581)
                             for i in range(16))
            frames = 0
            ended: list[BaseException] = []

            async def flood() -> None:
                nonlocal frames
                try:
                    while True:  # until cancelled (a server that stops reading makes it wait)
                        await flooder.send(batch, timeout=60.0)
                        frames += 16
                        await asyncio.sleep(0.001)  # the flood's pace, not a synchronisation
                except (OSError, TimeoutError) as e:
                    ended.append(e)

            t0 = time.perf_counter()
            flooding = asyncio.create_task(flood())
            try:
                await until(lambda: cutoffs(server) > 0 or flooding.done(), 30.0,
                            lambda: f"a cut-off, after {frames} frames", poll=0.005)
                cut_s = time.perf_counter() - t0
                flooding.cancel()
                assert cutoffs(server) > 0, f"the flood ended without a cut-off: {ended}"
                # The pair's figures are those of the flood (reading the backlog below would
                # only measure this client's own parsing).
                await until(lambda: len(pair.latencies) >= 20, NET_TIMEOUT, "the pair to chat")
                stop.set()
                await bystander
                # Read now what was never read: the error frames, then the close frame 1013 —
                # unless the kernel turns the server's close into a reset (a socket closed with
                # flood data it has not read resets the connection and drops what it had queued):
                # either way the server must end the connection.
                errors, code, ending = 0, None, ""
                try:
                    async with asyncio.timeout(CLOSE_WAIT):
                        while True:
                            opcode, payload = await flooder.recv_frame(timeout=CLOSE_WAIT)
                            if opcode == OP_CLOSE:
                                code = close_code(payload)
                                ending = f"close frame {code}"
                                break
                            assert opcode == OP_TEXT, (opcode, payload)
                            assert json.loads(payload)["command"] == "error"
                            errors += 1
                except ConnectionResetError as e:
                    ending = "reset" if e.errno == errno.ECONNRESET else "end of stream"
                assert ending, "the server did not end the connection"
                assert code in (None, aiohttp.WSCloseCode.TRY_AGAIN_LATER), code
            finally:
                stop.set()
                flooding.cancel()
            await bystander
            mem1 = server.memory()
            # The user itself is not banned: a new socket works.
            again = await sa.ws_connect(server.ws_url(f"/ws/chat/personal/{a}/{b}/"))
            await again.send_json(frame("new_msg", a, b, "sorry"))
            assert (await again.receive_json(timeout=NET_TIMEOUT))["command"] == "msg_sent"
            await again.close()
            await pair.close()
        peak = mem1["VmHWM"] - mem0["VmRSS"]
        print(f"\n[garbage flood] {frames} garbage frames sent in {cut_s:.2f} s before the cut-off "
              f"(outgoing_queue {queue}); {errors} error frames were read, then {ending}; "
              f"sockets cut off: {cutoffs(server)}")
        print(f"[garbage flood] bystander pair: {pair.summary()}")
        print(f"[garbage flood] server RSS {mb(mem0['VmRSS'])} -> {mb(mem1['VmRSS'])}, "
              f"peak growth {mb(peak)}")
        assert cutoffs(server) == 1, server.output()
        assert pair.p99_ms() < P99_LIMIT_MS
        assert peak < 50 * MB
    finally:
        if flooder is not None:
            flooder.close()
        server.kill()



async def _burst_answers(tmp_path: Path, limits: dict[str, object], frames: list[bytes],
                         a: str, b: str) -> dict[str, int]:
    """Send `frames` on A's personal socket in one write, read every answer as it comes; the
    count of answers per command (a close frame fails the test)."""
    server = start_quick(tmp_path, limits=limits)
    s: RawSocket | None = None
    try:
        await server.wait_serving()
        cookies = await cookies_for(server, [a, b])
        s = await RawSocket.connect(server.port, f"/ws/chat/personal/{a}/{b}/", cookies[a])
        await s.send(b"".join(frames))
        answers: dict[str, int] = {}
        for n in range(len(frames)):
            opcode, payload = await s.recv_frame()
            assert opcode != OP_CLOSE, (f"closed with {close_code(payload)} after {n} of "
                                        f"{len(frames)} answers ({answers}) although every "
                                        f"answer was read at once")
            command = json.loads(payload)["command"]
            answers[command] = answers.get(command, 0) + 1
        return answers
    finally:
        if s is not None:
            s.close()
        server.kill()


async def test_a_burst_of_invalid_frames_from_a_client_that_reads_is_answered_in_full(
        tmp_path: Path) -> None:
    """Default outgoing queue (1000): 1001 frames that are not JSON, in one write."""
    frames = [client_frame(b"not JSON") for _ in range(1001)]
    answers = await _burst_answers(tmp_path, {}, frames, "5550450001", "5550450002")
    assert answers == {"error": 1001}


async def test_a_backlog_flushed_over_the_rate_limit_is_answered_in_full(tmp_path: Path) -> None:
    """Default limits (20 messages per second, queue 1000): a client back online pipelines a
    backlog of 1001 messages; 40 pass, the rest get the rate-limit error, all must be answered."""
    a, b = "5550460001", "5550460002"
    frames = [client_frame(json.dumps(frame("new_msg", a, b, f"backlog {i}")).encode())
              for i in range(1001)]
    answers = await _burst_answers(tmp_path, {"messages_per_second": 20.0}, frames, a, b)
    assert answers["msg_sent"] + answers["error"] == 1001, answers


async def test_frames_over_the_size_limit_close_the_socket_with_1009(tmp_path: Path) -> None:
    limit = 65536  # limits.max_frame_bytes, the default
    server = start_quick(tmp_path)
    a, b = "5550600001", "5550600002"
    socks: list[RawSocket] = []
    try:
        await server.wait_serving()
        async with client() as sa, client() as sb:
            cookie = await register(sa, server, a)
            await register(sb, server, b)
            path = f"/ws/chat/personal/{a}/{b}/"

            async def closed_with(s: RawSocket) -> int | None:
                """Read up to the server's close frame; its code."""
                while True:
                    opcode, payload = await s.recv_frame()
                    if opcode == OP_CLOSE:
                        return close_code(payload)

            # Exactly the limit: refused as a message (too long), the socket stays open.
            s = await RawSocket.connect(server.port, path, cookie)
            socks.append(s)
            body = json.dumps(frame("new_msg", a, b, "")).encode()
            at_limit = json.dumps(frame("new_msg", a, b, "y" * (limit - len(body)))).encode()
            assert len(at_limit) == limit
            await s.send(client_frame(at_limit))
            reply = await s.recv_json()
            assert reply["command"] == "error" and reply["type"] == "new_msg", reply
            # One byte over: 1009.
            await s.send(client_frame(at_limit + b" "))
            assert await closed_with(s) == aiohttp.WSCloseCode.MESSAGE_TOO_BIG

            # Fragments that add up to more than the limit: 1009.
            s = await RawSocket.connect(server.port, path, cookie)
            socks.append(s)
            await s.send(client_frame(b"[" + b" " * 40000, OP_TEXT, fin=False))
            await s.send(client_frame(b" " * 40000, OP_CONT, fin=False))
            assert await closed_with(s) == aiohttp.WSCloseCode.MESSAGE_TOO_BIG

            # A header announcing 1 GiB, then data as fast as it goes: refused from the header,
            # nothing buffered.
            rss0 = server.rss()
            s = await RawSocket.connect(server.port, path, cookie)
            socks.append(s)
            await s.send(client_frame(b"x" * 1024, declared=1 << 30))
            streamed = 0
            chunk = b"x" * (1 << 20)
            try:
                for _ in range(32):
                    await s.send(chunk, timeout=2.0)
                    streamed += len(chunk)
            except (OSError, TimeoutError):
                pass  # the server stopped reading or closed: either is fine
            assert await closed_with(s) == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
            await until(s.ended_by_server, CLOSE_WAIT, "the server to end the connection",
                        poll=0.05)
            rss1 = server.rss()

            # The user's other sockets are unaffected.
            ws = await sa.ws_connect(server.ws_url(path))
            await ws.send_json(frame("new_msg", a, b, "fine"))
            assert (await ws.receive_json(timeout=NET_TIMEOUT))["command"] == "msg_sent"
            await ws.close()
        print(f"\n[big frames] {limit + 1}-byte frame and {80002}-byte fragmented message: 1009; "
              f"1 GiB announced, {mb(streamed)} streamed before the server stopped taking it: "
              f"1009; server RSS {mb(rss0)} -> {mb(rss1)}")
        assert rss1 - rss0 < 16 * MB
    finally:
        for s in socks:
            s.close()
        server.kill()


# -- connections that never complete their handshake (part 2: last, ~75 s after part 1) ---------


@pytest.mark.timeout(KEEPALIVE_TIMEOUT + 90)
async def test_connections_that_never_complete_the_handshake_are_closed_by_the_server(
        stalled: Stalled) -> None:
    server = stalled.server
    open_socks = [(kind, s) for kind, group in stalled.socks.items() for s in group]
    closed_at: dict[str, list[float]] = {kind: [] for kind in stalled.socks}
    deadline = stalled.opened_at + KEEPALIVE_TIMEOUT + 15.0
    while open_socks and time.monotonic() < deadline:
        still: list[tuple[str, socket.socket]] = []
        for kind, s in open_socks:
            if _closed_by_peer(s):
                closed_at[kind].append(time.monotonic() - stalled.opened_at)
            else:
                still.append((kind, s))
        open_socks = still
        if open_socks:
            await asyncio.sleep(0.1)  # polling interval
    # (Seen from the start of this test on: one already closed reads as closed at that time.)
    summary = ", ".join(f"{kind} {len(t)} seen closed at {min(t, default=0):.1f}-"
                        f"{max(t, default=0):.1f} s" for kind, t in closed_at.items())
    print(f"\n[stalled handshakes] closed by the server, counted from their opening: {summary}; "
          f"{stalled.dribbled[0]} bytes dribbled meanwhile; still open: {len(open_socks)}")
    assert not open_socks, f"{len(open_socks)} never-completed handshakes are still open"
    await until(lambda: server.open_fds() <= stalled.fds_before + 5, NET_TIMEOUT,
                lambda: f"the server still holds {server.open_fds() - stalled.fds_before} files")
