"""Configuration: one frozen dataclass per TOML table, loaded once with `tomllib`.

Every key has a default equal to the SPEC's default, unknown tables or keys are refused at start-up
(a typo must not silently fall back to a default), and CLI flags override the file.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SYNCHRONOUS_LEVELS = ("OFF", "NORMAL", "FULL", "EXTRA")
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
# SPEC 10 `security.registration`: who may create an account through /register.
REGISTRATION_MODES = ("invite", "open", "closed")
HUB_PREFIX_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# What an invite link may start with: a scheme, a host (an IPv6 one in brackets), a path.
PUBLIC_URL_RE = re.compile(r"https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?(/[^\s?#]*)?")
# SPEC 9 / RFC 8292 `sub`: a mailto: address or an https: URL; push services refuse anything else
# (Apple answers 403 BadJwtToken), so it is refused at start-up rather than at the first push.
PUSH_SUBJECT_RE = re.compile(r"mailto:[^\s@]+@[^\s@]+|https://[^\s/?#]+(/[^\s]*)?")
# The longest TTL push services keep a message (FCM and Mozilla: 4 weeks); a longer one is refused
# by some of them, so it is refused here.
MAX_PUSH_TTL_SECONDS = 28 * 86400


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says which key and why."""


@dataclass(frozen=True, slots=True)
class Server:
    host: str = "127.0.0.1"
    port: int = 8080
    # aiohttp's access log costs a formatted line per request; off unless asked for.
    access_log: bool = False
    # Names a request's Host header may carry (DNS rebinding; issue 12), with any port; another
    # one is answered 400. ".example.org" also allows its subdomains, "*" anything. Empty: `host`
    # when it is a name, "localhost" and every IP address (chatserver/hosts.py).
    allowed_hosts: tuple[str, ...] = ()
    # The address people reach the server at, e.g. "https://chat.example.org" (behind a reverse
    # proxy): the start of invite links (SPEC 10). Empty: http(s)://host:port of this table.
    public_url: str = ""


@dataclass(frozen=True, slots=True)
class Database:
    path: str = "var/chat.db"
    # SQLite `PRAGMA synchronous`: FULL fsyncs the WAL on every commit (SPEC 6: no acknowledged
    # message is lost, even on power loss); group commit keeps that affordable.
    synchronous: str = "FULL"
    # SPEC 6: deleted bodies are gone from the file and its WAL within this many seconds.
    scrub_seconds: float = 5.0
    # Empty: the SQLite file at `path` (one process). "postgresql://user@host:5432/db": the
    # PostgreSQL store, shared by several processes and hosts (README "Scaling out").
    url: str = ""


@dataclass(frozen=True, slots=True)
class Security:
    # Fernet key (url-safe base64 of 32 bytes) that encrypts session cookies; empty means
    # "generate one into <database>.secret (mode 0600) on first start and reuse it".
    cookie_secret: str = ""
    # Key of the HMAC-SHA256 that passwords go through before bcrypt (issue 12: long passphrases;
    # at least 32 characters); empty means "generate one into <database>.pepper (mode 0600) on
    # first use and reuse it". Lost, every password must be set again with `run.py passwd`.
    password_key: str = ""
    # Marks the session cookie Secure; set it when the server is reached over HTTPS.
    https: bool = False
    # Origins besides the server's own that may open sockets and post forms (SPEC 4, 5).
    allowed_origins: tuple[str, ...] = ()
    # bcrypt work factor; 12 takes ~0.2 s per hash on a small box.
    bcrypt_rounds: int = 12
    # Seconds a login stays valid (cookie max-age and the server-side record).
    session_seconds: int = 30 * 24 * 3600
    # Seconds between two checks, in each server process, that the sessions of its open sockets
    # still exist and have not expired (issue 12: a session ended by logout, `run.py passwd` or
    # `deluser` in another process, an admin, or expiry closes its sockets within this time,
    # plus the closing handshake). One store query per check, whatever the number of sockets.
    session_check_seconds: float = 2.0
    # SPEC 10: a frame's sent_timestamp further than this from the server's clock is refused.
    timestamp_skew_seconds: int = 86400
    # SPEC 10: "invite" (/register needs a valid invite code), "open" (anyone) or "closed" (only
    # admins and `run.py adduser` create accounts). The first account is free whatever this says.
    registration: str = "invite"


