"""Web Push (issue 15, SPEC 9), end to end: an in-process server, real sockets, and a real push
service on 127.0.0.1 (helpers/pushservice.py) that records each push and answers the status a
test scripts; the pushes are decrypted with the subscription's keys and their VAPID signature is
checked as a push service checks it. Run on every store and hub engine (helpers/backends.py).

The server runs with `push.allow_private_endpoints = true` (its push service is on 127.0.0.1),
`push.workers = 1` and a short `retry_seconds`; `min_interval_seconds` is 0 (no limit) unless a test says
otherwise (its own test sets 1 s), so that pushes of one conversation are throttled only there.

"No push" is proven by order, not by waiting: after the message that must not be pushed has been
committed (its `msg_sent`), a message that must be pushed (to a control device or conversation)
is sent; its push is awaited, and only then is the absence asserted. Jobs reach the one sender
worker in commit order, so a push of the earlier message would have been sent (and, through the
one connection pool to one service, arrived) no later than the control's batch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import REGISTRY

from chatserver.config import Config, Push
from helpers.accounts import UserFactory
from helpers.backends import db_rows, has_files
from helpers.frames import new_phone
from helpers.groups import create_group, open_group, send_grp
from helpers.pushservice import (
    Browser,
    PushService,
    Received,
    b64url,
    check_topic,
    check_vapid,
    unb64url,
)
from helpers.timing import TIMEOUT
from helpers.ws import WS, assert_json_error, open_personal, open_receive, send_new_msg

pytestmark = pytest.mark.backends

TTL = 3600  # not the default 86400: the header must be the configured value
# What every test's server runs with (a test adds its own through `push_settings`).
TEST_PUSH: dict[str, Any] = {"allow_private_endpoints": True, "ttl_seconds": TTL,
                             "min_interval_seconds": 0.0, "retry_seconds": 0.05, "retries": 3,
                             "workers": 1, "timeout_seconds": TIMEOUT}


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def push_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    """`[push]` keys on top of TEST_PUSH: `@pytest.mark.parametrize("push_settings", [{...}],
    indirect=True)`."""
    return dict(getattr(request, "param", {}))


@pytest.fixture
def config(config: Config, push_settings: dict[str, Any]) -> Config:
    """The suite's config (tests/conftest.py) with TEST_PUSH and `push_settings` as `[push]`."""
    return dataclasses.replace(config, push=Push(**{**TEST_PUSH, **push_settings}))


@pytest.fixture
async def service() -> AsyncIterator[PushService]:
    """The push service, stopped at the end."""
    running = await PushService().start()
    yield running
    await running.stop()


# -- helpers --------------------------------------------------------------------------------------


def name_of(phone: str) -> str:
    return f"name of {phone}"


async def login(as_user: UserFactory, phone: str) -> TestClient:
    """A new device of `phone` (registered with the display name `name_of(phone)` the first
    time, logged in again after that)."""
    return await as_user(phone, name=name_of(phone))


async def server_key(client: TestClient) -> str:
    """GET /chat/push/key's public key."""
    resp = await client.get("/chat/push/key")
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert set(body) == {"public_key"}, body
    return str(body["public_key"])


async def subscribe(client: TestClient, browser: Browser) -> None:
    """POST the browser's subscription for the device `client` (201)."""
    resp = await client.post("/chat/push/subscription", json=browser.json())
    assert resp.status == 201, await resp.text()
    assert await resp.json() == {"ok": True}


async def offline_device(as_user: UserFactory, phone: str, service: PushService
                         ) -> tuple[TestClient, Browser]:
    """A new device of `phone` subscribed at `service`, with no socket open."""
    client = await login(as_user, phone)
    browser = Browser.subscribe(service)
    await subscribe(client, browser)
    return client, browser


def stored_endpoints(config: Config, phone: str) -> list[str]:
    """The endpoints of `phone`'s subscriptions in the store (push_subscriptions)."""
    return sorted(r[0] for r in db_rows(
        config.database, "SELECT endpoint FROM push_subscriptions WHERE phone = ?", (phone,)))


async def stored_soon(config: Config, phone: str, want: list[str]) -> None:
    """Poll the store until `phone`'s endpoints are `want` (what the sender changes after a
    push's answer announces itself by no event a test can await)."""
    deadline = time.monotonic() + TIMEOUT
    while (got := await asyncio.to_thread(stored_endpoints, config, phone)) != want:
        assert time.monotonic() < deadline, f"endpoints of {phone}: {got}, want {want}"
        await asyncio.sleep(0.02)  # polling interval, not synchronisation


