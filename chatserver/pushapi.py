"""The HTTP side of Web Push (SPEC 9): the server's VAPID key, the current device's subscription,
and the user's muted conversations. JSON, login required (401); the cross-site check of SPEC 4
applies to POST, PUT and DELETE (middlewares.guard). The sending is chatserver/push.py's.
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from .api import _json_object, _login
from .keys import config_key, push_key, store_key
from .protocol import (
    GROUP_KEY_RE,
    ROOM_NAME_RE,
    ProtocolError,
    is_phone,
    now_micros,
    parse_timestamp,
    server_timestamp,
)
from .push import EndpointRefused, b64url_decode, check_endpoint

# RFC 8291: the browser's ECDH key is an uncompressed P-256 point, its auth secret 16 bytes.
P256DH_BYTES: Final = 65
AUTH_BYTES: Final = 16
# Longer key strings are refused unread (base64url of 65 bytes is 87 characters).
MAX_KEY_CHARS: Final = 200


def _enabled(request: web.Request) -> None:
    """404 when `push.enabled` is false: the client then offers no notifications."""
    if not request.app[push_key].enabled:
        raise web.HTTPNotFound(reason="push notifications are turned off on this server")


async def push_key_json(request: web.Request) -> web.Response:
    """GET /chat/push/key: `{"public_key": base64url of the 65-byte point}`, the server's VAPID
    public key (SPEC 9, RFC 8292), for `pushManager.subscribe({applicationServerKey})`."""
    await _login(request)
    _enabled(request)
    return web.json_response({"public_key": request.app[push_key].public_key})


def _p256dh(value: object) -> str:
    """The browser's `keys.p256dh`: base64url of a point on P-256 (65 bytes, 0x04 first)."""
    try:
        if not isinstance(value, str) or len(value) > MAX_KEY_CHARS:
            raise ValueError
        raw = b64url_decode(value)
        if len(raw) != P256DH_BYTES or raw[0] != 4:
            raise ValueError
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)  # on the curve
    except ValueError:
        raise web.HTTPBadRequest(reason="keys.p256dh must be base64url of an uncompressed P-256 "
                                        "public key (65 bytes)") from None
    return value


def _auth(value: object) -> str:
    """The browser's `keys.auth`: base64url of 16 bytes."""
    try:
        if not isinstance(value, str) or len(value) > MAX_KEY_CHARS:
            raise ValueError
        if len(b64url_decode(value)) != AUTH_BYTES:
            raise ValueError
    except ValueError:
        raise web.HTTPBadRequest(reason="keys.auth must be base64url of 16 bytes") from None
    return value


async def subscribe(request: web.Request) -> web.Response:
    """POST /chat/push/subscription `{"endpoint": URL, "keys": {"p256dh", "auth"}}` (a browser's
    PushSubscription as JSON; other fields such as expirationTime ignored): the current device's
    subscription, replacing its earlier one; 201 `{"ok": true}`. 400 for an endpoint that is not
    https or reaches a loopback, private, link-local, reserved or multicast address (unless
    `push.allow_private_endpoints`), or keys that are not a P-256 point and a 16-byte secret."""
    _, sid_hash = await _login(request)
    _enabled(request)
    data = await _json_object(request)
    keys = data.get("keys")
    if not isinstance(keys, dict):
        raise web.HTTPBadRequest(reason="keys must be an object with p256dh and auth")
    p256dh, auth = _p256dh(keys.get("p256dh")), _auth(keys.get("auth"))
    try:
        endpoint = await check_endpoint(data.get("endpoint"),
                                        request.app[config_key].push.allow_private_endpoints)
    except EndpointRefused as e:
        raise web.HTTPBadRequest(reason=str(e)) from None
    if not await request.app[store_key].set_push_subscription(sid_hash, endpoint, p256dh, auth):
        raise web.HTTPUnauthorized(reason="log in first")  # the session ended meanwhile
    return web.json_response({"ok": True}, status=201)


async def unsubscribe(request: web.Request) -> web.Response:
    """DELETE /chat/push/subscription: remove the current device's subscription; 200
    `{"removed": BOOL}` (false: it had none)."""
    _, sid_hash = await _login(request)
    _enabled(request)
    removed = await request.app[store_key].delete_push_subscription(sid_hash)
    return web.json_response({"removed": removed})


def _conversation(value: object) -> str:
    """"personal:PHONE", "group:KEY" or "room:NAME" (SPEC 9), shapes as in protocol.py."""
    if isinstance(value, str):
        kind, _, name = value.partition(":")
        if (kind == "personal" and is_phone(name)
                or kind == "group" and GROUP_KEY_RE.fullmatch(name)
                or kind == "room" and ROOM_NAME_RE.fullmatch(name)):
            return value
    raise web.HTTPBadRequest(reason='conversation must be "personal:PHONE", "group:KEY" or '
                                    '"room:NAME"')


def _until(value: object) -> int | None:
    """`until`: null (unmute) or a timestamp (SPEC 5's formats) -> microseconds since the epoch."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise web.HTTPBadRequest(reason="until must be a timestamp or null")
    try:
        return parse_timestamp(value)
    except ProtocolError as e:
        raise web.HTTPBadRequest(reason=f"until: {e}") from None


def _mute_json(conversation: str, until_us: int | None) -> dict[str, Any]:
    return {"conversation": conversation,
            "until": None if until_us is None else server_timestamp(until_us)}


async def put_mute(request: web.Request) -> web.Response:
    """PUT /chat/mute `{"conversation": STR, "until": TS | null}`: no push for that conversation
    to any of the user's devices until then (null, or a time already past: unmuted); 200
    `{"conversation", "until"}` with `until` in the server's format (SPEC 9). "Always" is a
    far-future time (the client sends "9999-12-31 23:59:59"). 400 for a malformed conversation
    or time, or a new mute past the user's 200."""
    phone, _ = await _login(request)
    data = await _json_object(request)
    conversation = _conversation(data.get("conversation"))
    until_us = _until(data.get("until"))
    if until_us is not None and until_us <= now_micros():
        until_us = None  # over already: what is kept is what is in force
    try:
        await request.app[store_key].set_mute(phone, conversation, until_us)
    except ValueError as e:  # past the user's mutes
        raise web.HTTPBadRequest(reason=str(e)) from None
    return web.json_response(_mute_json(conversation, until_us))


async def list_mutes(request: web.Request) -> web.Response:
    """GET /chat/mute: `{"mutes": [{"conversation", "until"}]}`, those in force, by conversation."""
    phone, _ = await _login(request)
    mutes = await request.app[store_key].mutes(phone, now_micros())
    return web.json_response({"mutes": [_mute_json(c, until) for c, until in mutes]})
