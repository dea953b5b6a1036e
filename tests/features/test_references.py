"""Replies, edits, unsending and reactions (SPEC 13, issue 18): the four reference fields on
new_msg, new_grp_msg and room_msg, on every store and hub engine.

- Each field is stored with the message (column `ref`) and carried unchanged, as the one extra
  key, by every frame that carries the message: the push to the recipient, the sender's
  own-device copies (SPEC 7.2), fetch_msgs / fetch_grp_msgs after a reconnect, room history.
  An ordinary message carries no new key (a SPEC 1-6 client sees nothing new).
- Refusals (the error frame, Reason bad_reference, nothing stored): a malformed REF, two fields,
  an edit or unsend of someone else's message, an unsend with text, an edit without text, a
  reaction that is not one emoji.
- A delete_of deletes its original in the same commit: no device still waiting ever gets it
  (recipient's two devices and the sender's second device, all offline), for personal, group
  and room messages; an original already gone is no matter; an original and its delete_of in
  the same group-commit batch works too.
- The send API (POST /api/v1/messages) takes the same fields with the same rules.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any, Final

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient, AiohttpServer

from chatserver.app import create_app
from chatserver.config import Config, Push
from chatserver.keys import store_key
from helpers.accounts import UserFactory, users_on
from helpers.backends import db_rows
from helpers.frames import assert_error, frame, micros, new_instant, new_phone, plain
from helpers.groups import create_group, fetch_grp, open_group, send_grp
from helpers.pushservice import Browser, PushService
from helpers.timing import TIMEOUT
from helpers.ws import (
    WS,
    assert_json_error,
    assert_quiet,
    fetch_all,
    open_personal,
    open_receive,
    recv,
    send_new_msg,
)

pytestmark = [pytest.mark.filterwarnings(
    "ignore::aiohttp.web_exceptions.NotAppKeyWarning:aiohttp_session"), pytest.mark.backends]

FIELDS: Final = ("reply_to", "edit_of", "delete_of", "react_to")
FAMILY: Final = "\U0001F468\u200D\U0001F469\u200D\U0001F467\u200D\U0001F466"  # one grapheme
FLAG: Final = "\U0001F1EB\U0001F1F7"  # France: two regional indicators, one grapheme
THUMBS: Final = "\U0001F44D"


def ref(msg_from: str, sent_timestamp: str) -> dict[str, str]:
    """A REF (SPEC 13)."""
    return {"msg_from": msg_from, "sent_timestamp": sent_timestamp}


def with_ref(sent: dict[str, Any], field: str, target: dict[str, str]) -> dict[str, Any]:
    return {**sent, field: target}


async def send(ws: WS, sent: dict[str, Any]) -> dict[str, Any]:
    """Send a message frame and wait for its msg_sent; returns the frame as sent."""
    await ws.send_json(sent)
    reply = await recv(ws)
    assert reply["command"] == "msg_sent" and reply["message"] == sent["sent_timestamp"], reply
    return sent


async def refused(ws: WS, sent: dict[str, Any], says: str | None = None) -> str:
    """Send a frame that must be refused with the error frame; returns its text."""
    await ws.send_json(sent)
    reply = await recv(ws)
    assert_error(reply, sent["command"], sent["msg_from"], sent["msg_to"], says)
    return str(reply["message"])


def personal_rows(config: Config, msg_from: str, msg_to: str) -> list[tuple[Any, ...]]:
    """(message, ref) of every stored message from msg_from to msg_to, in order."""
    return db_rows(config.database, "SELECT message, ref FROM personal_messages"
                                    " WHERE msg_from = ? AND msg_to = ? ORDER BY id", (msg_from, msg_to))


def messages_of(chunks: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [m for chunk in chunks for m in chunk]


async def dialogue(as_user: UserFactory) -> tuple[str, str, TestClient, TestClient, WS]:
    """Alice and Bob, and Alice's send socket to Bob: (alice, bob, alice's client, bob's, socket)."""
    alice, bob = new_phone(), new_phone()
    a, b = await as_user(alice), await as_user(bob)
    return alice, bob, a, b, await open_personal(a, alice, bob)


