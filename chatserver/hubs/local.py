"""`Hub`: who is connected to this process (receive, group, room and session sockets), delivery
of pushes and room broadcasts to them, and closing them; the other processes are reached through
a `Broker` and counted through a `Presence` (chatserver/hubs/broker.py). See docs/hub.md.

Each registration is a context manager of a slotted class rather than an async generator: one
lives as long as its socket, and memory per idle socket is what a small box runs out of.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections.abc import Awaitable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, Final

from aiohttp import WSCloseCode, web

from .broker import Broker, LocalBroker, Presence
from .outbox import Outbox, close_socket

log = logging.getLogger(__name__)


class _Membership:
    """Context manager: `item` is in `index[key]` for the duration of the block."""

    __slots__ = ("_index", "_key", "_item")

    def __init__(self, index: dict[Any, set[Any]], key: Any, item: Any) -> None:
        self._index, self._key, self._item = index, key, item

    def __enter__(self) -> None:
        self._index.setdefault(self._key, set()).add(self._item)

    def __exit__(self, *exc: object) -> None:
        mine = self._index.get(self._key)
        if mine is not None:
            mine.discard(self._item)
            if not mine:
                del self._index[self._key]


class _Receiving:
    """`Hub.receiving`: registered, subscribed and claimed within the block."""

    __slots__ = ("_hub", "_phone", "_outbox")

    def __init__(self, hub: Hub, phone: str, outbox: Outbox, device: str | None) -> None:
        self._hub, self._phone, self._outbox = hub, phone, outbox
        outbox.device = device

    async def __aenter__(self) -> bool:
        hub, phone = self._hub, self._phone
        receivers = hub._receivers
        first_here = phone not in receivers
        device = self._outbox.device
        if hub._publishing and device is not None and not hub._has_device(phone, device):
            # The device's first receive socket here: other processes' push senders must see it
            # online (SPEC 9: no Web Push to a device with an open receive socket). Made at the
            # call; how many others claim it does not matter here.
            hub._unawaited(hub._presence.claim(_device_key(phone, device)))
        # Registered at once: the socket is open, and a publication heard right after the
        # subscription is confirmed must find it.
        receivers.setdefault(phone, set()).add(self._outbox)
        # The claim and the subscription are under way together.
        claim = hub._presence.claim(phone) if first_here else None
        try:
            await hub._broker.subscribe_user(phone)
            others = await claim if claim is not None else 1
        except BaseException:
            if isinstance(claim, Coroutine):
                claim.close()  # never awaited now: say so to Python, not as a warning at exit
            self._leave()
            raise
        return first_here and not others  # None (unknown): counted as came online

    async def __aexit__(self, *exc: object) -> None:
        self._leave()

    def _leave(self) -> None:
        hub, phone = self._hub, self._phone
        mine = hub._receivers.get(phone)
        if mine is not None and self._outbox in mine:
            mine.discard(self._outbox)
            if not mine:
                del hub._receivers[phone]
                hub._presence.release(phone)
            device = self._outbox.device
            if hub._publishing and device is not None and not hub._has_device(phone, device):
                hub._presence.release(_device_key(phone, device))  # its last receive socket here
        hub._broker.unsubscribe_user(phone)


async def _awaited(answer: Awaitable[Any]) -> None:
    await answer


def _device_key(phone: str, device: str) -> str:
    """The presence name of one device of `phone` (SPEC 9): "<phone>/<device>", apart from any
    phone's name (a phone has digits only)."""
    return f"{phone}/{device}"


