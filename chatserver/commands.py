"""The protocol's commands (SPEC 5): one async function per command, the tables that say which
socket accepts which, and `dispatch`, which turns one text frame into a command call or an error.

Frame validation lives here and in protocol.py only. A command either completes or raises
ProtocolError; `dispatch` renders that as the SPEC 5.5 error frame and nothing is stored. A
command that writes answers once its write is committed (`Conn.later`, docs/connection.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import orjson

from .connection import MAX_IN_FLIGHT, STORE_FAILED, Conn, Sending, take_message_token
from .metrics import ACCEPTED_GROUP, ACCEPTED_PERSONAL, ACCEPTED_ROOM, ACKS_GROUP, ACKS_PERSONAL
from .protocol import (
    Frame,
    ProtocolError,
    Reason,
    Ref,
    check_ref,
    check_skew,
    command_of,
    decode,
    encode,
    fetch_timestamp,
    is_phone,
    now_micros,
    parse_frame,
    parse_timestamp,
    per_recipient,
    server_now,
    server_timestamp,
)
from .stores.base import Ack, GroupMessage, Stored, StoredMessage, StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")
Handler = Callable[[Conn, Frame], Awaitable[None]]
# What to run once a new message's write is committed, with its result (commands.
# personal_message, group_message): the pushes, copies and Web Push of SPEC 5, 7.2 and 9.
Deliver = Callable[[Stored | None], None]
ReceiveHandler = Callable[[Conn, dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Command:
    """A command as a socket accepts it: the function, and what its `msg_to` must be — the
    socket's peer (the dialogue's other phone, the group key, the room name), or, for a group's
    acknowledgements, the phone of the original sender (SPEC 5.3)."""

    run: Handler
    to_peer: bool = True


def check_message(conn: Sending, message: str, attachments: Sequence[str] = (),
                  ref: Ref | None = None, sent_us: int = 0) -> None:
    """A message body is 1 to `limits.max_message_chars` characters (SPEC 5.1), or empty when it
    carries attachments (SPEC 8), a `delete_of` or a `react_to` (SPEC 13), and at most
    `limits.max_message_bytes` bytes in UTF-8 (SPEC 10: what one stored message may cost); it
    carries at most `limits.max_attachments` attachments. A message with `ref` (sent at
    `sent_us`) also follows SPEC 13's rules (protocol.check_ref)."""
    check_ref(ref, conn.user, sent_us, message, attachments)
    if len(attachments) > conn.config.limits.max_attachments:
        raise ProtocolError(f"a message carries at most {conn.config.limits.max_attachments} attachments",
                            Reason.BAD_MESSAGE)
    if not message and not attachments and not (ref is not None and ref.allows_empty):
        raise ProtocolError("the message is empty", Reason.BAD_MESSAGE)
    limits = conn.config.limits
    if len(message) > limits.max_message_chars:
        raise ProtocolError(f"the message is longer than {limits.max_message_chars} characters",
                            Reason.BAD_MESSAGE)
    # A character is at most 4 bytes in UTF-8: most bodies need no encoding to be measured.
    if len(message) * 4 > limits.max_message_bytes and \
            len(message.encode()) > limits.max_message_bytes:
        raise ProtocolError(f"the message is longer than {limits.max_message_bytes} bytes",
                            Reason.BAD_MESSAGE)
    if "\x00" in message:  # not text a person typed, and SQL text functions stop at it
        raise ProtocolError("the message must not contain NUL characters", Reason.BAD_MESSAGE)


async def attachments_to_send(conn: Sending, frame: Frame) -> list[dict[str, Any]] | None:
    """SPEC 8: what the frame's `attachments` look like in frames, when each is the user's,
    completely uploaded and attached to no message; None when one is not (a retry of a stored
    message names attachments its first sending claimed: the store, which knows the retry,
    decides and refuses a new message with AttachmentRefused)."""
    found = await conn.store.attachments_to_send(frame.attachments, conn.user)
    return None if found is None else [a.wire() for a in found]


