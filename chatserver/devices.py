"""A user's devices (SPEC 7): `GET /chat/devices` lists the login sessions and client tokens,
`DELETE /chat/devices?id=ID` ends one, `POST /chat/devices/token` makes a client token (SPEC 12).
JSON, login required (401); the cross-site check of SPEC 4 applies to DELETE and POST from a
browser (middlewares.guard).
"""

from __future__ import annotations

import logging
from typing import Any, Final

from aiohttp import web
from aiohttp_session import get_session

from .api import _json_object, _login, _name_arg
from .auth import bearer_token, create_token
from .keys import config_key, hub_key, store_key
from .pages import _auth_event
from .protocol import server_timestamp
from .stores.base import Device

# Longer than any id the server makes (16 characters; 32 for sessions of before migration 0004):
# a longer one is unknown without asking the store.
MAX_ID_CHARS: Final = 64


def device_json(device: Device) -> dict[str, Any]:
    """One entry of `GET /chat/devices`; times in the server's format (SPEC 5)."""
    return {"id": device.id, "label": device.label, "created": server_timestamp(device.created_us),
            "last_active": server_timestamp(device.last_used_us), "current": device.current}


async def list_devices(request: web.Request) -> web.Response:
    """GET /chat/devices: `{"devices": [{"id", "label", "created", "last_active", "current"}]}`,
    the user's live sessions, newest first; `current` marks the asking one."""
    me, sid_hash = await _login(request)
    devices = await request.app[store_key].devices(
        me, sid_hash, request.app[config_key].security.session_seconds)
    return web.json_response({"devices": [device_json(d) for d in devices]})


async def delete_device(request: web.Request) -> web.Response:
    """DELETE /chat/devices?id=ID: end that device: its session is deleted and its sockets are
    closed at once (here, and through the hub's broker in the other processes; the session
    check covers a process the broker misses). 200 `{"id": ID, "removed": true}`; 404 when ID is
    not one of the user's devices, whoever's it is (never 403: ids of others stay unconfirmed).
    Ending the asking device also clears its cookie, as logout does."""
    me, sid_hash = await _login(request)
    device_id = request.query.get("id", "")
    if not device_id or len(device_id) > MAX_ID_CHARS:
        raise web.HTTPNotFound(reason="no such device")
    ended = await request.app[store_key].delete_device(me, device_id)
    if ended is None:
        raise web.HTTPNotFound(reason="no such device")
    await request.app[hub_key].close_session(ended)
    if ended == sid_hash and bearer_token(request) is None:  # a token's request has no cookie to clear
        (await get_session(request)).invalidate()
    _auth_event(logging.INFO, "device logged out" + (" (this one)" if ended == sid_hash else ""),
                request, me)
    return web.json_response({"id": device_id, "removed": True})


async def create_device_token(request: web.Request) -> web.Response:
    """POST /chat/devices/token `{"label": STR}` (1 to 64 characters, cleaned like a name): make
    a client token (SPEC 12), a new device of the logged-in user labelled `label`; 201 `{"id":
    DEVICE_ID, "token": TOKEN}`. The token is in this answer only: the server keeps its SHA-256.
    A browser login only (a password-backed session): a token request gets 403, so that a
    leaked token cannot make itself a successor that outlives its revocation. 400 for a bad
    label, 401 without a login."""
    me, _ = await _login(request)
    if bearer_token(request) is not None:
        raise web.HTTPForbidden(reason="a token cannot make tokens; log in with your password")
    label = _name_arg((await _json_object(request)).get("label"), "label")
    device_id, token = await create_token(request.app[store_key], me, label)
    _auth_event(logging.INFO, "token created", request, me)
    return web.json_response({"id": device_id, "token": token}, status=201)
