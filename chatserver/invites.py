"""Invite codes and links (SPEC 10): what `run.py invite` and `POST /chat/admin/invites` make.

A code is `secrets.token_urlsafe(16)`: 128 random bits, 22 characters of `[A-Za-z0-9_-]`, kept
as it is in the `invites` table (its primary key), so that an admin can list and share an invite
again. Codes are never logged (they are as good as an account while they last).
"""

from __future__ import annotations

import re
import secrets
from typing import Final, TypeGuard

from .config import Config

# Defaults and bounds of `uses` and `days` (SPEC 10: one use, seven days by default).
DEFAULT_USES: Final = 1
DEFAULT_DAYS: Final = 7
MAX_USES: Final = 1000
MAX_DAYS: Final = 365
# What a code may look like: ours are 22 characters; the bound keeps junk out of the throttle's
# keys and the form.
CODE_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
DAY_US: Final = 86_400 * 1_000_000


def new_code() -> str:
    """A fresh invite code (128 random bits, URL-safe)."""
    return secrets.token_urlsafe(16)


def is_code(value: object) -> TypeGuard[str]:
    """True when `value` looks like an invite code (it may still be unknown)."""
    return isinstance(value, str) and CODE_RE.fullmatch(value) is not None


def base_url(config: Config) -> str:
    """Where people reach the server: `[server] public_url`, else http(s)://host:port from the
    config (an IPv6 host in brackets), without a trailing slash."""
    if config.server.public_url:
        return config.server.public_url.rstrip("/")
    host = config.server.host
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if config.security.https else "http"
    return f"{scheme}://{host}:{config.server.port}"


def invite_url(config: Config, code: str) -> str:
    """The registration link of an invite: `<base>/register?invite=CODE`."""
    return f"{base_url(config)}/register?invite={code}"