def _with_attachments(wire: dict[str, Any], attachments: list[dict[str, Any]] | None,
                      ref: Ref | str | None = None) -> dict[str, Any]:
    """A frame, with `attachments` only when it has some, and its SPEC 13 field (`ref`: the
    frame's, or the JSON text the store kept) only when it has one: a client that knows only
    SPEC 1-6 sees the frames it always did."""
    if attachments:
        wire["attachments"] = attachments
    if isinstance(ref, Ref):
        wire.update(ref.wire())
    elif ref is not None:
        wire.update(orjson.loads(ref))  # stored from Ref.json(): one key, {msg_from, sent_timestamp}
    return wire


def _ref_json(frame: Frame) -> str | None:
    """What the store keeps of the frame's SPEC 13 field (column `ref`), None for none."""
    return None if frame.ref is None else frame.ref.json()


def _wakes(frame: Frame) -> bool:
    """Whether the message gets a Web Push (SPEC 9): not an edit, unsend or reaction (SPEC 13)."""
    return frame.ref is None or frame.ref.wakes


def refuse_if_blocked(conn: Sending, recipient: str) -> None:
    """SPEC 5.5: a recipient who has blocked the sender gets nothing from them."""
    if conn.store.is_blocked(recipient, conn.user):
        raise ProtocolError("the recipient has blocked you; nothing was sent", Reason.BLOCKED)


def msg_sent(frame: Frame) -> dict[str, str]:
    """The acknowledgement of a stored message (SPEC 5.1, 5.3): `message` is its timestamp."""
    return {"message": frame.sent_timestamp, "command": "msg_sent", "msg_from": frame.msg_from,
            "msg_to": frame.msg_to, "sent_timestamp": server_now()}


def _acknowledged(frame: Frame) -> int:
    """The `sent_timestamp` an acknowledgement's `message` names, in microseconds."""
    return parse_timestamp(frame.message)


# -- personal send socket (SPEC 5.1) ---------------------------------------------------------


async def personal_message(sender: Sending, frame: Frame
                           ) -> tuple[asyncio.Future[Stored | None], Deliver]:
    """A new personal message (`frame`: a new_msg from `sender.user` to `frame.msg_to`), from a
    send socket (SPEC 5.1) or a token's POST /api/v1/messages (SPEC 12): checks it (length,
    attachments), that the recipient has not blocked the sender and the sender's message rate
    (raising ProtocolError), then starts its durable write. Returns the write (resolving once
    committed to what was stored, None for a retry of a message still stored; failing with
    MailboxFull, AttachmentRefused or StoreError) and what to call with its result then: the
    frame as sent to the recipient's receive sockets and, as a copy, to the sender's other
    devices (SPEC 7.2), and the Web Push (SPEC 9)."""
    check_message(sender, frame.message, frame.attachments, frame.ref, frame.sent_us)
    refuse_if_blocked(sender, frame.msg_to)
    await take_message_token(sender)
    attachments = (await attachments_to_send(sender, frame) if frame.attachments else [])

    def deliver(stored: Stored | None) -> None:
        if stored is not None:  # None: a retry of a message still stored, pushed the first time
            data = encode(_with_attachments(frame.wire(), attachments, frame.ref))
            sender.hub.push(frame.msg_to, data)
            if stored.copies:
                sender.hub.push(sender.user, data, skip=sender.device)
            if frame.msg_to != sender.user and _wakes(frame):  # SPEC 9; never one's own copies
                sender.push.notify([(frame.msg_to, "personal:" + sender.user)], sender.user,
                                   frame.message, frame.sent_timestamp)
        ACCEPTED_PERSONAL.inc()

    return sender.store.add_personal(
        frame.msg_from, frame.msg_to, frame.sent_us, frame.sent_timestamp, frame.message,
        sender.device, frame.attachments, ref=_ref_json(frame)), deliver


async def new_msg(conn: Conn, frame: Frame) -> None:
    """Store durably, then `msg_sent` to the sender, the frame as sent to the recipient's devices
    and, as a copy, to the sender's other devices (SPEC 7.2)."""
    write, deliver = await personal_message(conn, frame)

    def committed(stored: Stored | None) -> None:
        deliver(stored)
        conn.put(msg_sent(frame))

    conn.later(frame.command, write, committed)


