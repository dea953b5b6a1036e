"""The administration dialog of the client (SPEC 10, admins only) in a real browser, against a
real server in its default registration mode, `invite`: the numbers, the accounts (disable,
make admin, delete) and the invites (create, copy, revoke, and a registration that uses one).

These tests need the server's /chat/admin endpoints and invite registration (issue 12).
Every wait is Playwright's auto-waiting with a timeout; nothing sleeps.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from helpers.accounts import PASSWORD
from helpers.server import ServerProcess, write_config

from .conftest import UserFactory, screenshot
from .test_account import HOSTILE, invited, json_request, log_in, open_profile
from .test_client import A, B, C


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    """As conftest's `live`, with registration by invite only (SPEC 10's default)."""
    config = write_config(tmp_path / "config.toml", {
        "security": {"bcrypt_rounds": 4, "registration": "invite"},
        "limits": {"messages_per_second": 500.0}})
    server = ServerProcess(tmp_path / "chat.db", config, tmp_path).start()
    try:
        await server.wait_serving()
        yield server
    finally:
        server.kill()
    assert "Traceback" not in server.output(), server.output()


def user_row(page: Page, phone: str):
    return page.locator(f"#admin-users-body tr[data-phone='{phone}']")


async def test_admin_invites_someone_and_manages_the_accounts(people: UserFactory,
                                                              live: ServerProcess) -> None:
    alice = await people(A, "Alice")  # the first account: an admin
    await alice.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live.base)
    pa = await alice.page()
    admin_button = pa.locator("#show-admin")
    await expect(admin_button).to_be_visible()
    await admin_button.click()
    dialog = pa.locator("#dlg-admin")
    await expect(dialog).to_be_visible()
    await expect(pa.locator("#admin-stats")).to_contain_text("Users")
    await expect(user_row(pa, A)).to_contain_text("Alice")
    await expect(user_row(pa, A).locator(".row-actions")).to_have_text("you")

    # An invite for two people, valid three days; its link is copied.
    await pa.get_by_label("Uses").fill("2")
    await pa.get_by_label("Valid for days").fill("3")
    await pa.get_by_role("button", name="Create invite").click()
    link = pa.get_by_label("New invite link")
    await expect(link).to_have_value(re.compile(r"/register\?invite="))
    url = await link.input_value()
    await expect(pa.locator("#admin-invites li")).to_have_count(1)
    await expect(pa.locator("#admin-invites li")).to_contain_text("2 of 2 uses left")
    await pa.locator("#admin-invites").get_by_role("button", name=re.compile("^Copy link of invite")).click()
    await expect(pa.locator("#invite-status")).to_have_text("Link copied.")
    assert await pa.evaluate("navigator.clipboard.readText()") == url

    # Bob follows the link and registers, with a hostile name.
    bob = await people(B, HOSTILE, register=False)
    pb = await bob.page(url.replace(re.match(r"https?://[^/]+", url).group(0), ""), ready=False)
    await expect(pb.locator("input[name=invite]")).to_have_count(1)
    await pb.fill("input[name=phone]", B)
    await pb.fill("input[name=name]", HOSTILE)
    await pb.fill("input[name=password]", PASSWORD)
    await pb.click("button[type=submit]")
    await expect(pb).to_have_url(live.url("/chat"))
    await pb.locator("body.ready").wait_for()
    await expect(pb.locator("#show-admin")).to_be_hidden()
    status, _ = await json_request(bob.context, "GET", live.url("/chat/admin/users"))
    assert status == 403

    # Alice sees him, his name as text.
    await pa.keyboard.press("Escape")
    await admin_button.click()
    bob_row = user_row(pa, B)
    await expect(bob_row.locator(".cell-name")).to_have_text(HOSTILE)
    await expect(pa.locator("#admin-invites li")).to_contain_text("1 of 2 uses left")
    assert await pa.locator("#dlg-admin img").count() == 0
    assert await pa.evaluate("window.pwned") is None
    await screenshot(pa, "desktop-light-admin")

    # Disable: his session ends; the keyboard stays on his row.
    await bob_row.get_by_role("button", name=re.compile("^Disable")).click()
    await expect(bob_row.locator("td[data-label=Disabled]")).to_have_text("yes")
    await expect(bob_row.get_by_role("button", name=re.compile("^Enable"))).to_be_focused()
    await expect(pa.locator("#admin-users-status")).to_contain_text("is disabled")
    status, _ = await json_request(bob.context, "GET", live.url("/chat/info"))
    assert status == 401
    assert await log_in(people, live, B, PASSWORD) != 302
    await bob_row.get_by_role("button", name=re.compile("^Enable")).click()
    await expect(bob_row.locator("td[data-label=Disabled]")).to_have_text("no")
    assert await log_in(people, live, B, PASSWORD) == 302

    # Make admin, and take it back.
    await bob_row.get_by_role("button", name=re.compile("^Make admin")).click()
    await expect(bob_row.locator("td[data-label=Admin]")).to_have_text("yes")
    await bob_row.get_by_role("button", name=re.compile("^Revoke admin")).click()
    await expect(bob_row.locator("td[data-label=Admin]")).to_have_text("no")

    # Delete asks first: Escape keeps him, the confirm button deletes him.
    await bob_row.get_by_role("button", name=re.compile("^Delete")).click()
    confirm = pa.locator("#dlg-confirm")
    await expect(confirm).to_be_visible()
    await expect(confirm.get_by_role("button", name="Cancel")).to_be_focused()
    await pa.keyboard.press("Escape")
    await expect(confirm).to_be_hidden()
    await expect(bob_row).to_have_count(1)
    await bob_row.get_by_role("button", name=re.compile("^Delete")).click()
    await confirm.get_by_role("button", name="Delete account").click()
    await expect(bob_row).to_have_count(0)
    status, stats = await json_request(alice.context, "GET", live.url("/chat/admin/stats"))
    assert status == 200 and stats["users"] == 1
    await expect(pa.locator("#admin-stats .stat").first).to_contain_text("1")

    # Revoke the invite: its link no longer registers anyone.
    await pa.locator("#admin-invites").get_by_role("button", name=re.compile("^Revoke")).click()
    await expect(pa.locator("#admin-invites-empty")).to_be_visible()
    carol = await people(C, "Carol", register=False)
    code = url.split("invite=")[1]
    resp = await carol.context.request.post(live.url("/register"), max_redirects=0, form={
        "phone": C, "name": "Carol", "password": PASSWORD, "invite": code})
    assert resp.status == 403


async def test_admin_view_on_a_phone_in_dark_mode(people: UserFactory, live: ServerProcess) -> None:
    phone = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True,
             "device_scale_factor": 2, "color_scheme": "dark"}
    alice = await people(A, "Alice", **phone)
    await invited(people, live, alice, B, "Bob with a rather long name indeed")
    pa = await alice.page()
    await pa.locator("#show-admin").click()
    bob_row = user_row(pa, B)
    await expect(bob_row).to_be_visible()
    # One card per account, inside the screen, each value labelled.
    box = await bob_row.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
    label = await bob_row.locator("td[data-label=Phone]").evaluate(
        "td => getComputedStyle(td, '::before').content")
    assert label == '"Phone"'
    for button in await bob_row.get_by_role("button").all():
        b = await button.bounding_box()
        assert b is not None and b["x"] + b["width"] <= 390
    await screenshot(pa, "phone-dark-admin")
    await pa.keyboard.press("Escape")
    await open_profile(pa)
    await screenshot(pa, "phone-dark-profile")
