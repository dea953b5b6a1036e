"""The account and administration views of the client (SPEC 10) in a real browser, against a
real server: the profile dialog (name, hiding presence, password, deleting the account), the admin
dialog (users, invites, numbers), and the `group_added` notice.

The tests after "against the account API" use the server's /chat/account and /chat/admin
endpoints and invite registration (issue 12, SPEC 10); the first two run on any server of this
release.
Every wait is Playwright's auto-waiting with a timeout; nothing sleeps.
"""

from __future__ import annotations

import json
import re

from playwright.async_api import Page, expect

from helpers.accounts import PASSWORD
from helpers.server import ServerProcess

from .conftest import User, UserFactory, screenshot
from .test_client import A, B, C, open_dialogue, row

NEW_PASSWORD = "a much longer passphrase 42"
HOSTILE = '<img src=x onerror="window.pwned = 1">Bob & "co"'


async def json_request(context: object, method: str, url: str, body: object = None) -> tuple[int, dict]:
    resp = await context.request.fetch(url, method=method, data=None if body is None else json.dumps(body),
                                       headers={"Content-Type": "application/json"})
    try:
        data = await resp.json()
    except Exception:  # noqa: BLE001 - not JSON: the status says enough
        data = {}
    return resp.status, data


async def invited(people: UserFactory, live: ServerProcess, admin: User, phone: str, name: str,
                  **options: object) -> User:
    """Register `phone` with an invite `admin` creates through the API (SPEC 10: the first account
    is free and an admin; the others need an invite unless registration is open)."""
    status, invite = await json_request(admin.context, "POST", live.url("/chat/admin/invites"),
                                        {"uses": 1, "days": 1})
    assert status == 201, invite
    user = await people(phone, name, register=False, **options)
    resp = await user.context.request.post(
        live.url("/register"), form={"phone": phone, "name": name, "password": PASSWORD,
                                     "invite": invite["code"]}, max_redirects=0)
    assert resp.status == 302, await resp.text()
    return user


async def log_in(people: UserFactory, live: ServerProcess, phone: str, password: str) -> int:
    """A fresh browser profile logs in as `phone`: the status of POST /login (302 = in)."""
    device = await people(phone, "device", register=False)
    resp = await device.context.request.post(live.url("/login"), form={"phone": phone, "password": password},
                                             max_redirects=0)
    return resp.status


async def open_profile(page: Page) -> None:
    await page.click("#show-profile")
    await expect(page.locator("#dlg-profile")).to_be_visible()


# -- the profile: what runs without the account API ---------------------------------------------


async def test_profile_dialog_checks_passwords_before_asking_the_server(people: UserFactory) -> None:
    await people(C, "Carol")  # the first account, an admin (SPEC 10); Alice is not
    alice = await people(A, "Alice")
    pa = await alice.page()
    asked: list[str] = []
    pa.on("request", lambda r: asked.append(r.url) if "/chat/account" in r.url else None)

    # Keyboard: the header's button opens the dialog; Escape closes it and gives the focus back.
    await pa.locator("#show-profile").focus()
    await pa.keyboard.press("Enter")
    dialog = pa.locator("#dlg-profile")
    await expect(dialog).to_be_visible()
    await expect(pa.get_by_label("The name others see")).to_have_value("Alice")
    await expect(pa.get_by_label("Hide my online status")).to_be_visible()
    await expect(pa.locator("#pw-hint")).to_contain_text("At least 10 characters")
    # Every field has a label.
    for label in ("Current password", "New password", "Repeat the new password"):
        await expect(pa.get_by_label(label, exact=True)).to_be_visible()

    await pa.get_by_label("Current password").fill(PASSWORD)
    await pa.get_by_label("New password", exact=True).fill("short")
    await pa.get_by_label("Repeat the new password").fill("short")
    # The browser's own check (minlength) would stop a click; the form's check must hold too.
    await pa.locator("#password-form").evaluate("f => { f.noValidate = true; }")
    await pa.locator("#password-form button[type=submit]").click()
    await expect(pa.locator("#password-error")).to_have_text("The new password needs at least 10 characters.")
    await expect(pa.get_by_label("New password", exact=True)).to_have_attribute("aria-invalid", "true")
    await expect(pa.get_by_label("New password", exact=True)).to_be_focused()
    await pa.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    await pa.get_by_label("Repeat the new password").fill(NEW_PASSWORD + "!")
    await pa.locator("#password-form button[type=submit]").click()
    await expect(pa.locator("#password-error")).to_have_text("The two new passwords differ.")
    await expect(pa.get_by_label("Repeat the new password")).to_be_focused()
    assert asked == []

    # Deleting asks for the password in a second step, which Cancel takes back.
    await pa.get_by_role("button", name="Delete my account…").click()
    await expect(pa.locator("#delete-form")).to_be_visible()
    await expect(pa.locator("#delete-password")).to_be_focused()
    await expect(pa.get_by_role("button", name="Delete my account…")).to_be_hidden()
    await pa.get_by_role("button", name="Cancel").click()
    await expect(pa.locator("#delete-form")).to_be_hidden()
    await expect(pa.get_by_role("button", name="Delete my account…")).to_be_focused()
    assert asked == []
    await screenshot(pa, "desktop-light-profile")

    await pa.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(pa.locator("#show-profile")).to_be_focused()
    # Not an admin: no admin button.
    await expect(pa.locator("#show-admin")).to_be_hidden()


