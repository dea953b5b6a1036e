"""`server.trusted_proxies` without a proxy (chatserver/remote.py, SPEC 11): which address and
scheme a request is taken to come from, for every shape of forwarded header; the config checks;
`client_address` / `client_scheme` on real requests to an in-process server; and that nothing
else in the package reads the socket's peer. tests/system/test_nginx.py runs it behind nginx."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict

from chatserver.config import ConfigError, load_config
from chatserver.remote import (
    TrustedProxies,
    client_address,
    client_scheme,
    parse_address,
    trusted_proxies_key,
)

PACKAGE = Path(__file__).resolve().parents[2] / "chatserver"
NGINX = "127.0.0.1"
TRUSTED = TrustedProxies.from_config(load_config(
    server__trusted_proxies=["127.0.0.1", "10.0.0.0/8", "::1/128"]))
RFC7239 = TrustedProxies.from_config(load_config(
    server__trusted_proxies=["127.0.0.1/32", "10.0.0.0/8"], server__forwarded_header="forwarded"))


def xff(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


@pytest.mark.parametrize(("text", "address"), [
    ("192.0.2.1", "192.0.2.1"), (" 192.0.2.1 ", "192.0.2.1"), ("192.0.2.1:4711", "192.0.2.1"),
    ("2001:db8::1", "2001:db8::1"), ("[2001:db8::1]:4711", "2001:db8::1"),
    ("[2001:db8::1]", "2001:db8::1"), ("::ffff:192.0.2.1", "192.0.2.1"),
    ("unknown", None), ("_hidden", None), ("", None), ("[2001:db8::1", None),
    ("192.0.2.1:80:1", None), ("example.org", None), ("300.1.1.1", None),
])
def test_parse_address(text: str, address: str | None) -> None:
    parsed = parse_address(text)
    assert (None if parsed is None else str(parsed)) == address


@pytest.mark.parametrize(("peer", "headers", "address", "scheme"), [
    # An untrusted peer is itself, whatever it says.
    ("192.0.2.7", xff(("X-Forwarded-For", "198.51.100.1"), ("X-Forwarded-Proto", "https")),
     "192.0.2.7", None),
    ("::ffff:192.0.2.7", xff(("X-Forwarded-For", "198.51.100.1")), "192.0.2.7", None),
    # A trusted proxy: the address it saw, and the scheme it says.
    (NGINX, xff(("X-Forwarded-For", "198.51.100.1"), ("X-Forwarded-Proto", "https")),
     "198.51.100.1", "https"),
    # What a client wrote to the left of the proxy's entry is never read.
    (NGINX, xff(("X-Forwarded-For", "6.6.6.6, 198.51.100.1")), "198.51.100.1", None),
    (NGINX, xff(("X-Forwarded-For", "10.1.1.1, 198.51.100.1")), "198.51.100.1", None),
    # Two trusted hops (nginx <- a proxy at 10.0.0.2): the first untrusted from the right.
    (NGINX, xff(("X-Forwarded-For", "6.6.6.6, 198.51.100.1, 10.0.0.2")), "198.51.100.1", None),
    # Every hop trusted: the left-most.
    (NGINX, xff(("X-Forwarded-For", "10.0.0.9, 10.0.0.2")), "10.0.0.9", None),
    # Several header lines are one list, in order.
    (NGINX, xff(("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "198.51.100.1")),
     "198.51.100.1", None),
    # Junk where a trusted hop wrote: that hop is the client, never the junk or what is left of it.
    (NGINX, xff(("X-Forwarded-For", "198.51.100.1, unknown")), NGINX, None),
    (NGINX, xff(("X-Forwarded-For", "198.51.100.1, junk, 10.0.0.2")), "10.0.0.2", None),
    # Ports and IPv6 as proxies write them.
    (NGINX, xff(("X-Forwarded-For", "[2001:db8::5]:4711")), "2001:db8::5", None),
    (NGINX, xff(("X-Forwarded-For", "198.51.100.1:4711")), "198.51.100.1", None),
    ("::1", xff(("X-Forwarded-For", "2001:db8::5")), "2001:db8::5", None),
    # No header from a trusted peer: the peer (a health check on the proxy's host).
    (NGINX, xff(), NGINX, None),
    (NGINX, xff(("X-Forwarded-For", "")), NGINX, None),
    (NGINX, xff(("X-Forwarded-Proto", "https")), NGINX, "https"),
    # The proto of the chosen hop when there is one per hop; else the last (the nearest proxy's).
    (NGINX, xff(("X-Forwarded-For", "198.51.100.1, 10.0.0.2"), ("X-Forwarded-Proto", "https, http")),
     "198.51.100.1", "https"),
    (NGINX, xff(("X-Forwarded-For", "6.6.6.6, 198.51.100.1"), ("X-Forwarded-Proto", "HTTPS")),
     "198.51.100.1", "https"),
    (NGINX, xff(("X-Forwarded-For", "198.51.100.1"), ("X-Forwarded-Proto", "gopher")),
     "198.51.100.1", None),
    # The other header is not read: a proxy writing X-Forwarded-For passes a client's Forwarded on.
    (NGINX, xff(("Forwarded", "for=6.6.6.6;proto=https"), ("X-Forwarded-For", "198.51.100.1")),
     "198.51.100.1", None),
    # No IP peer (a Unix socket): nothing to trust.
    ("", xff(("X-Forwarded-For", "198.51.100.1")), "", None),
])
def test_x_forwarded_for(peer: str, headers: CIMultiDict[str], address: str,
                         scheme: str | None) -> None:
    assert TRUSTED.resolve(peer, headers) == (address, scheme)


def _forwarded(value: str) -> tuple[dict[str, str], ...]:
    """What aiohttp's `request.forwarded` gives for this header value (a simple parse: the
    tests' values have no quoted commas or semicolons)."""
    return tuple(dict((pair.split("=", 1)[0].strip().lower(), pair.split("=", 1)[1].strip().strip('"'))
                      for pair in element.split(";") if "=" in pair)
                 for element in value.split(","))