# -- personal: each field's round trip ------------------------------------------------------------


@pytest.mark.parametrize("field", FIELDS)
async def test_each_field_is_pushed_copied_and_fetched_unchanged(
        as_user: UserFactory, config: Config, field: str) -> None:
    alice, bob, a, b, ws = await dialogue(as_user)
    bob_ws = await open_receive(b, bob)
    alice_other = await open_receive(await as_user(alice), alice)  # Alice's second device
    original = await send_new_msg(ws, alice, bob, "the original")
    assert await recv(bob_ws) == original  # an ordinary message: no new key
    assert await recv(alice_other) == original
    target = ref(alice, original["sent_timestamp"].replace(" ", "T") + "Z")  # any SPEC 5 form
    text = {"reply_to": "a reply", "edit_of": "the edited text", "delete_of": "",
            "react_to": THUMBS}[field]
    sent = await send(ws, with_ref(frame("new_msg", alice, bob, text), field, target))
    assert await recv(bob_ws) == sent  # the push: the frame as sent, the field included
    assert await recv(alice_other) == sent  # the copy to the sender's other device
    await assert_quiet(bob_ws, alice_other)
    # Stored as the JSON of the one field; a fetch after a reconnect gives it back.
    rows = personal_rows(config, alice, bob)
    assert json.loads(rows[-1][1]) == {field: target}
    assert [r[1] is None for r in rows] == ([False] if field == "delete_of" else [True, False])
    later = await open_receive(await as_user(bob), bob, probe="fetch_grp_msgs")
    got = messages_of(await fetch_all(later, bob))
    expected = [{**original, "sent_timestamp": got[0]["sent_timestamp"]},
                {**sent, "sent_timestamp": got[-1]["sent_timestamp"]}]
    if field == "delete_of":
        expected = expected[1:]  # the original went with the unsend
    assert got == expected
    assert micros(got[-1]["sent_timestamp"]) == micros(sent["sent_timestamp"])
    assert set(got[0]) == ({"msg_from", "msg_to", "message", "command", "sent_timestamp"}
                           | ({field} if field == "delete_of" else set()))


# -- refusals ---------------------------------------------------------------------------------------


BAD_SHAPES: Final = [
    "not an object",
    ["a", "list"],
    {},
    {"msg_from": "4155550100"},
    {"sent_timestamp": "2024-01-01 00:00:00"},
    {"msg_from": "4155550100", "sent_timestamp": "2024-01-01 00:00:00", "extra": 1},
    {"msg_from": "not a phone", "sent_timestamp": "2024-01-01 00:00:00"},
    {"msg_from": 4155550100, "sent_timestamp": "2024-01-01 00:00:00"},
    {"msg_from": "4155550100", "sent_timestamp": "yesterday"},
    {"msg_from": "4155550100", "sent_timestamp": 1700000000},
    {"msg_from": "4155550100", "sent_timestamp": "2024-02-30 00:00:00"},
]


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("bad", BAD_SHAPES, ids=range(len(BAD_SHAPES)))
async def test_a_malformed_ref_is_refused_and_nothing_stored(
        as_user: UserFactory, config: Config, field: str, bad: object) -> None:
    alice, bob, _, _, ws = await dialogue(as_user)
    text = await refused(ws, {**frame("new_msg", alice, bob, "x" if field != "react_to" else THUMBS),
                              field: bad})
    assert field in text
    assert personal_rows(config, alice, bob) == []


async def test_two_fields_are_refused(as_user: UserFactory, config: Config) -> None:
    alice, bob, _, _, ws = await dialogue(as_user)
    target = ref(alice, plain(new_instant()))
    await refused(ws, {**frame("new_msg", alice, bob, "x"), "reply_to": target, "edit_of": target},
                  "a message carries at most one of reply_to, edit_of, delete_of, react_to")
    assert personal_rows(config, alice, bob) == []


