"""Chat loads against server processes (helpers.server), for the tests of tests/system.

- A chat load (`ChatNet`): users with one receive socket each, a personal send socket to their
  partner and a group send socket, pumps that keep a window of `new_msg` / `new_grp_msg` frames
  waiting for their `msg_sent`, and receivers that acknowledge what they get.
- A `Ledger` of what every client saw, per message identity (sender, recipient or group,
  sent_timestamp) and per recipient: written, `msg_sent` seen, pushed, acknowledgement written,
  acknowledgement proven committed (the receipt pushed to the sender's receive socket, which the
  server pushes only after the commit), and delivered after the restart. `Ledger.verdict()` turns
  it into the figures the tests assert on.
- A `Pair` that keeps chatting one message at a time and measures its latencies (slow peers).

Nothing here synchronises with a sleep: waits poll a condition with a deadline (`until`), and every
network wait a test makes has a timeout. Background socket readers have none; they end when their
socket closes and are cancelled by their owner in any case.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import ClientWebSocketResponse, WSMsgType

from chatserver.config import Database
from helpers.accounts import client, create_group, register, ws_open
from helpers.backends import db_rows
from helpers.frames import frame, micros
from helpers.server import ServerProcess
from helpers.timing import NET_TIMEOUT, until

# The crash tests (marker `crash`): kills per test, and the seed of their random kill moments
# (printed, so that CRASH_SEED repeats a run).
CRASH_RUNS = int(os.environ.get("CRASH_RUNS", "3"))
CRASH_SEED = int(os.environ.get("CRASH_SEED", str(time.time_ns() % 1_000_000_007)))

WS = ClientWebSocketResponse
# (kind "p" personal / "g" group, sender, recipient phone or group key, sent_timestamp in µs)
MsgId = tuple[str, str, str, int]
# (message, the recipient it is delivered to)
Unit = tuple[MsgId, str]


# -- the server process under load --------------------------------------------------------------


async def kill_9(server: ServerProcess, net: ChatNet | None = None) -> None:
    """SIGKILL the server process itself (stopping `net`'s pumps at once) and reap it."""
    server.send_signal(signal.SIGKILL)
    if net is not None:
        net.stop_load()
    code = await server.wait_exit()
    assert code == -signal.SIGKILL, f"exit status {code}:\n{server.output()}"


def phones(n: int, prefix: str) -> list[str]:
    """`n` phones unique to this process and prefix (SPEC 1: 10-15 digits)."""
    return [f"{prefix}{os.getpid() % 100_000:05d}{i:04d}" for i in range(n)]


MESSAGE_TABLES = ("personal_messages", "group_messages", "group_pending")


def message_rows(db: Path) -> dict[str, int]:
    """Row counts of MESSAGE_TABLES in the SQLite file `db` (read-only: helpers.backends.db_rows)."""
    database = Database(path=str(db))
    return {t: db_rows(database, f"SELECT count(*) FROM {t}")[0][0] for t in MESSAGE_TABLES}


# -- client timestamps -----------------------------------------------------------------------------

# Client clocks hours behind the server's, within its security.timestamp_skew_seconds (a day);
# every call a new instant (a millisecond later) with a non-zero µs part.
_instants = itertools.count(1)
_BASE = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=20)


def next_stamp() -> tuple[int, str]:
    """A fresh client timestamp: (µs since the epoch, `YYYY-MM-DD HH:MM:SS.ffffff`)."""
    text = (_BASE + timedelta(milliseconds=next(_instants), microseconds=17)).strftime(
        "%Y-%m-%d %H:%M:%S.%f")
    return micros(text), text


# -- the ledger ---------------------------------------------------------------------------------


