"""Cross-site request forgery guard for unsafe methods, and the one JSON error shape.

The cross-origin check follows Go's `net/http.CrossOriginProtection` (Go 1.25), as SPEC 4 asks:
`Sec-Fetch-Site` of `same-origin` or `none` passes and any other value is refused; without that
header, an `Origin` that is present must equal this server's own origin (scheme://host[:port] of
the request) or a configured allowed origin; a request with neither header (a non-browser client)
passes. WebSocket handshakes use the same rule (SPEC 5: cross-site WebSocket hijacking).
The scheme is the one the client used: behind a proxy in `server.trusted_proxies` that ends TLS,
the one it forwards (remote.client_scheme, SPEC 11).

A token request (SPEC 12: `Authorization: Bearer`) skips that check and nothing else: it carries
no ambient credential (a browser attaches no Authorization header to another site's request
without the CORS consent this server never gives, and `auth.current_user` ignores any cookie
that comes along), so a forged one has nothing to ride on. Its errors are JSON on every path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web

from .attachments import UPLOAD_PATH
from .auth import bearer_token
from .exporter import METRICS_PATH
from .health import HEALTHZ_PATH
from .keys import allowed_hosts_key, config_key
from .logs import request_context
from .remote import client_address, client_scheme

log = logging.getLogger(__name__)

_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_SAME_SITE_FETCH: Final = frozenset({"same-origin", "none"})
# Our name instead of aiohttp's "Python/3.11 aiohttp/3.x": no version for a scanner to match.
SERVER_NAME: Final = "chatserver"
# RFC 6797: one year, this host only, no preload (a preload list entry is hard to take back).
HSTS: Final = "max-age=31536000"
# The one request whose body `guard` does not read beforehand (method, path): the upload of an
# attachment (SPEC 8), up to limits.max_attachment_bytes, which its handler streams to a file
# itself, each read bounded by limits.body_timeout_seconds (attachments._receive) and the size
# counted as it comes. Read here, it would be refused past CLIENT_MAX_SIZE, and held in memory.
STREAMED_BODIES: Final = frozenset({("POST", UPLOAD_PATH)})

# SPEC 11 probes: asked by address, whatever server.allowed_hosts says (AllowedHosts.allows_probe).
PROBE_PATHS: Final = frozenset({HEALTHZ_PATH, METRICS_PATH})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def same_origin(request: web.Request) -> bool:
    """True when the request may come from where it comes from (see the module docstring)."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        return fetch_site in _SAME_SITE_FETCH
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    if origin == f"{client_scheme(request)}://{request.host}":
        return True
    return origin in request.app[config_key].security.allowed_origins


