"""Replies, edits, unsending and reactions in the browser client (SPEC 13, issue 18), against the
real server: in a dialogue, a group and a room, on desktop and phone sizes; links and
right-to-left text in bubbles; actions that arrive before their original, name a message this
device never had, or are forged (an edit of someone else's message).

Screenshots: test-output/screenshots/issue18-*.png. Every wait is Playwright's auto-waiting with
a timeout; nothing sleeps.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

from playwright.async_api import Locator, Page, expect

from helpers.accounts import client, register
from helpers.frames import frame, plain, stamp
from helpers.server import ServerProcess

from .conftest import UserFactory, screenshot
from .test_client import A, B, C, mine, open_dialogue, row, send, theirs
from .test_two_devices import PHONE, make_group

DELETED = "This message was deleted"


async def open_menu(page: Page, bubble: Locator) -> Locator:
    """The message menu of `bubble` (its "…" button), once open."""
    await bubble.hover()
    await bubble.locator(".msg-more").click()
    menu = page.locator(".msg-menu")
    await expect(menu).to_be_visible()
    return menu


async def menu_action(page: Page, bubble: Locator, name: str) -> None:
    menu = await open_menu(page, bubble)
    await menu.get_by_role("button", name=name, exact=True).click()
    await expect(menu).to_have_count(0)


async def react(page: Page, bubble: Locator, emoji: str) -> None:
    menu = await open_menu(page, bubble)
    await menu.get_by_role("button", name=f"React with {emoji}").click()
    await expect(menu).to_have_count(0)


async def edit(page: Page, bubble: Locator, text: str) -> None:
    await menu_action(page, bubble, "Edit")
    await expect(page.locator("#compose-ref")).to_contain_text("Editing your message")
    await page.fill("#text", text)
    await page.press("#text", "Enter")
    await expect(page.locator("#compose-ref")).to_be_hidden()


async def unsend(page: Page, bubble: Locator) -> None:
    await menu_action(page, bubble, "Unsend")
    await expect(page.locator("#dlg-confirm")).to_be_visible()
    await page.locator("#dlg-confirm-ok").click()


def reaction(bubble: Locator, emoji: str) -> Locator:
    return bubble.locator(".reaction", has=bubble.page.locator(".reaction-emoji", has_text=emoji))


async def direction(node: Locator) -> str:
    return await node.evaluate("(n) => getComputedStyle(n).direction")


# -- a dialogue, desktop ------------------------------------------------------------------------


async def test_reply_edit_unsend_links_and_rtl_in_a_dialogue(people: UserFactory) -> None:
    alice = await people(A, "Alice")
    bob = await people(B, "Bob")
    pa = await alice.page()
    pb = await bob.page()
    await open_dialogue(pa, B)
    await send(pa, "Lunch at noon? The menu: https://example.org/menu?day=1. Or javascript:alert(1)")
    await expect(mine(pa, "Lunch at noon")).to_have_attribute("data-state", "received")
    await row(pb, "Alice").click()
    original = theirs(pb, "Lunch at noon")

    # The address is a link that opens a new tab without the opener; the trailing "." and the
    # javascript: text are not part of any link.
    for bubble in (mine(pa, "Lunch at noon"), original):
        link = bubble.locator(".body a")
        await expect(link).to_have_count(1)
        await expect(link).to_have_text("https://example.org/menu?day=1")
        await expect(link).to_have_attribute("href", "https://example.org/menu?day=1")
        await expect(link).to_have_attribute("rel", "noopener noreferrer")
        await expect(link).to_have_attribute("target", "_blank")
        await expect(bubble.locator(".body")).to_have_text(
            "Lunch at noon? The menu: https://example.org/menu?day=1. Or javascript:alert(1)")

    # Bob replies through the menu: the quote is above his text, on both sides.
    await menu_action(pb, original, "Reply")
    await expect(pb.locator("#compose-ref")).to_contain_text("Replying to Alice")
    await expect(pb.locator("#compose-ref")).to_contain_text("Lunch at noon?")
    await send(pb, "Yes, see you there")
    await expect(pb.locator("#compose-ref")).to_be_hidden()
    reply_b = mine(pb, "see you there")
    await expect(reply_b.locator(".quote .quote-text")).to_have_text(re.compile("^Lunch at noon"))
    reply_a = theirs(pa, "see you there")
    await expect(reply_a.locator(".quote .quote-name")).to_have_text("Alice")
    await expect(reply_a.locator(".quote .quote-text")).to_have_text(re.compile("^Lunch at noon"))

    # Right-to-left text reads right to left; the rest stays left to right.
    await send(pb, "مرحبا، نلتقي عند الظهر")
    arabic = theirs(pa, "مرحبا")
    await expect(arabic).to_be_visible()
    assert await direction(arabic.locator(".body")) == "rtl"
    assert await direction(reply_a.locator(".body")) == "ltr"
    await send(pb, "שלום לכולם")
    assert await direction(theirs(pa, "שלום").locator(".body")) == "rtl"

    # A click on the quote scrolls to the original and highlights it.
    for i in range(20):
        await send(pa, f"filler {i}")
    await expect(theirs(pb, "filler 19")).to_be_visible()
    await expect(original).not_to_be_in_viewport()
    await reply_b.locator(".quote").click()
    await expect(original).to_be_in_viewport()
    await expect(original).to_have_class(re.compile(r"\bhighlight\b"))

    # Alice edits her own message: the new text replaces the old, marked "edited", on both sides.
    await send(pa, "I will bring the cake tomorow")
    await expect(theirs(pb, "cake tomorow")).to_be_visible()
    await edit(pa, mine(pa, "cake tomorow"), "I will bring the cake tomorrow")
    for page, bubble in ((pa, mine(pa, "cake tomorrow")), (pb, theirs(pb, "cake tomorrow"))):
        await expect(bubble.locator(".edited")).to_have_text("edited")
        await expect(page.locator("#messages .body", has_text="tomorow")).to_have_count(0)
    # ... and the list's preview follows.
    await expect(row(pb, "Alice").locator(".conv-last")).to_have_text("I will bring the cake tomorrow")

    # Bob can reply to and react to Alice's message, but neither edit nor unsend it.
    menu = await open_menu(pb, theirs(pb, "cake tomorrow"))
    await expect(menu.get_by_role("button", name="Reply")).to_be_visible()
    await expect(menu.get_by_role("button", name="Edit")).to_have_count(0)
    await expect(menu.get_by_role("button", name="Unsend")).to_have_count(0)
    await pb.keyboard.press("Escape")
    await expect(menu).to_have_count(0)

    # Alice unsends a message sent to the wrong person: both see that it was deleted.
    await send(pa, "Oops, this was for Carol")
    await expect(theirs(pb, "this was for Carol")).to_be_visible()
    await unsend(pa, mine(pa, "this was for Carol"))
    for page in (pa, pb):
        await expect(page.locator("#messages .body.deleted")).to_have_text(DELETED)
        await expect(page.locator("#messages .body", has_text="this was for Carol")).to_have_count(0)
    # Bob's device no longer has the text, nor does a reload bring it back.
    bodies = await stored_bodies(pb, B, f"p:{A}")
    assert not any("this was for Carol" in b for b in bodies), bodies
    await screenshot(pa, "issue18-desktop-dialogue-alice")
    await screenshot(pb, "issue18-desktop-dialogue-bob")
    await pb.reload()
    await pb.locator("body.ready").wait_for()
    await expect(pb.locator("#messages .body.deleted")).to_have_text(DELETED)
    await expect(theirs(pb, "cake tomorrow").locator(".edited")).to_be_visible()
    await expect(mine(pb, "see you there").locator(".quote-text")).to_have_text(re.compile("^Lunch"))


# The bodies of conversation `conv`'s records in `me`'s IndexedDB (db.js), actions included.
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
    return list.map((m) => m.body);
}"""