@pytest.mark.parametrize(("peer", "value", "address", "scheme"), [
    ("192.0.2.7", "for=198.51.100.1;proto=https", "192.0.2.7", None),
    (NGINX, "for=198.51.100.1;proto=https", "198.51.100.1", "https"),
    (NGINX, 'for=6.6.6.6;proto=http, for="[2001:db8::5]:4711";proto=https', "2001:db8::5", "https"),
    (NGINX, "for=198.51.100.1;proto=https, for=10.0.0.2;proto=http", "198.51.100.1", "https"),
    (NGINX, "for=198.51.100.1, for=_hidden", NGINX, None),
    (NGINX, "for=198.51.100.1", "198.51.100.1", None),
])
def test_rfc_7239_forwarded(peer: str, value: str, address: str, scheme: str | None) -> None:
    headers = xff(("Forwarded", value), ("X-Forwarded-For", "6.6.6.6"))
    assert RFC7239.resolve(peer, headers, _forwarded(value)) == (address, scheme)


def test_the_default_trusts_no_one() -> None:
    nobody = TrustedProxies.from_config(load_config())
    assert nobody.networks == ()
    assert nobody.resolve("127.0.0.1", xff(("X-Forwarded-For", "198.51.100.1"),
                                           ("X-Forwarded-Proto", "https"))) == ("127.0.0.1", None)


@pytest.mark.parametrize("entry", ["10.0.0.5/8", "example.org", "10.0.0.0/33", "", "127.0.0.1 "])
def test_a_bad_entry_is_refused_at_load(entry: str) -> None:
    with pytest.raises(ConfigError, match="trusted_proxies"):
        load_config(server__trusted_proxies=[entry])


def test_an_unknown_header_name_is_refused_at_load() -> None:
    with pytest.raises(ConfigError, match="forwarded_header"):
        load_config(server__forwarded_header="x-real-ip")


async def _whoami(trusted: list[str]) -> tuple[TestServer, web.Application]:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"address": client_address(request),
                                  "scheme": client_scheme(request)})
    app = web.Application()
    app[trusted_proxies_key] = TrustedProxies.from_config(load_config(server__trusted_proxies=trusted))
    app.router.add_get("/", handler)
    return TestServer(app, host="127.0.0.1"), app


@pytest.mark.parametrize(("trusted", "address", "scheme"), [
    ([], "127.0.0.1", "http"),
    (["127.0.0.0/8"], "198.51.100.1", "https"),
    (["10.0.0.0/8"], "127.0.0.1", "http"),
])
async def test_on_a_real_socket(trusted: list[str], address: str, scheme: str) -> None:
    server, _ = await _whoami(trusted)
    async with TestClient(server) as client:
        resp = await client.get("/", headers={"X-Forwarded-For": "198.51.100.1",
                                              "X-Forwarded-Proto": "https"})
        assert await resp.json() == {"address": address, "scheme": scheme}


def test_nothing_else_reads_the_socket_peer() -> None:
    """One function says where a request comes from (SPEC 11): a `request.remote` or a peername
    anywhere else would be the proxy's address behind nginx."""
    pattern = re.compile(r"[\w)\]]\.remote\b|peername")  # `x.remote`, not `from .remote`
    readers = [f"{path.relative_to(PACKAGE)}:{n}"
               for path in PACKAGE.rglob("*.py") if path.name != "remote.py"
               for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert readers == []
