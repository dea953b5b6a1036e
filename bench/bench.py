#!/usr/bin/env python3
"""The project's benchmark: real `run.py serve` subprocesses, real sockets, numbers with units.

    .venv/bin/python bench/bench.py [--quick] [--pairs 50 --messages 200 --window 10]
                                    [--idle 5000] [--group 100] [--json out.json]

Cases (each against a freshly started server with a fresh database; see bench/README.md):

  personal  N pairs: sender S holds /ws/chat/personal/S/R/ and /ws/chat/special/S/, receiver R holds
            /ws/chat/special/R/ and /ws/chat/personal/R/S/. Each sender sends M `new_msg` keeping at
            most W not yet answered by `msg_sent`; each receiver answers every pushed `new_msg` at once
            with `msg_received`, whose push (the receipt) reaches S. Run with synchronous = FULL and
            again with NORMAL. Figures: server CPU per 1000 delivered messages (whole cycle), delivered
            messages per second, send -> push latency.
  group     one sender and G-1 other members of one group, everyone online; the sender sends M
            `new_grp_msg` (window W), every member answers each push at once with `grp_msg_received`.
            Figure: server CPU per group message including all its pushes and receipts.
  idle      K receive sockets (of U users) opened and left idle: server RSS growth per socket; then
            `fetch_msgs` must be answered on every one of them.

Correctness is checked in every case (incomplete, lost, duplicate pushes, out of order, error frames,
leftover stored, unexpected closes, corrupted frames, server errors logged): all must be 0, else the
exit status is 1. Exit status 2: a case could not run (the server did not start, ...).

Set-up (registration, group creation, connecting) is never measured. Server CPU is utime + stime of
the server process (all its threads) from /proc/PID/stat over the measured phase only.

Scaled mode (`--database-url postgresql://... --hub-url redis://... --workers 2`): every run's server
is `run.py serve --workers N` on the PostgreSQL store (a fresh schema per run, dropped after) and the
Redis hub (a fresh key prefix per run, deleted after). Server CPU is then the sum over the parent
and all its worker processes, and the CPU of the PostgreSQL server processes (comm `postgres`) and
of `redis-server` over the same phase is reported apart, with the total of the three.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import re
import resource
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp
import orjson
import uvloop

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from chatserver import config as chat_config  # noqa: E402
from chatserver.protocol import fetch_timestamp, now_micros  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
PASSWORD = "bench-password"
COOKIE = "chat_session"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
CHECKS = ("incomplete", "lost", "duplicate_pushes", "out_of_order", "error_frames",
          "leftover_stored", "closed_unexpectedly", "corrupted", "server_errors")


# -- measuring -------------------------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    """CPU seconds (utime + stime, every thread) used so far by process `pid`."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


def proc_mem(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of `pid`, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) * 1024
    return out


@dataclass(frozen=True, slots=True)
class Proc:
    """One line of /proc/PID/stat: enough to find a process tree and to add up CPU."""

    pid: int
    comm: str
    ppid: int
    start: int  # starttime (field 22): with the pid, tells a reused pid apart
    cpu: float  # utime + stime, seconds


def processes() -> dict[int, Proc]:
    """Every process on the machine, from /proc/PID/stat (those that vanish meanwhile skipped)."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                text = fh.read()
        except OSError:
            continue
        head, _, rest = text.rpartition(")")
        fields = rest.split()
        out[int(name)] = Proc(int(name), head.partition("(")[2], int(fields[1]), int(fields[19]),
                              (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def tree(pid: int, procs: dict[int, Proc]) -> list[Proc]:
    """Process `pid` and all its descendants (a `--workers N` server: the parent and workers)."""
    children: dict[int, list[Proc]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p)
    found, todo = [], [procs[pid]] if pid in procs else []
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p.pid, [])
    return found


CpuSnapshot = dict[tuple[int, int], float]


def snapshot(procs: list[Proc]) -> CpuSnapshot:
    return {(p.pid, p.start): p.cpu for p in procs}


def cpu_since(before: CpuSnapshot, after: CpuSnapshot) -> float:
    """CPU seconds used between two snapshots of a set of processes; a process started meanwhile
    counts whole, one that ended meanwhile is not seen after it ended."""
    return sum(cpu - before.get(key, 0.0) for key, cpu in after.items())


def server_cpu(pid: int) -> float:
    """CPU seconds used so far by the server `pid` with all its worker processes."""
    return sum(p.cpu for p in tree(pid, processes()))


def server_mem(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of the server `pid`, summed over it and its worker processes."""
    out = {"VmRSS": 0, "VmHWM": 0}
    for p in tree(pid, processes()):
        with contextlib.suppress(OSError):
            for key, value in proc_mem(p.pid).items():
                out[key] += value
    return out


# The engines of the scaled deployment, found by process name (comm); what each one used is
# reported apart from the server's CPU (`--database-url`, `--hub-url`).
ENGINES = {"postgres": "postgres", "redis": "redis-server"}


def machine_busy() -> tuple[float, float]:
    """CPU seconds the whole machine has been busy (all cores; idle and iowait excluded, time
    stolen by the hypervisor included), and the part of it spent in interrupts and softirqs
    (which includes the kernel's loopback networking for our own sockets)."""
    with open("/proc/stat") as fh:
        ticks = [int(v) for v in fh.readline().split()[1:]]
    busy = sum(ticks[:8]) - ticks[3] - ticks[4]  # user..steal minus idle, iowait
    return busy / CLK_TCK, (ticks[5] + ticks[6]) / CLK_TCK


def client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Meter:
    """Server CPU, client CPU and the rest of the machine's load over one measured phase.

    The server is process `pid` with its worker processes; with `engines`, the CPU of the
    PostgreSQL and Redis server processes is measured too (ENGINES)."""

    pid: int
    engines: bool = False
    t0: float = 0.0
    server0: CpuSnapshot = field(default_factory=dict)
    engines0: dict[str, CpuSnapshot] = field(default_factory=dict)
    client0: float = 0.0
    machine0: float = 0.0
    irq0: float = 0.0
    result: dict[str, float] = field(default_factory=dict)

    def _engines(self, procs: dict[int, Proc]) -> dict[str, CpuSnapshot]:
        if not self.engines:
            return {}
        return {name: snapshot([p for p in procs.values() if p.comm == comm])
                for name, comm in ENGINES.items()}

    def start(self) -> None:
        procs = processes()
        self.t0 = time.perf_counter()
        self.server0 = snapshot(tree(self.pid, procs))
        self.engines0 = self._engines(procs)
        self.client0 = client_cpu()
        self.machine0, self.irq0 = machine_busy()

    def stop(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self.t0
        procs = processes()
        server = cpu_since(self.server0, snapshot(tree(self.pid, procs)))
        engines = {name: cpu_since(self.engines0[name], after)
                   for name, after in self._engines(procs).items()}
        client = client_cpu() - self.client0
        machine, irq = machine_busy()
        machine, irq = machine - self.machine0, irq - self.irq0
        self.result = {
            "elapsed_s": elapsed,
            "server_cpu_s": server,
            "client_cpu_s": client,
            "server_cores": server / elapsed if elapsed else 0.0,
            "client_cores": client / elapsed if elapsed else 0.0,
            "irq_cores": irq / elapsed if elapsed else 0.0,
            # anything else running on the box meanwhile (should be ~0 for clean numbers)
            "other_cores": max(0.0, machine - irq - server - client - sum(engines.values()))
                           / elapsed if elapsed else 0.0,
        }
        for name, cpu in engines.items():
            self.result[f"{name}_cpu_s"] = cpu
            self.result[f"{name}_cores"] = cpu / elapsed if elapsed else 0.0
        if engines:
            self.result["total_cpu_s"] = server + sum(engines.values())
        return self.result


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


# -- the server subprocess -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# What the benchmark changes from the defaults. A key that this version of the server does not
# have (chatserver/config.py) is left out, since the server refuses unknown keys.
BENCH_SETTINGS: dict[str, dict[str, Any]] = {
    "security": {"bcrypt_rounds": 4},  # registration is set-up, not measured
    "limits": {
        "messages_per_second": 1e9,  # far above the offered load
        "handshakes_per_minute": 10**9,  # every bench socket comes from 127.0.0.1
    },
}


def bench_config(synchronous: str, database_url: str = "", hub_url: str = "",
                 hub_prefix: str = "") -> str:
    """The TOML config of a bench server (with the engines of the scaled mode when given)."""
    tables: dict[str, dict[str, Any]] = {"database": {"synchronous": synchronous}}
    if database_url:
        tables["database"]["url"] = database_url
    if hub_url:
        tables["hub"] = {"url": hub_url, "prefix": hub_prefix}
    for table, keys in BENCH_SETTINGS.items():
        tables.setdefault(table, {}).update(keys)
    known = {f.name: {g.name for g in dataclasses.fields(f.default_factory)}  # type: ignore[arg-type]
             for f in dataclasses.fields(chat_config.Config)}
    lines = ["# written by bench/bench.py"]
    for table, keys in tables.items():
        lines.append(f"[{table}]")
        for key, value in keys.items():
            if key in known.get(table, ()):
                lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def with_search_path(url: str, schema: str) -> str:
    """`url` with `search_path=schema` added to its query (asyncpg passes it to the server)."""
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode({"search_path": schema})) if q)
    return urlunsplit(parts._replace(query=query))


