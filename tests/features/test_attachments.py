"""Photos and files (SPEC 8, issue 14) over real sockets, on every store and hub engine:

- who may download: the uploader; the personal recipient; a group's participants (not one who
  left); anyone logged in for a public room's message; for a private room, only a user who gave
  its password (from any of their login sessions, issue 18); everyone else, the logged out, an
  unknown or malformed id and an upload not attached yet: 404, the same 404 (never 403);
- `attachments` on `new_msg`, `new_grp_msg` and `room_msg`: pushed, fetched and in room history
  as the upload answered them; someone else's upload, or one already attached: the error frame,
  and nothing stored;
- lifetime: gone after the last device's acknowledgement (and, on SQLite, its bytes gone from
  the database file and its WAL within `database.scrub_seconds`); an upload never attached is
  deleted after `attachments.unclaimed_seconds`;
- images: EXIF (GPS), XMP and comments removed from a real JPEG, its orientation applied,
  thumbnails of at most 320 px; a decompression bomb refused with 413 before it is decoded; a
  damaged photo refused (422) rather than kept with its GPS; a file claiming to be a PNG that is
  HTML is an `application/octet-stream` download;
- downloads: Range (206, 416, across a chunk boundary), ETag and If-None-Match (304), If-Range,
  HEAD, the SPEC 8 headers, names in Content-Disposition (RFC 6266 / 8187);
- limits: `limits.max_attachment_bytes` (413 as soon as it is passed, even from a client that
  keeps sending; before reading when Content-Length says so), `limits.attachment_quota_bytes`
  (also for uploads at once), an upload counted as a message by the rate limit (429), each read
  of the body within `limits.body_timeout_seconds` (408) while the whole may take longer;
  names cleaned of path separators and control characters and cut to 200 characters.

The upload through one process and download through another: tests/system/test_attachments_scaled.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image, PngImagePlugin

from chatserver.app import create_app
from chatserver.attachments import READ_BYTES
from chatserver.config import Attachments, Config, Retention
from chatserver.stores.base import ATTACHMENT_CHUNK
from helpers import backends
from helpers.accounts import COOKIE, PASSWORD
from helpers.attachments import (
    BOUNDARY,
    MULTIPART_TYPE,
    SECRET_COMMENT,
    SECRET_MAKE,
    SECRET_XMP,
    UPLOAD,
    download_path,
    form,
    gps_jpeg,
    multipart,
    multipart_head,
    needle_file,
    png,
    png_claiming,
    with_attachments,
)
from helpers.backends import db_rows, has_files
from helpers.configs import with_limits
from helpers.frames import assert_error, frame, new_instant, new_phone, plain
from helpers.groups import files_holding, open_group
from helpers.timing import TIMEOUT, until
from helpers.ws import (
    WS,
    ProductionServer,
    assert_json_error,
    fetch_all,
    open_personal,
    open_receive,
    recv,
)

pytestmark = pytest.mark.backends

ClientFactory = Callable[..., Awaitable[TestClient]]
ServerFactory = Callable[..., Awaitable[TestServer]]
# What the store answers when a message names an attachment it may not carry (SPEC 8).
REFUSED: Final = ("an attachment is unknown, not yours, not uploaded completely or attached to "
                  "another message")
CSP: Final = "default-src 'none'; sandbox"
ROOM_PASSWORD: Final = "open sesame"


@dataclasses.dataclass
class Env:
    """A server of the test's config and a way to log users into it."""

    server: TestServer
    config: Config
    login: Callable[[str], Awaitable[TestClient]]
    anonymous: Callable[[], Awaitable[TestClient]]


def users_of(aiohttp_client: ClientFactory, server: TestServer) -> Callable[[str], Awaitable[TestClient]]:
    """Register `phone`, or log it in again when it exists (another device): its own client."""
    async def login(phone: str) -> TestClient:
        client = await aiohttp_client(server)
        resp = await client.post("/register", data={"phone": phone, "name": f"user {phone}",
                                                    "password": PASSWORD}, allow_redirects=False)
        if resp.status == 409:
            resp = await client.post("/login", data={"phone": phone, "password": PASSWORD},
                                     allow_redirects=False)
        assert resp.status == 302, await resp.text()
        return client
    return login


async def start(aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, config: Config,
                **limits: Any) -> Env:
    """A server on `config` with some `[limits]` changed."""
    config = with_limits(config, **limits) if limits else config
    server = await aiohttp_server(create_app(config))
    return Env(server, config, users_of(aiohttp_client, server), lambda: aiohttp_client(server))


@pytest.fixture
async def env(config: Config, aiohttp_server: ServerFactory, aiohttp_client: ClientFactory) -> Env:
    return await start(aiohttp_server, aiohttp_client, config)


async def upload(client: TestClient, data: bytes, filename: str = "file.bin",
                 content_type: str = "application/octet-stream", **kwargs: Any) -> aiohttp.ClientResponse:
    return await client.post(UPLOAD, data=form(data, filename, content_type), **kwargs)


async def uploaded(client: TestClient, data: bytes, filename: str = "file.bin",
                   content_type: str = "application/octet-stream") -> dict[str, Any]:
    """Upload, which must answer 201 with SPEC 8's shape; the answer."""
    resp = await upload(client, data, filename, content_type)
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert set(body) in ({"id", "name", "content_type", "size", "thumbnail"},
                         {"id", "name", "content_type", "size", "width", "height", "thumbnail"}), body
    assert len(body["id"]) >= 22 and all(c.isalnum() or c in "-_" for c in body["id"]), body
    return body


