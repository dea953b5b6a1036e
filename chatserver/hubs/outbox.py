"""`Outbox`: the bounded outgoing queue of one socket and the task that writes it out; and
`close_socket`, the closing handshake with a deadline. See docs/hub.md ("Outboxes")."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING

from aiohttp import WSCloseCode, WSMsgType, web

from ..metrics import CUT_OFF

if TYPE_CHECKING:
    from .local import Hub

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

    __slots__ = ("ws", "device", "_hub", "_size", "_frames", "_writer", "_space", "_closed")

    def __init__(self, hub: Hub, ws: web.WebSocketResponse, size: int) -> None:
        self.ws = ws
        # The session hash of the device whose receive socket this is (SPEC 7), set by
        # Hub.receiving: a copy of one's own message skips the device that sent it.
        self.device: str | None = None
        self._hub = hub
        self._size = size
        self._frames: deque[bytes] | None = None  # made on first use: a deque is ~0.7 KB
        self._writer: asyncio.Task[None] | None = None
        self._space: asyncio.Future[None] | None = None  # a `send` waiting for space
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

    async def wait_for_space(self, below: int) -> None:
        """Return once fewer than `below` frames wait, or the outbox is stopped."""
        while self.backlog() >= below and not self._closed:
            if self._space is None:
                self._space = asyncio.get_running_loop().create_future()
            await self._space

    async def send(self, data: bytes) -> None:
        """Queue one text frame, waiting while the queue is full (for long fetch answers).

        Raises ConnectionResetError once the outbox is stopped (the socket is closing).
        """
        await self.wait_for_space(self._size)
        if self._closed:
            raise ConnectionResetError("the socket is closing")
        self.put(data)

    def cut_off(self) -> None:
        """Close the socket with 1013: its peer is too far behind (its messages stay stored)."""
        if not self._closed:
            CUT_OFF.inc()
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
