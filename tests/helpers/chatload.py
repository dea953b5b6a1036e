"""Helpers for the tests that run the real server process (tests/test_crash.py,
tests/test_crash_scaled.py, tests/test_shutdown.py and tests/test_scaleout.py).

- The process: `python run.py serve` on a free port with a TOML config written by the test, waited
  for until it answers HTTP, stopped with a signal or killed with SIGKILL on the server's own pid
  (run.py is started directly, no shell in between), and always killed at the end.
- A chat load (`ChatNet`): users with one receive socket each, a personal send socket to their
  partner and a group send socket, pumps that keep a window of `new_msg` / `new_grp_msg` frames
  waiting for their `msg_sent`, and receivers that acknowledge what they get.
- A `Ledger` of what every client saw, per message identity (sender, recipient or group,
  sent_timestamp) and per recipient: written, `msg_sent` seen, pushed, acknowledgement written,
  acknowledgement proven committed (the receipt pushed to the sender's receive socket, which the
  server pushes only after the commit), and delivered after the restart. `Ledger.verdict()` turns
  it into the figures the tests assert on.

Nothing here synchronises with a sleep: waits poll a condition with a deadline (`until`), and every
network wait a test makes has a timeout. Background socket readers have none; they end when their
socket closes and are cancelled by their owner in any case.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import ClientWebSocketResponse, WSMsgType
from yarl import URL

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse"
# Seconds: the server must answer HTTP this soon after it is started, exit this soon after a
# signal or a kill, and answer any single request or handshake this soon.
START_TIMEOUT = 20.0
EXIT_TIMEOUT = 15.0
NET_TIMEOUT = 10.0
# Polling interval of `until` (a poll, not a synchronisation).
POLL = 0.01
# The crash tests (marker `crash`): kills per test, and the seed of their random kill moments
# (printed, so that CRASH_SEED repeats a run).
CRASH_RUNS = int(os.environ.get("CRASH_RUNS", "3"))
CRASH_SEED = int(os.environ.get("CRASH_SEED", str(time.time_ns() % 1_000_000_007)))

WS = ClientWebSocketResponse
# (kind "p" personal / "g" group, sender, recipient phone or group key, sent_timestamp in µs)
MsgId = tuple[str, str, str, int]
# (message, the recipient it is delivered to)
Unit = tuple[MsgId, str]


# -- the server process -------------------------------------------------------------------------


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, int | float):
        return repr(value)
    raise TypeError(f"no TOML for {value!r}")


def write_config(path: Path, tables: dict[str, dict[str, object]]) -> Path:
    """Write a TOML config of `tables` ({"limits": {"messages_per_second": 1e5}, ...})."""
    lines: list[str] = []
    for name, keys in tables.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in keys.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def load_config_tables(**overrides: dict[str, object]) -> dict[str, dict[str, object]]:
    """The config the load tests use: FULL sync (the guarantee is about FULL), a quick WAL scrub
    (so that checkpoints run during the load), a fast bcrypt, and limits no test load reaches."""
    tables: dict[str, dict[str, object]] = {
        "database": {"synchronous": "FULL", "scrub_seconds": 0.2},
        "security": {"bcrypt_rounds": 4},
        "limits": {"messages_per_second": 1_000_000.0, "handshakes_per_minute": 1_000_000,
                   "outgoing_queue": 1_000_000},
    }
    for name, keys in overrides.items():
        tables.setdefault(name, {}).update(keys)
    return tables


_logs = itertools.count(1)


@dataclass
class Listening:
    """A `run.py serve` subprocess (the server itself: its pid is the server's) and the port it
    listens on, with the URLs to reach it. The test modules' server records extend it."""

    proc: subprocess.Popen[bytes]
    port: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def base(self) -> URL:
        return URL(f"http://127.0.0.1:{self.port}")

    def url(self, path: str) -> URL:
        return self.base.with_path(path)

    def ws_url(self, path: str) -> URL:
        return URL(f"ws://127.0.0.1:{self.port}").with_path(path)


@dataclass
class ServerProcess(Listening):
    """A `run.py serve` subprocess, where it listens and where its output goes."""

    db: Path
    stdout: Path
    stderr: Path
    # Started in a process group of its own (`serve --workers N`): `ensure_dead` kills the
    # whole group, so that no worker outlives a failed test.
    group: bool = False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        """Both streams, for assertion messages."""
        return (f"--- stdout\n{self.stdout.read_text(errors='replace')}"
                f"--- stderr\n{self.stderr.read_text(errors='replace')}")

    def err(self) -> str:
        return self.stderr.read_text(errors="replace")

    def out(self) -> str:
        return self.stdout.read_text(errors="replace")


def start_server(db: Path, config: Path, log_dir: Path, port: int | None = None,
                 extra_args: Sequence[str] = (), group: bool = False) -> ServerProcess:
    """Start `python run.py serve` (the server itself is the child: its pid is the server's).

    `extra_args` go after the others (e.g. `--workers 2`); `group` starts it in a new session and
    process group, so that `ensure_dead` can kill the workers it starts along with it.
    """
    port = port if port is not None else free_port()
    n = next(_logs)
    out, err = log_dir / f"server-{n}-{port}.out", log_dir / f"server-{n}-{port}.err"
    with open(out, "wb") as fout, open(err, "wb") as ferr:
        proc = subprocess.Popen(
            [sys.executable, "run.py", "serve", "--port", str(port), "--db", str(db),
             "--config", str(config), *extra_args],
            cwd=REPO, stdout=fout, stderr=ferr, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=group)
    return ServerProcess(proc, port, db, out, err, group)


async def wait_serving(server: ServerProcess, timeout: float = START_TIMEOUT) -> None:
    """Poll until the server answers HTTP; fail early when the process has died."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            assert server.alive(), f"server exited early ({server.proc.returncode}):\n{server.output()}"
            try:
                async with session.get(server.url("/login"),
                                       timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, f"server did not answer:\n{server.output()}"
            await asyncio.sleep(0.05)  # polling interval


async def wait_exit(server: ServerProcess, timeout: float = EXIT_TIMEOUT) -> int:
    """The process's exit status, waiting at most `timeout` seconds."""
    try:
        return await asyncio.to_thread(server.proc.wait, timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"server did not exit within {timeout} s:\n{server.output()}") from None


async def kill_9(server: ServerProcess, net: ChatNet | None = None) -> None:
    """SIGKILL the server process itself (stopping `net`'s pumps at once) and reap it."""
    os.kill(server.pid, signal.SIGKILL)
    if net is not None:
        net.stop_load()
    code = await wait_exit(server)
    assert code == -signal.SIGKILL, f"exit status {code}:\n{server.output()}"


def phones(n: int, prefix: str) -> list[str]:
    """`n` phones unique to this process and prefix (SPEC 1: 10-15 digits)."""
    return [f"{prefix}{os.getpid() % 100_000:05d}{i:04d}" for i in range(n)]


def ensure_dead(server: ServerProcess) -> None:
    """Kill the process if it still runs (for `finally` blocks) and reap it; for a server started
    with `group=True`, every process left in its group too (the workers)."""
    if server.group:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)  # its own group: the pgid is its pid
    if server.proc.poll() is None:
        server.proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.proc.wait(timeout=EXIT_TIMEOUT)


