"""The HTML side (SPEC 4): register / login / logout, the entry redirect, the chat pages, the
session cookie and its server-side record, cross-site form posts, security headers, escaping and
the body-size limit. Every test runs against a real server on a fresh database."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import re
import time
from collections.abc import Mapping

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient, AiohttpServer

from chatserver.app import create_app
from chatserver.config import Config
from chatserver.stores.base import Store
from helpers.accounts import COOKIE, PASSWORD, UserFactory
from helpers.timing import TIMEOUT

# aiohttp-session 2.12 stores its state under str keys; aiohttp 3.14 warns once per key, which
# `filterwarnings = error` turns into a 500 for whichever test makes the process's first request.
pytestmark = pytest.mark.filterwarnings(
    "ignore::aiohttp.web_exceptions.NotAppKeyWarning:aiohttp_session")

_phones = itertools.count(5_551_000_000)


def new_phone() -> str:
    """A phone number (10 digits) no other test in this module uses."""
    return str(next(_phones))


def own_origin(server: TestServer) -> str:
    """The server's own origin, as a browser on its pages would send it."""
    url = server.make_url("/")
    return f"{url.scheme}://{url.host}:{url.port}"


def alert(html: str) -> str:
    """The text of the form's error paragraph (the reason shown to the person)."""
    m = re.search(r'<p class="error" role="alert">(.*?)</p>', html, re.S)
    assert m is not None, f"no error message in the page:\n{html}"
    return m.group(1).strip()


def session_cookie(resp: aiohttp.ClientResponse) -> str:
    """The session cookie value set by `resp` (which must set one)."""
    assert COOKIE in resp.cookies, f"no {COOKIE} in {resp.headers.getall('Set-Cookie', [])}"
    return resp.cookies[COOKIE].value


async def register(client: TestClient, phone: str, name: str | None = None,
                   password: str = PASSWORD, headers: Mapping[str, str] | None = None,
                   ) -> aiohttp.ClientResponse:
    """POST the registration form without following the redirect."""
    data = {"phone": phone, "name": f"user {phone}" if name is None else name,
            "password": password}
    return await client.post("/register", data=data, headers=headers, allow_redirects=False)


async def login(client: TestClient, phone: str, password: str = PASSWORD,
                headers: Mapping[str, str] | None = None) -> aiohttp.ClientResponse:
    """POST the login form without following the redirect."""
    return await client.post("/login", data={"phone": phone, "password": password},
                             headers=headers, allow_redirects=False)


async def logged_in_as(client: TestClient) -> str | None:
    """The phone the chat page shows for this client, or None when it is sent to /login."""
    resp = await client.get("/chat", allow_redirects=False)
    if resp.status == 302:
        assert resp.headers["Location"] == "/login"
        return None
    assert resp.status == 200, await resp.text()
    m = re.search(r'data-phone="([0-9]+)"', await resp.text())
    assert m is not None
    return m.group(1)


async def replay(aiohttp_client: AiohttpClient, server: TestServer,
                 cookie: str) -> TestClient:
    """A fresh client (another device, or an attacker) holding a copy of `cookie`."""
    return await aiohttp_client(server, cookies={COOKIE: cookie})


def assert_security_headers(resp: aiohttp.ClientResponse) -> None:
    """The page cannot be framed, sniffed, or run inline script."""
    csp = resp.headers.get("Content-Security-Policy")
    assert csp, f"no Content-Security-Policy on {resp.status} {resp.url}"
    directives = {parts[0]: parts[1:] for parts in (d.split() for d in csp.split(";")) if parts}
    assert directives.get("frame-ancestors") == ["'none'"], csp
    script_src = directives.get("script-src", directives.get("default-src"))
    assert script_src is not None, csp
    assert "'unsafe-inline'" not in script_src, csp
    assert resp.headers.get("X-Content-Type-Options") == "nosniff"


# -- GET / and the forms ------------------------------------------------------------------------


