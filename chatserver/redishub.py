"""The Redis hub (`[hub] url`): `Hub`'s methods for several server processes, on one host or many,
sharing one Redis and one database. A user's sockets may live in any of the processes.

Each process delivers to its own sockets at once, as the in-memory hub does, and publishes for the
others. All names start with `<prefix>:`:

- `<prefix>:user:<phone>` (pub/sub): pushes for that user's receive sockets. A process subscribes
  when the phone's first receive socket registers there and unsubscribes when its last one leaves.
- `<prefix>:room:<room>` (pub/sub): the room's broadcasts; subscribed likewise by room socket.
- `<prefix>:control` (pub/sub): closes asked of every process (logout, removal from a group);
  always subscribed.
- `<prefix>:online:<phone>` (sorted set): presence, below.

A publication is `<origin> <number> <seq>\\n<frame>`: `origin` is the publishing process's id
(16 hex digits; a process skips its own publications, delivered locally already), `number` counts
that process's publications from 1, `seq` is a room message's id or `-`, and `frame` the text frame
exactly as the sockets get it (for control, a JSON object `{"op": "close_session", "sid_hash"}` or
`{"op": "close_group_member", "grp", "phone"}`).

**Order, once.** Publications go through one local queue drained by one task, pipelined on one
connection, and Redis delivers one connection's publications in order: two pushes to a phone from
one process arrive in that order in every process. A pipeline that fails is sent again (a pooled
connection that Redis closed while idle fails once); a receiver drops a publication whose
`number` is not above the latest it read from that origin, so nothing arrives twice.

**Subscription before service.** A receive socket is registered locally and its channel is
subscribed, with Redis's confirmation awaited, before the socket's first frame is read; a room
socket likewise before its history is read (SPEC 5.2, 5.4: nothing published after the client's
first fetch, or after the history, can miss the socket). The remote broadcasts of a room are
held, as local ones are (`Hub.release`), and once released, those already in the history (id not
above it, late from another process) are dropped.

**Presence.** `<prefix>:online:<phone>` holds the ids of the processes with a receive socket of
that phone, each scored by when its claim lapses (milliseconds, Redis's own clock read in a
script, so hosts need not agree on the time). A process claims the phone when its first receive
socket there opens, withdraws when its last closes, and renews every claim it holds every third of
`presence_ttl` (default PRESENCE_TTL seconds). A crashed process's claims lapse within
`presence_ttl`, and the key expires with its newest claim. Chosen over a key with a TTL per
(phone, process) because `is_online` is then one read of one key, with no SCAN and no registry of
processes; the price is one renewal per online user per period, batched in one script call per
RENEW_BATCH users. Presence operations go through one task, in order, so that a process's
withdrawal reaches Redis before its own "is this user still online anywhere?" check: of two
processes losing a user's last sockets at once, at least one then sees the user offline and says
so (`ws._went_offline`). A crashed process's users are not announced offline to their contacts;
they only stop counting as online.

**Failures.** `start()` raises HubUnavailable (a ConnectionError, so `run.py serve` prints one line
and exits 2) when Redis cannot be reached. While serving, a lost pub/sub connection is logged and
replaced, with everything wanted subscribed again, retrying with a backoff up to RECONNECT_MAX
seconds; an idle one is pinged every PING_SECONDS so that a silently dead one is noticed.
Delivery between processes is at most once (Redis pub/sub): what is published while a process's
subscription is down does not reach that process's sockets, and a batch of publications that
still fails after RETRY_DELAYS is dropped (logged with a count).
Messages stay stored until acknowledged and clients fetch them on reconnect (SPEC 5.2); typing,
presence and receipts are not replayed. Logouts and removals close the sockets of this process at
once and those of other processes when the control message reaches them, asynchronously.

Needs Redis 5 or later (scripts that read TIME before writing).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline, PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .hub import Hub, Outbox

log = logging.getLogger(__name__)

# Seconds a presence claim lasts unless renewed (renewed every third of it): how long a crashed
# process's users may still count as online.
PRESENCE_TTL: Final = 30.0
# Seconds of silence on the pub/sub connection before it is pinged; three times that without any
# answer and it is taken for dead and replaced.
PING_SECONDS: Final = 10.0
# Seconds a new socket waits for its subscription before it is served anyway (Redis slow or away:
# it then gets this process's pushes at once and the others' once Redis is back).
SUBSCRIBE_TIMEOUT: Final = 5.0
# Seconds to connect to Redis, or to wait for one reply.
REDIS_TIMEOUT: Final = 5.0
# Longest pause between two attempts to reconnect the pub/sub connection, in seconds.
RECONNECT_MAX: Final = 2.0
# Publications waiting for Redis; beyond, new ones are dropped (with a warning) rather than
# growing without bound while Redis does not answer.
MAX_QUEUED: Final = 100_000
# Seconds before each new attempt of a pipeline that failed (the first comes at once).
RETRY_DELAYS: Final = (0.0, 0.2, 1.0)
# Publications per pipeline, and presence keys per renewal script call.
PUBLISH_BATCH: Final = 1000
RENEW_BATCH: Final = 500

# KEYS: presence keys; ARGV[1]: this process's id; ARGV[2]: a claim's lifetime in milliseconds.
# Claims (or renews) each key for this process until now + lifetime, drops lapsed claims, lets the
# key expire with its newest claim, and returns for each key how many other processes claim it.
_CLAIM: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local others = {}
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  redis.call('ZADD', key, now + tonumber(ARGV[2]), ARGV[1])
  local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', key, newest[2])
  others[i] = redis.call('ZCARD', key) - 1
end
return others
"""

