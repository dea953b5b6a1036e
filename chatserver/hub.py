"""In-memory fan-out: who is connected, and delivery of pushes to their receive sockets.

The hub holds only who is connected; the database is the truth about messages. Each receive socket
has a bounded outgoing queue drained by one writer task, so a slow or dead receiver never blocks a
sender or other receivers: a socket whose queue overflows is closed (its messages stay stored and
its client fetches them on reconnect). A Redis hub for several processes will offer the same
methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Final

from aiohttp import WSCloseCode, WSMsgType, web

log = logging.getLogger(__name__)

# Seconds a closing handshake may take before the connection is dropped outright: a peer that does
# not read cannot take our close frame either.
CLOSE_TIMEOUT: Final = 5.0


async def close_socket(ws: web.WebSocketResponse, code: int, message: bytes) -> None:
    """Close `ws` with `code`; abort the connection when the peer does not take the close frame."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await ws.close(code=code, message=message)
    except (TimeoutError, ConnectionError):
        if ws._req is not None and ws._req.transport is not None:  # noqa: SLF001 - no public handle
            ws._req.transport.abort()


class Receiver:
    """One open receive socket: its outgoing queue and the task that writes it out."""

    __slots__ = ("ws", "_queue", "_task", "_hub")

    def __init__(self, hub: Hub, ws: web.WebSocketResponse, queue_size: int) -> None:
        self.ws = ws
        self._hub = hub
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(queue_size)
        self._task = asyncio.create_task(self._drain())

    def put(self, data: bytes) -> None:
        """Queue one text frame (UTF-8 JSON); close the socket if it is too far behind (backpressure)."""
        try:
            self._queue.put_nowait(data)
        except asyncio.QueueFull:
            log.warning("receive socket fell %d frames behind; closing it", self._queue.maxsize)
            self._task.cancel()
            self._hub.spawn(close_socket(self.ws, WSCloseCode.TRY_AGAIN_LATER, b"too far behind"))

    async def send(self, data: bytes) -> None:
        """Queue a reply on this socket in order with the pushes, waiting while the queue is full."""
        await self._queue.put(data)

    async def _drain(self) -> None:
        try:
            while True:
                data = await self._queue.get()
                await self.ws.send_frame(data, WSMsgType.TEXT)
        except ConnectionError:
            pass  # the peer went away; the socket handler's loop ends and unregisters us

    def stop(self) -> None:
        """Stop writing (the socket is closed)."""
        self._task.cancel()


class Hub:
    """Open receive sockets per phone, and every open socket per login session.

    `push(phone, data)` never blocks and never raises for a bad socket.
    """

    def __init__(self, queue_size: int) -> None:
        self._queue_size = queue_size
        self._receivers: dict[str, set[Receiver]] = {}
        self._sessions: dict[str, set[web.WebSocketResponse]] = {}
        self._group_sockets: dict[tuple[str, str], set[web.WebSocketResponse]] = {}
        self._rooms: dict[str, set[Receiver]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: object) -> None:
        """Run a close in the background, keeping a reference until it ends."""
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @contextlib.contextmanager
    def receiving(self, phone: str, ws: web.WebSocketResponse) -> Iterator[Receiver]:
        """Register `ws` as a receive socket of `phone` for the duration of the block."""
        receiver = Receiver(self, ws, self._queue_size)
        self._receivers.setdefault(phone, set()).add(receiver)
        try:
            yield receiver
        finally:
            receiver.stop()
            mine = self._receivers.get(phone)
            if mine is not None:
                mine.discard(receiver)
                if not mine:
                    del self._receivers[phone]

    @contextlib.contextmanager
    def session_socket(self, sid_hash: str, ws: web.WebSocketResponse) -> Iterator[None]:
        """Remember that `ws` belongs to a login session, so that logging out closes it."""
        self._sessions.setdefault(sid_hash, set()).add(ws)
        try:
            yield
        finally:
            mine = self._sessions.get(sid_hash)
            if mine is not None:
                mine.discard(ws)
                if not mine:
                    del self._sessions[sid_hash]

    @contextlib.contextmanager
    def group_socket(self, grp: str, phone: str, ws: web.WebSocketResponse) -> Iterator[None]:
        """Remember a group send socket, so that removing its user from the group closes it."""
        key = (grp, phone)
        self._group_sockets.setdefault(key, set()).add(ws)
        try:
            yield
        finally:
            mine = self._group_sockets.get(key)
            if mine is not None:
                mine.discard(ws)
                if not mine:
                    del self._group_sockets[key]

    async def close_group_member(self, grp: str, phone: str) -> None:
        """Close `phone`'s sockets of group `grp` (SPEC 5: removal from a group closes them)."""
        sockets = tuple(self._group_sockets.get((grp, phone), ()))
        await asyncio.gather(*(close_socket(ws, WSCloseCode.POLICY_VIOLATION, b"removed from group")
                               for ws in sockets))

    @contextlib.contextmanager
    def in_room(self, room: str, ws: web.WebSocketResponse) -> Iterator[Receiver]:
        """Register a room socket for the duration of the block; it gets every broadcast."""
        receiver = Receiver(self, ws, self._queue_size)
        self._rooms.setdefault(room, set()).add(receiver)
        try:
            yield receiver
        finally:
            receiver.stop()
            mine = self._rooms.get(room)
            if mine is not None:
                mine.discard(receiver)
                if not mine:
                    del self._rooms[room]

    def broadcast(self, room: str, data: bytes) -> None:
        """Queue a text frame for every socket in `room`, the sender's own included (SPEC 5.4)."""
        for receiver in tuple(self._rooms.get(room, ())):
            receiver.put(data)

    def push(self, phone: str, data: bytes) -> None:
        """Queue a text frame for every receive socket of `phone` (none: nothing happens)."""
        for receiver in tuple(self._receivers.get(phone, ())):
            receiver.put(data)

    def is_online(self, phone: str) -> bool:
        """True while `phone` holds at least one receive socket."""
        return phone in self._receivers

    async def close_session(self, sid_hash: str) -> None:
        """Close every socket of a login session (SPEC 4 /logout) with 1008 policy violation."""
        sockets = tuple(self._sessions.get(sid_hash, ()))
        await asyncio.gather(*(close_socket(ws, WSCloseCode.POLICY_VIOLATION, b"logged out")
                               for ws in sockets))

    async def close_all(self) -> None:
        """Close every socket with 1001 going away (server shutdown)."""
        sockets = {ws for group in self._sessions.values() for ws in group}
        await asyncio.gather(*(close_socket(ws, WSCloseCode.GOING_AWAY, b"server shutdown")
                               for ws in sockets))
        for task in tuple(self._tasks):
            task.cancel()
