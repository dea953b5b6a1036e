"""One person on two devices against the real server (SPEC 7, issue 13): two browser contexts
logged in as Alice (two logins, two devices: the laptop and the phone) and a third as Bob.

- What Bob sends reaches both devices, each keeps it in its own IndexedDB, and a reload shows it
  from there; what one device was away for waits on the server for it (SPEC 7.1).
- What Alice sends from one device appears on the other as hers (a copy, SPEC 7.2); what she
  reads on one clears the unread count on the other, live (`msg_read` pushed to the reader's own
  sockets) or when it comes back.
- A device added later lists the dialogues, groups, own rooms and contacts from the server, says
  where the earlier history is, and gets none of it (SPEC 7.1: deleted once every device had it;
  7.2: no copies of what was sent before it existed).
- The Devices view lists the logins, and "Log out this device" ends the other one at once.

Every wait is Playwright's auto-waiting with a timeout; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.async_api import Page, WebSocketRoute, expect

from helpers.server import ServerProcess, write_config

from .conftest import WAIT_MS, User, UserFactory, screenshot
from .test_account import json_request
from .test_client import A, B, C, mine, open_dialogue, row, send, theirs
from .test_devices import EARLIER, second_device

PHONE_UA = ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/126.0.0.0 Mobile Safari/537.36")
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True,
         "user_agent": PHONE_UA}
EARLIER_ROW = "Earlier messages are on your other devices"

# The messages of conversation `conv` in this browser's history (IndexedDB `chat-<me>`, db.js),
# read with IndexedDB itself: [[from, body, mine], ...] oldest first.
STORED = """async ([me, conv]) => {
    const idb = await new Promise((resolve, reject) => {
        const req = indexedDB.open(`chat-${me}`);
        req.onsuccess = () => resolve(req.result);
        req.onerror = () => reject(req.error);
    });
    const range = IDBKeyRange.bound([conv, -Infinity], [conv, Infinity]);
    const req = idb.transaction("messages").objectStore("messages").index("conv").getAll(range);
    const list = await new Promise((resolve, reject) => {
        req.onsuccess = () => resolve(req.result);
        req.onerror = () => reject(req.error);
    });
    idb.close();
    return list.map((m) => [m.from, m.body, m.mine ? 1 : 0]);
}"""


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    """As conftest's `live`, with the periodic check of ended sessions (which also closes their
    sockets, `security.session_check_seconds`) too slow to matter: a socket closed here was closed
    at once by the device's removal itself (SPEC 7)."""
    config = write_config(tmp_path / "config.toml", {
        "security": {"bcrypt_rounds": 4, "session_check_seconds": 600.0},
        "limits": {"messages_per_second": 500.0}})
    server = ServerProcess(tmp_path / "chat.db", config, tmp_path).start()
    try:
        await server.wait_serving()
        yield server
    finally:
        server.kill()
    assert "Traceback" not in server.output(), server.output()


async def online(user: User, path: str = "/chat") -> Page:
    """A page of `user`, once its receive socket is open."""
    page = await user.page(path)
    await expect(page.locator("#offline")).to_be_hidden()
    return page


async def stored(page: Page, conv: str) -> list[list[object]]:
    return await page.evaluate(STORED, [A, conv])


def bodies(page: Page):
    return page.locator("#messages .msg .body")


async def reload(page: Page) -> None:
    await page.reload()
    await page.locator("body.ready").wait_for()


@dataclass
class Socket:
    """One WebSocket of a page, relayed to the server by the test."""

    path: str
    code: int | None = None  # the server's close code, once it closed it
    closed: asyncio.Event = field(default_factory=asyncio.Event)


async def watch_sockets(user: User) -> list[Socket]:
    """Relay every WebSocket of `user`'s pages to the server; the list says how each was closed."""
    sockets: list[Socket] = []

    async def relay(ws: WebSocketRoute) -> None:
        socket = Socket(re.sub("^wss?://[^/]+", "", ws.url))
        sockets.append(socket)
        server = ws.connect_to_server()

        async def on_close(code: int | None, reason: str | None) -> None:
            if socket.closed.is_set():
                return  # Playwright reports the close it forwarded once more, without a code
            socket.code = code
            socket.closed.set()
            await ws.close(code=code, reason=reason)
        server.on_close(on_close)
    await user.context.route_web_socket(re.compile("/ws/"), relay)
    return sockets


async def make_group(user: User, live: ServerProcess, name: str, participants: list[str]) -> str:
    status, group = await json_request(user.context, "POST", live.url("/chat/special/group"),
                                       {"name": name, "participants": participants})
    assert status == 201, group
    return group["key"]


