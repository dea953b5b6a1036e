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


class Outbox:
    """The outgoing side of one socket: a bounded queue and the one task that writes it out.

    Pushes and replies are queued without waiting, so no sender ever waits for a slow receiver;
    a socket that falls `size` frames behind is closed (backpressure by cut-off).
    """

    __slots__ = ("ws", "_queue", "_task", "_hub")

    def __init__(self, hub: Hub, ws: web.WebSocketResponse, size: int) -> None:
        self.ws = ws
        self._hub = hub
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(size)
        self._task = asyncio.create_task(self._drain())

    def put(self, data: bytes) -> None:
        """Queue one text frame (UTF-8 JSON); close the socket if it is too far behind."""
        try:
            self._queue.put_nowait(data)
        except asyncio.QueueFull:
            if not self._task.done():
                log.warning("socket fell %d frames behind; closing it", self._queue.maxsize)
                self._task.cancel()
                self._hub.spawn(close_socket(self.ws, WSCloseCode.TRY_AGAIN_LATER,
                                             b"too far behind"))

    async def send(self, data: bytes) -> None:
        """Queue one text frame, waiting while the queue is full (for long fetch answers).

        Raises ConnectionResetError when the writer has stopped (the socket is closing), since
        nothing would ever make room in the queue.
        """
        if self._queue.full():
            put = asyncio.ensure_future(self._queue.put(data))
            await asyncio.wait((put, self._task), return_when=asyncio.FIRST_COMPLETED)
            if put.done():
                return
            put.cancel()
        elif not self._task.done():
            self._queue.put_nowait(data)
            return
        raise ConnectionResetError("the socket is closing")

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
        self._receivers: dict[str, set[Outbox]] = {}
        self._sessions: dict[str, set[web.WebSocketResponse]] = {}
        self._group_sockets: dict[tuple[str, str], set[web.WebSocketResponse]] = {}
        # room -> its sockets; a socket that has not had its history yet holds its broadcasts
        self._rooms: dict[str, dict[Outbox, list[tuple[int, bytes]] | None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: object) -> None:
        """Run a coroutine in the background, keeping a reference until it ends."""
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @contextlib.contextmanager
    def outbox(self, ws: web.WebSocketResponse) -> Iterator[Outbox]:
        """An outbox for `ws` for the duration of the block (a send socket's replies)."""
        outbox = Outbox(self, ws, self._queue_size)
        try:
            yield outbox
        finally:
            outbox.stop()

    @contextlib.contextmanager
    def receiving(self, phone: str, ws: web.WebSocketResponse) -> Iterator[Outbox]:
        """Register `ws` as a receive socket of `phone` for the duration of the block."""
        with self.outbox(ws) as outbox:
            self._receivers.setdefault(phone, set()).add(outbox)
            try:
                yield outbox
            finally:
                mine = self._receivers.get(phone)
                if mine is not None:
                    mine.discard(outbox)
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
    def in_room(self, room: str, ws: web.WebSocketResponse) -> Iterator[Outbox]:
        """Register a room socket for the duration of the block. Its broadcasts are held until
        `release` (after its history is sent), so that none comes before the history, or twice."""
        with self.outbox(ws) as outbox:
            self._rooms.setdefault(room, {})[outbox] = []
            try:
                yield outbox
            finally:
                mine = self._rooms.get(room)
                if mine is not None:
                    mine.pop(outbox, None)
                    if not mine:
                        del self._rooms[room]

    def release(self, room: str, outbox: Outbox, after: int) -> None:
        """The history up to message id `after` is sent: deliver the held broadcasts newer than it."""
        held = self._rooms[room][outbox]
        self._rooms[room][outbox] = None
        for seq, data in held or ():
            if seq > after:
                outbox.put(data)

    def broadcast(self, room: str, data: bytes, seq: int | None = None) -> None:
        """Queue a text frame for every socket in `room`, the sender's own included (SPEC 5.4).

        `seq` is a stored message's id; a frame without one (typing) is not held for a socket
        still waiting for its history, but dropped there.
        """
        for outbox, held in tuple(self._rooms.get(room, {}).items()):
            if held is None:
                outbox.put(data)
            elif seq is not None:
                held.append((seq, data))

    def push(self, phone: str, data: bytes) -> None:
        """Queue a text frame for every receive socket of `phone` (none: nothing happens)."""
        for outbox in tuple(self._receivers.get(phone, ())):
            outbox.put(data)

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
