"""The server under test as a subprocess: `run.py serve` on a free port, started, waited for, stopped.

The one place in bench/ that starts and stops a process; what the process runs on (config, database,
engines) is decided by the caller (`deployment.py`). Its interface, kept small on purpose so that
the tests' server-process harness can take its place:

    server = ServerProcess(config, db, log, workers=1)   # nothing runs yet; `port` is chosen
    await server.start()       # RuntimeError (with the log's tail) if it dies or is not up in time
    server.pid, server.port, server.base                 # the top process, its port, http://...
    code = server.stop()       # blocking: SIGTERM, SIGKILL to the process group after a timeout
    server.errors_logged(), server.warnings_logged(), server.tail()
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0  # seconds until every process serves
STOP_TIMEOUT = 20.0  # seconds after SIGTERM before SIGKILL

# Not anchored at a line start: workers print at about the same time, and print() writes the
# text and its newline apart, so two start-up lines can come out glued together.
SERVING_LINE = re.compile(r"Serving on ")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`python run.py serve --config CONFIG --port PORT --db DB [--workers N]` in a session of its
    own (so that its workers can be killed with it), stdout and stderr both written to `log`."""

    def __init__(self, config: Path, db: Path, log: Path, workers: int = 1) -> None:
        self.config, self.db, self.log, self.workers = config, db, log, workers
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The top process: the server itself, or with workers the supervising parent."""
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        """Start it and return once GET /login answers 200 and every process (with `workers`, each
        worker) has printed its start-up line; RuntimeError with the log's tail when it exits
        first or takes longer than START_TIMEOUT seconds, after stopping it."""
        try:
            await self._start()
        except BaseException:
            self.stop()
            raise

    async def _start(self) -> None:
        workers = ["--workers", str(self.workers)] if self.workers > 1 else []
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "run.py", "serve", "--config", str(self.config),
                 "--port", str(self.port), "--db", str(self.db), *workers],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + START_TIMEOUT
        async with aiohttp.ClientSession() as session:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited at start:\n{self.tail()}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"{self.base}/login",
                                           timeout=aiohttp.ClientTimeout(total=2)) as resp:
                        # with workers, every one of them must have said it serves
                        if resp.status == 200 and self.serving() >= self.workers:
                            return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server did not answer within {START_TIMEOUT} s:\n{self.tail()}")
                await asyncio.sleep(0.05)

    def serving(self) -> int:
        """Processes that have printed their start-up line so far."""
        return len(SERVING_LINE.findall(self.log.read_text(errors="replace")))

    def stop(self) -> int | None:
        """SIGTERM (the server commits and closes sockets), SIGKILL after STOP_TIMEOUT (to the
        whole process group: the workers too). The exit status, -9 when killed, None when it was
        never started."""
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

    def tail(self, lines: int = 30) -> str:
        """The last `lines` lines of the log ("" when there is none)."""
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
        """How many WARNING lines the server's log holds."""
        return sum(" WARNING " in line for line in self.log.read_text(errors="replace").splitlines())
