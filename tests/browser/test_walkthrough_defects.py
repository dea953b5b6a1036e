"""The client's defects found in the walkthrough of issue 18 (numbered as in the issue), each
proved fixed in a real Chromium against a real server, at desktop and phone sizes where the size
matters. Screenshots: test-output/screenshots/issue18-defect-N-*.png.

Every wait is Playwright's auto-waiting (`expect`, `wait_for`) with a timeout; nothing sleeps.
"""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Page, expect

from helpers.accounts import PASSWORD
from helpers.server import ServerProcess

from .conftest import User, UserFactory, screenshot
from .test_client import A, B, C, mine, open_dialogue, send

PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True,
         "device_scale_factor": 2}
DESKTOP = {"viewport": {"width": 1200, "height": 760}}
SIZES = pytest.mark.parametrize("size", ["desktop", "phone"])
ROOM_PASSWORD = "attic password"


def sized(size: str) -> dict[str, object]:
    return PHONE if size == "phone" else DESKTOP


async def databases(page: Page) -> list[str]:
    return await page.evaluate("async () => (await indexedDB.databases()).map((d) => d.name)")


async def create_private_room(page: Page, name: str) -> None:
    await page.click("#show-rooms")
    await page.fill("#room-name", name)
    await page.fill("#room-password", ROOM_PASSWORD)
    await page.press("#room-name", "Enter")
    await expect(page.locator("#conv-title")).to_have_text(f"#{name}")


async def log_in(page: Page, user: User, typed_phone: str) -> None:
    """The login form, with the phone number as `typed_phone`."""
    await page.goto(user.context.base + "/login")
    await page.fill("input[name=phone]", typed_phone)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")


# -- 1. errors inside tall dialogs ----------------------------------------------------------------


@SIZES
async def test_defect_1_an_error_in_the_contacts_dialog_is_shown_there_and_keeps_the_input(
        people: UserFactory, size: str) -> None:
    alice = await people(A, "Alice", **sized(size))
    await people(B, "Bob")
    pa = await alice.page()
    await pa.click("#show-contacts")
    dialog = pa.locator("#dlg-contacts")
    await pa.fill("#contact-phone", "+44 7700 900123")  # well formed, but nobody has it
    await pa.fill("#contact-name", "Nobody")
    await dialog.get_by_role("button", name="Add", exact=True).click()

    error = dialog.get_by_role("alert")
    await expect(error).to_have_text("No account has the phone number 447700900123")
    await expect(error).to_be_in_viewport()
    await expect(pa.locator("#toast")).to_be_hidden()  # not behind the dialog
    await expect(pa.locator("#contact-phone")).to_have_value("+44 7700 900123")
    await expect(pa.locator("#contact-name")).to_have_value("Nobody")
    await screenshot(pa, f"issue18-defect-1-{size}-error-in-dialog")

    # Corrected, it is saved: the error goes and the form empties.
    await pa.fill("#contact-phone", "555 000 0002")
    await pa.fill("#contact-name", "Bob")
    await dialog.get_by_role("button", name="Add", exact=True).click()
    await expect(pa.locator("#contact-list")).to_contain_text("Bob")
    await expect(dialog.locator(".dialog-error")).to_be_hidden()
    await expect(pa.locator("#contact-phone")).to_have_value("")


# -- 2. a private room is labelled private -------------------------------------------------------


async def test_defect_2_a_private_room_is_labelled_private(people: UserFactory) -> None:
    alice = await people(A, "Alice")
    bob = await people(B, "Bob", **PHONE)
    pa = await alice.page()
    await create_private_room(pa, "attic")
    await expect(pa.locator("#conv-sub")).to_have_text("private room")

    # Bob follows a link: the room asks for its password, and says it is private.
    pb = await bob.page("/chat/room/attic/")
    await expect(pb.locator("#conv-note")).to_contain_text("This room is private")
    await expect(pb.locator("#conv-sub")).to_have_text("private room")
    await screenshot(pb, "issue18-defect-2-phone-private-room-asks-password")
    await pb.get_by_label("Room password").fill(ROOM_PASSWORD)
    await pb.get_by_role("button", name="Enter").click()
    await expect(pb.locator("#compose")).to_be_visible()
    await expect(pb.locator("#conv-sub")).to_have_text("private room")
    await screenshot(pa, "issue18-defect-2-desktop-private-room-header")


