"""`create_app(config)`: wiring only, no logic. Tests call the same function."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web
from aiohttp_session import setup as setup_session
from aiohttp_session.cookie_storage import EncryptedCookieStorage

from .auth import load_secret
from .config import Config
from .hub import Hub
from .keys import config_key, hub_key, store_key, throttle_key
from .middlewares import guard
from .routes import setup_routes
from .stores import open_store
from .throttle import Throttle

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
# Form posts and JSON bodies are small; anything bigger is refused with 413 before it is read.
CLIENT_MAX_SIZE = 64 * 1024


def make_hub(config: Config) -> Hub:
    """The hub `config` asks for: Redis when `[hub] url` is set, else in memory."""
    if config.hub.url:
        from .redishub import RedisHub
        return RedisHub(config.limits.outgoing_queue, config.websocket.close_timeout,
                        url=config.hub.url, prefix=config.hub.prefix)
    return Hub(config.limits.outgoing_queue, config.websocket.close_timeout)


async def store_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the store and start the hub before serving; after, stop the hub and close the store
    (finishing the commit in flight)."""
    app[store_key] = await open_store(app[config_key])
    try:
        await app[hub_key].start()
        try:
            yield
        finally:
            await app[hub_key].stop()
            await app[throttle_key].close()
    finally:
        await app[store_key].close()


async def close_sockets(app: web.Application) -> None:
    """On shutdown, close every socket with 1001 going away."""
    await app[hub_key].close_all()


def create_app(config: Config) -> web.Application:
    """Build the application for `config`; the database opens when the app starts."""
    app = web.Application(client_max_size=CLIENT_MAX_SIZE, middlewares=[guard])
    app[config_key] = config
    app[hub_key] = make_hub(config)
    app[throttle_key] = Throttle(config.limits, config.hub.url, config.hub.prefix)
    app.cleanup_ctx.append(store_ctx)
    app.on_shutdown.append(close_sockets)
    secret = load_secret(config.security.cookie_secret, config.database.path)
    # The session middleware must wrap the handlers that call get_session: setup_session appends
    # it after `guard`, so it runs inside it.
    setup_session(app, EncryptedCookieStorage(
        secret, cookie_name="chat_session", httponly=True, samesite="Lax",
        secure=config.security.https, max_age=config.security.session_seconds))
    aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=True)
    setup_routes(app)
    return app
