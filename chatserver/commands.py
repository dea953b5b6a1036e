"""The protocol's commands (SPEC 5): one async function per command, the tables that say which
socket accepts which, and `dispatch`, which turns one text frame into a command call or an error.

Frame validation lives here and in protocol.py only. A command either completes or raises
ProtocolError; `dispatch` renders that as the SPEC 5.5 error frame and nothing is stored.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from .config import Config
from .hub import Hub
from .protocol import (
    Frame,
    ProtocolError,
    command_of,
    decode,
    encode,
    error_frame,
    fetch_timestamp,
    is_text,
    parse_frame,
    parse_timestamp,
    server_now,
    server_timestamp,
)
from .store import Store, StoreClosed

log = logging.getLogger(__name__)
# SPEC 5.1: at most one typing push per second per socket.
TYPING_INTERVAL: Final = 1.0
_STORE_FAILED: Final = "the server could not store this just now; nothing was saved, try again"


@dataclass(slots=True)
class Conn:
    """One open socket as the commands see it: whose it is, to whom it talks, how to answer.

    `peer` is the dialogue's other phone on a personal socket and the user's own phone on a
    receive socket. `send` writes one text frame back on this socket.
    """

    user: str
    peer: str
    send: Callable[[str], Awaitable[None]]
    store: Store
    hub: Hub
    config: Config
    # token bucket for `limits.messages_per_second`: burst of twice the rate
    tokens: float = 0.0
    refilled: float = field(default_factory=time.monotonic)
    last_typing: float = float("-inf")

    def __post_init__(self) -> None:
        self.tokens = 2 * self.config.limits.messages_per_second

    async def reply(self, frame: Mapping[str, Any]) -> None:
        """Send a frame back on this socket."""
        await self.send(encode(frame))

    def take_message_token(self) -> None:
        """Spend one message of the rate limit; raises ProtocolError when it is exhausted."""
        rate = self.config.limits.messages_per_second
        now = time.monotonic()
        self.tokens = min(2 * rate, self.tokens + (now - self.refilled) * rate)
        self.refilled = now
        if self.tokens < 1:
            raise ProtocolError(f"message rate limit exceeded ({rate:g} per second)")
        self.tokens -= 1

    def typing_allowed(self) -> bool:
        """True at most once per TYPING_INTERVAL seconds on this socket."""
        now = time.monotonic()
        if now - self.last_typing < TYPING_INTERVAL:
            return False
        self.last_typing = now
        return True


Handler = Callable[[Conn, Frame], Awaitable[None]]
ReceiveHandler = Callable[[Conn, dict[str, Any]], Awaitable[None]]


def check_message(conn: Conn, message: str) -> None:
    """A message body is 1 to `limits.max_message_chars` characters (SPEC 5.1)."""
    if not message:
        raise ProtocolError("the message is empty")
    limit = conn.config.limits.max_message_chars
    if len(message) > limit:
        raise ProtocolError(f"the message is longer than {limit} characters")
    if "\x00" in message:  # not text a person typed, and SQL text functions stop at it
        raise ProtocolError("the message must not contain NUL characters")


def _acknowledged(frame: Frame) -> int:
    """The `sent_timestamp` an acknowledgement's `message` names, in microseconds."""
    return parse_timestamp(frame.message)


# -- personal send socket (SPEC 5.1) ---------------------------------------------------------


async def new_msg(conn: Conn, frame: Frame) -> None:
    """Store durably, then `msg_sent` to the sender and the frame as sent to the recipient."""
    check_message(conn, frame.message)
    conn.take_message_token()
    stored = await conn.store.add_personal(
        frame.msg_from, frame.msg_to, frame.sent_us, frame.sent_timestamp, frame.message)
    if stored:  # a retry of a message still stored was pushed the first time
        conn.hub.push(frame.msg_to, encode(frame.wire()))
    await conn.reply({
        "message": frame.sent_timestamp,
        "command": "msg_sent",
        "msg_from": frame.msg_from,
        "msg_to": frame.msg_to,
        "sent_timestamp": server_now(),
    })


async def msg_received(conn: Conn, frame: Frame) -> None:
    """The user has stored the peer's message on their device: delete it, tell the peer."""
    sent_us = _acknowledged(frame)
    deleted = await conn.store.ack_personal(
        frame.msg_to, frame.msg_from, sent_us, server_timestamp(frame.sent_us))
    if not deleted:
        raise ProtocolError("couldn't find a message to delete")
    conn.hub.push(frame.msg_to, encode(frame.wire()))


