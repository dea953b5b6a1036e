"""In-memory fan-out: who is connected, and delivery of pushes to their receive sockets.

The hub holds only who is connected; the database is the truth about messages. Each receive socket
has a bounded outgoing queue drained by one writer task, so a slow or dead receiver never blocks a
sender or other receivers: a socket whose queue overflows is closed (its messages stay stored and
its client fetches them on reconnect).

`chatserver/redishub.py` (`[hub] url`) subclasses `Hub` for several processes, on one host or many:
the same methods, with pushes, room broadcasts, presence, logouts and removals carried between
processes by Redis. Registering a receive socket or a room socket is therefore an `async with`
block: a shared hub subscribes before the socket's first frame is read.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

log = logging.getLogger(__name__)

async def close_socket(ws: web.WebSocketResponse, code: int, message: bytes,
                       timeout: float) -> None:
    """Close `ws` with `code`, waiting at most `timeout` seconds for the peer's close frame; abort
    the connection when it does not come (a peer that does not read cannot take ours either)."""
    try:
        async with asyncio.timeout(timeout):
            await ws.close(code=code, message=message)
    except (TimeoutError, ConnectionError):
        if ws._req is not None and ws._req.transport is not None:  # noqa: SLF001 - no public handle
            ws._req.transport.abort()


class Outbox:
    """The outgoing side of one socket: a bounded queue of frames and, while frames wait, the one
    task that writes them out. Use it as a context manager: leaving the block stops it.

    Pushes and replies are queued without waiting, so no sender ever waits for a slow receiver;
    a socket that falls `size` frames behind is closed (backpressure by cut-off). An idle socket
    holds no task and no future (memory per idle socket is what a small box runs out of).
    """

    __slots__ = ("ws", "_hub", "_size", "_frames", "_writer", "_space", "_closed")

    def __init__(self, hub: Hub, ws: web.WebSocketResponse, size: int) -> None:
        self.ws = ws
        self._hub = hub
        self._size = size
        self._frames: deque[bytes] | None = None  # made on first use: a deque is ~0.7 KB
        self._writer: asyncio.Task[None] | None = None
        self._space: asyncio.Future[None] | None = None  # a `send` waiting for room
        self._closed = False

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def put(self, data: bytes) -> None:
        """Queue one text frame (UTF-8 JSON); close the socket if it is too far behind."""
        if self._closed:
            return
        if self._frames is None:
            self._frames = deque()
        elif len(self._frames) >= self._size:
            self.cut_off()
            return
        self._frames.append(data)
        if self._writer is None:
            self._writer = asyncio.create_task(self._write())

    @property
    def size(self) -> int:
        """Frames that may wait before the socket is cut off."""
        return self._size

    def backlog(self) -> int:
        """Frames waiting to be written."""
        return len(self._frames) if self._frames is not None else 0

    async def room(self, below: int) -> None:
        """Return once fewer than `below` frames wait, or the outbox is stopped."""
        while self.backlog() >= below and not self._closed:
            if self._space is None:
                self._space = asyncio.get_running_loop().create_future()
            await self._space

    async def send(self, data: bytes) -> None:
        """Queue one text frame, waiting while the queue is full (for long fetch answers).

        Raises ConnectionResetError once the outbox is stopped (the socket is closing).
        """
        await self.room(self._size)
        if self._closed:
            raise ConnectionResetError("the socket is closing")
        self.put(data)

    def cut_off(self) -> None:
        """Close the socket with 1013: its peer is too far behind (its messages stay stored)."""
        if not self._closed:
            log.warning("socket fell %d frames behind; closing it", self._size)
            self.stop()
            self._hub.spawn(close_socket(self.ws, WSCloseCode.TRY_AGAIN_LATER, b"too far behind",
                                         self._hub.close_timeout))

    async def _write(self) -> None:
        frames = self._frames
        assert frames is not None
        try:
            while frames:
                await self.ws.send_frame(frames.popleft(), WSMsgType.TEXT)
                self._wake_sender()
            self._frames = None  # idle again: give the deque back
        except ConnectionError:
            self.stop()  # the peer went away; the socket handler's loop ends and unregisters us
        finally:
            self._writer = None

    def _wake_sender(self) -> None:
        if self._space is not None:
            if not self._space.done():
                self._space.set_result(None)
            self._space = None

    def stop(self) -> None:
        """Drop what waits and take no more (the socket is closed or being closed).

        The writer is not cancelled: it ends after the frame it is writing, or when the connection
        is lost. Cancelling it mid-write would also cancel aiohttp's drain, and the close that
        follows could then never time out and abort a peer that does not read.
        """
        self._closed = True
        if self._frames is not None:
            self._frames.clear()
        self._wake_sender()


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


class _Receiving(_Membership):
    """Async context manager: `outbox` gets every push for `phone` within the block. The block's
    value is True when this is the phone's first receive socket (the user came online)."""

    __slots__ = ()

    async def __aenter__(self) -> bool:
        first = self._key not in self._index
        self.__enter__()
        return first

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__(*exc)


