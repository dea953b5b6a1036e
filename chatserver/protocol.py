"""The wire format of SPEC 5: frames, timestamps, reply and error frames. No I/O here.

`parse_frame` is the only place that looks at raw JSON; past it, code sees a `Frame` whose fields
are named exactly as in the protocol.
"""

from __future__ import annotations

import functools
import re
import time
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, TypeGuard

import orjson
import regex

# SPEC 1: a phone is 10 to 15 ASCII digits ([0-9], not \d, which also matches other scripts' digits).
PHONE_RE: Final = re.compile(r"[0-9]{10,15}")
# SPEC 4: group keys and room names.
GROUP_KEY_RE: Final = re.compile(r"[A-Za-z0-9]{10}")
ROOM_NAME_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
# SPEC 8: an attachment id is at least 128 random bits, url-safe; the server makes 22 characters
# (secrets.token_urlsafe(16)); up to 64 accepted so that longer ones stay possible.
ATTACHMENT_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{22,64}")
# Ids one frame may name at all, whatever limits.max_attachments says (the frame size bounds it too).
MAX_ATTACHMENT_IDS: Final = 100

# SPEC 5: `YYYY-MM-DD HH:MM:SS[.f{1,6}]` or ISO 8601 `YYYY-MM-DDTHH:MM:SS[.f{1,6}][Z]`, UTC.
_TIMESTAMP_RE: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?: ([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,6}))?"
    r"|T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,6}))?Z?)"
)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL: Final = _EPOCH.toordinal()

# The five fields every frame on a send or room socket carries (SPEC 5).
FRAME_FIELDS: Final = ("message", "command", "msg_from", "msg_to", "sent_timestamp")
# SPEC 13: the fields by which a message refers to an earlier one; a frame carries at most one.
REPLY_TO: Final = "reply_to"
EDIT_OF: Final = "edit_of"
DELETE_OF: Final = "delete_of"
REACT_TO: Final = "react_to"
REF_FIELDS: Final = (REPLY_TO, EDIT_OF, DELETE_OF, REACT_TO)
# The keys of a REF, exactly.
REF_KEYS: Final = frozenset({"msg_from", "sent_timestamp"})
# SPEC 13: a reaction is one emoji: one extended grapheme cluster (Unicode UAX #29, `regex`'s \X,
# which knows emoji ZWJ sequences, flags and keycaps; the standard `re` does not) of at most this
# many code points.
MAX_REACTION_CHARS: Final = 32
_GRAPHEME: Final = regex.compile(r"\X")
# What makes a grapheme an emoji (Unicode data of the `regex` library, updated with each
# Unicode release, unlike a hand-written table).
_EMOJI_PART: Final = regex.compile(
    r"[\p{Extended_Pictographic}\p{Regional_Indicator}\N{COMBINING ENCLOSING KEYCAP}]")


# Why a frame was refused, in a few words an operator counts (SPEC 11: `chat_error_frames` by
# reason, a fixed set, never the text shown to the person).
class Reason:
    """The refusal reasons (plain strings, the label values)."""

    INVALID: Final = "invalid"  # not JSON, not an object, a field missing or mistyped, binary
    UNKNOWN_COMMAND: Final = "unknown_command"
    WRONG_SOCKET: Final = "wrong_socket"  # msg_from / msg_to not this socket's
    BAD_MESSAGE: Final = "bad_message"  # empty, too long, NUL, too many attachments
    BAD_TIMESTAMP: Final = "bad_timestamp"  # unparseable, or too far from the server's clock
    NOT_FOUND: Final = "not_found"  # nothing to acknowledge
    RATE_LIMITED: Final = "rate_limited"
    BLOCKED: Final = "blocked"
    NOT_MEMBER: Final = "not_member"
    MAILBOX_FULL: Final = "mailbox_full"
    ATTACHMENT: Final = "attachment"  # an attachment that is not the sender's to attach
    BAD_REFERENCE: Final = "bad_reference"  # SPEC 13: reply_to / edit_of / delete_of / react_to
    STORE_FAILED: Final = "store_failed"


REASONS: Final = tuple(v for k, v in vars(Reason).items() if k.isupper())


class ProtocolError(Exception):
    """A refused frame; `str(error)` is the reason shown to a person (SPEC 5.5), `reason` one of
    REASONS, for the metrics."""

    def __init__(self, text: str, reason: str = Reason.INVALID) -> None:
        super().__init__(text)
        self.reason = reason


