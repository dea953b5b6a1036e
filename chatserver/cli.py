"""The command line (SPEC 3, 10, 12): serve / adduser / passwd / deluser / backup / invite / admin /
token. Flags override the config file."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import getpass
import logging
import os
import resource
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import uvloop
from aiohttp import web

from . import invites, metrics
from .app import create_app
from .auth import create_token, hash_password, load_password_key, load_secret
from .config import Config, ConfigError, load_config
from .forms import FormError, clean_name, clean_password, clean_phone
from .logs import AccessLogger, configure_logging
from .protocol import now_micros, server_timestamp
from .push import load_vapid, vapid_private_key
from .stores import backup, open_store
from .stores.base import BackupUnsupported, CorruptDatabase, LastAdmin, SchemaTooNew, Store, StoreError
from .supervisor import supervise

T = TypeVar("T")

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "config.toml"
# What a store or hub that cannot be used raises at start-up (also CorruptDatabase, SchemaTooNew):
# a clear line, not a traceback.
STARTUP_ERRORS: tuple[type[BaseException], ...] = (OSError, StoreError)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run.py", description="Self-hosted phone-number chat server.")
    parser.add_argument("--config", help=f"TOML config file (default: {DEFAULT_CONFIG} if present)")
    parser.add_argument("--db", help="SQLite database file (overrides [database] path)")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve HTTP and WebSockets")
    serve.add_argument("--host", help="address to listen on (overrides [server] host)")
    serve.add_argument("--port", type=int, help="port to listen on (overrides [server] port)")
    serve.add_argument("--workers", type=int, default=1,
                       help="server processes sharing the port (SO_REUSEPORT); more than 1 needs "
                            "[database] url (PostgreSQL) and [hub] url (Redis)")
    add = sub.add_parser("adduser", help="create an account")
    add.add_argument("phone")
    add.add_argument("--name", required=True)
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from the first line of standard input")
    add.add_argument("--admin", action="store_true", help="make the account an admin (SPEC 10)")
    passwd = sub.add_parser("passwd", help="set an account's password (ends its sessions)")
    passwd.add_argument("phone")
    passwd.add_argument("--password-stdin", action="store_true")
    delete = sub.add_parser("deluser", help="delete an account and everything stored for it")
    delete.add_argument("phone")
    copy = sub.add_parser("backup", help="copy the database to a new file, also while serving")
    copy.add_argument("path")
    invite = sub.add_parser("invite", help="make an invite and print its registration link")
    invite.add_argument("--uses", type=int, default=invites.DEFAULT_USES,
                        help=f"registrations it allows (1 to {invites.MAX_USES}, default 1)")
    invite.add_argument("--days", type=int, default=invites.DEFAULT_DAYS,
                        help=f"days until it expires (1 to {invites.MAX_DAYS}, default 7)")
    grant = sub.add_parser("admin", help="make an account an admin (or, with --revoke, not)")
    grant.add_argument("phone")
    grant.add_argument("--revoke", action="store_true")
    token = sub.add_parser("token", help="make a client token for a bot or a script (SPEC 12): "
                                         "the token on standard output, its device id on standard error")
    token.add_argument("phone")
    token.add_argument("--label", required=True,
                       help="what the devices list shows for it (1 to 64 characters)")
    # `--config` and `--db` are accepted after the subcommand too, as SPEC 3 writes them.
    for p in (serve, add, passwd, delete, copy, invite, grant, token):
        p.add_argument("--config", dest="sub_config", help=argparse.SUPPRESS)
        p.add_argument("--db", dest="sub_db", help=argparse.SUPPRESS)
    return parser


def _config(args: argparse.Namespace) -> Config:
    path = args.sub_config or args.config
    if path is None and Path(DEFAULT_CONFIG).is_file():
        path = DEFAULT_CONFIG
    return load_config(path, database__path=args.sub_db or args.db,
                       server__host=getattr(args, "host", None),
                       server__port=getattr(args, "port", None))


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise FormError("The passwords do not match.")
    return first


def raise_fd_limit() -> int:
    """Raise the open-file limit to the hard limit (each socket is a file); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError):
            pass
    return soft


