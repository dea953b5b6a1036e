"""Web Push (SPEC 9, RFC 8030 / 8291 / 8292): the server's VAPID key, the rules a push endpoint
must follow, and `PushSender`, which turns committed messages into pushes to the devices that have
a subscription and no open receive socket.

The path of a notification: a command's `committed` callback calls `PushSender.notify` (one
`put_nowait`: nothing is awaited on the committing task); a worker task takes every job queued so
far, asks the store for the subscriptions of those recipients' devices (muted conversations left
out), drops devices with a receive socket open anywhere (`Hub.device_online`) and those pushed for
that conversation within `push.min_interval_seconds` (`Throttle.push_allowed`, shared through
Redis when the Redis hub is set), and sends each push with pywebpush (aes128gcm) over an aiohttp
session that follows no redirect and, unless `push.allow_private_endpoints`, connects to public
addresses only: the resolver refuses a name that resolves to a loopback, private, link-local,
reserved or multicast address at connect time, so that a name which pointed elsewhere when the
device subscribed (DNS rebinding) cannot turn the server against its own network.

A push endpoint's URL is a capability (whoever knows it can push to the device): logs name its
scheme and host only, never its path, the device's keys or a payload. Nothing of a push is kept
after it is sent (SPEC 9).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import email.utils
import hashlib
import hmac
import ipaddress
import logging
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver, ResolveResult
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid, VapidException
from pywebpush import WebPusher, WebPushException
from yarl import URL

from .config import Config
from .hubs.local import Hub
from .keyfile import key_file
from .metrics import PUSH_SECONDS, PUSHES_DROPPED, PUSHES_FAILED, PUSHES_GONE, PUSHES_SENT
from .protocol import now_micros
from .stores.base import PushSubscription, Store, StoreError
from .throttle import Throttle

log = logging.getLogger(__name__)

# SPEC 9 / PUSH-API: an endpoint longer than this is refused (browsers' are ~200 characters).
MAX_ENDPOINT_CHARS: Final = 2048
# RFC 8292 2: a JWT's `exp` at most 24 hours ahead; 12 hours, as pywebpush does.
VAPID_EXPIRY_SECONDS: Final = 12 * 3600
# RFC 8030 5.4: a Topic is at most 32 characters of the base64url alphabet.
TOPIC_CHARS: Final = 32
# The longest wait a 429's Retry-After may impose on one retry, in seconds.
MAX_RETRY_AFTER: Final = 60.0
# Jobs one worker takes at once: one store query serves them all.
BATCH: Final = 256
# (phone, conversation) pairs per `Store.push_targets` query (a batch of big groups has many).
TARGETS_QUERY: Final = 5000
# Requests to push services in flight per process (also the connection pool's size); more wait
# for a slot before their timeout starts.
CONCURRENT_REQUESTS: Final = 64
# Bytes of a push service's answer read at most (it is only logged as a status anyway).
ANSWER_BYTES: Final = 4096
# Bytes of JSON a payload may have before encryption: RFC 8291 leaves 3993 bytes of a 4096-byte
# push for it; a preview is shortened until the payload fits in this.
MAX_PAYLOAD_BYTES: Final = 3000
# Characters of a message a preview carries at most.
PREVIEW_CHARS: Final = 1000
# Seconds a name may take to resolve when a subscription is checked.
RESOLVE_TIMEOUT: Final = 5.0
# Seconds between two warnings about the queue being full.
DROP_LOG_SECONDS: Final = 60.0
# A phone's subject when nothing better is known (RFC 8292 wants a way to reach the operator).
DEFAULT_SUBJECT: Final = "mailto:postmaster@localhost"


class EndpointRefused(OSError):
    """A push endpoint the server does not send to (SPEC 9); `str(error)` says why, without the
    endpoint's path. An OSError, so that the connector reports a refusal at connect time as a
    connection error."""


# -- the VAPID key (RFC 8292) --------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    """base64url with or without padding -> bytes; raises ValueError for anything else."""
    if not text or not all(c.isascii() and (c.isalnum() or c in "-_=") for c in text):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None


def _raw_private_key(key: ec.EllipticCurvePrivateKey) -> str:
    return _b64url(key.private_numbers().private_value.to_bytes(32, "big"))


def _check_raw_key(text: str) -> None:
    try:
        raw = b64url_decode(text)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ValueError("the VAPID key must be base64url of a raw 32-byte P-256 private key "
                         "([push] vapid_private_key or the <database>.vapid file)")


def load_vapid(config: Config) -> Vapid:
    """The server's VAPID signer: `push.vapid_private_key`, else the key in `<database>.vapid`
    (base64url of the raw 32-byte private key, one line), generated on first start with mode
    0600 and reused after (SPEC 9). Raises ValueError for a key that cannot be used."""
    configured = config.push.vapid_private_key
    if configured:
        _check_raw_key(configured)
        raw = configured
    else:
        raw = key_file(Path(f"{config.database.path}.vapid"),
                       lambda: _raw_private_key(ec.generate_private_key(ec.SECP256R1())),
                       _check_raw_key)
    try:
        # no-strict: `sub` is checked by config.py (py_vapid's own check refuses an https
        # subject with a port or a path, which RFC 8292 allows).
        vapid = Vapid.from_raw(raw.encode())
    except ValueError as e:  # 32 bytes that are no P-256 scalar (0, or past the order)
        raise ValueError(f"the VAPID key is not a P-256 private key: {e}") from None
    vapid.conf = {"no-strict": True}
    return vapid


def vapid_private_key(vapid: Vapid) -> str:
    """The `push.vapid_private_key` form of `vapid`'s key (base64url of the raw 32 bytes): what
    `serve --workers N` hands every worker, so that they all sign with one key."""
    return _raw_private_key(vapid.private_key)


def public_key(vapid: Vapid) -> str:
    """base64url of the 65-byte uncompressed public point: what a browser's
    `pushManager.subscribe({applicationServerKey})` takes (GET /chat/push/key)."""
    point = vapid.public_key.public_bytes(serialization.Encoding.X962,
                                          serialization.PublicFormat.UncompressedPoint)
    return _b64url(point)


def vapid_subject(config: Config) -> str:
    """The VAPID `sub` claim: `push.subject`; else `https://HOST` of `server.public_url` when
    that is https; else DEFAULT_SUBJECT."""
    if config.push.subject:
        return config.push.subject
    public = URL(config.server.public_url) if config.server.public_url else None
    if public is not None and public.scheme == "https" and public.host:
        return f"https://{public.host}"
    return DEFAULT_SUBJECT


# -- endpoint rules (SPEC 9) ---------------------------------------------------------------------

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_public_address(address: IPAddress) -> bool:
    """True for an address on the public Internet: not loopback, private, link-local, reserved,
    multicast or unspecified. An IPv6 address that carries an IPv4 one (IPv4-mapped `::ffff:a.b.c.d`,
    6to4 `2002::/16`) is judged by the IPv4 address it reaches."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = address.ipv4_mapped or address.sixtofour
        if inner is not None and not is_public_address(inner):
            return False
        if address.ipv4_mapped is not None:
            return True  # ::ffff:0:0/96 itself counts as reserved; its IPv4 address was public
    return address.is_global and not (
        address.is_loopback or address.is_private or address.is_link_local or address.is_reserved
        or address.is_multicast or address.is_unspecified)