async def stored_bodies(page: Page, me: str, conv: str) -> list[str]:
    return await page.evaluate(STORED, [me, conv])


# -- reactions, phone size ----------------------------------------------------------------------


async def swipe_right(page: Page, bubble: Locator) -> None:
    """A finger swipes `bubble` to the right (real touch events, through the DevTools protocol)."""
    box = await bubble.locator(".bubble").bounding_box()
    assert box is not None
    x, y = box["x"] + 12, box["y"] + box["height"] / 2
    cdp = await page.context.new_cdp_session(page)
    await cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x, "y": y}]})
    for dx in (15, 35, 55, 75, 90):
        await cdp.send("Input.dispatchTouchEvent",
                       {"type": "touchMove", "touchPoints": [{"x": x + dx, "y": y + 2}]})
    await cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    await cdp.detach()


async def test_reactions_taken_back_one_emoji_only_and_swipe_to_reply_on_a_phone(
        people: UserFactory) -> None:
    alice = await people(A, "Alice", **PHONE)
    bob = await people(B, "Bob", **PHONE, color_scheme="dark")
    pa = await alice.page()
    pb = await bob.page()
    await open_dialogue(pa, B)
    await send(pa, "I passed my driving test!")
    await row(pb, "Alice").click()
    news_b = theirs(pb, "driving test")
    news_a = mine(pa, "driving test")

    menu = await open_menu(pb, news_b)
    for emoji in ("👍", "❤️", "😂", "😮", "😢", "🙏"):
        await expect(menu.get_by_role("button", name=f"React with {emoji}")).to_be_visible()
    await screenshot(pb, "issue18-phone-menu")
    await menu.get_by_role("button", name="React with 👍").click()
    for bubble in (news_a, news_b):
        await expect(reaction(bubble, "👍").locator(".reaction-count")).to_have_text("1")
    await expect(reaction(news_a, "👍")).to_have_attribute("title", "Bob")
    await expect(reaction(news_b, "👍")).to_have_attribute("aria-pressed", "true")
    await react(pa, news_a, "❤️")
    await expect(reaction(news_b, "❤️")).to_have_attribute("title", "Alice")

    # Two emoji, or a letter, are no reaction: refused in the menu, nothing sent.
    menu = await open_menu(pb, news_b)
    other = menu.get_by_role("textbox", name="Any emoji")
    for text in ("👍👍", "ab"):
        await other.fill(text)
        await other.press("Enter")
        await expect(menu.get_by_role("alert")).to_contain_text("one emoji")
        await expect(other).to_have_attribute("aria-invalid", "true")
    await other.fill("🎉")
    await other.press("Enter")
    await expect(menu).to_have_count(0)
    # One reaction per person: Bob's 🎉 replaced his 👍, on both phones.
    for bubble in (news_a, news_b):
        await expect(reaction(bubble, "🎉").locator(".reaction-count")).to_have_text("1")
        await expect(reaction(bubble, "❤️").locator(".reaction-count")).to_have_text("1")
        await expect(reaction(bubble, "👍")).to_have_count(0)
    await screenshot(pa, "issue18-phone-reactions")

    # Tapping his own reaction takes it back (react_to with ""); Alice's stays.
    await reaction(news_b, "🎉").tap()
    for bubble in (news_a, news_b):
        await expect(reaction(bubble, "🎉")).to_have_count(0)
        await expect(reaction(bubble, "❤️")).to_have_count(1)

    # Swiping a bubble right replies to it.
    await swipe_right(pb, news_b)
    await expect(pb.locator("#compose-ref")).to_contain_text("Replying to Alice")
    await send(pb, "Congratulations!")
    await expect(theirs(pa, "Congratulations").locator(".quote-text")).to_have_text(
        "I passed my driving test!")
    await screenshot(pb, "issue18-phone-swipe-reply")
    await screenshot(pa, "issue18-phone-reply-received")