async def fetch(client: TestClient, attachment_id: str, thumbnail: bool = False,
                **kwargs: Any) -> tuple[int, bytes, aiohttp.ClientResponse]:
    """GET a download: (status, body, response)."""
    resp = await client.get(download_path(attachment_id, thumbnail), **kwargs)
    return resp.status, await resp.read(), resp


async def assert_bytes(client: TestClient, attachment_id: str, data: bytes) -> None:
    status, body, _ = await fetch(client, attachment_id)
    assert (status, body) == (200, data)


async def assert_hidden(client: TestClient, attachment_id: str) -> None:
    """404, exactly as for an id that never existed (nothing tells that it exists)."""
    status, body, resp = await fetch(client, attachment_id)
    unknown_status, unknown_body, _ = await fetch(client, secrets.token_urlsafe(16))
    assert (status, body) == (404, unknown_body) and unknown_status == 404, (status, body)
    assert resp.headers.get("Content-Disposition") is None


async def send_personal(ws: WS, msg_from: str, msg_to: str, ids: list[str],
                        message: str = "") -> dict[str, Any]:
    """`new_msg` with attachments; waits for its `msg_sent`; the frame as sent."""
    sent = with_attachments("new_msg", msg_from, msg_to, ids, message)
    await ws.send_json(sent)
    reply = await recv(ws)
    assert reply["command"] == "msg_sent" and reply["message"] == sent["sent_timestamp"], reply
    return sent


async def create_group(client: TestClient, participants: list[str]) -> str:
    resp = await client.post("/chat/special/group", json={"name": "photos", "participants": participants})
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["key"])


async def create_room(client: TestClient, password: str | None = None) -> str:
    name = f"photos_{secrets.token_hex(4)}"
    body: dict[str, Any] = {"room_name": name}
    if password is not None:
        body["password"] = password
    resp = await client.post("/chat/special/room", json=body)
    assert resp.status == 201, await resp.text()
    return name


async def settle_ack(ws: WS, msg_from: str, msg_to: str) -> None:
    """One round trip through the store on a personal socket: acknowledging nothing is refused
    once the store has handled it, and a socket's writes commit in the order sent, so every
    acknowledgement sent on `ws` before this is committed when it returns."""
    await ws.send_json(frame("msg_received", msg_from, msg_to, plain(new_instant())))
    assert_error(await recv(ws), "msg_received", msg_from, msg_to, "couldn't find a message to delete")


def stored_attachments(config: Config) -> list[tuple[Any, ...]]:
    """(id, size) of every stored attachment, and the chunks' total bytes."""
    return db_rows(config.database, "SELECT id, size FROM attachments ORDER BY id")


def chunk_bytes(config: Config) -> int:
    return int(db_rows(config.database,
                       "SELECT coalesce(sum(length(data)), 0) FROM attachment_chunks")[0][0])


def cookie_of(client: TestClient) -> str:
    return client.session.cookie_jar.filter_cookies(client.make_url("/"))[COOKIE].value


# -- who may download (SPEC 8) ---------------------------------------------------------------------


async def test_personal_uploader_and_recipient_only_and_the_message_carries_it(env: Env) -> None:
    a, b, c = new_phone(), new_phone(), new_phone()
    client_a, client_b, client_c = await env.login(a), await env.login(b), await env.login(c)
    anonymous = await env.anonymous()
    inbox_b = await open_receive(client_b, b, probe="fetch_msgs")
    to_b, to_c = await open_personal(client_a, a, b), await open_personal(client_a, a, c)
    first = await send_personal(to_b, a, b, [], "before the photo")  # b has a message from a
    assert (await recv(inbox_b))["message"] == first["message"]
    data, _ = needle_file(3000)
    att = await uploaded(client_a, data, "notes.bin")
    assert (att["name"], att["content_type"], att["size"], att["thumbnail"]) == (
        "notes.bin", "application/octet-stream", 3000, False)

    # not attached yet: the uploader only
    await assert_bytes(client_a, att["id"], data)
    for who in (client_b, client_c, anonymous):
        await assert_hidden(who, att["id"])

    sent = await send_personal(to_b, a, b, [att["id"]])
    pushed = await recv(inbox_b)
    assert pushed == {**sent, "attachments": [att]}, pushed  # message "" allowed with attachments
    await assert_bytes(client_b, att["id"], data)
    await assert_bytes(client_a, att["id"], data)
    await send_personal(to_c, a, c, [], "a message of a's to c, without it")
    for who in (client_c, anonymous):
        await assert_hidden(who, att["id"])
    for bad in ("short", "x" * 65, "a" * 21 + "!", "%2e%2e%2f" + "a" * 22):
        status, _, _ = await fetch(client_b, bad)
        assert status == 404, bad

    # fetched by a device that connects later, with the same metadata
    phone_b = await env.login(b)  # a second device of b
    fetched = await fetch_all(await phone_b.ws_connect(f"/ws/chat/special/{b}/"), b)
    [[earlier, message]] = fetched
    assert "attachments" not in earlier, earlier  # a message without: the frame as before SPEC 8
    assert message["attachments"] == [att] and message["message"] == "", message


