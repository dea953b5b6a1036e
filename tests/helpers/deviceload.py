"""A chat load with several devices per user (SPEC 7), for tests/system/test_crash_devices.py.

Every user has `DEVICES` devices: logins of their own (one cookie jar each), each with a receive
socket, a personal send socket per peer and, for the group's members, a group socket. Every device
sends (so each of its user's other devices gets copies, SPEC 7.2) and acknowledges what it gets on
its own sockets: a peer's message with `msg_received` on its socket to that peer, a copy of its
user's own message with `msg_received` on its socket to the message's recipient, a group message
(or a copy of one) with `grp_msg_received` on its group socket.

A `DeviceLedger` records per (message, device):
- written (by which device, for which devices: every device of the recipients and the sender's
  other devices), `msg_sent` seen, delivered (push or fetch) before the kill and after the restart;
- acknowledgement written, and acknowledgement **proven** committed. Only the first device of a
  recipient gets a receipt pushed to the sender, so the receipt cannot prove a device's own
  acknowledgement; instead each acknowledgement is followed on the same socket by a frame of an
  unknown command (`PROBE`). Answers come in the order of their frames and an acknowledgement's
  outcome (nothing, or an error frame) is known only after its commit, so when the probe's refusal
  arrives with no error before it, the acknowledgement is committed;
- receipts (`msg_received` pushes) per message, acknowledging user and device that got it.

Nothing here synchronises with a sleep: waits poll a condition with a deadline (`until`), every
network wait has a timeout; background readers end when their socket closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from chatserver.config import Database
from helpers.accounts import client, create_group, login, register, ws_open
from helpers.backends import db_rows
from helpers.chatload import MESSAGE_TABLES, WS, MsgId, _body, _frames, next_stamp
from helpers.frames import frame, micros
from helpers.server import ServerProcess
from helpers.timing import NET_TIMEOUT, until

DEVICES = 2
# A command no socket knows: its refusal proves the frames before it on that socket answered.
PROBE = "ack_probe"
# (message, device label "<phone>#<n>")
DUnit = tuple[MsgId, str]


def row_counts(db: Path, tables: tuple[str, ...]) -> dict[str, int]:
    """Row counts of `tables` in the SQLite file `db` (read-only: helpers.backends.db_rows)."""
    database = Database(path=str(db))
    return {t: db_rows(database, f"SELECT count(*) FROM {t}")[0][0] for t in tables}


def device_labels(phone: str, n: int = DEVICES) -> list[str]:
    return [f"{phone}#{i}" for i in range(1, n + 1)]


def phone_of(label: str) -> str:
    return label.split("#", 1)[0]


# -- the ledger ---------------------------------------------------------------------------------


@dataclass
class DeviceVerdict:
    """What a ledger proves: the figures the test prints, and examples of each breach."""

    written: int
    confirmed: int
    units: int                       # (message, device) pairs owed, of messages known committed
    delivered: dict[str, tuple[int, int]]   # device -> (before, after)
    acked_before: int
    proven_before: int
    receipts: int
    redelivered_unproven: int        # delivered before and again after, not proven acknowledged
    kept_for_other: int              # another device of the user proven before; this one after
    copies_after: int                # copies (SPEC 7.2) delivered after the restart
    lost: list[str]
    dup_after_ack: list[str]
    dup_deliveries: list[str]
    receipt_problems: list[str]
    bad: list[str]
    errors: list[str]
    order: list[str]
    drain: list[str]

    def summary(self) -> str:
        per_device = ", ".join(f"{d} {b}+{a}" for d, (b, a) in sorted(self.delivered.items()))
        return (f"written {self.written}, msg_sent seen {self.confirmed}, (message, device) "
                f"units owed {self.units}, delivered before+after {per_device}; acks written "
                f"before {self.acked_before} (proven {self.proven_before}); receipts "
                f"{self.receipts}; delivered again after the restart without a proven "
                f"acknowledgement {self.redelivered_unproven}; acknowledged by one device "
                f"before, delivered to the other after {self.kept_for_other}; copies delivered "
                f"after {self.copies_after}; lost {len(self.lost)}; delivered again after a "
                f"proven acknowledgement {len(self.dup_after_ack)}")

    def assert_clean(self) -> None:
        problems = {"lost": self.lost, "delivered again after a proven acknowledgement":
                    self.dup_after_ack, "delivered twice to one device in one phase":
                    self.dup_deliveries, "receipts": self.receipt_problems,
                    "unknown or corrupted frames": self.bad, "error frames": self.errors,
                    "fetch out of order": self.order, "left after the drain": self.drain}
        broken = {k: v for k, v in problems.items() if v}
        assert not broken, self.summary() + "\n" + "\n".join(
            f"{k} ({len(v)}): {v[:5]}" for k, v in broken.items())


@dataclass
class DeviceLedger:
    """What the devices of one run saw. `phase` is "before" until the kill, then "after"."""

    devices: dict[str, list[str]]    # phone -> its device labels
    ack_probability: float = 1.0
    rng: random.Random = field(default_factory=random.Random)
    phase: str = "before"
    texts: dict[MsgId, str] = field(default_factory=dict)
    writer: dict[MsgId, str] = field(default_factory=dict)              # the sending device
    recipients: dict[MsgId, frozenset[str]] = field(default_factory=dict)  # phones
    targets: dict[MsgId, frozenset[str]] = field(default_factory=dict)     # devices owed it
    confirmed: set[MsgId] = field(default_factory=set)
    delivered: dict[str, Counter[DUnit]] = field(
        default_factory=lambda: {"before": Counter(), "after": Counter()})
    acked: dict[str, set[DUnit]] = field(default_factory=lambda: {"before": set(), "after": set()})
    proven: dict[str, set[DUnit]] = field(default_factory=lambda: {"before": set(), "after": set()})
    # (message, acknowledging phone, device that got the receipt) -> count, both phases
    receipts: Counter[tuple[MsgId, str, str]] = field(default_factory=Counter)
    receipts_after: set[tuple[MsgId, str, str]] = field(default_factory=set)
    pending_lists: dict[MsgId, set[str]] = field(default_factory=dict)  # fetch_grp_msgs, after
    bad: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    order: list[str] = field(default_factory=list)
    closes: list[tuple[str, str, int | None]] = field(default_factory=list)  # (phase, label, code)
    drain: list[str] = field(default_factory=list)  # what the drain found left over

    def written(self, mid: MsgId, text: str, by: str, recipients: Iterable[str]) -> None:
        rs = frozenset(recipients)
        self.texts[mid] = text
        self.writer[mid] = by
        self.recipients[mid] = rs
        owed = {d for r in rs for d in self.devices[r]}
        owed |= set(self.devices[phone_of(by)]) - {by}
        self.targets[mid] = frozenset(owed)

    def in_flight(self) -> int:
        """Messages written of which some device's acknowledgement is not proven committed."""
        proven = self.proven["before"]
        return sum(1 for mid, ds in self.targets.items() if any((mid, d) not in proven for d in ds))

    def committed_known(self, mid: MsgId) -> bool:
        """msg_sent seen, or delivered to any device: the server committed it."""
        return mid in self.confirmed or any(
            (mid, d) in self.delivered[p] for p in ("before", "after") for d in self.targets[mid])

    def expected_receipts(self) -> set[tuple[MsgId, str, str]]:
        """Receipts the drain must bring: for each message and recipient of which no device wrote
        an acknowledgement before the kill and one's was proven after, one on every device of
        the sender (the first acknowledgement does what SPEC 5.1 / 5.3 say, 7.1)."""
        out = set()
        for mid, rs in self.recipients.items():
            for r in rs:
                mine = [(mid, d) for d in self.devices[r]]
                if any(u in self.acked["before"] for u in mine):
                    continue
                if any(u in self.proven["after"] for u in mine):
                    out |= {(mid, r, d) for d in self.devices[mid[1]]}
        return out

    def verdict(self) -> DeviceVerdict:
        before, after = self.delivered["before"], self.delivered["after"]
        lost, dup_after_ack, dups, receipt_problems = [], [], [], []
        redelivered = kept = copies_after = units = 0
        for mid, ds in self.targets.items():
            committed = self.committed_known(mid)
            units += len(ds) if committed else 0
            for d in ds:
                unit = (mid, d)
                if committed and before[unit] + after[unit] == 0:
                    lost.append(f"{unit}: committed, never delivered to this device")
                elif committed and unit not in self.acked["before"] and after[unit] == 0:
                    lost.append(f"{unit}: committed, not acknowledged by this device, "
                                "not delivered to it after the restart")
                if unit in self.proven["before"] and after[unit]:
                    dup_after_ack.append(f"{unit}: proven acknowledged, delivered {after[unit]}x after")
                if before[unit] and after[unit] and unit not in self.proven["before"]:
                    redelivered += 1
                siblings = [(mid, o) for o in self.devices[phone_of(d)] if o != d]
                if after[unit] and any(s in self.proven["before"] for s in siblings):
                    kept += 1
                if after[unit] and phone_of(d) == mid[1]:
                    copies_after += 1
            for r in self.pending_lists.get(mid, ()):
                if any((mid, d) in self.proven["before"] for d in self.devices[r]):
                    dup_after_ack.append(f"{mid}: {r} proven acknowledged on a device, still "
                                         "pending after the restart")
        for phase, counts in self.delivered.items():
            dups += [f"{unit} {n}x {phase}" for unit, n in counts.items() if n > 1]
        receipt_problems += [f"{k} {n}x" for k, n in self.receipts.items() if n > 1]
        missing = self.expected_receipts() - self.receipts_after
        receipt_problems += [f"{k}: no receipt after the restart" for k in sorted(missing)[:20]]
        for phase in ("before", "after"):
            if extra := self.proven[phase] - self.acked[phase]:
                self.bad.append(f"proofs of acknowledgements never written ({phase}): "
                                f"{sorted(extra)[:3]}")
        return DeviceVerdict(
            written=len(self.texts), confirmed=len(self.confirmed), units=units,
            delivered={d: (sum(n for (_, x), n in before.items() if x == d),
                           sum(n for (_, x), n in after.items() if x == d))
                       for ds in self.devices.values() for d in ds},
            acked_before=len(self.acked["before"]), proven_before=len(self.proven["before"]),
            receipts=sum(self.receipts.values()), redelivered_unproven=redelivered,
            kept_for_other=kept, copies_after=copies_after, lost=lost,
            dup_after_ack=dup_after_ack, dup_deliveries=dups, receipt_problems=receipt_problems,
            bad=list(self.bad), errors=list(self.errors), order=list(self.order),
            drain=list(self.drain))


