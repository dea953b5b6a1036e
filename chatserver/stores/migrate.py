"""Versioned schema migrations (SPEC 10, "Upgrades"): which scripts bring a database from the
version it records to the version of this release.

Version 1 is an engine's schema file (schema.sql, schema-postgres.sql); migration N >= 2 is
`migrations/<engine>/NNNN_name.sql`, applied on top of N-1. A database records its version in the
one-row table `schema_version`; one made before versions were recorded (it has tables but no
`schema_version`) is version 1, and an empty one is version 0. Each engine runs the scripts of
`plan()` and `record()` in ONE transaction at start-up (PostgreSQL: under its advisory lock), so
an upgrade that fails leaves the database exactly as it was.

Our own few dozen lines rather than a library: yoyo-migrations needs a synchronous DB-API driver
(psycopg2, sqlite3) beside asyncpg/aiosqlite, and alembic needs SQLAlchemy; neither runs raw SQL
files on the connections the engines already hold, inside the transaction they already hold.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

from .base import SchemaTooNew, StoreError

# migrations/<engine>/ at the repository root, beside the schema files (version 1).
MIGRATIONS_DIR: Final = Path(__file__).resolve().parent.parent.parent / "migrations"
_NAME: Final = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")
# The same text on both engines: no placeholders, types both know.
CREATE_VERSION_TABLE: Final = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
READ_VERSION: Final = "SELECT version FROM schema_version"


def migrations(folder: Path) -> dict[int, Path]:
    """The migration files in `folder` by version (2, 3, ...); none when it does not exist.

    Raises StoreError for a misnamed file or a gap in the numbering (a release bug)."""
    found: dict[int, Path] = {}
    for path in sorted(folder.glob("*.sql")) if folder.is_dir() else []:
        m = _NAME.fullmatch(path.name)
        if m is None or int(m[1]) < 2:
            raise StoreError(f"{path}: a migration is named NNNN_name.sql with NNNN >= 0002")
        found[int(m[1])] = path
    if sorted(found) != list(range(2, len(found) + 2)):
        raise StoreError(f"{folder}: migrations must be numbered 0002, 0003, ... without gaps")
    return found


def latest(folder: Path) -> int:
    """The schema version this release makes: 1 plus the number of migrations."""
    return 1 + len(migrations(folder))


def plan(schema: Path, folder: Path, version: int, where: str) -> list[tuple[int, str]]:
    """The (version, script) pairs that bring a database at `version` (0: empty) to `latest`,
    in order; empty when it is there already.

    Raises SchemaTooNew when `version` is newer than this release (`where` names the database
    in its message)."""
    found = migrations(folder)
    newest = 1 + len(found)
    if version > newest:
        raise SchemaTooNew(
            f"{where} has schema version {version}, newer than this release's {newest}: "
            "it was upgraded by a newer release; run that release (or newer) on it")
    steps = [(1, schema.read_text())] if version < 1 else []
    steps += [(n, found[n].read_text()) for n in range(max(version, 1) + 1, newest + 1)]
    return steps


def record(version: int) -> list[str]:
    """The statements that record `version` as the database's schema version."""
    return [CREATE_VERSION_TABLE, "DELETE FROM schema_version",
            f"INSERT INTO schema_version (version) VALUES ({int(version)})"]