@dataclass
class Verdict:
    """What a ledger proves, as counts (the tests print them) and examples (for failures)."""

    written: int
    confirmed: int          # msg_sent seen
    delivered_before: int   # pushes before the kill / stop
    delivered_after: int    # deliveries after the restart
    acked_before: int
    proven_before: int
    lost: list[str]
    dup_after_ack: list[str]
    dup_deliveries: list[str]
    bad: list[str]
    errors: list[str]
    order: list[str]

    def summary(self) -> str:
        return (f"written {self.written}, msg_sent seen {self.confirmed}, pushed before "
                f"{self.delivered_before}, acks written {self.acked_before} (proven "
                f"{self.proven_before}), delivered after restart {self.delivered_after}, "
                f"lost {len(self.lost)}, duplicates after proven acknowledgement "
                f"{len(self.dup_after_ack)}")

    def assert_clean(self) -> None:
        """Every guarantee holds; the message shows the first examples of each breach."""
        problems = {"lost": self.lost, "delivered again after a proven acknowledgement":
                    self.dup_after_ack, "delivered twice in one phase": self.dup_deliveries,
                    "unknown or corrupted frames": self.bad, "error frames": self.errors,
                    "fetch out of order": self.order}
        broken = {k: v for k, v in problems.items() if v}
        assert not broken, self.summary() + "\n" + "\n".join(
            f"{k} ({len(v)}): {v[:5]}" for k, v in broken.items())


@dataclass
class Ledger:
    """What the clients of one run saw. `phase` is "before" until the kill or stop, then "after".

    Deliveries, acknowledgements and proofs are recorded per Unit (message, recipient).
    """

    ack_probability: float = 1.0
    rng: random.Random = field(default_factory=random.Random)
    phase: str = "before"
    texts: dict[MsgId, str] = field(default_factory=dict)
    recipients: dict[MsgId, frozenset[str]] = field(default_factory=dict)
    confirmed: set[MsgId] = field(default_factory=set)
    delivered: dict[str, Counter[Unit]] = field(
        default_factory=lambda: {"before": Counter(), "after": Counter()})
    acked: dict[str, set[Unit]] = field(default_factory=lambda: {"before": set(), "after": set()})
    proven: dict[str, set[Unit]] = field(default_factory=lambda: {"before": set(), "after": set()})
    pending_lists: dict[MsgId, set[str]] = field(default_factory=dict)  # fetch_grp_msgs, after
    bad: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    order: list[str] = field(default_factory=list)
    closes: list[tuple[str, str, int | None]] = field(default_factory=list)  # (phase, label, code)

    def written(self, mid: MsgId, text: str, recipients: Iterable[str]) -> None:
        self.texts[mid] = text
        self.recipients[mid] = frozenset(recipients)

    def in_flight(self) -> int:
        """Messages written whose every acknowledgement is not yet proven committed."""
        proven = self.proven["before"]
        return sum(1 for mid, rs in self.recipients.items()
                   if any((mid, r) not in proven for r in rs))

    def check_delivery(self, mid: MsgId, recipient: str, text: object, where: str) -> bool:
        """True when `mid` was written for `recipient` with exactly `text`; else noted as bad."""
        if mid not in self.texts:
            self.bad.append(f"{where}: unknown message {mid}")
            return False
        if recipient not in self.recipients[mid]:
            self.bad.append(f"{where}: {mid} delivered to {recipient}, not a recipient")
            return False
        if text != self.texts[mid]:
            self.bad.append(f"{where}: {mid} body {text!r} != {self.texts[mid]!r}")
            return False
        return True

    def committed_known(self, mid: MsgId) -> bool:
        """The server has said it committed `mid`: msg_sent, or a push or fetch of it to anyone."""
        if mid in self.confirmed:
            return True
        return any((mid, r) in self.delivered[p] for p in ("before", "after")
                   for r in self.recipients[mid])

    def verdict(self) -> Verdict:
        before, after = self.delivered["before"], self.delivered["after"]
        lost, dup_after_ack, dups = [], [], []
        for mid, rs in self.recipients.items():
            committed = self.committed_known(mid)
            for r in rs:
                unit = (mid, r)
                if committed and before[unit] + after[unit] == 0:
                    lost.append(f"{unit}: committed, never delivered")
                elif committed and unit not in self.acked["before"] and after[unit] == 0:
                    lost.append(f"{unit}: committed, never acknowledged, not delivered after restart")
                if unit in self.proven["before"] and after[unit]:
                    dup_after_ack.append(f"{unit}: proven acknowledged, delivered {after[unit]}x after")
                if unit in self.proven["before"] and r in self.pending_lists.get(mid, ()):
                    dup_after_ack.append(f"{unit}: proven acknowledged, still pending after restart")
        for phase, counts in self.delivered.items():
            dups += [f"{unit} {n}x {phase}" for unit, n in counts.items() if n > 1]
        for phase in ("before", "after"):
            if extra := self.proven[phase] - self.acked[phase]:
                self.bad.append(f"receipts for acknowledgements never written ({phase}): "
                                f"{sorted(extra)[:3]}")
        return Verdict(
            written=len(self.texts), confirmed=len(self.confirmed),
            delivered_before=sum(before.values()), delivered_after=sum(after.values()),
            acked_before=len(self.acked["before"]), proven_before=len(self.proven["before"]),
            lost=lost, dup_after_ack=dup_after_ack, dup_deliveries=dups, bad=list(self.bad),
            errors=list(self.errors), order=list(self.order))


