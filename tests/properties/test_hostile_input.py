"""Hostile input (SPEC 4, 5, 5.5, 6): property-based tests (hypothesis) over the frame parser,
every command of every socket, the path segments of every socket and page, the query strings and
JSON bodies of every endpoint, and the register and login forms.

Each hostile input gets exactly one SPEC 5.5 error frame on its socket, which stays open, or is
refused before any upgrade (400/403/404), or is answered with a JSON error (4xx); never a 500, an
upgrade or a 2xx. After each batch every row of every table is as it was (read through a read-only
connection), nothing hostile reached anyone (the next push each user sees is a legitimate one), and
a normal message still works on every socket.

Hypothesis drives synchronous test functions. The server and its clients run on an event loop in a
thread of their own (`Background`), built once per test, so that one server serves every example
of a test and the database can be compared before and after the whole batch.

Generated frames are invalid by construction: a valid frame for the socket with at least one field
corrupted in a way SPEC 5 makes invalid (missing, not a string, another command, another msg_from
or msg_to, an unparseable timestamp, an empty, too long or NUL-holding message); random JSON and
random text are used only where they cannot form a valid frame.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import itertools
import json
import math
import os
import re
import sqlite3
import threading
import unicodedata
import urllib.parse
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, TypeVar

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy
from yarl import URL

from chatserver.app import create_app
from chatserver.auth import MAX_PASSWORD_BYTES, MIN_PASSWORD_CHARS
from chatserver.config import Config, WebSocket
from chatserver.forms import is_common_password
from chatserver.protocol import parse_timestamp
from chatserver.stores.base import Store
from helpers.accounts import PASSWORD, UserFactory
from helpers.configs import with_limits
from helpers.frames import FRAME_KEYS, TODAY, assert_error, frame, new_phone
from helpers.timing import TIMEOUT
from helpers.ws import WS, fetch_all, open_personal, open_receive, recv, send_new_msg

T = TypeVar("T")

# Examples per property; each is one round trip, a few milliseconds. CI (CI=true) runs the same
# examples every time, so that a submission is judged on a fixed set; elsewhere each run explores.
HOSTILE: Final = settings(
    max_examples=150,
    deadline=None,
    derandomize=os.environ.get("CI") == "true",
    database=None,  # no .hypothesis/ folder in the work tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                           HealthCheck.data_too_large, HealthCheck.nested_given],
)

# Each property must have run at least this many examples (not all rejected by `assume`).
MIN_EXAMPLES: Final = 50
FIELDS: Final = FRAME_KEYS
# A valid timestamp within security.timestamp_skew_seconds of the server's clock.
VALID_TS: Final = f"{TODAY} 03:04:05.678"
ROOM_PASSWORD: Final = "private room password"
_rooms = itertools.count(1)


def new_room() -> str:
    """A room name no other call in this process returns."""
    return f"hostile{next(_rooms)}"


# -- the server on a loop of its own ------------------------------------------------------------


class Background:
    """An asyncio event loop in a daemon thread; `run` waits (bounded) for a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="hostile-loop",
                                        daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 4 * TIMEOUT) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def close(self) -> None:
        async def cancel_rest() -> None:
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        self.run(cancel_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(TIMEOUT)
        self.loop.close()


@dataclass
class World:
    """A running server with users A, B, C; group G = {A (admin), B}; group G2 = {B, C}; a public
    room R (by A) and a private room P (by B; A was never given its password); A's four sockets
    (personal to B, group G, room R, receive), B's receive and room sockets and C's receive
    socket."""

    bg: Background
    server: TestServer
    db_path: str
    a: str
    b: str
    c: str
    clients: dict[str, TestClient]
    group: str
    other_group: str
    room: str
    private_room: str
    sockets: dict[str, WS] = field(default_factory=dict)
    inbox_b: WS | None = None
    inbox_c: WS | None = None
    room_b: WS | None = None
    token: str = ""  # A's client token (SPEC 12), for POST /api/v1/messages

    @property
    def client_a(self) -> TestClient:
        return self.clients[self.a]

    def url(self, raw_path_qs: str) -> URL:
        """An absolute URL of this server whose path is sent exactly as given (no normalising)."""
        return URL(f"http://{self.server.host}:{self.server.port}{raw_path_qs}", encoded=True)


async def _register(server: TestServer, phone: str) -> TestClient:
    client = TestClient(server)
    await client.start_server()
    resp = await client.post("/register", data={"phone": phone, "name": f"user {phone}",
                                                "password": PASSWORD}, allow_redirects=False)
    assert resp.status == 302, await resp.text()
    return client


async def _created(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    assert resp.status == 201, await resp.text()
    data = await resp.json()
    assert isinstance(data, dict)
    return data


async def _open_room(client: TestClient, name: str) -> WS:
    """A room socket, past its history frame (so that the room serves it)."""
    ws = await client.ws_connect(f"/ws/chat/room/{name}/")
    history = await recv(ws)
    assert history["command"] == "fetch_room_msgs", history
    return ws


async def _build(bg: Background, config: Config) -> World:
    server = TestServer(create_app(config))
    await server.start_server()
    a, b, c = new_phone(), new_phone(), new_phone()
    clients = {p: await _register(server, p) for p in (a, b, c)}
    group = (await _created(await clients[a].post(
        "/chat/special/group", json={"name": "hostile G", "participants": [b]})))["key"]
    other_group = (await _created(await clients[b].post(
        "/chat/special/group", json={"name": "hostile G2", "participants": [c]})))["key"]
    room, private_room = new_room(), new_room()
    await _created(await clients[a].post("/chat/special/room", json={"room_name": room,
                                                                      "category": "Games"}))
    await _created(await clients[b].post("/chat/special/room", json={
        "room_name": private_room, "password": ROOM_PASSWORD}))
    w = World(bg, server, config.database.path, a, b, c, clients, group, other_group, room,
              private_room)
    w.sockets["personal"] = await open_personal(clients[a], a, b)
    w.sockets["group"] = await clients[a].ws_connect(f"/ws/chat/group/{a}/{group}/")
    w.sockets["room"] = await _open_room(clients[a], room)
    w.sockets["receive"] = await open_receive(clients[a], a)
    w.inbox_b = await open_receive(clients[b], b)
    w.inbox_c = await open_receive(clients[c], c)
    w.room_b = await _open_room(clients[b], room)
    w.token = (await _created(await clients[a].post("/chat/devices/token",
                                                     json={"label": "hostile script"})))["token"]
    # One round trip on each send socket of A, so that each is served before the batch starts.
    for kind in ("personal", "group"):
        await w.sockets[kind].send_json(frame("no such command", a, "x"))
        assert (await recv(w.sockets[kind]))["command"] == "error"
    return w


async def _teardown(w: World) -> None:
    for ws in [*w.sockets.values(), w.inbox_b, w.inbox_c, w.room_b]:
        if ws is not None:
            await ws.close()
    for client in w.clients.values():
        await client.close()
    await w.server.close()


@pytest.fixture
def world(config: Config) -> Any:
    """The World on a Background loop. Password attempts are not limited, per address, phone or
    pair (hostile room joins and logins fail on purpose), and pings are rare: sockets the test
    does not read during a batch (C's, B's) answer no ping, and must not be closed for that."""
    bg = Background()
    hostile_config = dataclasses.replace(
        with_limits(config, login_failures=1_000_000, login_failures_per_phone=1_000_000,
                    login_failures_per_pair=1_000_000, typing_per_second=1000.0),
        websocket=WebSocket(heartbeat=3600.0))
    w = bg.run(_build(bg, hostile_config))
    try:
        yield w
    finally:
        try:
            bg.run(_teardown(w))
        finally:
            bg.close()


def snapshot(db_path: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, through a read-only connection."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        tables = [name for (name,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name")]
        assert "personal_messages" in tables and "users" in tables, tables
        return {t: sorted(db.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr) for t in tables}
    finally:
        db.close()


async def _prove_alive(w: World) -> None:
    """After a batch: a normal message works on each of A's sockets, and the next thing B, C and
    A's receive socket see is that legitimate frame (so nothing hostile was pushed to them)."""
    assert w.inbox_b is not None and w.inbox_c is not None and w.room_b is not None
    a, b, c, s = w.a, w.b, w.c, w.sockets
    sent = await send_new_msg(s["personal"], a, b, "proof: personal")
    assert await recv(w.inbox_b) == sent

    g = frame("new_grp_msg", a, w.group, "proof: group")
    await s["group"].send_json(g)
    reply = await recv(s["group"])
    assert (reply["command"], reply["message"]) == ("msg_sent", g["sent_timestamp"]), reply
    assert await recv(w.inbox_b) == frame("new_msg", f"{w.group}-{a}", b, "proof: group",
                                          g["sent_timestamp"])

    r = frame("room_msg", a, w.room, "proof: room")
    await s["room"].send_json(r)
    assert await recv(s["room"]) == r
    assert await recv(w.room_b) == r

    client_b = w.clients[b]
    for target, inbox in ((c, w.inbox_c), (a, s["receive"])):
        ws = await open_personal(client_b, b, target)
        pushed = await send_new_msg(ws, b, target, f"proof: to {target}")
        assert await recv(inbox) == pushed
        await ws.close()
    [[only]] = await fetch_all(s["receive"], a)
    assert only["message"] == f"proof: to {a}"


async def _exchange(ws: WS, payload: str | bytes) -> dict[str, Any]:
    if isinstance(payload, bytes):
        await ws.send_bytes(payload)
    else:
        await ws.send_str(payload)
    return await recv(ws)


# -- what the tests expect, decided independently of the server's code ----------------------------

_TS_SHAPE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})(?: (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?"
    r"|T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?Z?)", re.ASCII)


def valid_timestamp(text: str) -> bool:
    """SPEC 5: `YYYY-MM-DD HH:MM:SS[.f{1,6}]` or `YYYY-MM-DDTHH:MM:SS[.f{1,6}][Z]`, an instant
    that exists."""
    m = _TS_SHAPE.fullmatch(text)
    if m is None:
        return False
    g = m.groups()
    time_part = g[3:6] if g[3] is not None else g[7:10]
    try:
        datetime(int(g[0]), int(g[1]), int(g[2]), *(int(x) for x in time_part))
    except ValueError:
        return False
    return True


def is_phone(value: object) -> bool:
    """SPEC 1: 10 to 15 ASCII digits."""
    return isinstance(value, str) and re.fullmatch(r"[0-9]{10,15}", value, re.ASCII) is not None


def valid_name(value: object) -> bool:
    """SPEC 4 (1-64 characters after trimming), the project's refusal of control characters, and of
    format characters (Cf) but a zero-width joiner between two emoji (So/Sk, U+FE0F skipped)."""
    if not isinstance(value, str):
        return False
    name = value.strip()
    if not 1 <= len(name) <= 64 or any(unicodedata.category(ch) in ("Cc", "Cs") for ch in name):
        return False
    emoji = ("So", "Sk")
    for i, ch in enumerate(name):
        if unicodedata.category(ch) != "Cf":
            continue
        before = name[:i].removesuffix("\ufe0f")[-1:]
        after = name[i + 1:i + 2]
        if not (ch == "\u200d" and before and after and unicodedata.category(before) in emoji
                and unicodedata.category(after) in emoji):
            return False
    return True


def has_lone_surrogate(value: object) -> bool:
    if isinstance(value, str):
        return any("\ud800" <= ch <= "\udfff" for ch in value)
    if isinstance(value, list):
        return any(has_lone_surrogate(v) for v in value)
    if isinstance(value, dict):
        return any(has_lone_surrogate(k) or has_lone_surrogate(v) for k, v in value.items())
    return False


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def expected_types(payload: str | bytes) -> frozenset[str]:
    """SPEC 5.5: the error frame's `type` is the frame's `command` when that is a string, else
    'invalid'. A binary frame, text that is not RFC 8259 JSON, or JSON that is not an object has no
    command. JSON text that RFC 8259 allows but that cannot be held as UTF-8 text or a double (lone
    surrogate escapes, numbers beyond a double) may be refused whole: either type is fine then."""
    if isinstance(payload, bytes):
        return frozenset({"invalid"})
    overflow: list[str] = []

    def parse_float(text: str) -> float:
        value = float(text)
        if math.isinf(value):
            overflow.append(text)
        return value

    try:
        data = json.loads(payload, parse_float=parse_float, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return frozenset({"invalid"})
    if not isinstance(data, dict) or not isinstance(data.get("command"), str):
        return frozenset({"invalid"})
    if overflow or has_lone_surrogate(data):
        return frozenset({data["command"], "invalid"})
    return frozenset({data["command"]})


# -- strategies ------------------------------------------------------------------------------------

MISSING: Final = object()  # a field left out

# Characters that break naive code: NUL and other controls, bidi overrides and marks, zero-width
# characters, a BOM, lone surrogates, digits of other scripts, quotes, slashes, path pieces.
ODD_CHARS: Final = [
    "\x00", "\x07", "\x1b", "\x7f", "\t", "\n", "\r", "\u0085", "\u00a0", "\u202e", "\u202d",
    "\u200f", "\u200e", "\u2066", "\u200b", "\u200d", "\ufeff", "\ufffd", "\ud800", "\udbff",
    "\udc00", "\udfff", "\U0001f600", "\U0010ffff", "\u0660", "\u0663", "\u06f5", "\u0966",
    "\uff11", "\u00b2", "\u2168", "\u0301", '"', "'", "\\", "/", "%", ".", "..", "%2F", "%00",
    "{", "}", "[", "]", ",", ":", "<", ">", "&", "\u2028", "\u2029",
]
odd_text: SearchStrategy[str] = st.lists(
    st.sampled_from(ODD_CHARS) | st.characters() | st.sampled_from("0123456789abc"),
    max_size=24).map("".join)
no_surrogates: SearchStrategy[str] = odd_text.filter(lambda s: not has_lone_surrogate(s))

HUGE_INTS: Final = [2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**70, -(2**63) - 1, -(2**70),
                    10**30]
scalars: SearchStrategy[Any] = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from(HUGE_INTS),
    st.floats(allow_nan=False, allow_infinity=False), odd_text)
json_values: SearchStrategy[Any] = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(odd_text, children,
                                                                         max_size=3),
    max_leaves=8)
