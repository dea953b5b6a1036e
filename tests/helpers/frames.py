"""The wire as the tests write and check it (SPEC 5): fresh phones and client instants, the
timestamp forms, the one frame builder, and the shape checks of server timestamps and error
frames. No I/O here."""

from __future__ import annotations

import itertools
import os
import re
from datetime import UTC, datetime, timedelta
from typing import Any

# SPEC 5: timestamps the server makes, and timestamps in fetch results.
SERVER_TS = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}")
FETCH_TS = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")
# SPEC 5.5: the exact keys of an error frame.
ERROR_KEYS = frozenset({"message", "command", "type", "msg_from", "msg_to", "sent_timestamp"})
# A frame as a client sends it on a send socket (SPEC 5).
FRAME_KEYS = ("message", "command", "msg_from", "msg_to", "sent_timestamp")
# SPEC 4: group keys and the keys of a group object.
GROUP_KEY = re.compile(r"[A-Za-z0-9]{10}")
GROUP_KEYS = frozenset({"key", "name", "participants", "admins"})

# 13 digits: "4" + 5 digits of the pid + a 7-digit counter; increasing, so creation order is
# also phone order (some group tests rely on it to tell "longest standing" from "smallest phone").
_phones = itertools.count(1)
# Client clocks hours behind the server's, so that a server time is never mistaken for one, yet
# within the server's default security.timestamp_skew_seconds (a day): each call is one second
# later, so a process has about 47 hours' worth (170,000 calls) before its instants are refused.
_instants = itertools.count(1)
_BASE = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=23)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The UTC date when the tests start: any time of this day is within a day of the server's clock
# (security.timestamp_skew_seconds), for tests that spell out client timestamps by hand.
TODAY = datetime.now(UTC).strftime("%Y-%m-%d")


def new_phone() -> str:
    """A phone (SPEC 1) that no other call in this process returns; later calls are larger."""
    return f"4{os.getpid() % 100_000:05d}{next(_phones):07d}"


def new_instant() -> datetime:
    """A client instant no earlier call returned (later calls are later), microseconds non-zero."""
    return _BASE + timedelta(seconds=next(_instants), microseconds=234_567)


def plain(dt: datetime, digits: int = 6) -> str:
    """`YYYY-MM-DD HH:MM:SS.f{digits}` (SPEC 5's first client form)."""
    text = dt.strftime("%Y-%m-%d %H:%M:%S.%f")
    return text[: len(text) - 6 + digits] if digits else text[:-7]


def iso(dt: datetime) -> str:
    """`YYYY-MM-DDTHH:MM:SS.ffffffZ` (ISO 8601; also the fetch form of SPEC 5)."""
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def server_form(dt: datetime) -> str:
    """The server's own format `YYYY-MM-DD HH:MM:SS.fff` for an instant (milliseconds cut)."""
    return dt.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def stamp() -> str:
    """A fresh client `sent_timestamp` in the plain form with milliseconds."""
    return plain(new_instant(), 3)


def micros(text: str) -> int:
    """µs since the epoch of a client or fetch timestamp (`... HH:MM:SS.ffffff`, or ISO with Z)."""
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // timedelta(microseconds=1)


def frame(command: str, msg_from: str, msg_to: str, message: str = "",
          sent_timestamp: str | None = None) -> dict[str, str]:
    """A send-socket frame with the five fields of SPEC 5 (a fresh timestamp unless given)."""
    return {"message": message, "command": command, "msg_from": msg_from, "msg_to": msg_to,
            "sent_timestamp": sent_timestamp if sent_timestamp is not None else stamp()}


def near_now(text: str, slack: float = 60.0) -> bool:
    """True when a server-format timestamp is within `slack` seconds of this machine's clock."""
    when = datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
    return abs((datetime.now(UTC) - when).total_seconds()) < slack


def assert_server_time(text: object) -> None:
    """`text` is the server's clock in the server's format (SPEC 5)."""
    assert isinstance(text, str) and SERVER_TS.fullmatch(text), text
    assert near_now(text), text


def assert_error(data: dict[str, Any], type_: str, msg_from: str, msg_to: str | None,
                 says: str | None = None) -> None:
    """`data` is a SPEC 5.5 error frame of exactly that shape (msg_to None: any string), and
    with `says`, exactly that message."""
    assert set(data) == ERROR_KEYS, data
    assert data["command"] == "error", data
    assert data["type"] == type_, data
    assert isinstance(data["message"], str) and data["message"].strip(), data
    if says is not None:
        assert data["message"] == says, data
    assert data["msg_from"] == msg_from, data
    if msg_to is None:
        assert isinstance(data["msg_to"], str), data
    else:
        assert data["msg_to"] == msg_to, data
    assert_server_time(data["sent_timestamp"])
