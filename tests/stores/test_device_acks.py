"""Acknowledgements per device in one group-commit batch, per store engine (SPEC 7.1, 7.2): a copy
of one's own message and the message itself are one stored row, so which acknowledgement is the
recipient's first must be told by who sent it, not by the row, whatever their order in the batch.
(Found by the benchmark's two-devices case, bench/devices.py: the receipt went to the recipient.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatserver.protocol import parse_timestamp
from chatserver.stores.base import Ack
from chatserver.stores.postgres import PgStore
from chatserver.stores.sqlite import SqliteStore
from helpers import backends

pytestmark = pytest.mark.backends(backends.LOCAL, backends.POSTGRES)

A, B = "1000000001", "1000000002"
TIMEOUT = 10.0  # every await of the test is bounded by this
T1 = parse_timestamp("2026-03-14 17:11:06.23")
RECEIVED = "2026-03-14 17:12:00.000"


@pytest.fixture
async def store(backend: backends.Backend, tmp_path: Path) -> AsyncIterator[SqliteStore | PgStore]:
    """A fresh store of this test's engine with users A and B; A has devices a1 and a2, B has b1."""
    async with asyncio.timeout(TIMEOUT):
        store: SqliteStore | PgStore
        if backend.database_url:
            store = await PgStore.open(backend.database_url)
        else:
            store = await SqliteStore.open(tmp_path / "chat.db", synchronous="FULL")
    try:
        async with asyncio.timeout(TIMEOUT):
            for phone in (A, B):
                await store.add_user(phone, f"user {phone}", b"hash")
            for sid_hash, phone in (("a1", A), ("a2", A), ("b1", B)):
                await store.add_session(sid_hash, phone)
        yield store
    finally:
        await asyncio.wait_for(store.close(), TIMEOUT)


@pytest.mark.parametrize("copy_first", [True, False], ids=["copy-ack-first", "peer-ack-first"])
async def test_in_one_batch_the_recipients_ack_is_first_and_the_copys_is_silent(
        store: SqliteStore | PgStore, copy_first: bool) -> None:
    async with asyncio.timeout(TIMEOUT):
        stored = await store.add_personal(A, B, T1, "t1", "hello", "a1")
        assert stored is not None and stored.copies == 1  # a2 got a copy
        def peer() -> asyncio.Future[Ack]:  # B's device b1: A's message
            return store.ack_personal(A, B, T1, RECEIVED, "b1")

        def copy() -> asyncio.Future[Ack]:  # A's device a2: its copy of that message
            return store.ack_personal(B, A, T1, RECEIVED, "a2")

        # both queued (in this order) before the writer task runs again: one batch
        if copy_first:
            copy_ack, peer_ack = await asyncio.gather(copy(), peer())
        else:
            peer_ack, copy_ack = await asyncio.gather(peer(), copy())
        assert (peer_ack, copy_ack) == (Ack.FIRST, Ack.LATER)
        side = await store.dialogue_side(A, B)  # what B received of A's messages
        assert (side.last_received_receiver, side.waiting) == (RECEIVED, 0)
        assert await store.pending_page("b1", 0, 10) == []
        assert await store.pending_page("a2", 0, 10) == []