# -- every device gets every message ------------------------------------------------------------


async def test_both_devices_get_every_message_what_the_other_sent_and_its_reads(
        people: UserFactory, live: ServerProcess) -> None:
    alice = await people(A, "Alice")
    bob = await people(B, "Bob")
    phone = await second_device(people, live, A, **PHONE)
    laptop = await online(alice)
    pp = await online(phone)
    pb = await online(bob)
    # Made while both devices are there (`group_added`): no "earlier messages" on either.
    key = await make_group(bob, live, "Trip", [A])
    for page in (laptop, pp):
        await expect(row(page, "Trip")).to_be_visible()
        await expect(page.locator("#toast")).to_have_text("Bob added you to Trip")
        await page.evaluate("document.getElementById('toast').hidden = true")

    # Bob writes: both devices get it, each counts it unread.
    await open_dialogue(pb, A)
    await send(pb, "hello both")
    for page in (laptop, pp):
        await expect(row(page, "Bob").locator(".conv-last")).to_have_text("hello both")
        await expect(row(page, "Bob").locator(".badge")).to_have_text("1")
    await expect(mine(pb, "hello both")).to_have_attribute("data-state", "received")

    # Read on the laptop: Bob's tick goes to read, and the phone's count clears.
    await row(laptop, "Bob").click()
    await expect(theirs(laptop, "hello both")).to_be_visible()
    await expect(mine(pb, "hello both")).to_have_attribute("data-state", "read")
    await expect(row(pp, "Bob").locator(".badge")).to_have_count(0)
    await expect(row(pp, "Bob").locator(".conv-last")).to_have_text("hello both")

    # The laptop answers: on the phone it is Alice's own message (a copy), and its ticks follow
    # Bob's receipts there too.
    await send(laptop, "reply from the laptop")
    await expect(theirs(pb, "reply from the laptop")).to_be_visible()
    await expect(row(pp, "Bob").locator(".conv-last")).to_have_text("You: reply from the laptop")
    await expect(row(pp, "Bob").locator(".badge")).to_have_count(0)
    await expect(row(pp, "(you)")).to_have_count(0)
    await row(pp, "Bob").click()
    await expect(mine(pp, "reply from the laptop")).to_have_attribute("data-state", "read")
    await expect(theirs(pp, "reply from the laptop")).to_have_count(0)
    await expect(bodies(pp)).to_have_text(["hello both", "reply from the laptop"])
    await screenshot(pp, "phone-light-copy-from-the-laptop")

    # The phone is closed (no socket at all) while Bob writes and the laptop reads and answers,
    # in the dialogue and in the group: it all waits on the server for the phone.
    await pp.close()
    await send(pb, "while you were away")
    await expect(theirs(laptop, "while you were away")).to_be_visible()
    await expect(mine(pb, "while you were away")).to_have_attribute("data-state", "read")
    await send(laptop, "the laptop again")
    await expect(theirs(pb, "the laptop again")).to_be_visible()
    await pb.goto(live.url(f"/chat/group/{B}/{key}/"))
    await pb.locator("body.ready").wait_for()
    await send(pb, "group hello")
    await expect(row(laptop, "Trip").locator(".badge")).to_have_text("1")
    await row(laptop, "Trip").click()
    await expect(theirs(laptop, "group hello")).to_be_visible()
    await expect(mine(pb, "group hello").locator(".readby")).to_have_text("read by 1 of 1")
    await send(laptop, "group note from the laptop")
    await expect(theirs(pb, "group note from the laptop")).to_be_visible()

    # The phone comes back: everything is there, in order, and what the laptop read meanwhile
    # is not counted unread.
    pp = await online(phone)
    bob_row, trip_row = row(pp, "Bob"), row(pp, "Trip")
    await expect(bob_row.locator(".conv-last")).to_have_text("You: the laptop again")
    await expect(trip_row.locator(".conv-last")).to_have_text("You: group note from the laptop")
    await expect(bob_row.locator(".badge")).to_have_count(0)
    await expect(trip_row.locator(".badge")).to_have_count(0)
    await bob_row.click()
    await expect(bodies(pp)).to_have_text(["hello both", "reply from the laptop",
                                           "while you were away", "the laptop again"])
    await expect(mine(pp, "the laptop again")).to_be_visible()
    await expect(theirs(pp, "while you were away")).to_be_visible()
    # The phone answers: the laptop shows it as Alice's own, in the dialogue and the group.
    await send(pp, "from the phone")
    await expect(row(pb, "Alice").locator(".conv-last")).to_have_text("from the phone")
    await pp.click("#back")
    await trip_row.click()
    await expect(bodies(pp)).to_have_text(["group hello", "group note from the laptop"])
    await send(pp, "group note from the phone")
    await expect(theirs(pb, "group note from the phone")).to_be_visible()
    await expect(mine(laptop, "group note from the phone")).to_be_visible()
    await expect(row(laptop, "Bob").locator(".conv-last")).to_have_text("You: from the phone")
    await expect(row(laptop, "Bob").locator(".badge")).to_have_count(0)
    await expect(row(laptop, "(you)")).to_have_count(0)

    # Each device keeps the whole conversation in its own IndexedDB, and a reload shows it from
    # there.
    personal = [[B, "hello both", 0], [A, "reply from the laptop", 1], [B, "while you were away", 0],
                [A, "the laptop again", 1], [A, "from the phone", 1]]
    group = [[B, "group hello", 0], [A, "group note from the laptop", 1], [A, "group note from the phone", 1]]
    for page in (laptop, pp):
        assert await stored(page, f"p:{B}") == personal
        assert await stored(page, f"g:{key}") == group
        await reload(page)
        await expect(bodies(page)).to_have_text([body for _, body, _ in group])
        await expect(page.locator("#history-top")).to_have_text("Beginning of the history on this device")
        if await page.locator("#back").is_visible():  # the phone shows one pane at a time
            await page.click("#back")
        await row(page, "Bob").click()
        await expect(bodies(page)).to_have_text([body for _, body, _ in personal])
        await expect(page.locator("#history-top")).to_have_text("Beginning of the history on this device")