@dataclass(frozen=True)
class Deployment:
    """What every bench server runs on: by default one process with SQLite and the in-memory
    hub; in the scaled mode, `workers` processes on PostgreSQL and Redis."""

    database_url: str = ""
    hub_url: str = ""
    workers: int = 1

    @property
    def engines(self) -> bool:
        return bool(self.database_url or self.hub_url)

    def describe(self) -> str:
        if not self.engines:
            return "1 process, SQLite, in-memory hub"
        store = "PostgreSQL store" if self.database_url else "SQLite"
        hub = "Redis hub" if self.hub_url else "in-memory hub"
        return (f"{self.workers} worker process{'es' if self.workers > 1 else ''} on one port, "
                f"{store} (a fresh schema per run), {hub} (a fresh prefix per run)")


# Not anchored at a line start: workers print at about the same time, and print() writes the
# text and its newline apart, so two start-up lines can come out glued together.
SERVING_LINE = re.compile(r"Serving on ")


class Server:
    """`run.py serve` on a free port with a fresh database and a bench config: a fresh SQLite
    file, or in the scaled mode a fresh PostgreSQL schema and Redis prefix (removed at `stop`)."""

    def __init__(self, workdir: Path, name: str, synchronous: str,
                 deployment: Deployment = Deployment()) -> None:
        self.dir = workdir / name
        self.dir.mkdir(parents=True)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = self.dir / "server.log"
        self.config = self.dir / "bench.toml"
        self.synchronous = synchronous
        self.deployment = deployment
        self.schema = f"bench_{secrets.token_hex(6)}" if deployment.database_url else ""
        self.prefix = f"bench{secrets.token_hex(6)}" if deployment.hub_url else ""
        self.schema_made = False
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        """Start it and wait until it (every worker) serves; on failure nothing is left behind."""
        try:
            await self._start()
        except BaseException:
            self.stop()
            with contextlib.suppress(Exception):
                await self.drop_engines()
            raise

    async def _start(self) -> None:
        d = self.deployment
        database_url = ""
        if d.database_url:
            import asyncpg  # only the scaled mode needs it
            conn = await asyncpg.connect(d.database_url)
            try:
                await conn.execute(f"CREATE SCHEMA {self.schema}")
                self.schema_made = True
            finally:
                await conn.close()
            database_url = with_search_path(d.database_url, self.schema)
        self.config.write_text(bench_config(self.synchronous, database_url, d.hub_url, self.prefix))
        workers = ["--workers", str(d.workers)] if d.workers > 1 else []
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "run.py", "serve", "--config", str(self.config),
                 "--port", str(self.port), "--db", str(self.dir / "chat.db"), *workers],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + START_TIMEOUT
        async with aiohttp.ClientSession() as session:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited at start:\n{self.tail()}")
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with session.get(f"{self.base}/login",
                                           timeout=aiohttp.ClientTimeout(total=2)) as resp:
                        # with workers, every one of them must have said it serves
                        if resp.status == 200 and self.serving() >= d.workers:
                            return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server did not answer within {START_TIMEOUT} s:\n{self.tail()}")
                await asyncio.sleep(0.05)

    def serving(self) -> int:
        """Processes that have printed their start-up line so far."""
        return len(SERVING_LINE.findall(self.log.read_text(errors="replace")))

    def stop(self) -> int | None:
        """SIGTERM (the server commits and closes sockets), SIGKILL after STOP_TIMEOUT (to the
        whole process group: the workers too)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # start_new_session: pgid == pid
            self.proc.wait()
            return -9

    async def drop_engines(self) -> None:
        """Remove this run's PostgreSQL schema and Redis keys (after `stop`)."""
        d = self.deployment
        if self.schema_made:
            import asyncpg
            conn = await asyncpg.connect(d.database_url)
            try:
                await conn.execute(f"DROP SCHEMA {self.schema} CASCADE")
            finally:
                await conn.close()
        if self.prefix:
            import redis.asyncio as redis
            client = redis.Redis.from_url(d.hub_url)
            try:
                keys = [k async for k in client.scan_iter(match=f"{self.prefix}*", count=1000)]
                if keys:
                    await client.delete(*keys)
            finally:
                await client.aclose()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def errors_logged(self) -> list[str]:
        """Lines of the server's log that report an error (tracebacks, ERROR, CRITICAL)."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if "Traceback" in line or " ERROR " in line or " CRITICAL " in line:
                out.append(line.strip())
        return out

    def warnings_logged(self) -> int:
        return sum(" WARNING " in line for line in self.log.read_text(errors="replace").splitlines())


# -- the client ------------------------------------------------------------------------------


class Clock:
    """A sender's clock: microseconds, bumped by 1 µs on a tie, so every timestamp is unique."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = 0

    def next(self) -> str:
        us = now_micros()
        if us <= self.last:
            us = self.last + 1
        self.last = us
        t = fetch_timestamp(us)  # YYYY-MM-DDTHH:MM:SS.ffffffZ
        return f"{t[:10]} {t[11:-1]}"  # YYYY-MM-DD HH:MM:SS.ffffff


def frame(command: str, msg_from: str, msg_to: str, message: str, sent_timestamp: str) -> str:
    return orjson.dumps({"message": message, "command": command, "msg_from": msg_from,
                         "msg_to": msg_to, "sent_timestamp": sent_timestamp}).decode()


@dataclass
class Tally:
    """What went wrong in one case (every count must be 0), and what else arrived."""

    error_frames: int = 0
    error_texts: dict[str, int] = field(default_factory=dict)
    closed_unexpectedly: int = 0
    corrupted: int = 0
    other_frames: dict[str, int] = field(default_factory=dict)
    last_progress: float = field(default_factory=time.perf_counter)

    def error(self, f: dict[str, Any]) -> None:
        self.error_frames += 1
        text = f"{f.get('type')}: {f.get('message')}"
        self.error_texts[text] = self.error_texts.get(text, 0) + 1

    def other(self, command: object) -> None:
        key = str(command)
        self.other_frames[key] = self.other_frames.get(key, 0) + 1


