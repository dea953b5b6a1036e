"""Configs of the server under test: a `Config` with some limits changed (in-process servers),
and the TOML tables of a server process (written by helpers.server.write_config)."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Mapping

from cryptography.fernet import Fernet

from chatserver.config import Config
from helpers import backends
from helpers.server import Tables, merge_tables

# Fast bcrypt, and limits no test reaches unless it says otherwise (the load and scale-out tests
# open many sockets of one user: SPREAD in test_scaleout.py).
QUICK: Tables = {
    "security": {"bcrypt_rounds": 4},
    "limits": {"messages_per_second": 1_000_000.0, "handshakes_per_minute": 1_000_000,
               "sockets_per_user": 1_000_000,
               "acks_per_second": 1_000_000.0, "lookups_per_minute": 1_000_000,
               "groups_per_day": 1_000_000, "rooms_per_day": 1_000_000},
}
# The load tests: FULL sync (the crash guarantee is about FULL), a quick WAL scrub (so that
# checkpoints run during the load), and an outgoing queue no load fills.
LOAD: Tables = merge_tables(QUICK, {
    "database": {"synchronous": "FULL", "scrub_seconds": 0.2},
    "limits": {"outgoing_queue": 1_000_000},
})


def scaled_config_tables(database_url: str, hub_prefix: str) -> dict[str, dict[str, object]]:
    """LOAD for servers that share one PostgreSQL schema and one Redis prefix (the scaled
    deployment): both engines, one cookie secret (a login on one process is valid on all), one
    password key (a password set on one process is checked on all), and a short close timeout."""
    return load_config_tables(
        database={"url": database_url},
        hub={"url": backends.REDIS_URL, "prefix": hub_prefix},
        security={"cookie_secret": Fernet.generate_key().decode(),
                  "password_key": secrets.token_urlsafe(32)},
        websocket={"close_timeout": 1.0})


def with_limits(config: Config, **changes: object) -> Config:
    """`config` with some `[limits]` keys changed."""
    return dataclasses.replace(config, limits=dataclasses.replace(config.limits, **changes))


def quick_config_tables(**tables: Mapping[str, object]) -> dict[str, dict[str, object]]:
    """QUICK with `tables` on top, key by key (`limits={"outgoing_queue": 8}`)."""
    return merge_tables(QUICK, tables)


def load_config_tables(**tables: Mapping[str, object]) -> dict[str, dict[str, object]]:
    """LOAD with `tables` on top, key by key."""
    return merge_tables(LOAD, tables)