class _SessionSocket(_Membership):
    """Async context manager: a socket of a login session, served by the current task, within the
    block. `Hub.close` asks for a close by cancelling that task; the block's exit honours it: it
    closes the socket from the serving task itself, with the client's answer awaited (aiohttp
    drops the connection when another task closes it), and ends the cancellation."""

    __slots__ = ("_hub",)

    def __init__(self, hub: Hub, sid_hash: str, ws: web.WebSocketResponse) -> None:
        super().__init__(hub._sessions, sid_hash, ws)  # noqa: SLF001 - the hub's own registry
        self._hub = hub

    async def __aenter__(self) -> None:
        self.__enter__()
        task = asyncio.current_task()
        if task is not None:
            self._hub._handlers[self._item] = task  # noqa: SLF001

    async def __aexit__(self, kind: type[BaseException] | None, *exc: object) -> bool:
        hub, ws = self._hub, self._item
        try:
            if kind is None or not issubclass(kind, asyncio.CancelledError):
                return False
            request = hub._close_requests.pop(ws, None)  # noqa: SLF001
            if request is None:
                return False  # a real cancellation (the peer went away, the server stops)
            asyncio.current_task().uncancel()  # type: ignore[union-attr]  # asked for
            await close_socket(ws, *request, hub.close_timeout)
            return True
        finally:
            hub._handlers.pop(ws, None)  # noqa: SLF001
            self.__exit__()


class _RoomMembership:
    """Async context manager: a room socket is in its room, first holding broadcasts (see
    Hub.release)."""

    __slots__ = ("_rooms", "_room", "_outbox")

    def __init__(self, rooms: dict[str, dict[Outbox, Any]], room: str, outbox: Outbox) -> None:
        self._rooms, self._room, self._outbox = rooms, room, outbox

    async def __aenter__(self) -> None:
        self._rooms.setdefault(self._room, {})[self._outbox] = []

    async def __aexit__(self, *exc: object) -> None:
        mine = self._rooms.get(self._room)
        if mine is not None:
            mine.pop(self._outbox, None)
            if not mine:
                del self._rooms[self._room]


