"""Web Push pieces that need no chat server (SPEC 9): which push endpoints the server sends to
(addresses of every form), the resolver that checks them again at connect time, the [push]
config checks, the VAPID key file, Topic and Retry-After. The end-to-end behaviour, against a real
local push service, is tests/features/test_push.py's."""

from __future__ import annotations

import base64
import email.utils
import ipaddress
import os
import stat
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import ec

from chatserver.config import Config, ConfigError, Database, Push, Server, load_config
from chatserver.push import (
    DEFAULT_SUBJECT,
    MAX_ENDPOINT_CHARS,
    MAX_RETRY_AFTER,
    EndpointRefused,
    PublicResolver,
    _Poster,
    _retry_after,
    check_endpoint,
    endpoint_origin,
    is_public_address,
    load_vapid,
    public_key,
    topic,
    vapid_subject,
)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -- endpoint rules ------------------------------------------------------------------------------

REFUSED = [
    # not https
    "http://push.example.com/send/abc",
    "ftp://push.example.com/send/abc",
    "wss://push.example.com/send/abc",
    # loopback, private, link-local, unspecified, multicast, reserved, shared (CGNAT) IPv4
    "https://127.0.0.1/send/abc",
    "https://127.1.2.3:8443/send/abc",
    "https://10.0.0.1/send",
    "https://172.16.5.4/send",
    "https://192.168.1.1/send",
    "https://169.254.169.254/latest/meta-data",  # a cloud's metadata service
    "https://0.0.0.0/send",
    "https://224.0.0.1/send",
    "https://240.0.0.1/send",
    "https://255.255.255.255/send",
    "https://100.64.0.1/send",
    "https://192.0.0.1/send",
    "https://198.18.0.1/send",
    # IPv6: loopback, unspecified, link-local, unique local, multicast, documentation
    "https://[::1]/send",
    "https://[::]/send",
    "https://[fe80::1]/send",
    "https://[fc00::1]/send",
    "https://[fd12:3456::1]/send",
    "https://[ff02::1]/send",
    "https://[2001:db8::1]/send",
    # IPv6 forms that carry a private IPv4 address: IPv4-mapped, 6to4
    "https://[::ffff:127.0.0.1]/send",
    "https://[::ffff:7f00:1]/send",
    "https://[::ffff:10.0.0.1]/send",
    "https://[::ffff:169.254.169.254]/send",
    "https://[2002:7f00:1::1]/send",
    "https://[2002:c0a8:101::1]/send",
    # names of local addresses, resolved here (no network needed)
    "https://localhost/send",
    "https://localhost./send",
    "https://LOCALHOST:443/send",
    # decimal, hex and short IPv4 forms of 127.0.0.1 (the resolver reads them as addresses)
    "https://2130706433/send",
    "https://0x7f000001/send",
    "https://0x7f.1/send",
    "https://127.1/send",
    "https://017700000001/send",
    # not a usable URL
    "https://user:secret@push.example.com/send",
    "https://push.example.com@127.0.0.1/send",
    "https:///send",
    "https://",
    "push.example.com/send",
    "/send/abc",
    "https://push.example.com/se nd",
    "",
    "https://push.example.com/" + "a" * MAX_ENDPOINT_CHARS,
]


@pytest.mark.parametrize("endpoint", REFUSED)
async def test_endpoints_that_are_refused(endpoint: str) -> None:
    with pytest.raises(EndpointRefused) as caught:
        await check_endpoint(endpoint)
    # the reason never quotes the endpoint (its path is the device's capability)
    assert "/send" not in str(caught.value)


@pytest.mark.parametrize("value", [None, 12, ["https://push.example.com/x"], {"url": "x"}, b"https://x"])
async def test_an_endpoint_that_is_not_a_string_is_refused(value: object) -> None:
    with pytest.raises(EndpointRefused):
        await check_endpoint(value)


@pytest.mark.parametrize("endpoint", [
    "https://8.8.8.8/send/abc",
    "https://1.1.1.1:8443/wpush/v2/abc",
    "https://[2606:4700:4700::1111]/send/abc",
    "https://[::ffff:8.8.8.8]/send/abc",  # IPv4-mapped, of a public address
    "https://8.8.8.8/" + "a" * (MAX_ENDPOINT_CHARS - len("https://8.8.8.8/")),  # just long enough
])
async def test_public_endpoints_pass(endpoint: str) -> None:
    assert await check_endpoint(endpoint) == endpoint


@pytest.mark.parametrize("endpoint", [
    "http://127.0.0.1:8080/push/abc",
    "https://localhost/push/abc",
    "http://[::1]:9000/push",
    "https://10.1.2.3/push",
])
async def test_allow_private_endpoints_lets_http_and_local_addresses_through(endpoint: str) -> None:
    with pytest.raises(EndpointRefused):
        await check_endpoint(endpoint)
    assert await check_endpoint(endpoint, allow_private=True) == endpoint


@pytest.mark.parametrize("endpoint", ["ftp://127.0.0.1/x", "http://u:p@127.0.0.1/x", "", "127.0.0.1/x",
                                      "http://127.0.0.1/" + "a" * MAX_ENDPOINT_CHARS])