# -- one device ---------------------------------------------------------------------------------


class Device:
    """One login of `phone`: its sockets, pumps and readers, recording into the ledger.

    Before the kill it acknowledges each delivery with probability `ledger.ack_probability` (the
    rest stay stored); after it, it collects them in `to_ack` for `send_acks`, which the drain
    sends once every receive socket is served (so that no receipt can miss its sender).
    """

    def __init__(self, label: str, session: aiohttp.ClientSession, ledger: DeviceLedger) -> None:
        self.label = label
        self.phone = phone_of(label)
        self.session = session
        self.ledger = ledger
        self.recv: WS | None = None
        self.personal: dict[str, WS] = {}
        self.group: WS | None = None
        self.group_key = ""
        self.windows: dict[str, asyncio.Semaphore] = {}   # target -> frames awaiting msg_sent
        self.probes: dict[str, deque[DUnit]] = {}          # target -> acks awaiting their probe
        self.refused: set[DUnit] = set()                    # acks answered with an error frame
        self.answered: set[DUnit] = set()                   # acks whose probe was answered
        self.readers: list[asyncio.Task[None]] = []
        self.pumps: list[asyncio.Task[None]] = []
        self.fetch_done: asyncio.Queue[str] = asyncio.Queue()
        self.to_ack: list[tuple[str, dict[str, str], DUnit]] = []
        self._fetching: list[MsgId] = []

    def sockets(self) -> list[tuple[str, WS]]:
        socks = [("recv", self.recv)] + [(f"personal->{p}", ws) for p, ws in self.personal.items()]
        socks.append(("group", self.group))
        return [(f"{self.label}:{name}", ws) for name, ws in socks if ws is not None]

    async def connect(self, server: ServerProcess, peers: list[str], group_key: str | None,
                      window: int) -> None:
        """Open the sockets and start their readers (the receive socket is proven served later)."""
        self.recv = await ws_open(self.session, server.ws_url(f"/ws/chat/special/{self.phone}/"))
        self.readers.append(asyncio.create_task(self._read_receive(self.recv)))
        for peer in peers:
            ws = await ws_open(self.session, server.ws_url(f"/ws/chat/personal/{self.phone}/{peer}/"))
            self.personal[peer] = ws
            self.windows[peer] = asyncio.Semaphore(window)
            self.probes[peer] = deque()
            self.readers.append(asyncio.create_task(self._read_send(ws, "p", peer)))
        if group_key is not None:
            self.group_key = group_key
            self.group = await ws_open(self.session,
                                       server.ws_url(f"/ws/chat/group/{self.phone}/{group_key}/"))
            self.windows[group_key] = asyncio.Semaphore(window)
            self.probes[group_key] = deque()
            self.readers.append(asyncio.create_task(self._read_send(self.group, "g", group_key)))

    async def fetch(self, command: str) -> None:
        """A fetch on the receive socket, waited for until its last chunk (the reader records it)."""
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
        command = "new_msg" if kind == "p" else "new_grp_msg"
        while not stop.is_set():
            await window.acquire()
            if stop.is_set() or ws.closed:
                return
            us, stamp = next_stamp()
            mid = (kind, self.phone, target, us)
            text = _body(mid, self.ledger.rng)
            self.ledger.written(mid, text, self.label, recipients)
            try:
                await ws.send_str(json.dumps(frame(command, self.phone, target, text, stamp)))
            except (ConnectionError, RuntimeError):
                return

    async def _read_send(self, ws: WS, kind: str, target: str) -> None:
        """A send socket's answers: msg_sent (opens the window), a probe's refusal (proves the
        acknowledgement before it committed), other error frames (noted)."""
        label = f"{self.label}:{kind}->{target}"
        async for data in _frames(ws, self.ledger, label):
            command = data.get("command")
            if command == "msg_sent" and data.get("msg_to") == target \
                    and data.get("msg_from") == self.phone:
                mid = (kind, self.phone, target, micros(data["message"]))
                if mid not in self.ledger.texts:
                    self.ledger.bad.append(f"{label}: msg_sent for unknown {mid}")
                self.ledger.confirmed.add(mid)
                self.windows[target].release()
            elif command == "error" and data.get("type") == PROBE:
                if not self.probes[target]:
                    self.ledger.bad.append(f"{label}: a probe answered twice: {data}")
                    continue
                unit = self.probes[target].popleft()
                self.answered.add(unit)
                if unit not in self.refused:  # answered nothing, then the probe: committed
                    self.ledger.proven[self.ledger.phase].add(unit)
            elif command == "error":
                self.ledger.errors.append(f"{self.ledger.phase} {label}: {data}")
                if data.get("type") in ("msg_received", "grp_msg_received") and self.probes[target]:
                    # answers come in frame order: this is the oldest acknowledgement not yet
                    # followed by its probe's answer
                    self.refused.add(self.probes[target][0])
            else:
                self.ledger.bad.append(f"{label}: unexpected {data}")

    async def _read_receive(self, ws: WS) -> None:
        label = f"{self.label}:recv"
        async for data in _frames(ws, self.ledger, label):
            await self._on_receive(data, label)

    def _identify(self, item: dict[str, Any]) -> tuple[MsgId, str]:
        """The message a pushed or fetched `new_msg` names, and the target of the socket that
        acknowledges it: the peer (personal) or the group key."""
        msg_from, us = str(item.get("msg_from")), micros(str(item.get("sent_timestamp")))
        if "-" in msg_from:
            grp, sender = msg_from.split("-", 1)
            return ("g", sender, grp, us), grp
        if msg_from == self.phone:  # a copy of my user's own message (SPEC 7.2)
            peer = str(item.get("msg_to"))
            return ("p", self.phone, peer, us), peer
        return ("p", msg_from, self.phone, us), msg_from

    async def _on_receive(self, data: dict[str, Any], label: str) -> None:
        command = data.get("command")
        ledger = self.ledger
        if command == "new_msg":
            await self._delivered(data, f"{label} push")
        elif command in ("fetch_msgs", "fetch_grp_msgs"):
            for item in data.get("messages", []):
                if (command == "fetch_grp_msgs") != ("-" in str(item.get("msg_from"))):
                    ledger.bad.append(f"{label}: {command} answered {item}")
                mid = await self._delivered(item, f"{label} {command}")
                self._fetching.append(mid)
                if command == "fetch_grp_msgs":
                    pending = item.get("pending")
                    if not isinstance(pending, list) or \
                            not set(pending) <= ledger.recipients.get(mid, frozenset()):
                        ledger.bad.append(f"{label}: bad pending list of {mid}: {item}")
                    elif ledger.phase == "after":
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
            if data.get("msg_to") != self.phone or receiver not in ledger.recipients.get(mid, ()):
                ledger.bad.append(f"{label}: receipt for unknown {mid}: {data}")
                return
            ledger.receipts[(mid, receiver, self.label)] += 1
            if ledger.phase == "after":
                ledger.receipts_after.add((mid, receiver, self.label))
        elif command == "error":
            ledger.errors.append(f"{ledger.phase} {label}: {data}")
        elif command not in ("presence", "msg_read", "is_typing", "group_added"):
            ledger.bad.append(f"{label}: unexpected {data}")

    async def _delivered(self, item: dict[str, Any], where: str) -> MsgId:
        """Record one delivery (push or fetched) and acknowledge it (now, or after the restart)."""
        ledger = self.ledger
        mid, target = self._identify(item)
        unit = (mid, self.label)
        copy = mid[1] == self.phone
        expected_to = self.phone if (mid[0] == "g" or not copy) else mid[2]
        if item.get("msg_to") != expected_to:
            ledger.bad.append(f"{where}: msg_to is not {expected_to}: {item}")
        if mid not in ledger.texts:
            ledger.bad.append(f"{where}: unknown message {mid}")
            return mid
        if self.label not in ledger.targets[mid]:
            ledger.bad.append(f"{where}: {mid} delivered to {self.label}, which is not owed it "
                              f"(written by {ledger.writer[mid]})")
            return mid
        if item.get("message") != ledger.texts[mid]:
            ledger.bad.append(f"{where}: {mid} body {item.get('message')!r}")
            return mid
        ledger.delivered[ledger.phase][unit] += 1
        stamp = next_stamp()[1]
        if mid[0] == "p":
            ack = frame("msg_received", self.phone, target, str(item["sent_timestamp"]), stamp)
        else:
            ack = frame("grp_msg_received", self.phone, mid[1], str(item["sent_timestamp"]), stamp)
        if ledger.phase == "after":
            self.to_ack.append((target, ack, unit))
        elif ledger.rng.random() < ledger.ack_probability:
            ledger.acked["before"].add(unit)  # before the write: it may be committed from now on
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self._send_ack(target, ack, unit)
        return mid

    async def _send_ack(self, target: str, ack: dict[str, str], unit: DUnit) -> None:
        """The acknowledgement, then a probe on the same socket (its refusal proves the commit)."""
        ws = self.personal[target] if unit[0][0] == "p" else self.group
        assert ws is not None
        self.probes[target].append(unit)
        await ws.send_str(json.dumps(ack))
        await ws.send_str(json.dumps(frame(PROBE, self.phone, self.phone, "", next_stamp()[1])))

    def _check_order(self, mids: list[MsgId], where: str) -> None:
        """SPEC 5.2: oldest first; each sending device's pump sends in clock order on its socket."""
        last: dict[tuple[str, str, str], int] = {}
        for mid in mids:
            key = (mid[0], self.ledger.writer.get(mid, "?"), mid[2])
            if mid[3] <= last.get(key, -1):
                self.ledger.order.append(f"{where}: {key} {mid[3]} after {last[key]}")
            last[key] = mid[3]

    async def send_acks(self) -> list[DUnit]:
        """Send the acknowledgements collected after the restart; returns their units."""
        units = []
        for target, ack, unit in self.to_ack:
            self.ledger.acked["after"].add(unit)
            await self._send_ack(target, ack, unit)
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


