"""The browser client in a real browser: two (or three) people, each in their own browser profile,
chat through a real server subprocess. Screenshots of the main views go to
test-output/screenshots/.

Every wait is Playwright's auto-waiting (`expect`, `wait_for`) with a timeout; nothing sleeps.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from playwright.async_api import Page, expect

from helpers.accounts import PASSWORD
from helpers.frames import frame
from helpers.server import ServerProcess

from .conftest import User, UserFactory, screenshot

A, B, C = "5550000001", "5550000002", "5550000003"
# After a server restart the client reconnects with backoff (at most ~12 s between tries).
RECONNECT_MS = 30_000


async def open_dialogue(page: Page, phone: str) -> None:
    """Start a dialogue by typing a phone number in the list pane."""
    await page.fill("#peer", phone)
    await page.press("#peer", "Enter")
    await expect(page.locator("#compose")).to_be_visible()
    await expect(page).to_have_url(re.compile(f"/chat/personal/[0-9]+/{phone}/$"))


async def send(page: Page, text: str) -> None:
    """Type a message and press Enter."""
    await page.fill("#text", text)
    await page.press("#text", "Enter")
    await expect(page.locator("#text")).to_have_value("")


def mine(page: Page, text: str):
    return page.locator("#messages .msg.mine", has=page.locator(".body", has_text=text))


def theirs(page: Page, text: str):
    return page.locator("#messages .msg.theirs", has=page.locator(".body", has_text=text))


def row(page: Page, title: str):
    return page.locator("#conversations .conv", has=page.locator(".conv-title", has_text=title))


async def person(people: UserFactory, phone: str, name: str, **options: object) -> User:
    return await people(phone, name, **options)


# -- chatting ------------------------------------------------------------------------------------


async def test_two_people_chat_both_ways_and_ticks_go_to_read(people: UserFactory) -> None:
    alice = await people(A, "Alice", register=False)
    bob = await person(people, B, "Bob")

    # Alice registers through the page itself, and sees her name and phone.
    pa = await alice.page("/register", ready=False)
    await pa.fill("input[name=phone]", A)
    await pa.fill("input[name=name]", "Alice")
    await pa.fill("input[name=password]", PASSWORD)
    await pa.click("button[type=submit]")
    await expect(pa).to_have_url(alice.context.base + "/chat")
    await pa.locator("body.ready").wait_for()
    await expect(pa.locator("#me-name")).to_have_text("Alice")
    await expect(pa.locator("#me-phone")).to_have_text(A)

    pb = await bob.page()
    await open_dialogue(pa, B)
    await expect(pa.locator("#conv-title")).to_have_text("Bob")
    await send(pa, "Hello Bob")
    # Bob's page is open (on the list): it stores the message and acknowledges it.
    await expect(mine(pa, "Hello Bob")).to_have_attribute("data-state", "received")

    alice_row = row(pb, "Alice")
    await expect(alice_row.locator(".badge")).to_have_text("1")
    await expect(alice_row.locator(".conv-last")).to_have_text("Hello Bob")
    await expect(alice_row.locator(".conv-time")).to_have_text("just now")
    await alice_row.click()
    await expect(theirs(pb, "Hello Bob")).to_be_visible()
    await expect(alice_row.locator(".badge")).to_have_count(0)
    await expect(mine(pa, "Hello Bob")).to_have_attribute("data-state", "read")
    await expect(mine(pa, "Hello Bob").locator(".ticks.read")).to_be_visible()

    # Shift+Enter breaks the line, Enter sends.
    text = pb.locator("#text")
    await text.press_sequentially("Hi Alice")
    await text.press("Shift+Enter")
    await text.press_sequentially("second line")
    await text.press("Enter")
    reply = theirs(pa, "second line")
    await expect(reply).to_be_visible()
    assert await reply.locator(".body").text_content() == "Hi Alice\nsecond line"
    await expect(reply.locator(".meta time")).to_have_text("just now")
    await expect(mine(pb, "second line")).to_have_attribute("data-state", "read")

    # Typing shows on the other side for about two seconds, then goes away.
    await pa.locator("#text").press_sequentially("I am typ")
    await expect(pb.locator("#conv-sub")).to_have_text("typing…")
    await expect(row(pb, "Alice").locator(".conv-last")).to_have_text("typing…")
    await expect(pb.locator("#conv-sub")).not_to_have_text("typing…", timeout=5000)

    await screenshot(pa, "desktop-light-conversation")
    await screenshot(pb, "desktop-light-conversation-bob")

    # Log out (keeping the history, what is proposed on one's own computer): back to the login
    # form; the chat is no longer reachable.
    await pa.click("#logout")
    await expect(pa.get_by_role("radio", name="Keep it")).to_be_checked()
    await pa.locator("#dlg-logout").get_by_role("button", name="Log out").click()
    await expect(pa).to_have_url(alice.context.base + "/login")
    await screenshot(pa, "desktop-light-login")
    await pa.goto(alice.context.base + "/chat")
    await expect(pa).to_have_url(alice.context.base + "/login")
    # Log in again: the history is still on this device.
    await pa.fill("input[name=phone]", A)
    await pa.fill("input[name=password]", PASSWORD)
    await pa.press("input[name=password]", "Enter")
    await expect(pa).to_have_url(alice.context.base + "/chat")
    await row(pa, "Bob").click()
    await expect(theirs(pa, "second line")).to_be_visible()
    await expect(mine(pa, "Hello Bob")).to_have_attribute("data-state", "read")


async def test_a_message_sent_while_the_receiver_is_away_appears_when_they_open(
        people: UserFactory) -> None:
    alice = await person(people, A, "Alice")
    bob = await person(people, B, "Bob")
    pa = await alice.page()
    await open_dialogue(pa, B)
    await send(pa, "Are you there?")
    # Stored by the server (one tick); nobody has it yet.
    await expect(mine(pa, "Are you there?")).to_have_attribute("data-state", "sent")

    pb = await bob.page()
    alice_row = row(pb, "Alice")
    await expect(alice_row.locator(".badge")).to_have_text("1")
    await expect(mine(pa, "Are you there?")).to_have_attribute("data-state", "received")
    await alice_row.click()
    await expect(theirs(pb, "Are you there?")).to_be_visible()
    await expect(mine(pa, "Are you there?")).to_have_attribute("data-state", "read")


@pytest.mark.parametrize("live", [{"acks_per_second": 1.0}], indirect=True)
async def test_acknowledgements_refused_over_the_rate_are_sent_again(people: UserFactory) -> None:
    """A backlog larger than the server's acknowledgement budget (SPEC 10 acks_per_second, here
    2 per two seconds): the client fetches again after a refusal, until every message is
    acknowledged, which the sender sees as "received"."""
    alice = await person(people, A, "Alice")
    bob = await person(people, B, "Bob")
    pa = await alice.page()
    await open_dialogue(pa, B)
    texts = [f"backlog {i}" for i in range(6)]
    for text in texts:
        await send(pa, text)
        await expect(mine(pa, text)).to_have_attribute("data-state", "sent")
    await bob.page()
    for text in texts:
        await expect(mine(pa, text)).to_have_attribute("data-state", "received", timeout=30_000)


@pytest.mark.timeout(150)
async def test_the_page_survives_a_server_restart(people: UserFactory, live: ServerProcess) -> None:
    alice = await person(people, A, "Alice")
    bob = await person(people, B, "Bob")
    pa = await alice.page()
    await open_dialogue(pa, B)
    pb = await bob.page(f"/chat/personal/{B}/{A}/")
    await send(pa, "before the restart")
    await expect(theirs(pb, "before the restart")).to_be_visible()

    assert await live.stop() == 0, live.output()
    await expect(pa.locator("#offline")).to_be_visible()
    await expect(pb.locator("#offline")).to_be_visible()
    await screenshot(pa, "desktop-light-offline")
    # Typed while the server is down: kept as pending, with the clock.
    await send(pa, "typed while down")
    await expect(mine(pa, "typed while down")).to_have_attribute("data-state", "pending")

    await live.start().wait_serving()
    await expect(pa.locator("#offline")).to_be_hidden(timeout=RECONNECT_MS)
    await expect(pb.locator("#offline")).to_be_hidden(timeout=RECONNECT_MS)
    await expect(theirs(pb, "typed while down")).to_be_visible(timeout=RECONNECT_MS)
    await expect(mine(pa, "typed while down")).to_have_attribute("data-state", "read",
                                                                  timeout=RECONNECT_MS)
    # ... and it was delivered once.
    await expect(theirs(pb, "typed while down")).to_have_count(1)
    await send(pb, "welcome back")
    await expect(theirs(pa, "welcome back")).to_be_visible(timeout=RECONNECT_MS)


async def test_the_page_comes_back_after_a_network_drop(people: UserFactory) -> None:
    alice = await person(people, A, "Alice")
    bob = await person(people, B, "Bob")
    pa = await alice.page()
    await open_dialogue(pa, B)
    pb = await bob.page(f"/chat/personal/{B}/{A}/")
    await send(pa, "still there?")
    await expect(theirs(pb, "still there?")).to_be_visible()

    await alice.context.set_offline(True)
    await expect(pa.locator("#offline")).to_be_visible()
    await send(pa, "written on the train")
    await expect(mine(pa, "written on the train")).to_have_attribute("data-state", "pending")
    await send(pb, "meanwhile at home")
    await alice.context.set_offline(False)
    await expect(pa.locator("#offline")).to_be_hidden(timeout=RECONNECT_MS)
    await expect(theirs(pb, "written on the train")).to_be_visible(timeout=RECONNECT_MS)
    await expect(theirs(pa, "meanwhile at home")).to_be_visible(timeout=RECONNECT_MS)
    await expect(mine(pa, "written on the train")).to_have_attribute("data-state", "read")


async def test_a_reload_keeps_the_history(people: UserFactory, live: ServerProcess) -> None:
    alice = await person(people, A, "Alice")
    bob = await person(people, B, "Bob")
    pa = await alice.page()
    await open_dialogue(pa, B)
    pb = await bob.page(f"/chat/personal/{B}/{A}/")
    await send(pa, "first")
    await expect(theirs(pb, "first")).to_be_visible()
    await send(pb, "second")
    await expect(theirs(pa, "second")).to_be_visible()
    await expect(mine(pa, "first")).to_have_attribute("data-state", "read")

    # The server keeps nothing once acknowledged: what comes back is the device's history.
    resp = await bob.context.request.get(live.url(f"/chat/info/personal?msg_to={A}"))
    assert (await resp.json())["incoming"]["waiting"] == 0
    for page in (pa, pb):
        await page.reload()
        await page.locator("body.ready").wait_for()
    await expect(theirs(pb, "first")).to_be_visible()
    await expect(mine(pb, "second")).to_be_visible()
    await expect(mine(pa, "first")).to_have_attribute("data-state", "read")
    await expect(theirs(pa, "second")).to_be_visible()
    await expect(pa.locator("#messages .msg")).to_have_count(2)
    # A new tab of the same profile shows the same history, and follows what the other tab sends
    # (the server pushes nothing back to the sender: the tabs share their database).
    again = await bob.page()
    await row(again, "Alice").click()
    await expect(again.locator("#messages .msg")).to_have_count(2)
    await send(pb, "from the first tab")
    await expect(mine(again, "from the first tab")).to_have_attribute("data-state", "read")
    await expect(row(again, "Alice").locator(".conv-last")).to_have_text("You: from the first tab")


async def test_what_people_type_is_shown_as_text(people: UserFactory) -> None:
    alice = await person(people, A, "Alice")
    bob = await person(people, B, '<i>Bob</i> & "co"')
    pa = await alice.page()
    pb = await bob.page()
    await open_dialogue(pa, B)
    await expect(pa.locator("#conv-title")).to_have_text('<i>Bob</i> & "co"')
    payload = ('<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
               '<b>bold</b> &amp;')
    await send(pa, payload)
    await row(pb, "Alice").click()
    bubble = theirs(pb, "bold")
    await expect(bubble).to_be_visible()
    assert await bubble.locator(".body").text_content() == payload
    assert await row(pb, "Alice").locator(".conv-last").text_content() == payload
    for page in (pa, pb):
        assert await page.locator("#messages img, #messages b, #messages script, "
                                  "#conversations i").count() == 0
        assert await page.evaluate("window.pwned") is None


# -- layout --------------------------------------------------------------------------------------


async def test_phone_sized_layout(people: UserFactory) -> None:
    phone = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True,
             "device_scale_factor": 2}
    alice = await person(people, A, "Alice", **phone)
    bob = await person(people, B, "Bob", **phone, color_scheme="dark")
    pb = await bob.page()
    pa = await alice.page()
    await open_dialogue(pa, B)
    await send(pa, "Hi Bob, this is a phone-sized screen with a longer message that wraps.")

    # Bob: one pane, the list.
    await expect(row(pb, "Alice").locator(".badge")).to_have_text("1")
    await expect(pb.locator(".sidebar")).to_be_visible()
    await expect(pb.locator(".conversation")).to_be_hidden()
    await screenshot(pb, "phone-dark-list")
    # The conversation replaces the list, with a back button.
    await row(pb, "Alice").click()
    await expect(pb.locator(".sidebar")).to_be_hidden()
    await expect(pb.locator("#back")).to_be_visible()
    await expect(theirs(pb, "phone-sized")).to_be_in_viewport()
    box = await theirs(pb, "phone-sized").bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
    await send(pb, "Got it 👍")
    await expect(mine(pb, "Got it")).to_have_attribute("data-state", "read")
    await screenshot(pb, "phone-dark-conversation")
    await screenshot(pa, "phone-light-conversation")
    await pb.click("#back")
    await expect(pb.locator(".sidebar")).to_be_visible()
    await expect(pb.locator(".conversation")).to_be_hidden()
    await expect(pb).to_have_url(bob.context.base + "/chat")
    # The browser's back button returns to the conversation's history entry and back.
    await pb.go_back()
    await expect(pb.locator("#back")).to_be_visible()
    await expect(mine(pb, "Got it")).to_be_visible()
    await pb.go_back()
    await expect(pb.locator(".sidebar")).to_be_visible()


async def test_desktop_two_panes_in_dark_mode_and_keyboard(people: UserFactory) -> None:
    alice = await person(people, A, "Alice", color_scheme="dark")
    bob = await person(people, B, "Bob")
    carol = await person(people, C, "Carol")
    pb = await bob.page()
    pc = await carol.page()
    pa = await alice.page()
    await open_dialogue(pb, A)
    await send(pb, "Morning! Are we still on for lunch?")
    await open_dialogue(pc, A)
    await send(pc, "The report is ready ✅")
    await expect(pa.locator("#conversations .conv")).to_have_count(2)
    # Sorted by the latest message: Carol wrote last.
    await expect(pa.locator("#conversations .conv-title").first).to_have_text("Carol")
    # Both panes at once.
    await expect(pa.locator(".sidebar")).to_be_visible()
    await expect(pa.locator("#placeholder")).to_be_visible()
    await expect(pa.locator("#back")).to_be_hidden()

    # Keyboard only: Tab to the list, arrows between conversations, Enter opens, type, Enter sends.
    await pa.locator("#conversations .conv").first.focus()
    await pa.keyboard.press("ArrowDown")
    await expect(row(pa, "Bob")).to_be_focused()
    await pa.keyboard.press("Enter")
    await expect(pa.locator("#text")).to_be_focused()
    await pa.keyboard.type("Yes, 12:30")
    await pa.keyboard.press("Enter")
    await expect(theirs(pb, "Yes, 12:30")).to_be_visible()
    await expect(pa.locator("#conversations .conv-title").first).to_have_text("Bob")
    await screenshot(pa, "desktop-dark-conversation")


# -- groups, rooms, contacts, presence ----------------------------------------------------------


async def test_group_read_by_k_of_n(people: UserFactory) -> None:
    alice = await person(people, A, "Alice")
    bob = await person(people, B, "Bob")
    carol = await person(people, C, "Carol")
    pa = await alice.page()
    pb = await bob.page()

    # Contacts, through the dialog.
    await pa.click("#show-contacts")
    for phone, name in ((B, "Bob B."), (C, "Carol C.")):
        await pa.fill("#contact-phone", phone)
        await pa.fill("#contact-name", name)
        await pa.press("#contact-name", "Enter")
        await expect(pa.locator("#contact-list")).to_contain_text(name)
    await screenshot(pa, "desktop-light-contacts")
    await pa.locator("#dlg-contacts [data-close]").click()

    # A group: pick both, give a title.
    await pa.click("#new-group")
    await pa.fill("#group-name", "Lunch crew")
    await pa.get_by_role("checkbox", name="Bob B.").check()
    await pa.get_by_role("checkbox", name="Carol C.").check()
    await screenshot(pa, "desktop-light-new-group")
    await pa.click("#group-form button[value=create]")
    await expect(pa.locator("#conv-title")).to_have_text("Lunch crew")
    await expect(pa.locator("#conv-sub")).to_have_text("3 members")

    await send(pa, "Pizza at one?")
    sent = mine(pa, "Pizza at one?")
    await expect(sent.locator(".readby")).to_have_text("read by 0 of 2")
    await expect(sent).to_have_attribute("data-state", "sent")  # Carol's page is closed
    # Carol opens the chat: the group and its message come with fetch_grp_msgs.
    pc = await carol.page()
    await expect(row(pc, "Lunch crew").locator(".badge")).to_have_text("1")
    await expect(sent).to_have_attribute("data-state", "received")  # both have it now

    group_b = row(pb, "Lunch crew")
    # Bob does not have Alice in his contacts: the server tells him her number, not her name.
    await expect(group_b.locator(".conv-last")).to_have_text(re.compile(
        f"^(Alice|{A}): Pizza at one[?]$"))
    await group_b.click()
    await expect(theirs(pb, "Pizza at one?").locator(".sender")).to_have_text(
        re.compile(f"^(Alice|{A})$"))
    await expect(sent.locator(".readby")).to_have_text("read by 1 of 2")
    await row(pc, "Lunch crew").click()
    await expect(sent.locator(".readby")).to_have_text("read by 2 of 2")
    await expect(sent).to_have_attribute("data-state", "read")

    await send(pc, "Yes! 🍕")
    await expect(theirs(pa, "Yes!").locator(".sender")).to_have_text("Carol C.")
    await expect(theirs(pb, "Yes!")).to_be_visible()
    await expect(mine(pc, "Yes!").locator(".readby")).to_have_text("read by 2 of 2")
    await screenshot(pa, "desktop-light-group")


async def test_rooms_join_chat_and_keep_history(people: UserFactory) -> None:
    alice = await person(people, A, "Alice")
    bob = await person(people, B, "Bob")
    pa = await alice.page()
    pb = await bob.page()
    await pa.click("#show-rooms")
    await pa.fill("#room-name", "lobby")
    await pa.press("#room-name", "Enter")
    await expect(pa.locator("#conv-title")).to_have_text("#lobby")
    await send(pa, "Welcome to the lobby")
    await expect(mine(pa, "Welcome to the lobby")).to_have_attribute("data-state", "sent")

    await pb.click("#show-rooms")
    room = pb.locator("#room-list li", has_text="#lobby")
    await screenshot(pb, "desktop-light-rooms")
    await room.get_by_role("button", name="Join").click()
    await expect(pb.locator("#conv-title")).to_have_text("#lobby")
    await expect(theirs(pb, "Welcome to the lobby").locator(".sender")).to_have_text(
        re.compile(f"^(Alice|{A})$"))
    await send(pb, "Thanks!")
    await expect(theirs(pa, "Thanks!")).to_be_visible()
    await pb.reload()
    await pb.locator("body.ready").wait_for()
    await expect(pb.locator("#messages .msg")).to_have_count(2)
    await expect(row(pb, "#lobby")).to_be_visible()


async def test_a_private_room_is_joined_by_name_and_password(people: UserFactory) -> None:
    """A private room is listed in the catalogue as private (SPEC 13: name and category only;
    joining needs the password); the rooms dialog also joins one by name."""
    alice = await person(people, A, "Alice")
    bob = await person(people, B, "Bob")
    pa = await alice.page()
    await pa.click("#show-rooms")
    await pa.fill("#room-name", "attic")
    await pa.fill("#room-password", "attic password")
    await pa.press("#room-name", "Enter")
    await expect(pa.locator("#conv-title")).to_have_text("#attic")
    await send(pa, "Up here")

    pb = await bob.page()
    await pb.click("#show-rooms")
    await expect(pb.locator("#room-list li", has_text="#attic")).to_contain_text("private room")
    await pb.fill("#room-join-name", "attic")
    await pb.fill("#room-join-password", "attic password")
    await pb.press("#room-join-name", "Enter")
    await expect(pb.locator("#conv-title")).to_have_text("#attic")
    await expect(theirs(pb, "Up here")).to_be_visible()


async def test_block_refuses_and_unblock_lets_a_retry_through(people: UserFactory) -> None:
    alice = await person(people, A, "Alice")
    bob = await person(people, B, "Bob")
    pa = await alice.page()
    await open_dialogue(pa, B)
    await send(pa, "hello?")
    pb = await bob.page(f"/chat/personal/{B}/{A}/")
    await expect(theirs(pb, "hello?")).to_be_visible()

    # Bob blocks Alice from the conversation's info.
    await pb.click("#conv-info")
    await pb.locator("#info-body").get_by_role("button", name="Block").click()
    await pb.locator("#dlg-confirm-ok").click()  # asked first (issue 18, defect 3)
    await expect(pb.get_by_role("button", name="Unblock")).to_be_visible()
    await pb.locator("#dlg-info [data-close]").click()
    await expect(pb.locator("#conv-note")).to_contain_text("blocked")
    await expect(pb.locator("#conv-sub")).to_contain_text("blocked")

    # Alice's next message is refused: shown as not sent, with the reason and a retry.
    await send(pa, "are you ignoring me")
    refused = mine(pa, "are you ignoring me")
    await expect(refused).to_have_attribute("data-state", "failed")
    await expect(refused.locator(".failed-note")).to_contain_text("blocked")
    await screenshot(pa, "desktop-light-refused")

    # Bob lifts the block in Contacts; Alice retries and it arrives, once.
    await pb.click("#show-contacts")
    await pb.get_by_role("button", name="Unblock").click()
    await expect(pb.locator("#blocked-list-empty")).to_be_visible()
    await pb.locator("#dlg-contacts [data-close]").click()
    await refused.get_by_role("button", name="Retry").click()
    await expect(refused).to_have_attribute("data-state", "read")
    await expect(theirs(pb, "are you ignoring me")).to_have_count(1)


async def test_presence_of_contacts(people: UserFactory) -> None:
    alice = await person(people, A, "Alice")
    bob = await person(people, B, "Bob")
    # Presence is shared between contacts both ways only (issue 12, finding 6).
    for user, phone, name in ((alice, B, "Bobby"), (bob, A, "Alice")):
        resp = await user.context.request.post(user.context.base + "/chat/special/contact",
                                               data=json.dumps({"phone": phone, "name": name}),
                                               headers={"Content-Type": "application/json"})
        assert resp.status == 201, await resp.text()
    pa = await alice.page()
    await open_dialogue(pa, B)
    await expect(pa.locator("#conv-title")).to_have_text("Bobby")
    await expect(pa.locator("#conv-sub")).to_have_text(B)  # never seen online
    pb = await bob.page()
    await expect(pa.locator("#conv-sub")).to_have_text(f"{B} · online")
    await expect(row(pa, "Bobby").locator(".dot")).to_be_visible()
    await pb.close()
    await expect(pa.locator("#conv-sub")).to_have_text(f"{B} · last seen just now")
    await expect(row(pa, "Bobby").locator(".dot")).to_have_count(0)


async def test_older_history_loads_as_you_scroll_up(people: UserFactory, live: ServerProcess) -> None:
    bob = await person(people, B, "Bob")
    # Alice sends 130 messages from a plain WebSocket client while Bob's page is closed.
    start = datetime.now(UTC) - timedelta(hours=3)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as alice:
        async with alice.post(live.url("/register"), allow_redirects=False,
                              data={"phone": A, "name": "Alice", "password": PASSWORD}) as r:
            assert r.status == 302
        ws = await alice.ws_connect(live.url(f"/ws/chat/personal/{A}/{B}/"))
        for i in range(1, 131):
            ts = (start + timedelta(seconds=i)).strftime("%Y-%m-%d %H:%M:%S.%f")
            await ws.send_json(frame("new_msg", A, B, f"message {i}", ts))
            reply = await ws.receive_json(timeout=10)
            assert reply["command"] == "msg_sent", reply
        await ws.close()

    pb = await bob.page()
    alice_row = row(pb, "Alice")
    await expect(alice_row.locator(".badge")).to_have_text("99+")
    await alice_row.click()
    # The newest page, at the bottom.
    await expect(theirs(pb, "message 130")).to_be_in_viewport()
    await expect(pb.locator("#messages .msg")).to_have_count(50)
    await expect(pb.locator("#history-top")).to_be_hidden()
    # Scrolling up loads older pages, keeping the one that was on top in view.
    await pb.locator("#scroller").evaluate("e => { e.scrollTop = 0; }")
    await expect(pb.locator("#messages .msg")).to_have_count(100)
    await expect(theirs(pb, "message 81")).to_be_in_viewport()
    await pb.locator("#scroller").evaluate("e => { e.scrollTop = 0; }")
    await expect(pb.locator("#messages .msg")).to_have_count(130)
    await expect(pb.locator("#history-top")).to_be_visible()
    assert await theirs(pb, "message 1").first.locator(".body").text_content() == "message 1"


async def test_time_labels_by_age(people: UserFactory) -> None:
    alice = await person(people, A, "Alice")
    pa = await alice.page()
    labels = await pa.evaluate("""async () => {
        const t = await import("/static/time.js");
        const now = new Date(2026, 10, 27, 18, 0, 0).getTime();  // Fri 27 Nov 2026, 18:00 local
        const us = (d) => d.getTime() * 1000;
        return [
            t.ageLabel(now * 1000 - 20e6, now),
            t.ageLabel(us(new Date(2026, 10, 27, 14, 5)), now),
            t.ageLabel(us(new Date(2026, 10, 24, 9, 0)), now),
            t.ageLabel(us(new Date(2026, 10, 21, 9, 0)), now),
            t.ageLabel(us(new Date(2026, 10, 19, 9, 0)), now),
            t.formatTs(t.parseTs("2026-11-21T09:00:00.5Z")),
            t.parseTs("2026-11-21 09:00:00.000001") - t.parseTs("2026-11-21T09:00:00Z"),
        ];
    }""")
    assert labels == ["just now", "14:05", "Tue", "Sat", "19 Nov 2026",
                      "2026-11-21 09:00:00.500000", 1]
