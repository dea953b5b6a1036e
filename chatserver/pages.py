"""HTML handlers (SPEC 4): the entry redirect, register, log in, log out and the chat client."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Final

import aiohttp_jinja2
from aiohttp import web

from .auth import check_password, current_user, hash_password, log_in, log_out, needs_upgrade
from .forms import FormError, clean_name, clean_password, clean_phone
from .invites import is_code
from .keys import config_key, password_hmac_key, password_pool_key, store_key, throttle_key
from .logs import request_context
from .metrics import (
    LOGIN_FAILED_CREDENTIALS,
    LOGIN_FAILED_DISABLED,
    LOGIN_FAILED_THROTTLED,
    LOGINS,
    REGISTRATIONS,
)
from .protocol import GROUP_KEY_RE, ROOM_NAME_RE, is_phone, now_micros
from .remote import client_address
from .stores.base import Invite
from .throttle import LOOKUPS_REFUSED, PoolFull, lookup_allowed

log = logging.getLogger(__name__)
# The service worker (SPEC 9), served at /sw.js so that its scope is the whole site.
SERVICE_WORKER: Final = Path(__file__).resolve().parent.parent / "static" / "sw.js"
TOO_MANY_ATTEMPTS: Final = "Too many attempts from your address or on this number; try again later."
PHONE_TAKEN: Final = "This phone number is already registered."
# SPEC 10: why /register refuses (403).
REGISTRATION_CLOSED: Final = ("Registration is closed on this server: ask its administrator to "
                              "create your account.")
INVITE_NEEDED: Final = ("This server registers people by invitation: open the invite link you "
                        "were sent, or ask someone who uses this server for one.")
INVITE_UNKNOWN: Final = "This invite code is not valid: check the link you were sent."
INVITE_EXPIRED: Final = "This invite has expired: ask for a new one."
INVITE_USED: Final = "This invite has been used up: ask for a new one."
ACCOUNT_DISABLED: Final = "This account is disabled: ask the server's administrator."


def _auth_event(level: int, outcome: str, request: web.Request, phone: object) -> None:
    """Log one authentication event (issue 12): outcome, client address, phone. Never the
    password, the cookie or a body; a phone that is not one (typed by anyone) is logged as '-',
    so that a form field cannot forge log lines."""
    shown = phone if is_phone(phone) else "-"
    log.log(level, "auth %s: phone=%s address=%s", outcome, shown, client_address(request) or "-",
            extra={**request_context(request), "event": f"auth {outcome}", "phone": shown})


async def _post_form(request: web.Request) -> Any:
    """The posted form; 400 when it cannot be decoded (a field that is not UTF-8)."""
    try:
        return await request.post()
    except (ValueError, LookupError):  # not UTF-8 (UnicodeDecodeError), an unknown charset
        raise web.HTTPBadRequest(reason="the form could not be read") from None


def _form(request: web.Request, template: str, status: int, error: str | None,
          values: dict[str, Any]) -> web.Response:
    return aiohttp_jinja2.render_template(
        template, request, {"error": error, "values": values}, status=status)


async def index(request: web.Request) -> web.Response:
    """GET /: to the chat when logged in, else to the login form."""
    raise web.HTTPFound("/chat" if await current_user(request) else "/login")


def _invite_refusal(invite: Invite | None, now_us: int) -> str:
    """Why an invite cannot be used (SPEC 10: 403 with the reason)."""
    if invite is None:
        return INVITE_UNKNOWN
    if invite.expires_us <= now_us:
        return INVITE_EXPIRED
    return INVITE_USED


async def register(request: web.Request) -> web.Response:
    """GET, POST /register: create an account and log in (SPEC 4, 10).

    `security.registration` decides who may: "open" anyone, "invite" those with a live invite
    code (`/register?invite=CODE`, posted back as the field `invite`; one use taken atomically
    with the account's creation), "closed" nobody (admins and `run.py adduser` create accounts);
    while the database holds no account, the first registration passes whatever the mode and
    makes an admin. 403 with the reason when the mode refuses or the code is unknown, expired or
    used up (counted as a failed attempt, under the code's own account key); 409 for a taken
    phone, found before any bcrypt work (with "invite", only once the code is known to be live:
    no phone enumeration without an invite); 429 past the attempt limits (SPEC 10); 503 while
    the bcrypt pool is full."""
    mode = request.app[config_key].security.registration
    if request.method == "GET":
        code = request.query.get("invite", "")
        # A fresh database takes its first account whatever the mode: no note about invites.
        shown = mode if await request.app[store_key].has_users() else "open"
        return _form(request, "register.html", 200, None,
                     {"invite": code if is_code(code) else "", "mode": shown})
    form = await _post_form(request)
    raw_invite = form.get("invite")
    invite = raw_invite if isinstance(raw_invite, str) and raw_invite else None
    values = {"phone": form.get("phone", ""), "name": form.get("name", ""),
              "invite": invite if is_code(invite) else "", "mode": mode}
    try:
        phone = clean_phone(form.get("phone"))
        name = clean_name(form.get("name"))
        password = clean_password(form.get("password"))
    except FormError as e:
        _auth_event(logging.INFO, "registration refused (invalid field)", request, form.get("phone"))
        return _form(request, "register.html", 400, str(e), values)
    store, throttle = request.app[store_key], request.app[throttle_key]
    # SPEC 10: the first account is free whatever the mode (checked again, atomically, when the
    # account is created: register_user).
    free = mode == "open" or not await store.has_users()
    if not free and mode == "closed":
        _auth_event(logging.INFO, "registration refused (closed)", request, phone)
        return _form(request, "register.html", 403, REGISTRATION_CLOSED, values)
    if not free and invite is None:
        _auth_event(logging.INFO, "registration refused (no invite)", request, phone)
        return _form(request, "register.html", 403, INVITE_NEEDED, values)
    # Registrations share the attempt limits of logins (SPEC 10), counted before any bcrypt work;
    # with an invite, on the code (junk shares one key), so that guesses of codes are counted per
    # address and per code. Never logged: a code is as good as an account while it lasts.
    account_key = phone if free else f"invite {invite}" if is_code(invite) else "(invite)"
    attempt = await throttle.begin_attempt(client_address(request), account_key)
    if attempt is None:
        _auth_event(logging.WARNING, "registration refused (too many attempts)", request, phone)
        return _form(request, "register.html", 429, TOO_MANY_ATTEMPTS, values)
    if not free:
        known = await store.invite(invite) if is_code(invite) else None
        if known is None or known.uses_left <= 0 or known.expires_us <= now_micros():
            _auth_event(logging.WARNING, "registration refused (invalid invite)", request, phone)
            return _form(request, "register.html", 403, _invite_refusal(known, now_micros()), values)
    # A taken phone is answered before any bcrypt work (and the attempt stays counted: it is how
    # phone numbers would be enumerated).
    if await store.get_user(phone) is not None:
        _auth_event(logging.WARNING, "registration refused (phone taken)", request, phone)
        return _form(request, "register.html", 409, PHONE_TAKEN, values)
    try:
        password_hash = await hash_password(password, request.app[config_key].security.bcrypt_rounds,
                                            request.app[password_pool_key],
                                            key=request.app[password_hmac_key])
    except PoolFull as e:
        await throttle.refund(attempt)
        return _form(request, "register.html", 503, str(e), values)
    done = await store.register_user(phone, name, password_hash, mode=mode,
                                     invite=invite if is_code(invite) else None)
    if done.outcome == "taken":  # registered meanwhile
        _auth_event(logging.WARNING, "registration refused (phone taken)", request, phone)
        return _form(request, "register.html", 409, PHONE_TAKEN, values)
    if done.outcome == "closed":  # someone else was first meanwhile
        await throttle.refund(attempt)
        _auth_event(logging.INFO, "registration refused (closed)", request, phone)
        return _form(request, "register.html", 403, REGISTRATION_CLOSED, values)
    if done.outcome == "invite":  # someone else was first, or took the last use, meanwhile
        _auth_event(logging.WARNING, "registration refused (invalid invite)", request, phone)
        reason = (INVITE_NEEDED if invite is None else
                  _invite_refusal(await store.invite(invite) if is_code(invite) else None, now_micros()))
        return _form(request, "register.html", 403, reason, values)
    await throttle.refund(attempt)
    REGISTRATIONS.inc()
    _auth_event(logging.INFO, "registration ok", request, phone)
    await log_in(request, phone)
    raise web.HTTPFound("/chat")


async def login(request: web.Request) -> web.Response:
    """GET, POST /login: 302 to /chat, or 401 with one neutral message (SPEC 4); 429 past the
    attempt limits (SPEC 10), 503 while the bcrypt pool is full."""
    if request.method == "GET":
        return _form(request, "login.html", 200, None, {})
    throttle, address = request.app[throttle_key], client_address(request)
    form = await _post_form(request)
    phone, password = form.get("phone"), form.get("password")
    values = {"phone": phone if isinstance(phone, str) else ""}
    # Counted before the password is checked, so that parallel attempts cannot pass the limit.
    # Malformed phones share one account counter: no counter per junk string.
    attempt = await throttle.begin_attempt(address, phone if is_phone(phone) else "(not a phone)")
    if attempt is None:
        LOGIN_FAILED_THROTTLED.inc()
        _auth_event(logging.WARNING, "login refused (too many attempts)", request, phone)
        return _form(request, "login.html", 429, TOO_MANY_ATTEMPTS, values)
    user = await request.app[store_key].get_user(phone) if is_phone(phone) else None
    try:
        ok = await check_password(password if isinstance(password, str) else "",
                                  user.password_hash if user else None,
                                  request.app[config_key].security.bcrypt_rounds,
                                  request.app[password_pool_key], key=request.app[password_hmac_key])
    except PoolFull as e:
        await throttle.refund(attempt)
        return _form(request, "login.html", 503, str(e), values)
    if not ok or user is None:
        LOGIN_FAILED_CREDENTIALS.inc()
        _auth_event(logging.WARNING, "login failed (unknown phone)" if user is None
                    else "login failed (wrong password)", request, phone)
        return _form(request, "login.html", 401, "Wrong phone number or password.", values)
    await throttle.refund(attempt)  # a right password uses up no attempt (README "Choices")
    if needs_upgrade(user.password_hash):
        assert isinstance(password, str)  # it matched
        await _upgrade_hash(request, user.phone, user.password_hash, password)
    await log_in(request, user.phone)
    # SPEC 10: a disabled account cannot log in. Asked after the session is recorded: disabling
    # deletes the account's sessions in the transaction that sets the flag, so either this read
    # sees the flag or that delete takes this session. Told only to who knows the password.
    account = await request.app[store_key].account(user.phone, 0)
    if account is None or account.disabled:
        await log_out(request)
        LOGIN_FAILED_DISABLED.inc()
        _auth_event(logging.WARNING, "login refused (account disabled)", request, user.phone)
        return _form(request, "login.html", 403, ACCOUNT_DISABLED, values)
    LOGINS.inc()
    _auth_event(logging.INFO, "login ok", request, user.phone)
    raise web.HTTPFound("/chat")


async def _upgrade_hash(request: web.Request, phone: str, old_hash: bytes, password: str) -> None:
    """Re-hash a password stored by a release before issue 12 (plain bcrypt) in today's format
    (auth.hash_password), now that the login gave it. Replaced only while the stored hash is still
    the old one (a `passwd` meanwhile wins); sessions stay. A full bcrypt pool leaves it for a
    later login."""
    try:
        new_hash = await hash_password(password, request.app[config_key].security.bcrypt_rounds,
                                       request.app[password_pool_key],
                                       key=request.app[password_hmac_key])
    except PoolFull:
        return
    if await request.app[store_key].upgrade_password_hash(phone, old_hash, new_hash):
        log.info("password hash of %s upgraded to the pre-hashed format", phone)


async def logout(request: web.Request) -> web.Response:
    """POST /logout: end the session server-side, close its sockets (SPEC 4)."""
    who = await current_user(request)  # for the log line only
    await log_out(request)
    _auth_event(logging.INFO, "logout", request, who[0] if who else None)
    raise web.HTTPFound("/login")


async def _page_user(request: web.Request, *, own_path: bool = False) -> str:
    """The logged-in phone; 302 to /login without a login; 403 when `own_path` and the path's
    msg_from is someone else (SPEC 4)."""
    user = await current_user(request)
    if user is None:
        raise web.HTTPFound("/login")
    if own_path and request.match_info["msg_from"] != user[0]:
        raise web.HTTPForbidden(reason="that page belongs to someone else")
    return user[0]


async def _chat_page(request: web.Request, phone: str,
                     opened: dict[str, str] | None = None) -> web.Response:
    account = await request.app[store_key].get_user(phone)
    if account is None:  # deleted while logged in
        raise web.HTTPFound("/login")
    # The message limits (SPEC 10) go on the page, so that the client says a text is too long
    # and offers to split it before the server refuses it (issue 18, defect 6).
    return aiohttp_jinja2.render_template(
        "chat.html", request, {"phone": account.phone, "name": account.name, "opened": opened or {},
                               "limits": request.app[config_key].limits})


async def chat(request: web.Request) -> web.Response:
    """GET /chat: the chat client (login required)."""
    return await _chat_page(request, await _page_user(request))


async def chat_personal(request: web.Request) -> web.Response:
    """GET /chat/personal/<msg_from>/<msg_to>/: the client opened on a dialogue (SPEC 4)."""
    phone = await _page_user(request, own_path=True)
    msg_to = request.match_info["msg_to"]
    # A lookup of a phone (issue 12, finding 6): the 404 says whether it has an account.
    if is_phone(msg_to) and not await lookup_allowed(request.app[throttle_key], request.app[store_key],
                                                     phone, msg_to):
        raise web.HTTPTooManyRequests(reason=LOOKUPS_REFUSED)
    if not is_phone(msg_to) or not await request.app[store_key].user_exists(msg_to):
        raise web.HTTPNotFound(reason="no such user")
    return await _chat_page(request, phone, {"kind": "personal", "id": msg_to})


async def chat_group(request: web.Request) -> web.Response:
    """GET /chat/group/<msg_from>/<grp>/: the client opened on a group; members only (SPEC 4)."""
    phone = await _page_user(request, own_path=True)
    grp = request.match_info["grp"]
    group = await request.app[store_key].group(grp) if GROUP_KEY_RE.fullmatch(grp) else None
    if group is None:
        raise web.HTTPNotFound(reason="no such group")
    if phone not in group.participants:
        raise web.HTTPForbidden(reason="you are not a participant of this group")
    return await _chat_page(request, phone, {"kind": "group", "id": grp})


async def chat_room(request: web.Request) -> web.Response:
    """GET /chat/room/<room_name>/: the client opened on a room (SPEC 4)."""
    phone = await _page_user(request)
    name = request.match_info["room_name"]
    if not ROOM_NAME_RE.fullmatch(name) or await request.app[store_key].room(name) is None:
        raise web.HTTPNotFound(reason="no such room")
    return await _chat_page(request, phone, {"kind": "room", "id": name})


async def service_worker(request: web.Request) -> web.FileResponse:
    """GET /sw.js: the client's service worker (SPEC 9: the app opens without a network, and
    shows push notifications), from static/sw.js. At the root path because a worker controls
    only the pages under its own path. `Cache-Control: no-cache`: the browser asks again at each
    update check (it bypasses its HTTP cache for workers anyway, after 24 h at the most), so a
    new release's worker is installed at the next visit. No login: it holds no one's data."""
    return web.FileResponse(SERVICE_WORKER, headers={
        "Content-Type": "application/javascript; charset=utf-8", "Cache-Control": "no-cache"})
