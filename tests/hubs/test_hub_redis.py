"""The Redis broker and presence (chatserver/hubs/redis.py): two hubs composed with them on one
prefix in one test, as two server processes would be, each behind an aiohttp server of its own
with real sockets; and the broker and the presence on their own.

The servers here are small: their socket handlers use the hub exactly as `ws.py` does (register,
then serve frames; honour `Hub.close`) without a store, so the two "processes" share nothing but
Redis. `tests/system/test_scaleout.py` runs the whole server in real processes.

Covered: pushes across hubs, in order, delivered once; room broadcasts across hubs, held until the
history is sent; logout and removal from a group closing sockets in the other hub; presence across
hubs and the lapse of a dead process's claims (presence alone); publications delivered once per
origin and never back to their publisher (broker alone); subscription before the first frame and release
after the last socket; resubscription after `CLIENT KILL`; a clear start-up error when Redis cannot
be reached. Without CHAT_TEST_REDIS_URL these tests are skipped, except the start-up error ones,
which need no Redis. Every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
import redis.asyncio as redis
from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer

from chatserver.app import create_app
from chatserver.config import Config, Database, HubSettings, Security
from chatserver.hubs.broker import HubUnavailable
from chatserver.hubs.local import Hub
from chatserver.hubs.redis import RedisBroker, RedisPresence
from helpers import backends
from helpers.server import REPO, free_port, write_config
from helpers.timing import TIMEOUT
from helpers.ws import WS, assert_quiet, recv

QUEUE: Final = 1000
CLOSE_TIMEOUT: Final = 0.5
# A presence claim's lifetime in the presence tests: long enough for renewals every third of it
# on a busy machine, short enough to wait for a lapse.
SHORT_TTL: Final = 1.0
# Nothing listens on port 1: the connection is refused at once.
UNREACHABLE: Final = "redis://:s3cret@127.0.0.1:1/0"

hub_key: Final = web.AppKey("hub", Hub)
left_key: Final = web.AppKey("left", asyncio.Queue)

ServerFactory = Callable[..., Awaitable[TestServer]]
ClientFactory = Callable[..., Awaitable[TestClient]]


# -- two "processes" --------------------------------------------------------------------------


async def _serve(ws: web.WebSocketResponse, answer: Callable[[str], dict[str, Any]]) -> None:
    """Answer each text frame with `answer(text)` until the socket closes (a close the hub asks
    for is carried out by the handler's `session_socket` block, as in chatserver/ws.py)."""
    async for msg in ws:
        if msg.type is WSMsgType.TEXT:
            await ws.send_json(answer(msg.data))


async def receive_handler(request: web.Request) -> web.WebSocketResponse:
    """/recv/{phone}/{sid}: a receive socket of `phone` in login session `sid` (its device, SPEC
    7). Each frame is answered `{"came_online": ...}` (the registration's value), so an answer
    proves that the socket is registered and subscribed."""
    hub = request.app[hub_key]
    phone, sid = request.match_info["phone"], request.match_info["sid"]
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    try:
        async with hub.session_socket(sid, ws):
            with hub.outbox(ws) as outbox:
                async with hub.receiving(phone, outbox, sid) as came_online:
                    await _serve(ws, lambda _: {"came_online": came_online})
    finally:
        request.app[left_key].put_nowait(phone)
    return ws


async def room_handler(request: web.Request) -> web.WebSocketResponse:
    """/room/{room}: a room socket. The frame "release N" stands for "history up to N sent"
    (Hub.release) and is answered `{"released": N}`; any other frame `{"in_room": true}`."""
    hub = request.app[hub_key]
    room = request.match_info["room"]
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async with hub.session_socket("room", ws):
        with hub.outbox(ws) as outbox:
            async with hub.in_room(room, outbox):
                def answer(text: str) -> dict[str, Any]:
                    if text.startswith("release "):
                        after = int(text.split()[1])
                        hub.release(room, outbox, after)
                        return {"released": after}
                    return {"in_room": True}
                await _serve(ws, answer)
    return ws


async def group_handler(request: web.Request) -> web.WebSocketResponse:
    """/group/{grp}/{phone}/{sid}: `phone`'s send socket in group `grp`."""
    hub = request.app[hub_key]
    grp, phone, sid = (request.match_info[k] for k in ("grp", "phone", "sid"))
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async with hub.session_socket(sid, ws):
        with hub.group_socket(grp, phone, ws):
            await _serve(ws, lambda _: {"in_group": grp})
    return ws


@dataclass
class Proc:
    """One "server process": its hub (with its broker and presence), its server, and a client to
    open sockets on it."""

    hub: Hub
    broker: RedisBroker
    presence: RedisPresence
    server: TestServer
    client: TestClient

    @property
    def left(self) -> asyncio.Queue[str]:
        """Phones whose receive socket handler has ended, in order."""
        return self.server.app[left_key]

    async def receive(self, phone: str, sid: str = "s") -> tuple[WS, bool]:
        """Open a receive socket and wait until it is served; returns it and `came_online`."""
        ws = await self.client.ws_connect(f"/recv/{phone}/{sid}")
        await ws.send_str("hello")
        reply = await recv(ws)
        return ws, reply["came_online"]

    async def room(self, room: str, released_after: int | None = 0) -> WS:
        """Open a room socket, wait until it is in the room, and release it after message id
        `released_after` (None: leave it holding)."""
        ws = await self.client.ws_connect(f"/room/{room}")
        await ws.send_str("hello")
        assert await recv(ws) == {"in_room": True}
        if released_after is not None:
            await release(ws, released_after)
        return ws

    async def group(self, grp: str, phone: str, sid: str = "s") -> WS:
        ws = await self.client.ws_connect(f"/group/{grp}/{phone}/{sid}")
        await ws.send_str("hello")
        assert await recv(ws) == {"in_group": grp}
        return ws

    async def gone(self, ws: WS, phone: str) -> None:
        """Close a receive socket of `phone` and wait until its handler has ended."""
        await ws.close()
        async with asyncio.timeout(TIMEOUT):
            assert await self.left.get() == phone


async def release(ws: WS, after: int) -> None:
    await ws.send_str(f"release {after}")
    assert await recv(ws) == {"released": after}


async def hub_ctx(app: web.Application) -> AsyncIterator[None]:
    await app[hub_key].start()
    yield
    await app[hub_key].stop()


async def close_sockets(app: web.Application) -> None:
    await app[hub_key].close_all()


@pytest.fixture
async def rds() -> AsyncIterator[redis.Redis]:
    """A plain client of the test Redis, to look at keys and connections."""
    client = redis.Redis.from_url(backends.REDIS_URL)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def start_proc(aiohttp_server: ServerFactory, aiohttp_client: ClientFactory,
               redis_prefix: str) -> Callable[..., Awaitable[Proc]]:
    """Start one more "process" on the test's prefix."""
    async def start() -> Proc:
        broker = RedisBroker(backends.REDIS_URL, redis_prefix)
        presence = RedisPresence(backends.REDIS_URL, redis_prefix, broker.id)
        hub = Hub(QUEUE, CLOSE_TIMEOUT, broker, presence)
        app = web.Application()
        app[hub_key] = hub
        app[left_key] = asyncio.Queue()
        app.router.add_get("/recv/{phone}/{sid}", receive_handler)
        app.router.add_get("/room/{room}", room_handler)
        app.router.add_get("/group/{grp}/{phone}/{sid}", group_handler)
        app.cleanup_ctx.append(hub_ctx)
        app.on_shutdown.append(close_sockets)
        server = await aiohttp_server(app)
        return Proc(hub, broker, presence, server, await aiohttp_client(server))
    return start


@pytest.fixture
async def start_presence(redis_prefix: str) -> AsyncIterator[Callable[..., Awaitable[RedisPresence]]]:
    """Start one more process's presence on the test's prefix (stopped after the test)."""
    started: list[RedisPresence] = []

    async def start(**kwargs: Any) -> RedisPresence:
        presence = RedisPresence(backends.REDIS_URL, redis_prefix, **kwargs)
        await presence.start()
        started.append(presence)
        return presence
    yield start
    for presence in started:
        await presence.stop(CLOSE_TIMEOUT)


@pytest.fixture
async def start_broker(redis_prefix: str) -> AsyncIterator[Callable[[], Awaitable[tuple[RedisBroker,
                                                                                     Recorded]]]]:
    """Start one more process's broker on the test's prefix, delivering to a `Recorded`."""
    started: list[RedisBroker] = []

    async def start() -> tuple[RedisBroker, Recorded]:
        broker, heard = RedisBroker(backends.REDIS_URL, redis_prefix), Recorded(asyncio.Queue())
        await broker.start(heard)
        started.append(broker)
        return broker, heard
    yield start
    for broker in started:
        await broker.stop(CLOSE_TIMEOUT)


def frames(*numbers: int) -> list[dict[str, int]]:
    return [{"n": n} for n in numbers]


def encode(frame: dict[str, Any]) -> bytes:
    return json.dumps(frame).encode()


async def until(check: Callable[[], Awaitable[bool]], timeout: float = TIMEOUT) -> None:
    """Poll `check` until it is true; fail after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.02)


async def subscribers(rds: redis.Redis, channel: str) -> int:
    [(_, count)] = await rds.pubsub_numsub(channel)
    return int(count)


async def closed_with(ws: WS, code: int) -> None:
    """`ws` is closed by the server with `code`, within TIMEOUT."""
    msg = await ws.receive(timeout=TIMEOUT)
    assert msg.type is WSMsgType.CLOSE, msg
    assert msg.data == code, msg


# -- pushes -------------------------------------------------------------------------------------


async def test_pushes_reach_every_receive_socket_in_both_hubs_once_and_in_order(
        start_proc: Callable[..., Awaitable[Proc]]) -> None:
    p1, p2 = await start_proc(), await start_proc()
    here, _ = await p1.receive("100")
    there1, _ = await p2.receive("100")
    there2, _ = await p2.receive("100")
    other, _ = await p2.receive("200")

    count = 300
    for n in range(count):
        p1.hub.push("100", encode({"n": n}))
    for ws in (here, there1, there2):
        assert [await recv(ws) for _ in range(count)] == frames(*range(count))
    # The publishing hub does not deliver its own publication a second time.
    await assert_quiet(here)
    await assert_quiet(other)

    # And the other way round.
    p2.hub.push("100", encode({"n": -1}))
    for ws in (here, there1, there2):
        assert await recv(ws) == {"n": -1}
    await assert_quiet(there1)


async def test_a_push_that_skips_a_device_reaches_its_other_devices_in_both_hubs(
        start_proc: Callable[..., Awaitable[Proc]]) -> None:
    """SPEC 7.2: the copy of a message sent from device s1 reaches the user's other devices, in
    this process and the other, and no socket of s1 in either."""
    p1, p2 = await start_proc(), await start_proc()
    sockets = [(sid, (await p.receive("150", sid))[0]) for p in (p1, p2) for sid in ("s1", "s2")]
    p1.hub.push("150", encode({"n": 1}), skip="s1")
    p1.hub.push("150", encode({"n": 2}))
    for sid, ws in sockets:
        expected = frames(2) if sid == "s1" else frames(1, 2)
        assert [await recv(ws) for _ in expected] == expected
    await assert_quiet(*(ws for _, ws in sockets))


async def test_a_receive_socket_is_not_served_before_its_subscription_is_confirmed(
        start_proc: Callable[..., Awaitable[Proc]], rds: redis.Redis, redis_prefix: str) -> None:
    """No frame is read before the subscription is confirmed: a push made after the socket's first
    answer can never miss it."""
    p1, p2 = await start_proc(), await start_proc()
    # Keep p2 from sending SUBSCRIBE for a while (the lock its subscription sender takes).
    async with p2.broker._sub_lock:  # noqa: SLF001
        ws = await p2.client.ws_connect("/recv/300/s")
        await ws.send_str("hello")
        await assert_quiet(ws)  # not served: the subscription is not there yet
        assert await subscribers(rds, f"{redis_prefix}:user:300") == 0
    assert await recv(ws) == {"came_online": True}
    p1.hub.push("300", encode({"n": 1}))
    assert await recv(ws) == {"n": 1}


async def test_a_hub_unsubscribes_when_the_last_socket_leaves(
        start_proc: Callable[..., Awaitable[Proc]], rds: redis.Redis, redis_prefix: str) -> None:
    """A process receives only what concerns its own sockets."""
    p1 = await start_proc()
    channel = f"{redis_prefix}:user:400"
    first, _ = await p1.receive("400")
    second, _ = await p1.receive("400")
    assert await subscribers(rds, channel) == 1  # one subscription for both sockets
    await p1.gone(first, "400")
    assert await subscribers(rds, channel) == 1
    await p1.gone(second, "400")

    async def unsubscribed() -> bool:
        return await subscribers(rds, channel) == 0
    await until(unsubscribed)

    room_ws = await p1.room("lobby")
    assert await subscribers(rds, f"{redis_prefix}:room:lobby") == 1
    await room_ws.close()

    async def room_unsubscribed() -> bool:
        return await subscribers(rds, f"{redis_prefix}:room:lobby") == 0
    await until(room_unsubscribed)
    assert await subscribers(rds, f"{redis_prefix}:control") == 1  # the control channel stays


# -- rooms --------------------------------------------------------------------------------------


async def test_broadcasts_reach_both_hubs_and_wait_for_the_history(
        start_proc: Callable[..., Awaitable[Proc]]) -> None:
    p1, p2 = await start_proc(), await start_proc()
    sender = await p1.room("r")
    watcher = await p2.room("r")  # released: shows when p2 has what p1 published
    joining = await p2.room("r", released_after=None)  # its history is still being sent

    typing = {"typing": True}
    p1.hub.broadcast("r", encode({"n": 1}), 1)
    p1.hub.broadcast("r", encode(typing))
    p1.hub.broadcast("r", encode({"n": 2}), 2)
    for ws in (sender, watcher):
        assert [await recv(ws) for _ in range(3)] == [{"n": 1}, typing, {"n": 2}]
    await assert_quiet(sender)  # once: its own publication is not delivered again
    await assert_quiet(joining)  # held, not dropped: p2 has read them (the watcher got them)

    # The history ended with message 1: only 2 comes after it; typing was not held.
    await release(joining, 1)
    assert await recv(joining) == {"n": 2}
    await assert_quiet(joining)

    # A broadcast of a message already in the history, late from another process, is dropped;
    # newer ones and typing arrive.
    p1.hub.broadcast("r", encode({"n": 1}), 1)
    p1.hub.broadcast("r", encode({"n": 3}), 3)
    p1.hub.broadcast("r", encode(typing))
    assert [await recv(joining) for _ in range(2)] == [{"n": 3}, typing]
    await assert_quiet(joining)
    for ws in (sender, watcher):  # their history ended before 1
        assert [await recv(ws) for _ in range(3)] == [{"n": 1}, {"n": 3}, typing]

    # From p2 to p1 as well.
    p2.hub.broadcast("r", encode({"n": 4}), 4)
    for ws in (sender, watcher, joining):
        assert await recv(ws) == {"n": 4}


# -- closes ---------------------------------------------------------------------------------------


async def test_logout_closes_the_sessions_sockets_in_every_hub(
        start_proc: Callable[..., Awaitable[Proc]]) -> None:
    p1, p2 = await start_proc(), await start_proc()
    here, _ = await p1.receive("500", sid="gone")
    there, _ = await p2.receive("500", sid="gone")
    there_group = await p2.group("g1", "500", sid="gone")
    kept, _ = await p2.receive("500", sid="kept")  # another login of the same user

    await p1.hub.close_session("gone")
    # This process's socket is closed when close_session returns.
    assert here.closed or (await here.receive(timeout=TIMEOUT)).type is WSMsgType.CLOSE
    for ws in (there, there_group):
        await closed_with(ws, WSCloseCode.POLICY_VIOLATION)
    await kept.send_str("hello")
    assert await recv(kept) == {"came_online": False}


async def test_removal_from_a_group_closes_that_members_group_sockets_in_every_hub(
        start_proc: Callable[..., Awaitable[Proc]]) -> None:
    p1, p2 = await start_proc(), await start_proc()
    removed_here = await p1.group("g", "600")
    removed_there = await p2.group("g", "600")
    other_member = await p2.group("g", "700")
    other_group = await p2.group("h", "600")

    await p1.hub.close_group_member("g", "600")
    for ws in (removed_here, removed_there):
        await closed_with(ws, WSCloseCode.POLICY_VIOLATION)
    for ws, grp in ((other_member, "g"), (other_group, "h")):
        await ws.send_str("hello")
        assert await recv(ws) == {"in_group": grp}


# -- presence -------------------------------------------------------------------------------------


async def test_presence_spans_both_hubs(start_proc: Callable[..., Awaitable[Proc]]) -> None:
    p1, p2 = await start_proc(), await start_proc()
    assert not await p1.hub.is_online("800")
    here, came_online = await p1.receive("800")
    assert came_online
    assert await p2.hub.is_online("800")
    assert not p2.hub.has_receivers("800")  # local only
    there, came_online = await p2.receive("800")
    assert not came_online  # online already, through p1

    await p1.gone(here, "800")
    assert not p1.hub.has_receivers("800")
    assert await p1.hub.is_online("800")  # still has a socket in p2
    await p2.gone(there, "800")
    # p2's own check runs after its withdrawal (one presence task, in order) ...
    assert not await p2.hub.is_online("800")
    # ... so from then on no process sees the user online.
    assert not await p1.hub.is_online("800")

    # Back, in p2 first this time.
    again, came_online = await p2.receive("800")
    assert came_online
    assert await p1.hub.is_online("800")
    await again.close()


async def test_a_dead_process_stops_counting_users_as_online_within_its_claims_lifetime(
        start_presence: Callable[..., Awaitable[RedisPresence]], rds: redis.Redis,
        redis_prefix: str) -> None:
    doomed = await start_presence(ttl=SHORT_TTL)
    other = await start_presence(ttl=SHORT_TTL)
    key = f"{redis_prefix}:online:900"
    assert await doomed.claim("900") == 0
    assert await other.others("900") == 1

    # While it lives, its claim is renewed: still online once its first claim has lapsed.
    first_claim = await rds.zscore(key, doomed.id)
    assert first_claim is not None

    async def past_first_claim() -> bool:
        seconds, micros = await rds.time()
        return seconds * 1000 + micros // 1000 > first_claim + 100
    await until(past_first_claim)
    assert await other.others("900") == 1

    # Killed: no renewal, no withdrawal (what kill -9 leaves behind).
    for task in doomed._workers:  # noqa: SLF001
        task.cancel()
    killed = time.monotonic()

    async def offline() -> bool:
        return await other.others("900") == 0
    await until(offline, timeout=SHORT_TTL + TIMEOUT)
    assert time.monotonic() - killed < SHORT_TTL + 1.0

    async def key_gone() -> bool:
        return not await rds.exists(key)
    await until(key_gone)  # expires with its newest claim


async def test_presence_counts_other_processes_in_the_order_asked(
        start_presence: Callable[..., Awaitable[RedisPresence]], rds: redis.Redis,
        redis_prefix: str) -> None:
    """Claims, releases and counts of one process reach Redis in the order they were made: a
    process that releases a phone and then asks never counts itself, nor a released claim."""
    one, two = await start_presence(), await start_presence()
    assert await one.others("950") == 0
    assert await one.claim("950") == 0
    assert await two.claim("950") == 1
    assert (await one.others("950"), await two.others("950")) == (1, 1)
    two.release("950")
    assert await two.others("950") == 1  # asked after its release: only `one` counts
    assert await one.others("950") == 0
    one.release("950")
    assert await one.others("950") == 0
    assert not await rds.zrange(f"{redis_prefix}:online:950", 0, -1)


async def test_a_stopped_presence_withdraws_its_claims(
        start_presence: Callable[..., Awaitable[RedisPresence]]) -> None:
    leaving, staying = await start_presence(), await start_presence()
    leaving.claim("960")
    leaving.claim("961")
    await leaving.stop(CLOSE_TIMEOUT)
    assert (await staying.others("960"), await staying.others("961")) == (0, 0)


async def test_presence_counts_a_slots_sockets_over_processes_and_pops_the_oldest(
        start_presence: Callable[..., Awaitable[RedisPresence]], rds: redis.Redis,
        redis_prefix: str) -> None:
    """SPEC 10 sockets per user: the oldest past the cap, whichever process opened it, is
    popped; a socket that leaves right after it was admitted is not left behind (one task keeps
    the order of admit and leave)."""
    one, two = await start_presence(), await start_presence()
    slot = "receive:970"
    assert await one.admit(slot, "one-1", 2) == []
    assert await two.admit(slot, "two-1", 2) == []
    assert await two.admit(slot, "two-2", 2) == ["one-1"]
    assert await one.admit(slot, "one-2", 2) == ["two-1"]
    # Admitted and gone before its answer was read: nothing stays counted.
    quick = one.admit(slot, "one-3", 3)
    one.leave(slot, "one-3")
    assert await quick == []
    assert await one.admit(slot, "one-4", 3) == []
    members = await rds.zrange(f"{redis_prefix}:sockets:{slot}", 0, -1)
    assert members == [b"two-2", b"one-2", b"one-4"]
    for socket, presence in (("two-2", two), ("one-2", one), ("one-4", one)):
        presence.leave(slot, socket)
    assert (await one.others("970"), await two.others("970")) == (0, 0)  # after the leaves
    assert not await rds.exists(f"{redis_prefix}:sockets:{slot}")


# -- the broker alone -------------------------------------------------------------------------------


@dataclass
class Recorded:
    """A `Deliveries` that writes down what its broker hands it."""

    calls: asyncio.Queue[tuple[Any, ...]]

    def deliver_push(self, phone: str, data: bytes, skip: str | None = None) -> None:
        self.calls.put_nowait(("push", phone, data, skip))

    def deliver_broadcast(self, room: str, data: bytes, seq: int | None) -> None:
        self.calls.put_nowait(("broadcast", room, data, seq))

    def deliver_control(self, request: Mapping[str, str]) -> None:
        self.calls.put_nowait(("control", dict(request)))

    async def next(self) -> tuple[Any, ...]:
        async with asyncio.timeout(TIMEOUT):
            return await self.calls.get()


async def test_a_broker_carries_what_its_hub_subscribed_to_and_nothing_back(
        start_broker: Callable[[], Awaitable[tuple[RedisBroker, Recorded]]]) -> None:
    (one, heard_one), (two, heard_two) = await start_broker(), await start_broker()
    await two.subscribe_user("970")
    await two.subscribe_room("lobby")
    one.publish_user("970", b"a")
    one.publish_user("971", b"not subscribed")
    one.publish_user("970", b"copy", skip="sid-1")  # SPEC 7.2: the head carries the device
    one.publish_room("lobby", b"b", 7)
    one.publish_room("lobby", b"typing", None)
    await one.publish_control({"op": "close_session", "sid_hash": "x"})
    assert [await heard_two.next() for _ in range(5)] == [
        ("push", "970", b"a", None), ("push", "970", b"copy", "sid-1"),
        ("broadcast", "lobby", b"b", 7), ("broadcast", "lobby", b"typing", None),
        ("control", {"op": "close_session", "sid_hash": "x"})]
    # The publisher hears none of it, its own control request included.
    await one.subscribe_user("970")
    one.publish_user("970", b"c")
    assert await heard_two.next() == ("push", "970", b"c", None)
    assert heard_one.calls.empty()
    # Unsubscribed: no longer delivered (a later publication shows the earlier one was skipped).
    two.unsubscribe_user("970")
    two.unsubscribe_room("lobby")
    await two.subscribe_user("972")
    one.publish_user("970", b"gone")
    one.publish_user("972", b"d")
    assert await heard_two.next() == ("push", "972", b"d", None)
    assert heard_two.calls.empty()


# -- failures -------------------------------------------------------------------------------------


async def test_the_subscriptions_come_back_after_the_connection_is_killed(
        start_proc: Callable[..., Awaitable[Proc]], rds: redis.Redis, redis_prefix: str,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="chatserver.hubs.redis")
    p1, p2 = await start_proc(), await start_proc()
    inbox, _ = await p2.receive("1000")
    room_ws = await p2.room("k")
    name = f"{redis_prefix}:hub:{p2.broker.id}:sub"

    async def connection_id() -> int | None:
        return next((int(c["id"]) for c in await rds.client_list() if c["name"] == name), None)

    killed = await connection_id()
    assert killed is not None
    await rds.client_kill_filter(_id=killed)

    async def resubscribed() -> bool:
        current = await connection_id()
        return (current not in (None, killed)
                and await subscribers(rds, f"{redis_prefix}:user:1000") == 1
                and await subscribers(rds, f"{redis_prefix}:room:k") == 1
                and await subscribers(rds, f"{redis_prefix}:control") == 2)
    await until(resubscribed)

    for n in range(20):
        p1.hub.push("1000", encode({"n": n}))
    assert [await recv(inbox) for _ in range(20)] == frames(*range(20))
    p1.hub.broadcast("k", encode({"n": 99}), 99)
    assert await recv(room_ws) == {"n": 99}
    # A socket opened after the reconnection is subscribed on the new connection.
    late, _ = await p2.receive("1001")
    p1.hub.push("1001", encode({"n": 7}))
    assert await recv(late) == {"n": 7}

    messages = [r.getMessage() for r in caplog.records if r.name == "chatserver.hubs.redis"]
    assert any("pub/sub failed" in m for m in messages), messages
    assert any("subscribed again" in m for m in messages), messages


async def test_pushes_go_on_after_the_publishing_connection_is_killed(
        start_proc: Callable[..., Awaitable[Proc]], rds: redis.Redis, redis_prefix: str) -> None:
    p1, p2 = await start_proc(), await start_proc()
    inbox, _ = await p2.receive("1100")
    p1.hub.push("1100", encode({"n": 0}))
    assert await recv(inbox) == {"n": 0}
    name = f"{redis_prefix}:hub:{p1.broker.id}"
    for c in await rds.client_list():
        if c["name"] == name:
            await rds.client_kill_filter(_id=int(c["id"]))
    # The batch that meets the dead connection is sent again on a new one; none is lost.
    for n in range(1, 6):
        p1.hub.push("1100", encode({"n": n}))
    assert [await recv(inbox) for _ in range(5)] == frames(*range(1, 6))


async def test_start_fails_clearly_when_redis_cannot_be_reached() -> None:
    hub = Hub(QUEUE, CLOSE_TIMEOUT, RedisBroker(UNREACHABLE, "chat"),
              RedisPresence(UNREACHABLE, "chat"))
    with pytest.raises(HubUnavailable) as caught:
        await hub.start()
    message = str(caught.value)
    assert message.startswith("cannot reach the Redis hub at redis://:***@127.0.0.1:1/0"), message
    assert "s3cret" not in message
    await hub.stop()  # nothing to stop; does not raise


async def test_presence_start_fails_clearly_when_redis_cannot_be_reached() -> None:
    presence = RedisPresence(UNREACHABLE, "chat")
    with pytest.raises(HubUnavailable) as caught:
        await presence.start()
    message = str(caught.value)
    assert message.startswith("cannot reach the Redis hub at redis://:***@127.0.0.1:1/0"), message
    assert "s3cret" not in message
    await presence.stop(CLOSE_TIMEOUT)  # nothing to stop; does not raise


async def test_an_app_with_an_unreachable_hub_does_not_start(
        aiohttp_server: ServerFactory, tmp_path: Path) -> None:
    config = Config(database=Database(path=str(tmp_path / "chat.db")),
                    security=Security(bcrypt_rounds=4), hub=HubSettings(url=UNREACHABLE))
    with pytest.raises(HubUnavailable):
        await aiohttp_server(create_app(config))


def test_serve_exits_2_with_one_line_when_redis_cannot_be_reached(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.toml", {
        "database": {"path": str(tmp_path / "chat.db")},
        "security": {"bcrypt_rounds": 4},
        "hub": {"url": UNREACHABLE},
    })
    done = subprocess.run([sys.executable, "run.py", "serve", "--config", str(config),
                           "--port", str(free_port())], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 2, done
    assert "error: cannot start: cannot reach the Redis hub at redis://:***@127.0.0.1:1/0" \
        in done.stderr, done.stderr
    assert "s3cret" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr, done.stderr


async def test_a_publication_read_before_is_dropped(
        start_proc: Callable[..., Awaitable[Proc]], rds: redis.Redis, redis_prefix: str) -> None:
    """A batch sent again after a failure (see `_Commands.execute` in chatserver/hubs/redis.py) may
    repeat publications that went out the first time: receivers keep, per origin, the number of
    the latest one read."""
    p1 = await start_proc()
    inbox, _ = await p1.receive("1200")
    channel = f"{redis_prefix}:user:1200"
    for number, n in ((5, 1), (5, 1), (4, 0), (6, 2), (7, 3), (6, 2)):
        await rds.publish(channel, b"0123456789abcdef %d -\n%s" % (number, encode({"n": n})))
    await rds.publish(channel, b"fedcba9876543210 1 -\n" + encode({"n": 4}))  # another origin
    assert [await recv(inbox) for _ in range(4)] == frames(1, 2, 3, 4)
    await assert_quiet(inbox)


async def test_a_device_is_online_in_every_hub_while_it_has_a_receive_socket_in_one(
        start_proc: Callable[..., Awaitable[Proc]]) -> None:
    """SPEC 9: no Web Push to a device with a receive socket open in any process (a presence
    claim "<phone>/<device>" per process, held from its first socket to its last there)."""
    p1, p2 = await start_proc(), await start_proc()
    assert not await p2.hub.device_online("810", "dev-a")
    first, _ = await p1.receive("810", "dev-a")
    second, _ = await p1.receive("810", "dev-a")
    assert await p2.hub.device_online("810", "dev-a")
    assert not await p2.hub.device_online("810", "dev-b")  # another device of the same phone
    await p1.gone(first, "810")
    assert await p2.hub.device_online("810", "dev-a")  # its second socket is still open
    await p1.gone(second, "810")
    # p1's own question runs after its release (one presence task, in order) ...
    assert not await p1.hub.device_online("810", "dev-a")
    # ... so from then on no process sees the device online.
    assert not await p2.hub.device_online("810", "dev-a")
