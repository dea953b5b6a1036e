"""Files 0600, folders 0700 (issue 12, finding 7): the database, its -wal/-shm, the folder the
server creates, backups and the cookie secret, also for a deployment made by an older release."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatserver.auth import load_secret
from chatserver.cli import main
from chatserver.stores.sqlite import SqliteStore

TIMEOUT = 10.0


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """The usual umask (022), under which files are made 0644 unless asked otherwise."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def open_and_write(db: Path) -> None:
    """Open the store (creating it), write once so the -wal and -shm exist, and check the modes
    while it is open."""
    store = await asyncio.wait_for(SqliteStore.open(db), TIMEOUT)
    try:
        await store.add_user("1234567890", "Ann", b"x")
        for suffix in ("", "-wal", "-shm"):
            assert mode(Path(f"{db}{suffix}")) == 0o600, suffix
    finally:
        await asyncio.wait_for(store.close(), TIMEOUT)


async def test_a_new_database_its_wal_shm_and_folder_are_owner_only(tmp_path: Path) -> None:
    db = tmp_path / "var" / "chat.db"
    await open_and_write(db)
    assert mode(db.parent) == 0o700


async def test_an_old_deployment_is_tightened_at_start_up(tmp_path: Path) -> None:
    db = tmp_path / "var" / "chat.db"
    await open_and_write(db)
    secret = Path(f"{db}.secret")
    load_secret("", db)
    for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), secret):
        if p.exists():
            p.chmod(0o644)
    db.parent.chmod(0o755)
    await open_and_write(db)
    assert mode(db) == 0o600
    assert mode(secret) == 0o600
    assert mode(db.parent) == 0o700


async def test_a_shared_folder_keeps_its_mode(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o755)
    (folder / "notes.txt").write_text("not ours")
    await open_and_write(folder / "chat.db")
    assert mode(folder) == 0o755


def test_an_old_secret_file_is_tightened_when_read(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    key = load_secret("", db)
    secret = Path(f"{db}.secret")
    secret.chmod(0o644)
    assert load_secret("", db) == key
    assert mode(secret) == 0o600


def test_a_backup_is_owner_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "var" / "chat.db"
    asyncio.run(open_and_write(db))
    target = tmp_path / "backup.db"
    monkeypatch.setattr(sys, "stdin", None)
    assert main(["--db", str(db), "backup", str(target)]) == 0
    assert mode(target) == 0o600
    assert target.stat().st_size > 0
