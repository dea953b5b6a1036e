"""HTML handlers (SPEC 4): the entry redirect, register, log in, log out and the chat client."""

from __future__ import annotations

import logging
import unicodedata
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from .auth import MAX_PASSWORD_BYTES, MIN_PASSWORD_BYTES, check_password, current_user, hash_password
from .auth import log_in, log_out
from .keys import config_key, store_key
from .protocol import is_phone

log = logging.getLogger(__name__)

MAX_NAME_CHARS = 64


class FormError(ValueError):
    """A form field that cannot be accepted; the message is shown to the person."""


def clean_name(raw: object) -> str:
    """A display name: 1-64 characters after trimming, no control characters (SPEC 4)."""
    if not isinstance(raw, str):
        raise FormError("Enter your name.")
    name = raw.strip()
    if not 1 <= len(name) <= MAX_NAME_CHARS:
        raise FormError(f"The name must be 1 to {MAX_NAME_CHARS} characters.")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        raise FormError("The name must not contain control characters.")
    return name


def clean_phone(raw: object) -> str:
    """A phone number: 10 to 15 ASCII digits (SPEC 1)."""
    if not is_phone(raw):
        raise FormError("The phone number must be 10 to 15 digits, nothing else.")
    return raw  # type: ignore[return-value]


def clean_password(raw: object) -> str:
    """A password of 8 to 72 bytes in UTF-8 (SPEC 4; bcrypt reads no more than 72)."""
    if not isinstance(raw, str):
        raise FormError("Enter a password.")
    size = len(raw.encode("utf-8", "surrogatepass"))
    if not MIN_PASSWORD_BYTES <= size <= MAX_PASSWORD_BYTES:
        raise FormError(f"The password must be {MIN_PASSWORD_BYTES} to {MAX_PASSWORD_BYTES} bytes "
                        f"long (letters outside English may take 2 to 4 bytes each).")
    return raw


def _form(request: web.Request, template: str, status: int, error: str | None,
          values: dict[str, Any]) -> web.Response:
    return aiohttp_jinja2.render_template(
        template, request, {"error": error, "values": values}, status=status)


async def index(request: web.Request) -> web.Response:
    """GET /: to the chat when logged in, else to the login form."""
    raise web.HTTPFound("/chat" if await current_user(request) else "/login")


async def register(request: web.Request) -> web.Response:
    """GET, POST /register: create an account and log in (SPEC 4)."""
    if request.method == "GET":
        return _form(request, "register.html", 200, None, {})
    form = await request.post()
    values = {"phone": form.get("phone", ""), "name": form.get("name", "")}
    try:
        phone = clean_phone(form.get("phone"))
        name = clean_name(form.get("name"))
        password = clean_password(form.get("password"))
    except FormError as e:
        return _form(request, "register.html", 400, str(e), values)
    store = request.app[store_key]
    password_hash = await hash_password(password, request.app[config_key].security.bcrypt_rounds)
    if not await store.add_user(phone, name, password_hash):
        return _form(request, "register.html", 409, "This phone number is already registered.",
                     values)
    log.info("registered %s", phone)
    await log_in(request, phone)
    raise web.HTTPFound("/chat")


async def login(request: web.Request) -> web.Response:
    """GET, POST /login: 302 to /chat, or 401 with one neutral message (SPEC 4)."""
    if request.method == "GET":
        return _form(request, "login.html", 200, None, {})
    form = await request.post()
    phone, password = form.get("phone"), form.get("password")
    values = {"phone": phone if isinstance(phone, str) else ""}
    user = await request.app[store_key].get_user(phone) if is_phone(phone) else None
    ok = await check_password(password if isinstance(password, str) else "",
                              user.password_hash if user else None)
    if not ok or user is None:
        return _form(request, "login.html", 401, "Wrong phone number or password.", values)
    await log_in(request, user.phone)
    raise web.HTTPFound("/chat")


async def logout(request: web.Request) -> web.Response:
    """POST /logout: end the session server-side, close its sockets (SPEC 4)."""
    await log_out(request)
    raise web.HTTPFound("/login")


async def _chat_page(request: web.Request, opened: dict[str, str] | None) -> web.Response:
    user = await current_user(request)
    if user is None:
        raise web.HTTPFound("/login")
    account = await request.app[store_key].get_user(user[0])
    if account is None:  # deleted while logged in
        raise web.HTTPFound("/login")
    return aiohttp_jinja2.render_template(
        "chat.html", request, {"phone": account.phone, "name": account.name, "opened": opened or {}})


async def chat(request: web.Request) -> web.Response:
    """GET /chat: the chat client (login required)."""
    return await _chat_page(request, None)


async def chat_personal(request: web.Request) -> web.Response:
    """GET /chat/personal/<msg_from>/<msg_to>/: the client opened on a dialogue (SPEC 4)."""
    user = await current_user(request)
    if user is None:
        raise web.HTTPFound("/login")
    if request.match_info["msg_from"] != user[0]:
        raise web.HTTPForbidden(reason="that is not your dialogue")
    msg_to = request.match_info["msg_to"]
    if not is_phone(msg_to) or not await request.app[store_key].user_exists(msg_to):
        raise web.HTTPNotFound(reason="no such user")
    return await _chat_page(request, {"kind": "personal", "id": msg_to})
