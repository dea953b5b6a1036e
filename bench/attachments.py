"""The attachments case (`attachments`, SPEC 8): one sender S and one recipient R on a fresh server.

1. A file of `--attachment-mib` MiB (default 25 MiB = the default `limits.max_attachment_bytes`;
   random bytes, not an image, so stored unchanged) uploaded by S through
   `POST /chat/special/attachment`, attached to a `new_msg` to R, downloaded by R once, then by
   10 downloads of R at once. Upload and download throughput in MiB/s; the server's RSS growth
   during the upload, the single download and the 10 downloads (VmRSS sampled every 50 ms).
2. `--photos` JPEGs (default 100) of 4032 x 3024 pixels, ~3 MiB each (a phone's 12 megapixels,
   with EXIF), uploaded by S, PHOTO_CONCURRENCY at a time: photos/s, MiB/s and server CPU per
   photo (the server re-encodes each from its pixels and makes its thumbnail, SPEC 8); then
   attached to `new_msg`s of ATTACH_PER_MSG, and downloaded by R, PHOTO_CONCURRENCY at a time.

Then R acknowledges every message at once; the time until the last receipt reaches S (pushed
once the acknowledgement that deletes the message and its attachments is committed). Each
attachment must be gone (404), nothing left stored.

The photo is made with Pillow once, before the server starts; the photos differ from it only by a
JPEG comment (COM segment) holding their number, so that no two uploads are the same bytes (the
server drops the comment with the rest of the metadata). A warm-up (a 1 MiB file uploaded,
attached, downloaded and acknowledged) comes first and is not measured, so that what the first
upload of a process sets up once (thread pools, imports, the store's statements) is not counted
as the memory of a transfer.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final, TypeVar

from PIL import ExifTags, Image

from client import Client, Clock, Downloaded, Sock, Tally, frame, leftover
from measure import Meter, RssSampler
from stage import Lab

T = TypeVar("T")

MIB: Final = 2 ** 20
# The target: RSS growth of a 25 MiB upload and of 10 concurrent downloads of it.
RSS_TARGET: Final = 8 * MIB
RSS_INTERVAL: Final = 0.05  # seconds between two VmRSS samples
DOWNLOADS: Final = 10  # concurrent downloads of the big file
PHOTO_SIZE: Final = (4032, 3024)  # a 12-megapixel phone camera
PHOTO_QUALITY: Final = 92  # with PHOTO_SIZE and the picture below: ~3.1 MiB
PHOTO_CONCURRENCY: Final = 4  # uploads (and downloads) of photos at once: a client sending an album
ATTACH_PER_MSG: Final = 10  # = the default limits.max_attachments
PHOTO_MAKE: Final = "BenchCam"  # the photos' EXIF camera make: must not be served back
WARMUP_BYTES: Final = MIB
HTTP_TIMEOUT: Final = 300.0  # seconds for one upload or download
# seconds for the acknowledgements of every message to be committed (their receipts pushed): the
# deletion overwrites every byte of the attachments (secure_delete), hundreds of MiB
ACK_TIMEOUT: Final = 120.0
NOT_AN_IMAGE: Final = b"\x00bench data "  # first bytes no file type starts with


def random_file(size: int) -> bytes:
    """`size` random bytes that no type sniffer takes for an image (stored as they are)."""
    return (NOT_AN_IMAGE + os.urandom(max(0, size - len(NOT_AN_IMAGE))))[:size]


def make_photo() -> bytes:
    """A JPEG of PHOTO_SIZE like a phone's: smooth areas and grain, EXIF with the camera make
    and a GPS position (what the server must strip). ~1 s of CPU."""
    w, h = PHOTO_SIZE
    ramp = Image.linear_gradient("L").resize(PHOTO_SIZE)
    grain = Image.effect_noise(PHOTO_SIZE, 2)
    blotches = Image.effect_noise((w // 8, h // 8), 50).resize(PHOTO_SIZE, Image.Resampling.BICUBIC)
    picture = Image.merge("RGB", (Image.blend(ramp, blotches, 0.5), blotches,
                                  Image.blend(grain, ramp, 0.5)))
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = PHOTO_MAKE
    exif[ExifTags.Base.Orientation] = 1
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (48.0, 51.0, 24.0)
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=PHOTO_QUALITY, exif=exif)
    return out.getvalue()


def photo_variant(photo: bytes, i: int) -> bytes:
    """`photo` with a COM segment after its SOI marker naming it photo `i`: other bytes, the
    same pixels."""
    comment = f"bench photo {i:06d} {os.urandom(8).hex()}".encode()
    return photo[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + photo[2:]


async def bounded(concurrency: int, jobs: list[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run `jobs`, at most `concurrency` at once; their results in order."""
    sem = asyncio.Semaphore(concurrency)

    async def one(job: Callable[[], Awaitable[T]]) -> T:
        async with sem:
            return await job()

    return list(await asyncio.gather(*(one(j) for j in jobs)))


