"""The scrape case (SPEC 11, issue 16: "one scrape of /metrics with 10,000 sockets open takes
under 50 ms of server CPU"): K receive sockets of U users opened and left idle, then the server's
CPU over `--scrapes` scrapes of /metrics one after another, less what the server spends idle with
those sockets over the same time (heartbeats), measured just before; per scrape. The server's CPU
is read from /proc (clock ticks of 10 ms), hence many scrapes.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import aiohttp

from client import Sock, Tally
from measure import server_cpu
from stage import Lab


async def case_scrape(lab: Lab, name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The scrape case's one run, on a fresh server."""
    async with lab.stage(name, "FULL") as stage:
        client = stage.client
        k = args.scrape_sockets
        users = [f"55540{i:05d}" for i in range(min(k, 1000) or 1)]
        tally = Tally()
        socks: list[Sock] = []
        await client.register(users)
        sem = asyncio.Semaphore(100)

        async def open_one(i: int) -> None:
            phone = users[i % len(users)]
            async with sem:
                socks.append(await client.connect(phone, f"/ws/chat/special/{phone}/", tally))

        results = await asyncio.gather(*(open_one(i) for i in range(k)), return_exceptions=True)
        refused = [r for r in results if isinstance(r, BaseException)]
        url = stage.server.process.url("/metrics")
        async with aiohttp.ClientSession() as session:
            async def scrape() -> tuple[float, str]:
                t0 = time.perf_counter()
                async with session.get(url) as resp:
                    text = await resp.text()
                    if resp.status != 200:
                        raise RuntimeError(f"GET /metrics answered {resp.status}")
                return time.perf_counter() - t0, text

            _, first = await scrape()  # warm: the store's figures read, the connection open
            await asyncio.sleep(1.0)
            # The scrapes, timed; then the same wall time idle, for the sockets' own cost.
            cpu0, t0 = server_cpu(stage.pid), time.perf_counter()
            walls = [(await scrape())[0] for _ in range(args.scrapes)]
            busy_s, busy_cpu = time.perf_counter() - t0, server_cpu(stage.pid) - cpu0
            cpu1, t1 = server_cpu(stage.pid), time.perf_counter()
            await asyncio.sleep(busy_s)
            idle_s, idle_cpu = time.perf_counter() - t1, server_cpu(stage.pid) - cpu1
        open_sockets = next((line.split()[-1] for line in first.splitlines()
                             if line.startswith('chat_open_sockets{kind="receive"}')), None)
        per_scrape = (busy_cpu - idle_cpu * busy_s / idle_s) / args.scrapes
        await client.close_sockets()
        checks = tally.checks(incomplete=len(refused), lost=0, duplicate_pushes=0,
                              out_of_order=0, leftover_stored=0)
        return {
            "case": "scrape", "sockets": k, "opened": k - len(refused),
            "open_sockets_reported": open_sockets, "scrapes": args.scrapes,
            "scrape_bytes": len(first.encode()),
            "server_cpu_ms_per_scrape": per_scrape * 1000,
            "server_cpu_ms_per_scrape_raw": busy_cpu / args.scrapes * 1000,
            "idle_cpu_ms_per_s": idle_cpu / idle_s * 1000,
            "scrape_wall_ms_p50": sorted(walls)[len(walls) // 2] * 1000,
            "scrape_wall_ms_max": max(walls) * 1000,
            "checks": checks, "error_texts": tally.error_texts, "other_frames": tally.other_frames,
        }
