"""The Web Push case (`push`, SPEC 9): how long after its commit a message reaches the push service.

A push service runs in the bench process on 127.0.0.1 (the tests' `helpers.pushservice`: it
records each request and answers 201). The server runs with `push.allow_private_endpoints = true`
(the service is on 127.0.0.1), `push.min_interval_seconds = 0` (every message is pushed: the
figure is the sender's latency, not its throttle) and `push.previews = true` (each push carries its
message's text, which tells the pushes apart). `--push-devices` recipients (default 50) register,
and each subscribes its one device with a browser-like subscription and opens no socket: every
device is offline. One sender S, with a personal socket to each recipient, sends `--push-messages`
(default 1,000) `new_msg`s to them in turn, never more than `--window` without their `msg_sent`.

Figures: commit -> push, from S receiving the message's `msg_sent` (sent after the commit) to the
push service receiving the push request (its handler starting, before the body is read), p50 /
p99 / max in ms (negative when the push arrived before the `msg_sent`); send -> push as well;
server CPU per push. The bodies are decrypted after the measured phase; each message must be
pushed exactly once, to its recipient's subscription, with its text: `lost`, `duplicate_pushes`,
`corrupted` count what was not. One exception, by design (chatserver/push.py): messages of one
conversation that wait in the same batch of the sender are pushed once, for the newest (its Topic
would replace the older ones at the push service anyway); an older one is then `collapsed`, not
lost, and has no latency of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from helpers.pushservice import Browser, PushService, Received

from client import Clock, Sent, Sock, Tally, frame, text_of
from report import percentile
from stage import Lab

# What the server runs with in this case (see above).
PUSH_SETTINGS = {"push": {"allow_private_endpoints": True, "min_interval_seconds": 0.0,
                          "previews": True}}


@dataclass(slots=True)
class PushMsg(Sent):
    """A message to `to`, with the arrival of its push at the push service (perf_counter s)."""

    to: str = ""
    t_push: float = 0.0
    pushes: int = 0


class PushRun:
    """S, the recipients with their subscriptions, the messages, and the arrivals."""

    def __init__(self, args: argparse.Namespace, service: PushService) -> None:
        self.args = args
        self.service = service
        self.s = "5557000000"
        self.recipients = [f"55571{i:05d}" for i in range(args.push_devices)]
        self.browsers = {r: Browser.subscribe(service, f"dev{r}") for r in self.recipients}
        self.tally = Tally()
        self.clock = Clock()
        self.window = asyncio.Semaphore(args.window)
        self.by_ts: dict[str, PushMsg] = {}
        self.socks: dict[str, Sock] = {}
        self.by_text: dict[str, PushMsg] = {}
        self.by_browser = {b.id: (r, b) for r, b in self.browsers.items()}
        self.newest: dict[str, PushMsg] = {}  # per recipient, the last message sent to it
        self.sent_all = False
        self.wrong = 0  # pushes that match no message as sent
        self.duplicates = 0  # pushes of a message after its first
        self.done = asyncio.Event()

    def on_msg_sent(self, f: dict[str, Any]) -> None:
        msg = self.by_ts.get(f.get("message"))  # type: ignore[arg-type]
        if msg is None or f.get("msg_from") != self.s or f.get("msg_to") != msg.to:
            self.tally.corrupted += 1
            return
        msg.acks += 1
        if msg.acks == 1:
            msg.t_ack = time.perf_counter()
            self.tally.last_progress = msg.t_ack
            self.window.release()

    async def count_arrivals(self) -> None:
        """Pair each push with its message as it arrives (the arrival time was taken by the
        push service before; the decryption here is client CPU, not latency)."""
        while True:
            self.take(await self.service.arrivals.get())
            self.tally.last_progress = time.perf_counter()
            self.check_done()

    def take(self, got: Received) -> None:
        """Decrypt push `got` with its subscription's keys and note it on its message."""
        to, browser = self.by_browser.get(got.id, ("", None))
        try:
            if browser is None:
                raise ValueError(f"unknown subscription {got.id}")
            payload = json.loads(browser.decrypt(got.body))
            msg = self.by_text[payload["text"]]
            if msg.to != to or payload["conversation"] != f"personal:{self.s}":
                raise ValueError("pushed to the wrong device or conversation")
        except (KeyError, ValueError, TypeError):
            self.wrong += 1
            return
        msg.pushes += 1
        if msg.pushes == 1:
            msg.t_push = got.at
        else:
            self.duplicates += 1

    def check_done(self) -> None:
        """Done once everything is sent and the newest message to each recipient (which no
        later one can stand for) has its push."""
        if self.sent_all and all(m.pushes for m in self.newest.values()):
            self.done.set()

    async def send_all(self) -> None:
        """S's messages, to the recipients in turn, at most `--window` without `msg_sent`."""
        for i in range(self.args.push_messages):
            await self.window.acquire()
            to = self.recipients[i % len(self.recipients)]
            ts = self.clock.next()
            msg = PushMsg(i, ts, text_of(i, self.s, to), to=to)
            self.by_ts[ts] = self.by_text[msg.text] = self.newest[to] = msg
            msg.t_send = time.perf_counter()
            await self.socks[to].send(frame("new_msg", self.s, to, msg.text, ts))
        self.sent_all = True
        self.check_done()

    def collapsed(self) -> list[PushMsg]:
        """Messages without a push of their own whose recipient got a push of a later message of
        the same conversation (pushed for both: see the module's docstring)."""
        newest_pushed: dict[str, int] = {}
        for m in self.by_ts.values():
            if m.pushes:
                newest_pushed[m.to] = max(newest_pushed.get(m.to, -1), m.idx)
        return [m for m in self.by_ts.values()
                if not m.pushes and m.idx < newest_pushed.get(m.to, -1)]


