"""Device labels from User-Agents (SPEC 7, chatserver/useragent.py): the specific browser before
the tokens every Chromium-based browser also sends; a label only ever made of fixed names."""

from __future__ import annotations

import pytest

from chatserver.useragent import MAX_LABEL_CHARS, device_label

CHROME_WIN = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/131.0.0.0 Safari/537.36")


@pytest.mark.parametrize(("user_agent", "label"), [
    (CHROME_WIN, "Chrome on Windows"),
    (CHROME_WIN + " Edg/131.0.0.0", "Edge on Windows"),
    (CHROME_WIN + " OPR/115.0.0.0", "Opera on Windows"),
    ("Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
     "SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36", "Samsung Internet on Android"),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "Version/17.5 Safari/605.1.15", "Safari on macOS"),
    ("Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "CriOS/131.0 Mobile/15E148 Safari/604.1", "Chrome on iPad"),
    ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "HeadlessChrome/131.0.0.0 Safari/537.36", "Chromium on Linux"),
    ("Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/131.0.0.0 Safari/537.36", "Chrome on ChromeOS"),
    ("Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
     "Firefox on Linux"),
    ("curl/8.5.0", "curl"),
    ("Python/3.11 aiohttp/3.14.5", "aiohttp"),
    ("SomeBot (Linux)", "Browser on Linux"),
    ("", "Unknown device"),
    (None, "Unknown device"),
    ("<script>alert(1)</script>" * 100, "Unknown device"),
])
def test_labels(user_agent: str | None, label: str) -> None:
    assert device_label(user_agent) == label


def test_a_label_is_short_and_never_the_headers_text() -> None:
    hostile = "Firefox/1 \u202e\x00<b>" + "A" * 100_000 + " Android"
    label = device_label(hostile)
    assert label == "Firefox" and len(label) <= MAX_LABEL_CHARS  # " Android" is past what is read
