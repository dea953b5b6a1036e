"""What the kernel says about server processes and their connections: parents, whether a pid is
gone, which process holds the server end of a client socket (/proc/PID/fd and /proc/net/tcp),
refused connections. Linux only, like the server's deployment. (Which processes serve, from their
start-up lines: `helpers.server.ServerProcess.serving_pids`.)"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterable
from pathlib import Path

from aiohttp import ClientWebSocketResponse

# Linux TCP states (include/net/tcp_states.h), as TCP_INFO's first byte and /proc/net/tcp show them.
TCP_ESTABLISHED, TCP_CLOSE, TCP_CLOSE_WAIT = 1, 7, 8


def parent_pid(pid: int) -> int | None:
    """The parent of `pid` (/proc/PID/stat), or None when `pid` is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rpartition(")")[2].split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None


def is_gone(pid: int) -> bool:
    """True when no process `pid` runs (a zombie not yet reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


def _socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets process `pid` holds open (/proc/PID/fd -> "socket:[N]")."""
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        with contextlib.suppress(OSError):  # closed meanwhile
            target = os.readlink(f"{fd_dir}/{fd}")
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def tcp_connections(port: int) -> list[tuple[int, int, int]]:
    """The IPv4 TCP connections whose local port is `port`, from /proc/net/tcp:
    (remote port, state, socket inode) each."""
    out = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:  # after the header
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
        if int(local.rpartition(":")[2], 16) == port:
            out.append((int(remote.rpartition(":")[2], 16), int(state, 16), inode))
    return out


def _established(port: int) -> dict[int, int]:
    """Server ends of the established connections on local port `port`: {client port: inode}."""
    return {remote: inode for remote, state, inode in tcp_connections(port)
            if state == TCP_ESTABLISHED}


def serving_process(ws: ClientWebSocketResponse, port: int, pids: Iterable[int]) -> int | None:
    """Which of `pids` holds the server end of the client socket `ws` (matched by the client's
    local port in /proc/net/tcp and the socket inodes in /proc/PID/fd); None when none does."""
    sockname = ws.get_extra_info("sockname")
    if sockname is None:
        return None
    inode = _established(port).get(sockname[1])
    if inode is None:
        return None
    for pid in pids:
        with contextlib.suppress(OSError):
            if inode in _socket_inodes(pid):
                return pid
    return None


def refuses_connections(port: int) -> bool:
    """True when a TCP connect to 127.0.0.1:port is refused."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2.0):
            return False
    except ConnectionRefusedError:
        return True


def server_end_state(server_port: int, client_port: int) -> int | None:
    """The TCP state of the server's end of the loopback connection from `client_port` (None
    when the kernel no longer has it)."""
    for remote, state, _ in tcp_connections(server_port):
        if remote == client_port:
            return state
    return None