@dataclass
class AttachmentsRun:
    """S and R with their sockets, S's messages by sent_timestamp with their `msg_sent` and
    pushes, and what went wrong (`tally`, the counts below, and `failures`: the first texts)."""

    client: Client
    args: argparse.Namespace
    s: str = "5556000001"
    r: str = "5556000002"
    tally: Tally = field(default_factory=Tally)
    clock: Clock = field(default_factory=Clock)
    r_clock: Clock = field(default_factory=Clock)
    sent: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # ts -> the uploads
    order: list[str] = field(default_factory=list)  # timestamps in the order sent
    acked: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    pushed: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    pushes: dict[str, int] = field(default_factory=dict)
    receipts: dict[str, int] = field(default_factory=dict)  # R's receipts pushed to S, by ts
    all_receipts: asyncio.Event = field(default_factory=asyncio.Event)
    last_pushed: int = -1
    incomplete: int = 0  # uploads not 201, messages without msg_sent (without receipt: at the end)
    failed_downloads: int = 0  # downloads not 200
    out_of_order: int = 0
    failures: list[str] = field(default_factory=list)
    s_send: Sock | None = None
    r_send: Sock | None = None

    def fail(self, what: str) -> None:
        """Keep the first 20 failures' texts (the caller counts them)."""
        if len(self.failures) < 20:
            self.failures.append(what)

    def on_msg_sent(self, f: dict[str, Any]) -> None:
        """S's `msg_sent`."""
        waiting = self.acked.get(f.get("message"))  # type: ignore[arg-type]
        if waiting is None or f.get("msg_from") != self.s or f.get("msg_to") != self.r:
            self.tally.corrupted += 1
        elif not waiting.done():
            waiting.set_result(None)

    def on_push(self, f: dict[str, Any]) -> None:
        """S's `new_msg` pushed to R: it must carry exactly the upload answers (SPEC 8)."""
        ts = f.get("sent_timestamp")
        uploads = self.sent.get(ts)  # type: ignore[arg-type]
        if (not isinstance(ts, str) or uploads is None or f.get("msg_from") != self.s
                or f.get("msg_to") != self.r or f.get("attachments") != uploads):
            self.tally.corrupted += 1
            self.fail(f"push not as sent: {str(f)[:300]}")
            return
        self.pushes[ts] = self.pushes.get(ts, 0) + 1
        index = self.order.index(ts)
        if index < self.last_pushed:
            self.out_of_order += 1
        self.last_pushed = max(self.last_pushed, index)
        if not self.pushed[ts].done():
            self.pushed[ts].set_result(None)

    def on_receipt(self, f: dict[str, Any]) -> None:
        """R's receipt pushed to S: sent after the commit of R's acknowledgement, which deleted
        the message with its attachments (SPEC 8)."""
        ts = f.get("message")
        if (not isinstance(ts, str) or ts not in self.sent or f.get("msg_from") != self.r
                or f.get("msg_to") != self.s):
            self.tally.corrupted += 1
            return
        self.receipts[ts] = self.receipts.get(ts, 0) + 1
        if all(self.receipts.get(t) for t in self.order if self.pushes.get(t)):
            self.all_receipts.set()

    async def send(self, uploads: list[dict[str, Any]]) -> bool:
        """S sends a `new_msg` to R carrying `uploads` (their ids) and waits for its `msg_sent`
        and its push to R; False (a missing `msg_sent` counted as incomplete; a missing push is
        counted at the end, as lost) when either did not come within `--stall-timeout`."""
        assert self.s_send is not None
        ts = self.clock.next()
        loop = asyncio.get_running_loop()
        self.sent[ts] = uploads
        self.order.append(ts)
        self.acked[ts], self.pushed[ts] = loop.create_future(), loop.create_future()
        await self.s_send.send(frame("new_msg", self.s, self.r, f"{len(uploads)} attachment(s)",
                                     ts, [u["id"] for u in uploads]))
        for waiting, what in ((self.acked[ts], "msg_sent"), (self.pushed[ts], "push")):
            try:
                await asyncio.wait_for(asyncio.shield(waiting), self.args.stall_timeout)
            except TimeoutError:
                if what == "msg_sent":
                    self.incomplete += 1
                self.fail(f"no {what} for the message of {ts}")
                return False
        return True

    def unpushed(self) -> int:
        """Messages that got their `msg_sent` and were never pushed to R."""
        return sum(1 for ts in self.order if self.acked[ts].done() and not self.pushes.get(ts))

    async def upload(self, data: bytes, filename: str, content_type: str) -> dict[str, Any] | None:
        """S uploads `data`; the answer, or None (counted as incomplete) when it was not 201."""
        status, answer = await self.client.upload(self.s, data, filename, content_type,
                                                  HTTP_TIMEOUT)
        if status != 201:
            self.incomplete += 1
            self.fail(f"upload of {filename}: HTTP {status} {answer}")
            return None
        return answer

    async def download(self, attachment_id: str) -> Downloaded:
        """R downloads an attachment; a status other than 200 is counted."""
        got = await self.client.download(self.r, attachment_id, HTTP_TIMEOUT)
        if got.status != 200:
            self.failed_downloads += 1
            self.fail(f"download of {attachment_id}: HTTP {got.status}")
        return got

    def check_same(self, got: Downloaded, size: int, sha256: str, what: str) -> None:
        """A download that must be exactly the uploaded bytes; corrupted otherwise."""
        if got.status == 200 and (got.size, got.sha256) != (size, sha256):
            self.tally.corrupted += 1
            self.fail(f"{what}: {got.size} bytes, sha256 {got.sha256[:16]}..., not {size} bytes "
                      f"{sha256[:16]}...")


