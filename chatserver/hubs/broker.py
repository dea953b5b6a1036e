"""The two parts a hub hands its cross-process work to, as interfaces, and their in-process
versions: `Broker` (publish and subscribe between the processes sharing one deployment) and
`Presence` (which of those processes hold a receive socket of a phone). docs/hub.md explains
how the hub composes them; `chatserver/hubs/redis.py` has the Redis versions.

The in-process versions do nothing: with one process, every socket is in the hub's own registries.
Their methods return at once (no await suspends, nothing is allocated), and the hub does not even
call the in-process broker's publish methods on its hot path (push, broadcast).
"""

from __future__ import annotations

from collections.abc import Awaitable, Generator, Mapping, Sequence
from typing import Final, Generic, Protocol, TypeVar

T = TypeVar("T")


class HubUnavailable(ConnectionError):
    """What a broker or presence could not reach at start-up (a ConnectionError, so that
    `run.py serve` prints one line and exits 2)."""


class Deliveries(Protocol):
    """What a broker hands to the hub of its process: publications of the other processes.

    Called from the broker's own task, never awaited; each must queue and return.
    """

    def deliver_push(self, phone: str, data: bytes, skip: str | None = None) -> None:
        """A push for `phone` (a text frame, UTF-8 JSON) to this process's receive sockets but
        those of device `skip` (a session hash)."""

    def deliver_broadcast(self, room: str, data: bytes, seq: int | None) -> None:
        """A broadcast to this process's sockets in `room`; `seq` is the stored message's id, or
        None for what is not stored (typing)."""

    def deliver_control(self, request: Mapping[str, str]) -> None:
        """A request of another process to close sockets here: `{"op": "close_session",
        "sid_hash"}`, `{"op": "close_group_member", "grp", "phone"}`, `{"op": "close_room",
        "room"}` (its creator closed it, SPEC 13) or `{"op": "close_socket", "socket"}` (a
        socket id `Presence.admit` found past the cap)."""


class Broker(Protocol):
    """Publish and subscribe between the processes of one deployment (centrifuge's `Broker`,
    encode/broadcaster's backends).

    Channels are per user (pushes to its receive sockets), per room (broadcasts) and one for
    control requests (closes asked of every process). A process subscribes to a user's or a room's
    channel once per socket that needs it and unsubscribes once when that socket leaves; the
    broker counts. Publishing never waits and never raises (delivery between processes is at most
    once; the database is the truth about messages). A publication is delivered to the other
    processes only: the publishing hub has delivered it to its own sockets already.
    """

    async def start(self, hub: Deliveries) -> None:
        """Connect and start delivering other processes' publications to `hub`.

        Raises HubUnavailable when the broker cannot be reached.
        """

    async def stop(self, timeout: float) -> None:
        """Send what waits (at most `timeout` seconds), then disconnect. Safe to call twice, or
        after a failed `start`."""

    async def ping(self) -> None:
        """One round trip to what the broker shares (SPEC 11 /healthz). Raises HubUnavailable
        when it does not answer."""

    async def subscribe_user(self, phone: str) -> None:
        """One more receive socket here wants `phone`'s pushes; returns once the subscription is
        live (confirmed), so that nothing published afterwards can miss the socket (SPEC 5.2),
        or after a deadline when the broker is away (logged)."""

    def unsubscribe_user(self, phone: str) -> None:
        """One receive socket of `phone` here left."""

    async def subscribe_room(self, room: str) -> None:
        """One more socket here is in `room`; returns as `subscribe_user` does (SPEC 5.4)."""

    def unsubscribe_room(self, room: str) -> None:
        """One socket here left `room`."""

    def publish_user(self, phone: str, data: bytes, skip: str | None = None) -> None:
        """Publish a push for `phone`'s receive sockets in the other processes but those of
        device `skip` (a session hash). Two publications of one process arrive in their order in
        every other process."""

    def publish_room(self, room: str, data: bytes, seq: int | None) -> None:
        """Publish a broadcast to `room` (`seq`: the stored message's id, None for typing)."""

    async def publish_control(self, request: Mapping[str, str]) -> None:
        """Ask every other process to close sockets (see `Deliveries.deliver_control`); returns
        once the request is sent, or given up on (logged)."""


