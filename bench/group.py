"""The group cases: one sender and the other members of one group, everyone online. `group`: every
member acknowledges each push at once; `fanout`: members acknowledge only after the measured phase,
so the figure is the cost of `new_grp_msg` alone (the store and the pushes).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from client import Clock, Handler, Sent, Sock, Tally, frame, leftover, text_of
from report import percentile
from stage import Lab


@dataclass(slots=True)
class GrpMsg(Sent):
    """A group message: when (perf_counter seconds) and how often each member's push and receipt
    came."""

    t_last_push: float = 0.0
    t_last_receipt: float = 0.0
    pushed: dict[str, int] = field(default_factory=dict)
    receipts: dict[str, int] = field(default_factory=dict)
    push_lat: list[float] = field(default_factory=list)
    complete: bool = False


class GroupRun:
    """The group's members, the sender's messages and everyone's progress."""

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
        """Note progress on `msg`; set `done` when every message is complete."""
        self.tally.last_progress = time.perf_counter()
        n = len(self.others)
        if (not msg.complete and msg.acks == 1 and len(msg.pushed) == n
                and (not self.ack or len(msg.receipts) == n)):
            msg.complete = True
            self.complete += 1
            if self.complete == self.messages:
                self.done.set()

    def on_msg_sent(self, f: dict[str, Any]) -> None:
        """The sender's `msg_sent`: frees a place in the window."""
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
        """An `error` on the sender's group socket."""
        self.tally.error(f)
        if f.get("type") == "new_grp_msg":
            self.sem.release()

    def on_push(self, member: str) -> Handler:
        """The handler of the pushes to `member`, which acknowledges each at once (with `ack`)."""
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
        """A member's receipt pushed to the sender."""
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
        """Send the sender's messages, never more than the window without `msg_sent`."""
        sock = self.grp_socks[self.sender]
        for i in range(self.messages):
            await self.sem.acquire()
            ts = self.clock.next()
            msg = GrpMsg(i, ts, text_of(i, self.sender, self.key))
            self.by_ts[ts] = msg
            msg.t_send = time.perf_counter()
            await sock.send(frame("new_grp_msg", self.sender, self.key, msg.text, ts))


async def case_group(lab: Lab, name: str, args: argparse.Namespace,
                     ack: bool = True) -> dict[str, Any]:
    """One run of the group case (`fanout` with ack=False) on a fresh server."""
    async with lab.stage(name, "FULL") as stage:
        client = stage.client
        members = [f"55520{i:05d}" for i in range(args.group)]
        run = GroupRun(members, args.group_messages, args.window, ack)
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
        await asyncio.sleep(0.5)
        finished, measured = await stage.measure(t, run.done, [run.send_all], args.stall_timeout)

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
        left = await leftover(recv.items(), ("fetch_grp_msgs", "fetch_msgs"), args.drain_timeout,
                              t)
        await client.close_sockets()
        checks = t.checks(
            # a group message is complete with its msg_sent, a push to each other member and
            # each member's receipt back at the sender
            incomplete=run.messages - run.complete + sum(1 for m in msgs if len(m.receipts) < n),
            lost=sum(n - len(m.pushed) for m in msgs if m.acks),
            duplicate_pushes=sum(c - 1 for m in msgs for c in m.pushed.values())
                             + sum(c - 1 for m in msgs for c in m.receipts.values()),
            out_of_order=run.out_of_order,
            leftover_stored=left)
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
