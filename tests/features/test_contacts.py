"""Contacts, blocks and presence over real sockets: the contact list (add, rename, remove, list)
and the block list of /chat/special/contact, /chat/special/block and /chat/info/contacts; a blocked
sender's `new_msg` and `is_typing` refused with the SPEC 5.5 error while nothing is stored or pushed,
and no group with the blocker; presence pushed to the receive sockets of a user's mutual contacts
(each has the other as a contact, no block either way; issue 12, finding 6) when the first receive
socket opens and the last one closes, and `online` / `last_seen` in /chat/info (tests/features/
test_privacy.py has the one-sided, hidden and blocked cases)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient, AiohttpServer

from chatserver.app import create_app
from chatserver.config import Config
from chatserver.stores.base import Store
from helpers.accounts import PASSWORD, UserFactory
from helpers.backends import db_rows
from helpers.frames import SERVER_TS, assert_error, frame, near_now, new_phone
from helpers.groups import create_group, open_group, send_grp
from helpers.timing import QUIET, TIMEOUT
from helpers.ws import assert_json_error, assert_quiet, open_receive, recv

# The same tests on every store and hub (tests/helpers/backends.py).
pytestmark = pytest.mark.backends

WS = aiohttp.ClientWebSocketResponse
PRESENCE_KEYS = frozenset({"command", "msg_from", "msg_to", "message", "sent_timestamp"})
EVIL = {"Origin": "http://evil.example"}

def assert_presence(data: dict[str, Any], msg_from: str, msg_to: str, state: str) -> None:
    """`data` is the presence push of `msg_from` being `state`, addressed to `msg_to`."""
    assert set(data) == PRESENCE_KEYS, data
    assert (data["command"], data["msg_from"], data["msg_to"], data["message"]) == (
        "presence", msg_from, msg_to, state), data
    assert SERVER_TS.fullmatch(data["sent_timestamp"]), data


async def fetch_msgs(ws: WS, phone: str) -> list[dict[str, Any]]:
    """Every personal message still stored for `phone` (SPEC 5.2 fetch_msgs)."""
    await ws.send_json({"command": "fetch_msgs", "msg_to": phone})
    messages: list[dict[str, Any]] = []
    while True:
        reply = await recv(ws)
        assert reply["command"] == "fetch_msgs", reply
        messages += reply["messages"]
        if reply["all"] == "True":
            return messages


async def get_json(client: TestClient, path: str) -> dict[str, Any]:
    """GET a JSON endpoint that must answer 200."""
    resp = await client.get(path)
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/json"
    return await resp.json()


async def contacts(client: TestClient) -> dict[str, Any]:
    """GET /chat/info/contacts."""
    return await get_json(client, "/chat/info/contacts")


async def add_contact(client: TestClient, phone: str, name: str) -> dict[str, Any]:
    """POST /chat/special/contact, which must succeed with 201."""
    resp = await client.post("/chat/special/contact", json={"phone": phone, "name": name})
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def block(client: TestClient, phone: str) -> dict[str, Any]:
    """POST /chat/special/block, which must succeed with 201."""
    resp = await client.post("/chat/special/block", json={"phone": phone})
    assert resp.status == 201, await resp.text()
    return await resp.json()


def stored_personal(config: Config) -> list[tuple[str, str, str]]:
    """(msg_from, msg_to, message) of every stored personal message, on a connection of its own."""
    return db_rows(config.database,  # type: ignore[return-value]
                   "SELECT msg_from, msg_to, message FROM personal_messages ORDER BY id")


def entry(phone: str, name: str, online: bool | None = None,
          last_seen: str | None = None) -> dict[str, Any]:
    """A contact as the API shows it; `online` None: presence not shared (not a contact both
    ways, issue 12 finding 6)."""
    return {"phone": phone, "name": name, "online": online, "last_seen": last_seen}


# -- contacts -----------------------------------------------------------------------------------


async def test_contacts_start_empty(as_user: UserFactory) -> None:
    client = await as_user(new_phone())
    assert await contacts(client) == {"contacts": [], "blocked": []}
    assert (await get_json(client, "/chat/info"))["contacts"] == []


async def test_add_rename_and_remove_a_contact(as_user: UserFactory) -> None:
    a, b, c = new_phone(), new_phone(), new_phone()
    alice = await as_user(a)
    await as_user(b, name="Bob's own name")
    await as_user(c)
    assert await add_contact(alice, b, "  Bob  ") == entry(b, "Bob")  # trimmed like a form
    assert await add_contact(alice, c, "Carol") == entry(c, "Carol")
    listed = (await contacts(alice))["contacts"]
    assert sorted(listed, key=lambda e: e["phone"]) == [entry(b, "Bob"), entry(c, "Carol")]
    info = await get_json(alice, "/chat/info")
    assert sorted(info["contacts"], key=lambda e: e["phone"]) == [entry(b, "Bob"),
                                                                   entry(c, "Carol")]

    # Posting again renames; the list still holds the contact once.
    assert await add_contact(alice, b, "Robert") == entry(b, "Robert")
    listed = (await contacts(alice))["contacts"]
    assert sorted(listed, key=lambda e: e["phone"]) == [entry(b, "Robert"), entry(c, "Carol")]

    resp = await alice.delete("/chat/special/contact", params={"phone": b})
    assert resp.status == 200
    assert await resp.json() == {"phone": b, "removed": True}
    assert (await contacts(alice))["contacts"] == [entry(c, "Carol")]
    await assert_json_error(await alice.delete("/chat/special/contact", params={"phone": b}), 404)
    assert (await contacts(alice))["contacts"] == [entry(c, "Carol")]


async def test_contacts_belong_to_their_owner(as_user: UserFactory) -> None:
    a, b = new_phone(), new_phone()
    alice, bob = await as_user(a), await as_user(b)
    await add_contact(alice, b, "Bob")
    assert await contacts(bob) == {"contacts": [], "blocked": []}
    # B cannot remove A's contact: for B it is not a contact at all.
    await assert_json_error(await bob.delete("/chat/special/contact", params={"phone": b}), 404)
    assert (await contacts(alice))["contacts"] == [entry(b, "Bob")]


async def test_add_unknown_user_as_contact_is_404(as_user: UserFactory) -> None:
    client = await as_user(new_phone())
    resp = await client.post("/chat/special/contact", json={"phone": new_phone(), "name": "Nobody"})
    await assert_json_error(resp, 404)
    assert (await contacts(client))["contacts"] == []


@pytest.mark.parametrize("phone", ["123456789", "1234567890123456", "12345abcde", "",
                                   "\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669\u0660",
                                   1234567890, None],
                         ids=["9-digits", "16-digits", "letters", "empty", "unicode-digits",
                              "number", "null"])
async def test_contact_bad_phone_is_400(as_user: UserFactory, phone: object) -> None:
    client = await as_user(new_phone())
    resp = await client.post("/chat/special/contact", json={"phone": phone, "name": "X"})
    await assert_json_error(resp, 400)
    resp = await client.post("/chat/special/block", json={"phone": phone})
    await assert_json_error(resp, 400)
    assert await contacts(client) == {"contacts": [], "blocked": []}


@pytest.mark.parametrize("name", ["", "   ", "x" * 65, "a\x00b", "a\nb", 5, None],
                         ids=["empty", "blank", "65-chars", "nul", "newline", "number", "null"])
async def test_contact_bad_name_is_400(as_user: UserFactory, name: object) -> None:
    a, b = new_phone(), new_phone()
    alice = await as_user(a)
    await as_user(b)
    resp = await alice.post("/chat/special/contact", json={"phone": b, "name": name})
    await assert_json_error(resp, 400)
    assert (await contacts(alice))["contacts"] == []


@pytest.mark.parametrize("path", ["/chat/special/contact", "/chat/special/block"])
@pytest.mark.parametrize("query", ["", "?phone=", "?phone=12ab567890"],
                         ids=["missing", "empty", "letters"])
async def test_delete_with_bad_phone_is_400(as_user: UserFactory, path: str, query: str) -> None:
    client = await as_user(new_phone())
    await assert_json_error(await client.delete(f"{path}{query}"), 400)


@pytest.mark.parametrize("body", ["not json", "[]", "null"], ids=["not-json", "array", "null"])
@pytest.mark.parametrize("path", ["/chat/special/contact", "/chat/special/block"])
async def test_post_bad_body_is_400(as_user: UserFactory, path: str, body: str) -> None:
    client = await as_user(new_phone())
    resp = await client.post(path, data=body, headers={"Content-Type": "application/json"})
    await assert_json_error(resp, 400)


async def test_contacts_and_blocks_logged_out_are_401(aiohttp_client: AiohttpClient,
                                                     server: TestServer,
                                                     as_user: UserFactory) -> None:
    b = new_phone()
    await as_user(b)
    client = await aiohttp_client(server)
    await assert_json_error(await client.get("/chat/info/contacts"), 401)
    await assert_json_error(await client.post("/chat/special/contact",
                                              json={"phone": b, "name": "B"}), 401)
    await assert_json_error(await client.delete("/chat/special/contact", params={"phone": b}), 401)
    await assert_json_error(await client.post("/chat/special/block", json={"phone": b}), 401)
    await assert_json_error(await client.delete("/chat/special/block", params={"phone": b}), 401)


async def test_contacts_and_blocks_cross_site_are_403(as_user: UserFactory) -> None:
    a, b, c = new_phone(), new_phone(), new_phone()
    alice = await as_user(a)
    await as_user(b)
    await as_user(c)
    await add_contact(alice, b, "Bob")
    await block(alice, c)
    before = await contacts(alice)
    for resp in (
        await alice.post("/chat/special/contact", json={"phone": c, "name": "C"}, headers=EVIL),
        await alice.post("/chat/special/contact", json={"phone": b, "name": "Renamed"},
                         headers=EVIL),
        await alice.delete("/chat/special/contact", params={"phone": b}, headers=EVIL),
        await alice.post("/chat/special/block", json={"phone": b}, headers=EVIL),
        await alice.delete("/chat/special/block", params={"phone": c}, headers=EVIL),
        await alice.delete("/chat/special/block", params={"phone": c},
                           headers={"Sec-Fetch-Site": "cross-site"}),
    ):
        await assert_json_error(resp, 403)
    assert await contacts(alice) == before == {"contacts": [entry(b, "Bob")], "blocked": [c]}


# -- the block list -----------------------------------------------------------------------------


async def test_block_and_unblock(as_user: UserFactory) -> None:
    a, b, c = new_phone(), new_phone(), new_phone()
    alice = await as_user(a)
    await as_user(b)
    await as_user(c)
    assert await block(alice, c) == {"blocked": [c]}
    assert sorted((await block(alice, b))["blocked"]) == sorted([b, c])
    assert sorted((await block(alice, b))["blocked"]) == sorted([b, c])  # again: no duplicate
    assert sorted((await contacts(alice))["blocked"]) == sorted([b, c])

    resp = await alice.delete("/chat/special/block", params={"phone": c})
    assert resp.status == 200
    assert await resp.json() == {"blocked": [b]}
    await assert_json_error(await alice.delete("/chat/special/block", params={"phone": c}), 404)
    assert (await contacts(alice))["blocked"] == [b]


async def test_block_self_is_400_and_unknown_404(as_user: UserFactory) -> None:
    a = new_phone()
    alice = await as_user(a)
    await assert_json_error(await alice.post("/chat/special/block", json={"phone": a}), 400)
    await assert_json_error(await alice.post("/chat/special/block",
                                             json={"phone": new_phone()}), 404)
    assert (await contacts(alice))["blocked"] == []


async def blocked_pair(as_user: UserFactory) -> tuple[str, str, TestClient, TestClient, WS, WS]:
    """A blocks C while A's receive socket and C's send socket to A are open:
    (a, c, alice, carol, A's receive socket, C's send socket to A)."""
    a, c = new_phone(), new_phone()
    alice, carol = await as_user(a), await as_user(c)
    a_recv = await open_receive(alice, a)
    c_send = await carol.ws_connect(f"/ws/chat/personal/{c}/{a}/")
    await block(alice, c)
    return a, c, alice, carol, a_recv, c_send


async def test_blocked_new_msg_is_refused_and_nothing_is_stored(config: Config,
                                                                as_user: UserFactory) -> None:
    a, c, _, _, a_recv, c_send = await blocked_pair(as_user)
    await c_send.send_json(frame("new_msg", c, a, "let me in"))
    assert_error(await recv(c_send), "new_msg", c, a)
    await assert_quiet(a_recv)
    assert await fetch_msgs(a_recv, a) == []
    assert stored_personal(config) == []
    # The socket stays open; a second try is refused the same way.
    await c_send.send_json(frame("new_msg", c, a, "again"))
    assert_error(await recv(c_send), "new_msg", c, a)
    await assert_quiet(a_recv)
    assert stored_personal(config) == []


async def test_blocked_is_typing_is_refused_and_not_pushed(as_user: UserFactory) -> None:
    a, c, _, _, a_recv, c_send = await blocked_pair(as_user)
    await c_send.send_json(frame("is_typing", c, a))
    assert_error(await recv(c_send), "is_typing", c, a)
    await assert_quiet(a_recv)


async def test_blocked_msg_read_is_refused_and_not_recorded(as_user: UserFactory, store: Store) -> None:
    """A read receipt is refused like new_msg (issue 12, finding 7); nothing recorded or pushed."""
    a, c, alice, _, a_recv, c_send = await blocked_pair(as_user)
    # the device whose receive socket is a_recv: it gets no copy of what it sends (SPEC 7.2)
    a_send = await alice.ws_connect(f"/ws/chat/personal/{a}/{c}/")
    sent = frame("new_msg", a, c, "read me")  # a block is one way: A may write to C
    await a_send.send_json(sent)
    assert (await recv(a_send))["command"] == "msg_sent"
    await c_send.send_json(frame("msg_read", c, a, sent["sent_timestamp"]))
    assert_error(await recv(c_send), "msg_read", c, a, "the recipient has blocked you; nothing was sent")
    await assert_quiet(a_recv)
    assert (await store.dialogue_side(a, c)).last_seen_receiver is None
    # Acknowledging receipt still works: it deletes C's own copy on the server.
    ack = frame("msg_received", c, a, sent["sent_timestamp"])
    await c_send.send_json(ack)
    assert await recv(a_recv) == ack


async def test_blocked_grp_msg_read_is_refused_and_not_pushed(as_user: UserFactory) -> None:
    """S blocked A, then put A in a group (A has not blocked S): A's read receipts of S's group
    messages are refused, under both names, as msg_read is."""
    s_phone, a = new_phone(), new_phone()
    sender, alice = await as_user(s_phone), await as_user(a)
    await block(sender, a)
    key = (await create_group(sender, "news", [a]))["key"]
    s_recv = await open_receive(sender, s_phone)
    s_grp = await open_group(sender, s_phone, key)
    sent = await send_grp(s_grp, s_phone, key, "read me")
    a_grp = await open_group(alice, a, key)
    for command in ("grp_msg_read", "msg_read"):
        await a_grp.send_json(frame(command, a, s_phone, sent["sent_timestamp"]))
        assert_error(await recv(a_grp), command, a, key,  # group sockets answer with the group key
                     "the recipient has blocked you; nothing was sent")
    await assert_quiet(s_recv)


async def test_a_block_is_one_way(config: Config, as_user: UserFactory) -> None:
    """A blocked C; A can still write to C, and C's other peers still get C's messages."""
    a, c, alice, carol, a_recv, c_send = await blocked_pair(as_user)
    d = new_phone()
    dave = await as_user(d)
    d_recv = await open_receive(dave, d)
    c_recv = await open_receive(carol, c)
    a_send = await alice.ws_connect(f"/ws/chat/personal/{a}/{c}/")
    sent = frame("new_msg", a, c, "you may read me")
    await a_send.send_json(sent)
    assert (await recv(a_send))["command"] == "msg_sent"
    assert await recv(c_recv) == sent
    c_to_d = await carol.ws_connect(f"/ws/chat/personal/{c}/{d}/")
    to_d = frame("new_msg", c, d, "hi Dave")
    await c_to_d.send_json(to_d)
    assert (await recv(c_to_d))["command"] == "msg_sent"
    assert await recv(d_recv) == to_d
    assert sorted(stored_personal(config)) == sorted([(a, c, "you may read me"),
                                                      (c, d, "hi Dave")])


async def test_unblock_restores_delivery(as_user: UserFactory) -> None:
    a, c, alice, _, a_recv, c_send = await blocked_pair(as_user)
    await c_send.send_json(frame("new_msg", c, a, "refused"))
    assert_error(await recv(c_send), "new_msg", c, a)
    resp = await alice.delete("/chat/special/block", params={"phone": c})
    assert resp.status == 200
    sent = frame("new_msg", c, a, "delivered")
    await c_send.send_json(sent)
    reply = await recv(c_send)
    assert (reply["command"], reply["message"]) == ("msg_sent", sent["sent_timestamp"]), reply
    assert await recv(a_recv) == sent
    typing = frame("is_typing", c, a)
    await c_send.send_json(typing)
    pushed = await recv(a_recv)
    assert (pushed["command"], pushed["msg_from"], pushed["msg_to"]) == ("is_typing", c, a)
    assert [m["message"] for m in await fetch_msgs(a_recv, a)] == ["delivered"]


async def test_blocked_user_cannot_put_the_blocker_in_a_group(as_user: UserFactory) -> None:
    a, c, d = new_phone(), new_phone(), new_phone()
    alice, carol = await as_user(a), await as_user(c)
    await as_user(d)
    await block(alice, c)
    resp = await carol.post("/chat/special/group", json={"name": "trap", "participants": [a]})
    await assert_json_error(resp, 403)
    resp = await carol.post("/chat/special/group", json={"name": "trap", "participants": [d, a]})
    await assert_json_error(resp, 403)
    assert (await get_json(carol, "/chat/info"))["groups"] == []
    assert (await get_json(alice, "/chat/info"))["groups"] == []

    # Nor add them later to a group of C's.
    resp = await carol.post("/chat/special/group", json={"name": "ok", "participants": [d]})
    assert resp.status == 201, await resp.text()
    key = (await resp.json())["key"]
    resp = await carol.patch(f"/chat/info/group?key={key}", json={"add": [a]})
    await assert_json_error(resp, 403)
    group = await get_json(carol, f"/chat/info/group?key={key}")
    assert sorted(group["participants"]) == sorted([c, d])
    assert (await get_json(alice, "/chat/info"))["groups"] == []

    # Once unblocked, C may.
    assert (await alice.delete("/chat/special/block", params={"phone": c})).status == 200
    resp = await carol.patch(f"/chat/info/group?key={key}", json={"add": [a]})
    assert resp.status == 200, await resp.text()
    assert sorted((await resp.json())["participants"]) == sorted([a, c, d])


async def test_a_block_survives_a_restart(aiohttp_server: AiohttpServer,
                                          aiohttp_client: AiohttpClient, config: Config) -> None:
    async def login(srv: TestServer, phone: str, path: str) -> TestClient:
        client = await aiohttp_client(srv)
        resp = await client.post(path, data={"phone": phone, "name": phone,
                                             "password": PASSWORD}, allow_redirects=False)
        assert resp.status == 302, await resp.text()
        return client

    a, c = new_phone(), new_phone()
    first = await aiohttp_server(create_app(config))
    alice = await login(first, a, "/register")
    await login(first, c, "/register")
    await block(alice, c)
    await first.close()

    second = await aiohttp_server(create_app(config))
    alice, carol = await login(second, a, "/login"), await login(second, c, "/login")
    assert (await contacts(alice))["blocked"] == [c]
    a_recv = await open_receive(alice, a)
    c_send = await carol.ws_connect(f"/ws/chat/personal/{c}/{a}/")
    await c_send.send_json(frame("new_msg", c, a, "after restart"))
    assert_error(await recv(c_send), "new_msg", c, a)
    await assert_quiet(a_recv)
    assert stored_personal(config) == []


# -- presence -----------------------------------------------------------------------------------

# ws.receive_socket records the departure (set_last_seen, then the "offline" push) with awaits in
# the handler's `finally`, after the client has gone: aiohttp cancels that handler when the peer
# disconnects (always in its TestServer, and under run_app(handler_cancellation=True)), so neither
# happens.

async def mutual(alice: TestClient, a: str, bob: TestClient, b: str) -> None:
    """A and B have each other as contacts (named Alice and Bob): they share presence."""
    await add_contact(alice, b, "Bob")
    await add_contact(bob, a, "Alice")


async def test_presence_online_reaches_a_mutual_contact(as_user: UserFactory) -> None:
    a, b = new_phone(), new_phone()
    alice, bob = await as_user(a), await as_user(b)
    await mutual(alice, a, bob, b)
    assert (await contacts(bob))["contacts"] == [entry(a, "Alice", online=False)]
    b_recv = await open_receive(bob, b)
    a1 = await open_receive(alice, a)
    assert_presence(await recv(b_recv), a, b, "online")
    assert (await contacts(bob))["contacts"] == [entry(a, "Alice", online=True)]
    assert (await get_json(bob, "/chat/info"))["contacts"] == [entry(a, "Alice", online=True)]

    # A second tab is not a second arrival, and closing it is not a departure.
    a2 = await open_receive(alice, a)
    await assert_quiet(b_recv)
    await a2.close()
    await assert_quiet(b_recv)
    assert (await contacts(bob))["contacts"] == [entry(a, "Alice", online=True)]
    await a1.close()


async def test_presence_offline_when_the_last_receive_socket_closes(as_user: UserFactory) -> None:
    a, b = new_phone(), new_phone()
    alice, bob = await as_user(a), await as_user(b)
    await mutual(alice, a, bob, b)
    b_recv = await open_receive(bob, b)
    a1 = await open_receive(alice, a)
    assert_presence(await recv(b_recv), a, b, "online")
    a2 = await open_receive(alice, a)
    await a2.close()
    await assert_quiet(b_recv)

    await a1.close()
    assert_presence(await recv(b_recv), a, b, "offline")
    [seen] = (await get_json(bob, "/chat/info"))["contacts"]
    assert (seen["phone"], seen["name"], seen["online"]) == (a, "Alice", False)
    assert isinstance(seen["last_seen"], str) and SERVER_TS.fullmatch(seen["last_seen"]), seen
    # to the minute (issue 12, finding 6): no seconds, so up to a minute before now
    assert seen["last_seen"].endswith(":00.000") and near_now(seen["last_seen"], 120), seen
    assert (await contacts(bob))["contacts"] == [seen]

    # Back online: announced again; last_seen keeps the last departure.
    a3 = await open_receive(alice, a)
    assert_presence(await recv(b_recv), a, b, "online")
    assert (await contacts(bob))["contacts"] == [{**seen, "online": True}]
    await a3.close()
    assert_presence(await recv(b_recv), a, b, "offline")


async def test_presence_goes_both_ways_between_mutual_contacts(as_user: UserFactory) -> None:
    a, d = new_phone(), new_phone()
    alice, dave = await as_user(a), await as_user(d)
    await mutual(alice, a, dave, d)
    d_recv = await open_receive(dave, d)
    a_recv = await open_receive(alice, a)
    assert_presence(await recv(d_recv), a, d, "online")
    await d_recv.close()
    assert_presence(await recv(a_recv), d, a, "offline")
    await a_recv.close()


async def test_presence_skips_offline_and_unrelated_users(as_user: UserFactory) -> None:
    a, b, e = new_phone(), new_phone(), new_phone()
    alice, bob, eve = await as_user(a), await as_user(b), await as_user(e)
    await mutual(alice, a, bob, b)
    e_recv = await open_receive(eve, e)  # online, but not a contact either way
    a_recv = await open_receive(alice, a)  # B, the one watcher, is offline
    b_recv = await open_receive(bob, b)
    await assert_quiet(b_recv)  # arriving later does not replay A's arrival
    await assert_quiet(e_recv)
    assert (await contacts(bob))["contacts"] == [entry(a, "Alice", online=True)]
    await a_recv.close()
    await assert_quiet(e_recv)


async def test_someone_the_user_blocked_gets_no_presence(as_user: UserFactory) -> None:
    a, b, c = new_phone(), new_phone(), new_phone()
    alice, bob, carol = await as_user(a), await as_user(b), await as_user(c)
    await mutual(alice, a, bob, b)
    await add_contact(carol, a, "Alice")
    await add_contact(alice, c, "Carol")  # a contact both ways, and still blocked
    await block(alice, c)
    b_recv, c_recv = await open_receive(bob, b), await open_receive(carol, c)
    a_recv = await open_receive(alice, a)
    # B's push proves A's arrival was announced; C's would have been queued with it.
    assert_presence(await recv(b_recv), a, b, "online")
    await assert_quiet(c_recv)
    await a_recv.close()
    await assert_quiet(c_recv)


async def test_a_removed_contact_gets_no_more_presence(as_user: UserFactory) -> None:
    a, b = new_phone(), new_phone()
    alice, bob = await as_user(a), await as_user(b)
    await mutual(alice, a, bob, b)
    b_recv = await open_receive(bob, b)
    a1 = await open_receive(alice, a)
    assert_presence(await recv(b_recv), a, b, "online")
    await a1.close()
    # Whatever the departure sent, it is over once the contact is removed (a round trip).
    assert (await bob.delete("/chat/special/contact", params={"phone": a})).status == 200
    while True:
        try:
            data = await recv(b_recv, timeout=QUIET)
        except TimeoutError:
            break
        assert_presence(data, a, b, "offline")
    a2 = await open_receive(alice, a)
    await a2.close()
    await assert_quiet(b_recv)


async def test_presence_after_a_quick_reconnect_ends_online(store: Store, as_user: UserFactory,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A page reload: the last receive socket closes and a new one opens while the server is
    still recording the departure. Whatever frames a contact gets, the last must say online,
    since the user is online."""
    a, b = new_phone(), new_phone()
    alice, bob = await as_user(a), await as_user(b)
    await mutual(alice, a, bob, b)
    b_recv = await open_receive(bob, b)
    a1 = await open_receive(alice, a)
    assert_presence(await recv(b_recv), a, b, "online")

    # Hold the departure's write until the new socket is open (a slow disk, made deterministic).
    entered, release, recorded = asyncio.Event(), asyncio.Event(), asyncio.Event()
    set_last_seen = store.set_last_seen

    async def slow_set_last_seen(phone: str, us: int) -> None:
        entered.set()
        await release.wait()
        await set_last_seen(phone, us)
        recorded.set()

    monkeypatch.setattr(store, "set_last_seen", slow_set_last_seen)
    await a1.close()
    async with asyncio.timeout(TIMEOUT):
        await entered.wait()
    a2 = await alice.ws_connect(f"/ws/chat/special/{a}/")
    release.set()
    await a2.send_json({"command": "fetch_grp_msgs", "msg_to": a})
    assert (await recv(a2))["command"] == "fetch_grp_msgs"
    async with asyncio.timeout(TIMEOUT):
        await recorded.wait()

    states = []
    while True:
        try:
            data = await recv(b_recv, timeout=QUIET)
        except TimeoutError:
            break
        assert_presence(data, a, b, data["message"])
        states.append(data["message"])
    assert states and states[-1] == "online", states
    assert (await contacts(bob))["contacts"][0]["online"] is True
    await a2.close()