not_strings: SearchStrategy[Any] = json_values.filter(lambda v: not isinstance(v, str))

_DIGIT_SCRIPTS: Final = [str.maketrans("0123456789", script) for script in (
    "０１２３４５６７８９", "٠١٢٣٤٥٦٧٨٩", "۰۱۲۳۴۵۶۷۸۹", "०१२३४५६७८९", "𝟎𝟏𝟐𝟑𝟒𝟓𝟔𝟕𝟖𝟗")]


def other_digits(text: str, which: int = 1) -> str:
    """`text` with its ASCII digits written in another script (fullwidth, Arabic-Indic, ...)."""
    return text.translate(_DIGIT_SCRIPTS[which % len(_DIGIT_SCRIPTS)])


def near_misses(target: str) -> list[str]:
    """Strings that look like `target` to a person or to a lax parser, but are not it."""
    out = [target + " ", " " + target, target + "\n", target + "\x00", "\x00" + target,
           "\u202e" + target, "\u200f" + target, target + "\u200b", "\ufeff" + target,
           target[:-1], target + "0", "+" + target, "0" + target, target[::-1], target.upper(),
           target.lower(), target + "/", "../" + target, target + "%00", "%2F" + target, "..",
           ".", "", "0" * 16, "1" * 9, "123456789012345678901234567890", "\ud800" + target]
    out += [other_digits(target, i) for i in range(len(_DIGIT_SCRIPTS))]
    return [s for s in out if s != target]