class _InRoom:
    """`Hub.in_room`: in the room (holding its broadcasts until `Hub.release`) and subscribed to
    it within the block; `phone` (None: not counted) counted among the room's users online."""

    __slots__ = ("_hub", "_room", "_outbox", "_phone")

    def __init__(self, hub: Hub, room: str, outbox: Outbox, phone: str | None) -> None:
        self._hub, self._room, self._outbox, self._phone = hub, room, outbox, phone

    async def __aenter__(self) -> None:
        hub, phone = self._hub, self._phone
        hub._rooms.setdefault(self._room, {})[self._outbox] = []  # holding from now on
        if phone is not None:
            users = hub._room_users.setdefault(self._room, {})
            users[phone] = users.get(phone, 0) + 1
            if users[phone] == 1 and hub._publishing:
                hub._presence.enter_room(self._room, phone)  # its first socket here
        try:
            await self._hub._broker.subscribe_room(self._room)
        except BaseException:
            self._leave()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._leave()

    def _leave(self) -> None:
        hub = self._hub
        mine = hub._rooms.get(self._room)
        if mine is not None:
            mine.pop(self._outbox, None)
            if not mine:
                del hub._rooms[self._room]
        hub._room_after.pop(self._outbox, None)
        users = hub._room_users.get(self._room)
        if self._phone is not None and users is not None and self._phone in users:
            users[self._phone] -= 1
            if not users[self._phone]:
                del users[self._phone]
                if not users:
                    del hub._room_users[self._room]
                if hub._publishing:
                    hub._presence.leave_room(self._room, self._phone)  # its last socket here
        hub._broker.unsubscribe_room(self._room)


# Close codes (RFC 6455 7.4.2: 4000-4999 are the application's). SPEC 10: the oldest socket of a
# user past `limits.sockets_per_user` is closed with 4429 (as HTTP's 429 Too Many Requests).
# A session that ends (logout, password change, deluser, disabled, expired) closes its sockets
# with 1008, the code logout has always used, which the client answers by checking its session.
CLOSE_TOO_MANY_SOCKETS: Final = 4429
CLOSE_SESSION_ENDED: Final = WSCloseCode.POLICY_VIOLATION
# SPEC 13: a room its creator closed (deleted) closes its sockets with 4404 (as HTTP's 404).
CLOSE_ROOM_GONE: Final = 4404


class _SessionSocket(_Membership):
    """Async context manager: a socket of a login session, served by the current task, within the
    block. `Hub.close` asks for a close by cancelling that task; the block's exit honours it: it
    closes the socket from the serving task itself, with the client's answer awaited (aiohttp
    drops the connection when another task closes it), and ends the cancellation.

    `slot` names what the socket counts against (`Hub.session_socket`): on entry, a slot past the
    hub's `sockets_per_user` has its oldest socket closed with 4429."""

    __slots__ = ("_hub", "_slot")

    def __init__(self, hub: Hub, sid_hash: str, ws: web.WebSocketResponse,
                 slot: tuple[str, ...] | None) -> None:
        super().__init__(hub._sessions, sid_hash, ws)
        self._hub, self._slot = hub, slot

    async def __aenter__(self) -> None:
        self.__enter__()
        hub, ws = self._hub, self._item
        task = asyncio.current_task()
        if task is not None:
            hub._handlers[ws] = task
        if self._slot is not None:
            hub._take_slot(self._slot, ws)

    async def __aexit__(self, kind: type[BaseException] | None, *exc: object) -> bool:
        hub, ws = self._hub, self._item
        try:
            if kind is None or not issubclass(kind, asyncio.CancelledError):
                return False
            request = hub._close_requests.pop(ws, None)
            if request is None:
                return False  # a real cancellation (the peer went away, the server stops)
            task = asyncio.current_task()
            assert task is not None  # it was cancelled: it is a task
            task.uncancel()  # asked for: the close below is what the cancellation meant
            await close_socket(ws, *request, hub.close_timeout)
            return True
        finally:
            hub._handlers.pop(ws, None)
            if self._slot is not None:
                hub._leave_slot(self._slot, ws)
            self.__exit__()