# -- the people ----------------------------------------------------------------------------------


@dataclass
class DeviceParty:
    """Users with DEVICES logins each, who talks to whom, and the group."""

    phones: list[str]
    sessions: dict[str, aiohttp.ClientSession]   # device label -> its login
    pairs: list[tuple[str, str]]
    members: list[str]
    group_key: str
    per_user: int = DEVICES

    def devices(self) -> dict[str, list[str]]:
        return {p: device_labels(p, self.per_user) for p in self.phones}

    def peers(self, phone: str) -> list[str]:
        return [b for a, b in self.pairs if a == phone] + [a for a, b in self.pairs if b == phone]

    async def close(self) -> None:
        for session in self.sessions.values():
            await session.close()


async def make_device_party(server: ServerProcess, phones: list[str], pairs: list[tuple[str, str]],
                            members: list[str], per_user: int = DEVICES) -> DeviceParty:
    """Register every phone on its first device, log it in on the others (`per_user` devices
    each), create the group."""
    sessions = {d: client() for p in phones for d in device_labels(p, per_user)}
    party = DeviceParty(phones, sessions, pairs, members, "", per_user)
    try:
        for phone in phones:
            first, *others = device_labels(phone, per_user)
            await register(sessions[first], server, phone)
            for label in others:
                await login(sessions[label], server, phone)
        party.group_key = await create_group(sessions[f"{members[0]}#1"], server,
                                             "devices", members[1:])
    except BaseException:
        await party.close()
        raise
    return party


