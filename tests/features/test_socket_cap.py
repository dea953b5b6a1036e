"""Sockets per user (SPEC 10 `limits.sockets_per_user`, default 10; issue 12, finding 5): one more
receive socket than that closes the user's oldest with 4429, and pushes go to the others; send
and room sockets count per dialogue, group or room (a client keeps one per joined room open), so
neither kind crowds out the other. The count is per server process (docs/hub.md)."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient

from chatserver.config import Limits
from chatserver.hubs.local import CLOSE_TOO_MANY_SOCKETS
from helpers import backends
from helpers.accounts import UserFactory
from helpers.frames import new_phone
from helpers.ws import (
    WS,
    assert_alive,
    assert_quiet,
    open_personal,
    open_receive,
    recv,
    send_new_msg,
    wait_closed,
)

pytestmark = [pytest.mark.backends(backends.LOCAL, backends.REDIS),
              pytest.mark.filterwarnings(
                  "ignore::aiohttp.web_exceptions.NotAppKeyWarning:aiohttp_session")]

CAP = Limits().sockets_per_user


async def closed_as_too_many(ws: WS) -> None:
    assert await wait_closed(ws) == (CLOSE_TOO_MANY_SOCKETS, b"too many sockets")


async def open_room(client: TestClient, room: str) -> WS:
    """A room socket, served (its history has arrived)."""
    ws = await client.ws_connect(f"/ws/chat/room/{room}/")
    assert (await recv(ws))["command"] == "fetch_room_msgs"
    return ws


def test_the_default_is_the_specs() -> None:
    assert CAP == 10


async def test_one_receive_socket_too_many_closes_the_oldest_with_4429(as_user: UserFactory) -> None:
    a, b = new_phone(), new_phone()
    client_a, client_b = await as_user(a), await as_user(b)
    others = [await open_receive(client_b, b) for _ in range(2)]  # another user's: not counted
    inboxes = [await open_receive(client_a, a) for _ in range(CAP)]
    await assert_quiet(*inboxes)  # at the cap: nothing closed
    inboxes.append(await open_receive(client_a, a))
    await closed_as_too_many(inboxes[0])
    served = inboxes[1:]
    assert len(served) == CAP
    sent = await send_new_msg(await open_personal(client_b, b, a), b, a, "to all ten")
    for ws in served:
        assert (await recv(ws))["message"] == sent["message"]
    await assert_quiet(*served, *others)
    assert not any(ws.closed for ws in served + others)


async def test_send_and_room_sockets_count_per_peer_and_room(as_user: UserFactory) -> None:
    a, b = new_phone(), new_phone()
    client_a = await as_user(a)
    await as_user(b)
    for room in ("hall", "yard"):
        resp = await client_a.post("/chat/special/room", json={"room_name": f"{room}{a}"})
        assert resp.status == 201, await resp.text()
    hall, yard = f"hall{a}", f"yard{a}"
    inboxes = [await open_receive(client_a, a) for _ in range(CAP)]
    in_hall = [await open_room(client_a, hall) for _ in range(CAP)]
    in_yard = await open_room(client_a, yard)
    sends = [await open_personal(client_a, a, b) for _ in range(CAP)]
    for ws in sends:
        await assert_alive(ws, a, b)
    await assert_quiet(*inboxes, *in_hall, in_yard)  # 31 sockets, none over its own cap

    in_hall.append(await open_room(client_a, hall))
    await closed_as_too_many(in_hall[0])
    sends.append(await open_personal(client_a, a, b))
    await closed_as_too_many(sends[0])
    await asyncio.gather(*(assert_alive(ws, a, b) for ws in sends[1:]))
    await assert_quiet(*inboxes, in_yard)
    assert not any(ws.closed for ws in inboxes + in_hall[1:] + [in_yard])