async def msg_received(conn: Conn, frame: Frame) -> None:
    """This device has stored the peer's message (or its copy of the user's own, SPEC 7.2): it
    stops waiting for it; the user's first device to do so tells the peer (SPEC 7.1)."""
    sent_us = _acknowledged(frame)
    await conn.take_ack_token()

    def committed(ack: Ack) -> None:
        if ack is Ack.MISSING:
            raise ProtocolError("couldn't find a message to delete", Reason.NOT_FOUND)
        ACKS_PERSONAL.inc()
        if ack is Ack.FIRST:
            conn.hub.push(frame.msg_to, encode(frame.wire()))

    conn.later(frame.command, conn.store.ack_personal(
        frame.msg_to, frame.msg_from, sent_us, server_timestamp(frame.sent_us), conn.device),
        committed)


async def msg_read(conn: Conn, frame: Frame) -> None:
    """The user has seen the peer's messages up to `message`: record it, tell the peer; refused,
    like new_msg, when the peer has blocked the user (a read receipt is a message too)."""
    _acknowledged(frame)  # must name a timestamp, though no stored message is needed
    refuse_if_blocked(conn, frame.msg_to)
    await conn.take_ack_token()
    conn.later(frame.command, conn.store.read_personal(
        frame.msg_to, frame.msg_from, server_timestamp(frame.sent_us)),
        lambda _: _push_read(conn, frame.msg_to, encode(frame.wire())))


def _push_read(conn: Conn, sender: str, data: bytes) -> None:
    """A read receipt, committed: to the sender's receive sockets (SPEC 5.1, 5.3) and the same
    frame to the reader's own (SPEC 7.2), so that each of the reader's devices can clear its
    unread count; once when the reader read its own message."""
    conn.hub.push(sender, data)
    if sender != conn.user:
        conn.hub.push(conn.user, data)


async def is_typing(conn: Conn, frame: Frame) -> None:
    """Tell the peer the user is typing; never stored; over the rate, dropped silently."""
    refuse_if_blocked(conn, frame.msg_to)
    if await conn.typing_allowed():
        conn.hub.push(frame.msg_to, encode({
            "command": "is_typing",
            "msg_from": frame.msg_from,
            "msg_to": frame.msg_to,
            "sent_timestamp": server_now(),
        }))


# -- group send socket (SPEC 5.3) -------------------------------------------------------------


def _group_sender(conn: Conn) -> str:
    """`msg_from` of what a group socket pushes: "<grp>-<sender>"."""
    return f"{conn.peer}-{conn.user}"


async def group_message(sender: Sending, frame: Frame
                        ) -> tuple[asyncio.Future[Stored | None], Deliver]:
    """A new group message (`frame`: a new_grp_msg from `sender.user` to group `frame.msg_to`),
    from a group socket (SPEC 5.3) or a token's POST /api/v1/messages (SPEC 12): checks it and
    the sender's message rate (raising ProtocolError), then starts its durable write, pending
    for every other participant. Returns the write (as personal_message's; it also fails with
    NotMember when the sender is not a participant) and what to call with its result once
    committed: the push to each recipient, the copies to the sender's other devices (SPEC 7.2:
    `msg_to` is the sender), and the Web Push (SPEC 9)."""
    check_message(sender, frame.message, frame.attachments, frame.ref, frame.sent_us)
    await take_message_token(sender)
    attachments = (await attachments_to_send(sender, frame) if frame.attachments else [])
    grp = frame.msg_to

    def deliver(stored: Stored | None) -> None:
        if stored is not None:  # None: a retry of a message still stored, pushed the first time
            addressed = per_recipient(_with_attachments(
                {"message": frame.message, "command": "new_msg", "msg_from": f"{grp}-{sender.user}",
                 "sent_timestamp": frame.sent_timestamp}, attachments, frame.ref))
            for phone in stored.pending:
                sender.hub.push(phone, addressed(phone))
            if stored.copies:
                sender.hub.push(sender.user, addressed(sender.user), skip=sender.device)
            # SPEC 9: the recipients' devices without a receive socket (never the sender's)
            if _wakes(frame):
                sender.push.notify_group(stored.pending, grp, sender.user, frame.message,
                                         frame.sent_timestamp)
        ACCEPTED_GROUP.inc()

    return sender.store.add_group_message(
        grp, frame.msg_from, frame.sent_us, frame.sent_timestamp, frame.message,
        sender.device, frame.attachments, ref=_ref_json(frame)), deliver


