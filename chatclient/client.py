"""`Client`: one user's device on a chat server, authenticated by a token (SPEC 12).

Receiving (`run`): the receive socket `/ws/chat/special/<me>/` is opened with
`Authorization: Bearer <token>`; on every connection the client asks `fetch_msgs` and
`fetch_grp_msgs` (SPEC 5.2) for what was stored while it was away, then takes the pushes. Each
message goes to the application's handler, one at a time, in the order received, and is
acknowledged only after the handler returned: `msg_received` on the personal send socket
`/ws/chat/personal/<me>/<peer>/`, `grp_msg_received` on the group socket `/ws/chat/group/<me>/<key>/`
(SPEC 5.1, 5.3; the receive socket does not take acknowledgements). Until then the server keeps the
message, so a bot that crashes, is killed, or whose handler raises gets it again at its next
connection: delivery to the handler is **at least once**. Within one `Client`, a message whose
handler already returned is not handed over again (it is only acknowledged again), up to the last
`remember` messages; across restarts of the program a handler must tolerate a repeat (the
message's identity is (sender, recipient or group, sent_timestamp)).

Sending (`send`): POST /api/v1/messages, retried with the same `sent_timestamp` on network errors,
5xx and 429, which the server answers with the stored message rather than storing it twice
(SPEC 12, 5.1 "safe retries"). A retry made after the recipient acknowledged and the server
deleted the message would store it again; the retries are seconds apart, acknowledgements rarely
that fast, but the guarantee is the server's "while the first is still stored".

Reconnecting: the receive socket is reopened after any loss with capped exponential backoff and
full jitter (`Backoff`), forever, until `close()`; only a refused token (401: `AuthError`), a 4xx at
the handshake (`RefusedError`) and a close with 4429 (`TooManySocketsError`) end `run` with an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import aiohttp
from yarl import URL

from chatclient.backoff import Backoff
from chatclient.errors import (
    AuthError,
    ChatError,
    NetworkError,
    ProtocolError,
    RateLimitedError,
    RefusedError,
    ServerError,
    TooManySocketsError,
)
from chatclient.messages import (
    GroupMessage,
    Message,
    PersonalMessage,
    Ref,
    Sent,
    message_from_wire,
    message_key,
    now_timestamp,
)

try:  # orjson when installed (the server's own choice), else the standard library
    import orjson

    def dumps(obj: Any) -> str:
        """JSON text of `obj`."""
        return orjson.dumps(obj).decode()

    loads: Callable[[str | bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - the test environment has orjson
    import json

    def dumps(obj: Any) -> str:
        """JSON text of `obj`."""
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))

    loads = json.loads

log = logging.getLogger("chatclient")

# The application's handler: one message in, nothing out; returning means "it is safe with me".
Handler = Callable[[Message], Awaitable[None]]
# Every other frame of the receive socket (receipts, reads, typing, presence, group_added,
# msg_expired, error), as the decoded JSON object.
EventHandler = Callable[[dict[str, Any]], Awaitable[None]]

# Close codes of the server (SPEC 10 / README): its oldest socket past the cap; session ended.
CLOSE_TOO_MANY_SOCKETS = 4429
CLOSE_SESSION_ENDED = 1008
# A fetch chunk is up to fetch.chunk_size (100) messages of up to 4096 characters each, escaped.
MAX_FRAME_BYTES = 64 * 1024 * 1024

_Key = tuple[str, str, str, str, datetime]
# Errors after which a connection is simply tried again.
_TRANSIENT = (aiohttp.ClientError, OSError, TimeoutError, ServerError, RateLimitedError, ProtocolError)


class Client:
    """A device of user `phone` on the server at `base_url` (`http://host:port` or `https://...`,
    optionally with a path prefix), authenticated by `token` (from `python run.py token PHONE
    --label L` or POST /chat/devices/token). The token is sent only in the Authorization header,
    never in a URL, and is not part of `repr()`.

    Use as `async with Client(url, token, phone) as client:` (or call `close()`), then
    `await client.send(...)` and/or `await client.run(handler)`. One `run` at a time.

    Options: `backoff` (delays of send retries and reconnections, seconds; `Backoff.tries` bounds a
    send's attempts); `timeout` (seconds for one HTTP request or WebSocket handshake);
    `heartbeat` (seconds between the client's pings on the receive socket, None for none: detects
    a dead connection that no close announced); `include_own` (also hand the handler the copies of
    messages this user sent from its other devices, SPEC 7.2; they are always acknowledged);
    `ack_sockets` (how many send sockets, one per dialogue or group, stay open for
    acknowledgements; the least recently used is closed past it); `remember` (how many handled
    messages are remembered so that one fetched again is acknowledged without a second call).
    """

    def __init__(self, base_url: str, token: str, phone: str, *, backoff: Backoff | None = None,
                 timeout: float = 30.0, heartbeat: float | None = 25.0, include_own: bool = False,
                 ack_sockets: int = 8, remember: int = 10_000) -> None:
        url = URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base_url must be http(s)://host[:port][/prefix], not {base_url!r}")
        if not token or any(c.isspace() for c in token):
            raise ValueError("the token is empty or contains white space")
        self.base_url = url
        self.phone = phone
        self._token = token
        self._backoff = backoff or Backoff()
        self._timeout = timeout
        self._heartbeat = heartbeat
        self._include_own = include_own
        self._ack_cap = max(1, ack_sockets)
        self._remember = remember
        self._session: aiohttp.ClientSession | None = None
        self._closing = asyncio.Event()
        self._ready = asyncio.Event()
        self._grace = 10.0
        self._recv_ws: aiohttp.ClientWebSocketResponse | None = None
        self._run_task: asyncio.Task[Any] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._halt = False
        self._queue: asyncio.Queue[Message | None] = asyncio.Queue()
        self._queued: set[_Key] = set()
        self._handled: OrderedDict[_Key, None] = OrderedDict()
        self._acks: OrderedDict[str, tuple[aiohttp.ClientWebSocketResponse, asyncio.Task[None]]] = \
            OrderedDict()
        self._ack_lock = asyncio.Lock()
        # How many times the receive socket was opened (handshake accepted); for monitoring.
        self.connections = 0

    def __repr__(self) -> str:
        return f"Client({str(self.base_url)!r}, phone={self.phone!r})"

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- plumbing -------------------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {self._token}"},
                # Never a cookie: a token request is authenticated by the token alone (SPEC 12).
                cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    def _url(self, path: str) -> URL:
        return self.base_url.with_path(self.base_url.path.rstrip("/") + path, encoded=False)

    def _ws_url(self, path: str) -> URL:
        return self._url(path).with_scheme("wss" if self.base_url.scheme == "https" else "ws")

    # -- HTTP -----------------------------------------------------------------------------------

    async def request(self, method: str, path: str, *, json: Any = None,
                      params: dict[str, str] | None = None) -> Any:
        """One HTTP request with the token, not retried: the decoded JSON answer of a 2xx.
        `path` is the server's (e.g. "/chat/info"). Raises AuthError (401), RateLimitedError (429),
        RefusedError (other 4xx, `reason` = the server's `error`), ServerError (5xx), NetworkError
        (no connection or no answer within `timeout`), ProtocolError (a 2xx that is not JSON)."""
        status, data, retry_after = await self._request_once(method, path, json, params)
        if 200 <= status < 300:
            return data
        raise _status_error(status, data, retry_after)

    async def _request_once(self, method: str, path: str, body: Any,
                            params: dict[str, str] | None) -> tuple[int, Any, float]:
        """(status, decoded JSON or None, Retry-After in seconds or 0); NetworkError when there
        was no answer."""
        try:
            async with self._http().request(
                    method, self._url(path), params=params,
                    data=None if body is None else dumps(body),
                    headers={"Content-Type": "application/json"} if body is not None else None,
                    timeout=aiohttp.ClientTimeout(total=self._timeout)) as resp:
                raw = await resp.read()
                retry_after = resp.headers.get("Retry-After", "")
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            raise NetworkError(f"{type(exc).__name__}: {exc}") from exc
        try:
            data = loads(raw) if raw else None
        except ValueError:
            if 200 <= resp.status < 300:
                raise ProtocolError(f"{method} {path}: the answer is not JSON", resp.status) from None
            data = None
        return resp.status, data, float(retry_after) if retry_after.isdigit() else 0.0

    async def send(self, to: str, text: str, sent_timestamp: str | None = None, *,
                   reply_to: Ref | None = None, edit_of: Ref | None = None,
                   delete_of: Ref | None = None, react_to: Ref | None = None) -> Sent:
        """Send `text` to `to` (a phone, or "group:<key>") through POST /api/v1/messages (SPEC 12):
        stored durably and pushed to the recipients as a `new_msg` from this user's device.

        At most one of `reply_to`, `edit_of`, `delete_of`, `react_to` (SPEC 13), each a REF
        `{"msg_from": PHONE, "sent_timestamp": TS}` naming an earlier message (`ref_of(msg)`
        makes one): a reply; the new `text` of one of this user's messages; unsending one of
        them (`text` ""); a reaction (`text` one emoji, or "" to take it back). The server
        refuses (RefusedError, 400) what breaks SPEC 13's rules.

        `sent_timestamp` (SPEC 5 format, UTC) is the message's identity: the current time to the
        microsecond when None. Every retry sends the same one, so that the server stores the
        message once (answered 200 instead of 201, `Sent.created` False). Retried up to
        `Backoff.tries` attempts in all, after a full-jitter delay (at least the server's
        Retry-After for a 429), on network errors, timeouts, 5xx and 429.

        Returns `Sent` (the `msg_sent` frame's fields). Raises AuthError (401), RefusedError with
        the server's reason for any other 4xx (400 bad input such as an empty or too long text,
        403 blocked by the recipient / not a member of the group, 404 unknown phone or group),
        and after the last attempt RateLimitedError, ServerError or NetworkError."""
        ts = sent_timestamp or now_timestamp()
        body: dict[str, Any] = {"msg_to": to, "message": text, "sent_timestamp": ts}
        for name, value in (("reply_to", reply_to), ("edit_of", edit_of), ("delete_of", delete_of),
                            ("react_to", react_to)):
            if value is not None:
                body[name] = {"msg_from": value["msg_from"], "sent_timestamp": value["sent_timestamp"]}
        last: ChatError = NetworkError("not tried")
        for attempt in range(self._backoff.tries):
            if attempt:
                delay = self._backoff.delay(attempt - 1)
                if isinstance(last, RateLimitedError):
                    delay = max(delay, min(self._backoff.cap, last.retry_after))
                log.info("send to %s: %s; retry %d in %.2f s", to, last, attempt, delay)
                await asyncio.sleep(delay)
            try:
                status, data, retry_after = await self._request_once("POST", "/api/v1/messages", body, None)
            except NetworkError as exc:
                last = exc
                continue
            if status in (200, 201):
                if not isinstance(data, dict):
                    raise ProtocolError("the msg_sent answer is not a JSON object", status)
                try:
                    return Sent(message=str(data["message"]), msg_from=str(data["msg_from"]),
                                msg_to=str(data["msg_to"]), sent_timestamp=str(data["sent_timestamp"]),
                                created=status == 201, command=str(data.get("command", "msg_sent")))
                except KeyError as exc:
                    raise ProtocolError(f"the msg_sent answer has no {exc}", status) from None
            last = _status_error(status, data, retry_after)
            if not isinstance(last, RateLimitedError | ServerError):
                raise last
        raise last

    # -- receiving ------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while the receive socket is open and the fetch on connect has been answered."""
        return self._ready.is_set()

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the receive socket is open and both fetches of this connection were
        answered in full (the stored messages are then queued for the handler); TimeoutError
        after `timeout` seconds."""
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def run(self, handler: Handler, *, on_event: EventHandler | None = None) -> None:
        """Receive until `close()`: connect, fetch, hand each message to `handler` and
        acknowledge it after `handler` returned; reconnect after any loss (see the module).

        `handler(message)` gets a `PersonalMessage` or `GroupMessage`, one at a time, in the order
        received. If it raises, the error is logged (logger "chatclient") and the message is not
        acknowledged: it comes again at the next connection (or run). `on_event(frame)` gets
        every other frame of the receive socket as a dict (receipts `msg_received`, `msg_read`,
        `is_typing`, `presence`, `group_added`, `msg_expired`, `error`); it runs in the reading
        task, so it must be quick. Returns after `close()`; raises AuthError (the token was
        refused, e.g. revoked), RefusedError (a 4xx at the handshake, e.g. 403 when `phone` is not
        the token's user) or TooManySocketsError (closed with 4429)."""
        if self._run_task is not None:
            raise RuntimeError("this Client is already running")
        self._run_task = asyncio.current_task()
        self._halt = False
        self._worker = asyncio.create_task(self._work(handler), name="chatclient-handler")
        attempt = 0
        try:
            while not self._closing.is_set():
                try:
                    if await self._connect_once(on_event):
                        attempt = 0
                except _TRANSIENT as exc:
                    log.warning("receive socket: %s: %s", type(exc).__name__, exc)
                if self._worker.done():  # the worker only ends early on a bug: surface it
                    self._worker.result()
                if self._closing.is_set():
                    break
                delay = self._backoff.delay(attempt)
                attempt += 1
                log.info("receive socket: reconnecting in %.2f s", delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), delay)
        finally:
            self._ready.clear()
            await self._stop_worker()
            self._run_task = None
            if self._closing.is_set():  # close() was called from the handler: finish its work
                await self._release()

    async def _connect_once(self, on_event: EventHandler | None) -> bool:
        """One connection of the receive socket, until it closes. Returns True when it got as far
        as the end of the fetch on connect (the backoff then starts again from its first step)."""
        try:
            async with asyncio.timeout(self._timeout):
                ws = await self._http().ws_connect(
                    self._ws_url(f"/ws/chat/special/{self.phone}/"), heartbeat=self._heartbeat,
                    max_msg_size=MAX_FRAME_BYTES, autoclose=True)
        except aiohttp.WSServerHandshakeError as exc:
            raise _handshake_error(exc) from exc
        got_ready = False
        self.connections += 1
        self._recv_ws = ws
        try:
            if self._closing.is_set():
                return False
            waiting = {"fetch_msgs", "fetch_grp_msgs"}
            for fetch in ("fetch_msgs", "fetch_grp_msgs"):
                await ws.send_str(dumps({"command": fetch, "msg_to": self.phone}))
            async for frame in ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    data = loads(frame.data)
                except ValueError:
                    log.warning("receive socket: a frame that is not JSON, ignored")
                    continue
                if not isinstance(data, dict):
                    continue
                command = data.get("command")
                if command in waiting and isinstance(data.get("messages"), list):
                    for item in data["messages"]:
                        self._enqueue(item)
                    if data.get("all") == "True":
                        waiting.discard(command)
                        if not waiting:
                            got_ready = True
                            self._ready.set()
                elif command == "new_msg":
                    self._enqueue(data)
                else:
                    if command == "error":
                        log.warning("receive socket: the server refused a frame: %s", data.get("message"))
                    if on_event is not None:
                        try:
                            await on_event(data)
                        except Exception:
                            log.exception("on_event failed on a %r frame", command)
        finally:
            self._ready.clear()
            self._recv_ws = None
            await ws.close()
        if ws.close_code == CLOSE_TOO_MANY_SOCKETS and not self._closing.is_set():
            raise TooManySocketsError("the receive socket was closed with 4429: too many sockets "
                                      "of this user (limits.sockets_per_user)")
        log.info("receive socket closed (code %s)", ws.close_code)
        return got_ready

    def _enqueue(self, data: Any) -> None:
        """Queue the message of a `new_msg` frame for the handler, unless it is queued already (the
        same message pushed and fetched)."""
        try:
            msg = message_from_wire(data, self.phone)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning("receive socket: not a message, ignored (%s): %.200r", exc, data)
            return
        key = message_key(msg)
        if key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(msg)

    async def _work(self, handler: Handler) -> None:
        """The one task that calls the handler: in order, one message at a time, each acknowledged
        after the handler returned."""
        while True:
            msg = await self._queue.get()
            if msg is None or self._halt:
                return
            key = message_key(msg)
            try:
                if key not in self._handled and (self._include_own or not msg.own):
                    try:
                        await handler(msg)
                    except Exception:
                        log.exception("the handler raised on %s; not acknowledged: the server keeps it "
                                      "and it comes again at the next connection", _describe(msg))
                        continue
                self._handled[key] = None
                self._handled.move_to_end(key)
                while len(self._handled) > self._remember:
                    self._handled.popitem(last=False)
                await self._ack(msg)
            finally:
                self._queued.discard(key)

    async def _stop_worker(self) -> None:
        """Let the handler finish the message it holds (at most the `close(grace)` seconds), start
        no other, and end the worker; queued messages stay unacknowledged (fetched again later)."""
        worker, self._worker = self._worker, None
        if worker is None:
            return
        self._halt = True
        self._queue.put_nowait(None)  # wakes an idle worker
        done, _ = await asyncio.wait({worker}, timeout=self._grace)
        if not done:
            log.warning("the handler did not return within %.1f s of close(); cancelled, its message "
                        "is not acknowledged", self._grace)
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        # What was queued and not handled is fetched again at the next connection.
        self._queue = asyncio.Queue()
        self._queued.clear()

    # -- acknowledgements ---------------------------------------------------------------------------

    async def _ack(self, msg: Message) -> None:
        """Send the acknowledgement of `msg` on its send socket (SPEC 5.1 `msg_received`, 5.3
        `grp_msg_received`, 7.2 for own copies). A successful acknowledgement is not answered; one
        that does not get through leaves the message stored, to be fetched and acknowledged again
        at the next connection (without calling the handler again)."""
        if isinstance(msg, GroupMessage):
            path = f"/ws/chat/group/{self.phone}/{msg.group}/"
            frame = {"message": msg.sent_timestamp, "command": "grp_msg_received",
                     "msg_from": self.phone, "msg_to": msg.sender, "sent_timestamp": now_timestamp()}
        else:
            path = f"/ws/chat/personal/{self.phone}/{msg.peer}/"
            frame = {"message": msg.sent_timestamp, "command": "msg_received",
                     "msg_from": self.phone, "msg_to": msg.peer, "sent_timestamp": now_timestamp()}
        for attempt in range(2):  # a socket found closed is opened again once
            try:
                ws = await self._ack_socket(path)
                await ws.send_str(dumps(frame))
                return
            except aiohttp.WSServerHandshakeError as exc:
                log.warning("cannot acknowledge %s: %s", _describe(msg), _handshake_error(exc))
                return
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                await self._drop_ack_socket(path)
                if attempt:
                    log.warning("cannot acknowledge %s now (%s: %s); it is acknowledged when "
                                "fetched again", _describe(msg), type(exc).__name__, exc)

    async def _ack_socket(self, path: str) -> aiohttp.ClientWebSocketResponse:
        """The open send socket of `path`, opened when needed; the least recently used beyond
        `ack_sockets` is closed."""
        async with self._ack_lock:
            held = self._acks.get(path)
            if held is not None and not held[0].closed:
                self._acks.move_to_end(path)
                return held[0]
            if held is not None:
                await self._drop_ack_socket(path)
            async with asyncio.timeout(self._timeout):
                ws = await self._http().ws_connect(self._ws_url(path), heartbeat=self._heartbeat)
            reader = asyncio.create_task(self._drain_ack_socket(path, ws), name="chatclient-ack")
            self._acks[path] = (ws, reader)
            while len(self._acks) > self._ack_cap:
                await self._drop_ack_socket(next(iter(self._acks)))
            return ws

    async def _drain_ack_socket(self, path: str, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Read what a send socket says (it answers pings, and error frames for acknowledgements
        of what no longer waits: a message acknowledged twice), until it closes."""
        async for frame in ws:
            if frame.type == aiohttp.WSMsgType.TEXT:
                with contextlib.suppress(ValueError):
                    data = loads(frame.data)
                    if isinstance(data, dict) and data.get("command") == "error":
                        log.debug("%s: %s", path, data.get("message"))
        held = self._acks.get(path)
        if held is not None and held[0] is ws:
            del self._acks[path]

    async def _drop_ack_socket(self, path: str) -> None:
        held = self._acks.pop(path, None)
        if held is not None:
            ws, reader = held
            await ws.close()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    # -- closing --------------------------------------------------------------------------------

    async def close(self, grace: float = 10.0) -> None:
        """Stop: no new connection; the receive socket is closed; the handler may finish the
        message it holds (at most `grace` seconds, then it is cancelled and that message stays
        unacknowledged), no other is started; `run()` returns; the send sockets and the HTTP
        session are closed. Idempotent; may be called from the handler itself."""
        self._grace = grace
        self._closing.set()
        if self._recv_ws is not None:
            await self._recv_ws.close()
        task = self._run_task
        me = asyncio.current_task()
        if task is not None and me is not task and me is not self._worker:
            await asyncio.wait({task})
        if me is self._worker and self._worker is not None:
            return  # run() releases the rest once the handler returns
        await self._release()

    async def _release(self) -> None:
        """Close the send sockets and the HTTP session."""
        for path in list(self._acks):
            await self._drop_ack_socket(path)
        if self._session is not None:
            await self._session.close()


def _describe(msg: Message) -> str:
    """A message for a log line: who, where, when; never its text."""
    if isinstance(msg, GroupMessage):
        return f"group message {msg.group}-{msg.sender} {msg.sent_timestamp}"
    assert isinstance(msg, PersonalMessage)
    return f"message {msg.sender}->{msg.recipient} {msg.sent_timestamp}"


def _reason(data: Any, status: int) -> str:
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return str(data["error"])
    return f"HTTP {status}"


def _status_error(status: int, data: Any, retry_after: float = 0.0) -> ChatError:
    """The ChatError of a non-2xx answer."""
    reason = _reason(data, status)
    if status == 401:
        return AuthError(reason, status)
    if status == 429:
        return RateLimitedError(reason, status, retry_after)
    if 400 <= status < 500:
        return RefusedError(reason, status)
    if status >= 500:
        return ServerError(reason, status)
    return ProtocolError(f"unexpected HTTP {status}", status)


def _handshake_error(exc: aiohttp.WSServerHandshakeError) -> ChatError:
    """The ChatError of a refused WebSocket handshake (the body is not available there)."""
    status = exc.status
    if status == 401:
        return AuthError("the token was refused at the WebSocket handshake", status)
    if status == 429:
        return RateLimitedError("too many handshakes", status)
    if 400 <= status < 500:
        return RefusedError(f"the WebSocket handshake was refused ({exc.message})", status)
    if status >= 500:
        return ServerError(f"the WebSocket handshake failed ({exc.message})", status)
    return ProtocolError(f"the WebSocket handshake failed: {exc.message}", status)
