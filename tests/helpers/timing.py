"""How long the tests wait, in seconds, and `until` for a condition that no event announces.

Every receive in a test has a timeout; "nothing arrives" is asserted by waiting QUIET.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

# A receive from an in-process server (aiohttp's TestServer).
TIMEOUT = 5.0
# How long "nothing arrives" waits.
QUIET = 0.3
# A server process must answer HTTP this soon after it is started, exit this soon after a signal
# or a kill, and answer any single request or handshake this soon.
START_TIMEOUT = 20.0
EXIT_TIMEOUT = 15.0
NET_TIMEOUT = 10.0
# Polling interval of `until` (a poll, not a synchronisation).
POLL = 0.01


async def until(condition: Callable[[], bool], timeout: float, what: str | Callable[[], str],
                poll: float = POLL) -> None:
    """Poll `condition` until it holds; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for: "
                                 f"{what() if callable(what) else what}")
        await asyncio.sleep(poll)