Handler = Callable[[dict[str, Any]], Awaitable[None] | None]


class Sock:
    """One client WebSocket with its reader task: frames go to a handler per `command`; the
    answers to `fetch_msgs` / `fetch_grp_msgs` are collected for `fetch`."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, tally: Tally,
                 on: dict[str, Handler] | None = None) -> None:
        self.ws = ws
        self.tally = tally
        self.on = on or {}
        self.closing = False
        self._fetch: asyncio.Future[list[Any]] | None = None
        self._fetched: list[Any] = []
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        on = self.on
        try:
            async for m in self.ws:
                if m.type is not aiohttp.WSMsgType.TEXT:
                    self.tally.corrupted += 1
                    continue
                try:
                    f = orjson.loads(m.data)
                    command = f.get("command")
                except (orjson.JSONDecodeError, AttributeError):
                    self.tally.corrupted += 1
                    continue
                handler = on.get(command)
                if handler is not None:
                    result = handler(f)
                    if result is not None:
                        await result
                elif command == "error":
                    self.tally.error(f)
                elif command in ("fetch_msgs", "fetch_grp_msgs") and self._fetch is not None:
                    self._fetched.extend(f.get("messages", []))
                    if f.get("all") == "True" and not self._fetch.done():
                        self._fetch.set_result(self._fetched)
                else:
                    self.tally.other(command)
        except (aiohttp.ClientError, ConnectionError):
            pass
        if not self.closing:
            self.tally.closed_unexpectedly += 1

    async def send(self, text: str) -> None:
        await self.ws.send_str(text)

    async def fetch(self, command: str, phone: str, timeout: float) -> list[Any] | None:
        """Send `command` (fetch_msgs / fetch_grp_msgs) and return every stored message of the
        answer's chunks; None when no complete answer came within `timeout`."""
        self._fetch = asyncio.get_running_loop().create_future()
        self._fetched = []
        try:
            await self.ws.send_str(orjson.dumps({"command": command, "msg_to": phone}).decode())
            return await asyncio.wait_for(self._fetch, timeout)
        except (asyncio.TimeoutError, aiohttp.ClientError, ConnectionError):
            return None
        finally:
            self._fetch = None

    async def close(self) -> None:
        self.closing = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 10)
        self.task.cancel()
        with contextlib.suppress(BaseException):
            await self.task


class Client:
    """One HTTP client for every simulated user: cookies are kept per user by hand."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.ws_base = base.replace("http://", "ws://")
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), cookie_jar=aiohttp.DummyCookieJar())
        self.cookies: dict[str, str] = {}

    async def close(self) -> None:
        await self.session.close()

    def headers(self, phone: str) -> dict[str, str]:
        return {"Cookie": f"{COOKIE}={self.cookies[phone]}", "Origin": self.base}

    async def register(self, phones: list[str], concurrency: int = 16) -> None:
        """POST /register for each phone (set-up, not measured); keeps each session cookie."""
        sem = asyncio.Semaphore(concurrency)

        async def one(phone: str) -> None:
            async with sem, self.session.post(
                    f"{self.base}/register", allow_redirects=False, headers={"Origin": self.base},
                    data={"phone": phone, "name": f"bench {phone}", "password": PASSWORD}) as resp:
                if resp.status != 302 or COOKIE not in resp.cookies:
                    raise RuntimeError(f"register {phone}: HTTP {resp.status} {await resp.text()}")
                self.cookies[phone] = resp.cookies[COOKIE].value

        await asyncio.gather(*(one(p) for p in phones))

    async def post_json(self, phone: str, path: str, body: Any) -> Any:
        async with self.session.post(f"{self.base}{path}", json=body,
                                     headers=self.headers(phone)) as resp:
            if resp.status not in (200, 201):
                raise RuntimeError(f"POST {path}: HTTP {resp.status} {await resp.text()}")
            return await resp.json()

    async def connect(self, phone: str, path: str, tally: Tally,
                      on: dict[str, Handler] | None = None) -> Sock:
        ws = await self.session.ws_connect(f"{self.ws_base}{path}", headers=self.headers(phone),
                                           compress=0, autoclose=True, autoping=True,
                                           max_msg_size=0)
        return Sock(ws, tally, on)


async def close_all(socks: list[Sock]) -> None:
    for i in range(0, len(socks), 500):
        await asyncio.gather(*(s.close() for s in socks[i:i + 500]))


async def wait_done(done: asyncio.Event, tally: Tally, stall_timeout: float) -> bool:
    """Wait for `done`; give up after `stall_timeout` s without progress. True when done."""
    while not done.is_set():
        try:
            await asyncio.wait_for(done.wait(), 0.5)
        except asyncio.TimeoutError:
            if time.perf_counter() - tally.last_progress > stall_timeout:
                return False
    return True


async def leftover(socks: dict[str, Sock], commands: tuple[str, ...], drain_timeout: float,
                   tally: Tally) -> int:
    """Messages still stored for these users (`fetch_msgs` etc. on their receive sockets), polled
    up to `drain_timeout` s until empty. An unanswered fetch counts as a corrupted exchange."""
    deadline = time.perf_counter() + drain_timeout
    while True:
        total = 0
        for command in commands:
            answers = await asyncio.gather(*(s.fetch(command, phone, 10.0)
                                             for phone, s in socks.items()))
            for a in answers:
                if a is None:
                    tally.corrupted += 1
                else:
                    total += len(a)
        if total == 0 or time.perf_counter() > deadline:
            return total
        await asyncio.sleep(0.5)


def text_of(i: int, msg_from: str, msg_to: str) -> str:
    # ~64 characters, a typical short chat line
    return f"bench message {i:06d} from {msg_from} to {msg_to} ...".ljust(64, ".")


# -- case: personal messages -------------------------------------------------------------------


@dataclass(slots=True)
class Msg:
    idx: int
    ts: str
    text: str
    t_send: float = 0.0
    t_ack: float = 0.0
    t_push: float = 0.0
    t_receipt: float = 0.0
    acks: int = 0
    pushes: int = 0
    receipts: int = 0


class Pair:
    """A sender S and a receiver R, their four sockets and S's messages."""

    def __init__(self, run: PersonalRun, s: str, r: str) -> None:
        self.run, self.s, self.r = run, s, r
        self.clock, self.r_clock = Clock(), Clock()
        self.window = asyncio.Semaphore(run.window)
        self.by_ts: dict[str, Msg] = {}
        self.last_pushed = -1
        self.s_send = self.s_recv = self.r_recv = self.r_send = None  # type: Sock | None

    # S's send socket
    def on_msg_sent(self, f: dict[str, Any]) -> None:
        msg = self.by_ts.get(f.get("message"))  # type: ignore[arg-type]
        if msg is None or f.get("msg_from") != self.s or f.get("msg_to") != self.r:
            self.run.tally.corrupted += 1
            return
        msg.acks += 1
        if msg.acks == 1:
            msg.t_ack = time.perf_counter()
            self.window.release()
            self.run.progress(msg)

    def on_s_error(self, f: dict[str, Any]) -> None:
        self.run.tally.error(f)
        if f.get("type") == "new_msg":  # refused: it will never get its msg_sent
            self.window.release()

    # R's receive socket: the push, answered at once with msg_received
    async def on_push(self, f: dict[str, Any]) -> None:
        now = time.perf_counter()
        msg = self.by_ts.get(f.get("sent_timestamp"))  # type: ignore[arg-type]
        if (msg is None or f.get("msg_from") != self.s or f.get("msg_to") != self.r
                or f.get("message") != msg.text):
            self.run.tally.corrupted += 1
            return
        msg.pushes += 1
        if msg.pushes > 1:
            return
        msg.t_push = now
        if msg.idx < self.last_pushed:
            self.run.out_of_order += 1
        self.last_pushed = max(self.last_pushed, msg.idx)
        self.run.progress(msg)
        assert self.r_send is not None
        await self.r_send.send(frame("msg_received", self.r, self.s, msg.ts, self.r_clock.next()))

    # S's receive socket: the receipt
    def on_receipt(self, f: dict[str, Any]) -> None:
        msg = self.by_ts.get(f.get("message"))  # type: ignore[arg-type]
        if msg is None or f.get("msg_from") != self.r or f.get("msg_to") != self.s:
            self.run.tally.corrupted += 1
            return
        msg.receipts += 1
        if msg.receipts == 1:
            msg.t_receipt = time.perf_counter()
            self.run.progress(msg)

    async def send_all(self) -> None:
        assert self.s_send is not None
        for i in range(self.run.messages):
            await self.window.acquire()
            ts = self.clock.next()
            msg = Msg(i, ts, text_of(i, self.s, self.r))
            self.by_ts[ts] = msg
            msg.t_send = time.perf_counter()
            await self.s_send.send(frame("new_msg", self.s, self.r, msg.text, ts))


