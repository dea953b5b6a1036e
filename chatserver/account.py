"""Self service (SPEC 10, "Every user"): change one's name and presence setting, one's password
(ending one's other devices), delete one's account. JSON, login required (401).

Password checks are counted by the attempt throttle before bcrypt runs (SPEC 10; 429 past it),
run in the app's bcrypt pool (503 when full), and a wrong password is answered 403 and stays
counted.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp_session import get_session

from . import presence
from .admin import end_sessions
from .api import _json_object, _login, _name_arg
from .auth import check_password, hash_password
from .forms import FormError, clean_password
from .keys import config_key, hub_key, password_hmac_key, password_pool_key, store_key, throttle_key
from .pages import _auth_event
from .remote import client_address
from .stores.base import LastAdmin
from .throttle import PasswordAttempt, PoolFull


def _profile(phone: str, name: str, admin: bool, hide_presence: bool) -> dict[str, Any]:
    return {"phone": phone, "name": name, "admin": admin, "hide_presence": hide_presence}


async def patch_account(request: web.Request) -> web.Response:
    """PATCH /chat/account `{"name"?: STR, "hide_presence"?: BOOL}`: 200 `{"phone", "name",
    "admin", "hide_presence"}`; 400 for a bad name (forms.clean_name), a non-boolean or an
    unknown field, and nothing is changed then."""
    me, _ = await _login(request)
    data = await _json_object(request)
    unknown = set(data) - {"name", "hide_presence"}
    if unknown:
        raise web.HTTPBadRequest(reason=f"unknown field(s): {', '.join(map(ascii, sorted(unknown)))}")
    name = _name_arg(data["name"]) if "name" in data else None
    hide = data.get("hide_presence")
    if hide is not None and not isinstance(hide, bool):
        raise web.HTTPBadRequest(reason="hide_presence must be true or false")
    store = request.app[store_key]
    if not await store.update_profile(me, name=name):
        raise web.HTTPUnauthorized(reason="log in first")  # deleted meanwhile
    if hide is not None:  # the watchers are told at once (presence.set_hidden)
        await presence.set_hidden(store, request.app[hub_key], me, hide)
    account = await store.account(me, request.app[config_key].security.session_seconds)
    if account is None:
        raise web.HTTPUnauthorized(reason="log in first")
    return web.json_response(_profile(account.phone, account.name, account.admin,
                                      account.hide_presence))


async def _check_own_password(request: web.Request, me: str, password: object,
                              what: str) -> PasswordAttempt:
    """Count an attempt on `me` and check `password` against the account's; returns the attempt
    (refund it when the action is done). 429 past the limits, 503 when the pool is full, 403 for
    a wrong password (the attempt stays counted)."""
    throttle = request.app[throttle_key]
    attempt = await throttle.begin_attempt(client_address(request), me)
    if attempt is None:
        _auth_event(logging.WARNING, f"{what} refused (too many attempts)", request, me)
        raise web.HTTPTooManyRequests(reason="too many attempts; try again later")
    user = await request.app[store_key].get_user(me)
    try:
        ok = await check_password(password if isinstance(password, str) else "",
                                  user.password_hash if user else None,
                                  request.app[config_key].security.bcrypt_rounds,
                                  request.app[password_pool_key], key=request.app[password_hmac_key])
    except PoolFull as e:
        await throttle.refund(attempt)
        raise web.HTTPServiceUnavailable(reason=str(e)) from None
    if not ok or user is None:
        _auth_event(logging.WARNING, f"{what} refused (wrong password)", request, me)
        raise web.HTTPForbidden(reason="the password is wrong")
    return attempt


async def change_password(request: web.Request) -> web.Response:
    """POST /chat/account/password `{"current": STR, "new": STR}`: 200 `{"changed": true}`; the
    account's other sessions are deleted and their sockets closed, this one stays (SPEC 10).
    400 for a new password forms.clean_password refuses (checked first: no attempt counted),
    403 for a wrong current one (counted), 429, 503."""
    me, sid_hash = await _login(request)
    data = await _json_object(request)
    try:
        new = clean_password(data.get("new"))
    except FormError as e:
        raise web.HTTPBadRequest(reason=f"new: {e}") from None
    attempt = await _check_own_password(request, me, data.get("current"), "password change")
    throttle = request.app[throttle_key]
    try:
        new_hash = await hash_password(new, request.app[config_key].security.bcrypt_rounds,
                                       request.app[password_pool_key], key=request.app[password_hmac_key])
    except PoolFull as e:
        await throttle.refund(attempt)
        raise web.HTTPServiceUnavailable(reason=str(e)) from None
    ended = await request.app[store_key].change_password(me, new_hash, sid_hash)
    await throttle.refund(attempt)
    if ended is None:
        raise web.HTTPUnauthorized(reason="log in first")  # deleted meanwhile
    await end_sessions(request, ended)
    _auth_event(logging.INFO, f"password changed ({len(ended)} other sessions ended)", request, me)
    return web.json_response({"changed": True})


async def delete_account(request: web.Request) -> web.Response:
    """DELETE /chat/account `{"password": STR}`: delete the account as `run.py deluser` does,
    close every socket of it and clear the cookie; 200 `{"deleted": true}`. 403 for a wrong
    password (counted), 409 for the last admin while other accounts exist, 429, 503."""
    me, _ = await _login(request)
    data = await _json_object(request)
    attempt = await _check_own_password(request, me, data.get("password"), "account deletion")
    await request.app[throttle_key].refund(attempt)
    try:
        ended = await request.app[store_key].delete_account(me)
    except LastAdmin:
        raise web.HTTPConflict(
            reason="you are the last admin; make another account admin first") from None
    await end_sessions(request, ended or [])  # this session's own sockets among them
    (await get_session(request)).invalidate()
    _auth_event(logging.WARNING, "account deleted by its owner", request, me)
    return web.json_response({"deleted": True})

