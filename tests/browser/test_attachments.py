"""Photos and files in the browser (SPEC 8, issue 14), two people against the real server:

- a photo goes with a progress bar (the sender's uploads throttled, so that the bar is on screen),
  arrives as a thumbnail whose size is reserved before its bytes come, opens full size in a
  viewer that Escape closes; the recipient's device acknowledges it only once its bytes are in
  IndexedDB, the server then deletes it, and after a reload both sides still show it from their
  devices;
- a file that is not a picture (HTML, dropped on a group's conversation) is a download link with
  its name and size, never shown inline; an upload over the server's limit says why, a cancelled
  one sends nothing;
- when the recipient's browser storage is full (a quota set with the DevTools protocol), it says
  so and does not acknowledge: the message stays on the server until "Try again" finds room.

Every wait is Playwright's auto-waiting with a timeout, or an asyncio.Event; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
from pathlib import Path

import pytest
from PIL import Image
from playwright.async_api import Page, Route, WebSocketRoute, expect

from helpers.server import ServerProcess

from .conftest import User, UserFactory, screenshot
from .test_client import RECONNECT_MS, A, B, mine, open_dialogue, send, theirs
from .test_two_devices import make_group

# The sender's upload speed while the progress bar is photographed, in bytes per second.
SLOW_UPLOAD = 250_000
ATTACHMENT = "**/chat/attachment/**"
# A URL of the client's own making for bytes kept in IndexedDB.
FROM_DEVICE = re.compile("^blob:")


# The type of the bytes of attachment `id` this device keeps (IndexedDB, db.js `files`).
KEPT_TYPE = """async (id) => {
    const {state} = await import("/static/state.js");
    return (await state.db.file(id, "file"))?.type; }"""


def noisy_jpeg(path: Path, width: int, height: int) -> Path:
    """A JPEG of random pixels (they hardly compress: about 1.5 MB at 1200 x 900)."""
    Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).save(path, quality=92)
    return path


def png_noise(width: int, height: int) -> bytes:
    """A PNG of random pixels (incompressible: about 3 bytes a pixel)."""
    out = io.BytesIO()
    Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).save(out, format="PNG")
    return out.getvalue()


async def throttle_uploads(page: Page, per_second: int) -> object:
    """Slow this page's uploads down (DevTools network conditions); -1 lifts it."""
    cdp = await page.context.new_cdp_session(page)
    await cdp.send("Network.enable")
    await cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": per_second})
    return cdp


async def lift_throttle(cdp: object) -> None:
    await cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})


async def hold_downloads(user: User) -> asyncio.Event:
    """Hold every request for an attachment of `user`'s until the returned event is set."""
    release = asyncio.Event()

    async def held(route: Route) -> None:
        await release.wait()
        await route.continue_()
    await user.context.route(ATTACHMENT, held)
    return release


async def waiting_for(user: User, live: ServerProcess, peer: str) -> int:
    """How many of `user`'s messages to `peer` wait on the server (not acknowledged)."""
    resp = await user.context.request.get(live.url(f"/chat/info/personal?msg_to={peer}"))
    assert resp.status == 200, await resp.text()
    return (await resp.json())["outgoing"]["waiting"]


async def until_acknowledged(page: Page, peer: str) -> None:
    """Wait until no message of the page's user to `peer` waits on the server any more."""
    await page.wait_for_function("""async (peer) => {
        const r = await fetch(`/chat/info/personal?msg_to=${peer}`);
        return r.ok && (await r.json()).outgoing.waiting === 0; }""", arg=peer, polling=200)


async def until_deleted(page: Page, att: str) -> None:
    """Wait until the server no longer has attachment `att` (404 to the page's user). The
    acknowledgement's effects (the waiting count, the deletion) need not show at the same
    instant: the deletion itself is waited for."""
    await page.wait_for_function("""async (id) => (await fetch(`/chat/attachment/${id}`,
        {method: "HEAD", cache: "no-store"})).status === 404""", arg=att, polling=200)


async def status_of(user: User, live: ServerProcess, path: str) -> int:
    resp = await user.context.request.get(live.url(path))
    return resp.status


def photo_in(bubble: object) -> object:
    return bubble.locator(".att-photo img")