# -- a device added later -----------------------------------------------------------------------


async def test_a_device_added_later_shows_what_i_joined_and_no_earlier_messages(
        people: UserFactory, live: ServerProcess) -> None:
    alice = await people(A, "Alice")
    bob = await people(B, "Bob")
    await people(C, "Carol")
    laptop = await online(alice)
    pb = await online(bob)

    # On the laptop: a dialogue both ways, one with no message, a contact, a group and a room.
    await open_dialogue(pb, A)
    await send(pb, "hi alice")
    await row(laptop, "Bob").click()
    await expect(theirs(laptop, "hi alice")).to_be_visible()
    # Sent on the socket that acknowledged "hi alice": once it is "sent", the server has handled
    # that acknowledgement (frames of one socket are handled in order).
    await send(laptop, "hi bob")
    await expect(mine(laptop, "hi bob")).to_have_attribute("data-state", "read")
    await open_dialogue(laptop, C)
    await laptop.click("#show-contacts")
    await laptop.fill("#contact-phone", C)
    await laptop.fill("#contact-name", "Caroline")
    await laptop.press("#contact-name", "Enter")
    await expect(laptop.locator("#contact-list li", has_text="Caroline")).to_be_visible()
    await laptop.locator("#dlg-contacts [data-close]").click()
    await laptop.click("#new-group")
    await laptop.fill("#group-name", "Trip")
    await laptop.fill("#group-phones", B)
    await laptop.get_by_role("button", name="Create group").click()
    await expect(laptop.locator("#conv-title")).to_have_text("Trip")
    await send(laptop, "train at nine")
    await expect(mine(laptop, "train at nine")).to_have_attribute("data-state", "sent")
    await pb.goto(live.url("/chat"))
    await pb.locator("body.ready").wait_for()
    await row(pb, "Trip").click()
    await send(pb, "see you there")
    await expect(theirs(laptop, "see you there")).to_be_visible()
    await send(laptop, "great")  # after the acknowledgement of "see you there", as above
    await expect(mine(laptop, "great").locator(".readby")).to_have_text("read by 1 of 1")
    await laptop.click("#show-rooms")
    await laptop.fill("#room-name", "lobby")
    await laptop.press("#room-name", "Enter")
    await expect(laptop.locator("#conv-title")).to_have_text("#lobby")
    await send(laptop, "welcome to the lobby")
    await expect(mine(laptop, "welcome to the lobby")).to_have_attribute("data-state", "sent")

    # A third login of Alice: a device with nothing in this browser.
    tablet = await second_device(people, live, A)
    pt = await online(tablet)
    for title in ("Bob", "Trip"):
        await expect(row(pt, title).locator(".conv-last")).to_have_text(EARLIER_ROW)
    # (A dialogue without messages says so too: this device cannot know there were none.)
    await expect(row(pt, "Caroline")).to_be_visible()
    await expect(row(pt, "#lobby")).to_be_visible()
    await expect(pt.locator("#conversations .conv")).to_have_count(4)
    await screenshot(pt, "desktop-light-device-added-later")
    # Messages that every device had are gone from the server, and copies of what Alice sent
    # before this device existed never come: the notice says where they are.
    for title in ("Bob", "Trip"):
        await row(pt, title).click()
        await expect(pt.locator("#history-top")).to_have_text(EARLIER)
        await expect(pt.locator("#messages .msg")).to_have_count(0)
    # The room keeps its history on the server (SPEC 5.4): it is here.
    await row(pt, "#lobby").click()
    await expect(mine(pt, "welcome to the lobby")).to_be_visible()
    await pt.click("#show-contacts")
    await expect(pt.locator("#contact-list li", has_text="Caroline")).to_contain_text(C)
    await pt.locator("#dlg-contacts [data-close]").click()

    # From now on it gets what comes, below the notice.
    await send(pb, "anyone there?")
    await row(pt, "Trip").click()
    await expect(theirs(pt, "anyone there?")).to_be_visible()
    await expect(pt.locator("#history-top")).to_have_text(EARLIER)
    await row(laptop, "Trip").click()
    await expect(theirs(laptop, "anyone there?")).to_be_visible()

    # Alice leaves the group on the laptop: the tablet says so once it asks the server again.
    await laptop.click("#conv-info")
    await laptop.locator("#info-body").get_by_role("button", name="Leave group").click()
    await laptop.locator("#dlg-confirm-ok").click()  # asked first (issue 18, defect 3)
    await expect(row(laptop, "Trip").locator(".conv-last")).to_have_text("You left this group.")
    await pt.goto(live.url("/chat"))  # the group's own address is refused now (403)
    await pt.locator("body.ready").wait_for()
    await expect(row(pt, "Trip").locator(".conv-last")).to_have_text("You are no longer in this group.")