async def test_group_participants_only_and_not_after_leaving(env: Env) -> None:
    a, b, c, d = new_phone(), new_phone(), new_phone(), new_phone()
    client_a, client_b, client_c, client_d = [await env.login(p) for p in (a, b, c, d)]
    key = await create_group(client_a, [b, c])
    inbox_c = await open_receive(client_c, c)
    data, _ = needle_file(5000)
    att = await uploaded(client_a, data)
    in_group = await open_group(client_a, a, key)
    sent = with_attachments("new_grp_msg", a, key, [att["id"]], "our holiday")
    await in_group.send_json(sent)
    assert (await recv(in_group))["command"] == "msg_sent"
    pushed = await recv(inbox_c)
    assert (pushed["msg_from"], pushed["message"], pushed["attachments"]) == (
        f"{key}-{a}", "our holiday", [att]), pushed
    [[stored]] = await fetch_all(inbox_c, c, "fetch_grp_msgs")
    assert stored["attachments"] == [att], stored

    for who in (client_a, client_b, client_c):
        await assert_bytes(who, att["id"], data)
    await assert_hidden(client_d, att["id"])
    resp = await client_c.patch("/chat/info/group", params={"key": key}, json={"remove": [c]})
    assert resp.status == 200, await resp.text()
    await assert_hidden(client_c, att["id"])  # left: no longer
    await assert_bytes(client_b, att["id"], data)


async def test_public_room_any_user_private_room_only_users_who_gave_the_password(
        env: Env) -> None:
    a, d, e = new_phone(), new_phone(), new_phone()
    client_a, client_d, client_e = [await env.login(p) for p in (a, d, e)]
    anonymous = await env.anonymous()
    public, private = await create_room(client_a), await create_room(client_a, ROOM_PASSWORD)
    shared: dict[str, dict[str, Any]] = {}
    for room in (public, private):
        data, _ = needle_file(2000, room)
        att = await uploaded(client_a, data)
        ws = await client_a.ws_connect(f"/ws/chat/room/{room}/")
        assert (await recv(ws))["messages"] == []
        sent = with_attachments("room_msg", a, room, [att["id"]])
        await ws.send_json(sent)
        assert await recv(ws) == {**sent, "attachments": [att]}
        shared[room] = {**att, "data": data}
        await ws.close()

    # the history a visitor gets on connect carries the attachment
    visitor = await client_d.ws_connect(f"/ws/chat/room/{public}/")
    history = await recv(visitor)
    assert [m["attachments"] for m in history["messages"]] == [
        [{k: v for k, v in shared[public].items() if k != "data"}]], history
    await assert_bytes(client_d, shared[public]["id"], shared[public]["data"])
    await assert_hidden(anonymous, shared[public]["id"])

    private_id, private_data = shared[private]["id"], shared[private]["data"]
    await assert_bytes(client_a, private_id, private_data)  # its creator
    await assert_hidden(client_e, private_id)
    resp = await client_e.post("/chat/special/room/join",
                               json={"room_name": private, "password": ROOM_PASSWORD})
    assert resp.status == 200, await resp.text()
    await assert_bytes(client_e, private_id, private_data)
    other_session_of_e = await env.login(e)
    await assert_bytes(other_session_of_e, private_id, private_data)  # given per user (issue 18)
    await assert_hidden(client_d, private_id)


async def test_someone_else_s_upload_or_one_already_attached_is_the_error_frame(env: Env) -> None:
    a, b, c = new_phone(), new_phone(), new_phone()
    client_a, client_b, client_c = await env.login(a), await env.login(b), await env.login(c)
    inbox_b = await open_receive(client_b, b, probe="fetch_msgs")
    att = await uploaded(client_a, needle_file(100)[0])
    from_c = await open_personal(client_c, c, b)
    stolen = with_attachments("new_msg", c, b, [att["id"]], "look")
    await from_c.send_json(stolen)
    assert_error(await recv(from_c), "new_msg", c, b, REFUSED)

    from_a = await open_personal(client_a, a, b)
    await send_personal(from_a, a, b, [att["id"]], "first")
    again = with_attachments("new_msg", a, b, [att["id"]], "second")
    await from_a.send_json(again)
    assert_error(await recv(from_a), "new_msg", a, b, REFUSED)
    unknown = with_attachments("new_msg", a, b, [secrets.token_urlsafe(16)], "third")
    await from_a.send_json(unknown)
    assert_error(await recv(from_a), "new_msg", a, b, REFUSED)

    # nothing of the refused ones was stored or pushed: b has exactly the first
    pushed = await recv(inbox_b)
    assert pushed["message"] == "first", pushed
    [[only]] = await fetch_all(inbox_b, b)
    assert only["message"] == "first", only


# -- lifetime (SPEC 8: as long as its message) ---------------------------------------------------------


async def test_deleted_after_the_last_device_acknowledges_and_scrubbed(env: Env) -> None:
    a, b = new_phone(), new_phone()
    client_a, laptop_b = await env.login(a), await env.login(b)
    phone_b = await env.login(b)
    inboxes = [await open_receive(device, b, probe="fetch_msgs") for device in (laptop_b, phone_b)]
    data, needle = needle_file(ATTACHMENT_CHUNK + 5000)  # two chunks
    att = await uploaded(client_a, data)
    if has_files(env.config.database):
        assert files_holding(env.config.database, needle), "control: the bytes are in the files"
    sent = await send_personal(await open_personal(client_a, a, b), a, b, [att["id"]], "photo")
    for ws in inboxes:
        assert (await recv(ws))["attachments"] == [att]

    acks = [await open_personal(device, b, a) for device in (laptop_b, phone_b)]
    await acks[0].send_json(frame("msg_received", b, a, sent["sent_timestamp"]))
    await settle_ack(acks[0], b, a)
    for who in (client_a, laptop_b, phone_b):  # the phone has not acknowledged: still there
        await assert_bytes(who, att["id"], data)

    await acks[1].send_json(frame("msg_received", b, a, sent["sent_timestamp"]))
    await settle_ack(acks[1], b, a)
    for who in (client_a, laptop_b, phone_b):
        await assert_hidden(who, att["id"])
    assert stored_attachments(env.config) == [] and chunk_bytes(env.config) == 0
    if has_files(env.config.database):
        await until(lambda: not files_holding(env.config.database, needle),
                    env.config.database.scrub_seconds + TIMEOUT,
                    lambda: f"the bytes to leave {files_holding(env.config.database, needle)}")