# -- chat clients -------------------------------------------------------------------------------


def _body(mid: MsgId, rng: random.Random) -> str:
    """A message body that names its identity and carries some non-ASCII text of random length."""
    kind, sender, target, us = mid
    return f"{kind}:{sender}>{target}@{us} " + "é🙂x" * rng.randrange(0, 60)


async def _frames(ws: WS, ledger: Ledger, label: str) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects arriving on `ws` until it ends; then notes in `ledger.closes` the code of
    the server's close frame (None when the connection just dropped, as after a kill)."""
    code: int | None = None
    while True:
        msg = await ws.receive()
        if msg.type is WSMsgType.TEXT:
            data = json.loads(msg.data)
            if isinstance(data, dict):
                yield data
            else:
                ledger.bad.append(f"{label}: not an object: {msg.data!r}")
            continue
        if msg.type is WSMsgType.CLOSE:
            code = int(msg.data)
        elif msg.type is WSMsgType.BINARY:
            ledger.bad.append(f"{label}: binary frame")
            continue
        break
    ledger.closes.append((ledger.phase, label, code))


class ChatUser:
    """One user's sockets: receive, personal send sockets (one per peer), and a group socket.

    The receive socket's reader records every delivery in the ledger. Before the kill or stop it
    acknowledges each with probability `ledger.ack_probability` (the rest stay stored); after it,
    it collects them in `to_ack` for `send_acks`, which the drain sends once every receive socket
    is served (so that no receipt push can miss its sender).
    """

    def __init__(self, phone: str, session: aiohttp.ClientSession, ledger: Ledger) -> None:
        self.phone = phone
        self.session = session
        self.ledger = ledger
        self.recv: WS | None = None
        self.personal: dict[str, WS] = {}
        self.group: WS | None = None
        self.group_key = ""
        self.windows: dict[str, asyncio.Semaphore] = {}  # target -> frames awaiting msg_sent
        self.readers: list[asyncio.Task[None]] = []
        self.pumps: list[asyncio.Task[None]] = []
        self.fetch_done: asyncio.Queue[str] = asyncio.Queue()
        self.to_ack: list[tuple[WS, dict[str, str], Unit]] = []
        self._fetching: list[MsgId] = []

    def sockets(self) -> list[tuple[str, WS]]:
        socks = [("recv", self.recv)] + [(f"personal->{p}", ws) for p, ws in self.personal.items()]
        socks.append(("group", self.group))
        return [(f"{self.phone}:{label}", ws) for label, ws in socks if ws is not None]

    async def connect(self, server: ServerProcess, peers: list[str], group_key: str | None,
                      window: int) -> None:
        """Open the sockets and start their readers (the receive socket is proven served later)."""
        self.recv = await ws_open(self.session, server.ws_url(f"/ws/chat/special/{self.phone}/"))
        self.readers.append(asyncio.create_task(self._read_receive(self.recv)))
        for peer in peers:
            ws = await ws_open(self.session, server.ws_url(f"/ws/chat/personal/{self.phone}/{peer}/"))
            self.personal[peer] = ws
            self.windows[peer] = asyncio.Semaphore(window)
            self.readers.append(asyncio.create_task(self._read_send(ws, "p", peer)))
        if group_key is not None:
            self.group_key = group_key
            self.group = await ws_open(self.session,
                                       server.ws_url(f"/ws/chat/group/{self.phone}/{group_key}/"))
            self.windows[group_key] = asyncio.Semaphore(window)
            self.readers.append(asyncio.create_task(self._read_send(self.group, "g", group_key)))

    async def fetch(self, command: str) -> None:
        """Send a fetch on the receive socket and wait for its last chunk (the reader records it)."""
        assert self.recv is not None
        await self.recv.send_str(json.dumps({"command": command, "msg_to": self.phone}))
        async with asyncio.timeout(NET_TIMEOUT):
            got = await self.fetch_done.get()
        assert got == command, (got, command)

    async def fetch_both(self) -> None:
        await self.fetch("fetch_msgs")
        await self.fetch("fetch_grp_msgs")

    def start_pumps(self, group_members: list[str], stop: asyncio.Event) -> None:
        for peer, ws in self.personal.items():
            self.pumps.append(asyncio.create_task(self._pump(ws, "p", peer, [peer], stop)))
        if self.group is not None:
            others = [m for m in group_members if m != self.phone]
            self.pumps.append(asyncio.create_task(
                self._pump(self.group, "g", self.group_key, others, stop)))

    async def _pump(self, ws: WS, kind: str, target: str, recipients: list[str],
                    stop: asyncio.Event) -> None:
        window = self.windows[target]
        while not stop.is_set():
            await window.acquire()
            if stop.is_set() or ws.closed:
                return
            try:
                await self._write_one(ws, kind, target, recipients)
            except (ConnectionError, RuntimeError):
                return

    async def _read_send(self, ws: WS, kind: str, target: str) -> None:
        """A send socket's answers: msg_sent (opens the window), error frames (noted)."""
        label = f"{self.phone}:{kind}->{target}"
        async for data in _frames(ws, self.ledger, label):
            if data.get("command") == "msg_sent" and data.get("msg_to") == target \
                    and data.get("msg_from") == self.phone:
                mid = (kind, self.phone, target, micros(data["message"]))
                if mid not in self.ledger.texts:
                    self.ledger.bad.append(f"{label}: msg_sent for unknown {mid}")
                self.ledger.confirmed.add(mid)
                self.windows[target].release()
            elif data.get("command") == "error":
                self.ledger.errors.append(f"{self.ledger.phase} {label}: {data}")
            else:
                self.ledger.bad.append(f"{label}: unexpected {data}")

    async def _read_receive(self, ws: WS) -> None:
        label = f"{self.phone}:recv"
        async for data in _frames(ws, self.ledger, label):
            await self._on_receive(data, label)

    def _identify(self, msg_from: str, sent: str) -> tuple[MsgId, str | None]:
        """The message a new_msg from `msg_from` ("<grp>-<sender>" or a phone) names, and the
        group key (None for personal)."""
        if "-" in msg_from:
            grp, sender = msg_from.split("-", 1)
            return ("g", sender, grp, micros(sent)), grp
        return ("p", msg_from, self.phone, micros(sent)), None

    async def _on_receive(self, data: dict[str, Any], label: str) -> None:
        command = data.get("command")
        ledger = self.ledger
        if command == "new_msg":
            await self._delivered(data, f"{label} push")
        elif command in ("fetch_msgs", "fetch_grp_msgs"):
            for item in data.get("messages", []):
                if command == "fetch_grp_msgs" and "-" not in str(item.get("msg_from")):
                    ledger.bad.append(f"{label}: personal message in fetch_grp_msgs {item}")
                if item.get("command") != "new_msg" or item.get("msg_to") != self.phone:
                    ledger.bad.append(f"{label}: malformed fetched message {item}")
                mid = await self._delivered(item, f"{label} {command}")
                self._fetching.append(mid)
                if command == "fetch_grp_msgs":
                    pending = item.get("pending")
                    if not isinstance(pending, list) or self.phone not in pending or \
                            not set(pending) <= ledger.recipients.get(mid, frozenset()):
                        ledger.bad.append(f"{label}: bad pending list of {mid}: {item}")
                    else:
                        ledger.pending_lists.setdefault(mid, set()).update(pending)
            if data.get("all") == "True":
                self._check_order(self._fetching, f"{label} {command}")
                self._fetching = []
                self.fetch_done.put_nowait(command)
        elif command == "msg_received":
            msg_from = str(data.get("msg_from"))
            if "-" in msg_from:
                grp, receiver = msg_from.split("-", 1)
                mid: MsgId = ("g", self.phone, grp, micros(data["message"]))
            else:
                receiver = msg_from
                mid = ("p", self.phone, receiver, micros(data["message"]))
            if data.get("msg_to") != self.phone or mid not in ledger.texts:
                ledger.bad.append(f"{label}: receipt for unknown {mid}: {data}")
            ledger.proven[ledger.phase].add((mid, receiver))
        elif command == "error":
            ledger.errors.append(f"{ledger.phase} {label}: {data}")
        elif command not in ("presence", "msg_read", "is_typing"):
            ledger.bad.append(f"{label}: unexpected {data}")

    async def _delivered(self, item: dict[str, Any], where: str) -> MsgId:
        """Record one delivery (push or fetched) and acknowledge it (now, or later after a restart)."""
        ledger = self.ledger
        sent = str(item.get("sent_timestamp"))
        mid, grp = self._identify(str(item.get("msg_from")), sent)
        unit = (mid, self.phone)
        if item.get("msg_to") != self.phone:
            ledger.bad.append(f"{where}: msg_to is not me: {item}")
        if not ledger.check_delivery(mid, self.phone, item.get("message"), where):
            return mid
        ledger.delivered[ledger.phase][unit] += 1
        if grp is None:
            ws = self.personal.get(mid[1])
            ack = frame("msg_received", self.phone, mid[1], sent, next_stamp()[1])
        else:
            ws = self.group
            ack = frame("grp_msg_received", self.phone, mid[1], sent, next_stamp()[1])
        if ws is None:
            ledger.bad.append(f"{where}: no socket to acknowledge {mid}")
            return mid
        if ledger.phase == "after":
            self.to_ack.append((ws, ack, unit))
        elif ledger.rng.random() < ledger.ack_probability:
            ledger.acked["before"].add(unit)  # before the write: it may be committed from now on
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_str(json.dumps(ack))
        return mid

    def _check_order(self, mids: list[MsgId], where: str) -> None:
        """SPEC 5.1 / 5.2: a sender's messages come oldest first (each pump sends in clock order)."""
        last: dict[tuple[str, str, str], int] = {}
        for kind, sender, target, us in mids:
            key = (kind, sender, target)
            if us <= last.get(key, -1):
                self.ledger.order.append(f"{where}: {key} {us} after {last[key]}")
            last[key] = us

    async def flush(self, group_members: list[str], timeout: float) -> None:
        """Write one more message on each of this user's open send sockets, then wait until
        every message it wrote has its msg_sent. A socket's writes commit in the order of its
        frames, so every frame written on them before (acknowledgements too) is committed by
        then. For a server that keeps serving while another is killed."""
        for peer, ws in self.personal.items():
            await self._write_one(ws, "p", peer, [peer])
        if self.group is not None:
            await self._write_one(self.group, "g", self.group_key,
                                  [m for m in group_members if m != self.phone])
        mine = [mid for mid in self.ledger.texts if mid[1] == self.phone]
        await until(lambda: all(mid in self.ledger.confirmed for mid in mine), timeout,
                    lambda: f"{self.phone}: msg_sent of "
                            f"{sum(mid not in self.ledger.confirmed for mid in mine)} of "
                            f"{len(mine)} messages")

    async def _write_one(self, ws: WS, kind: str, target: str, recipients: list[str]) -> None:
        """Write one new message (recorded in the ledger first) on send socket `ws`."""
        command = "new_msg" if kind == "p" else "new_grp_msg"
        us, stamp = next_stamp()
        mid = (kind, self.phone, target, us)
        text = _body(mid, self.ledger.rng)
        self.ledger.written(mid, text, recipients)
        await ws.send_str(json.dumps(frame(command, self.phone, target, text, stamp)))

    async def send_acks(self) -> list[Unit]:
        """Send the acknowledgements collected after the restart; returns their units."""
        units = []
        for ws, ack, unit in self.to_ack:
            self.ledger.acked["after"].add(unit)
            await ws.send_str(json.dumps(ack))
            units.append(unit)
        self.to_ack = []
        return units

    async def close(self) -> None:
        """Stop pumps and readers and close the sockets (each close bounded)."""
        for task in self.pumps + self.readers:
            task.cancel()
        await asyncio.gather(*self.pumps, *self.readers, return_exceptions=True)
        for _, ws in self.sockets():
            with contextlib.suppress(Exception):
                async with asyncio.timeout(NET_TIMEOUT):
                    await ws.close()
        self.pumps, self.readers = [], []


