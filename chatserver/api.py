"""JSON handlers (SPEC 4): /chat/special/* creates things, /chat/info* reads them.

Errors are raised as `web.HTTPException`s with a reason; `middlewares.json_errors` renders them
as `{"error": reason}`.
"""

from __future__ import annotations

import json
import secrets
import string
from typing import Any, Final

from aiohttp import web

from .auth import check_password, current_user, hash_password
from .forms import FormError, clean_category, clean_name, clean_password, clean_search
from .keys import config_key, hub_key, password_hmac_key, password_pool_key, store_key, throttle_key
from .protocol import GROUP_KEY_RE, ROOM_NAME_RE, encode, is_phone, server_now, server_timestamp
from .remote import client_address
from .stores.base import Contact, DialogueSide, Group, Room
from .throttle import LOOKUPS_REFUSED, PasswordAttempt, PoolFull, lookup_allowed

# A group is for people who know each other: a bound keeps one request's work bounded too.
MAX_PARTICIPANTS: Final = 1000
_KEY_ALPHABET: Final = string.ascii_letters + string.digits
# Last seen is shown to the minute (issue 12, finding 6): enough for "last seen 14:05", not a
# millisecond trace of someone's comings and goings.
LAST_SEEN_US: Final = 60_000_000
# SPEC 13 `GET /chat/rooms`: rooms per answer, and the longest search text.
MAX_LISTED_ROOMS: Final = 100
MAX_ROOM_QUERY_CHARS: Final = 64


async def _login(request: web.Request) -> tuple[str, str]:
    """(phone, session id hash) of the logged-in user; 401 otherwise."""
    user = await current_user(request)
    if user is None:
        raise web.HTTPUnauthorized(reason="log in first")
    return user


async def _user(request: web.Request) -> str:
    return (await _login(request))[0]


def _phone_arg(value: object, field: str) -> str:
    if not is_phone(value):
        raise web.HTTPBadRequest(reason=f"{field} must be a phone number of 10 to 15 digits")
    return value


def _phones_arg(value: object, field: str) -> list[str]:
    """A JSON list of phones, duplicates dropped, order kept; 400 otherwise."""
    if not isinstance(value, list) or len(value) > MAX_PARTICIPANTS:
        raise web.HTTPBadRequest(reason=f"{field} must be a list of at most {MAX_PARTICIPANTS} phones")
    return list(dict.fromkeys(_phone_arg(p, field) for p in value))


async def _lookups(request: web.Request, me: str, phones: list[str]) -> None:
    """Count the lookups of other users' phones a request makes (issue 12, finding 6: anything
    that answers whether a phone has an account), hits and misses alike: counting only misses
    would let one who guesses right probe freely. 429 past `limits.lookups_per_minute`.

    One phone: free when it is the user's own or one it has a dialogue with (`lookup_allowed`).
    Several (a group's participants): each other phone counts, at once."""
    throttle = request.app[throttle_key]
    if len(phones) == 1:
        allowed = await lookup_allowed(throttle, request.app[store_key], me, phones[0])
    else:
        allowed = await throttle.allow_lookups(me, sum(phone != me for phone in phones))
    if not allowed:
        raise web.HTTPTooManyRequests(reason=LOOKUPS_REFUSED)


def _name_arg(value: object, field: str = "name") -> str:
    try:
        return clean_name(value)
    except FormError as e:
        raise web.HTTPBadRequest(reason=f"{field}: {e}") from None


