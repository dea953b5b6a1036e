"""JSON handlers (SPEC 4): /chat/special/* creates things, /chat/info* reads them.

Errors are raised as `web.HTTPException`s with a reason; `middlewares.json_errors` renders them
as `{"error": reason}`.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .auth import current_user
from .keys import store_key
from .protocol import is_phone
from .store import DialogueSide


async def _user(request: web.Request) -> str:
    user = await current_user(request)
    if user is None:
        raise web.HTTPUnauthorized(reason="log in first")
    return user[0]


async def _json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; 400 otherwise."""
    try:
        data = await request.json(loads=json.loads)
    except ValueError:
        raise web.HTTPBadRequest(reason="the body must be JSON") from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(reason="the body must be a JSON object")
    return data


def _side(side: DialogueSide) -> dict[str, Any]:
    return {"last_received_receiver": side.last_received_receiver,
            "last_seen_receiver": side.last_seen_receiver, "waiting": side.waiting}


async def _dialogue(request: web.Request, me: str, msg_to: str) -> dict[str, Any]:
    store = request.app[store_key]
    return {"msg_to": msg_to,
            "outgoing": _side(await store.dialogue_side(me, msg_to)),
            "incoming": _side(await store.dialogue_side(msg_to, me))}


async def special_personal(request: web.Request) -> web.Response:
    """POST /chat/special/personal `{"msg_to": PHONE}`: start a dialogue; 201 with its info."""
    me = await _user(request)
    data = await _json_object(request)
    msg_to = data.get("msg_to")
    if not is_phone(msg_to):
        raise web.HTTPBadRequest(reason="msg_to must be a phone number of 10 to 15 digits")
    store = request.app[store_key]
    if not await store.user_exists(msg_to):
        raise web.HTTPNotFound(reason="no such user")
    await store.open_dialogue(me, msg_to)
    return web.json_response(await _dialogue(request, me, msg_to), status=201)


async def info(request: web.Request) -> web.Response:
    """GET /chat/info: the logged-in user's phone, name, dialogues, groups and rooms."""
    me = await _user(request)
    store = request.app[store_key]
    account = await store.get_user(me)
    if account is None:
        raise web.HTTPUnauthorized(reason="log in first")
    dialogues = []
    for phone in await store.dialogues_of(me):
        peer = await store.get_user(phone)
        dialogues.append({"msg_to": phone, "name": peer.name if peer else None})
    return web.json_response({"phone": me, "name": account.name, "dialogues": dialogues,
                              "groups": [], "rooms": []})


async def info_personal(request: web.Request) -> web.Response:
    """GET /chat/info/personal?msg_to=PHONE: receipts and waiting counts both ways (SPEC 4)."""
    me = await _user(request)
    msg_to = request.query.get("msg_to")
    if not is_phone(msg_to):
        raise web.HTTPBadRequest(reason="msg_to must be a phone number of 10 to 15 digits")
    if not await request.app[store_key].user_exists(msg_to):
        raise web.HTTPNotFound(reason="no such user")
    return web.json_response(await _dialogue(request, me, msg_to))