UNCLAIMED_SECONDS: Final = 0.6


async def test_an_upload_never_attached_is_deleted_after_unclaimed_seconds(
        config: Config, aiohttp_server: ServerFactory, aiohttp_client: ClientFactory) -> None:
    config = dataclasses.replace(config, attachments=Attachments(unclaimed_seconds=UNCLAIMED_SECONDS),
                                 retention=Retention(check_seconds=0.05))
    env = await start(aiohttp_server, aiohttp_client, config)
    a, b = new_phone(), new_phone()
    client_a, client_b = await env.login(a), await env.login(b)
    lonely, lonely_needle = needle_file(4000, "lonely")
    kept, _ = needle_file(4000, "kept")
    uploaded_at = time.monotonic()
    lonely_att = await uploaded(client_a, lonely)
    kept_att = await uploaded(client_a, kept)
    await send_personal(await open_personal(client_a, a, b), a, b, [kept_att["id"]])
    await assert_bytes(client_a, lonely_att["id"], lonely)  # not before its time

    async def gone() -> bool:
        return (await fetch(client_a, lonely_att["id"]))[0] == 404
    deadline = time.monotonic() + UNCLAIMED_SECONDS + TIMEOUT
    while not await gone():  # the retention check is periodic: no event to wait for
        assert time.monotonic() < deadline, "the unclaimed upload was not deleted"
        await asyncio.sleep(0.05)
    assert time.monotonic() - uploaded_at >= UNCLAIMED_SECONDS * 0.9
    await assert_bytes(client_b, kept_att["id"], kept)  # attached in time: kept
    assert [row[0] for row in stored_attachments(env.config)] == [kept_att["id"]]
    if has_files(env.config.database):
        await until(lambda: not files_holding(env.config.database, lonely_needle),
                    env.config.database.scrub_seconds + TIMEOUT, "the unclaimed bytes to leave")


# -- images -------------------------------------------------------------------------------------


async def test_a_jpeg_loses_its_exif_gps_xmp_and_comment_and_is_shown_upright(env: Env) -> None:
    a = new_phone()
    client_a = await env.login(a)
    original, upright = gps_jpeg()
    assert SECRET_MAKE.encode() in original and SECRET_COMMENT in original and SECRET_XMP in original
    assert Image.open(io.BytesIO(original)).getexif().get_ifd(0x8825), "control: GPS is there"
    att = await uploaded(client_a, original, "IMG_0001.jpg", "image/jpeg")
    assert (att["content_type"], att["width"], att["height"], att["thumbnail"]) == (
        "image/jpeg", 32, 64, True), att  # 64 x 32 stored, shown rotated: 32 x 64

    status, stored, resp = await fetch(client_a, att["id"])
    assert status == 200 and len(stored) == att["size"]
    assert resp.headers["Content-Type"] == "image/jpeg"
    assert resp.headers["Content-Disposition"].startswith("inline;")
    for secret in (b"Exif", SECRET_MAKE.encode(), SECRET_COMMENT, SECRET_XMP, b"secret", b"http://ns.adobe"):
        assert secret not in stored, secret
    image = Image.open(io.BytesIO(stored))
    assert image.format == "JPEG" and image.size == upright.size == (32, 64)
    assert not image.getexif() and not image.getexif().get_ifd(0x8825)
    assert not {"exif", "xmp", "comment", "icc_profile"} & set(image.info), image.info
    for where in ((16, 4), (16, 60)):  # red on top, blue below: the orientation was applied
        got, want = image.convert("RGB").getpixel(where), upright.getpixel(where)
        assert all(abs(g - w) <= 16 for g, w in zip(got, want, strict=True)), (where, got, want)

    status, thumb, resp = await fetch(client_a, att["id"], thumbnail=True)
    assert status == 200 and resp.headers["Content-Type"] == "image/jpeg"
    assert b"Exif" not in thumb and SECRET_MAKE.encode() not in thumb
    assert Image.open(io.BytesIO(thumb)).size == (32, 64)  # small already: not enlarged


async def test_a_png_is_stripped_and_its_thumbnail_is_at_most_320_px(env: Env) -> None:
    client_a = await env.login(new_phone())
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "secret png text 4711")
    text.add_itxt("XML:com.adobe.xmp", SECRET_XMP.decode())
    exif = Image.Exif()
    exif[0x010F] = SECRET_MAKE  # Make
    original = png((800, 400), (10, 200, 30, 128), "RGBA", pnginfo=text, exif=exif)
    assert b"secret png text 4711" in original and SECRET_MAKE.encode() in original
    att = await uploaded(client_a, original, "screen.png", "image/png")
    assert (att["content_type"], att["width"], att["height"], att["thumbnail"]) == (
        "image/png", 800, 400, True)
    _, stored, _ = await fetch(client_a, att["id"])
    for secret in (b"secret png text 4711", SECRET_MAKE.encode(), b"eXIf", b"tEXt", b"iTXt"):
        assert secret not in stored, secret
    assert Image.open(io.BytesIO(stored)).getpixel((5, 5)) == (10, 200, 30, 128)
    status, thumb, resp = await fetch(client_a, att["id"], thumbnail=True)
    assert (status, resp.headers["Content-Type"]) == (200, "image/png")  # transparency kept
    small = Image.open(io.BytesIO(thumb))
    assert small.size == (320, 160) and small.mode == "RGBA"