@pytest.mark.parametrize("field", ["edit_of", "delete_of"])
async def test_editing_or_unsending_someone_elses_message_is_refused(
        as_user: UserFactory, config: Config, field: str) -> None:
    alice, bob, _, b, ws = await dialogue(as_user)
    bobs = await send_new_msg(await open_personal(b, bob, alice), bob, alice, "bob's own words")
    text = "changed" if field == "edit_of" else ""
    await refused(ws, with_ref(frame("new_msg", alice, bob, text), field,
                               ref(bob, bobs["sent_timestamp"])))
    assert personal_rows(config, alice, bob) == []
    assert [r[0] for r in personal_rows(config, bob, alice)] == ["bob's own words"]  # untouched


@pytest.mark.parametrize(("field", "text", "attachments"), [
    ("delete_of", "not empty", False),
    ("edit_of", "", False),
    ("react_to", THUMBS + THUMBS, False),
    ("react_to", "ab", False),
    ("react_to", "a", False),  # one grapheme, but no emoji
    ("react_to", "\u4e2d", False),  # one grapheme (a Han character), no emoji
    ("react_to", " ", False),
    ("react_to", "\n", False),
    ("react_to", THUMBS * 40, False),
    ("react_to", THUMBS, True),
    ("edit_of", "new text", True),
    ("delete_of", "", True),
    ("reply_to", "", False),  # a reply is an ordinary message: not empty
])
async def test_what_the_message_may_say_is_checked(
        as_user: UserFactory, config: Config, field: str, text: str, attachments: bool) -> None:
    alice, bob, _, _, ws = await dialogue(as_user)
    sent = with_ref(frame("new_msg", alice, bob, text), field, ref(alice, plain(new_instant())))
    if attachments:  # refused before the ids are looked up: they need not exist
        sent["attachments"] = ["A" * 22]
    await refused(ws, sent)
    assert personal_rows(config, alice, bob) == []


async def test_a_message_cannot_refer_to_itself(as_user: UserFactory, config: Config) -> None:
    alice, bob, _, _, ws = await dialogue(as_user)
    sent = frame("new_msg", alice, bob, "")
    await refused(ws, with_ref(sent, "delete_of", ref(alice, sent["sent_timestamp"])))
    assert personal_rows(config, alice, bob) == []


@pytest.mark.parametrize("emoji", [THUMBS, FAMILY, FLAG, "", "1\ufe0f\u20e3"],
                         ids=["thumbs", "family", "flag", "take-back", "keycap"])
async def test_a_reaction_is_one_emoji_or_empty(
        as_user: UserFactory, config: Config, emoji: str) -> None:
    alice, bob, _, b, ws = await dialogue(as_user)
    bob_ws = await open_receive(b, bob)
    bobs = await send_new_msg(await open_personal(b, bob, alice), bob, alice, "a message to react to")
    sent = await send(ws, with_ref(frame("new_msg", alice, bob, emoji), "react_to",
                                   ref(bob, bobs["sent_timestamp"])))
    assert await recv(bob_ws) == sent
    assert personal_rows(config, alice, bob)[0][0] == emoji


# -- unsending: every waiting device -----------------------------------------------------------------


async def test_unsend_drops_the_original_for_every_waiting_device(
        as_user: UserFactory, config: Config) -> None:
    """Bob has two devices and Alice a second one, all offline: after the delete_of, each of
    them fetches only the delete_of, and the original's row is gone."""
    alice, bob = new_phone(), new_phone()
    a = await as_user(alice)
    alice_second = await as_user(alice)
    bob_one, bob_two = await as_user(bob), await as_user(bob)
    ws = await open_personal(a, alice, bob)
    original = await send_new_msg(ws, alice, bob, "oops, wrong chat")
    assert [r[0] for r in personal_rows(config, alice, bob)] == ["oops, wrong chat"]
    unsend = await send(ws, with_ref(frame("new_msg", alice, bob, ""), "delete_of",
                                     ref(alice, original["sent_timestamp"])))
    assert [r[0] for r in personal_rows(config, alice, bob)] == [""]  # the original is gone
    for client, phone in ((bob_one, bob), (bob_two, bob), (alice_second, alice)):
        rs = await open_receive(client, phone)
        got = messages_of(await fetch_all(rs, phone))
        assert [(m["message"], m["delete_of"]) for m in got] == [
            ("", unsend["delete_of"])], (phone, got)