class Presence(Protocol):
    """Which other processes hold a receive socket of a phone (centrifuge's `PresenceManager`).

    The hub knows its own sockets; a presence part answers for the others. `claim` and `release`
    are made in the order they are called, and a count asked later is answered after them: a
    process that has released a phone, then asks, never counts itself.
    """

    async def start(self) -> None:
        """Connect; raises HubUnavailable when the presence store cannot be reached."""

    async def stop(self, timeout: float) -> None:
        """Release every claim of this process (at most `timeout` seconds) and disconnect."""

    def claim(self, phone: str) -> Awaitable[int | None]:
        """The first receive socket of `phone` in this process opened. Made at the call; the
        awaitable gives how many other processes claim `phone`, or None when unknown (the
        presence store did not answer)."""

    def release(self, phone: str) -> None:
        """The last receive socket of `phone` in this process closed."""

    def others(self, phone: str) -> Awaitable[int | None]:
        """How many other processes claim `phone` (None: unknown), asked at the call."""

    def admit(self, slot: str, socket: str, limit: int) -> Awaitable[list[str] | None]:
        """A socket with id `socket` (unique among processes) opened in `slot` (a user's
        receive sockets, or its sockets on one dialogue, group or room: SPEC 10
        `limits.sockets_per_user`), counted with every process's sockets of that slot. Made at
        the call; the awaitable gives the ids of the oldest past `limit`, of any process, taken
        out of the count for the hub to close; None when unknown."""

    def leave(self, slot: str, socket: str) -> None:
        """Socket `socket` of `slot` closed (made after its `admit`)."""

    def enter_room(self, room: str, phone: str) -> None:
        """The first socket of `phone` in `room` in this process opened (SPEC 13: a room's
        `online` count). Made at the call, in order with `leave_room` and `room_counts`."""

    def leave_room(self, room: str, phone: str) -> None:
        """The last socket of `phone` in `room` in this process closed."""

    def room_counts(self, rooms: Sequence[str]) -> Awaitable[list[int] | None]:
        """For each of `rooms`, how many distinct users have a socket in it in any process,
        this one included (its entries made before the call count); None when unknown."""


class _Ready(Generic[T]):
    """An awaitable whose value is known at once: awaiting it never suspends."""

    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value = value

    def __await__(self) -> Generator[None, None, T]:
        return self._value
        yield  # a generator without suspension point: `await` returns at once


# No other process exists: nobody else claims anyone, and no socket elsewhere counts.
_NOBODY_ELSE: Final = _Ready[int | None](0)
_NONE_ELSEWHERE: Final = _Ready[list[str] | None]([])
_UNKNOWN_COUNTS: Final = _Ready[list[int] | None](None)


class LocalBroker:
    """The broker of a single process: there is nobody to publish to or hear from."""

    async def start(self, hub: Deliveries) -> None:
        """Nothing to connect."""

    async def stop(self, timeout: float) -> None:
        """Nothing to send or disconnect."""

    async def ping(self) -> None:
        """Nothing to reach."""

    async def subscribe_user(self, phone: str) -> None:
        """Every publication is local: delivered by the hub itself."""

    def unsubscribe_user(self, phone: str) -> None:
        """Nothing was subscribed."""

    async def subscribe_room(self, room: str) -> None:
        """Every broadcast is local: delivered by the hub itself."""

    def unsubscribe_room(self, room: str) -> None:
        """Nothing was subscribed."""

    def publish_user(self, phone: str, data: bytes, skip: str | None = None) -> None:
        """No other process."""

    def publish_room(self, room: str, data: bytes, seq: int | None) -> None:
        """No other process."""

    async def publish_control(self, request: Mapping[str, str]) -> None:
        """No other process."""


class LocalPresence:
    """The presence of a single process: who is online is the hub's own registry of receive
    sockets, not counted twice here (memory per idle socket)."""

    async def start(self) -> None:
        """Nothing to connect."""

    async def stop(self, timeout: float) -> None:
        """Nothing to release."""

    def claim(self, phone: str) -> Awaitable[int | None]:
        """No other process claims anyone."""
        return _NOBODY_ELSE

    def release(self, phone: str) -> None:
        """Nothing was recorded."""

    def others(self, phone: str) -> Awaitable[int | None]:
        """No other process claims anyone."""
        return _NOBODY_ELSE

    def admit(self, slot: str, socket: str, limit: int) -> Awaitable[list[str] | None]:
        """The hub counts its own sockets (and never asks a local presence)."""
        return _NONE_ELSEWHERE

    def leave(self, slot: str, socket: str) -> None:
        """Nothing was recorded."""

    def enter_room(self, room: str, phone: str) -> None:
        """The hub counts its own room sockets (and never asks a local presence)."""

    def leave_room(self, room: str, phone: str) -> None:
        """Nothing was recorded."""

    def room_counts(self, rooms: Sequence[str]) -> Awaitable[list[int] | None]:
        """Unknown here: the hub counts its own room sockets."""
        return _UNKNOWN_COUNTS
