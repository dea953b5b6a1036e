"""The personal-message case (`full`, `normal`): pairs of users, each sender with a window of
`new_msg` not yet answered by `msg_sent`, each receiver acknowledging every push at once.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass
from typing import Any

from client import Clock, Sent, Sock, Tally, frame, leftover, text_of
from measure import ENGINES
from report import percentile
from stage import Lab


@dataclass(slots=True)
class Msg(Sent):
    """A personal message: when (perf_counter seconds) and how often its push and receipt came."""

    t_push: float = 0.0
    t_receipt: float = 0.0
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
        self.s_send: Sock | None = None
        self.s_recv: Sock | None = None
        self.r_recv: Sock | None = None
        self.r_send: Sock | None = None

    def answered(self, f: dict[str, Any], msg_from: str, msg_to: str) -> Msg | None:
        """The message that `f` (msg_sent or a receipt, from `msg_from` to `msg_to`) answers; None,
        counted as corrupted, when `f` does not match one."""
        msg = self.by_ts.get(f.get("message"))  # type: ignore[arg-type]
        if msg is None or f.get("msg_from") != msg_from or f.get("msg_to") != msg_to:
            self.run.tally.corrupted += 1
            return None
        return msg

    # S's send socket
    def on_msg_sent(self, f: dict[str, Any]) -> None:
        """S's `msg_sent`: frees a place in the window."""
        msg = self.answered(f, self.s, self.r)
        if msg is None:
            return
        msg.acks += 1
        if msg.acks == 1:
            msg.t_ack = time.perf_counter()
            self.window.release()
            self.run.progress(msg)

    def on_s_error(self, f: dict[str, Any]) -> None:
        """An `error` on S's send socket."""
        self.run.tally.error(f)
        if f.get("type") == "new_msg":  # refused: it will never get its msg_sent
            self.window.release()

    # R's receive socket: the push, answered at once with msg_received
    async def on_push(self, f: dict[str, Any]) -> None:
        """The push of S's `new_msg` to R, answered at once with `msg_received`."""
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
        """R's receipt pushed to S."""
        msg = self.answered(f, self.r, self.s)
        if msg is None:
            return
        msg.receipts += 1
        if msg.receipts == 1:
            msg.t_receipt = time.perf_counter()
            self.run.progress(msg)

    async def send_all(self) -> None:
        """Send S's messages, never more than the window without `msg_sent`."""
        assert self.s_send is not None
        for i in range(self.run.messages):
            await self.window.acquire()
            ts = self.clock.next()
            msg = Msg(i, ts, text_of(i, self.s, self.r))
            self.by_ts[ts] = msg
            msg.t_send = time.perf_counter()
            await self.s_send.send(frame("new_msg", self.s, self.r, msg.text, ts))


class PersonalRun:
    """Every pair's progress: done once each message has its msg_sent, push and receipt."""

    def __init__(self, pairs: int, messages: int, window: int) -> None:
        self.pairs, self.messages, self.window = pairs, messages, window
        self.tally = Tally()
        self.out_of_order = 0
        self.complete = 0
        self.done = asyncio.Event()

    def progress(self, msg: Msg) -> None:
        """Note progress on `msg`; set `done` when every message is complete."""
        self.tally.last_progress = time.perf_counter()
        # called once per first msg_sent, first push and first receipt: all three seen once
        if msg.acks and msg.pushes and msg.receipts:
            self.complete += 1
            if self.complete == self.pairs * self.messages:
                self.done.set()


async def case_personal(lab: Lab, name: str, synchronous: str,
                        args: argparse.Namespace, metrics: bool = True) -> dict[str, Any]:
    """One run of the personal case on a fresh server with `synchronous` (FULL or NORMAL);
    `metrics` false: on a server that counts nothing (`--metrics both`), else scraped every
    `args.scrape_every` seconds during the measured phase."""
    async with lab.stage(name, synchronous, metrics,
                         args.scrape_every if metrics else 0.0) as stage:
        client = stage.client
        run = PersonalRun(args.pairs, args.messages, args.window)
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
        await asyncio.sleep(0.5)  # let connection set-up work (presence, ...) finish
        mem_before = stage.mem()
        finished, measured = await stage.measure(t, run.done, [p.send_all for p in pairs],
                                                 args.stall_timeout)
        mem_after = stage.mem()

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
        left = await leftover(recv_socks.items(), ("fetch_msgs",), args.drain_timeout, t)  # type: ignore[arg-type]
        await client.close_sockets()
        checks = t.checks(
            incomplete=planned - run.complete,
            lost=sum(1 for m in msgs if m.acks and not m.pushes),
            duplicate_pushes=sum(max(0, m.pushes - 1) + max(0, m.receipts - 1) for m in msgs),
            out_of_order=run.out_of_order,
            leftover_stored=left)
        return {
            "case": f"personal {synchronous}",
            "synchronous": synchronous,
            "metrics": metrics, "scrapes": stage.scrapes,
            "pairs": args.pairs, "messages": args.messages, "window": args.window,
            "planned": planned, "sent": sent, "delivered": len(pushed),
            "finished": finished,
            "delivered_per_s": len(pushed) / span if span > 0 else 0.0,
            "server_cpu_s_per_1000": measured["server_cpu_s"] / len(pushed) * 1000 if pushed else None,
            "client_cpu_s_per_1000": measured["client_cpu_s"] / len(pushed) * 1000 if pushed else None,
            **{f"{part}_cpu_s_per_1000": measured[f"{part}_cpu_s"] / len(pushed) * 1000
               if pushed else None
               for part in (*ENGINES, "total") if f"{part}_cpu_s" in measured},
            "push_ms": {"p50": percentile(push_lat, 50), "p99": percentile(push_lat, 99),
                        "max": max(push_lat, default=None)},
            "ack_ms": {"p50": percentile(ack_lat, 50), "p99": percentile(ack_lat, 99)},
            "receipt_ms": {"p50": percentile(receipt_lat, 50), "p99": percentile(receipt_lat, 99)},
            "measured": measured,
            "server_rss_before": mem_before["VmRSS"], "server_rss_after": mem_after["VmRSS"],
            "server_rss_peak": mem_after["VmHWM"],
            "checks": checks, "error_texts": t.error_texts, "other_frames": t.other_frames,
        }