async def test_unsending_a_message_already_gone_is_fine(as_user: UserFactory, config: Config) -> None:
    """The original was acknowledged (deleted) already, or never existed: the delete_of is
    stored and pushed like any message."""
    alice, bob, a, b, ws = await dialogue(as_user)
    bob_ws = await open_receive(b, bob)
    alice_rs = await open_receive(a, alice)
    original = await send_new_msg(ws, alice, bob, "read and gone")
    assert await recv(bob_ws) == original
    bob_send = await open_personal(b, bob, alice)
    await bob_send.send_json(frame("msg_received", bob, alice, original["sent_timestamp"]))
    assert (await recv(alice_rs))["command"] == "msg_received"  # the receipt: it is deleted
    assert personal_rows(config, alice, bob) == []
    for target in (original["sent_timestamp"], plain(new_instant())):
        sent = await send(ws, with_ref(frame("new_msg", alice, bob, ""), "delete_of", ref(alice, target)))
        assert await recv(bob_ws) == sent
    assert [r[0] for r in personal_rows(config, alice, bob)] == ["", ""]


async def test_an_original_and_its_unsend_in_one_batch(as_user: UserFactory, server: TestServer,
                                                       config: Config) -> None:
    """Submitted together, the two writes share one group-commit batch (one runner call): the
    original is stored, then deleted by its delete_of in the same transaction."""
    alice, bob = new_phone(), new_phone()
    await as_user(alice)
    await as_user(bob)
    store = server.app[store_key]
    at, later = plain(new_instant()), new_instant()
    target = json.dumps({"delete_of": ref(alice, at)})
    first = store.add_personal(alice, bob, micros(at), at, "gone before anyone sees it")
    second = store.add_personal(alice, bob, micros(plain(later)), plain(later), "", ref=target)
    stored = await asyncio.gather(first, second)
    assert all(s is not None for s in stored)
    assert personal_rows(config, alice, bob) == [("", target)]
    # A retry of the delete_of deletes nothing more and stores nothing twice.
    assert await store.add_personal(alice, bob, micros(plain(later)), plain(later), "",
                                    ref=target) is None


# -- groups ------------------------------------------------------------------------------------------


def group_rows(config: Config, key: str) -> list[tuple[Any, ...]]:
    return db_rows(config.database, "SELECT msg_from, message, ref FROM group_messages"
                                    " WHERE grp = ? ORDER BY id", (key,))


@pytest.mark.parametrize("field", FIELDS)
async def test_group_fields_are_pushed_copied_and_fetched(
        as_user: UserFactory, config: Config, field: str) -> None:
    alice, bob = new_phone(), new_phone()
    a, b = await as_user(alice), await as_user(bob)
    key = (await create_group(a, "refs", [bob]))["key"]
    bob_ws = await open_receive(b, bob, probe="fetch_msgs")
    alice_other = await open_receive(await as_user(alice), alice, probe="fetch_msgs")
    ws = await open_group(a, alice, key)
    original = await send_grp(ws, alice, key, "the group original")
    pushed_original = await recv(bob_ws)
    assert set(pushed_original) == {"message", "command", "msg_from", "msg_to", "sent_timestamp"}
    await recv(alice_other)
    target = ref(alice, original["sent_timestamp"])  # the real phone, not "KEY-PHONE"
    text = {"reply_to": "re", "edit_of": "fixed", "delete_of": "", "react_to": FAMILY}[field]
    sent = await send(ws, with_ref(frame("new_grp_msg", alice, key, text), field, target))
    pushed = {"message": text, "command": "new_msg", "msg_from": f"{key}-{alice}",
              "sent_timestamp": sent["sent_timestamp"], field: target}
    assert await recv(bob_ws) == {**pushed, "msg_to": bob}
    assert await recv(alice_other) == {**pushed, "msg_to": alice}
    rows = group_rows(config, key)
    assert json.loads(rows[-1][2]) == {field: target}
    later = await open_receive(await as_user(bob), bob, probe="fetch_msgs")
    got = [m for r in await fetch_grp(later, bob) for m in r["messages"]]
    assert [m.get(field) for m in got] == ([target] if field == "delete_of" else [None, target])
    assert got[-1]["message"] == text and got[-1]["msg_from"] == f"{key}-{alice}"