# Not anchored at a line start: workers print their lines to one stdout at about the same time,
# and print() writes the text and its newline apart, so two lines can come out glued together.
_SERVING_PID = re.compile(r"Serving on [^\n]*?\bprocess ([0-9]+)\)")


def serving_pids(server: ServerProcess) -> list[int]:
    """The pids that the start-up lines on the server's stdout name ("... process <pid>); ..."),
    one per serving process, in the order they started serving."""
    return [int(pid) for pid in _SERVING_PID.findall(server.out())]


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


def _established(port: int) -> dict[int, int]:
    """Server ends of the established IPv4 TCP connections on local port `port`:
    {remote (client) port: socket inode}, from /proc/net/tcp."""
    out = {}
    with open("/proc/net/tcp") as fh:
        next(fh)  # header
        for line in fh:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
            if state == "01" and int(local.rpartition(":")[2], 16) == port:
                out[int(remote.rpartition(":")[2], 16)] = inode
    return out


def serving_process(ws: WS, port: int, pids: Iterable[int]) -> int | None:
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


@contextlib.asynccontextmanager
async def running(db: Path, config: Path, log_dir: Path,
                  port: int | None = None) -> AsyncIterator[ServerProcess]:
    """A serving `run.py serve`; killed at the end whatever happened."""
    server = start_server(db, config, log_dir, port)
    try:
        await wait_serving(server)
        yield server
    finally:
        ensure_dead(server)


