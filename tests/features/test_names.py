"""Names with invisible format characters (Unicode category Cf) are refused with the reason
(issue 12, finding 7): registration, contacts and groups all go through forms.clean_name. A
zero-width joiner is kept inside an emoji sequence (👩‍💻), refused anywhere else."""

from __future__ import annotations

import re

import pytest
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpClient

from chatserver.forms import FormError, clean_name
from chatserver.stores.base import Store
from helpers.accounts import PASSWORD, UserFactory

pytestmark = pytest.mark.filterwarnings(
    "ignore::aiohttp.web_exceptions.NotAppKeyWarning:aiohttp_session")

ME = "5553000001"
OTHER = "5553000002"

REFUSED = {
    "rlo": "Ann\u202egnp.exe",        # RIGHT-TO-LEFT OVERRIDE: "Annexe.png" on screen
    "lri": "\u2066Ann",                 # LEFT-TO-RIGHT ISOLATE
    "zwsp": "An\u200bn",               # ZERO WIDTH SPACE
    "soft-hyphen": "An\u00adn",
    "bom": "\ufeffAnn",
    "zwj-between-letters": "A\u200dnn",
    "zwj-at-the-end": "Ann \U0001f469\u200d",
    "zwnj": "An\u200cn",
    "tag": "Ann\U000e0041",            # TAG LATIN CAPITAL LETTER A: invisible text
}
ACCEPTED = {
    "plain": "Ann Lee",
    "technologist": "Ann \U0001f469\u200d\U0001f4bb",                  # 👩‍💻
    "skin-tone": "\U0001f469\U0001f3fd\u200d\U0001f4bb",                # 👩🏽‍💻
    "rainbow-flag": "\U0001f3f3\ufe0f\u200d\U0001f308",                 # 🏳️‍🌈
    "family": "\U0001f468\u200d\U0001f469\u200d\U0001f467",            # 👨‍👩‍👧
    "arabic": "\u0639\u0644\u064a",
}


@pytest.mark.parametrize("name", REFUSED.values(), ids=REFUSED.keys())
def test_clean_name_refuses_format_characters_and_names_them(name: str) -> None:
    with pytest.raises(FormError, match=r"invisible formatting characters \(U\+[0-9A-F]{4,5} found\)"):
        clean_name(name)


@pytest.mark.parametrize("name", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_clean_name_keeps_emoji_sequences(name: str) -> None:
    assert clean_name(name) == name


async def test_registration_with_rlo_is_400_with_the_reason(
        aiohttp_client: AiohttpClient, server: TestServer, store: Store) -> None:
    client = await aiohttp_client(server)
    resp = await client.post("/register", allow_redirects=False, data={
        "phone": ME, "name": REFUSED["rlo"], "password": PASSWORD})
    assert resp.status == 400
    assert re.search(r"invisible formatting characters \(U\+202E found\)", await resp.text())
    assert not await store.user_exists(ME)


async def test_registration_with_an_emoji_sequence_is_accepted(
        aiohttp_client: AiohttpClient, server: TestServer) -> None:
    client = await aiohttp_client(server)
    resp = await client.post("/register", allow_redirects=False, data={
        "phone": ME, "name": ACCEPTED["technologist"], "password": PASSWORD})
    assert resp.status == 302
    info = await (await client.get("/chat/info")).json()
    assert info["name"] == ACCEPTED["technologist"]


async def test_contact_and_group_names_with_format_characters_are_400(as_user: UserFactory) -> None:
    client = await as_user(ME)
    await as_user(OTHER)
    resp = await client.post("/chat/special/contact", json={"phone": OTHER, "name": REFUSED["zwsp"]})
    assert resp.status == 400
    assert "U+200B" in (await resp.json())["error"]
    resp = await client.post("/chat/special/group", json={"name": REFUSED["lri"], "participants": [OTHER]})
    assert resp.status == 400
    assert "U+2066" in (await resp.json())["error"]
    info = await (await client.get("/chat/info")).json()
    assert info["groups"] == []