@dataclass(frozen=True, slots=True)
class Limits:
    max_message_chars: int = 4096
    max_frame_bytes: int = 65536
    # Messages (new_msg, new_grp_msg, room_msg) per second per user, all sockets together; bursts
    # up to twice this pass (SPEC 5.5).
    messages_per_second: float = 20.0
    # Typing events per second per user, on top of SPEC 5.1's one per second per socket.
    typing_per_second: float = 3.0
    # WebSocket handshakes per minute per client address (429 beyond).
    handshakes_per_minute: int = 1200
    # Password attempts (logins, registrations, private-room passwords; SPEC 10) within
    # login_window_seconds: per client address, per account (a phone or a room) and per pair.
    # Counted before the password is checked, given back when it was right; past one, 429.
    login_failures: int = 10
    login_failures_per_phone: int = 5
    login_failures_per_pair: int = 5
    login_window_seconds: int = 900
    # bcrypt jobs (hashing, checking) running at once, and waiting; past both, 503.
    password_workers: int = 2
    password_queue: int = 16
    # SPEC 10: acknowledgements (msg_received, msg_read and their group forms) per second per user,
    # all sockets together; bursts up to twice this pass; past it, the error frame.
    acks_per_second: float = 200.0
    # SPEC 10: groups and rooms one user may create per day (a fixed one-day window); past it, 429.
    groups_per_day: int = 50
    rooms_per_day: int = 20
    # Issue 12, finding 6 (SPEC silent): lookups of other users' phones (anything that answers
    # whether a phone has an account: starting a dialogue, a send socket's handshake, a contact,
    # a block, each participant of a new group or an addition) per user per minute; past it, 429.
    lookups_per_minute: int = 100
    # Frames waiting for one receive socket; a socket that falls further behind is closed
    # (its messages stay stored and are fetched on reconnect).
    outgoing_queue: int = 1000
    # SPEC 10: receive sockets one user holds at once (one per device or tab), and sockets of one
    # user on one dialogue, group or room; one more closes the oldest with code 4429.
    sockets_per_user: int = 10
    # Seconds a request body may take to arrive in full; a slower one is answered 408 and its
    # connection closed (issue 12, finding 5: slow bodies must not hold connections forever).
    body_timeout_seconds: float = 10.0
    # SPEC 10: a message body's size in UTF-8 bytes, beside max_message_chars (4096 characters of
    # four bytes each would be 16 KiB): what one stored message may cost. 16384 lets any text of
    # max_message_chars characters through.
    max_message_bytes: int = 16384
    # SPEC 10: messages waiting for one recipient (personal messages to them plus group messages
    # pending for them); a new one past it is refused with "recipient's mailbox is full".
    max_waiting_per_recipient: int = 10000
    # SPEC 8: one attachment's bytes (413 beyond; 25 MiB), attachments one message may carry, the
    # bytes of one user's stored attachments (thumbnails included; 413 beyond; 1 GiB), and the
    # pixels of an image (413 beyond, refused before it is decoded: a decompression bomb).
    max_attachment_bytes: int = 26_214_400
    max_attachments: int = 10
    attachment_quota_bytes: int = 1_073_741_824
    max_image_pixels: int = 40_000_000


@dataclass(frozen=True, slots=True)
class Fetch:
    chunk_size: int = 100


@dataclass(frozen=True, slots=True)
class Retention:
    # SPEC 10: a personal or group message still stored this many days after it was accepted is
    # deleted and its sender told (`msg_expired`). A number: a fraction of a day is allowed.
    undelivered_days: float = 30.0
    # Seconds between two expiry checks; SPEC 10 says at least hourly, so at most 3600.
    check_seconds: float = 3600.0


@dataclass(frozen=True, slots=True)
class Attachments:
    # SPEC 8: an upload no message has claimed this many seconds after it was made is deleted
    # (checked with the retention check, every retention.check_seconds).
    unclaimed_seconds: float = 3600.0


@dataclass(frozen=True, slots=True)
class Rooms:
    history: int = 50
    keep: int = 1000
    # Issue 12, finding 6 (SPEC silent): /chat/info lists the user's own rooms, the private rooms
    # this session may enter, and at most this many of the newest public rooms.
    listed: int = 100


@dataclass(frozen=True, slots=True)
class WebSocket:
    # Seconds between pings; a peer that does not answer within half of it is closed.
    heartbeat: float = 25.0
    # Seconds a closing handshake may take (RFC 6455 7.1.1) before the connection is dropped; also
    # how long a client may leave half of its outgoing queue unread before it is cut off.
    close_timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class HubSettings:
    # Empty: the in-memory hub (one process). "redis://host:6379/0": the Redis hub, which carries
    # pushes, presence and typing between processes and hosts, and holds the rate limits.
    url: str = ""
    # Prefix of every Redis channel and key, so that several deployments can share one Redis.
    prefix: str = "chat"