async def new_grp_msg(conn: Conn, frame: Frame) -> None:
    """Store durably, pending for every other participant; `msg_sent`; push to each of them and,
    as a copy, to the sender's other devices (SPEC 7.2: `msg_to` is the sender). `frame.msg_to`
    is the socket's group (dispatch checked it)."""
    write, deliver = await group_message(conn, frame)

    def committed(stored: Stored | None) -> None:
        deliver(stored)
        conn.put(msg_sent(frame))

    conn.later(frame.command, write, committed)


async def grp_msg_received(conn: Conn, frame: Frame) -> None:
    """This device has stored the sender's group message (a copy when the sender is the user):
    it stops waiting for it; the user's first device to do so leaves its pending list and tells
    the sender (SPEC 7.1)."""
    sent_us = _acknowledged(frame)
    await conn.take_ack_token()

    def committed(ack: Ack) -> None:
        if ack is Ack.MISSING:
            raise ProtocolError("couldn't find a message to delete", Reason.NOT_FOUND)
        ACKS_GROUP.inc()
        if ack is Ack.FIRST:
            conn.hub.push(frame.msg_to, encode({
                "message": frame.message, "command": "msg_received", "msg_from": _group_sender(conn),
                "msg_to": frame.msg_to, "sent_timestamp": server_now()}))

    conn.later(frame.command, conn.store.ack_group(conn.peer, frame.msg_to, sent_us, conn.user,
                                                   conn.device), committed)


async def grp_msg_read(conn: Conn, frame: Frame) -> None:
    """The user has read the group up to the sender's message: record it, tell the sender;
    refused when the sender has blocked the user, as msg_read."""
    sent_us = _acknowledged(frame)
    refuse_if_blocked(conn, frame.msg_to)
    await conn.take_ack_token()
    if not await conn.store.is_member(conn.peer, conn.user):
        raise ProtocolError("you are not a participant of this group", Reason.NOT_MEMBER)
    if not await conn.store.is_member(conn.peer, frame.msg_to):
        raise ProtocolError("msg_to is not a participant of this group", Reason.NOT_MEMBER)
    conn.later(frame.command, conn.store.read_group(conn.peer, conn.user, server_timestamp(sent_us)),
               lambda _: _push_read(conn, frame.msg_to, encode({
                   "message": frame.message, "command": "msg_read",
                   "msg_from": _group_sender(conn), "msg_to": frame.msg_to,
                   "sent_timestamp": server_now()})))


async def is_grp_typing(conn: Conn, frame: Frame) -> None:
    """Tell every other participant; never stored; over one a second, dropped silently."""
    if not await conn.typing_allowed():
        return
    group = await conn.store.group(conn.peer)
    if group is None or conn.user not in group.participants:
        return  # removed meanwhile: typing is dropped silently like any other surplus
    addressed = per_recipient({"command": "is_typing", "msg_from": _group_sender(conn),
                               "sent_timestamp": server_now()})
    for phone in group.participants:
        if phone != conn.user:
            conn.hub.push(phone, addressed(phone))


# -- room socket (SPEC 5.4) -------------------------------------------------------------------