@dataclass
class Party:
    """The people of a load test: their logged-in sessions, who talks to whom, and the group."""

    phones: list[str]
    sessions: dict[str, aiohttp.ClientSession]
    pairs: list[tuple[str, str]]  # each pair talks both ways
    members: list[str]            # the group's participants
    group_key: str

    def peers(self, phone: str) -> list[str]:
        return [b for a, b in self.pairs if a == phone] + [a for a, b in self.pairs if b == phone]

    async def close(self) -> None:
        for session in self.sessions.values():
            await session.close()


async def make_party(server: ServerProcess, phones: list[str], pairs: list[tuple[str, str]],
                     members: list[str]) -> Party:
    """Register every phone (each with its own cookie jar) and create the group."""
    sessions = {p: client() for p in phones}
    party = Party(phones, sessions, pairs, members, "")
    try:
        for phone in phones:
            await register(sessions[phone], server, phone)
        party.group_key = await create_group(sessions[members[0]], server, "crew", members[1:])
    except BaseException:
        await party.close()
        raise
    return party


# Where a ChatNet's users connect: one server for all, or each phone's own (the scaled
# deployment: several processes sharing one store and one hub).
Where = ServerProcess | Mapping[str, ServerProcess]


def server_of(where: Where, phone: str) -> ServerProcess:
    return where if isinstance(where, ServerProcess) else where[phone]