async def test_an_animated_gif_keeps_its_frames_and_loses_its_comment(env: Env) -> None:
    client_a = await env.login(new_phone())
    frames = [Image.new("RGB", (40, 30), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=[50, 100, 150],
                   loop=0, comment=SECRET_COMMENT)
    assert SECRET_COMMENT in out.getvalue()
    att = await uploaded(client_a, out.getvalue(), "wave.gif", "image/gif")
    assert (att["content_type"], att["width"], att["height"]) == ("image/gif", 40, 30)
    _, stored, _ = await fetch(client_a, att["id"])
    assert SECRET_COMMENT not in stored
    image = Image.open(io.BytesIO(stored))
    assert image.n_frames == 3 and image.info.get("loop") == 0
    seen = []
    for n in range(3):
        image.seek(n)
        seen.append((image.info["duration"], image.convert("RGB").getpixel((20, 15))))
    assert seen == [(50, (255, 0, 0)), (100, (0, 255, 0)), (150, (0, 0, 255))]


async def test_a_decompression_bomb_is_refused_before_it_is_decoded(env: Env) -> None:
    """100,000 x 100,000 pixels claimed by a 100-byte PNG: 413, and nothing stored. The file has
    image data for almost none of its pixels: had it been decoded, that would have failed (422,
    as for the small one of the same kind)."""
    client_a = await env.login(new_phone())
    resp = await upload(client_a, png_claiming(100_000, 100_000), "bomb.png", "image/png")
    assert "pixels" in await assert_json_error(resp, 413)
    resp = await upload(client_a, png_claiming(100, 100), "broken.png", "image/png")
    assert "cannot be read" in await assert_json_error(resp, 422)  # control: decoded, it fails
    assert stored_attachments(env.config) == []


async def test_a_damaged_photo_is_refused_rather_than_kept_with_its_gps(env: Env) -> None:
    """A JPEG cut off half way: its header (and EXIF GPS) reads, its pixels do not. It cannot be
    cleaned, so it is not stored at all (422), not even as a plain file."""
    client_a = await env.login(new_phone())
    photo, _ = gps_jpeg((256, 256))
    cut = photo[:len(photo) * 2 // 3]
    assert Image.open(io.BytesIO(cut)).getexif().get_ifd(0x8825), "control: the GPS reads"
    resp = await upload(client_a, cut, "cut.jpg", "image/jpeg")
    assert "metadata" in await assert_json_error(resp, 422)
    assert stored_attachments(env.config) == []


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
async def test_an_image_just_over_max_image_pixels_is_refused_by_our_own_check(
        config: Config, aiohttp_server: ServerFactory, aiohttp_client: ClientFactory) -> None:
    """Between max_image_pixels and twice that, Pillow itself only warns (ignored here, as a
    production server's default warning filter prints it and goes on): the server's check of
    the header's size refuses it."""
    env = await start(aiohttp_server, aiohttp_client, config, max_image_pixels=1_000_000)
    client_a = await env.login(new_phone())
    resp = await upload(client_a, png_claiming(1001, 1000), "big.png", "image/png")
    assert "pixels" in await assert_json_error(resp, 413)
    assert stored_attachments(env.config) == []
    fits = await uploaded(client_a, png((1000, 1000)), "fits.png", "image/png")
    assert (fits["width"], fits["height"]) == (1000, 1000)


async def test_html_claiming_to_be_a_png_is_an_octet_stream_download(env: Env) -> None:
    client_a = await env.login(new_phone())
    html = b"<!doctype html><html><script>alert(document.cookie)</script></html>"
    for data in (html, b"\x89PNG\r\n\x1a\n" + html):  # no magic; the magic without a PNG after it
        att = await uploaded(client_a, data, "cat.png", "image/png")
        assert (att["content_type"], att["thumbnail"]) == ("application/octet-stream", False), att
        assert "width" not in att
        status, body, resp = await fetch(client_a, att["id"])
        assert (status, body) == (200, data)
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert resp.headers["Content-Disposition"] == (
            "attachment; filename=\"cat.png\"; filename*=UTF-8''cat.png")
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Content-Security-Policy"] == CSP
        assert resp.headers["Cache-Control"] == "private"
        assert (await fetch(client_a, att["id"], thumbnail=True))[0] == 404  # no thumbnail


# -- Range, ETag ----------------------------------------------------------------------------------


async def test_ranges_etags_and_head(env: Env) -> None:
    client_a = await env.login(new_phone())
    size = 2 * ATTACHMENT_CHUNK + 1000  # three chunks; more than the 64 KiB other bodies may have
    data, _ = needle_file(size)
    att = await uploaded(client_a, data)
    path = download_path(att["id"])

    async def get(range_: str | None = None, **headers: str) -> tuple[int, bytes, Any]:
        if range_ is not None:
            headers["Range"] = range_
        resp = await client_a.get(path, headers=headers)
        return resp.status, await resp.read(), resp.headers

    status, body, headers = await get()
    assert (status, body, headers["Accept-Ranges"], int(headers["Content-Length"])) == (
        200, data, "bytes", size)
    etag = headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"') and not etag.startswith('W/')
    boundary = ATTACHMENT_CHUNK
    for range_, first, last in [
            ("bytes=0-99", 0, 99),
            (f"bytes={boundary - 50}-{boundary + 49}", boundary - 50, boundary + 49),  # two chunks
            (f"bytes={boundary - 1}-{2 * boundary}", boundary - 1, 2 * boundary),  # three
            (f"bytes={2 * boundary}-", 2 * boundary, size - 1),
            ("bytes=-10", size - 10, size - 1),
            (f"bytes=-{size + 5}", 0, size - 1),
            ("bytes=5-999999999", 5, size - 1),
            (f"bytes={size - 1}-{size - 1}", size - 1, size - 1)]:
        status, body, headers = await get(range_)
        assert status == 206, range_
        assert headers["Content-Range"] == f"bytes {first}-{last}/{size}", range_
        assert body == data[first:last + 1], range_
        assert int(headers["Content-Length"]) == last - first + 1
    for unsatisfiable in (f"bytes={size}-", f"bytes={size + 10}-{size + 20}", "bytes=-0"):
        status, _, headers = await get(unsatisfiable)
        assert (status, headers.get("Content-Range")) == (416, f"bytes */{size}"), (unsatisfiable, headers)
    for ignored in ("bytes=5-3", "bytes=0-1,5-6", "items=0-1", "bytes=abc", "bytes=" + "9" * 30 + "-"):
        status, body, _ = await get(ignored)
        assert (status, body) == (200, data), ignored
    assert (await get("bytes=0-9", **{"If-Range": etag}))[0] == 206
    assert (await get("bytes=0-9", **{"If-Range": '"another"'}))[:2] == (200, data)

    for matching in (etag, f"W/{etag}", f'"x", {etag}', "*"):
        status, body, headers = await get(**{"If-None-Match": matching})
        assert (status, body, headers["ETag"]) == (304, b"", etag), matching
    assert (await get(**{"If-None-Match": '"other"'}))[:2] == (200, data)

    head = await client_a.head(path)
    assert (head.status, int(head.headers["Content-Length"]), await head.read()) == (200, size, b"")


# -- limits -------------------------------------------------------------------------------------


async def test_size_limit_413_and_empty_400(
        config: Config, aiohttp_server: ServerFactory, aiohttp_client: ClientFactory) -> None:
    env = await start(aiohttp_server, aiohttp_client, config, max_attachment_bytes=100_000)
    client_a = await env.login(new_phone())
    assert (await uploaded(client_a, needle_file(100_000)[0]))["size"] == 100_000
    resp = await upload(client_a, needle_file(100_001)[0])
    assert "100000 bytes" in await assert_json_error(resp, 413)
    assert "empty" in await assert_json_error(await upload(client_a, b""), 400)
    assert len(stored_attachments(env.config)) == 1


async def raw_upload(server: TestServer, cookie: str, head_extra: str, body: bytes,
                     read_timeout: float) -> bytes:
    """Send a POST of an upload's head (plus `head_extra` header lines) and `body` on a raw
    connection, and nothing more; what the server answers (its head and JSON body) within
    `read_timeout`, however much of the body it read."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write((f"POST {UPLOAD} HTTP/1.1\r\nHost: {server.host}:{server.port}\r\n"
                      f"Cookie: {COOKIE}={cookie}\r\nContent-Type: {MULTIPART_TYPE}\r\n"
                      f"{head_extra}\r\n").encode() + body)
        await writer.drain()
        async with asyncio.timeout(read_timeout):
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            return head + await reader.readexactly(length)
    finally:
        writer.close()


async def test_413_as_soon_as_the_limit_is_passed_while_the_client_still_sends(
        config: Config, aiohttp_server: ServerFactory, aiohttp_client: ClientFactory) -> None:
    """A chunked body passes the limit and then stalls: the 413 comes at once (long before the
    30 s allowed between two reads would end). (The limit plus two of the server's reads: its
    multipart reader hands a read over when the next one has come.) A Content-Length that says
    too much: 413 before a byte of the body is sent."""
    env = await start(aiohttp_server, aiohttp_client, config, max_attachment_bytes=100_000,
                      body_timeout_seconds=30.0)
    client_a = await env.login(new_phone())
    cookie = cookie_of(client_a)
    piece = multipart_head() + b"x" * (100_001 + 2 * READ_BYTES)
    chunked = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"  # and no last chunk: the body goes on
    answer = await raw_upload(env.server, cookie, "Transfer-Encoding: chunked\r\n", chunked, TIMEOUT)
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    assert b"100000 bytes" in answer
    answer = await raw_upload(env.server, cookie, f"Content-Length: {10 ** 9}\r\n", b"", TIMEOUT)
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    assert stored_attachments(env.config) == []


async def test_quota_413_and_parallel_uploads_store_at_most_what_fits(
        config: Config, aiohttp_server: ServerFactory, aiohttp_client: ClientFactory) -> None:
    env = await start(aiohttp_server, aiohttp_client, config, attachment_quota_bytes=10_000)
    a, b = new_phone(), new_phone()
    client_a, client_b = await env.login(a), await env.login(b)
    await uploaded(client_a, needle_file(6000)[0])
    resp = await upload(client_a, needle_file(6000)[0])
    assert "quota" in await assert_json_error(resp, 413)

    # b: eight uploads of 3000 bytes at once against 10,000: three fit, whatever the order
    answers = await asyncio.gather(*(upload(client_b, needle_file(3000, str(n))[0]) for n in range(8)))
    statuses = sorted(r.status for r in answers)
    assert statuses == [201] * 3 + [413] * 5, statuses
    sizes = [size for _, size in stored_attachments(env.config)]
    assert sorted(sizes) == [3000, 3000, 3000, 6000]  # a's 6000 and b's three
    assert chunk_bytes(env.config) == 15_000


async def test_an_upload_counts_as_a_message_for_the_rate_limit(
        config: Config, aiohttp_server: ServerFactory, aiohttp_client: ClientFactory) -> None:
    env = await start(aiohttp_server, aiohttp_client, config, messages_per_second=1.0)
    client_a = await env.login(new_phone())
    answers = [await upload(client_a, needle_file(100, str(n))[0]) for n in range(3)]
    assert [r.status for r in answers[:2]] == [201, 201]  # 1 a second: bursts of 2 (SPEC 5.5)
    assert "rate limit" in await assert_json_error(answers[2], 429)


async def test_refusals_before_reading(env: Env) -> None:
    client_a = await env.login(new_phone())
    anonymous = await env.anonymous()
    assert await assert_json_error(await upload(anonymous, b"data"), 401)
    resp = await client_a.post(UPLOAD, data=b"raw bytes", headers={"Content-Type": "image/png"})
    assert "multipart/form-data" in await assert_json_error(resp, 415)
    resp = await client_a.post(UPLOAD, data=form(b"data", name="photo"))
    assert "'file'" in await assert_json_error(resp, 400)
    two = aiohttp.FormData()
    two.add_field("file", b"one", filename="1.bin")
    two.add_field("file", b"two", filename="2.bin")
    assert "nothing else" in await assert_json_error(await client_a.post(UPLOAD, data=two), 400)
    resp = await upload(client_a, b"data", headers={"Origin": "http://evil.example"})
    assert await assert_json_error(resp, 403)
    assert stored_attachments(env.config) == []


@pytest.mark.parametrize(("content_type", "body"), [
    ("multipart/form-data", multipart(b"no boundary in the header")),
    (MULTIPART_TYPE, b"garbage, no boundary anywhere"),
    (MULTIPART_TYPE, b""),
    (MULTIPART_TYPE, f"--{BOUNDARY}--\r\n".encode()),  # no part at all
    (MULTIPART_TYPE, multipart(b"the end never comes")[:-20]),
    (MULTIPART_TYPE, f"--{BOUNDARY}\r\nX-Long: ".encode() + b"a" * 20_000 + b"\r\n\r\nabc\r\n"),
    (MULTIPART_TYPE, f"--{BOUNDARY}\r\nX: \x00\xff\n\r\n\r\nabc\r\n--{BOUNDARY}--\r\n".encode("latin-1")),
], ids=["no-boundary-parameter", "no-boundary", "empty", "no-part", "cut-short", "header-line-too-long",
        "binary-header"])
async def test_malformed_multipart_bodies_are_400(env: Env, content_type: str, body: bytes) -> None:
    client_a = await env.login(new_phone())
    resp = await client_a.post(UPLOAD, data=body, headers={"Content-Type": content_type})
    assert await assert_json_error(resp, 400)
    assert stored_attachments(env.config) == []


# -- names ----------------------------------------------------------------------------------------


async def test_names_lose_paths_and_control_characters_and_keep_200_characters(env: Env) -> None:
    client_a = await env.login(new_phone())
    hostile = "../../etc/dir\\sub\\" + "e\x00v\x07il\n\u202e" + "x" * 300 + ".txt"
    body = multipart(needle_file(50)[0], "form-data; name=\"file\"; filename*=UTF-8''"
                     + quote(hostile, safe=""))
    resp = await client_a.post(UPLOAD, data=body, headers={"Content-Type": MULTIPART_TYPE})
    assert resp.status == 201, await resp.text()
    name = (await resp.json())["name"]
    assert name == "evil" + "x" * 192 + ".txt" and len(name) == 200, name
    _, _, download = await fetch(client_a, (await resp.json())["id"])
    assert download.headers["Content-Disposition"] == (
        f"attachment; filename=\"{name}\"; filename*=UTF-8''{name}")

    # raw UTF-8, as browsers send it, and a Windows path
    for raw, expected, header in [
            ('"C:\\\\Users\\\\me\\\\Bilder\\\\Straße 1.pdf"'.encode(), "Straße 1.pdf",
             "attachment; filename=\"Stra_e 1.pdf\"; filename*=UTF-8''Stra%C3%9Fe%201.pdf"),
            ('"фото \\"1\\".bin"'.encode(), 'фото "1".bin',
             "attachment; filename=\"____ _1_.bin\"; filename*=UTF-8''"
             "%D1%84%D0%BE%D1%82%D0%BE%20%221%22.bin"),
            (b'"/"', "file", "attachment; filename=\"file\"; filename*=UTF-8''file")]:
        data = needle_file(50)[0]
        body = (f"--{BOUNDARY}\r\n".encode()
                + b'Content-Disposition: form-data; name="file"; filename=' + raw + b"\r\n\r\n"
                + data + f"\r\n--{BOUNDARY}--\r\n".encode())
        resp = await client_a.post(UPLOAD, data=body, headers={"Content-Type": MULTIPART_TYPE})
        assert resp.status == 201, await resp.text()
        att = await resp.json()
        assert att["name"] == expected, att
        _, _, download = await fetch(client_a, att["id"])
        assert download.headers["Content-Disposition"] == header


# -- slow uploads -----------------------------------------------------------------------------------

BODY_TIMEOUT: Final = 1.0
MARGIN: Final = 2.0  # how late a 408 may come on a busy 2-core box


@pytest.fixture
async def slow_env(config: Config, aiohttp_client: ClientFactory) -> AsyncIterator[Env]:
    """A server with production's handler settings and a one-second body timeout."""
    config = with_limits(config, body_timeout_seconds=BODY_TIMEOUT)
    server = ProductionServer(create_app(config))
    await server.start_server()
    try:
        yield Env(server, config, users_of(aiohttp_client, server), lambda: aiohttp_client(server))
    finally:
        await server.close()


async def test_a_stalled_upload_gets_408_and_its_connection_closes(slow_env: Env) -> None:
    cookie = cookie_of(await slow_env.login(new_phone()))
    reader, writer = await asyncio.open_connection(slow_env.server.host, slow_env.server.port)
    try:
        start_at = time.monotonic()
        writer.write((f"POST {UPLOAD} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {COOKIE}={cookie}\r\n"
                      f"Content-Type: {MULTIPART_TYPE}\r\nContent-Length: 100000\r\n\r\n").encode()
                     + multipart_head() + b"the first bytes, then nothing")
        await writer.drain()
        async with asyncio.timeout(BODY_TIMEOUT + MARGIN + TIMEOUT):
            answer = await reader.read()  # to EOF: the server closed the connection
        took = time.monotonic() - start_at
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert answer.endswith(b'{"error": "the request body did not arrive in time"}'), answer
    assert BODY_TIMEOUT - 0.1 <= took <= BODY_TIMEOUT + MARGIN, took
    assert stored_attachments(slow_env.config) == []


async def test_an_upload_may_take_longer_than_the_timeout_while_it_keeps_coming(
        slow_env: Env) -> None:
    """Each read waits at most body_timeout_seconds; the whole upload may take longer (here 2.5
    times as long, in five pieces)."""
    client_a = await slow_env.login(new_phone())
    data, _ = needle_file(5 * 20_000)
    pieces = [data[n:n + 20_000] for n in range(0, len(data), 20_000)]
    pieces[0] = multipart_head() + pieces[0]
    pieces[-1] += f"\r\n--{BOUNDARY}--\r\n".encode()

    async def trickle() -> AsyncIterator[bytes]:
        for n, piece in enumerate(pieces):
            if n:
                await asyncio.sleep(BODY_TIMEOUT / 2)  # the pace of the test's client
            yield piece
    started = time.monotonic()
    resp = await client_a.post(UPLOAD, data=trickle(), headers={"Content-Type": MULTIPART_TYPE})
    assert resp.status == 201, await resp.text()
    assert time.monotonic() - started >= 2 * BODY_TIMEOUT
    await assert_bytes(client_a, (await resp.json())["id"], data)


# -- temporary files --------------------------------------------------------------------------------


def open_files_in(folder: Path) -> list[str]:
    """What this process (the in-process server) holds open in `folder`, but the database's
    own files: "<path> mode <octal permissions>"."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            mode = os.stat(f"/proc/self/fd/{fd}").st_mode & 0o777
        except OSError:
            continue
        name = Path(target.split(" (deleted)")[0]).name
        if target.startswith(str(folder)) and not name.startswith("chat.db"):
            found.append(f"{target} mode {mode:o}")
    return found


async def test_temporary_files_are_closed_whatever_the_outcome(
        config: Config, aiohttp_server: ServerFactory, aiohttp_client: ClientFactory) -> None:
    env = await start(aiohttp_server, aiohttp_client, config, max_attachment_bytes=100_000,
                      attachment_quota_bytes=150_000)
    folder = Path(env.config.database.path).parent
    client_a = await env.login(new_phone())
    before = set(os.listdir(folder))
    jpeg, _ = gps_jpeg()
    await uploaded(client_a, jpeg, "a.jpg")  # three temporary files: upload, image, thumbnail
    await uploaded(client_a, needle_file(99_000)[0])
    assert (await upload(client_a, needle_file(100_001)[0])).status == 413  # too big
    assert (await upload(client_a, needle_file(60_000)[0])).status == 413  # over the quota
    assert (await upload(client_a, png_claiming(100_000, 100_000), "b.png")).status == 413
    assert open_files_in(folder) == []
    assert set(os.listdir(folder)) == before  # and nothing named was left behind


@pytest.mark.backends(backends.LOCAL)
async def test_uploads_are_written_beside_the_database(env: Env) -> None:
    """Control of the check above: while an upload is being received, its temporary file is
    open in the database's folder, readable by the server's user only, and has no name."""
    folder = Path(env.config.database.path).parent
    client_a = await env.login(new_phone())
    seen: list[list[str]] = []

    async def body() -> AsyncIterator[bytes]:
        yield multipart_head() + b"x" * 70_000
        # the handler has its temporary file once it reads the body: nothing announces that
        await until(lambda: bool(open_files_in(folder)), TIMEOUT, "the upload's temporary file")
        seen.append(open_files_in(folder))
        yield b"y" * 10 + f"\r\n--{BOUNDARY}--\r\n".encode()
    resp = await client_a.post(UPLOAD, data=body(), headers={"Content-Type": MULTIPART_TYPE})
    assert resp.status == 201, await resp.text()
    assert len(seen[0]) == 1 and seen[0][0].endswith("(deleted) mode 600"), seen  # O_TMPFILE
    assert open_files_in(folder) == []