async def test_group_added_refreshes_the_groups_and_says_who(people: UserFactory,
                                                             live: ServerProcess) -> None:
    """The client side of the `group_added` push: the frame is put on Bob's receive socket here
    (the server relays everything else), so that this runs on a server that does not send it yet."""
    alice = await people(A, HOSTILE)
    bob = await people(B, "Bob")
    sockets: list[object] = []

    async def relay(ws: object) -> None:
        ws.connect_to_server()
        sockets.append(ws)
    await bob.context.route_web_socket(re.compile(f"/ws/chat/special/{B}/$"), relay)
    pb = await bob.page()
    await expect(pb.locator("#offline")).to_be_hidden()
    assert len(sockets) == 1

    status, group = await json_request(alice.context, "POST", live.url("/chat/special/group"),
                                       {"name": "Book club <b>", "participants": [B]})
    assert status in (200, 201), group
    # An unknown command is ignored; then the announcement.
    sockets[0].send(json.dumps({"command": "something_new", "msg_from": A, "msg_to": B,
                                "message": "x", "sent_timestamp": "2026-01-01 00:00:00"}))
    sockets[0].send(json.dumps({"command": "group_added", "msg_from": A, "msg_to": B,
                                "message": group["key"], "sent_timestamp": "2026-01-01 00:00:00"}))
    toast = pb.locator("#toast")
    await expect(toast).to_have_text(f"{HOSTILE} added you to Book club <b>")
    await expect(row(pb, "Book club <b>")).to_be_visible()
    assert await pb.locator("#toast img, #toast b, #conversations b").count() == 0
    assert await pb.evaluate("window.pwned") is None
    # A frame with a malformed key changes nothing and says nothing.
    await pb.evaluate("document.getElementById('toast').hidden = true")
    sockets[0].send(json.dumps({"command": "group_added", "msg_from": A, "msg_to": B,
                                "message": "../../x", "sent_timestamp": "2026-01-01 00:00:00"}))
    sockets[0].send(json.dumps({"command": "group_added", "msg_from": A, "msg_to": B,
                                "message": group["key"], "sent_timestamp": "2026-01-01 00:00:00"}))
    await expect(toast).to_be_visible()
    await expect(pb.locator("#conversations .conv")).to_have_count(1)


# -- the profile against the account API --------------------------------------------------------


