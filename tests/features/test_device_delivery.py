"""Every device gets every message (issue 13, SPEC 7.1 and 7.2), over real sockets, per engine.

A device is one login: `as_user(phone)` logs the phone in again with a cookie jar of its own, so
two calls are two devices of one user. What is tested, rule by rule:

- 7.1: a message waits for each device of its recipient (those at the commit, and those added
  while it is stored) and is pushed to and fetched by each; acknowledgements count per device
  (not per socket); the first one per recipient sends the one receipt, moves
  `last_received_receiver` and takes the recipient out of `pending`, the others push nothing and
  change nothing, and an acknowledgement of what no longer waits for the device is the error
  `couldn't find a message to delete`; `waiting` counts what no device of the recipient
  acknowledged; a device that ends stops waiting; a message no device acknowledged waits for the
  user's next device, also when the user had none at the commit.
- 7.2: the copies of one's own personal and group messages on one's other devices (never on the
  sending one), their acknowledgement (pushing nothing), the same timestamp for a peer's message
  and one's own copy, reads on every receive socket of the reader, and a device added later
  getting no copies of what was sent before it existed.

"Nothing is pushed" and "no error" are shown with ordering barriers, not waits: a `msg_read`
sent afterwards on the same send socket is pushed after anything the earlier frames pushed, to
the peer's and the reader's own receive sockets (`read_barrier`); a frame of an unknown command
sent afterwards is answered after whatever the earlier frames were answered (`no_answer`), and
since an acknowledgement's outcome is known only at its commit, that answer also means it is
committed. Whether a message is still stored is seen by a new device (which gets every message
still stored for its user, SPEC 7.1) or in the database (helpers.backends.db_rows).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from chatserver.config import Config, Database
from chatserver.stores.base import Ack
from chatserver.stores.groupcommit import GroupCommitStore
from helpers.accounts import UserFactory
from helpers.backends import db_rows
from helpers.frames import (
    assert_error,
    assert_server_time,
    frame,
    iso,
    new_instant,
    new_phone,
    plain,
    server_form,
    stamp,
)
from helpers.groups import create_group, group_messages, open_group, pushed, send_grp
from helpers.timing import TIMEOUT, until
from helpers.ws import WS, fetch_all, open_personal, recv, send_new_msg, wait_closed

# The same tests on every store and hub (tests/helpers/backends.py).
pytestmark = pytest.mark.backends

# A command no socket knows: its refusal is the answer `no_answer` waits for.
PROBE = "no_such_command"
NOT_FOUND = "couldn't find a message to delete"


# -- what the server answers ------------------------------------------------------------------


def fetch_form(sent_timestamp: str) -> str:
    """A client `sent_timestamp` as a fetch answers it (SPEC 5.2: ISO 8601 to the µs, UTC)."""
    return iso(datetime.fromisoformat(sent_timestamp.replace("Z", "+00:00")))


def stored(sent: dict[str, str]) -> dict[str, str]:
    """What `fetch_msgs` answers for the `new_msg` frame `sent` (for its recipient's devices and,
    as a copy, for its sender's other devices: the same object, SPEC 7.2)."""
    return {"msg_from": sent["msg_from"], "msg_to": sent["msg_to"], "message": sent["message"],
            "command": "new_msg", "sent_timestamp": fetch_form(sent["sent_timestamp"])}


def grp_stored(sent: dict[str, str], key: str, to: str, pending: list[str]) -> dict[str, Any]:
    """What `fetch_grp_msgs` answers `to` for the `new_grp_msg` frame `sent` in group `key`
    (`to` = the sender itself for a copy), with the participants still `pending`."""
    return {"msg_from": f"{key}-{sent['msg_from']}", "msg_to": to, "message": sent["message"],
            "command": "new_msg", "sent_timestamp": fetch_form(sent["sent_timestamp"]),
            "pending": sorted(pending)}


async def fetched(ws: WS, phone: str, command: str = "fetch_msgs") -> list[dict[str, Any]]:
    """Every message a fetch on receive socket `ws` answers, its chunks joined."""
    return [m for chunk in await fetch_all(ws, phone, command) for m in chunk]


async def open_inbox(client: TestClient, phone: str, personal: list[dict[str, Any]] | None = None,
                     group: list[dict[str, Any]] | None = None) -> WS:
    """Open `phone`'s receive socket on the device `client`, and check that `fetch_msgs` and
    `fetch_grp_msgs` answer exactly `personal` and `group` (default: nothing). A fetch is answered
    only once the socket's loop runs, after its registration for pushes: no push is missed from
    here on."""
    ws = await client.ws_connect(f"/ws/chat/special/{phone}/")
    assert await fetched(ws, phone) == (personal or [])
    assert await fetched(ws, phone, "fetch_grp_msgs") == (group or [])
    return ws


def received(me: str, peer: str, sent: dict[str, str], at: datetime | None = None) -> dict[str, str]:
    """`msg_received` on `me`'s personal socket to `peer` for the message or copy `sent`."""
    return frame("msg_received", me, peer, sent["sent_timestamp"], plain(at) if at else None)


def grp_received(me: str, sender: str, sent: dict[str, str]) -> dict[str, str]:
    """`grp_msg_received` on `me`'s group socket for `sender`'s group message `sent`."""
    return frame("grp_msg_received", me, sender, sent["sent_timestamp"])


def assert_grp_receipt(data: dict[str, Any], key: str, by: str, to: str,
                       sent: dict[str, str]) -> None:
    """`data` is SPEC 5.3's receipt to `to`: participant `by` acknowledged `sent` in `key`."""
    assert set(data) == {"message", "command", "msg_from", "msg_to", "sent_timestamp"}, data
    assert (data["command"], data["msg_from"], data["msg_to"], data["message"]) == (
        "msg_received", f"{key}-{by}", to, sent["sent_timestamp"]), data
    assert_server_time(data["sent_timestamp"])


# -- ordering barriers ------------------------------------------------------------------------


async def no_answer(ws: WS, me: str) -> None:
    """The frames sent on send socket `ws` so far got no answer (no error frame) and are
    committed: a frame of an unknown command goes after them, and the next frame on `ws` must be
    its refusal (answers come in the order of their frames)."""
    await ws.send_json(frame(PROBE, me, me))
    assert_error(await recv(ws), PROBE, me, None)


async def read_barrier(ws: WS, me: str, peer: str, *inboxes: WS) -> None:
    """Nothing reached `inboxes` from the frames sent on `me`'s personal socket `ws` to `peer` so
    far: a `msg_read` goes after them, and it must be the next frame on each of `inboxes` (pass
    every open receive socket of `peer` and of `me`: each gets the read, SPEC 5.1 and 7.2)."""
    read = frame("msg_read", me, peer, stamp())
    await ws.send_json(read)
    for inbox in inboxes:
        assert await recv(inbox) == read


async def grp_read_barrier(ws: WS, me: str, key: str, peer: str, *inboxes: WS) -> None:
    """As `read_barrier`, on `me`'s socket of group `key`: a `grp_msg_read` to participant
    `peer`, next on each of `inboxes` (every open receive socket of `peer` and of `me`)."""
    read = frame("grp_msg_read", me, peer, stamp())
    await ws.send_json(read)
    for inbox in inboxes:
        data = await recv(inbox)
        assert set(data) == {"message", "command", "msg_from", "msg_to", "sent_timestamp"}, data
        assert (data["command"], data["msg_from"], data["msg_to"], data["message"]) == (
            "msg_read", f"{key}-{me}", peer, read["message"]), data
        assert_server_time(data["sent_timestamp"])


# -- devices and what is stored ---------------------------------------------------------------


async def device_id(client: TestClient) -> str:
    """The id of the device `client` is, from its own `GET /chat/devices` (SPEC 7)."""
    resp = await client.get("/chat/devices")
    assert resp.status == 200, await resp.text()
    [mine] = [d["id"] for d in (await resp.json())["devices"] if d["current"]]
    return str(mine)


async def end_device(client: TestClient, how: str, by: TestClient, *sockets: WS) -> None:
    """End the device `client` (SPEC 7): its own logout, or `DELETE /chat/devices?id=` from the
    device `by`; wait until its `sockets` are closed."""
    if how == "logout":
        resp = await client.post("/logout", allow_redirects=False)
        assert resp.status == 302, await resp.text()
    else:
        resp = await by.delete("/chat/devices", params={"id": await device_id(client)})
        assert resp.status == 200, await resp.text()
    for ws in sockets:
        assert await wait_closed(ws) is not None


def personal_bodies(database: Database, msg_from: str, msg_to: str) -> list[str]:
    """The bodies of the personal messages msg_from -> msg_to still stored, oldest first."""
    return [r[0] for r in db_rows(
        database, "SELECT message FROM personal_messages WHERE msg_from = ? AND msg_to = ?"
        " ORDER BY id", (msg_from, msg_to))]


async def dialogue(client: TestClient, msg_to: str) -> dict[str, Any]:
    """GET /chat/info/personal?msg_to= as the client's user (SPEC 4)."""
    resp = await client.get("/chat/info/personal", params={"msg_to": msg_to})
    assert resp.status == 200, await resp.text()
    return await resp.json()


# -- 7.1: personal messages ---------------------------------------------------------------------


async def test_a_message_is_pushed_to_and_fetched_by_each_device_of_the_recipient(
        as_user: UserFactory) -> None:
    a, b = new_phone(), new_phone()
    alice, b1, b2 = await as_user(a), await as_user(b), await as_user(b)
    inbox_b1, inbox_b2 = await open_inbox(b1, b), await open_inbox(b2, b)
    sent = await send_new_msg(await open_personal(alice, a, b), a, b, "for both of B's devices")
    assert await recv(inbox_b1) == sent
    assert await recv(inbox_b2) == sent
    assert await fetched(inbox_b1, b) == [stored(sent)]
    assert await fetched(inbox_b2, b) == [stored(sent)]
    # A device B adds while the message is stored waits for it too.
    await open_inbox(await as_user(b), b, personal=[stored(sent)])


async def test_the_first_devices_acknowledgement_is_the_one_receipt_and_the_other_device_keeps_it(
        as_user: UserFactory) -> None:
    a, b = new_phone(), new_phone()
    alice, b1, b2 = await as_user(a), await as_user(b), await as_user(b)
    inbox_a = await open_inbox(alice, a)
    inbox_b1, inbox_b2 = await open_inbox(b1, b), await open_inbox(b2, b)
    to_b = await open_personal(alice, a, b)
    b1_to_a, b2_to_a = await open_personal(b1, b, a), await open_personal(b2, b, a)
    sent = await send_new_msg(to_b, a, b, "acknowledge me on each device")
    assert await recv(inbox_b1) == sent and await recv(inbox_b2) == sent

    first = received(b, a, sent)
    await b1_to_a.send_json(first)
    assert await recv(inbox_a) == first
    await read_barrier(b1_to_a, b, a, inbox_a, inbox_b1, inbox_b2)  # exactly one receipt
    assert await fetched(inbox_b1, b) == []
    assert await fetched(inbox_b2, b) == [stored(sent)]  # still waits for device 2

    await b2_to_a.send_json(received(b, a, sent))
    await no_answer(b2_to_a, b)  # no error
    await read_barrier(b2_to_a, b, a, inbox_a, inbox_b1, inbox_b2)  # no second receipt
    assert await fetched(inbox_b2, b) == []

    # It waits for no device of B any more: device 1 again, then device 2 again, are refused.
    for ws in (b1_to_a, b2_to_a):
        await ws.send_json(received(b, a, sent))
        assert_error(await recv(ws), "msg_received", b, a, NOT_FOUND)
    await read_barrier(b1_to_a, b, a, inbox_a, inbox_b1, inbox_b2)


async def test_an_acknowledgement_counts_for_the_device_not_for_the_socket(
        as_user: UserFactory) -> None:
    """Two tabs are one device: the second tab's acknowledgement finds nothing waiting for that
    device, while the other device still has the message."""
    a, b = new_phone(), new_phone()
    alice, b1, b2 = await as_user(a), await as_user(b), await as_user(b)
    inbox_a, inbox_b2 = await open_inbox(alice, a), await open_inbox(b2, b)
    sent = await send_new_msg(await open_personal(alice, a, b), a, b, "one device, two tabs")
    assert await recv(inbox_b2) == sent
    tab1, tab2 = await open_personal(b1, b, a), await open_personal(b1, b, a)
    ack = received(b, a, sent)
    await tab1.send_json(ack)
    assert await recv(inbox_a) == ack
    await tab2.send_json(received(b, a, sent))
    assert_error(await recv(tab2), "msg_received", b, a, NOT_FOUND)
    await read_barrier(tab2, b, a, inbox_a, inbox_b2)
    assert await fetched(inbox_b2, b) == [stored(sent)]


async def test_waiting_and_last_received_move_only_with_the_first_device_per_message(
        as_user: UserFactory) -> None:
    """`waiting` counts what no device of B acknowledged: not B's other device, nor the copies
    waiting for A's second device; a later device's acknowledgement leaves
    `last_received_receiver` where the first one put it."""
    a, b = new_phone(), new_phone()
    a1, a2, b1, b2 = await as_user(a), await as_user(a), await as_user(b), await as_user(b)
    inbox_a1, inbox_a2 = await open_inbox(a1, a), await open_inbox(a2, a)
    to_b = await open_personal(a1, a, b)
    b1_to_a, b2_to_a = await open_personal(b1, b, a), await open_personal(b2, b, a)
    m1 = await send_new_msg(to_b, a, b, "one")
    m2 = await send_new_msg(to_b, a, b, "two")
    assert [await recv(inbox_a2), await recv(inbox_a2)] == [m1, m2]  # the copies

    async def state(expected: dict[str, Any]) -> None:
        assert (await dialogue(a1, b))["outgoing"] == expected
        assert (await dialogue(b1, a))["incoming"] == expected

    await state({"last_received_receiver": None, "last_seen_receiver": None, "waiting": 2})
    t1, t2, t3 = new_instant(), new_instant(), new_instant()
    first = received(b, a, m1, t1)
    await b2_to_a.send_json(first)
    assert await recv(inbox_a1) == first and await recv(inbox_a2) == first
    await state({"last_received_receiver": server_form(t1), "last_seen_receiver": None,
                 "waiting": 1})
    await b1_to_a.send_json(received(b, a, m1, t2))  # device 1, later: changes nothing
    await no_answer(b1_to_a, b)
    await state({"last_received_receiver": server_form(t1), "last_seen_receiver": None,
                 "waiting": 1})
    last = received(b, a, m2, t3)
    await b1_to_a.send_json(last)
    assert await recv(inbox_a1) == last and await recv(inbox_a2) == last
    # m2 still waits for B's device 2 and both wait as copies for A's device 2: none counts.
    await state({"last_received_receiver": server_form(t3), "last_seen_receiver": None,
                 "waiting": 0})


# -- 7.1: devices that end, users without devices ----------------------------------------------------


@pytest.mark.parametrize("how", ["logout", "delete"])
async def test_a_device_that_ends_stops_waiting(as_user: UserFactory, config: Config,
                                                 how: str) -> None:
    """m1 is acknowledged on device 1 and still waits for device 2; device 2 ends (its logout,
    or `DELETE /chat/devices` from device 1): m1 is deleted. m2, which no device acknowledged,
    stays for device 1 and for B's next device."""
    a, b = new_phone(), new_phone()
    alice, b1, b2 = await as_user(a), await as_user(b), await as_user(b)
    inbox_a = await open_inbox(alice, a)
    inbox_b1, inbox_b2 = await open_inbox(b1, b), await open_inbox(b2, b)
    to_b, b1_to_a = await open_personal(alice, a, b), await open_personal(b1, b, a)
    m1 = await send_new_msg(to_b, a, b, "acknowledged on device 1")
    m2 = await send_new_msg(to_b, a, b, "acknowledged by no device")
    for inbox in (inbox_b1, inbox_b2):
        assert [await recv(inbox), await recv(inbox)] == [m1, m2]
    ack = received(b, a, m1)
    await b1_to_a.send_json(ack)
    assert await recv(inbox_a) == ack

    # Control: while device 2 waits for m1 it is stored, and a device added now gets it too
    # (then ends, so that only device 2 keeps it).
    bx = await as_user(b)
    inbox_bx = await open_inbox(bx, b, personal=[stored(m1), stored(m2)])
    await end_device(bx, "logout", b1, inbox_bx)
    assert personal_bodies(config.database, a, b) == [m1["message"], m2["message"]]

    await end_device(b2, how, b1, inbox_b2)
    assert personal_bodies(config.database, a, b) == [m2["message"]]
    await open_inbox(await as_user(b), b, personal=[stored(m2)])
    assert await fetched(inbox_b1, b) == [stored(m2)]


@pytest.mark.parametrize("when", ["no-device-at-commit", "every-device-ended-after"])
async def test_a_message_no_device_acknowledged_waits_for_the_next_device(
        as_user: UserFactory, when: str) -> None:
    a, b = new_phone(), new_phone()
    alice = await as_user(a)
    b0 = await as_user(b)
    inbox_a, to_b = await open_inbox(alice, a), await open_personal(alice, a, b)
    if when == "no-device-at-commit":
        await end_device(b0, "logout", alice)  # registered, then logged out: no device
        sent = await send_new_msg(to_b, a, b, "for whoever logs in next")
    else:
        b1, b2 = b0, await as_user(b)
        inbox_b1, inbox_b2 = await open_inbox(b1, b), await open_inbox(b2, b)
        sent = await send_new_msg(to_b, a, b, "for whoever logs in next")
        assert await recv(inbox_b1) == sent and await recv(inbox_b2) == sent
        await end_device(b1, "logout", b2, inbox_b1)
        await end_device(b2, "delete", b2, inbox_b2)  # B has no device now
    b3 = await as_user(b)
    inbox_b3 = await open_inbox(b3, b, personal=[stored(sent)])
    ack = received(b, a, sent)
    await (await open_personal(b3, b, a)).send_json(ack)
    assert await recv(inbox_a) == ack  # the first acknowledgement of B's: the receipt
    assert await fetched(inbox_b3, b) == []


# -- 7.1: groups --------------------------------------------------------------------------------


async def test_group_pending_lists_who_no_device_acknowledged_and_each_participant_sends_one_receipt(
        as_user: UserFactory, config: Config) -> None:
    a, b, c = new_phone(), new_phone(), new_phone()
    alice, b1, b2, carol = await as_user(a), await as_user(b), await as_user(b), await as_user(c)
    key = (await create_group(alice, "two devices", [b, c]))["key"]
    inbox_a, inbox_c = await open_inbox(alice, a), await open_inbox(carol, c)
    inbox_b1, inbox_b2 = await open_inbox(b1, b), await open_inbox(b2, b)
    a_grp = await open_group(alice, a, key)
    b1_grp, b2_grp = await open_group(b1, b, key), await open_group(b2, b, key)
    c_grp = await open_group(carol, c, key)

    sent = await send_grp(a_grp, a, key, "for every device of every participant")
    for inbox, to in ((inbox_b1, b), (inbox_b2, b), (inbox_c, c)):
        assert await recv(inbox) == pushed(sent, key, to)
    assert await fetched(inbox_c, c, "fetch_grp_msgs") == [grp_stored(sent, key, c, [b, c])]

    await b1_grp.send_json(grp_received(b, a, sent))
    assert_grp_receipt(await recv(inbox_a), key, b, a, sent)
    await grp_read_barrier(b1_grp, b, key, a, inbox_a, inbox_b1, inbox_b2)  # exactly one receipt
    assert await fetched(inbox_b1, b, "fetch_grp_msgs") == []
    # Still waiting for B's device 2, but B is no longer pending.
    assert await fetched(inbox_b2, b, "fetch_grp_msgs") == [grp_stored(sent, key, b, [c])]
    assert await fetched(inbox_c, c, "fetch_grp_msgs") == [grp_stored(sent, key, c, [c])]

    await b2_grp.send_json(grp_received(b, a, sent))
    await no_answer(b2_grp, b)  # no error
    await grp_read_barrier(b2_grp, b, key, a, inbox_a, inbox_b1, inbox_b2)  # no second receipt
    assert await fetched(inbox_b2, b, "fetch_grp_msgs") == []
    assert await fetched(inbox_c, c, "fetch_grp_msgs") == [grp_stored(sent, key, c, [c])]
    await b1_grp.send_json(grp_received(b, a, sent))
    assert_error(await recv(b1_grp), "grp_msg_received", b, key, NOT_FOUND)
    assert [m for _, _, m in group_messages(config.database, key)] == [sent["message"]]

    await c_grp.send_json(grp_received(c, a, sent))
    assert_grp_receipt(await recv(inbox_a), key, c, a, sent)
    assert await fetched(inbox_c, c, "fetch_grp_msgs") == []
    assert group_messages(config.database, key) == []  # every device of every participant


# -- 7.2: copies of one's own messages ----------------------------------------------------------


@pytest.mark.parametrize("order", ["copy-first", "peer-first"])
async def test_a_personal_message_is_copied_to_the_senders_other_devices(
        as_user: UserFactory, config: Config, order: str) -> None:
    """A1 sends: A2 gets the frame as sent (pushed and fetched), A1 nothing; A2 acknowledges the
    copy on its socket to B, which pushes nothing; the message is deleted only when both B and
    A2 have acknowledged, in either order."""
    a, b = new_phone(), new_phone()
    a1, a2, bob = await as_user(a), await as_user(a), await as_user(b)
    inbox_a1, inbox_a2, inbox_b = await open_inbox(a1, a), await open_inbox(a2, a), await open_inbox(bob, b)
    a1_to_b, a2_to_b = await open_personal(a1, a, b), await open_personal(a2, a, b)
    b_to_a = await open_personal(bob, b, a)

    sent = await send_new_msg(a1_to_b, a, b, "sent from my laptop")
    assert await recv(inbox_b) == sent
    assert await recv(inbox_a2) == sent  # msg_from is A itself, msg_to the peer
    await read_barrier(a1_to_b, a, b, inbox_a1, inbox_a2, inbox_b)  # no copy for the sender
    assert await fetched(inbox_a1, a) == []
    assert await fetched(inbox_a2, a) == [stored(sent)]

    async def copy_acknowledged() -> None:
        await a2_to_b.send_json(received(a, b, sent))
        await no_answer(a2_to_b, a)
        await read_barrier(a2_to_b, a, b, inbox_a1, inbox_a2, inbox_b)  # nothing pushed to B
        assert await fetched(inbox_a2, a) == []

    async def peer_acknowledged() -> None:
        ack = received(b, a, sent)
        await b_to_a.send_json(ack)
        assert await recv(inbox_a1) == ack and await recv(inbox_a2) == ack
        assert await fetched(inbox_b, b) == []

    if order == "copy-first":
        await copy_acknowledged()
        assert personal_bodies(config.database, a, b) == [sent["message"]]  # B has not got it
        assert await fetched(inbox_b, b) == [stored(sent)]
        await peer_acknowledged()
    else:
        await peer_acknowledged()
        assert personal_bodies(config.database, a, b) == [sent["message"]]  # A2 has not got it
        assert await fetched(inbox_a2, a) == [stored(sent)]
        await copy_acknowledged()
    assert personal_bodies(config.database, a, b) == []
    await open_inbox(await as_user(a), a)
    await open_inbox(await as_user(b), b)
    await a2_to_b.send_json(received(a, b, sent))
    assert_error(await recv(a2_to_b), "msg_received", a, b, NOT_FOUND)


async def test_a_retry_is_copied_once(as_user: UserFactory) -> None:
    a, b = new_phone(), new_phone()
    a1, a2 = await as_user(a), await as_user(a)
    await as_user(b)
    inbox_a2, to_b = await open_inbox(a2, a), await open_personal(a1, a, b)
    sent = await send_new_msg(to_b, a, b, "only once")
    assert await recv(inbox_a2) == sent
    await send_new_msg(to_b, a, b, "only once", sent["sent_timestamp"])  # msg_sent again
    await read_barrier(to_b, a, b, inbox_a2)
    assert await fetched(inbox_a2, a) == [stored(sent)]


async def test_a_peer_message_and_an_own_copy_with_the_same_timestamp_are_acknowledged_in_turn(
        as_user: UserFactory, config: Config) -> None:
    """SPEC 7.2: `msg_received` on A's socket to B looks first for B's message to A waiting for
    the device, then for A's own copy. A2 holds both, with one sent_timestamp."""
    a, b = new_phone(), new_phone()
    a1, a2, bob = await as_user(a), await as_user(a), await as_user(b)
    inbox_a1, inbox_a2, inbox_b = await open_inbox(a1, a), await open_inbox(a2, a), await open_inbox(bob, b)
    a1_to_b, a2_to_b = await open_personal(a1, a, b), await open_personal(a2, a, b)
    b_to_a = await open_personal(bob, b, a)
    when = stamp()
    from_b = await send_new_msg(b_to_a, b, a, "B's, for A", when)
    from_a = await send_new_msg(a1_to_b, a, b, "A's, for B", when)
    assert await recv(inbox_a1) == from_b
    assert [await recv(inbox_a2), await recv(inbox_a2)] == [from_b, from_a]
    assert await recv(inbox_b) == from_a
    assert await fetched(inbox_a2, a) == [stored(from_b), stored(from_a)]
    assert await fetched(inbox_a1, a) == [stored(from_b)]

    first = received(a, b, from_b)  # names `when`, as from_a would
    await a2_to_b.send_json(first)
    assert await recv(inbox_b) == first  # B's message: B gets the receipt
    assert await fetched(inbox_a2, a) == [stored(from_a)]
    assert await fetched(inbox_a1, a) == [stored(from_b)]  # still waits for A1

    await a2_to_b.send_json(received(a, b, from_a))  # the copy: nothing pushed, no error
    await no_answer(a2_to_b, a)
    await read_barrier(a2_to_b, a, b, inbox_a1, inbox_a2, inbox_b)
    assert await fetched(inbox_a2, a) == []

    await a2_to_b.send_json(received(a, b, from_a))
    assert_error(await recv(a2_to_b), "msg_received", a, b, NOT_FOUND)
    assert personal_bodies(config.database, b, a) == [from_b["message"]]  # A1 has not got it
    assert personal_bodies(config.database, a, b) == [from_a["message"]]  # B has not got it


async def test_a_group_message_is_copied_to_the_senders_other_devices(
        as_user: UserFactory, config: Config) -> None:
    a, b = new_phone(), new_phone()
    a1, a2, bob = await as_user(a), await as_user(a), await as_user(b)
    key = (await create_group(a1, "copies", [b]))["key"]
    inbox_a1, inbox_a2, inbox_b = await open_inbox(a1, a), await open_inbox(a2, a), await open_inbox(bob, b)
    a1_grp, a2_grp = await open_group(a1, a, key), await open_group(a2, a, key)
    b_grp = await open_group(bob, b, key)

    sent = await send_grp(a1_grp, a, key, "to the group from my laptop")
    assert await recv(inbox_b) == pushed(sent, key, b)
    # {"command": "new_msg", "msg_from": "<key>-A", "msg_to": A, ...}
    assert await recv(inbox_a2) == pushed(sent, key, a)
    await grp_read_barrier(a1_grp, a, key, b, inbox_a1, inbox_a2, inbox_b)  # none for the sender
    assert await fetched(inbox_a1, a, "fetch_grp_msgs") == []
    assert await fetched(inbox_a2, a, "fetch_grp_msgs") == [grp_stored(sent, key, a, [b])]
    assert await fetched(inbox_a2, a) == []  # a group copy is a group message

    await b_grp.send_json(grp_received(b, a, sent))
    for inbox in (inbox_a1, inbox_a2):
        assert_grp_receipt(await recv(inbox), key, b, a, sent)
    # Every participant has acknowledged it; A2's copy still waits.
    assert [m for _, _, m in group_messages(config.database, key)] == [sent["message"]]
    assert await fetched(inbox_a2, a, "fetch_grp_msgs") == [grp_stored(sent, key, a, [])]

    await a2_grp.send_json(grp_received(a, a, sent))  # msg_to = A: the copy
    await no_answer(a2_grp, a)
    await grp_read_barrier(a2_grp, a, key, b, inbox_a1, inbox_a2, inbox_b)  # nothing pushed
    assert group_messages(config.database, key) == []
    assert await fetched(inbox_a2, a, "fetch_grp_msgs") == []
    await a2_grp.send_json(grp_received(a, a, sent))
    assert_error(await recv(a2_grp), "grp_msg_received", a, key, NOT_FOUND)


@pytest.mark.parametrize("kind", ["personal", "group"])
async def test_a_copys_acknowledgement_and_the_recipients_first_in_one_commit(
        as_user: UserFactory, store: GroupCommitStore[object], kind: str) -> None:
    """A2's acknowledgement of its copy and B's first acknowledgement of the same message are
    committed in one batch, the copy's first: B's is still the one that sends the receipt (to
    A's devices, the frame B sent), the copy's still sends nothing. The writer is held (as a
    scrub holds it: `store._writing`) while both wait in its queue (`store._queue`), so that
    they share a batch, in this order, whatever the machine's speed."""
    a, b = new_phone(), new_phone()
    a1, a2, bob = await as_user(a), await as_user(a), await as_user(b)
    key = (await create_group(a1, "one commit", [b]))["key"]
    inbox_a1, inbox_a2, inbox_b = await open_inbox(a1, a), await open_inbox(a2, a), await open_inbox(bob, b)
    if kind == "personal":
        a1_ws, a2_ws, b_ws = (await open_personal(a1, a, b), await open_personal(a2, a, b),
                              await open_personal(bob, b, a))
        sent = await send_new_msg(a1_ws, a, b, "acknowledged twice at once")
        assert await recv(inbox_b) == sent and await recv(inbox_a2) == sent
        copy_ack, peer_ack = received(a, b, sent), received(b, a, sent)
    else:
        a1_ws, a2_ws, b_ws = (await open_group(a1, a, key), await open_group(a2, a, key),
                              await open_group(bob, b, key))
        sent = await send_grp(a1_ws, a, key, "acknowledged twice at once")
        assert await recv(inbox_b) == pushed(sent, key, b)
        assert await recv(inbox_a2) == pushed(sent, key, a)
        copy_ack, peer_ack = grp_received(a, a, sent), grp_received(b, a, sent)

    async with store._writing:
        # A write of no consequence (an acknowledgement by no device of nothing) takes the
        # writer's current batch, which then waits for the lock.
        occupied = store.ack_personal(b, a, 1, server_form(new_instant()), "no such device")
        await until(lambda: not store._queue, TIMEOUT, "the writer to take its batch")
        await a2_ws.send_json(copy_ack)
        await until(lambda: len(store._queue) == 1, TIMEOUT, "the copy's acknowledgement queued")
        await b_ws.send_json(peer_ack)
        await until(lambda: len(store._queue) == 2, TIMEOUT, "B's acknowledgement queued")
    assert await occupied is Ack.MISSING
    await no_answer(a2_ws, a)
    await no_answer(b_ws, b)
    # A read from A2, pushed after anything the acknowledgements pushed: B gets nothing before
    # it, A's devices B's receipt.
    if kind == "personal":
        read = frame("msg_read", a, b, stamp())
        await a2_ws.send_json(read)
        assert await recv(inbox_b) == read
        for inbox in (inbox_a1, inbox_a2):
            assert [await recv(inbox), await recv(inbox)] == [peer_ack, read]
        # B's acknowledgement moved A -> B's last_received_receiver; the copy's moved nothing.
        assert (await dialogue(a1, b))["outgoing"] == {
            "last_received_receiver": peer_ack["sent_timestamp"], "last_seen_receiver": None,
            "waiting": 0}
        assert (await dialogue(bob, a))["outgoing"]["last_received_receiver"] is None
    else:
        for inbox in (inbox_a1, inbox_a2):
            assert_grp_receipt(await recv(inbox), key, b, a, sent)
        await grp_read_barrier(a2_ws, a, key, b, inbox_a1, inbox_a2, inbox_b)


async def test_a_device_added_later_gets_stored_peer_messages_but_no_copies_of_earlier_sends(
        as_user: UserFactory) -> None:
    a, b = new_phone(), new_phone()
    a1, bob = await as_user(a), await as_user(b)
    key = (await create_group(a1, "later", [b]))["key"]
    a1_to_b, b_to_a = await open_personal(a1, a, b), await open_personal(bob, b, a)
    a1_grp, b_grp = await open_group(a1, a, key), await open_group(bob, b, key)
    await send_new_msg(a1_to_b, a, b, "mine, sent before the new device")
    theirs = await send_new_msg(b_to_a, b, a, "B's, waiting for A")
    await send_grp(a1_grp, a, key, "mine in the group, sent before")
    their_grp = await send_grp(b_grp, b, key, "B's in the group, waiting for A")

    a2 = await as_user(a)
    inbox_a2 = await open_inbox(a2, a, personal=[stored(theirs)],
                                group=[grp_stored(their_grp, key, a, [a])])
    # From now on A2 exists, and gets copies.
    later = await send_new_msg(a1_to_b, a, b, "mine, sent after")
    assert await recv(inbox_a2) == later
    later_grp = await send_grp(a1_grp, a, key, "mine in the group, sent after")
    assert await recv(inbox_a2) == pushed(later_grp, key, a)


# -- 7.2: reads ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["personal", "group"])
async def test_a_read_reaches_every_device_of_the_reader_and_the_sender(
        as_user: UserFactory, kind: str) -> None:
    a, b = new_phone(), new_phone()
    alice, b1, b2 = await as_user(a), await as_user(b), await as_user(b)
    key = (await create_group(alice, "reads", [b]))["key"]
    inbox_a, inbox_b1, inbox_b2 = await open_inbox(alice, a), await open_inbox(b1, b), await open_inbox(b2, b)
    if kind == "personal":
        sent = await send_new_msg(await open_personal(alice, a, b), a, b, "read me")
        for inbox in (inbox_b1, inbox_b2):
            assert await recv(inbox) == sent
        read = frame("msg_read", b, a, sent["sent_timestamp"])
        await (await open_personal(b1, b, a)).send_json(read)
        for inbox in (inbox_a, inbox_b1, inbox_b2):
            assert await recv(inbox) == read
    else:
        sent = await send_grp(await open_group(alice, a, key), a, key, "read me")
        for inbox in (inbox_b1, inbox_b2):
            assert await recv(inbox) == pushed(sent, key, b)
        await (await open_group(b1, b, key)).send_json(
            frame("grp_msg_read", b, a, sent["sent_timestamp"]))
        first = await recv(inbox_a)
        assert (first["command"], first["msg_from"], first["msg_to"], first["message"]) == (
            "msg_read", f"{key}-{b}", a, sent["sent_timestamp"]), first
        for inbox in (inbox_b1, inbox_b2):
            assert await recv(inbox) == first  # the frame as pushed to the sender
    # The read acknowledged nothing: both devices still have the message.
    command = "fetch_msgs" if kind == "personal" else "fetch_grp_msgs"
    assert len(await fetched(inbox_b1, b, command)) == len(await fetched(inbox_b2, b, command)) == 1