class Hub:
    """Open receive sockets per phone, and every open socket per login session.

    `push(phone, data)` never blocks and never raises for a bad socket.
    """

    def __init__(self, queue_size: int, close_timeout: float) -> None:
        self._queue_size = queue_size
        self.close_timeout = close_timeout  # seconds a closing handshake may take
        self._receivers: dict[str, set[Outbox]] = {}
        self._sessions: dict[str, set[web.WebSocketResponse]] = {}
        # the task serving each socket, and the closes asked of them (see `close`)
        self._handlers: dict[web.WebSocketResponse, asyncio.Task[Any]] = {}
        self._close_requests: dict[web.WebSocketResponse, tuple[int, bytes]] = {}
        self._group_sockets: dict[tuple[str, str], set[web.WebSocketResponse]] = {}
        # room -> its sockets; a socket that has not had its history yet holds its broadcasts
        self._rooms: dict[str, dict[Outbox, list[tuple[int, bytes]] | None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Called once before serving (a hub shared by processes connects here)."""

    async def stop(self) -> None:
        """Called once after every socket is closed."""

    def spawn(self, coro: object) -> None:
        """Run a coroutine in the background, keeping a reference until it ends."""
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def outbox(self, ws: web.WebSocketResponse) -> Outbox:
        """A new outbox for `ws` (use it as a context manager)."""
        return Outbox(self, ws, self._queue_size)

    def receiving(self, phone: str, outbox: Outbox) -> _Receiving:
        """`async with hub.receiving(phone, outbox) as came_online:` within the block, `outbox`
        gets every push for `phone` (a receive socket). `came_online` is True when `phone` had no
        receive socket before (in any process, for a hub shared by several)."""
        return _Receiving(self._receivers, phone, outbox)

    def session_socket(self, sid_hash: str, ws: web.WebSocketResponse) -> _SessionSocket:
        """`async with`: within the block, `ws` belongs to a login session (logging out closes
        it) and is served by the current task; a close asked by `close` is carried out when the
        block is left."""
        return _SessionSocket(self, sid_hash, ws)

    async def close(self, ws: web.WebSocketResponse, code: int, message: bytes) -> None:
        """Close `ws` with a full closing handshake (RFC 6455 7.1.1: wait for the client's close
        frame, at most `close_timeout` seconds). aiohttp's `close()` called from another task than
        the one reading the socket drops the connection right after our close frame, so the
        serving task is asked to close it itself: it is cancelled, and its `session_socket`
        block closes the socket on the way out. Returns when it has."""
        task = self._handlers.get(ws)
        if task is None or task.done() or task is asyncio.current_task():
            await close_socket(ws, code, message, self.close_timeout)
            return
        self._close_requests[ws] = (code, message)
        task.cancel()
        await asyncio.wait({task}, timeout=2 * self.close_timeout)
        if not task.done():
            await close_socket(ws, code, message, self.close_timeout)

    def group_socket(self, grp: str, phone: str, ws: web.WebSocketResponse) -> _Membership:
        """Within the block, removing `phone` from group `grp` closes `ws`."""
        return _Membership(self._group_sockets, (grp, phone), ws)

    async def close_group_member(self, grp: str, phone: str) -> None:
        """Close `phone`'s sockets of group `grp` (SPEC 5: removal from a group closes them)."""
        sockets = tuple(self._group_sockets.get((grp, phone), ()))
        await asyncio.gather(*(self.close(ws, WSCloseCode.POLICY_VIOLATION, b"removed from group")
                               for ws in sockets))

    def in_room(self, room: str, outbox: Outbox) -> _RoomMembership:
        """`async with`: within the block, `outbox` gets the room's broadcasts — held until
        `release`, after its history is sent, so that none comes before the history, or twice."""
        return _RoomMembership(self._rooms, room, outbox)

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

    def has_receivers(self, phone: str) -> bool:
        """True while `phone` holds at least one receive socket in this process."""
        return phone in self._receivers

    async def is_online(self, phone: str) -> bool:
        """True while `phone` holds at least one receive socket (in any process, for a hub
        shared by several)."""
        return phone in self._receivers

    async def close_session(self, sid_hash: str) -> None:
        """Close every socket of a login session (SPEC 4 /logout) with 1008 policy violation."""
        sockets = tuple(self._sessions.get(sid_hash, ()))
        await asyncio.gather(*(self.close(ws, WSCloseCode.POLICY_VIOLATION, b"logged out")
                               for ws in sockets))

    async def close_all(self) -> None:
        """Close every socket with 1001 going away (server shutdown)."""
        sockets = {ws for group in self._sessions.values() for ws in group}
        await asyncio.gather(*(self.close(ws, WSCloseCode.GOING_AWAY, b"server shutdown")
                               for ws in sockets))
        for task in tuple(self._tasks):
            task.cancel()
