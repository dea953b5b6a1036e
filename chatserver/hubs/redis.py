"""The Redis broker and presence (`[hub] url`): pushes, room broadcasts and closes carried between
the processes of one deployment by Redis pub/sub, and presence as expiring claims per process in
sorted sets. Names, wire format, ordering, presence and failure handling: docs/hub.md ("Redis").

Needs Redis 5 or later (scripts that read TIME before writing).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline, PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .broker import Deliveries, HubUnavailable

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

# KEYS[1]: a socket slot's sorted set; ARGV[1]: a new socket's id; ARGV[2]: the cap. Adds the
# socket, scored by Redis's clock in microseconds (open order across processes and hosts), and
# pops and returns the ids of the oldest past the cap (SPEC 10 `limits.sockets_per_user`).
_ADMIT: Final = """
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(t[1]) * 1000000 + tonumber(t[2]), ARGV[1])
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[2])
local evicted = {}
if over > 0 then
  local popped = redis.call('ZPOPMIN', KEYS[1], over)
  for i = 1, #popped, 2 do evicted[#evicted + 1] = popped[i] end
end
return evicted
"""

# KEYS: room keys; ARGV[1]: an entry's lifetime in milliseconds; ARGV[i + 1]: the member for
# KEYS[i], "<process id> <phone>". Enters (or renews) each, drops lapsed entries, lets the key
# expire with its newest entry (SPEC 13: the users online in a room, see RedisPresence).
_ENTER_ROOMS: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  redis.call('ZADD', key, now + tonumber(ARGV[1]), ARGV[i + 1])
  local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', key, newest[2])
end
return #KEYS
"""

# KEYS: room keys. For each, how many distinct phones have a live entry of any process: one
# user with sockets in two processes counts once.
_ROOM_COUNTS: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local counts = {}
for i, key in ipairs(KEYS) do
  local seen, n = {}, 0
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', key, '(' .. now, '+inf')) do
    local phone = string.sub(member, (string.find(member, ' ', 1, true) or 0) + 1)
    if not seen[phone] then
      seen[phone] = true
      n = n + 1
    end
  end
  counts[i] = n
end
return counts
"""

# What a channel of this process carries (see RedisBroker._deliver).
_USER, _ROOM, _CONTROL = "user", "room", "control"
_NO_SEQ: Final = b"-"


def process_id() -> str:
    """A new id for this process (16 hex digits): in publications, presence claims and the names
    of its Redis connections."""
    return secrets.token_hex(8)


def redis_parts(url: str, prefix: str) -> tuple[RedisBroker, RedisPresence]:
    """The broker and presence of one process on the Redis at `url`, under `prefix`."""
    process = process_id()
    return RedisBroker(url, prefix, process), RedisPresence(url, prefix, process)


def _redacted(url: str) -> str:
    """`url` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=f"{user}{host}{port}"))


def _client(url: str, name: str, **options: Any) -> Redis:
    """A client of the Redis at `url` whose connections are named `name` (CLIENT LIST shows which
    process is which); it connects on first use."""
    return Redis.from_url(url, client_name=name, socket_timeout=REDIS_TIMEOUT,
                          socket_connect_timeout=REDIS_TIMEOUT, **options)