# -- 3. confirmation before leaving a group or blocking -------------------------------------------


@SIZES
async def test_defect_3_leave_group_and_block_ask_first(people: UserFactory, size: str) -> None:
    alice = await people(A, "Alice", **sized(size))
    await people(B, "Bob")
    pa = await alice.page()
    await pa.click("#new-group")
    await pa.fill("#group-name", "Trip")
    await pa.fill("#group-phones", "555 000 0002")
    await pa.locator("#dlg-group").get_by_role("button", name="Create group").click()
    await expect(pa.locator("#conv-title")).to_have_text("Trip")

    confirm = pa.locator("#dlg-confirm")
    await pa.click("#conv-info")
    await pa.locator("#info-body").get_by_role("button", name="Leave group").click()
    await expect(confirm).to_be_visible()
    await expect(confirm).to_contain_text("Leave Trip?")
    await screenshot(pa, f"issue18-defect-3-{size}-leave-group-asks")
    await confirm.get_by_role("button", name="Cancel").click()
    await expect(confirm).to_be_hidden()
    await expect(pa.locator("#dlg-info")).to_be_visible()  # still in it, nothing happened
    await pa.locator("#dlg-info [data-close]").click()
    await expect(pa.locator("#compose")).to_be_visible()

    await pa.click("#conv-info")
    await pa.locator("#info-body").get_by_role("button", name="Leave group").click()
    await pa.locator("#dlg-confirm-ok").click()
    await expect(pa.locator("#conv-note")).to_have_text("You left this group.")

    # Blocking asks too; Cancel leaves Bob unblocked.
    if size == "phone":
        await pa.click("#back")
    await open_dialogue(pa, B)
    await pa.click("#conv-info")
    await pa.locator("#info-body").get_by_role("button", name="Block").click()
    await expect(confirm).to_contain_text("Block Bob?")
    await screenshot(pa, f"issue18-defect-3-{size}-block-asks")
    await confirm.get_by_role("button", name="Cancel").click()
    await expect(pa.locator("#info-body").get_by_role("button", name="Block")).to_be_visible()
    await expect(pa.locator("#conv-sub")).not_to_contain_text("blocked")
    await pa.locator("#info-body").get_by_role("button", name="Block").click()
    await pa.locator("#dlg-confirm-ok").click()
    await expect(pa.locator("#info-body").get_by_role("button", name="Unblock")).to_be_visible()
    await expect(pa.locator("#conv-sub")).to_contain_text("blocked")


# -- 4. phone numbers as people type them ----------------------------------------------------------