async def say(client: TestClient, me: str, peer: str, text: str) -> dict[str, str]:
    """`me` sends `text` to `peer` from the device `client`; returns the frame once committed."""
    ws = await open_personal(client, me, peer)
    try:
        return await send_new_msg(ws, me, peer, text)
    finally:
        await ws.close()


async def pushed_to(service: PushService, browser: Browser) -> tuple[Received, dict[str, Any]]:
    """The next push to arrive, which must be for `browser`, and its decrypted payload."""
    got = await service.next()
    assert got.id == browser.id, f"a push for {got.id} arrived first, not {browser.id}"
    assert got.status == 201
    return got, browser.payload(got)


def assert_nothing_else(service: PushService, *browsers: Browser) -> None:
    """No push arrived for `browsers` and none is waiting to be taken."""
    assert service.pending() == 0, f"{service.pending()} more push(es) arrived"
    for browser in browsers:
        assert service.count(browser.id) == 0, f"{browser.id} got a push"


def assert_new_msg(payload: dict[str, Any], conversation: str, from_name: str, count: int,
                   text: str | None) -> None:
    """The payload of SPEC 9 for a new message (with `text` only when previews are on)."""
    keys = {"kind", "conversation", "from_name", "count", "sent"} | ({"text"} if text else set())
    assert set(payload) - {"group_name"} == keys, payload
    assert payload["kind"] == "new_msg"
    assert payload["conversation"] == conversation
    assert payload["from_name"] == from_name
    assert payload["count"] == count
    if text is not None:
        assert payload["text"] == text


# -- the key and the subscription -----------------------------------------------------------------


async def test_key_endpoint_gives_the_vapid_public_key_kept_in_a_private_file(
        as_user: UserFactory, aiohttp_client: Any, server: Any, config: Config) -> None:
    client = await login(as_user, new_phone())
    key = await server_key(client)
    raw = unb64url(key)
    assert len(raw) == 65 and raw[0] == 4 and b64url(raw) == key  # uncompressed P-256, no padding
    assert await server_key(await login(as_user, new_phone())) == key
    anonymous = await aiohttp_client(server)
    resp = await anonymous.get("/chat/push/key")
    assert resp.status == 401
    if has_files(config.database):
        path = Path(config.database.path + ".vapid")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


async def test_subscribe_replace_and_delete(as_user: UserFactory, service: PushService,
                                            config: Config, aiohttp_client: Any,
                                            server: Any) -> None:
    a, b = new_phone(), new_phone()
    sender = await login(as_user, a)
    client, first = await offline_device(as_user, b, service)
    assert await asyncio.to_thread(stored_endpoints, config, b) == [first.endpoint]

    second = Browser.subscribe(service)
    await subscribe(client, second)  # replaces the device's earlier one
    assert await asyncio.to_thread(stored_endpoints, config, b) == [second.endpoint]
    await say(sender, a, b, "to the new one")
    _, payload = await pushed_to(service, second)
    assert payload["conversation"] == f"personal:{a}"
    assert service.count(first.id) == 0

    resp = await client.delete("/chat/push/subscription")
    assert resp.status == 200 and await resp.json() == {"removed": True}
    assert await asyncio.to_thread(stored_endpoints, config, b) == []
    resp = await client.delete("/chat/push/subscription")
    assert resp.status == 200 and await resp.json() == {"removed": False}

    # after the delete: nothing for b; a control device of another user gets its push
    c = new_phone()
    _, control = await offline_device(as_user, c, service)
    await say(sender, a, b, "nobody is told")
    await say(sender, a, c, "control")
    await pushed_to(service, control)
    assert service.count(first.id) == 0 and service.count(second.id) == 1

    anonymous = await aiohttp_client(server)
    for method in ("POST", "DELETE"):
        resp = await anonymous.request(method, "/chat/push/subscription", json=second.json())
        assert resp.status == 401