def _literal(host: str) -> IPAddress | None:
    """The address when `host` is an IP address literal (brackets and a zone allowed), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


class PublicResolver(AbstractResolver):
    """An aiohttp resolver that refuses a name when any address it resolves to is not public
    (`is_public_address`), raising EndpointRefused: checked at every connection, so that a name
    that resolved to a public address when the device subscribed cannot point at the server's
    own network when the push is sent (DNS rebinding)."""

    def __init__(self) -> None:
        self._resolver = aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        """The addresses of `host`; EndpointRefused when one of them is not public."""
        results = await self._resolver.resolve(host, port, family)
        for result in results:
            address = _literal(result["host"])
            if address is None or not is_public_address(address):
                raise EndpointRefused(f"{host} resolves to a non-public address")
        return results

    async def close(self) -> None:
        """Release the wrapped resolver."""
        await self._resolver.close()


def endpoint_origin(endpoint: str) -> str:
    """scheme://host[:port] of an endpoint: what logs may show of it (its path is the secret)."""
    try:
        return str(URL(endpoint).origin())
    except ValueError:
        return "(malformed)"


async def check_endpoint(endpoint: object, allow_private: bool = False) -> str:
    """`endpoint` when the server may send pushes to it (SPEC 9): a string of at most
    MAX_ENDPOINT_CHARS, an absolute https URL without user info whose host (an IP literal, or a
    name resolved now, decimal and hex IPv4 forms included) reaches public addresses only. With
    `allow_private` (tests, closed networks) http and any address pass, but the URL must still be
    one. Raises EndpointRefused saying why."""
    if not isinstance(endpoint, str) or not endpoint:
        raise EndpointRefused("endpoint must be a URL string")
    if len(endpoint) > MAX_ENDPOINT_CHARS:
        raise EndpointRefused(f"endpoint must be at most {MAX_ENDPOINT_CHARS} characters")
    try:
        url = URL(endpoint)
    except ValueError:
        raise EndpointRefused("endpoint is not a URL") from None
    schemes = ("https", "http") if allow_private else ("https",)
    if url.scheme not in schemes or not url.host:
        raise EndpointRefused("endpoint must be an https:// URL")
    if url.user is not None or url.password is not None:
        raise EndpointRefused("endpoint must not carry a user name or password")
    if any(c.isspace() for c in endpoint):
        raise EndpointRefused("endpoint is not a URL")
    if allow_private:
        return endpoint
    host = url.host
    address = _literal(host)
    if address is not None:
        if not is_public_address(address):
            raise EndpointRefused("endpoint's host is a loopback, private, link-local, reserved "
                                  "or multicast address")
        return endpoint
    resolver = PublicResolver()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            await resolver.resolve(host, url.port or 443, socket.AF_UNSPEC)
    except EndpointRefused:
        raise EndpointRefused("endpoint's host resolves to a loopback, private, link-local, "
                              "reserved or multicast address") from None
    except (OSError, TimeoutError):
        raise EndpointRefused("endpoint's host does not resolve") from None
    finally:
        await resolver.close()
    return endpoint


