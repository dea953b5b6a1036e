"""The command line (SPEC 3), `chatserver.cli.main([...])` called directly: adduser, passwd,
deluser against a database in tmp_path, and the cookie secret file that `serve` uses."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import secrets
import sqlite3
import stat
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import asyncpg
import pytest
from cryptography.fernet import Fernet

from chatserver.auth import HMAC_PREFIX, check_password, load_password_key, load_secret
from chatserver.cli import main
from chatserver.stores.base import Store
from chatserver.stores.sqlite import SqliteStore
from helpers import backends
from helpers.accounts import PASSWORD

PHONE = "1234567890"
OTHER = "1234567891"
TIMEOUT = 10.0
T = TypeVar("T")
Cli = Callable[..., int]


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    """A config file with a fast bcrypt cost."""
    path = tmp_path / "config.toml"
    path.write_text("[security]\nbcrypt_rounds = 4\n", encoding="utf-8")
    return path


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "var" / "chat.db"


@pytest.fixture
def cli(cfg: Path, db: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """cli(*args, stdin=...) -> exit status of `run.py --config CFG --db DB *args`."""
    def run(*args: str, stdin: str = "") -> int:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        return main(["--config", str(cfg), "--db", str(db), *args])
    return run


def users(db: Path) -> dict[str, tuple[str, bytes]]:
    """phone -> (name, password hash) of every account in the database (empty when no file)."""
    if not db.exists():
        return {}
    with contextlib.closing(sqlite3.connect(db)) as con:
        return {phone: (name, bytes(hash_)) for phone, name, hash_ in
                con.execute("SELECT phone, name, password_hash FROM users")}


def verifies(db: Path | str, password: str, password_hash: bytes, key: str = "") -> bool:
    """True when `password` matches a stored hash made with the key the CLI and the server use
    (`key`, else `<db>.pepper`)."""
    return asyncio.run(check_password(password, password_hash, 4,
                                      key=load_password_key(key, db).encode()))


def count(db: Path, table: str) -> int:
    with contextlib.closing(sqlite3.connect(db)) as con:
        return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def in_store(db: Path, action: Callable[[Store], Awaitable[T]]) -> T:
    """Run `await action(store)` on a SqliteStore of `db` (for set-up the CLI does not offer)."""
    async def go() -> T:
        store = await asyncio.wait_for(SqliteStore.open(db), TIMEOUT)
        try:
            return await asyncio.wait_for(action(store), TIMEOUT)
        finally:
            await asyncio.wait_for(store.close(), TIMEOUT)
    return asyncio.run(go())


# -- adduser ------------------------------------------------------------------------------------


def test_adduser_creates_an_account_whose_hash_verifies(
        cli: Cli, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("adduser", PHONE, "--name", "  Ada  ", "--password-stdin", stdin=PASSWORD + "\n") == 0
    assert PHONE in capsys.readouterr().out
    accounts = users(db)
    assert set(accounts) == {PHONE}
    name, password_hash = accounts[PHONE]
    assert name == "Ada"  # trimmed
    assert verifies(db, PASSWORD, password_hash)
    assert not verifies(db, "wrong password", password_hash)
    assert password_hash.startswith(HMAC_PREFIX + b"$2b$04$")  # the configured cost, not the default 12


@pytest.mark.parametrize(
    "stdin", [PASSWORD + "\n", PASSWORD + "\r\n", PASSWORD, PASSWORD + "\nsecond line\n"])
def test_adduser_reads_only_the_first_line_without_its_newline(cli: Cli, db: Path, stdin: str) -> None:
    assert cli("adduser", PHONE, "--name", "Ada", "--password-stdin", stdin=stdin) == 0
    assert verifies(db, PASSWORD, users(db)[PHONE][1])


def test_flags_after_the_subcommand(cfg: Path, db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SPEC 3 writes `--config` / `--db` after the command too."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["adduser", PHONE, "--name", "Ada", "--password-stdin",
                 "--config", str(cfg), "--db", str(db)]) == 0
    name, password_hash = users(db)[PHONE]
    assert name == "Ada"
    assert password_hash.startswith(HMAC_PREFIX + b"$2b$04$")


def test_duplicate_adduser_returns_1_and_keeps_the_first(
        cli: Cli, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("adduser", PHONE, "--name", "Ada", "--password-stdin", stdin=PASSWORD + "\n") == 0
    first = users(db)[PHONE]
    capsys.readouterr()
    assert cli("adduser", PHONE, "--name", "Eve", "--password-stdin", stdin="other password\n") == 1
    assert PHONE in capsys.readouterr().err
    assert users(db) == {PHONE: first}


@pytest.mark.parametrize(
    "phone", ["123456789", "1234567890123456", "+1234567890", "123-456-7890", "１２３４５６７８９０", ""])
def test_adduser_with_a_bad_phone_returns_1_and_creates_nothing(
        cli: Cli, db: Path, phone: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("adduser", phone, "--name", "Ada", "--password-stdin", stdin=PASSWORD + "\n") == 1
    assert "phone" in capsys.readouterr().err
    assert users(db) == {}


@pytest.mark.parametrize(
    "password",
    # 0, 5, 9 characters; 1025 and 1026 bytes; common ones (SPEC 10), also in capitals
    ["", "short", "x7#kq9!mz", "a" * 1025, "é" * 513, "1234567890", "Password123", "QWERTYUIOP"],
)
def test_adduser_with_a_bad_password_returns_1_and_creates_nothing(
        cli: Cli, db: Path, password: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("adduser", PHONE, "--name", "Ada", "--password-stdin", stdin=password + "\n") == 1
    assert "password" in capsys.readouterr().err.lower()
    assert users(db) == {}


# 10 characters; 1024 bytes; 1024 bytes in 2-byte characters; 10 characters in 40 bytes
@pytest.mark.parametrize("password", ["x7#kq9!mz2", "b" * 1024, "é" * 512, "🎉" * 10])
def test_adduser_password_length_is_counted_in_bytes(cli: Cli, db: Path, password: str) -> None:
    assert cli("adduser", PHONE, "--name", "Ada", "--password-stdin", stdin=password + "\n") == 0
    assert verifies(db, password, users(db)[PHONE][1])


def test_adduser_with_a_password_that_is_not_text_returns_1(cli: Cli, db: Path) -> None:
    assert cli("adduser", PHONE, "--name", "Ada", "--password-stdin", stdin="abc\udcffdefgh\n") == 1
    assert users(db) == {}


@pytest.mark.parametrize("name", ["", "   ", "x" * 65, "bad\x00name", "tab\there"])
def test_adduser_with_a_bad_name_returns_1_and_creates_nothing(cli: Cli, db: Path, name: str) -> None:
    assert cli("adduser", PHONE, "--name", name, "--password-stdin", stdin=PASSWORD + "\n") == 1
    assert users(db) == {}


# -- passwd -------------------------------------------------------------------------------------


def test_passwd_changes_the_hash_and_ends_sessions(cli: Cli, db: Path) -> None:
    assert cli("adduser", PHONE, "--name", "Ada", "--password-stdin", stdin=PASSWORD + "\n") == 0
    assert cli("adduser", OTHER, "--name", "Bob", "--password-stdin", stdin=PASSWORD + "\n") == 0
    in_store(db, lambda s: s.add_session("ada-session", PHONE))
    in_store(db, lambda s: s.add_session("bob-session", OTHER))
    old_hash = users(db)[PHONE][1]
    assert cli("passwd", PHONE, "--password-stdin", stdin="a new password\n") == 0
    new_hash = users(db)[PHONE][1]
    assert new_hash != old_hash
    assert verifies(db, "a new password", new_hash)
    assert not verifies(db, PASSWORD, new_hash)
    assert in_store(db, lambda s: s.session_user("ada-session", 3600)) is None
    assert in_store(db, lambda s: s.session_user("bob-session", 3600)) == OTHER
    assert verifies(db, PASSWORD, users(db)[OTHER][1])  # untouched


def test_passwd_of_an_unknown_account_returns_1(cli: Cli, db: Path) -> None:
    assert cli("adduser", PHONE, "--name", "Ada", "--password-stdin", stdin=PASSWORD + "\n") == 0
    assert cli("passwd", OTHER, "--password-stdin", stdin="a new password\n") == 1
    assert set(users(db)) == {PHONE}


@pytest.mark.parametrize("password", ["", "short", "a" * 1025, "1234567890"])
def test_passwd_with_a_bad_password_returns_1_and_keeps_the_hash(cli: Cli, db: Path, password: str) -> None:
    assert cli("adduser", PHONE, "--name", "Ada", "--password-stdin", stdin=PASSWORD + "\n") == 0
    before = users(db)
    assert cli("passwd", PHONE, "--password-stdin", stdin=password + "\n") == 1
    assert users(db) == before


def test_passwd_with_a_bad_phone_returns_1(cli: Cli) -> None:
    assert cli("passwd", "12345", "--password-stdin", stdin="a new password\n") == 1


# -- deluser ------------------------------------------------------------------------------------


def test_deluser_removes_the_account_and_a_second_deluser_returns_1(
        cli: Cli, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("adduser", PHONE, "--name", "Ada", "--password-stdin", stdin=PASSWORD + "\n") == 0
    assert cli("adduser", OTHER, "--name", "Bob", "--password-stdin", stdin=PASSWORD + "\n") == 0
    assert in_store(db, lambda s: s.add_personal(OTHER, PHONE, 1, "t", "for ada"))
    assert in_store(db, lambda s: s.add_personal(PHONE, OTHER, 1, "t", "from ada"))
    in_store(db, lambda s: s.add_session("ada-session", PHONE))
    assert cli("deluser", PHONE) == 0
    assert set(users(db)) == {OTHER}
    assert count(db, "personal_messages") == 0
    assert count(db, "sessions") == 0
    capsys.readouterr()
    assert cli("deluser", PHONE) == 1
    assert PHONE in capsys.readouterr().err
    assert set(users(db)) == {OTHER}


def test_deluser_of_a_bad_phone_returns_1(cli: Cli, db: Path) -> None:
    assert cli("adduser", PHONE, "--name", "Ada", "--password-stdin", stdin=PASSWORD + "\n") == 0
    assert cli("deluser", PHONE + "x") == 1
    assert set(users(db)) == {PHONE}


# -- bad configuration and damaged databases ----------------------------------------------------


@pytest.mark.parametrize(
    "text", ["[security]\nbcrypt_round = 4\n", "[nosuch]\n", "[server]\nport = \"80\"\n", "[server\n"])
def test_a_bad_config_file_returns_2(tmp_path: Path, db: Path, text: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["--config", str(path), "--db", str(db),
                 "adduser", PHONE, "--name", "Ada", "--password-stdin"]) == 2
    assert users(db) == {}


def test_a_missing_config_file_returns_2(tmp_path: Path, db: Path) -> None:
    assert main(["--config", str(tmp_path / "nope.toml"), "--db", str(db), "deluser", PHONE]) == 2


def test_a_damaged_database_returns_2(cli: Cli, db: Path) -> None:
    assert cli("adduser", PHONE, "--name", "Ada", "--password-stdin", stdin=PASSWORD + "\n") == 0
    with contextlib.closing(sqlite3.connect(db)) as con:
        page_size = con.execute("PRAGMA page_size").fetchone()[0]
        (root,) = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'sessions_phone'").fetchone()
    with open(db, "r+b") as fh:  # an index page that PRAGMA quick_check reports
        fh.seek((root - 1) * page_size)
        fh.write(b"\xff" * 100)
    assert cli("deluser", PHONE) == 2


def test_a_file_that_is_not_a_database_returns_2(cli: Cli, db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not a database " * 1000)
    assert cli("deluser", PHONE) == 2


# -- the cookie secret that `serve` uses (SPEC 3) -----------------------------------------------


def test_secret_is_generated_beside_the_database_with_mode_0600(tmp_path: Path) -> None:
    db_path = tmp_path / "var" / "chat.db"
    old_umask = os.umask(0)  # the mode must not depend on a strict umask
    try:
        key = load_secret("", db_path)
    finally:
        os.umask(old_umask)
    path = tmp_path / "var" / "chat.db.secret"
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == key
    Fernet(key)  # a usable key


def test_secret_file_is_reused(tmp_path: Path) -> None:
    db_path = tmp_path / "chat.db"
    first = load_secret("", db_path)
    written = Path(f"{db_path}.secret").read_bytes()
    assert load_secret("", db_path) == first
    assert load_secret("", str(db_path)) == first
    assert Path(f"{db_path}.secret").read_bytes() == written
    assert load_secret("", tmp_path / "other.db") != first  # one secret per database


def test_configured_secret_is_used_and_nothing_is_written(tmp_path: Path) -> None:
    key = Fernet.generate_key().decode()
    assert load_secret(key, tmp_path / "chat.db") == key
    assert not Path(f"{tmp_path / 'chat.db'}.secret").exists()


@pytest.mark.parametrize(
    "key",
    [
        "not a key",
        "c2hvcnQ=",  # valid base64 of 5 bytes
        Fernet.generate_key().decode()[:-4],
        "A" * 44,  # 33 bytes once decoded
        "é" * 44,
    ],
)
def test_invalid_configured_secret_raises_valueerror(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError):
        load_secret(key, tmp_path / "chat.db")


def test_damaged_secret_file_raises_valueerror(tmp_path: Path) -> None:
    db_path = tmp_path / "chat.db"
    Path(f"{db_path}.secret").write_text("garbage\n")
    with pytest.raises(ValueError):
        load_secret("", db_path)


# -- on PostgreSQL ([database] url) -------------------------------------------------------------


def test_the_account_commands_work_on_postgresql_and_backup_refuses_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """adduser / passwd / deluser open the PostgreSQL store when `[database] url` is set (a fresh
    schema here); `backup` is SQLite's and says to use pg_dump instead."""
    backends.require(backends.POSTGRES)
    schema = "t_" + secrets.token_hex(6)
    url = backends.with_search_path(backends.POSTGRES_URL, schema)

    async def execute(sql: str, *args: object, on: str = backends.POSTGRES_URL) -> list[tuple]:
        conn = await asyncio.wait_for(asyncpg.connect(on), TIMEOUT)
        try:
            return [tuple(r) for r in await asyncio.wait_for(conn.fetch(sql, *args), TIMEOUT)]
        finally:
            await conn.close()

    def accounts() -> dict[str, tuple[str, bytes]]:
        return {phone: (name, hash_) for phone, name, hash_ in asyncio.run(
            execute("SELECT phone, name, password_hash FROM users", on=url))}

    cfg = tmp_path / "config.toml"
    key = secrets.token_urlsafe(32)  # in the config: no <database>.pepper file in the working folder
    cfg.write_text(f'[security]\nbcrypt_rounds = 4\npassword_key = "{key}"\n[database]\nurl = "{url}"\n',
                   encoding="utf-8")

    def cli(*args: str, stdin: str = "") -> int:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        return main(["--config", str(cfg), *args])

    asyncio.run(execute(f"CREATE SCHEMA {schema}"))
    try:
        assert cli("adduser", PHONE, "--name", "Ada", "--password-stdin", stdin=PASSWORD + "\n") == 0
        assert cli("adduser", PHONE, "--name", "Eve", "--password-stdin", stdin="other one\n") == 1
        name, first_hash = accounts()[PHONE]
        assert name == "Ada" and verifies("unused.db", PASSWORD, first_hash, key)
        assert cli("passwd", PHONE, "--password-stdin", stdin="a new password\n") == 0
        assert verifies("unused.db", "a new password", accounts()[PHONE][1], key)
        assert cli("deluser", PHONE) == 0
        assert accounts() == {}
        assert cli("deluser", PHONE) == 1
        capsys.readouterr()
        assert cli("backup", str(tmp_path / "copy.db")) == 2
        assert "pg_dump" in capsys.readouterr().err
        assert not (tmp_path / "copy.db").exists()
    finally:
        asyncio.run(execute(f"DROP SCHEMA {schema} CASCADE"))
