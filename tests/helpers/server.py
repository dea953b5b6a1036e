"""The one harness for a real server process: `python run.py serve` on a free port, with a TOML
config written for it, waited for until it answers HTTP, stopped with a signal, killed at the end.

No pytest in here (only the standard library, aiohttp and this package's timing): bench/ drives
its servers with it too (bench/bench.py puts tests/ on sys.path). The server is started directly
(no shell in between): `ServerProcess.pid` is the server's own pid (with `--workers N`, the
supervisor's).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from helpers.timing import EXIT_TIMEOUT, START_TIMEOUT

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"

# TOML tables: {"limits": {"messages_per_second": 1e5}, ...}
Tables = Mapping[str, Mapping[str, object]]

# The start-up line each serving process prints ("Serving on http://... (..., process <pid>); ...").
# Not anchored at a line start: workers print their lines to one stdout at about the same time,
# and print() writes the text and its newline apart, so two lines can come out glued together.
_SERVING_PID = re.compile(r"Serving on [^\n]*?\bprocess ([0-9]+)\)")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def merge_tables(*layers: Tables) -> dict[str, dict[str, object]]:
    """The tables of `layers`, later keys winning, table by table."""
    merged: dict[str, dict[str, object]] = {}
    for layer in layers:
        for name, keys in layer.items():
            merged.setdefault(name, {}).update(keys)
    return merged


# Under every config written here: the tests register their users through /register, which the
# default `registration = "invite"` (SPEC 10) refuses past the first account. A test of the modes
# sets its own.
BASE: Tables = {"security": {"registration": "open"}}


def write_config(path: Path, tables: Tables) -> Path:
    """Write BASE and `tables` on top as a TOML config file at `path` (the server refuses unknown
    keys)."""
    lines: list[str] = []
    for name, keys in merge_tables(BASE, tables).items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in keys.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


_starts = itertools.count(1)


@dataclass
class ServerProcess:
    """`python run.py serve --port PORT --db DB --config CONFIG [extra_args]`, its output in
    `log_dir` (stdout and stderr apart: start-up lines go to stdout, logging to stderr).

    `start()` may be called again after a stop, on the same port and database. With `group`,
    the server runs in a session and process group of its own, and `kill()` kills the whole
    group, so that no worker of `serve --workers N` outlives a test.
    """

    db: Path
    config: Path
    log_dir: Path
    port: int = field(default_factory=free_port)
    extra_args: Sequence[str] = ()
    group: bool = False
    proc: subprocess.Popen[bytes] | None = None
    stdout: Path = Path(os.devnull)
    stderr: Path = Path(os.devnull)
    starts: int = 0  # how many times `start()` has run

    # -- where it listens

    @property
    def base(self) -> str:
        """`http://127.0.0.1:PORT`."""
        return f"http://{HOST}:{self.port}"

    def url(self, path: str) -> str:
        """The HTTP URL of `path` (which may carry a query string)."""
        return self.base + path

    def ws_url(self, path: str) -> str:
        """The WebSocket URL of `path`."""
        return f"ws://{HOST}:{self.port}{path}"

    # -- the process

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self) -> ServerProcess:
        """Start the process (not waited for: see `wait_serving`); returns self. A start after a
        stop appends to the same log files, after a `--- start N ---` line, so that `output()`
        covers every run of this server."""
        assert not self.alive(), "already running"
        self.starts += 1
        if self.starts == 1:
            n = next(_starts)
            self.stdout = self.log_dir / f"server-{n}-{self.port}.out"
            self.stderr = self.log_dir / f"server-{n}-{self.port}.err"
        else:
            for path in (self.stdout, self.stderr):
                with open(path, "ab") as log:
                    log.write(f"--- start {self.starts} ---\n".encode())
        with open(self.stdout, "ab") as out, open(self.stderr, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "run.py", "serve", "--port", str(self.port), "--db", str(self.db),
                 "--config", str(self.config), *self.extra_args],
                cwd=REPO, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=self.group)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def wait_serving(self, timeout: float = START_TIMEOUT, processes: int = 0) -> None:
        """Poll until `GET /login` answers 200 and at least `processes` start-up lines are on its
        stdout (`serving_pids`; with `--workers N`, N: one per worker, so that every worker
        serves; 0: the lines are not looked at); AssertionError with its output when the process
        dies first or `timeout` seconds pass (raised, not asserted: bench/ may run under -O)."""
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                if not self.alive():
                    raise AssertionError(f"server exited early ({self.returncode()}):\n{self.output()}")
                try:
                    async with session.get(self.url("/login"),
                                           timeout=aiohttp.ClientTimeout(total=2)) as resp:
                        if resp.status == 200 and len(self.serving_pids()) >= processes:
                            return
                except (aiohttp.ClientConnectionError, TimeoutError):
                    pass
                if time.monotonic() >= deadline:
                    raise AssertionError(
                        f"server did not answer{f' from {processes} processes' if processes else ''} "
                        f"within {timeout} s:\n{self.output()}")
                await asyncio.sleep(0.05)  # polling interval, not synchronisation

    def wait_serving_sync(self, timeout: float = START_TIMEOUT) -> None:
        """`wait_serving` for synchronous callers, on a plain socket. It reads the answer to its
        end, so the server has closed its side (and its file) by the time this returns: a count
        of the server's open files taken next does not include this request."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.alive(), f"server exited early ({self.returncode()}):\n{self.output()}"
            try:
                with socket.create_connection((HOST, self.port), timeout=2) as s:
                    s.settimeout(2)
                    # A Host the default server.allowed_hosts lets through (an IP literal).
                    s.sendall(f"GET /login HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
                              "Connection: close\r\n\r\n".encode())
                    if s.recv(12).startswith(b"HTTP/1.1 200"):
                        while s.recv(65536):
                            pass
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, f"server did not answer:\n{self.output()}"
            time.sleep(0.05)  # polling interval, not synchronisation

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    async def wait_exit(self, timeout: float = EXIT_TIMEOUT) -> int:
        """The exit status, waiting at most `timeout` seconds (AssertionError after that);
        negative for a signal, as subprocess reports it."""
        assert self.proc is not None, "not started"
        try:
            return await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"server did not exit within {timeout} s:\n{self.output()}") from None

    def send_signal(self, sig: signal.Signals) -> None:
        """Send `sig` to the server process itself."""
        assert self.proc is not None, "not started"
        self.proc.send_signal(sig)

    async def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = EXIT_TIMEOUT) -> int:
        """Stop it as an operator would (`sig`) and return its exit status (0 for a clean stop)."""
        self.send_signal(sig)
        return await self.wait_exit(timeout)

    def stop_or_kill(self, sig: signal.Signals = signal.SIGTERM,
                     timeout: float = EXIT_TIMEOUT) -> int | None:
        """Stop it and wait, blocking (for synchronous callers, or through `asyncio.to_thread`):
        `sig` to the server process, and when it has not exited `timeout` seconds later, `kill()`.
        Returns the exit status (0 for a clean stop; negative for a signal as subprocess reports
        it, -9 when it had to be killed), or None when it was never started (or, after a kill,
        is still not reaped EXIT_TIMEOUT seconds later). Never raises: unlike `stop`, a server
        that does not stop is a figure to report, not a failed assertion."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL it if it still runs (and its whole group, with `group`), and reap it: for
        `finally` blocks. Never raises."""
        if self.proc is None:
            return
        if self.group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own group: the pgid is its pid
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=EXIT_TIMEOUT)

    # -- what it said and what it holds

    def out(self) -> str:
        """Its stdout so far."""
        return self.stdout.read_text(errors="replace") if self.stdout.exists() else ""

    def err(self) -> str:
        """Its stderr so far (the log)."""
        return self.stderr.read_text(errors="replace") if self.stderr.exists() else ""

    def output(self) -> str:
        """Both streams, for assertion messages."""
        return f"--- stdout\n{self.out()}--- stderr\n{self.err()}"

    def serving_pids(self) -> list[int]:
        """The pids that the start-up lines on its stdout name ("... process <pid>); ..."), one
        per serving process (with `--workers N`, per worker), in the order they started serving;
        after a restart (`start()` again), the earlier runs' lines too."""
        return [int(pid) for pid in _SERVING_PID.findall(self.out())]

    def _lines(self) -> list[str]:
        """The lines of both streams (stdout's, then stderr's)."""
        return self.out().splitlines() + self.err().splitlines()

    def errors_logged(self) -> list[str]:
        """The lines of either stream that report an error: a traceback's first line, or a log
        record at level ERROR or CRITICAL (the logging format puts the level between spaces);
        stripped, in the order of the streams."""
        return [line.strip() for line in self._lines()
                if "Traceback" in line or " ERROR " in line or " CRITICAL " in line]

    def warnings_logged(self) -> int:
        """How many lines of either stream are log records at level WARNING."""
        return sum(" WARNING " in line for line in self._lines())

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM (the peak RSS) of the server process, in bytes (/proc/PID/status)."""
        found: dict[str, int] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) * 1024  # the kernel reports kB
        return found

    def rss(self) -> int:
        """The resident set size of the server process, in bytes."""
        return self.memory()["VmRSS"]

    def open_fds(self) -> int:
        """How many files (sockets included) the server process holds open."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))


def start_server(db: Path, config: Path, log_dir: Path, port: int | None = None,
                 extra_args: Sequence[str] = (), group: bool = False) -> ServerProcess:
    """A started `ServerProcess` (not yet waited for) on `port`, or on a free one."""
    server = ServerProcess(db, config, log_dir, extra_args=extra_args, group=group)
    if port is not None:
        server.port = port
    return server.start()


@contextlib.asynccontextmanager
async def running(db: Path, config: Path, log_dir: Path, port: int | None = None,
                  extra_args: Sequence[str] = (), group: bool = False) -> AsyncIterator[ServerProcess]:
    """A serving `ServerProcess`, killed at the end whatever happened."""
    server = start_server(db, config, log_dir, port, extra_args, group)
    try:
        await server.wait_serving()
        yield server
    finally:
        server.kill()