class PersonalRun:
    def __init__(self, pairs: int, messages: int, window: int) -> None:
        self.pairs, self.messages, self.window = pairs, messages, window
        self.tally = Tally()
        self.out_of_order = 0
        self.complete = 0
        self.done = asyncio.Event()

    def progress(self, msg: Msg) -> None:
        self.tally.last_progress = time.perf_counter()
        # called once per first msg_sent, first push and first receipt: all three seen once
        if msg.acks and msg.pushes and msg.receipts:
            self.complete += 1
            if self.complete == self.pairs * self.messages:
                self.done.set()


async def case_personal(workdir: Path, name: str, synchronous: str,
                        args: argparse.Namespace) -> dict[str, Any]:
    server = Server(workdir, name, synchronous, args.deployment)
    await server.start()
    client = Client(server.base)
    run = PersonalRun(args.pairs, args.messages, args.window)
    socks: list[Sock] = []
    try:
        pairs = [Pair(run, f"55500{i:05d}", f"55510{i:05d}") for i in range(args.pairs)]
        await client.register([p.s for p in pairs] + [p.r for p in pairs])
        t = run.tally
        for p in pairs:
            p.s_send = await client.connect(p.s, f"/ws/chat/personal/{p.s}/{p.r}/", t,
                                            {"msg_sent": p.on_msg_sent, "error": p.on_s_error})
            p.s_recv = await client.connect(p.s, f"/ws/chat/special/{p.s}/", t,
                                            {"msg_received": p.on_receipt})
            p.r_recv = await client.connect(p.r, f"/ws/chat/special/{p.r}/", t,
                                            {"new_msg": p.on_push})
            p.r_send = await client.connect(p.r, f"/ws/chat/personal/{p.r}/{p.s}/", t)
            socks += [p.s_send, p.s_recv, p.r_recv, p.r_send]
        await asyncio.sleep(0.5)  # let connection set-up work (presence, ...) finish
        mem_before = server_mem(server.pid)

        meter = Meter(server.pid, args.deployment.engines)
        meter.start()
        t.last_progress = time.perf_counter()
        senders = [asyncio.ensure_future(p.send_all()) for p in pairs]
        finished = await wait_done(run.done, t, args.stall_timeout)
        measured = meter.stop()
        mem_after = server_mem(server.pid)
        for task in senders:
            task.cancel()
        await asyncio.gather(*senders, return_exceptions=True)

        msgs = [m for p in pairs for m in p.by_ts.values()]
        planned = args.pairs * args.messages
        sent = len(msgs)
        pushed = [m for m in msgs if m.pushes]
        first_send = min((m.t_send for m in msgs), default=0.0)
        last_push = max((m.t_push for m in pushed), default=first_send)
        span = last_push - first_send
        push_lat = [(m.t_push - m.t_send) * 1000 for m in pushed]
        ack_lat = [(m.t_ack - m.t_send) * 1000 for m in msgs if m.acks]
        receipt_lat = [(m.t_receipt - m.t_send) * 1000 for m in msgs if m.receipts]

        recv_socks = {p.r: p.r_recv for p in pairs} | {p.s: p.s_recv for p in pairs}
        left = await leftover(recv_socks, ("fetch_msgs",), args.drain_timeout, t)  # type: ignore[arg-type]
        await close_all(socks)
        socks = []
        checks = {
            "incomplete": planned - run.complete,
            "lost": sum(1 for m in msgs if m.acks and not m.pushes),
            "duplicate_pushes": sum(max(0, m.pushes - 1) + max(0, m.receipts - 1) for m in msgs),
            "out_of_order": run.out_of_order,
            "error_frames": t.error_frames,
            "leftover_stored": left,
            "closed_unexpectedly": t.closed_unexpectedly,
            "corrupted": t.corrupted,
        }
        return {
            "case": f"personal {synchronous}",
            "synchronous": synchronous,
            "pairs": args.pairs, "messages": args.messages, "window": args.window,
            "planned": planned, "sent": sent, "delivered": len(pushed),
            "finished": finished,
            "delivered_per_s": len(pushed) / span if span > 0 else 0.0,
            "server_cpu_s_per_1000": measured["server_cpu_s"] / len(pushed) * 1000 if pushed else None,
            "client_cpu_s_per_1000": measured["client_cpu_s"] / len(pushed) * 1000 if pushed else None,
            **{f"{name}_cpu_s_per_1000": measured[f"{name}_cpu_s"] / len(pushed) * 1000
               if pushed else None
               for name in (*ENGINES, "total") if f"{name}_cpu_s" in measured},
            "push_ms": {"p50": percentile(push_lat, 50), "p99": percentile(push_lat, 99),
                        "max": max(push_lat, default=None)},
            "ack_ms": {"p50": percentile(ack_lat, 50), "p99": percentile(ack_lat, 99)},
            "receipt_ms": {"p50": percentile(receipt_lat, 50), "p99": percentile(receipt_lat, 99)},
            "measured": measured,
            "server_rss_before": mem_before["VmRSS"], "server_rss_after": mem_after["VmRSS"],
            "server_rss_peak": mem_after["VmHWM"],
            "checks": checks, "error_texts": t.error_texts, "other_frames": t.other_frames,
        }
    finally:
        await close_all(socks)
        await client.close()
        await finish_server(server)


# -- case: a group with everyone online -------------------------------------------------------


@dataclass(slots=True)
class GrpMsg:
    idx: int
    ts: str
    text: str
    t_send: float = 0.0
    t_ack: float = 0.0
    t_last_push: float = 0.0
    t_last_receipt: float = 0.0
    acks: int = 0
    pushed: dict[str, int] = field(default_factory=dict)
    receipts: dict[str, int] = field(default_factory=dict)
    push_lat: list[float] = field(default_factory=list)
    complete: bool = False


