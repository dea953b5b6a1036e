"""Typed messages: what the receive socket delivers (SPEC 5.1-5.3, 7.2, 8) and what a send returns
(SPEC 12), parsed from the wire frames; timestamps.

Wire shapes read here (all strings unless said):

- a personal message, pushed or fetched: `{"message": TEXT, "command": "new_msg", "msg_from": SENDER,
  "msg_to": ME, "sent_timestamp": TS, "attachments"?: [ATTACHMENT]}`; a copy of one of my own
  messages sent from another of my devices (SPEC 7.2) has `msg_from` = ME and `msg_to` = the peer;
- a group message: the same with `msg_from` = `"<group key>-<sender>"` (a key is 10 letters or
  digits, a phone 10-15 digits: the first `-` splits them), `msg_to` = ME, and in fetch results
  `"pending": [PHONE]`;
- ATTACHMENT: `{"id", "name", "content_type", "size" (bytes), "width"?, "height"? (pixels, images
  only), "thumbnail" (bool)}` (SPEC 8);
- at most one of `"reply_to"`, `"edit_of"`, `"delete_of"`, `"react_to"`: REF = `{"msg_from": PHONE,
  "sent_timestamp": TS}`, the earlier message it refers to (SPEC 13: a reply, the new text of an
  edit, an unsend with an empty `message`, a reaction whose `message` is one emoji or empty).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

# SPEC 13: the reference fields, as the wire names them.
REF_FIELDS: Final = ("reply_to", "edit_of", "delete_of", "react_to")
# A REF: {"msg_from": PHONE, "sent_timestamp": TS}.
Ref = dict[str, str]

# SPEC 5: `YYYY-MM-DD HH:MM:SS[.f{1,6}]` or ISO 8601 `YYYY-MM-DDTHH:MM:SS[.f{1,6}][Z]`, UTC.
_TIMESTAMP_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[ T]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,6}))?Z?")


def now_timestamp() -> str:
    """The current UTC time as `YYYY-MM-DD HH:MM:SS.ffffff` (SPEC 5: a client's `sent_timestamp`,
    to the microsecond, so that two messages of one sender rarely share one)."""
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def parse_timestamp(text: str) -> datetime:
    """An aware UTC datetime from a SPEC 5 timestamp (either form); ValueError when it is not one.
    Two timestamps denote the same instant when their datetimes are equal (`17:11:06.23` equals
    `17:11:06.230000`)."""
    m = _TIMESTAMP_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"not a timestamp: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    micros = int((m.group(7) or "0").ljust(6, "0"))
    return datetime(year, month, day, hour, minute, second, micros, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Attachment:
    """A photo or file carried by a message (SPEC 8). `size` in bytes; `width` and `height` in
    pixels, images only. Download it with GET `/chat/attachment/<id>` and the same token."""

    id: str
    name: str
    content_type: str
    size: int
    thumbnail: bool = False
    width: int | None = None
    height: int | None = None

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Attachment:
        """From the frame's attachment object; KeyError / TypeError when a field is missing."""
        return cls(id=str(data["id"]), name=str(data["name"]), content_type=str(data["content_type"]),
                   size=int(data["size"]), thumbnail=bool(data.get("thumbnail", False)),
                   width=data.get("width"), height=data.get("height"))


@dataclass(frozen=True, slots=True)
class PersonalMessage:
    """A message of a dialogue. `sender` sent it to `recipient` (phones); `text` may be empty when
    it carries attachments; `sent_timestamp` is the sender's clock as the server gave it (pass it
    back unchanged). `own` is True for a copy of a message this user sent from another device
    (SPEC 7.2): `sender` is then this user and `recipient` the peer.
    A message is identified by (sender, recipient, sent_timestamp's instant)."""

    sender: str
    recipient: str
    text: str
    sent_timestamp: str
    attachments: tuple[Attachment, ...] = ()
    own: bool = False
    # SPEC 13, at most one set: the REF of the message this one answers (`replying_to`: the wire's
    # `reply_to`, a name `reply_to` already has below), edits, unsends or reacts to.
    replying_to: Ref | None = None
    edit_of: Ref | None = None
    delete_of: Ref | None = None
    react_to: Ref | None = None

    @property
    def peer(self) -> str:
        """The other user of the dialogue: who to answer (`Client.send(msg.peer, ...)`)."""
        return self.recipient if self.own else self.sender

    @property
    def reply_to(self) -> str:
        """The `to` of `Client.send` that answers in this dialogue: the peer's phone."""
        return self.peer

    @property
    def sent_at(self) -> datetime:
        """`sent_timestamp` as an aware UTC datetime."""
        return parse_timestamp(self.sent_timestamp)


