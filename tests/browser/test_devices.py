"""One person on several devices in the client (SPEC 7, issue 13): reads made on another device of
mine clear my unread counts here (and are not the peer's read marks), a device added later says
where the earlier history is, logging out asks whether this browser keeps the history (and
"remove" deletes its IndexedDB database), and the "Devices" section of the profile.

The own-device read marks and copies are put on the receive socket by the test (the server relays
everything else), so those tests run on a server without issue 13; so do the new-device notice and
the logout choice. The devices section's rendering is checked against answers the test gives
(`route`). `TestAgainstTheServersDevices` needs the server of issue 13: GET/DELETE /chat/devices,
and read marks pushed to the reader's own sockets (two browser contexts of one person).
Every wait is Playwright's auto-waiting with a timeout; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta

from playwright.async_api import Page, expect

from helpers.accounts import PASSWORD
from helpers.server import ServerProcess

from .conftest import User, UserFactory, screenshot
from .test_client import A, B, C, mine, open_dialogue, row, send, theirs
from .test_expiry import relay_receive_socket, sent_timestamp

EARLIER = "Messages from before this device was added are on your other devices"
STAMP = "2026-01-01 00:00:00"
HOSTILE = '<img src=x onerror="window.pwned = 1">Firefox & "co"'


def read_frame(msg_from: str, msg_to: str, message: str) -> str:
    """A read mark as the server pushes it (SPEC 5.1 / 5.3; 7.2: also to the reader's devices)."""
    return json.dumps({"command": "msg_read", "msg_from": msg_from, "msg_to": msg_to,
                       "message": message, "sent_timestamp": STAMP})


async def second_device(people: UserFactory, live: ServerProcess, phone: str, **options: object) -> User:
    """Another browser profile of `phone`, logged in (a second device, SPEC 7)."""
    device = await people(phone, "device", register=False, **options)
    resp = await device.context.request.post(live.url("/login"), form={"phone": phone, "password": PASSWORD},
                                             max_redirects=0)
    assert resp.status == 302, await resp.text()
    return device


async def databases(page: Page) -> list[str]:
    return await page.evaluate("async () => (await indexedDB.databases()).map((d) => d.name)")


async def info_status(user: User, live: ServerProcess) -> int:
    return (await user.context.request.get(live.url("/chat/info"))).status


# -- reads on another device of mine -------------------------------------------------------------


async def test_a_read_on_another_device_clears_the_unread_count_not_the_ticks(
        people: UserFactory, live: ServerProcess) -> None:
    alice = await people(A, "Alice")
    bob = await people(B, "Bob")
    await people(C, "Carol")
    sockets = await relay_receive_socket(alice)
    pa = await alice.page()
    await expect(pa.locator("#offline")).to_be_hidden()
    # Alice writes to Carol (who never opens the chat): her bubble stays "sent".
    await open_dialogue(pa, C)
    await send(pa, "hi carol")
    to_carol = mine(pa, "hi carol")
    await expect(to_carol).to_have_attribute("data-state", "sent")
    carol_ts = await sent_timestamp(to_carol)

    pb = await bob.page()
    await open_dialogue(pb, A)
    for text in ("one", "two", "three"):
        await send(pb, text)
        await expect(mine(pb, text)).to_have_attribute("data-state", "received")
    two, three = [await sent_timestamp(mine(pb, t)) for t in ("two", "three")]
    badge = row(pa, "Bob").locator(".badge")
    await expect(badge).to_have_text("3")

    # Alice read up to "two" on her phone: one left unread here.
    assert len(sockets) == 1
    sockets[0].send(read_frame(A, B, two))
    await expect(badge).to_have_text("1")
    await expect(row(pa, "Bob")).to_have_attribute("aria-label", "Bob, 1 unread")
    sockets[0].send(read_frame(A, B, three))
    await expect(badge).to_have_count(0)
    # Her own read of Carol's dialogue is not Carol reading hers: no tick moves, and no
    # dialogue with herself appears.
    sockets[0].send(read_frame(A, C, carol_ts))
    sockets[0].send(read_frame(A, "../x", three))  # malformed: ignored
    await expect(row(pa, "(you)")).to_have_count(0)
    await expect(to_carol).to_have_attribute("data-state", "sent")
    await pa.reload()
    await pa.locator("body.ready").wait_for()
    await expect(row(pa, "Bob")).to_be_visible()
    await expect(row(pa, "Bob").locator(".badge")).to_have_count(0)
    await expect(mine(pa, "hi carol")).to_have_attribute("data-state", "sent")
    await expect(row(pa, "(you)")).to_have_count(0)

    # A newer message counts again; one the other device read before this one got it does not.
    await send(pb, "four")
    await expect(row(pa, "Bob").locator(".badge")).to_have_text("1")
    ahead = (datetime.now(UTC) + timedelta(minutes=5)).strftime("%Y-%m-%d %H:%M:%S.%f")
    sockets = sockets[-1:]  # the socket of the reloaded page
    sockets[0].send(read_frame(A, B, ahead))
    await expect(row(pa, "Bob").locator(".badge")).to_have_count(0)
    await send(pb, "five")
    await expect(row(pa, "Bob").locator(".conv-last")).to_have_text("five")
    await expect(row(pa, "Bob").locator(".badge")).to_have_count(0)


async def test_a_group_read_on_another_device_clears_the_unread_count(
        people: UserFactory, live: ServerProcess) -> None:
    alice = await people(A, "Alice")
    bob = await people(B, "Bob")
    await people(C, "Carol")
    sockets = await relay_receive_socket(alice)
    resp = await alice.context.request.post(live.url("/chat/special/group"),
                                            data=json.dumps({"name": "Trip", "participants": [B, C]}),
                                            headers={"Content-Type": "application/json"})
    assert resp.status in (200, 201), await resp.text()
    key = (await resp.json())["key"]
    pa = await alice.page(f"/chat/group/{A}/{key}/")
    await send(pa, "train at nine")
    own = mine(pa, "train at nine")
    await expect(own.locator(".readby")).to_have_text("read by 0 of 2")
    await pa.goto(alice.context.base + "/chat")
    await pa.locator("body.ready").wait_for()
    await expect(pa.locator("#offline")).to_be_hidden()

    pb = await bob.page(f"/chat/group/{B}/{key}/")
    await expect(theirs(pb, "train at nine")).to_be_visible()
    for text in ("g1", "g2"):
        await send(pb, text)
        await expect(mine(pb, text)).to_have_attribute("data-state", re.compile("sent|received"))
    g1, g2 = [await sent_timestamp(mine(pb, t)) for t in ("g1", "g2")]
    badge = row(pa, "Trip").locator(".badge")
    await expect(badge).to_have_text("2")
    # The group form (SPEC 5.3): "msg_from" is "<group>-<reader>", "msg_to" the sender.
    sockets[-1].send(read_frame(f"{key}-{A}", B, g1))
    await expect(badge).to_have_text("1")
    sockets[-1].send(read_frame(f"{key}-{A}", B, g2))
    await expect(badge).to_have_count(0)
    # Not a member's read mark: Alice's own message still counts Bob only.
    await row(pa, "Trip").click()
    await expect(mine(pa, "train at nine").locator(".readby")).to_have_text("read by 1 of 2")


async def test_what_i_sent_from_another_device_appears_as_mine(people: UserFactory,
                                                               live: ServerProcess) -> None:
    """The copies of SPEC 7.2, put on the receive socket by the test: `msg_from` is me."""
    alice = await people(A, "Alice")
    await people(B, "Bob")
    await people(C, "Carol")
    sockets = await relay_receive_socket(alice)
    resp = await alice.context.request.post(live.url("/chat/special/group"),
                                            data=json.dumps({"name": "Trip", "participants": [B, C]}),
                                            headers={"Content-Type": "application/json"})
    assert resp.status in (200, 201), await resp.text()
    key = (await resp.json())["key"]
    pa = await alice.page()
    await expect(pa.locator("#offline")).to_be_hidden()
    now = datetime.now(UTC)
    stamp = lambda s: (now + timedelta(seconds=s)).strftime("%Y-%m-%d %H:%M:%S.%f")  # noqa: E731
    # The acknowledgements expected, each on the conversation's own send socket (SPEC 7.2).
    wanted = {(f"/ws/chat/personal/{A}/{B}/", "msg_received", B, stamp(0)),
              (f"/ws/chat/group/{A}/{key}/", "grp_msg_received", A, stamp(1))}
    acked = asyncio.Event()

    def watch(ws: object) -> None:
        def sent(payload: object) -> None:
            f = json.loads(payload)
            wanted.discard((re.sub("^wss?://[^/]+", "", ws.url), f.get("command"), f.get("msg_to"),
                            f.get("message")))
            if not wanted:
                acked.set()
        ws.on("framesent", sent)
    pa.on("websocket", watch)
    sockets[0].send(json.dumps({"command": "new_msg", "msg_from": A, "msg_to": B,
                                "message": "sent from my phone", "sent_timestamp": stamp(0)}))
    sockets[0].send(json.dumps({"command": "new_msg", "msg_from": f"{key}-{A}", "msg_to": A,
                                "message": "group note from my phone", "sent_timestamp": stamp(1)}))
    bob_row = row(pa, "Bob")
    await expect(bob_row.locator(".conv-last")).to_have_text("You: sent from my phone")
    await expect(bob_row.locator(".badge")).to_have_count(0)
    await expect(row(pa, "Trip").locator(".badge")).to_have_count(0)
    await expect(row(pa, "(you)")).to_have_count(0)
    await bob_row.click()
    await expect(mine(pa, "sent from my phone")).to_have_attribute("data-state", "sent")
    await row(pa, "Trip").click()
    await expect(mine(pa, "group note from my phone")).to_be_visible()
    # Acknowledged on the conversation's own socket (SPEC 7.2), after it was stored.
    await asyncio.wait_for(acked.wait(), timeout=10)


# -- a device added later ------------------------------------------------------------------------


async def test_a_new_device_says_where_the_earlier_history_is(people: UserFactory,
                                                              live: ServerProcess) -> None:
    alice = await people(A, "Alice")
    bob = await people(B, "Bob")
    await people(C, "Carol")
    pa = await alice.page()
    await open_dialogue(pa, B)
    await send(pa, "from the laptop")
    await expect(mine(pa, "from the laptop")).to_have_attribute("data-state", "sent")
    # The laptop has the whole history: it says so, not the notice.
    await expect(pa.locator("#history-top")).to_have_text("Beginning of the history on this device")

    phone = await second_device(people, live, A, viewport={"width": 390, "height": 844},
                                is_mobile=True, has_touch=True)
    pp = await phone.page()
    # The server lists the dialogue; this browser has none of it.
    bob_row = row(pp, "Bob")
    await expect(bob_row.locator(".conv-last")).to_have_text("Earlier messages are on your other devices")
    await bob_row.click()
    top = pp.locator("#history-top")
    await expect(top).to_be_visible()
    await expect(top).to_have_text(EARLIER)
    await expect(pp.locator("#messages .msg")).to_have_count(0)
    await screenshot(pp, "phone-light-new-device")
    # New messages come in below it.
    pb = await bob.page()
    await open_dialogue(pb, A)
    await send(pb, "hello both")
    await expect(theirs(pp, "hello both")).to_be_visible()
    await expect(top).to_have_text(EARLIER)
    # A dialogue started on this device has nothing elsewhere: no notice.
    await pp.click("#back")
    await open_dialogue(pp, C)
    await expect(pp.locator("#history-top")).to_be_hidden()
    await pp.click("#back")
    await expect(row(pp, "Carol").locator(".conv-last")).to_have_text("No messages yet")


# -- logging out ---------------------------------------------------------------------------------


async def test_logout_asks_and_remove_deletes_the_history_of_this_browser(
        people: UserFactory, live: ServerProcess) -> None:
    alice = await people(A, "Alice")
    await people(B, "Bob")
    pa = await alice.page()
    await open_dialogue(pa, B)
    await send(pa, "a secret")
    await expect(mine(pa, "a secret")).to_have_attribute("data-state", "sent")
    assert f"chat-{A}" in await databases(pa)

    # The question; not said to be a shared computer: "keep" is proposed. Cancel changes nothing.
    await pa.get_by_role("button", name="Log out").click()
    dialog = pa.locator("#dlg-logout")
    await expect(dialog).to_be_visible()
    await expect(dialog.locator("legend")).to_have_text(
        "Keep this device's message history in this browser?")
    keep = pa.get_by_role("radio", name="Keep it")
    remove = pa.get_by_role("radio", name="Remove it")
    await expect(keep).to_be_checked()
    await expect(keep).to_be_focused()
    await screenshot(pa, "desktop-light-logout")
    await pa.get_by_role("button", name="Cancel").click()
    await expect(dialog).to_be_hidden()
    assert await info_status(alice, live) == 200

    await pa.get_by_role("button", name="Log out").click()
    await remove.check()
    await dialog.get_by_role("button", name="Log out").click()
    await expect(pa).to_have_url(live.url("/login"))
    assert f"chat-{A}" not in await databases(pa)
    left = await pa.evaluate(f"Object.keys(localStorage).filter((k) => k.endsWith('.{A}'))")
    assert left == []
    assert await info_status(alice, live) == 401


async def test_a_shared_computer_proposes_remove_and_keep_keeps_it(people: UserFactory,
                                                                 live: ServerProcess) -> None:
    await people(A, "Alice")
    await people(B, "Bob")
    alice = await people(A, "Alice", register=False, color_scheme="dark")
    page = await alice.page("/login", ready=False)
    await page.get_by_label("Phone number").fill(A)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_label("This is a shared or public computer").check()
    await page.get_by_role("button", name="Log in").click()
    await page.locator("body.ready").wait_for()
    await open_dialogue(page, B)
    await send(page, "kept here")
    await expect(mine(page, "kept here")).to_have_attribute("data-state", "sent")

    await page.get_by_role("button", name="Log out").click()
    await expect(page.get_by_role("radio", name="Remove it")).to_be_checked()
    await screenshot(page, "desktop-dark-logout-shared")
    await page.get_by_role("radio", name="Keep it").check()
    await page.locator("#dlg-logout").get_by_role("button", name="Log out").click()
    await expect(page).to_have_url(live.url("/login"))
    assert await info_status(alice, live) == 401
    assert f"chat-{A}" in await databases(page)
    # Back in: the history is there.
    await page.get_by_label("Phone number").fill(A)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    await page.locator("body.ready").wait_for()
    await row(page, "Bob").click()
    await expect(mine(page, "kept here")).to_be_visible()


# -- the devices section -------------------------------------------------------------------------


async def test_the_devices_section_shows_what_the_server_says(people: UserFactory) -> None:
    """The section's rendering and its errors, with the server's answers given by the test
    (the shapes of SPEC 7), at phone width in dark mode."""
    alice = await people(A, "Alice", viewport={"width": 390, "height": 844}, is_mobile=True,
                         has_touch=True, color_scheme="dark")
    now = datetime.now(UTC)
    ts = lambda d: (now - d).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]  # noqa: E731
    listed = [
        {"id": "d-here", "label": "Chromium on Linux", "created": ts(timedelta(hours=1)),
         "last_active": ts(timedelta(0)), "current": True},
        {"id": "d-phone", "label": HOSTILE, "created": ts(timedelta(days=2)),
         "last_active": ts(timedelta(days=1)), "current": False},
        {"id": "d-gone", "label": "Old tablet", "created": ts(timedelta(days=9)),
         "last_active": ts(timedelta(days=8)), "current": False},
        {"id": "d-fails", "label": "Script token", "created": ts(timedelta(days=20)),
         "last_active": ts(timedelta(days=20)), "current": False},
    ]
    deleted: list[str] = []

    async def devices(route: object) -> None:
        request = route.request
        if request.method == "GET":
            await route.fulfill(json={"devices": listed})
            return
        device = request.url.split("id=", 1)[1]
        deleted.append(device)
        if device == "d-phone":
            await route.fulfill(json={"id": device, "removed": True})
        elif device == "d-gone":
            await route.fulfill(status=404, json={"error": "no such device"})
        else:
            await route.fulfill(status=500, json={"error": "the database is busy"})
    await alice.context.route(re.compile(r"/chat/devices(\?.*)?$"), devices)

    pa = await alice.page()
    await pa.click("#show-profile")
    items = pa.locator("#device-list > li")
    await expect(items).to_have_count(4)
    await expect(items.nth(0)).to_contain_text("This device")
    await expect(items.nth(0)).to_contain_text("last active just now")
    await expect(items.nth(1).locator(".device-label")).to_have_text(HOSTILE)  # as text
    assert await pa.locator("#device-list img").count() == 0
    await expect(items.filter(has=pa.locator(".this-device"))).to_have_count(1)
    await expect(items.nth(0).get_by_role("button", name="Log out")).to_be_visible()
    await items.nth(3).scroll_into_view_if_needed()
    await screenshot(pa, "phone-dark-devices")
    box = await items.nth(1).bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390

    await pa.get_by_role("button", name=f"Log out this device: {HOSTILE}").click()
    await expect(pa.locator("#devices-status")).to_have_text(f"{HOSTILE} is logged out.")
    await expect(items).to_have_count(3)
    await pa.get_by_role("button", name="Log out this device: Old tablet").click()
    await expect(pa.locator("#devices-status")).to_have_text("Old tablet was already logged out.")
    await expect(items).to_have_count(2)
    await pa.get_by_role("button", name="Log out this device: Script token").click()
    await expect(pa.locator("#devices-error")).to_have_text(
        "Script token could not be logged out: the database is busy")
    await expect(items).to_have_count(2)
    await expect(pa.get_by_role("button", name="Log out this device: Script token")).to_be_focused()
    assert deleted == ["d-phone", "d-gone", "d-fails"]
    assert await pa.evaluate("window.pwned") is None
    # This device's "Log out" is the normal logout, with its question.
    await items.nth(0).get_by_role("button", name="Log out").click()
    await expect(pa.locator("#dlg-logout")).to_be_visible()
    await expect(pa.locator("#dlg-profile")).to_be_hidden()


