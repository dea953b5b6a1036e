"""The admin JSON API (SPEC 10): accounts, invites and counts, for admins only.

Every handler answers 401 without a login and 403 for a user who is not an enabled admin; errors
are `{"error": reason}` (middlewares.guard), and the cross-site check of SPEC 4 applies to
PATCH, POST and DELETE. Changes are logged as authentication events (pages._auth_event).
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from . import invites
from .api import _json_object, _login, _phone_arg
from .keys import config_key, hub_key, store_key
from .pages import _auth_event
from .protocol import now_micros, server_timestamp
from .stores.base import Account, Invite, LastAdmin


async def _admin(request: web.Request) -> str:
    """The logged-in admin's phone; 401 without a login, 403 for anyone else."""
    me, _ = await _login(request)
    account = await request.app[store_key].account(
        me, request.app[config_key].security.session_seconds)
    if account is None or not account.admin or account.disabled:
        raise web.HTTPForbidden(reason="only admins may do this")
    return me


def account_json(account: Account) -> dict[str, Any]:
    """One entry of `GET /chat/admin/users` (SPEC 10); times in the server's format or null."""
    return {"phone": account.phone, "name": account.name, "admin": account.admin,
            "disabled": account.disabled, "created": server_timestamp(account.created_us),
            "last_seen": server_timestamp(account.last_seen_us) if account.last_seen_us else None,
            "devices": account.devices, "waiting": account.waiting}


async def end_sessions(request: web.Request, sid_hashes: list[str]) -> None:
    """Close the sockets of sessions the store has just deleted (here, and through the hub's
    broker in the other processes)."""
    hub = request.app[hub_key]
    for sid_hash in sid_hashes:
        await hub.close_session(sid_hash)


async def users(request: web.Request) -> web.Response:
    """GET /chat/admin/users: `{"users": [{phone, name, admin, disabled, created, last_seen,
    devices, waiting}]}`, by phone."""
    await _admin(request)
    accounts = await request.app[store_key].accounts(request.app[config_key].security.session_seconds)
    return web.json_response({"users": [account_json(a) for a in accounts]})


def _bool_field(data: dict[str, Any], field: str) -> bool | None:
    value = data.get(field)
    if value is not None and not isinstance(value, bool):
        raise web.HTTPBadRequest(reason=f"{field} must be true or false")
    return value


async def patch_user(request: web.Request) -> web.Response:
    """PATCH /chat/admin/users?phone=P with `{"disabled": BOOL}` and/or `{"admin": BOOL}`: 200
    with the account as `users` lists it. Disabling deletes the account's sessions and closes
    their sockets (SPEC 10: its devices end; logging in answers 403). 404 for an unknown phone,
    409 when the account is the last enabled admin and would stop being one."""
    me = await _admin(request)
    phone = _phone_arg(request.query.get("phone"), "phone")
    data = await _json_object(request)
    unknown = set(data) - {"disabled", "admin"}
    if unknown:
        raise web.HTTPBadRequest(reason=f"unknown field(s): {', '.join(map(ascii, sorted(unknown)))}")
    disabled, admin = _bool_field(data, "disabled"), _bool_field(data, "admin")
    if disabled is None and admin is None:
        raise web.HTTPBadRequest(reason="give disabled and/or admin")
    store = request.app[store_key]
    try:
        ended = await store.set_account_flags(phone, admin=admin, disabled=disabled)
    except LastAdmin:
        raise web.HTTPConflict(reason="this is the last admin; make another account admin first") from None
    if ended is None:
        raise web.HTTPNotFound(reason="no such user")
    await end_sessions(request, ended)
    for value, yes, no in ((disabled, "account disabled", "account enabled"),
                           (admin, "admin granted", "admin revoked")):
        if value is not None:
            _auth_event(logging.WARNING, f"{yes if value else no} by {me}", request, phone)
    account = await store.account(phone, request.app[config_key].security.session_seconds)
    if account is None:  # deleted meanwhile
        raise web.HTTPNotFound(reason="no such user")
    return web.json_response(account_json(account))


