"""The two-devices case (`devices`): the personal case with every user logged in twice (SPEC 7: a
login session is a device), each device holding its own receive socket and acknowledging everything
pushed to it, as a real client does.

Per pair: the sender S sends from its device 1; its device 2 gets a copy of each message it sends
(SPEC 7.2) and acknowledges it; each of the receiver R's two devices gets the message and
acknowledges it (SPEC 7.1); the first acknowledgement by R pushes the receipt to both of S's
devices. A message counts as delivered once both of R's devices have it.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from client import Clock, Handler, Sent, Sock, Tally, frame, leftover, text_of
from measure import ENGINES
from report import percentile
from stage import Lab

DEVICES = (1, 2)  # device 1 of S sends; device 2 of S gets the copies


@dataclass(slots=True)
class DevMsg(Sent):
    """A personal message seen by two devices of each user: per device of R its push, per device
    of S its receipt, and the copy on S's device 2 (perf_counter seconds, and how often each came)."""

    pushes: dict[int, int] = field(default_factory=dict)
    t_push: dict[int, float] = field(default_factory=dict)
    receipts: dict[int, int] = field(default_factory=dict)
    t_receipt: float = 0.0  # the first receipt, on either of S's devices
    copies: int = 0
    t_copy: float = 0.0
    complete: bool = False

    @property
    def delivered(self) -> bool:
        """Pushed to both of R's devices."""
        return len(self.pushes) == len(DEVICES)


class DevicePair:
    """A sender S and a receiver R with two devices each: eight sockets and S's messages."""

    def __init__(self, run: DevicesRun, s: str, r: str) -> None:
        self.run, self.s, self.r = run, s, r
        self.clock = Clock()
        self.window = asyncio.Semaphore(run.window)
        self.by_ts: dict[str, DevMsg] = {}
        self.last_pushed = {d: -1 for d in DEVICES}  # per device of R
        self.last_copy = -1
        self.s_send: Sock | None = None  # device 1's /ws/chat/personal/S/R/: new_msg, msg_sent
        self.s_ack: Sock | None = None  # device 2's /ws/chat/personal/S/R/: acknowledges copies
        self.r_send: dict[int, Sock] = {}  # R's /ws/chat/personal/R/S/ per device: msg_received
        self.ack_clocks = {("s", 2): Clock(), ("r", 1): Clock(), ("r", 2): Clock()}

    def answered(self, f: dict[str, Any], msg_from: str, msg_to: str) -> DevMsg | None:
        """The message that `f` (msg_sent or a receipt, from `msg_from` to `msg_to`) answers; None,
        counted as corrupted, when `f` does not match one."""
        msg = self.by_ts.get(f.get("message"))  # type: ignore[arg-type]
        if msg is None or f.get("msg_from") != msg_from or f.get("msg_to") != msg_to:
            self.run.tally.corrupted += 1
            return None
        return msg

    def pushed(self, f: dict[str, Any]) -> DevMsg | None:
        """The message that the pushed `new_msg` `f` (S's message to R, or its copy) is; None,
        counted as corrupted, when `f` does not match one."""
        msg = self.by_ts.get(f.get("sent_timestamp"))  # type: ignore[arg-type]
        if (msg is None or f.get("msg_from") != self.s or f.get("msg_to") != self.r
                or f.get("message") != msg.text):
            self.run.tally.corrupted += 1
            return None
        return msg

    # S's device 1, send socket
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

    # R's receive sockets, one per device: the push, acknowledged at once by that device
    def on_push(self, device: int) -> Handler:
        """The handler of the pushes to R's `device`, which acknowledges each at once on that
        device's `/ws/chat/personal/R/S/`."""
        clock = self.ack_clocks["r", device]

        async def handle(f: dict[str, Any]) -> None:
            now = time.perf_counter()
            msg = self.pushed(f)
            if msg is None:
                return
            count = msg.pushes.get(device, 0) + 1
            msg.pushes[device] = count
            if count > 1:
                return
            msg.t_push[device] = now
            if msg.idx < self.last_pushed[device]:
                self.run.out_of_order += 1
            self.last_pushed[device] = max(self.last_pushed[device], msg.idx)
            self.run.progress(msg)
            await self.r_send[device].send(frame("msg_received", self.r, self.s, msg.ts,
                                                 clock.next()))

        return handle

    # S's receive sockets: the receipt on both devices, the copy on device 2
    def on_receipt(self, device: int) -> Handler:
        """The handler of R's receipts pushed to S's `device` (SPEC 5.1: to every receive socket
        of S, so to both devices)."""

        def handle(f: dict[str, Any]) -> None:
            msg = self.answered(f, self.r, self.s)
            if msg is None:
                return
            count = msg.receipts.get(device, 0) + 1
            msg.receipts[device] = count
            if count == 1:
                msg.t_receipt = msg.t_receipt or time.perf_counter()
                self.run.progress(msg)

        return handle

    async def on_copy(self, f: dict[str, Any]) -> None:
        """The copy of S's own message on S's device 2 (SPEC 7.2), acknowledged at once with
        `msg_received` on that device's `/ws/chat/personal/S/R/`, `message` = its sent_timestamp."""
        now = time.perf_counter()
        msg = self.pushed(f)
        if msg is None:
            return
        msg.copies += 1
        if msg.copies > 1:
            return
        msg.t_copy = now
        if msg.idx < self.last_copy:
            self.run.out_of_order += 1
        self.last_copy = max(self.last_copy, msg.idx)
        self.run.progress(msg)
        assert self.s_ack is not None
        await self.s_ack.send(frame("msg_received", self.s, self.r, msg.ts,
                                    self.ack_clocks["s", 2].next()))

    def on_copy_to_sender(self, f: dict[str, Any]) -> None:
        """A `new_msg` on S's device 1, the one that sent it: SPEC 7.2 sends copies only to the
        user's other devices, so this frame is not one that was sent to this device."""
        self.run.tally.corrupted += 1

    async def send_all(self) -> None:
        """Send S's messages from device 1, never more than the window without `msg_sent`."""
        assert self.s_send is not None
        for i in range(self.run.messages):
            await self.window.acquire()
            ts = self.clock.next()
            msg = DevMsg(i, ts, text_of(i, self.s, self.r))
            self.by_ts[ts] = msg
            msg.t_send = time.perf_counter()
            await self.s_send.send(frame("new_msg", self.s, self.r, msg.text, ts))