@dataclass(frozen=True, slots=True)
class Push:
    """SPEC 9, Web Push (chatserver/push.py, chatserver/pushapi.py)."""

    # False: GET /chat/push/key and the subscription endpoints answer 404 and nothing is sent.
    enabled: bool = True
    # base64url (no padding) of the raw 32-byte P-256 private key; empty: the file
    # <database>.vapid (mode 0600), generated on first start. Set it when several hosts serve one
    # deployment: every process must sign with the key browsers subscribed with.
    vapid_private_key: str = ""
    # The VAPID `sub` claim (RFC 8292): "mailto:..." or "https://...". Empty: server.public_url's
    # https://host when it is https, else "mailto:postmaster@localhost".
    subject: str = ""
    # Seconds a push service keeps a push for a device that is offline (RFC 8030 TTL).
    ttl_seconds: int = 86400
    # At most one push per device and conversation per this many seconds (0: no limit).
    min_interval_seconds: float = 10.0
    # The payload carries the message's text only when true (else "N new messages").
    previews: bool = False
    # Tests and closed networks: allow http:// endpoints and loopback or private addresses.
    allow_private_endpoints: bool = False
    # Seconds one request to a push service may take in all.
    timeout_seconds: float = 10.0
    # Sender tasks per process, and notifications waiting for them (past it, dropped and counted).
    workers: int = 4
    queue: int = 10000
    # Tries after the first for 429, 5xx and network errors; the first waits retry_seconds, each
    # next one twice as long (a 429's Retry-After is honoured, at most 60 s).
    retries: int = 3
    retry_seconds: float = 1.0


@dataclass(frozen=True, slots=True)
class Config:
    server: Server = field(default_factory=Server)
    database: Database = field(default_factory=Database)
    security: Security = field(default_factory=Security)
    limits: Limits = field(default_factory=Limits)
    fetch: Fetch = field(default_factory=Fetch)
    retention: Retention = field(default_factory=Retention)
    attachments: Attachments = field(default_factory=Attachments)
    rooms: Rooms = field(default_factory=Rooms)
    websocket: WebSocket = field(default_factory=WebSocket)
    hub: HubSettings = field(default_factory=HubSettings)
    push: Push = field(default_factory=Push)

    @property
    def scaled_out(self) -> bool:
        """True when both shared engines are configured: what `serve --workers N` needs."""
        return bool(self.database.url and self.hub.url)


_POSITIVE = {
    ("server", "port"),
    ("limits", "max_message_chars"),
    ("limits", "max_frame_bytes"),
    ("limits", "messages_per_second"),
    ("limits", "typing_per_second"),
    ("limits", "handshakes_per_minute"),
    ("limits", "login_failures"),
    ("limits", "login_failures_per_phone"),
    ("limits", "login_failures_per_pair"),
    ("limits", "login_window_seconds"),
    ("limits", "password_workers"),
    ("limits", "outgoing_queue"),
    ("limits", "sockets_per_user"),
    ("limits", "body_timeout_seconds"),
    ("limits", "max_message_bytes"),
    ("limits", "max_waiting_per_recipient"),
    ("retention", "undelivered_days"),
    ("limits", "max_attachment_bytes"),
    ("limits", "max_attachments"),
    ("limits", "attachment_quota_bytes"),
    ("limits", "max_image_pixels"),
    ("attachments", "unclaimed_seconds"),
    ("retention", "check_seconds"),
    ("limits", "acks_per_second"),
    ("limits", "groups_per_day"),
    ("limits", "rooms_per_day"),
    ("limits", "lookups_per_minute"),
    ("fetch", "chunk_size"),
    ("rooms", "history"),
    ("rooms", "keep"),
    ("rooms", "listed"),
    ("websocket", "heartbeat"),
    ("websocket", "close_timeout"),
    ("security", "session_seconds"),
    ("security", "session_check_seconds"),
    ("security", "timestamp_skew_seconds"),
    ("push", "ttl_seconds"),
    ("push", "timeout_seconds"),
    ("push", "workers"),
    ("push", "queue"),
    ("push", "retry_seconds"),
}


def _coerce(table: str, key: str, want: Any, value: Any) -> Any:
    """Check one value against its dataclass field's type; lists become tuples."""
    where = f"[{table}] {key}"
    if want == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false")
    elif want == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer")
    elif want == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number")
        value = float(value)
        if not math.isfinite(value):  # NaN would pass every range check below
            raise ConfigError(f"{where} must be a finite number")
    elif want == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string")
    elif want.startswith("tuple"):
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of strings")
        value = tuple(value)
    if (table, key) in _POSITIVE and value <= 0:
        raise ConfigError(f"{where} must be positive")
    return value