def _where(config: Config) -> str:
    """The database, for the start-up line; a URL's password is not printed."""
    if not config.database.url:
        return f"database {config.database.path}"
    url = urlsplit(config.database.url)
    host = url.hostname or "localhost"
    return f"PostgreSQL {host}:{url.port or 5432}{url.path}" + (
        ", Redis hub" if config.hub.url else "")


def _serve(config: Config, workers: int = 1) -> int:
    """Serve until SIGINT/SIGTERM; with `workers` > 1, as that many processes on one port."""
    if workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    if workers > 1 and not config.scaled_out:
        print("error: --workers > 1 needs the PostgreSQL store and the Redis hub ([database] url "
              "and [hub] url): the SQLite store and the in-memory hub live in one process",
              file=sys.stderr)
        return 2
    limit = raise_fd_limit()
    log.info("open-file limit %d: at most about %d sockets per process", limit, limit - 50)
    if workers == 1:
        return _serve_one(config, reuse_port=False)
    try:
        # Read (or create) the cookie secret, the password key and the VAPID key once, before any
        # worker starts: they must share them (and two workers must not race to create a file).
        config = dataclasses.replace(config, security=dataclasses.replace(
            config.security,
            cookie_secret=load_secret(config.security.cookie_secret, config.database.path),
            password_key=load_password_key(config.security.password_key, config.database.path)))
        if config.push.enabled:  # every worker must sign pushes with the key browsers know
            config = dataclasses.replace(config, push=dataclasses.replace(
                config.push, vapid_private_key=vapid_private_key(load_vapid(config))))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return supervise(functools.partial(_serve_one, reuse_port=True), config, workers)


def _serve_one(config: Config, *, reuse_port: bool) -> int:
    if not config.metrics.enabled:
        metrics.disable()  # nothing counted: /metrics answers 404 anyway
    try:
        app = create_app(config)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def serving(_: str) -> None:  # run_app calls it once the store is open and the port bound
        # One write per line: workers share stdout, and print() writes the newline separately.
        sys.stdout.write(f"Serving on http://{config.server.host}:{config.server.port} "
                         f"({_where(config)}, process {os.getpid()}); Ctrl-C stops.\n")
        sys.stdout.flush()

    # uvloop: the event loop's own overhead per socket read and write is a large share of the
    # cost of a message (see README, Performance).
    try:
        web.run_app(app, host=config.server.host, port=config.server.port, print=serving,
                    loop=uvloop.new_event_loop(), reuse_port=reuse_port,
                    access_log=(logging.getLogger("aiohttp.access") if config.server.access_log
                                else None),
                    access_log_class=AccessLogger)
    except (CorruptDatabase, SchemaTooNew):
        raise  # a database refused, not one out of reach: main() says it in one line
    except STARTUP_ERRORS as e:
        print(f"error: cannot start: {e}", file=sys.stderr)
        return 2
    return 0


def _closes_within(config: Config) -> str:
    """How soon a server notices an ended session (chatserver/sessions.py), for the messages of
    passwd and deluser: its check interval plus the closing handshake's bound."""
    seconds = config.security.session_check_seconds + config.websocket.close_timeout
    return f"{seconds:g} s ([security] session_check_seconds + [websocket] close_timeout)"


async def _with_store(config: Config, action: Callable[[Store], Awaitable[T]]) -> T:
    """`await action(store)` on the configured store, closed afterwards."""
    store = await open_store(config)
    try:
        return await action(store)
    finally:
        await store.close()


async def _new_hash(config: Config, password: str) -> bytes:
    """The stored hash of a new password, with the server's password key (the same file or
    config key the server reads: a hash made with another key would never match)."""
    key = load_password_key(config.security.password_key, config.database.path)
    return await hash_password(password, config.security.bcrypt_rounds, key=key.encode())


