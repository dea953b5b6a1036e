"""Who a request comes from behind reverse proxies: `server.trusted_proxies` (SPEC 11).

`client_address(request)` is the one place that says which address a request comes from: the
throttles (failed logins, handshakes per minute), the logs and anything else per address call it.
`request.remote` is the socket's peer, which behind nginx is nginx for every client, and must not
be used for that (tests/unit/test_client_address.py checks that nothing else does).
`client_scheme(request)` is the scheme the client used, for the same-origin checks (SPEC 4, 5):
behind a proxy that ends TLS, the browser's `Origin` is `https://...` while the socket is plain.

The rule: a request whose socket peer is not in `server.trusted_proxies` is its peer, whatever
headers it carries. One from a trusted proxy is read right to left along the header's list
(`X-Forwarded-For: client, proxy1, proxy2` and then the peer; or the `for=` of each RFC 7239
`Forwarded` element): each trusted address is skipped, and the first one that is not trusted is
the client (every hop to its right is a proxy we trust, each of which wrote the address it saw).
Everything to the left of it may be written by the client and is never read. When every address
is trusted, the left-most is the client. An entry that is not an address (`unknown`, an
obfuscated `_name`, junk) ends the walk at the trusted hop that wrote it: the client is then that
hop, never the junk. The scheme is the `proto` of the chosen hop (RFC 7239), or the
X-Forwarded-Proto entry in the same position when that header lists as many as X-Forwarded-For,
else its last entry (a proxy that sets it, as nginx's `proxy_set_header` does, overwrites what
the client sent); only `http` and `https` are believed.

Why not aiohttp_remotes (1.4.0), aiohttp's own package for this: `XForwardedStrict` and
`ForwardedStrict` take a list of trust sets, one per hop in a fixed position, and answer 400 to
a request whose chain is shorter or longer (a client talking to the server directly, or one that
sends its own X-Forwarded-For through nginx, which appends to it), where SPEC 11 says such a
request is simply its peer; `XForwardedFiltered` never looks at the socket's peer, so anyone who
reaches the server directly picks his own address. Each is also a middleware that clones every
request, and a middleware's frame stays alive as long as a WebSocket (middlewares.guard). This
is a function called where an address is needed, and the result is kept on the request.

Imports nothing from the package but config and keys' constant, so that it can be tested with a
mocked request.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from multidict import MultiMapping

from .config import Config

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SCHEMES: Final = frozenset({"http", "https"})
# Where the result is kept on the request (aiohttp's per-request storage): the headers are read
# once per request, however many callers ask.
_CACHE: Final = web.RequestKey[tuple[str, "str | None"]]("client")


def parse_address(text: str) -> IPAddress | None:
    """The IP address in a forwarded entry: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
    `[2001:db8::1]:4711`; an IPv4-mapped IPv6 address as the IPv4 one. None when it is not one
    (`unknown`, `_hidden`, junk)."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:  # IPv4 with a port (an IPv6 address has two colons or more)
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d
    return address


def _split_list(values: Iterable[str]) -> list[str]:
    """The entries of a comma-separated header that may come several times (RFC 9110 5.3: the
    same as one header with the values joined by commas), in order."""
    return [entry.strip() for value in values for entry in value.split(",")]


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    """`server.trusted_proxies` parsed: the networks whose forwarded headers are believed, and
    which header they write (`x-forwarded-for` or `forwarded`)."""

    networks: tuple[IPNetwork, ...] = ()
    header: str = "x-forwarded-for"

    @classmethod
    def from_config(cls, config: Config) -> TrustedProxies:
        """From `server.trusted_proxies` and `server.forwarded_header` (load_config has checked
        them; a bad entry raises ValueError here too)."""
        return cls(tuple(ipaddress.ip_network(entry) for entry in config.server.trusted_proxies),
                   config.server.forwarded_header)

    def trusts(self, address: IPAddress | None) -> bool:
        """True when `address` is one of the trusted proxies."""
        return address is not None and any(address in network for network in self.networks)

    def resolve(self, peer: str, headers: MultiMapping[str],
                forwarded: Sequence[Mapping[str, str]] = ()) -> tuple[str, str | None]:
        """(client address, client scheme or None when the socket's own scheme stands) of a
        request from socket peer `peer` (as aiohttp gives it; "" when unknown) with `headers`
        (every X-Forwarded-For / X-Forwarded-Proto line is read) and `forwarded` (aiohttp's
        parse of RFC 7239 `Forwarded`: one mapping per element, in order). The rule is the
        module docstring's."""
        peer_address = parse_address(peer)
        if peer_address is None or not self.trusts(peer_address):
            return (str(peer_address) if peer_address is not None else peer), None
        protos: list[str | None]
        if self.header == "forwarded":
            hops = [element.get("for", "") for element in forwarded]
            protos = [element.get("proto") for element in forwarded]
        else:
            hops = [hop for hop in _split_list(headers.getall("X-Forwarded-For", [])) if hop]
            sent = _split_list(headers.getall("X-Forwarded-Proto", []))
            # One entry per hop: the chosen hop's own; otherwise the last one, which the nearest
            # proxy set (nginx's proxy_set_header replaces what the client sent).
            protos = list(sent) if len(sent) == len(hops) else [sent[-1] if sent else None] * len(hops)
            if not hops and sent:
                protos = [sent[-1]]  # a trusted proxy that names no client: its own scheme
        client: IPAddress = peer_address
        index = 0 if not hops and self.header != "forwarded" else None
        for i in range(len(hops) - 1, -1, -1):
            address = parse_address(hops[i])
            if address is None:
                break  # junk written by the trusted hop to its right: that hop is the client
            client, index = address, i
            if not self.trusts(address):
                break
        proto = protos[index] if index is not None and index < len(protos) else None
        scheme = proto.lower() if proto and proto.lower() in SCHEMES else None
        return str(client), scheme


# Here rather than in keys.py, which imports the classes it types: the functions below need it.
trusted_proxies_key: Final = web.AppKey("trusted_proxies", TrustedProxies)


def _resolved(request: web.Request) -> tuple[str, str | None]:
    cached = request.get(_CACHE)
    if cached is None:
        trusted = request.app.get(trusted_proxies_key)
        if trusted is None or not trusted.networks:  # the default: no header is read at all
            peer = parse_address(request.remote or "")
            cached = (str(peer) if peer is not None else request.remote or ""), None
        else:
            cached = trusted.resolve(request.remote or "", request.headers,
                                     request.forwarded if trusted.header == "forwarded" else ())
        request[_CACHE] = cached
    return cached


def client_address(request: web.Request) -> str:
    """The client's IP address, as text ("" when the socket has no IP peer, e.g. a Unix
    socket): the socket's peer, or, from a trusted proxy, the address it forwarded (SPEC 11)."""
    return _resolved(request)[0]


def client_scheme(request: web.Request) -> str:
    """The scheme the client used, "http" or "https": from a trusted proxy its forwarded proto,
    otherwise the socket's own (SPEC 11)."""
    return _resolved(request)[1] or request.scheme