async def box_of(img: object) -> tuple[float, float]:
    box = await img.bounding_box()
    assert box is not None
    return round(box["width"]), round(box["height"])


async def shown_from_device(img: object, width: int = 320) -> None:
    """The photo is drawn, `width` pixels wide (320: a server's thumbnail), from a blob: URL (its
    bytes in this device's IndexedDB). Both wait, so a bubble drawn again meanwhile is fine."""
    await expect(img).to_have_attribute("src", FROM_DEVICE)
    await expect(img).to_have_js_property("naturalWidth", width)


async def test_a_photo_goes_with_a_progress_bar_and_stays_on_both_devices(
        people: UserFactory, live: ServerProcess, tmp_path: Path) -> None:
    alice = await people(A, "Alice")
    bob = await people(B, "Bob")
    photo = noisy_jpeg(tmp_path / "beach.jpg", 1200, 900)
    pa = await alice.page()
    await open_dialogue(pa, B)
    pb = await bob.page()
    release = await hold_downloads(bob)

    # The upload, slowed down: its bar moves and the photograph shows it half way.
    cdp = await throttle_uploads(pa, SLOW_UPLOAD)
    await pa.set_input_files("#attach-input", str(photo))
    uploading = pa.locator("#uploads .upload[data-state=uploading]")
    await expect(uploading.locator(".upload-name")).to_have_text("beach.jpg")
    await expect(uploading.get_by_role("progressbar", name="Uploading beach.jpg")).to_be_visible()
    await pa.wait_for_function("""() => {
        const bar = document.querySelector("#uploads progress");
        return bar && bar.value > bar.max * 0.2 && bar.value < bar.max * 0.8; }""")
    shot = tmp_path / "upload-progress.png"
    await pa.screenshot(path=str(shot))
    print(f"\nupload progress screenshot: {shot}")
    await screenshot(pa, "desktop-light-upload-progress")
    # Enter while it uploads sends nothing yet, and says why.
    await pa.fill("#text", "The beach")
    await pa.press("#text", "Enter")
    await expect(pa.locator("#uploads-status")).to_contain_text("Still uploading")
    await expect(pa.locator("#messages .msg")).to_have_count(0)
    await lift_throttle(cdp)
    await expect(pa.locator("#uploads .upload[data-state=done]")).to_be_visible()
    await pa.press("#text", "Enter")
    await expect(pa.locator("#uploads")).to_be_hidden()
    sent = mine(pa, "The beach")
    await expect(sent).to_have_attribute("data-state", "sent")
    att = await sent.locator(".att-photo").get_attribute("data-att")

    # Bob's device has stored the message (its row says so) but its photo's bytes are held on
    # the way: not acknowledged, the server keeps the message and the photo.
    await expect(pb.locator("#conversations .conv-last")).to_have_text("The beach")
    assert await waiting_for(alice, live, B) == 1
    await expect(sent).to_have_attribute("data-state", "sent")
    assert await status_of(alice, live, f"/chat/attachment/{att}") == 200

    # Opened, the photo's place is reserved (280 x 210: the server's 1200 x 900 fitted) before
    # its bytes arrive.
    await pb.locator("#conversations .conv").first.click()
    got = theirs(pb, "The beach")
    img = photo_in(got)
    await expect(img).to_have_attribute("width", "280")
    await expect(img).to_have_attribute("height", "210")
    assert await box_of(img) == (280, 210)
    assert await img.evaluate("(img) => img.naturalWidth") == 0

    # The bytes come: kept on Bob's device, then acknowledged; the box did not move.
    release.set()
    await shown_from_device(img)
    assert await box_of(img) == (280, 210)
    await until_acknowledged(pa, B)
    await screenshot(pb, "desktop-light-photo-received")

    # The server deleted it with the message: for Bob, and for Alice who uploaded it.
    await until_deleted(pb, att)
    assert await status_of(bob, live, f"/chat/attachment/{att}") == 404
    assert await status_of(bob, live, f"/chat/attachment/{att}?thumbnail=1") == 404
    assert await status_of(alice, live, f"/chat/attachment/{att}") == 404

    # Full size in the viewer, from the device; Escape closes it and the focus goes back.
    await got.locator(".att-photo").click()
    viewer = pb.locator("#dlg-viewer")
    await expect(viewer).to_be_visible()
    await expect(viewer.locator("#viewer-title")).to_have_text("beach.jpg")
    await shown_from_device(viewer.locator("#viewer-img"), 1200)
    await expect(viewer.locator("#viewer-download")).to_have_attribute("download", "beach.jpg")
    await screenshot(pb, "desktop-light-photo-viewer")
    await pb.keyboard.press("Escape")
    await expect(viewer).to_be_hidden()
    await expect(got.locator(".att-photo")).to_be_focused()
    # ... and opens from the keyboard.
    await pb.keyboard.press("Enter")
    await expect(viewer).to_be_visible()
    await pb.keyboard.press("Escape")
    await expect(viewer).to_be_hidden()

    # After a reload, both devices show it from their own IndexedDB.
    for page, bubble in ((pb, theirs(pb, "The beach")), (pa, mine(pa, "The beach"))):
        await page.reload()
        await page.locator("body.ready").wait_for()
        await shown_from_device(photo_in(bubble))
        assert await box_of(photo_in(bubble)) == (280, 210)
    await expect(pa.locator("#conversations .conv-last")).to_have_text("You: The beach")