class _Commands:
    """A Redis client for commands (not pub/sub), run in pipelines tried again on a failure; each
    kind of failure logged once per outage."""

    def __init__(self, url: str, name: str) -> None:
        self.where = _redacted(url)
        # No retries inside redis-py: `execute` tries a failed pipeline again itself.
        self.redis = _client(url, name, retry=Retry(NoBackoff(), 0))
        self._failing: set[str] = set()  # what fails now: logged once per outage

    async def ping(self) -> None:
        """Raises HubUnavailable when Redis cannot be reached."""
        try:
            await self.redis.ping()
        except (RedisError, OSError) as e:
            raise HubUnavailable(f"cannot reach the Redis hub at {self.where}: {e}") from e

    async def execute(self, what: str,
                      queue: Callable[[Pipeline], Awaitable[None]]) -> list[Any] | None:
        """Run in one round trip the commands `queue` adds to a pipeline; on a failure, run
        them again after each of RETRY_DELAYS (a pooled connection Redis closed while idle fails
        once, and the next attempt gets a new one). Safe to repeat: presence commands are
        idempotent, and a receiver drops a publication whose number it has seen. Returns the
        replies, or None when every attempt failed (logged once per outage)."""
        error: BaseException | None = None
        for delay in (0.0, *RETRY_DELAYS):
            if error is not None:
                log.info("Redis hub: %s failed (%s); trying again in %g s", what, error, delay)
                await asyncio.sleep(delay)
            pipe = self.redis.pipeline(transaction=False)
            await queue(pipe)
            try:
                results = await pipe.execute(raise_on_error=False)
            except (RedisError, OSError) as e:
                error = e
                continue
            self.recovered(what)
            return results
        assert error is not None
        self.failed(what, error)
        return None

    def failed(self, what: str, error: BaseException) -> None:
        """Log a failure of `what` ("pub/sub", "publish", "presence") once per outage."""
        if what not in self._failing:
            self._failing.add(what)
            log.warning("Redis hub: %s failed (%s: %s)", what, type(error).__name__, error)

    def recovered(self, what: str) -> None:
        """`what` works again: log it if it had failed."""
        if what in self._failing:
            self._failing.discard(what)
            log.warning("Redis hub: %s works again", what)

    def forget(self, what: str) -> None:
        """`what` works again, said in another message by the caller."""
        self._failing.discard(what)

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.redis.aclose()


