"""The project's nginx site (deploy/nginx-chat.conf) in front of a real server (SPEC 11, issue 16):
Debian's nginx, started by the test on free ports with its own prefix, pid and logs (never the
system's service), the site rendered with a self-signed certificate made here, and `run.py serve`
behind it with `server.trusted_proxies = ["127.0.0.1/32"]` (nginx connects from 127.0.0.1).

Two clients behind one proxy are told apart by real source addresses, not by headers the test
makes up: the loopback network is all of 127.0.0.0/8, so a client socket bound to 127.0.0.2 and
one bound to 127.0.0.3 are two machines as far as nginx can tell. nginx appends the address it
saw to X-Forwarded-For ($proxy_add_x_forwarded_for) and the server believes it because the
request comes from 127.0.0.1; were it not believed, both clients would be 127.0.0.1 and share one
failed-login counter. A client's own X-Forwarded-For stays to the left of nginx's entry and is
never read. A client that talks to the server directly from 127.0.0.4 (not a trusted proxy) is
127.0.0.4 whatever it sends.

`make test` installs nginx (as root, with apt-get); where it is missing these tests are skipped
with the reason, except under CI (`CI` set), where that is an error.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import ipaddress
import os
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from chatserver.attachments import MULTIPART_SLACK
from chatserver.config import Limits
from helpers.accounts import PASSWORD
from helpers.attachments import UPLOAD, needle_file
from helpers.frames import TODAY
from helpers.server import REPO, ServerProcess, free_port, running, write_config
from helpers.timing import EXIT_TIMEOUT, NET_TIMEOUT, START_TIMEOUT
from helpers.ws import recv, send_new_msg

NGINX = os.environ.get("CHAT_NGINX", "/usr/sbin/nginx")
SITE = REPO / "deploy" / "nginx-chat.conf"
HOST = "127.0.0.1"
A, B = "5557000001", "5557000002"
# Failed logins per address before 429 in these tests (SPEC 10's default is 10).
FAILURES = 3

MISSING = None if os.access(NGINX, os.X_OK) else (
    f"{NGINX} is missing: `make test` installs it with apt-get when run as root; otherwise "
    "`apt-get install nginx`")
WARNING = f"NGINX TESTS {'FAIL' if os.environ.get('CI') else 'SKIPPED'}: {MISSING}"
pytestmark = pytest.mark.skipif(bool(MISSING) and not os.environ.get("CI"), reason=WARNING)


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, signed by its own key: (cert, key) PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chat test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def render_site(values: dict[str, str]) -> str:
    """deploy/nginx-chat.conf with its @NAMES@ replaced; AssertionError for one left over. On a
    machine without IPv6 its `[::]` listeners are left out (nginx would not start)."""
    text = SITE.read_text()
    for name, value in values.items():
        text = text.replace(f"@{name}@", value)
    lines = [line for line in text.splitlines() if "@" not in line.partition("#")[0]]
    assert len(lines) == len(text.splitlines()), f"a placeholder is left in {SITE}"
    if not _has_ipv6():
        text = "\n".join(line for line in lines if "listen [::]" not in line)
    return text


@dataclass
class Proxy:
    """nginx in front of `server`: https on `https_port`, plain http on `http_port`."""

    server: ServerProcess
    https_port: int
    http_port: int
    folder: Path
    ssl: ssl.SSLContext

    @property
    def origin(self) -> str:
        return f"https://{HOST}:{self.https_port}"

    def url(self, path: str) -> str:
        return self.origin + path

    def ws_url(self, path: str) -> str:
        return f"wss://{HOST}:{self.https_port}{path}"

    def client(self, address: str = HOST) -> aiohttp.ClientSession:
        """A browser-like client whose connections come from `address` (a loopback alias) and
        trust the test's certificate."""
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(local_addr=(address, 0), ssl=self.ssl),
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            timeout=aiohttp.ClientTimeout(total=NET_TIMEOUT * 3))

    def log(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}"
                         for p in sorted(self.folder.glob("*.log")))


def _nginx_conf(folder: Path, site: Path) -> str:
    """A minimal main config that keeps everything of nginx's in `folder` and includes the site."""
    temps = "\n".join(f"    {kind}_temp_path {folder / kind};"
                      for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    # As root the workers would become `nobody`, who cannot enter pytest's private folders.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (f"{user}worker_processes 1;\npid {folder / 'nginx.pid'};\n"
            f"error_log {folder / 'error.log'} info;\n"
            "events { worker_connections 256; }\n"
            f"http {{\n{temps}\n    access_log {folder / 'access.log'};\n"
            f"    include {site};\n}}\n")