@pytest.mark.parametrize("live", [{"max_attachment_bytes": 200_000}], indirect=True)
async def test_a_file_is_a_download_link_and_failed_or_cancelled_uploads_send_nothing(
        people: UserFactory, live: ServerProcess, tmp_path: Path) -> None:
    alice = await people(A, "Alice")
    bob = await people(B, "Bob")
    key = await make_group(alice, live, "Minutes", [B])
    pa = await alice.page(f"/chat/group/{A}/{key}/")
    await expect(pa.locator("#compose")).to_be_visible()
    pb = await bob.page(f"/chat/group/{B}/{key}/")
    html = b"<!doctype html><script>alert('not here')</script><p>minutes</p>\n"

    # Too big for the server (limits.max_attachment_bytes): it says so, and there is nothing
    # to try again.
    big = tmp_path / "video.bin"
    big.write_bytes(os.urandom(300_000))
    await pa.set_input_files("#attach-input", str(big))
    failed = pa.locator("#uploads .upload[data-state=error]")
    await expect(failed.get_by_role("alert")).to_contain_text("Too big to send")
    await expect(failed.get_by_role("button", name="Try again")).to_have_count(0)
    await screenshot(pa, "desktop-light-upload-too-big")
    await failed.get_by_role("button", name="Dismiss video.bin").click()
    await expect(pa.locator("#uploads")).to_be_hidden()

    # Cancelled half way: gone from the tray, and Enter on an empty box sends nothing.
    cdp = await throttle_uploads(pa, 20_000)
    slow = tmp_path / "slow.bin"
    slow.write_bytes(os.urandom(150_000))
    await pa.set_input_files("#attach-input", str(slow))
    await pa.wait_for_function("""() => {
        const bar = document.querySelector("#uploads progress");
        return bar && bar.value > 0 && bar.value < bar.max; }""")
    await pa.get_by_role("button", name="Cancel the upload of slow.bin").click()
    await expect(pa.locator("#uploads")).to_be_hidden()
    await pa.press("#text", "Enter")
    await lift_throttle(cdp)

    # Dropped on the conversation: an HTML file, with a line of text.
    drop_zone = pa.locator("#drop-zone")
    await pa.evaluate("""(bytes) => {
        const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array(bytes)], "minutes.html", {type: "text/html"}));
        const pane = document.querySelector("main.conversation");
        pane.dispatchEvent(new DragEvent("dragenter", {dataTransfer: dt, bubbles: true, cancelable: true}));
        window.__dropped = dt;
    }""", list(html))
    await expect(drop_zone).to_be_visible()
    await pa.evaluate("""() => document.querySelector("#text").dispatchEvent(
        new DragEvent("drop", {dataTransfer: window.__dropped, bubbles: true, cancelable: true}))""")
    await expect(drop_zone).to_be_hidden()
    await expect(pa.locator("#uploads .upload[data-state=done] .upload-name")).to_have_text("minutes.html")
    await send(pa, "the minutes")
    sent = mine(pa, "the minutes")
    await expect(sent.locator(".readby")).to_have_text("read by 1 of 1")
    # Only that one message went: the cancelled and refused uploads sent nothing.
    await expect(pa.locator("#messages .msg")).to_have_count(1)
    await expect(pb.locator("#messages .msg")).to_have_count(1)

    # Bob: a download link with its name and size, no picture; the bytes are his device's copy
    # (the server deleted them once he acknowledged), offered as a download, never as a page.
    got = theirs(pb, "the minutes")
    link = got.get_by_role("link", name=f"Download minutes.html, {len(html)} bytes")
    await expect(link).to_be_visible()
    await expect(link.locator(".att-size")).to_have_text(f"{len(html)} bytes")
    await expect(got.locator("img")).to_have_count(0)
    await expect(link).to_have_attribute("href", FROM_DEVICE)
    await expect(link).to_have_attribute("download", "minutes.html")
    att = await link.get_attribute("data-att")
    await until_deleted(pb, att)
    assert await status_of(alice, live, f"/chat/attachment/{att}") == 404
    assert await pb.evaluate(KEPT_TYPE, att) == "application/octet-stream"
    async with pb.expect_download() as info:
        await link.click()
    download = await info.value
    assert download.suggested_filename == "minutes.html"
    assert Path(await download.path()).read_bytes() == html
    await screenshot(pb, "desktop-light-file-received")
    # Alice's own bubble has the same link, from her device, whose copy is not typed as HTML
    # either (she dropped it as text/html).
    await expect(sent.get_by_role("link", name=f"Download minutes.html, {len(html)} bytes")) \
        .to_have_attribute("href", FROM_DEVICE)
    assert await pa.evaluate(KEPT_TYPE, att) == "application/octet-stream"


