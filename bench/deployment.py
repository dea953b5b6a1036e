"""What every bench server runs on, and one run's server: its folder, its config, a fresh database
(a SQLite file, or in the scaled mode a PostgreSQL schema and a Redis key prefix of its own, removed
after the run) and the process (the tests' harness, `helpers.server.ServerProcess`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import secrets
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from chatserver import config as chat_config
from helpers.server import ServerProcess

START_TIMEOUT = 30.0  # seconds until every process of a bench server serves
STOP_TIMEOUT = 20.0  # seconds after SIGTERM before SIGKILL to the server's process group

# What the benchmark changes from the defaults. A key that this version of the server does not
# have (chatserver/config.py) is left out, since the server refuses unknown keys.
BENCH_SETTINGS: dict[str, dict[str, Any]] = {
    # registration is set-up, not measured; every bench user registers through /register
    "security": {"bcrypt_rounds": 4, "registration": "open"},
    "limits": {
        "messages_per_second": 1e9,  # far above the offered load
        "acks_per_second": 1e9,  # each message is acknowledged: the same
        "lookups_per_minute": 10**9,  # every send socket's handshake names its peer
        "handshakes_per_minute": 10**9,  # every bench socket comes from 127.0.0.1
        # registrations in parallel from 127.0.0.1 (set-up): each is counted until it succeeds
        "login_failures": 10**9,
        "password_queue": 10**6,
        # the idle case may hold many receive sockets per user (--idle-users below --idle)
        "sockets_per_user": 10**9,
    },
}


def bench_config(synchronous: str, database_url: str = "", hub_url: str = "",
                 hub_prefix: str = "", metrics: bool = True,
                 settings: dict[str, dict[str, Any]] | None = None) -> str:
    """The TOML config of a bench server (with the engines of the scaled mode when given; with
    `metrics` false, `[metrics] enabled = false`: nothing counted, no /metrics; a case's own
    `settings` on top of BENCH_SETTINGS, e.g. the push case's `[push]`)."""
    tables: dict[str, dict[str, Any]] = {"database": {"synchronous": synchronous},
                                         "metrics": {"enabled": metrics}}
    if database_url:
        tables["database"]["url"] = database_url
    if hub_url:
        tables["hub"] = {"url": hub_url, "prefix": hub_prefix}
    for layer in (BENCH_SETTINGS, settings or {}):
        for table, keys in layer.items():
            tables.setdefault(table, {}).update(keys)
    known = {f.name: {g.name for g in dataclasses.fields(f.default_factory)}  # type: ignore[arg-type]
             for f in dataclasses.fields(chat_config.Config)}
    lines = ["# written by bench/bench.py"]
    for table, keys in tables.items():
        lines.append(f"[{table}]")
        for key, value in keys.items():
            if key in known.get(table, ()):
                lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def with_search_path(url: str, schema: str) -> str:
    """`url` with `search_path=schema` added to its query (asyncpg passes it to the server)."""
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode({"search_path": schema})) if q)
    return urlunsplit(parts._replace(query=query))


@dataclass(frozen=True)
class Deployment:
    """What every bench server runs on: by default one process with SQLite and the in-memory
    hub; in the scaled mode, `workers` processes on PostgreSQL and Redis."""

    database_url: str = ""
    hub_url: str = ""
    workers: int = 1

    @property
    def engines(self) -> bool:
        """True when a run uses PostgreSQL or Redis (whose processes are then measured too)."""
        return bool(self.database_url or self.hub_url)

    def describe(self) -> str:
        """One line for the report's header."""
        if not self.engines:
            return "1 process, SQLite, in-memory hub"
        store = "PostgreSQL store" if self.database_url else "SQLite"
        hub = "Redis hub" if self.hub_url else "in-memory hub"
        return (f"{self.workers} worker process{'es' if self.workers > 1 else ''} on one port, "
                f"{store} (a fresh schema per run), {hub} (a fresh prefix per run)")


