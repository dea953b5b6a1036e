"""The load client: simulated users over HTTP and WebSockets, speaking only the wire protocol
(SPEC 4, 5.1-5.3), and the counts of what went wrong (`Tally`, `CHECKS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import aiohttp
import orjson

from chatserver.protocol import fetch_timestamp, now_micros

PASSWORD = "bench-password"
UPLOAD = "/chat/special/attachment"  # SPEC 8
DOWNLOAD = "/chat/attachment/"  # + the attachment's id
READ_BYTES = 256 * 1024  # what a download hands to the hash at once
COOKIE = "chat_session"
# What every case counts, in the report's order; every one must be 0 (`server_errors` is added
# from the server's log by bench.run_case).
CHECKS = ("incomplete", "lost", "duplicate_pushes", "out_of_order", "error_frames",
          "leftover_stored", "closed_unexpectedly", "corrupted", "server_errors")


class Clock:
    """A sender's clock: microseconds, bumped by 1 µs on a tie, so every timestamp is unique."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = 0

    def next(self) -> str:
        """The next `sent_timestamp`, "YYYY-MM-DD HH:MM:SS.ffffff" (UTC)."""
        us = now_micros()
        if us <= self.last:
            us = self.last + 1
        self.last = us
        t = fetch_timestamp(us)  # YYYY-MM-DDTHH:MM:SS.ffffffZ
        return f"{t[:10]} {t[11:-1]}"  # YYYY-MM-DD HH:MM:SS.ffffff


def frame(command: str, msg_from: str, msg_to: str, message: str, sent_timestamp: str,
          attachments: list[str] | None = None) -> str:
    """A client frame (SPEC 4) as JSON text; with `attachments` (ids, SPEC 8) when given."""
    f: dict[str, Any] = {"message": message, "command": command, "msg_from": msg_from,
                         "msg_to": msg_to, "sent_timestamp": sent_timestamp}
    if attachments is not None:
        f["attachments"] = attachments
    return orjson.dumps(f).decode()


def text_of(i: int, msg_from: str, msg_to: str) -> str:
    """The body of message `i`: ~64 characters, a typical short chat line."""
    return f"bench message {i:06d} from {msg_from} to {msg_to} ...".ljust(64, ".")


@dataclass(slots=True)
class Sent:
    """One message a case sent (`idx`-th of its sender, `ts` its sent_timestamp, `text` its body),
    when it was written and answered by `msg_sent` (perf_counter seconds), and how many
    `msg_sent` came; the personal and group cases add what their pushes and receipts need."""

    idx: int
    ts: str
    text: str
    t_send: float = 0.0
    t_ack: float = 0.0
    acks: int = 0


@dataclass
class Tally:
    """What went wrong in one case (every count must be 0), and what else arrived."""

    error_frames: int = 0
    error_texts: dict[str, int] = field(default_factory=dict)
    closed_unexpectedly: int = 0
    corrupted: int = 0
    other_frames: dict[str, int] = field(default_factory=dict)
    last_progress: float = field(default_factory=time.perf_counter)

    def error(self, f: dict[str, Any]) -> None:
        """Count an `error` frame, by its type and text."""
        self.error_frames += 1
        text = f"{f.get('type')}: {f.get('message')}"
        self.error_texts[text] = self.error_texts.get(text, 0) + 1

    def other(self, command: object) -> None:
        """Count a frame nobody waited for, by its command."""
        key = str(command)
        self.other_frames[key] = self.other_frames.get(key, 0) + 1

    def checks(self, *, incomplete: int, lost: int, duplicate_pushes: int, out_of_order: int,
               leftover_stored: int) -> dict[str, int]:
        """A case's counts (CHECKS but `server_errors`), with those this tally kept."""
        return {
            "incomplete": incomplete, "lost": lost, "duplicate_pushes": duplicate_pushes,
            "out_of_order": out_of_order,
            "error_frames": self.error_frames,
            "leftover_stored": leftover_stored,
            "closed_unexpectedly": self.closed_unexpectedly,
            "corrupted": self.corrupted,
        }


@dataclass(slots=True)
class Downloaded:
    """What a download got: HTTP status, bytes of body, their SHA-256 (hex), the first
    HEAD_BYTES of them, and the Content-Type."""

    HEAD_BYTES: ClassVar[int] = 65536

    status: int
    size: int
    sha256: str
    head: bytes
    content_type: str


Handler = Callable[[dict[str, Any]], Awaitable[None] | None]