async def test_defect_4_phone_numbers_are_taken_as_typed_everywhere(people: UserFactory,
                                                                    live: ServerProcess) -> None:
    newcomer = await people("447700900123", "Nia", register=False)
    await people(A, "Alice")
    await people(B, "Bob")
    await people(C, "Carol")

    # Register: "+44 7700 900123" becomes 447700900123 (the server takes digits only, SPEC 1).
    pn = await newcomer.page("/register", ready=False)
    await pn.fill("input[name=phone]", "+44 7700 900")  # too short: explained, kept, not sent
    await pn.fill("input[name=name]", "Nia")
    await pn.fill("input[name=password]", PASSWORD)
    await pn.click("button[type=submit]")
    await expect(pn.get_by_role("alert")).to_contain_text("10 to 15 digits")
    await expect(pn.locator("input[name=phone]")).to_have_value("+44 7700 900")
    await expect(pn.locator("input[name=phone]")).to_have_attribute("aria-invalid", "true")
    await screenshot(pn, "issue18-defect-4-desktop-register-explains")
    await pn.fill("input[name=phone]", "+44 7700 900123")
    await pn.click("button[type=submit]")
    await expect(pn).to_have_url(live.url("/chat"))
    await expect(pn.locator("#me-phone")).to_have_text("447700900123")

    # Log in with dashes and brackets.
    alice = await people(A, "Alice", register=False)
    pa = await alice.page("/login", ready=False)
    await log_in(pa, alice, "555-000-000x")
    await expect(pa.get_by_role("alert")).to_contain_text("use digits")
    await expect(pa.locator("input[name=phone]")).to_have_value("555-000-000x")
    await log_in(pa, alice, "(555) 000-0001")
    await expect(pa).to_have_url(live.url("/chat"))
    await pa.locator("body.ready").wait_for()

    # Start a chat: explained and kept when wrong, normalised when right.
    await pa.fill("#peer", "+555 000")
    await pa.press("#peer", "Enter")
    await expect(pa.locator("#peer-error")).to_contain_text("10 to 15 digits")
    await expect(pa.locator("#peer")).to_have_value("+555 000")
    await screenshot(pa, "issue18-defect-4-desktop-new-chat-explains")
    await pa.fill("#peer", "+555 000 0002")
    await pa.press("#peer", "Enter")
    await expect(pa).to_have_url(re.compile(f"/chat/personal/[0-9]+/{B}/$"))
    await expect(pa.locator("#conv-title")).to_have_text("Bob")

    # A new group with typed numbers, then one more added from the group's info.
    await pa.click("#new-group")
    await pa.fill("#group-name", "Trip")
    await pa.fill("#group-phones", "555 000 0002, 555-000-00")
    await pa.locator("#dlg-group").get_by_role("button", name="Create group").click()
    await expect(pa.locator("#dlg-group").get_by_role("alert")).to_contain_text("10 to 15 digits")
    await expect(pa.locator("#group-phones")).to_have_value("555 000 0002, 555-000-00")
    await pa.fill("#group-phones", "555 000 0002")
    await pa.locator("#dlg-group").get_by_role("button", name="Create group").click()
    await expect(pa.locator("#conv-title")).to_have_text("Trip")
    await pa.click("#conv-info")
    await pa.get_by_label("Phone number to add").fill("(555) 000-0003")
    await pa.locator("#info-body").get_by_role("button", name="Add").click()
    await expect(pa.locator("#info-body")).to_contain_text(C)
    await expect(pa.locator("#conv-sub")).to_have_text("3 members")


# -- 5. the offline banner inside a conversation on a phone ----------------------------------------


async def test_defect_5_the_offline_banner_shows_inside_a_conversation_on_a_phone(
        people: UserFactory) -> None:
    alice = await people(A, "Alice", **PHONE)
    await people(B, "Bob")
    pa = await alice.page()
    await open_dialogue(pa, B)
    await expect(pa.locator(".sidebar")).to_be_hidden()
    await alice.context.set_offline(True)
    banner = pa.get_by_role("status").filter(has_text="Offline")
    await expect(banner).to_be_visible()
    await expect(banner).to_be_in_viewport()
    await expect(banner.get_by_role("button", name="Retry now")).to_be_visible()
    await screenshot(pa, "issue18-defect-5-phone-offline-in-conversation")
    await alice.context.set_offline(False)
    await expect(banner).to_be_hidden(timeout=30_000)


# -- 6. a long paste is not cut: the page offers to split it ---------------------------------------