class DevicesRun:
    """Every pair's progress: done once each message has its msg_sent, a push on each of R's
    devices, a receipt on each of S's devices and its copy on S's device 2."""

    def __init__(self, pairs: int, messages: int, window: int) -> None:
        self.pairs, self.messages, self.window = pairs, messages, window
        self.tally = Tally()
        self.out_of_order = 0
        self.complete = 0
        self.done = asyncio.Event()

    def progress(self, msg: DevMsg) -> None:
        """Note progress on `msg`; set `done` when every message is complete."""
        self.tally.last_progress = time.perf_counter()
        if (not msg.complete and msg.acks and msg.delivered
                and len(msg.receipts) == len(DEVICES) and msg.copies):
            msg.complete = True
            self.complete += 1
            if self.complete == self.pairs * self.messages:
                self.done.set()


async def case_devices(lab: Lab, name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One run of the two-devices case on a fresh server (synchronous = FULL, like `full`)."""
    async with lab.stage(name, "FULL") as stage:
        client = stage.client
        run = DevicesRun(args.pairs, args.messages, args.window)
        pairs = [DevicePair(run, f"55540{i:05d}", f"55550{i:05d}") for i in range(args.pairs)]
        users = [p.s for p in pairs] + [p.r for p in pairs]
        await client.register(users)  # device 1: the registration's session
        await client.login(users, device=2)  # device 2: a second login
        t = run.tally
        recv: list[tuple[str, Sock]] = []  # every receive socket, for the leftover check
        for p in pairs:
            p.s_send = await client.connect(p.s, f"/ws/chat/personal/{p.s}/{p.r}/", t,
                                            {"msg_sent": p.on_msg_sent, "error": p.on_s_error})
            recv.append((p.s, await client.connect(
                p.s, f"/ws/chat/special/{p.s}/", t,
                {"msg_received": p.on_receipt(1), "new_msg": p.on_copy_to_sender})))
            recv.append((p.s, await client.connect(
                p.s, f"/ws/chat/special/{p.s}/", t,
                {"msg_received": p.on_receipt(2), "new_msg": p.on_copy}, device=2)))
            p.s_ack = await client.connect(p.s, f"/ws/chat/personal/{p.s}/{p.r}/", t, device=2)
            for d in DEVICES:
                recv.append((p.r, await client.connect(p.r, f"/ws/chat/special/{p.r}/", t,
                                                       {"new_msg": p.on_push(d)}, device=d)))
                p.r_send[d] = await client.connect(p.r, f"/ws/chat/personal/{p.r}/{p.s}/", t,
                                                   device=d)
        await asyncio.sleep(0.5)  # let connection set-up work (presence, ...) finish
        mem_before = stage.mem()
        finished, measured = await stage.measure(t, run.done, [p.send_all for p in pairs],
                                                 args.stall_timeout)
        mem_after = stage.mem()

        msgs = [m for p in pairs for m in p.by_ts.values()]
        planned = args.pairs * args.messages
        delivered = [m for m in msgs if m.delivered]
        copies = [m for m in msgs if m.copies]
        first_send = min((m.t_send for m in msgs), default=0.0)
        last_push = max((max(m.t_push.values()) for m in delivered), default=first_send)
        span = last_push - first_send
        # a message is delivered when its later push arrives
        push_lat = [(max(m.t_push.values()) - m.t_send) * 1000 for m in delivered]
        copy_lat = [(m.t_copy - m.t_send) * 1000 for m in copies]
        receipt_lat = [(m.t_receipt - m.t_send) * 1000 for m in msgs if m.receipts]

        left = await leftover(recv, ("fetch_msgs",), args.drain_timeout, t)
        await client.close_sockets()
        n = len(DEVICES)
        checks = t.checks(
            incomplete=planned - run.complete,
            # per device: accepted by msg_sent, never pushed to a device of R, or no copy on S's
            # device 2
            lost=sum(n - len(m.pushes) + (0 if m.copies else 1) for m in msgs if m.acks),
            # per device: a push, receipt or copy that arrived twice on the same device
            duplicate_pushes=sum(sum(c - 1 for c in m.pushes.values())
                                 + sum(c - 1 for c in m.receipts.values())
                                 + max(0, m.copies - 1) for m in msgs),
            out_of_order=run.out_of_order,
            leftover_stored=left)
        per_1000 = 1000 / len(delivered) if delivered else None
        return {
            "case": "personal FULL, two devices per user",
            "synchronous": "FULL", "devices_per_user": n,
            "pairs": args.pairs, "messages": args.messages, "window": args.window,
            "planned": planned, "sent": len(msgs), "delivered": len(delivered),
            "copies": len(copies),
            "pushes": sum(len(m.pushes) for m in msgs),
            "receipts": sum(len(m.receipts) for m in msgs),
            "finished": finished,
            "delivered_per_s": len(delivered) / span if span > 0 else 0.0,
            "server_cpu_s_per_1000": measured["server_cpu_s"] * per_1000 if per_1000 else None,
            "client_cpu_s_per_1000": measured["client_cpu_s"] * per_1000 if per_1000 else None,
            **{f"{part}_cpu_s_per_1000": measured[f"{part}_cpu_s"] * per_1000 if per_1000 else None
               for part in (*ENGINES, "total") if f"{part}_cpu_s" in measured},
            "push_ms": {"p50": percentile(push_lat, 50), "p99": percentile(push_lat, 99),
                        "max": max(push_lat, default=None)},
            "copy_ms": {"p50": percentile(copy_lat, 50), "p99": percentile(copy_lat, 99)},
            "receipt_ms": {"p50": percentile(receipt_lat, 50), "p99": percentile(receipt_lat, 99)},
            "measured": measured,
            "server_rss_before": mem_before["VmRSS"], "server_rss_after": mem_after["VmRSS"],
            "server_rss_peak": mem_after["VmHWM"],
            "checks": checks, "error_texts": t.error_texts, "other_frames": t.other_frames,
        }
