"""Accounts and login sessions: password hashes, the server-side session record, the cookie
secret and password key files.

A password is stored as `$hmac-sha256$` + bcrypt of base64(HMAC-SHA256(password key, NFKC(password)))
(issue 12: every byte of a passphrase up to 1024 counts, where bcrypt alone reads 72); hashes
written before (plain bcrypt) are still checked and re-hashed at the next login.

The encrypted cookie (aiohttp-session) carries only a random session id; the server keeps its
SHA-256 with the phone it belongs to (SPEC 4: logout deletes that record, so a replayed cookie is
refused). bcrypt runs in a thread: a hash takes ~0.2 s by design and must not stall the event loop;
the server's handlers pass their bounded `PasswordPool` (throttle.py), the CLI none.

Client tokens (SPEC 12, issue 17) are sessions too: a row of the same table, kind 'token', under
the SHA-256 of the token, made by `new_token`. A request carrying `Authorization: Bearer TOKEN`,
or a WebSocket handshake offering the subprotocol `bearer.TOKEN` (with `chat.v1`, which the server
selects), is authenticated by that token alone (`current_user`): a cookie that comes along is
ignored, so that a cross-site page that can make a browser offer a subprotocol (WebSocket
handshakes are not subject to CORS) gets nothing from the cookie that rides with it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import bcrypt
from aiohttp import web
from aiohttp_session import Session, get_session, new_session
from cryptography.fernet import Fernet

from .keyfile import key_file
from .keys import config_key, hub_key, store_key
from .stores.base import Store, touch_after_us
from .throttle import PasswordPool
from .useragent import device_label

T = TypeVar("T")

SESSION_FIELD: Final = "sid"
# SPEC 12: a client token is this prefix (recognisable in a leaked-secret scan) + 43 url-safe
# characters of 256 random bits.
TOKEN_PREFIX: Final = "ct_"
# The WebSocket subprotocol a token client offers and the server selects (SPEC 12, RFC 6455
# 1.9), and the prefix of the one that carries the token.
SUBPROTOCOL: Final = "chat.v1"
BEARER_SUBPROTOCOL: Final = "bearer."
# When the cookie's Max-Age was last renewed (Unix seconds; `_renew_cookie`).
COOKIE_RENEWED: Final = "renewed"
# The cookie's Max-Age at least: the longest browsers keep a cookie (Chrome caps it at 400 days).
# Longer than a session may go unused, because a session in use by its sockets alone (SPEC 7: a
# socket open at a session check is a use) renews no cookie: the server's record decides when a
# session ends, the cookie only has to outlive it.
COOKIE_SECONDS: Final = 400 * 86_400
# SPEC 4 and 10 (NIST SP 800-63B: at least 8, and a verifier should allow at least 64 characters).
# The minimum is for new passwords (forms.clean_password); older accounts may still have 8 bytes.
MIN_PASSWORD_CHARS: Final = 10
# More is refused, not cut: the pre-hash reads any length, but a megabyte password is work for
# nothing (and the login form's body limit, 64 KiB, is above this).
MAX_PASSWORD_BYTES: Final = 1024
# bcrypt reads at most 72 bytes (and stops at a NUL byte): what releases before issue 12 hashed
# directly, so a password of more bytes cannot match such a hash.
BCRYPT_MAX_BYTES: Final = 72
# Marks a hash of the pre-hashed password (`_prehash`) in the users and rooms tables; a hash
# without it is plain bcrypt of the UTF-8 bytes, as written before issue 12.
HMAC_PREFIX: Final = b"$hmac-sha256$"
# Characters of a configured `security.password_key` at least (a generated one has 43: 256 bits).
MIN_PASSWORD_KEY_CHARS: Final = 32
# Hashes compared against when the phone is unknown, one per cost, so that a login for an unknown
# phone costs the same time as a wrong password (no account enumeration by timing).
_dummy_hashes: dict[int, bytes] = {}


async def _off_loop(pool: PasswordPool | None, function: Callable[..., T], *args: Any) -> T:
    if pool is None:
        return await asyncio.to_thread(function, *args)
    return await pool.run(function, *args)


def _prehash(password: str, key: bytes) -> bytes:
    """What bcrypt hashes: base64 of HMAC-SHA256(key, NFKC(password) in UTF-8), 44 bytes.

    Every byte of a long passphrase counts (bcrypt alone reads 72), the result has no NUL byte
    (base64), and the key (`security.password_key`, kept outside the database) makes a stolen
    database useless for offline guessing without it. NFKC, as NIST SP 800-63B asks: the same
    passphrase typed on another keyboard (a composed or a decomposed é) is the same password.
    """
    normalized = unicodedata.normalize("NFKC", password)
    digest = hmac.new(key, normalized.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
    return base64.b64encode(digest)


async def hash_password(password: str, rounds: int, pool: PasswordPool | None = None, *,
                        key: bytes) -> bytes:
    """`HMAC_PREFIX` + bcrypt (cost `rounds`) of the pre-hashed password (`_prehash`, with the
    server's `key`), computed off the event loop (in `pool` when given).

    The rules for a new password (length, common ones) are `forms.clean_password`'s; this only
    refuses more than MAX_PASSWORD_BYTES, so that an older account's password can be re-hashed at
    login (`needs_upgrade`). Raises ValueError for that, PoolFull when `pool` is full.
    """
    if len(password.encode("utf-8", "surrogatepass")) > MAX_PASSWORD_BYTES:
        raise ValueError(f"the password must be at most {MAX_PASSWORD_BYTES} bytes in UTF-8")
    hashed = await _off_loop(pool, bcrypt.hashpw, _prehash(password, key), bcrypt.gensalt(rounds))
    return HMAC_PREFIX + hashed


def needs_upgrade(password_hash: bytes) -> bool:
    """True for a plain bcrypt hash written before issue 12: re-hash it at the next login."""
    return not password_hash.startswith(HMAC_PREFIX)


async def check_password(password: str, password_hash: bytes | None, rounds: int = 12,
                         pool: PasswordPool | None = None, *, key: bytes) -> bool:
    """True when `password` matches `password_hash`, of either format (`HMAC_PREFIX` + bcrypt of
    the pre-hash with `key`, or plain bcrypt of at most 72 bytes). With None (no such account), or
    a password that cannot match, spends the time of one check at cost `rounds` (the configured
    one) and is False. Runs in `pool` when given; raises PoolFull when it is full."""
    raw = password.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_PASSWORD_BYTES:
        password_hash = None  # never hashed: hash_password refuses it
    elif password_hash is not None and needs_upgrade(password_hash) and len(raw) > BCRYPT_MAX_BYTES:
        password_hash = None  # an old hash is of at most 72 bytes: this cannot match it
    if password_hash is None:
        dummy = _dummy_hashes.get(rounds)
        if dummy is None:
            dummy = _dummy_hashes[rounds] = await asyncio.to_thread(
                bcrypt.hashpw, _prehash("no such account", b"dummy"), bcrypt.gensalt(rounds))
        await _off_loop(pool, bcrypt.checkpw, _prehash(password, key), dummy)
        return False
    if needs_upgrade(password_hash):
        return await _off_loop(pool, bcrypt.checkpw, raw, password_hash)
    return await _off_loop(pool, bcrypt.checkpw, _prehash(password, key),
                           password_hash[len(HMAC_PREFIX):])


def _sid_hash(sid: str) -> str:
    return hashlib.sha256(sid.encode("utf-8", "surrogatepass")).hexdigest()


def new_token() -> str:
    """A new client token (SPEC 12): TOKEN_PREFIX + secrets.token_urlsafe(32), 46 characters.
    Shown once to whoever made it; the store keeps only its SHA-256 (`_sid_hash`)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


async def create_token(store: Store, phone: str, label: str) -> tuple[str, str]:
    """Record a new client token of `phone` as a device labelled `label` (SPEC 7, 12); returns
    (device id, token). Raises IntegrityError for an unknown phone. The label is the caller's to
    check (forms.clean_name)."""
    token = new_token()
    device_id = await store.add_session(_sid_hash(token), phone, label, token=True)
    return device_id, token


def _offered_subprotocols(request: web.Request) -> list[str]:
    """The subprotocols a WebSocket handshake offers, split as aiohttp splits them; none for any
    other request."""
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return []
    return [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
            if p.strip()]


def bearer_token(request: web.Request) -> str | None:
    """The client token a request carries (SPEC 12), or None when it carries none: the
    credentials of `Authorization: Bearer TOKEN` (scheme in any case; "" when empty), else, on a
    WebSocket handshake, of the first offered subprotocol `bearer.TOKEN`. A request with one is a
    token request: authenticated by it alone, whatever cookie comes along (`current_user`), and
    exempt from the cross-site checks (middlewares.guard, ws._handshake)."""
    scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer":
        return credentials.strip()
    for offered in _offered_subprotocols(request):
        if offered.startswith(BEARER_SUBPROTOCOL):
            return offered[len(BEARER_SUBPROTOCOL):]
    return None


def bearer_without_subprotocol(request: web.Request) -> bool:
    """True when a handshake offers a `bearer.` subprotocol without `chat.v1`: there would be
    no subprotocol to select (a browser then fails the socket with 1002), and aiohttp would log
    the offered ones at WARNING, the token with them. The handshake refuses it first."""
    offered = _offered_subprotocols(request)
    return any(p.startswith(BEARER_SUBPROTOCOL) for p in offered) and SUBPROTOCOL not in offered


async def log_in(request: web.Request, phone: str) -> None:
    """Start a new session for `phone`: a fresh id (never reuse the one before login), recorded
    as a new device (SPEC 7)."""
    old = await get_session(request)
    if isinstance(old.get(SESSION_FIELD), str):
        await request.app[store_key].delete_session(_sid_hash(old[SESSION_FIELD]))
    session = await new_session(request)
    sid = secrets.token_urlsafe(32)
    # SPEC 7: the session is a device, labelled from the User-Agent for the devices list only.
    await request.app[store_key].add_session(_sid_hash(sid), phone,
                                             device_label(request.headers.get("User-Agent")))
    session[SESSION_FIELD] = sid
    _renew_cookie(session, request.app[config_key].security.session_seconds)


async def log_out(request: web.Request) -> None:
    """End the session server-side, close its sockets and clear the cookie. A token request
    ends its token when it is a valid one (as DELETE /chat/devices would), and leaves any
    cookie alone."""
    if bearer_token(request) is not None:
        user = await current_user(request)
        if user is not None:
            await request.app[store_key].delete_session(user[1])
            await request.app[hub_key].close_session(user[1])
        return
    session = await get_session(request)
    sid = session.get(SESSION_FIELD)
    if isinstance(sid, str):
        sid_hash = _sid_hash(sid)
        await request.app[store_key].delete_session(sid_hash)
        await request.app[hub_key].close_session(sid_hash)
    session.invalidate()


async def current_user(request: web.Request) -> tuple[str, str] | None:
    """(phone, session id hash) of the logged-in user, or None. A use of the session (SPEC 7:
    it lasts `security.session_seconds` after its last use; `Store.session_user` records it).

    A token request (`bearer_token`) is the token's user or None (a missing, wrong or revoked
    token), whatever cookie it carries (SPEC 12). Constant time: the token is never compared
    with anything as a string; its SHA-256 is looked up in the sessions' primary key, so how
    long the lookup takes says nothing about how much of a guess was right."""
    token = bearer_token(request)
    if token is not None:
        token_hash = _sid_hash(token)
        phone = await request.app[store_key].session_user(
            token_hash, request.app[config_key].security.session_seconds, token=True)
        return None if phone is None else (phone, token_hash)
    session = await get_session(request)
    sid = session.get(SESSION_FIELD)
    if not isinstance(sid, str):
        return None
    sid_hash = _sid_hash(sid)
    max_age = request.app[config_key].security.session_seconds
    phone = await request.app[store_key].session_user(sid_hash, max_age)
    if phone is None:
        return None
    renewed = session.get(COOKIE_RENEWED)
    if not isinstance(renewed, int) or time.time() - renewed >= touch_after_us(max_age) / 1e6:
        # Sent with this response; a WebSocket handshake's answer carries no cookie (aiohttp-
        # session saves none), the next page load or request renews it then.
        _renew_cookie(session, max_age)
    return phone, sid_hash


def _renew_cookie(session: Session, max_age: int) -> None:
    """Have the response (re)send the session cookie with Max-Age max(`max_age`, COOKIE_SECONDS)
    from now, so that a browser keeps it at least as long as the server keeps the session
    (`max_age` after its last use, SPEC 7). Marks the time in the cookie, so that it is renewed
    once per touch interval, not with every response."""
    session.max_age = max(max_age, COOKIE_SECONDS)
    session[COOKIE_RENEWED] = int(time.time())


def load_secret(configured: str, db_path: str | Path) -> str:
    """The Fernet key that encrypts cookies: the configured one, else `<database>.secret`.

    The file is created on first start with mode 0600 (an existing one is tightened to 0600), in a
    folder made with mode 0700, and reused after (SPEC 3). Raises
    ValueError when a configured or stored key is not a valid Fernet key.
    """
    if configured:
        Fernet(configured)  # raises ValueError when malformed
        return configured
    return key_file(Path(f"{db_path}.secret"), lambda: Fernet.generate_key().decode(), _check_fernet)


def _check_fernet(key: str) -> None:
    Fernet(key)  # raises ValueError when malformed


def _check_password_key(key: str) -> None:
    if len(key) < MIN_PASSWORD_KEY_CHARS:
        raise ValueError(f"the password key must be at least {MIN_PASSWORD_KEY_CHARS} characters "
                         f"([security] password_key or the <database>.pepper file)")


def load_password_key(configured: str, db_path: str | Path) -> str:
    """The key of the passwords' pre-hash (`_prehash`): `security.password_key`, else the file
    `<database>.pepper`, generated on first use (43 random url-safe characters, mode 0600) like
    the cookie secret and reused after. Apart from the cookie secret on purpose: replacing that
    one logs everybody out, losing this one makes every password unusable (each must then be set
    again with `run.py passwd`). Raises ValueError for a key shorter than MIN_PASSWORD_KEY_CHARS.

    Pass the result's UTF-8 bytes as `key` to `hash_password` and `check_password`.
    """
    if configured:
        _check_password_key(configured)
        return configured
    return key_file(Path(f"{db_path}.pepper"), lambda: secrets.token_urlsafe(32), _check_password_key)