# KEYS[1]: a presence key; ARGV[1]: this process's id. How many other processes hold a live claim.
_OTHERS: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
local mine = redis.call('ZSCORE', KEYS[1], ARGV[1])
if mine and tonumber(mine) > now then n = n - 1 end
return n
"""

# What a channel of this process carries (see _deliver).
_USER, _ROOM, _CONTROL = "user", "room", "control"
_NO_SEQ: Final = b"-"


class HubUnavailable(ConnectionError):
    """Redis could not be reached, or refused us, when the hub started."""


def _redacted(url: str) -> str:
    """`url` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=f"{user}{host}{port}"))


class _Receiving:
    """`RedisHub.receiving`: registered and subscribed within the block (see Hub.receiving)."""

    __slots__ = ("_hub", "_phone", "_outbox")

    def __init__(self, hub: RedisHub, phone: str, outbox: Outbox) -> None:
        self._hub, self._phone, self._outbox = hub, phone, outbox

    async def __aenter__(self) -> bool:
        return await self._hub._enter_receiving(self._phone, self._outbox)  # noqa: SLF001

    async def __aexit__(self, *exc: object) -> None:
        self._hub._leave_receiving(self._phone, self._outbox)  # noqa: SLF001


class _InRoom:
    """`RedisHub.in_room`: in the room and subscribed to it within the block (see Hub.in_room)."""

    __slots__ = ("_hub", "_room", "_outbox")

    def __init__(self, hub: RedisHub, room: str, outbox: Outbox) -> None:
        self._hub, self._room, self._outbox = hub, room, outbox

    async def __aenter__(self) -> None:
        await self._hub._enter_room(self._room, self._outbox)  # noqa: SLF001

    async def __aexit__(self, *exc: object) -> None:
        self._hub._leave_room(self._room, self._outbox)  # noqa: SLF001


