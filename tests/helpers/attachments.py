"""Attachments as the tests make and send them (SPEC 8): upload forms and raw multipart bodies,
files with something recognisable in them, real JPEGs with EXIF GPS and orientation made with
Pillow, PNG headers that claim huge images, and frames that carry attachments. No I/O here but
building bytes."""

from __future__ import annotations

import io
import os
import struct
import zlib
from typing import Any, Final

import aiohttp
from PIL import ExifTags, Image

from helpers.frames import frame

UPLOAD: Final = "/chat/special/attachment"
BOUNDARY: Final = "attachment-test-boundary-7MA4YWxkTrZu0gW"
# What the tests write into images' metadata, to look for in the stored bytes afterwards.
SECRET_MAKE: Final = "SecretCam-4711"
SECRET_COMMENT: Final = b"secret comment 4711"
SECRET_XMP: Final = b"<x:xmpmeta xmlns:x='adobe:ns:meta/'>secret-xmp-4711</x:xmpmeta>"
GPS_LATITUDE: Final = (48.0, 51.0, 24.0)  # 48 deg 51' 24'' N: Paris


def download_path(attachment_id: str, thumbnail: bool = False) -> str:
    return f"/chat/attachment/{attachment_id}" + ("?thumbnail=1" if thumbnail else "")


def needle_file(size: int, tag: str = "") -> tuple[bytes, bytes]:
    """`size` random bytes (not an image: no magic number of any type at the start) holding a
    unique 32-byte needle at its middle; (data, needle)."""
    needle = (b"needle-" + os.urandom(8).hex().encode() + tag.encode() + b"-" * 32)[:32]
    body = bytearray(b"\x00plain data " + os.urandom(max(0, size - 12)))[:size]
    middle = max(0, size // 2 - 16)
    body[middle:middle + len(needle)] = needle
    return bytes(body), needle


def form(data: bytes, filename: str = "file.bin",
         content_type: str = "application/octet-stream", name: str = "file") -> aiohttp.FormData:
    """A multipart/form-data body with one part `name` (aiohttp's client)."""
    body = aiohttp.FormData()
    body.add_field(name, data, filename=filename, content_type=content_type)
    return body


def multipart(data: bytes, disposition: str = 'form-data; name="file"; filename="file.bin"',
              content_type: str = "application/octet-stream") -> bytes:
    """The bytes of a multipart/form-data body (boundary BOUNDARY) with one part whose
    Content-Disposition header is exactly `disposition` (a raw client: hostile names)."""
    head = (f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def multipart_head(disposition: str = 'form-data; name="file"; filename="file.bin"') -> bytes:
    """What precedes the file's bytes in `multipart` (for clients that send it in pieces)."""
    return (f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()


MULTIPART_TYPE: Final = f"multipart/form-data; boundary={BOUNDARY}"


def gps_jpeg(size: tuple[int, int] = (64, 32)) -> tuple[bytes, Image.Image]:
    """A real JPEG, left half red and right half blue, whose EXIF says orientation 6 (shown
    rotated 90 degrees clockwise) with a GPS position and a camera make, with a JPEG comment and
    XMP; its bytes and the image as it must be shown (orientation applied)."""
    image = Image.new("RGB", size, (255, 0, 0))
    image.paste((0, 0, 255), (size[0] // 2, 0, size[0], size[1]))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    exif[ExifTags.Base.Make] = SECRET_MAKE
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = GPS_LATITUDE
    gps[ExifTags.GPS.GPSLongitudeRef] = "E"
    gps[ExifTags.GPS.GPSLongitude] = (2.0, 21.0, 3.0)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95, exif=exif, comment=SECRET_COMMENT, xmp=SECRET_XMP)
    return out.getvalue(), image.transpose(Image.Transpose.ROTATE_270)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A few dozen bytes: a PNG whose header claims `width` x `height` RGB pixels, followed by
    image data for almost none of them (decoding it would fail: only its header can be read)."""
    return (b"\x89PNG\r\n\x1a\n"
            + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _png_chunk(b"IEND", b""))


def png(size: tuple[int, int], colour: tuple[int, ...] = (0, 128, 0), mode: str = "RGB",
        **params: Any) -> bytes:
    """A real PNG of one colour (`params` go to Pillow's save: pnginfo, exif...)."""
    out = io.BytesIO()
    Image.new(mode, size, colour).save(out, "PNG", **params)
    return out.getvalue()


def with_attachments(command: str, msg_from: str, msg_to: str, ids: list[str],
                     message: str = "") -> dict[str, Any]:
    """A send-socket frame (SPEC 5) carrying `attachments` (SPEC 8)."""
    return {**frame(command, msg_from, msg_to, message), "attachments": ids}