async def test_group_unsend_drops_the_original_for_every_waiting_device(
        as_user: UserFactory, config: Config) -> None:
    alice, bob, carol = new_phone(), new_phone(), new_phone()
    a = await as_user(alice)
    alice_second = await as_user(alice)
    bob_one, bob_two, carol_one = await as_user(bob), await as_user(bob), await as_user(carol)
    key = (await create_group(a, "unsend", [bob, carol]))["key"]
    ws = await open_group(a, alice, key)
    original = await send_grp(ws, alice, key, "not for this group")
    unsend = await send(ws, with_ref(frame("new_grp_msg", alice, key, ""), "delete_of",
                                     ref(alice, original["sent_timestamp"])))
    assert [(r[1], json.loads(r[2])) for r in group_rows(config, key)] == [
        ("", {"delete_of": unsend["delete_of"]})]
    for client, phone in ((bob_one, bob), (bob_two, bob), (carol_one, carol),
                          (alice_second, alice)):
        rs = await open_receive(client, phone, probe="fetch_msgs")
        got = [m for r in await fetch_grp(rs, phone) for m in r["messages"]]
        assert [(m["message"], m["delete_of"]) for m in got] == [("", unsend["delete_of"])], phone


async def test_group_edit_of_another_members_message_is_refused(
        as_user: UserFactory, config: Config) -> None:
    alice, bob = new_phone(), new_phone()
    a, b = await as_user(alice), await as_user(bob)
    key = (await create_group(a, "edits", [bob]))["key"]
    bobs = await send_grp(await open_group(b, bob, key), bob, key, "bob's")
    ws = await open_group(a, alice, key)
    for field, text in (("edit_of", "mine now"), ("delete_of", "")):
        await refused(ws, with_ref(frame("new_grp_msg", alice, key, text), field,
                                   ref(bob, bobs["sent_timestamp"])))
        # nor with the group form of the sender
        await refused(ws, with_ref(frame("new_grp_msg", alice, key, text), field,
                                   {"msg_from": f"{key}-{alice}",
                                    "sent_timestamp": bobs["sent_timestamp"]}))
    assert [r[1] for r in group_rows(config, key)] == ["bob's"]


# -- rooms -------------------------------------------------------------------------------------------


async def new_room(client: TestClient) -> str:
    name = f"refs_{new_phone()}"
    resp = await client.post("/chat/special/room", json={"room_name": name})
    assert resp.status == 201, await resp.text()
    return name


async def open_room(client: TestClient, room: str) -> tuple[WS, list[dict[str, Any]]]:
    ws = await client.ws_connect(f"/ws/chat/room/{room}/")
    history = await recv(ws)
    assert history["command"] == "fetch_room_msgs", history
    return ws, history["messages"]


async def room_send(ws: WS, sent: dict[str, Any]) -> dict[str, Any]:
    await ws.send_json(sent)
    assert await recv(ws) == sent  # the broadcast back is the confirmation
    return sent


