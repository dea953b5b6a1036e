"""A bare-bones WebSocket client on a raw TCP socket (RFC 6455 framing by hand): to stop reading,
to send frames as they come, to hold thousands of sockets cheaply. For tests/system/test_slow_peers.py.

Every network wait has a timeout.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from typing import Any

from helpers.accounts import COOKIE
from helpers.procs import TCP_CLOSE, TCP_CLOSE_WAIT, TCP_ESTABLISHED, server_end_state
from helpers.server import ServerProcess
from helpers.timing import NET_TIMEOUT

MB = 1024 * 1024
OP_CONT, OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x8, 0x9, 0xA


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

    def released_by(self, server: ServerProcess) -> bool:
        """True once the server has let go of its end of this connection: the kernel lists it
        as closing (FIN_WAIT1 and so on, an orphan the process no longer holds) or not at all.
        (A server that closes a socket whose peer does not read cannot get its FIN through the
        data still queued, so this side of the connection may stay ESTABLISHED for minutes.)"""
        state = server_end_state(server.port, self.local_port())
        return state is None or state != TCP_ESTABLISHED

    def close(self) -> None:
        self.sock.close()


def close_code(payload: bytes) -> int | None:
    """The status code of a close frame's payload (None when it has none)."""
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