async def room_msg(conn: Conn, frame: Frame) -> None:
    """Append to the room's history and broadcast to every socket in it, the sender's included."""
    check_message(conn, frame.message, frame.attachments, frame.ref, frame.sent_us)
    await conn.take_message_token()
    data = encode(_with_attachments(
        {"message": frame.message, "command": "room_msg", "msg_from": frame.msg_from,
         "msg_to": frame.msg_to, "sent_timestamp": frame.sent_timestamp},
        (await attachments_to_send(conn, frame) if frame.attachments else []), frame.ref))

    def committed(seq: int | None) -> None:
        ACCEPTED_ROOM.inc()
        if seq is not None:
            conn.hub.broadcast(conn.peer, data, seq)
        else:  # a retry: everyone has it; confirm to the sender again
            conn.outbox.put(data)

    conn.later(frame.command, conn.store.add_room_message(
        conn.peer, frame.msg_from, frame.sent_us, frame.sent_timestamp, frame.message,
        frame.attachments, ref=_ref_json(frame)), committed)


async def is_room_typing(conn: Conn, frame: Frame) -> None:
    """Broadcast as `is_typing`; never stored; over one a second, dropped silently."""
    if await conn.typing_allowed():
        conn.hub.broadcast(conn.peer, encode({
            "command": "is_typing", "msg_from": frame.msg_from, "msg_to": frame.msg_to,
            "sent_timestamp": server_now()}))


async def send_room_history(conn: Conn, limit: int) -> int:
    """On connect: the room's latest messages, oldest first (SPEC 5.4). Returns the id of the
    newest one sent (0 for none)."""
    history = await conn.store.room_history(conn.peer, limit)
    await conn.reply({"command": "fetch_room_msgs", "all": "True", "messages": [
        _with_attachments({"message": m.message, "command": "room_msg", "msg_from": m.msg_from,
                           "msg_to": conn.peer, "sent_timestamp": fetch_timestamp(m.sent_us)},
                          m.attachments, m.ref) for m in history]})
    return history[-1].id if history else 0


# -- receive socket (SPEC 5.2) ----------------------------------------------------------------


async def _send_pages(conn: Conn, command: str,
                      page: Callable[[int, int], Awaitable[Sequence[tuple[int, T]]]],
                      render: Callable[[T], dict[str, Any]]) -> None:
    """Answer a fetch a chunk at a time as the store reads it (SPEC 5.2): one keyset-paginated
    query of `fetch.chunk_size` + 1 rows per chunk (the extra row says whether this chunk is the
    last, `"all": "True"`), so that memory is bounded by the chunk size whatever the backlog.
    Nothing stored: one chunk with an empty list. Messages accepted meanwhile come in later
    chunks; those acknowledged meanwhile may be left out."""
    size = conn.config.fetch.chunk_size
    after = 0
    while True:
        rows = await page(after, size + 1)
        last = len(rows) <= size
        chunk = rows[:size]
        await conn.reply({"command": command, "all": "True" if last else "False",
                          "messages": [render(m) for _, m in chunk]})
        if last:
            return
        after = chunk[-1][0]


async def fetch_msgs(conn: Conn, data: dict[str, Any]) -> None:
    """Answer the personal messages (and copies of the user's own, SPEC 7.2) waiting for this
    socket's device, oldest first, in chunks (SPEC 7.1)."""
    def render(m: StoredMessage) -> dict[str, Any]:
        return _with_attachments({"msg_from": m.msg_from, "msg_to": m.msg_to, "message": m.message,
                                  "command": "new_msg", "sent_timestamp": fetch_timestamp(m.sent_us)},
                                 m.attachments, m.ref)

    await _send_pages(conn, "fetch_msgs",
                      lambda after, limit: conn.store.pending_page(conn.device, after, limit), render)


async def fetch_grp_msgs(conn: Conn, data: dict[str, Any]) -> None:
    """Answer the group messages (and copies of the user's own) waiting for this socket's
    device, oldest first, in chunks, each with `msg_from` "<grp>-<sender>" and its `pending`
    list (SPEC 5.2, 7.1)."""
    def render(m: GroupMessage) -> dict[str, Any]:
        return _with_attachments({"msg_from": f"{m.grp}-{m.msg_from}", "msg_to": conn.user,
                                  "message": m.message, "command": "new_msg",
                                  "sent_timestamp": fetch_timestamp(m.sent_us), "pending": m.pending},
                                 m.attachments, m.ref)

    await _send_pages(conn, "fetch_grp_msgs",
                      lambda after, limit: conn.store.pending_group_page(conn.device, after, limit),
                      render)


