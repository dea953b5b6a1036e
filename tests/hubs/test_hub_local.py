"""The hub composed with a broker and a presence (chatserver/hubs/local.py), with recording fakes
in place of Redis: what the hub asks of them, in which order, and what it does with what they
bring. No sockets: an outbox here is anything with `put`. Runs without any service."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from typing import Any

import pytest

from chatserver.config import Config, HubSettings
from chatserver.hubs import make_hub
from chatserver.hubs.broker import LocalBroker, LocalPresence
from chatserver.hubs.local import Hub


class Inbox:
    """Stands for an Outbox: keeps what is put."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def put(self, data: bytes) -> None:
        self.frames.append(data)


class Broker:
    """A broker that writes down every call; subscriptions wait for `confirm`."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.confirm = asyncio.Event()
        self.confirm.set()

    async def start(self, hub: Any) -> None:
        self.calls.append(("start",))

    async def stop(self, timeout: float) -> None:
        self.calls.append(("stop",))

    async def subscribe_user(self, phone: str) -> None:
        self.calls.append(("subscribe_user", phone))
        await self.confirm.wait()

    def unsubscribe_user(self, phone: str) -> None:
        self.calls.append(("unsubscribe_user", phone))

    async def subscribe_room(self, room: str) -> None:
        self.calls.append(("subscribe_room", room))
        await self.confirm.wait()

    def unsubscribe_room(self, room: str) -> None:
        self.calls.append(("unsubscribe_room", room))

    def publish_user(self, phone: str, data: bytes, skip: str | None = None) -> None:
        self.calls.append(("publish_user", phone, data, skip))

    def publish_room(self, room: str, data: bytes, seq: int | None) -> None:
        self.calls.append(("publish_room", room, data, seq))

    async def publish_control(self, request: Mapping[str, str]) -> None:
        self.calls.append(("publish_control", dict(request)))


class Presence:
    """A presence where `elsewhere` lists the phones another process claims."""

    def __init__(self, *elsewhere: str) -> None:
        self.elsewhere = set(elsewhere)
        self.calls: list[tuple[str, str]] = []

    async def start(self) -> None:
        pass

    async def stop(self, timeout: float) -> None:
        pass

    async def _count(self, phone: str) -> int | None:
        return int(phone in self.elsewhere)

    def claim(self, phone: str) -> Awaitable[int | None]:
        self.calls.append(("claim", phone))
        return self._count(phone)

    def release(self, phone: str) -> None:
        self.calls.append(("release", phone))

    def others(self, phone: str) -> Awaitable[int | None]:
        self.calls.append(("others", phone))
        return self._count(phone)


def composed(*elsewhere: str) -> tuple[Hub, Broker, Presence]:
    broker, presence = Broker(), Presence(*elsewhere)
    return Hub(100, 0.5, broker, presence), broker, presence


def test_make_hub_composes_the_in_process_parts_without_a_url() -> None:
    hub = make_hub(Config())
    assert isinstance(hub._broker, LocalBroker)  # noqa: SLF001
    assert isinstance(hub._presence, LocalPresence)  # noqa: SLF001


def test_make_hub_refuses_an_unknown_scheme() -> None:
    with pytest.raises(ValueError, match="no hub engine for 'nats'"):
        make_hub(Config(hub=HubSettings(url="nats://127.0.0.1:4222")))


async def test_the_in_process_hub_delivers_and_counts_presence_by_itself() -> None:
    hub = make_hub(Config())
    inbox = Inbox()
    async with hub.receiving("100", inbox) as came_online:
        assert came_online
        async with hub.receiving("100", Inbox()) as again:
            assert not again
        hub.push("100", b"a")
        assert inbox.frames == [b"a"]
        assert await hub.is_online("100")
    assert not hub.has_receivers("100")
    assert not await hub.is_online("100")


async def test_a_receive_socket_is_served_once_subscribed_and_claimed_and_leaves_both() -> None:
    hub, broker, presence = composed("200")
    broker.confirm.clear()
    entered = asyncio.Event()

    async def socket() -> bool:
        async with hub.receiving("100", Inbox()) as came_online:
            entered.set()
            await asyncio.sleep(0)
        return came_online

    task = asyncio.create_task(socket())
    await asyncio.sleep(0.05)
    assert not entered.is_set()  # the subscription is not confirmed yet
    assert hub.has_receivers("100")  # but registered: what comes right after finds it
    broker.confirm.set()
    assert await task is True
    assert broker.calls == [("subscribe_user", "100"), ("unsubscribe_user", "100")]
    assert presence.calls == [("claim", "100"), ("release", "100")]

    # Claimed elsewhere: not "came online"; a second socket here neither claims nor releases.
    async with hub.receiving("200", Inbox()) as first:
        async with hub.receiving("200", Inbox()) as second:
            assert (first, second) == (False, False)
    assert presence.calls[2:] == [("claim", "200"), ("release", "200")]


async def test_a_receive_socket_cancelled_while_subscribing_leaves_nothing_behind() -> None:
    hub, broker, presence = composed()
    broker.confirm.clear()

    async def socket() -> None:
        async with hub.receiving("300", Inbox()):
            pytest.fail("served without its subscription")

    task = asyncio.create_task(socket())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not hub.has_receivers("300")
    assert broker.calls == [("subscribe_user", "300"), ("unsubscribe_user", "300")]
    assert presence.calls == [("claim", "300"), ("release", "300")]


async def test_push_and_broadcast_deliver_here_and_publish() -> None:
    hub, broker, _ = composed()
    inbox, member = Inbox(), Inbox()
    async with hub.receiving("400", inbox), hub.in_room("r", member):
        hub.release("r", member, 0)
        hub.push("400", b"p")
        hub.broadcast("r", b"b", 1)
        hub.broadcast("r", b"typing")
        assert inbox.frames == [b"p"]
        assert member.frames == [b"b", b"typing"]
    assert ("publish_user", "400", b"p", None) in broker.calls
    assert [c for c in broker.calls if c[0] == "publish_room"] == [
        ("publish_room", "r", b"b", 1), ("publish_room", "r", b"typing", None)]


async def test_a_push_that_skips_a_device_reaches_the_others_here_and_is_published_so() -> None:
    """SPEC 7.2: a copy of one's own message goes to every receive socket of the user but those
    of the sending device; the other processes are told which device to skip."""
    hub, broker, _ = composed()
    sender, sender_tab, other, unknown = Inbox(), Inbox(), Inbox(), Inbox()
    async with hub.receiving("450", sender, "sid-1"), hub.receiving("450", sender_tab, "sid-1"), \
            hub.receiving("450", other, "sid-2"), hub.receiving("450", unknown):
        hub.push("450", b"copy", skip="sid-1")
        hub.push("450", b"to all")
        hub.deliver_push("450", b"from elsewhere", "sid-2")
    assert sender.frames == sender_tab.frames == [b"to all", b"from elsewhere"]
    assert other.frames == [b"copy", b"to all"]
    assert unknown.frames == [b"copy", b"to all", b"from elsewhere"]
    assert [c for c in broker.calls if c[0] == "publish_user"] == [
        ("publish_user", "450", b"copy", "sid-1"), ("publish_user", "450", b"to all", None)]


async def test_broadcasts_from_elsewhere_are_held_until_the_history_then_not_repeated() -> None:
    hub, _, _ = composed()
    member = Inbox()
    async with hub.in_room("r", member):
        hub.deliver_broadcast("r", b"1", 1)
        hub.deliver_broadcast("r", b"typing", None)  # not held: dropped
        hub.deliver_broadcast("r", b"3", 3)
        assert member.frames == []
        hub.release("r", member, 1)  # the history ended with 1
        assert member.frames == [b"3"]
        hub.deliver_broadcast("r", b"1", 1)  # late from another process: in the history
        hub.deliver_broadcast("r", b"4", 4)
        hub.deliver_broadcast("r", b"typing", None)
        assert member.frames == [b"3", b"4", b"typing"]
    hub.deliver_broadcast("r", b"5", 5)  # left the room
    assert member.frames == [b"3", b"4", b"typing"]


async def test_is_online_asks_the_presence_only_for_a_phone_with_no_socket_here() -> None:
    hub, _, presence = composed("600")
    async with hub.receiving("500", Inbox()):
        assert await hub.is_online("500")
    assert await hub.is_online("600")
    assert not await hub.is_online("700")
    assert [c for c in presence.calls if c[0] == "others"] == [("others", "600"), ("others", "700")]


async def test_closes_are_published_for_the_other_processes() -> None:
    hub, broker, _ = composed()
    await hub.close_session("sid")
    await hub.close_group_member("g", "800")
    assert broker.calls == [
        ("publish_control", {"op": "close_session", "sid_hash": "sid"}),
        ("publish_control", {"op": "close_group_member", "grp": "g", "phone": "800"})]


async def test_device_online_is_per_device_claimed_with_its_first_socket_released_with_its_last() -> None:
    """SPEC 9: a device with a receive socket open gets no Web Push. A shared hub claims
    "<phone>/<device>" in the presence while the device has a socket here, and asks the presence
    about a device it has no socket of."""
    hub, _, presence = composed("300/sid-far")
    assert not await hub.device_online("300", "sid-1")
    async with hub.receiving("300", Inbox(), "sid-1"):
        async with hub.receiving("300", Inbox(), "sid-1"), hub.receiving("300", Inbox(), "sid-2"):
            assert await hub.device_online("300", "sid-1")
            assert await hub.device_online("300", "sid-2")
        assert await hub.device_online("300", "sid-1")  # its other socket is still open
        assert not await hub.device_online("300", "sid-2")
    assert not await hub.device_online("300", "sid-1")
    assert await hub.device_online("300", "sid-far")  # claimed by another process
    device_claims = [c for c in presence.calls if "/" in c[1] and c[0] != "others"]
    assert device_claims == [("claim", "300/sid-1"), ("claim", "300/sid-2"),
                             ("release", "300/sid-2"), ("release", "300/sid-1")]


async def test_the_in_process_hub_knows_its_devices_without_a_presence() -> None:
    hub = make_hub(Config())
    async with hub.receiving("310", Inbox(), "sid-1"):
        assert await hub.device_online("310", "sid-1")
        assert not await hub.device_online("310", "sid-2")
        assert not await hub.device_online("311", "sid-1")  # another phone's device
    assert not await hub.device_online("310", "sid-1")