def refuses_connections(port: int) -> bool:
    """True when a TCP connect to 127.0.0.1:port is refused."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2.0):
            return False
    except ConnectionRefusedError:
        return True


async def until(condition: Callable[[], bool], timeout: float, what: str | Callable[[], str]) -> None:
    """Poll `condition` until it holds; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for: "
                                 f"{what() if callable(what) else what}")
        await asyncio.sleep(POLL)


def db_rows(db: Path, tables: Iterable[str]) -> dict[str, int]:
    """Row counts of `tables`, read from the file by a read-only connection."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as con:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}


MESSAGE_TABLES = ("personal_messages", "group_messages", "group_pending")


# -- HTTP clients -------------------------------------------------------------------------------


def client() -> aiohttp.ClientSession:
    """A browser-like client: its own cookie jar, which keeps cookies of an IP address."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def register(session: aiohttp.ClientSession, server: ServerProcess, phone: str) -> None:
    """Register `phone`; the session cookie stays in `session`'s jar."""
    async with session.post(server.url("/register"), allow_redirects=False,
                            data={"phone": phone, "name": f"user {phone}", "password": PASSWORD},
                            timeout=aiohttp.ClientTimeout(total=NET_TIMEOUT)) as resp:
        assert resp.status == 302, await resp.text()


async def create_group(session: aiohttp.ClientSession, server: ServerProcess, name: str,
                       participants: list[str]) -> str:
    """Create a group as the session's user; returns its key."""
    async with session.post(server.url("/chat/special/group"),
                            json={"name": name, "participants": participants},
                            timeout=aiohttp.ClientTimeout(total=NET_TIMEOUT)) as resp:
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["key"])


async def ws_open(session: aiohttp.ClientSession, url: URL) -> WS:
    """Open a WebSocket, the handshake bounded by NET_TIMEOUT."""
    async with asyncio.timeout(NET_TIMEOUT):
        return await session.ws_connect(url, autoping=True)


async def login(session: aiohttp.ClientSession, server: ServerProcess, phone: str) -> None:
    """Log `phone` in (a new session); the cookie stays in `session`'s jar."""
    async with session.post(server.url("/login"), allow_redirects=False,
                            data={"phone": phone, "password": PASSWORD},
                            timeout=aiohttp.ClientTimeout(total=NET_TIMEOUT)) as resp:
        assert resp.status == 302, await resp.text()


# -- client timestamps and message identities ---------------------------------------------------

# Client clocks years away from the server's; every call a new instant with a non-zero µs part.
_instants = itertools.count(1)
_BASE = datetime(2034, 3, 4, 5, 6, 7, tzinfo=UTC)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def next_stamp() -> tuple[int, str]:
    """A fresh client timestamp: (µs since the epoch, `YYYY-MM-DD HH:MM:SS.ffffff`)."""
    dt = _BASE + timedelta(milliseconds=next(_instants), microseconds=17)
    return (dt - _EPOCH) // timedelta(microseconds=1), dt.strftime("%Y-%m-%d %H:%M:%S.%f")


def micros(text: str) -> int:
    """µs since the epoch of a client or fetch timestamp (`... HH:MM:SS.ffffff` or ISO with Z)."""
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // timedelta(microseconds=1)


# -- the ledger ---------------------------------------------------------------------------------


@dataclass
class Verdict:
    """What a ledger proves, as counts (the tests print them) and examples (for failures)."""

    written: int
    confirmed: int          # msg_sent seen
    delivered_before: int   # pushes before the kill / stop
    delivered_after: int    # deliveries after the restart
    acked_before: int
    proven_before: int
    lost: list[str]
    dup_after_ack: list[str]
    dup_deliveries: list[str]
    bad: list[str]
    errors: list[str]
    order: list[str]

    def summary(self) -> str:
        return (f"written {self.written}, msg_sent seen {self.confirmed}, pushed before "
                f"{self.delivered_before}, acks written {self.acked_before} (proven "
                f"{self.proven_before}), delivered after restart {self.delivered_after}, "
                f"lost {len(self.lost)}, duplicates after proven acknowledgement "
                f"{len(self.dup_after_ack)}")

    def assert_clean(self) -> None:
        """Every guarantee holds; the message shows the first examples of each breach."""
        problems = {"lost": self.lost, "delivered again after a proven acknowledgement":
                    self.dup_after_ack, "delivered twice in one phase": self.dup_deliveries,
                    "unknown or corrupted frames": self.bad, "error frames": self.errors,
                    "fetch out of order": self.order}
        broken = {k: v for k, v in problems.items() if v}
        assert not broken, self.summary() + "\n" + "\n".join(
            f"{k} ({len(v)}): {v[:5]}" for k, v in broken.items())