async def test_a_full_storage_says_so_and_leaves_the_message_on_the_server(
        people: UserFactory, live: ServerProcess) -> None:
    alice = await people(A, "Alice")
    # No service worker on Bob's side: its offline copy of the app shell (~430 KB, Cache Storage)
    # would count against the small quota below, which is about the device's history.
    bob = await people(B, "Bob", service_workers="block")
    pa = await alice.page()
    await open_dialogue(pa, B)
    # Bob's browser lets this site keep 250 KB (set before it opens its database): less than
    # the picture.
    pb = await bob.context.new_page()
    cdp = await bob.context.new_cdp_session(pb)
    await cdp.send("Storage.overrideQuotaForOrigin", {"origin": live.base, "quotaSize": 250_000})
    await pb.goto(live.url("/chat"))
    await pb.locator("body.ready").wait_for()

    # A picture pasted into the text box (480 KB), sent as it is.
    pasted = png_noise(400, 400)
    await pa.evaluate("""(bytes) => {
        const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array(bytes)], "image.png", {type: "image/png"}));
        document.querySelector("#text").dispatchEvent(
            new ClipboardEvent("paste", {clipboardData: dt, bubbles: true, cancelable: true}));
    }""", list(pasted))
    await expect(pa.locator("#uploads .upload[data-state=done] .upload-name")).to_have_text("image.png")
    await pa.press("#text", "Enter")
    sent = pa.locator("#messages .msg.mine")
    await expect(sent).to_have_attribute("data-state", "sent")

    # Bob's device cannot keep it: it says so, and does not acknowledge (the server keeps it).
    banner = pb.locator("#storage-full")
    await expect(banner).to_be_visible()
    await expect(banner).to_contain_text("Storage full")
    att = await pa.locator("#messages .msg.mine .att-photo").get_attribute("data-att")
    assert await status_of(bob, live, f"/chat/attachment/{att}") == 200
    await expect(sent).to_have_attribute("data-state", "sent")
    assert await waiting_for(alice, live, B) == 1
    await pb.locator("#conversations .conv").first.click()
    await expect(pb.locator("#messages .msg.theirs .att-note")).to_have_text(
        "Not kept on this device: the browser's storage is full.")
    await screenshot(pb, "desktop-light-storage-full")

    # Room again: "Try again" keeps it and acknowledges it; the server deletes it.
    await cdp.send("Storage.overrideQuotaForOrigin", {"origin": live.base})
    await banner.get_by_role("button", name="Try again").click()
    await expect(banner).to_be_hidden()
    await until_acknowledged(pa, B)
    await until_deleted(pb, att)
    assert await status_of(alice, live, f"/chat/attachment/{att}") == 404
    await expect(pb.locator("#messages .msg.theirs .att-note")).to_have_count(0)
    await shown_from_device(pb.locator("#messages .msg.theirs .att-photo img"))