async def _json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; 400 otherwise."""
    try:
        data = await request.json(loads=json.loads)
    except (ValueError, RecursionError, LookupError):
        # RecursionError: nested too deeply to be a real request; LookupError: an unknown charset
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
    await _lookups(request, me, [msg_to])
    store = request.app[store_key]
    if not await store.user_exists(msg_to):
        raise web.HTTPNotFound(reason="no such user")
    await store.open_dialogue(me, msg_to)
    return web.json_response(await _dialogue(request, me, msg_to), status=201)


async def info(request: web.Request) -> web.Response:
    """GET /chat/info: the logged-in user's phone, name, dialogues, groups, rooms and contacts.

    `rooms` (issue 12, finding 6): the user's own rooms, the private rooms this user
    has given the password for, and the `rooms.listed` newest public rooms; `created_by` is the
    user's own phone on its own rooms and null on the others'. `saved_rooms` (SPEC 13): the
    names of the rooms the user saved, sorted."""
    me, sid_hash = await _login(request)
    store = request.app[store_key]
    account = await store.get_user(me)
    if account is None:
        raise web.HTTPUnauthorized(reason="log in first")
    dialogues = []
    for phone in await store.dialogues_of(me):
        peer = await store.get_user(phone)
        dialogues.append({"msg_to": phone, "name": peer.name if peer else None})
    groups = [{"key": key, "name": name} for key, name in await store.groups_of(me)]
    listed = request.app[config_key].rooms.listed
    rooms = [_room_json(r, me) for r in await store.rooms_for(me, sid_hash, listed)]
    contacts = [await _contact_json(request, c) for c in await store.contacts_of(me)]
    flags = await store.account(me, 0)  # SPEC 10: the client shows the admin page to admins
    return web.json_response({"phone": me, "name": account.name, "dialogues": dialogues,
                              "groups": groups, "rooms": rooms, "contacts": contacts,
                              "saved_rooms": await store.saved_rooms(me),  # SPEC 13: names
                              "admin": bool(flags and flags.admin and not flags.disabled),
                              # so that every device shows the same setting (PATCH /chat/account)
                              "hide_presence": bool(flags and flags.hide_presence)})


async def info_personal(request: web.Request) -> web.Response:
    """GET /chat/info/personal?msg_to=PHONE: receipts and waiting counts both ways (SPEC 4)."""
    me = await _user(request)
    msg_to = request.query.get("msg_to")
    if not is_phone(msg_to):
        raise web.HTTPBadRequest(reason="msg_to must be a phone number of 10 to 15 digits")
    await _lookups(request, me, [msg_to])
    if not await request.app[store_key].user_exists(msg_to):
        raise web.HTTPNotFound(reason="no such user")
    return web.json_response(await _dialogue(request, me, msg_to))


# -- groups (SPEC 4) ----------------------------------------------------------------------------


def _group_json(group: Group,
                members: list[tuple[str, str, str | None]] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"key": group.key, "name": group.name,
                           "participants": group.participants, "admins": group.admins}
    if members is not None:
        out["read"] = {phone: read for phone, _, read in members}  # "read by k of n"
        out["names"] = {phone: name for phone, name, _ in members}
    return out


async def _known_phones(request: web.Request, me: str, phones: list[str]) -> None:
    """404 naming the first phone that has no account; each phone counts as a lookup."""
    await _lookups(request, me, phones)
    store = request.app[store_key]
    for phone in phones:
        if not await store.user_exists(phone):
            raise web.HTTPNotFound(reason=f"no such user: {phone}")


def _refuse_blockers(request: web.Request, me: str, phones: list[str]) -> None:
    """A user who has blocked me cannot be put into a group by me."""
    store = request.app[store_key]
    for phone in phones:
        if store.is_blocked(phone, me):
            raise web.HTTPForbidden(reason=f"{phone} does not accept being added by you")


def _announce_added(request: web.Request, adder: str, key: str, phones: list[str]) -> None:
    """Tell each user put into group `key` by `adder` (issue 12, finding 6: not silently), on
    every receive socket it has: `{"command": "group_added", "msg_from": ADDER, "msg_to": ADDED,
    "message": KEY, "sent_timestamp": SERVER_NOW}` (not stored: /chat/info lists the group)."""
    hub = request.app[hub_key]
    now = server_now()
    for phone in phones:
        if phone != adder:
            hub.push(phone, encode({"command": "group_added", "msg_from": adder, "msg_to": phone,
                                    "message": key, "sent_timestamp": now}))


def group_events(actor: str, before: Group, after: Group | None) -> list[tuple[str, list[str], str]]:
    """What a PATCH by `actor` changed in a group, `before` -> `after` (None: the group is gone,
    its last participant left): (event, members, message) per kind that happened, in the order
    added, removed, left, admin, renamed. `members` are sorted phones: added; removed by
    `actor`; [actor] when it left; granted admin (by the PATCH, or by the store when the last
    admin left); [] for renamed, whose `message` is the new name ("" for the others)."""
    participants = set(after.participants) if after else set()
    gone = set(before.participants) - participants
    events: list[tuple[str, list[str], str]] = []
    for event, members in (("added", participants - set(before.participants)),
                           ("removed", gone - {actor}), ("left", gone & {actor}),
                           ("admin", set(after.admins if after else ()) - set(before.admins))):
        if members:
            events.append((event, sorted(members), ""))
    if after is not None and after.name != before.name:
        events.append(("renamed", [], after.name))
    return events


def _announce_events(request: web.Request, actor: str, before: Group, after: Group | None) -> None:
    """Tell every participant after a PATCH, and everyone it removed, what changed (issue 18;
    pushed on every receive socket, not stored), one frame per kind of change (`group_events`):
    `{"command": "group_event", "msg_from": ACTOR, "msg_to": KEY, "event": EVENT, "members":
    [PHONE], "message": NEW_NAME or "", "sent_timestamp": SERVER_NOW}`. Both states are read
    around the change, so that a concurrent PATCH by someone else may show in this one's frames
    too: a frame says what is, never something that did not happen."""
    events = group_events(actor, before, after)
    if not events:
        return
    hub = request.app[hub_key]
    now = server_now()
    after_participants = after.participants if after else []
    told = sorted(set(after_participants) | (set(before.participants) - set(after_participants)))
    frames = [encode({"command": "group_event", "msg_from": actor, "msg_to": before.key,
                      "event": event, "members": members, "message": message,
                      "sent_timestamp": now})
              for event, members, message in events]
    for phone in told:
        for frame in frames:
            hub.push(phone, frame)


async def _begin_daily(request: web.Request, kind: str, me: str) -> PasswordAttempt:
    """One of the user's `limits.groups_per_day` / `rooms_per_day` (SPEC 10), counted before the
    creation; 429 past it."""
    slot = await request.app[throttle_key].begin_daily(kind, me)
    if slot is None:
        limits = request.app[config_key].limits
        per_day = limits.groups_per_day if kind == "group" else limits.rooms_per_day
        raise web.HTTPTooManyRequests(reason=f"you may create {per_day} {kind}s a day; try tomorrow")
    return slot


async def special_group(request: web.Request) -> web.Response:
    """POST /chat/special/group `{"name", "participants"}`: create a group; the creator is a
    participant and admin; 201 with the group; 404 for an unknown participant; 403 for one who
    has blocked the creator; 429 past `limits.lookups_per_minute` or `limits.groups_per_day`.
    Each participant is told with a `group_added` push."""
    me = await _user(request)
    data = await _json_object(request)
    name = _name_arg(data.get("name"))
    participants = _phones_arg(data.get("participants", []), "participants")
    await _known_phones(request, me, participants)
    _refuse_blockers(request, me, participants)
    store = request.app[store_key]
    slot = await _begin_daily(request, "group", me)
    try:
        while True:  # 62**10 keys: a collision is astronomically rare, but possible
            key = "".join(secrets.choice(_KEY_ALPHABET) for _ in range(10))
            if await store.create_group(key, name, me, participants):
                break
    except BaseException:  # nothing was created (a failed write commits nothing)
        await request.app[throttle_key].refund(slot)
        raise
    _announce_added(request, me, key, participants)
    group = await store.group(key)
    assert group is not None
    return web.json_response(_group_json(group), status=201)


async def _member_group(request: web.Request, me: str) -> Group:
    key = request.query.get("key", "")
    group = await request.app[store_key].group(key) if GROUP_KEY_RE.fullmatch(key) else None
    if group is None:
        raise web.HTTPNotFound(reason="no such group")
    if me not in group.participants:
        raise web.HTTPForbidden(reason="you are not a participant of this group")
    return group


async def info_group(request: web.Request) -> web.Response:
    """GET /chat/info/group?key=KEY: the group with each participant's read position and name
    (participants only)."""
    me = await _user(request)
    group = await _member_group(request, me)
    return web.json_response(_group_json(group, await request.app[store_key].members(group.key)))


async def patch_group(request: web.Request) -> web.Response:
    """PATCH /chat/info/group?key=KEY with any of `{"name", "add", "remove", "admins"}` (admins
    only; any participant may remove themselves, which is leaving). Removed participants are
    dropped from pending lists and their group sockets are closed."""
    me = await _user(request)
    group = await _member_group(request, me)
    data = await _json_object(request)
    unknown = set(data) - {"name", "add", "remove", "admins"}
    if unknown:
        # ascii(): client text in an HTTP reason must not carry line breaks or lone surrogates
        raise web.HTTPBadRequest(reason=f"unknown field(s): {', '.join(map(ascii, sorted(unknown)))}")
    name = _name_arg(data["name"]) if "name" in data else None
    add = _phones_arg(data.get("add", []), "add")
    remove = _phones_arg(data.get("remove", []), "remove")
    admins = _phones_arg(data.get("admins", []), "admins")
    leaving_only = name is None and not add and not admins and remove == [me]
    if me not in group.admins and not leaving_only:
        raise web.HTTPForbidden(reason="only the group's admins may change it")
    await _known_phones(request, me, add)
    _refuse_blockers(request, me, add)
    after = (set(group.participants) | set(add)) - set(remove)
    if not set(admins) <= after:
        raise web.HTTPBadRequest(reason="admins must be participants of the group")
    store = request.app[store_key]
    await store.update_group(group.key, name=name, add=add, remove=remove, admins=admins)
    _announce_added(request, me, group.key,
                    [p for p in add if p not in group.participants and p not in remove])
    hub = request.app[hub_key]
    for phone in remove:
        await hub.close_group_member(group.key, phone)
    updated = await store.group(group.key)
    _announce_events(request, me, group, updated)
    if updated is None:  # the last participant left: the group is gone
        return web.json_response({"key": group.key, "name": group.name, "participants": [],
                                  "admins": []})
    return web.json_response(_group_json(updated, await store.members(group.key)))


# -- rooms (SPEC 4, 5.4) ------------------------------------------------------------------------


def _room_name_arg(value: object) -> str:
    if not isinstance(value, str) or not ROOM_NAME_RE.fullmatch(value):
        raise web.HTTPBadRequest(reason="room_name must be 1 to 64 of A-Z a-z 0-9 _ -")
    return value


def _category_arg(value: object) -> str:
    try:
        return clean_category(value)
    except FormError as e:
        raise web.HTTPBadRequest(reason=str(e)) from None


def _room_json(room: Room, me: str) -> dict[str, Any]:
    """A room as `me` sees it: the creator's phone only to the creator itself (issue 12, finding
    6: a room is no way to collect phone numbers), null to everyone else."""
    return {"room_name": room.name, "created_by": room.created_by if room.created_by == me else None,
            "private": room.private}


async def special_room(request: web.Request) -> web.Response:
    """POST /chat/special/room `{"room_name", "password"?, "category"?}`: create a room (private
    with a password) in a category (SPEC 13: 1-32 characters, `forms.clean_category`; absent or
    null: none); 201 with the room; 400 for a bad field, nothing created; 409 when the name is
    taken; 429 past `limits.rooms_per_day` (counted before the password is hashed, given back
    when nothing was created)."""
    me, sid_hash = await _login(request)
    data = await _json_object(request)
    name = _room_name_arg(data.get("room_name"))
    category = _category_arg(data["category"]) if data.get("category") is not None else None
    password = None
    if data.get("password") is not None:
        try:
            password = clean_password(data["password"])
        except FormError as e:
            raise web.HTTPBadRequest(reason=str(e)) from None
    store, throttle = request.app[store_key], request.app[throttle_key]
    slot = await _begin_daily(request, "room", me)
    created = False
    try:
        password_hash = None
        if password is not None:
            try:
                password_hash = await hash_password(
                    password, request.app[config_key].security.bcrypt_rounds,
                    request.app[password_pool_key], key=request.app[password_hmac_key])
            except PoolFull as e:
                raise web.HTTPServiceUnavailable(reason=str(e)) from None
        created = await store.create_room(name, me, password_hash, category)
        if not created:
            raise web.HTTPConflict(reason="a room with this name exists")
    finally:
        if not created:
            await throttle.refund(slot)
    if password_hash is not None:
        await store.grant_room(sid_hash, name)  # the creator need not type it again
    return web.json_response({"room_name": name, "created_by": me, "private": password_hash is not None},
                             status=201)


async def join_room(request: web.Request) -> web.Response:
    """POST /chat/special/room/join `{"room_name", "password"}`: give a private room's password
    once per user (every later login is let in, issue 18, defect 7); 403 for a wrong one; 429
    past the attempt limits (SPEC 10); 503 while the bcrypt pool is full."""
    me, sid_hash = await _login(request)
    data = await _json_object(request)
    name = _room_name_arg(data.get("room_name"))
    store = request.app[store_key]
    room = await store.room(name)
    if room is None:
        raise web.HTTPNotFound(reason="no such room")
    if room.password_hash is not None:
        # Counted before the password is checked, per address, per room and per pair (SPEC 10);
        # the address counter is the one logins use.
        throttle = request.app[throttle_key]
        attempt = await throttle.begin_attempt(client_address(request), f"room {name}")
        if attempt is None:
            raise web.HTTPTooManyRequests(reason="too many attempts; try again later")
        password = data.get("password")
        try:
            ok = await check_password(password if isinstance(password, str) else "",
                                      room.password_hash, request.app[config_key].security.bcrypt_rounds,
                                      request.app[password_pool_key], key=request.app[password_hmac_key])
        except PoolFull as e:
            await throttle.refund(attempt)
            raise web.HTTPServiceUnavailable(reason=str(e)) from None
        if not ok:
            raise web.HTTPForbidden(reason="wrong password for this room")
        await throttle.refund(attempt)
        await store.grant_room(sid_hash, name)
    return web.json_response(_room_json(room, me))


async def info_room(request: web.Request) -> web.Response:
    """GET /chat/info/room?room_name=NAME: `{"room_name", "created_by", "private"}`, the creator's
    phone to the creator only. A private room is answered too, to everyone (its name is no
    secret: creating a room of that name answers 409 anyway), so that a client sent a link to it
    can ask for its password; what it holds needs the password (ws.room_socket)."""
    me = await _user(request)
    name = _room_name_arg(request.query.get("room_name"))
    room = await request.app[store_key].room(name)
    if room is None:
        raise web.HTTPNotFound(reason="no such room")
    return web.json_response(_room_json(room, me))


# -- the room catalogue (SPEC 13) ------------------------------------------------------------


async def rooms_catalogue(request: web.Request) -> web.Response:
    """GET /chat/rooms?q=TEXT&category=STR: `{"rooms": [{"room_name", "category" (or null),
    "private", "online", "saved", "mine"}]}`, at most MAX_LISTED_ROOMS rooms whose name contains
    `q` (ignoring case; absent or "": every room), in `category` when given (equal; absent or "":
    any), newest first. Private rooms are listed too (joining needs the password). `online`:
    how many users have a socket in the room now, over every process (Hub.room_online); 0 for a
    private room this login session may not enter (its activity is its members' business).
    `saved`: the user saved it; `mine`: the user created it. 400 for a `q` over
    MAX_ROOM_QUERY_CHARS characters, a bad `category` or control characters; 401 logged out."""
    me, sid_hash = await _login(request)
    try:
        q = clean_search(request.query.get("q", ""), MAX_ROOM_QUERY_CHARS)
    except FormError as e:
        raise web.HTTPBadRequest(reason=str(e)) from None
    raw_category = request.query.get("category", "")
    category = _category_arg(raw_category) if raw_category.strip() else None
    store = request.app[store_key]
    rooms = await store.search_rooms(q, category, MAX_LISTED_ROOMS)
    online = await request.app[hub_key].room_online([r.name for r in rooms])
    saved = set(await store.saved_rooms(me))
    # Private rooms this session may enter: its own, and those it gave the password for.
    entered = {r.name for r in await store.rooms_for(me, sid_hash, 0)} \
        if any(r.private for r in rooms) else set()
    return web.json_response({"rooms": [
        {"room_name": r.name, "category": r.category, "private": r.private,
         "online": n if not r.private or r.name in entered else 0,
         "saved": r.name in saved, "mine": r.created_by == me}
        for r, n in zip(rooms, online, strict=True)]})


async def save_room(request: web.Request) -> web.Response:
    """PUT /chat/rooms/saved?room_name=R: save a room (SPEC 13); 204, saving it again too; 404
    for no such room; 409 past MAX_SAVED_ROOMS saved rooms, nothing saved."""
    me = await _user(request)
    name = _room_name_arg(request.query.get("room_name"))
    try:
        saved = await request.app[store_key].save_room(me, name)
    except ValueError as e:
        raise web.HTTPConflict(reason=str(e)) from None
    if not saved:
        raise web.HTTPNotFound(reason="no such room")
    return web.Response(status=204)


async def unsave_room(request: web.Request) -> web.Response:
    """DELETE /chat/rooms/saved?room_name=R: no longer save a room; 204, whether it was saved or
    not; 404 for no such room."""
    me = await _user(request)
    name = _room_name_arg(request.query.get("room_name"))
    store = request.app[store_key]
    if not await store.unsave_room(me, name) and await store.room(name) is None:
        raise web.HTTPNotFound(reason="no such room")
    return web.Response(status=204)


async def close_room(request: web.Request) -> web.Response:
    """DELETE /chat/special/room?room_name=R: its creator closes a room (SPEC 13): deleted with
    its history, attachments, password grants and saved rows (Store.delete_room), and every
    socket in it closed with 4404 in every process (Hub.close_room); 204. 404 for no such room,
    403 for anyone but its creator (nothing changed)."""
    me = await _user(request)
    name = _room_name_arg(request.query.get("room_name"))
    store = request.app[store_key]
    room = await store.room(name)
    if room is None:
        raise web.HTTPNotFound(reason="no such room")
    if room.created_by != me:
        raise web.HTTPForbidden(reason="only the room's creator may close it")
    if not await store.delete_room(name, me):
        raise web.HTTPNotFound(reason="no such room")  # closed meanwhile
    await request.app[hub_key].close_room(name)
    return web.Response(status=204)


# -- contacts and blocks --------------------------------------------------------------------------


async def _contact_json(request: web.Request, contact: Contact) -> dict[str, Any]:
    """A contact with its presence: `online` (bool) and `last_seen` (server format, to the minute,
    or null) when the two share presence (Contact.shares_presence: contacts both ways, no block,
    not hidden); otherwise both are null, "not shared" (issue 12, finding 6)."""
    if not contact.shares_presence:
        return {"phone": contact.phone, "name": contact.name, "online": None, "last_seen": None}
    seen = contact.last_seen_us
    return {"phone": contact.phone, "name": contact.name,
            "online": await request.app[hub_key].is_online(contact.phone),
            "last_seen": server_timestamp(seen - seen % LAST_SEEN_US) if seen else None}


async def info_contacts(request: web.Request) -> web.Response:
    """GET /chat/info/contacts: `{"contacts": [{phone, name, online, last_seen}], "blocked": [...]}`."""
    me = await _user(request)
    store = request.app[store_key]
    return web.json_response({
        "contacts": [await _contact_json(request, c) for c in await store.contacts_of(me)],
        "blocked": await store.blocked_by(me)})


async def special_contact(request: web.Request) -> web.Response:
    """POST /chat/special/contact `{"phone", "name"}`: add (or rename) a contact; 201."""
    me = await _user(request)
    data = await _json_object(request)
    phone = _phone_arg(data.get("phone"), "phone")
    name = _name_arg(data.get("name"))
    await _lookups(request, me, [phone])
    store = request.app[store_key]
    if not await store.user_exists(phone):
        raise web.HTTPNotFound(reason="no such user")
    await store.set_contact(me, phone, name)
    contact = next(c for c in await store.contacts_of(me) if c.phone == phone)
    return web.json_response(await _contact_json(request, contact), status=201)


async def delete_contact(request: web.Request) -> web.Response:
    """DELETE /chat/special/contact?phone=PHONE: remove a contact; 404 when it is not one."""
    me = await _user(request)
    phone = _phone_arg(request.query.get("phone"), "phone")
    if not await request.app[store_key].remove_contact(me, phone):
        raise web.HTTPNotFound(reason="not in your contacts")
    return web.json_response({"phone": phone, "removed": True})


async def special_block(request: web.Request) -> web.Response:
    """POST /chat/special/block `{"phone"}`: refuse that user's messages, typing and groups; 201."""
    me = await _user(request)
    data = await _json_object(request)
    phone = _phone_arg(data.get("phone"), "phone")
    if phone == me:
        raise web.HTTPBadRequest(reason="you cannot block yourself")
    await _lookups(request, me, [phone])
    store = request.app[store_key]
    if not await store.user_exists(phone):
        raise web.HTTPNotFound(reason="no such user")
    await store.block(me, phone)
    return web.json_response({"blocked": await store.blocked_by(me)}, status=201)


async def delete_block(request: web.Request) -> web.Response:
    """DELETE /chat/special/block?phone=PHONE: lift a block; 404 when there was none."""
    me = await _user(request)
    phone = _phone_arg(request.query.get("phone"), "phone")
    store = request.app[store_key]
    if not await store.unblock(me, phone):
        raise web.HTTPNotFound(reason="that user is not blocked")
    return web.json_response({"blocked": await store.blocked_by(me)})
