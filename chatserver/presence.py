"""Presence announcements (SPEC 5.2 presence frames): telling a user's watchers that the user came
online or went offline, and recording when the user was last seen. Who is online is the hub's
business (`Hub.is_online`); this module says so to the others."""

from __future__ import annotations

import contextlib

from .hubs.local import Hub
from .protocol import now_micros, per_recipient, server_now
from .stores.base import Store, StoreClosed


async def announce(store: Store, hub: Hub, phone: str, state: str) -> None:
    """Push `phone`'s presence, `state` "online" or "offline", to those of its watchers who are
    online (a presence frame each)."""
    addressed = per_recipient({"command": "presence", "msg_from": phone, "message": state,
                               "sent_timestamp": server_now()})
    for watcher in await store.watchers_of(phone):
        hub.push(watcher, addressed(watcher))  # nothing happens for one who is offline


async def went_offline(store: Store, hub: Hub, phone: str) -> None:
    """The last receive socket of `phone` in this process closed: record when it was last seen
    and, unless it is online again or elsewhere, tell its watchers it is offline."""
    with contextlib.suppress(StoreClosed):  # shutting down: last seen is not recorded
        await store.set_last_seen(phone, now_micros())
        if not await hub.is_online(phone):  # not back in the meantime, nor elsewhere
            await announce(store, hub, phone, "offline")


async def set_hidden(store: Store, hub: Hub, phone: str, hidden: bool) -> None:
    """Hide (or show again) `phone`'s presence and last seen (users.hide_presence, issue 12
    finding 6), and tell its watchers at once when it is online: hiding looks like going offline
    to those who saw it online, showing again like coming online. For the account settings."""
    if hidden:
        watchers = await store.watchers_of(phone)  # before: afterwards it has none
        await store.set_hide_presence(phone, True)
        if await hub.is_online(phone):
            addressed = per_recipient({"command": "presence", "msg_from": phone, "message": "offline",
                                       "sent_timestamp": server_now()})
            for watcher in watchers:
                hub.push(watcher, addressed(watcher))
    else:
        await store.set_hide_presence(phone, False)
        if await hub.is_online(phone):
            await announce(store, hub, phone, "online")