class RedisBroker:
    """The `Broker` (chatserver/hubs/broker.py) of one process among several that share the Redis
    at `url` under `prefix`: channels `<prefix>:user:<phone>`, `<prefix>:room:<room>` and
    `<prefix>:control`. `process`: this process's id (see `process_id`)."""

    def __init__(self, url: str, prefix: str, process: str | None = None) -> None:
        self._url = url
        self.id = process or process_id()
        self._origin = self.id.encode()
        self._prefix = prefix + ":"
        self._name = f"{self._prefix}hub:{self.id}"
        self._control = f"{self._prefix}control".encode()
        self._hub: Deliveries | None = None
        self._commands: _Commands | None = None  # publications
        self._sub_redis: Redis | None = None  # the pub/sub connection
        self._pubsub: PubSub | None = None  # None while (re)connecting
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
        # Per other process, the number of its latest publication read (see _deliver).
        self._seen: dict[bytes, int] = {}
        self._workers: list[asyncio.Task[None]] = []
        self._stopped = False

    # -- names ----------------------------------------------------------------------------------

    def _user_channel(self, phone: str) -> bytes:
        return f"{self._prefix}user:{phone}".encode()

    def _room_channel(self, room: str) -> bytes:
        return f"{self._prefix}room:{room}".encode()

    # -- lifetime -------------------------------------------------------------------------------

    async def start(self, hub: Deliveries) -> None:
        """Connect, subscribe to the control channel and start the background tasks.

        Raises HubUnavailable when Redis cannot be reached or does not confirm the subscription
        within SUBSCRIBE_TIMEOUT seconds.
        """
        self._hub = hub
        self._commands = _Commands(self._url, self._name)
        # The pub/sub connection is replaced by _listen, never reconnected behind its back (a
        # reconnect inside redis-py would resubscribe without the confirmations we count).
        self._sub_redis = _client(self._url, f"{self._name}:sub",
                                  retry=Retry(NoBackoff(), 0, supported_errors=()))
        self._want(self._control, (_CONTROL, ""))
        where = self._commands.where
        try:
            await self._commands.ping()
            async with self._sub_lock:
                await self._open_pubsub()
        except (RedisError, OSError) as e:
            await self._disconnect()
            if isinstance(e, HubUnavailable):
                raise
            raise HubUnavailable(f"cannot reach the Redis hub at {where}: {e}") from e
        self._workers = [asyncio.create_task(coro) for coro in (
            self._listen(), self._keep_subscriptions(), self._publish_queued())]
        if not await self._until_live(self._control):
            await self.stop(0)
            raise HubUnavailable(f"the Redis hub at {where} did not confirm a subscription "
                                 f"within {SUBSCRIBE_TIMEOUT:g} s")
        log.info("Redis hub %s started at %s (prefix %r)", self.id, where, self._prefix[:-1])

    async def stop(self, timeout: float) -> None:
        """Send what waits for Redis (at most `timeout` seconds), stop the background tasks and
        disconnect."""
        if self._stopped:
            return
        self._stopped = True
        if self._workers:
            sent = asyncio.get_running_loop().create_future()
            self._outgoing.append((None, sent))
            self._outgoing_ready.set()
            await asyncio.wait({sent}, timeout=timeout)
            for task in self._workers:
                task.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
            self._workers = []
        await self._disconnect()

    async def ping(self) -> None:
        """PING on the commands connection (SPEC 11 /healthz); raises HubUnavailable when Redis
        does not answer (within REDIS_TIMEOUT) or the broker is not started."""
        if self._commands is None or self._stopped:
            raise HubUnavailable("the Redis hub is not running")
        await self._commands.ping()

    async def _disconnect(self) -> None:
        async with self._sub_lock:
            await self._close_pubsub()
        if self._commands is not None:
            await self._commands.close()
        if self._sub_redis is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._sub_redis.aclose()

    # -- subscriptions (Broker) -------------------------------------------------------------------

    async def subscribe_user(self, phone: str) -> None:
        """One more receive socket of `phone` here; returns once its channel is subscribed (Redis
        has confirmed, or SUBSCRIBE_TIMEOUT passed: logged)."""
        channel = self._user_channel(phone)
        self._want(channel, (_USER, phone))
        await self._until_live(channel)

    def unsubscribe_user(self, phone: str) -> None:
        """One receive socket of `phone` here fewer."""
        self._unwant(self._user_channel(phone))

    async def subscribe_room(self, room: str) -> None:
        """One more socket here in `room`; returns as `subscribe_user` does."""
        channel = self._room_channel(room)
        self._want(channel, (_ROOM, room))
        await self._until_live(channel)

    def unsubscribe_room(self, room: str) -> None:
        """One socket here in `room` fewer."""
        self._unwant(self._room_channel(room))

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

    # -- the pub/sub connection -------------------------------------------------------------------

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

    async def _keep_subscriptions(self) -> None:
        """The one task that sends SUBSCRIBE / UNSUBSCRIBE, batched, to bring the connection to
        what this process's sockets want (a channel wanted again before its UNSUBSCRIBE went out
        costs nothing)."""
        assert self._commands is not None
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
                        self._commands.failed("pub/sub", e)
                    else:
                        log.exception("Redis hub: cannot change subscriptions")
                    # The counts no longer match the connection: make the reader fail at once
                    # and replace it.
                    if pubsub.connection is not None:
                        with contextlib.suppress(RedisError, OSError):
                            await pubsub.connection.disconnect(nowait=True)

    async def _listen(self) -> None:
        """The one task reading the pub/sub connection: publications to the hub, confirmations
        to `_confirmed`, a PING when it has been quiet; a lost connection is replaced
        (everything wanted subscribed again), retrying with a backoff."""
        assert self._commands is not None
        loop = asyncio.get_running_loop()
        delay = 0.0
        while True:
            try:
                if self._pubsub is None:
                    async with self._sub_lock:
                        await self._open_pubsub()
                    self._commands.forget("pub/sub")
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
                self._commands.failed("pub/sub", e)
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
        """A publication `<origin> <number> <seq>\\n<frame>` from another process, to the hub.
        `seq` is a room message's id, or on a user's channel the session hash of the device the
        push skips; `-` for none."""
        head, _, frame = data.partition(b"\n")
        origin, number, seq = head.split(b" ")
        if origin == self._origin:
            return  # ours: delivered here when published
        n = int(number)
        if n <= self._seen.get(origin, 0):
            return  # again: its batch was sent twice (see _Commands.execute)
        self._seen[origin] = n
        target = self._targets.get(channel)
        hub = self._hub
        if target is None or hub is None:
            return  # no socket here wants it any more (its UNSUBSCRIBE is on its way)
        kind, name = target
        if kind == _USER:  # the head's third field: the device to skip (SPEC 7.2), or none
            hub.deliver_push(name, frame, None if seq == _NO_SEQ else seq.decode())
        elif kind == _ROOM:
            hub.deliver_broadcast(name, frame, None if seq == _NO_SEQ else int(seq))
        else:
            hub.deliver_control(json.loads(frame))

    # -- publishing (Broker) ----------------------------------------------------------------------

    def publish_user(self, phone: str, data: bytes, skip: str | None = None) -> None:
        """Publish a push for `phone` but device `skip` (never waits, never raises)."""
        self._publish(self._user_channel(phone), data, _NO_SEQ if skip is None else skip.encode())

    def publish_room(self, room: str, data: bytes, seq: int | None) -> None:
        """Publish a broadcast to `room` (never waits, never raises)."""
        self._publish(self._room_channel(room), data, _NO_SEQ if seq is None else b"%d" % seq)

    async def publish_control(self, request: Mapping[str, str]) -> None:
        """Ask every other process to do `request`; returns once it is published (or given up
        on: logged, and this process's part is done regardless), at most REDIS_TIMEOUT seconds
        later."""
        self._publish(self._control, json.dumps(request).encode())
        done = asyncio.get_running_loop().create_future()
        self._outgoing.append((None, done))
        self._outgoing_ready.set()
        await asyncio.wait({done}, timeout=REDIS_TIMEOUT)

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

    async def _publish_queued(self) -> None:
        """The one task that publishes, in queue order, PUBLISH_BATCH to a pipeline. A batch
        that fails is sent again (see _Commands.execute): receivers drop what they already had."""
        while True:
            await self._outgoing_ready.wait()
            self._outgoing_ready.clear()
            try:
                await self._publish_all()
            except Exception:  # a bug here must not stop publishing for good
                log.exception("Redis hub: publisher failed")

    async def _publish_all(self) -> None:
        """Publish everything queued, batch by batch."""
        assert self._commands is not None
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
                if await self._commands.execute("publish", queue) is None:
                    self._dropped += len(batch)
                elif self._dropped:
                    log.warning("Redis hub: %d publications were lost", self._dropped)
                    self._dropped = 0
            for future in done:
                if not future.done():
                    future.set_result(None)


