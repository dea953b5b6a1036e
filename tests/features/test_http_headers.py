"""Response headers (issue 12, finding 7): `Strict-Transport-Security` with `security.https`,
`Cache-Control: no-store` on pages and JSON (not /static), and no aiohttp version in `Server`."""

from __future__ import annotations

import dataclasses

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient, AiohttpServer

from chatserver.app import create_app
from chatserver.config import Config
from helpers.accounts import UserFactory

pytestmark = pytest.mark.filterwarnings(
    "ignore::aiohttp.web_exceptions.NotAppKeyWarning:aiohttp_session")

PHONE = "5552000001"
# Authenticated pages and JSON answers (a success and an error).
PATHS = ["/chat", f"/chat/personal/{PHONE}/{PHONE}/", "/chat/info", "/chat/info/room?room_name=nope"]


async def responses(client: TestClient, paths: list[str]) -> list[aiohttp.ClientResponse]:
    return [await client.get(path, allow_redirects=False) for path in paths]


async def test_authenticated_pages_and_json_are_no_store_and_static_is_not(as_user: UserFactory) -> None:
    client = await as_user(PHONE)
    for resp in await responses(client, PATHS + ["/login"]):
        assert resp.headers.get("Cache-Control") == "no-store", resp.url
    static = await client.get("/static/app.js")
    assert static.status == 200
    assert "no-store" not in static.headers.get("Cache-Control", "")


async def test_server_header_names_no_version(as_user: UserFactory) -> None:
    client = await as_user(PHONE)
    for resp in await responses(client, PATHS + ["/static/app.js", "/no/such/page"]):
        assert resp.headers.get("Server") == "chatserver", resp.url


async def test_no_hsts_without_https(as_user: UserFactory) -> None:
    client = await as_user(PHONE)
    for resp in await responses(client, PATHS + ["/login"]):
        assert "Strict-Transport-Security" not in resp.headers, resp.url


async def test_hsts_for_a_year_without_preload_with_https(
        aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, config: Config) -> None:
    https = dataclasses.replace(config, security=dataclasses.replace(config.security, https=True))
    server: TestServer = await aiohttp_server(create_app(https))
    client = await aiohttp_client(server)
    for path in ["/login", "/static/app.js", "/chat"]:
        resp = await client.get(path, allow_redirects=False)
        assert resp.headers.get("Strict-Transport-Security") == "max-age=31536000", path
