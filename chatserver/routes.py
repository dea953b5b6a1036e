"""The one list of URLs and their handlers, HTTP and WebSocket (SPEC 4, 5)."""

from __future__ import annotations

import mimetypes
from pathlib import Path

from aiohttp import web

from . import account, admin, api, attachments, devices, pages, pushapi, sendapi, ws
from .exporter import METRICS_PATH
from .health import HEALTHZ_PATH
from .keys import health_key, metrics_key

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# The web app manifest's registered type (W3C Web App Manifest); Python's table lacks it.
mimetypes.add_type("application/manifest+json", ".webmanifest")


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
        web.get("/sw.js", pages.service_worker),
        web.get("/chat/personal/{msg_from}/{msg_to}/", pages.chat_personal),
        web.get("/chat/group/{msg_from}/{grp}/", pages.chat_group),
        web.get("/chat/room/{room_name}/", pages.chat_room),
        web.post("/chat/special/personal", api.special_personal),
        web.get("/chat/info", api.info),
        web.get("/chat/info/personal", api.info_personal),
        web.post("/chat/special/group", api.special_group),
        web.get("/chat/info/group", api.info_group),
        web.patch("/chat/info/group", api.patch_group),
        web.post("/chat/special/room", api.special_room),
        web.post("/chat/special/room/join", api.join_room),
        web.delete("/chat/special/room", api.close_room),
        web.get("/chat/info/room", api.info_room),
        web.get("/chat/rooms", api.rooms_catalogue),
        web.put("/chat/rooms/saved", api.save_room),
        web.delete("/chat/rooms/saved", api.unsave_room),
        web.get("/chat/info/contacts", api.info_contacts),
        web.post("/chat/special/contact", api.special_contact),
        web.delete("/chat/special/contact", api.delete_contact),
        web.post("/chat/special/block", api.special_block),
        web.post(attachments.UPLOAD_PATH, attachments.upload),
        web.get(attachments.DOWNLOAD_PATH, attachments.download),
        web.delete("/chat/special/block", api.delete_block),
        web.patch("/chat/account", account.patch_account),
        web.delete("/chat/account", account.delete_account),
        web.post("/chat/account/password", account.change_password),
        web.get("/chat/devices", devices.list_devices),
        web.delete("/chat/devices", devices.delete_device),
        web.post("/chat/devices/token", devices.create_device_token),
        web.post(sendapi.MESSAGES_PATH, sendapi.send_message),
        web.get("/chat/push/key", pushapi.push_key_json),
        web.post("/chat/push/subscription", pushapi.subscribe),
        web.delete("/chat/push/subscription", pushapi.unsubscribe),
        web.put("/chat/mute", pushapi.put_mute),
        web.get("/chat/mute", pushapi.list_mutes),
        web.get("/chat/admin/users", admin.users),
        web.patch("/chat/admin/users", admin.patch_user),
        web.delete("/chat/admin/users", admin.delete_user),
        web.get("/chat/admin/invites", admin.list_invites),
        web.post("/chat/admin/invites", admin.create_invite),
        web.delete("/chat/admin/invites", admin.revoke_invite),
        web.get("/chat/admin/stats", admin.stats),
        web.get("/ws/chat/special/{msg_from}/", ws.receive_socket),
        web.get("/ws/chat/personal/{msg_from}/{msg_to}/", ws.personal_socket),
        web.get("/ws/chat/group/{msg_from}/{grp}/", ws.group_socket),
        web.get("/ws/chat/room/{room_name}/", ws.room_socket),
        web.static("/static", STATIC_DIR),
        # SPEC 11: probes, served by objects of the app (chatserver/health.py, exporter.py).
        web.get(HEALTHZ_PATH, app[health_key].handle),
        web.get(METRICS_PATH, app[metrics_key].handle),
    ])