class Sock:
    """One client WebSocket with its reader task: frames go to a handler per `command`; the
    answers to `fetch_msgs` / `fetch_grp_msgs` are collected for `fetch`."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, tally: Tally,
                 on: dict[str, Handler] | None = None) -> None:
        self.ws = ws
        self.tally = tally
        self.on = on or {}
        self.closing = False
        self._fetch: asyncio.Future[list[Any]] | None = None
        self._fetched: list[Any] = []
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        on = self.on
        try:
            async for m in self.ws:
                if m.type is not aiohttp.WSMsgType.TEXT:
                    self.tally.corrupted += 1
                    continue
                try:
                    f = orjson.loads(m.data)
                    command = f.get("command")
                except (orjson.JSONDecodeError, AttributeError):
                    self.tally.corrupted += 1
                    continue
                handler = on.get(command)
                if handler is not None:
                    result = handler(f)
                    if result is not None:
                        await result
                elif command == "error":
                    self.tally.error(f)
                elif command in ("fetch_msgs", "fetch_grp_msgs") and self._fetch is not None:
                    self._fetched.extend(f.get("messages", []))
                    if f.get("all") == "True" and not self._fetch.done():
                        self._fetch.set_result(self._fetched)
                else:
                    self.tally.other(command)
        except (aiohttp.ClientError, ConnectionError):
            pass
        if not self.closing:
            self.tally.closed_unexpectedly += 1

    async def send(self, text: str) -> None:
        """Send one text frame."""
        await self.ws.send_str(text)

    async def fetch(self, command: str, phone: str, timeout: float) -> list[Any] | None:
        """Send `command` (fetch_msgs / fetch_grp_msgs) and return every stored message of the
        answer's chunks; None when no complete answer came within `timeout`."""
        self._fetch = asyncio.get_running_loop().create_future()
        self._fetched = []
        try:
            await self.ws.send_str(orjson.dumps({"command": command, "msg_to": phone}).decode())
            return await asyncio.wait_for(self._fetch, timeout)
        except (TimeoutError, aiohttp.ClientError, ConnectionError):
            return None
        finally:
            self._fetch = None

    async def close(self) -> None:
        """Close the socket (not counted as unexpected) and end its reader."""
        self.closing = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 10)
        self.task.cancel()
        with contextlib.suppress(BaseException):
            await self.task