@pytest.mark.parametrize("push_settings", [{"allow_private_endpoints": False}], indirect=True)
async def test_endpoint_rules_without_private_endpoints(as_user: UserFactory, service: PushService,
                                                        config: Config) -> None:
    b = new_phone()
    client = await login(as_user, b)
    good = Browser.subscribe(service).json()

    def sub(endpoint: object = "https://93.184.215.14/push/x", **keys: object) -> dict[str, Any]:
        return {**good, "endpoint": endpoint, "keys": {**good["keys"], **keys}}

    refused = [
        sub(service.endpoint("x")),  # http://127.0.0.1:PORT: http and loopback
        sub("http://93.184.215.14/push/x"),  # http, public address
        sub("https://10.0.0.1/push/x"),
        sub("https://127.0.0.1/push/x"),
        sub("https://[::1]/push/x"),
        sub("https://169.254.1.1/push/x"),  # link-local
        sub("https://localhost/push/x"),  # a name resolving to 127.0.0.1
        sub("https://93.184.215.14/" + "x" * 2048),
        sub(42),
        sub(p256dh=b64url(b"\x04" + b"\x01" * 63)),  # 64 bytes
        sub(p256dh=b64url(b"\x03" + b"\x01" * 64)),  # not an uncompressed point
        sub(p256dh="not base64url!"),
        sub(auth=b64url(os.urandom(15))),
        {"endpoint": "https://93.184.215.14/push/x"},  # no keys
    ]
    for body in refused:
        resp = await client.post("/chat/push/subscription", json=body)
        await assert_json_error(resp, 400)
    resp = await client.post("/chat/push/subscription", data=b"{not json",
                             headers={"Content-Type": "application/json"})
    await assert_json_error(resp, 400)
    assert await asyncio.to_thread(stored_endpoints, config, b) == []  # nothing changed

    # a public https endpoint (an IP literal: no DNS here) is taken
    await subscribe_raw(client, sub())
    assert await asyncio.to_thread(stored_endpoints, config, b) == ["https://93.184.215.14/push/x"]
    resp = await client.post("/chat/push/subscription", json=sub("https://10.0.0.1/push/y"))
    await assert_json_error(resp, 400)  # a refused one leaves the earlier one in place
    assert await asyncio.to_thread(stored_endpoints, config, b) == ["https://93.184.215.14/push/x"]


async def subscribe_raw(client: TestClient, body: dict[str, Any]) -> None:
    resp = await client.post("/chat/push/subscription", json=body)
    assert resp.status == 201, await resp.text()


# -- what a push is -----------------------------------------------------------------------------


async def test_personal_message_to_an_offline_device_is_pushed_once(
        as_user: UserFactory, service: PushService) -> None:
    a, b, c = new_phone(), new_phone(), new_phone()
    sender = await login(as_user, a)
    other_sender = await login(as_user, c)
    _, browser = await offline_device(as_user, b, service)
    _, second = await offline_device(as_user, b, service)
    key = await server_key(sender)

    await say(sender, a, b, "secret words")
    pushes = [await service.next(), await service.next()]
    assert sorted(p.id for p in pushes) == sorted((browser.id, second.id))
    topics = set()
    for got in pushes:
        mine = browser if got.id == browser.id else second
        assert got.headers["TTL"] == str(TTL)
        assert got.headers["Urgency"] == "high"
        topics.add(check_topic(got.headers.get("Topic")))
        check_vapid(got.headers, key, service.base)
        payload = mine.payload(got)
        assert_new_msg(payload, f"personal:{a}", name_of(a), 1, None)
        assert "text" not in payload and b"secret words" not in got.body
    assert len(topics) == 1  # one conversation: one topic on every device

    # a second message while the first still waits: count 2; another conversation: another topic
    await say(sender, a, b, "more")
    await say(other_sender, c, b, "from c")
    seen: dict[str, list[dict[str, Any]]] = {}
    for _ in range(4):
        got = await service.next()
        mine = browser if got.id == browser.id else second
        payload = mine.payload(got)
        seen.setdefault(payload["conversation"], []).append(payload)
        if payload["conversation"] == f"personal:{c}":
            assert check_topic(got.headers.get("Topic")) not in topics
        else:
            assert got.headers["Topic"] in topics
    assert [p["count"] for p in seen[f"personal:{a}"]] == [2, 2]
    assert [p["count"] for p in seen[f"personal:{c}"]] == [1, 1]
    assert all(p["from_name"] == name_of(c) for p in seen[f"personal:{c}"])
    assert service.pending() == 0


@pytest.mark.parametrize("push_settings", [{"previews": True}], indirect=True)
async def test_previews_on_carry_the_text(as_user: UserFactory, service: PushService) -> None:
    a, b = new_phone(), new_phone()
    sender = await login(as_user, a)
    _, browser = await offline_device(as_user, b, service)
    await say(sender, a, b, "hello with a preview")
    _, payload = await pushed_to(service, browser)
    assert_new_msg(payload, f"personal:{a}", name_of(a), 1, "hello with a preview")


