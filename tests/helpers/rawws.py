"""Helpers for tests/test_slow_peers.py: the real server process and its memory, a bare-bones
WebSocket client on a raw TCP socket (to stop reading, to send frames as they come, to hold
thousands of sockets cheaply), a chatting pair whose latency is measured, and percentiles.

Every network wait has a timeout; waits on a condition poll it with a deadline (`until`).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import math
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from procutil import Listening, free_port

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse"
COOKIE = "chat_session"
START_TIMEOUT = 20.0
NET_TIMEOUT = 10.0
POLL = 0.01
MB = 1024 * 1024

# Linux TCP states (include/net/tcp_states.h), as TCP_INFO's first byte reports them.
TCP_ESTABLISHED, TCP_CLOSE, TCP_CLOSE_WAIT = 1, 7, 8

OP_CONT, OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x8, 0x9, 0xA


# -- the server process ------------------------------------------------------------------------



def write_config(path: Path, **tables: dict[str, object]) -> Path:
    """A TOML config: fast bcrypt, limits no test reaches unless it says otherwise."""
    merged: dict[str, dict[str, object]] = {
        "security": {"bcrypt_rounds": 4},
        "limits": {"messages_per_second": 1_000_000.0, "handshakes_per_minute": 1_000_000},
    }
    for name, keys in tables.items():
        merged.setdefault(name, {}).update(keys)
    lines: list[str] = []
    for name, keys in merged.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in keys.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@dataclass
class Server(Listening):
    """A `python run.py serve` subprocess (its pid is the server's own: no shell in between)."""

    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak RSS) of the server process, in bytes."""
        return proc_memory(self.pid)

    def rss(self) -> int:
        return self.memory()["VmRSS"]

    def open_fds(self) -> int:
        """How many files (sockets included) the server process holds open."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def cutoffs(self) -> int:
        """How many sockets the server has closed for falling behind (its log says so)."""
        return self.output().count("frames behind; closing it")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass


def proc_memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of `pid` from /proc/PID/status, in bytes."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024
    return found


def start_server(tmp_path: Path, config: Path) -> Server:
    """Start the server on a free port (not yet waited for: see `wait_serving`)."""
    port = free_port()
    log = tmp_path / f"server-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "run.py", "serve", "--port", str(port),
             "--db", str(tmp_path / f"chat-{port}.db"), "--config", str(config)],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return Server(proc, port, log)


def wait_serving_sync(server: Server, timeout: float = START_TIMEOUT) -> None:
    """Block until the server answers an HTTP request (for synchronous fixtures)."""
    deadline = time.monotonic() + timeout
    while True:
        assert server.proc.poll() is None, f"server exited early:\n{server.output()}"
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=2) as s:
                s.settimeout(2)
                s.sendall(b"GET /login HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(12).startswith(b"HTTP/1.1 200"):
                    # Read to the end: the server has closed its side (and its file) when we
                    # see EOF, so that counts of its open files taken next do not include it.
                    while s.recv(65536):
                        pass
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"server did not answer:\n{server.output()}"
        time.sleep(0.05)  # polling interval


async def wait_serving(server: Server, timeout: float = START_TIMEOUT) -> None:
    await asyncio.to_thread(wait_serving_sync, server, timeout)


async def until(condition: Callable[[], bool], timeout: float, what: str | Callable[[], str],
                poll: float = POLL) -> None:
    """Poll `condition` until it holds; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for: "
                                 f"{what() if callable(what) else what}")
        await asyncio.sleep(poll)


# -- users ---------------------------------------------------------------------------------------


def client() -> aiohttp.ClientSession:
    """A browser-like client with its own cookie jar (which keeps cookies of an IP address)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                 timeout=aiohttp.ClientTimeout(total=NET_TIMEOUT))


async def register(session: aiohttp.ClientSession, server: Server, phone: str) -> str:
    """Register `phone` in `session` and return its session cookie's value."""
    async with session.post(server.url("/register"), allow_redirects=False,
                            data={"phone": phone, "name": f"user {phone}",
                                  "password": PASSWORD}) as resp:
        assert resp.status == 302, await resp.text()
    return session.cookie_jar.filter_cookies(server.base)[COOKIE].value


async def cookies_for(server: Server, phones: list[str]) -> dict[str, str]:
    """Register every phone (one session, its jar emptied in between); phone -> cookie value."""
    found: dict[str, str] = {}
    async with client() as session:
        for phone in phones:
            session.cookie_jar.clear()
            found[phone] = await register(session, server, phone)
    return found


