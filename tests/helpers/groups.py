"""Groups as the tests drive them (SPEC 4 and 5.3): group send sockets opened and proven served,
`new_grp_msg` and what it pushes, `fetch_grp_msgs`, the group JSON endpoints, and read-only looks
at the stored group messages (helpers.backends.db_rows) and at the SQLite file's bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from chatserver.config import Database
from helpers.backends import FILES_ARE_SQLITE, db_rows, has_files
from helpers.frames import assert_error, assert_server_time, frame, new_instant, plain
from helpers.ws import WS, recv

# -- sockets -------------------------------------------------------------------------------------


async def settle(ws: WS, phone: str, key: str) -> None:
    """One round trip on a group socket that also passes through the store: an acknowledgement
    of nothing is refused only once the store has handled it, and the store commits a socket's
    writes in the order they were submitted. So when this returns, the socket is registered, its
    loop runs, and every write sent on it before has been committed (and its pushes queued)."""
    await ws.send_json(frame("grp_msg_received", phone, phone, plain(new_instant())))
    assert_error(await recv(ws), "grp_msg_received", phone, key,
                 "couldn't find a message to delete")


async def open_group(client: TestClient, phone: str, key: str, **kwargs: Any) -> WS:
    """Open `phone`'s send socket in group `key` and wait until the server serves it."""
    ws = await client.ws_connect(f"/ws/chat/group/{phone}/{key}/", **kwargs)
    await settle(ws, phone, key)
    return ws


async def send_grp(ws: WS, msg_from: str, key: str, message: str,
                   sent_timestamp: str | None = None) -> dict[str, str]:
    """Send a `new_grp_msg`, check its `msg_sent` (SPEC 5.3), return the frame as sent."""
    sent = frame("new_grp_msg", msg_from, key, message, sent_timestamp)
    await ws.send_json(sent)
    reply = await recv(ws)
    assert set(reply) == {"message", "command", "msg_from", "msg_to", "sent_timestamp"}, reply
    assert reply["command"] == "msg_sent", reply
    assert reply["message"] == sent["sent_timestamp"], reply
    assert reply["msg_from"] == msg_from and reply["msg_to"] == key, reply
    assert_server_time(reply["sent_timestamp"])
    return sent


def pushed(sent: dict[str, str], key: str, to: str) -> dict[str, str]:
    """What SPEC 5.3 pushes to participant `to` for the `new_grp_msg` frame `sent`."""
    return frame("new_msg", f"{key}-{sent['msg_from']}", to, sent["message"], sent["sent_timestamp"])


async def fetch_grp(ws: WS, phone: str) -> list[dict[str, Any]]:
    """Send `fetch_grp_msgs` on a receive socket; the reply frames until `"all": "True"`."""
    await ws.send_json({"command": "fetch_grp_msgs", "msg_to": phone})
    replies: list[dict[str, Any]] = []
    while True:
        reply = await recv(ws)
        assert set(reply) == {"command", "all", "messages"}, reply
        assert reply["command"] == "fetch_grp_msgs", reply
        assert reply["all"] in ("True", "False"), reply
        replies.append(reply)
        if reply["all"] == "True":
            return replies


def assert_group_added(data: dict[str, Any], adder: str, added: str, key: str) -> None:
    """`data` is the push telling `added` that `adder` put it into group `key` (issue 12,
    finding 6: groups that put a user in are announced)."""
    assert set(data) == {"command", "msg_from", "msg_to", "message", "sent_timestamp"}, data
    assert (data["command"], data["msg_from"], data["msg_to"], data["message"]) == (
        "group_added", adder, added, key), data
    assert_server_time(data["sent_timestamp"])


async def recv_group_added(ws: WS, adder: str, added: str, key: str) -> None:
    """The next frame on `added`'s receive socket `ws` is its group_added push for `key`."""
    assert_group_added(await recv(ws), adder, added, key)


GROUP_EVENT_KEYS = {"command", "msg_from", "msg_to", "event", "members", "message",
                    "sent_timestamp"}


def assert_group_event(data: dict[str, Any], actor: str, key: str, event: str,
                       members: list[str], message: str = "") -> None:
    """`data` is the `group_event` push (issue 18) saying that `actor` changed group `key`:
    `event` ("added", "removed", "left", "admin", "renamed") for `members`, `message` the new
    name of a rename, else ""."""
    assert set(data) == GROUP_EVENT_KEYS, data
    assert (data["command"], data["msg_from"], data["msg_to"], data["event"], data["members"],
            data["message"]) == ("group_event", actor, key, event, members, message), data
    assert_server_time(data["sent_timestamp"])


async def recv_group_event(ws: WS, actor: str, key: str, event: str, members: list[str],
                           message: str = "") -> None:
    """The next frame on receive socket `ws` is that `group_event` push."""
    assert_group_event(await recv(ws), actor, key, event, members, message)


# -- the JSON endpoints (SPEC 4) ------------------------------------------------------------


async def create_group(client: TestClient, name: str, participants: list[str]) -> dict[str, Any]:
    """POST /chat/special/group, which must answer 201; returns the group object."""
    resp = await client.post("/chat/special/group",
                             json={"name": name, "participants": participants})
    assert resp.status == 201, await resp.text()
    assert resp.content_type == "application/json"
    return await resp.json()


async def group_info(client: TestClient, key: str) -> dict[str, Any]:
    """GET /chat/info/group?key=..., which must answer 200."""
    resp = await client.get("/chat/info/group", params={"key": key})
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/json"
    return await resp.json()


async def patch(client: TestClient, key: str, body: object) -> aiohttp.ClientResponse:
    """PATCH /chat/info/group?key=... with a JSON body (the response, unchecked)."""
    return await client.patch("/chat/info/group", params={"key": key}, json=body)


async def patch_ok(client: TestClient, key: str, body: object) -> dict[str, Any]:
    """PATCH /chat/info/group, which must answer 200; returns the updated group."""
    resp = await patch(client, key, body)
    assert resp.status == 200, await resp.text()
    return await resp.json()


# -- the database, read-only (SPEC 6) ------------------------------------------------------------


def group_messages(database: Database, key: str) -> list[tuple[str, str, str]]:
    """(msg_from, sent_timestamp, message) of every stored message of group `key`, by id."""
    return [tuple(r) for r in db_rows(  # type: ignore[misc]
        database, "SELECT msg_from, sent_timestamp, message FROM group_messages WHERE grp = ?"
        " ORDER BY id", (key,))]


def pending_of(database: Database, key: str) -> dict[str, list[str]]:
    """{message body: sorted phones still pending} for group `key`."""
    out: dict[str, list[str]] = {}
    for message, phone in db_rows(
            database, "SELECT m.message, p.phone FROM group_messages AS m"
            " JOIN group_pending AS p ON p.message_id = m.id WHERE m.grp = ?"
            " ORDER BY m.id, p.phone", (key,)):
        out.setdefault(message, []).append(phone)
    return out


def files_holding(database: Database, needle: bytes) -> list[str]:
    """Names of the files (the database and its -wal) whose bytes contain `needle` (SQLite only:
    backends.FILES_ARE_SQLITE)."""
    assert has_files(database), FILES_ARE_SQLITE
    path = database.path
    found = []
    for p in (Path(path), Path(f"{path}-wal")):
        if p.exists() and needle in p.read_bytes():
            found.append(p.name)
    return found
