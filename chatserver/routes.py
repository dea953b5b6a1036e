"""The one list of URLs and their handlers, HTTP and WebSocket (SPEC 4, 5)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from . import api, pages, ws

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


def setup_routes(app: web.Application) -> None:
    """Add every route to `app`."""
    app.router.add_routes([
        web.get("/", pages.index),
        web.get("/register", pages.register),
        web.post("/register", pages.register),
        web.get("/login", pages.login),
        web.post("/login", pages.login),
        web.post("/logout", pages.logout),
        web.get("/chat", pages.chat),
        web.get("/chat/personal/{msg_from}/{msg_to}/", pages.chat_personal),
        web.post("/chat/special/personal", api.special_personal),
        web.get("/chat/info", api.info),
        web.get("/chat/info/personal", api.info_personal),
        web.get("/ws/chat/special/{msg_from}/", ws.receive_socket),
        web.get("/ws/chat/personal/{msg_from}/{msg_to}/", ws.personal_socket),
        web.static("/static", STATIC_DIR),
    ])
