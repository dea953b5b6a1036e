"""Group events (issue 18; SPEC silent, so docs/ISSUE18 shapes): after each change made by
PATCH /chat/info/group, every participant after the change and everyone it removed gets on each
receive socket one `group_event` frame per kind of change, with the actor, the members concerned
and, for a rename, the new name. A refused PATCH pushes nothing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from chatserver.app import create_app
from chatserver.config import Config
from helpers import backends
from helpers.accounts import UserFactory, users_on
from helpers.frames import new_phone
from helpers.groups import assert_group_event, create_group, patch, patch_ok, recv_group_added
from helpers.ws import WS, assert_json_error, assert_quiet, open_receive, recv

# Pushes cross processes through the hub: every store, and the Redis hub.
pytestmark = pytest.mark.backends

async def expect(sockets: list[WS], actor: str, key: str,
                 events: list[tuple[str, list[str], str]]) -> None:
    """Each of `sockets` gets exactly `events` (event, members, message), in that order, and
    then nothing more."""
    for ws in sockets:
        for event, members, message in events:
            assert_group_event(await recv(ws), actor, key, event, members, message)
    await assert_quiet(*sockets)


class Member:
    def __init__(self, phone: str, client: TestClient, ws: WS) -> None:
        self.phone, self.client, self.ws = phone, client, ws


async def members(as_user: UserFactory, n: int) -> list[Member]:
    out = []
    for _ in range(n):
        phone = new_phone()
        client = await as_user(phone)
        out.append(Member(phone, client, await open_receive(client, phone)))
    return out


async def group_of(owner: Member, others: list[Member], name: str = "Family") -> str:
    key = (await create_group(owner.client, name, [m.phone for m in others]))["key"]
    for m in others:
        await recv_group_added(m.ws, owner.phone, m.phone, key)
    await assert_quiet(owner.ws, *(m.ws for m in others))
    return key


async def test_each_event_reaches_every_member_and_the_removed(as_user: UserFactory) -> None:
    alice, bob, carol, dave = await members(as_user, 4)
    key = await group_of(alice, [bob, carol])
    everyone = [alice.ws, bob.ws, carol.ws]
    # A second receive socket of one member gets it too.
    bob2 = await open_receive(await as_user(bob.phone), bob.phone)

    await patch_ok(alice.client, key, {"name": "The Family"})
    await expect([*everyone, bob2], alice.phone, key, [("renamed", [], "The Family")])

    await patch_ok(alice.client, key, {"add": [dave.phone]})
    await recv_group_added(dave.ws, alice.phone, dave.phone, key)  # as before, for the added
    await expect([*everyone, bob2, dave.ws], alice.phone, key, [("added", [dave.phone], "")])
    everyone.append(dave.ws)

    await patch_ok(alice.client, key, {"admins": [bob.phone]})
    await expect([*everyone, bob2], alice.phone, key, [("admin", [bob.phone], "")])

    # Removed by an admin: the removed member is told too, and nobody outside.
    await patch_ok(bob.client, key, {"remove": [carol.phone]})
    await expect([*everyone, bob2], bob.phone, key, [("removed", [carol.phone], "")])
    everyone.remove(carol.ws)

    # Leaving is removing oneself: "left", told to the one who left as well.
    await patch_ok(dave.client, key, {"remove": [dave.phone]})
    await expect([*everyone, bob2], dave.phone, key, [("left", [dave.phone], "")])
    await assert_quiet(carol.ws)


async def test_one_frame_per_kind_in_one_change(as_user: UserFactory) -> None:
    alice, bob, carol, dave, erin = await members(as_user, 5)
    key = await group_of(alice, [bob, carol])
    await patch_ok(alice.client, key, {"name": "Renamed", "add": [erin.phone, dave.phone],
                                       "remove": [carol.phone, alice.phone],
                                       "admins": [bob.phone, dave.phone]})
    for m in (dave, erin):
        await recv_group_added(m.ws, alice.phone, m.phone, key)
    await expect([alice.ws, bob.ws, carol.ws, dave.ws, erin.ws], alice.phone, key, [
        ("added", sorted([dave.phone, erin.phone]), ""),
        ("removed", [carol.phone], ""),
        ("left", [alice.phone], ""),
        ("admin", sorted([bob.phone, dave.phone]), ""),
        ("renamed", [], "Renamed"),
    ])


async def test_last_admin_leaving_hands_admin_on_and_says_so(as_user: UserFactory) -> None:
    alice, bob, carol = await members(as_user, 3)
    key = await group_of(alice, [bob, carol])
    group = await patch_ok(alice.client, key, {"remove": [alice.phone]})
    (heir,) = group["admins"]
    assert heir in (bob.phone, carol.phone)
    await expect([alice.ws, bob.ws, carol.ws], alice.phone, key,
                 [("left", [alice.phone], ""), ("admin", [heir], "")])


async def test_last_member_leaving_is_told(as_user: UserFactory) -> None:
    alice, bob = await members(as_user, 2)
    key = await group_of(alice, [bob])
    await patch_ok(bob.client, key, {"remove": [bob.phone]})
    await expect([alice.ws, bob.ws], bob.phone, key, [("left", [bob.phone], "")])
    await patch_ok(alice.client, key, {"remove": [alice.phone]})
    await expect([alice.ws], alice.phone, key, [("left", [alice.phone], "")])
    await assert_quiet(bob.ws)


async def test_no_change_no_event(as_user: UserFactory) -> None:
    alice, bob = await members(as_user, 2)
    key = await group_of(alice, [bob], name="Same")
    # The same name, a member already in, an admin already admin: nothing happened.
    await patch_ok(alice.client, key, {"name": "Same", "add": [bob.phone], "admins": [alice.phone]})
    await assert_quiet(alice.ws, bob.ws)


@pytest.mark.parametrize("body", [
    {"name": ""}, {"name": "x" * 65}, {"add": ["123"]}, {"admins": ["{phone}"]},
    {"remove": "all"}, {"colour": "red"}, {"name": "ok", "add": ["{phone}"], "remove": 1},
], ids=["empty-name", "long-name", "bad-phone", "admin-not-member", "remove-not-list",
        "unknown-field", "valid-with-bad"])
async def test_a_refused_patch_pushes_nothing(as_user: UserFactory, body: dict[str, Any]) -> None:
    alice, bob, carol = await members(as_user, 3)
    key = await group_of(alice, [bob])
    filled = {k: [p.format(phone=carol.phone) for p in v]
              if isinstance(v, list) else v for k, v in body.items()}
    await assert_json_error(await patch(alice.client, key, filled), 400)
    await assert_quiet(alice.ws, bob.ws, carol.ws)


async def test_a_patch_by_a_non_admin_pushes_nothing(as_user: UserFactory) -> None:
    alice, bob, carol = await members(as_user, 3)
    key = await group_of(alice, [bob])
    await assert_json_error(await patch(bob.client, key, {"name": "Mine now"}), 403)
    await assert_json_error(await patch(carol.client, key, {"remove": [carol.phone]}), 403)
    await assert_quiet(alice.ws, bob.ws, carol.ws)


@pytest.mark.backends(backends.REDIS)  # the in-memory hub is one process
async def test_group_event_reaches_a_member_on_another_server(
        aiohttp_server: Callable[..., Awaitable[TestServer]],
        aiohttp_client: Callable[..., Awaitable[TestClient]], config: Config) -> None:
    one = await aiohttp_server(create_app(config))
    two = await aiohttp_server(create_app(config))
    a, b = new_phone(), new_phone()
    alice = await users_on(aiohttp_client, one)(a)
    bob = await users_on(aiohttp_client, two)(b)
    b_ws = await open_receive(bob, b)
    key = (await create_group(alice, "across", [b]))["key"]
    await recv_group_added(b_ws, a, b, key)
    await patch_ok(alice, key, {"name": "Across"})
    assert_group_event(await recv(b_ws), a, key, "renamed", [], "Across")