def _wait_listening(port: int, proc: subprocess.Popen[bytes], folder: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        assert proc.poll() is None, f"nginx exited ({proc.returncode}):\n" + "\n".join(
            p.read_text(errors="replace") for p in folder.glob("*.log"))
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return
        assert time.monotonic() < deadline, "nginx did not listen in time"
        time.sleep(0.05)  # polling interval, not synchronisation


@contextlib.asynccontextmanager
async def proxied(tmp_path: Path, **limits: object) -> AsyncIterator[Proxy]:
    """A server behind nginx running the project's site, both stopped at the end."""
    if MISSING:
        pytest.fail(WARNING)  # only reached under CI: the skip mark covers the rest
    config = write_config(tmp_path / "config.toml", {
        "security": {"bcrypt_rounds": 4, "https": True},
        "server": {"trusted_proxies": ["127.0.0.1/32"]},
        "limits": {"login_failures": FAILURES, **limits}})
    folder = tmp_path / "nginx"
    folder.mkdir()
    cert, key = self_signed(folder)
    async with running(tmp_path / "chat.db", config, tmp_path) as server:
        https_port, http_port = free_port(), free_port()
        site = folder / "site.conf"
        site.write_text(render_site({
            "SERVER_NAME": "localhost 127.0.0.1", "HTTPS_PORT": str(https_port),
            "HTTP_PORT": str(http_port), "CERTIFICATE": str(cert), "CERTIFICATE_KEY": str(key),
            "UPSTREAM": f"{HOST}:{server.port}", "LOG_DIR": str(folder)}))
        conf = folder / "nginx.conf"
        conf.write_text(_nginx_conf(folder, site))
        command = [NGINX, "-p", str(folder), "-e", str(folder / "error.log"), "-c", str(conf)]
        checked = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=EXIT_TIMEOUT)
        assert checked.returncode == 0, checked.stderr
        proc = subprocess.Popen([*command, "-g", "daemon off;"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_listening(https_port, proc, folder)
            context = ssl.create_default_context(cafile=str(cert))
            yield Proxy(server, https_port, http_port, folder, context)
        finally:
            proc.terminate()  # SIGTERM: nginx's fast shutdown, workers included
            try:
                proc.wait(EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(EXIT_TIMEOUT)


async def register(session: aiohttp.ClientSession, proxy: Proxy, phone: str) -> None:
    """Register `phone` over https through nginx, as a browser on the proxy's origin would."""
    async with session.post(proxy.url("/register"), allow_redirects=False,
                            headers={"Origin": proxy.origin},
                            data={"phone": phone, "name": f"user {phone}", "password": PASSWORD}) as resp:
        assert resp.status == 302, (resp.status, await resp.text(), proxy.server.output())


def big_form(data: bytes) -> aiohttp.FormData:
    """A multipart body with one part `file` (from a file object: aiohttp warns about large bytes)."""
    body = aiohttp.FormData()
    body.add_field("file", io.BytesIO(data), filename="big.bin", content_type="application/octet-stream")
    return body


async def failed_login(session: aiohttp.ClientSession, url: str, phone: str,
                       headers: dict[str, str] | None = None) -> int:
    """The status of a login with a wrong password (401, or 429 past the limits)."""
    async with session.post(url, allow_redirects=False, headers=headers or {},
                            data={"phone": phone, "password": "not the password"}) as resp:
        await resp.read()
        return resp.status


async def test_a_chat_over_wss_through_nginx(tmp_path: Path) -> None:
    async with proxied(tmp_path) as proxy, proxy.client() as alice, proxy.client() as bob:
        # Plain http only redirects to https.
        async with alice.get(f"http://{HOST}:{proxy.http_port}/login", allow_redirects=False) as resp:
            assert resp.status == 301
            assert resp.headers["Location"] == f"{proxy.origin}/login"
        await register(alice, proxy, A)
        await register(bob, proxy, B)
        # The origin is https (X-Forwarded-Proto believed from nginx), not the socket's http.
        async with alice.post(proxy.url("/chat/special/room"), json={"room_name": "plain"},
                              headers={"Origin": f"http://{HOST}:{proxy.https_port}"}) as resp:
            assert resp.status == 403
        origin = {"Origin": proxy.origin}
        b_recv = await bob.ws_connect(proxy.ws_url(f"/ws/chat/special/{B}/"), headers=origin)
        a_recv = await alice.ws_connect(proxy.ws_url(f"/ws/chat/special/{A}/"), headers=origin)
        a_send = await alice.ws_connect(proxy.ws_url(f"/ws/chat/personal/{A}/{B}/"), headers=origin)
        b_send = await bob.ws_connect(proxy.ws_url(f"/ws/chat/personal/{B}/{A}/"), headers=origin)
        hello = await send_new_msg(a_send, A, B, "hello through nginx", f"{TODAY} 10:00:00.000001")
        assert await recv(b_recv) == hello
        answer = await send_new_msg(b_send, B, A, "hello back", f"{TODAY} 10:00:01")
        assert await recv(a_recv) == answer
        for ws in (a_recv, b_recv, a_send, b_send):
            await ws.close()
        assert "Strict-Transport-Security" in resp.headers  # security.https: the server says so


async def test_an_upload_at_the_size_limit_through_nginx(tmp_path: Path) -> None:
    """nginx's client_max_body_size lets a file of exactly limits.max_attachment_bytes through
    in its multipart envelope; one byte more is the server's own clean 413."""
    limit = Limits().max_attachment_bytes
    site = SITE.read_text()
    assert f"client_max_body_size {(limit + MULTIPART_SLACK) // 1024}k;" in site
    async with proxied(tmp_path) as proxy, proxy.client() as alice:
        await register(alice, proxy, A)
        data, _ = needle_file(limit)
        async with alice.post(proxy.url(UPLOAD), data=big_form(data),
                              headers={"Origin": proxy.origin}) as resp:
            assert resp.status == 201, (await resp.text(), proxy.log())
            assert (await resp.json())["size"] == limit
        async with alice.post(proxy.url(UPLOAD), data=big_form(data + b"x"),
                              headers={"Origin": proxy.origin}) as resp:
            assert resp.status == 413, (await resp.text(), proxy.log())
            assert "at most" in (await resp.json())["error"]


async def test_failed_logins_of_two_clients_behind_nginx_are_counted_apart(tmp_path: Path) -> None:
    async with proxied(tmp_path) as proxy, proxy.client("127.0.0.2") as first, \
            proxy.client("127.0.0.3") as second:
        url = proxy.url("/login")
        phones = iter(f"55570001{n:02d}" for n in range(100))  # a new phone each: only the
        for _ in range(FAILURES):                               # address limit is reached
            assert await failed_login(first, url, next(phones)) == 401
        assert await failed_login(first, url, next(phones)) == 429
        # A forged X-Forwarded-For sent to nginx stays left of nginx's entry: still 127.0.0.2.
        assert await failed_login(first, url, next(phones), {"X-Forwarded-For": "10.9.9.9"}) == 429
        # The other client behind the same proxy has a counter of its own.
        for _ in range(FAILURES):
            assert await failed_login(second, url, next(phones)) == 401
        assert await failed_login(second, url, next(phones)) == 429
        log = proxy.server.err()
        assert "address=127.0.0.2" in log and "address=127.0.0.3" in log, log
        assert "address=127.0.0.1" not in log and "10.9.9.9" not in log, log


async def test_a_forged_x_forwarded_for_from_an_untrusted_peer_is_ignored(tmp_path: Path) -> None:
    async with proxied(tmp_path) as proxy, proxy.client("127.0.0.4") as direct, \
            proxy.client("127.0.0.4") as via_nginx, proxy.client("127.0.0.5") as other:
        server_login = proxy.server.url("/login")
        phones = iter(f"55570002{n:02d}" for n in range(100))
        # Straight to the server, from an address that is not a trusted proxy: a new forged
        # address each time, all counted against 127.0.0.4.
        for n in range(FAILURES):
            forged = {"X-Forwarded-For": f"10.8.8.{n}", "X-Forwarded-Proto": "https"}
            assert await failed_login(direct, server_login, next(phones), forged) == 401
        assert await failed_login(direct, server_login, next(phones),
                                  {"X-Forwarded-For": "10.8.8.99"}) == 429
        # Its forged scheme is not believed either: an https Origin is not the server's own.
        async with direct.post(proxy.server.url("/logout"), allow_redirects=False,
                               headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "10.8.8.1",
                                        "Origin": f"https://{HOST}:{proxy.server.port}"}) as resp:
            assert resp.status == 403
        # Through nginx the same machine is the same address, already over the limit...
        assert await failed_login(via_nginx, proxy.url("/login"), next(phones)) == 429
        # ...and another machine is not.
        assert await failed_login(other, proxy.url("/login"), next(phones)) == 401
        assert "10.8.8." not in proxy.server.err()
