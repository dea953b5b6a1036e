"""POST /api/v1/messages (SPEC 12): a script or an alert sends a message with a client token.

    POST /api/v1/messages   Authorization: Bearer TOKEN
    {"msg_to": PHONE | "group:KEY", "message": STR, "sent_timestamp": TS (optional),
     "attachments": [ID, ...] (optional, SPEC 8),
     one of "reply_to" | "edit_of" | "delete_of" | "react_to": REF (optional, SPEC 13)}

is stored and pushed exactly like a `new_msg` (to a phone) or a `new_grp_msg` (to a group) sent
on a socket of the token's device: the same checks, rate and store write (commands.
personal_message, group_message), the same pushes to the recipients' receive sockets, copies to
the user's other devices (SPEC 7.2) and Web Push (SPEC 9). The answer is the `msg_sent` frame's
fields: 201 for a new message, 200 for a retry of one still stored (same `sent_timestamp`).

Errors (`{"error": STR}`): 400 bad input (not JSON, an unknown or mistyped field, an empty or too
long message, a timestamp that does not parse or is too far from the server's clock, a SPEC 13
field that is malformed or breaks its rules), 401 not a
token request or a missing, wrong or revoked token, 403 the recipient has blocked the sender or
the sender is not in the group, 404 no such user or group, 409 the recipient's mailbox is full
(SPEC 10), 429 over `limits.messages_per_second` (per user, sockets and requests together) or
`limits.lookups_per_minute`, 503 the store failed (nothing was saved: retry with the same
`sent_timestamp`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from . import commands
from .api import _json_object, _login
from .auth import bearer_token
from .config import Config
from .connection import STORE_FAILED
from .hubs.local import Hub
from .keys import config_key, hub_key, push_key, store_key, throttle_key
from .protocol import (
    GROUP_KEY_RE,
    REF_FIELDS,
    Frame,
    ProtocolError,
    Reason,
    check_skew,
    fetch_timestamp,
    is_phone,
    now_micros,
    parse_frame,
)
from .push import Notifier
from .stores.base import AttachmentRefused, MailboxFull, NotMember, Store, StoreError
from .throttle import LOOKUPS_REFUSED, Throttle, lookup_allowed

log = logging.getLogger(__name__)

MESSAGES_PATH: Final = "/api/v1/messages"
GROUP_PREFIX: Final = "group:"
# The fields a request may carry; anything else is refused (400), not silently dropped.
FIELDS: Final = frozenset({"msg_to", "message", "sent_timestamp", "attachments", *REF_FIELDS})
# HTTP status of each refusal reason of the shared checks (protocol.Reason); any other: 400.
STATUS: Final = {Reason.BLOCKED: 403, Reason.NOT_MEMBER: 403, Reason.RATE_LIMITED: 429}


@dataclass(frozen=True, slots=True)
class ApiSender:
    """The sender of one API request (connection.Sending): the token's user and device."""

    user: str
    device: str
    store: Store
    hub: Hub
    config: Config
    throttle: Throttle
    push: Notifier


def _http(status: int, reason: str) -> web.HTTPException:
    """The aiohttp exception of `status` (400, 403 or 429: STATUS)."""
    kinds: dict[int, type[web.HTTPException]] = {
        400: web.HTTPBadRequest, 403: web.HTTPForbidden, 429: web.HTTPTooManyRequests}
    return kinds[status](reason=reason)


def _frame(data: dict[str, Any], me: str) -> Frame:
    """The request as the frame a socket would have sent: `new_msg` to a phone, `new_grp_msg`
    to "group:KEY" (msg_to the key). `sent_timestamp`, when absent, is the server's clock to the
    microsecond (two messages of one second stay two). Raises ProtocolError for bad input."""
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise ProtocolError(f"unknown field {unknown[0]!r}; a message has "
                            f"{', '.join(sorted(FIELDS))}")
    msg_to = data.get("msg_to")
    if not isinstance(msg_to, str):
        raise ProtocolError("the field 'msg_to' must be a phone or \"group:KEY\"")
    command = "new_msg"
    if msg_to.startswith(GROUP_PREFIX):
        command, msg_to = "new_grp_msg", msg_to[len(GROUP_PREFIX):]
        if not GROUP_KEY_RE.fullmatch(msg_to):
            raise ProtocolError("a group key is 10 letters and digits")
    elif not is_phone(msg_to):
        raise ProtocolError("the field 'msg_to' must be a phone number of 10 to 15 digits or "
                            "\"group:KEY\"")
    frame: dict[str, Any] = {
        "command": command, "msg_from": me, "msg_to": msg_to, "message": data.get("message"),
        "sent_timestamp": data.get("sent_timestamp", fetch_timestamp(now_micros())),
        "attachments": data.get("attachments"),
        **{name: data[name] for name in REF_FIELDS if name in data}}
    # the frames' own checks: types, timestamp, attachment ids, SPEC 13's field
    return parse_frame(frame)


async def send_message(request: web.Request) -> web.Response:
    """POST /api/v1/messages: see the module docstring (SPEC 12)."""
    if bearer_token(request) is None:
        raise web.HTTPUnauthorized(reason="this endpoint takes a client token: "
                                          "Authorization: Bearer TOKEN")
    me, device = await _login(request)
    app = request.app
    store, config = app[store_key], app[config_key]
    sender = ApiSender(me, device, store, app[hub_key], config, app[throttle_key], app[push_key])
    try:
        frame = _frame(await _json_object(request), me)
        check_skew(frame.sent_us, now_micros(), config.security.timestamp_skew_seconds)
        if frame.command == "new_msg":
            # A lookup of a phone, as a send socket's handshake (issue 12, finding 6).
            if not await lookup_allowed(sender.throttle, store, me, frame.msg_to):
                raise web.HTTPTooManyRequests(reason=LOOKUPS_REFUSED)
            if not await store.user_exists(frame.msg_to):
                raise web.HTTPNotFound(reason="no such user")
            write, deliver = await commands.personal_message(sender, frame)
        else:
            group = await store.group(frame.msg_to)
            if group is None:
                raise web.HTTPNotFound(reason="no such group")
            if me not in group.participants:
                raise web.HTTPForbidden(reason="you are not a participant of this group")
            write, deliver = await commands.group_message(sender, frame)
        stored = await write
    except ProtocolError as e:
        raise _http(STATUS.get(e.reason, 400), str(e)) from None
    except NotMember:
        raise web.HTTPForbidden(reason="you are not a participant of this group") from None
    except MailboxFull as e:  # SPEC 10; nothing stored
        raise web.HTTPConflict(reason=str(e)) from None
    except AttachmentRefused as e:  # SPEC 8; nothing stored
        raise web.HTTPBadRequest(reason=str(e)) from None
    except StoreError:  # StoreClosed too; nothing was committed: the client may retry
        log.exception("store failure during %s %s", request.method, MESSAGES_PATH)
        raise web.HTTPServiceUnavailable(reason=STORE_FAILED) from None
    deliver(stored)
    return web.json_response(commands.msg_sent(frame), status=201 if stored is not None else 200)