class ChatNet:
    """Every user of a party connected to one server (or each to theirs, see `Where`), recording
    into one ledger."""

    def __init__(self, party: Party, ledger: Ledger) -> None:
        self.party = party
        self.ledger = ledger
        self.users = [ChatUser(p, party.sessions[p], ledger) for p in party.phones]
        self.stop = asyncio.Event()

    async def connect(self, server: Where, window: int) -> None:
        """Open every socket, then prove every receive socket served (a fetch round trip each:
        pushes are registered before a receive socket reads its first frame)."""
        self.stop = asyncio.Event()
        for user in self.users:
            grp = self.party.group_key if user.phone in self.party.members else None
            await user.connect(server_of(server, user.phone), self.party.peers(user.phone), grp,
                               window)
        for user in self.users:
            await user.fetch_both()

    def start_load(self) -> None:
        for user in self.users:
            user.start_pumps(self.party.members, self.stop)

    def stop_load(self) -> None:
        self.stop.set()
        for user in self.users:
            for sem in user.windows.values():  # wake pumps blocked on a full window
                sem.release()

    def sockets(self) -> list[tuple[str, WS]]:
        return [s for user in self.users for s in user.sockets()]

    async def wait_all_closed(self, timeout: float) -> None:
        """Wait until every reader has seen its socket end (after a kill or a stop)."""
        readers = [t for user in self.users for t in user.readers]
        await until(lambda: all(t.done() for t in readers), timeout,
                    lambda: f"{sum(not t.done() for t in readers)} sockets still open")

    async def close(self) -> None:
        for user in self.users:
            await user.close()

    async def drain(self, server: Where, db: Path | Callable[[], Awaitable[dict[str, int]]]) -> None:
        """After a restart: connect, fetch everything (recorded as delivered after), acknowledge
        it all, wait for every receipt, fetch again (must be empty), and find no message rows
        (in the SQLite file `db`, or as counted by `db()`, e.g. in PostgreSQL)."""
        self.ledger.phase = "after"
        await self.connect(server, window=1)
        units = [u for user in self.users for u in await user.send_acks()]
        proven = self.ledger.proven["after"]
        await until(lambda: all(u in proven for u in units), NET_TIMEOUT,
                    lambda: f"receipts of {sum(u not in proven for u in units)} of "
                            f"{len(units)} acknowledgements after the restart")
        before = sum(self.ledger.delivered["after"].values())
        for user in self.users:
            await user.fetch_both()
        again = sum(self.ledger.delivered["after"].values()) - before
        assert again == 0, f"{again} messages still fetched after every acknowledgement"
        rows = message_rows(db) if isinstance(db, Path) else await db()
        assert rows == dict.fromkeys(MESSAGE_TABLES, 0), f"rows left after the drain: {rows}"


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