class GroupRun:
    def __init__(self, members: list[str], messages: int, window: int, ack: bool = True) -> None:
        self.ack = ack  # members acknowledge each push at once (else: after the measured phase)
        self.members, self.sender = members, members[0]
        self.others = members[1:]
        self.messages, self.window = messages, window
        self.key = ""
        self.tally = Tally()
        self.sem = asyncio.Semaphore(window)
        self.clock = Clock()
        self.clocks = {p: Clock() for p in members}
        self.by_ts: dict[str, GrpMsg] = {}
        self.last_pushed = {p: -1 for p in members}
        self.out_of_order = 0
        self.complete = 0
        self.done = asyncio.Event()
        self.grp_socks: dict[str, Sock] = {}

    def check_complete(self, msg: GrpMsg) -> None:
        self.tally.last_progress = time.perf_counter()
        n = len(self.others)
        if (not msg.complete and msg.acks == 1 and len(msg.pushed) == n
                and (not self.ack or len(msg.receipts) == n)):
            msg.complete = True
            self.complete += 1
            if self.complete == self.messages:
                self.done.set()

    def on_msg_sent(self, f: dict[str, Any]) -> None:
        msg = self.by_ts.get(f.get("message"))  # type: ignore[arg-type]
        if msg is None or f.get("msg_from") != self.sender or f.get("msg_to") != self.key:
            self.tally.corrupted += 1
            return
        msg.acks += 1
        if msg.acks == 1:
            msg.t_ack = time.perf_counter()
            self.sem.release()
            self.check_complete(msg)

    def on_s_error(self, f: dict[str, Any]) -> None:
        self.tally.error(f)
        if f.get("type") == "new_grp_msg":
            self.sem.release()

    def on_push(self, member: str) -> Handler:
        grp_sender = f"{self.key}-{self.sender}"

        async def handle(f: dict[str, Any]) -> None:
            now = time.perf_counter()
            msg = self.by_ts.get(f.get("sent_timestamp"))  # type: ignore[arg-type]
            if (msg is None or f.get("msg_from") != grp_sender or f.get("msg_to") != member
                    or f.get("message") != msg.text):
                self.tally.corrupted += 1
                return
            count = msg.pushed.get(member, 0) + 1
            msg.pushed[member] = count
            if count > 1:
                return
            msg.push_lat.append((now - msg.t_send) * 1000)
            msg.t_last_push = now
            if msg.idx < self.last_pushed[member]:
                self.out_of_order += 1
            self.last_pushed[member] = max(self.last_pushed[member], msg.idx)
            self.check_complete(msg)
            if self.ack:
                await self.grp_socks[member].send(frame(
                    "grp_msg_received", member, self.sender, msg.ts, self.clocks[member].next()))

        return handle

    def on_receipt(self, f: dict[str, Any]) -> None:
        msg = self.by_ts.get(f.get("message"))  # type: ignore[arg-type]
        grp_from = f.get("msg_from")
        member = grp_from[len(self.key) + 1:] if isinstance(grp_from, str) else ""
        if (msg is None or f.get("msg_to") != self.sender
                or grp_from != f"{self.key}-{member}" or member not in self.last_pushed):
            self.tally.corrupted += 1
            return
        count = msg.receipts.get(member, 0) + 1
        msg.receipts[member] = count
        if count == 1:
            msg.t_last_receipt = time.perf_counter()
            self.check_complete(msg)

    async def send_all(self) -> None:
        sock = self.grp_socks[self.sender]
        for i in range(self.messages):
            await self.sem.acquire()
            ts = self.clock.next()
            msg = GrpMsg(i, ts, text_of(i, self.sender, self.key))
            self.by_ts[ts] = msg
            msg.t_send = time.perf_counter()
            await sock.send(frame("new_grp_msg", self.sender, self.key, msg.text, ts))


async def case_group(workdir: Path, name: str, args: argparse.Namespace,
                     ack: bool = True) -> dict[str, Any]:
    """With ack=False ("fanout"), members acknowledge only after the measured phase, so the
    figure is the cost of `new_grp_msg` alone: the store and the pushes."""
    server = Server(workdir, name, "FULL", args.deployment)
    await server.start()
    client = Client(server.base)
    members = [f"55520{i:05d}" for i in range(args.group)]
    run = GroupRun(members, args.group_messages, args.window, ack)
    socks: list[Sock] = []
    try:
        await client.register(members)
        info = await client.post_json(run.sender, "/chat/special/group",
                                      {"name": "bench group", "participants": run.others})
        run.key = info["key"]
        t = run.tally
        recv: dict[str, Sock] = {}
        for p in members:
            on: dict[str, Handler] = ({"msg_received": run.on_receipt} if p == run.sender
                                      else {"new_msg": run.on_push(p)})
            recv[p] = await client.connect(p, f"/ws/chat/special/{p}/", t, on)
            on = {"msg_sent": run.on_msg_sent, "error": run.on_s_error} if p == run.sender else {}
            run.grp_socks[p] = await client.connect(p, f"/ws/chat/group/{p}/{run.key}/", t, on)
            socks += [recv[p], run.grp_socks[p]]
        await asyncio.sleep(0.5)

        meter = Meter(server.pid, args.deployment.engines)
        meter.start()
        t.last_progress = time.perf_counter()
        sender = asyncio.ensure_future(run.send_all())
        finished = await wait_done(run.done, t, args.stall_timeout)
        measured = meter.stop()
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)

        msgs = list(run.by_ts.values())
        n = len(run.others)
        if not ack:  # now acknowledge everything (not measured), so that nothing is left stored
            # a message at a time: all at once would push receipts to the sender faster than it
            # reads them, and the server rightly cuts a receive socket that falls that far behind
            deadline = time.perf_counter() + args.stall_timeout
            for m in msgs:
                for p in m.pushed:
                    await run.grp_socks[p].send(frame(
                        "grp_msg_received", p, run.sender, m.ts, run.clocks[p].next()))
                while len(m.receipts) < len(m.pushed) and time.perf_counter() < deadline:
                    await asyncio.sleep(0.002)
        pushes = sum(len(m.pushed) for m in msgs)
        push_lat = [x for m in msgs for x in m.push_lat]
        fanout_lat = [(m.t_last_push - m.t_send) * 1000 for m in msgs if len(m.pushed) == n]
        first_send = min((m.t_send for m in msgs), default=0.0)
        last_push = max((m.t_last_push for m in msgs), default=first_send)
        span = last_push - first_send
        left = await leftover(recv, ("fetch_grp_msgs", "fetch_msgs"), args.drain_timeout, t)
        await close_all(socks)
        socks = []
        checks = {
            # a group message is complete with its msg_sent, a push to each other member and
            # each member's receipt back at the sender
            "incomplete": run.messages - run.complete
                          + sum(1 for m in msgs if len(m.receipts) < n),
            "lost": sum(n - len(m.pushed) for m in msgs if m.acks),
            "duplicate_pushes": sum(c - 1 for m in msgs for c in m.pushed.values())
                                + sum(c - 1 for m in msgs for c in m.receipts.values()),
            "out_of_order": run.out_of_order,
            "error_frames": t.error_frames,
            "leftover_stored": left,
            "closed_unexpectedly": t.closed_unexpectedly,
            "corrupted": t.corrupted,
        }
        cpu = measured["server_cpu_s"]
        return {
            "case": "group" if ack else "fanout",
            "members": args.group, "messages": run.messages, "window": args.window,
            "finished": finished, "sent": len(msgs), "pushes": pushes,
            "server_cpu_ms_per_group_msg": cpu / len(msgs) * 1000 if msgs else None,
            "server_cpu_us_per_push": cpu / pushes * 1e6 if pushes else None,
            "group_msgs_per_s": len(msgs) / span if span > 0 else 0.0,
            "pushes_per_s": pushes / span if span > 0 else 0.0,
            "push_ms": {"p50": percentile(push_lat, 50), "p99": percentile(push_lat, 99)},
            "fanout_ms": {"p50": percentile(fanout_lat, 50), "p99": percentile(fanout_lat, 99)},
            "measured": measured,
            "checks": checks, "error_texts": t.error_texts, "other_frames": t.other_frames,
        }
    finally:
        await close_all(socks)
        await client.close()
        await finish_server(server)


