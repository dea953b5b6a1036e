"""The Web Push part of the store (SPEC 9, issue 15) on both engines, with the fixtures and helpers
of test_store_contract.py: a device's one subscription (replaced, deleted, dropped only with the
endpoint the push service refused, one device per endpoint), gone with its session (logout, a
device ended, a password change, expiry, the account deleted); `push_targets` (live subscribed
devices of the phones asked, mutes in force left out, several phones and devices in one query);
mutes (listed while in force, at most MAX_MUTES a user, gone with the user; on PostgreSQL two
stores at the limit at once); `waiting_count` for personal and group conversations."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from typing import Any, Final

import pytest

# The contract module's helpers; its fixtures (db_path, place, store, pg_store) come through
# tests/stores/conftest.py.
from test_store_contract import (
    R1,
    T1,
    T2,
    T3,
    TIMEOUT,
    A,
    AnyStore,
    B,
    C,
    G,
    Place,
    add_sessions,
    clock_at,
    connected,
    opened,
    place_rows,
)

from chatserver.protocol import now_micros
from chatserver.stores.base import MAX_MUTES, Ack, IntegrityError, PushSubscription, Stored
from helpers import backends

pytestmark = pytest.mark.backends(backends.LOCAL, backends.POSTGRES)

HOUR_US: Final = 3600 * 1_000_000
FAR: Final = 253_402_300_799_000_000  # 9999-12-31 23:59:59 UTC, "always" of the client
KEY, AUTH = "BKey" + "k" * 83, "auth" + "a" * 18


def endpoint(name: str) -> str:
    return f"https://push.example.com/send/{name}"


def sub(device: str, phone: str, name: str, conversation: str = "") -> PushSubscription:
    """The subscription `subscribe` made for `device` with endpoint(name)."""
    return PushSubscription(device, phone, endpoint(name), KEY + name, AUTH, conversation)


async def subscribe(store: AnyStore, device: str, name: str) -> None:
    assert await store.set_push_subscription(device, endpoint(name), KEY + name, AUTH)


async def subscription_rows(place: Place) -> list[tuple[Any, ...]]:
    return await place_rows(place, "SELECT sid_hash, phone, endpoint FROM push_subscriptions"
                                   " ORDER BY sid_hash")


# -- subscriptions ------------------------------------------------------------------------------


async def test_a_device_has_one_subscription_which_a_new_one_replaces(
        store: AnyStore, place: Place) -> None:
    async with asyncio.timeout(TIMEOUT):
        await add_sessions(store, ("a-1", A), ("a-2", A))
        assert await store.push_subscription("a-1") is None
        await subscribe(store, "a-1", "first")
        assert await store.push_subscription("a-1") == sub("a-1", A, "first")
        await subscribe(store, "a-1", "second")  # the browser subscribed anew: replaced
        assert await store.push_subscription("a-1") == sub("a-1", A, "second")
        await subscribe(store, "a-2", "other")
        assert await subscription_rows(place) == [("a-1", A, endpoint("second")),
                                                  ("a-2", A, endpoint("other"))]
        assert await store.delete_push_subscription("a-1")
        assert not await store.delete_push_subscription("a-1")
        assert await store.push_subscription("a-1") is None
        assert await store.push_subscription("a-2") == sub("a-2", A, "other")


async def test_no_subscription_for_a_session_that_no_longer_exists(
        store: AnyStore, place: Place) -> None:
    async with asyncio.timeout(TIMEOUT):
        await add_sessions(store, ("a-1", A))
        await store.delete_session("a-1")
        assert not await store.set_push_subscription("a-1", endpoint("x"), KEY, AUTH)
        assert not await store.set_push_subscription("never", endpoint("x"), KEY, AUTH)
        assert await subscription_rows(place) == []


async def test_an_endpoint_is_one_devices_the_newest_subscription_wins(
        store: AnyStore, place: Place) -> None:
    """A browser where B logged in after A (A's session not ended) gives B's device the same
    endpoint: A's subscription goes, so that A's messages are not pushed to B's browser."""
    async with asyncio.timeout(TIMEOUT):
        await add_sessions(store, ("a-1", A), ("b-1", B))
        await subscribe(store, "a-1", "browser")
        await subscribe(store, "b-1", "browser")
        assert await subscription_rows(place) == [("b-1", B, endpoint("browser"))]
        # A session gone subscribes nothing, and takes no one's endpoint
        assert not await store.set_push_subscription("gone", endpoint("browser"), KEY, AUTH)
        assert await subscription_rows(place) == [("b-1", B, endpoint("browser"))]


async def test_drop_deletes_only_while_the_device_still_has_that_endpoint(store: AnyStore) -> None:
    """A 404/410 for an endpoint the device has replaced since must not delete the new one."""
    async with asyncio.timeout(TIMEOUT):
        await add_sessions(store, ("a-1", A))
        await subscribe(store, "a-1", "old")
        await subscribe(store, "a-1", "new")
        assert not await store.drop_push_subscription("a-1", endpoint("old"))
        assert await store.push_subscription("a-1") == sub("a-1", A, "new")
        assert await store.drop_push_subscription("a-1", endpoint("new"))
        assert await store.push_subscription("a-1") is None
        assert not await store.drop_push_subscription("a-1", endpoint("new"))


async def test_a_subscription_goes_with_its_session(
        store: AnyStore, place: Place, monkeypatch: pytest.MonkeyPatch) -> None:
    """Logout, a device ended from another, a password change, expiry, the account deleted."""
    async with asyncio.timeout(TIMEOUT):
        with clock_at(monkeypatch, now_micros() - 2 * HOUR_US):
            await add_sessions(store, ("c-old", C))
        await add_sessions(store, ("a-1", A), ("a-2", A), ("a-3", A), ("b-1", B), ("b-2", B),
                           ("c-1", C))
        for n, device in enumerate(("a-1", "a-2", "a-3", "b-1", "b-2", "c-1", "c-old")):
            await subscribe(store, device, str(n))
        await store.delete_session("a-1")  # logout
        [a2] = [d.id for d in await store.devices(A, "a-2", 3600) if d.current]
        assert await store.delete_device(A, a2) == "a-2"
        assert await store.change_password(B, b"new", "b-2") == ["b-1"]
        assert await store.drop_expired_sessions(3600) == 1
        assert [r[0] for r in await subscription_rows(place)] == ["a-3", "b-2", "c-1"]
        assert await store.delete_user(C)
        assert [r[0] for r in await subscription_rows(place)] == ["a-3", "b-2"]


# -- push_targets -------------------------------------------------------------------------------


async def test_push_targets_gives_each_live_subscribed_device_of_the_phones_asked(
        store: AnyStore, place: Place, monkeypatch: pytest.MonkeyPatch) -> None:
    """Several phones and devices in one call, in the pairs' order then by device; a device
    without a subscription, an expired session, a disabled account and an unknown phone give
    nothing; a phone in two pairs gives its devices once per pair, a repeated pair once."""
    async with asyncio.timeout(TIMEOUT):
        with clock_at(monkeypatch, now_micros() - 400 * 86_400 * 1_000_000):
            await add_sessions(store, ("a-expired", A))  # older than the store's 30 days
        await add_sessions(store, ("a-2", A), ("a-1", A), ("a-bare", A), ("b-1", B), ("c-1", C))
        for device in ("a-expired", "a-2", "a-1", "b-1", "c-1"):
            await subscribe(store, device, device)
        now = now_micros()
        assert await store.push_targets([], now) == []
        asked = [(B, "personal:" + A), (A, "personal:" + B), ("1999999999", "personal:" + A),
                 (A, "group:" + G), (B, "personal:" + A)]
        assert await store.push_targets(asked, now) == [
            sub("b-1", B, "b-1", "personal:" + A),
            sub("a-1", A, "a-1", "personal:" + B), sub("a-2", A, "a-2", "personal:" + B),
            sub("a-1", A, "a-1", "group:" + G), sub("a-2", A, "a-2", "group:" + G)]
        # one query for the whole batch, however many pairs
        reads: list[str] = []
        fetch = store._fetch

        async def counted(sql: str, *args: Any) -> list[Any]:
            reads.append(sql)
            return await fetch(sql, *args)
        monkeypatch.setattr(store, "_fetch", counted)
        assert len(await store.push_targets(asked + [(C, "personal:" + B)], now)) == 6
        assert len(reads) == 1
        monkeypatch.undo()
        # SPEC 10: a disabled user's devices are no devices, whoever set the flag (here: another
        # connection, as an admin's request served by another process, or a hand-made UPDATE)
        if isinstance(place, Path):
            with contextlib.closing(sqlite3.connect(place)) as con, con:
                con.execute("UPDATE users SET disabled = 1 WHERE phone = ?", (A,))
        else:
            async with connected(place) as conn:
                await conn.execute("UPDATE users SET disabled = true WHERE phone = $1", A)
        assert await store.push_targets(asked, now) == [sub("b-1", B, "b-1", "personal:" + A)]


async def test_push_targets_leaves_out_a_conversation_muted_until_later(store: AnyStore) -> None:
    """A mute in force leaves out that phone's devices for that conversation only: not another
    conversation, not another phone; an expired mute (until_us <= now_us) and an unmute none."""
    async with asyncio.timeout(TIMEOUT):
        await add_sessions(store, ("a-1", A), ("a-2", A), ("b-1", B))
        for device in ("a-1", "a-2", "b-1"):
            await subscribe(store, device, device)
        now = now_micros()
        asked = [(A, "personal:" + B), (A, "group:" + G), (B, "group:" + G)]
        a_from_b = [sub("a-1", A, "a-1", "personal:" + B), sub("a-2", A, "a-2", "personal:" + B)]
        a_in_g = [sub("a-1", A, "a-1", "group:" + G), sub("a-2", A, "a-2", "group:" + G)]
        b_in_g = [sub("b-1", B, "b-1", "group:" + G)]
        assert await store.push_targets(asked, now) == a_from_b + a_in_g + b_in_g

        await store.set_mute(A, "group:" + G, now + HOUR_US)
        assert await store.push_targets(asked, now) == a_from_b + b_in_g
        # at its end and after: pushed again
        assert await store.push_targets(asked, now + HOUR_US) == a_from_b + a_in_g + b_in_g
        assert await store.push_targets(asked, now + 2 * HOUR_US) == a_from_b + a_in_g + b_in_g
        await store.set_mute(A, "personal:" + B, FAR)  # "always"
        assert await store.push_targets(asked, now) == b_in_g
        await store.set_mute(A, "group:" + G, None)
        await store.set_mute(A, "personal:" + B, None)
        assert await store.push_targets(asked, now) == a_from_b + a_in_g + b_in_g


# -- mutes --------------------------------------------------------------------------------------


async def test_mutes_lists_those_in_force_by_conversation(store: AnyStore, place: Place) -> None:
    async with asyncio.timeout(TIMEOUT):
        now = now_micros()
        assert await store.mutes(A, now) == []
        await store.set_mute(A, "room:lobby", FAR)
        await store.set_mute(A, "group:" + G, now + HOUR_US)
        await store.set_mute(A, "personal:" + B, now + 2 * HOUR_US)
        await store.set_mute(B, "personal:" + A, FAR)
        assert await store.mutes(A, now) == [("group:" + G, now + HOUR_US),
                                             ("personal:" + B, now + 2 * HOUR_US),
                                             ("room:lobby", FAR)]
        assert await store.mutes(A, now + HOUR_US) == [("personal:" + B, now + 2 * HOUR_US),
                                                       ("room:lobby", FAR)]
        await store.set_mute(A, "group:" + G, FAR)  # a new time replaces the old
        await store.set_mute(A, "room:lobby", None)
        await store.set_mute(A, "room:never-muted", None)  # nothing to unmute: nothing happens
        assert await store.mutes(A, now) == [("group:" + G, FAR), ("personal:" + B, now + 2 * HOUR_US)]
        with pytest.raises(IntegrityError):
            await store.set_mute("1999999999", "room:lobby", FAR)
        assert await store.delete_user(A)  # the mutes go with their user
        assert await place_rows(place, "SELECT phone, conversation FROM mutes") == [
            (B, "personal:" + A)]


async def test_at_most_max_mutes_in_force_a_user(store: AnyStore, place: Place) -> None:
    """MAX_MUTES (200) conversations: one more is refused (ValueError) and changes nothing; a
    muted one's time can still change; an unmute or a mute that ended makes room."""
    async with asyncio.timeout(TIMEOUT):
        assert MAX_MUTES == 200
        for n in range(MAX_MUTES):
            await store.set_mute(A, f"room:r{n:03d}", FAR)
        before = await place_rows(place, "SELECT * FROM mutes ORDER BY conversation")
        with pytest.raises(ValueError, match="200"):
            await store.set_mute(A, "room:one-more", FAR)
        assert await place_rows(place, "SELECT * FROM mutes ORDER BY conversation") == before
        await store.set_mute(B, "room:one-more", FAR)  # another user's count is their own
        await store.set_mute(A, "room:r000", FAR - 1)  # an existing one changes
        assert (await store.mutes(A, 0))[0] == ("room:r000", FAR - 1)

        await store.set_mute(A, "room:r001", None)
        await store.set_mute(A, "room:one-more", FAR)
        with pytest.raises(ValueError):
            await store.set_mute(A, "room:two-more", FAR)
        await store.set_mute(A, "room:r002", now_micros() - 1)  # ended: dropped by the next mute
        await store.set_mute(A, "room:two-more", FAR)
        assert len(await store.mutes(A, 0)) == MAX_MUTES


async def test_pg_two_processes_at_the_mute_limit_take_turns(pg_url: str) -> None:
    """Two stores on one schema (as two server processes) each add a conversation for a user
    with MAX_MUTES - 1 mutes at once: one is stored, the other refused; never MAX_MUTES + 1.
    Several rounds, since two writes at once do not always overlap."""
    async with asyncio.timeout(TIMEOUT), opened(pg_url) as one, opened(pg_url) as two:
        for n in range(MAX_MUTES - 1):
            await one.set_mute(A, f"room:r{n:03d}", FAR)
        for n in range(10):
            outcomes = await asyncio.gather(one.set_mute(A, f"room:x{n}", FAR),
                                            two.set_mute(A, f"room:y{n}", FAR),
                                            return_exceptions=True)
            assert sorted(type(o).__name__ for o in outcomes) == ["NoneType", "ValueError"]
            assert len(await one.mutes(A, 0)) == MAX_MUTES
            for conversation in (f"room:x{n}", f"room:y{n}"):
                await two.set_mute(A, conversation, None)


# -- waiting_count ------------------------------------------------------------------------------


async def test_waiting_count_of_a_personal_conversation_is_per_device(store: AnyStore) -> None:
    """B's messages to A waiting for each device of A; not A's copies of its own messages to B,
    not another sender's messages; a device's acknowledgement counts for that device only."""
    async with asyncio.timeout(TIMEOUT):
        await add_sessions(store, ("a-1", A), ("a-2", A), ("b-1", B))
        assert await store.waiting_count("a-1", A, "personal:" + B) == 0
        for sent_us in (T1, T2):
            assert await store.add_personal(B, A, sent_us, "t", "hi", "b-1") == Stored([A], 0)
        assert await store.add_personal(C, A, T3, "t", "from C") == Stored([A], 0)
        # A's own message to B, sent from a-1: a copy waits for a-2 (SPEC 7.2)
        assert await store.add_personal(A, B, T3, "t", "mine", "a-1") == Stored([B], 1)
        assert await store.waiting_count("a-1", A, "personal:" + B) == 2
        assert await store.waiting_count("a-2", A, "personal:" + B) == 2
        assert await store.waiting_count("a-1", A, "personal:" + C) == 1
        assert await store.ack_personal(B, A, T1, R1, "a-1") is Ack.FIRST
        assert await store.waiting_count("a-1", A, "personal:" + B) == 1
        assert await store.waiting_count("a-2", A, "personal:" + B) == 2
        assert await store.waiting_count("b-1", B, "personal:" + A) == 1
        assert await store.waiting_count("a-1", B, "personal:" + B) == 0  # not B's device


async def test_waiting_count_of_a_group_conversation_is_per_device(store: AnyStore) -> None:
    async with asyncio.timeout(TIMEOUT):
        await add_sessions(store, ("a-1", A), ("a-2", A), ("b-1", B))
        assert await store.create_group(G, "Friends", B, [A, C])
        assert await store.create_group("H123456789", "Others", B, [A])
        for sent_us in (T1, T2):
            assert await store.add_group_message(G, B, sent_us, "t", "g", "b-1") == Stored([A, C], 0)
        assert await store.add_group_message(G, C, T3, "t", "g") == Stored([A, B], 0)
        assert await store.add_group_message("H123456789", B, T1, "t", "h", "b-1") == Stored([A], 0)
        # A's own message: a copy waits for a-2 (SPEC 7.2), not counted
        assert await store.add_group_message(G, A, T3, "t", "mine", "a-1") == Stored([B, C], 1)
        assert await store.waiting_count("a-1", A, "group:" + G) == 3
        assert await store.waiting_count("a-2", A, "group:" + G) == 3
        assert await store.waiting_count("a-1", A, "group:H123456789") == 1
        assert await store.ack_group(G, B, T1, A, "a-2") is Ack.FIRST
        assert await store.waiting_count("a-1", A, "group:" + G) == 3
        assert await store.waiting_count("a-2", A, "group:" + G) == 2
        assert await store.waiting_count("b-1", B, "group:" + G) == 2  # C's and A's


async def test_waiting_count_is_zero_for_other_conversations(store: AnyStore) -> None:
    async with asyncio.timeout(TIMEOUT):
        await add_sessions(store, ("a-1", A))
        assert await store.add_personal(B, A, T1, "t", "hi") == Stored([A], 0)
        assert await store.create_room("lobby", B, None)
        assert await store.add_room_message("lobby", B, T1, "t", "room") == 1
        for conversation in ("room:lobby", "personal:", "personal", "", "channel:" + B,
                             "group:" + G):
            assert await store.waiting_count("a-1", A, conversation) == 0, conversation
        assert await store.waiting_count("a-1", A, "personal:" + B) == 1