def _build(data: dict[str, Any]) -> Config:
    tables: dict[str, Any] = {}
    defaults = Config()
    for f in dataclasses.fields(Config):
        raw = data.pop(f.name, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"[{f.name}] must be a table")
        cls = type(getattr(defaults, f.name))  # the table's dataclass, e.g. Limits
        known = {g.name: g.type for g in dataclasses.fields(cls)}
        unknown = set(raw) - set(known)
        if unknown:
            raise ConfigError(f"unknown key(s) in [{f.name}]: {', '.join(sorted(unknown))}")
        tables[f.name] = cls(**{k: _coerce(f.name, k, known[k], v) for k, v in raw.items()})
    if data:
        raise ConfigError(f"unknown table(s): {', '.join(sorted(data))}")
    config = Config(**tables)
    if config.database.synchronous.upper() not in SYNCHRONOUS_LEVELS:
        raise ConfigError(f"[database] synchronous must be one of {', '.join(SYNCHRONOUS_LEVELS)}")
    if config.security.bcrypt_rounds not in range(4, 32):
        raise ConfigError("[security] bcrypt_rounds must be between 4 and 31")
    if config.limits.password_queue < 0:
        raise ConfigError("[limits] password_queue must not be negative")
    if config.retention.check_seconds > 3600:
        raise ConfigError("[retention] check_seconds must be at most 3600 (SPEC 10: checked at "
                          "least hourly)")
    if config.database.scrub_seconds < 0:
        raise ConfigError("[database] scrub_seconds must not be negative")
    if config.database.url and not config.database.url.startswith(POSTGRES_SCHEMES):
        raise ConfigError("[database] url must be empty (SQLite) or start with postgresql://")
    if config.hub.url and not config.hub.url.startswith(REDIS_SCHEMES):
        raise ConfigError("[hub] url must be empty (in-memory hub) or start with redis://, "
                          "rediss:// or unix://")
    if config.security.registration not in REGISTRATION_MODES:
        raise ConfigError(f"[security] registration must be one of {', '.join(REGISTRATION_MODES)}")
    if config.server.public_url and not PUBLIC_URL_RE.fullmatch(config.server.public_url):
        raise ConfigError("[server] public_url must be empty or http(s)://host[:port][/path], "
                          "without a query or fragment")
    if not HUB_PREFIX_RE.fullmatch(config.hub.prefix):
        raise ConfigError("[hub] prefix must be 1 to 64 letters, digits, '_', '-' or '.'")
    _check_push(config.push)
    return config


def _check_push(push: Push) -> None:
    """The [push] rules that a type check does not cover (SPEC 9); raises ConfigError."""
    if push.subject and not PUSH_SUBJECT_RE.fullmatch(push.subject):
        raise ConfigError('[push] subject must be empty, "mailto:ADDRESS" or "https://HOST..." '
                          "(RFC 8292; push services refuse anything else)")
    if push.vapid_private_key and raw_key_length(push.vapid_private_key) != 32:
        raise ConfigError("[push] vapid_private_key must be base64url (no padding) of a raw 32-byte "
                          "P-256 private key, or empty")
    if push.ttl_seconds > MAX_PUSH_TTL_SECONDS:
        raise ConfigError(f"[push] ttl_seconds must be at most {MAX_PUSH_TTL_SECONDS} (4 weeks)")
    if push.min_interval_seconds < 0:
        raise ConfigError("[push] min_interval_seconds must not be negative")
    if push.retries < 0:
        raise ConfigError("[push] retries must not be negative")


def raw_key_length(text: str) -> int:
    """Bytes that `text`, base64url without padding, decodes to; -1 when it is not that."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", text):
        return -1
    try:
        return len(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError):
        return -1


def load_config(path: str | Path | None = None, **overrides: Any) -> Config:
    """Read a TOML file (or nothing: all defaults) and apply overrides.

    `overrides` are dotted keys with `.` written as `__`, e.g. `server__port=9000`; a value of None
    means "not given" and is skipped. Raises ConfigError for an unknown key, a wrong type or a
    value out of range, and OSError / tomllib.TOMLDecodeError for an unreadable file.
    """
    data: dict[str, Any] = {}
    if path is not None:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    for dotted, value in overrides.items():
        if value is None:
            continue
        table, _, key = dotted.partition("__")
        data.setdefault(table, {})[key] = value
    return _build(data)
