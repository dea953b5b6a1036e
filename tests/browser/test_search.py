"""Search in the browser client (issue 18), in the device's own IndexedDB history: the sidebar's
box filters the conversation list and finds messages across every conversation; the header's
search button finds them in the open conversation; a result opens its conversation at the
message, loading older pages when it is further back. Desktop and phone sizes.

Screenshots: test-output/screenshots/issue18-*.png. Every wait is Playwright's auto-waiting with
a timeout; nothing sleeps.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from playwright.async_api import Page, expect

from helpers.accounts import client, login, register
from helpers.frames import frame
from helpers.server import ServerProcess

from .conftest import UserFactory, screenshot
from .test_client import A, B, C, row, theirs
from .test_two_devices import PHONE


async def write(live: ServerProcess, sender: str, to: str, texts: list[str], *, new: bool = True) -> None:
    """`sender` sends `texts` to `to` from a plain WebSocket client (an hour ago, a second apart)."""
    start = datetime.now(UTC) - timedelta(hours=1)
    async with client() as session:
        if new:
            await register(session, live, sender)
        else:
            await login(session, live, sender)
        ws = await session.ws_connect(live.url(f"/ws/chat/personal/{sender}/{to}/"))
        for i, text in enumerate(texts):
            ts = (start + timedelta(seconds=i, microseconds=int(sender[-2:]))).strftime(
                "%Y-%m-%d %H:%M:%S.%f")
            await ws.send_json(frame("new_msg", sender, to, text, ts))
            reply = await ws.receive_json(timeout=10)
            assert reply["command"] == "msg_sent", reply
        await ws.close()


def hits(page: Page, where: str = "#search-results"):
    return page.locator(f"{where} .hit")


async def history(live: ServerProcess) -> None:
    """Bob: an old message about the café, 60 more after it; Carol: two about Friday."""
    await write(live, B, A, ["Let's meet at the Café Noir on Friday",
                             *(f"chatter {i}" for i in range(60)), "See you"])
    await write(live, C, A, ["Friday works for me", "Bring the FRIDAY list"])


async def test_filter_the_list_and_search_across_and_within_conversations(
        people: UserFactory, live: ServerProcess) -> None:
    alice = await people(A, "Alice")
    await history(live)
    pa = await alice.page()
    bob_row, carol_row = row(pa, f"user {B}"), row(pa, f"user {C}")
    await expect(bob_row.locator(".badge")).to_have_text("62")
    await expect(carol_row.locator(".badge")).to_have_text("2")

    # The list filter: by name, and by number.
    box = pa.get_by_role("searchbox", name="Search conversations and messages")
    await box.fill(C[-4:])
    await expect(pa.locator("#conversations .conv")).to_have_count(1)
    await expect(carol_row).to_be_visible()
    await box.fill("nobody like this")
    await expect(pa.locator("#conversations .conv")).to_have_count(0)
    await expect(pa.locator("#search-results")).to_contain_text("No messages with “nobody like this”")
    await expect(pa.locator("#empty-list")).to_be_hidden()

    # Across conversations: case and accents do not matter; newest first; the words marked.
    await box.fill("friday")
    await expect(hits(pa)).to_have_count(3)
    await expect(pa.locator("#search-results .search-status")).to_have_text("3 messages with “friday”")
    await expect(hits(pa).nth(0)).to_contain_text("Bring the FRIDAY list")
    await expect(hits(pa).nth(0).locator(".hit-title")).to_have_text(f"user {C}")
    await expect(hits(pa).nth(2)).to_contain_text("Café Noir")
    await expect(hits(pa).nth(2).locator("mark")).to_have_text("Friday")
    await screenshot(pa, "issue18-desktop-search-across")
    # The oldest result is a page and more back: it opens there, highlighted.
    await hits(pa).nth(2).click()
    await expect(pa.locator("#conv-title")).to_have_text(f"user {B}")
    cafe = theirs(pa, "Café Noir")
    await expect(cafe).to_be_in_viewport()
    await expect(cafe).to_have_class(re.compile(r"\bhighlight\b"))
    await box.press("Escape")
    await expect(pa.locator("#conversations .conv")).to_have_count(2)
    await expect(pa.locator("#search-results")).to_be_hidden()

    # Within the open conversation: only its messages.
    await pa.get_by_role("button", name="Search in this conversation").click()
    inner = pa.get_by_role("searchbox", name="Search in this conversation")
    await expect(inner).to_be_focused()
    await inner.fill("CAFE")
    await expect(hits(pa, "#conv-search-results")).to_have_count(1)
    await inner.fill("friday")
    await expect(hits(pa, "#conv-search-results")).to_have_count(1)  # not Carol's
    await inner.fill("chatter 1")
    # "chatter 1", "chatter 10" ... "chatter 19": 11 of them, newest first.
    await expect(hits(pa, "#conv-search-results")).to_have_count(11)
    await expect(hits(pa, "#conv-search-results").nth(0)).to_contain_text("chatter 19")
    await screenshot(pa, "issue18-desktop-search-conversation")
    await hits(pa, "#conv-search-results").nth(10).click()
    target = pa.locator("#messages .msg", has=pa.locator(".body", has_text=re.compile("^chatter 1$")))
    await expect(target).to_be_in_viewport()
    await expect(target).to_have_class(re.compile(r"\bhighlight\b"))
    await inner.press("Escape")
    await expect(pa.locator("#conv-search-form")).to_be_hidden()


async def test_search_on_a_phone_opens_the_conversation_at_the_message(
        people: UserFactory, live: ServerProcess) -> None:
    alice = await people(A, "Alice", **PHONE)
    await history(live)
    pa = await alice.page()
    await expect(row(pa, f"user {B}").locator(".badge")).to_have_text("62")
    box = pa.get_by_role("searchbox", name="Search conversations and messages")
    await box.fill("café")
    await expect(hits(pa)).to_have_count(1)
    await expect(pa.locator("#conversations .conv")).to_have_count(0)
    await screenshot(pa, "issue18-phone-search")
    await hits(pa).first.tap()
    await expect(pa.locator(".sidebar")).to_be_hidden()
    cafe = theirs(pa, "Café Noir")
    await expect(cafe).to_be_in_viewport()
    await expect(cafe).to_have_class(re.compile(r"\bhighlight\b"))
    await screenshot(pa, "issue18-phone-search-opened")
