"""Rate limits, in memory, on the `limits` library's fixed windows.

- messages per user (SPEC 5.5 `limits.messages_per_second`): `new_msg`, `new_grp_msg` and
  `room_msg` from all of a user's sockets together; over the limit, the error frame.
- typing events per user (`limits.typing_per_second`), on top of SPEC 5.1's one per second per
  socket; over the limit, dropped silently.
- WebSocket handshakes per client address (`limits.handshakes_per_minute`): 429.
- failed logins per client address (`limits.login_failures` per `limits.login_window_seconds`):
  once reached, every login from that address answers 429 until the window has passed.

A rate of R per second is enforced as round(2R) per two-second window, which lets a burst of twice
the rate through, as a client reconnecting with a backlog needs.
"""

from __future__ import annotations

from limits import RateLimitItemPerMinute, RateLimitItemPerSecond, storage, strategies

from .config import Limits


def _per_second(rate: float) -> RateLimitItemPerSecond:
    return RateLimitItemPerSecond(max(1, round(2 * rate)), 2)


class Throttle:
    """The server's rate limits; `allow_*` methods count one event and say whether it may pass."""

    def __init__(self, limits: Limits) -> None:
        # Fixed windows: O(1) per event (a moving window keeps every event of the window).
        self._limiter = strategies.FixedWindowRateLimiter(storage.MemoryStorage())
        self._message = _per_second(limits.messages_per_second)
        self._typing = _per_second(limits.typing_per_second)
        self._handshake = RateLimitItemPerMinute(limits.handshakes_per_minute)
        self._login = RateLimitItemPerSecond(limits.login_failures, limits.login_window_seconds)

    def allow_message(self, phone: str) -> bool:
        """Count a message from `phone`; False when over `limits.messages_per_second`."""
        return self._limiter.hit(self._message, "message", phone)

    def allow_typing(self, phone: str) -> bool:
        """Count a typing event from `phone`; False when over `limits.typing_per_second`."""
        return self._limiter.hit(self._typing, "typing", phone)

    def allow_handshake(self, address: str) -> bool:
        """Count a WebSocket handshake from `address`; False when over the per-minute limit."""
        return self._limiter.hit(self._handshake, "handshake", address)

    def login_blocked(self, address: str) -> bool:
        """True while `address` has used up its failed logins for the window."""
        return not self._limiter.test(self._login, "login", address)

    def login_failed(self, address: str) -> None:
        """Count a failed login from `address`."""
        self._limiter.hit(self._login, "login", address)
