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

import aiohttp

from client import Client, Tally, wait_done
from deployment import BenchServer, Deployment
from measure import Meter, server_mem


@dataclass
class Stage:
    """A started server and the client connected to it, for one run."""

    server: BenchServer
    client: Client
    # Seconds between two scrapes of /metrics during the measured phase (0: none), as a
    # Prometheus would (SPEC 11; `--metrics`): what metrics cost includes being read.
    scrape_every: float = 0.0
    scrapes: int = 0  # made during the measured phase

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
        if self.scrape_every:
            tasks.append(asyncio.ensure_future(self._scrape_forever()))
        finished = await wait_done(done, tally, stall_timeout)
        measured = meter.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return finished, measured

    async def _scrape_forever(self) -> None:
        """GET /metrics every `scrape_every` seconds (each answer read whole) until cancelled."""
        url = self.server.process.url("/metrics")
        async with aiohttp.ClientSession() as session:
            while True:
                async with session.get(url) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"GET /metrics answered {resp.status}")
                self.scrapes += 1
                await asyncio.sleep(self.scrape_every)


@dataclass
class Lab:
    """Where the runs of one benchmark happen: the folder for their servers, what the servers run
    on, and what each server's log said when it stopped (`BenchServer.finish`), by run name."""

    workdir: Path
    deployment: Deployment
    notes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @contextlib.asynccontextmanager
    async def stage(self, name: str, synchronous: str, metrics: bool = True,
                    scrape_every: float = 0.0,
                    settings: dict[str, dict[str, Any]] | None = None) -> AsyncIterator[Stage]:
        """A fresh server for run `name` (started before entering: a failure to start raises and
        leaves no note) and a client; on leaving, every socket and the client are closed and the
        server is stopped, its note kept in `notes[name]`. `metrics` false: the server counts
        nothing (`[metrics] enabled = false`); `scrape_every`: see Stage; `settings`: a case's own
        config tables."""
        server = BenchServer(self.workdir, name, synchronous, self.deployment, metrics, settings)
        await server.start()
        client = Client(server.process.base)
        try:
            yield Stage(server, client, scrape_every)
        finally:
            await client.close()
            self.notes[name] = await server.finish()
