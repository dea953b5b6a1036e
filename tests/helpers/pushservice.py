"""A real Web Push service on 127.0.0.1 (RFC 8030), browser-like subscriptions, and the checks of
what a push carries (SPEC 9): its VAPID signature (RFC 8292) and its encrypted payload (RFC 8291).

`PushService` is a small aiohttp app on a free port. `POST /push/<id>` is recorded (headers, body,
the status answered, when it arrived) and answered with the status scripted for that id (a queue:
`script(id, 500, 201)` answers 500 then 201; 201 once the queue is empty). Every request also goes
into one arrival queue, which a test awaits (`next()`): no sleeps.

`Browser.subscribe(service)` makes what a browser's `PushManager.subscribe()` gives: a P-256 key
pair, 16 random auth bytes, and the JSON `{"endpoint": "http://127.0.0.1:PORT/push/ID", "keys":
{"p256dh", "auth"}}`; `decrypt(body)` opens a push's body (aes128gcm) with them.
`check_vapid(...)` verifies the Authorization header (`vapid t=JWT, k=KEY`) as a push service does.

No pytest in here: bench/ uses it too (bench/webpush.py). Failed checks raise AssertionError
(raised, not asserted: bench/ may run under -O).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import http_ece
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from multidict import CIMultiDict

from helpers.timing import TIMEOUT

HOST = "127.0.0.1"
DEFAULT_STATUS = 201  # RFC 8030 5: "201 (Created)" for an accepted push message
# RFC 8292 2: a JWT "MUST NOT" expire more than 24 hours from the request.
VAPID_MAX_SECONDS = 24 * 3600
# What SPEC 9 asks of a push's `Topic` (RFC 8030 5.4): at most 32 characters of base64url.
TOPIC_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def b64url(data: bytes) -> str:
    """base64url without padding (what browsers give and RFC 8292 uses)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    """The bytes of base64url `text`, padded or not (ValueError when it is not base64url)."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Fail(AssertionError):
    """A check of a push failed (raised, not asserted: works under -O)."""


def check(condition: object, what: str) -> None:
    """Raise Fail(`what`) unless `condition`."""
    if not condition:
        raise Fail(what)


@dataclass(frozen=True)
class Received:
    """One request to `POST /push/<id>`: the id, its headers and body, the status answered, and
    when it arrived (`time.perf_counter()`, taken before its body was read)."""

    id: str
    headers: CIMultiDict[str]
    body: bytes
    status: int
    at: float


@dataclass
class PushService:
    """The push service: `start()` it (on a free port of 127.0.0.1), `stop()` it at the end."""

    received: dict[str, list[Received]] = field(default_factory=dict)  # by id, in arrival order
    arrivals: asyncio.Queue[Received] = field(default_factory=asyncio.Queue)
    _scripts: dict[str, collections.deque[int]] = field(default_factory=dict)
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def base(self) -> str:
        """`http://127.0.0.1:PORT`: also the `aud` a VAPID JWT must name for this service."""
        return f"http://{HOST}:{self.port}"

    def endpoint(self, sub_id: str) -> str:
        """The endpoint URL of subscription `sub_id`."""
        return f"{self.base}/push/{sub_id}"

    async def start(self) -> PushService:
        """Listen on a free port of 127.0.0.1; returns self."""
        app = web.Application()
        app.router.add_post("/push/{id}", self._push)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = int(server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def script(self, sub_id: str, *statuses: int) -> None:
        """Answer the next requests for `sub_id` with `statuses`, in order (then 201 again)."""
        self._scripts.setdefault(sub_id, collections.deque()).extend(statuses)

    async def _push(self, request: web.Request) -> web.Response:
        at = time.perf_counter()
        sub_id = request.match_info["id"]
        body = await request.read()
        script = self._scripts.get(sub_id)
        status = script.popleft() if script else DEFAULT_STATUS
        got = Received(sub_id, CIMultiDict(request.headers), body, status, at)
        self.received.setdefault(sub_id, []).append(got)
        self.arrivals.put_nowait(got)
        headers = {"Location": f"{self.base}/message/{secrets.token_hex(8)}"} if status == 201 else {}
        return web.Response(status=status, headers=headers)

    async def next(self, timeout: float = TIMEOUT) -> Received:
        """The next request to arrive (in arrival order, whatever its id); Fail after `timeout`."""
        try:
            return await asyncio.wait_for(self.arrivals.get(), timeout)
        except TimeoutError:
            raise Fail(f"no push arrived within {timeout} s") from None

    def count(self, sub_id: str) -> int:
        """How many requests arrived for `sub_id` so far."""
        return len(self.received.get(sub_id, ()))

    def pending(self) -> int:
        """Arrivals not yet taken with `next()`."""
        return self.arrivals.qsize()


@dataclass
class Browser:
    """One browser's push subscription: its ECDH key pair (P-256), auth secret and id."""

    id: str
    endpoint: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes

    @classmethod
    def subscribe(cls, service: PushService, sub_id: str | None = None) -> Browser:
        """A new subscription at `service`, as `PushManager.subscribe()` makes one."""
        sub_id = sub_id or secrets.token_urlsafe(12)
        return cls(sub_id, service.endpoint(sub_id), ec.generate_private_key(ec.SECP256R1()),
                   os.urandom(16))

    @property
    def p256dh(self) -> str:
        """The public key as the browser gives it: base64url of the 65-byte uncompressed point."""
        return b64url(self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))

    def json(self) -> dict[str, Any]:
        """`PushSubscription.toJSON()`: what the client POSTs to /chat/push/subscription."""
        return {"endpoint": self.endpoint, "expirationTime": None,
                "keys": {"p256dh": self.p256dh, "auth": b64url(self.auth)}}

    def decrypt(self, body: bytes) -> bytes:
        """The plaintext of a push body encrypted to this subscription (RFC 8291, aes128gcm);
        raises when it was not."""
        return bytes(http_ece.decrypt(body, private_key=self.private_key, auth_secret=self.auth,
                                      version="aes128gcm"))

    def payload(self, got: Received) -> dict[str, Any]:
        """The JSON object a push `got` carries, decrypted; its request must say aes128gcm."""
        check(got.id == self.id, f"push for {got.id}, not {self.id}")
        check(got.headers.get("Content-Encoding") == "aes128gcm",
              f"Content-Encoding {got.headers.get('Content-Encoding')!r}")
        data = json.loads(self.decrypt(got.body))
        check(isinstance(data, dict), f"payload not an object: {data!r}")
        return data  # type: ignore[no-any-return]


