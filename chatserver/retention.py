"""Expiry of undelivered messages (SPEC 10, `[retention]`): a personal or group message still
stored `undelivered_days` after the server accepted it is deleted, and every receive socket of its
sender is told with `msg_expired` (pushed, not stored) unless every recipient had it on a device.
Sessions unused for `security.session_seconds` are dropped at each check too (SPEC 7). Runs in
every serving process, at start and every `check_seconds`; the store makes each message expire in
exactly one of them (`Store.expire`), and that process pushes through the hub, which reaches the
sender's sockets on every process.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from .config import Retention
from .hubs.local import Hub
from .protocol import encode, now_micros, server_now
from .stores.base import Expired, Store

log = logging.getLogger(__name__)

# Messages of each kind deleted per transaction: a long-offline server's first check deletes a
# large backlog in many short transactions instead of one that holds the writer for long.
EXPIRE_BATCH: Final = 500
DAY_US: Final = 86_400_000_000


def msg_expired(expired: Expired) -> dict[str, str]:
    """The push a sender gets for a message of theirs that expired (SPEC 10): `message` is the
    message's `sent_timestamp` as the sender sent it, `msg_to` the recipient or the group key."""
    return {"command": "msg_expired", "message": expired.sent_timestamp,
            "msg_from": expired.msg_from, "msg_to": expired.msg_to, "sent_timestamp": server_now()}


async def expire_once(store: Store, hub: Hub, undelivered_days: float) -> int:
    """Delete every message accepted more than `undelivered_days` ago and push `msg_expired` to
    each sender; returns how many expired here. Raises StoreError when the store fails (what was
    committed before that has been pushed)."""
    before_us = now_micros() - round(undelivered_days * DAY_US)
    total = 0
    while True:
        expired = await store.expire(before_us, EXPIRE_BATCH)
        for e in expired:
            if not e.delivered:  # SPEC 7.1: only a copy or another device still waited
                hub.push(e.msg_from, encode(msg_expired(e)))
        total += len(expired)
        groups = sum(e.group for e in expired)
        if groups < EXPIRE_BATCH and len(expired) - groups < EXPIRE_BATCH:
            return total


async def expire_forever(store: Store, hub: Hub, retention: Retention,
                         session_seconds: float) -> None:
    """`expire_once` now and every `retention.check_seconds`, with the sessions unused for
    `session_seconds` dropped first (SPEC 7: an expired device stops waiting for messages),
    until cancelled; a failed check (StoreError, or anything else) is logged and the next one
    runs as planned."""
    while True:
        try:
            dropped = await store.drop_expired_sessions(session_seconds)
            if dropped:
                log.info("%d expired session(s) dropped", dropped)
            n = await expire_once(store, hub, retention.undelivered_days)
        except Exception:  # StoreError, or a bug: the next check must still run
            log.exception("the expiry of undelivered messages failed; next try in %g s",
                          retention.check_seconds)
        else:
            if n:
                log.info("%d undelivered message(s) expired", n)
        await asyncio.sleep(retention.check_seconds)  # the period of the check, not a wait for an event