async def test_profile_changes_name_presence_and_password(people: UserFactory, live: ServerProcess) -> None:
    alice = await people(A, "Alice")  # the first account: an admin
    bob = await invited(people, live, alice, B, "Bob")
    pb = await bob.page()
    other = await people(B, "Bob's phone", register=False)
    resp = await other.context.request.post(live.url("/login"), form={"phone": B, "password": PASSWORD},
                                            max_redirects=0)
    assert resp.status == 302

    await open_profile(pb)
    name = pb.get_by_label("The name others see")
    await name.fill("Bob Builder")
    await name.press("Enter")
    await expect(pb.locator("#name-status")).to_have_text("Saved.")
    await expect(pb.locator("#me-name")).to_have_text("Bob Builder")
    status, info = await json_request(bob.context, "GET", live.url("/chat/info"))
    assert (status, info["name"], info["admin"]) == (200, "Bob Builder", False)

    await pb.get_by_label("Hide my online status").check()
    await expect(pb.locator("#presence-status")).to_have_text("Your online status is hidden.")
    status, account = await json_request(bob.context, "PATCH", live.url("/chat/account"), {})
    if status == 200:  # an empty change may be refused; when answered, it says hidden
        assert account["hide_presence"] is True

    # The server's refusals, next to the field they concern.
    current = pb.get_by_label("Current password")
    new = pb.get_by_label("New password", exact=True)
    repeat = pb.get_by_label("Repeat the new password")
    await current.fill("not my password at all")
    await new.fill(NEW_PASSWORD)
    await repeat.fill(NEW_PASSWORD)
    await repeat.press("Enter")
    await expect(pb.locator("#password-error")).to_have_text("The current password is wrong.")
    await expect(current).to_have_attribute("aria-invalid", "true")
    await expect(current).to_be_focused()
    await current.fill(PASSWORD)
    await new.fill("1234567890")  # ten characters, and the commonest of passwords
    await repeat.fill("1234567890")
    await repeat.press("Enter")
    await expect(pb.locator("#password-error")).to_be_visible()
    await expect(pb.locator("#password-error")).not_to_have_text("")
    await expect(new).to_have_attribute("aria-invalid", "true")
    await screenshot(pb, "desktop-light-profile-error")

    await new.fill(NEW_PASSWORD)
    await repeat.fill(NEW_PASSWORD)
    await repeat.press("Enter")
    await expect(pb.locator("#password-status")).to_have_text(
        "Password changed. Your other devices are logged out.")
    await expect(pb.locator("#password-error")).to_be_hidden()
    # The other device is logged out; this one is not; the new password logs in.
    status, _ = await json_request(other.context, "GET", live.url("/chat/info"))
    assert status == 401
    status, _ = await json_request(bob.context, "GET", live.url("/chat/info"))
    assert status == 200
    assert await log_in(people, live, B, PASSWORD) != 302
    assert await log_in(people, live, B, NEW_PASSWORD) == 302

    # The setting shows again after a reload.
    await pb.reload()
    await pb.locator("body.ready").wait_for()
    await open_profile(pb)
    await expect(pb.get_by_label("Hide my online status")).to_be_checked()
    await expect(pb.get_by_label("The name others see")).to_have_value("Bob Builder")


async def test_delete_account_needs_the_password_and_forgets_the_device(
        people: UserFactory, live: ServerProcess) -> None:
    alice = await people(A, "Alice")
    bob = await invited(people, live, alice, B, "Bob")
    pb = await bob.page()
    # Something in the history on this device.
    await open_dialogue(pb, A)
    await expect(row(pb, "Alice")).to_be_visible()

    await open_profile(pb)
    await pb.get_by_role("button", name="Delete my account…").click()
    password = pb.get_by_label("Password", exact=True)
    await password.fill("not my password at all")
    await pb.get_by_role("button", name="Delete my account for good").click()
    await expect(pb.locator("#delete-error")).to_be_visible()
    await expect(password).to_have_attribute("aria-invalid", "true")
    status, _ = await json_request(bob.context, "GET", live.url("/chat/info"))
    assert status == 200  # still there

    await password.fill(PASSWORD)
    await pb.get_by_role("button", name="Delete my account for good").click()
    await expect(pb).to_have_url(live.url("/login"))
    names = await pb.evaluate("async () => (await indexedDB.databases()).map((d) => d.name)")
    assert f"chat-{B}" not in names
    assert await log_in(people, live, B, PASSWORD) != 302
    status, users = await json_request(alice.context, "GET", live.url("/chat/admin/users"))
    assert status == 200 and [u["phone"] for u in users["users"]] == [A]


async def test_group_added_from_the_server(people: UserFactory, live: ServerProcess) -> None:
    """The server announces the new group on the member's receive socket (SPEC 10)."""
    alice = await people(A, "Alice")
    bob = await invited(people, live, alice, B, "Bob")
    pb = await bob.page()
    # Announced on the receive socket only: wait until it is open (the banner is hidden before).
    await pb.locator("body.is-online").wait_for()
    status, _ = await json_request(alice.context, "POST", live.url("/chat/special/group"),
                                   {"name": "Hiking", "participants": [B]})
    assert status in (200, 201)
    await expect(pb.locator("#toast")).to_have_text(re.compile(f"^(Alice|{A}) added you to Hiking$"))
    await expect(row(pb, "Hiking")).to_be_visible()