@pytest.mark.parametrize("live", [{"max_message_chars": 500}], indirect=True)
async def test_defect_6_a_paste_over_the_limit_is_not_cut_and_can_be_split(
        people: UserFactory) -> None:
    alice = await people(A, "Alice")
    await people(B, "Bob")
    pa = await alice.page()
    await open_dialogue(pa, B)
    words = [f"word{i:04d}" for i in range(120)]
    text = " ".join(words)
    assert len(text) == 1079
    await pa.focus("#text")
    await pa.keyboard.insert_text(text)  # as a paste: one input event
    await expect(pa.locator("#text")).to_have_value(text)  # nothing cut
    note = pa.locator("#too-long")
    await expect(note).to_be_visible()
    await expect(note).to_contain_text("1,079 characters")
    await expect(note).to_contain_text("at most 500")  # the server's limit, from the page
    await screenshot(pa, "issue18-defect-6-desktop-too-long")
    # Enter sends nothing: the note stays.
    await pa.press("#text", "Enter")
    await expect(pa.locator("#text")).to_have_value(text)
    await expect(pa.locator("#messages .msg")).to_have_count(0)

    await note.get_by_role("button", name="Send as 3 messages").click()
    await expect(note).to_be_hidden()
    await expect(pa.locator("#text")).to_have_value("")
    bubbles = pa.locator("#messages .msg.mine")
    await expect(bubbles).to_have_count(3)
    for i in range(3):
        await expect(bubbles.nth(i)).to_have_attribute("data-state", re.compile("sent|received|read"))
    parts = [await bubbles.nth(i).locator(".body").inner_text() for i in range(3)]
    assert all(len(p) <= 500 for p in parts), [len(p) for p in parts]
    assert " ".join(parts).split() == words  # every word, in order, cut between words
    await screenshot(pa, "issue18-defect-6-desktop-split-sent")


# -- 7. the private-room password once per user; Enter submits ------------------------------------


async def test_defect_7_the_room_password_is_not_asked_after_a_new_login_and_enter_submits(
        people: UserFactory, live: ServerProcess) -> None:
    alice = await people(A, "Alice")
    bob = await people(B, "Bob")
    pa = await alice.page()
    await create_private_room(pa, "attic")
    await send(pa, "Up here")

    pb = await bob.page("/chat/room/attic/")
    password = pb.get_by_label("Room password")
    await password.fill(ROOM_PASSWORD)
    await password.press("Enter")  # Enter in the field joins
    await expect(pb.locator("#compose")).to_be_visible()
    await expect(pb.locator("#messages")).to_contain_text("Up here")

    # Bob logs out (keeping the history) and in again on the same browser: no password asked.
    await pb.get_by_role("button", name="Log out").click()
    await pb.locator("#dlg-logout").get_by_role("button", name="Log out").click()
    await expect(pb).to_have_url(live.url("/login"))
    await log_in(pb, bob, B)
    await expect(pb).to_have_url(live.url("/chat"))
    await pb.goto(live.url("/chat/room/attic/"))
    await pb.locator("body.ready").wait_for()
    await expect(pb.locator("#compose")).to_be_visible()
    await expect(pb.locator("#conv-note")).to_be_hidden()
    await send(pb, "back again")
    await expect(pa.locator("#messages")).to_contain_text("back again")
    await screenshot(pb, "issue18-defect-7-desktop-room-after-login")
    # So is its creator after a new login (the server grants the user, not the session).
    pa2 = await alice.page("/chat/room/attic/")
    await expect(pa2.locator("#compose")).to_be_visible()


# -- 8. initials, Unblock for a blocked contact, old errors cleared -------------------------------


