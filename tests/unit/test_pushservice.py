"""The test push service's own checks (helpers/pushservice.py) can fail: what the Web Push tests
(features/test_push.py) rely on to say a push is valid. pywebpush and py_vapid (the server's own
libraries, as a second implementation) send real requests to it on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from py_vapid import Vapid02
from pywebpush import WebPusher

from helpers.pushservice import Browser, Fail, PushService, b64url, check_topic, check_vapid


@pytest.fixture
async def service() -> AsyncIterator[PushService]:
    running = await PushService().start()
    yield running
    await running.stop()


def vapid_key() -> tuple[Vapid02, str]:
    v = Vapid02()
    v.generate_keys()
    raw = v.public_key.public_bytes(serialization.Encoding.X962,
                                    serialization.PublicFormat.UncompressedPoint)
    return v, b64url(raw)


async def send(browser: Browser, vapid: Vapid02, claims: dict[str, object],
               payload: bytes = b'{"kind": "new_msg"}') -> int:
    headers = vapid.sign(dict(claims))
    headers.update({"TTL": "60", "Topic": "t1", "Urgency": "high"})
    async with aiohttp.ClientSession() as session:
        resp = await WebPusher(browser.json(), aiohttp_session=session).send_async(
            data=payload, headers=headers, content_encoding="aes128gcm")
        return int(resp.status)


async def test_a_valid_push_passes_and_statuses_follow_the_script(service: PushService) -> None:
    browser = Browser.subscribe(service)
    vapid, key = vapid_key()
    claims = {"sub": "mailto:ops@example.org", "aud": service.base, "exp": int(time.time()) + 3600}
    service.script(browser.id, 500, 410)
    assert [await send(browser, vapid, claims) for _ in range(3)] == [500, 410, 201]
    got = [await service.next() for _ in range(3)]
    assert [g.status for g in got] == [500, 410, 201]
    assert browser.payload(got[2]) == {"kind": "new_msg"}
    assert check_vapid(got[2].headers, key, service.base)["sub"] == "mailto:ops@example.org"
    assert check_topic(got[2].headers["Topic"]) == "t1"


async def test_vapid_checks_fail_when_they_should(service: PushService) -> None:
    browser = Browser.subscribe(service)
    vapid, key = vapid_key()
    _, other_key = vapid_key()
    now = int(time.time())
    good = {"sub": "mailto:ops@example.org", "aud": service.base, "exp": now + 3600}
    await send(browser, vapid, good)
    headers = (await service.next()).headers
    check_vapid(headers, key, service.base)
    with pytest.raises(Fail, match="not the server's key"):
        check_vapid(headers, other_key, service.base)
    with pytest.raises(Fail, match="aud"):
        check_vapid(headers, key, "http://127.0.0.1:1")
    # a claim changed after signing: the signature no longer verifies
    token, k = headers["Authorization"][len("vapid t="):].split(",k=")
    head, body, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    forged = b64url(json.dumps({**claims, "sub": "mailto:evil@example.org"}).encode())
    tampered = headers.copy()
    tampered["Authorization"] = f"vapid t={head}.{forged}.{sig},k={k}"
    with pytest.raises(Fail, match="signature"):
        check_vapid(tampered, key, service.base)
    for bad_claims, says in (({**good, "exp": now + 25 * 3600}, "exp"),
                             ({**good, "exp": now - 10}, "exp")):
        await send(browser, vapid, bad_claims)
        with pytest.raises(Fail, match=says):
            check_vapid((await service.next()).headers, key, service.base)


def test_topic_rules() -> None:
    assert check_topic("A" * 32) == "A" * 32
    for bad in (None, "", "A" * 33, "a+b", "a=b"):
        with pytest.raises(Fail):
            check_topic(bad)


async def test_decrypt_fails_with_another_subscriptions_keys(service: PushService) -> None:
    browser, other = Browser.subscribe(service), Browser.subscribe(service)
    vapid, _ = vapid_key()
    await send(browser, vapid, {"sub": "mailto:ops@example.org", "aud": service.base,
                                "exp": int(time.time()) + 3600})
    got = await service.next()
    assert browser.decrypt(got.body) == b'{"kind": "new_msg"}'
    with pytest.raises(Exception):  # noqa: B017 - cryptography's InvalidTag, or http_ece's error
        other.decrypt(got.body)