def room_rows(config: Config, room: str) -> list[tuple[Any, ...]]:
    return db_rows(config.database, "SELECT message, ref FROM room_messages WHERE room = ?"
                                    " ORDER BY id", (room,))


@pytest.mark.parametrize("field", FIELDS)
async def test_room_fields_are_broadcast_and_in_history(
        as_user: UserFactory, config: Config, field: str) -> None:
    alice, bob = new_phone(), new_phone()
    a, b = await as_user(alice), await as_user(bob)
    room = await new_room(a)
    ws, _ = await open_room(a, room)
    bob_ws, _ = await open_room(b, room)
    original = await room_send(ws, frame("room_msg", alice, room, "room original"))
    assert await recv(bob_ws) == original
    target = ref(alice, original["sent_timestamp"])
    text = {"reply_to": "re", "edit_of": "fixed", "delete_of": "", "react_to": FLAG}[field]
    sent = await room_send(ws, with_ref(frame("room_msg", alice, room, text), field, target))
    assert await recv(bob_ws) == sent
    _, history = await open_room(await as_user(bob), room)
    assert [m.get(field) for m in history] == ([target] if field == "delete_of" else [None, target])
    assert history[-1]["message"] == text
    assert len(room_rows(config, room)) == (1 if field == "delete_of" else 2)


async def test_room_unsend_of_someone_elses_message_is_refused(
        as_user: UserFactory, config: Config) -> None:
    alice, bob = new_phone(), new_phone()
    a, b = await as_user(alice), await as_user(bob)
    room = await new_room(a)
    ws, _ = await open_room(a, room)
    bob_ws, _ = await open_room(b, room)
    bobs = await room_send(bob_ws, frame("room_msg", bob, room, "bob in the room"))
    await recv(ws)
    await refused(ws, with_ref(frame("room_msg", alice, room, ""), "delete_of",
                               ref(bob, bobs["sent_timestamp"])))
    assert [r[0] for r in room_rows(config, room)] == ["bob in the room"]


# -- the send API (SPEC 12) -----------------------------------------------------------------------------


async def test_the_send_api_takes_the_fields_with_the_same_rules(
        as_user: UserFactory, aiohttp_client: AiohttpClient, server: TestServer,
        config: Config) -> None:
    alice, bob = new_phone(), new_phone()
    browser = await as_user(alice)
    resp = await browser.post("/chat/devices/token", json={"label": "script"})
    assert resp.status == 201
    headers = {"Authorization": f"Bearer {(await resp.json())['token']}"}
    script = await aiohttp_client(server)
    bob_ws = await open_receive(await as_user(bob), bob)
    at = plain(new_instant())
    resp = await script.post("/api/v1/messages", headers=headers,
                             json={"msg_to": bob, "message": "alert", "sent_timestamp": at})
    assert resp.status == 201
    await recv(bob_ws)
    edit = {"msg_to": bob, "message": "alert (corrected)", "edit_of": ref(alice, at),
            "sent_timestamp": plain(new_instant())}
    resp = await script.post("/api/v1/messages", headers=headers, json=edit)
    assert resp.status == 201, await resp.text()
    pushed = await recv(bob_ws)
    assert pushed["edit_of"] == ref(alice, at) and pushed["message"] == "alert (corrected)"
    for bad in ({"msg_to": bob, "message": "x", "edit_of": ref(bob, at)},
                {"msg_to": bob, "message": "x", "delete_of": ref(alice, at)},
                {"msg_to": bob, "message": "ab", "react_to": ref(alice, at)},
                {"msg_to": bob, "message": "x", "reply_to": {"msg_from": alice}},
                {"msg_to": bob, "message": "x", "reply_to": ref(alice, at), "edit_of": ref(alice, at)}):
        await assert_json_error(await script.post("/api/v1/messages", headers=headers, json=bad), 400)
    await assert_quiet(bob_ws)
    assert [r[0] for r in personal_rows(config, alice, bob)] == ["alert", "alert (corrected)"]