@dataclass
class Ledger:
    """What the clients of one run saw. `phase` is "before" until the kill or stop, then "after".

    Deliveries, acknowledgements and proofs are recorded per Unit (message, recipient).
    """

    ack_probability: float = 1.0
    rng: random.Random = field(default_factory=random.Random)
    phase: str = "before"
    texts: dict[MsgId, str] = field(default_factory=dict)
    recipients: dict[MsgId, frozenset[str]] = field(default_factory=dict)
    confirmed: set[MsgId] = field(default_factory=set)
    delivered: dict[str, Counter[Unit]] = field(
        default_factory=lambda: {"before": Counter(), "after": Counter()})
    acked: dict[str, set[Unit]] = field(default_factory=lambda: {"before": set(), "after": set()})
    proven: dict[str, set[Unit]] = field(default_factory=lambda: {"before": set(), "after": set()})
    pending_lists: dict[MsgId, set[str]] = field(default_factory=dict)  # fetch_grp_msgs, after
    bad: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    order: list[str] = field(default_factory=list)
    closes: list[tuple[str, str, int | None]] = field(default_factory=list)  # (phase, label, code)

    def written(self, mid: MsgId, text: str, recipients: Iterable[str]) -> None:
        self.texts[mid] = text
        self.recipients[mid] = frozenset(recipients)

    def in_flight(self) -> int:
        """Messages written whose every acknowledgement is not yet proven committed."""
        proven = self.proven["before"]
        return sum(1 for mid, rs in self.recipients.items()
                   if any((mid, r) not in proven for r in rs))

    def check_delivery(self, mid: MsgId, recipient: str, text: object, where: str) -> bool:
        """True when `mid` was written for `recipient` with exactly `text`; else noted as bad."""
        if mid not in self.texts:
            self.bad.append(f"{where}: unknown message {mid}")
            return False
        if recipient not in self.recipients[mid]:
            self.bad.append(f"{where}: {mid} delivered to {recipient}, not a recipient")
            return False
        if text != self.texts[mid]:
            self.bad.append(f"{where}: {mid} body {text!r} != {self.texts[mid]!r}")
            return False
        return True

    def committed_known(self, mid: MsgId) -> bool:
        """The server has said it committed `mid`: msg_sent, or a push or fetch of it to anyone."""
        if mid in self.confirmed:
            return True
        return any((mid, r) in self.delivered[p] for p in ("before", "after")
                   for r in self.recipients[mid])

    def verdict(self) -> Verdict:
        before, after = self.delivered["before"], self.delivered["after"]
        lost, dup_after_ack, dups = [], [], []
        for mid, rs in self.recipients.items():
            committed = self.committed_known(mid)
            for r in rs:
                unit = (mid, r)
                if committed and before[unit] + after[unit] == 0:
                    lost.append(f"{unit}: committed, never delivered")
                elif committed and unit not in self.acked["before"] and after[unit] == 0:
                    lost.append(f"{unit}: committed, never acknowledged, not delivered after restart")
                if unit in self.proven["before"] and after[unit]:
                    dup_after_ack.append(f"{unit}: proven acknowledged, delivered {after[unit]}x after")
                if unit in self.proven["before"] and r in self.pending_lists.get(mid, ()):
                    dup_after_ack.append(f"{unit}: proven acknowledged, still pending after restart")
        for phase, counts in self.delivered.items():
            dups += [f"{unit} {n}x {phase}" for unit, n in counts.items() if n > 1]
        for phase in ("before", "after"):
            if extra := self.proven[phase] - self.acked[phase]:
                self.bad.append(f"receipts for acknowledgements never written ({phase}): "
                                f"{sorted(extra)[:3]}")
        return Verdict(
            written=len(self.texts), confirmed=len(self.confirmed),
            delivered_before=sum(before.values()), delivered_after=sum(after.values()),
            acked_before=len(self.acked["before"]), proven_before=len(self.proven["before"]),
            lost=lost, dup_after_ack=dup_after_ack, dup_deliveries=dups, bad=list(self.bad),
            errors=list(self.errors), order=list(self.order))


