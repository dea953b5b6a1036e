"""A device's label from the User-Agent of its login (SPEC 7: "Chromium on Linux"), for display
only.

A few substring rules rather than a parsing library (none is a dependency, and a label needs
two words): the first browser token and the first system token found, in the orders below, which
put the tokens that other browsers also send (every Chromium-based browser says "Chrome/" and
"Safari/", iPhones say "like Mac OS X") after the specific ones. The label is made only of the
fixed names in these tables, never of the header's text: whatever a client sends, a label is one
of a bounded set of short strings (at most MAX_LABEL_CHARS), safe to show and to store.
"""

from __future__ import annotations

from typing import Final

from .stores.base import UNKNOWN_DEVICE

# Only the start of a header is read: real User-Agents are a few hundred characters.
MAX_READ_CHARS: Final = 512
MAX_LABEL_CHARS: Final = 64
# (token in the User-Agent, browser), first match wins.
BROWSERS: Final = (
    ("Edg/", "Edge"), ("EdgA/", "Edge"), ("EdgiOS/", "Edge"),
    ("OPR/", "Opera"), ("Opera", "Opera"),
    ("SamsungBrowser/", "Samsung Internet"),
    ("Firefox/", "Firefox"), ("FxiOS/", "Firefox"),
    ("CriOS/", "Chrome"),
    ("Chromium/", "Chromium"), ("HeadlessChrome/", "Chromium"), ("Chrome/", "Chrome"),
    ("Safari/", "Safari"),
    ("curl/", "curl"), ("aiohttp/", "aiohttp"), ("python-requests/", "Python requests"),
)
# (token, system), first match wins.
SYSTEMS: Final = (
    ("iPhone", "iPhone"), ("iPad", "iPad"),
    ("Android", "Android"),
    ("CrOS", "ChromeOS"),
    ("Windows", "Windows"),
    ("Macintosh", "macOS"), ("Mac OS X", "macOS"),
    ("Linux", "Linux"),
)


def device_label(user_agent: str | None) -> str:
    """"<browser> on <system>", "<browser>", "Browser on <system>" or UNKNOWN_DEVICE, from the
    first MAX_READ_CHARS characters of `user_agent` (None: no header)."""
    head = (user_agent or "")[:MAX_READ_CHARS]
    browser = next((name for token, name in BROWSERS if token in head), None)
    system = next((name for token, name in SYSTEMS if token in head), None)
    if browser and system:
        label = f"{browser} on {system}"
    elif browser or system:
        label = browser or f"Browser on {system}"
    else:
        label = UNKNOWN_DEVICE
    return label[:MAX_LABEL_CHARS]
