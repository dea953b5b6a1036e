"""`server.allowed_hosts` without a server (chatserver/hosts.py): how a Host header is read and
which hosts the defaults allow. tests/features/test_allowed_hosts.py runs them on a server."""

from __future__ import annotations

import pytest

from chatserver.config import load_config
from chatserver.hosts import AllowedHosts, split_host


@pytest.mark.parametrize(("header", "host"), [
    ("chat.example", "chat.example"), ("Chat.Example.:8080", "chat.example"),
    ("127.0.0.1:80", "127.0.0.1"), ("[::1]:8080", "::1"), ("[FE80::1]", "fe80::1"),
    ("::1", None), ("a b", None), ("user@host", None), ("host:1:2", None), ("host/x", None),
    ("", None), ("host:123456", None), ("[", None),
])
def test_split_host(header: str, host: str | None) -> None:
    assert split_host(header) == host


def test_the_defaults_allow_localhost_any_ip_and_a_named_server_host() -> None:
    allowed = AllowedHosts.from_config(load_config(server__host="chat.lan"))
    for header in ["chat.lan", "CHAT.LAN:8080", "localhost", "localhost:1", "127.0.0.1:8080",
                   "[::1]:8080", "10.0.0.7", "[2001:db8::1]:443", None]:
        assert allowed.allows(header), header
    for header in ["evil.example", "chat.lan.evil.example", "10.0.0.7.nip.io", "lan", ""]:
        assert not allowed.allows(header), header


def test_an_address_or_the_any_address_as_server_host_adds_no_name() -> None:
    for host in ["0.0.0.0", "::", "192.168.1.5"]:
        allowed = AllowedHosts.from_config(load_config(server__host=host))
        assert allowed.names == frozenset({"localhost"}) and allowed.any_ip, host


def test_a_configured_list_replaces_the_defaults() -> None:
    allowed = AllowedHosts.from_config(load_config(server__allowed_hosts=["Chat.Example", ".family.example",
                                                                          "[::1]"]))
    for header in ["chat.example:443", "family.example", "a.b.family.example", "[::1]:8080"]:
        assert allowed.allows(header), header
    for header in ["localhost", "127.0.0.1", "evilfamily.example", "evil.example"]:
        assert not allowed.allows(header), header