# -- a group and a room -------------------------------------------------------------------------


async def test_reply_edit_unsend_and_react_in_a_group_and_a_room(
        people: UserFactory, live: ServerProcess) -> None:
    alice = await people(A, "Alice")
    bob = await people(B, "Bob")
    await people(C, "Carol")
    pa = await alice.page()
    pb = await bob.page()
    await make_group(alice, live, "Friday", [B, C])
    await pa.reload()
    await pa.locator("body.ready").wait_for()
    await row(pa, "Friday").click()
    await send(pa, "Who is in for Friday?")
    await row(pb, "Friday").click()
    question_b = theirs(pb, "in for Friday")
    question_a = mine(pa, "in for Friday")

    await menu_action(pb, question_b, "Reply")
    await send(pb, "Me!")
    await expect(theirs(pa, "Me!").locator(".quote-text")).to_have_text("Who is in for Friday?")
    await react(pb, question_b, "🙏")
    await expect(reaction(question_a, "🙏")).to_have_attribute("title", "Bob")
    await edit(pa, question_a, "Who is in for Friday night?")
    await expect(theirs(pb, "Friday night").locator(".edited")).to_be_visible()
    # The reply's quote follows the edit of its original.
    await expect(theirs(pa, "Me!").locator(".quote-text")).to_have_text("Who is in for Friday night?")
    await screenshot(pa, "issue18-desktop-group")
    await unsend(pb, mine(pb, "Me!"))
    for page in (pa, pb):
        await expect(page.locator("#messages .body.deleted")).to_have_text(DELETED)
        await expect(page.locator("#messages .body", has_text="Me!")).to_have_count(0)
    await expect(theirs(pb, "Friday night").locator(".reaction")).to_have_count(1)

    # A room: the same, and the room's history brings them to a device that joins later.
    await pa.click("#show-rooms")
    await pa.fill("#room-name", "lobby")
    await pa.press("#room-name", "Enter")
    await expect(pa.locator("#conv-title")).to_have_text("#lobby")
    await send(pa, "Room rules: be nice")
    await pb.goto(bob.context.base + "/chat/room/lobby/")
    await pb.locator("body.ready").wait_for()
    rules_b = theirs(pb, "Room rules")
    await expect(rules_b).to_be_visible()
    await menu_action(pb, rules_b, "Reply")
    await send(pb, "Agreed")
    await expect(theirs(pa, "Agreed").locator(".quote-text")).to_have_text("Room rules: be nice")
    await react(pb, rules_b, "😂")
    await edit(pa, mine(pa, "Room rules"), "Room rules: be kind")
    await expect(theirs(pb, "be kind").locator(".edited")).to_be_visible()
    await expect(reaction(mine(pa, "be kind"), "😂")).to_have_attribute("title", "Bob")
    await send(pa, "posted in the wrong room")
    await expect(theirs(pb, "wrong room")).to_be_visible()
    await unsend(pa, mine(pa, "wrong room"))
    await expect(pb.locator("#messages .body.deleted")).to_have_text(DELETED)
    await screenshot(pb, "issue18-desktop-room")

    dave = await people("5550000004", "Dave")
    pd = await dave.page("/chat/room/lobby/")
    await expect(theirs(pd, "Room rules: be kind").locator(".edited")).to_be_visible()
    await expect(reaction(theirs(pd, "be kind"), "😂")).to_be_visible()
    await expect(theirs(pd, "Agreed").locator(".quote-text")).to_have_text("Room rules: be kind")
    await expect(pd.locator("#messages .body", has_text="wrong room")).to_have_count(0)
    # Three messages were written and one unsent (gone from the room's history); the edits and
    # reactions are no bubbles.
    await expect(pd.locator("#messages .msg")).to_have_count(2)


