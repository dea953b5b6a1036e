"""The socket handlers (SPEC 5): handshake checks before the upgrade, then one receive loop per
socket that hands each text frame to `commands`.

One coroutine per socket handles its frames one at a time: that is what keeps a sender's messages
in order (SPEC 5.1). No task is spawned per frame.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import WSMsgType, web
from prometheus_client import Gauge

from . import commands
from .auth import SUBPROTOCOL, bearer_token, bearer_without_subprotocol, current_user
from .connection import Conn
from .hubs.local import CLOSE_ROOM_GONE
from .hubs.outbox import Outbox
from .keys import config_key, hub_key, push_key, store_key, throttle_key
from .metrics import SOCKETS_GROUP, SOCKETS_PERSONAL, SOCKETS_RECEIVE, SOCKETS_ROOM
from .middlewares import same_origin
from .presence import announce, went_offline
from .protocol import GROUP_KEY_RE, ROOM_NAME_RE, Reason, is_phone
from .remote import client_address
from .throttle import LOOKUPS_REFUSED, lookup_allowed

log = logging.getLogger(__name__)


async def _handshake(request: web.Request, *, own_path: bool = True) -> tuple[str, str]:
    """Check what SPEC 5 asks of every handshake; returns (phone, session id hash).

    Raises HTTPForbidden (no upgrade) without a valid session, for a foreign Origin, or when the
    path's msg_from is not the logged-in user. A token handshake (SPEC 12: `Authorization:
    Bearer`, or the subprotocols `chat.v1` and `bearer.TOKEN`) skips the Origin check (it
    carries no ambient credential) and nothing else; a missing, wrong or revoked token is
    HTTPUnauthorized, a `bearer.` subprotocol offered without `chat.v1` HTTPBadRequest.
    """
    token = bearer_token(request)
    if token is None and not same_origin(request):
        raise web.HTTPForbidden(reason="cross-origin WebSocket refused")
    if bearer_without_subprotocol(request):
        raise web.HTTPBadRequest(reason=f"offer the subprotocol {SUBPROTOCOL} with bearer.TOKEN")
    if not await request.app[throttle_key].allow_handshake(client_address(request)):
        raise web.HTTPTooManyRequests(reason="too many connections from your address; wait a minute")
    user = await current_user(request)
    if user is None:
        if token is not None:
            raise web.HTTPUnauthorized(reason="the token is missing, wrong or revoked")
        raise web.HTTPForbidden(reason="log in first")
    if own_path and request.match_info["msg_from"] != user[0]:
        raise web.HTTPForbidden(reason="msg_from is not the logged-in user")
    return user


def _socket(request: web.Request) -> web.WebSocketResponse:
    config = request.app[config_key]
    # aiohttp closes a frame over max_msg_size with 1009 itself (SPEC 5.5) and pings every
    # `heartbeat` seconds, closing a peer that does not answer within half of that (SPEC 5).
    # No permessage-deflate: chat frames are small, and a zlib context per socket costs far more
    # memory than an idle socket should.
    # aiohttp refuses a payload of max_msg_size bytes or more; SPEC 5.5 only those over the limit.
    # `protocols`: a client that offers chat.v1 (with its token, SPEC 12) gets it selected; one
    # that offers nothing gets no Sec-WebSocket-Protocol, as before.
    return web.WebSocketResponse(max_msg_size=config.limits.max_frame_bytes + 1,
                                 heartbeat=config.websocket.heartbeat, compress=False,
                                 protocols=(SUBPROTOCOL,))


def _conn(request: web.Request, phone: str, peer: str, outbox: Outbox, device: str) -> Conn:
    app = request.app
    return Conn(phone, peer, outbox, app[store_key], app[hub_key], app[config_key], app[throttle_key],
                device, app[push_key])


@contextlib.contextmanager
def _counted(gauge: Gauge) -> Iterator[None]:
    """One more open socket of the gauge's kind within the block (SPEC 11 chat_open_sockets)."""
    gauge.inc()
    try:
        yield
    finally:
        gauge.dec()


def _binary_refused(conn: Conn) -> None:
    conn.refuse("binary frames are not accepted; send JSON text", "invalid", Reason.INVALID)


async def receive_socket(request: web.Request) -> web.WebSocketResponse:
    """`/ws/chat/special/<msg_from>/`: everything addressed to the user arrives here (SPEC 5.2)."""
    phone, sid_hash = await _handshake(request)
    hub, store = request.app[hub_key], request.app[store_key]
    ws = _socket(request)
    await ws.prepare(request)
    try:
        async with hub.session_socket(sid_hash, ws, ("receive", phone)):
            with _counted(SOCKETS_RECEIVE), hub.outbox(ws) as outbox:
                # Registered (with a shared hub: subscribed) before the first frame is read, so
                # that no push sent after the client's first fetch can miss this socket.
                async with hub.receiving(phone, outbox, sid_hash) as came_online:
                    conn = _conn(request, phone, phone, outbox, sid_hash)
                    if came_online:
                        await announce(store, hub, phone, "online")
                    await _serve(ws, conn, functools.partial(commands.dispatch_receive, conn))
    finally:
        if not hub.has_receivers(phone):  # the last receive socket here closed
            # In a task of its own: this handler may be being cancelled (the peer went away).
            hub.spawn(went_offline(store, hub, phone))
    return ws


async def personal_socket(request: web.Request) -> web.WebSocketResponse:
    """`/ws/chat/personal/<msg_from>/<msg_to>/`: the user's send socket to one peer (SPEC 5.1)."""
    phone, sid_hash = await _handshake(request)
    msg_to = request.match_info["msg_to"]
    store = request.app[store_key]
    # A lookup of a phone (issue 12, finding 6): the 404 says whether it has an account.
    if is_phone(msg_to) and not await lookup_allowed(request.app[throttle_key], store, phone, msg_to):
        raise web.HTTPTooManyRequests(reason=LOOKUPS_REFUSED)
    if not is_phone(msg_to) or not await store.user_exists(msg_to):
        raise web.HTTPNotFound(reason="no such user")
    hub = request.app[hub_key]
    ws = _socket(request)
    await ws.prepare(request)
    async with hub.session_socket(sid_hash, ws, ("personal", phone, msg_to)):
        with _counted(SOCKETS_PERSONAL), hub.outbox(ws) as outbox:
            conn = _conn(request, phone, msg_to, outbox, sid_hash)
            await _serve(ws, conn, functools.partial(commands.dispatch, conn, commands.PERSONAL))
    return ws


async def _serve(ws: web.WebSocketResponse, conn: Conn,
                 handle: Callable[[str], Awaitable[None]]) -> None:
    """The receive loop of a socket: each text frame to `handle`, one at a time, in order.

    When the hub closes the socket (shutdown, a session ended, removal from a group, a socket over
    `limits.sockets_per_user`) it cancels this task;
    the handler's `hub.session_socket` block then closes the socket (see Hub.close).
    """
    try:
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await handle(msg.data)
            elif msg.type is WSMsgType.BINARY:
                _binary_refused(conn)
            # WSMsgType.ERROR (frame too big): aiohttp has already closed the socket with 1009
    except ConnectionError:
        pass  # the peer left while we answered; what was committed stays stored


async def group_socket(request: web.Request) -> web.WebSocketResponse:
    """`/ws/chat/group/<msg_from>/<grp>/`: the user's send socket in a group (SPEC 5.3)."""
    phone, sid_hash = await _handshake(request)
    grp = request.match_info["grp"]
    store, hub = request.app[store_key], request.app[hub_key]
    group = await store.group(grp) if GROUP_KEY_RE.fullmatch(grp) else None
    if group is None:
        raise web.HTTPNotFound(reason="no such group")
    if phone not in group.participants:
        raise web.HTTPForbidden(reason="you are not a participant of this group")
    ws = _socket(request)
    await ws.prepare(request)
    async with hub.session_socket(sid_hash, ws, ("group", phone, grp)):
        with _counted(SOCKETS_GROUP), hub.group_socket(grp, phone, ws), \
                hub.outbox(ws) as outbox:
            conn = _conn(request, phone, grp, outbox, sid_hash)
            await _serve(ws, conn, functools.partial(commands.dispatch, conn, commands.GROUP))
    return ws


async def room_socket(request: web.Request) -> web.WebSocketResponse:
    """`/ws/chat/room/<room_name>/`: send and receive in a room (SPEC 5.4). A private room needs
    its password once per user (POST /chat/special/room/join; issue 18, defect 7)."""
    phone, sid_hash = await _handshake(request, own_path=False)
    name = request.match_info["room_name"]
    store, hub, config = request.app[store_key], request.app[hub_key], request.app[config_key]
    room = await store.room(name) if ROOM_NAME_RE.fullmatch(name) else None
    if room is None:
        raise web.HTTPNotFound(reason="no such room")
    if room.private and not await store.room_granted(sid_hash, name):
        raise web.HTTPForbidden(reason="this room is private: give its password first")
    ws = _socket(request)
    await ws.prepare(request)
    async with hub.session_socket(sid_hash, ws, ("room", phone, name)):
        with _counted(SOCKETS_ROOM), hub.outbox(ws) as outbox:
            # In the room (with a shared hub: subscribed) before its history is read: a message
            # stored after that read is broadcast to this socket, one stored before is in it.
            async with hub.in_room(name, outbox, phone):
                if await store.room(name) is None:
                    # Closed by its creator since the check above (SPEC 13): its close request
                    # may have come before this socket was in the room, so none would close it.
                    await hub.close(ws, CLOSE_ROOM_GONE, b"room closed")
                    return ws
                conn = _conn(request, phone, name, outbox, sid_hash)
                history = await commands.send_room_history(conn, config.rooms.history)
                hub.release(name, outbox, history)
                await _serve(ws, conn, functools.partial(commands.dispatch, conn, commands.ROOM))
    return ws

