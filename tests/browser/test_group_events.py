"""Group events in the browser client (issue 18) in a real browser against a real server: the
`group_event` pushes of PATCH /chat/info/group shown to every member as lines in the group
("Alice added Carol", "Carol is now an admin", "Alice renamed the group to X", "Bob left",
"Alice removed you"), a member added sees the group at once without reloading, the member count
and the read-by counts stay right after someone leaves, and the group panel (views/groupinfo.js):
add, make admin, rename, remove, leave (asked first). Desktop and phone sizes; screenshots
test-output/screenshots/issue18-group-*.png.

Every wait is Playwright's auto-waiting with a timeout; nothing sleeps.
"""

from __future__ import annotations

import re

from playwright.async_api import Page, expect

from helpers.server import ServerProcess

from .conftest import UserFactory, screenshot
from .test_account import json_request
from .test_client import A, B, C, mine, row, send, theirs

PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}
HOSTILE = '<img src=x onerror="window.pwned = 1">Band & "co"'


def lines(page: Page):
    """The group's event lines in the open conversation."""
    return page.locator("#messages li.system")


async def open_panel(page: Page) -> None:
    await page.click("#conv-info")
    await expect(page.locator("#dlg-info")).to_be_visible()


async def test_group_events_for_everyone_and_the_group_panel(people: UserFactory) -> None:
    alice = await people(A, "Alice")
    bob = await people(B, "Bob")
    carol = await people(C, "Carol")
    pa = await alice.page()
    pb = await bob.page()
    pc = await carol.page()
    for page in (pa, pb, pc):
        await page.locator("body.is-online").wait_for()

    # Alice makes a group with Bob.
    await pa.click("#new-group")
    await pa.fill("#group-name", "Trip")
    await pa.fill("#group-phones", B)
    await pa.click("#group-form button[value=create]")
    await expect(pa.locator("#conv-title")).to_have_text("Trip")
    await row(pb, "Trip").click()
    await expect(pb.locator("#conv-sub")).to_have_text("2 members")

    # She adds Carol in the group panel: a line for everyone, at once.
    await open_panel(pa)
    await pa.fill("#group-add", "555 000 0003")  # spaces as people type them
    await pa.locator("#dlg-info").get_by_role("button", name="Add", exact=True).click()
    await expect(pa.locator("#info-body h3")).to_have_text("3 members")
    await expect(pa.locator("#info-body .pick-text", has_text="Carol")).to_have_count(1)
    await pa.locator("#dlg-info [data-close]").click()
    await expect(lines(pa)).to_have_text(["You added Carol"])
    await expect(lines(pb)).to_have_text(["Alice added Carol"])
    await expect(pb.locator("#conv-sub")).to_have_text("3 members")
    # Carol's page was on the list: the group is there without a reload, and says why.
    await expect(row(pc, "Trip")).to_be_visible()
    await expect(row(pc, "Trip").locator(".conv-last")).to_have_text("Alice added you")

    await send(pa, "Who is coming?")
    sent = mine(pa, "Who is coming?")
    await expect(theirs(pb, "Who is coming?")).to_be_visible()
    await expect(sent.locator(".readby")).to_have_text("read by 1 of 2")

    # Carol is made an admin (the panel's button), the group renamed (its form).
    await open_panel(pa)
    await pa.get_by_role("button", name="Make Carol an admin").click()
    await expect(pa.locator("#info-body .pick", has_text="Carol").locator(".muted")).to_have_text(
        f"{C} · admin")
    await expect(pa.get_by_role("button", name="Make Carol an admin")).to_have_count(0)
    await pa.fill("#group-rename", "Summer trip")
    await pa.press("#group-rename", "Enter")
    await expect(pa.locator("#dlg-info-title")).to_have_text("Summer trip")
    await screenshot(pa, "issue18-group-info-desktop")
    await pa.locator("#dlg-info [data-close]").click()
    await expect(lines(pb)).to_have_text(["Alice added Carol", "Carol is now an admin",
                                          "Alice renamed the group to Summer trip"])
    await expect(pb.locator("#conv-title")).to_have_text("Summer trip")
    await expect(row(pb, "Summer trip")).to_be_visible()
    await expect(row(pc, "Summer trip").locator(".conv-last")).to_have_text(
        "Alice renamed the group to Summer trip")

    # Bob leaves: asked first, Cancel keeps him in.
    await open_panel(pb)
    await pb.get_by_role("button", name="Leave group").click()
    await expect(pb.locator("#dlg-confirm-title")).to_have_text("Leave Summer trip?")
    await screenshot(pb, "issue18-group-leave-confirm-desktop")
    await pb.locator("#dlg-confirm").get_by_role("button", name="Cancel").click()
    await expect(pb.locator("#dlg-info")).to_be_visible()
    await expect(pb.locator("#conv-note")).to_be_hidden()
    await pb.get_by_role("button", name="Leave group").click()
    await pb.locator("#dlg-confirm").get_by_role("button", name="Leave group").click()
    await expect(pb.locator("#dlg-info")).to_be_hidden()
    await expect(pb.locator("#conv-note")).to_have_text("You left this group.")
    await expect(lines(pb).last).to_have_text("You left")

    # Alice: the line, the member count, and her message read by the members that remain.
    await expect(lines(pa).last).to_have_text("Bob left")
    await expect(pa.locator("#conv-sub")).to_have_text("2 members")
    await expect(sent.locator(".readby")).to_have_text("read by 0 of 1")
    await screenshot(pa, "issue18-group-events-desktop")

    # Carol opens the group: every change since she was added, in words for her.
    await row(pc, "Summer trip").click()
    await expect(lines(pc)).to_have_text(["Alice added you", "You are now an admin",
                                          "Alice renamed the group to Summer trip", "Bob left"])
    await expect(sent.locator(".readby")).to_have_text("read by 1 of 1")
    await expect(sent).to_have_attribute("data-state", "read")
    # The lines are kept on the device: a reload shows them again.
    await pc.reload()
    await pc.locator("body.ready").wait_for()
    await expect(lines(pc)).to_have_count(4)