# -- chat clients -------------------------------------------------------------------------------


def _body(mid: MsgId, rng: random.Random) -> str:
    """A message body that names its identity and carries some non-ASCII text of random length."""
    kind, sender, target, us = mid
    return f"{kind}:{sender}>{target}@{us} " + "é🙂x" * rng.randrange(0, 60)


async def _frames(ws: WS, ledger: Ledger, label: str) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects arriving on `ws` until it ends; then notes in `ledger.closes` the code of
    the server's close frame (None when the connection just dropped, as after a kill)."""
    code: int | None = None
    while True:
        msg = await ws.receive()
        if msg.type is WSMsgType.TEXT:
            data = json.loads(msg.data)
            if isinstance(data, dict):
                yield data
            else:
                ledger.bad.append(f"{label}: not an object: {msg.data!r}")
            continue
        if msg.type is WSMsgType.CLOSE:
            code = int(msg.data)
        elif msg.type is WSMsgType.BINARY:
            ledger.bad.append(f"{label}: binary frame")
            continue
        break
    ledger.closes.append((ledger.phase, label, code))


class ChatUser:
    """One user's sockets: receive, personal send sockets (one per peer), and a group socket.

    The receive socket's reader records every delivery in the ledger. Before the kill or stop it
    acknowledges each with probability `ledger.ack_probability` (the rest stay stored); after it,
    it collects them in `to_ack` for `send_acks`, which the drain sends once every receive socket
    is served (so that no receipt push can miss its sender).
    """

    def __init__(self, phone: str, session: aiohttp.ClientSession, ledger: Ledger) -> None:
        self.phone = phone
        self.session = session
        self.ledger = ledger
        self.recv: WS | None = None
        self.personal: dict[str, WS] = {}
        self.group: WS | None = None
        self.group_key = ""
        self.windows: dict[str, asyncio.Semaphore] = {}  # target -> frames awaiting msg_sent
        self.readers: list[asyncio.Task[None]] = []
        self.pumps: list[asyncio.Task[None]] = []
        self.fetch_done: asyncio.Queue[str] = asyncio.Queue()
        self.to_ack: list[tuple[WS, dict[str, str], Unit]] = []
        self._fetching: list[MsgId] = []

    def sockets(self) -> list[tuple[str, WS]]:
        socks = [("recv", self.recv)] + [(f"personal->{p}", ws) for p, ws in self.personal.items()]
        socks.append(("group", self.group))
        return [(f"{self.phone}:{label}", ws) for label, ws in socks if ws is not None]

    async def connect(self, server: ServerProcess, peers: list[str], group_key: str | None,
                      window: int) -> None:
        """Open the sockets and start their readers (the receive socket is proven served later)."""
        self.recv = await ws_open(self.session, server.ws_url(f"/ws/chat/special/{self.phone}/"))
        self.readers.append(asyncio.create_task(self._read_receive(self.recv)))
        for peer in peers:
            ws = await ws_open(self.session, server.ws_url(f"/ws/chat/personal/{self.phone}/{peer}/"))
            self.personal[peer] = ws
            self.windows[peer] = asyncio.Semaphore(window)
            self.readers.append(asyncio.create_task(self._read_send(ws, "p", peer)))
        if group_key is not None:
            self.group_key = group_key
            self.group = await ws_open(self.session,
                                       server.ws_url(f"/ws/chat/group/{self.phone}/{group_key}/"))
            self.windows[group_key] = asyncio.Semaphore(window)
            self.readers.append(asyncio.create_task(self._read_send(self.group, "g", group_key)))

    async def fetch(self, command: str) -> None:
        """Send a fetch on the receive socket and wait for its last chunk (the reader records it)."""
        assert self.recv is not None
        await self.recv.send_str(json.dumps({"command": command, "msg_to": self.phone}))
        async with asyncio.timeout(NET_TIMEOUT):
            got = await self.fetch_done.get()
        assert got == command, (got, command)

    async def fetch_both(self) -> None:
        await self.fetch("fetch_msgs")
        await self.fetch("fetch_grp_msgs")

    def start_pumps(self, group_members: list[str], stop: asyncio.Event) -> None:
        for peer, ws in self.personal.items():
            self.pumps.append(asyncio.create_task(self._pump(ws, "p", peer, [peer], stop)))
        if self.group is not None:
            others = [m for m in group_members if m != self.phone]
            self.pumps.append(asyncio.create_task(
                self._pump(self.group, "g", self.group_key, others, stop)))

    async def _pump(self, ws: WS, kind: str, target: str, recipients: list[str],
                    stop: asyncio.Event) -> None:
        window = self.windows[target]
        while not stop.is_set():
            await window.acquire()
            if stop.is_set() or ws.closed:
                return
            try:
                await self._write_one(ws, kind, target, recipients)
            except (ConnectionError, RuntimeError):
                return

    async def _read_send(self, ws: WS, kind: str, target: str) -> None:
        """A send socket's answers: msg_sent (opens the window), error frames (noted)."""
        label = f"{self.phone}:{kind}->{target}"
        async for data in _frames(ws, self.ledger, label):
            if data.get("command") == "msg_sent" and data.get("msg_to") == target \
                    and data.get("msg_from") == self.phone:
                mid = (kind, self.phone, target, micros(data["message"]))
                if mid not in self.ledger.texts:
                    self.ledger.bad.append(f"{label}: msg_sent for unknown {mid}")
                self.ledger.confirmed.add(mid)
                self.windows[target].release()
            elif data.get("command") == "error":
                self.ledger.errors.append(f"{self.ledger.phase} {label}: {data}")
            else:
                self.ledger.bad.append(f"{label}: unexpected {data}")

    async def _read_receive(self, ws: WS) -> None:
        label = f"{self.phone}:recv"
        async for data in _frames(ws, self.ledger, label):
            await self._on_receive(data, label)

    def _identify(self, msg_from: str, sent: str) -> tuple[MsgId, str | None]:
        """The message a new_msg from `msg_from` ("<grp>-<sender>" or a phone) names, and the
        group key (None for personal)."""
        if "-" in msg_from:
            grp, sender = msg_from.split("-", 1)
            return ("g", sender, grp, micros(sent)), grp
        return ("p", msg_from, self.phone, micros(sent)), None

    async def _on_receive(self, data: dict[str, Any], label: str) -> None:
        command = data.get("command")
        ledger = self.ledger
        if command == "new_msg":
            await self._delivered(data, f"{label} push")
        elif command in ("fetch_msgs", "fetch_grp_msgs"):
            for item in data.get("messages", []):
                if command == "fetch_grp_msgs" and "-" not in str(item.get("msg_from")):
                    ledger.bad.append(f"{label}: personal message in fetch_grp_msgs {item}")
                if item.get("command") != "new_msg" or item.get("msg_to") != self.phone:
                    ledger.bad.append(f"{label}: malformed fetched message {item}")
                mid = await self._delivered(item, f"{label} {command}")
                self._fetching.append(mid)
                if command == "fetch_grp_msgs":
                    pending = item.get("pending")
                    if not isinstance(pending, list) or self.phone not in pending or \
                            not set(pending) <= ledger.recipients.get(mid, frozenset()):
                        ledger.bad.append(f"{label}: bad pending list of {mid}: {item}")
                    else:
                        ledger.pending_lists.setdefault(mid, set()).update(pending)
            if data.get("all") == "True":
                self._check_order(self._fetching, f"{label} {command}")
                self._fetching = []
                self.fetch_done.put_nowait(command)
        elif command == "msg_received":
            msg_from = str(data.get("msg_from"))
            if "-" in msg_from:
                grp, receiver = msg_from.split("-", 1)
                mid: MsgId = ("g", self.phone, grp, micros(data["message"]))
            else:
                receiver = msg_from
                mid = ("p", self.phone, receiver, micros(data["message"]))
            if data.get("msg_to") != self.phone or mid not in ledger.texts:
                ledger.bad.append(f"{label}: receipt for unknown {mid}: {data}")
            ledger.proven[ledger.phase].add((mid, receiver))
        elif command == "error":
            ledger.errors.append(f"{ledger.phase} {label}: {data}")
        elif command not in ("presence", "msg_read", "is_typing"):
            ledger.bad.append(f"{label}: unexpected {data}")

    async def _delivered(self, item: dict[str, Any], where: str) -> MsgId:
        """Record one delivery (push or fetched) and acknowledge it (now, or later after a restart)."""
        ledger = self.ledger
        sent = str(item.get("sent_timestamp"))
        mid, grp = self._identify(str(item.get("msg_from")), sent)
        unit = (mid, self.phone)
        if item.get("msg_to") != self.phone:
            ledger.bad.append(f"{where}: msg_to is not me: {item}")
        if not ledger.check_delivery(mid, self.phone, item.get("message"), where):
            return mid
        ledger.delivered[ledger.phase][unit] += 1
        if grp is None:
            ws, ack = self.personal.get(mid[1]), {
                "message": sent, "command": "msg_received", "msg_from": self.phone,
                "msg_to": mid[1], "sent_timestamp": next_stamp()[1]}
        else:
            ws, ack = self.group, {
                "message": sent, "command": "grp_msg_received", "msg_from": self.phone,
                "msg_to": mid[1], "sent_timestamp": next_stamp()[1]}
        if ws is None:
            ledger.bad.append(f"{where}: no socket to acknowledge {mid}")
            return mid
        if ledger.phase == "after":
            self.to_ack.append((ws, ack, unit))
        elif ledger.rng.random() < ledger.ack_probability:
            ledger.acked["before"].add(unit)  # before the write: it may be committed from now on
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_str(json.dumps(ack))
        return mid

    def _check_order(self, mids: list[MsgId], where: str) -> None:
        """SPEC 5.1 / 5.2: a sender's messages come oldest first (each pump sends in clock order)."""
        last: dict[tuple[str, str, str], int] = {}
        for kind, sender, target, us in mids:
            key = (kind, sender, target)
            if us <= last.get(key, -1):
                self.ledger.order.append(f"{where}: {key} {us} after {last[key]}")
            last[key] = us

    async def flush(self, group_members: list[str], timeout: float) -> None:
        """Write one more message on each of this user's open send sockets, then wait until
        every message it wrote has its msg_sent. A socket's writes commit in the order of its
        frames, so every frame written on them before (acknowledgements too) is committed by
        then. For a server that keeps serving while another is killed."""
        for peer, ws in self.personal.items():
            await self._write_one(ws, "p", peer, [peer])
        if self.group is not None:
            await self._write_one(self.group, "g", self.group_key,
                                  [m for m in group_members if m != self.phone])
        mine = [mid for mid in self.ledger.texts if mid[1] == self.phone]
        await until(lambda: all(mid in self.ledger.confirmed for mid in mine), timeout,
                    lambda: f"{self.phone}: msg_sent of "
                            f"{sum(mid not in self.ledger.confirmed for mid in mine)} of "
                            f"{len(mine)} messages")

    async def _write_one(self, ws: WS, kind: str, target: str, recipients: list[str]) -> None:
        """Write one new message (recorded in the ledger first) on send socket `ws`."""
        command = "new_msg" if kind == "p" else "new_grp_msg"
        us, stamp = next_stamp()
        mid = (kind, self.phone, target, us)
        text = _body(mid, self.ledger.rng)
        self.ledger.written(mid, text, recipients)
        await ws.send_str(json.dumps({"message": text, "command": command, "msg_from": self.phone,
                                      "msg_to": target, "sent_timestamp": stamp}))

    async def send_acks(self) -> list[Unit]:
        """Send the acknowledgements collected after the restart; returns their units."""
        units = []
        for ws, ack, unit in self.to_ack:
            self.ledger.acked["after"].add(unit)
            await ws.send_str(json.dumps(ack))
            units.append(unit)
        self.to_ack = []
        return units

    async def close(self) -> None:
        """Stop pumps and readers and close the sockets (each close bounded)."""
        for task in self.pumps + self.readers:
            task.cancel()
        await asyncio.gather(*self.pumps, *self.readers, return_exceptions=True)
        for _, ws in self.sockets():
            with contextlib.suppress(Exception):
                async with asyncio.timeout(NET_TIMEOUT):
                    await ws.close()
        self.pumps, self.readers = [], []