async def case_push(lab: Lab, name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One run of the push case on a fresh server, with the push service in this process."""
    service = await PushService().start()
    try:
        async with lab.stage(name, "FULL", settings=PUSH_SETTINGS) as stage:
            client = stage.client
            run = PushRun(args, service)
            t = run.tally
            await client.register([run.s, *run.recipients])
            for r, browser in run.browsers.items():
                await client.post_json(r, "/chat/push/subscription", browser.json())
            for r in run.recipients:
                run.socks[r] = await client.connect(run.s, f"/ws/chat/personal/{run.s}/{r}/", t,
                                                    {"msg_sent": run.on_msg_sent})
            await asyncio.sleep(0.5)  # let connection set-up work (presence, ...) finish
            counter = asyncio.ensure_future(run.count_arrivals())
            try:
                finished, measured = await stage.measure(t, run.done, [run.send_all],
                                                         args.stall_timeout)
            finally:
                counter.cancel()
            await client.close_sockets()
        msgs = list(run.by_ts.values())
        collapsed = run.collapsed()
        pushed = [m for m in msgs if m.pushes]
        commit_lat = [(m.t_push - m.t_ack) * 1000 for m in pushed if m.acks]
        send_lat = [(m.t_push - m.t_send) * 1000 for m in pushed]
        t.corrupted += run.wrong
        checks = t.checks(
            incomplete=args.push_messages - sum(1 for m in msgs if m.acks),
            lost=sum(1 for m in msgs if m.acks and not m.pushes and m not in collapsed),
            duplicate_pushes=run.duplicates, out_of_order=0, leftover_stored=0)
        span = max((m.t_push for m in pushed), default=0.0) - min(
            (m.t_send for m in msgs), default=0.0)
        return {
            "case": "push", "devices": args.push_devices, "messages": args.push_messages,
            "window": args.window, "sent": len(msgs), "pushed": len(pushed),
            "collapsed": len(collapsed),
            "finished": finished,
            "pushes_per_s": len(pushed) / span if pushed and span > 0 else None,
            "commit_push_ms": {"p50": percentile(commit_lat, 50), "p99": percentile(commit_lat, 99),
                               "max": max(commit_lat, default=None)},
            "send_push_ms": {"p50": percentile(send_lat, 50), "p99": percentile(send_lat, 99)},
            "server_cpu_ms_per_push": (measured["server_cpu_s"] / len(pushed) * 1000
                                       if pushed else None),
            "measured": measured,
            "checks": checks, "error_texts": t.error_texts, "other_frames": t.other_frames,
        }
    finally:
        await service.stop()