# -- a pair that keeps chatting -------------------------------------------------------------------


@dataclass
class Pair:
    """Two users: `sender` writes on its personal socket to `receiver`, whose receive socket gets
    the push. `chat` sends one message at a time and records send -> push latencies."""

    sender: str
    receiver: str
    send_ws: aiohttp.ClientWebSocketResponse
    recv_ws: aiohttp.ClientWebSocketResponse
    latencies: list[float] = field(default_factory=list)  # seconds, send -> push
    ack_latencies: list[float] = field(default_factory=list)  # seconds, send -> msg_sent

    @classmethod
    async def open(cls, server: ServerProcess, session_s: aiohttp.ClientSession,
                   session_r: aiohttp.ClientSession, sender: str, receiver: str) -> Pair:
        await register(session_s, server, sender)
        await register(session_r, server, receiver)
        recv_ws = await ws_open(session_r, server.ws_url(f"/ws/chat/special/{receiver}/"))
        send_ws = await ws_open(session_s, server.ws_url(f"/ws/chat/personal/{sender}/{receiver}/"))
        pair = cls(sender, receiver, send_ws, recv_ws)
        await pair.one()  # the receive socket is registered: pushes reach it from here on
        pair.latencies.clear()
        pair.ack_latencies.clear()
        return pair

    async def one(self) -> None:
        """One message: sent, pushed to the receiver, acknowledged to the sender."""
        sent = frame("new_msg", self.sender, self.receiver, "are you still there?")
        t0 = time.perf_counter()
        await self.send_ws.send_json(sent)
        async with asyncio.timeout(NET_TIMEOUT):
            while (push := await self.recv_ws.receive_json()).get("command") != "new_msg":
                pass  # presence and the like
        self.latencies.append(time.perf_counter() - t0)
        assert push == sent, push
        ack = await self.send_ws.receive_json(timeout=NET_TIMEOUT)
        self.ack_latencies.append(time.perf_counter() - t0)
        assert ack["command"] == "msg_sent" and ack["message"] == sent["sent_timestamp"], ack

    async def chat(self, stop: asyncio.Event, interval: float = 0.02) -> None:
        """Send messages one after the other, `interval` apart, until `stop` is set."""
        while not stop.is_set():
            await self.one()
            try:
                await asyncio.wait_for(stop.wait(), interval)  # pacing, not synchronisation
            except TimeoutError:
                pass

    def summary(self) -> str:
        ms = [x * 1000 for x in self.latencies]
        return (f"{len(ms)} messages, send->push p50 {percentile(ms, 50):.1f} ms, "
                f"p99 {percentile(ms, 99):.1f} ms, max {max(ms, default=0):.1f} ms")

    def p99_ms(self) -> float:
        return percentile([x * 1000 for x in self.latencies], 99)

    async def close(self) -> None:
        await self.send_ws.close()
        await self.recv_ws.close()