@dataclass
class Party:
    """The people of a load test: their logged-in sessions, who talks to whom, and the group."""

    phones: list[str]
    sessions: dict[str, aiohttp.ClientSession]
    pairs: list[tuple[str, str]]  # each pair talks both ways
    members: list[str]            # the group's participants
    group_key: str

    def peers(self, phone: str) -> list[str]:
        return [b for a, b in self.pairs if a == phone] + [a for a, b in self.pairs if b == phone]

    async def close(self) -> None:
        for session in self.sessions.values():
            await session.close()


async def make_party(server: ServerProcess, phones: list[str], pairs: list[tuple[str, str]],
                     members: list[str]) -> Party:
    """Register every phone (each with its own cookie jar) and create the group."""
    sessions = {p: client() for p in phones}
    party = Party(phones, sessions, pairs, members, "")
    try:
        for phone in phones:
            await register(sessions[phone], server, phone)
        party.group_key = await create_group(sessions[members[0]], server, "crew", members[1:])
    except BaseException:
        await party.close()
        raise
    return party


# Where a ChatNet's users connect: one server for all, or each phone's own (the scaled
# deployment: several processes sharing one store and one hub).
Where = ServerProcess | Mapping[str, ServerProcess]


def server_of(where: Where, phone: str) -> ServerProcess:
    return where if isinstance(where, ServerProcess) else where[phone]