def topic(key: bytes, conversation: str) -> str:
    """The `Topic` header for a conversation (RFC 8030 5.4: a newer push with the same topic
    replaces an older one not yet delivered): 32 base64url characters of HMAC-SHA256 under a
    server secret, so that the push service cannot tell a phone number from it (a plain hash of
    "personal:PHONE" is quickly reversed: phone numbers are few)."""
    digest = hmac.new(key, conversation.encode(), hashlib.sha256).digest()
    return _b64url(digest)[:TOPIC_CHARS]


# -- the HTTP side: pywebpush's send_async over a restricted aiohttp session ----------------------


@dataclass(frozen=True, slots=True)
class _Answer:
    """A push service's answer, read (at most ANSWER_BYTES of it) and released: what pywebpush's
    `send_async` looks at (`status`, `text()`) and what the sender needs (`retry_after`)."""

    status: int
    reason: str
    retry_after: str | None
    body: bytes

    async def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class _Poster:
    """What `WebPusher.send_async` calls `post` on, in place of an aiohttp session: the request
    follows no redirect (a push service answers 201; a redirect could lead anywhere), times out
    after `push.timeout_seconds` in all, reads a bounded answer and releases the connection.
    Without `allow_private`, an IP literal host is checked here (aiohttp does not resolve those,
    so the session's resolver never sees them)."""

    def __init__(self, session: aiohttp.ClientSession, timeout: float, allow_private: bool) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._allow_private = allow_private

    async def post(self, url: str, *, data: bytes | None = None,
                   headers: Mapping[str, str] | None = None, **_: Any) -> _Answer:
        """POST `data` to `url` (pywebpush's own `timeout` argument is ignored for ours)."""
        if not self._allow_private:
            address = _literal(URL(url).host or "")
            if address is not None and not is_public_address(address):
                raise EndpointRefused("the endpoint is not a public address")
        async with self._session.post(url, data=data, headers=dict(headers or {}),
                                      allow_redirects=False, timeout=self._timeout) as response:
            body = await response.content.read(ANSWER_BYTES)
            return _Answer(response.status, response.reason or "",
                           response.headers.get("Retry-After"), body)