# -- case: idle receive sockets ---------------------------------------------------------------


async def case_idle(workdir: Path, name: str, args: argparse.Namespace) -> dict[str, Any]:
    server = Server(workdir, name, "FULL", args.deployment)
    await server.start()
    client = Client(server.base)
    k = args.idle
    users = [f"55530{i:05d}" for i in range(min(args.idle_users or k, k))]
    tally = Tally()
    socks: list[Sock] = []
    owners: list[str] = []
    try:
        await client.register(users)
        await asyncio.sleep(1.0)
        rss_before = server_mem(server.pid)["VmRSS"]
        sem = asyncio.Semaphore(100)

        async def open_one(i: int) -> None:
            phone = users[i % len(users)]
            async with sem:
                socks.append(await client.connect(phone, f"/ws/chat/special/{phone}/", tally))
                owners.append(phone)

        cpu0, t0 = server_cpu(server.pid), time.perf_counter()
        results = await asyncio.gather(*(open_one(i) for i in range(k)), return_exceptions=True)
        open_s = time.perf_counter() - t0
        open_cpu = server_cpu(server.pid) - cpu0
        refused = [r for r in results if isinstance(r, BaseException)]
        await asyncio.sleep(args.settle)
        rss_after = server_mem(server.pid)["VmRSS"]
        client_rss = proc_mem(os.getpid())["VmRSS"]
        # every idle socket must still answer
        answers = []
        for i in range(0, len(socks), 500):
            answers += await asyncio.gather(*(s.fetch("fetch_msgs", o, 30.0) for s, o in
                                              zip(socks[i:i + 500], owners[i:i + 500])))
        answered = sum(1 for a in answers if a is not None)
        stored = sum(len(a) for a in answers if a is not None)
        await close_all(socks)
        socks = []
        await asyncio.sleep(1.0)
        rss_closed = server_mem(server.pid)["VmRSS"]
        checks = {
            "incomplete": k - answered,  # sockets that could not be opened or did not answer
            "lost": 0, "duplicate_pushes": 0, "out_of_order": 0,
            "error_frames": tally.error_frames,
            "leftover_stored": stored,
            "closed_unexpectedly": tally.closed_unexpectedly,
            "corrupted": tally.corrupted,
        }
        return {
            "case": "idle",
            "sockets": k, "users": len(users), "opened": k - len(refused),
            "refused": [repr(r)[:200] for r in refused[:5]],
            "answered_fetch": answered,
            "server_rss_before": rss_before, "server_rss_after": rss_after,
            "server_rss_after_close": rss_closed, "client_rss_with_sockets": client_rss,
            "bytes_per_socket": (rss_after - rss_before) / k if k else None,
            "open_s": open_s, "open_per_s": k / open_s if open_s else None,
            "server_cpu_ms_per_open": open_cpu / k * 1000 if k else None,
            "checks": checks, "error_texts": tally.error_texts, "other_frames": tally.other_frames,
        }
    finally:
        await close_all(socks)
        await client.close()
        await finish_server(server)


# -- running and reporting --------------------------------------------------------------------


SERVER_NOTES: dict[str, dict[str, Any]] = {}


async def finish_server(server: Server) -> None:
    """Stop the server and keep what its log says (errors fail the run's `server_errors` check);
    then drop its PostgreSQL schema and Redis keys, if any."""
    code = await asyncio.to_thread(server.stop)
    try:
        await server.drop_engines()
    except Exception as e:  # noqa: BLE001 - a leftover schema is worth a line, not the run
        print(f"[bench] could not drop {server.schema or server.prefix}: {e}", file=sys.stderr,
              flush=True)
    SERVER_NOTES[server.dir.name] = {
        "exit_code": code, "errors": server.errors_logged(), "warnings": server.warnings_logged(),
        "log": str(server.log)}
    if server.deployment.engines:  # scaled mode: which schema and prefix the run used (dropped)
        SERVER_NOTES[server.dir.name]["engines"] = {"schema": server.schema,
                                                    "prefix": server.prefix}


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from repeated runs: the median of every figure, checks and counts summed."""
    out: dict[str, Any] = {}
    for key, first in runs[0].items():
        values = [r.get(key) for r in runs]
        if key in ("checks", "error_texts", "other_frames"):
            merged: dict[str, int] = {}
            for v in values:
                for k, n in (v or {}).items():
                    merged[k] = merged.get(k, 0) + n
            out[key] = merged
        elif key == "finished":
            out[key] = all(values)
        elif isinstance(first, dict):
            out[key] = merge(values)
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            out[key] = statistics.median_low(values)  # counts and sizes stay integers
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            out[key] = statistics.median(values)
        elif isinstance(first, list):
            out[key] = [x for v in values for x in (v or [])]
        else:
            out[key] = first
    return out


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def spread(r: dict[str, Any], key: str, digits: int) -> str:
    """The median of `key` over a case's runs, with min-max when there were several."""
    runs = r.get("runs", [])
    text = fmt(r.get(key), digits)
    values = [x[key] for x in runs if x.get(key) is not None]
    if len(values) > 1:
        text += f" ({fmt(min(values), digits)}-{fmt(max(values), digits)})"
    return text


def load_row(case: str, m: dict[str, float]) -> tuple[str, str, str, str]:
    return (case, "load: server / client / irq+softirq / other processes",
            f"{m['server_cores']:.2f} / {m['client_cores']:.2f} / {m['irq_cores']:.2f}"
            f" / {m['other_cores']:.2f}", "cores")


def engine_rows(case: str, m: dict[str, float]) -> list[tuple[str, str, str, str]]:
    """The load of the PostgreSQL and Redis server processes (scaled mode only)."""
    if "total_cpu_s" not in m:
        return []
    return [(case, "load: PostgreSQL (postgres) / Redis (redis-server) processes",
             f"{m['postgres_cores']:.2f} / {m['redis_cores']:.2f}", "cores")]


