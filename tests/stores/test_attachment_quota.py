"""`Store.reserve_attachment` under `limits.attachment_quota_bytes` (SPEC 8) when reservations of
one owner come at once: on SQLite through one store (one writer), on PostgreSQL through two stores
on one schema, as two server processes would make them (the owner's row lock makes them check the
quota in turn; without it, READ COMMITTED lets both see the sum before either commits). Each round
makes eight reservations of 30,000 bytes against 100,000: exactly three may pass."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Final

import pytest

from chatserver.stores.base import Attachment, QuotaExceeded, Store
from chatserver.stores.postgres import PgStore
from chatserver.stores.sqlite import SqliteStore
from helpers.timing import TIMEOUT

QUOTA: Final = 100_000
SIZE: Final = 30_000
AT_ONCE: Final = 8
ROUNDS: Final = 20


async def reserve_at_once(stores: Sequence[Store], owner: str) -> int:
    """AT_ONCE reservations of SIZE bytes for `owner`, spread over `stores`; how many passed."""
    async def one(store: Store) -> int:
        try:
            await store.reserve_attachment(
                Attachment(secrets.token_urlsafe(16), owner, "f.bin", "application/octet-stream", SIZE),
                QUOTA)
        except QuotaExceeded:
            return 0
        return 1
    async with asyncio.timeout(TIMEOUT):
        return sum(await asyncio.gather(*(one(stores[n % len(stores)]) for n in range(AT_ONCE))))


async def rounds(stores: Sequence[Store]) -> list[int]:
    passed = []
    for n in range(ROUNDS):
        owner = f"555{n:07d}"
        assert await stores[0].add_user(owner, "owner", b"hash")
        passed.append(await reserve_at_once(stores, owner))
    return passed


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = await SqliteStore.open(tmp_path / "chat.db", synchronous="NORMAL", scrub_seconds=60.0,
                                   max_waiting=10_000, session_seconds=86_400)
    try:
        yield store
    finally:
        await store.close()


async def test_sqlite_reservations_at_once_pass_only_what_fits(sqlite_store: SqliteStore) -> None:
    assert await rounds([sqlite_store]) == [QUOTA // SIZE] * ROUNDS


async def test_postgres_reservations_of_two_processes_at_once_pass_only_what_fits(pg_url: str) -> None:
    stores = [await PgStore.open(pg_url, scrub_seconds=60.0, max_waiting=10_000,
                                 session_seconds=86_400) for _ in range(2)]
    try:
        assert await rounds(stores) == [QUOTA // SIZE] * ROUNDS
    finally:
        for store in stores:
            await store.close()

