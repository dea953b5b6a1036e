"""`create_app(config)`: wiring only, no logic. Tests call the same function."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web
from aiohttp_session import setup as setup_session
from aiohttp_session.cookie_storage import EncryptedCookieStorage

from .auth import load_password_key, load_secret
from .config import Config
from .hosts import AllowedHosts
from .hubs import make_hub
from .keys import (
    allowed_hosts_key,
    config_key,
    hub_key,
    password_hmac_key,
    password_pool_key,
    push_key,
    store_key,
    throttle_key,
)
from .middlewares import guard, response_headers
from .push import PushSender, load_vapid
from .retention import expire_forever
from .routes import setup_routes
from .sessions import session_watch_ctx
from .stores import open_store
from .throttle import PasswordPool, Throttle

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
# Form posts and JSON bodies are small; anything bigger is refused with 413 before it is read.
CLIENT_MAX_SIZE = 64 * 1024


async def store_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the store before serving (first: the others may need it); close it after everything
    else, finishing the commit in flight."""
    app[store_key] = await open_store(app[config_key])
    try:
        yield
    finally:
        await app[store_key].close()


async def throttle_ctx(app: web.Application) -> AsyncIterator[None]:
    """Release the rate limiter's Redis connections and the bcrypt threads after serving."""
    yield
    app[password_pool_key].close()
    await app[throttle_key].close()


async def hub_ctx(app: web.Application) -> AsyncIterator[None]:
    """Start the hub before serving (with a broker: connect it to the other processes); stop it
    after every socket is closed, before the store closes."""
    try:
        await app[hub_key].start()
    except BaseException:
        # A failed start-up leaves the contexts started before this one open (web.run_app calls
        # no cleanup then, and the store's threads would keep the process alive): close them.
        # Application.cleanup() runs just those while the app is not frozen.
        await app.cleanup()
        raise
    try:
        yield
    finally:
        await app[hub_key].stop()


async def push_ctx(app: web.Application) -> AsyncIterator[None]:
    """Send Web Pushes (SPEC 9) while serving: started after the hub (it asks which devices are
    online) and stopped before it, with the store still open."""
    await app[push_key].start(app[store_key], app[hub_key], app[throttle_key])
    try:
        yield
    finally:
        await app[push_key].stop()


async def retention_ctx(app: web.Application) -> AsyncIterator[None]:
    """Expire undelivered messages (SPEC 10) while serving: started once the store and the hub
    are (its pushes go through the hub), stopped before them."""
    task = asyncio.create_task(
        expire_forever(app[store_key], app[hub_key], app[config_key].retention,
                       app[config_key].security.session_seconds,
                       app[config_key].attachments.unclaimed_seconds), name="retention")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def close_sockets(app: web.Application) -> None:
    """On shutdown, close every socket with 1001 going away."""
    await app[hub_key].close_all()


def create_app(config: Config) -> web.Application:
    """Build the application for `config`; the database opens when the app starts."""
    app = web.Application(client_max_size=CLIENT_MAX_SIZE, middlewares=[guard])
    app[config_key] = config
    app[allowed_hosts_key] = AllowedHosts.from_config(config)
    app[hub_key] = make_hub(config)
    app[throttle_key] = Throttle(config.limits, config.hub.url, config.hub.prefix,
                                 config.push.min_interval_seconds)
    app[password_pool_key] = PasswordPool(config.limits.password_workers,
                                          config.limits.password_queue)
    # Generated into <database>.vapid on first start unless configured (SPEC 9); ValueError
    # for a key that cannot be used, like the cookie secret's.
    app[push_key] = PushSender(config, load_vapid(config) if config.push.enabled else None)
    # Started in this order and cleaned up in the reverse one (aiohttp's cleanup_ctx): the
    # expiry and the session check stop first, then the push sender, then the hub, then the
    # throttle closes, and the store closes last.
    app.cleanup_ctx.extend([store_ctx, throttle_ctx, hub_ctx, push_ctx, session_watch_ctx,
                            retention_ctx])
    app.on_shutdown.append(close_sockets)
    app.on_response_prepare.append(response_headers)
    secret = load_secret(config.security.cookie_secret, config.database.path)
    app[password_hmac_key] = load_password_key(config.security.password_key,
                                               config.database.path).encode()
    # The session middleware must wrap the handlers that call get_session: setup_session appends
    # it after `guard`, so it runs inside it.
    # No max_age here: aiohttp-session would drop a cookie that long after its creation, where a
    # session lasts that long after its last use (SPEC 7). The server's record decides; the
    # cookie's Max-Age is set, and renewed while the session is used, by auth.py.
    setup_session(app, EncryptedCookieStorage(
        secret, cookie_name="chat_session", httponly=True, samesite="Lax",
        secure=config.security.https))
    aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=True)
    setup_routes(app)
    return app