def strings_except(*valid: str) -> SearchStrategy[str]:
    """Near misses of each valid value, or odd text, but never a valid value itself."""
    near = [s for v in valid for s in near_misses(v)]
    anything = odd_text | st.from_regex(r"\A[0-9]{1,20}\Z")
    return (st.sampled_from(near) | anything if near else anything).filter(
        lambda s: s not in valid)


BAD_TIMESTAMPS: Final = [
    "0000-01-01 00:00:00", "0000-12-31T23:59:59Z", "10000-01-01 00:00:00", "-0001-01-01 00:00:00",
    "+2026-01-01 00:00:00", "2026-00-10 10:00:00", "2026-13-10 10:00:00", "2026-01-00 10:00:00",
    "2026-01-32 10:00:00", "2026-02-29 10:00:00", "2100-02-29 10:00:00", "1900-02-29T00:00:00Z",
    "2026-04-31 10:00:00", "2026-01-01 24:00:00", "2026-01-01 23:60:00", "2026-12-31 23:59:60",
    "2026-01-01 10:00:00.1234567", "2026-01-01 10:00:00.", "2026-01-01T10:00:00.Z",
    "2026-01-01T10:00:00+00:00", "2026-01-01t10:00:00z", "2026-01-01 10:00:00Z",
    "2026-01-01T10:00:00ZZ", "2026-1-1 10:00:00", "2026-01-01 10:00", "2026-01-01",
    "2026-01-01 10:00:00\n", "2026-01-01\u00a010:00:00", "2026-01-01 10:00:00\x00",
    "\u202e2026-01-01 10:00:00", "\ufeff2026-01-01 10:00:00", "1764324000", "", " ", "now",
    other_digits("2026-01-01 10:00:00", 0), other_digits("2026-01-01 10:00:00", 1),
    "2026-01-01 10:00:00." + other_digits("123", 2), "2026-01-01 10:00:0" + other_digits("5", 3),
    "9999-12-31 23:59:59.9999999", "2026-01-01 10:00:00.-1", "2026-01-01 10:00:00.+1",
]


@st.composite
def timestamp_like(draw: st.DrawFn) -> str:
    """A timestamp-shaped string from possibly out-of-range parts, separators and zones."""
    year = draw(st.sampled_from([0, 1, 1900, 1970, 2000, 2024, 2100, 9999, 10000])
                | st.integers(0, 99999))
    month, day = draw(st.integers(0, 14)), draw(st.integers(0, 32))
    hour, minute = draw(st.integers(0, 25)), draw(st.integers(0, 61))
    second = draw(st.integers(0, 61))
    frac = draw(st.none() | st.text("0123456789", max_size=8))
    sep = draw(st.sampled_from([" ", "T", "t", "  ", "_", "\u00a0", "\u3000"]))
    zone = draw(st.sampled_from(["", "", "Z", "z", "+00:00", "-01:00", "ZZ", " UTC", "\u200b"]))
    text = (f"{year:04d}-{month:02d}-{day:02d}{sep}{hour:02d}:{minute:02d}:{second:02d}"
            + ("" if frac is None else "." + frac) + zone)
    if draw(st.integers(0, 9)) == 0:
        text = other_digits(text, draw(st.integers(0, 4)))
    return text


bad_timestamps: SearchStrategy[str] = (
    st.sampled_from(BAD_TIMESTAMPS) | timestamp_like() | odd_text).filter(
        lambda s: not valid_timestamp(s))

bad_messages: SearchStrategy[str] = st.one_of(
    st.sampled_from(["", "\x00", "a\x00b", "x" * 4097, "é" * 4097, "😀" * 4097]),
    st.integers(4097, 9000).map(lambda n: "y" * n),
    st.tuples(odd_text, odd_text).map(lambda t: t[0] + "\x00" + t[1]),
)

bad_names: SearchStrategy[Any] = st.one_of(
    not_strings, st.just(MISSING),
    st.sampled_from(["", "   ", "\t\n", "x" * 65, "é" * 65, "a\x00b", "a\x07", "\ud800",
                     "red\x1b[31m", "a\u0085b", "\x7f", " " + "y" * 65 + " "]),
    st.tuples(no_surrogates, st.sampled_from(["\x00", "\x07", "\x1b", "\x7f", "\ud800", "\udfff",
                                              "\u0080", "\u009f"]), no_surrogates).map("".join),
    st.text(min_size=65, max_size=90),
).filter(lambda v: v is MISSING or not valid_name(v))

not_phones: SearchStrategy[Any] = st.one_of(
    not_strings, strings_except().filter(lambda s: not is_phone(s)),
    st.sampled_from(["123456789", "1234567890123456", other_digits("1234567890", 1),
                     other_digits("1234567890", 0), "+1234567890", "12345 67890", "١٢٣٤٥٦٧٨٩٠"]))
# Registered phones start with 4 (helpers.frames.new_phone): these are never registered.
unregistered_phones: SearchStrategy[str] = st.from_regex(r"\A9[0-9]{9,14}\Z")

bad_room_names: SearchStrategy[Any] = st.one_of(
    not_strings,
    st.sampled_from(["", "a b", "a/b", "..", ".", "a.b", "x" * 65, "café", "room\x00",
                     "%2F", "a%2Fb", "\u202eroom", other_digits("room1", 1), "ｒｏｏｍ"]),
    odd_text.filter(lambda s: re.fullmatch(r"[A-Za-z0-9_-]{1,64}", s, re.ASCII) is None))


# -- hostile frames --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SocketSpec:
    """What a socket of A accepts (SPEC 5): per command, what its `message` is ('text',
    'timestamp' or 'ignored') and what its `msg_to` must be ('peer' or a group's 'sender')."""

    kind: str
    user: str
    peer: str  # msg_to of the socket's own commands, and of its error frames
    sender: str  # a participant a group acknowledgement may name
    commands: Mapping[str, tuple[str, str]]
    non_members: tuple[str, ...]  # registered phones outside the group


def spec_of(w: World, kind: str) -> SocketSpec:
    tables: dict[str, tuple[str, dict[str, tuple[str, str]]]] = {
        "personal": (w.b, {"new_msg": ("text", "peer"), "msg_received": ("timestamp", "peer"),
                           "msg_read": ("timestamp", "peer"), "is_typing": ("ignored", "peer")}),
        "group": (w.group, {"new_grp_msg": ("text", "peer"),
                            "grp_msg_received": ("timestamp", "sender"),
                            "grp_msg_read": ("timestamp", "sender"),
                            "msg_read": ("timestamp", "sender"),
                            "is_grp_typing": ("ignored", "peer")}),
        "room": (w.room, {"room_msg": ("text", "peer"), "is_room_typing": ("ignored", "peer")}),
        "receive": (w.a, {"fetch_msgs": ("ignored", "peer"),
                          "fetch_grp_msgs": ("ignored", "peer")}),
    }
    peer, commands = tables[kind]
    return SocketSpec(kind, w.a, peer, w.b, commands, (w.c,))


ALL_COMMANDS: Final = [
    "new_msg", "msg_received", "msg_read", "is_typing", "new_grp_msg", "grp_msg_received",
    "grp_msg_read", "is_grp_typing", "room_msg", "is_room_typing", "fetch_msgs", "fetch_grp_msgs",
    "msg_sent", "error", "presence", "fetch_room_msgs", "NEW_MSG", "new_msg ", " new_msg",
    "new_msg\x00", "new\u200bmsg", "\u202enew_msg", "new-msg", "", "__init__", "constructor",
]