def table(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    rows: list[tuple[str, str, str, str]] = []
    full, normal = results.get("full"), results.get("normal")
    grp, idle, fan = results.get("group"), results.get("idle"), results.get("fanout")
    shape = f"{args.pairs} pairs x {args.messages} msgs x window {args.window}"
    mib = 2 ** 20

    def personal_rows(case: str, r: dict[str, Any]) -> None:
        rows.append((case, f"delivered messages, {shape}", spread(r, "delivered_per_s", 0), "msg/s"))
        rows.append((case, "send -> push latency p50 / p99",
                     f"{fmt(r['push_ms']['p50'], 1)} / {fmt(r['push_ms']['p99'], 1)}", "ms"))
        rows.append((case, "send -> msg_sent p50 / p99; send -> receipt push p50 / p99",
                     f"{fmt(r['ack_ms']['p50'], 1)} / {fmt(r['ack_ms']['p99'], 1)}; "
                     f"{fmt(r['receipt_ms']['p50'], 1)} / {fmt(r['receipt_ms']['p99'], 1)}", "ms"))
        rows.append(load_row(case, r["measured"]))
        rows.extend(engine_rows(case, r["measured"]))
        rows.append((case, "client CPU per 1000 messages", fmt(r["client_cpu_s_per_1000"], 3),
                     "CPU s / 1000 msgs"))
        rows.append((case, "server RSS before / after / peak",
                     f"{r['server_rss_before'] / mib:.1f} / {r['server_rss_after'] / mib:.1f}"
                     f" / {r['server_rss_peak'] / mib:.1f}", "MiB"))

    for label, r in (("FULL", full), ("NORMAL", normal)):
        if r:
            rows.append(("1. CPU per message", f"server CPU per 1000 delivered messages, "
                         f"synchronous={label} (new_msg..receipt push)",
                         spread(r, "server_cpu_s_per_1000", 3), "CPU s / 1000 msgs"))
            if r.get("total_cpu_s_per_1000") is not None:  # scaled mode: the engines' share
                rows.append(("1. CPU per message", f"PostgreSQL / Redis server processes' CPU per "
                             f"1000 delivered messages, synchronous={label}",
                             f"{fmt(r['postgres_cpu_s_per_1000'], 3)} / "
                             f"{fmt(r['redis_cpu_s_per_1000'], 3)}", "CPU s / 1000 msgs"))
                rows.append(("1. CPU per message", f"total CPU (server + PostgreSQL + Redis) per "
                             f"1000 delivered messages, synchronous={label}",
                             spread(r, "total_cpu_s_per_1000", 3), "CPU s / 1000 msgs"))
    if full:
        personal_rows("2. throughput FULL", full)
    if idle:
        case = "3. idle sockets"
        rows.append((case, f"server RSS per idle receive socket ({idle['sockets']:,} sockets of "
                     f"{idle['users']:,} users)", fmt(idle["bytes_per_socket"] / 1024, 1),
                     "KiB / socket"))
        rows.append((case, "server RSS before / with the sockets / after closing them",
                     f"{idle['server_rss_before'] / mib:.1f} / {idle['server_rss_after'] / mib:.1f}"
                     f" / {idle['server_rss_after_close'] / mib:.1f}", "MiB"))
        rows.append((case, "the client process holding them: RSS",
                     f"{idle['client_rss_with_sockets'] / mib:.1f}", "MiB"))
        rows.append((case, "idle sockets that answered fetch_msgs",
                     f"{idle['answered_fetch']:,} of {idle['sockets']:,}", "sockets"))
        rows.append((case, "opening them: handshakes per second; server CPU per handshake",
                     f"{fmt(idle['open_per_s'], 0)}; {fmt(idle['server_cpu_ms_per_open'], 2)}",
                     "1/s; CPU ms"))
    if normal:
        personal_rows("4. throughput NORMAL", normal)
    if full and normal and normal["delivered_per_s"]:
        rows.append(("4. FULL vs NORMAL", "throughput FULL / NORMAL (medians)",
                     fmt(full["delivered_per_s"] / normal["delivered_per_s"], 2), "ratio"))
        if normal["server_cpu_s_per_1000"]:
            rows.append(("4. FULL vs NORMAL", "server CPU per message FULL / NORMAL (medians)",
                         fmt(full["server_cpu_s_per_1000"] / normal["server_cpu_s_per_1000"], 2),
                         "ratio"))
    if grp:
        case = f"5. group of {grp['members']}"
        n = grp["members"] - 1
        rows.append((case, f"server CPU per group message: store, {n} pushes, {n} "
                     f"grp_msg_received, {n} receipt pushes",
                     spread(grp, "server_cpu_ms_per_group_msg", 2), "CPU ms / group msg"))
        rows.append((case, "the same per member reached", fmt(grp["server_cpu_us_per_push"], 1),
                     "CPU µs / member"))
        rows.append((case, f"group messages ({grp['messages']}, window {grp['window']}); "
                     "pushes delivered", f"{fmt(grp['group_msgs_per_s'], 1)}; "
                     f"{fmt(grp['pushes_per_s'], 0)}", "msg/s; pushes/s"))
        rows.append((case, "send -> push p50 / p99; send -> push to the last member p50 / p99",
                     f"{fmt(grp['push_ms']['p50'], 1)} / {fmt(grp['push_ms']['p99'], 1)}; "
                     f"{fmt(grp['fanout_ms']['p50'], 1)} / {fmt(grp['fanout_ms']['p99'], 1)}", "ms"))
        rows.append(load_row(case, grp["measured"]))
        rows.extend(engine_rows(case, grp["measured"]))
    if fan:
        case = f"5. group of {fan['members']}"
        n = fan["members"] - 1
        rows.append((case, f"server CPU per new_grp_msg alone: store and {n} pushes "
                     "(acknowledged after the measured phase)",
                     spread(fan, "server_cpu_ms_per_group_msg", 2), "CPU ms / group msg"))
        rows.append((case, "the same per push", fmt(fan["server_cpu_us_per_push"], 1),
                     "CPU µs / push"))
        rows.append(load_row(case + ", send only", fan["measured"]))
        rows.extend(engine_rows(case + ", send only", fan["measured"]))
    widths = [max(len(r[i]) for r in rows + [("case", "figure", "value", "unit")]) for i in range(4)]
    line = "  ".join("{:<%d}" % w for w in widths[:2]) + "  {:>%d}  {}" % widths[2]
    out = [line.format("case", "figure", "value", "unit"),
           line.format(*("-" * w for w in widths[:3]), "-" * widths[3])]
    out += [line.format(*r) for r in rows]

    out += ["", "6. nothing lost (counts over all runs of a case; every one must be 0)"]
    names = [(f"personal FULL x{len(full['runs'])}" if full else "", full),
             (f"personal NORMAL x{len(normal['runs'])}" if normal else "", normal),
             (f"group x{len(grp['runs'])}" if grp else "", grp),
             (f"group send-only x{len(fan['runs'])}" if fan else "", fan), ("idle", idle)]
    names = [(n, r) for n, r in names if r]
    head = ["check"] + [n for n, _ in names]
    body = [[c] + [fmt(r["checks"].get(c, 0)) for _, r in names] for c in CHECKS]
    cw = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
    for row in [head] + body:
        out.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                             for i, (v, w) in enumerate(zip(row, cw))))
    for n, r in names:
        for text, count in r.get("error_texts", {}).items():
            out.append(f"  {n}: {count} x error frame {text}")
        if r.get("other_frames"):
            out.append(f"  {n}: other frames received (not errors): {r['other_frames']}")
        for line_ in r.get("server_errors_logged", [])[:5]:
            out.append(f"  {n}: server log: {line_}")
    return "\n".join(out)


def machine_info() -> dict[str, Any]:
    with open("/proc/loadavg") as fh:
        load = fh.read().split()[:3]
    return {"cpus": os.cpu_count(), "loadavg": " ".join(load), "python": platform.python_version(),
            "aiohttp": aiohttp.__version__, "uvloop": uvloop.__version__,
            "kernel": platform.release()}


def raise_fd_limit() -> int:
    """Raise the open-file limit to the hard limit (each socket is a file)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


async def run_case(name: str, case: Callable[[str], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """One run of a case on its own server; the server's log and exit status join the checks."""
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    result = await case(name)
    note = SERVER_NOTES.get(name, {})
    errors = list(note.get("errors", []))
    if note.get("exit_code") not in (0, None):
        errors.append(f"server exit status {note.get('exit_code')}")
    result["checks"]["server_errors"] = len(errors)
    result["server_errors_logged"] = errors[:20]
    result["server_warnings"] = note.get("warnings", 0)
    if "engines" in note:
        result["engines"] = note["engines"]
    bad = {k: v for k, v in result["checks"].items() if v}
    print(f"[bench] {name} done in {time.perf_counter() - t0:.1f} s"
          + (f"; FAILED checks {bad}" if bad else ""), file=sys.stderr, flush=True)
    return result