class ChatNet:
    """Every user of a party connected to one server (or each to theirs, see `Where`), recording
    into one ledger."""

    def __init__(self, party: Party, ledger: Ledger) -> None:
        self.party = party
        self.ledger = ledger
        self.users = [ChatUser(p, party.sessions[p], ledger) for p in party.phones]
        self.stop = asyncio.Event()

    async def connect(self, server: Where, window: int) -> None:
        """Open every socket, then prove every receive socket served (a fetch round trip each:
        pushes are registered before a receive socket reads its first frame)."""
        self.stop = asyncio.Event()
        for user in self.users:
            grp = self.party.group_key if user.phone in self.party.members else None
            await user.connect(server_of(server, user.phone), self.party.peers(user.phone), grp,
                               window)
        for user in self.users:
            await user.fetch_both()

    def start_load(self) -> None:
        for user in self.users:
            user.start_pumps(self.party.members, self.stop)

    def stop_load(self) -> None:
        self.stop.set()
        for user in self.users:
            for sem in user.windows.values():  # wake pumps blocked on a full window
                sem.release()

    def sockets(self) -> list[tuple[str, WS]]:
        return [s for user in self.users for s in user.sockets()]

    async def wait_all_closed(self, timeout: float) -> None:
        """Wait until every reader has seen its socket end (after a kill or a stop)."""
        readers = [t for user in self.users for t in user.readers]
        await until(lambda: all(t.done() for t in readers), timeout,
                    lambda: f"{sum(not t.done() for t in readers)} sockets still open")

    async def close(self) -> None:
        for user in self.users:
            await user.close()

    async def drain(self, server: Where, db: Path | Callable[[], Awaitable[dict[str, int]]]) -> None:
        """After a restart: connect, fetch everything (recorded as delivered after), acknowledge
        it all, wait for every receipt, fetch again (must be empty), and find no message rows
        (in the SQLite file `db`, or as counted by `db()`, e.g. in PostgreSQL)."""
        self.ledger.phase = "after"
        await self.connect(server, window=1)
        units = [u for user in self.users for u in await user.send_acks()]
        proven = self.ledger.proven["after"]
        await until(lambda: all(u in proven for u in units), NET_TIMEOUT,
                    lambda: f"receipts of {sum(u not in proven for u in units)} of "
                            f"{len(units)} acknowledgements after the restart")
        before = sum(self.ledger.delivered["after"].values())
        for user in self.users:
            await user.fetch_both()
        again = sum(self.ledger.delivered["after"].values()) - before
        assert again == 0, f"{again} messages still fetched after every acknowledgement"
        rows = db_rows(db, MESSAGE_TABLES) if isinstance(db, Path) else await db()
        assert rows == dict.fromkeys(MESSAGE_TABLES, 0), f"rows left after the drain: {rows}"
