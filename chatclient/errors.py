"""The errors the client raises: one hierarchy under `ChatError`, so that a bot can catch them all.

    ChatError
      AuthError            401: the token is missing, wrong or revoked (or the device was ended)
      RefusedError         any other 4xx that retrying would not change; `.status`, `.reason`
        RateLimitedError   429, still refused after the last retry
      ServerError          5xx, still after the last retry
      NetworkError         no connection / no answer, still after the last retry
      TooManySocketsError  the receive socket was closed with 4429 (SPEC 10: the oldest socket of
                           a user past `limits.sockets_per_user`; the client does not reconnect)
      ProtocolError        the server answered something this client cannot read
"""

from __future__ import annotations


class ChatError(Exception):
    """Every error of this library. `status` is the HTTP status when there was one, else None;
    `reason` the server's words (its `{"error": ...}`) or ours."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(f"{status}: {reason}" if status is not None else reason)
        self.reason = reason
        self.status = status


class AuthError(ChatError):
    """401: the token was refused (missing, wrong, revoked, its user disabled or deleted).
    Never retried: a new token is needed."""


class RefusedError(ChatError):
    """A 4xx other than 401: bad input (400), not allowed (403, e.g. blocked by the recipient or
    not a member of the group), unknown phone or group (404), too large (413). Never retried: the
    same request would be refused again. `reason` is the server's `error` text."""


class RateLimitedError(RefusedError):
    """429 (`limits.messages_per_second` per user, handshakes per address), still after every retry.
    `retry_after`: the server's Retry-After in seconds, 0 when it gave none."""

    def __init__(self, reason: str, status: int | None = 429, retry_after: float = 0.0) -> None:
        super().__init__(reason, status)
        self.retry_after = retry_after


class ServerError(ChatError):
    """A 5xx answer, still after every retry."""


class NetworkError(ChatError):
    """The server could not be reached or did not answer in time, still after every retry."""


class TooManySocketsError(ChatError):
    """The receive socket was closed with code 4429: the user opened more than
    `limits.sockets_per_user` receive sockets and this, the oldest, was dropped (SPEC 10).
    Not reconnected automatically, since that would drop another of the user's sockets."""


class ProtocolError(ChatError):
    """An answer that is not what SPEC 5 / 12 describe (not JSON, a missing field)."""