async def main_async(args: argparse.Namespace) -> int:
    runs: dict[str, list[dict[str, Any]]] = {}
    failed: list[str] = []
    with contextlib.ExitStack() as stack:
        if args.keep:
            workdir = Path(tempfile.mkdtemp(prefix="chatbench-"))
            print(f"[bench] servers' databases, configs and logs kept in {workdir}",
                  file=sys.stderr, flush=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chatbench-")))
        plan: list[tuple[str, str, Callable[[str], Awaitable[dict[str, Any]]]]] = []
        for i in range(1, args.repeat + 1):  # FULL and NORMAL alternate: both see the same noise
            if "full" in args.cases:
                plan.append(("full", f"personal-full-{i}",
                             lambda n: case_personal(workdir, n, "FULL", args)))
            if "normal" in args.cases:
                plan.append(("normal", f"personal-normal-{i}",
                             lambda n: case_personal(workdir, n, "NORMAL", args)))
        if "group" in args.cases and args.group >= 2:
            plan += [("group", f"group-{i}", lambda n: case_group(workdir, n, args))
                     for i in range(1, args.repeat + 1)]
        if "fanout" in args.cases and args.group >= 2:
            plan += [("fanout", f"fanout-{i}", lambda n: case_group(workdir, n, args, ack=False))
                     for i in range(1, args.repeat + 1)]
        if "idle" in args.cases and args.idle > 0:
            plan.append(("idle", "idle", lambda n: case_idle(workdir, n, args)))
        for key, name, case in plan:
            try:
                result = await run_case(name, case)
            except Exception as e:  # noqa: BLE001 - report it and go on with the other cases
                failed.append(f"{name}: {type(e).__name__}: {e}")
                print(f"[bench] {name} could not run: {e}", file=sys.stderr, flush=True)
                continue
            runs.setdefault(key, []).append(result)
    results = {}
    for key, rs in runs.items():
        results[key] = merge(rs)
        results[key]["runs"] = rs

    info = machine_info()
    print()
    print(f"chatserver benchmark ({' '.join(['bench/bench.py', *args.argv])}): "
          f"{info['cpus']} CPUs shared by client and server; load average at start "
          f"{args.load_at_start}, at end {info['loadavg']}; Python {info['python']}, "
          f"aiohttp {info['aiohttp']}, uvloop {info['uvloop']}. Every run on a fresh server and "
          f"database; personal and group figures are medians of {args.repeat} run(s) (min-max).")
    if args.deployment.engines:
        print(f"Scaled mode: {args.deployment.describe()}. Server CPU is the sum over the parent "
              "and its workers; PostgreSQL and Redis CPU is every `postgres` / `redis-server` "
              "process on the machine over the measured phase"
              + ("; `synchronous` is SQLite's and does not apply to PostgreSQL."
                 if args.deployment.database_url else "."))
    print()
    print(table(results, args))
    others = [r["measured"]["other_cores"] for rs in runs.values() for r in rs if "measured" in r]
    if others and max(others) > 0.15:
        print(f"\nnote: other processes used up to {max(others):.2f} core(s) during a measured "
              "phase: the machine was busy and the figures are pessimistic; re-run on a quiet one")
    problems = [f"{n}: {c} = {v}" for n, r in results.items() for c, v in r["checks"].items() if v]
    for f in failed:
        print(f"could not run: {f}")
    if problems:
        print("\nFAILED checks: " + "; ".join(problems))
    elif not failed:
        print("\nall checks passed")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"machine": info, "load_at_start": args.load_at_start,
             "args": {k: v for k, v in vars(args).items() if k != "argv"},
             "results": results, "could_not_run": failed}, indent=2, default=str))
    sys.stdout.flush()
    if failed:
        return 2
    return 1 if problems else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="a smoke run (~20 s): 10 pairs x 50 msgs, group of 20 x 30 msgs, 300 idle "
                        "sockets; explicit flags still win")
    p.add_argument("--pairs", type=int, help="sender/receiver pairs (default 50)")
    p.add_argument("--messages", type=int, help="messages per sender (default 200)")
    p.add_argument("--window", type=int, help="messages a sender may have without msg_sent (default 10)")
    p.add_argument("--idle", type=int, help="idle receive sockets to open (default 5000; 0: skip)")
    p.add_argument("--idle-users", type=int, default=None,
                   help="users owning the idle sockets, socket i belongs to user i mod U "
                        "(default: min(K, 1000))")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds between opening the idle sockets and reading RSS (default 2)")
    p.add_argument("--group", type=int, help="group members incl. the sender (default 100; <2: skip)")
    p.add_argument("--group-messages", type=int, help="group messages sent (default 200)")
    p.add_argument("--cases", default="full,normal,group,fanout,idle",
                   help="which cases to run, comma-separated (default full,normal,group,fanout,"
                        "idle: personal with synchronous=FULL, the same with NORMAL, group with "
                        "acknowledgements, group send-only, idle)")
    p.add_argument("--repeat", type=int,
                   help="runs of the personal and group cases, each on a fresh server; figures are "
                        "medians (default 3, --quick 1)")
    p.add_argument("--stall-timeout", type=float, default=15.0,
                   help="give up a run after this many seconds without progress (default 15)")
    p.add_argument("--drain-timeout", type=float, default=5.0,
                   help="seconds to wait for fetch_msgs to come back empty after a run (default 5)")
    p.add_argument("--database-url", default="",
                   help="scaled mode: run every server on this PostgreSQL server "
                        "(postgresql://user@host:port/db), each run in a fresh schema dropped after")
    p.add_argument("--hub-url", default="",
                   help="scaled mode: run every server with the Redis hub at this URL "
                        "(redis://host:port/db), each run with a fresh key prefix deleted after")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes on one port (`run.py serve --workers N`, default 1); "
                        "more than 1 needs --database-url and --hub-url")
    p.add_argument("--json", help="also write every figure and count to this JSON file")
    p.add_argument("--keep", action="store_true",
                   help="keep each server's database, config and log (printed path) instead of "
                        "deleting them")
    args = p.parse_args(argv)
    quick = {"pairs": 10, "messages": 50, "window": 10, "idle": 300, "group": 20,
             "group_messages": 30, "repeat": 1}
    full = {"pairs": 50, "messages": 200, "window": 10, "idle": 5000, "group": 100,
            "group_messages": 200, "repeat": 3}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.idle_users is None:
        args.idle_users = min(args.idle, 1000)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.cases = {c.strip() for c in args.cases.split(",") if c.strip()}
    if not args.cases or args.cases - {"full", "normal", "group", "fanout", "idle"}:
        p.error("--cases takes some of full,normal,group,fanout,idle")
    for key in ("pairs", "messages", "window", "group_messages", "repeat"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be at least 1")
    if args.idle_users < 1 and args.idle > 0:
        p.error("--idle-users must be at least 1")
    if args.workers < 1:
        p.error("--workers must be at least 1")
    if args.workers > 1 and not (args.database_url and args.hub_url):
        p.error("--workers > 1 needs --database-url and --hub-url (PostgreSQL and Redis)")
    if args.database_url and not args.database_url.startswith(chat_config.POSTGRES_SCHEMES):
        p.error("--database-url must start with postgresql://")
    if args.hub_url and not args.hub_url.startswith(chat_config.REDIS_SCHEMES):
        p.error("--hub-url must start with redis://, rediss:// or unix://")
    args.deployment = Deployment(args.database_url, args.hub_url, args.workers)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with open("/proc/loadavg") as fh:
        args.load_at_start = " ".join(fh.read().split()[:3])
    limit = raise_fd_limit()
    need = max(args.idle if "idle" in args.cases else 0, 4 * args.pairs, 2 * args.group) + 100
    if need > limit:
        print(f"error: {need} sockets need more open files than the limit {limit} "
              "(raise the hard limit: ulimit -Hn)", file=sys.stderr)
        return 2
    return uvloop.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
