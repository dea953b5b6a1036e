"""One run of a case: a fresh server with a client driving it (`Lab.stage`), and its measured phase
(`Stage.measure`). Set-up and tear-down are never measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client import Client, Tally, wait_done
from deployment import BenchServer, Deployment
from measure import Meter, server_mem


@dataclass
class Stage:
    """A started server and the client connected to it, for one run."""

    server: BenchServer
    client: Client

    @property
    def pid(self) -> int:
        """The server's top process (with workers: their parent)."""
        return self.server.process.pid

    def mem(self) -> dict[str, int]:
        """VmRSS and VmHWM of the server's process tree, in bytes."""
        return server_mem(self.pid)

    async def measure(self, tally: Tally, done: asyncio.Event,
                      senders: list[Callable[[], Awaitable[None]]],
                      stall_timeout: float) -> tuple[bool, dict[str, float]]:
        """Run each of `senders` as a task until `done` is set, or until nothing progressed for
        `stall_timeout` seconds (then they are cancelled); the load over exactly that phase.
        Returns (finished, `Meter.stop()` figures)."""
        meter = Meter(self.pid, self.server.deployment.engines)
        meter.start()
        tally.last_progress = time.perf_counter()
        tasks = [asyncio.ensure_future(send()) for send in senders]
        finished = await wait_done(done, tally, stall_timeout)
        measured = meter.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return finished, measured


@dataclass
class Lab:
    """Where the runs of one benchmark happen: the folder for their servers, what the servers run
    on, and what each server's log said when it stopped (`BenchServer.finish`), by run name."""

    workdir: Path
    deployment: Deployment
    notes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @contextlib.asynccontextmanager
    async def stage(self, name: str, synchronous: str,
                    settings: dict[str, dict[str, Any]] | None = None) -> AsyncIterator[Stage]:
        """A fresh server for run `name` (started before entering: a failure to start raises and
        leaves no note) and a client; on leaving, every socket and the client are closed and the
        server is stopped, its note kept in `notes[name]`."""
        server = BenchServer(self.workdir, name, synchronous, self.deployment, settings)
        await server.start()
        client = Client(server.process.base)
        try:
            yield Stage(server, client)
        finally:
            await client.close()
            self.notes[name] = await server.finish()