def _invite(config: Config, uses: int, days: int) -> int:
    """`run.py invite`: record an invite and print its link (SPEC 10); 2 for bounds not kept."""
    if not 1 <= uses <= invites.MAX_USES or not 1 <= days <= invites.MAX_DAYS:
        print(f"error: --uses must be 1 to {invites.MAX_USES} and --days 1 to {invites.MAX_DAYS}",
              file=sys.stderr)
        return 2
    expires_us = now_micros() + days * invites.DAY_US

    async def make(store: Store) -> str:
        code = invites.new_code()
        while not await store.create_invite(code, None, uses, expires_us):  # a 128-bit collision
            code = invites.new_code()
        return code

    code = asyncio.run(_with_store(config, make))
    # The link is the command's output (for the operator to send); it is never logged.
    print(invites.invite_url(config, code))
    print(f"({uses} use{'s' if uses != 1 else ''}, expires {server_timestamp(expires_us)} UTC)",
          file=sys.stderr)
    return 0


def _admin(config: Config, phone: str, grant: bool) -> int:
    """`run.py admin PHONE [--revoke]`: 1 for an unknown phone or the last admin."""
    try:
        done = asyncio.run(_with_store(config, lambda s: s.set_account_flags(phone, admin=grant)))
    except LastAdmin as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if done is None:
        print(f"error: no account {phone}", file=sys.stderr)
        return 1
    print(f"{phone} is {'now' if grant else 'no longer'} an admin")
    return 0


def _token(config: Config, phone: str, label: str) -> int:
    """`run.py token PHONE --label L` (SPEC 12): print a new client token of `phone` on standard
    output, one line (the one time it is shown: the database keeps its SHA-256), and `id=DEVICE`
    on standard error; 1 for an unknown phone. Revoked like any device (DELETE /chat/devices)."""
    async def make(store: Store) -> tuple[str, str] | None:
        if not await store.user_exists(phone):
            return None
        return await create_token(store, phone, label)

    made = asyncio.run(_with_store(config, make))
    if made is None:
        print(f"error: no account {phone}", file=sys.stderr)
        return 1
    device_id, secret = made
    print(secret)  # the command's output, for the operator to hand to the bot; never logged
    print(f"id={device_id}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit status (0 ok, 1 refused, 2 bad usage/config)."""
    configure_logging()
    args = _parser().parse_args(argv)
    try:
        config = _config(args)
    except (ConfigError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    configure_logging(config.server.log_format)
    try:
        if args.command == "serve":
            return _serve(config, args.workers)
        if args.command == "backup":
            try:
                copied = backup(config, args.path)
            except BackupUnsupported as e:  # the engine has its own tools
                print(f"error: {e}", file=sys.stderr)
                return 2
            except (OSError, StoreError) as e:
                print(f"error: {e}", file=sys.stderr)
                return 1
            print(f"backed up {copied} to {args.path}")
            return 0
        if args.command == "invite":
            return _invite(config, args.uses, args.days)
        phone = clean_phone(args.phone)
        if args.command == "admin":
            return _admin(config, phone, not args.revoke)
        if args.command == "token":
            return _token(config, phone, clean_name(args.label))
        if args.command == "adduser":
            name = clean_name(args.name)
            password_hash = asyncio.run(_new_hash(config, clean_password(
                _read_password(args.password_stdin))))
            # Whatever `security.registration` says: the operator creates accounts (SPEC 10).
            done = asyncio.run(_with_store(config, lambda s: s.register_user(
                phone, name, password_hash, mode="open", admin=args.admin)))
            if done.outcome != "created":
                print(f"error: {phone} is already registered", file=sys.stderr)
                return 1
            print(f"added {phone}" + (" (admin)" if done.admin else ""))
        elif args.command == "passwd":
            password_hash = asyncio.run(_new_hash(config, clean_password(
                _read_password(args.password_stdin))))
            if not asyncio.run(_with_store(config, lambda s: s.set_password(phone, password_hash))):
                print(f"error: no account {phone}", file=sys.stderr)
                return 1
            print(f"password changed for {phone}; its sessions are ended, and a running server "
                  f"closes their open sockets within {_closes_within(config)}")
        elif args.command == "deluser":
            if not asyncio.run(_with_store(config, lambda s: s.delete_user(phone))):
                print(f"error: no account {phone}", file=sys.stderr)
                return 1
            print(f"deleted {phone}; a running server closes its open sockets within "
                  f"{_closes_within(config)}")
    except FormError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:  # a password key that cannot be used
        print(f"error: {e}", file=sys.stderr)
        return 2
    except STARTUP_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
