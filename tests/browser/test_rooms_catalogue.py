"""The room catalogue of the browser client (SPEC 13, issue 18) in a real browser against a real
server: searching rooms by name, the category filter built from the results, private rooms shown
with a lock as "private room", online counts, saving a room (in the conversation list, on
another device too) and unsaving it, creating a room with a category, and closing one's own room
(asked first; everyone in it sees "This room was closed." and their client stops reconnecting).
Desktop and phone sizes; screenshots test-output/screenshots/issue18-rooms-*.png.

Every wait is Playwright's auto-waiting with a timeout; nothing sleeps.
"""

from __future__ import annotations

import re

from playwright.async_api import Page, expect

from helpers.server import ServerProcess

from .conftest import UserFactory, screenshot
from .test_account import json_request
from .test_client import A, B, C, mine, row, send, theirs
from .test_devices import second_device

PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}
ROOM_PASSWORD = "attic password"


def room_row(page: Page, name: str):
    title = page.locator(".room-name", has_text=re.compile(f"^#{re.escape(name)}$"))
    return page.locator("#room-list li.room", has=title)


async def open_catalogue(page: Page) -> None:
    await page.click("#show-rooms")
    await expect(page.locator("#dlg-rooms")).to_be_visible()
    await expect(page.locator("#room-list")).to_have_attribute("aria-busy", "false")


async def make_room(user, live: ServerProcess, name: str, category: str | None = None,
                    password: str | None = None) -> None:
    body: dict[str, str] = {"room_name": name}
    if category is not None:
        body["category"] = category
    if password is not None:
        body["password"] = password
    status, data = await json_request(user.context, "POST", live.url("/chat/special/room"), body)
    assert status == 201, data


def room_sockets(page: Page, name: str) -> list[str]:
    """Every WebSocket this page opens to room `name`, from now on."""
    opened: list[str] = []

    def on_socket(ws: object) -> None:
        if ws.url.endswith(f"/ws/chat/room/{name}/"):
            opened.append(ws.url)
    page.on("websocket", on_socket)
    return opened


