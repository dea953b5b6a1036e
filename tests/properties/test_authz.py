"""Authorization (SPEC 4, 5, 6 "No one acts as someone else"): who may open which socket, send
which frame and call which JSON endpoint, as a matrix over (logged-in user, path user, frame user,
group membership); cross-site requests and handshakes; session cookies; security headers; and
passwords.

The cast: users A, B, C, D; group G = {A (admin), B}, group G2 = {B (admin), C}; stored and
pending: "secret A to B", "secret B to A" and A's group message "secret group message" (for B);
public room R and private room P (both by A; "room secret P" said in P); A's contact B, named
"Bee Secret"; A has blocked D. Every combination that must be refused is refused (403/401 before
any upgrade, a SPEC 5.5 error frame, or a JSON error), refused requests change no row of the
database, and nothing of A's or B's reaches C, D or a logged-out client. The allowed combinations
work, so that each refusal is shown to be caused by what differs.

Already covered elsewhere and not repeated here: the receive and personal handshakes with foreign
Origins (test_ws_errors), cross-site form posts, cookie flags, new session id on login, the timing
of unknown-phone logins (test_pages), cross-site contact and block calls (test_contacts), non-admin
PATCH bodies (test_ws_group).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import re
import sqlite3
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any, Final

import aiohttp
import pytest
from aiohttp import WSServerHandshakeError
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient, AiohttpServer

from chatserver.app import create_app
from chatserver.config import Config
from helpers.accounts import COOKIE, PASSWORD, UserFactory
from helpers.frames import assert_error, frame, new_phone
from helpers.ws import WS, fetch_all, open_personal, open_receive, recv, send_new_msg

WHO: Final = ("none", "A", "B", "C")
ROOM_PASSWORD: Final = "room password P"
SECRETS: Final = ("secret A to B", "secret B to A", "secret group message", "Secret Family",
                  "Bee Secret", "room secret P")
_rooms = itertools.count(1)


def new_room() -> str:
    return f"authz_{next(_rooms)}"


@dataclass
class Cast:
    """See the module docstring."""

    server: TestServer
    db: str
    phones: dict[str, str]  # "A" -> phone
    clients: dict[str, TestClient]  # "A" -> logged-in client, "none" -> logged out
    group: str
    other_group: str
    room: str
    private_room: str
    a_to_b: dict[str, str]  # the stored frames as sent
    b_to_a: dict[str, str]
    group_msg: dict[str, str]

    def __getitem__(self, who: str) -> str:
        return self.phones[who]

    def fill(self, value: Any) -> Any:
        """Replace "<A>", "<G>", "<P>", ... in strings, lists and dicts."""
        names = {**{f"<{k}>": v for k, v in self.phones.items()}, "<G>": self.group,
                 "<G2>": self.other_group, "<R>": self.room, "<P>": self.private_room}
        if isinstance(value, str):
            return names.get(value, value)
        if isinstance(value, list):
            return [self.fill(v) for v in value]
        if isinstance(value, dict):
            return {k: self.fill(v) for k, v in value.items()}
        return value


async def _json(resp: aiohttp.ClientResponse, status: int) -> Any:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    return await resp.json()


async def _open_room(client: TestClient, name: str, **kwargs: Any) -> WS:
    ws = await client.ws_connect(f"/ws/chat/room/{name}/", **kwargs)
    history = await recv(ws)
    assert history["command"] == "fetch_room_msgs", history
    return ws


@pytest.fixture
async def cast(server: TestServer, as_user: UserFactory, aiohttp_client: AiohttpClient,
               config: Config) -> Cast:
    phones = {who: new_phone() for who in "ABCD"}
    clients = {who: await as_user(phone) for who, phone in phones.items()}
    clients["none"] = await aiohttp_client(server)
    a, b, c, d = (phones[w] for w in "ABCD")
    ca, cb = clients["A"], clients["B"]
    group = (await _json(await ca.post("/chat/special/group", json={
        "name": "Secret Family", "participants": [b]}), 201))["key"]
    other_group = (await _json(await cb.post("/chat/special/group", json={
        "name": "Other Family", "participants": [c]}), 201))["key"]
    room, private_room = new_room(), new_room()
    await _json(await ca.post("/chat/special/room", json={"room_name": room,
                                                           "category": "Lobby"}), 201)
    await _json(await ca.post("/chat/special/room", json={"room_name": private_room,
                                                           "password": ROOM_PASSWORD}), 201)
    to_b = await open_personal(ca, a, b)
    a_to_b = await send_new_msg(to_b, a, b, "secret A to B")
    to_a = await open_personal(cb, b, a)
    b_to_a = await send_new_msg(to_a, b, a, "secret B to A")
    group_ws = await ca.ws_connect(f"/ws/chat/group/{a}/{group}/")
    group_msg = frame("new_grp_msg", a, group, "secret group message")
    await group_ws.send_json(group_msg)
    assert (await recv(group_ws))["command"] == "msg_sent"
    p_ws = await _open_room(ca, private_room)
    said = frame("room_msg", a, private_room, "room secret P")
    await p_ws.send_json(said)
    assert await recv(p_ws) == said
    await _json(await ca.post("/chat/special/contact", json={"phone": b, "name": "Bee Secret"}),
                201)
    await _json(await ca.post("/chat/special/block", json={"phone": d}), 201)
    resp = await cb.put("/chat/rooms/saved", params={"room_name": room})  # SPEC 13
    assert resp.status == 204, await resp.text()
    for ws in (to_b, to_a, group_ws, p_ws):
        await ws.close()
    return Cast(server, config.database.path, phones, clients, group, other_group, room,
                private_room, a_to_b, b_to_a, group_msg)


def snapshot(db_path: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, through a read-only connection (closed before returning)."""
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
        tables = [n for (n,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        return {t: sorted(db.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr)
                for t in sorted(tables)}


def assert_no_secrets(text: str) -> None:
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"leaked {leaked}: {text[:300]}"


async def inbox(client: TestClient, phone: str) -> WS:
    """`phone`'s receive socket, served (one fetch answered) so that no later push is missed."""
    ws = await client.ws_connect(f"/ws/chat/special/{phone}/")
    await ws.send_json({"command": "fetch_msgs", "msg_to": phone})
    reply = await recv(ws)
    assert reply["command"] == "fetch_msgs" and reply["all"] == "True", reply
    return ws


async def recv_skipping_presence(ws: WS) -> dict[str, Any]:
    """The next frame that is not a presence frame (A and B are contacts: each one's receive
    socket coming online is announced to the other)."""
    while (got := await recv(ws))["command"] == "presence":
        pass
    return got


async def handshake_status(client: TestClient, path: str, **kwargs: Any) -> int:
    """403/404/... of a refused handshake, or 101 (the socket is closed again)."""
    try:
        ws = await client.ws_connect(path, **kwargs)
    except WSServerHandshakeError as e:
        return e.status
    await ws.close()
    return 101


# -- sockets: (logged-in user) x (path user) x (membership) ----------------------------------------


@pytest.mark.parametrize("kind", ["receive", "personal", "group"])
@pytest.mark.parametrize("path_user", ["A", "B", "C"])
@pytest.mark.parametrize("logged", WHO)
async def test_socket_handshake_matrix(cast: Cast, kind: str, path_user: str,
                                       logged: str) -> None:
    """Open iff the path's user is the logged-in user (and, for a group, a participant); the open
    socket is bound to that user."""
    user = cast[path_user]
    path = {"receive": f"/ws/chat/special/{user}/",
            "personal": f"/ws/chat/personal/{user}/{cast['D']}/",
            "group": f"/ws/chat/group/{user}/{cast.group}/"}[kind]
    allowed = logged == path_user and (kind != "group" or path_user in ("A", "B"))
    client = cast.clients[logged]
    if not allowed:
        assert await handshake_status(client, path) == 403
        return
    ws = await client.ws_connect(path)
    if kind == "receive":
        messages = [m for chunk in await fetch_all(ws, user) for m in chunk]
        assert all(m["msg_to"] == user for m in messages), messages
        expected = {"A": ["secret B to A"], "B": ["secret A to B"], "C": []}[path_user]
        assert [m["message"] for m in messages] == expected
    else:  # the socket answers as the path's user, whatever a frame claims
        await ws.send_json(frame("no such command", cast["A"], cast["A"]))
        peer = cast["D"] if kind == "personal" else cast.group
        assert_error(await recv(ws), "no such command", user, peer)
    await ws.close()


@pytest.mark.parametrize("logged", WHO)
async def test_group_socket_of_a_group_the_user_is_not_in_is_refused(cast: Cast,
                                                                     logged: str) -> None:
    """G2 = {B, C}: A and a logged-out client are refused for every path user; B and C only on
    their own path."""
    for path_user in ("A", "B", "C"):
        path = f"/ws/chat/group/{cast[path_user]}/{cast.other_group}/"
        status = await handshake_status(cast.clients[logged], path)
        allowed = logged == path_user and logged in ("B", "C")
        assert status == (101 if allowed else 403), (path_user, status)


@pytest.mark.parametrize("room", ["public", "private"])
@pytest.mark.parametrize("logged", WHO)
async def test_room_socket_matrix(cast: Cast, logged: str, room: str) -> None:
    """Any logged-in user may join a public room; a private one only with its password given in
    this session (A created it); a logged-out client never. The history goes only to who is in."""
    name = cast.room if room == "public" else cast.private_room
    client = cast.clients[logged]
    allowed = logged != "none" and (room == "public" or logged == "A")
    if not allowed:
        assert await handshake_status(client, f"/ws/chat/room/{name}/") == 403
        return
    ws = await client.ws_connect(f"/ws/chat/room/{name}/")
    history = await recv(ws)
    assert [m["message"] for m in history["messages"]] == (
        [] if room == "public" else ["room secret P"])
    await ws.close()


# -- frames: (logged-in user) x (frame msg_from) ---------------------------------------------------

FRAME_CASES: Final = [
    ("personal", "new_msg"), ("personal", "msg_read"), ("personal", "is_typing"),
    ("group", "new_grp_msg"), ("group", "grp_msg_read"), ("group", "is_grp_typing"),
    ("room", "room_msg"), ("room", "is_room_typing"),
]


@pytest.mark.parametrize("msg_from", ["A", "B", "C"])
@pytest.mark.parametrize("logged", ["A", "B", "C"])
@pytest.mark.parametrize(("kind", "command"), FRAME_CASES)
async def test_frame_msg_from_matrix(cast: Cast, kind: str, command: str, logged: str,
                                     msg_from: str) -> None:
    """A frame is accepted iff its msg_from is the socket's (logged-in) user; a refused one is an
    error frame, changes no row and reaches no one (the next push the peer sees is a legitimate
    one)."""
    me, claimed = cast[logged], cast[msg_from]
    client = cast.clients[logged]
    if kind == "group" and logged == "C":
        assert await handshake_status(client, f"/ws/chat/group/{me}/{cast.group}/") == 403
        return
    # whose pushes to watch, on which socket, and where the frame is addressed
    if kind == "personal":
        peer = cast["B"] if logged == "A" else cast["A"]
        ws, target = await open_personal(client, me, peer), peer
        watch_who = "B" if logged == "A" else "A"
    elif kind == "group":
        ws, target = await client.ws_connect(f"/ws/chat/group/{me}/{cast.group}/"), cast.group
        watch_who = "B" if logged == "A" else "A"
    else:
        ws, target = await _open_room(client, cast.room), cast.room
        watch_who = "D"
    watcher = cast.clients[watch_who]
    watch = (await _open_room(watcher, cast.room) if kind == "room"
             else await inbox(watcher, cast[watch_who]))
    if command == "grp_msg_read":  # names the original sender of a group message
        other = cast["B"] if logged == "A" else cast["A"]
        sent = frame(command, claimed, other, cast.group_msg["sent_timestamp"])
    elif command == "msg_read":
        sent = frame(command, claimed, target, cast.b_to_a["sent_timestamp"])
    else:
        sent = frame(command, claimed, target, f"claimed by {msg_from}")

    before = snapshot(cast.db)
    await ws.send_json(sent)
    if logged != msg_from:
        assert_error(await recv(ws), command, me, target)
        assert snapshot(cast.db) == before
        # the next push the watcher sees is this legitimate one
        if kind == "room":
            proof = frame("room_msg", me, cast.room, "proof")
            await ws.send_json(proof)
            assert await recv(ws) == proof
            assert await recv(watch) == proof
        elif kind == "personal":
            proof = await send_new_msg(ws, me, target, "proof")
            assert await recv(watch) == proof
        else:
            proof = frame("new_grp_msg", me, cast.group, "proof")
            await ws.send_json(proof)
            assert (await recv(ws))["command"] == "msg_sent"
            assert (await recv(watch))["message"] == "proof"
    else:
        if command in ("new_msg", "new_grp_msg"):
            reply = await recv(ws)
            assert (reply["command"], reply["message"]) == ("msg_sent", sent["sent_timestamp"])
        if kind == "room":
            got = await recv(watch)
            expected = "is_typing" if command == "is_room_typing" else "room_msg"
            assert (got["command"], got["msg_from"]) == (expected, me), got
        else:
            got = await recv(watch)
            assert got["msg_from"] in (me, f"{cast.group}-{me}"), got
            assert got["msg_to"] == cast[watch_who], got
    await ws.close()
    await watch.close()


@pytest.mark.parametrize("logged", ["A", "B", "C"])
async def test_receive_socket_frames_answer_only_for_the_sockets_user(cast: Cast,
                                                                      logged: str) -> None:
    """A fetch naming another user's phone is refused; one's own fetch holds only one's own."""
    me = cast[logged]
    ws = await inbox(cast.clients[logged], me)
    for command in ("fetch_msgs", "fetch_grp_msgs"):
        for named in ("A", "B", "C"):
            await ws.send_json({"command": command, "msg_to": cast[named],
                                "msg_from": cast[named]})
            reply = await recv(ws)
            if named != logged:
                assert_error(reply, command, me, me)
                assert_no_secrets(json.dumps(reply))
                continue
            assert reply["command"] == command and reply["all"] == "True", reply
            bodies = [m["message"] for m in reply["messages"]]
            assert all(m["msg_to"] == me for m in reply["messages"]), reply
            expected = {("fetch_msgs", "A"): ["secret B to A"],
                        ("fetch_msgs", "B"): ["secret A to B"],
                        ("fetch_grp_msgs", "B"): ["secret group message"]}
            assert bodies == expected.get((command, logged), []), reply


async def test_only_the_recipient_can_delete_a_message(cast: Cast, as_user: UserFactory) -> None:
    """`msg_received` naming A's message to B, from every socket A, C and D can open, with every
    msg_from, is refused; the message stays until B acknowledges it."""
    a_to_b = cast.a_to_b["sent_timestamp"]
    for logged in ("A", "C", "D"):
        me = cast[logged]
        for peer in ("A", "B", "C", "D"):
            if peer == logged:
                continue
            ws = await open_personal(cast.clients[logged], me, cast[peer])
            for claimed in ("A", "B", logged):
                await ws.send_json(frame("msg_received", cast[claimed], cast[peer], a_to_b))
                assert_error(await recv(ws), "msg_received", me, cast[peer])
            await ws.close()
    group_ws = await cast.clients["A"].ws_connect(f"/ws/chat/group/{cast['A']}/{cast.group}/")
    await group_ws.send_json(frame("grp_msg_received", cast["A"], cast["A"], a_to_b))
    assert_error(await recv(group_ws), "grp_msg_received", cast["A"], cast.group)
    await group_ws.close()

    inbox_b = await inbox(cast.clients["B"], cast["B"])
    [[still]] = await fetch_all(inbox_b, cast["B"])
    assert still["message"] == "secret A to B"
    inbox_a = await inbox(cast.clients["A"], cast["A"])
    ws = await open_personal(cast.clients["B"], cast["B"], cast["A"])
    ack = frame("msg_received", cast["B"], cast["A"], a_to_b)
    await ws.send_json(ack)
    assert await recv_skipping_presence(inbox_a) == ack
    await inbox_b.send_json({"command": "fetch_msgs", "msg_to": cast["B"]})
    assert await recv_skipping_presence(inbox_b) == {"command": "fetch_msgs", "all": "True",
                                                     "messages": []}


async def test_api_edit_and_delete_act_only_on_the_senders_own_messages(cast: Cast) -> None:
    """SPEC 12 + 13 through POST /api/v1/messages with each user's client token: an edit_of or
    delete_of naming another user's message (personal or group, as its recipient, a third user
    or the other party) is refused with 400 and changes no row; a delete_of of one's own REF
    with another's timestamp deletes nothing of theirs; the sender's own delete_of works."""
    tokens = {who: (await _json(await cast.clients[who].post(
        "/chat/devices/token", json={"label": "script"}), 201))["token"] for who in "ABC"}

    async def send(who: str, body: dict[str, Any]) -> aiohttp.ClientResponse:
        return await cast.clients["none"].post("/api/v1/messages", json=cast.fill(body),
                                               headers={"Authorization": f"Bearer {tokens[who]}"})

    def ref(sent: dict[str, str]) -> dict[str, str]:
        return {"msg_from": sent["msg_from"], "sent_timestamp": sent["sent_timestamp"]}

    a_to_b, b_to_a, group_msg = ref(cast.a_to_b), ref(cast.b_to_a), ref(cast.group_msg)
    before = snapshot(cast.db)
    for who, to, reference in [("B", "<A>", a_to_b), ("C", "<B>", a_to_b), ("C", "<A>", a_to_b),
                               ("A", "<B>", b_to_a), ("B", "group:<G>", group_msg),
                               ("B", "<A>", {**a_to_b, "msg_from": "<B>", "extra": "x"})]:
        for field, message in (("delete_of", ""), ("edit_of", "hijacked")):
            resp = await send(who, {"msg_to": cast.fill(to) if to.startswith("<") else
                                    "group:" + cast.group, "message": message, field: reference})
            data = await _json(resp, 400)
            assert set(data) == {"error"}, (who, field, data)
            assert snapshot(cast.db) == before, (who, field, reference)
    # C's own delete_of naming A's timestamp: accepted, and A's message to B stays
    resp = await send("C", {"msg_to": "<B>", "message": "",
                            "delete_of": {**a_to_b, "msg_from": "<C>"}})
    assert resp.status == 201, await resp.text()
    assert "secret A to B" in repr(snapshot(cast.db)["personal_messages"])
    resp = await send("A", {"msg_to": "<B>", "message": "", "delete_of": a_to_b})
    assert resp.status == 201, await resp.text()
    assert "secret A to B" not in repr(snapshot(cast.db)["personal_messages"])


# -- JSON endpoints: (logged-in user) x (what the request names) -----------------------------------

# (id, method, path, query, body, {who: status}); "<A>" etc. are filled in from the cast.
JSON_CASES: Final[list[tuple[str, str, str, dict[str, str], Any, dict[str, int]]]] = [
    ("info", "GET", "/chat/info", {}, None, {"A": 200, "B": 200, "C": 200}),
    ("info-personal-B", "GET", "/chat/info/personal", {"msg_to": "<B>"}, None,
     {"A": 200, "B": 200, "C": 200}),
    ("info-personal-A", "GET", "/chat/info/personal", {"msg_to": "<A>"}, None,
     {"A": 200, "B": 200, "C": 200}),
    ("info-group-G", "GET", "/chat/info/group", {"key": "<G>"}, None,
     {"A": 200, "B": 200, "C": 403}),
    ("info-group-G2", "GET", "/chat/info/group", {"key": "<G2>"}, None,
     {"A": 403, "B": 200, "C": 200}),
    ("patch-rename", "PATCH", "/chat/info/group", {"key": "<G>"}, {"name": "Renamed"},
     {"A": 200, "B": 403, "C": 403}),
    ("patch-add-C", "PATCH", "/chat/info/group", {"key": "<G>"}, {"add": ["<C>"]},
     {"A": 200, "B": 403, "C": 403}),
    ("patch-grant-B", "PATCH", "/chat/info/group", {"key": "<G>"}, {"admins": ["<B>"]},
     {"A": 200, "B": 403, "C": 403}),
    ("patch-remove-A", "PATCH", "/chat/info/group", {"key": "<G>"}, {"remove": ["<A>"]},
     {"A": 200, "B": 403, "C": 403}),
    ("patch-remove-B", "PATCH", "/chat/info/group", {"key": "<G>"}, {"remove": ["<B>"]},
     {"A": 200, "B": 200, "C": 403}),
    ("patch-G2-rename", "PATCH", "/chat/info/group", {"key": "<G2>"}, {"name": "Mine now"},
     {"A": 403, "B": 200, "C": 403}),
    ("contacts", "GET", "/chat/info/contacts", {}, None, {"A": 200, "B": 200, "C": 200}),
    ("delete-contact-B", "DELETE", "/chat/special/contact", {"phone": "<B>"}, None,
     {"A": 200, "B": 404, "C": 404}),
    ("delete-block-D", "DELETE", "/chat/special/block", {"phone": "<D>"}, None,
     {"A": 200, "B": 404, "C": 404}),
    ("contact-as-owner", "POST", "/chat/special/contact", {},
     {"phone": "<B>", "name": "Mallory", "owner": "<A>", "msg_from": "<A>"},
     {"A": 201, "B": 201, "C": 201}),
    ("personal-as-other", "POST", "/chat/special/personal", {},
     {"msg_to": "<B>", "msg_from": "<A>"}, {"A": 201, "B": 201, "C": 201}),
    ("group-as-other", "POST", "/chat/special/group", {},
     {"name": "Impostor", "participants": ["<B>"], "admins": ["<A>"], "creator": "<A>"},
     {"A": 201, "B": 201, "C": 201}),
    ("info-room-P", "GET", "/chat/info/room", {"room_name": "<P>"}, None,
     {"A": 200, "B": 200, "C": 200}),
    ("join-P-wrong", "POST", "/chat/special/room/join", {},
     {"room_name": "<P>", "password": "not the password"}, {"A": 403, "B": 403, "C": 403}),
    ("join-P-right", "POST", "/chat/special/room/join", {},
     {"room_name": "<P>", "password": ROOM_PASSWORD}, {"A": 200, "B": 200, "C": 200}),
    ("create-room", "POST", "/chat/special/room", {}, {"room_name": "fresh_room"},
     {"A": 201, "B": 201, "C": 201}),
    ("block-as-other", "POST", "/chat/special/block", {}, {"phone": "<B>", "blocker": "<A>"},
     {"A": 201, "B": 400, "C": 201}),
    # SPEC 13: the room catalogue, saved rooms, closing a room, a room's category
    ("rooms", "GET", "/chat/rooms", {}, None, {"A": 200, "B": 200, "C": 200}),
    ("rooms-q-category", "GET", "/chat/rooms", {"q": "AUTHZ_", "category": "Lobby"}, None,
     {"A": 200, "B": 200, "C": 200}),
    ("rooms-long-q", "GET", "/chat/rooms", {"q": "x" * 65}, None, {"A": 400, "B": 400, "C": 400}),
    ("rooms-bad-category", "GET", "/chat/rooms", {"category": "Lob\x00by"}, None,
     {"A": 400, "B": 400, "C": 400}),
    ("save-R", "PUT", "/chat/rooms/saved", {"room_name": "<R>"}, None,
     {"A": 204, "B": 204, "C": 204}),
    ("save-P", "PUT", "/chat/rooms/saved", {"room_name": "<P>"}, None,
     {"A": 204, "B": 204, "C": 204}),
    ("save-unknown", "PUT", "/chat/rooms/saved", {"room_name": "no_such_room"}, None,
     {"A": 404, "B": 404, "C": 404}),
    ("save-path", "PUT", "/chat/rooms/saved", {"room_name": "../<R>"}, None,
     {"A": 400, "B": 400, "C": 400}),
    ("unsave-R", "DELETE", "/chat/rooms/saved", {"room_name": "<R>"}, None,
     {"A": 204, "B": 204, "C": 204}),
    ("unsave-unknown", "DELETE", "/chat/rooms/saved", {"room_name": "no_such_room"}, None,
     {"A": 404, "B": 404, "C": 404}),
    ("close-R", "DELETE", "/chat/special/room", {"room_name": "<R>"}, None,
     {"A": 204, "B": 403, "C": 403}),
    ("close-P", "DELETE", "/chat/special/room", {"room_name": "<P>"}, None,
     {"A": 204, "B": 403, "C": 403}),
    ("close-unknown", "DELETE", "/chat/special/room", {"room_name": "no_such_room"}, None,
     {"A": 404, "B": 404, "C": 404}),
    ("close-as-creator", "DELETE", "/chat/special/room",
     {"room_name": "<R>", "created_by": "<A>", "msg_from": "<A>"}, {"created_by": "<A>"},
     {"A": 204, "B": 403, "C": 403}),
    ("create-room-category", "POST", "/chat/special/room", {},
     {"room_name": "fresh_cat_room", "category": " Games "}, {"A": 201, "B": 201, "C": 201}),
    ("create-room-bad-category", "POST", "/chat/special/room", {},
     {"room_name": "bad_cat_room", "category": "Ga\u202emes"}, {"A": 400, "B": 400, "C": 400}),
    # SPEC 12: a session cookie is no client token, SPEC 13 fields or not
    ("api-message-cookie", "POST", "/api/v1/messages", {},
     {"msg_to": "<B>", "message": "hi", "reply_to": {"msg_from": "<B>",
                                                     "sent_timestamp": "2026-01-01 10:00:00"}},
     {"A": 401, "B": 401, "C": 401}),
]


async def _state_of_a(cast: Cast) -> dict[str, Any]:
    """What A sees of A's own things (to compare before and after another user's request)."""
    ca = cast.clients["A"]
    info = await _json(await ca.get("/chat/info"), 200)
    del info["rooms"]  # every room is listed to everyone: another user's new room shows here
    return {"info": info,
            "contacts": await _json(await ca.get("/chat/info/contacts"), 200)}


@pytest.mark.parametrize("logged", WHO)
@pytest.mark.parametrize(("name", "method", "path", "query", "body", "expect"), JSON_CASES,
                         ids=[c[0] for c in JSON_CASES])
async def test_json_endpoint_matrix(cast: Cast, logged: str, name: str, method: str, path: str,
                                    query: dict[str, str], body: Any,
                                    expect: dict[str, int]) -> None:
    """401 logged out; otherwise the status of the table. Refused requests change no row; a body
    naming another user never acts as them; C and logged-out clients see none of A's or B's
    secrets; what A sees of A's own things changes only through A (or B leaving G)."""
    status = 401 if logged == "none" else expect[logged]
    client = cast.clients[logged]
    kwargs: dict[str, Any] = {"params": cast.fill(query)}
    if body is not None:
        kwargs["json"] = cast.fill(body)
    a_before, rows_before = await _state_of_a(cast), snapshot(cast.db)
    resp = await client.request(method, path, **kwargs)
    text = await resp.text()
    assert resp.status == status, text
    if status == 204:  # SPEC 13's PUT/DELETE answers: no body at all
        assert text == "" and resp.content_type != "application/json", (resp.content_type, text)
        data: Any = None
    else:
        assert resp.content_type == "application/json", text
        data = json.loads(text)
    if status >= 400:
        assert set(data) == {"error"} and data["error"], data
        assert snapshot(cast.db) == rows_before
    if logged in ("none", "C"):
        assert_no_secrets(text)
    me = cast[logged] if logged != "none" else None
    if status < 400 and name == "info":
        assert data["phone"] == me
        assert {g["key"] for g in data["groups"]} == (
            {cast.group} if logged == "A" else {cast.group, cast.other_group}
            if logged == "B" else {cast.other_group})
    if status < 400 and name.startswith("info-personal"):
        waiting = {("A", "<B>"): (1, 1), ("B", "<A>"): (1, 1)}.get(
            (logged, query["msg_to"]), (0, 0))
        assert (data["outgoing"]["waiting"], data["incoming"]["waiting"]) == waiting, data
    if status < 400 and name in ("contact-as-owner", "personal-as-other", "group-as-other"):
        if name == "group-as-other":
            assert data["admins"] == [me] and me in data["participants"], data
        if name == "contact-as-owner":
            assert data["phone"] == cast["B"] and data["name"] == "Mallory", data
        if name == "block-as-other":
            assert sorted(data["blocked"]) == sorted(
                [cast["B"], cast["D"]] if logged == "A" else [cast["B"]]), data
    if status < 400 and name.startswith("rooms"):
        listed = {r["room_name"]: r for r in data["rooms"]}
        assert set(listed) == ({cast.room} if name == "rooms-q-category"
                               else {cast.room, cast.private_room}), data
        assert all(r["mine"] == (logged == "A") for r in listed.values()), data
        assert listed[cast.room]["saved"] == (logged == "B"), data  # B's saving is B's only
    if status < 400 and name.startswith(("save", "unsave")):
        saved = (await _json(await client.get("/chat/info"), 200))["saved_rooms"]
        room = cast.fill(query["room_name"])
        assert (room in saved) == name.startswith("save"), saved
    if status < 400 and name.startswith("close"):
        room = cast.fill(query["room_name"])
        gone = await client.get("/chat/info/room", params={"room_name": room})
        assert gone.status == 404
        left = [(t, row) for t, rows in snapshot(cast.db).items() for row in rows if room in row]
        assert left == [], left  # history, grants and saved rows went with the room
    if logged != "A" and not (name == "patch-remove-B" and logged == "B"):
        assert await _state_of_a(cast) == a_before


# -- cross-site requests and handshakes -----------------------------------------------------------

OWN: Final = "{own}"
CROSS_SITE: Final[list[dict[str, str]]] = [
    {"Origin": "http://evil.example"},
    {"Origin": "null"},
    {"Origin": "http://127.0.0.1:1"},
    {"Origin": "https://127.0.0.1"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    {"Sec-Fetch-Site": "cross-site", "Origin": OWN},
]
SAME_SITE: Final[list[dict[str, str]]] = [
    {"Origin": OWN}, {"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"}, {},
]

# Every state-changing JSON endpoint, as (id, who, method, path, query, body, success status).
UNSAFE: Final = [
    ("personal", "A", "POST", "/chat/special/personal", {}, {"msg_to": "<C>"}, 201),
    ("group", "A", "POST", "/chat/special/group", {}, {"name": "x", "participants": ["<C>"]}, 201),
    ("patch-group", "A", "PATCH", "/chat/info/group", {"key": "<G>"}, {"name": "Hijacked"}, 200),
    ("room", "A", "POST", "/chat/special/room", {}, {"room_name": "csrf_room"}, 201),
    ("join", "C", "POST", "/chat/special/room/join", {},
     {"room_name": "<P>", "password": ROOM_PASSWORD}, 200),
    ("contact", "A", "POST", "/chat/special/contact", {}, {"phone": "<C>", "name": "Cee"}, 201),
    ("delete-contact", "A", "DELETE", "/chat/special/contact", {"phone": "<B>"}, None, 200),
    ("block", "A", "POST", "/chat/special/block", {}, {"phone": "<C>"}, 201),
    ("delete-block", "A", "DELETE", "/chat/special/block", {"phone": "<D>"}, None, 200),
    ("room-category", "A", "POST", "/chat/special/room", {},
     {"room_name": "csrf_cat_room", "category": "Games"}, 201),
    ("save-room", "A", "PUT", "/chat/rooms/saved", {"room_name": "<R>"}, None, 204),
    ("unsave-room", "B", "DELETE", "/chat/rooms/saved", {"room_name": "<R>"}, None, 204),
    ("close-room", "A", "DELETE", "/chat/special/room", {"room_name": "<P>"}, None, 204),
]


def _own(server: TestServer) -> str:
    url = server.make_url("/")
    return f"{url.scheme}://{url.host}:{url.port}"


def _headers(template: dict[str, str], server: TestServer) -> dict[str, str]:
    return {k: _own(server) if v == OWN else v for k, v in template.items()}


@pytest.mark.parametrize(("name", "who", "method", "path", "query", "body", "ok"), UNSAFE,
                         ids=[u[0] for u in UNSAFE])
async def test_every_state_changing_endpoint_refuses_cross_site_requests(
        cast: Cast, name: str, who: str, method: str, path: str, query: dict[str, str],
        body: Any, ok: int) -> None:
    client = cast.clients[who]
    kwargs: dict[str, Any] = {"params": cast.fill(query)}
    if body is not None:
        kwargs["json"] = cast.fill(body)
    before = snapshot(cast.db)
    for headers in CROSS_SITE:
        resp = await client.request(method, path, headers=_headers(headers, cast.server), **kwargs)
        data = await _json(resp, 403)
        assert set(data) == {"error"}, (headers, data)
        assert snapshot(cast.db) == before, headers
    # the same request from the server's own pages passes: the refusals were the headers' doing
    resp = await client.request(method, path, headers=_headers({"Origin": OWN}, cast.server),
                                **kwargs)
    assert resp.status == ok, await resp.text()
    assert snapshot(cast.db) != before


@pytest.mark.parametrize("kind", ["receive", "personal", "group", "room", "private-room"])
async def test_every_socket_refuses_a_cross_site_handshake(cast: Cast, kind: str) -> None:
    a = cast["A"]
    path = {"receive": f"/ws/chat/special/{a}/", "personal": f"/ws/chat/personal/{a}/{cast['B']}/",
            "group": f"/ws/chat/group/{a}/{cast.group}/", "room": f"/ws/chat/room/{cast.room}/",
            "private-room": f"/ws/chat/room/{cast.private_room}/"}[kind]
    client = cast.clients["A"]
    for headers in CROSS_SITE:
        status = await handshake_status(client, path, headers=_headers(headers, cast.server))
        assert status == 403, (headers, status)
    for headers in SAME_SITE:
        status = await handshake_status(client, path, headers=_headers(headers, cast.server))
        assert status == 101, (headers, status)


async def test_a_configured_allowed_origin_may_open_sockets_and_patch(
        aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, config: Config) -> None:
    allowed = dataclasses.replace(config, security=dataclasses.replace(
        config.security, allowed_origins=("https://chat.example.org",)))
    server = await aiohttp_server(create_app(allowed))
    a, b = new_phone(), new_phone()
    clients = {}
    for phone in (a, b):
        clients[phone] = await aiohttp_client(server)
        resp = await clients[phone].post("/register", data={
            "phone": phone, "name": "x", "password": PASSWORD}, allow_redirects=False)
        assert resp.status == 302
    group = (await _json(await clients[a].post("/chat/special/group", json={
        "name": "g", "participants": [b]}), 201))["key"]
    room = new_room()
    await _json(await clients[a].post("/chat/special/room", json={"room_name": room}), 201)
    for path in (f"/ws/chat/special/{a}/", f"/ws/chat/personal/{a}/{b}/",
                 f"/ws/chat/group/{a}/{group}/", f"/ws/chat/room/{room}/"):
        good = await handshake_status(clients[a], path,
                                      headers={"Origin": "https://chat.example.org"})
        evil = await handshake_status(clients[a], path,
                                      headers={"Origin": "https://chat.example.org.evil.example"})
        assert (good, evil) == (101, 403), path
    resp = await clients[a].patch("/chat/info/group", params={"key": group}, json={"name": "n"},
                                  headers={"Origin": "https://chat.example.org"})
    assert resp.status == 200, await resp.text()
    resp = await clients[a].patch("/chat/info/group", params={"key": group}, json={"name": "m"},
                                  headers={"Origin": "https://evil.example"})
    assert resp.status == 403


# -- sessions ------------------------------------------------------------------------------------


async def test_a_logged_out_cookie_is_refused_everywhere(
        cast: Cast, aiohttp_client: AiohttpClient) -> None:
    """After logout, a copy of the old cookie opens no socket of any kind and reads or changes
    nothing through any JSON endpoint (the session record is gone server-side)."""
    ca, a = cast.clients["A"], cast["A"]
    cookie = ca.session.cookie_jar.filter_cookies(cast.server.make_url("/"))[COOKIE].value
    copy = await aiohttp_client(cast.server, cookies={COOKIE: cookie})
    assert (await copy.get("/chat/info")).status == 200  # works before the logout
    resp = await ca.post("/logout", allow_redirects=False)
    assert resp.status == 302
    before = snapshot(cast.db)
    for path in (f"/ws/chat/special/{a}/", f"/ws/chat/personal/{a}/{cast['B']}/",
                 f"/ws/chat/group/{a}/{cast.group}/", f"/ws/chat/room/{cast.room}/",
                 f"/ws/chat/room/{cast.private_room}/"):
        assert await handshake_status(copy, path) == 403, path
    for method, path, query, body in [
            ("GET", "/chat/info", {}, None), ("GET", "/chat/info/contacts", {}, None),
            ("GET", "/chat/info/personal", {"msg_to": cast["B"]}, None),
            ("GET", "/chat/info/group", {"key": cast.group}, None),
            ("PATCH", "/chat/info/group", {"key": cast.group}, {"name": "after logout"}),
            ("POST", "/chat/special/personal", {}, {"msg_to": cast["C"]}),
            ("POST", "/chat/special/contact", {}, {"phone": cast["C"], "name": "x"}),
            ("DELETE", "/chat/special/block", {"phone": cast["D"]}, None),
            ("GET", "/chat/rooms", {}, None),
            ("PUT", "/chat/rooms/saved", {"room_name": cast.room}, None),
            ("DELETE", "/chat/rooms/saved", {"room_name": cast.room}, None),
            ("DELETE", "/chat/special/room", {"room_name": cast.room}, None)]:
        resp = await copy.request(method, path, params=query, json=body)
        data = await _json(resp, 401)
        assert set(data) == {"error"}
        assert_no_secrets(json.dumps(data))
    assert snapshot(cast.db) == before
    page = await copy.get("/chat", allow_redirects=False)
    assert (page.status, page.headers.get("Location")) == (302, "/login")


async def test_logout_ends_only_its_own_session(
        cast: Cast, aiohttp_client: AiohttpClient) -> None:
    """A second login of A (another device) keeps working after the first logs out."""
    a = cast["A"]
    other = await aiohttp_client(cast.server)
    resp = await other.post("/login", data={"phone": a, "password": PASSWORD},
                            allow_redirects=False)
    assert resp.status == 302
    assert (await cast.clients["A"].post("/logout", allow_redirects=False)).status == 302
    assert (await cast.clients["A"].get("/chat/info")).status == 401
    assert (await _json(await other.get("/chat/info"), 200))["phone"] == a
    await open_receive(other, a)


# -- security headers ----------------------------------------------------------------------------


class _InlineScripts(HTMLParser):
    """Collects what a strict CSP would block: inline scripts, event handler attributes and
    javascript: URLs."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        if tag == "script" and not names.get("src"):
            self._in_script = True
            self.found.append("inline <script>")
        for key, value in attrs:
            if key.startswith("on"):
                self.found.append(f"{tag} {key}=")
            if value and value.strip().lower().startswith("javascript:"):
                self.found.append(f"{tag} {key}=javascript:")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False


def assert_strict_headers(resp: aiohttp.ClientResponse) -> None:
    """CSP without inline script or eval and with frame-ancestors 'none'; nosniff; a referrer
    policy that sends no path to other sites."""
    csp = resp.headers.get("Content-Security-Policy", "")
    directives = {p[0].lower(): p[1:] for p in (d.split() for d in csp.split(";")) if p}
    assert directives.get("frame-ancestors") == ["'none'"], (resp.url, csp)
    for name in ("script-src", "default-src"):
        sources = directives.get(name)
        assert sources is not None and "'unsafe-inline'" not in sources, (resp.url, csp)
        assert "'unsafe-eval'" not in sources and "*" not in sources, (resp.url, csp)
        assert not any(s.startswith(("data:", "http:", "https:")) for s in sources), csp
    assert directives.get("object-src", directives["default-src"]) in (["'none'"], ["'self'"])
    assert resp.headers.get("X-Content-Type-Options") == "nosniff", resp.url
    assert resp.headers.get("Referrer-Policy") in (
        "no-referrer", "same-origin", "strict-origin", "strict-origin-when-cross-origin"), resp.url


async def test_every_kind_of_response_carries_the_security_headers(cast: Cast) -> None:
    """Pages, redirects, error pages, JSON answers, JSON errors and static files; and no page
    holds inline script for the CSP to block."""
    a, ca = cast["A"], cast.clients["A"]
    pages = ["/chat", f"/chat/personal/{a}/{cast['B']}/", f"/chat/group/{a}/{cast.group}/",
             f"/chat/room/{cast.room}/"]
    for client, path, status in [
            *((ca, p, 200) for p in pages),
            (cast.clients["none"], "/login", 200), (cast.clients["none"], "/register", 200),
            (cast.clients["none"], "/chat", 302), (ca, "/", 302),
            (ca, f"/chat/personal/{cast['B']}/{a}/", 403),
            (cast.clients["C"], f"/chat/group/{cast['C']}/{cast.group}/", 403),
            (ca, "/chat/room/no_such_room/", 404), (ca, "/no/such/page", 404),
            (ca, "/chat/info", 200), (ca, "/chat/info/group?key=QQQQQQQQQQ", 404),
            (cast.clients["none"], "/chat/info", 401), (ca, "/static/app.js", 200)]:
        resp = await client.get(path, allow_redirects=False)
        assert resp.status == status, (path, resp.status)
        assert_strict_headers(resp)
        if resp.content_type == "text/html" and status == 200:
            parser = _InlineScripts()
            parser.feed(await resp.text())
            assert parser.found == [], (path, parser.found)
    for resp in (await cast.clients["none"].post("/login", data={"phone": a, "password": "x"}),
                 await ca.post("/chat/special/personal", json={"msg_to": "nope"})):
        assert resp.status in (400, 401)
        assert_strict_headers(resp)


# -- passwords -----------------------------------------------------------------------------------


@pytest.mark.parametrize("rounds", [4, 5])
async def test_bcrypt_cost_comes_from_the_config(
        aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, config: Config,
        rounds: int) -> None:
    """Accounts registered on the web and private room passwords are hashed at the configured
    cost."""
    cfg = dataclasses.replace(config, security=dataclasses.replace(config.security,
                                                                   bcrypt_rounds=rounds))
    client = await aiohttp_client(await aiohttp_server(create_app(cfg)))
    phone, room = new_phone(), new_room()
    resp = await client.post("/register", data={"phone": phone, "name": "x",
                                                 "password": PASSWORD}, allow_redirects=False)
    assert resp.status == 302
    await _json(await client.post("/chat/special/room", json={"room_name": room,
                                                               "password": ROOM_PASSWORD}), 201)
    with contextlib.closing(sqlite3.connect(f"file:{cfg.database.path}?mode=ro", uri=True)) as db:
        (user_hash,), = db.execute("SELECT password_hash FROM users WHERE phone = ?", (phone,))
        (room_hash,), = db.execute("SELECT password_hash FROM rooms WHERE name = ?", (room,))
    for stored in (bytes(user_hash), bytes(room_hash)):
        # the pre-hashed format (chatserver/auth.py), then bcrypt at the configured cost
        assert re.fullmatch(rb"\$hmac-sha256\$\$2[aby]\$%02d\$[./A-Za-z0-9]{53}" % rounds,
                            stored), stored


async def test_a_password_over_1024_bytes_is_refused_and_every_byte_of_a_long_one_counts(
        aiohttp_client: AiohttpClient, server: TestServer, as_user: UserFactory) -> None:
    """SPEC 4: at most 1024 bytes, refused at registration and for a room with a reason naming
    the limit; a longer passphrase than bcrypt's 72 bytes works, pre-hashed, and each of its
    bytes counts (a login with its first 72 bytes, or one more, or its last one changed, fails)."""
    client = await aiohttp_client(server)
    resp = await client.post("/register", data={"phone": new_phone(), "name": "x",
                                                 "password": "é" * 513}, allow_redirects=False)
    assert resp.status == 400
    assert "1024 bytes" in await resp.text()
    phone, exact = new_phone(), "p" * 200
    owner = await as_user(phone, password=exact)
    resp = await owner.post("/chat/special/room", json={"room_name": new_room(),
                                                         "password": "r" * 1025})
    assert "1024" in (await _json(resp, 400))["error"]
    for attempt, status in ((exact + "x", 401), (exact[:72], 401), (exact[:-1] + "q", 401),
                            (exact[:-1], 401), (exact, 302)):
        resp = await (await aiohttp_client(server)).post(
            "/login", data={"phone": phone, "password": attempt}, allow_redirects=False)
        assert resp.status == status, len(attempt)