async def test_defect_8_initials_unblock_and_errors_cleared_after_success(people: UserFactory) -> None:
    alice = await people(A, "Alice")
    await people(B, "Bob")
    pa = await alice.page()
    # A refused start, then a good one: the refusal does not stay on screen.
    await pa.fill("#peer", "5559999999")
    await pa.press("#peer", "Enter")
    await expect(pa.locator("#toast")).to_have_text("No account has this phone number")
    await pa.fill("#peer", B)
    await pa.press("#peer", "Enter")
    await expect(pa.locator("#conv-title")).to_have_text("Bob")
    await expect(pa.locator("#toast")).to_be_hidden()

    await pa.click("#show-contacts")
    dialog = pa.locator("#dlg-contacts")
    await pa.fill("#contact-phone", B)
    await pa.fill("#contact-name", "Carol (cousin)")
    await dialog.get_by_role("button", name="Add", exact=True).click()
    contact = pa.locator("#contact-list li", has_text="Carol (cousin)")
    await expect(contact.locator(".avatar")).to_have_text("CC")
    await expect(pa.locator("#conv-avatar .avatar")).to_have_text("CC")

    await contact.get_by_role("button", name="Block Carol (cousin)", exact=True).click()
    await pa.locator("#dlg-confirm-ok").click()
    await expect(contact.get_by_role("button", name="Unblock Carol (cousin)")).to_be_visible()
    await expect(contact.get_by_role("button", name="Block Carol (cousin)", exact=True)).to_have_count(0)
    await screenshot(pa, "issue18-defect-8-desktop-contact-unblock-initials")
    await contact.get_by_role("button", name="Unblock Carol (cousin)").click()
    await expect(contact.get_by_role("button", name="Block Carol (cousin)", exact=True)).to_be_visible()


# -- 9. Remove at logout really deletes the history ------------------------------------------------


async def test_defect_9_remove_at_logout_deletes_the_history_even_while_a_tab_holds_it(
        people: UserFactory, live: ServerProcess) -> None:
    alice = await people(A, "Alice")
    await people(B, "Bob")
    pa = await alice.page()
    await open_dialogue(pa, B)
    await send(pa, "a secret")
    await expect(mine(pa, "a secret")).to_have_attribute("data-state", re.compile("sent|received"))
    # Another tab of this browser holds the history open and ignores `versionchange` (a tab of
    # an older page, or one the browser froze): the deletion is blocked until it lets go.
    holder = await alice.context.new_page()
    await holder.goto(live.url("/static/manifest.webmanifest"))
    await holder.evaluate(f"""() => new Promise((resolve, reject) => {{
        const req = indexedDB.open("chat-{A}");
        req.onsuccess = () => {{ window.held = req.result; resolve(); }};
        req.onerror = () => reject(req.error);
    }})""")

    await pa.get_by_role("button", name="Log out").click()
    await pa.get_by_role("radio", name="Remove it").check()
    await pa.locator("#dlg-logout").get_by_role("button", name="Log out").click()
    # The page waits, and says why, instead of leaving with the history still readable.
    await expect(pa.locator("#logout-status")).to_contain_text("close the chat's other tabs")
    await screenshot(pa, "issue18-defect-9-desktop-logout-waits-for-tabs")
    assert pa.url.endswith("/chat/personal/" + A + "/" + B + "/")
    await holder.evaluate("() => window.held.close()")
    await expect(pa).to_have_url(live.url("/login"))
    assert f"chat-{A}" not in await databases(pa)
    assert f"chat-{A}" not in await databases(holder)
    # Nothing left to read: opening it makes a new, empty database (deleted again after).
    stores = await holder.evaluate(f"""() => new Promise((resolve) => {{
        const req = indexedDB.open("chat-{A}");
        req.onsuccess = () => {{
          const names = [...req.result.objectStoreNames];
          req.result.close();
          indexedDB.deleteDatabase("chat-{A}").onsuccess = () => resolve(names);
        }};
    }})""")
    assert stores == []


async def test_defect_9_remove_with_a_second_chat_tab_open_deletes_the_history(
        people: UserFactory, live: ServerProcess) -> None:
    alice = await people(A, "Alice", **PHONE)
    await people(B, "Bob")
    pa = await alice.page()
    await open_dialogue(pa, B)
    await send(pa, "a secret")
    other = await alice.page()  # the chat in a second tab: it lets go on `versionchange`
    await pa.click("#back")
    await pa.get_by_role("button", name="Log out").click()
    await pa.get_by_role("radio", name="Remove it").check()
    await screenshot(pa, "issue18-defect-9-phone-logout-remove")
    await pa.locator("#dlg-logout").get_by_role("button", name="Log out").click()
    await expect(pa).to_have_url(live.url("/login"))
    assert f"chat-{A}" not in await databases(other)