class RedisHub(Hub):
    """The hub of one process among several that share the Redis at `url` under `prefix`.

    `presence_ttl`: seconds a presence claim lasts unless renewed (tests shorten it).
    Call `start()` before serving and `stop()` after every socket is closed.
    """

    def __init__(self, queue_size: int, close_timeout: float, *, url: str, prefix: str,
                 presence_ttl: float = PRESENCE_TTL) -> None:
        super().__init__(queue_size, close_timeout)
        self._url = url
        self.id = secrets.token_hex(8)  # this process: in publications and presence claims
        self._origin = self.id.encode()
        self._prefix = prefix + ":"
        self._control = f"{self._prefix}control".encode()
        self._presence_ttl = presence_ttl
        self._redis: Redis | None = None  # publications and presence
        self._sub_redis: Redis | None = None  # the pub/sub connection
        self._pubsub: PubSub | None = None  # None while (re)connecting
        self._claim: Any = None
        self._others: Any = None
        # Subscriptions. Wanted: channel -> sockets here that need it, and what it carries.
        self._wanted: dict[bytes, int] = {}
        self._targets: dict[bytes, tuple[str, str]] = {}
        # On the current connection: channels whose last command sent was SUBSCRIBE, and per
        # channel the commands not yet confirmed. A channel is live when it is in the first and
        # not in the second (Redis answers one connection's commands in order).
        self._requested: set[bytes] = set()
        self._unconfirmed: dict[bytes, int] = {}
        self._waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self._sub_lock = asyncio.Lock()  # sending (un)subscriptions vs replacing the connection
        self._sub_changed = asyncio.Event()
        self._heard = 0.0  # loop time of the last thing read from the pub/sub connection
        # Publications for the publisher task: (channel, payload), or (None, future) to resolve
        # once everything queued before it is sent.
        self._outgoing: deque[tuple[bytes | None, Any]] = deque()
        self._outgoing_ready = asyncio.Event()
        self._dropped = 0  # publications dropped or lost since the last warning
        self._number = 0  # of this process's latest publication
        # Per other process, the number of its latest publication read (see _execute).
        self._seen: dict[bytes, int] = {}
        # Presence operations for the presence task: (op, phone, future or None).
        self._presence_ops: list[tuple[str, str, asyncio.Future[Any] | None]] = []
        self._presence_ready = asyncio.Event()
        # Room socket -> the newest message id of the history it was sent (see release).
        self._room_after: dict[Outbox, int] = {}
        self._workers: list[asyncio.Task[None]] = []
        self._failing: set[str] = set()  # what fails now: logged once per outage
        self._stopped = False

    # -- names ------------------------------------------------------------------------------

    def _user_channel(self, phone: str) -> bytes:
        return f"{self._prefix}user:{phone}".encode()

    def _room_channel(self, room: str) -> bytes:
        return f"{self._prefix}room:{room}".encode()

    def _online_key(self, phone: str) -> str:
        return f"{self._prefix}online:{phone}"

    # -- lifetime ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, subscribe to the control channel and start the background tasks.

        Raises HubUnavailable when Redis cannot be reached or does not confirm the subscription
        within SUBSCRIBE_TIMEOUT seconds.
        """
        timeouts = {"socket_timeout": REDIS_TIMEOUT, "socket_connect_timeout": REDIS_TIMEOUT}
        name = f"{self._prefix}hub:{self.id}"  # CLIENT LIST shows which process is which
        # No retries inside redis-py: _execute tries a failed pipeline again itself.
        self._redis = Redis.from_url(self._url, retry=Retry(NoBackoff(), 0), client_name=name,
                                     **timeouts)
        # The pub/sub connection is replaced by _listen, never reconnected behind its back (a
        # reconnect inside redis-py would resubscribe without the confirmations we count).
        self._sub_redis = Redis.from_url(
            self._url, retry=Retry(NoBackoff(), 0, supported_errors=()),
            client_name=f"{name}:sub", **timeouts)
        self._claim = self._redis.register_script(_CLAIM)
        self._others = self._redis.register_script(_OTHERS)
        self._want(self._control, (_CONTROL, ""))
        where = _redacted(self._url)
        try:
            await self._redis.ping()
            async with self._sub_lock:
                await self._open_pubsub()
        except (RedisError, OSError) as e:
            await self._disconnect()
            raise HubUnavailable(f"cannot reach the Redis hub at {where}: {e}") from e
        self._workers = [asyncio.create_task(coro) for coro in (
            self._listen(), self._keep_subscriptions(), self._publish_queued(),
            self._keep_presence())]
        if not await self._until_live(self._control):
            await self.stop()
            raise HubUnavailable(f"the Redis hub at {where} did not confirm a subscription "
                                 f"within {SUBSCRIBE_TIMEOUT:g} s")
        log.info("Redis hub %s started at %s (prefix %r)", self.id, where, self._prefix[:-1])

    async def stop(self) -> None:
        """Send what waits for Redis (at most `close_timeout` seconds), withdraw this process's
        presence claims, stop the background tasks and disconnect."""
        if self._stopped:
            return
        self._stopped = True
        if self._workers:
            loop = asyncio.get_running_loop()
            sent, settled = loop.create_future(), loop.create_future()
            self._outgoing.append((None, sent))
            self._outgoing_ready.set()
            for phone in tuple(self._receivers):  # normally none: every socket is closed by now
                self._presence_op("release", phone)
            self._presence_op("barrier", "", settled)
            await asyncio.wait({sent, settled}, timeout=self.close_timeout)
            for task in self._workers:
                task.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
            self._workers = []
        await self._disconnect()

    async def _disconnect(self) -> None:
        async with self._sub_lock:
            await self._close_pubsub()
        for client in (self._redis, self._sub_redis):
            if client is not None:
                with contextlib.suppress(RedisError, OSError):
                    await client.aclose()

    def _failed(self, what: str, error: BaseException) -> None:
        """Log a failure of `what` ("pub/sub", "publish", "presence") once per outage."""
        if what not in self._failing:
            self._failing.add(what)
            log.warning("Redis hub: %s failed (%s: %s)", what, type(error).__name__, error)

    def _recovered(self, what: str) -> None:
        if what in self._failing:
            self._failing.discard(what)
            log.warning("Redis hub: %s works again", what)

    # -- the pub/sub connection ----------------------------------------------------------------

    async def _open_pubsub(self) -> None:
        """A new pub/sub connection subscribed to every wanted channel (under `_sub_lock`)."""
        assert self._sub_redis is not None
        self._pubsub = self._sub_redis.pubsub()
        self._requested.clear()
        self._unconfirmed.clear()
        channels = list(self._wanted)
        self._sent(channels, subscribe=True)
        await self._pubsub.subscribe(*channels)
        self._heard = asyncio.get_running_loop().time()

    async def _close_pubsub(self) -> None:
        """Drop the pub/sub connection (under `_sub_lock`); nothing is subscribed any more."""
        pubsub, self._pubsub = self._pubsub, None
        self._requested.clear()
        self._unconfirmed.clear()
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()

    def _sent(self, channels: list[bytes], *, subscribe: bool) -> None:
        """Count (UN)SUBSCRIBE commands about to be sent (before sending: a confirmation may be
        read while the send still waits to drain)."""
        for channel in channels:
            self._unconfirmed[channel] = self._unconfirmed.get(channel, 0) + 1
            if subscribe:
                self._requested.add(channel)
            else:
                self._requested.discard(channel)

    def _live(self, channel: bytes) -> bool:
        return channel in self._requested and channel not in self._unconfirmed

    def _confirmed(self, channel: bytes) -> None:
        """Redis confirmed one (un)subscription of `channel`: wake those waiting for it."""
        left = self._unconfirmed.get(channel, 0) - 1
        if left > 0:
            self._unconfirmed[channel] = left
            return
        self._unconfirmed.pop(channel, None)
        if channel in self._requested:
            for waiter in self._waiters.pop(channel, ()):
                if not waiter.done():
                    waiter.set_result(None)

    async def _until_live(self, channel: bytes) -> bool:
        """Wait until `channel` is subscribed; False after SUBSCRIBE_TIMEOUT seconds (logged)."""
        if self._live(channel):
            return True
        waiter = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(channel, [])
        waiters.append(waiter)
        try:
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT):
                await waiter
            return True
        except TimeoutError:
            log.warning("Redis hub: no subscription to %s within %g s; serving without it until "
                        "Redis answers", channel.decode(errors="replace"), SUBSCRIBE_TIMEOUT)
            return False
        finally:
            if waiter in waiters:
                waiters.remove(waiter)
                if not waiters and self._waiters.get(channel) is waiters:
                    del self._waiters[channel]

    def _want(self, channel: bytes, target: tuple[str, str]) -> None:
        """One more socket here needs `channel`."""
        count = self._wanted.get(channel, 0)
        self._wanted[channel] = count + 1
        if count == 0:
            self._targets[channel] = target
            self._sub_changed.set()

    def _unwant(self, channel: bytes) -> None:
        """One socket fewer here needs `channel`."""
        count = self._wanted[channel] - 1
        if count:
            self._wanted[channel] = count
        else:
            del self._wanted[channel]
            del self._targets[channel]
            self._sub_changed.set()

    async def _keep_subscriptions(self) -> None:
        """The one task that sends SUBSCRIBE / UNSUBSCRIBE, batched, to bring the connection to
        what this process's sockets want (a channel wanted again before its UNSUBSCRIBE went out
        costs nothing)."""
        while True:
            await self._sub_changed.wait()
            self._sub_changed.clear()
            async with self._sub_lock:
                pubsub = self._pubsub
                if pubsub is None:
                    continue  # reconnecting: _open_pubsub subscribes everything wanted
                add = [c for c in self._wanted if c not in self._requested]
                drop = [c for c in self._requested if c not in self._wanted]
                try:
                    if add:
                        self._sent(add, subscribe=True)
                        await pubsub.subscribe(*add)
                    if drop:
                        self._sent(drop, subscribe=False)
                        await pubsub.unsubscribe(*drop)
                except Exception as e:
                    if isinstance(e, RedisError | OSError):
                        self._failed("pub/sub", e)
                    else:
                        log.exception("Redis hub: cannot change subscriptions")
                    # The counts no longer match the connection: make the reader fail at once
                    # and replace it.
                    if pubsub.connection is not None:
                        with contextlib.suppress(RedisError, OSError):
                            await pubsub.connection.disconnect(nowait=True)

    async def _listen(self) -> None:
        """The one task reading the pub/sub connection: publications to the sockets here,
        confirmations to `_confirmed`, a PING when it has been quiet; a lost connection is
        replaced (everything wanted subscribed again), retrying with a backoff."""
        loop = asyncio.get_running_loop()
        delay = 0.0
        while True:
            try:
                if self._pubsub is None:
                    async with self._sub_lock:
                        await self._open_pubsub()
                    self._failing.discard("pub/sub")
                    log.warning("Redis hub: pub/sub connection replaced; %d channels subscribed "
                                "again", len(self._wanted))
                pubsub = self._pubsub
                assert pubsub is not None
                while True:
                    message = await pubsub.get_message(timeout=PING_SECONDS)
                    now = loop.time()
                    if message is not None:
                        self._heard = now
                        delay = 0.0  # this connection works
                        self._on_message(message)
                    elif now - self._heard > 3 * PING_SECONDS:
                        raise ConnectionError("no answer to PING")
                    elif now - self._heard > PING_SECONDS:
                        await pubsub.ping()
            except (RedisError, OSError) as e:
                self._failed("pub/sub", e)
            except Exception:  # a bug here must not end delivery for good
                log.exception("Redis hub: pub/sub reader failed; replacing the connection")
            async with self._sub_lock:
                await self._close_pubsub()
            await asyncio.sleep(delay)
            delay = min(RECONNECT_MAX, 2 * delay or 0.05)

    def _on_message(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        try:
            if kind == "message":
                self._deliver(message["channel"], message["data"])
            elif kind in ("subscribe", "unsubscribe"):
                self._confirmed(message["channel"])
            # "pong": hearing it is all that matters
        except Exception:  # a bad publication must not stop the reader
            log.exception("Redis hub: cannot handle a publication on %r", message.get("channel"))

    def _deliver(self, channel: bytes, data: bytes) -> None:
        """A publication from another process, to the sockets here."""
        head, _, frame = data.partition(b"\n")
        origin, number, seq = head.split(b" ")
        if origin == self._origin:
            return  # ours: delivered here when published
        n = int(number)
        if n <= self._seen.get(origin, 0):
            return  # again: its batch was sent twice (see _execute)
        self._seen[origin] = n
        target = self._targets.get(channel)
        if target is None:
            return  # no socket here wants it any more (its UNSUBSCRIBE is on its way)
        kind, name = target
        if kind == _USER:
            Hub.push(self, name, frame)
        elif kind == _ROOM:
            self._deliver_room(name, frame, None if seq == _NO_SEQ else int(seq))
        else:
            self._control_received(json.loads(frame))

    # -- publishing --------------------------------------------------------------------------

    def _publish(self, channel: bytes, frame: bytes, seq: bytes = _NO_SEQ) -> None:
        """Queue a publication for the publisher task (never waits, never raises)."""
        if self._stopped:
            return
        if len(self._outgoing) >= MAX_QUEUED:
            if self._dropped == 0:
                log.warning("Redis hub: %d publications wait for Redis; dropping new ones",
                            MAX_QUEUED)
            self._dropped += 1
            return
        self._number += 1
        self._outgoing.append((channel, b"%s %d %s\n%s" % (self._origin, self._number, seq, frame)))
        self._outgoing_ready.set()

    async def _published(self) -> None:
        """Return once everything queued so far has been published (or given up on), at most
        REDIS_TIMEOUT seconds later."""
        done = asyncio.get_running_loop().create_future()
        self._outgoing.append((None, done))
        self._outgoing_ready.set()
        await asyncio.wait({done}, timeout=REDIS_TIMEOUT)

    async def _publish_queued(self) -> None:
        """The one task that publishes, in queue order, PUBLISH_BATCH to a pipeline. A batch
        that fails is sent again (see _execute): receivers drop what they already had."""
        while True:
            await self._outgoing_ready.wait()
            self._outgoing_ready.clear()
            try:
                await self._publish_all()
            except Exception:  # a bug here must not stop publishing for good
                log.exception("Redis hub: publisher failed")

    async def _publish_all(self) -> None:
        """Publish everything queued, batch by batch."""
        while self._outgoing:
            batch: list[tuple[bytes, bytes]] = []
            done: list[asyncio.Future[None]] = []
            while self._outgoing and len(batch) < PUBLISH_BATCH:
                channel, payload = self._outgoing.popleft()
                if channel is None:
                    done.append(payload)
                else:
                    batch.append((channel, payload))
            if batch:
                async def queue(pipe: Pipeline) -> None:
                    for channel, payload in batch:  # noqa: B023 - awaited within the iteration
                        pipe.publish(channel, payload)
                if await self._execute("publish", queue) is None:
                    self._dropped += len(batch)
                elif self._dropped:
                    log.warning("Redis hub: %d publications were lost", self._dropped)
                    self._dropped = 0
            for future in done:
                if not future.done():
                    future.set_result(None)

    async def _execute(self, what: str,
                       queue: Callable[[Pipeline], Awaitable[None]]) -> list[Any] | None:
        """Run in one round trip the commands `queue` adds to a pipeline; on a failure, run
        them again after each of RETRY_DELAYS (a pooled connection Redis closed while idle fails
        once, and the next attempt gets a new one). Safe to repeat: presence commands are
        idempotent, and a receiver drops a publication whose number it has seen. Returns the
        replies, or None when every attempt failed (logged once per outage)."""
        assert self._redis is not None
        error: BaseException | None = None
        for delay in (0.0, *RETRY_DELAYS):
            if error is not None:
                log.info("Redis hub: %s failed (%s); trying again in %g s", what, error, delay)
                await asyncio.sleep(delay)
            pipe = self._redis.pipeline(transaction=False)
            await queue(pipe)
            try:
                results = await pipe.execute(raise_on_error=False)
            except (RedisError, OSError) as e:
                error = e
                continue
            self._recovered(what)
            return results
        assert error is not None
        self._failed(what, error)
        return None

    async def _control_publish(self, request: dict[str, str]) -> None:
        """Ask every other process to do `request`; returns once it is published (or given up
        on: logged, and this process's part is done regardless)."""
        self._publish(self._control, json.dumps(request).encode())
        await self._published()

    def _control_received(self, request: dict[str, str]) -> None:
        op = request.get("op")
        if op == "close_session":
            self.spawn(Hub.close_session(self, request["sid_hash"]))
        elif op == "close_group_member":
            self.spawn(Hub.close_group_member(self, request["grp"], request["phone"]))
        else:
            log.warning("Redis hub: unknown control request %r", op)

    # -- presence ----------------------------------------------------------------------------

    def _presence_op(self, op: str, phone: str,
                     future: asyncio.Future[Any] | None = None) -> None:
        self._presence_ops.append((op, phone, future))
        self._presence_ready.set()

    async def _keep_presence(self) -> None:
        """The one task that writes and reads presence, in the order asked, pipelined; it also
        renews this process's claims every third of their lifetime."""
        loop = asyncio.get_running_loop()
        renew_at = loop.time() + self._presence_ttl / 3
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(renew_at):
                    await self._presence_ready.wait()
            self._presence_ready.clear()
            ops, self._presence_ops = self._presence_ops, []
            renew = loop.time() >= renew_at
            if renew:
                renew_at = loop.time() + self._presence_ttl / 3
            try:
                await self._run_presence(ops, renew)
            except Exception:  # a bug here must not stop presence for good
                log.exception("Redis hub: presence failed")
                for _, _, future in ops:
                    if future is not None and not future.done():
                        future.set_result(None)

    async def _run_presence(self, ops: list[tuple[str, str, asyncio.Future[Any] | None]],
                            renew: bool) -> None:
        """One round trip for `ops` (and the renewal); a future gets the claim's or the check's
        count of other processes, or None when Redis failed."""
        ttl_ms = max(1, round(self._presence_ttl * 1000))
        asked = [(op, phone, future) for op, phone, future in ops if op != "barrier"]
        # Snapshot now: a phone that leaves later is withdrawn after this renewal, in order.
        renewed = list(self._receivers) if renew else []

        async def queue(pipe: Pipeline) -> None:
            for op, phone, _ in asked:
                key = self._online_key(phone)
                if op == "claim":
                    await self._claim(keys=[key], args=[self.id, ttl_ms], client=pipe)
                elif op == "release":
                    pipe.zrem(key, self.id)
                else:
                    await self._others(keys=[key], args=[self.id], client=pipe)
            for i in range(0, len(renewed), RENEW_BATCH):
                keys = [self._online_key(p) for p in renewed[i:i + RENEW_BATCH]]
                await self._claim(keys=keys, args=[self.id, ttl_ms], client=pipe)

        results = await self._execute("presence", queue) if asked or renewed else []
        for i, (op, _, future) in enumerate(asked):
            if future is None or future.done():
                continue
            result = results[i] if results is not None else None
            if result is None or isinstance(result, Exception):
                future.set_result(None)
            else:
                future.set_result(int(result[0]) if op == "claim" else int(result))
        for op, _, future in ops:
            if op == "barrier" and future is not None and not future.done():
                future.set_result(None)

    def _presence_future(self, op: str, phone: str) -> asyncio.Future[int | None]:
        """Queue a presence operation ("claim" or "others"); the future gets its count."""
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._presence_op(op, phone, future)
        return future

    @staticmethod
    async def _presence_result(future: asyncio.Future[int | None]) -> int | None:
        """The count of a queued presence operation, or None when Redis did not answer."""
        try:
            async with asyncio.timeout(2 * REDIS_TIMEOUT):
                return await future
        except TimeoutError:
            return None

    # -- registration --------------------------------------------------------------------------

    def receiving(self, phone: str, outbox: Outbox) -> _Receiving:  # type: ignore[override]
        """`async with hub.receiving(phone, outbox) as came_online:` see Hub.receiving. On
        entry, the channel is subscribed (Redis has confirmed, or SUBSCRIBE_TIMEOUT passed) and
        the phone claimed for this process; `came_online` is True when no process held a receive
        socket of `phone` before."""
        return _Receiving(self, phone, outbox)

    async def _enter_receiving(self, phone: str, outbox: Outbox) -> bool:
        first_here = phone not in self._receivers
        # Registered at once: the socket is open, and a publication read right after the
        # subscription's confirmation must find it.
        self._receivers.setdefault(phone, set()).add(outbox)
        self._want(self._user_channel(phone), (_USER, phone))
        # The claim and the subscription are under way together.
        claim = self._presence_future("claim", phone) if first_here else None
        try:
            await self._until_live(self._user_channel(phone))
            others = await self._presence_result(claim) if claim is not None else 1
        except BaseException:
            self._leave_receiving(phone, outbox)
            raise
        return first_here and not others

    def _leave_receiving(self, phone: str, outbox: Outbox) -> None:
        mine = self._receivers.get(phone)
        if mine is not None:
            mine.discard(outbox)
            if not mine:
                del self._receivers[phone]
                self._presence_op("release", phone)
        self._unwant(self._user_channel(phone))

    def in_room(self, room: str, outbox: Outbox) -> _InRoom:  # type: ignore[override]
        """`async with`: see Hub.in_room; on entry the room's channel is subscribed."""
        return _InRoom(self, room, outbox)

    async def _enter_room(self, room: str, outbox: Outbox) -> None:
        self._rooms.setdefault(room, {})[outbox] = []  # holding from now on
        self._want(self._room_channel(room), (_ROOM, room))
        try:
            await self._until_live(self._room_channel(room))
        except BaseException:
            self._leave_room(room, outbox)
            raise

    def _leave_room(self, room: str, outbox: Outbox) -> None:
        mine = self._rooms.get(room)
        if mine is not None:
            mine.pop(outbox, None)
            if not mine:
                del self._rooms[room]
        self._room_after.pop(outbox, None)
        self._unwant(self._room_channel(room))

    # -- delivery ------------------------------------------------------------------------------

    def push(self, phone: str, data: bytes) -> None:
        """Queue a text frame for every receive socket of `phone`, here at once and in the other
        processes through Redis (never waits, never raises)."""
        super().push(phone, data)
        self._publish(self._user_channel(phone), data)

    def broadcast(self, room: str, data: bytes, seq: int | None = None) -> None:
        """Queue a text frame for every socket in `room`, in every process (see Hub.broadcast)."""
        super().broadcast(room, data, seq)
        self._publish(self._room_channel(room), data, _NO_SEQ if seq is None else b"%d" % seq)

    def release(self, room: str, outbox: Outbox, after: int) -> None:
        """See Hub.release; broadcasts from other processes of messages up to `after` that come
        later still are dropped (they were in the history)."""
        self._room_after[outbox] = after
        super().release(room, outbox, after)

    def _deliver_room(self, room: str, data: bytes, seq: int | None) -> None:
        for outbox, held in tuple(self._rooms.get(room, {}).items()):
            if held is None:
                if seq is None or seq > self._room_after.get(outbox, 0):
                    outbox.put(data)
            elif seq is not None:
                held.append((seq, data))

    async def is_online(self, phone: str) -> bool:
        """True while `phone` holds a receive socket here, or a live claim of another process.
        Redis unreachable: False for a phone with no socket here (logged)."""
        if phone in self._receivers:
            return True
        return bool(await self._presence_result(self._presence_future("others", phone)))

    async def close_session(self, sid_hash: str) -> None:
        """Close every socket of a login session in every process (SPEC 4 /logout). Returns once
        this process's are closed and the request is published; the other processes close
        theirs when it reaches them."""
        await self._control_publish({"op": "close_session", "sid_hash": sid_hash})
        await super().close_session(sid_hash)

    async def close_group_member(self, grp: str, phone: str) -> None:
        """Close `phone`'s sockets of group `grp` in every process (SPEC 5); returns as
        close_session does."""
        await self._control_publish({"op": "close_group_member", "grp": grp, "phone": phone})
        await super().close_group_member(grp, phone)