async def test_allow_private_endpoints_still_wants_a_url(endpoint: str) -> None:
    with pytest.raises(EndpointRefused):
        await check_endpoint(endpoint, allow_private=True)


@pytest.mark.parametrize(("address", "public"), [
    ("8.8.8.8", True), ("2606:4700::1111", True), ("::ffff:8.8.8.8", True),
    ("127.0.0.1", False), ("10.0.0.1", False), ("100.64.0.1", False), ("169.254.1.1", False),
    ("0.0.0.0", False), ("224.0.0.251", False), ("240.0.0.1", False),
    ("::1", False), ("::", False), ("fe80::1", False), ("fc00::1", False), ("ff0e::1", False),
    ("::ffff:127.0.0.1", False), ("::ffff:192.168.0.1", False), ("2002:7f00:1::", False),
    ("2002:808:808::1", True), ("64:ff9b::7f00:1", False), ("2001:db8::1", False),
])
def test_is_public_address(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


def test_logs_see_the_origin_of_an_endpoint_only() -> None:
    assert endpoint_origin("https://push.example.com:8443/wpush/v2/SECRET") == "https://push.example.com:8443"
    assert "SECRET" not in endpoint_origin("https://fcm.googleapis.com/fcm/send/SECRET")


# -- at connect time: the resolver and the poster (DNS rebinding) ----------------------------------


async def test_the_resolver_refuses_a_name_of_a_local_address() -> None:
    resolver = PublicResolver()
    try:
        with pytest.raises(EndpointRefused):
            await resolver.resolve("localhost", 443)
    finally:
        await resolver.close()


@pytest.fixture
async def local_service() -> TestServer:
    """A real HTTP server on 127.0.0.1 that counts the requests that reach it."""
    hits: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(status=201)

    async def redirect(request: web.Request) -> web.Response:
        hits.append(request.path)
        raise web.HTTPTemporaryRedirect("/landed")

    app = web.Application()
    app.router.add_post("/push/{id}", handler)
    app.router.add_post("/moved", redirect)
    app.router.add_post("/landed", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    server.hits = hits  # type: ignore[attr-defined]
    yield server
    await server.close()


async def test_a_name_turned_local_is_refused_when_connecting(local_service: TestServer) -> None:
    """The sender's session resolves with PublicResolver: a name that points at the server's own
    network when the push is sent never gets a connection, whatever it resolved to before."""
    port = local_service.port
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=PublicResolver())) as s:
        with pytest.raises(aiohttp.ClientConnectorError) as caught:
            await s.post(f"http://localhost:{port}/push/abc", data=b"x")
    assert isinstance(caught.value.os_error, EndpointRefused)
    assert local_service.hits == []  # type: ignore[attr-defined]
    # the same session without the resolver does reach it: the refusal above is the resolver's
    async with aiohttp.ClientSession() as s, s.post(f"http://localhost:{port}/push/abc") as r:
        assert r.status == 201


async def test_the_poster_refuses_an_ip_literal_unless_private_is_allowed(local_service: TestServer) -> None:
    url = f"http://127.0.0.1:{local_service.port}/push/abc"
    async with aiohttp.ClientSession() as session:
        with pytest.raises(EndpointRefused):
            await _Poster(session, 5.0, allow_private=False).post(url, data=b"x", headers={})
        assert local_service.hits == []  # type: ignore[attr-defined]
        answer = await _Poster(session, 5.0, allow_private=True).post(url, data=b"x", headers={})
    assert answer.status == 201
    assert local_service.hits == ["/push/abc"]  # type: ignore[attr-defined]


async def test_the_poster_follows_no_redirect(local_service: TestServer) -> None:
    async with aiohttp.ClientSession() as session:
        answer = await _Poster(session, 5.0, allow_private=True).post(
            f"http://127.0.0.1:{local_service.port}/moved", data=b"x", headers={})
    assert answer.status == 307
    assert local_service.hits == ["/moved"]  # type: ignore[attr-defined]


# -- config ---------------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_push_defaults() -> None:
    push = Config().push
    assert push.enabled is True and push.previews is False and push.allow_private_endpoints is False
    assert (push.ttl_seconds, push.min_interval_seconds) == (86400, 10.0)  # SPEC 9
    assert (push.timeout_seconds, push.workers, push.queue, push.retries, push.retry_seconds) == \
        (10.0, 4, 10000, 3, 1.0)


@pytest.mark.parametrize("subject", ["mailto:ops@example.org", "https://chat.example.org",
                                     "https://chat.example.org:8443/about", "mailto:postmaster@localhost"])
def test_good_subjects(tmp_path: Path, subject: str) -> None:
    assert load_config(write(tmp_path, f'[push]\nsubject = "{subject}"\n')).push.subject == subject


KEY = b64url(ec.generate_private_key(ec.SECP256R1()).private_numbers().private_value.to_bytes(32, "big"))