def _retry_after(value: str | None) -> float | None:
    """Seconds a Retry-After header asks for (delay-seconds or an HTTP date), at most
    MAX_RETRY_AFTER; None when absent or malformed."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(MAX_RETRY_AFTER, float(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return min(MAX_RETRY_AFTER, max(0.0, when.timestamp() - time.time()))


# -- the sender -----------------------------------------------------------------------------------


class Notifier(Protocol):
    """What the commands call after a commit (SPEC 9); both methods only queue and never raise."""

    def notify(self, wanted: Sequence[tuple[str, str]], sender: str, text: str,
               sent: str = "") -> None:
        """Push for each (recipient phone, conversation) pair in `wanted` ("personal:SENDER" or
        "group:KEY"): a message from `sender` (a phone) with body `text`, sent at `sent` (the
        frame's sent_timestamp). An edit, an unsend or a reaction (SPEC 13) is never passed
        here (protocol.Ref.wakes)."""

    def notify_group(self, phones: Sequence[str], key: str, sender: str, text: str,
                     sent: str = "") -> None:
        """`notify` for each phone of `phones` in conversation "group:KEY", the list kept as is
        (no per-recipient work on the committing task)."""


class NoPush:
    """The notifier of a socket built without an app (tests) or of a server without push."""

    def notify(self, wanted: Sequence[tuple[str, str]], sender: str, text: str,
               sent: str = "") -> None:
        """Nothing to do."""

    def notify_group(self, phones: Sequence[str], key: str, sender: str, text: str,
                     sent: str = "") -> None:
        """Nothing to do."""


NO_PUSH: Final = NoPush()


@dataclass(frozen=True, slots=True)
class _Job:
    """One committed message to notify about: (phone, conversation) pairs given as is, or
    `phones` all in `conversation`."""

    wanted: Sequence[tuple[str, str]] | None
    phones: Sequence[str]
    conversation: str
    sender: str
    text: str
    sent: str
    # time.monotonic() when queued (just after the commit): chat_push_seconds measures from it.
    queued: float

    def pairs(self) -> Sequence[tuple[str, str]]:
        if self.wanted is not None:
            return self.wanted
        return [(phone, self.conversation) for phone in self.phones]


@dataclass(frozen=True, slots=True)
class _Delivery:
    """One push to send: to `subscription`, for `conversation`, this JSON payload."""

    subscription: PushSubscription
    conversation: str
    payload: bytes
    queued: float  # the job's: time.monotonic() just after the commit


class PushSender:
    """Sends the Web Pushes of SPEC 9 for this process (see the module docstring).

    `PushSender(config, vapid)`; `await start(store, hub, throttle)` once they are started, and
    `await stop()` before they stop. `enabled`: push is on and has a key; `public_key`: the
    VAPID public key for GET /chat/push/key (base64url of the 65-byte point; None when off).
    `notify` / `notify_group` only queue (at most `push.queue` jobs; past it a job is dropped,
    counted in `counts["dropped"]` and logged at most once a minute); `push.workers` tasks send.
    With `push.enabled` false (or `vapid` None) nothing is queued or sent. `counts`: jobs
    "queued" and "dropped", pushes "sent", "gone" (404/410: the subscription deleted) and
    "failed" (given up after the retries, or refused for good).
    """

    def __init__(self, config: Config, vapid: Vapid | None) -> None:
        self._config = config
        self._push = config.push
        self._vapid = vapid
        self._subject = vapid_subject(config)
        self.enabled = config.push.enabled and vapid is not None
        self._topic_key = (hashlib.sha256(b"chat push topic\0" + _raw_private_key(
            vapid.private_key).encode()).digest() if vapid is not None else b"")
        self._queue: asyncio.Queue[_Job] | None = None
        self._store: Store | None = None
        self._hub: Hub | None = None
        self._throttle: Throttle | None = None
        self._session: aiohttp.ClientSession | None = None
        self._poster: _Poster | None = None
        self._requests: asyncio.Semaphore | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._retrying: set[asyncio.Task[None]] = set()
        self._dropped_logged = -DROP_LOG_SECONDS
        self.public_key = public_key(vapid) if self.enabled and vapid is not None else None
        self.counts: dict[str, int] = {"queued": 0, "dropped": 0, "sent": 0, "gone": 0, "failed": 0}

    # -- lifetime ------------------------------------------------------------------------------

    async def start(self, store: Store, hub: Hub, throttle: Throttle) -> None:
        """Open the HTTP session and start `push.workers` tasks (nothing when push is off)."""
        if not self.enabled:
            return
        self._store, self._hub, self._throttle = store, hub, throttle
        allow_private = self._push.allow_private_endpoints
        connector = aiohttp.TCPConnector(
            limit=CONCURRENT_REQUESTS,
            resolver=None if allow_private else PublicResolver())
        # trust_env=False: no proxy from the environment (it would resolve names for us).
        self._session = aiohttp.ClientSession(connector=connector, trust_env=False,
                                              auto_decompress=False)
        self._poster = _Poster(self._session, self._push.timeout_seconds, allow_private)
        self._requests = asyncio.Semaphore(CONCURRENT_REQUESTS)
        self._queue = asyncio.Queue(self._push.queue)
        self._workers = [asyncio.create_task(self._work(), name=f"push-{i}")
                         for i in range(self._push.workers)]

    async def stop(self) -> None:
        """Stop the workers and the retries (what still waits is dropped: a push is best effort,
        the messages stay stored) and close the HTTP session."""
        tasks = [*self._workers, *self._retrying]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._workers = []
        self._retrying.clear()
        waiting = self._queue.qsize() if self._queue is not None else 0
        if waiting:
            log.info("push: %d notifications not sent at shutdown", waiting)
        self._queue = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- queueing (Notifier) -------------------------------------------------------------------

    def notify(self, wanted: Sequence[tuple[str, str]], sender: str, text: str,
               sent: str = "") -> None:
        """Queue a push for each (phone, conversation) pair of `wanted` (see Notifier)."""
        if wanted:
            self._put(_Job(wanted, (), "", sender, text, sent, time.monotonic()))

    def notify_group(self, phones: Sequence[str], key: str, sender: str, text: str,
                     sent: str = "") -> None:
        """Queue a push for each phone of `phones` in group `key` (see Notifier)."""
        if phones:
            self._put(_Job(None, phones, f"group:{key}", sender, text, sent, time.monotonic()))

    def _put(self, job: _Job) -> None:
        if self._queue is None:
            return  # off, or not started (an app that does not serve)
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.counts["dropped"] += 1
            PUSHES_DROPPED.inc()
            now = time.monotonic()
            if now - self._dropped_logged >= DROP_LOG_SECONDS:
                self._dropped_logged = now
                log.warning("push: %d notifications wait already (push.queue); dropping new ones "
                            "(%d dropped so far)", self._push.queue, self.counts["dropped"])
            return
        self.counts["queued"] += 1

    # -- the workers ---------------------------------------------------------------------------

    async def _work(self) -> None:
        """One worker: take every job queued so far (at most BATCH), find and send their pushes."""
        queue = self._queue
        assert queue is not None
        while True:
            jobs = [await queue.get()]
            while len(jobs) < BATCH and not queue.empty():
                jobs.append(queue.get_nowait())
            try:
                deliveries = await self._deliveries(jobs)
                await asyncio.gather(*(self._send(d) for d in deliveries))
            except asyncio.CancelledError:
                raise
            except StoreError as e:
                log.warning("push: store failed (%s); %d notifications not sent", e, len(jobs))
            except Exception:  # a bug here must not stop pushes for good
                log.exception("push: worker failed; %d notifications not sent", len(jobs))

    async def _deliveries(self, jobs: list[_Job]) -> list[_Delivery]:
        """The pushes `jobs` call for: subscriptions of the recipients' devices that are not
        muted (store), not online (hub) and not pushed within min_interval (throttle)."""
        store, hub, throttle = self._store, self._hub, self._throttle
        assert store is not None and hub is not None and throttle is not None
        # The newest message of a conversation speaks for the older ones (Topic replaces them).
        latest: dict[tuple[str, str], _Job] = {}
        for job in jobs:
            for pair in job.pairs():
                latest[pair] = job
        # One query per TARGETS_QUERY pairs (one for a usual batch); each subscription comes
        # with the conversation it answers.
        pairs, now_us = list(latest), now_micros()
        candidates = [(subscription, subscription.conversation)
                      for start in range(0, len(pairs), TARGETS_QUERY)
                      for subscription in await store.push_targets(
                          pairs[start:start + TARGETS_QUERY], now_us)]
        if not candidates:
            return []
        # Asked together: with the Redis hub, one presence round trip answers them all.
        online = await asyncio.gather(*(hub.device_online(s.phone, s.device) for s, _ in candidates))
        candidates = [c for c, on in zip(candidates, online, strict=True) if not on]
        allowed = await asyncio.gather(*(throttle.push_allowed(s.device, conversation)
                                         for s, conversation in candidates))
        names: dict[str, str] = {}
        deliveries = []
        for (subscription, conversation), ok in zip(candidates, allowed, strict=True):
            if not ok:  # pushed within push.min_interval_seconds: the later push carries the count
                PUSHES_DROPPED.inc()
                continue
            job = latest[(subscription.phone, conversation)]
            count = await store.waiting_count(subscription.device, subscription.phone, conversation)
            payload = await self._payload(conversation, job, max(1, count), names)
            deliveries.append(_Delivery(subscription, conversation, payload, job.queued))
        return deliveries

    async def _name(self, key: str, names: dict[str, str]) -> str:
        """A user's display name ("user:PHONE") or a group's ("group:KEY"), once per batch."""
        name = names.get(key)
        if name is None:
            store = self._store
            assert store is not None
            kind, _, which = key.partition(":")
            if kind == "group":
                group = await store.group(which)
                name = group.name if group is not None else ""
            else:
                user = await store.get_user(which)
                name = user.name if user is not None else which
            names[key] = name
        return name

    async def _payload(self, conversation: str, job: _Job, count: int,
                       names: dict[str, str]) -> bytes:
        """The push's JSON (SPEC 9): kind, conversation, from_name, count, sent; group_name for a
        group; text (shortened to fit a push) only with `push.previews`."""
        data: dict[str, Any] = {"kind": "new_msg", "conversation": conversation,
                                "from_name": await self._name(f"user:{job.sender}", names),
                                "count": count}
        if job.sent:
            data["sent"] = job.sent
        if conversation.startswith("group:"):
            data["group_name"] = await self._name(conversation, names)
        payload = orjson.dumps(data)
        if self._push.previews and job.text:
            text = job.text[:PREVIEW_CHARS]
            while text:
                with_text = orjson.dumps({**data, "text": text})
                if len(with_text) <= MAX_PAYLOAD_BYTES:
                    return with_text
                text = text[:len(text) // 2]
        return payload

    # -- sending -------------------------------------------------------------------------------

    async def _send(self, delivery: _Delivery) -> None:
        """Send one push; on a retryable failure, try again in a task of its own (so that this
        worker goes on), after `retry_seconds`, doubling each time, `retries` times at most."""
        delay = await self._attempt(delivery)
        if delay is None:
            return
        if self._push.retries == 0 or len(self._retrying) >= self._push.queue:
            self._failed(delivery, "no retry left")
            return
        task = asyncio.create_task(self._retry(delivery, delay))
        self._retrying.add(task)
        task.add_done_callback(self._retrying.discard)

    async def _retry(self, delivery: _Delivery, delay: float) -> None:
        for attempt in range(self._push.retries):
            await asyncio.sleep(delay)
            wait = await self._attempt(delivery)
            if wait is None:
                return
            delay = max(wait, self._push.retry_seconds * 2 ** (attempt + 1))
        self._failed(delivery, f"given up after {self._push.retries} retries")

    def _failed(self, delivery: _Delivery, why: str) -> None:
        self.counts["failed"] += 1
        PUSHES_FAILED.inc()
        log.warning("push: to %s not sent: %s",
                    endpoint_origin(delivery.subscription.endpoint), why)

    async def _attempt(self, delivery: _Delivery) -> float | None:
        """One try; None when done with (sent, gone, or refused for good), else the seconds to
        wait at least before trying again (a 429's Retry-After, else `push.retry_seconds`)."""
        subscription = delivery.subscription
        where = endpoint_origin(subscription.endpoint)
        assert self._vapid is not None and self._requests is not None and self._store is not None
        headers = {"Topic": topic(self._topic_key, delivery.conversation), "Urgency": "high"}
        try:
            # A fresh claims dict per request: py_vapid and pywebpush fill in what is missing
            # in the dict they are given, and an `exp` kept from an earlier push would expire.
            headers.update(self._vapid.sign({
                "sub": self._subject, "aud": where,
                "exp": int(time.time()) + VAPID_EXPIRY_SECONDS}))
            pusher = WebPusher({"endpoint": subscription.endpoint,
                                "keys": {"p256dh": subscription.p256dh, "auth": subscription.auth}},
                               aiohttp_session=self._poster)
            async with self._requests:
                answer = await pusher.send_async(delivery.payload, headers,
                                                 ttl=self._push.ttl_seconds,
                                                 content_encoding="aes128gcm")
        except EndpointRefused as e:
            await self._refused(delivery, str(e))
            return None
        except aiohttp.ClientConnectorError as e:
            if isinstance(e.os_error, EndpointRefused):
                await self._refused(delivery, str(e.os_error))
                return None
            log.info("push: to %s failed (%s); will retry", where, type(e).__name__)
            return self._push.retry_seconds
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            log.info("push: to %s failed (%s); will retry", where, type(e).__name__)
            return self._push.retry_seconds
        except (WebPushException, VapidException, ValueError, TypeError) as e:
            # Keys that do not make a point, an `aud` py_vapid refuses (an IPv6 literal host):
            # trying again would fail the same way. The exception's text may quote the keys.
            self._failed(delivery, f"cannot be encrypted or signed ({type(e).__name__})")
            return None
        status = answer.status
        if status in (200, 201, 202):
            self.counts["sent"] += 1
            PUSHES_SENT.inc()
            PUSH_SECONDS.observe(time.monotonic() - delivery.queued)
            return None
        if status in (404, 410):
            # SPEC 9: the subscription has expired or was withdrawn; deleted unless the device
            # has replaced it meanwhile.
            self.counts["gone"] += 1
            PUSHES_GONE.inc()
            log.info("push: %s answered %d: subscription deleted", where, status)
            with contextlib.suppress(StoreError):
                await self._store.drop_push_subscription(subscription.device, subscription.endpoint)
            return None
        if status == 429 or status >= 500:
            log.info("push: %s answered %d; will retry", where, status)
            return _retry_after(answer.retry_after) or self._push.retry_seconds
        self._failed(delivery, f"answered {status} {answer.reason}")
        return None

    async def _refused(self, delivery: _Delivery, why: str) -> None:
        """The endpoint's host now reaches a non-public address: not sent, and the subscription
        deleted (a push service never does that; the name was turned against us or broke)."""
        self._failed(delivery, why)
        assert self._store is not None
        with contextlib.suppress(StoreError):
            await self._store.drop_push_subscription(delivery.subscription.device,
                                                     delivery.subscription.endpoint)