async def test_group_message_is_pushed_with_the_group(as_user: UserFactory,
                                                      service: PushService) -> None:
    a, b, c = new_phone(), new_phone(), new_phone()
    sender = await login(as_user, a)
    _, browser = await offline_device(as_user, b, service)
    _, other = await offline_device(as_user, c, service)
    group = await create_group(sender, "the club", [b, c])
    ws = await open_group(sender, a, group["key"])
    await send_grp(ws, a, group["key"], "group words")
    pushes = {}
    for _ in range(2):
        got = await service.next()
        mine = {browser.id: browser, other.id: other}[got.id]
        pushes[got.id] = mine.payload(got)
        assert got.headers["Urgency"] == "high"
        check_topic(got.headers.get("Topic"))
    assert set(pushes) == {browser.id, other.id}
    for payload in pushes.values():
        assert_new_msg(payload, f"group:{group['key']}", name_of(a), 1, None)
        assert payload["group_name"] == "the club"
    await ws.close()


# -- who is not pushed ---------------------------------------------------------------------------


async def test_no_push_to_a_device_with_an_open_receive_socket(
        as_user: UserFactory, service: PushService) -> None:
    a, b = new_phone(), new_phone()
    sender = await login(as_user, a)
    online, browser = await offline_device(as_user, b, service)
    _, offline = await offline_device(as_user, b, service)
    inbox: WS = await open_receive(online, b)
    await say(sender, a, b, "one")
    await pushed_to(service, offline)  # the device without a socket: pushed
    assert_nothing_else(service, browser)  # the one with a socket: not (same job, same batch)
    await inbox.close()


async def test_no_push_for_the_senders_own_copies(as_user: UserFactory,
                                                  service: PushService) -> None:
    a, b = new_phone(), new_phone()
    sender = await login(as_user, a)
    _, own = await offline_device(as_user, a, service)  # a's other device: it gets a copy (SPEC 7.2)
    _, browser = await offline_device(as_user, b, service)
    await say(sender, a, b, "copied to my other device")
    await pushed_to(service, browser)
    assert_nothing_else(service, own)

    group = await create_group(sender, "g", [b])
    ws = await open_group(sender, a, group["key"])
    await send_grp(ws, a, group["key"], "group copy")
    await pushed_to(service, browser)
    assert_nothing_else(service, own)
    await ws.close()


async def test_mute_stops_pushes_until_unmuted(as_user: UserFactory, service: PushService) -> None:
    a, b, c = new_phone(), new_phone(), new_phone()
    sender = await login(as_user, a)
    control_sender = await login(as_user, c)
    client, browser = await offline_device(as_user, b, service)

    resp = await client.put("/chat/mute", json={"conversation": f"personal:{a}",
                                                "until": "9999-12-31 23:59:59"})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["conversation"] == f"personal:{a}" and body["until"].startswith("9999-12-31 23:59:59")
    resp = await client.get("/chat/mute")
    assert resp.status == 200
    [mute] = (await resp.json())["mutes"]
    assert mute["conversation"] == f"personal:{a}" and mute["until"].startswith("9999-12-31")

    await say(sender, a, b, "muted")
    await say(control_sender, c, b, "not muted")  # the same device, another conversation
    _, payload = await pushed_to(service, browser)
    assert payload["conversation"] == f"personal:{c}"
    assert service.pending() == 0 and service.count(browser.id) == 1

    # an expired mute does not count (and is not listed)
    resp = await client.put("/chat/mute", json={"conversation": f"personal:{a}",
                                                "until": "2000-01-01T00:00:00Z"})
    assert resp.status == 200
    assert (await (await client.get("/chat/mute")).json()) == {"mutes": []}
    await say(sender, a, b, "mute over")
    _, payload = await pushed_to(service, browser)
    assert payload["conversation"] == f"personal:{a}"

    # muted again, then unmuted with null
    for until in ("9999-12-31 23:59:59", None):
        resp = await client.put("/chat/mute", json={"conversation": f"personal:{a}", "until": until})
        assert resp.status == 200, await resp.text()
        if until is None:
            assert await resp.json() == {"conversation": f"personal:{a}", "until": None}
    assert (await (await client.get("/chat/mute")).json()) == {"mutes": []}
    await say(sender, a, b, "unmuted")
    _, payload = await pushed_to(service, browser)
    assert payload["conversation"] == f"personal:{a}"

    for bad in ({"conversation": "personal:12", "until": None},
                {"conversation": "chat:x", "until": None},
                {"conversation": f"personal:{a}", "until": "tomorrow"},
                {"until": None}):
        await assert_json_error(await client.put("/chat/mute", json=bad), 400)
    assert (await (await client.get("/chat/mute")).json()) == {"mutes": []}


