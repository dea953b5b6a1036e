"""The installable app and its notifications (SPEC 9) in a real Chromium: the manifest and the
service worker, the app opening without a network on the history kept on the device, a push
delivered to the worker, the notification settings, mutes, and notifications while the page is
hidden.

These need a browser profile that is not incognito: Chromium reports no app installable and has
no Push API in one (`in-incognito`), and Playwright's `browser.new_context()` is one. Each person
here is a persistent context (`launch_persistent_context` on a fresh profile directory).

What headless Chromium cannot do here, and how the tests go around it:
- `pushManager.subscribe()` never settles: Debian's Chromium has no access to Google's push
  service (GCM). The client gives up after 10 s and says so; the server side of a subscription
  is tested with one made in the test and POSTed with the page's own session (the same device),
  and the switch's "off" with it.
- A push is delivered with the DevTools protocol (`ServiceWorker.deliverPushMessage`), which
  fires the worker's `push` event as a push service would.
- The DevTools protocol cannot click a notification: the worker's test hook (a `message`
  {test_click: TAG}, static/sw.js) runs what its `notificationclick` runs.
- A hidden page: headless pages are always "visible"; an init script makes
  `document.visibilityState` say "hidden" before the client starts (the client reads it at start
  and on `visibilitychange`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from playwright.async_api import Page, expect

from helpers.accounts import PASSWORD, client, login, register, ws_open
from helpers.frames import frame
from helpers.server import REPO, ServerProcess
from helpers.timing import NET_TIMEOUT

from .conftest import CHROMIUM, CHROMIUM_ARGS, MISSING, WAIT_MS, User, _watch, screenshot

A, B, C = "5550000001", "5550000002", "5550000003"
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True,
         "device_scale_factor": 2}
# The client waits this long for a push subscription (notify.js SUBSCRIBE_TIMEOUT_MS), and more.
SUBSCRIBE_MS = 15_000
HIDDEN = """
Object.defineProperty(Document.prototype, "visibilityState", {get: () => "hidden", configurable: true});
Object.defineProperty(Document.prototype, "hidden", {get: () => true, configurable: true});
"""

DeviceFactory = Callable[..., Awaitable[User]]


@pytest.fixture
async def devices(live: ServerProcess, tmp_path: Path) -> AsyncIterator[DeviceFactory]:
    """`await devices(phone, name, **persistent context options)` -> a registered, logged-in
    User in a browser profile of their own (not incognito)."""
    if MISSING:
        pytest.fail(f"CI must run the browser tests: {MISSING}")
    from playwright.async_api import async_playwright
    expect.set_options(timeout=WAIT_MS)
    made: list[User] = []
    async with async_playwright() as p:
        async def make(phone: str, name: str, register_it: bool = True, **options: object) -> User:
            options.setdefault("viewport", {"width": 1200, "height": 760})
            profile = tmp_path / f"profile-{len(made)}"
            context = await p.chromium.launch_persistent_context(
                str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, **options)
            context.base = live.base
            user = User(phone, name, context, [])
            made.append(user)
            if register_it:
                resp = await context.request.post(
                    live.url("/register"), form={"phone": phone, "name": name, "password": PASSWORD},
                    max_redirects=0)
                assert resp.status == 302, await resp.text()
            return user

        try:
            yield make
        finally:
            problems = [x for u in made for x in u.problems]
            for user in made:
                await user.context.close()
    assert not problems, "\n".join(problems)


async def controlled(user: User, path: str = "/chat", init: str | None = None) -> Page:
    """A tab on `path` once the client has started and the service worker controls it."""
    page = await user.context.new_page()
    _watch(page, user.problems)
    if init:
        await page.add_init_script(init)
    await page.goto(user.context.base + path)
    await page.locator("body.ready").wait_for(timeout=WAIT_MS)
    await page.wait_for_function("() => navigator.serviceWorker.controller !== null", timeout=WAIT_MS)
    return page


async def say(live: ServerProcess, sender: str, to: str, *texts: str, new: bool = True) -> None:
    """`sender` (registered here when `new`, else logged in) sends `texts` to `to` from a plain
    client; each is stored by the server (msg_sent) before the next."""
    async with client() as session:
        await (register if new else login)(session, live, sender)
        ws = await ws_open(session, live.ws_url(f"/ws/chat/personal/{sender}/{to}/"))
        for text in texts:
            await ws.send_json(frame("new_msg", sender, to, text))
            reply = await ws.receive_json(timeout=NET_TIMEOUT)
            assert reply["command"] == "msg_sent", reply
        await ws.close()


def row(page: Page, title: str):
    return page.locator("#conversations .conv", has=page.locator(".conv-title", has_text=title))


async def notifications(page: Page) -> list[dict[str, object]]:
    """The notifications this origin shows now: [{title, body, tag, url, silent}]."""
    return await page.evaluate("""async () => {
      const reg = await navigator.serviceWorker.ready;
      return (await reg.getNotifications()).map((n) => (
        {title: n.title, body: n.body, tag: n.tag, url: n.data && n.data.url, silent: n.silent}));
    }""")


async def wait_notification(page: Page, tag: str) -> dict[str, object]:
    """The notification with `tag`, once it shows. No event says so to a page: polled in the
    page (getNotifications every 50 ms), bounded by WAIT_MS."""
    found = await page.evaluate("""async ([tag, ms]) => {
      const reg = await navigator.serviceWorker.ready;
      const end = Date.now() + ms;
      while (Date.now() < end) {
        const [n] = await reg.getNotifications({tag});
        if (n) return {title: n.title, body: n.body, tag: n.tag, url: n.data && n.data.url, silent: n.silent};
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      return null;
    }""", [tag, WAIT_MS])
    assert found, f"no notification {tag} within {WAIT_MS} ms: {await notifications(page)}"
    return found


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def made_subscription() -> dict[str, object]:
    """A PushSubscription's JSON as a browser gives it: a real P-256 key and auth secret, an
    https endpoint on a public address literal (no DNS lookup; nothing is sent to it here)."""
    key = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return {"endpoint": "https://93.184.215.14/push/v1/made-in-the-test",
            "expirationTime": None, "keys": {"p256dh": b64url(key), "auth": b64url(os.urandom(16))}}


def stored_subscriptions(live: ServerProcess) -> list[tuple[str, str]]:
    """(phone, endpoint) of every push subscription in the server's database."""
    with sqlite3.connect(f"file:{live.db}?mode=ro", uri=True) as db:
        return db.execute("SELECT phone, endpoint FROM push_subscriptions").fetchall()


# -- the installable app ----------------------------------------------------------------------


def test_the_worker_caches_every_module_of_the_client() -> None:
    """static/sw.js keeps a copy of each module the chat page loads (else the app would not
    open offline after a release that adds one)."""
    listed = set(re.findall(r'"(/static/[^"]+)"', (REPO / "static" / "sw.js").read_text()))
    static = REPO / "static"
    modules = {f"/static/{p.relative_to(static).as_posix()}" for p in static.rglob("*.js")}
    missing = modules - listed - {"/static/sw.js", "/static/login.js"}
    assert not missing, f"add to SHELL in static/sw.js: {sorted(missing)}"
    assert not {p for p in listed if not (REPO / p.lstrip("/")).is_file()}


async def test_chromium_reports_the_app_installable(devices: DeviceFactory, live: ServerProcess) -> None:
    alice = await devices(A, "Alice")
    page = await controlled(alice)
    cdp = await alice.context.new_cdp_session(page)
    assert (await cdp.send("Page.getInstallabilityErrors"))["installabilityErrors"] == []
    manifest = await cdp.send("Page.getAppManifest")
    assert manifest["errors"] == []
    parsed = manifest["manifest"]
    assert (parsed["name"], parsed["display"], parsed["startUrl"]) == ("Chat", "kStandalone",
                                                                       live.url("/chat"))
    assert {i["sizes"] for i in parsed["icons"]} >= {"192x192", "512x512"}

    resp = await alice.context.request.get(live.url("/static/manifest.webmanifest"))
    assert resp.headers["content-type"].startswith("application/manifest+json")
    icons = json.loads(await resp.text())["icons"]
    assert {(i["sizes"], i["purpose"]) for i in icons} >= {
        ("192x192", "any"), ("192x192", "maskable"), ("512x512", "any"), ("512x512", "maskable")}
    worker = await alice.context.request.get(live.url("/sw.js"))
    assert worker.headers["content-type"].startswith("application/javascript")
    assert worker.headers["cache-control"] == "no-cache"
    # Light and dark theme colours for the browser's chrome.
    media = await page.locator("meta[name=theme-color]").evaluate_all(
        "(ms) => ms.map((m) => m.media).sort()")
    assert media == ["(prefers-color-scheme: dark)", "(prefers-color-scheme: light)"]


async def test_offline_the_app_opens_on_the_history_kept_on_the_device(
        devices: DeviceFactory, live: ServerProcess) -> None:
    alice = await devices(A, "Alice")
    page = await controlled(alice)
    await say(live, B, A, "Hello from Bob")
    await row(page, B).click()
    await expect(page.locator("#messages .msg.theirs .body")).to_have_text("Hello from Bob")
    await page.fill("#text", "Reply kept here")
    await page.press("#text", "Enter")
    await expect(page.locator("#messages .msg.mine")).to_have_attribute("data-state", "sent")
    url = page.url
    assert url.endswith(f"/chat/personal/{A}/{B}/")

    # No network, and no server either: whatever comes now comes from the device.
    await alice.context.set_offline(True)
    await live.stop()
    await page.reload()
    await page.locator("body.ready").wait_for()
    assert page.url == url
    await expect(page.locator("#messages .msg.theirs .body")).to_have_text("Hello from Bob")
    await expect(page.locator("#messages .msg.mine .body")).to_have_text("Reply kept here")
    await expect(page.locator("#offline")).to_be_visible()
    # The list too, from the chat's own address (another cached page: the same shell).
    await page.goto(live.url("/chat"))
    await page.locator("body.ready").wait_for()
    await expect(row(page, B).locator(".conv-last")).to_have_text("You: Reply kept here")
    await screenshot(page, "pwa-offline-list")


# -- push -------------------------------------------------------------------------------------


async def registration_id(cdp: object, scope: str) -> str:
    """The service worker registration of `scope`, as the DevTools protocol names it."""
    found: dict[str, str] = {}
    seen = asyncio.Event()

    def on_update(event: dict[str, object]) -> None:
        for reg in event["registrations"]:
            if reg["scopeURL"] == scope and not reg.get("isDeleted"):
                found["id"] = reg["registrationId"]
                seen.set()
    cdp.on("ServiceWorker.workerRegistrationUpdated", on_update)
    await cdp.send("ServiceWorker.enable")
    async with asyncio.timeout(WAIT_MS / 1000):
        await seen.wait()
    return found["id"]


async def push(cdp: object, live: ServerProcess, reg: str, payload: dict[str, object]) -> None:
    await cdp.send("ServiceWorker.deliverPushMessage",
                   {"origin": live.base, "registrationId": reg, "data": json.dumps(payload)})


async def test_a_push_shows_a_notification_that_opens_its_conversation(
        devices: DeviceFactory, live: ServerProcess) -> None:
    alice = await devices(A, "Alice")
    await alice.context.grant_permissions(["notifications"], origin=live.base)
    page = await controlled(alice)
    # Notifications on: this browser's pushes are Alice's (the worker reads her settings). The
    # subscription itself gives up in headless Chromium, behind.
    await page.click("#show-profile")
    await page.check("#set-notifications")
    await expect(page.locator("#notify-status")).to_contain_text("asking for push messages")
    await page.locator("#dlg-profile").get_by_role("button", name="Close").click()
    await say(live, B, A, "Hi")
    cdp = await alice.context.new_cdp_session(page)
    reg = await registration_id(cdp, live.url("/"))

    # Previews off (the default): the text is not shown even when the payload has it.
    await push(cdp, live, reg, {"kind": "new_msg", "conversation": f"personal:{B}", "from_name": "Bob",
                                "count": 2, "sent": "2026-01-01 10:00:00", "text": "secret"})
    shown = await wait_notification(page, f"personal:{B}")
    assert shown == {"title": "Bob", "body": "2 new messages", "tag": f"personal:{B}",
                     "url": f"/chat/personal/{A}/{B}/", "silent": False}

    # A group's: "<sender> in <group>"; previews on: the text.
    await page.click("#show-profile")
    await page.check("#set-previews")
    await expect(page.locator("#notify-status")).to_have_text("Notifications show the message text.")
    await page.locator("#dlg-profile").get_by_role("button", name="Close").click()
    await push(cdp, live, reg, {"kind": "new_msg", "conversation": "group:AbCdEfGh12", "from_name": "Bob",
                                "group_name": "Family", "count": 1, "text": "Dinner at 8"})
    group = await wait_notification(page, "group:AbCdEfGh12")
    assert (group["title"], group["body"], group["url"]) == (
        "Bob in Family", "Dinner at 8", f"/chat/group/{A}/AbCdEfGh12/")

    # A click (the worker's test hook runs what notificationclick runs): the open window shows
    # the conversation, and the notification goes.
    await page.evaluate("(tag) => navigator.serviceWorker.controller.postMessage({test_click: tag})",
                        f"personal:{B}")
    await expect(page).to_have_url(live.url(f"/chat/personal/{A}/{B}/"))
    await expect(page.locator("#conv-head")).to_be_visible()
    await expect(page.locator("#conv-title")).to_have_text(re.compile(B))
    assert [n["tag"] for n in await notifications(page)] == ["group:AbCdEfGh12"]


# -- settings -----------------------------------------------------------------------------------


async def test_notifications_switch_subscribes_and_unsubscribes(
        devices: DeviceFactory, live: ServerProcess) -> None:
    alice = await devices(A, "Alice")
    page = await controlled(alice)
    await page.click("#show-profile")
    switch = page.locator("#set-notifications")
    await expect(switch).not_to_be_checked()

    # Without the browser's permission (headless answers the prompt "no"): it stays off, and says why.
    await switch.click()  # not check(): it may be unchecked again before Playwright looks
    await expect(page.locator("#notify-status")).to_contain_text("blocked for this site")
    await expect(switch).not_to_be_checked()

    # With it: on. Headless Chromium has no push service, so the subscription gives up and the
    # notifications work while the chat is open (said in the status line).
    await alice.context.grant_permissions(["notifications"], origin=live.base)
    await switch.check()
    status = page.locator("#notify-status")
    await expect(status).to_contain_text("asking for push messages")
    await expect(status).to_contain_text(
        re.compile("even when the chat is closed|could not subscribe to push messages"), timeout=SUBSCRIBE_MS)
    await expect(switch).to_be_checked()
    await expect(switch).to_be_enabled()
    await screenshot(page, "pwa-settings-desktop")

    # The server side of a subscription: one the browser would make, given with this device's session.
    resp = await alice.context.request.post(live.url("/chat/push/subscription"), data=made_subscription())
    assert resp.status == 201, await resp.text()
    assert [p for p, _ in stored_subscriptions(live)] == [A]
    # Off: the server forgets this device's subscription (DELETE).
    async with page.expect_response(lambda r: r.url.endswith("/chat/push/subscription")
                                    and r.request.method == "DELETE") as answer:
        await switch.uncheck()
    assert (await (await answer.value).json()) == {"removed": True}
    await expect(status).to_have_text("Notifications are off on this device.")
    assert stored_subscriptions(live) == []

    # Previews and sound are kept on the device, across a reload.
    await page.check("#set-previews")
    await page.uncheck("#set-sound")
    await expect(status).to_have_text("Notifications are silent.")
    await page.reload()
    await page.locator("body.ready").wait_for()
    await page.click("#show-profile")
    await expect(page.locator("#set-previews")).to_be_checked()
    await expect(page.locator("#set-sound")).not_to_be_checked()
    await expect(switch).not_to_be_checked()


async def test_settings_on_a_phone(devices: DeviceFactory, live: ServerProcess) -> None:
    alice = await devices(A, "Alice", **PHONE)
    await alice.context.grant_permissions(["notifications"], origin=live.base)
    page = await controlled(alice)
    await page.click("#show-profile")
    await page.check("#set-previews")
    await expect(page.locator("#notify-status")).to_have_text("Notifications show the message text.")
    await page.locator("#notify-title").scroll_into_view_if_needed()
    await screenshot(page, "pwa-settings-phone")


# -- mutes --------------------------------------------------------------------------------------


async def test_mute_from_the_header_marks_the_conversation(devices: DeviceFactory,
                                                          live: ServerProcess) -> None:
    alice = await devices(A, "Alice")
    page = await controlled(alice)
    await say(live, B, A, "Hi")
    bob = row(page, B)
    await bob.click()
    await expect(bob.locator(".conv-muted")).to_have_count(0)
    await page.click("#conv-mute")
    await expect(page.locator("#dlg-mute")).to_be_visible()
    await expect(page.locator("#mute-off")).to_be_hidden()
    async with page.expect_request(lambda r: r.url.endswith("/chat/mute") and r.method == "PUT") as sent:
        await page.get_by_role("button", name="For 8 hours").click()
    body = (await sent.value).post_data_json
    assert body["conversation"] == f"personal:{B}"
    await expect(page.locator("#dlg-mute")).to_be_hidden()
    await expect(bob.locator(".conv-muted")).to_be_visible()
    await expect(bob).to_have_attribute("aria-label", re.compile(", muted$"))
    await expect(page.locator("#conv-mute")).to_have_attribute("aria-label", re.compile("^Muted until "))
    mutes = (await (await alice.context.request.get(live.url("/chat/mute"))).json())["mutes"]
    assert [m["conversation"] for m in mutes] == [f"personal:{B}"]
    await screenshot(page, "pwa-muted-desktop")

    # GET /chat/mute at start: still marked after a reload.
    await page.reload()
    await page.locator("body.ready").wait_for()
    await expect(row(page, B).locator(".conv-muted")).to_be_visible()
    # Always, then unmute.
    await page.click("#conv-mute")
    async with page.expect_request(lambda r: r.url.endswith("/chat/mute") and r.method == "PUT") as sent:
        await page.get_by_role("button", name="Always").click()
    assert (await sent.value).post_data_json["until"] == "9999-12-31 23:59:59"
    await expect(page.locator("#conv-mute")).to_have_attribute("aria-label", "Muted: change")
    await page.click("#conv-mute")
    await screenshot(page, "pwa-mute-dialog-desktop")
    await page.get_by_role("button", name="Unmute").click()
    await expect(row(page, B).locator(".conv-muted")).to_have_count(0)
    await expect(page.locator("#conv-mute")).to_have_attribute("aria-label", "Mute notifications")
    assert (await (await alice.context.request.get(live.url("/chat/mute"))).json())["mutes"] == []


# -- a hidden page ------------------------------------------------------------------------------


async def test_a_hidden_page_notifies_unless_muted(devices: DeviceFactory, live: ServerProcess) -> None:
    alice = await devices(A, "Alice", **PHONE)
    await alice.context.grant_permissions(["notifications"], origin=live.base)
    # Carol's dialogue is muted (on another device, say) before the page starts: GET /chat/mute.
    resp = await alice.context.request.put(
        live.url("/chat/mute"), data={"conversation": f"personal:{C}", "until": "9999-12-31 23:59:59"})
    assert resp.status == 200, await resp.text()
    page = await controlled(alice, init=HIDDEN)
    assert await page.evaluate("() => document.visibilityState") == "hidden"
    await page.click("#show-profile")
    await page.check("#set-notifications")
    # On once the browser's permission is there; the push subscription goes on behind.
    await expect(page.locator("#notify-status")).to_contain_text("asking for push messages")
    await page.locator("#dlg-profile").get_by_role("button", name="Close").click()

    await say(live, C, A, "Muted one")
    await expect(row(page, C).locator(".badge")).to_have_text("1")
    await say(live, B, A, "Are you there?")
    shown = await wait_notification(page, f"personal:{B}")
    assert shown["title"] in {B, f"user {B}"}  # the name, once /chat/info has told it
    assert (shown["body"], shown["url"]) == ("1 new message", f"/chat/personal/{A}/{B}/")
    assert [n["tag"] for n in await notifications(page)] == [f"personal:{B}"]
    # The unread total is in the title (and the app badge, where there is one).
    await expect(page).to_have_title("(2) Chat")
    await screenshot(page, "pwa-notified-phone")
