"""The storage engines behind one interface (base.Store): `open_store(config)` picks the engine
from the scheme of `[database] url` (SQLite at `[database] path` when it is empty) and imports only
that engine's module, so a SQLite deployment never loads asyncpg.

A third engine is one module (a class with `connect(config)` and `backup(config, target)`
classmethods, usually a queries.SqlStore), one schema file and one line in ENGINES.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from ..config import Config
from .base import Store, StoreError

# URL scheme of `[database] url` -> "module:Class" (the module relative to this package); no URL
# at all means the SQLite file at `[database] path`.
ENGINES: Final = {
    "": ".sqlite:SqliteStore",
    "postgresql": ".postgres:PgStore",
    "postgres": ".postgres:PgStore",
}


def engine_class(config: Config) -> Any:
    """The engine class `config` asks for, imported now. Raises StoreError for an unknown scheme."""
    scheme = urlsplit(config.database.url).scheme
    try:
        module_name, class_name = ENGINES[scheme].split(":")
    except KeyError:
        raise StoreError(f"[database] url: unknown scheme {scheme!r}; "
                         f"expected one of {', '.join(s for s in sorted(ENGINES) if s)}") from None
    return getattr(importlib.import_module(module_name, __name__), class_name)


async def open_store(config: Config) -> Store:
    """Open the store `config` asks for (creating or upgrading its schema). Raises StoreError & co
    (CorruptDatabase, SchemaTooNew) or OSError when it cannot be used."""
    store: Store = await engine_class(config).connect(config)
    return store


def backup(config: Config, target: str | Path) -> str:
    """Copy the configured database into the new file `target`, also while serving; returns what
    was copied. Raises BackupUnsupported for an engine with its own tools, FileExistsError,
    FileNotFoundError or StoreError when the copy fails (then no partial `target` is left)."""
    copied: str = engine_class(config).backup(config, target)
    return copied
