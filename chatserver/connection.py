"""`Conn`: one open socket as the commands see it: whose it is, to whom it talks, and how to
answer, with pipelining (commands waiting for the group commit), the answers' order, and
backpressure on a client that sends faster than it is served. See docs/connection.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

from .config import Config
from .hubs.local import Hub
from .hubs.outbox import Outbox
from .metrics import RATE_LIMITED_ACK, RATE_LIMITED_MESSAGE, RATE_LIMITED_TYPING, count_error
from .protocol import ProtocolError, Reason, encode, error_frame
from .push import NO_PUSH, Notifier
from .stores.base import AttachmentRefused, MailboxFull, NotMember, Store, StoreError
from .throttle import Throttle

T = TypeVar("T")

log = logging.getLogger(__name__)

# SPEC 5.1: at most one typing push per second per socket.
TYPING_INTERVAL: Final = 1.0
# The error frame's reason when the store failed: nothing was committed, the client may retry.
STORE_FAILED: Final = "the server could not store this just now; nothing was saved, try again"
# Frames of one socket whose writes may wait for a commit at once; past that, the socket is not
# read until some are committed (backpressure towards a client that sends faster than we commit).
MAX_IN_FLIGHT: Final = 64


class Sending(Protocol):
    """Who sends a message, as the shared part of the commands sees it (commands.
    personal_message, group_message): a socket's `Conn`, or a token's request to POST
    /api/v1/messages (sendapi.py). `device` is the sending device's session hash (SPEC 7.2:
    its copies go to the user's other devices), `push` the Web Push queue (SPEC 9)."""

    @property
    def user(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def store(self) -> Store: ...
    @property
    def hub(self) -> Hub: ...
    @property
    def config(self) -> Config: ...
    @property
    def throttle(self) -> Throttle: ...
    @property
    def push(self) -> Notifier: ...


async def take_message_token(sender: Sending) -> None:
    """Count one message of `sender.user` against the user's rate (`limits.messages_per_second`,
    all sockets and token requests together); raises ProtocolError (Reason.RATE_LIMITED) over
    the limit."""
    if not await sender.throttle.allow_message(sender.user):
        RATE_LIMITED_MESSAGE.inc()
        rate = sender.config.limits.messages_per_second
        raise ProtocolError(f"message rate limit exceeded ({rate:g} per second)",
                            Reason.RATE_LIMITED)


@dataclass(slots=True)
class Conn:
    """One open socket as the commands see it: whose it is, to whom it talks, how to answer.

    `peer` is the dialogue's other phone on a personal socket, the group key on a group socket,
    the room name on a room socket and the user's own phone on a receive socket. `device` is the
    session hash of the device (SPEC 7) whose socket it is; `push` queues Web Pushes (SPEC 9).
    """

    user: str
    peer: str
    outbox: Outbox
    store: Store
    hub: Hub
    config: Config
    throttle: Throttle
    device: str = ""
    push: Notifier = NO_PUSH
    last_typing: float = float("-inf")
    in_flight: int = 0
    _space: asyncio.Future[None] | None = None  # dispatch waiting for in_flight to drop
    _tail: asyncio.Future[Any] | None = None  # the latest write still waiting for its commit

    def put(self, frame: Mapping[str, Any]) -> None:
        """Queue a frame back on this socket (never waits)."""
        self.outbox.put(encode(frame))

    async def reply(self, frame: Mapping[str, Any]) -> None:
        """Queue a frame back on this socket, waiting while its queue is full."""
        await self.outbox.send(encode(frame))

    def refuse(self, text: str, type_: str, reason: str = Reason.INVALID) -> None:
        """Answer the SPEC 5.5 error frame (`text` for the person; `reason`, one of
        protocol.REASONS, counted), after the answers to earlier frames still waiting for their
        commit (so that a client sees its answers in the order of its frames)."""
        count_error(reason)
        frame = error_frame(text, type_, self.user, self.peer)
        if self.in_flight == 0 or self._tail is None:
            self.put(frame)
        else:  # done callbacks run in the order they were added: after the earlier answers
            self.in_flight += 1  # a deferred answer counts against MAX_IN_FLIGHT too

            def answer(_: asyncio.Future[Any]) -> None:
                self._settled()
                self.put(frame)

            self._tail.add_done_callback(answer)

    def _settled(self) -> None:
        """One frame of this socket no longer waits for a commit."""
        self.in_flight -= 1
        if self._space is not None and self.in_flight < MAX_IN_FLIGHT:
            if not self._space.done():
                self._space.set_result(None)
            self._space = None

    def later(self, type_: str, write: asyncio.Future[T], done: Callable[[T], None]) -> None:
        """Run `done(result)` once `write` is committed; a ProtocolError it raises, or a failed
        write, becomes an error frame of type `type_`."""
        self.in_flight += 1
        self._tail = write

        def committed(future: asyncio.Future[T]) -> None:
            self._settled()
            try:
                done(future.result())
            except ProtocolError as e:
                text, reason = str(e), e.reason
            except NotMember:
                text, reason = "you are not a participant of this group", Reason.NOT_MEMBER
            except MailboxFull as e:  # SPEC 10; nothing stored
                text, reason = str(e), Reason.MAILBOX_FULL
            except AttachmentRefused as e:  # SPEC 8; nothing stored
                text, reason = str(e), Reason.ATTACHMENT
            except StoreError:  # StoreClosed too
                # Nothing was committed, so nothing was acknowledged: the client may retry.
                log.exception("store failure during %s", type_)
                text, reason = STORE_FAILED, Reason.STORE_FAILED
            else:
                return
            count_error(reason)
            self.put(error_frame(text, type_, self.user, self.peer))

        write.add_done_callback(committed)

    async def wait_in_flight(self) -> None:
        """Return once fewer than MAX_IN_FLIGHT of this socket's frames await their commit."""
        while self.in_flight >= MAX_IN_FLIGHT:
            self._space = asyncio.get_running_loop().create_future()
            await self._space

    async def wait_outbox(self) -> None:
        """Backpressure on a client that sends faster than it reads its answers: stop reading its
        frames while half its outbox waits; cut it off if that lasts `websocket.close_timeout`."""
        half = self.outbox.size // 2
        if self.outbox.backlog() < half:
            return
        try:
            async with asyncio.timeout(self.hub.close_timeout):
                await self.outbox.wait_for_space(half)
        except TimeoutError:
            self.outbox.cut_off()

    async def take_message_token(self) -> None:
        """Count one message against the user's rate; raises ProtocolError over the limit."""
        await take_message_token(self)

    async def take_ack_token(self) -> None:
        """Count one acknowledgement or read receipt against the user's rate (SPEC 10
        `limits.acks_per_second`); raises ProtocolError over the limit."""
        if not await self.throttle.allow_ack(self.user):
            RATE_LIMITED_ACK.inc()
            rate = self.config.limits.acks_per_second
            raise ProtocolError(f"acknowledgement rate limit exceeded ({rate:g} per second)",
                                Reason.RATE_LIMITED)

    async def typing_allowed(self) -> bool:
        """True at most once per TYPING_INTERVAL seconds on this socket, and within the user's
        typing rate over all sockets."""
        now = time.monotonic()
        if now - self.last_typing < TYPING_INTERVAL:
            RATE_LIMITED_TYPING.inc()
            return False
        self.last_typing = now
        if await self.throttle.allow_typing(self.user):
            return True
        RATE_LIMITED_TYPING.inc()
        return False
