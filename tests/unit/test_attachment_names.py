"""The pure parts of chatserver/attachments.py (SPEC 8): the name an upload is stored under, the
Content-Disposition header a download carries (RFC 6266, RFC 8187), and the `Range` header as
the download reads it (RFC 9110 14)."""

from __future__ import annotations

import pytest

from chatserver.attachments import (
    MAX_NAME_CHARS,
    Unsatisfiable,
    byte_range,
    clean_name,
    content_disposition,
)


@pytest.mark.parametrize(("given", "stored"), [
    ("photo.jpg", "photo.jpg"),
    ("../../etc/passwd", "passwd"),
    ("C:\\Users\\me\\Desktop\\report.pdf", "report.pdf"),
    ("dir/sub\\mixed/name.txt", "name.txt"),
    ("folder/", "file"),
    ("", "file"),
    (None, "file"),
    (".", "file"),
    ("..", "file"),
    ("/", "file"),
    ("  spaced name.txt \t", "spaced name.txt"),
    ("nul\x00bell\x07esc\x1b[31mdel\x7fc1\x85.txt", "nulbellesc[31mdelc1.txt"),
    ("line\nbreak\r\n.txt", "linebreak.txt"),
    ("sep\u2028par\u2029.txt", "seppar.txt"),
    ("invoice\u202egpj.exe", "invoicegpj.exe"),  # a right-to-left override disguising .exe
    ("zero\u200bwidth\ufeff.txt", "zerowidth.txt"),
    ("e\u0301te\u0301.txt", "\u00e9t\u00e9.txt"),  # NFC: one code point per accented letter
    ("фото 2024.jpg", "фото 2024.jpg"),
    ("\x00\x01\x02", "file"),
])
def test_clean_name(given: str | None, stored: str) -> None:
    assert clean_name(given) == stored


def test_a_long_name_is_cut_before_its_extension() -> None:
    name = clean_name("x" * 300 + ".tar.gz")
    assert name == "x" * (MAX_NAME_CHARS - 3) + ".gz" and len(name) == MAX_NAME_CHARS


def test_a_long_name_without_a_short_extension_is_cut_at_200() -> None:
    assert clean_name("y" * 300) == "y" * MAX_NAME_CHARS
    assert clean_name("z" * 100 + "." + "w" * 200) == ("z" * 100 + "." + "w" * 200)[:MAX_NAME_CHARS]


def test_200_characters_are_kept_whole() -> None:
    name = "é" * 196 + ".txt"
    assert clean_name(name) == name


@pytest.mark.parametrize(("kind", "name", "header"), [
    ("attachment", "report.pdf", "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf"),
    ("inline", "a b.jpg", "inline; filename=\"a b.jpg\"; filename*=UTF-8''a%20b.jpg"),
    ("attachment", 'say "hi"\\.txt',
     "attachment; filename=\"say _hi__.txt\"; filename*=UTF-8''say%20%22hi%22%5C.txt"),
    ("attachment", "Grüße.txt", "attachment; filename=\"Gr__e.txt\"; filename*=UTF-8''Gr%C3%BC%C3%9Fe.txt"),
    ("attachment", "a;b,c=d'e.txt",
     "attachment; filename=\"a;b,c=d'e.txt\"; filename*=UTF-8''a%3Bb%2Cc%3Dd%27e.txt"),
    ("attachment", "!#$&+^`|~-._.txt", "attachment; filename=\"!#$&+^`|~-._.txt\"; "
     "filename*=UTF-8''!#$&+^`|~-._.txt"),  # RFC 8187 attr-chars stay as they are
])
def test_content_disposition(kind: str, name: str, header: str) -> None:
    assert content_disposition(kind, name) == header


SIZE = 1000


@pytest.mark.parametrize(("header", "span"), [
    (None, None),
    ("bytes=0-0", (0, 0)),
    ("bytes=0-99", (0, 99)),
    ("bytes=100-", (100, 999)),
    ("bytes=990-5000", (990, 999)),
    ("bytes=999-999", (999, 999)),
    ("bytes=-1", (999, 999)),
    ("bytes=-10", (990, 999)),
    ("bytes=-5000", (0, 999)),
    (" bytes=1-2 ", (1, 2)),
    # ignored (the whole file): invalid, several ranges, another unit, absurd numbers
    ("bytes=5-3", None),
    ("bytes=0-1,3-4", None),
    ("items=0-1", None),
    ("bytes=", None),
    ("bytes=-", None),
    ("bytes=a-b", None),
    ("bytes=" + "9" * 20 + "-", None),
    ("bytes=1500-1200", None),
])
def test_byte_range(header: str | None, span: tuple[int, int] | None) -> None:
    assert byte_range(header, SIZE) == span


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=1000-1000", "bytes=5000-6000", "bytes=-0"])
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(Unsatisfiable):
        byte_range(header, SIZE)