async def test_search_filter_save_and_close_rooms(people: UserFactory, live: ServerProcess) -> None:
    alice = await people(A, "Alice")
    bob = await people(B, "Bob")
    pa = await alice.page()
    pb = await bob.page()

    # Alice creates a room with a category through the catalogue; she is in it (its socket).
    await open_catalogue(pa)
    await pa.fill("#room-name", "lobby")
    await pa.fill("#room-new-category", "Sports")
    await pa.click("#room-form button[type=submit]")
    await expect(pa.locator("#conv-title")).to_have_text("#lobby")
    await send(pa, "Welcome to the lobby")
    await expect(mine(pa, "Welcome to the lobby")).to_have_attribute("data-state", "sent")
    await make_room(alice, live, "chess-club", "Games")
    await make_room(alice, live, "attic", "Games", ROOM_PASSWORD)
    await make_room(alice, live, "news")

    # A name that is taken: the reason is in the dialog, and what was typed stays.
    await open_catalogue(pa)
    await pa.fill("#room-name", "news")
    await pa.fill("#room-new-category", "Daily")
    await pa.click("#room-form button[type=submit]")
    await expect(pa.locator("#room-create-error")).to_have_text("a room with this name exists")
    await expect(pa.locator("#room-create-error")).to_be_visible()
    await expect(pa.locator("#room-name")).to_have_value("news")
    await expect(pa.locator("#room-new-category")).to_have_value("Daily")
    await pa.locator("#dlg-rooms [data-close]").click()

    # Bob browses: every room, newest first, private labelled with a lock, categories, online.
    await open_catalogue(pb)
    names = pb.locator("#room-list .room-name")
    await expect(names).to_have_text(["#news", "#attic", "#chess-club", "#lobby"])
    attic = room_row(pb, "attic")
    await expect(attic.locator(".room-kind")).to_have_text("private room")
    await expect(attic.locator(".room-kind.private svg.icon")).to_have_count(1)
    await expect(attic.get_by_label("Password of #attic")).to_be_visible()
    await expect(room_row(pb, "lobby").locator(".room-kind")).to_have_text("public room")
    await expect(room_row(pb, "lobby").locator(".room-category")).to_have_text("Sports")
    await expect(room_row(pb, "lobby").locator(".room-online")).to_have_text("1 online")  # Alice
    await expect(room_row(pb, "news").locator(".room-category")).to_have_count(0)
    await expect(room_row(pb, "news").locator(".room-online")).to_have_text("0 online")
    # Bob closes nothing of Alice's.
    await expect(pb.locator("#room-list").get_by_role("button", name=re.compile("^Close #"))).to_have_count(0)
    # The categories come from the results.
    await expect(pb.locator("#room-category option")).to_have_text(["All categories", "Games", "Sports"])
    await screenshot(pb, "issue18-rooms-catalogue-desktop")

    await pb.select_option("#room-category", "Games")
    await expect(names).to_have_text(["#attic", "#chess-club"])
    await expect(pb.locator("#room-category")).to_have_value("Games")
    await expect(pb.locator("#room-category option")).to_have_text(["All categories", "Games", "Sports"])
    await pb.fill("#room-search", "CHESS")
    await expect(names).to_have_text(["#chess-club"])
    await pb.select_option("#room-category", "Sports")
    await expect(pb.locator("#room-list-empty")).to_have_text("No rooms match.")
    await expect(names).to_have_count(0)
    await pb.select_option("#room-category", "")
    await pb.fill("#room-search", "")
    await expect(names).to_have_count(4)
    # A search the server refuses (control characters): the reason in the dialog.
    await pb.fill("#room-search", "a\u0007b")
    await expect(pb.locator("#room-error")).to_be_visible()
    await pb.fill("#room-search", "")
    await expect(pb.locator("#room-error")).to_be_hidden()

    # Saving: the room is in Bob's list, starred, and on his other device too.
    save = room_row(pb, "news").get_by_role("button", name="Save #news")
    await expect(save).to_have_attribute("aria-pressed", "false")
    await save.click()
    await expect(save).to_have_attribute("aria-pressed", "true")
    await expect(pb.locator("#room-status")).to_contain_text("Saved #news")
    await expect(row(pb, "#news").locator(".conv-saved")).to_have_count(1)
    status, info = await json_request(bob.context, "GET", live.url("/chat/info"))
    assert status == 200 and info["saved_rooms"] == ["news"]
    other = await second_device(people, live, B)
    po = await other.page()
    await expect(row(po, "#news").locator(".conv-saved")).to_have_count(1)
    await open_catalogue(po)
    await expect(room_row(po, "news").get_by_role("button", name="Save #news")).to_have_attribute(
        "aria-pressed", "true")
    # ... and unsaving.
    await save.click()
    await expect(save).to_have_attribute("aria-pressed", "false")
    await expect(row(pb, "#news").locator(".conv-saved")).to_have_count(0)
    status, info = await json_request(bob.context, "GET", live.url("/chat/info"))
    assert status == 200 and info["saved_rooms"] == []

    # Bob joins the lobby from the catalogue.
    await room_row(pb, "lobby").get_by_role("button", name="Join #lobby").click()
    await expect(pb.locator("#conv-title")).to_have_text("#lobby")
    await expect(theirs(pb, "Welcome to the lobby")).to_be_visible()
    await open_catalogue(pa)
    await expect(room_row(pa, "lobby").locator(".room-online")).to_have_text("2 online")

    # Alice closes her room: asked first; Cancel keeps it.
    lobby_sockets = room_sockets(pb, "lobby")
    await room_row(pa, "lobby").get_by_role("button", name="Close #lobby").click()
    confirm = pa.locator("#dlg-confirm")
    await expect(confirm).to_be_visible()
    await expect(pa.locator("#dlg-confirm-title")).to_have_text("Close #lobby?")
    await screenshot(pa, "issue18-rooms-close-confirm-desktop")
    await confirm.get_by_role("button", name="Cancel").click()
    await expect(room_row(pa, "lobby")).to_have_count(1)
    status, _ = await json_request(bob.context, "GET", live.url("/chat/info/room?room_name=lobby"))
    assert status == 200
    await room_row(pa, "lobby").get_by_role("button", name="Close #lobby").click()
    await confirm.get_by_role("button", name="Close room").click()
    await expect(room_row(pa, "lobby")).to_have_count(0)
    await expect(pa.locator("#room-status")).to_have_text("#lobby was closed")

    # Bob is in it: his socket closed with 4404, the room says so and can no longer be written to.
    await expect(pb.locator("#conv-note")).to_have_text("This room was closed.")
    await expect(pb.locator("#compose")).to_be_hidden()
    await expect(row(pb, "#lobby").locator(".conv-last")).to_have_text("This room was closed.")
    await expect(theirs(pb, "Welcome to the lobby")).to_be_visible()  # his copy stays
    await screenshot(pb, "issue18-rooms-closed-desktop")
    status, _ = await json_request(bob.context, "GET", live.url("/chat/info/room?room_name=lobby"))
    assert status == 404
    # It stops reconnecting: not when the network comes back, not after a reload.
    await bob.context.set_offline(True)
    await pb.locator("body.is-offline").wait_for()
    await bob.context.set_offline(False)
    await pb.locator("body.is-online").wait_for()
    # (The room's own address is the server's 404 now: the chat page is loaded again.)
    await pb.goto(bob.context.base + "/chat")
    await pb.locator("body.is-online").wait_for()
    await row(pb, "#lobby").click()
    await expect(pb.locator("#conv-note")).to_have_text("This room was closed.")
    await expect(theirs(pb, "Welcome to the lobby")).to_be_visible()
    assert lobby_sockets == [], lobby_sockets


