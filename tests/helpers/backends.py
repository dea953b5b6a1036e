"""The engines behind the store and the hub that the tests run against.

A test module marked `pytest.mark.backends` runs each of its tests once per backend:

- `sqlite+memory`: the default deployment (SQLite file, in-memory hub);
- `postgres+memory`: the PostgreSQL store, on the server named by `CHAT_TEST_POSTGRES_URL`;
- `sqlite+redis`: the Redis hub (and rate limits), on the server named by `CHAT_TEST_REDIS_URL`.

Without the variable, that backend's tests are skipped, and the run says so at its start and end
(`.ci/run` sets both when the engines answer on their usual ports). Each test gets a schema of its
own in PostgreSQL (`search_path` in the URL) and a key prefix of its own in Redis; both are removed
afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import sqlite3
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode, urlsplit, urlunsplit

import pytest

from chatserver.config import Database

POSTGRES_ENV = "CHAT_TEST_POSTGRES_URL"
REDIS_ENV = "CHAT_TEST_REDIS_URL"
POSTGRES_URL = os.environ.get(POSTGRES_ENV, "")
REDIS_URL = os.environ.get(REDIS_ENV, "")

LOCAL = "sqlite+memory"
POSTGRES = "postgres+memory"
REDIS = "sqlite+redis"
ALL = (LOCAL, POSTGRES, REDIS)


def missing() -> list[str]:
    """What is not configured, as sentences for the run's header and summary."""
    out = []
    if not POSTGRES_URL:
        out.append(f"{POSTGRES_ENV} is not set: the PostgreSQL store tests are SKIPPED")
    if not REDIS_URL:
        out.append(f"{REDIS_ENV} is not set: the Redis hub tests are SKIPPED")
    return out


def skip_reason(name: str) -> str | None:
    """Why backend `name` cannot run here, or None."""
    if "postgres" in name and not POSTGRES_URL:
        return f"{POSTGRES_ENV} not set: PostgreSQL store skipped"
    if "redis" in name and not REDIS_URL:
        return f"{REDIS_ENV} not set: Redis hub skipped"
    return None


def require(name: str) -> None:
    """Skip the calling test (or fixture) when backend `name`'s engine is not configured here;
    with the variables set (as `.ci/run` sets them) it runs, and can fail."""
    reason = skip_reason(name)
    if reason:
        pytest.skip(reason)


@dataclass(frozen=True)
class Backend:
    """`database_url` / `hub_url` / `hub_prefix` go into the config's `[database] url`,
    `[hub] url` and `[hub] prefix` ("" = the local default)."""

    name: str
    database_url: str = ""
    hub_url: str = ""
    hub_prefix: str = "chat"


def with_search_path(url: str, schema: str) -> str:
    """`url` with `search_path=schema` added to its query (asyncpg passes unknown query
    parameters to the server as settings)."""
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode({"search_path": schema})) if q)
    return urlunsplit(parts._replace(query=query))


@asynccontextmanager
async def postgres_schema() -> AsyncIterator[str]:
    """A fresh, empty schema on CHAT_TEST_POSTGRES_URL; yields a database URL that uses it.
    The schema is dropped afterwards."""
    import asyncpg

    schema = "t_" + secrets.token_hex(6)
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        try:
            yield with_search_path(POSTGRES_URL, schema)
        finally:
            # A server closed by the test may leave a backend still finishing its last statement
            # (a cancelled periodic check: the client hangs up at once, the backend stops at its
            # next interrupt check), which can deadlock with the DROP; PostgreSQL then aborts the
            # DROP, and it is tried again.
            for attempt in range(5):
                try:
                    await conn.execute(f"DROP SCHEMA {schema} CASCADE")
                    break
                except asyncpg.DeadlockDetectedError:
                    if attempt == 4:
                        raise
    finally:
        await conn.close()


@asynccontextmanager
async def redis_prefix() -> AsyncIterator[str]:
    """A fresh key and channel prefix on CHAT_TEST_REDIS_URL; its keys are deleted afterwards."""
    import redis.asyncio as redis

    prefix = "t" + secrets.token_hex(6)
    try:
        yield prefix
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        try:
            keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()


@asynccontextmanager
async def backend(name: str) -> AsyncIterator[Backend]:
    """Set up backend `name` (one of ALL) for one test."""
    if name == POSTGRES:
        async with postgres_schema() as url:
            yield Backend(name, database_url=url)
    elif name == REDIS:
        async with redis_prefix() as prefix:
            yield Backend(name, hub_url=REDIS_URL, hub_prefix=prefix)
    elif name == "postgres+redis":
        async with postgres_schema() as url, redis_prefix() as prefix:
            yield Backend(name, database_url=url, hub_url=REDIS_URL, hub_prefix=prefix)
    else:
        yield Backend(LOCAL)


# -- looking at what the store holds, whichever it is -------------------------------------------

# Why a test's checks of the bytes of the database file (and its WAL) run on SQLite only.
FILES_ARE_SQLITE: Final = (
    "PostgreSQL keeps a deleted body's bytes until they are overwritten (docs/storage.md, "
    "\"Deletion on PostgreSQL\"): the checks of the database file's bytes are SQLite's")


def has_files(database: Database) -> bool:
    """True when the store is the SQLite file at `database.path`, whose bytes a test may read."""
    return not database.url


def db_rows(database: Database, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of one query on a connection of its own, closed before returning: the SQLite file
    read-only (so it holds no snapshot that would keep the server's checkpoint from truncating
    the log), or PostgreSQL at `database.url`, where `?` placeholders become $1, $2, ..."""
    if has_files(database):
        with contextlib.closing(sqlite3.connect(f"file:{database.path}?mode=ro", uri=True)) as con:
            return con.execute(sql, params).fetchall()
    numbers = iter(range(1, len(params) + 1))
    query = re.sub(r"\?", lambda _: f"${next(numbers)}", sql)

    async def fetch() -> list[tuple[Any, ...]]:
        import asyncpg

        conn = await asyncpg.connect(database.url)
        try:
            return [tuple(r) for r in await conn.fetch(query, *params)]
        finally:
            await conn.close()

    # Called from synchronous helpers inside async tests: its own event loop, on its own thread.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, fetch()).result(timeout=10.0)