class BenchServer:
    """One run's server in `workdir/name` (config, SQLite file, the server's stdout and stderr)
    with a bench config: a fresh SQLite file, or in the scaled mode a fresh PostgreSQL schema and
    Redis prefix. Its process runs in a process group of its own, so that a kill takes its workers
    with it."""

    def __init__(self, workdir: Path, name: str, synchronous: str, deployment: Deployment,
                 metrics: bool = True,
                 settings: dict[str, dict[str, Any]] | None = None) -> None:
        self.dir = workdir / name
        self.metrics = metrics
        self.dir.mkdir(parents=True)
        self.config = self.dir / "bench.toml"
        self.synchronous = synchronous
        self.deployment = deployment
        self.settings = settings
        self.schema = f"bench_{secrets.token_hex(6)}" if deployment.database_url else ""
        self.prefix = f"bench{secrets.token_hex(6)}" if deployment.hub_url else ""
        self.schema_made = False
        workers = ("--workers", str(deployment.workers)) if deployment.workers > 1 else ()
        self.process = ServerProcess(self.dir / "chat.db", self.config, self.dir, extra_args=workers,
                                     group=True)

    async def start(self) -> None:
        """Make its schema, write its config, start it and wait until it answers HTTP and every
        process (each worker) has printed its start-up line; on failure nothing is left behind
        (AssertionError with the server's output when it exits first or is not up within
        START_TIMEOUT seconds, or the driver's error)."""
        try:
            database_url = await self._make_schema()
            self.config.write_text(bench_config(self.synchronous, database_url,
                                                self.deployment.hub_url, self.prefix,
                                                self.metrics, self.settings))
            self.process.start()
            await self.process.wait_serving(START_TIMEOUT, processes=self.deployment.workers)
        except BaseException:
            self.process.stop_or_kill(signal.SIGTERM, STOP_TIMEOUT)  # None when it never started
            with contextlib.suppress(Exception):
                await self.drop_engines()
            raise

    async def _make_schema(self) -> str:
        """Create this run's PostgreSQL schema; the database URL that selects it ("" for SQLite)."""
        url = self.deployment.database_url
        if not url:
            return ""
        import asyncpg  # only the scaled mode needs it

        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f"CREATE SCHEMA {self.schema}")
            self.schema_made = True
        finally:
            await conn.close()
        return with_search_path(url, self.schema)

    async def drop_engines(self) -> None:
        """Remove this run's PostgreSQL schema and Redis keys (after the process has stopped)."""
        d = self.deployment
        if self.schema_made:
            import asyncpg

            conn = await asyncpg.connect(d.database_url)
            try:
                await conn.execute(f"DROP SCHEMA {self.schema} CASCADE")
            finally:
                await conn.close()
        if self.prefix:
            import redis.asyncio as redis

            client = redis.Redis.from_url(d.hub_url)
            try:
                keys = [k async for k in client.scan_iter(match=f"{self.prefix}*", count=1000)]
                if keys:
                    await client.delete(*keys)
            finally:
                await client.aclose()

    async def finish(self) -> dict[str, Any]:
        """Stop the server (SIGTERM, SIGKILL to its group after STOP_TIMEOUT seconds), drop its
        PostgreSQL schema and Redis keys, and say what its output holds: {"exit_code" (-9 when
        killed), "errors" (lines), "warnings" (count)[, "engines": {"schema", "prefix"}]}. A
        schema that cannot be dropped is reported on stderr, not raised."""
        code = await asyncio.to_thread(self.process.stop_or_kill, signal.SIGTERM, STOP_TIMEOUT)
        try:
            await self.drop_engines()
        except Exception as e:  # noqa: BLE001 - a leftover schema is worth a line, not the run
            print(f"[bench] could not drop {self.schema or self.prefix}: {e}", file=sys.stderr,
                  flush=True)
        note: dict[str, Any] = {"exit_code": code, "errors": self.process.errors_logged(),
                                "warnings": self.process.warnings_logged()}
        if self.deployment.engines:  # scaled mode: which schema and prefix the run used (dropped)
            note["engines"] = {"schema": self.schema, "prefix": self.prefix}
        return note
