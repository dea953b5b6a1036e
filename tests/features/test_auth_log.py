"""Authentication events are logged (issue 12, finding 7): registration, login (ok, failed,
throttled), logout, with the address, the phone and the outcome; never the password or the cookie."""

from __future__ import annotations

import dataclasses
import logging

import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient, AiohttpServer

from chatserver.app import create_app
from chatserver.config import Config
from helpers.accounts import COOKIE, PASSWORD

pytestmark = pytest.mark.filterwarnings(
    "ignore::aiohttp.web_exceptions.NotAppKeyWarning:aiohttp_session")

PHONE = "5554000001"
WRONG = "not the password at all"
LOGGER = "chatserver.pages"


@pytest.fixture
async def client(aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient,
                 config: Config) -> TestClient:
    """A client of a server that answers 429 after three counted attempts from one address (a
    taken phone and wrong passwords count; successes give their attempt back)."""
    limited = dataclasses.replace(config, limits=dataclasses.replace(config.limits, login_failures=3))
    return await aiohttp_client(await aiohttp_server(create_app(limited)))


def events(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]


async def post(client: TestClient, path: str, **data: str) -> int:
    resp = await client.post(path, data=data, allow_redirects=False)
    return resp.status


async def test_each_authentication_event_is_logged_with_phone_address_and_outcome(
        client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    address = "127.0.0.1"
    assert await post(client, "/register", phone=PHONE, name="Ann", password=PASSWORD) == 302
    cookie = client.session.cookie_jar.filter_cookies(client.make_url("/"))[COOKIE].value
    assert await post(client, "/logout") == 302
    assert await post(client, "/register", phone=PHONE, name="Ann", password=PASSWORD) == 409
    assert await post(client, "/login", phone=PHONE, password=PASSWORD) == 302
    assert await post(client, "/login", phone=PHONE, password=WRONG) == 401
    assert await post(client, "/login", phone="5554000999", password=WRONG) == 401
    assert await post(client, "/login", phone=PHONE, password=WRONG) == 429
    assert events(caplog) == [
        (logging.INFO, f"auth registration ok: phone={PHONE} address={address}"),
        (logging.INFO, f"auth logout: phone={PHONE} address={address}"),
        (logging.WARNING, f"auth registration refused (phone taken): phone={PHONE} address={address}"),
        (logging.INFO, f"auth login ok: phone={PHONE} address={address}"),
        (logging.WARNING, f"auth login failed (wrong password): phone={PHONE} address={address}"),
        (logging.WARNING, f"auth login failed (unknown phone): phone=5554000999 address={address}"),
        (logging.WARNING, f"auth login refused (too many attempts): phone={PHONE} address={address}"),
    ]
    for record in caplog.records:
        text = record.getMessage()
        assert PASSWORD not in text and WRONG not in text and cookie not in text, text


async def test_a_phone_field_cannot_forge_a_log_line(
        client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    forged = "5554000002\nauth login ok: phone=5554000001"
    assert await post(client, "/login", phone=forged, password=WRONG) == 401
    assert await post(client, "/register", phone=forged, name="Ann", password=PASSWORD) == 400
    assert events(caplog) == [
        (logging.WARNING, "auth login failed (unknown phone): phone=- address=127.0.0.1"),
        (logging.INFO, "auth registration refused (invalid field): phone=- address=127.0.0.1"),
    ]