async def test_chatclient_sends_and_reads_the_fields(
        as_user: UserFactory, server: TestServer) -> None:
    """chatclient (SPEC 12's library): Client.send(..., reply_to= / react_to= / delete_of=) and
    the messages it receives carry the REF (`replying_to` for a reply)."""
    from chatclient import Client, PersonalMessage, RefusedError, ref_of

    alice, bob = new_phone(), new_phone()
    tokens = []
    for phone in (alice, bob):
        resp = await (await as_user(phone)).post("/chat/devices/token", json={"label": "bot"})
        assert resp.status == 201
        tokens.append((await resp.json())["token"])
    base = str(server.make_url("/"))
    got: asyncio.Queue[PersonalMessage] = asyncio.Queue()

    async def handler(msg: Any) -> None:
        await got.put(msg)

    async with Client(base, tokens[0], alice) as a, Client(base, tokens[1], bob) as b:
        listening = asyncio.create_task(b.run(handler))
        try:
            await b.wait_ready(timeout=10)
            sent = await a.send(bob, "question?")
            first = await asyncio.wait_for(got.get(), 10)
            assert first.replying_to is None and first.text == "question?"
            await a.send(bob, "answer", reply_to=ref_of(first))
            reply = await asyncio.wait_for(got.get(), 10)
            assert reply.replying_to == {"msg_from": alice, "sent_timestamp": sent.message}
            assert reply.reply_to == alice  # still where to answer
            await b.send(alice, THUMBS, react_to=ref_of(reply))
            await a.send(bob, "", delete_of=ref_of(reply))
            unsend = await asyncio.wait_for(got.get(), 10)
            assert (unsend.text, unsend.delete_of) == ("", ref_of(reply))
            with pytest.raises(RefusedError):
                await a.send(bob, "mine now", edit_of={"msg_from": bob, "sent_timestamp": sent.message})
        finally:
            listening.cancel()
            await asyncio.gather(listening, return_exceptions=True)


# -- Web Push (SPEC 9) -----------------------------------------------------------------------------------


async def test_no_web_push_for_an_edit_an_unsend_or_a_reaction(
        aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, config: Config) -> None:
    """A reply wakes the recipient's offline device like any message; an edit, an unsend or a
    reaction does not (personal and group): the push after them is the next ordinary message's."""
    push_config = dataclasses.replace(config, push=Push(
        allow_private_endpoints=True, min_interval_seconds=0.0, retry_seconds=0.05, workers=1,
        timeout_seconds=TIMEOUT))
    srv = await aiohttp_server(create_app(push_config))
    login = users_on(aiohttp_client, srv)
    service = await PushService().start()
    try:
        alice, bob = new_phone(), new_phone()
        a, b = await login(alice), await login(bob)
        browser = Browser.subscribe(service)
        resp = await b.post("/chat/push/subscription", json=browser.json())
        assert resp.status == 201, await resp.text()
        ws = await open_personal(a, alice, bob)
        first = await send_new_msg(ws, alice, bob, "first")
        assert browser.payload(await service.next())["sent"] == first["sent_timestamp"]
        target = ref(alice, first["sent_timestamp"])
        reply = await send(ws, with_ref(frame("new_msg", alice, bob, "a reply"), "reply_to", target))
        assert browser.payload(await service.next())["sent"] == reply["sent_timestamp"]
        key = (await create_group(a, "quiet", [bob]))["key"]
        group_ws = await open_group(a, alice, key)
        for field, text in (("edit_of", "edited"), ("react_to", THUMBS), ("delete_of", "")):
            await send(ws, with_ref(frame("new_msg", alice, bob, text), field, target))
            await send(group_ws, with_ref(frame("new_grp_msg", alice, key, text), field, target))
        last = await send_new_msg(ws, alice, bob, "last")
        got = browser.payload(await service.next())
        assert (got["sent"], got["conversation"]) == (last["sent_timestamp"], f"personal:{alice}")
        assert service.count(browser.id) == 3
    finally:
        await service.stop()