def vapid_parts(authorization: str) -> tuple[str, str]:
    """(JWT, k) of an Authorization header `vapid t=JWT, k=KEY` (RFC 8292 3; spaces optional)."""
    scheme, _, rest = authorization.partition(" ")
    check(scheme.lower() == "vapid", f"Authorization scheme {scheme!r}, not vapid")
    params: dict[str, str] = {}
    for part in rest.split(","):
        name, sep, value = part.strip().partition("=")
        check(sep and name in ("t", "k") and name not in params, f"bad parameter {part!r}")
        params[name] = value
    check(set(params) == {"t", "k"}, f"t and k expected in {authorization!r}")
    return params["t"], params["k"]


def check_vapid(headers: CIMultiDict[str], server_key: str, audience: str,
                now: float | None = None) -> dict[str, Any]:
    """Check a push's VAPID authorization as a push service does (RFC 8292): the header is
    `vapid t=JWT, k=KEY`, `k` is `server_key` (GET /chat/push/key's `public_key`), the JWT's
    header says ES256, its signature verifies with `k`, `aud` is `audience` (the push service's
    origin), `exp` lies in the future and at most 24 h ahead, `sub` is a mailto: or https: URL.
    Returns the claims; raises Fail otherwise."""
    token, key = vapid_parts(headers.get("Authorization", ""))
    check(key == server_key, f"k {key!r} is not the server's key {server_key!r}")
    raw_key = unb64url(key)
    check(len(raw_key) == 65 and raw_key[0] == 4, "k is not an uncompressed P-256 point")
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw_key)
    pieces = token.split(".")
    check(len(pieces) == 3, "the JWT has not three parts")
    head, claims = (json.loads(unb64url(p)) for p in pieces[:2])
    check(head.get("alg") == "ES256", f"JWT header {head}")
    signature = unb64url(pieces[2])
    check(len(signature) == 64, "an ES256 signature is r || s, 64 bytes (RFC 7518 3.4)")
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"),
                               int.from_bytes(signature[32:], "big"))
    try:
        public.verify(der, f"{pieces[0]}.{pieces[1]}".encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise Fail("the VAPID JWT's signature does not verify with k") from None
    check(claims.get("aud") == audience, f"aud {claims.get('aud')!r}, not {audience!r}")
    now = time.time() if now is None else now
    exp = claims.get("exp")
    check(isinstance(exp, int) and now < exp <= now + VAPID_MAX_SECONDS,
          f"exp {exp!r} not within 24 h ahead of {now:.0f}")
    sub = claims.get("sub")
    check(isinstance(sub, str) and sub.startswith(("mailto:", "https:")), f"sub {sub!r}")
    return claims  # type: ignore[no-any-return]


def check_topic(topic: str | None) -> str:
    """A Topic header as RFC 8030 5.4 allows it: 1 to 32 base64url characters; returns it."""
    check(topic is not None and 0 < len(topic) <= 32 and set(topic) <= TOPIC_ALPHABET,
          f"Topic {topic!r}")
    assert topic is not None
    return topic