def wants_json(request: web.Request) -> bool:
    """JSON endpoints (SPEC 4 /chat/special/*, /chat/info*; SPEC 10 /chat/admin/*, /chat/account*;
    SPEC 7 /chat/devices; SPEC 9 /chat/push/*, /chat/mute; SPEC 12 /api/*; SPEC 13 /chat/rooms*)
    answer errors as JSON, and so does every token request (a program, not a browser)."""
    return request.path.startswith(("/chat/special/", "/chat/info", "/chat/admin/", "/chat/account",
                                    "/chat/devices", "/chat/push/", "/chat/mute", "/api/",
                                    "/chat/rooms")) \
        or bearer_token(request) is not None


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a `Host` that `server.allowed_hosts` does not allow with 400 before anything else
    (DNS rebinding; chatserver/hosts.py), refuse state-changing requests from another site with
    403 (SPEC 4; not token requests, SPEC 12), render HTTP errors of JSON endpoints as
    `{"error": reason}` (SPEC 4), and put security headers on every response.

    One middleware, not three: each middleware's frame stays alive for as long as a WebSocket is
    open (~0.3 KB per socket each).
    """
    try:
        hosts = request.app[allowed_hosts_key]
        if not (hosts.allows_probe(request.headers.get("Host")) if request.path in PROBE_PATHS
                else hosts.allows(request.headers.get("Host"))):
            log.info("refused Host %r: not in server.allowed_hosts", request.headers.get("Host"),
                     extra=request_context(request))
            raise web.HTTPBadRequest(reason="unknown host; see server.allowed_hosts")
        if request.method not in _SAFE_METHODS and bearer_token(request) is None \
                and not same_origin(request):
            log.info("refused cross-origin %s %s", request.method, request.path,
                     extra=request_context(request))
            raise web.HTTPForbidden(reason="cross-origin request refused")
        if request.body_exists and (request.method, request.path) not in STREAMED_BODIES:
            refused = await _read_body(request)
            if refused is not None:
                return refused
        response = await handler(request)
    except web.HTTPException as e:  # raised errors and redirects are responses too
        if e.status == 408:  # a handler that reads its own body (STREAMED_BODIES) gave up on it
            return await _timed_out(request)
        if e.status >= 400 and wants_json(request):
            response = web.json_response({"error": e.reason}, status=e.status)
        else:
            _secure(e.headers)
            raise
    _secure(response.headers)
    if request.path.startswith("/static/"):
        # Revalidate: after an upgrade, a browser must not mix old and new modules of the client.
        response.headers.setdefault("Cache-Control", "no-cache")
    return response


async def response_headers(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare` hook, so that it reaches every response of the app, WebSocket upgrades
    and static files included: `Server` without a version; `Strict-Transport-Security` when
    `security.https`; `Cache-Control: no-store` on all but /static (pages and JSON carry a user's
    data and must not be kept by a browser or a proxy cache after logout)."""
    response.headers["Server"] = SERVER_NAME
    if request.app[config_key].security.https:
        response.headers.setdefault("Strict-Transport-Security", HSTS)
    if not request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")


async def _read_body(request: web.Request) -> web.StreamResponse | None:
    """Read the whole body within `limits.body_timeout_seconds` (issue 12, finding 5: a body that
    trickles in must not hold its connection, and a handler, forever). None when it is in;
    otherwise the response already given: 408 when it did not arrive in time, nothing to send
    when the client left before it did (logged, not as an error: no handler ran). aiohttp keeps
    what `read()` got, so the handler's `post()` and `json()` use it; `client_max_size` still
    applies (413 past it). A multipart body would be read here and not again by `multipart()`:
    the one endpoint that takes one (the attachment upload) is left out (STREAMED_BODIES)."""
    timeout = request.app[config_key].limits.body_timeout_seconds
    try:
        async with asyncio.timeout(timeout):
            await request.read()
    except TimeoutError:
        log.info("request body of %s %s from %s not in within %g s: 408",
                 request.method, request.path, client_address(request), timeout,
                 extra=request_context(request))
        return await _timed_out(request)
    except ConnectionError:
        log.info("%s %s from %s: the client left before its body arrived",
                 request.method, request.path, client_address(request), extra=request_context(request))
        request.protocol.force_close()
        gone = web.Response(status=400, text="the connection was lost")
        gone.force_close()
        return gone
    return None


async def _timed_out(request: web.Request) -> web.Response:
    """408 Request Timeout, sent now, and the connection closed once it is written: without the
    protocol's force_close aiohttp would linger up to 10 s more reading the rest of the body
    (its lingering_time), which is what a slow client wants."""
    reason = "the request body did not arrive in time"
    response = (web.json_response({"error": reason}, status=408) if wants_json(request)
                else web.Response(status=408, text=reason))
    response.force_close()
    _secure(response.headers)
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()  # the transport closes after sending what is buffered
    return response


def _secure(headers: Any) -> None:
    # img-src blob:: the client shows photos kept on the device (IndexedDB) through blob: URLs of
    # its own making (SPEC 8: the server deletes an attachment with its message).
    headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    )
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "same-origin")
    headers.setdefault("X-Frame-Options", "DENY")