async def ws_open(session: aiohttp.ClientSession, url: URL) -> aiohttp.ClientWebSocketResponse:
    async with asyncio.timeout(NET_TIMEOUT):
        return await session.ws_connect(url, max_msg_size=64 * MB)


_instants = itertools.count(1)
_BASE = datetime(2031, 7, 8, 9, 0, 0, tzinfo=UTC)


def stamp() -> str:
    """A client `sent_timestamp` no other call in this process returns."""
    when = _BASE + timedelta(milliseconds=next(_instants), microseconds=321)
    return when.strftime("%Y-%m-%d %H:%M:%S.%f")


def new_msg(msg_from: str, msg_to: str, message: str, sent: str | None = None) -> dict[str, str]:
    return {"message": message, "command": "new_msg", "msg_from": msg_from, "msg_to": msg_to,
            "sent_timestamp": sent or stamp()}


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


# -- a WebSocket client on a raw TCP socket -------------------------------------------------------


def _masked(payload: bytes, key: bytes) -> bytes:
    if not payload:
        return payload
    n = len(payload)
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def client_frame(payload: bytes, opcode: int = OP_TEXT, fin: bool = True,
                 declared: int | None = None) -> bytes:
    """A masked client frame (RFC 6455 5.2); `declared` overrides the length in the header (the
    payload given is then only the start of what the header announces)."""
    length = len(payload) if declared is None else declared
    head = bytes([(0x80 if fin else 0) | opcode])
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", length)
    key = os.urandom(4)
    return head + key + _masked(payload, key)


class RawSocket:
    """One WebSocket on a plain non-blocking socket: the handshake by hand, then only what the
    test asks for. Nothing reads it in the background: a test that never calls `recv_frame`
    leaves the server's frames in the kernel, as a client that stopped reading would."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()

    @classmethod
    async def connect(cls, port: int, path: str, cookie: str,
                      rcvbuf: int | None = None) -> RawSocket:
        """Open `path` with the session `cookie`; `rcvbuf` fixes SO_RCVBUF (set before connecting,
        so that the advertised window stays small). Fails unless the server answers 101."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        raw = cls(sock)
        try:
            async with asyncio.timeout(NET_TIMEOUT):
                await loop.sock_connect(sock, ("127.0.0.1", port))
                key = base64.b64encode(os.urandom(16)).decode()
                await loop.sock_sendall(sock, (
                    f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                    f"Sec-WebSocket-Version: 13\r\nCookie: {COOKIE}={cookie}\r\n\r\n").encode())
                while b"\r\n\r\n" not in raw._buf:
                    chunk = await loop.sock_recv(sock, 4096)
                    assert chunk, f"connection closed during the handshake: {bytes(raw._buf)!r}"
                    raw._buf += chunk
            head, _, rest = bytes(raw._buf).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101"), head
            raw._buf = bytearray(rest)
        except BaseException:
            sock.close()
            raise
        return raw

    async def send(self, data: bytes, timeout: float = NET_TIMEOUT) -> None:
        async with asyncio.timeout(timeout):
            await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def send_json(self, obj: object) -> None:
        await self.send(client_frame(json.dumps(obj).encode()))

    async def _fill(self, n: int) -> None:
        loop = asyncio.get_running_loop()
        while len(self._buf) < n:
            chunk = await loop.sock_recv(self.sock, 1 << 16)
            if not chunk:
                raise ConnectionResetError("the server closed the connection")
            self._buf += chunk

    async def recv_frame(self, timeout: float = NET_TIMEOUT) -> tuple[int, bytes]:
        """The next server frame as (opcode, payload); server frames are not masked."""
        async with asyncio.timeout(timeout):
            await self._fill(2)
            b0, b1 = self._buf[0], self._buf[1]
            assert not b1 & 0x80, "a server frame must not be masked"
            length, pos = b1 & 0x7F, 2
            if length == 126:
                await self._fill(4)
                length, pos = struct.unpack_from("!H", self._buf, 2)[0], 4
            elif length == 127:
                await self._fill(10)
                length, pos = struct.unpack_from("!Q", self._buf, 2)[0], 10
            await self._fill(pos + length)
            payload = bytes(self._buf[pos:pos + length])
            del self._buf[:pos + length]
            return b0 & 0x0F, payload

    async def recv_json(self, timeout: float = NET_TIMEOUT) -> dict[str, Any]:
        """The next text frame as a JSON object (pings are answered on the way)."""
        while True:
            opcode, payload = await self.recv_frame(timeout)
            if opcode == OP_PING:
                await self.send(client_frame(payload, OP_PONG))
                continue
            assert opcode == OP_TEXT, (opcode, payload)
            data = json.loads(payload)
            assert isinstance(data, dict), data
            return data

    def tcp_state(self) -> int:
        """The kernel's TCP state of this socket (TCP_ESTABLISHED while the server keeps it)."""
        return self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]

    def ended_by_server(self) -> bool:
        """True once the server has closed (FIN: CLOSE_WAIT) or reset (CLOSE) the connection."""
        return self.tcp_state() in (TCP_CLOSE, TCP_CLOSE_WAIT)

    def local_port(self) -> int:
        return int(self.sock.getsockname()[1])

    def released_by(self, server: Server) -> bool:
        """True once the server has let go of its end of this connection: the kernel lists it
        as closing (FIN_WAIT1 and so on, an orphan the process no longer holds) or not at all.
        (A server that closes a socket whose peer does not read cannot get its FIN through the
        data still queued, so this side of the connection may stay ESTABLISHED for minutes.)"""
        state = server_end_state(server.port, self.local_port())
        return state is None or state != TCP_ESTABLISHED

    def close(self) -> None:
        self.sock.close()