async def test_the_catalogue_on_a_phone(people: UserFactory, live: ServerProcess) -> None:
    alice = await people(A, "Alice")
    carol = await people(C, "Carol", **PHONE, color_scheme="dark")
    await make_room(alice, live, "attic", "Hobbies", ROOM_PASSWORD)
    await make_room(alice, live, "a-rather-long-room-name-for-a-narrow-screen", "Neighbourhood")
    pc = await carol.page()

    # Carol creates a room with a category on her phone.
    await open_catalogue(pc)
    await pc.fill("#room-name", "garden")
    await pc.fill("#room-new-category", "Hobbies")
    await pc.click("#room-form button[type=submit]")
    await expect(pc.locator("#conv-title")).to_have_text("#garden")
    await pc.click("#back")

    await open_catalogue(pc)
    await expect(pc.locator("#room-list .room-name")).to_have_text(
        ["#garden", "#a-rather-long-room-name-for-a-narrow-screen", "#attic"])
    attic = room_row(pc, "attic")
    await expect(attic.locator(".room-kind")).to_have_text("private room")
    await expect(room_row(pc, "garden").get_by_role("button", name="Close #garden")).to_be_visible()
    # Nothing sticks out of the screen: every button of every row is within its width.
    for button in await pc.locator("#room-list button").all():
        box = await button.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, box
    await screenshot(pc, "issue18-rooms-catalogue-phone")

    # The private room: Join without its password says what is missing, in the dialog.
    await attic.get_by_role("button", name="Join #attic").click()
    await expect(pc.locator("#room-error")).to_have_text("#attic is private: give its password.")
    await expect(attic.get_by_label("Password of #attic")).to_be_focused()
    await attic.get_by_label("Password of #attic").fill(ROOM_PASSWORD)
    await attic.get_by_label("Password of #attic").press("Enter")
    await expect(pc.locator("#conv-title")).to_have_text("#attic")
    await expect(pc.locator("#compose")).to_be_visible()
    await send(pc, "Hello from the attic")
    await expect(mine(pc, "Hello from the attic")).to_have_attribute("data-state", "sent")
    await screenshot(pc, "issue18-rooms-private-joined-phone")