async def msg_read(conn: Conn, frame: Frame) -> None:
    """The user has seen the peer's messages up to `message`: record it, tell the peer."""
    _acknowledged(frame)  # must name a timestamp, though no stored message is needed
    await conn.store.read_personal(frame.msg_to, frame.msg_from, server_timestamp(frame.sent_us))
    conn.hub.push(frame.msg_to, encode(frame.wire()))


async def is_typing(conn: Conn, frame: Frame) -> None:
    """Tell the peer the user is typing; never stored; over the rate, dropped silently."""
    if conn.typing_allowed():
        conn.hub.push(frame.msg_to, encode({
            "command": "is_typing",
            "msg_from": frame.msg_from,
            "msg_to": frame.msg_to,
            "sent_timestamp": server_now(),
        }))


# -- receive socket (SPEC 5.2) ----------------------------------------------------------------


async def _send_chunks(conn: Conn, command: str, messages: list[dict[str, Any]]) -> None:
    size = conn.config.fetch.chunk_size
    chunks = [messages[i:i + size] for i in range(0, len(messages), size)] or [[]]
    for n, chunk in enumerate(chunks, 1):
        await conn.reply({"command": command, "all": "True" if n == len(chunks) else "False",
                          "messages": chunk})


async def fetch_msgs(conn: Conn, data: dict[str, Any]) -> None:
    """Answer the personal messages still stored for the user, oldest first, in chunks."""
    stored = await conn.store.pending_for(conn.user)
    await _send_chunks(conn, "fetch_msgs", [
        {"msg_from": m.msg_from, "msg_to": m.msg_to, "message": m.message, "command": "new_msg",
         "sent_timestamp": fetch_timestamp(m.sent_us)}
        for m in stored
    ])


async def fetch_grp_msgs(conn: Conn, data: dict[str, Any]) -> None:
    """Answer the group messages still pending for the user (groups arrive in a later version:
    until then there are none, and the answer is one empty chunk)."""
    await _send_chunks(conn, "fetch_grp_msgs", [])


# -- the command tables (SPEC 5) ---------------------------------------------------------------

PERSONAL: Final[Mapping[str, Handler]] = {
    "new_msg": new_msg,
    "msg_received": msg_received,
    "msg_read": msg_read,
    "is_typing": is_typing,
}

RECEIVE: Final[Mapping[str, ReceiveHandler]] = {
    "fetch_msgs": fetch_msgs,
    "fetch_grp_msgs": fetch_grp_msgs,
}


async def dispatch(conn: Conn, table: Mapping[str, Handler], text: str) -> None:
    """Run one text frame of a send socket through `table`; refusals become an error frame."""
    type_ = "invalid"
    try:
        data = decode(text)
        type_ = command_of(data)
        frame = parse_frame(data)
        handler = table.get(frame.command)
        if handler is None:
            raise ProtocolError(f"unknown command {type_!r} on this socket")
        if frame.msg_from != conn.user:
            raise ProtocolError("msg_from must be the phone this socket belongs to")
        if frame.msg_to != conn.peer:
            raise ProtocolError("msg_to must be the phone this socket talks to")
        await handler(conn, frame)
    except ProtocolError as e:
        await conn.reply(error_frame(str(e), type_, conn.user, conn.peer))
    except (sqlite3.Error, StoreClosed):
        # Nothing was committed, so nothing was acknowledged: the client may safely retry.
        log.exception("store failure during %s", type_)
        await conn.reply(error_frame(_STORE_FAILED, type_, conn.user, conn.peer))


async def dispatch_receive(conn: Conn, text: str) -> None:
    """Run one text frame of a receive socket (SPEC 5.2: `command` and `msg_to` are checked)."""
    type_ = "invalid"
    try:
        data = decode(text)
        type_ = command_of(data)
        command = data.get("command")
        if not is_text(command):
            raise ProtocolError("the field 'command' is missing or not a string")
        handler = RECEIVE.get(command)
        if handler is None:
            raise ProtocolError(f"unknown command {type_!r} on this socket")
        msg_to = data.get("msg_to")
        if not isinstance(msg_to, str):
            raise ProtocolError("the field 'msg_to' is missing or not a string")
        if msg_to != conn.user:
            raise ProtocolError("msg_to must be the phone this socket belongs to")
        await handler(conn, data)
    except ProtocolError as e:
        await conn.reply(error_frame(str(e), type_, conn.user, conn.peer))
    except (sqlite3.Error, StoreClosed):
        # Nothing was committed, so nothing was acknowledged: the client may safely retry.
        log.exception("store failure during %s", type_)
        await conn.reply(error_frame(_STORE_FAILED, type_, conn.user, conn.peer))
