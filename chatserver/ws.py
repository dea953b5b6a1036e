"""The socket handlers (SPEC 5): handshake checks before the upgrade, then one receive loop per
socket that hands each text frame to `commands`.

One coroutine per socket handles its frames one at a time: that is what keeps a sender's messages
in order (SPEC 5.1). No task is spawned per frame.
"""

from __future__ import annotations

import logging

from aiohttp import WSMsgType, web

from . import commands
from .auth import current_user
from .commands import Conn
from .keys import config_key, hub_key, store_key
from .middlewares import same_origin
from .protocol import error_frame, is_phone

log = logging.getLogger(__name__)


async def _handshake(request: web.Request) -> tuple[str, str]:
    """Check what SPEC 5 asks of every handshake; returns (phone, session id hash).

    Raises HTTPForbidden (no upgrade) without a valid session, for a foreign Origin, or when the
    path's msg_from is not the logged-in user.
    """
    if not same_origin(request):
        raise web.HTTPForbidden(reason="cross-origin WebSocket refused")
    user = await current_user(request)
    if user is None:
        raise web.HTTPForbidden(reason="log in first")
    if request.match_info["msg_from"] != user[0]:
        raise web.HTTPForbidden(reason="msg_from is not the logged-in user")
    return user


def _socket(request: web.Request) -> web.WebSocketResponse:
    config = request.app[config_key]
    # aiohttp closes a frame over max_msg_size with 1009 itself (SPEC 5.5) and pings every
    # `heartbeat` seconds, closing a peer that does not answer within half of that (SPEC 5).
    return web.WebSocketResponse(max_msg_size=config.limits.max_frame_bytes,
                                 heartbeat=config.websocket.heartbeat)


async def _binary_refused(conn: Conn) -> None:
    await conn.reply(error_frame("binary frames are not accepted; send JSON text",
                                 "invalid", conn.user, conn.peer))


async def receive_socket(request: web.Request) -> web.WebSocketResponse:
    """`/ws/chat/special/<msg_from>/`: everything addressed to the user arrives here (SPEC 5.2)."""
    phone, sid_hash = await _handshake(request)
    hub = request.app[hub_key]
    ws = _socket(request)
    await ws.prepare(request)
    with hub.session_socket(sid_hash, ws), hub.receiving(phone, ws) as receiver:
        conn = Conn(phone, phone, receiver.send, request.app[store_key], hub,
                    request.app[config_key])
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await commands.dispatch_receive(conn, msg.data)
            elif msg.type is WSMsgType.BINARY:
                await _binary_refused(conn)
            # WSMsgType.ERROR (frame too big): aiohttp has already closed the socket with 1009
    return ws


async def personal_socket(request: web.Request) -> web.WebSocketResponse:
    """`/ws/chat/personal/<msg_from>/<msg_to>/`: the user's send socket to one peer (SPEC 5.1)."""
    phone, sid_hash = await _handshake(request)
    msg_to = request.match_info["msg_to"]
    store = request.app[store_key]
    if not is_phone(msg_to) or not await store.user_exists(msg_to):
        raise web.HTTPNotFound(reason="no such user")
    hub = request.app[hub_key]
    ws = _socket(request)
    await ws.prepare(request)

    async def send(data: str) -> None:
        await ws.send_str(data)

    conn = Conn(phone, msg_to, send, store, hub, request.app[config_key])
    with hub.session_socket(sid_hash, ws):
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    await commands.dispatch(conn, commands.PERSONAL, msg.data)
                elif msg.type is WSMsgType.BINARY:
                    await _binary_refused(conn)
        except ConnectionError:
            pass  # the peer left while we answered; what was committed stays stored
    return ws