def is_phone(value: object) -> TypeGuard[str]:
    """True for a string of 10 to 15 ASCII digits (SPEC 1)."""
    return isinstance(value, str) and PHONE_RE.fullmatch(value) is not None


@functools.lru_cache(maxsize=4096)
def _day_number(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to this date; raises ValueError for a date that does not exist."""
    return date(year, month, day).toordinal() - _EPOCH_ORDINAL


def parse_timestamp(value: str) -> int:
    """A client timestamp (SPEC 5) -> microseconds since the Unix epoch, UTC.

    Two strings that denote the same instant to the microsecond give the same integer, which is
    what message identity is built on. Raises ProtocolError for anything else.
    """
    m = _TIMESTAMP_RE.fullmatch(value)
    if m is None:
        raise ProtocolError(f"unparseable timestamp: {value[:40]!r}", Reason.BAD_TIMESTAMP)
    g = m.groups()
    hh, mi, ss, frac = g[3:7] if g[3] is not None else g[7:11]
    hour, minute, second = int(hh), int(mi), int(ss)
    try:
        if hour > 23 or minute > 59 or second > 59:
            raise ValueError("time out of range")
        days = _day_number(int(g[0]), int(g[1]), int(g[2]))
    except ValueError as e:
        raise ProtocolError(f"unparseable timestamp: {value[:40]!r} ({e})",
                            Reason.BAD_TIMESTAMP) from None
    seconds = ((days * 24 + hour) * 60 + minute) * 60 + second
    return seconds * 1_000_000 + (int(frac.ljust(6, "0")) if frac else 0)


@functools.lru_cache(maxsize=1024)
def _second_text(seconds: int) -> str:
    """`YYYY-MM-DD HH:MM:SS` of a second since the epoch (cached: timestamps cluster in time)."""
    d = _EPOCH + timedelta(seconds=seconds)
    # not strftime: glibc's %Y does not zero-pad years before 1000
    return (f"{d.year:04d}-{d.month:02d}-{d.day:02d} "
            f"{d.hour:02d}:{d.minute:02d}:{d.second:02d}")


def server_timestamp(us: int) -> str:
    """Microseconds since the epoch -> the server's format `YYYY-MM-DD HH:MM:SS.fff` (SPEC 5)."""
    seconds, micros = divmod(us, 1_000_000)
    return f"{_second_text(seconds)}.{micros // 1000:03d}"


def fetch_timestamp(us: int) -> str:
    """Microseconds since the epoch -> the fetch format `YYYY-MM-DDTHH:MM:SS.ffffffZ` (SPEC 5)."""
    seconds, micros = divmod(us, 1_000_000)
    text = _second_text(seconds)
    return f"{text[:10]}T{text[11:]}.{micros:06d}Z"


def check_skew(sent_us: int, now_us: int, skew_seconds: int) -> None:
    """Refuse a frame whose `sent_timestamp` (µs since the epoch) is more than `skew_seconds` from
    the server's clock `now_us` (SPEC 10, `security.timestamp_skew_seconds`): a client cannot date
    a message in year 1 or 9999. Raises ProtocolError."""
    if abs(sent_us - now_us) > skew_seconds * 1_000_000:
        raise ProtocolError(f"sent_timestamp is more than {skew_seconds} seconds away from the "
                            f"server's clock ({server_timestamp(now_us)} UTC); check the device's "
                            "clock", Reason.BAD_TIMESTAMP)


def now_micros() -> int:
    """The server's clock, microseconds since the epoch, UTC."""
    return time.time_ns() // 1000


def server_now() -> str:
    """The server's time in its own format (SPEC 5)."""
    return server_timestamp(now_micros())


@dataclass(frozen=True, slots=True)
class Ref:
    """SPEC 13: the one reference field a message carries, `field` (one of REF_FIELDS) naming
    REF = {"msg_from": PHONE, "sent_timestamp": TS}: the original's sender and its timestamp as
    the referring client sent it (carried on unchanged); `sent_us` is that instant in
    microseconds, the original's identity with its conversation."""

    field: str
    msg_from: str
    sent_timestamp: str
    sent_us: int

    def wire(self) -> dict[str, dict[str, str]]:
        """The one key frames carry: {field: {"msg_from", "sent_timestamp"}}."""
        return {self.field: {"msg_from": self.msg_from, "sent_timestamp": self.sent_timestamp}}

    def json(self) -> str:
        """`wire()` as JSON text: what the store keeps in column `ref` (migration 0009)."""
        return orjson.dumps(self.wire()).decode()

    @property
    def wakes(self) -> bool:
        """Whether the message is one to notify a device of (SPEC 9): a reply is a new message;
        an edit, an unsend or a reaction changes one the device has (or will fetch)."""
        return self.field == REPLY_TO

    @property
    def allows_empty(self) -> bool:
        """An unsend's and a reaction's `message` may be empty (SPEC 13); any other's may not."""
        return self.field in (DELETE_OF, REACT_TO)


@dataclass(frozen=True, slots=True)
class Frame:
    """One client frame on a send or room socket (SPEC 5), fields as sent."""

    command: str
    message: str
    msg_from: str
    msg_to: str
    sent_timestamp: str  # as the client sent it; echoed back unchanged
    sent_us: int  # the same instant in microseconds since the epoch, UTC; used for identity
    attachments: tuple[str, ...] = ()  # SPEC 8: ids of the sender's uploads, distinct
    ref: Ref | None = None  # SPEC 13: reply_to, edit_of, delete_of or react_to

    def wire(self) -> dict[str, str]:
        """The frame as sent (SPEC 5.1: pushed to the recipient unchanged)."""
        return {
            "message": self.message,
            "command": self.command,
            "msg_from": self.msg_from,
            "msg_to": self.msg_to,
            "sent_timestamp": self.sent_timestamp,
        }


def decode(text: str) -> dict[str, Any]:
    """JSON text -> a JSON object; raises ProtocolError when it is not JSON or not an object.

    orjson also refuses lone surrogates (so every string past this point is valid Unicode and can
    be stored and sent as UTF-8), integers beyond 64 bits and nesting deeper than 1024.
    """
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise ProtocolError(f"the frame is not valid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise ProtocolError("the frame must be a JSON object")
    return data


def command_of(data: object) -> str:
    """The `type` of an error frame for this input: its `command` when a string, else 'invalid'."""
    if isinstance(data, dict):
        command = data.get("command")
        if isinstance(command, str):
            return command  # whole, as SPEC 5.5 says; the frame size limit bounds it
    return "invalid"


def parse_frame(data: dict[str, Any]) -> Frame:
    """A decoded JSON object -> Frame, checking that the five fields are strings and the timestamp
    parses (SPEC 5). Raises ProtocolError naming the first field that is missing or wrong."""
    for name in FRAME_FIELDS:
        if name not in data:
            raise ProtocolError(f"the field {name!r} is missing")
        if not isinstance(data[name], str):
            raise ProtocolError(f"the field {name!r} must be a string")
    return Frame(
        command=data["command"],
        message=data["message"],
        msg_from=data["msg_from"],
        msg_to=data["msg_to"],
        sent_timestamp=data["sent_timestamp"],
        sent_us=parse_timestamp(data["sent_timestamp"]),
        attachments=_attachment_ids(data.get("attachments")),
        ref=parse_ref(data),
    )


def parse_ref(data: Mapping[str, Any]) -> Ref | None:
    """SPEC 13: the one reference field of a decoded frame (or send API request), None when it
    has none (a null counts as absent, like `attachments`). Raises ProtocolError
    (Reason.BAD_REFERENCE) for two or more of them, or a REF that is not exactly
    {"msg_from": PHONE, "sent_timestamp": TS}. What the message may then say is check_ref's."""
    present = [name for name in REF_FIELDS if data.get(name) is not None]
    if not present:
        return None
    if len(present) > 1:
        raise ProtocolError("a message carries at most one of " + ", ".join(REF_FIELDS),
                            Reason.BAD_REFERENCE)
    name = present[0]
    value = data[name]
    shape = f"{name} must be {{msg_from, sent_timestamp}}: a phone and a timestamp"
    if not isinstance(value, dict) or set(value) != REF_KEYS:
        raise ProtocolError(shape, Reason.BAD_REFERENCE)
    msg_from, sent_timestamp = value["msg_from"], value["sent_timestamp"]
    if not is_phone(msg_from) or not isinstance(sent_timestamp, str):
        raise ProtocolError(shape, Reason.BAD_REFERENCE)
    try:
        sent_us = parse_timestamp(sent_timestamp)
    except ProtocolError:
        raise ProtocolError(f"{shape}: its sent_timestamp does not parse",
                            Reason.BAD_REFERENCE) from None
    return Ref(name, msg_from, sent_timestamp, sent_us)


def is_reaction(message: str) -> bool:
    """SPEC 13: one emoji, i.e. exactly one extended grapheme cluster of at most
    MAX_REACTION_CHARS code points with no whitespace and no control character (a ZWJ, a
    variation selector or a flag's tags are parts of an emoji, not controls), holding an emoji
    character: Extended_Pictographic (UTS #51), a regional indicator (flags) or the keycap mark
    ("1️⃣"). "a" or "中" is one grapheme but no emoji: refused."""
    return (0 < len(message) <= MAX_REACTION_CHARS
            and _GRAPHEME.fullmatch(message) is not None
            and _EMOJI_PART.search(message) is not None
            and not any(c.isspace() or unicodedata.category(c) == "Cc" for c in message))


def check_ref(ref: Ref | None, sender: str, sent_us: int, message: str,
              attachments: Sequence[str]) -> None:
    """SPEC 13's rules for a message from `sender` (a phone; on a group socket the real phone,
    not "KEY-PHONE") sent at `sent_us` that carries `ref`: edit_of and delete_of name the
    sender's own message; an edit has text and no attachments; an unsend has neither; a reaction
    is "" (taken back) or one emoji, without attachments; no message refers to itself. A reply
    is an ordinary message (the caller's checks). Raises ProtocolError (Reason.BAD_REFERENCE)."""
    if ref is None:
        return
    if ref.msg_from == sender and ref.sent_us == sent_us:
        raise ProtocolError(f"{ref.field} names this message itself", Reason.BAD_REFERENCE)
    if ref.field in (EDIT_OF, DELETE_OF) and ref.msg_from != sender:
        raise ProtocolError(f"{ref.field} must name one of your own messages (msg_from {sender})",
                            Reason.BAD_REFERENCE)
    if ref.field != REPLY_TO and attachments:
        raise ProtocolError(f"a message with {ref.field} carries no attachments",
                            Reason.BAD_REFERENCE)
    if ref.field == EDIT_OF and not message:
        raise ProtocolError("an edit must have text (to take a message back, send delete_of)",
                            Reason.BAD_REFERENCE)
    if ref.field == DELETE_OF and message:
        raise ProtocolError("a message with delete_of must be empty", Reason.BAD_REFERENCE)
    if ref.field == REACT_TO and message and not is_reaction(message):
        raise ProtocolError("a reaction is one emoji (or empty, to take it back)",
                            Reason.BAD_REFERENCE)


def _attachment_ids(value: object) -> tuple[str, ...]:
    """SPEC 8 `attachments`: absent (or null), or a list of distinct attachment ids. Raises
    ProtocolError otherwise; how many a message may carry is the command's check."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_ATTACHMENT_IDS:
        raise ProtocolError("the field 'attachments' must be a list of attachment ids")
    for item in value:
        if not isinstance(item, str) or not ATTACHMENT_ID_RE.fullmatch(item):
            raise ProtocolError("the field 'attachments' must be a list of attachment ids")
    if len(set(value)) != len(value):
        raise ProtocolError("the field 'attachments' names an attachment twice")
    return tuple(value)


def encode(frame: Mapping[str, Any]) -> bytes:
    """A frame -> compact UTF-8 JSON, ready to go out as a text frame."""
    return orjson.dumps(frame)


def per_recipient(frame: Mapping[str, Any]) -> Callable[[str], bytes]:
    """Encode `frame` once for many recipients whose frames differ only in `msg_to` (a phone,
    put last): the returned function makes each recipient's frame by concatenation."""
    head = orjson.dumps({**frame, "msg_to": ""})[:-2]
    return lambda msg_to: b'%s%s"}' % (head, msg_to.encode())


def error_frame(reason: str, type_: str, msg_from: str, msg_to: str) -> dict[str, str]:
    """The SPEC 5.5 error frame; `type_` is the refused frame's command or 'invalid'."""
    return {
        "message": reason,
        "command": "error",
        "type": type_,
        "msg_from": msg_from,
        "msg_to": msg_to,
        "sent_timestamp": server_now(),
    }