def corruption(spec: SocketSpec, command: str, name: str) -> SearchStrategy[Any]:
    """Values of field `name` that make a `command` frame invalid on this socket (SPEC 5, 5.5)."""
    always: SearchStrategy[Any] = st.just(MISSING) | not_strings
    message_kind, to_kind = spec.commands[command]
    if name == "command":
        named = (st.sampled_from(ALL_COMMANDS) | odd_text).filter(lambda c: c not in spec.commands)
        return always | named
    if name == "msg_from":
        return always | strings_except(spec.user)
    if name == "msg_to":
        if to_kind == "peer":
            return always | strings_except(spec.peer) | st.sampled_from(
                [spec.sender, *spec.non_members]).filter(lambda v: v != spec.peer)
        # a group acknowledgement names the original sender: a phone of a participant
        return always | strings_except(spec.sender).filter(lambda s: not is_phone(s)) \
            | st.sampled_from(spec.non_members) | unregistered_phones
    if name == "sent_timestamp":
        return always | bad_timestamps
    assert name == "message"
    if message_kind == "text":
        return always | bad_messages
    if message_kind == "timestamp":
        return always | bad_timestamps
    return always  # ignored: only its presence and type are checked


@dataclass(frozen=True)
class Hostile:
    """One hostile frame, as sent, and the error `type`s SPEC 5.5 allows for it."""

    how: str
    payload: str | bytes
    types: frozenset[str]


def serialize(data: Any, draw: st.DrawFn) -> str:
    ascii_only = has_lone_surrogate(data) or draw(st.booleans())
    return json.dumps(data, ensure_ascii=ascii_only)


def maybe_valid(spec: SocketSpec, data: Any) -> bool:
    """Conservatively: could this decoded value be a frame the socket accepts?"""
    if not isinstance(data, dict):
        return False
    if spec.kind == "receive":
        return data.get("command") in spec.commands and data.get("msg_to") == spec.user
    return (all(isinstance(data.get(f), str) for f in FIELDS)
            and data["command"] in spec.commands and data["msg_from"] == spec.user)


