"""HTML handlers (SPEC 4): the entry redirect, register, log in, log out and the chat client."""

from __future__ import annotations

import logging
from typing import Any, Final

import aiohttp_jinja2
from aiohttp import web

from .auth import check_password, current_user, hash_password, log_in, log_out
from .forms import FormError, clean_name, clean_password, clean_phone
from .keys import config_key, password_pool_key, store_key, throttle_key
from .protocol import GROUP_KEY_RE, ROOM_NAME_RE, is_phone
from .throttle import LOOKUPS_REFUSED, PoolFull, lookup_allowed

log = logging.getLogger(__name__)
TOO_MANY_ATTEMPTS: Final = "Too many attempts from your address or on this number; try again later."
PHONE_TAKEN: Final = "This phone number is already registered."


def _auth_event(level: int, outcome: str, request: web.Request, phone: object) -> None:
    """Log one authentication event (issue 12): outcome, client address, phone. Never the
    password, the cookie or a body; a phone that is not one (typed by anyone) is logged as '-',
    so that a form field cannot forge log lines."""
    log.log(level, "auth %s: phone=%s address=%s", outcome, phone if is_phone(phone) else "-",
            request.remote or "-")


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


async def register(request: web.Request) -> web.Response:
    """GET, POST /register: create an account and log in (SPEC 4); 409 for a taken phone, found
    before any bcrypt work; 429 past the attempt limits (SPEC 10); 503 while the bcrypt pool is
    full."""
    if request.method == "GET":
        return _form(request, "register.html", 200, None, {})
    form = await _post_form(request)
    values = {"phone": form.get("phone", ""), "name": form.get("name", "")}
    try:
        phone = clean_phone(form.get("phone"))
        name = clean_name(form.get("name"))
        password = clean_password(form.get("password"))
    except FormError as e:
        _auth_event(logging.INFO, "registration refused (invalid field)", request, form.get("phone"))
        return _form(request, "register.html", 400, str(e), values)
    # Registrations share the attempt limits of logins (SPEC 10), counted before any bcrypt work.
    store, throttle = request.app[store_key], request.app[throttle_key]
    attempt = await throttle.begin_attempt(request.remote or "", phone)
    if attempt is None:
        _auth_event(logging.WARNING, "registration refused (too many attempts)", request, phone)
        return _form(request, "register.html", 429, TOO_MANY_ATTEMPTS, values)
    # A taken phone is answered before any bcrypt work (and the attempt stays counted: it is how
    # phone numbers would be enumerated).
    if await store.get_user(phone) is not None:
        _auth_event(logging.WARNING, "registration refused (phone taken)", request, phone)
        return _form(request, "register.html", 409, PHONE_TAKEN, values)
    try:
        password_hash = await hash_password(password, request.app[config_key].security.bcrypt_rounds,
                                            request.app[password_pool_key])
    except PoolFull as e:
        await throttle.refund(attempt)
        return _form(request, "register.html", 503, str(e), values)
    if not await store.add_user(phone, name, password_hash):  # registered meanwhile
        _auth_event(logging.WARNING, "registration refused (phone taken)", request, phone)
        return _form(request, "register.html", 409, PHONE_TAKEN, values)
    await throttle.refund(attempt)
    _auth_event(logging.INFO, "registration ok", request, phone)
    await log_in(request, phone)
    raise web.HTTPFound("/chat")


async def login(request: web.Request) -> web.Response:
    """GET, POST /login: 302 to /chat, or 401 with one neutral message (SPEC 4); 429 past the
    attempt limits (SPEC 10), 503 while the bcrypt pool is full."""
    if request.method == "GET":
        return _form(request, "login.html", 200, None, {})
    throttle, address = request.app[throttle_key], request.remote or ""
    form = await _post_form(request)
    phone, password = form.get("phone"), form.get("password")
    values = {"phone": phone if isinstance(phone, str) else ""}
    # Counted before the password is checked, so that parallel attempts cannot pass the limit.
    # Malformed phones share one account counter: no counter per junk string.
    attempt = await throttle.begin_attempt(address, phone if is_phone(phone) else "(not a phone)")
    if attempt is None:
        _auth_event(logging.WARNING, "login refused (too many attempts)", request, phone)
        return _form(request, "login.html", 429, TOO_MANY_ATTEMPTS, values)
    user = await request.app[store_key].get_user(phone) if is_phone(phone) else None
    try:
        ok = await check_password(password if isinstance(password, str) else "",
                                  user.password_hash if user else None,
                                  request.app[config_key].security.bcrypt_rounds,
                                  request.app[password_pool_key])
    except PoolFull as e:
        await throttle.refund(attempt)
        return _form(request, "login.html", 503, str(e), values)
    if not ok or user is None:
        _auth_event(logging.WARNING, "login failed (unknown phone)" if user is None
                    else "login failed (wrong password)", request, phone)
        return _form(request, "login.html", 401, "Wrong phone number or password.", values)
    await throttle.refund(attempt)  # a right password uses up no attempt (README "Choices")
    await log_in(request, user.phone)
    _auth_event(logging.INFO, "login ok", request, user.phone)
    raise web.HTTPFound("/chat")


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
    return aiohttp_jinja2.render_template(
        "chat.html", request, {"phone": account.phone, "name": account.name, "opened": opened or {}})


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