# -- the command tables (SPEC 5) ---------------------------------------------------------------

Table = Mapping[str, Command]

PERSONAL: Final[Table] = {
    "new_msg": Command(new_msg),
    "msg_received": Command(msg_received),
    "msg_read": Command(msg_read),
    "is_typing": Command(is_typing),
}

GROUP: Final[Table] = {
    "new_grp_msg": Command(new_grp_msg),
    "grp_msg_received": Command(grp_msg_received, to_peer=False),
    "grp_msg_read": Command(grp_msg_read, to_peer=False),
    "msg_read": Command(grp_msg_read, to_peer=False),  # SPEC 5.3: an alias on a group socket
    "is_grp_typing": Command(is_grp_typing),
}

ROOM: Final[Table] = {
    "room_msg": Command(room_msg),
    "is_room_typing": Command(is_room_typing),
}

RECEIVE: Final[Mapping[str, ReceiveHandler]] = {
    "fetch_msgs": fetch_msgs,
    "fetch_grp_msgs": fetch_grp_msgs,
}


async def dispatch(conn: Conn, table: Table, text: str) -> None:
    """Run one text frame of a send or room socket through `table`; refusals become an error frame."""
    type_ = "invalid"
    try:
        data = decode(text)
        type_ = command_of(data)
        frame = parse_frame(data)
        command = table.get(frame.command)
        if command is None:
            raise ProtocolError(f"unknown command {type_!r} on this socket", Reason.UNKNOWN_COMMAND)
        # The frame's own sent_timestamp only: an acknowledgement's `message` names the
        # acknowledged message's timestamp, which may be older (README).
        check_skew(frame.sent_us, now_micros(), conn.config.security.timestamp_skew_seconds)
        if frame.msg_from != conn.user:
            raise ProtocolError("msg_from must be the phone this socket belongs to",
                                Reason.WRONG_SOCKET)
        if command.to_peer and frame.msg_to != conn.peer:
            raise ProtocolError(f"msg_to must be {conn.peer!r} on this socket", Reason.WRONG_SOCKET)
        if not command.to_peer and not is_phone(frame.msg_to):
            raise ProtocolError("msg_to must be the phone of the message's sender",
                                Reason.WRONG_SOCKET)
        await command.run(conn, frame)
    except ProtocolError as e:
        conn.refuse(str(e), type_, e.reason)
    except StoreError:  # StoreClosed too
        # Nothing was committed, so nothing was acknowledged: the client may safely retry.
        log.exception("store failure during %s", type_)
        conn.refuse(STORE_FAILED, type_, Reason.STORE_FAILED)
    if conn.in_flight >= MAX_IN_FLIGHT:
        await conn.wait_in_flight()
    await conn.wait_outbox()


async def dispatch_receive(conn: Conn, text: str) -> None:
    """Run one text frame of a receive socket (SPEC 5.2: `command` and `msg_to` are checked)."""
    type_ = "invalid"
    try:
        data = decode(text)
        type_ = command_of(data)
        command = data.get("command")
        if not isinstance(command, str):
            raise ProtocolError("the field 'command' is missing or not a string")
        handler = RECEIVE.get(command)
        if handler is None:
            raise ProtocolError(f"unknown command {type_!r} on this socket", Reason.UNKNOWN_COMMAND)
        msg_to = data.get("msg_to")
        if not isinstance(msg_to, str):
            raise ProtocolError("the field 'msg_to' is missing or not a string")
        if msg_to != conn.user:
            raise ProtocolError("msg_to must be the phone this socket belongs to",
                                Reason.WRONG_SOCKET)
        await handler(conn, data)
    except ProtocolError as e:
        conn.refuse(str(e), type_, e.reason)
    except StoreError:  # StoreClosed too
        # Nothing was committed, so nothing was acknowledged: the client may safely retry.
        log.exception("store failure during %s", type_)
        conn.refuse(STORE_FAILED, type_, Reason.STORE_FAILED)
    await conn.wait_outbox()
