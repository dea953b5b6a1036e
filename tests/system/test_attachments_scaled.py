"""Attachments (SPEC 8) in the scaled deployment: two `run.py serve` processes share one
PostgreSQL store and one Redis hub. A photo uploaded through one process is pushed, with its
metadata, to the recipient connected to the other, and downloaded there (file, thumbnail and a
range across a chunk boundary); once the recipient acknowledges it, neither process serves it.
Uploads of one user through both processes at once store at most what fits in the quota.

Skipped without CHAT_TEST_POSTGRES_URL and CHAT_TEST_REDIS_URL. Every wait has a timeout; both
processes are killed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from PIL import Image

from chatserver.stores.base import ATTACHMENT_CHUNK
from helpers import backends
from helpers.accounts import client, register, ws_open
from helpers.attachments import UPLOAD, download_path, form, gps_jpeg, needle_file, with_attachments
from helpers.frames import frame, new_phone
from helpers.scaled import receive_on, two_servers
from helpers.server import ServerProcess
from helpers.ws import recv

pytestmark = pytest.mark.skipif(
    not (backends.POSTGRES_URL and backends.REDIS_URL),
    reason=f"{backends.POSTGRES_ENV} and {backends.REDIS_ENV} must both be set")


async def get(session: aiohttp.ClientSession, server: ServerProcess, path: str,
              **headers: str) -> tuple[int, bytes, str]:
    async with session.get(server.url(path), headers=headers) as resp:
        return resp.status, await resp.read(), resp.headers.get("Content-Type", "")


async def test_uploaded_through_one_process_downloaded_through_the_other(tmp_path: Path) -> None:
    async with two_servers(tmp_path, {}) as (one, other, _), contextlib.AsyncExitStack() as stack:
        alice = await stack.enter_async_context(client())
        bob = await stack.enter_async_context(client())
        carol = await stack.enter_async_context(client())
        a, b, c = new_phone(), new_phone(), new_phone()
        await register(alice, one, a)
        await register(bob, other, b)
        await register(carol, other, c)
        inbox_b = await receive_on(bob, other, b)

        photo, upright = gps_jpeg((640, 480))
        data, _ = needle_file(ATTACHMENT_CHUNK + 100)
        uploads = []
        for body in (form(photo, "photo.jpg", "image/jpeg"), form(data, "data.bin")):
            async with alice.post(one.url(UPLOAD), data=body) as resp:
                assert resp.status == 201, await resp.text()
                uploads.append(await resp.json())
        to_b = await ws_open(alice, one.ws_url(f"/ws/chat/personal/{a}/{b}/"))
        sent = with_attachments("new_msg", a, b, [u["id"] for u in uploads], "from Paris")
        await to_b.send_json(sent)
        assert (await recv(to_b))["command"] == "msg_sent"
        pushed = await recv(inbox_b)  # through Redis, to the other process
        assert pushed == {**sent, "attachments": uploads}, pushed

        status, stored, kind = await get(bob, other, download_path(uploads[0]["id"]))
        assert (status, kind) == (200, "image/jpeg")
        assert Image.open(io.BytesIO(stored)).size == upright.size == (480, 640)
        assert b"Exif" not in stored
        status, thumb, _ = await get(bob, other, download_path(uploads[0]["id"], thumbnail=True))
        assert status == 200 and Image.open(io.BytesIO(thumb)).size == (240, 320)
        assert await get(bob, other, download_path(uploads[1]["id"])) == (
            200, data, "application/octet-stream")
        span = f"bytes={ATTACHMENT_CHUNK - 10}-{ATTACHMENT_CHUNK + 9}"
        status, part, _ = await get(bob, other, download_path(uploads[1]["id"]), Range=span)
        assert (status, part) == (206, data[ATTACHMENT_CHUNK - 10:ATTACHMENT_CHUNK + 10])
        assert (await get(carol, other, download_path(uploads[1]["id"])))[0] == 404

        # acknowledged on the other process: gone from both
        from_b = await ws_open(bob, other.ws_url(f"/ws/chat/personal/{b}/{a}/"))
        await from_b.send_json(frame("msg_received", b, a, sent["sent_timestamp"]))
        await from_b.send_json(frame("msg_received", b, a, "2000-01-01 00:00:00.000"))
        assert (await recv(from_b))["command"] == "error"  # after the acknowledgement committed
        for session, server in ((alice, one), (alice, other), (bob, one), (bob, other)):
            for upload in uploads:
                assert (await get(session, server, download_path(upload["id"])))[0] == 404


QUOTA = 100_000
UPLOADS = 16  # of 30,000 bytes each, half through each process, all at once: 3 fit


async def test_uploads_through_both_processes_at_once_store_at_most_the_quota(tmp_path: Path) -> None:
    """Each process commits its own uploads one after the other; the two processes' reservations
    race in PostgreSQL, where the owner's row lock makes them check the quota in turn."""
    async with two_servers(tmp_path, {"limits": {"attachment_quota_bytes": QUOTA}}) as (one, other, url), \
            client() as alice:
        a = new_phone()
        await register(alice, one, a)
        bodies = [needle_file(30_000, str(n))[0] for n in range(UPLOADS)]

        async def post(n: int) -> int:
            server = (one, other)[n % 2]
            async with alice.post(server.url(UPLOAD), data=form(bodies[n])) as resp:
                return resp.status
        statuses = sorted(await asyncio.gather(*(post(n) for n in range(UPLOADS))))
        assert statuses == [201] * 3 + [413] * (UPLOADS - 3), statuses
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT sum(size) FROM attachments") == 90_000
        finally:
            await conn.close()