class Client:
    """One HTTP client for every simulated user: cookies are kept per device by hand, (phone, 1)
    the session of the registration and (phone, n) that of a later `login` (SPEC 7: a login
    session is a device); the sockets it opened are kept until `close_sockets`."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.ws_base = base.replace("http://", "ws://")
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), cookie_jar=aiohttp.DummyCookieJar())
        self.cookies: dict[tuple[str, int], str] = {}
        self.socks: list[Sock] = []

    async def close(self) -> None:
        """Close every socket still open, then the HTTP session."""
        await self.close_sockets()
        await self.session.close()

    async def close_sockets(self) -> None:
        """Close every socket opened so far, 500 at a time."""
        socks, self.socks = self.socks, []
        for i in range(0, len(socks), 500):
            await asyncio.gather(*(s.close() for s in socks[i:i + 500]))

    def headers(self, phone: str, device: int = 1) -> dict[str, str]:
        """The session cookie of `phone`'s `device` and our Origin (the server checks it)."""
        return {"Cookie": f"{COOKIE}={self.cookies[phone, device]}", "Origin": self.base}

    async def register(self, phones: list[str], concurrency: int = 16) -> None:
        """POST /register for each phone (set-up, not measured); keeps each session cookie."""
        sem = asyncio.Semaphore(concurrency)

        async def one(phone: str) -> None:
            async with sem, self.session.post(
                    f"{self.base}/register", allow_redirects=False, headers={"Origin": self.base},
                    data={"phone": phone, "name": f"bench {phone}", "password": PASSWORD}) as resp:
                if resp.status != 302 or COOKIE not in resp.cookies:
                    raise RuntimeError(f"register {phone}: HTTP {resp.status} {await resp.text()}")
                self.cookies[phone, 1] = resp.cookies[COOKIE].value

        await asyncio.gather(*(one(p) for p in phones))

    async def login(self, phones: list[str], device: int, concurrency: int = 16) -> None:
        """POST /login for each (registered) phone, a new session kept as its device number
        `device` (set-up, not measured)."""
        sem = asyncio.Semaphore(concurrency)

        async def one(phone: str) -> None:
            async with sem, self.session.post(
                    f"{self.base}/login", allow_redirects=False, headers={"Origin": self.base},
                    data={"phone": phone, "password": PASSWORD}) as resp:
                if resp.status != 302 or COOKIE not in resp.cookies:
                    raise RuntimeError(f"login {phone}: HTTP {resp.status} {await resp.text()}")
                self.cookies[phone, device] = resp.cookies[COOKIE].value

        await asyncio.gather(*(one(p) for p in phones))

    async def post_json(self, phone: str, path: str, body: Any) -> Any:
        """POST `body` as JSON to `path` as `phone`; the JSON answer (RuntimeError if not 200/201)."""
        async with self.session.post(f"{self.base}{path}", json=body,
                                     headers=self.headers(phone)) as resp:
            if resp.status not in (200, 201):
                raise RuntimeError(f"POST {path}: HTTP {resp.status} {await resp.text()}")
            return await resp.json()

    async def upload(self, phone: str, data: bytes, filename: str, content_type: str,
                     timeout: float) -> tuple[int, Any]:
        """POST `data` as the one part `file` of a multipart/form-data body to the attachment
        upload (SPEC 8) as `phone`: (HTTP status, the JSON answer when 201 else the text's
        first 200 characters). A transport failure or `timeout` seconds raise."""
        form = aiohttp.FormData()
        form.add_field("file", data, filename=filename, content_type=content_type)
        async with self.session.post(f"{self.base}{UPLOAD}", data=form, headers=self.headers(phone),
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            body = await resp.read()
            if resp.status == 201:
                return resp.status, orjson.loads(body)
            return resp.status, body[:200].decode(errors="replace")

    async def download(self, phone: str, attachment_id: str, timeout: float) -> Downloaded:
        """GET an attachment (SPEC 8) as `phone`, read a READ_BYTES piece at a time into a
        SHA-256 (the body is never held whole). A transport failure or `timeout` seconds raise."""
        digest = hashlib.sha256()
        head = b""
        size = 0
        async with self.session.get(f"{self.base}{DOWNLOAD}{attachment_id}",
                                    headers=self.headers(phone),
                                    timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            async for piece in resp.content.iter_chunked(READ_BYTES):
                if len(head) < Downloaded.HEAD_BYTES:
                    head += piece[:Downloaded.HEAD_BYTES - len(head)]
                digest.update(piece)
                size += len(piece)
            return Downloaded(resp.status, size, digest.hexdigest(), head,
                              resp.headers.get("Content-Type", ""))

    async def served(self, phone: str, attachment_id: str) -> int:
        """The HTTP status of a HEAD of an attachment as `phone` (200 while it is stored and
        `phone` may have it, 404 after, SPEC 8)."""
        async with self.session.head(f"{self.base}{DOWNLOAD}{attachment_id}",
                                     headers=self.headers(phone),
                                     timeout=aiohttp.ClientTimeout(total=30)) as resp:
            return resp.status

    async def connect(self, phone: str, path: str, tally: Tally,
                      on: dict[str, Handler] | None = None, device: int = 1) -> Sock:
        """Open the socket at `path` as `phone`'s `device`, its frames dispatched to `on`."""
        ws = await self.session.ws_connect(f"{self.ws_base}{path}",
                                           headers=self.headers(phone, device),
                                           compress=0, autoclose=True, autoping=True,
                                           max_msg_size=0)
        sock = Sock(ws, tally, on)
        self.socks.append(sock)
        return sock


async def wait_done(done: asyncio.Event, tally: Tally, stall_timeout: float) -> bool:
    """Wait for `done`; give up after `stall_timeout` s without progress. True when done."""
    while not done.is_set():
        try:
            await asyncio.wait_for(done.wait(), 0.5)
        except TimeoutError:
            if time.perf_counter() - tally.last_progress > stall_timeout:
                return False
    return True


async def leftover(socks: Iterable[tuple[str, Sock]], commands: tuple[str, ...],
                   drain_timeout: float, tally: Tally) -> int:
    """Messages still stored for these (phone, receive socket) pairs (`fetch_msgs` etc. on each
    socket: with per-device delivery, what waits for that socket's device, SPEC 7.1), polled up to
    `drain_timeout` s until empty. An unanswered fetch counts as a corrupted exchange."""
    socks = list(socks)
    deadline = time.perf_counter() + drain_timeout
    while True:
        total = 0
        for command in commands:
            answers = await asyncio.gather(*(s.fetch(command, phone, 10.0)
                                             for phone, s in socks))
            for a in answers:
                if a is None:
                    tally.corrupted += 1
                else:
                    total += len(a)
        if total == 0 or time.perf_counter() > deadline:
            return total
        await asyncio.sleep(0.5)
