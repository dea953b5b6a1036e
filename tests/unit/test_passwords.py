"""Passwords (issue 12, SPEC 4 and 10): at least 10 characters, at most 1024 bytes, not a common
one (chatserver/forms.py and chatserver/data/); pre-hashed with HMAC-SHA256 and the server's key
before bcrypt, so that every byte of a long passphrase counts (chatserver/auth.py); hashes of the
releases before (plain bcrypt) still accepted and upgraded at the next login, through a real
server process."""

from __future__ import annotations

import asyncio
import contextlib
import io
import sqlite3
import sys
import unicodedata
from pathlib import Path

import aiohttp
import bcrypt
import pytest

from chatserver.auth import (
    BCRYPT_MAX_BYTES,
    HMAC_PREFIX,
    MAX_PASSWORD_BYTES,
    MIN_PASSWORD_CHARS,
    check_password,
    hash_password,
    load_password_key,
    needs_upgrade,
)
from chatserver.cli import main
from chatserver.forms import COMMON_PASSWORDS, FormError, clean_password, is_common_password
from chatserver.stores.sqlite import SqliteStore
from helpers.accounts import client
from helpers.server import ServerProcess, running, write_config
from helpers.timing import TIMEOUT

KEY = b"k" * 43
OTHER_KEY = b"o" * 43
PHONE = "5557000001"
OLD_PASSWORD = "oldpass8"  # 8 bytes: what releases before issue 12 accepted


def hashed(password: str, key: bytes = KEY) -> bytes:
    return asyncio.run(hash_password(password, 4, key=key))


def checks(password: str, password_hash: bytes | None, key: bytes = KEY) -> bool:
    return asyncio.run(check_password(password, password_hash, 4, key=key))


# -- the rules for a new password -------------------------------------------------------------


@pytest.mark.parametrize("password", ["x7#kq9!mz2", "a" * MAX_PASSWORD_BYTES, "é" * 512, "😀" * 10,
                                      "correct horse battery staple", "ｘ７＃ｋｑ９！ｍｚ２"])
def test_accepted(password: str) -> None:
    assert clean_password(password) == password  # kept as typed, not normalised


@pytest.mark.parametrize(("password", "reason"), [
    ("x7#kq9!mz", "at least 10 characters"), ("", "at least 10"), ("😀" * 9, "at least 10"),
    ("a" * (MAX_PASSWORD_BYTES + 1), "at most 1024 bytes"), ("é" * 512 + "a", "at most 1024 bytes"),
    ("1234567890", "common"), ("password123", "common"), ("PassWord123", "common"),
    ("  password123 ", "common"), ("ｐａｓｓｗｏｒｄ１２３", "common"), ("qwertyuiop", "common"),
    ("abc\udcffdefghij", "valid text"), (None, "Enter a password"), (1234567890, "Enter a password"),
])
def test_refused_with_the_rule_that_failed(password: object, reason: str) -> None:
    with pytest.raises(FormError, match=reason):
        clean_password(password)


def test_the_common_list_is_loaded_once_normalised_and_only_of_passwords_the_length_rule_lets_by(
        ) -> None:
    assert len(COMMON_PASSWORDS) > 9000
    assert isinstance(COMMON_PASSWORDS, frozenset)
    for entry in COMMON_PASSWORDS:
        assert len(entry) >= MIN_PASSWORD_CHARS, entry
        assert entry == unicodedata.normalize("NFKC", entry).casefold().strip(), entry
    assert is_common_password("QWERTYUIOP")
    assert not is_common_password("correct horse battery staple")


# -- the pre-hash -----------------------------------------------------------------------------


def test_round_trip_and_format() -> None:
    stored = hashed("x7#kq9!mz2")
    assert stored.startswith(HMAC_PREFIX + b"$2b$04$")
    assert not needs_upgrade(stored)
    assert checks("x7#kq9!mz2", stored)
    assert not checks("x7#kq9!mz3", stored)
    assert not checks("x7#kq9!mz2", stored, key=OTHER_KEY)  # the key matters


def test_a_200_byte_passphrase_works_and_its_73rd_and_later_bytes_matter() -> None:
    passphrase = "p" * 100 + "q" * 100
    stored = hashed(passphrase)
    assert checks(passphrase, stored)
    assert not checks(passphrase[:BCRYPT_MAX_BYTES], stored)  # what bcrypt alone would read
    assert not checks(passphrase[:BCRYPT_MAX_BYTES] + "x" * 128, stored)  # same 72, then others
    assert not checks(passphrase[:-1] + "p", stored)  # the 200th byte
    assert not checks(passphrase + "q", stored)


def test_the_same_passphrase_composed_or_decomposed_is_the_same_password() -> None:
    """NFKC before the HMAC (NIST SP 800-63B): a macOS keyboard's e + U+0301 is a Windows é."""
    composed = "caf\u00e9 au lait, please"
    stored = hashed(composed)
    assert checks(unicodedata.normalize("NFD", composed), stored)


