"""`server.allowed_hosts`: the names a request's `Host` header may carry (issue 12, finding 7).

DNS rebinding: a page on `evil.example` makes its name resolve to a server on the visitor's LAN
or loopback, and the browser then treats that server as `evil.example`'s own origin (same-origin
requests, cookies set for that name). The server sees `Host: evil.example`; refusing a name it
does not know (400, as Django's `ALLOWED_HOSTS`) ends the attack. An IP-address literal cannot be
rebound (there is no name to re-resolve), so by default every one passes.

Imports nothing from the package but config, so that it can be tested without a server.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from .config import Config

# host, or [IPv6 literal], then an optional :port (RFC 9110 7.2, RFC 3986 3.2.2). Anything else
# (a userinfo, a path, a bare IPv6 address, two ports) is not a Host we serve.
_HOST_RE: Final = re.compile(r"(?P<host>\[[0-9A-Za-z:.%]+\]|[^\s:\[\]/@?#]+)(?::[0-9]{1,5})?")
# Always allowed by default: loopback names that a rebinding page cannot own.
DEFAULT_NAMES: Final = ("localhost",)


def split_host(header: str) -> str | None:
    """The host of a `Host` header value, lower-case, without the port, the brackets of an IPv6
    literal or a trailing dot (`Chat.Example.:8080` -> `chat.example`); None when it is not a
    host[:port]."""
    match = _HOST_RE.fullmatch(header)
    if match is None:
        return None
    host = match["host"].lower()
    if host.startswith("["):
        host = host[1:-1]
    return host[:-1] if host.endswith(".") else host


def is_ip_literal(host: str) -> bool:
    """True for an IPv4 or IPv6 address written as one (no DNS name to rebind)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class AllowedHosts:
    """Which `Host` values pass: `names` exactly, names under a `.suffix` entry (Django's form),
    `any_ip` any IP literal, `everything` when an entry is `*`."""

    names: frozenset[str]
    suffixes: tuple[str, ...] = ()
    any_ip: bool = False
    everything: bool = False

    @classmethod
    def from_config(cls, config: Config) -> AllowedHosts:
        """From `server.allowed_hosts`; empty (the default): `server.host` when it is a name,
        `localhost`, every IP literal (so also `127.0.0.1` and `[::1]`) and the host of
        `server.public_url` when that key is set."""
        entries = [split_host(entry) or entry.lower() for entry in config.server.allowed_hosts]
        if entries:
            return cls(names=frozenset(e for e in entries if not e.startswith(".")),
                       suffixes=tuple(e for e in entries if e.startswith(".")),
                       everything="*" in entries)
        names = set(DEFAULT_NAMES)
        host = split_host(config.server.host)
        if host and not is_ip_literal(host):
            names.add(host)
        # `server.public_url` is another part of issue 12's; read it when this release has it.
        public = urlsplit(str(getattr(config.server, "public_url", "") or "")).hostname
        if public:
            names.add(public.rstrip("."))
        return cls(names=frozenset(names), any_ip=True)

    def allows(self, header: str | None) -> bool:
        """True when a request with this `Host` header value may be served. A request without
        one passes: a browser always sends it (so a rebinding page cannot leave it out), and
        HTTP/1.0 health checks do not."""
        if header is None or self.everything:
            return True
        host = split_host(header)
        if host is None:
            return False
        if host in self.names or (self.any_ip and is_ip_literal(host)):
            return True
        return any(host.endswith(suffix) or host == suffix[1:] for suffix in self.suffixes)

    def allows_probe(self, header: str | None) -> bool:
        """`allows`, and also any IP literal: for /healthz and /metrics (SPEC 11), which a load
        balancer, a process manager or Prometheus asks by address (`Host: 127.0.0.1:8080`)
        whatever names `server.allowed_hosts` lists. An address cannot be rebound, so a
        rebinding page gains nothing (and /metrics also checks the client's address)."""
        if self.allows(header):
            return True
        host = split_host(header) if header is not None else None
        return host is not None and is_ip_literal(host)
