"""The idle case: K receive sockets of U users opened and left idle; the server's RSS per socket,
then every one of them must still answer `fetch_msgs`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

from client import Sock, Tally
from measure import proc_mem, server_cpu
from stage import Lab


async def case_idle(lab: Lab, name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The idle case's one run, on a fresh server."""
    async with lab.stage(name, "FULL") as stage:
        client = stage.client
        k = args.idle
        users = [f"55530{i:05d}" for i in range(min(args.idle_users or k, k))]
        tally = Tally()
        socks: list[Sock] = []
        owners: list[str] = []
        await client.register(users)
        await asyncio.sleep(1.0)
        rss_before = stage.mem()["VmRSS"]
        sem = asyncio.Semaphore(100)

        async def open_one(i: int) -> None:
            phone = users[i % len(users)]
            async with sem:
                socks.append(await client.connect(phone, f"/ws/chat/special/{phone}/", tally))
                owners.append(phone)

        cpu0, t0 = server_cpu(stage.pid), time.perf_counter()
        results = await asyncio.gather(*(open_one(i) for i in range(k)), return_exceptions=True)
        open_s = time.perf_counter() - t0
        open_cpu = server_cpu(stage.pid) - cpu0
        refused = [r for r in results if isinstance(r, BaseException)]
        await asyncio.sleep(args.settle)
        rss_after = stage.mem()["VmRSS"]
        client_rss = proc_mem(os.getpid())["VmRSS"]
        # every idle socket must still answer
        answers = []
        for i in range(0, len(socks), 500):
            answers += await asyncio.gather(*(s.fetch("fetch_msgs", o, 30.0) for s, o in
                                              zip(socks[i:i + 500], owners[i:i + 500], strict=True)))
        answered = sum(1 for a in answers if a is not None)
        stored = sum(len(a) for a in answers if a is not None)
        await client.close_sockets()
        await asyncio.sleep(1.0)
        rss_closed = stage.mem()["VmRSS"]
        checks = tally.checks(
            incomplete=k - answered,  # sockets that could not be opened or did not answer
            lost=0, duplicate_pushes=0, out_of_order=0,
            leftover_stored=stored)
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