def _decoded(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


@st.composite
def corrupted_frames(draw: st.DrawFn, spec: SocketSpec) -> dict[str, Any]:
    """A valid frame for the socket with one or more fields corrupted, plus random extra fields."""
    command = draw(st.sampled_from(sorted(spec.commands)))
    message_kind, to_kind = spec.commands[command]
    data: dict[str, Any] = {
        "message": {"text": "hello", "timestamp": VALID_TS, "ignored": ""}[message_kind],
        "command": command, "msg_from": spec.user,
        "msg_to": spec.peer if to_kind == "peer" else spec.sender, "sent_timestamp": VALID_TS,
    }
    checked = ("command", "msg_to") if spec.kind == "receive" else FIELDS
    for name in draw(st.sets(st.sampled_from(checked), min_size=1)):
        value = draw(corruption(spec, command, name))
        if value is MISSING:
            del data[name]
        else:
            data[name] = value
    extras = draw(st.dictionaries(odd_text.filter(lambda k: k not in FIELDS), json_values,
                                  max_size=2))
    items = draw(st.permutations([*data.items(), *extras.items()]))
    return dict(items)


@st.composite
def hostile_frames(draw: st.DrawFn, spec: SocketSpec) -> Hostile:
    how = draw(st.sampled_from(["frame"] * 6 + ["json", "text", "binary", "special"]))
    payload: str | bytes
    if how == "frame":
        payload = serialize(draw(corrupted_frames(spec)), draw)
    elif how == "json":
        value = draw(json_values)
        assume_invalid(maybe_valid(spec, value))
        payload = serialize(value, draw)
    elif how == "text":
        payload = draw(no_surrogates)
        assume_invalid(maybe_valid(spec, _decoded(payload)))
    elif how == "binary":
        valid = base_frame(spec)
        payload = draw(st.just(json.dumps(valid).encode()) | st.binary(max_size=64))
    else:
        payload = draw(st.sampled_from(specials(spec)))
    if isinstance(payload, str):
        assume_invalid(len(payload.encode("utf-8", "surrogatepass")) > 60_000)
    return Hostile(how, payload, expected_types(payload))


def assume_invalid(condition: bool) -> None:
    """Skip an example that might be valid (random input only; corrupted frames never are)."""
    assume(not condition)


def base_frame(spec: SocketSpec) -> dict[str, str]:
    """A valid frame of the socket's first command."""
    command = sorted(spec.commands)[0] if spec.kind == "receive" else next(iter(spec.commands))
    if spec.kind == "receive":
        return {"command": command, "msg_to": spec.user}
    return frame(command, spec.user, spec.peer, "hello", VALID_TS)


def specials(spec: SocketSpec) -> list[str]:
    """Hand-built JSON texts: deep nesting, non-JSON numbers and constants, lone surrogates, a
    BOM, duplicate keys, trailing garbage, and valid frames wrapped or cut."""
    base = json.dumps(base_frame(spec))
    # The field the socket checks, to put hostile raw values in (a receive socket checks msg_to).
    target = "msg_to" if spec.kind == "receive" else "message"

    def with_raw(raw: str) -> str:
        data = base_frame(spec)
        data[target] = "\x01PLACEHOLDER\x01"
        return json.dumps(data).replace('"\\u0001PLACEHOLDER\\u0001"', raw)

    deep_array, deep_object = "[" * 2000 + "]" * 2000, '{"a":' * 2000 + "0" + "}" * 2000
    raws = [deep_array, deep_object, "NaN", "Infinity", "-Infinity", "1e400", "-1e400",
            str(2**70), str(-(2**70)), "1E-400", "-0", '"\\ud800"', '"\\udfff"',
            '"\\ud83d"', '"\\ude00\\ud83d"', '"x\\u0000y"', '"\\u0000"', "null", "true", "[]",
            "{}"]
    return [
        deep_array, deep_object, "[" * 10_000 + "]" * 10_000,
        *(with_raw(raw) for raw in raws),
        "\ufeff" + base, base + " garbage", base[:-1], base + base, "[" + base + "]", "{", "}",
        "", " ", "\n", "\x00", "null", base.replace('"', "'"), base[:-1] + ",}",
        "/*x*/" + base,
        base[:-1] + ', "command": "no such command"}',  # duplicate keys: the last one counts
        base[:-1] + ', "msg_to": "' + spec.peer + '0"}',
    ]


@pytest.mark.parametrize("kind", ["personal", "group", "room", "receive"])
def test_hostile_frames_get_one_error_each_and_change_nothing(world: World, kind: str) -> None:
    spec = spec_of(world, kind)
    ws = world.sockets[kind]
    before = snapshot(world.db_path)

    ran: list[str] = []

    @HOSTILE
    @given(hostile=hostile_frames(spec))
    def one(hostile: Hostile) -> None:
        ran.append(hostile.how)
        reply = world.bg.run(_exchange(ws, hostile.payload))
        assert reply.get("command") == "error", reply
        assert reply["type"] in hostile.types, (reply["type"], hostile.types)
        assert_error(reply, reply["type"], world.a, spec.peer)

    one()
    assert len(ran) >= MIN_EXAMPLES and ran.count("frame") >= MIN_EXAMPLES // 2, len(ran)
    assert snapshot(world.db_path) == before
    world.bg.run(_prove_alive(world))


@pytest.mark.parametrize("kind", ["personal", "group", "room", "receive"])
def test_every_hand_built_hostile_text_gets_one_error(world: World, kind: str) -> None:
    """Deterministically, each hand-built text (deep nesting 2000 and 10000, NaN, 1e400, 2**70,
    lone surrogates, NUL, BOM, duplicate keys, ...) on each socket."""
    spec = spec_of(world, kind)
    before = snapshot(world.db_path)
    for text in specials(spec):
        reply = world.bg.run(_exchange(world.sockets[kind], text))
        assert reply.get("command") == "error", (text[:80], reply)
        assert reply["type"] in expected_types(text), (text[:80], reply)
        assert_error(reply, reply["type"], world.a, spec.peer)
    assert snapshot(world.db_path) == before
    world.bg.run(_prove_alive(world))


# -- hostile path segments -----------------------------------------------------------------------

# Inserted into the path as they are (already percent-encoded or deliberately raw).
RAW_SEGMENTS: Final = [
    "..", ".", "%2E%2E", "%2e%2e", ".%2E", "%2F", "%2f", "%00", "%0A", "%0D%0A", "%20", "%09",
    "%", "%zz", "%C0%AE%C0%AE", "%C0%AF", "%252F", "..%2F..", "a%2Fb", "%5C", "%5C..", ";",
    "%3B", "%3F", "%23", "%E2%80%AE", "%EF%BB%BF", "%FF", "%ED%A0%80", "~", "*", "-",
]

ROUTES: Final = [
    # (kind, template, what the segment stands for): {seg} is the hostile segment; {a} A, {b} B,
    # {g} group G
    ("ws", "/ws/chat/special/{seg}/", "user"),
    ("ws", "/ws/chat/personal/{seg}/{b}/", "user"),
    ("ws", "/ws/chat/personal/{a}/{seg}/", "peer"),
    ("ws", "/ws/chat/group/{seg}/{g}/", "user"),
    ("ws", "/ws/chat/group/{a}/{seg}/", "group"),
    ("ws", "/ws/chat/room/{seg}/", "room"),
    ("page", "/chat/personal/{seg}/{b}/", "user"),
    ("page", "/chat/personal/{a}/{seg}/", "peer"),
    ("page", "/chat/group/{seg}/{g}/", "user"),
    ("page", "/chat/group/{a}/{seg}/", "group"),
    ("page", "/chat/room/{seg}/", "page-room"),
    ("json", "/chat/info/personal?msg_to={seg}", "peer"),
    ("json", "/chat/info/group?key={seg}", "group"),
    ("json", "/chat/info/room?room_name={seg}", "page-room"),
    ("json-delete", "/chat/special/contact?phone={seg}", "nothing"),
    ("json-delete", "/chat/special/block?phone={seg}", "nothing"),
    # SPEC 13: saving, unsaving and closing a room (A created R, not P: closing P is 403)
    ("json-put", "/chat/rooms/saved?room_name={seg}", "page-room"),
    ("json-delete", "/chat/rooms/saved?room_name={seg}", "page-room"),
    ("json-delete", "/chat/special/room?room_name={seg}", "room"),
]


def legit(w: World, role: str, seg: str) -> bool:
    """Whether the segment, once percent-decoded, names something A may open in that place."""
    decoded = urllib.parse.unquote(seg, errors="replace")
    return {
        "user": decoded == w.a,
        "peer": decoded in (w.a, w.b, w.c),
        "group": decoded == w.group,
        "room": decoded == w.room,
        "page-room": decoded in (w.room, w.private_room),
        "nothing": False,
    }[role]


@st.composite
def segments(draw: st.DrawFn, w: World) -> str:
    """A hostile path segment, percent-encoded unless it is one of the deliberately raw ones."""
    look_alikes = [*near_misses(w.a), *near_misses(w.group), *near_misses(w.room),
                   w.other_group, w.group.swapcase(), w.private_room.upper(), w.room + "/x",
                   "x/" + w.room, "1" * 9, "1" * 16, other_digits("1234567890", 1),
                   "١٢٣٤٥٦٧٨٩٠", w.c, w.b]
    raw = draw(st.sampled_from(RAW_SEGMENTS) | st.sampled_from(
        [urllib.parse.quote(s, safe="") for s in look_alikes if not has_lone_surrogate(s)])
        | no_surrogates.map(lambda s: urllib.parse.quote(s, safe="")))
    return raw


async def _request_status(w: World, kind: str, raw: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET (DELETE, PUT for json-delete, json-put) or a WebSocket handshake
    by A to the raw path; 101 when a socket was opened."""
    session = w.client_a.session
    if kind == "ws":
        try:
            ws = await session.ws_connect(w.url(raw))
        except aiohttp.WSServerHandshakeError as e:
            return e.status, "", ""
        await ws.close()
        return 101, "", ""
    method = {"json-delete": "DELETE", "json-put": "PUT"}.get(kind, "GET")
    async with session.request(method, w.url(raw), allow_redirects=False) as resp:
        return resp.status, resp.content_type, await resp.text()


def test_hostile_path_segments_are_refused_on_every_socket_page_and_query(world: World) -> None:
    w = world
    names = {"a": w.a, "b": w.b, "g": w.group}
    before = snapshot(w.db_path)

    ran: list[str] = []

    @HOSTILE
    @given(route=st.sampled_from(ROUTES), seg=segments(w))
    def one(route: tuple[str, str, str], seg: str) -> None:
        kind, template, role = route
        assume_invalid(legit(w, role, seg))
        ran.append(kind)
        raw = template.format(seg=seg, **names)
        status, content_type, body = w.bg.run(_request_status(w, kind, raw))
        assert status in (400, 403, 404), (raw, status, body[:200])
        if kind.startswith("json"):
            assert content_type == "application/json", (raw, status, body[:200])
            data = json.loads(body)
            assert set(data) == {"error"} and isinstance(data["error"], str), data

    one()
    assert len(ran) >= MIN_EXAMPLES and set(ran) == {"ws", "page", "json", "json-delete",
                                                      "json-put"}, ran
    assert snapshot(w.db_path) == before
    world.bg.run(_prove_alive(w))


# -- hostile catalogue queries (SPEC 13 GET /chat/rooms?q=&category=) -----------------------------

# LIKE wildcards and its escape character must match themselves; percent-encoded bytes that are
# no UTF-8 (decoded as U+FFFD, a visible character: a search for it, which finds nothing).
SEARCH_SPECIALS: Final = ["%", "_", "%%", "\\", "\\%", "\\_", "hostile_", "hostile%", "_ostile",
                          "hostil_", "%ostile", "h%e", "HOSTILE", "[h]", "*", "'", "' OR 1=1 --"]
RAW_QUERY_VALUES: Final = ["%FF", "%ED%A0%80", "%00", "%0A", "%C0%AE", "%25", "%5F", "%"]


def _q_refused(q: str) -> bool:
    text = q.strip()
    return len(text) > 64 or (text != "" and not valid_name(text))


def _category_refused(category: str) -> bool:
    return category.strip() != "" and not valid_category(category)


@st.composite
def catalogue_queries(draw: st.DrawFn) -> tuple[str, str, str]:
    """(raw query string, q and category as the server decodes them)."""
    values = []
    for _ in ("q", "category"):
        raw = draw(st.sampled_from(RAW_QUERY_VALUES) | st.one_of(
            no_surrogates, st.sampled_from(SEARCH_SPECIALS), st.just("Games"),
            st.text(min_size=60, max_size=80).filter(lambda t: not has_lone_surrogate(t)),
            bad_categories.filter(lambda v: isinstance(v, str) and not has_lone_surrogate(v)),
        ).map(lambda t: urllib.parse.quote(t, safe="")))
        values.append(raw)
    q, category = (urllib.parse.unquote(v, errors="replace") for v in values)
    return f"q={values[0]}&category={values[1]}", q, category


def test_hostile_catalogue_queries_are_refused_and_wildcards_match_themselves(
        world: World) -> None:
    """A `q` over 64 characters or with control or invisible characters, or a `category` that
    is not 1-32 such characters, is a 400 JSON error; any other search answers exactly the rooms
    whose name holds `q` (ignoring case; `%`, `_`, `\\` literally) in that category; nothing
    changes."""
    w = world
    before = snapshot(w.db_path)
    db = sqlite3.connect(f"file:{w.db_path}?mode=ro", uri=True)
    try:
        rooms = db.execute("SELECT name, category FROM rooms").fetchall()
    finally:
        db.close()
    ran: list[bool] = []

    @HOSTILE
    @given(query=catalogue_queries())
    def one(query: tuple[str, str, str]) -> None:
        raw, q, category = query
        refused = _q_refused(q) or _category_refused(category)
        ran.append(refused)
        status, content_type, body = w.bg.run(_request_status(w, "json", "/chat/rooms?" + raw))
        assert content_type == "application/json", (raw, status, body[:200])
        data = json.loads(body)
        if refused:
            assert status == 400 and set(data) == {"error"} and data["error"], (raw, data)
            return
        assert status == 200, (raw, status, body[:200])
        expected = {name for name, cat in rooms if q.strip().lower() in name.lower()
                    and (not category.strip() or cat == category.strip())}
        assert {r["room_name"] for r in data["rooms"]} == expected, (raw, data)

    one()
    assert len(ran) >= MIN_EXAMPLES and set(ran) == {True, False}, ran
    assert snapshot(w.db_path) == before


# -- hostile JSON bodies ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """A body field: a valid value (MISSING: left out of the valid body) and refused values."""

    valid: Any
    invalid: SearchStrategy[Any]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    query: Mapping[str, str]
    fields: Mapping[str, Field]
    unknown_fields_refused: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)


def phone_lists(w: World, *, registered_only: bool) -> SearchStrategy[Any]:
    """Lists (or non-lists) of phones that a group endpoint refuses."""
    bad_lists = st.one_of(
        not_strings.filter(lambda v: not isinstance(v, list)),
        st.tuples(st.lists(st.sampled_from([w.b, w.c]), max_size=2), not_phones).map(
            lambda t: [*t[0], t[1]]),
        st.just([w.c] + [f"9{i:010d}" for i in range(1001)]),  # over 1000 phones
        st.just(w.b),  # a phone, not a list of phones
    )
    if registered_only:
        bad_lists = bad_lists | unregistered_phones.map(lambda p: [w.b, p])
    return bad_lists


def valid_category(value: object) -> bool:
    """SPEC 13: 1-32 characters after trimming, as a name (`valid_name`) otherwise."""
    return isinstance(value, str) and len(value.strip()) <= 32 and valid_name(value)


# A room's category: null is none, so never null here.
bad_categories: SearchStrategy[Any] = st.one_of(
    not_strings.filter(lambda v: v is not None),
    st.sampled_from(["", "  ", "\t", "x" * 33, "é" * 33, "a\x00b", "\x1b[31m", "\u202eGames",
                     "Ga\u200bmes", "\ud800", "Games\n\x85"]),
    odd_text, st.text(min_size=33, max_size=60),
).filter(lambda v: not valid_category(v))


def refs(w: World) -> SearchStrategy[Any]:
    """SPEC 13 REF values, valid ones (of A, of B) and broken ones; never null (= absent)."""
    good = st.sampled_from([{"msg_from": w.a, "sent_timestamp": VALID_TS},
                            {"msg_from": w.b, "sent_timestamp": VALID_TS}])
    return st.one_of(
        good, not_strings.filter(lambda v: v is not None and not isinstance(v, dict)),
        st.dictionaries(odd_text, json_values, max_size=3).filter(lambda v: bool(v)),
        st.builds(lambda p, t: {"msg_from": p, "sent_timestamp": t},
                  not_phones.filter(lambda v: v is not MISSING), st.just(VALID_TS)),
        st.builds(lambda t: {"msg_from": w.b, "sent_timestamp": t},
                  bad_timestamps | not_strings),
        good.map(lambda r: {**r, "extra": 1}), good.map(lambda r: {"msg_from": r["msg_from"]}),
        st.just({"msg_from": w.b, "sent_timestamp": VALID_TS, "__proto__": {}}))


def bad_refs(w: World) -> SearchStrategy[Any]:
    """REF values refused whatever else the message carries."""
    return refs(w).filter(lambda v: not (isinstance(v, dict) and set(v) == {
        "msg_from", "sent_timestamp"} and is_phone(v["msg_from"])
        and isinstance(v["sent_timestamp"], str) and valid_timestamp(v["sent_timestamp"])))


# POST /api/v1/messages fields (SPEC 12) not in its Endpoint's table: never drawn as "unknown".
API_MESSAGE_FIELDS: Final = ("attachments",)


def endpoints(w: World) -> dict[str, Endpoint]:
    phone_or_missing = not_phones | st.just(MISSING)
    return {
        "personal": Endpoint("POST", "/chat/special/personal", {}, {
            "msg_to": Field(w.b, phone_or_missing | unregistered_phones)}),
        "group": Endpoint("POST", "/chat/special/group", {}, {
            "name": Field("new group", bad_names),
            "participants": Field([w.b], phone_lists(w, registered_only=True))}),
        "patch": Endpoint("PATCH", "/chat/info/group", {"key": w.group}, {
            "name": Field("renamed", bad_names.filter(lambda v: v is not MISSING)),
            "add": Field([w.c], phone_lists(w, registered_only=True)),
            "remove": Field(MISSING, phone_lists(w, registered_only=False)),
            "admins": Field([w.b], phone_lists(w, registered_only=True))},
            unknown_fields_refused=True),
        "room": Endpoint("POST", "/chat/special/room", {}, {
            "room_name": Field("FRESH", bad_room_names | st.just(MISSING) | st.just(w.room)),
            "password": Field(MISSING, st.one_of(
                not_strings.filter(lambda v: v is not None),
                st.text(max_size=MIN_PASSWORD_CHARS - 1),
                st.text(min_size=MAX_PASSWORD_BYTES + 1, max_size=MAX_PASSWORD_BYTES + 60),
                st.sampled_from(["é" * 512 + "a", "\ud800" * 10, "passphrase\udfff", "1234567890",
                                 "Password123"]))),
            "category": Field(MISSING, bad_categories)}),
        # SPEC 12 + 13: the message stays a reply (a valid reply_to is always there unless it
        # is the field broken), so any second reference field is refused too
        "api-message": Endpoint("POST", "/api/v1/messages", {}, {
            "msg_to": Field(w.b, unregistered_phones),
            "message": Field("hello", bad_messages),
            "sent_timestamp": Field(MISSING, bad_timestamps),
            "reply_to": Field({"msg_from": w.b, "sent_timestamp": VALID_TS}, bad_refs(w)),
            "edit_of": Field(MISSING, refs(w)), "delete_of": Field(MISSING, refs(w)),
            "react_to": Field(MISSING, refs(w))},
            unknown_fields_refused=True, headers={"Authorization": f"Bearer {w.token}"}),
        "join": Endpoint("POST", "/chat/special/room/join", {}, {
            "room_name": Field(w.private_room, bad_room_names | st.just(MISSING)
                               | st.just("neverMadeRoom")),
            "password": Field(ROOM_PASSWORD, st.one_of(
                st.just(MISSING), json_values.filter(lambda v: v != ROOM_PASSWORD),
                st.sampled_from([ROOM_PASSWORD.upper(), ROOM_PASSWORD + " ", " " + ROOM_PASSWORD,
                                 ROOM_PASSWORD[:-1], ROOM_PASSWORD + "\x00",
                                 "\u202e" + ROOM_PASSWORD])))}),
        "contact": Endpoint("POST", "/chat/special/contact", {}, {
            "phone": Field(w.b, phone_or_missing | unregistered_phones),
            "name": Field("Bee", bad_names)}),
        "block": Endpoint("POST", "/chat/special/block", {}, {
            "phone": Field(w.b, phone_or_missing | unregistered_phones | st.just(w.a))}),
    }


# The charset of a JSON body's Content-Type (None: no charset parameter). A body refused in UTF-8
# stays refused in these: none turns bytes that are not a valid field into ASCII digits or names.
charsets: SearchStrategy[str | None] = st.sampled_from(
    [None, None, None, None, "utf-8", "UTF-8", "latin-1", "utf-16", "ascii", "nope", "rot13",
     "base64", "zlib", "idna", "utf-32-be", ""])

RAW_BODIES: Final = [
    b"", b" ", b"null", b"[]", b'"x"', b"0", b"{", b'{"a":1', b"\xff\xfe", b"{\xff}",
    b"\xef\xbb\xbf{}", ("[" * 2000 + "]" * 2000).encode(),
    ('{"a":' * 2000 + "0" + "}" * 2000).encode(),
    ("[" * 30000 + "]" * 30000).encode(), b"NaN", b'{"x": NaN}', b'{"x": 1e400}', b"1e400",
    b'{"msg_to": 12345678901}', b'{"phone": 12345678901}', b'{"room_name": ["x"]}',
    b'{"msg_to": "\\ud800"}', b'{"phone": "1234567890\\u0000"}', b"x" * 70_000,
    b'{"name": "' + b"n" * 70_000 + b'"}', b'{"__proto__": {"admin": true}}',
]


@dataclass(frozen=True)
class HostileRequest:
    method: str
    path: str
    query: Mapping[str, str]
    body: bytes | None
    charset: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        body = None if self.body is None else self.body[:120]
        return f"{self.method} {self.path} {dict(self.query)} {body!r} charset={self.charset}"


@st.composite
def hostile_requests(draw: st.DrawFn, w: World) -> HostileRequest:
    specs = endpoints(w)
    name = draw(st.sampled_from([*specs, "delete_contact", "delete_block", "raw", "save_room",
                                 "unsave_room", "close_room"]))
    if name in ("save_room", "unsave_room", "close_room"):  # SPEC 13, room_name in the query
        room = draw(bad_room_names.filter(lambda v: isinstance(v, str)
                                          and not has_lone_surrogate(v))
                    | st.just("neverMadeRoom")
                    | st.just(w.private_room).filter(lambda _: name == "close_room"))
        method, path = {"save_room": ("PUT", "/chat/rooms/saved"),
                        "unsave_room": ("DELETE", "/chat/rooms/saved"),
                        "close_room": ("DELETE", "/chat/special/room")}[name]
        return HostileRequest(method, path, {"room_name": room}, None)
    if name in ("delete_contact", "delete_block"):
        phone = draw(not_phones.filter(lambda v: isinstance(v, str) and not has_lone_surrogate(v))
                     | st.sampled_from([w.b, w.c]) | unregistered_phones)
        path = "/chat/special/contact" if name == "delete_contact" else "/chat/special/block"
        return HostileRequest("DELETE", path, {"phone": phone}, None)
    if name == "raw":
        target = specs[draw(st.sampled_from(sorted(specs)))]
        return HostileRequest(target.method, target.path, target.query,
                              draw(st.sampled_from(RAW_BODIES)), draw(charsets), target.headers)
    spec = specs[name]
    body: dict[str, Any] = {}
    for key, f in spec.fields.items():
        if f.valid is not MISSING:
            body[key] = f"fresh{draw(st.integers(0, 10**9))}" if f.valid == "FRESH" else f.valid
    corrupted = draw(st.sets(st.sampled_from(sorted(spec.fields) + ["<unknown>"]), min_size=1))
    if "<unknown>" in corrupted and not spec.unknown_fields_refused:
        corrupted.discard("<unknown>")
        if not corrupted:
            corrupted.add(sorted(spec.fields)[0])
    for key in corrupted:
        if key == "<unknown>":
            unknown = draw(st.text().filter(lambda k: k not in spec.fields
                                            and k not in API_MESSAGE_FIELDS))
            body[unknown] = draw(json_values)
            continue
        value = draw(spec.fields[key].invalid)
        if value is MISSING:
            body.pop(key, None)
        else:
            body[key] = value
    if not spec.unknown_fields_refused:
        extras = draw(st.dictionaries(odd_text.filter(lambda k: k not in spec.fields),
                                      json_values, max_size=2))
        body = {**extras, **body}
    text = json.dumps(body, ensure_ascii=has_lone_surrogate(body) or draw(st.booleans()))
    return HostileRequest(spec.method, spec.path, spec.query, text.encode(), draw(charsets),
                          spec.headers)


async def _send(w: World, r: HostileRequest) -> tuple[int, str, str]:
    kwargs: dict[str, Any] = {"params": dict(r.query), "allow_redirects": False}
    if r.body is not None:
        kwargs["data"] = r.body
        charset = "" if r.charset is None else f"; charset={r.charset}"
        kwargs["headers"] = {"Content-Type": f"application/json{charset}", **r.headers}
    async with w.client_a.session.request(r.method, w.client_a.make_url(r.path),
                                          **kwargs) as resp:
        return resp.status, resp.content_type, await resp.text()


def test_hostile_json_bodies_and_queries_are_refused_and_change_nothing(world: World) -> None:
    w = world
    before = snapshot(w.db_path)

    ran: list[str] = []

    @HOSTILE
    @given(request=hostile_requests(w))
    def one(request: HostileRequest) -> None:
        ran.append(request.method)
        status, content_type, body = w.bg.run(_send(w, request))
        assert status in (400, 403, 404, 409, 413), (status, body[:300])
        assert content_type == "application/json", (status, body[:300])
        data = json.loads(body)
        assert set(data) == {"error"} and isinstance(data["error"], str) and data["error"], data

    one()
    # PUT (saving a room) is drawn in most runs, not all: test_hostile_room_names_... covers it
    assert len(ran) >= MIN_EXAMPLES and {"POST", "PATCH", "DELETE"} <= set(ran), ran
    assert snapshot(w.db_path) == before
    world.bg.run(_prove_alive(w))


HOSTILE_ROOM_NAMES: Final = ["", "..", "../x", "a/b", "a b", "x" * 65, "room\x00", "%2F",
                             "\u202eroom", "ｒｏｏｍ", "neverMadeRoom", "hostile1\n", " hostile1"]


def test_hostile_room_names_when_saving_unsaving_and_closing_change_nothing(world: World) -> None:
    """SPEC 13, deterministically: each hostile room_name on PUT and DELETE /chat/rooms/saved and
    DELETE /chat/special/room is a 400 or 404 JSON error; closing B's room P is 403; a name that
    differs from A's room R only in case closes nothing; nothing changes."""
    w = world
    before = snapshot(w.db_path)
    names = [*HOSTILE_ROOM_NAMES, w.room.upper(), w.room + "/", w.room + "%"]
    for method, path in (("PUT", "/chat/rooms/saved"), ("DELETE", "/chat/rooms/saved"),
                         ("DELETE", "/chat/special/room")):
        for name in [*names, *([w.private_room] if path == "/chat/special/room" else [])]:
            status, content_type, body = w.bg.run(_send(w, HostileRequest(
                method, path, {"room_name": name}, None)))
            expected = {403} if name == w.private_room else {400, 404}
            assert status in expected and content_type == "application/json", (
                method, path, name, status, body[:200])
            assert set(json.loads(body)) == {"error"}
    assert snapshot(w.db_path) == before
    world.bg.run(_prove_alive(w))


# -- hostile forms ---------------------------------------------------------------------------------


def valid_password(password: str) -> bool:
    """What SPEC 4 and 10 accept for a new password (chatserver.forms.clean_password)."""
    return (len(password) >= MIN_PASSWORD_CHARS and len(password.encode()) <= MAX_PASSWORD_BYTES
            and not is_common_password(password))


@st.composite
def hostile_registrations(draw: st.DrawFn, w: World) -> dict[str, str]:
    """A registration with at least one field that SPEC 4 refuses (or a taken phone)."""
    form: dict[str, Any] = {"phone": draw(unregistered_phones), "name": "Eve",
                            "password": "long enough password"}
    bad: dict[str, SearchStrategy[Any]] = {
        "phone": not_phones | st.sampled_from([w.a, w.b]),
        "name": bad_names,
        "password": st.text(max_size=MIN_PASSWORD_CHARS - 1)
        | st.text(min_size=MAX_PASSWORD_BYTES + 1, max_size=MAX_PASSWORD_BYTES + 60)
        | st.sampled_from(["é" * 512 + "a", "😀" * 257, "1234567890", "QwErTyUiOp"]),
    }
    for key in draw(st.sets(st.sampled_from(sorted(bad)), min_size=1)):
        value = draw(bad[key])
        if value is MISSING:
            del form[key]
        else:
            form[key] = value if isinstance(value, str) else json.dumps(value)
    # Lone surrogates cannot be sent in a form (they are not UTF-8).
    assume_invalid(any(has_lone_surrogate(v) for v in form.values()))
    assume_invalid(valid_name(form.get("name")) and is_phone(form.get("phone"))
                   and form.get("phone") not in (w.a, w.b, w.c)
                   and valid_password(form.get("password", "")))
    return form


async def _post_form(w: World, path: str, form: dict[str, str]) -> tuple[int, bool]:
    """(status, whether a session cookie was set) of a logged-out form post."""
    async with aiohttp.ClientSession() as session:
        async with session.post(w.url(path), data=form, allow_redirects=False) as resp:
            await resp.read()
            return resp.status, "chat_session" in resp.cookies


def test_hostile_register_and_login_forms_are_refused(world: World) -> None:
    w = world
    before = snapshot(w.db_path)

    ran: list[bool] = []

    @HOSTILE
    @given(form=hostile_registrations(w), login=st.booleans())
    def one(form: dict[str, str], login: bool) -> None:
        ran.append(login)
        if login:  # the same fields as a login: never a session (a wrong password at best)
            form = {**form, "password": form.get("password", "") + "\x00wrong"}
            status, cookie = w.bg.run(_post_form(w, "/login", form))
            assert status == 401, (form, status)
        else:
            status, cookie = w.bg.run(_post_form(w, "/register", form))
            assert status in (400, 409, 413), (form, status)
        assert not cookie, form

    one()
    assert len(ran) >= MIN_EXAMPLES and set(ran) == {True, False}, len(ran)
    assert snapshot(w.db_path) == before


# -- edges that must be accepted -------------------------------------------------------------------

EDGE_TIMESTAMPS: Final = [
    ("0001-01-01 00:00:00", "0001-01-01T00:00:00.000000Z"),
    ("9999-12-31 23:59:59.999999", "9999-12-31T23:59:59.999999Z"),
    ("9999-12-31T23:59:59Z", "9999-12-31T23:59:59.000000Z"),
    ("2024-02-29T12:00:00Z", "2024-02-29T12:00:00.000000Z"),
    ("2000-02-29 00:00:00.5", "2000-02-29T00:00:00.500000Z"),
    ("1969-12-31 23:59:59.999999", "1969-12-31T23:59:59.999999Z"),
    ("1970-01-01T00:00:00", "1970-01-01T00:00:00.000000Z"),
]


async def test_timestamps_at_the_edges_of_the_calendar_are_accepted_and_round_trip(
        as_user: UserFactory, store: Store) -> None:
    """Year 1 and year 9999, leap days, before the epoch: stored, fetched in the fetch format,
    acknowledged (named in an acknowledgement's `message`) and gone. A new_msg dated so far from
    the server's clock is refused (security.timestamp_skew_seconds, tests/features/test_clock_skew.py),
    so they are stored as a store holding messages of such clients would hold them."""
    a, b = new_phone(), new_phone()
    await as_user(a)
    client_b = await as_user(b)
    for sent, _ in EDGE_TIMESTAMPS:
        assert await store.add_personal(a, b, parse_timestamp(sent), sent, f"at {sent}")
    inbox = await open_receive(client_b, b)
    fetched = [m for chunk in await fetch_all(inbox, b) for m in chunk]
    assert [(m["message"], m["sent_timestamp"]) for m in fetched] == [
        (f"at {sent}", fetch_form) for sent, fetch_form in EDGE_TIMESTAMPS]
    to_a = await open_personal(client_b, b, a)
    for sent, _ in EDGE_TIMESTAMPS:
        ack = frame("msg_received", b, a, sent)
        await to_a.send_json(ack)
    await to_a.send_json(frame("msg_received", b, a, EDGE_TIMESTAMPS[0][0]))
    reply = await recv(to_a)  # the first answer is the refusal of the repeated acknowledgement
    assert_error(reply, "msg_received", b, a)
    assert await fetch_all(inbox, b) == [[]]


async def test_odd_unicode_in_a_message_body_is_kept_exactly(as_user: UserFactory) -> None:
    """RTL overrides, zero-width characters, a BOM, astral characters and combining marks are text
    a person may send: stored and delivered unchanged (only NUL is refused)."""
    a, b = new_phone(), new_phone()
    client_a, client_b = await as_user(a), await as_user(b)
    inbox = await open_receive(client_b, b)
    ws = await open_personal(client_a, a, b)
    body = "\u202eabc\u202c \u200f\u200b\ufeff😀\U0010fffd e\u0301 \u0663\u2028x"
    sent = await send_new_msg(ws, a, b, body)
    assert await recv(inbox) == sent
    [[stored]] = await fetch_all(inbox, b)
    assert stored["message"] == body


async def test_a_text_frame_that_is_not_utf8_closes_only_that_socket(
        as_user: UserFactory) -> None:
    """RFC 6455 requires failing a connection whose text frame is not UTF-8 (1007); nothing is
    stored, and the user's other sockets keep working."""
    a, b = new_phone(), new_phone()
    client_a, client_b = await as_user(a), await as_user(b)
    inbox = await open_receive(client_b, b)
    good = await open_personal(client_a, a, b)
    bad = await open_personal(client_a, a, b)
    await bad.send_frame(b'{"message": "\xff\xfe", "command": "new_msg"}', WSMsgType.TEXT)
    msg = await bad.receive(timeout=TIMEOUT)
    assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR), msg
    assert bad.close_code == 1007, bad.close_code
    sent = await send_new_msg(good, a, b, "still fine")
    assert await recv(inbox) == sent


# -- server bugs found by these tests, kept as regression tests ------------------------------------
# (unknown charsets answered 500 until commit e88edd2; CR, LF or a lone surrogate in an unknown
# PATCH field name until api.patch_group stopped echoing client text raw in the HTTP reason)


@pytest.mark.parametrize("key", ["a\nb", "x\r", "\r\nSet-Cookie: evil=1", "\ud800", "x\udfff"])
async def test_patch_with_a_line_break_or_surrogate_in_an_unknown_field_name_is_400(
        as_user: UserFactory, key: str) -> None:
    a, b = new_phone(), new_phone()
    client_a = await as_user(a)
    await as_user(b)
    created = await client_a.post("/chat/special/group", json={"name": "g", "participants": [b]})
    group = (await created.json())["key"]
    resp = await client_a.patch("/chat/info/group", params={"key": group}, json={key: 1})
    assert resp.status == 400, await resp.text()
    assert "error" in await resp.json()


@pytest.mark.parametrize("charset", ["nope", "rot13", "base64", "zlib", "utf-9"])
async def test_a_json_body_with_an_unknown_charset_is_refused_with_4xx(
        as_user: UserFactory, charset: str) -> None:
    a, b = new_phone(), new_phone()
    client_a = await as_user(a)
    await as_user(b)
    resp = await client_a.post("/chat/special/personal", data=json.dumps({"msg_to": b}).encode(),
                               headers={"Content-Type": f"application/json; charset={charset}"})
    assert resp.status in (400, 415), await resp.text()
    assert "error" in await resp.json()


@pytest.mark.parametrize("charset", ["nope", "rot13"])
@pytest.mark.parametrize("path", ["/login", "/register"])
async def test_a_form_with_an_unknown_charset_is_refused_with_4xx(
        aiohttp_client: Any, server: TestServer, path: str, charset: str) -> None:
    client = await aiohttp_client(server)
    phone = new_phone()
    resp = await client.post(path, data=f"phone={phone}&name=x&password={PASSWORD}",
                             headers={"Content-Type":
                                      f"application/x-www-form-urlencoded; charset={charset}"},
                             allow_redirects=False)
    assert resp.status in (400, 415), resp.status
    assert "chat_session" not in resp.cookies