async def test_index_redirects_to_login_when_logged_out(
        aiohttp_client: AiohttpClient, server: TestServer) -> None:
    client = await aiohttp_client(server)
    resp = await client.get("/", allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == "/login"


async def test_index_redirects_to_chat_when_logged_in(as_user: UserFactory) -> None:
    client = await as_user(new_phone())
    resp = await client.get("/", allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == "/chat"


@pytest.mark.parametrize("path", ["/register", "/login"])
async def test_forms_render(aiohttp_client: AiohttpClient, server: TestServer, path: str) -> None:
    client = await aiohttp_client(server)
    resp = await client.get(path)
    assert resp.status == 200
    assert resp.content_type == "text/html"
    html = await resp.text()
    assert f'<form method="post" action="{path}">' in html
    assert 'name="phone"' in html and 'name="password"' in html
    assert ('name="name"' in html) == (path == "/register")
    assert_security_headers(resp)


# -- register -----------------------------------------------------------------------------------


async def test_register_logs_in_with_a_safe_cookie(
        aiohttp_client: AiohttpClient, server: TestServer, store: Store) -> None:
    client = await aiohttp_client(server)
    phone = new_phone()
    resp = await register(client, phone, name="Ada Lovelace")
    assert resp.status == 302
    assert resp.headers["Location"] == "/chat"
    morsel = resp.cookies[COOKIE]
    assert morsel.value
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Lax"
    assert not morsel["secure"]
    assert await store.user_exists(phone)
    chat = await client.get("/chat")
    assert chat.status == 200
    html = await chat.text()
    assert "Ada Lovelace" in html and phone in html


async def test_cookie_is_secure_when_https_is_configured(
        aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, config: Config) -> None:
    https = dataclasses.replace(config, security=dataclasses.replace(config.security, https=True))
    client = await aiohttp_client(await aiohttp_server(create_app(https)))
    resp = await register(client, new_phone())
    assert resp.status == 302
    morsel = resp.cookies[COOKIE]
    assert morsel["secure"] is True
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Lax"


async def test_register_taken_phone_is_409_and_keeps_the_account(
        aiohttp_client: AiohttpClient, server: TestServer, as_user: UserFactory) -> None:
    phone = new_phone()
    await as_user(phone, name="First Owner")
    other = await aiohttp_client(server)
    resp = await register(other, phone, name="Second Comer", password="another password")
    assert resp.status == 409
    assert resp.content_type == "text/html"
    html = await resp.text()
    assert '<form method="post" action="/register">' in html
    assert "already registered" in alert(html)
    assert COOKIE not in resp.cookies
    assert await logged_in_as(other) is None
    # The account was not overwritten: the old password still works, the new one does not.
    assert (await login(other, phone, "another password")).status == 401
    assert (await login(other, phone, PASSWORD)).status == 302


@pytest.mark.parametrize(("phone", "name", "password", "field"), [
    ("555123456a", "Bob", PASSWORD, "phone"),
    ("555123456", "Bob", PASSWORD, "phone"),                 # 9 digits
    ("5551234567890123", "Bob", PASSWORD, "phone"),          # 16 digits
    ("٠١٢٣٤٥٦٧٨٩", "Bob", PASSWORD, "phone"),                # Arabic-Indic digits, not ASCII
    ("+5551234567", "Bob", PASSWORD, "phone"),
    (" 5551234567", "Bob", PASSWORD, "phone"),
    ("", "Bob", PASSWORD, "phone"),
    ("5551234567", "", PASSWORD, "name"),
    ("5551234567", "x" * 65, PASSWORD, "name"),
    ("5551234567", "   ", PASSWORD, "name"),
    ("5551234567", "Bob", "x7#kq9!mz", "password"),          # 9 characters (SPEC 4: 10)
    ("5551234567", "Bob", "a" * 1025, "password"),
    ("5551234567", "Bob", "é" * 512 + "a", "password"),     # 513 characters, 1025 bytes
    ("5551234567", "Bob", "1234567890", "password"),         # in the common list (SPEC 10)
    ("5551234567", "Bob", "Password123", "password"),        # the same, in capitals
    ("5551234567", "Bob", "", "password"),
], ids=["letters", "9-digits", "16-digits", "unicode-digits", "plus", "space", "no-phone",
        "empty-name", "name-65", "name-spaces", "password-9", "password-1025",
        "password-1025-bytes-multibyte", "password-common", "password-common-capitals",
        "no-password"])
async def test_register_invalid_field_is_400_and_creates_nothing(
        aiohttp_client: AiohttpClient, server: TestServer, store: Store,
        phone: str, name: str, password: str, field: str) -> None:
    client = await aiohttp_client(server)
    resp = await register(client, phone, name=name, password=password)
    assert resp.status == 400
    assert resp.content_type == "text/html"
    html = await resp.text()
    assert '<form method="post" action="/register">' in html
    assert field in alert(html).lower()
    assert COOKIE not in resp.cookies
    assert not await store.user_exists(phone)
    assert not await store.user_exists("5551234567")
    assert await logged_in_as(client) is None


@pytest.mark.parametrize(("name", "password"), [
    ("x" * 64, PASSWORD),
    ("Bob", "x7#kq9!mz2"),    # 10 characters
    ("Bob", "a" * 1024),
    ("Bob", "é" * 512),       # 512 characters, 1024 bytes
    ("Bob", "😀" * 256),      # 256 characters, 1024 bytes
    ("Bob", "😀" * 10),       # 10 characters, 40 bytes
], ids=["name-64", "password-10", "password-1024", "password-1024-bytes-2-byte-chars",
        "password-1024-bytes-4-byte-chars", "password-10-chars-40-bytes"])
async def test_register_boundaries_accepted_and_password_works(
        aiohttp_client: AiohttpClient, server: TestServer, name: str, password: str) -> None:
    client = await aiohttp_client(server)
    phone = new_phone()
    resp = await register(client, phone, name=name, password=password)
    assert resp.status == 302, alert(await resp.text())
    again = await aiohttp_client(server)
    assert (await login(again, phone, password)).status == 302
    assert await logged_in_as(again) == phone
    assert (await login(await aiohttp_client(server), phone, password[:-1] + "b")).status == 401


@pytest.mark.parametrize("phone", ["5551234567", "555123456789012"], ids=["10", "15"])
async def test_register_phone_length_bounds_accepted(
        aiohttp_client: AiohttpClient, server: TestServer, store: Store, phone: str) -> None:
    client = await aiohttp_client(server)
    assert (await register(client, phone)).status == 302
    assert await store.user_exists(phone)


async def test_register_trims_the_name(
        aiohttp_client: AiohttpClient, server: TestServer, store: Store) -> None:
    client = await aiohttp_client(server)
    phone = new_phone()
    assert (await register(client, phone, name="  Grace Hopper \t")).status == 302
    user = await store.get_user(phone)
    assert user is not None and user.name == "Grace Hopper"


async def test_register_form_too_large_is_413(aiohttp_client: AiohttpClient, server: TestServer,
                                              store: Store) -> None:
    client = await aiohttp_client(server)
    phone = new_phone()
    resp = await register(client, phone, name="x" * 70_000)
    assert resp.status == 413
    assert not await store.user_exists(phone)
    assert await logged_in_as(client) is None


@pytest.mark.parametrize("path", ["/register", "/login"])
async def test_form_field_not_utf8_is_refused_cleanly(
        aiohttp_client: AiohttpClient, server: TestServer, store: Store, path: str) -> None:
    """A multipart field that is not UTF-8 is bad input (4xx), not a server error."""
    client = await aiohttp_client(server)
    phone = new_phone()
    body = b"".join(
        b'--XyZ\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (key, value)
        for key, value in ((b"phone", phone.encode()), (b"name", b"\xff\xfe bad"),
                           (b"password", b"\xffpassword\xfe"))) + b"--XyZ--\r\n"
    resp = await client.post(path, data=body, allow_redirects=False,
                             headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
    assert resp.status in (400, 401)
    assert not await store.user_exists(phone)


# -- login --------------------------------------------------------------------------------------


async def test_login_success(
        aiohttp_client: AiohttpClient, server: TestServer, as_user: UserFactory) -> None:
    phone = new_phone()
    await as_user(phone)
    client = await aiohttp_client(server)
    resp = await login(client, phone)
    assert resp.status == 302
    assert resp.headers["Location"] == "/chat"
    morsel = resp.cookies[COOKIE]
    assert morsel["httponly"] is True and morsel["samesite"] == "Lax"
    assert await logged_in_as(client) == phone


async def test_login_failures_are_401_with_one_neutral_message(
        aiohttp_client: AiohttpClient, server: TestServer, as_user: UserFactory) -> None:
    phone = new_phone()
    await as_user(phone)
    client = await aiohttp_client(server)
    messages = []
    for attempt in ({"phone": phone, "password": "wrong password"},   # wrong password
                    {"phone": new_phone(), "password": PASSWORD},      # unknown phone
                    {"phone": "not a phone", "password": PASSWORD},    # not even a phone
                    {"phone": phone, "password": "x" * 100},           # over bcrypt's 72 bytes
                    {"phone": phone, "password": "x" * 2000},          # over the 1024-byte limit
                    {"phone": phone}):                                 # no password at all
        resp = await client.post("/login", data=attempt, allow_redirects=False)
        assert resp.status == 401, attempt
        assert resp.content_type == "text/html"
        html = await resp.text()
        assert '<form method="post" action="/login">' in html
        assert COOKIE not in resp.cookies
        messages.append(alert(html))
    assert len(set(messages)) == 1, messages
    assert await logged_in_as(client) is None


async def test_unknown_phone_login_costs_as_much_as_a_wrong_password(
        aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, config: Config) -> None:
    """No account enumeration by timing: an unknown phone is checked at the configured cost."""
    # bcrypt cost 10 makes one check take tens of milliseconds, far above request overhead.
    slow = dataclasses.replace(config, security=dataclasses.replace(config.security,
                                                                    bcrypt_rounds=10))
    server = await aiohttp_server(create_app(slow))
    client = await aiohttp_client(server)
    phone = new_phone()
    assert (await register(client, phone)).status == 302

    async def timed(data: dict[str, str]) -> float:
        start = time.perf_counter()
        resp = await client.post("/login", data=data, allow_redirects=False)
        elapsed = time.perf_counter() - start
        assert resp.status == 401
        return elapsed

    wrong = min([await timed({"phone": phone, "password": "wrong password"}) for _ in range(3)])
    unknown = min([await timed({"phone": new_phone(), "password": "wrong password"})
                   for _ in range(3)])
    assert unknown > wrong / 2, f"unknown phone {unknown:.4f}s, wrong password {wrong:.4f}s"


async def test_login_issues_a_new_session_id_and_retires_the_old_one(
        aiohttp_client: AiohttpClient, server: TestServer) -> None:
    client = await aiohttp_client(server)
    phone = new_phone()
    at_register = session_cookie(await register(client, phone))
    first = session_cookie(await login(client, phone))
    second = session_cookie(await login(client, phone))
    assert len({at_register, first, second}) == 3
    assert await logged_in_as(client) == phone
    # The current cookie works from another client (so a refusal below means something) ...
    assert await logged_in_as(await replay(aiohttp_client, server, second)) == phone
    # ... and the ones it replaced do not.
    assert await logged_in_as(await replay(aiohttp_client, server, first)) is None
    assert await logged_in_as(await replay(aiohttp_client, server, at_register)) is None


async def test_login_as_someone_else_replaces_the_session(
        aiohttp_client: AiohttpClient, server: TestServer, as_user: UserFactory) -> None:
    a, b = new_phone(), new_phone()
    client = await as_user(a)
    await as_user(b)
    old = client.session.cookie_jar.filter_cookies(server.make_url("/"))[COOKIE].value
    assert (await login(client, b)).status == 302
    assert await logged_in_as(client) == b
    assert await logged_in_as(await replay(aiohttp_client, server, old)) is None


# -- logout -------------------------------------------------------------------------------------


async def test_logout_ends_the_session_server_side(
        aiohttp_client: AiohttpClient, server: TestServer) -> None:
    client = await aiohttp_client(server)
    phone = new_phone()
    cookie = session_cookie(await register(client, phone))
    # A copy of the cookie works before logout: the refusals below are caused by the logout.
    copy = await replay(aiohttp_client, server, cookie)
    assert await logged_in_as(copy) == phone
    ws = await copy.ws_connect(f"/ws/chat/special/{phone}/")
    await ws.close()

    resp = await client.post("/logout", allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == "/login"
    assert await logged_in_as(client) is None

    stolen = await replay(aiohttp_client, server, cookie)
    assert await logged_in_as(stolen) is None
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await stolen.ws_connect(f"/ws/chat/special/{phone}/")
    assert refused.value.status == 403
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(f"/ws/chat/special/{phone}/")
    assert refused.value.status == 403


async def test_logout_closes_the_sessions_sockets(
        aiohttp_client: AiohttpClient, server: TestServer) -> None:
    client = await aiohttp_client(server)
    phone = new_phone()
    assert (await register(client, phone)).status == 302
    ws = await client.ws_connect(f"/ws/chat/special/{phone}/")
    # Read while logging out: the server's close handshake waits for our answer.
    resp, msg = await asyncio.gather(client.post("/logout", allow_redirects=False),
                                     ws.receive(timeout=TIMEOUT))
    assert resp.status == 302
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION


async def test_logout_when_logged_out_redirects(
        aiohttp_client: AiohttpClient, server: TestServer) -> None:
    client = await aiohttp_client(server)
    resp = await client.post("/logout", allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == "/login"


# -- the chat pages -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/chat", "/chat/personal/5551999990/5551999991/"])
async def test_chat_pages_require_login(
        aiohttp_client: AiohttpClient, server: TestServer, path: str) -> None:
    client = await aiohttp_client(server)
    resp = await client.get(path, allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == "/login"


async def test_chat_page(as_user: UserFactory) -> None:
    phone = new_phone()
    client = await as_user(phone, name="Alan")
    resp = await client.get("/chat")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    html = await resp.text()
    assert f'data-phone="{phone}"' in html and "Alan" in html
    assert_security_headers(resp)


async def test_chat_personal_page(as_user: UserFactory) -> None:
    me, peer, third = new_phone(), new_phone(), new_phone()
    client = await as_user(me)
    await as_user(peer)
    await as_user(third)
    resp = await client.get(f"/chat/personal/{me}/{peer}/")
    assert resp.status == 200
    html = await resp.text()
    assert 'data-open-kind="personal"' in html and f'data-open-id="{peer}"' in html
    assert_security_headers(resp)
    # msg_from must be the logged-in user, even when it names a real account.
    assert (await client.get(f"/chat/personal/{peer}/{me}/")).status == 403
    assert (await client.get(f"/chat/personal/{third}/{peer}/")).status == 403
    assert (await client.get(f"/chat/personal/{me}/{new_phone()}/")).status == 404
    assert (await client.get(f"/chat/personal/{me}/not-a-phone/")).status == 404


async def test_error_pages_carry_security_headers(as_user: UserFactory) -> None:
    """Raised errors are responses too: they get the same headers as rendered pages."""
    me, peer = new_phone(), new_phone()
    client = await as_user(me)
    await as_user(peer)
    forbidden = await client.get(f"/chat/personal/{peer}/{me}/")
    assert forbidden.status == 403
    assert_security_headers(forbidden)
    missing = await client.get(f"/chat/personal/{me}/{new_phone()}/")
    assert missing.status == 404
    assert_security_headers(missing)


async def test_form_error_pages_carry_security_headers(
        aiohttp_client: AiohttpClient, server: TestServer, as_user: UserFactory) -> None:
    phone = new_phone()
    await as_user(phone)
    client = await aiohttp_client(server)
    for resp in (await register(client, "123"),            # 400
                 await register(client, phone),            # 409
                 await login(client, phone, "wrong password")):  # 401
        assert resp.status in (400, 401, 409)
        assert_security_headers(resp)


# -- escaping -----------------------------------------------------------------------------------


async def test_chat_page_escapes_the_name(as_user: UserFactory) -> None:
    client = await as_user(new_phone(), name='<script>alert("x")</script>')
    html = await (await client.get("/chat")).text()
    assert "&lt;script&gt;alert(" in html
    assert "<script>alert" not in html


async def test_form_echo_is_escaped(aiohttp_client: AiohttpClient, server: TestServer) -> None:
    client = await aiohttp_client(server)
    resp = await register(client, '"><script>alert(1)</script>', name='"><img src=x onerror=1>')
    assert resp.status == 400
    html = await resp.text()
    assert "<script>alert(1)" not in html
    assert "<img src=x" not in html
    assert "&lt;script&gt;" in html and "&lt;img" in html
    resp = await login(client, '"><script>alert(2)</script>')
    assert resp.status == 401
    html = await resp.text()
    assert "<script>alert(2)" not in html and "&lt;script&gt;alert(2)" in html


# -- cross-site form posts ----------------------------------------------------------------------

OWN = "{own}"  # replaced by the test server's own origin
REFUSED: list[dict[str, str]] = [
    {"Origin": "http://evil.example"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    {"Origin": "null"},
    {"Origin": "http://127.0.0.1:1"},                         # same host, another port
    {"Origin": "https://127.0.0.1"},
    {"Sec-Fetch-Site": "cross-site", "Origin": OWN},          # Sec-Fetch-Site decides
]
PASSED: list[dict[str, str]] = [
    {},                                                       # a non-browser client
    {"Origin": OWN},
    {"Sec-Fetch-Site": "same-origin"},
    {"Sec-Fetch-Site": "none"},
    {"Sec-Fetch-Site": "same-origin", "Origin": OWN},
    {"Sec-Fetch-Site": "same-origin", "Origin": "http://evil.example"},  # Sec-Fetch-Site decides
]


def _headers(template: dict[str, str], server: TestServer) -> dict[str, str]:
    return {k: own_origin(server) if v == OWN else v for k, v in template.items()}


@pytest.mark.parametrize("headers", REFUSED, ids=repr)
async def test_cross_site_posts_are_refused(
        aiohttp_client: AiohttpClient, server: TestServer, store: Store, as_user: UserFactory,
        headers: dict[str, str]) -> None:
    headers = _headers(headers, server)
    client = await aiohttp_client(server)
    phone = new_phone()
    resp = await register(client, phone, headers=headers)
    assert resp.status == 403
    assert not await store.user_exists(phone)
    assert COOKIE not in resp.cookies

    victim = new_phone()
    logged_in = await as_user(victim)
    # A forged login would log the victim's browser into the attacker's account.
    assert (await login(logged_in, new_phone(), headers=headers)).status == 403
    # A forged logout would end the victim's session.
    assert (await logged_in.post("/logout", headers=headers, allow_redirects=False)).status == 403
    assert await logged_in_as(logged_in) == victim


@pytest.mark.parametrize("headers", PASSED, ids=repr)
async def test_same_origin_posts_pass(aiohttp_client: AiohttpClient, server: TestServer,
                                      headers: dict[str, str]) -> None:
    headers = _headers(headers, server)
    client = await aiohttp_client(server)
    phone = new_phone()
    resp = await register(client, phone, headers=headers)
    assert resp.status == 302
    assert (await login(client, phone, headers=headers)).status == 302
    resp = await client.post("/logout", headers=headers, allow_redirects=False)
    assert resp.status == 302
    assert await logged_in_as(client) is None


async def test_configured_allowed_origin_passes(
        aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, config: Config) -> None:
    allowed = dataclasses.replace(config, security=dataclasses.replace(
        config.security, allowed_origins=("https://app.example",)))
    client = await aiohttp_client(await aiohttp_server(create_app(allowed)))
    resp = await register(client, new_phone(), headers={"Origin": "https://app.example"})
    assert resp.status == 302
    resp = await register(client, new_phone(), headers={"Origin": "https://evil.example"})
    assert resp.status == 403