async def test_the_devices_section_says_when_it_cannot_list(people: UserFactory) -> None:
    alice = await people(A, "Alice")
    await alice.context.route(re.compile(r"/chat/devices$"),
                              lambda route: route.fulfill(status=503, json={"error": "try again later"}))
    pa = await alice.page()
    await pa.click("#show-profile")
    await expect(pa.locator("#devices-error")).to_have_text(
        "Your devices could not be listed: try again later")
    await expect(pa.locator("#device-list > li")).to_have_count(0)


class TestAgainstTheServersDevices:
    """Needs the server's GET/DELETE /chat/devices (SPEC 7, issue 13)."""

    async def test_log_out_another_device_from_the_list(self, people: UserFactory,
                                                        live: ServerProcess) -> None:
        alice = await people(A, "Alice")
        phone = await second_device(people, live, A)
        pa = await alice.page()
        await pa.click("#show-profile")
        items = pa.locator("#device-list > li")
        await expect(items).to_have_count(2)
        current = items.filter(has=pa.locator(".this-device"))
        await expect(current).to_have_count(1)
        await expect(current).to_contain_text("last active just now")
        # Newest first: the phone logged in last.
        await expect(items.nth(0).locator(".this-device")).to_have_count(0)
        other = items.nth(0).get_by_role("button", name=re.compile("^Log out this device: .+"))
        await other.click()
        await expect(pa.locator("#devices-status")).to_have_text(re.compile(" is logged out[.]$"))
        await expect(items).to_have_count(1)
        assert await info_status(phone, live) == 401
        assert await info_status(alice, live) == 200
        # Listed again: the phone is gone for good.
        await pa.locator("#dlg-profile [data-close]").click()
        await pa.click("#show-profile")
        await expect(items).to_have_count(1)
        await expect(items.nth(0).locator(".this-device")).to_have_text("This device")

    async def test_reading_on_one_device_clears_the_unread_count_on_the_other(
            self, people: UserFactory, live: ServerProcess) -> None:
        """Two browser contexts of one person: the read mark the laptop sends reaches the phone
        (SPEC 7.2), whose badge clears; Bob's ticks go to read once, from the laptop."""
        alice = await people(A, "Alice")
        bob = await people(B, "Bob")
        laptop = await alice.page()
        phone = await second_device(people, live, A, viewport={"width": 390, "height": 844},
                                    is_mobile=True, has_touch=True)
        pp = await phone.page()
        await expect(pp.locator("#offline")).to_be_hidden()
        pb = await bob.page()
        await open_dialogue(pb, A)
        for text in ("are you up", "call me"):
            await send(pb, text)
        for page in (laptop, pp):
            await expect(row(page, "Bob").locator(".badge")).to_have_text("2")
        await expect(mine(pb, "call me")).to_have_attribute("data-state", "received")

        await row(laptop, "Bob").click()
        await expect(theirs(laptop, "call me")).to_be_visible()
        await expect(mine(pb, "call me")).to_have_attribute("data-state", "read")
        await expect(row(pp, "Bob").locator(".badge")).to_have_count(0)
        await expect(row(pp, "(you)")).to_have_count(0)
        # Read on the laptop as it arrives (the conversation is on screen there): the phone
        # does not count it either.
        await send(pb, "now?")
        await expect(theirs(laptop, "now?")).to_be_visible()
        await expect(mine(pb, "now?")).to_have_attribute("data-state", "read")
        await expect(row(pp, "Bob").locator(".conv-last")).to_have_text("now?")
        await expect(row(pp, "Bob").locator(".badge")).to_have_count(0)
        # Once the laptop shows the list, a new message counts on both.
        await laptop.goto(alice.context.base + "/chat")
        await laptop.locator("body.ready").wait_for()
        await expect(laptop.locator("#offline")).to_be_hidden()
        await send(pb, "hello?")
        for page in (laptop, pp):
            await expect(row(page, "Bob").locator(".badge")).to_have_text("1")