@pytest.mark.parametrize("text", [
    '[push]\nsubject = "ops@example.org"\n',
    '[push]\nsubject = "http://chat.example.org"\n',
    '[push]\nsubject = "mailto:"\n',
    '[push]\nsubject = "mailto:nobody"\n',
    '[push]\nsubject = "https://"\n',
    '[push]\nsubject = "https://chat.example.org ops"\n',
    '[push]\nvapid_private_key = "abc"\n',
    f'[push]\nvapid_private_key = "{KEY}="\n',  # padding
    f'[push]\nvapid_private_key = "{KEY[:-2]}"\n',  # 31 bytes
    f'[push]\nvapid_private_key = "{KEY}AAAA"\n',  # 35 bytes
    '[push]\nvapid_private_key = "' + base64.b64encode(b"\xfb" * 32).decode().rstrip("=") + '"\n',
    "[push]\nttl_seconds = 0\n",
    "[push]\nttl_seconds = 2419201\n",  # past 4 weeks
    "[push]\ntimeout_seconds = 0\n",
    "[push]\nworkers = 0\n",
    "[push]\nqueue = 0\n",
    "[push]\nretries = -1\n",
    "[push]\nretry_seconds = 0\n",
    "[push]\nmin_interval_seconds = -1\n",
    "[push]\nmin_interval_seconds = nan\n",
    "[push]\nenabled = 1\n",
    "[push]\nworkers = 2.5\n",
    "[push]\nendpoint = \"x\"\n",  # unknown key
])
def test_bad_push_settings_are_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, text))


def test_zero_retries_and_no_interval_are_allowed(tmp_path: Path) -> None:
    push = load_config(write(tmp_path, "[push]\nretries = 0\nmin_interval_seconds = 0\n"
                                       f'vapid_private_key = "{KEY}"\n')).push
    assert (push.retries, push.min_interval_seconds, push.vapid_private_key) == (0, 0.0, KEY)


def test_the_subject_defaults_to_the_public_https_address() -> None:
    assert vapid_subject(Config()) == DEFAULT_SUBJECT
    assert vapid_subject(Config(server=Server(public_url="http://chat.example.org"))) == DEFAULT_SUBJECT
    assert vapid_subject(Config(server=Server(public_url="https://chat.example.org:8443/c"))) == \
        "https://chat.example.org"
    assert vapid_subject(Config(server=Server(public_url="https://chat.example.org"),
                                push=Push(subject="mailto:ops@example.org"))) == "mailto:ops@example.org"


# -- the VAPID key --------------------------------------------------------------------------------


def test_the_vapid_key_file_is_made_once_owner_only(tmp_path: Path) -> None:
    config = Config(database=Database(path=str(tmp_path / "var" / "chat.db")))
    first = public_key(load_vapid(config))
    path = tmp_path / "var" / "chat.db.vapid"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    point = base64.urlsafe_b64decode(first + "=" * (-len(first) % 4))
    assert len(point) == 65 and point[0] == 4  # what applicationServerKey takes
    assert public_key(load_vapid(config)) == first  # reused, not made again
    os.chmod(path, 0o644)
    load_vapid(config)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # tightened
    path.write_text("not a key\n")
    with pytest.raises(ValueError):
        load_vapid(config)


def test_a_configured_vapid_key_is_used_and_no_file_made(tmp_path: Path) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    raw = b64url(private.private_numbers().private_value.to_bytes(32, "big"))
    config = Config(database=Database(path=str(tmp_path / "chat.db")), push=Push(vapid_private_key=raw))
    expected = private.public_key().public_numbers()
    point = base64.urlsafe_b64decode(public_key(load_vapid(config)) + "=")
    assert int.from_bytes(point[1:33], "big") == expected.x
    assert not (tmp_path / "chat.db.vapid").exists()
    with pytest.raises(ValueError):  # 32 bytes, but zero is no P-256 private key
        load_vapid(Config(push=Push(vapid_private_key=b64url(bytes(32)))))


def test_the_signature_is_a_vapid_header_with_the_claims_given() -> None:
    from py_vapid import Vapid02
    vapid = load_vapid(Config(push=Push(vapid_private_key=KEY)))
    claims = {"sub": "https://chat.example.org:8443", "aud": "https://push.example.com",
              "exp": int(time.time()) + 3600}
    header = vapid.sign(dict(claims))["Authorization"]
    assert header.startswith("vapid t=") and ",k=" in header
    assert Vapid02.verify(header)


# -- Topic and Retry-After --------------------------------------------------------------------------


def test_topic_is_32_base64url_characters_per_conversation() -> None:
    one, two = topic(b"k", "personal:4915112345678"), topic(b"k", "group:AbCdEfGhIj")
    assert len(one) == len(two) == 32
    assert set(one + two) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert one != two and one == topic(b"k", "personal:4915112345678")
    assert one != topic(b"other key", "personal:4915112345678")  # keyed: no phone guessed from it


def test_retry_after() -> None:
    assert _retry_after(None) is None and _retry_after("") is None and _retry_after("soon") is None
    assert _retry_after("5") == 5.0
    assert _retry_after("3600") == MAX_RETRY_AFTER
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= (_retry_after(later) or 0) <= 30
    assert _retry_after(email.utils.formatdate(time.time() - 30, usegmt=True)) == 0.0