async def case_attachments(lab: Lab, name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The attachments case's one run, on a fresh server (see the module docstring)."""
    # everything uploaded is made before the server starts: never in a measured phase
    big = random_file(round(args.attachment_mib * MIB))
    big_sha = hashlib.sha256(big).hexdigest()
    warmup = random_file(WARMUP_BYTES)
    photo = make_photo() if args.photos else b""
    photos = [photo_variant(photo, i) for i in range(args.photos)]
    result: dict[str, Any] = {"case": "attachments", "file_bytes": len(big), "photos": len(photos),
                              "photo_bytes": len(photo), "photo_pixels": list(PHOTO_SIZE),
                              "downloads": DOWNLOADS, "photo_concurrency": PHOTO_CONCURRENCY,
                              "rss_target": RSS_TARGET}
    async with lab.stage(name, "FULL") as stage:
        client = stage.client
        run = AttachmentsRun(client, args)
        engines = stage.server.deployment.engines
        t = run.tally
        await client.register([run.s, run.r])
        run.s_send = await client.connect(run.s, f"/ws/chat/personal/{run.s}/{run.r}/", t,
                                          {"msg_sent": run.on_msg_sent})
        # R's receipts, pushed once R's acknowledgement (and with it the deletion) is committed
        await client.connect(run.s, f"/ws/chat/special/{run.s}/", t,
                             {"msg_received": run.on_receipt})
        r_recv = await client.connect(run.r, f"/ws/chat/special/{run.r}/", t,
                                      {"new_msg": run.on_push})
        run.r_send = await client.connect(run.r, f"/ws/chat/personal/{run.r}/{run.s}/", t)

        # warm-up, not measured
        ids: list[str] = []
        answer = await run.upload(warmup, "warmup.bin", "application/octet-stream")
        if answer is not None:
            ids.append(answer["id"])
            if await run.send([answer]):
                got = await run.download(answer["id"])
                run.check_same(got, len(warmup), hashlib.sha256(warmup).hexdigest(), "warm-up")
                assert run.r_send is not None
                await run.r_send.send(frame("msg_received", run.r, run.s, run.order[-1],
                                            run.r_clock.next()))
                try:
                    await asyncio.wait_for(run.all_receipts.wait(), ACK_TIMEOUT)
                except TimeoutError:
                    run.fail("no receipt for the warm-up's message")
        await asyncio.sleep(0.5)  # let what the warm-up freed settle

        # 1. the big file: upload
        meter = Meter(stage.pid, engines)
        meter.start()
        with RssSampler(stage.pid, RSS_INTERVAL) as rss:
            t0 = time.perf_counter()
            answer = await run.upload(big, "big.bin", "application/octet-stream")
            upload_s = time.perf_counter() - t0
        result["upload"] = {"seconds": upload_s, "mib_per_s": len(big) / MIB / upload_s,
                            "measured": meter.stop(), "rss": rss.figures()}
        if answer is not None:
            ids.append(answer["id"])
            if (answer.get("size"), answer.get("content_type")) != (len(big),
                                                                    "application/octet-stream"):
                t.corrupted += 1
                run.fail(f"the big file's upload answer: {answer}")
            if await run.send([answer]):
                # one download, then DOWNLOADS at once
                with RssSampler(stage.pid, RSS_INTERVAL) as rss:
                    t0 = time.perf_counter()
                    got = await run.download(answer["id"])
                    one_s = time.perf_counter() - t0
                run.check_same(got, len(big), big_sha, "the big file's download")
                result["download"] = {"seconds": one_s, "mib_per_s": len(big) / MIB / one_s,
                                      "rss": rss.figures()}
                await asyncio.sleep(0.5)
                meter = Meter(stage.pid, engines)
                meter.start()
                with RssSampler(stage.pid, RSS_INTERVAL) as rss:
                    t0 = time.perf_counter()
                    each: list[float] = []

                    async def timed() -> Downloaded:
                        got = await run.download(answer["id"])
                        each.append(time.perf_counter() - t0)
                        return got

                    gots = await asyncio.gather(*(timed() for _ in range(DOWNLOADS)))
                    all_s = time.perf_counter() - t0
                for got in gots:
                    run.check_same(got, len(big), big_sha, "one of the concurrent downloads")
                result["downloads_at_once"] = {
                    "seconds": all_s, "mib_per_s": DOWNLOADS * len(big) / MIB / all_s,
                    "first_done_s": min(each, default=0.0), "measured": meter.stop(),
                    "rss": rss.figures()}

        # 2. photos
        if photos:
            await asyncio.sleep(0.5)
            meter = Meter(stage.pid, engines)
            meter.start()
            with RssSampler(stage.pid, RSS_INTERVAL) as rss:
                t0 = time.perf_counter()
                answers = await bounded(PHOTO_CONCURRENCY, [
                    partial(run.upload, p, f"IMG_{i:04d}.jpg", "image/jpeg")
                    for i, p in enumerate(photos)])
                up_s = time.perf_counter() - t0
            measured = meter.stop()
            stored = [a for a in answers if a is not None]
            for a in stored:
                if (a.get("content_type"), a.get("width"), a.get("height"),
                        a.get("thumbnail")) != ("image/jpeg", *PHOTO_SIZE, True):
                    t.corrupted += 1
                    run.fail(f"a photo's upload answer: {a}")
            ids += [a["id"] for a in stored]
            sent_bytes = sum(len(p) for p in photos)
            result["photo_upload"] = {
                "seconds": up_s, "photos_per_s": len(photos) / up_s,
                "mib_per_s": sent_bytes / MIB / up_s,
                "server_cpu_ms_per_photo": measured["server_cpu_s"] / len(photos) * 1000,
                "stored_bytes_mean": (sum(a["size"] for a in stored) / len(stored)
                                      if stored else None),
                "measured": measured, "rss": rss.figures()}
            for i in range(0, len(stored), ATTACH_PER_MSG):
                await run.send(stored[i:i + ATTACH_PER_MSG])
            sent_ids = {u["id"] for ts, us in run.sent.items() if ts in run.pushed
                        and run.pushed[ts].done() for u in us}
            to_get = [a for a in stored if a["id"] in sent_ids]
            meter = Meter(stage.pid, engines)
            meter.start()
            t0 = time.perf_counter()
            gots = await bounded(PHOTO_CONCURRENCY, [partial(run.download, a["id"]) for a in to_get])
            down_s = time.perf_counter() - t0
            measured = meter.stop()
            for a, got in zip(to_get, gots, strict=True):
                if got.status == 200 and (
                        got.size != a["size"] or got.content_type != "image/jpeg"
                        or not got.head.startswith(b"\xff\xd8\xff")
                        or PHOTO_MAKE.encode() in got.head or b"Exif\x00\x00" in got.head):
                    t.corrupted += 1
                    run.fail(f"photo {a['id']} as downloaded: {got.size} bytes of "
                             f"{got.content_type}, not the {a['size']} bytes of JPEG without EXIF")
            down_bytes = sum(g.size for g in gots)
            result["photo_download"] = {
                "seconds": down_s, "photos_per_s": len(to_get) / down_s if down_s else None,
                "mib_per_s": down_bytes / MIB / down_s if down_s else None,
                "measured": measured}

        # R acknowledges every message: each attachment goes with its message (SPEC 8)
        assert run.r_send is not None
        run.all_receipts.clear()
        waiting = [ts for ts in run.order if run.pushes.get(ts) and not run.receipts.get(ts)]
        meter = Meter(stage.pid, engines)
        meter.start()
        t0 = time.perf_counter()
        for ts in waiting:
            await run.r_send.send(frame("msg_received", run.r, run.s, ts, run.r_clock.next()))
        try:
            if waiting:
                await asyncio.wait_for(run.all_receipts.wait(), ACK_TIMEOUT)
        except TimeoutError:
            run.fail(f"not every receipt within {ACK_TIMEOUT:g} s of the acknowledgements")
        result["acks"] = {"messages": len(waiting), "seconds": time.perf_counter() - t0,
                          "bytes": sum(u["size"] for ts in waiting for u in run.sent[ts]),
                          "measured": meter.stop()}
        left = await leftover([(run.r, r_recv)], ("fetch_msgs",), args.drain_timeout, t)
        still = await still_served(run, ids, args.drain_timeout)
        await client.close_sockets()

    unreceipted = sum(1 for ts in run.order if run.pushes.get(ts) and not run.receipts.get(ts))
    result["checks"] = t.checks(
        incomplete=run.incomplete + unreceipted, lost=run.failed_downloads + run.unpushed(),
        duplicate_pushes=sum(n - 1 for n in (*run.pushes.values(), *run.receipts.values())),
        out_of_order=run.out_of_order,
        leftover_stored=left + still)
    result["failures"] = run.failures
    result["attachments_still_served"] = still
    result["error_texts"] = t.error_texts
    result["other_frames"] = t.other_frames
    return result


async def still_served(run: AttachmentsRun, ids: list[str], drain_timeout: float) -> int:
    """How many of `ids` R can still get (not 404) after acknowledging their messages, polled
    up to `drain_timeout` seconds (the deletion follows the acknowledgement's commit)."""
    deadline = time.perf_counter() + drain_timeout
    while True:
        statuses = await bounded(16, [partial(run.client.served, run.r, i) for i in ids])
        still = sum(1 for s in statuses if s != 404)
        if still == 0 or time.perf_counter() > deadline:
            return still
        await asyncio.sleep(0.2)