def server_end_state(server_port: int, client_port: int) -> int | None:
    """The TCP state of the server's end of the loopback connection from `client_port`, from
    /proc/net/tcp (None when the kernel no longer has it)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if (int(local.split(":")[1], 16) == server_port
                and int(remote.split(":")[1], 16) == client_port):
            return int(state, 16)
    return None


def close_code(payload: bytes) -> int | None:
    """The status code of a close frame's payload (None when it has none)."""
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


# -- a pair that keeps chatting -------------------------------------------------------------------


@dataclass
class Pair:
    """Two users: `sender` writes on its personal socket to `receiver`, whose receive socket gets
    the push. `chat` sends one message at a time and records send -> push latencies."""

    sender: str
    receiver: str
    send_ws: aiohttp.ClientWebSocketResponse
    recv_ws: aiohttp.ClientWebSocketResponse
    latencies: list[float] = field(default_factory=list)  # seconds, send -> push
    ack_latencies: list[float] = field(default_factory=list)  # seconds, send -> msg_sent

    @classmethod
    async def open(cls, server: Server, session_s: aiohttp.ClientSession,
                   session_r: aiohttp.ClientSession, sender: str, receiver: str) -> Pair:
        await register(session_s, server, sender)
        await register(session_r, server, receiver)
        recv_ws = await ws_open(session_r, server.ws_url(f"/ws/chat/special/{receiver}/"))
        send_ws = await ws_open(session_s, server.ws_url(f"/ws/chat/personal/{sender}/{receiver}/"))
        pair = cls(sender, receiver, send_ws, recv_ws)
        await pair.one()  # the receive socket is registered: pushes reach it from here on
        pair.latencies.clear()
        pair.ack_latencies.clear()
        return pair

    async def one(self) -> None:
        """One message: sent, pushed to the receiver, acknowledged to the sender."""
        sent = new_msg(self.sender, self.receiver, "are you still there?")
        t0 = time.perf_counter()
        await self.send_ws.send_json(sent)
        async with asyncio.timeout(NET_TIMEOUT):
            while (push := await self.recv_ws.receive_json()).get("command") != "new_msg":
                pass  # presence and the like
        self.latencies.append(time.perf_counter() - t0)
        assert push == sent, push
        ack = await self.send_ws.receive_json(timeout=NET_TIMEOUT)
        self.ack_latencies.append(time.perf_counter() - t0)
        assert ack["command"] == "msg_sent" and ack["message"] == sent["sent_timestamp"], ack

    async def chat(self, stop: asyncio.Event, interval: float = 0.02) -> None:
        """Send messages one after the other, `interval` apart, until `stop` is set."""
        while not stop.is_set():
            await self.one()
            try:
                await asyncio.wait_for(stop.wait(), interval)  # pacing, not synchronisation
            except TimeoutError:
                pass

    def summary(self) -> str:
        ms = [x * 1000 for x in self.latencies]
        return (f"{len(ms)} messages, send->push p50 {percentile(ms, 50):.1f} ms, "
                f"p99 {percentile(ms, 99):.1f} ms, max {max(ms, default=0):.1f} ms")

    def p99_ms(self) -> float:
        return percentile([x * 1000 for x in self.latencies], 99)

    async def close(self) -> None:
        await self.send_ws.close()
        await self.recv_ws.close()