async def test_removed_and_added_again_on_a_phone(people: UserFactory, live: ServerProcess) -> None:
    alice = await people(A, "Alice")
    bob = await people(B, "Bob", **PHONE, color_scheme="dark")
    pb = await bob.page()
    await pb.locator("body.is-online").wait_for()
    status, group = await json_request(alice.context, "POST", live.url("/chat/special/group"),
                                       {"name": "Band", "participants": [B]})
    assert status in (200, 201), group
    patch = live.url(f"/chat/info/group?key={group['key']}")
    await row(pb, "Band").click()
    await expect(pb.locator("#compose")).to_be_visible()

    # Removed while looking at the group: said in it, and it can no longer be written to.
    status, _ = await json_request(alice.context, "PATCH", patch, {"remove": [B]})
    assert status == 200
    await expect(lines(pb)).to_have_text(["Alice removed you"])
    await expect(pb.locator("#conv-note")).to_have_text("You are no longer in this group.")
    await expect(pb.locator("#compose")).to_be_hidden()

    # Added again: the group is writable again at once, without a reload.
    status, _ = await json_request(alice.context, "PATCH", patch, {"add": [B]})
    assert status == 200
    await expect(lines(pb)).to_have_text(["Alice removed you", "Alice added you"])
    await expect(pb.locator("#conv-note")).to_be_hidden()
    await expect(pb.locator("#compose")).to_be_visible()
    await send(pb, "I'm back")
    await expect(mine(pb, "I'm back")).to_have_attribute("data-state", "sent")

    # Made an admin, and a hostile name, shown as text.
    status, _ = await json_request(alice.context, "PATCH", patch, {"admins": [B], "name": HOSTILE})
    assert status == 200
    await expect(lines(pb).nth(2)).to_have_text("You are now an admin")
    await expect(lines(pb).nth(3)).to_have_text(f"Alice renamed the group to {HOSTILE}")
    await expect(pb.locator("#conv-title")).to_have_text(HOSTILE)
    assert await pb.evaluate("window.pwned") is None
    await screenshot(pb, "issue18-group-events-phone")

    # Bob, now an admin, renames it from his phone's group panel.
    await open_panel(pb)
    await expect(pb.get_by_role("button", name=re.compile("^Remove (Alice|5550000001)$"))).to_be_visible()
    await pb.fill("#group-rename", "Band 🎸")
    await pb.locator("#dlg-info").get_by_role("button", name="Rename").click()
    await expect(pb.locator("#info-body [role=status]")).to_have_text("Renamed to Band 🎸")
    for button in await pb.locator("#dlg-info button").all():
        box = await button.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, box
    await screenshot(pb, "issue18-group-info-phone")
    await pb.locator("#dlg-info [data-close]").click()
    await expect(lines(pb).last).to_have_text("You renamed the group to Band 🎸")
    await expect(pb.locator("#conv-title")).to_have_text("Band 🎸")
    # A refusal stays in the panel: adding a number that has no account.
    await open_panel(pb)
    await pb.fill("#group-add", "5550000099")
    await pb.locator("#dlg-info").get_by_role("button", name="Add", exact=True).click()
    await expect(pb.locator("#info-body [role=alert]")).to_be_visible()
    await expect(pb.locator("#group-add")).to_have_value("5550000099")