class RedisPresence:
    """The `Presence` (chatserver/hubs/broker.py) of one process among several that share the
    Redis at `url` under `prefix`: `<prefix>:online:<phone>` holds the ids of the processes with
    a receive socket of that phone, each scored by when its claim lapses (docs/hub.md,
    "Presence"); `<prefix>:inroom:<room>` likewise "<process id> <phone>" for each user with a
    socket in that room in that process (SPEC 13 `online`), renewed with the claims. `process`:
    this process's id (see `process_id`); `ttl`: seconds a claim lasts unless renewed (tests
    shorten it)."""

    def __init__(self, url: str, prefix: str, process: str | None = None, *,
                 ttl: float = PRESENCE_TTL) -> None:
        self._url = url
        self.id = process or process_id()
        self._prefix = prefix + ":"
        self._ttl = ttl
        self._commands: _Commands | None = None
        self._claim: Any = None
        self._others: Any = None
        self._admit: Any = None
        self._claimed: set[str] = set()  # renewed every third of `ttl`
        self._in_rooms: set[tuple[str, str]] = set()  # (room, phone), renewed likewise
        self._enter_rooms: Any = None
        self._room_counts: Any = None
        # Operations for the presence task: (op, phone or slot, future or None, socket id).
        self._ops: list[tuple[str, str, asyncio.Future[Any] | None, str]] = []
        self._ready = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._stopped = False

    def _online_key(self, phone: str) -> str:
        return f"{self._prefix}online:{phone}"

    def _sockets_key(self, slot: str) -> str:
        return f"{self._prefix}sockets:{slot}"

    def _room_key(self, room: str) -> str:
        return f"{self._prefix}inroom:{room}"

    async def start(self) -> None:
        """Connect and start the presence task; raises HubUnavailable when Redis cannot be
        reached."""
        self._commands = _Commands(self._url, f"{self._prefix}presence:{self.id}")
        self._claim = self._commands.redis.register_script(_CLAIM)
        self._others = self._commands.redis.register_script(_OTHERS)
        self._admit = self._commands.redis.register_script(_ADMIT)
        self._enter_rooms = self._commands.redis.register_script(_ENTER_ROOMS)
        self._room_counts = self._commands.redis.register_script(_ROOM_COUNTS)
        try:
            await self._commands.ping()
        except HubUnavailable:
            await self._commands.close()
            raise
        self._workers = [asyncio.create_task(self._keep_presence())]

    async def stop(self, timeout: float) -> None:
        """Withdraw this process's claims (at most `timeout` seconds), stop and disconnect."""
        if self._stopped:
            return
        self._stopped = True
        if self._workers:
            settled = asyncio.get_running_loop().create_future()
            for phone in tuple(self._claimed):  # normally none: every socket is closed by now
                self._op("release", phone)
            for room, phone in tuple(self._in_rooms):
                self._op("leave_room", room, None, phone)
            self._op("barrier", "", settled)
            await asyncio.wait({settled}, timeout=timeout)
            for task in self._workers:
                task.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
            self._workers = []
        if self._commands is not None:
            await self._commands.close()

    # -- Presence -------------------------------------------------------------------------------

    def claim(self, phone: str) -> asyncio.Future[int | None]:
        """Claim `phone` for this process; the future gets how many other processes claim it
        (None: Redis did not answer within 2 * REDIS_TIMEOUT seconds)."""
        self._claimed.add(phone)
        return self._asked("claim", phone)

    def release(self, phone: str) -> None:
        """Withdraw this process's claim of `phone`."""
        self._claimed.discard(phone)
        self._op("release", phone)

    def others(self, phone: str) -> asyncio.Future[int | None]:
        """How many other processes hold a live claim of `phone` (None as for `claim`)."""
        return self._asked("others", phone)

    def admit(self, slot: str, socket: str, limit: int) -> asyncio.Future[list[str] | None]:
        """Count socket `socket` in `slot` (`<prefix>:sockets:<slot>`, a sorted set shared by
        every process); the future gets the ids of the oldest sockets past `limit`, of any
        process, taken out of the count (None: Redis did not answer in time)."""
        return self._asked("admit", slot, f"{socket} {limit}")

    def leave(self, slot: str, socket: str) -> None:
        """Socket `socket` of `slot` closed (after its `admit`: the presence task keeps order)."""
        self._op("leave", slot, None, socket)

    def enter_room(self, room: str, phone: str) -> None:
        """Count `phone` among the users in `room` for this process (`<prefix>:inroom:<room>`)."""
        self._in_rooms.add((room, phone))
        self._op("enter_room", room, None, phone)

    def leave_room(self, room: str, phone: str) -> None:
        """Withdraw this process's entry of `phone` in `room`."""
        self._in_rooms.discard((room, phone))
        self._op("leave_room", room, None, phone)

    def room_counts(self, rooms: Sequence[str]) -> asyncio.Future[list[int] | None]:
        """How many distinct users have a live entry in each of `rooms`, every process's (None
        as for `claim`). Room names have no spaces (SPEC 5.4): they travel joined by one."""
        return self._asked("room_counts", "", " ".join(rooms))

    def _op(self, op: str, phone: str, future: asyncio.Future[Any] | None = None,
            arg: str = "") -> None:
        self._ops.append((op, phone, future, arg))
        self._ready.set()

    def _asked(self, op: str, phone: str, arg: str = "") -> asyncio.Future[Any]:
        """Queue `op`; its future gets the answer, or None once 2 * REDIS_TIMEOUT seconds pass."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._op(op, phone, future, arg)
        deadline = loop.call_later(2 * REDIS_TIMEOUT, _give_up, future)
        future.add_done_callback(lambda _: deadline.cancel())
        return future

    async def _keep_presence(self) -> None:
        """The one task that writes and reads presence, in the order asked, pipelined; it also
        renews this process's claims every third of their lifetime."""
        loop = asyncio.get_running_loop()
        renew_at = loop.time() + self._ttl / 3
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(renew_at):
                    await self._ready.wait()
            self._ready.clear()
            ops, self._ops = self._ops, []
            renew = loop.time() >= renew_at
            if renew:
                renew_at = loop.time() + self._ttl / 3
            try:
                await self._run(ops, renew)
            except Exception:  # a bug here must not stop presence for good
                log.exception("Redis hub: presence failed")
                for _, _, future, _ in ops:
                    if future is not None and not future.done():
                        future.set_result(None)

    async def _run(self, ops: list[tuple[str, str, asyncio.Future[Any] | None, str]],
                   renew: bool) -> None:
        """One round trip for `ops` (and the renewal); a future gets the claim's or the check's
        count of other processes, or None when Redis failed."""
        assert self._commands is not None
        ttl_ms = max(1, round(self._ttl * 1000))
        asked = [(op, phone, future, arg) for op, phone, future, arg in ops if op != "barrier"]
        # Snapshot now: a phone released later is withdrawn after this renewal, in order.
        renewed = list(self._claimed) if renew else []
        rooms_renewed = list(self._in_rooms) if renew else []

        async def queue(pipe: Pipeline) -> None:
            for op, phone, _, arg in asked:
                key = self._online_key(phone)
                if op == "claim":
                    await self._claim(keys=[key], args=[self.id, ttl_ms], client=pipe)
                elif op == "release":
                    pipe.zrem(key, self.id)
                elif op == "admit":
                    socket, limit = arg.split(" ")
                    await self._admit(keys=[self._sockets_key(phone)], args=[socket, int(limit)],
                                      client=pipe)
                elif op == "leave":
                    pipe.zrem(self._sockets_key(phone), arg)
                elif op == "enter_room":
                    await self._enter_rooms(keys=[self._room_key(phone)],
                                            args=[ttl_ms, f"{self.id} {arg}"], client=pipe)
                elif op == "leave_room":
                    pipe.zrem(self._room_key(phone), f"{self.id} {arg}")
                elif op == "room_counts":
                    await self._room_counts(keys=[self._room_key(r) for r in arg.split(" ")],
                                            client=pipe)
                else:
                    await self._others(keys=[key], args=[self.id], client=pipe)
            for i in range(0, len(renewed), RENEW_BATCH):
                keys = [self._online_key(p) for p in renewed[i:i + RENEW_BATCH]]
                await self._claim(keys=keys, args=[self.id, ttl_ms], client=pipe)
            for i in range(0, len(rooms_renewed), RENEW_BATCH):
                batch = rooms_renewed[i:i + RENEW_BATCH]
                await self._enter_rooms(keys=[self._room_key(room) for room, _ in batch],
                                        args=[ttl_ms, *(f"{self.id} {phone}" for _, phone in batch)],
                                        client=pipe)

        busy = asked or renewed or rooms_renewed
        results = await self._commands.execute("presence", queue) if busy else []
        for i, (op, _, future, _) in enumerate(asked):
            if future is None or future.done():
                continue
            result = results[i] if results is not None else None
            if result is None or isinstance(result, Exception):
                future.set_result(None)
            elif op == "admit":
                future.set_result([r.decode() if isinstance(r, bytes) else str(r) for r in result])
            elif op == "room_counts":
                future.set_result([int(r) for r in result])
            else:
                future.set_result(int(result[0]) if op == "claim" else int(result))
        for op, _, future, _ in ops:
            if op == "barrier" and future is not None and not future.done():
                future.set_result(None)


def _give_up(future: asyncio.Future[Any]) -> None:
    """A presence answer that did not come in time: unknown."""
    if not future.done():
        future.set_result(None)