def test_more_than_1024_bytes_is_never_hashed_and_never_matches() -> None:
    with pytest.raises(ValueError, match="1024"):
        hashed("a" * (MAX_PASSWORD_BYTES + 1))
    assert not checks("a" * (MAX_PASSWORD_BYTES + 1), hashed("a" * MAX_PASSWORD_BYTES))


def test_an_old_plain_bcrypt_hash_is_still_checked() -> None:
    old = bcrypt.hashpw(OLD_PASSWORD.encode(), bcrypt.gensalt(4))
    assert needs_upgrade(old)
    assert checks(OLD_PASSWORD, old)
    assert checks(OLD_PASSWORD, old, key=OTHER_KEY)  # no key in an old hash
    assert not checks("oldpass9", old)
    assert not checks(OLD_PASSWORD + "x" * 70, old)  # over 72 bytes cannot match an old hash


def test_an_unknown_account_is_false() -> None:
    assert not checks("x7#kq9!mz2", None)


def test_the_key_file_is_made_once_owner_only_and_a_short_configured_key_is_refused(
        tmp_path: Path) -> None:
    db = tmp_path / "var" / "chat.db"
    key = load_password_key("", db)
    pepper = Path(f"{db}.pepper")
    assert pepper.stat().st_mode & 0o777 == 0o600
    assert len(key) >= 43 and load_password_key("", db) == key
    assert load_password_key("c" * 32, db) == "c" * 32
    with pytest.raises(ValueError, match="at least 32"):
        load_password_key("c" * 31, db)
    pepper.write_text("short\n")
    with pytest.raises(ValueError, match="at least 32"):
        load_password_key("", db)


# -- through a real server ----------------------------------------------------------------------


def stored_hash(db: Path, phone: str = PHONE) -> bytes:
    with contextlib.closing(sqlite3.connect(db)) as con:
        (value,), = con.execute("SELECT password_hash FROM users WHERE phone = ?", (phone,))
        return bytes(value)


async def add_old_style_user(db: Path, password: str) -> bytes:
    """An account as a release before issue 12 stored it: plain bcrypt of the UTF-8 bytes."""
    old = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4))
    store = await asyncio.wait_for(SqliteStore.open(db), TIMEOUT)
    try:
        assert await store.add_user(PHONE, "Old Timer", old)
    finally:
        await store.close()
    return old


async def login_status(session: aiohttp.ClientSession, server: ServerProcess, password: str) -> int:
    async with session.post(server.url("/login"), data={"phone": PHONE, "password": password},
                            allow_redirects=False) as resp:
        await resp.read()
        return resp.status


async def chat_status(session: aiohttp.ClientSession, server: ServerProcess) -> int:
    async with session.get(server.url("/chat"), allow_redirects=False) as resp:
        await resp.read()
        return resp.status


async def test_an_old_hash_logs_in_and_is_upgraded_at_that_login(tmp_path: Path) -> None:
    db, config = tmp_path / "chat.db", write_config(tmp_path / "config.toml",
                                                    {"security": {"bcrypt_rounds": 4}})
    old = await add_old_style_user(db, OLD_PASSWORD)
    async with running(db, config, tmp_path) as server:
        async with client() as wrong:
            assert await login_status(wrong, server, "oldpass9") == 401
        assert stored_hash(db) == old  # a wrong password upgrades nothing
        async with client() as first, client() as second:
            assert await login_status(first, server, OLD_PASSWORD) == 302
            upgraded = stored_hash(db)
            assert upgraded.startswith(HMAC_PREFIX + b"$2b$04$"), upgraded
            # the same password, now checked in the new format, from a second device; the
            # first device's session did not end with the upgrade
            assert await login_status(second, server, OLD_PASSWORD) == 302
            assert stored_hash(db) == upgraded  # upgraded once
            assert await chat_status(first, server) == 200
            assert await chat_status(second, server) == 200
    assert "upgraded" in server.output()


def cli(db: Path, config: Path, *args: str, stdin: str) -> int:
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        return main(["--config", str(config), "--db", str(db), *args])
    finally:
        sys.stdin = old_stdin


async def test_the_cli_and_the_server_share_the_key_and_a_lost_key_needs_passwd(tmp_path: Path) -> None:
    """`adduser` hashes with the key the server reads (`<database>.pepper`); with that file lost,
    the password no longer matches, and `run.py passwd` sets it again (README)."""
    db, config = tmp_path / "chat.db", write_config(tmp_path / "config.toml",
                                                    {"security": {"bcrypt_rounds": 4}})
    passphrase = "a passphrase longer than bcrypt reads, " * 3
    assert await asyncio.to_thread(cli, db, config, "adduser", PHONE, "--name", "Ada",
                                   "--password-stdin", stdin=passphrase + "\n") == 0
    async with running(db, config, tmp_path) as server, client() as session:
        assert await login_status(session, server, passphrase) == 302
    Path(f"{db}.pepper").unlink()  # lost (a new one is made at the next start)
    async with running(db, config, tmp_path) as server, client() as session:
        assert await login_status(session, server, passphrase) == 401
        assert await asyncio.to_thread(cli, db, config, "passwd", PHONE, "--password-stdin",
                                       stdin=passphrase + "\n") == 0
        assert await login_status(session, server, passphrase) == 302
