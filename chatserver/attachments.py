"""Photos and files over HTTP (SPEC 8): the upload (`POST /chat/special/attachment`) and the
download (`GET /chat/attachment/<id>`). The store keeps the bytes (chunks of ATTACHMENT_CHUNK in
the database, stores/base.py) and decides who may download; this module reads, checks, cleans
and streams them.

Upload, step by step:
- the user is logged in (401 otherwise) and within `limits.messages_per_second`, which an upload
  counts as one message (429); the body is `multipart/form-data` (415) with exactly one part,
  named `file` (400);
- the part is streamed into an unnamed temporary file (`tempfile.TemporaryFile`: mode 0600, no
  name on Linux (O_TMPFILE), gone when closed), beside the database when its folder exists, in
  the system's temporary folder otherwise; memory per upload is one ATTACHMENT_CHUNK. Each read
  may wait at most `limits.body_timeout_seconds` for the next bytes (408, connection closed):
  the body is read here and not by middlewares.guard's pre-read (which would buffer it in
  memory within CLIENT_MAX_SIZE); past `limits.max_attachment_bytes` the answer is 413 as soon
  as the reader hands the bytes over (within READ_BYTES), without reading the rest (a
  Content-Length that already says so is answered before anything is read); empty: 400;
- the type comes from the first bytes (`filetype`), never from the part's name or Content-Type;
  unknown: `application/octet-stream`. JPEG, PNG (APNG too), WebP and GIF are opened by Pillow,
  limited to that one format, and refused with 413 when width x height (x frames, for an
  animation) passes `limits.max_image_pixels`, before a pixel is decoded (Pillow's own
  `MAX_IMAGE_PIXELS` is set to the same number: its DecompressionBombError / Warning are 413
  too). Then the EXIF orientation is applied and the image is encoded again from its pixels
  only, so that no metadata survives: no EXIF (GPS), XMP, comments, text chunks, and no ICC
  profile either (a profile can name the device; colours of wide-gamut photos may shift a
  little). JPEG stays JPEG (quality 90), PNG stays PNG, WebP stays WebP (quality 90, lossy),
  GIF stays GIF. Animated GIF, PNG and WebP keep every frame, their durations and loop count
  (each frame decoded to RGBA: the animation's pixels in all frames count against
  max_image_pixels). A file whose first bytes claim one of these formats but whose header
  Pillow cannot read is no image: stored unchanged as `application/octet-stream`. One whose
  header reads but whose pixels do not (truncated, corrupt) is refused with 422: it cannot be
  cleaned, and stored as it is it would keep its metadata. Other recognised types (PDF, ZIP,
  MP4, TIFF...) are stored unchanged with their type; they are never shown inline;
- every image gets a thumbnail of at most THUMBNAIL_PX pixels on its longer side (JPEG, or PNG
  when it has transparency), made from the cleaned pixels;
- Pillow runs on IMAGE_WORKERS threads of its own (decoding a 40-megapixel photo takes ~120 MB
  and a second of CPU: a few at once, whatever the number of uploads);
- the store reserves the attachment under the owner's quota
  (`limits.attachment_quota_bytes`; 413 past it, checked atomically: parallel uploads cannot
  all pass), then takes the chunks of the file and of the thumbnail and marks it complete; a
  failure on the way deletes what was stored. Answer: 201 with `Attachment.wire()`.

Names (`clean_name`): the part's filename, Unicode NFC; only what follows the last `/` or `\\`;
without control and format characters (Unicode Cc, Cf, Cs, Zl, Zp: NUL, line breaks, bidi
overrides that disguise an extension); spaces trimmed; at most MAX_NAME_CHARS characters,
cut before the extension (the part after the last dot, up to MAX_EXTENSION_CHARS characters)
so that it is kept; empty, "." or "..": "file".

Download: 404 for anyone the store does not authorise (logged in or not), for an unknown or
malformed id and for a missing thumbnail: never 403, so that nobody learns that an id exists.
The bytes are streamed a chunk at a time (a Range reads only the chunks it covers) with a
strong ETag per id and part, `Cache-Control: private`, `X-Content-Type-Options: nosniff`,
`Content-Security-Policy: default-src 'none'; sandbox`; the four image types inline, anything
else `Content-Disposition: attachment` with the name (RFC 6266, RFC 8187 `filename*`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import re
import secrets
import tempfile
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, TypeVar
from urllib.parse import quote

import filetype
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from PIL import Image, ImageOps

from .auth import current_user
from .config import Config, Limits
from .keys import config_key, store_key, throttle_key
from .protocol import ATTACHMENT_ID_RE
from .remote import client_address
from .stores.base import (
    ATTACHMENT_CHUNK,
    FILE_PART,
    THUMBNAIL_PART,
    Attachment,
    QuotaExceeded,
    Store,
    StoreError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

UPLOAD_PATH: Final = "/chat/special/attachment"
DOWNLOAD_PATH: Final = "/chat/attachment/{attachment_id}"
OCTET_STREAM: Final = "application/octet-stream"
# SPEC 8: the types served inline (and the only ones Pillow opens), by what `filetype` says the
# bytes are -> the Pillow format that may open them. APNG is served as image/png.
IMAGE_FORMATS: Final = {"image/jpeg": "JPEG", "image/png": "PNG", "image/apng": "PNG",
                        "image/gif": "GIF", "image/webp": "WEBP"}
FORMAT_TYPES: Final = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif",
                       "WEBP": "image/webp"}
INLINE_TYPES: Final = frozenset(FORMAT_TYPES.values())
# Formats whose files may hold an animation we keep (a JPEG's extra MPO frames are dropped).
ANIMATED_FORMATS: Final = frozenset({"PNG", "GIF", "WEBP"})
THUMBNAIL_PX: Final = 320
JPEG_QUALITY: Final = 90
THUMBNAIL_QUALITY: Final = 80
# `filetype` looks at most at this many first bytes.
SNIFF_BYTES: Final = 8192
# Bytes asked of the multipart reader at once (it may give fewer). It hands each read over only
# once the next one came in (so as to find a boundary cut in two): the size is known, and a body
# over the limit refused, at most READ_BYTES after the bytes arrived.
READ_BYTES: Final = 64 * 1024
# A multipart body's own bytes around the file (boundaries, the part's headers): a
# Content-Length beyond max_attachment_bytes plus this is refused before anything is read.
MULTIPART_SLACK: Final = 64 * 1024
MAX_NAME_CHARS: Final = 200
MAX_EXTENSION_CHARS: Final = 16
DEFAULT_NAME: Final = "file"
# Unicode categories dropped from names: controls, format characters (bidi overrides, zero-width
# ones), lone surrogates (not encodable in JSON), line and paragraph separators.
_DROPPED_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
# Images re-encoded at once in this process; more uploads wait their turn.
IMAGE_WORKERS: Final = 2
_IMAGES: Final = concurrent.futures.ThreadPoolExecutor(IMAGE_WORKERS, thread_name_prefix="images")
# SPEC 8: what every download answer carries (set here and not by middlewares.guard: a streamed
# response's headers are sent before the handler returns to it).
DOWNLOAD_HEADERS: Final = {
    "Cache-Control": "private",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
# RFC 9110 14.1.2: one range of bytes, `first-last`, `first-` or `-suffix`; at most 19 digits
# (int() of a longer one is refused by Python, and no file is that big).
_RANGE_RE: Final = re.compile(r"bytes=(?:([0-9]{1,19})-([0-9]{0,19})|-([0-9]{1,19}))")
# RFC 8187 attr-char beside letters, digits and "-._~" (which quote() leaves as they are).
_ATTR_CHARS: Final = "!#$&+^`|"
_PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"


class TooManyPixels(Exception):
    """An image over `limits.max_image_pixels` (413; SPEC 8: never decoded)."""


class NotAnImage(Exception):
    """Bytes that begin like an image but whose header Pillow cannot read: a file of another
    kind, stored unchanged as application/octet-stream (SPEC 8)."""


class CannotClean(Exception):
    """An image whose header reads but whose pixels do not (truncated, corrupt): it cannot be
    encoded again without its metadata, and stored unchanged it would keep it (GPS): 422."""


# -- names ------------------------------------------------------------------------------------


def clean_name(filename: str | None) -> str:
    """The name an attachment is stored and served under (see the module docstring): never
    empty, at most MAX_NAME_CHARS characters, no path separators, no control characters."""
    text = unicodedata.normalize("NFC", filename or "")
    text = text.replace("\\", "/").rsplit("/", 1)[-1]
    text = "".join(c for c in text if unicodedata.category(c) not in _DROPPED_CATEGORIES).strip()
    if text in ("", ".", ".."):
        return DEFAULT_NAME
    if len(text) > MAX_NAME_CHARS:
        stem, dot, extension = text.rpartition(".")
        if dot and stem and len(extension) <= MAX_EXTENSION_CHARS:
            text = stem[:MAX_NAME_CHARS - len(extension) - 1].rstrip() + "." + extension
        else:
            text = text[:MAX_NAME_CHARS].rstrip()
    return text


def content_disposition(kind: str, name: str) -> str:
    """`kind` ("inline" or "attachment") with `name` as RFC 6266 wants it: an ASCII
    `filename` for old clients (other characters, quotes and backslashes as "_") and the exact
    name as `filename*=UTF-8''...` (RFC 8187)."""
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in name)
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe=_ATTR_CHARS)}"


# -- the image work (on the IMAGE_WORKERS threads) ----------------------------------------------


@dataclass
class Prepared:
    """What is stored of an upload: the bytes of its file (and of its thumbnail), positioned at
    their start, with what they are. The caller closes the files (`close`)."""

    content_type: str
    file: IO[bytes]
    size: int
    width: int | None = None
    height: int | None = None
    thumbnail: IO[bytes] | None = None
    thumbnail_size: int | None = None
    _own: list[IO[bytes]] = field(default_factory=list)  # files made here, closed by close()

    def close(self) -> None:
        """Close the files made while preparing (not the upload itself)."""
        for f in self._own:
            f.close()


def prepare(upload: IO[bytes], size: int, max_pixels: int, folder: str | None) -> Prepared:
    """The upload's type from its first bytes; an image re-encoded without its metadata, with
    its thumbnail (temporary files in `folder`). Raises TooManyPixels past `max_pixels`. Blocks:
    run it on a worker thread."""
    upload.seek(0)
    kind = filetype.guess(upload.read(SNIFF_BYTES))
    content_type = kind.mime if kind is not None else OCTET_STREAM
    image_format = IMAGE_FORMATS.get(content_type)
    if image_format is not None:
        try:
            return _reencode(upload, image_format, max_pixels, folder)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            # Pillow's own check at open (its MAX_IMAGE_PIXELS is ours): refused before decoding
            raise TooManyPixels(str(e)) from e
        except NotAnImage as e:
            log.info("an upload that begins like %s is not one (%s): stored as %s",
                     content_type, e, OCTET_STREAM)
            content_type = OCTET_STREAM
    upload.seek(0)  # stored unchanged, from its first byte
    return Prepared(content_type, upload, size)


def _reencode(upload: IO[bytes], image_format: str, max_pixels: int,
              folder: str | None) -> Prepared:
    # Process-wide in Pillow; one config per server process (tests running apps of different
    # limits at once in one process could see each other's, but our own check below is exact).
    Image.MAX_IMAGE_PIXELS = max_pixels
    upload.seek(0)
    try:
        opened = Image.open(upload, formats=[image_format])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError):
        raise
    except Exception as e:  # Pillow raises many kinds for a header it cannot read
        raise NotAnImage(type(e).__name__) from e
    made: list[IO[bytes]] = []
    try:
        with opened as image:
            width, height = image.size
            frames = getattr(image, "n_frames", 1) if image_format in ANIMATED_FORMATS else 1
            if width * height * frames > max_pixels:  # the header's word, before any decoding
                raise TooManyPixels(f"{width} x {height} pixels x {frames} frame(s)")
            if frames > 1:
                clean, params = _animation(image, frames, image_format)
            else:
                clean, params = _still(image, image_format)
            thumbnail, thumbnail_format = _thumbnail(clean)
        out = tempfile.TemporaryFile(dir=folder)
        made.append(out)
        clean.info = {}  # nothing of the original's metadata reaches the encoder
        clean.save(out, format=image_format, **params)
        small = tempfile.TemporaryFile(dir=folder)
        made.append(small)
        thumbnail.save(small, format=thumbnail_format,
                       **({"quality": THUMBNAIL_QUALITY} if thumbnail_format == "JPEG" else {}))
        sizes = [out.tell(), small.tell()]
        out.seek(0)
        small.seek(0)
        return Prepared(FORMAT_TYPES[image_format], out, sizes[0], clean.width, clean.height,
                        small, sizes[1], made)
    except BaseException as e:
        for f in made:
            f.close()
        if isinstance(e, Exception) and not isinstance(e, (
                TooManyPixels, MemoryError, Image.DecompressionBombError, Image.DecompressionBombWarning)):
            raise CannotClean(type(e).__name__) from e  # a truncated file, corrupt data...
        raise


def _still(image: Image.Image, image_format: str) -> tuple[Image.Image, dict[str, Any]]:
    """One image, oriented (a new image); the save parameters that keep its look."""
    clean = ImageOps.exif_transpose(image)
    params: dict[str, Any] = {}
    if image_format in ("JPEG", "WEBP"):
        params["quality"] = JPEG_QUALITY
    transparency = clean.info.get("transparency")  # a palette index or colour: pixels, not metadata
    if transparency is not None and image_format in ("PNG", "GIF"):
        params["transparency"] = transparency
    return clean, params


def _animation(image: Image.Image, frames: int,
               image_format: str) -> tuple[Image.Image, dict[str, Any]]:
    """Every frame, decoded to RGBA (Pillow composes each as it is shown) and oriented, with its
    duration and the loop count: the first frame and the parameters that save them all."""
    images: list[Image.Image] = []
    durations: list[int] = []
    for n in range(frames):
        image.seek(n)
        frame = ImageOps.exif_transpose(image.convert("RGBA"))
        durations.append(int(image.info.get("duration") or 100))
        frame.info = {}
        images.append(frame)
    params: dict[str, Any] = {"save_all": True, "append_images": images[1:], "duration": durations}
    image.seek(0)
    if "loop" in image.info:  # absent: played once
        params["loop"] = int(image.info["loop"])
    if image_format == "GIF":
        params["disposal"] = 2  # whole frames: each replaces the last, transparency included
    if image_format == "WEBP":
        params["quality"] = JPEG_QUALITY
    return images[0], params


def _thumbnail(image: Image.Image) -> tuple[Image.Image, str]:
    """At most THUMBNAIL_PX on its longer side (never enlarged), without metadata; "PNG" when it
    has transparency, else "JPEG". `image` still has its `info` (its transparency)."""
    alpha = image.has_transparency_data
    source = image if image.mode in ("RGB", "RGBA", "L", "LA") else image.convert(
        "RGBA" if alpha else "RGB")
    scale = min(1.0, THUMBNAIL_PX / max(source.size))
    size = (max(1, round(source.width * scale)), max(1, round(source.height * scale)))
    thumbnail = source.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    thumbnail.info = {}
    if thumbnail.mode in ("RGBA", "LA"):
        alpha_range = thumbnail.getextrema()[-1]
        if isinstance(alpha_range, tuple) and alpha_range[0] == 255:  # opaque after all
            thumbnail = thumbnail.convert("RGB" if thumbnail.mode == "RGBA" else "L")
        else:
            return thumbnail, "PNG"
    return thumbnail, "JPEG"


async def _on_image_worker(function: Callable[..., Prepared], *args: Any) -> Prepared:
    """`function(*args)` on an image thread. When the caller is cancelled (a client gone, on a
    server that cancels handlers), the work still finishes; its files are closed then."""
    future = asyncio.get_running_loop().run_in_executor(_IMAGES, function, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(lambda f: None if f.cancelled() or f.exception() else f.result().close())
        raise


# -- upload -------------------------------------------------------------------------------------


def _too_large(limits: Limits) -> web.HTTPRequestEntityTooLarge:
    return web.HTTPRequestEntityTooLarge(
        limits.max_attachment_bytes, reason=f"a file may have at most {limits.max_attachment_bytes} bytes")


def _bad(reason: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(reason=reason)


async def _in_time(step: Awaitable[T], seconds: float) -> T:
    """One read of the body, which must come within `seconds`; 408 (middlewares.guard closes
    the connection) otherwise."""
    try:
        async with asyncio.timeout(seconds):
            return await step
    except TimeoutError:
        raise web.HTTPRequestTimeout(reason="the request body did not arrive in time") from None


def upload_folder(config: Config) -> str | None:
    """Where the temporary files of uploads go: the database's folder when it exists (not a
    RAM-backed /tmp), else None (the system's temporary folder)."""
    folder = Path(config.database.path).parent
    return str(folder) if folder.is_dir() else None


async def _receive(request: web.Request, into: IO[bytes], limits: Limits) -> tuple[str, int]:
    """Stream the body's one part `file` into `into`; its cleaned name and size in bytes."""
    gap = limits.body_timeout_seconds
    try:
        reader = await request.multipart()
        part = await _in_time(reader.next(), gap)
        if not isinstance(part, BodyPartReader) or part.name != "file":
            raise _bad("send one part named 'file'")
        name = clean_name(part.filename)
        size = 0
        pending = bytearray()
        while not part.at_eof():
            chunk = await _in_time(part.read_chunk(READ_BYTES), gap)
            size += len(chunk)
            if size > limits.max_attachment_bytes:
                raise _too_large(limits)  # now: the rest is not read
            pending += chunk
            if len(pending) >= ATTACHMENT_CHUNK:
                await asyncio.to_thread(into.write, pending)
                pending = bytearray()
        await asyncio.to_thread(into.write, pending)
        if await _in_time(reader.next(), gap) is not None:
            raise _bad("send one part named 'file', and nothing else")
    except (ValueError, HttpProcessingError) as e:
        # aiohttp: no boundary, a part's header line too long, the body ends early... Its
        # message quotes the client's bytes: not echoed.
        raise _bad(f"a malformed multipart/form-data body ({type(e).__name__})") from None
    except ConnectionError:  # the client left (a cancelled upload): nobody reads the answer
        log.info("upload from %s cut off by the client", client_address(request))
        request.protocol.force_close()
        raise _bad("the connection was lost") from None
    if size == 0:
        raise _bad("the file is empty")
    return name, size


async def _store_part(store: Store, attachment_id: str, part: int, source: IO[bytes]) -> None:
    """Copy `source` into the store, ATTACHMENT_CHUNK bytes per chunk."""
    n = 0
    while data := await asyncio.to_thread(source.read, ATTACHMENT_CHUNK):
        await store.put_attachment_chunk(attachment_id, part, n, data)
        n += 1


async def _keep(store: Store, attachment: Attachment, prepared: Prepared, quota: int) -> None:
    """Reserve under the owner's quota (413), store every chunk, complete; nothing is left of
    it when that fails."""
    try:
        await store.reserve_attachment(attachment, quota)
    except QuotaExceeded:
        raise web.HTTPRequestEntityTooLarge(
            quota, reason=f"over your quota: your attachments would take more than {quota} bytes") from None
    try:
        await _store_part(store, attachment.id, FILE_PART, prepared.file)
        if prepared.thumbnail is not None:
            await _store_part(store, attachment.id, THUMBNAIL_PART, prepared.thumbnail)
        await store.complete_attachment(attachment.id)
    except BaseException:
        with contextlib.suppress(StoreError):  # the unclaimed uploads' expiry gets it otherwise
            await store.delete_attachment(attachment.id)
        raise


async def upload(request: web.Request) -> web.Response:
    """POST /chat/special/attachment, `multipart/form-data` with one part `file`: store it;
    201 `{"id", "name", "content_type", "size", "width"?, "height"?, "thumbnail"}` (SPEC 8).
    400 empty or malformed, 401 not logged in, 408 a read waited more than
    `limits.body_timeout_seconds`, 413 over `limits.max_attachment_bytes`, the user's quota or
    `limits.max_image_pixels`, 415 not multipart, 422 an image that cannot be decoded, 429 over
    the message rate."""
    user = await current_user(request)
    if user is None:
        raise web.HTTPUnauthorized(reason="log in first")
    me = user[0]
    config = request.app[config_key]
    limits = config.limits
    if request.content_type != "multipart/form-data":
        raise web.HTTPUnsupportedMediaType(reason="send multipart/form-data with one part named 'file'")
    if (request.content_length or 0) > limits.max_attachment_bytes + MULTIPART_SLACK:
        raise _too_large(limits)
    if not await request.app[throttle_key].allow_message(me):  # an upload is a message (SPEC 10)
        raise web.HTTPTooManyRequests(
            reason=f"message rate limit exceeded ({limits.messages_per_second:g} per second)")
    folder = upload_folder(config)
    with tempfile.TemporaryFile(dir=folder) as raw:
        name, size = await _receive(request, raw, limits)
        try:
            prepared = await _on_image_worker(prepare, raw, size, limits.max_image_pixels, folder)
        except TooManyPixels:
            raise web.HTTPRequestEntityTooLarge(
                limits.max_image_pixels,
                reason=f"an image may have at most {limits.max_image_pixels} pixels") from None
        except CannotClean as e:
            log.info("an upload's image could not be decoded (%s): refused", e)
            raise web.HTTPUnprocessableEntity(
                reason="this image cannot be read (damaged or incomplete), so its metadata cannot "
                       "be removed: it was not stored") from None
        try:
            attachment = Attachment(
                id=secrets.token_urlsafe(16), owner=me, name=name,
                content_type=prepared.content_type, size=prepared.size, width=prepared.width,
                height=prepared.height, thumbnail_size=prepared.thumbnail_size)
            await _keep(request.app[store_key], attachment, prepared, limits.attachment_quota_bytes)
        finally:
            prepared.close()
    log.info("upload %s stored: %d bytes of %s", attachment.id, attachment.size,
             attachment.content_type)
    return web.json_response(attachment.wire(), status=201)


# -- download -----------------------------------------------------------------------------------


class Unsatisfiable(Exception):
    """A Range that no byte of the file satisfies (416)."""


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The first and last byte (inclusive) of a `Range: bytes=...` header for a file of `size`
    bytes (> 0), or None to send the whole file: no header, several ranges, another unit, or a
    syntax error (RFC 9110 14.2: a server may ignore the header). Raises Unsatisfiable when the
    range starts past the end (or is an empty suffix)."""
    if header is None:
        return None
    match = _RANGE_RE.fullmatch(header.strip())
    if match is None:
        return None
    first, last, suffix = match.groups()
    if suffix is not None:
        if int(suffix) == 0:
            raise Unsatisfiable
        return max(0, size - int(suffix)), size - 1
    start = int(first)
    if last and int(last) < start:
        return None  # invalid (RFC 9110 14.1.1): ignored
    if start >= size:
        raise Unsatisfiable
    return start, min(int(last), size - 1) if last else size - 1


def _not_found() -> web.HTTPNotFound:
    return web.HTTPNotFound(reason="no such attachment")


async def download(request: web.Request) -> web.StreamResponse:
    """GET /chat/attachment/<id>[?thumbnail=1]: the file (or its thumbnail) to whom SPEC 8
    allows; 404 to everyone else (see the module docstring). 200, or 206 for a satisfiable
    `Range` (416 for an unsatisfiable one), 304 for a matching `If-None-Match`."""
    attachment_id = request.match_info["attachment_id"]
    if not ATTACHMENT_ID_RE.fullmatch(attachment_id):
        raise _not_found()
    user = await current_user(request)
    store = request.app[store_key]
    attachment = None if user is None else await store.attachment_for(attachment_id, *user)
    if attachment is None:
        raise _not_found()
    thumbnail = request.query.get("thumbnail") == "1"
    part = THUMBNAIL_PART if thumbnail else FILE_PART
    size = attachment.thumbnail_size if thumbnail else attachment.size
    if size is None:
        raise _not_found()
    etag = f"{attachment.id}.{part}"  # the bytes of one id and part never change: strong
    headers = {**DOWNLOAD_HEADERS, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
    asked = request.if_none_match
    if asked and any(tag.value in (etag, "*") for tag in asked):
        return web.Response(status=304, headers=headers)
    first = await store.attachment_chunk(attachment.id, part, 0) if thumbnail else None
    if thumbnail:
        if first is None:
            raise _not_found()
        content_type = "image/png" if first.startswith(_PNG_MAGIC) else "image/jpeg"
        headers["Content-Disposition"] = "inline"
    else:
        content_type = attachment.content_type
        inline = "inline" if content_type in INLINE_TYPES else "attachment"
        headers["Content-Disposition"] = content_disposition(inline, attachment.name)
    if_range = request.headers.get("If-Range")
    try:
        span = byte_range(request.headers.get("Range"), size) if if_range in (None, f'"{etag}"') else None
    except Unsatisfiable:
        raise web.HTTPRequestRangeNotSatisfiable(headers={**headers, "Content-Range": f"bytes */{size}"}) \
            from None
    start, end = span if span is not None else (0, size - 1)
    response = web.StreamResponse(status=200 if span is None else 206, headers=headers)
    response.content_type = content_type
    response.content_length = end - start + 1
    if span is not None:
        response.headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    for n in range(start // ATTACHMENT_CHUNK, end // ATTACHMENT_CHUNK + 1):
        data = first if n == 0 and first is not None else await store.attachment_chunk(
            attachment.id, part, n)
        if data is None:  # deleted while being sent: the length promised cannot be kept
            log.info("attachment %s deleted during its download: connection cut", attachment.id)
            response.force_close()
            return response
        offset = n * ATTACHMENT_CHUNK
        await response.write(memoryview(data)[max(0, start - offset):end - offset + 1])
        # Not held while the next chunk is read: one chunk per download in memory, not two
        # (bench/bench.py --cases attachments: ~0.5 MiB per concurrent download before).
        del data
        first = None
    await response.write_eof()
    return response