async def delete_user(request: web.Request) -> web.Response:
    """DELETE /chat/admin/users?phone=P: delete the account as `run.py deluser` does and close
    its sockets; `{"phone": P, "deleted": true}`; 404 unknown, 409 the last admin."""
    me = await _admin(request)
    phone = _phone_arg(request.query.get("phone"), "phone")
    try:
        ended = await request.app[store_key].delete_account(phone)
    except LastAdmin:
        raise web.HTTPConflict(reason="this is the last admin; make another account admin first") from None
    if ended is None:
        raise web.HTTPNotFound(reason="no such user")
    await end_sessions(request, ended)
    _auth_event(logging.WARNING, f"account deleted by {me}", request, phone)
    return web.json_response({"phone": phone, "deleted": True})


def _invite_json(request: web.Request, invite: Invite) -> dict[str, Any]:
    return {"code": invite.code, "url": invites.invite_url(request.app[config_key], invite.code),
            "uses": invite.uses, "uses_left": invite.uses_left,
            "expires": server_timestamp(invite.expires_us), "created_by": invite.created_by}


async def list_invites(request: web.Request) -> web.Response:
    """GET /chat/admin/invites: the live invites (a use left, not expired), oldest first:
    `{"invites": [{code, url, uses, uses_left, expires, created_by}]}`."""
    await _admin(request)
    found = await request.app[store_key].invites(now_micros())
    return web.json_response({"invites": [_invite_json(request, i) for i in found]})


def _count_field(data: dict[str, Any], field: str, default: int, bound: int) -> int:
    value = data.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= bound:
        raise web.HTTPBadRequest(reason=f"{field} must be a whole number from 1 to {bound}")
    return value


async def create_invite(request: web.Request) -> web.Response:
    """POST /chat/admin/invites `{"uses": N, "days": D}` (defaults 1 and 7; at most MAX_USES and
    MAX_DAYS): 201 `{"code", "url", "uses", "expires"}`."""
    me = await _admin(request)
    data = await _json_object(request)
    unknown = set(data) - {"uses", "days"}
    if unknown:
        raise web.HTTPBadRequest(reason=f"unknown field(s): {', '.join(map(ascii, sorted(unknown)))}")
    uses = _count_field(data, "uses", invites.DEFAULT_USES, invites.MAX_USES)
    days = _count_field(data, "days", invites.DEFAULT_DAYS, invites.MAX_DAYS)
    expires_us = now_micros() + days * invites.DAY_US
    store = request.app[store_key]
    code = invites.new_code()
    while not await store.create_invite(code, me, uses, expires_us):  # a 128-bit collision
        code = invites.new_code()
    _auth_event(logging.INFO, f"invite created by {me} ({uses} uses, {days} days)", request, me)
    return web.json_response({"code": code, "url": invites.invite_url(request.app[config_key], code),
                              "uses": uses, "expires": server_timestamp(expires_us)}, status=201)


async def revoke_invite(request: web.Request) -> web.Response:
    """DELETE /chat/admin/invites?code=C: `{"code": C, "revoked": true}`; 404 when there is none."""
    me = await _admin(request)
    code = request.query.get("code", "")
    if not invites.is_code(code) or not await request.app[store_key].revoke_invite(code):
        raise web.HTTPNotFound(reason="no such invite")
    _auth_event(logging.INFO, f"invite revoked by {me}", request, me)
    return web.json_response({"code": code, "revoked": True})


async def stats(request: web.Request) -> web.Response:
    """GET /chat/admin/stats: `{"users", "devices" (live sessions), "sockets" (open in the
    process that answers), "stored_messages" (personal and group messages waiting),
    "attachment_bytes" (stored attachments and thumbnails, SPEC 8), "database_bytes"}`."""
    await _admin(request)
    store = request.app[store_key]
    counts = await store.stats(request.app[config_key].security.session_seconds)
    return web.json_response({"users": counts.users, "devices": counts.devices,
                              "sockets": request.app[hub_key].socket_count(),
                              "stored_messages": counts.stored_messages,
                              "attachment_bytes": await store.attachment_bytes(),
                              "database_bytes": counts.database_bytes})
