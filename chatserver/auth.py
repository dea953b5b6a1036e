"""Accounts and login sessions: bcrypt, the server-side session record, the cookie secret file.

The encrypted cookie (aiohttp-session) carries only a random session id; the server keeps its
SHA-256 with the phone it belongs to (SPEC 4: logout deletes that record, so a replayed cookie is
refused). bcrypt runs in a thread: a hash takes ~0.2 s by design and must not stall the event loop;
the server's handlers pass their bounded `PasswordPool` (throttle.py), the CLI none.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import bcrypt
from aiohttp import web
from aiohttp_session import get_session, new_session
from cryptography.fernet import Fernet

from .keys import config_key, hub_key, store_key
from .throttle import PasswordPool

T = TypeVar("T")

SESSION_FIELD: Final = "sid"
# bcrypt reads at most 72 bytes of a password; longer ones are refused, not silently cut.
MAX_PASSWORD_BYTES: Final = 72
MIN_PASSWORD_BYTES: Final = 8
# Hashes compared against when the phone is unknown, one per cost, so that a login for an unknown
# phone costs the same time as a wrong password (no account enumeration by timing).
_dummy_hashes: dict[int, bytes] = {}


async def _off_loop(pool: PasswordPool | None, function: Callable[..., T], *args: Any) -> T:
    if pool is None:
        return await asyncio.to_thread(function, *args)
    return await pool.run(function, *args)


async def hash_password(password: str, rounds: int, pool: PasswordPool | None = None) -> bytes:
    """bcrypt hash of a password of 8-72 UTF-8 bytes, computed off the event loop (in `pool`
    when given).

    Raises ValueError for a password outside that length, PoolFull when `pool` is full.
    """
    raw = password.encode()
    if not MIN_PASSWORD_BYTES <= len(raw) <= MAX_PASSWORD_BYTES:
        raise ValueError("the password must be 8 to 72 bytes in UTF-8")
    return await _off_loop(pool, bcrypt.hashpw, raw, bcrypt.gensalt(rounds))


async def check_password(password: str, password_hash: bytes | None, rounds: int = 12,
                         pool: PasswordPool | None = None) -> bool:
    """True when `password` matches `password_hash`. With None (no such account), spends the time
    of a check at cost `rounds` — the configured one — and is False. Runs in `pool` when given;
    raises PoolFull when it is full."""
    raw = password.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_PASSWORD_BYTES:
        raw = raw[:MAX_PASSWORD_BYTES]  # cannot match a stored hash (those are <= 72 bytes)
        password_hash = None
    if password_hash is None:
        dummy = _dummy_hashes.get(rounds)
        if dummy is None:
            dummy = _dummy_hashes[rounds] = await asyncio.to_thread(
                bcrypt.hashpw, b"no such account", bcrypt.gensalt(rounds))
        await _off_loop(pool, bcrypt.checkpw, raw, dummy)
        return False
    return await _off_loop(pool, bcrypt.checkpw, raw, password_hash)


def _sid_hash(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


async def log_in(request: web.Request, phone: str) -> None:
    """Start a new session for `phone`: a fresh id (never reuse the one before login), recorded."""
    old = await get_session(request)
    if isinstance(old.get(SESSION_FIELD), str):
        await request.app[store_key].delete_session(_sid_hash(old[SESSION_FIELD]))
    session = await new_session(request)
    sid = secrets.token_urlsafe(32)
    await request.app[store_key].add_session(_sid_hash(sid), phone)
    session[SESSION_FIELD] = sid


async def log_out(request: web.Request) -> None:
    """End the session server-side, close its sockets and clear the cookie."""
    session = await get_session(request)
    sid = session.get(SESSION_FIELD)
    if isinstance(sid, str):
        sid_hash = _sid_hash(sid)
        await request.app[store_key].delete_session(sid_hash)
        await request.app[hub_key].close_session(sid_hash)
    session.invalidate()


async def current_user(request: web.Request) -> tuple[str, str] | None:
    """(phone, session id hash) of the logged-in user, or None."""
    session = await get_session(request)
    sid = session.get(SESSION_FIELD)
    if not isinstance(sid, str):
        return None
    sid_hash = _sid_hash(sid)
    max_age = request.app[config_key].security.session_seconds
    phone = await request.app[store_key].session_user(sid_hash, max_age)
    return (phone, sid_hash) if phone is not None else None


def load_secret(configured: str, db_path: str | Path) -> str:
    """The Fernet key that encrypts cookies: the configured one, else `<database>.secret`.

    The file is created on first start with mode 0600 (an existing one is tightened to 0600), in a
    folder made with mode 0700, and reused after (SPEC 3). Raises
    ValueError when a configured or stored key is not a valid Fernet key.
    """
    if configured:
        Fernet(configured)  # raises ValueError when malformed
        return configured
    path = Path(f"{db_path}.secret")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:  # made by an older release or by hand: owner only
            path.chmod(0o600)
        key = path.read_text().strip()
        Fernet(key)
        return key
    key = Fernet.generate_key().decode()
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key