# -- out of order, orphaned, forged -------------------------------------------------------------


async def test_actions_before_their_original_without_one_or_forged_show_no_empty_bubble(
        people: UserFactory, live: ServerProcess) -> None:
    alice = await people(A, "Alice")
    sockets: list[object] = []

    async def relay(ws: object) -> None:
        ws.connect_to_server()
        sockets.append(ws)
    await alice.context.route_web_socket(re.compile(f"/ws/chat/special/{A}/$"), relay)
    pa = await alice.page()
    await expect(pa.locator("#offline")).to_be_hidden()

    async with client() as bob:
        await register(bob, live, B)
        ws = await bob.ws_connect(live.url(f"/ws/chat/personal/{B}/{A}/"))

        async def put(message: str, ts: str | None = None, **ref: object) -> None:
            await ws.send_json({**frame("new_msg", B, A, message, ts), **ref})
            reply = await ws.receive_json(timeout=10)
            assert reply["command"] == "msg_sent", reply

        original_ts = stamp()
        ref = {"msg_from": B, "sent_timestamp": original_ts}
        # A reaction and an edit of a message not sent yet, and an edit of one never sent.
        await put("👍", react_to=ref)
        await put("the edited text", edit_of=ref)
        await put("ghost edit", edit_of={"msg_from": B, "sent_timestamp": stamp()})
        await put("", delete_of={"msg_from": B, "sent_timestamp": stamp()})
        await put("a reply to nothing here", reply_to={"msg_from": B, "sent_timestamp": stamp()})
        await put("the original text", original_ts)

        await row(pa, "user").click()
        bubble = theirs(pa, "the edited text")
        await expect(bubble.locator(".edited")).to_be_visible()
        await expect(reaction(bubble, "👍").locator(".reaction-count")).to_have_text("1")
        await expect(pa.locator("#messages .msg")).to_have_count(2)
        await expect(pa.locator("#messages .body", has_text="ghost")).to_have_count(0)
        await expect(pa.locator("#messages .body", has_text="original text")).to_have_count(0)
        await expect(theirs(pa, "a reply to nothing").locator(".quote")).to_have_class(
            re.compile(r"\bmissing\b"))
        await expect(theirs(pa, "a reply to nothing").locator(".quote-text")).to_have_text(
            "The original message is not on this device")

        # Forged frames (what a broken or hostile server might push): an edit and an unsend of
        # Alice's message by Bob, and a malformed reference. None changes anything.
        await send(pa, "Alice's own words")
        mine_ts = plain(datetime(1970, 1, 1, tzinfo=UTC) + timedelta(
            microseconds=int(await mine(pa, "own words").get_attribute("data-us"))))
        forged = {"msg_from": A, "sent_timestamp": mine_ts}
        for extra in ({"edit_of": forged, "message": "forged edit"},
                      {"delete_of": forged, "message": ""},
                      {"reply_to": {"msg_from": A}, "message": "malformed reference"},
                      {"reply_to": forged, "react_to": forged, "message": "two references"},
                      # a reaction that is no emoji (the server refuses it; an older one did not)
                      {"react_to": forged, "message": "a"}):
            sockets[0].send(json.dumps({"command": "new_msg", "msg_from": B, "msg_to": A,
                                        "sent_timestamp": stamp(), **extra}))
        await put("after the forgeries")
        await expect(theirs(pa, "after the forgeries")).to_be_visible()
        await expect(mine(pa, "own words").locator(".body")).to_have_text("Alice's own words")
        await expect(mine(pa, "own words").locator(".edited")).to_have_count(0)
        await expect(mine(pa, "own words").locator(".reaction")).to_have_count(0)
        for text in ("forged", "malformed", "two references"):
            await expect(pa.locator("#messages .body", has_text=text)).to_have_count(0)
        await expect(pa.locator("#messages .body.deleted")).to_have_count(0)
        await expect(pa.locator("#messages .msg")).to_have_count(4)
        await ws.close()
