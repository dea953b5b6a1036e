"""An own message the server deleted undelivered (SPEC 10, `retention.undelivered_days`, the
`msg_expired` push to the sender's devices) in the client.

The first two tests put the push on the sender's receive socket themselves (the server relays
everything else), so they run on any server of this release; the last one needs the server's
expiry (issue 12). Every wait is Playwright's auto-waiting with a timeout; nothing sleeps.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import expect

from helpers.server import ServerProcess, write_config

from .conftest import User, UserFactory
from .test_client import A, B, C, mine, open_dialogue, send, theirs

STAMP = "2026-01-01 00:00:00"


async def relay_receive_socket(user: User) -> list[object]:
    """Route `user`'s receive socket through the test: the list gets it once the page opens it."""
    sockets: list[object] = []

    async def relay(ws: object) -> None:
        ws.connect_to_server()
        sockets.append(ws)
    await user.context.route_web_socket(re.compile(f"/ws/chat/special/{user.phone}/$"), relay)
    return sockets


async def sent_timestamp(bubble: object) -> str:
    """The sent_timestamp of an own message on screen, as the client sent it."""
    us = int(await bubble.get_attribute("data-us"))
    return await bubble.page.evaluate("async (us) => (await import('/static/time.js')).formatTs(us)", us)


async def test_an_expired_message_says_not_delivered_and_retry_sends_it(people: UserFactory,
                                                                       live: ServerProcess) -> None:
    alice = await people(A, "Alice")
    bob = await people(B, "Bob")
    sockets = await relay_receive_socket(alice)
    pa = await alice.page()
    await expect(pa.locator("#offline")).to_be_hidden()
    await open_dialogue(pa, B)
    await send(pa, "are you there")
    bubble = mine(pa, "are you there")
    await expect(bubble).to_have_attribute("data-state", "sent")
    ts = await sent_timestamp(bubble)

    # Someone else's expiry, or a malformed one, changes nothing.
    sockets[0].send(json.dumps({"command": "msg_expired", "message": ts, "msg_from": B, "msg_to": A,
                                "sent_timestamp": STAMP}))
    sockets[0].send(json.dumps({"command": "msg_expired", "message": "yesterday", "msg_from": A,
                                "msg_to": B, "sent_timestamp": STAMP}))
    sockets[0].send(json.dumps({"command": "msg_expired", "message": ts, "msg_from": A, "msg_to": B,
                                "sent_timestamp": STAMP}))
    await expect(bubble).to_have_attribute("data-state", "failed")
    await expect(bubble.locator(".failed-note")).to_contain_text(
        "Not delivered: it waited too long on the server")
    # Kept that way on the device.
    await pa.reload()
    await pa.locator("body.ready").wait_for()
    await expect(bubble).to_have_attribute("data-state", "failed")

    # Retry: the server (which still has it here) answers msg_sent; Bob gets it once.
    await bubble.get_by_role("button", name="Retry").click()
    await expect(bubble).to_have_attribute("data-state", "sent")
    await expect(bubble.locator(".failed-note")).to_have_count(0)
    pb = await bob.page(f"/chat/personal/{B}/{A}/")
    await expect(theirs(pb, "are you there")).to_have_count(1)
    await expect(bubble).to_have_attribute("data-state", "read")


async def test_an_expired_group_message_says_not_everyone_got_it(people: UserFactory,
                                                                live: ServerProcess) -> None:
    alice = await people(A, "Alice")
    await people(B, "Bob")
    await people(C, "Carol")
    sockets = await relay_receive_socket(alice)
    resp = await alice.context.request.post(live.url("/chat/special/group"),
                                            data=json.dumps({"name": "Trip", "participants": [B, C]}),
                                            headers={"Content-Type": "application/json"})
    assert resp.status in (200, 201), await resp.text()
    key = (await resp.json())["key"]
    pa = await alice.page(f"/chat/group/{A}/{key}/")
    await expect(pa.locator("#offline")).to_be_hidden()
    await send(pa, "train at nine")
    bubble = mine(pa, "train at nine")
    await expect(bubble).to_have_attribute("data-state", "sent")
    ts = await sent_timestamp(bubble)
    assert len(sockets) == 1
    sockets[0].send(json.dumps({"command": "msg_expired", "message": ts, "msg_from": A, "msg_to": key,
                                "sent_timestamp": STAMP}))
    await expect(bubble.locator(".failed-note")).to_have_text(
        "Not delivered to everyone: it waited too long on the server.")
    await expect(bubble).to_have_attribute("data-state", "sent")  # some may have it: no retry
    await expect(bubble.get_by_role("button", name="Retry")).to_have_count(0)


# -- against the server's expiry --------------------------------------------------------------


class TestAgainstTheServersExpiry:
    """Needs the server's expiry (SPEC 10, issue 12): its own server, messages expire in ~1.7 s."""

    @pytest.fixture
    async def live(self, tmp_path: Path) -> AsyncIterator[ServerProcess]:
        config = write_config(tmp_path / "config.toml", {
            "security": {"bcrypt_rounds": 4}, "limits": {"messages_per_second": 500.0},
            "retention": {"undelivered_days": 0.00002, "check_seconds": 0.5}})
        server = ServerProcess(tmp_path / "chat.db", config, tmp_path).start()
        try:
            await server.wait_serving()
            yield server
        finally:
            server.kill()
        assert "Traceback" not in server.output(), server.output()

    async def test_the_server_expires_an_undelivered_message(self, people: UserFactory) -> None:
        """Bob never opens the chat: Alice's message expires, and her page says so."""
        alice = await people(A, "Alice")
        await people(B, "Bob")
        pa = await alice.page()
        await open_dialogue(pa, B)
        await send(pa, "nobody reads this")
        bubble = mine(pa, "nobody reads this")
        await expect(bubble).to_have_attribute("data-state", "failed")
        await expect(bubble.locator(".failed-note")).to_contain_text("Not delivered")