@pytest.mark.parametrize("push_settings", [{"min_interval_seconds": 1.0}], indirect=True)
async def test_min_interval_one_push_per_device_and_conversation(
        as_user: UserFactory, service: PushService) -> None:
    a, b, c = new_phone(), new_phone(), new_phone()
    sender = await login(as_user, a)
    control_sender = await login(as_user, c)
    _, browser = await offline_device(as_user, b, service)
    ws = await open_personal(sender, a, b)
    await send_new_msg(ws, a, b, "first")
    first, _ = await pushed_to(service, browser)
    await send_new_msg(ws, a, b, "second, within the interval")
    await say(control_sender, c, b, "control")  # another conversation: not throttled
    _, payload = await pushed_to(service, browser)
    assert payload["conversation"] == f"personal:{c}"
    assert service.pending() == 0 and service.count(browser.id) == 2

    # the interval is time itself: nothing announces its end
    await asyncio.sleep(max(0.0, first.at + 1.1 - time.perf_counter()))
    await send_new_msg(ws, a, b, "third, after it")
    _, payload = await pushed_to(service, browser)
    assert payload["conversation"] == f"personal:{a}" and payload["count"] == 3
    await ws.close()


# -- the push service's answers ------------------------------------------------------------------


async def test_gone_410_removes_the_subscription(as_user: UserFactory, service: PushService,
                                                 config: Config) -> None:
    a, b = new_phone(), new_phone()
    sender = await login(as_user, a)
    _, gone = await offline_device(as_user, b, service)
    _, control = await offline_device(as_user, b, service)
    service.script(gone.id, 410)
    before = {k: pushes_metric(*k) for k in METRICS}
    await say(sender, a, b, "one")
    statuses = {}
    for _ in range(2):
        got = await service.next()
        statuses[got.id] = got.status
    assert statuses == {gone.id: 410, control.id: 201}
    await stored_soon(config, b, [control.endpoint])
    await say(sender, a, b, "two")
    await pushed_to(service, control)
    assert service.count(gone.id) == 1 and service.pending() == 0
    # SPEC 11: the sender's figures (this process's registry: the server runs in the test's);
    # "sent" moves once the push service's answer is read, which no event announces: polled.
    want = {("chat_pushes_total", "gone"): 1, ("chat_pushes_total", "sent"): 2,
            ("chat_push_seconds_count", ""): 2}
    deadline = time.monotonic() + TIMEOUT
    while (moved := {k: pushes_metric(*k) - before[k] for k in METRICS}) != want:
        assert time.monotonic() < deadline, f"metrics moved {moved}, want {want}"
        await asyncio.sleep(0.02)  # polling interval, not synchronisation


# (metric, result label or "" for none) read by the 410 test
METRICS = (("chat_pushes_total", "gone"), ("chat_pushes_total", "sent"),
           ("chat_push_seconds_count", ""))


def pushes_metric(name: str, result: str) -> float:
    """A sample of the push metrics (chatserver/metrics.py) in this process's registry."""
    labels = {"result": result} if result else {}
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_server_error_is_retried_and_delivered_once(as_user: UserFactory,
                                                          service: PushService,
                                                          config: Config) -> None:
    a, b, c = new_phone(), new_phone(), new_phone()
    sender = await login(as_user, a)
    _, browser = await offline_device(as_user, b, service)
    _, control = await offline_device(as_user, c, service)
    service.script(browser.id, 500, 201)
    await say(sender, a, b, "retried")
    failed = await service.next()
    assert (failed.id, failed.status) == (browser.id, 500)
    retried, payload = await pushed_to(service, browser)
    assert_new_msg(payload, f"personal:{a}", name_of(a), 1, None)
    await say(sender, a, c, "control")
    await pushed_to(service, control)
    assert service.count(browser.id) == 2 and service.pending() == 0
    assert await asyncio.to_thread(stored_endpoints, config, b) == [browser.endpoint]  # kept


async def test_logout_deletes_the_subscription(as_user: UserFactory, service: PushService,
                                               config: Config) -> None:
    a, b = new_phone(), new_phone()
    sender = await login(as_user, a)
    leaving, gone = await offline_device(as_user, b, service)
    _, control = await offline_device(as_user, b, service)
    resp = await leaving.post("/logout", allow_redirects=False)
    assert resp.status == 302
    assert await asyncio.to_thread(stored_endpoints, config, b) == [control.endpoint]
    await say(sender, a, b, "after the logout")
    await pushed_to(service, control)
    assert_nothing_else(service, gone)