class DeviceNet:
    """Every device of a party connected to one server, recording into one ledger."""

    def __init__(self, party: DeviceParty, ledger: DeviceLedger) -> None:
        self.party = party
        self.ledger = ledger
        self.devices = [Device(label, party.sessions[label], ledger)
                        for labels in party.devices().values() for label in labels]
        self.stop = asyncio.Event()

    async def connect(self, server: ServerProcess, window: int) -> None:
        """Open every socket, then prove every receive socket served (a fetch round trip each)."""
        self.stop = asyncio.Event()
        for device in self.devices:
            grp = self.party.group_key if device.phone in self.party.members else None
            await device.connect(server, self.party.peers(device.phone), grp, window)
        for device in self.devices:
            await device.fetch_both()

    def start_load(self) -> None:
        for device in self.devices:
            device.start_pumps(self.party.members, self.stop)

    def stop_load(self) -> None:
        self.stop.set()
        for device in self.devices:
            for sem in device.windows.values():  # wake pumps blocked on a full window
                sem.release()

    async def wait_all_closed(self, timeout: float) -> None:
        readers = [t for device in self.devices for t in device.readers]
        await until(lambda: all(t.done() for t in readers), timeout,
                    lambda: f"{sum(not t.done() for t in readers)} sockets still open")

    async def close(self) -> None:
        for device in self.devices:
            await device.close()

    async def drain(self, server: ServerProcess,
                    db: Path | Callable[[], Awaitable[dict[str, int]]],
                    tables: tuple[str, ...] = MESSAGE_TABLES) -> None:
        """After a restart: connect, fetch everything (recorded as delivered after), acknowledge
        it all, wait for every acknowledgement's answer and (bounded) every receipt owed, fetch
        again (must find nothing), and find no message rows (`tables` in the SQLite file `db`,
        or as counted by `db()`). What is wrong goes into the ledger, for the verdict."""
        self.ledger.phase = "after"
        await self.connect(server, window=1)
        sent = {d: await d.send_acks() for d in self.devices}
        await until(lambda: all(set(units) <= d.answered for d, units in sent.items()), NET_TIMEOUT,
                    lambda: f"answers to {sum(len(set(u) - d.answered) for d, u in sent.items())} "
                            "acknowledgements after the restart")
        owed, got = self.ledger.expected_receipts(), self.ledger.receipts_after
        with contextlib.suppress(AssertionError):  # the verdict names those missing
            await until(lambda: owed <= got, NET_TIMEOUT, "the receipts owed after the restart")
        before = sum(self.ledger.delivered["after"].values())
        for device in self.devices:
            await device.fetch_both()
        if again := sum(self.ledger.delivered["after"].values()) - before:
            self.ledger.drain.append(f"{again} messages still fetched after every acknowledgement")
        rows = row_counts(db, tables) if isinstance(db, Path) else await db()
        if rows != dict.fromkeys(tables, 0):
            self.ledger.drain.append(f"rows left after the drain: {rows}")