class Hub:
    """The sockets of this process: receive sockets per phone, group sockets per (group, phone),
    room sockets per room, and every socket per login session; `broker` carries pushes,
    broadcasts and closes to and from the other processes, `presence` counts their receive
    sockets (chatserver/hubs/broker.py: the in-process versions for one process).

    `queue_size`: frames a socket's outbox holds before the socket is cut off (`[limits]
    outgoing_queue`); `close_timeout`: seconds a closing handshake may take (`[websocket]
    close_timeout`). `push` and `broadcast` never block and never raise for a bad socket.
    Call `start()` before serving and `stop()` after every socket is closed.
    """

    def __init__(self, queue_size: int, close_timeout: float, broker: Broker,
                 presence: Presence, sockets_per_user: int = 0) -> None:
        self._queue_size = queue_size
        self.close_timeout = close_timeout
        self._sockets_per_user = sockets_per_user  # 0: no cap
        self._broker, self._presence = broker, presence
        # The in-process broker has nobody to publish to: push and broadcast skip the call, so
        # that one process's hot path costs what a plain in-memory hub's does.
        self._publishing = not isinstance(broker, LocalBroker)
        self._receivers: dict[str, set[Outbox]] = {}
        self._sessions: dict[str, set[web.WebSocketResponse]] = {}
        # the task serving each socket, and the closes asked of them (see `close`)
        self._handlers: dict[web.WebSocketResponse, asyncio.Task[Any]] = {}
        self._close_requests: dict[web.WebSocketResponse, tuple[int, bytes]] = {}
        self._group_sockets: dict[tuple[str, str], set[web.WebSocketResponse]] = {}
        # slot (see session_socket) -> its sockets, oldest first (a dict keeps insertion order)
        self._slots: dict[tuple[str, ...], dict[web.WebSocketResponse, None]] = {}
        # With a shared hub, each counted socket's id among all processes, both ways.
        self._socket_ids: dict[str, web.WebSocketResponse] = {}
        self._ids_of: dict[web.WebSocketResponse, str] = {}
        self._id_prefix = secrets.token_hex(6)
        self._next_id = itertools.count(1)
        # room -> its sockets; a socket that has not had its history yet holds its broadcasts
        self._rooms: dict[str, dict[Outbox, list[tuple[int, bytes]] | None]] = {}
        # room socket -> the newest message id of the history it was sent (see deliver_broadcast)
        self._room_after: dict[Outbox, int] = {}
        # room -> phone -> its sockets in the room here (SPEC 13 `online`: users, not sockets)
        self._room_users: dict[str, dict[str, int]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifetime -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the broker, then the presence. Raises HubUnavailable when either cannot reach
        what it shares with the other processes (nothing is left running)."""
        await self._broker.start(self)
        try:
            await self._presence.start()
        except BaseException:
            await self._broker.stop(self.close_timeout)
            raise

    async def stop(self) -> None:
        """Called once after every socket is closed: send what waits and release this process's
        presence claims, each within `close_timeout` seconds, then disconnect."""
        await asyncio.gather(self._broker.stop(self.close_timeout),
                             self._presence.stop(self.close_timeout))

    async def ping(self) -> None:
        """Reach what the broker shares with the other processes (SPEC 11 /healthz); raises
        HubUnavailable when it does not answer. Nothing to reach in one process."""
        await self._broker.ping()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a coroutine in the background, keeping a reference until it ends."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- registration ---------------------------------------------------------------------------

    def outbox(self, ws: web.WebSocketResponse) -> Outbox:
        """A new outbox for `ws` (use it as a context manager)."""
        return Outbox(self, ws, self._queue_size)

    def receiving(self, phone: str, outbox: Outbox, device: str | None = None) -> _Receiving:
        """`async with hub.receiving(phone, outbox, device) as came_online:` within the block,
        `outbox` gets every push for `phone` (a receive socket of the device whose session hash
        is `device`) but those that skip that device. On entry the broker's subscription is
        live and the phone claimed for this process; `came_online` is True when no process held
        a receive socket of `phone` before."""
        return _Receiving(self, phone, outbox, device)

    def session_socket(self, sid_hash: str, ws: web.WebSocketResponse,
                       slot: tuple[str, ...] | None = None) -> _SessionSocket:
        """`async with`: within the block, `ws` belongs to a login session (logging out closes
        it, and so does `end_sessions` once the session is gone) and is served by the current
        task; a close asked by `close` is carried out when the block is left.

        `slot`: what the socket counts against for SPEC 10's `limits.sockets_per_user`, e.g.
        `("receive", phone)` or `("room", phone, room)`; when a slot holds more sockets than
        that, the oldest is closed with 4429 at once (the new one is served). None: not counted.
        With a shared hub, the count is every process's (docs/hub.md, "Sockets per user")."""
        return _SessionSocket(self, sid_hash, ws, slot)

    def _take_slot(self, slot: tuple[str, ...], ws: web.WebSocketResponse) -> None:
        """Count `ws` in `slot`; close the oldest sockets past the cap with 4429 (SPEC 10). They
        leave the count at once, so that a socket still closing is not counted twice. With a
        shared hub the presence also counts it with the other processes' (`_admit_shared`)."""
        cap = self._sockets_per_user
        if not cap:
            return
        mine = self._slots.setdefault(slot, {})
        mine[ws] = None
        while len(mine) > cap:
            oldest = next(iter(mine))
            del mine[oldest]
            self._too_many(oldest, slot)
        if self._publishing:
            socket_id = f"{self._id_prefix}-{next(self._next_id)}"
            self._socket_ids[socket_id] = ws
            self._ids_of[ws] = socket_id
            # Asked now, not in the task: the presence keeps the order of admit and leave.
            self.spawn(self._admit_shared(slot, self._presence.admit(":".join(slot), socket_id, cap)))

    async def _admit_shared(self, slot: tuple[str, ...],
                            admitted: Awaitable[list[str] | None]) -> None:
        """Close the sockets the shared count found past the cap: here at once, elsewhere through
        the control channel. Redis unreachable (None): this process's own count still holds."""
        for socket_id in await admitted or ():
            ws = self._socket_ids.get(socket_id)
            if ws is not None:
                mine = self._slots.get(slot)
                if mine is not None:
                    mine.pop(ws, None)  # closing: no longer counted here either
                self._too_many(ws, slot)
            else:  # another process's, or one that has closed since (then nobody has it)
                await self._broker.publish_control({"op": "close_socket", "socket": socket_id})

    def _too_many(self, ws: web.WebSocketResponse, slot: tuple[str, ...]) -> None:
        log.info("hub: more than %d sockets in %s: closing the oldest", self._sockets_per_user, slot)
        self.spawn(self.close(ws, CLOSE_TOO_MANY_SOCKETS, b"too many sockets"))

    def _leave_slot(self, slot: tuple[str, ...], ws: web.WebSocketResponse) -> None:
        mine = self._slots.get(slot)
        if mine is not None:
            mine.pop(ws, None)
            if not mine:
                del self._slots[slot]
        socket_id = self._ids_of.pop(ws, None)
        if socket_id is not None:
            del self._socket_ids[socket_id]
            self._presence.leave(":".join(slot), socket_id)

    def group_socket(self, grp: str, phone: str, ws: web.WebSocketResponse) -> _Membership:
        """Within the block, removing `phone` from group `grp` closes `ws`."""
        return _Membership(self._group_sockets, (grp, phone), ws)

    def in_room(self, room: str, outbox: Outbox, phone: str | None = None) -> _InRoom:
        """`async with`: within the block, `outbox` gets the room's broadcasts, held until
        `release`, after its history is sent, so that none comes before the history, or twice.
        On entry the broker's subscription to the room is live. `phone`: the socket's user,
        counted in `room_online` within the block (None: not counted)."""
        return _InRoom(self, room, outbox, phone)

    async def room_online(self, rooms: Sequence[str]) -> list[int]:
        """SPEC 13 `GET /chat/rooms` `online`: for each of `rooms`, how many users have a socket
        in it now, in this process and, with a shared hub, in the others (one presence round
        trip for the whole list). Presence unreachable: this process's count."""
        here = [len(self._room_users.get(room, ())) for room in rooms]
        if not self._publishing or not rooms:
            return here
        counts = await self._presence.room_counts(rooms)
        if counts is None or len(counts) != len(rooms):
            return here
        # The shared count holds this process's users too; never fewer than are seen here.
        return [max(shared, mine) for shared, mine in zip(counts, here, strict=True)]

    def release(self, room: str, outbox: Outbox, after: int) -> None:
        """The history up to message id `after` is sent: deliver the held broadcasts newer than it
        (and drop those up to it that another process's broker brings later)."""
        self._room_after[outbox] = after
        held = self._rooms[room][outbox]
        self._rooms[room][outbox] = None
        for seq, data in held or ():
            if seq > after:
                outbox.put(data)

    # -- delivery -------------------------------------------------------------------------------

    def push(self, phone: str, data: bytes, skip: str | None = None) -> None:
        """Queue a text frame for every receive socket of `phone` but those of device `skip` (a
        session hash: SPEC 7.2, a copy does not go back to the device that sent it), here at once
        and in the other processes through the broker (none: nothing happens)."""
        self.deliver_push(phone, data, skip)
        if self._publishing:
            self._broker.publish_user(phone, data, skip)

    def broadcast(self, room: str, data: bytes, seq: int | None = None) -> None:
        """Queue a text frame for every socket in `room`, the sender's own included (SPEC 5.4),
        here and through the broker.

        `seq` is a stored message's id; a frame without one (typing) is not held for a socket
        still waiting for its history, but dropped there.
        """
        for outbox, held in tuple(self._rooms.get(room, {}).items()):
            if held is None:
                outbox.put(data)
            elif seq is not None:
                held.append((seq, data))
        if self._publishing:
            self._broker.publish_room(room, data, seq)

    def deliver_push(self, phone: str, data: bytes, skip: str | None = None) -> None:
        """A push (this process's or another's): to the receive sockets of `phone` here but
        those of device `skip`."""
        for outbox in tuple(self._receivers.get(phone, ())):
            if skip is None or outbox.device != skip:
                outbox.put(data)

    def deliver_broadcast(self, room: str, data: bytes, seq: int | None) -> None:
        """Another process's broadcast: to the sockets in `room` here, held as local ones are;
        once released, a socket drops those already in its history (late from elsewhere)."""
        for outbox, held in tuple(self._rooms.get(room, {}).items()):
            if held is None:
                if seq is None or seq > self._room_after.get(outbox, 0):
                    outbox.put(data)
            elif seq is not None:
                held.append((seq, data))

    def deliver_control(self, request: Mapping[str, str]) -> None:
        """Another process's close request (see `close_session`, `close_group_member`,
        `close_room`)."""
        op = request.get("op")
        if op == "close_session":
            self.spawn(self._close_session_here(request["sid_hash"]))
        elif op == "close_group_member":
            self.spawn(self._close_group_member_here(request["grp"], request["phone"]))
        elif op == "close_room":
            self.spawn(self._close_room_here(request["room"]))
        elif op == "close_socket":  # past the sockets-per-user cap, counted by the presence
            ws = self._socket_ids.get(request["socket"])
            if ws is not None:
                self.spawn(self.close(ws, CLOSE_TOO_MANY_SOCKETS, b"too many sockets"))
        else:
            log.warning("hub: unknown control request %r", op)

    def has_receivers(self, phone: str) -> bool:
        """True while `phone` holds at least one receive socket in this process."""
        return phone in self._receivers

    def socket_count(self) -> int:
        """The sockets of login sessions open in this process (SPEC 10 `GET /chat/admin/stats`)."""
        return sum(len(sockets) for sockets in self._sessions.values())

    def _unawaited(self, answer: Awaitable[Any]) -> None:
        """A presence call whose answer is not needed: a coroutine is run in the background
        (never awaited, it would never run); a future is left to resolve on its own."""
        if isinstance(answer, Coroutine):
            self.spawn(_awaited(answer))

    def _has_device(self, phone: str, device: str) -> bool:
        """True while device `device` of `phone` has a receive socket in this process (a scan of
        the phone's few sockets, at most `limits.sockets_per_user`: no index kept per socket)."""
        return any(outbox.device == device for outbox in self._receivers.get(phone, ()))

    async def device_online(self, phone: str, device: str) -> bool:
        """True while device `device` (a session hash) of `phone` has a receive socket open in
        this process or, with a shared hub, in another one by its presence claim (SPEC 9: such a
        device gets no Web Push). Presence unreachable: False for a device with no socket here
        (a push too many rather than a message never notified)."""
        if self._has_device(phone, device):
            return True
        if not self._publishing:
            return False
        return bool(await self._presence.others(_device_key(phone, device)))

    async def is_online(self, phone: str) -> bool:
        """True while `phone` holds a receive socket here, or in another process by its presence
        claim (presence unreachable: False for a phone with no socket here)."""
        if phone in self._receivers:
            return True
        return bool(await self._presence.others(phone))

    # -- closing --------------------------------------------------------------------------------

    async def close(self, ws: web.WebSocketResponse, code: int, message: bytes) -> None:
        """Close `ws` with a full closing handshake (RFC 6455 7.1.1: wait for the client's close
        frame, at most `close_timeout` seconds). aiohttp's `close()` called from another task than
        the one reading the socket drops the connection right after our close frame, so the
        serving task is asked to close it itself: it is cancelled, and its `session_socket`
        block closes the socket on the way out. Returns when it has."""
        if ws.closed or ws in self._close_requests:
            return  # closing already (asked twice: a logout and a session check, say)
        task = self._handlers.get(ws)
        if task is None or task.done() or task is asyncio.current_task():
            await close_socket(ws, code, message, self.close_timeout)
            return
        self._close_requests[ws] = (code, message)
        task.cancel()
        await asyncio.wait({task}, timeout=2 * self.close_timeout)
        if not task.done():
            await close_socket(ws, code, message, self.close_timeout)

    async def close_session(self, sid_hash: str) -> None:
        """Close every socket of a login session with 1008 policy violation (SPEC 4 /logout), in
        every process: returns once this process's are closed and the request is published; the
        other processes close theirs when it reaches them."""
        await self._broker.publish_control({"op": "close_session", "sid_hash": sid_hash})
        await self._close_session_here(sid_hash)

    def session_hashes(self) -> list[str]:
        """The session id hashes that sockets of this process belong to (for `sessions.py`'s
        periodic check)."""
        return list(self._sessions)

    def end_sessions(self, sid_hashes: Iterable[str], reason: bytes = b"session ended") -> int:
        """Close, in the background, this process's sockets of sessions that have ended (1008,
        `reason`); returns how many sockets are being closed. A socket already closing is left
        to finish."""
        count = 0
        for sid_hash in sid_hashes:
            for ws in tuple(self._sessions.get(sid_hash, ())):
                if not ws.closed and ws not in self._close_requests:
                    count += 1
                    self.spawn(self.close(ws, CLOSE_SESSION_ENDED, reason))
        return count

    async def close_group_member(self, grp: str, phone: str) -> None:
        """Close `phone`'s sockets of group `grp` (SPEC 5: removal from a group closes them), in
        every process; returns as `close_session` does."""
        await self._broker.publish_control({"op": "close_group_member", "grp": grp,
                                            "phone": phone})
        await self._close_group_member_here(grp, phone)

    async def close_room(self, room: str) -> None:
        """Close every socket in `room` with 4404 (SPEC 13: its creator closed it), in every
        process; returns as `close_session` does."""
        await self._broker.publish_control({"op": "close_room", "room": room})
        await self._close_room_here(room)

    async def _close_room_here(self, room: str) -> None:
        sockets = tuple(outbox.ws for outbox in self._rooms.get(room, {}))
        await asyncio.gather(*(self.close(ws, CLOSE_ROOM_GONE, b"room closed") for ws in sockets))

    async def _close_session_here(self, sid_hash: str) -> None:
        sockets = tuple(self._sessions.get(sid_hash, ()))
        await asyncio.gather(*(self.close(ws, CLOSE_SESSION_ENDED, b"logged out")
                               for ws in sockets))

    async def _close_group_member_here(self, grp: str, phone: str) -> None:
        sockets = tuple(self._group_sockets.get((grp, phone), ()))
        await asyncio.gather(*(self.close(ws, WSCloseCode.POLICY_VIOLATION, b"removed from group")
                               for ws in sockets))

    async def close_all(self) -> None:
        """Close every socket of this process with 1001 going away (server shutdown)."""
        sockets = {ws for group in self._sessions.values() for ws in group}
        await asyncio.gather(*(self.close(ws, WSCloseCode.GOING_AWAY, b"server shutdown")
                               for ws in sockets))
        for task in tuple(self._tasks):
            task.cancel()
