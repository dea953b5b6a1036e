"""Prometheus metrics (SPEC 11): the metric objects, the collectors read at scrape time, and
`GET /metrics`.

This module holds the metric objects and imports nothing of the package but protocol (the
refusal reasons), so that every layer may count; chatserver/exporter.py answers the scrapes.

The metric objects live at module level, prometheus-client's own model: the code that counts
(ws.py, commands.py, connection.py, pages.py, the hub's outbox, the group commit) increments a
child bound to its labels once, here, at import (`SOCKETS_RECEIVE.inc()`), so that the message
path costs one lock and one addition per count, no label lookup. No label ever takes a per-user
value (a phone, a group key, a room name): every label set below is fixed.

With `serve --workers N` the supervisor points PROMETHEUS_MULTIPROC_DIR at a private folder
before it starts the workers (chatserver/supervisor.py): prometheus-client then keeps every
value in a per-process file there, and whichever worker answers a scrape adds up the files of
all of them (`MultiProcessCollector`); gauges of open sockets are summed over live workers
(`livesum`). Tests build many apps in one process: the counters are the process's, so a test
looks at how much one moved, not at its value.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

from .protocol import REASONS

# Set by the supervisor of `serve --workers N` (chatserver/supervisor.py) before the workers
# start: prometheus-client's multiprocess mode, chosen when it is imported.
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"

# No `_created` series (a timestamp per counter and per label set): half the scrape, and nothing
# an alert needs (rate() copes with restarts).
disable_created_metrics()

# -- sockets (ws.py, hubs/outbox.py) ------------------------------------------------------------

OPEN_SOCKETS: Final = Gauge("chat_open_sockets", "WebSockets open now, by kind (SPEC 5).",
                            ["kind"], multiprocess_mode="livesum")
SOCKETS_RECEIVE: Final = OPEN_SOCKETS.labels("receive")
SOCKETS_PERSONAL: Final = OPEN_SOCKETS.labels("personal")
SOCKETS_GROUP: Final = OPEN_SOCKETS.labels("group")
SOCKETS_ROOM: Final = OPEN_SOCKETS.labels("room")
CUT_OFF: Final = Counter("chat_sockets_cut_off",
                         "Sockets closed with 1013 because their peer fell limits.outgoing_queue "
                         "frames behind.")

# -- frames (commands.py, connection.py) --------------------------------------------------------

ACCEPTED: Final = Counter("chat_messages_accepted",
                          "Messages committed and answered (msg_sent, or a room's broadcast), by "
                          "kind; a retry of a stored message counts again.", ["kind"])
ACCEPTED_PERSONAL: Final = ACCEPTED.labels("personal")
ACCEPTED_GROUP: Final = ACCEPTED.labels("group")
ACCEPTED_ROOM: Final = ACCEPTED.labels("room")
ACKS: Final = Counter("chat_acknowledgements",
                      "Acknowledgements committed (msg_received, grp_msg_received), by kind.",
                      ["kind"])
ACKS_PERSONAL: Final = ACKS.labels("personal")
ACKS_GROUP: Final = ACKS.labels("group")
RATE_LIMITED: Final = Counter("chat_rate_limited_frames",
                              "Frames refused or dropped for a rate limit: messages and "
                              "acknowledgements (error frame), typing (dropped silently).",
                              ["kind"])
RATE_LIMITED_MESSAGE: Final = RATE_LIMITED.labels("message")
RATE_LIMITED_ACK: Final = RATE_LIMITED.labels("ack")
RATE_LIMITED_TYPING: Final = RATE_LIMITED.labels("typing")
ERROR_FRAMES: Final = Counter("chat_error_frames",
                              "Error frames sent (SPEC 5.5), by reason (protocol.REASONS).",
                              ["reason"])

# -- accounts (pages.py) ------------------------------------------------------------------------

LOGINS: Final = Counter("chat_logins", "Successful logins.")
LOGIN_FAILURES: Final = Counter("chat_login_failures",
                                "Refused logins, by reason: a wrong phone or password, too many "
                                "attempts (429), a disabled account.", ["reason"])
LOGIN_FAILED_CREDENTIALS: Final = LOGIN_FAILURES.labels("credentials")
LOGIN_FAILED_THROTTLED: Final = LOGIN_FAILURES.labels("throttled")
LOGIN_FAILED_DISABLED: Final = LOGIN_FAILURES.labels("disabled")
REGISTRATIONS: Final = Counter("chat_registrations", "Accounts created through /register.")

# -- the group commit (stores/groupcommit.py) ----------------------------------------------------

COMMIT_BATCH: Final = Histogram("chat_group_commit_batch_size",
                                "Writes committed in one transaction by the group commit.",
                                buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000))
COMMIT_SECONDS: Final = Histogram("chat_group_commit_seconds",
                                  "Seconds one group-commit batch took, BEGIN to COMMIT.",
                                  buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                           0.25, 0.5, 1.0, 2.5))

# -- Web Push (SPEC 9; counted by chatserver/push.py) --------------------------------------------

PUSHES: Final = Counter("chat_pushes",
                        "Web Pushes by result: sent (2xx), gone (404/410: subscription deleted), "
                        "failed (given up after retries), dropped (not sent: rate or queue).",
                        ["result"])
PUSHES_SENT: Final = PUSHES.labels("sent")
PUSHES_GONE: Final = PUSHES.labels("gone")
PUSHES_FAILED: Final = PUSHES.labels("failed")
PUSHES_DROPPED: Final = PUSHES.labels("dropped")
PUSH_SECONDS: Final = Histogram("chat_push_seconds",
                                "Seconds from a message's commit to its Web Push being accepted "
                                "by the push service.",
                                buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0))


_ERRORS: Final = {reason: ERROR_FRAMES.labels(reason) for reason in (*REASONS, "other")}


def count_error(reason: str) -> None:
    """Count one error frame; `reason` is one of protocol.REASONS (anything else counts as
    'other', so that the label set stays bounded whatever a caller passes)."""
    (_ERRORS.get(reason) or _ERRORS["other"]).inc()


def _nothing(amount: float = 1) -> None:
    """What a counter does once `disable()` has run."""


def disable() -> None:
    """Count nothing in this process from now on (`metrics.enabled = false`, applied by `run.py
    serve` before the app is built): every child bound above, and every child of the error
    counter, does nothing when incremented or observed, so that the message path costs what it
    would without metrics (the benchmark's `--metrics both` compares the two)."""
    # The bound children: a metric without labels, or a child bound to its label values.
    children = [value for value in globals().values()
                if isinstance(value, Counter | Gauge | Histogram)
                and (value._labelvalues or not value._labelnames)]  # noqa: SLF001 - no public test
    for child in (*children, *_ERRORS.values()):
        for method in ("inc", "dec", "observe"):
            if hasattr(child, method):
                setattr(child, method, _nothing)