async def test_a_lost_confirmation_resends_the_same_attachments_and_time_and_it_arrives_once(
        people: UserFactory, live: ServerProcess, tmp_path: Path) -> None:
    """The outbox's resend (a reconnect after `msg_sent` was lost) names the same attachment ids
    under the same sent_timestamp: the server knows the retry, claims nothing again, stores and
    delivers the message once."""
    alice = await people(A, "Alice")
    bob = await people(B, "Bob")
    sent_frames: list[dict] = []
    lost: list[dict] = []

    async def relay(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()

        def from_page(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame.get("command") == "new_msg":
                sent_frames.append(frame)
            server.send(message)

        async def from_server(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame.get("command") == "msg_sent" and not lost:
                lost.append(frame)  # the first confirmation never arrives: the socket drops
                await ws.close()
                await server.close()
                return
            ws.send(message)
        ws.on_message(from_page)
        server.on_message(from_server)
    await alice.context.route_web_socket(re.compile(f"/ws/chat/personal/{A}/{B}/$"), relay)

    pa = await alice.page()
    await open_dialogue(pa, B)
    await pa.set_input_files("#attach-input", str(noisy_jpeg(tmp_path / "twice.jpg", 300, 200)))
    await expect(pa.locator("#uploads .upload[data-state=done]")).to_be_visible()
    await send(pa, "sent twice, stored once")
    bubble = mine(pa, "sent twice, stored once")
    await expect(bubble).to_have_attribute("data-state", "sent", timeout=RECONNECT_MS)
    assert len(lost) == 1
    assert len(sent_frames) == 2
    first, again = sent_frames
    assert again == first
    assert len(first["attachments"]) == 1
    assert first["attachments"][0] == await bubble.locator(".att-photo").get_attribute("data-att")

    pb = await bob.page(f"/chat/personal/{B}/{A}/")
    got = theirs(pb, "sent twice, stored once")
    await shown_from_device(photo_in(got), 300)  # small: the photo itself, no thumbnail
    await expect(pb.locator("#messages .msg")).to_have_count(1)
    await until_acknowledged(pa, B)


async def test_a_room_photo_is_kept_on_the_device_of_whoever_reads_the_room(
        people: UserFactory, live: ServerProcess, tmp_path: Path) -> None:
    """Rooms are never acknowledged (SPEC 5.4), yet a reader's device keeps their photos too:
    the server deletes them when they leave the room's history."""
    alice = await people(A, "Alice")
    bob = await people(B, "Bob")
    pa = await alice.page()
    pb = await bob.page()
    await pa.click("#show-rooms")
    await pa.fill("#room-name", "lobby")
    await pa.press("#room-name", "Enter")
    await expect(pa.locator("#conv-title")).to_have_text("#lobby")
    await expect(pa.get_by_role("button", name="Attach photos or files")).to_be_visible()
    await pa.set_input_files("#attach-input", str(noisy_jpeg(tmp_path / "lobby.jpg", 640, 480)))
    await expect(pa.locator("#uploads .upload[data-state=done]")).to_be_visible()
    await pa.press("#text", "Enter")
    await expect(pa.locator("#messages .msg.mine")).to_have_attribute("data-state", "sent")

    await pb.click("#show-rooms")
    await pb.locator("#room-list li", has_text="#lobby").get_by_role("button", name="Join").click()
    got = pb.locator("#messages .msg.theirs")
    await expect(photo_in(got)).to_have_attribute("width", "280")
    await expect(photo_in(got)).to_have_attribute("height", "210")
    await pb.reload()
    await pb.locator("body.ready").wait_for()
    await shown_from_device(photo_in(got))
    att = await got.locator(".att-photo").get_attribute("data-att")
    assert await pb.evaluate(KEPT_TYPE, att) == "image/jpeg"