# -- the devices view ---------------------------------------------------------------------------


async def test_the_devices_view_lists_both_and_logs_the_other_out(
        people: UserFactory, live: ServerProcess) -> None:
    alice = await people(A, "Alice")
    await people(B, "Bob")
    phone = await second_device(people, live, A, **PHONE)
    laptop = await online(alice)
    # The phone's sockets go through the test, which sees how the server closes each.
    sockets = await watch_sockets(phone)
    pp = await online(phone)
    await open_dialogue(pp, B)
    await send(pp, "hello from the phone")
    await expect(mine(pp, "hello from the phone")).to_have_attribute("data-state", "sent")
    before = list(sockets)
    assert {s.path for s in before} == {f"/ws/chat/special/{A}/", f"/ws/chat/personal/{A}/{B}/"}
    assert all(s.code is None for s in before)

    await laptop.click("#show-profile")
    items = laptop.locator("#device-list > li")
    await expect(items).to_have_count(2)
    # Newest first: the phone logged in after the laptop.
    await expect(items.nth(0).locator(".device-label")).to_have_text("Chrome on Android")
    await expect(items.nth(0).locator(".this-device")).to_have_count(0)
    await expect(items.nth(1).locator(".device-label")).to_have_text("Chromium on Linux")
    await expect(items.nth(1).locator(".this-device")).to_have_text("This device")
    await expect(items.filter(has=laptop.locator(".this-device"))).to_have_count(1)
    # The laptop has the phone's message too, under Bob's name.
    await expect(row(laptop, "Bob").locator(".conv-last")).to_have_text("You: hello from the phone")
    await items.nth(1).scroll_into_view_if_needed()
    await screenshot(laptop, "desktop-light-two-devices")

    await laptop.get_by_role("button", name="Log out this device: Chrome on Android").click()
    await expect(laptop.locator("#devices-status")).to_have_text("Chrome on Android is logged out.")
    await expect(items).to_have_count(1)
    # The server closes the phone's sockets at once (policy violation), and it lands on the
    # login page.
    try:
        await asyncio.wait_for(asyncio.gather(*(s.closed.wait() for s in before)), timeout=WAIT_MS / 1000)
    except TimeoutError:
        pytest.fail(f"the phone's sockets are still open: {[(s.path, s.code) for s in before]}")
    assert [s.code for s in before] == [1008] * len(before)
    await expect(pp).to_have_url(live.url("/login"))
    assert (await phone.context.request.get(live.url("/chat/info"))).status == 401
    # The laptop is still in, online.
    await laptop.locator("#dlg-profile [data-close]").click()
    await expect(laptop.locator("#offline")).to_be_hidden()
    assert (await alice.context.request.get(live.url("/chat/info"))).status == 200