@dataclass(frozen=True, slots=True)
class GroupMessage:
    """A message of group `group` (its key) from `sender` (a phone), delivered to `recipient` (this
    user). `pending` lists the participants who had not acknowledged it yet (fetch results only;
    empty for pushes). `own`: a copy of this user's own message from another device (SPEC 7.2)."""

    group: str
    sender: str
    recipient: str
    text: str
    sent_timestamp: str
    attachments: tuple[Attachment, ...] = ()
    own: bool = False
    pending: tuple[str, ...] = field(default=())
    # SPEC 13, as PersonalMessage's (REF.msg_from is the original sender's phone, not "KEY-PHONE").
    replying_to: Ref | None = None
    edit_of: Ref | None = None
    delete_of: Ref | None = None
    react_to: Ref | None = None

    @property
    def reply_to(self) -> str:
        """The `to` of `Client.send` that answers in this group: `"group:<key>"`."""
        return f"group:{self.group}"

    @property
    def sent_at(self) -> datetime:
        """`sent_timestamp` as an aware UTC datetime."""
        return parse_timestamp(self.sent_timestamp)


Message = PersonalMessage | GroupMessage


def message_from_wire(data: dict[str, Any], me: str) -> Message:
    """The message of a `new_msg` frame (pushed or in a fetch result) received by `me`.
    Raises ValueError / KeyError / TypeError for a frame that is not one (no such field, a bad
    timestamp)."""
    sender_field, to, text, ts = (str(data["msg_from"]), str(data["msg_to"]), data["message"],
                                  str(data["sent_timestamp"]))
    if not isinstance(text, str):
        raise TypeError("message is not a string")
    parse_timestamp(ts)  # refuse what could not be acknowledged
    attachments = tuple(Attachment.from_wire(a) for a in data.get("attachments") or ())
    refs = _refs(data)
    group, dash, sender = sender_field.partition("-")
    if dash:
        return GroupMessage(group=group, sender=sender, recipient=to, text=text, sent_timestamp=ts,
                            attachments=attachments, own=sender == me,
                            pending=tuple(str(p) for p in data.get("pending") or ()), **refs)
    return PersonalMessage(sender=sender_field, recipient=to, text=text, sent_timestamp=ts,
                           attachments=attachments, own=sender_field == me, **refs)


def _refs(data: dict[str, Any]) -> dict[str, Ref]:
    """The SPEC 13 field of a frame as keyword arguments of the message classes (`reply_to` is
    `replying_to` there); TypeError for a REF that is not {"msg_from": str, "sent_timestamp": str}."""
    out: dict[str, Ref] = {}
    for name in REF_FIELDS:
        value = data.get(name)
        if value is None:
            continue
        if not isinstance(value, dict) or not all(
                isinstance(value.get(k), str) for k in ("msg_from", "sent_timestamp")):
            raise TypeError(f"{name} is not a REF")
        out["replying_to" if name == "reply_to" else name] = {
            "msg_from": value["msg_from"], "sent_timestamp": value["sent_timestamp"]}
    return out


def ref_of(msg: Message) -> Ref:
    """The REF of `msg` (SPEC 13), for `Client.send(..., reply_to=ref_of(msg))` and the like:
    its sender's phone (also in a group) and its `sent_timestamp` as received."""
    return {"msg_from": msg.sender, "sent_timestamp": msg.sent_timestamp}


def message_key(msg: Message) -> tuple[str, str, str, str, datetime]:
    """The identity of a message (SPEC 5: sender, recipient or group, instant), to recognise the
    same message pushed and fetched, or fetched again."""
    where = msg.group if isinstance(msg, GroupMessage) else msg.recipient
    kind = "g" if isinstance(msg, GroupMessage) else "p"
    return (kind, msg.sender, where, msg.recipient, msg.sent_at)


def message_to_json(msg: Message) -> dict[str, Any]:
    """A flat JSON object of `msg` (for `python -m chatclient listen`): `kind` ("personal" or
    "group"), `sender`, `recipient`, `group` (groups only), `text`, `sent_timestamp`, `own`,
    `attachments` (a list of objects as on the wire, when any), and its SPEC 13 field under its
    wire name (`reply_to`, `edit_of`, `delete_of` or `react_to`, a REF), when it has one."""
    out: dict[str, Any] = {"kind": "group" if isinstance(msg, GroupMessage) else "personal"}
    if isinstance(msg, GroupMessage):
        out["group"] = msg.group
    out.update(sender=msg.sender, recipient=msg.recipient, text=msg.text,
               sent_timestamp=msg.sent_timestamp, own=msg.own)
    if msg.attachments:
        out["attachments"] = [{k: v for k, v in asdict(a).items() if v is not None}
                              for a in msg.attachments]
    for name, value in (("reply_to", msg.replying_to), ("edit_of", msg.edit_of),
                        ("delete_of", msg.delete_of), ("react_to", msg.react_to)):
        if value is not None:
            out[name] = value
    return out


@dataclass(frozen=True, slots=True)
class Sent:
    """The answer to a send (SPEC 12: the `msg_sent` frame's fields). `message` is the
    `sent_timestamp` the message was sent with (its identity); `sent_timestamp` is the server's
    time of acceptance; `msg_to` the phone or the group key. `created` is False when the server
    answered 200: a retry of a message it already stored (not stored or pushed twice)."""

    message: str
    msg_from: str
    msg_to: str
    sent_timestamp: str
    created: bool = True
    command: str = "msg_sent"
