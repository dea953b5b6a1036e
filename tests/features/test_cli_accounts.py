"""The command line of SPEC 10, `chatserver.cli.main([...])` called directly against a database in
tmp_path: `adduser --admin`, `admin PHONE [--revoke]`, `invite [--uses N] [--days D]` (its link,
followed on an invite-only server, registers an account)."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from pytest_aiohttp import AiohttpClient, AiohttpServer
from yarl import URL

from chatserver.app import create_app
from chatserver.cli import main
from chatserver.config import load_config
from chatserver.protocol import now_micros
from chatserver.stores.base import Account, Invite, Store
from chatserver.stores.sqlite import SqliteStore
from helpers.accounts import PASSWORD

pytestmark = pytest.mark.filterwarnings(
    "ignore::aiohttp.web_exceptions.NotAppKeyWarning:aiohttp_session")

PHONE, OTHER, THIRD = "1234567890", "1234567891", "1234567892"
TIMEOUT = 10.0
DAY_US = 86_400 * 1_000_000
T = TypeVar("T")
Cli = Callable[..., int]
LINK_RE = re.compile(r"(?P<base>\S+)/register\?invite=(?P<code>[A-Za-z0-9_-]{22})")


def write_cfg(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "config.toml"
    path.write_text("[security]\nbcrypt_rounds = 4\nregistration = \"invite\"\n" + extra,
                    encoding="utf-8")
    return path


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "var" / "chat.db"


@pytest.fixture
def cli(tmp_path: Path, db: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """cli(*args, stdin=..., cfg_extra=...) -> exit status of `run.py --config CFG --db DB *args`."""
    def run(*args: str, stdin: str = "", cfg_extra: str = "") -> int:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        return main(["--config", str(write_cfg(tmp_path, cfg_extra)), "--db", str(db), *args])
    return run


def in_store(db: Path, action: Callable[[Store], Awaitable[T]]) -> T:
    async def go() -> T:
        store = await asyncio.wait_for(SqliteStore.open(db), TIMEOUT)
        try:
            return await asyncio.wait_for(action(store), TIMEOUT)
        finally:
            await asyncio.wait_for(store.close(), TIMEOUT)
    return asyncio.run(go())


def account(db: Path, phone: str) -> Account | None:
    return in_store(db, lambda s: s.account(phone, 3600))


def live_invites(db: Path) -> list[Invite]:
    return in_store(db, lambda s: s.invites(now_micros()))


def adduser(cli: Cli, phone: str, *flags: str) -> int:
    return cli("adduser", phone, "--name", f"user {phone}", "--password-stdin", *flags,
               stdin=PASSWORD + "\n")


# -- adduser --admin, admin ---------------------------------------------------------------------


def test_the_first_account_is_an_admin_and_admin_makes_more(
        cli: Cli, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert adduser(cli, PHONE) == 0
    assert "(admin)" in capsys.readouterr().out
    assert adduser(cli, OTHER) == 0
    assert adduser(cli, THIRD, "--admin") == 0
    assert "(admin)" in capsys.readouterr().out
    flags = {p: (a.admin if (a := account(db, p)) else None) for p in (PHONE, OTHER, THIRD)}
    assert flags == {PHONE: True, OTHER: False, THIRD: True}
    assert cli("admin", OTHER) == 0
    assert account(db, OTHER).admin  # type: ignore[union-attr]
    assert cli("admin", OTHER, "--revoke") == 0
    assert not account(db, OTHER).admin  # type: ignore[union-attr]


def test_admin_of_an_unknown_or_malformed_phone_returns_1(cli: Cli, db: Path) -> None:
    assert adduser(cli, PHONE) == 0
    assert cli("admin", OTHER) == 1
    assert cli("admin", "12ab") == 1


def test_the_last_admin_is_not_revoked(cli: Cli, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert adduser(cli, PHONE) == 0
    assert adduser(cli, OTHER) == 0
    assert cli("admin", PHONE, "--revoke") == 1
    assert "last enabled admin" in capsys.readouterr().err
    assert account(db, PHONE).admin  # type: ignore[union-attr]


# -- invite -------------------------------------------------------------------------------------


def test_invite_prints_a_link_with_the_defaults(
        cli: Cli, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("invite") == 0
    out = capsys.readouterr().out.strip()
    m = LINK_RE.fullmatch(out)
    assert m is not None, out
    assert m["base"] == "http://127.0.0.1:8080"
    (made,) = live_invites(db)
    assert (made.code, made.uses, made.uses_left, made.created_by) == (m["code"], 1, 1, None)
    assert abs(made.expires_us - now_micros() - 7 * DAY_US) < 60 * 1_000_000


def test_invite_uses_and_days(cli: Cli, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("invite", "--uses", "3", "--days", "2") == 0
    (made,) = live_invites(db)
    assert (made.uses, made.uses_left) == (3, 3)
    assert abs(made.expires_us - now_micros() - 2 * DAY_US) < 60 * 1_000_000


@pytest.mark.parametrize("args", [("--uses", "0"), ("--uses", "1001"), ("--days", "0"),
                                  ("--days", "366"), ("--days", "-3")])
def test_invite_out_of_bounds_returns_2_and_makes_nothing(cli: Cli, db: Path, args: tuple[str, ...]) -> None:
    assert cli("invite", *args) == 2
    assert not db.exists() or live_invites(db) == []


@pytest.mark.parametrize(("extra", "base"), [
    ('[server]\npublic_url = "https://chat.example.org/"\n', "https://chat.example.org"),
    ('[server]\npublic_url = "https://example.org/chat"\n', "https://example.org/chat"),
    ('[server]\nhost = "::1"\nport = 9000\n', "http://[::1]:9000"),
    ('[server]\nhost = "192.168.1.5"\n', "http://192.168.1.5:8080"),
])
def test_invite_link_base(cli: Cli, capsys: pytest.CaptureFixture[str], extra: str, base: str) -> None:
    assert cli("invite", cfg_extra=extra) == 0
    m = LINK_RE.fullmatch(capsys.readouterr().out.strip())
    assert m is not None and m["base"] == base


def test_invite_link_is_https_with_security_https(tmp_path: Path, db: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "https.toml"
    cfg.write_text("[security]\nbcrypt_rounds = 4\nhttps = true\n", encoding="utf-8")
    assert main(["--config", str(cfg), "--db", str(db), "invite"]) == 0
    m = LINK_RE.fullmatch(capsys.readouterr().out.strip())
    assert m is not None and m["base"] == "https://127.0.0.1:8080"


@pytest.mark.parametrize("url", ["chat.example.org", "ftp://x", "https://x/?a=b", "https://x/#f",
                                 "https://a b"])
def test_a_bad_public_url_is_refused(cli: Cli, url: str) -> None:
    assert cli("invite", cfg_extra=f'[server]\npublic_url = "{url}"\n') == 2


def test_the_code_is_not_logged(cli: Cli, caplog: pytest.LogCaptureFixture,
                                capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG, logger="chatserver")
    assert cli("invite") == 0
    m = LINK_RE.fullmatch(capsys.readouterr().out.strip())
    assert m is not None
    assert m["code"] not in "\n".join(r.getMessage() for r in caplog.records)


async def test_the_printed_link_registers_once_on_an_invite_only_server(
        tmp_path: Path, db: Path, aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write_cfg(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))
    # main() runs its own event loop: in a thread, away from this test's
    assert await asyncio.to_thread(main, ["--config", str(cfg), "--db", str(db), "adduser", PHONE,
                                          "--name", "admin", "--password-stdin"]) == 0
    assert await asyncio.to_thread(main, ["--config", str(cfg), "--db", str(db), "invite"]) == 0
    link = capsys.readouterr().out.strip().splitlines()[-1]
    m = LINK_RE.fullmatch(link)
    assert m is not None, link
    server = await aiohttp_server(create_app(load_config(cfg, database__path=str(db))))
    client = await aiohttp_client(server)
    url = URL(link)
    page = await client.get(f"{url.path}?{url.query_string}")
    assert f'name="invite" value="{m["code"]}"' in await page.text()
    resp = await client.post("/register", data={"phone": OTHER, "name": "new", "password": PASSWORD,
                                                "invite": m["code"]}, allow_redirects=False)
    assert resp.status == 302, await resp.text()
    again = await aiohttp_client(server)
    resp = await again.post("/register", data={"phone": THIRD, "name": "new", "password": PASSWORD,
                                               "invite": m["code"]}, allow_redirects=False)
    assert resp.status == 403
