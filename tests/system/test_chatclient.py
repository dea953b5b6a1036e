"""The client library (chatclient/), its command line and the example bots against a real server
process (`python run.py serve`), authenticated by tokens made with `python run.py token` (SPEC 12).

What is shown: fetch on connect; the acknowledgement only after the handler returned (the server
still holds a message while the handler is blocked; a handler that raises, or a bot killed -9 in
its handler, gets it again); reconnection after a server restart; nothing lost across a kill -9 of
the server while a user keeps sending with retries; a send whose answer was lost, retried with the
same sent_timestamp, stored once; the errors; `python -m chatclient send/listen`; the echo bot and
the reminder bot (also across a kill -9 of the bot).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from chatclient import (
    AuthError,
    Backoff,
    Client,
    GroupMessage,
    Message,
    PersonalMessage,
    RefusedError,
    now_timestamp,
    parse_timestamp,
    ref_of,
)
from helpers.accounts import client as cookie_client
from helpers.accounts import create_group, login, register
from helpers.chatload import kill_9
from helpers.configs import quick_config_tables
from helpers.server import HOST, REPO, ServerProcess, free_port, start_server, write_config
from helpers.timing import NET_TIMEOUT, QUIET, until

USER, BOT, OTHER = "5551000001", "5551000002", "5551000003"
# Quick retries and reconnections, so that a restart costs the tests a second, not thirty.
QUICK = Backoff(base=0.1, cap=1.0, tries=40)
WAIT = 30.0  # seconds for what crosses a server restart


# -- the server, tokens, and clients --------------------------------------------------------------


class Chat:
    """A server process on a fresh database with USER, BOT and OTHER registered, and the
    clients a test opened (closed at the end)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.db = tmp_path / "chat.db"
        self.config = write_config(tmp_path / "config.toml", quick_config_tables(
            database={"synchronous": "FULL"}))
        self.servers: list[ServerProcess] = []
        self.clients: list[Client] = []
        self.tasks: list[asyncio.Task[None]] = []

    @property
    def server(self) -> ServerProcess:
        return self.servers[-1]

    async def start(self, port: int | None = None) -> ServerProcess:
        """Start a server (on `port`: the same one again after a stop) and wait until it serves."""
        self.servers.append(start_server(self.db, self.config, self.tmp, port=port))
        await self.server.wait_serving()
        return self.server

    async def token(self, phone: str, label: str = "test bot") -> str:
        """A token of `phone` from `python run.py token PHONE --label L` (SPEC 12)."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "run.py", "token", phone, "--label", label, "--db", str(self.db),
            "--config", str(self.config), cwd=REPO, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), NET_TIMEOUT)
        assert proc.returncode == 0, err.decode()
        token = out.decode().strip()
        assert token.startswith("ct_") and len(token) == 46, "one line, the token"
        assert err.decode().startswith("id="), err.decode()
        return token

    async def client(self, phone: str, token: str | None = None, base: str | None = None,
                     label: str = "test bot", **options: Any) -> Client:
        """A Client of `phone` (a new token labelled `label` unless given), closed at the end."""
        options.setdefault("backoff", QUICK)
        c = Client(base or self.server.base, token or await self.token(phone, label), phone, **options)
        self.clients.append(c)
        return c

    def run(self, client: Client, handler: Callable[[Message], Any],
            on_event: Callable[[dict[str, Any]], Any] | None = None) -> asyncio.Task[None]:
        """`client.run(handler)` in a task (its error, if any, fails the test at the end)."""
        task = asyncio.create_task(client.run(handler, on_event=on_event))
        self.tasks.append(task)
        return task

    async def close(self) -> None:
        for c in self.clients:
            await c.close(grace=1.0)
        for task in self.tasks:
            await asyncio.wait_for(task, NET_TIMEOUT)  # raises what run() raised
        for server in self.servers:
            server.kill()


@pytest.fixture
async def chat(tmp_path: Path) -> AsyncIterator[Chat]:
    c = Chat(tmp_path)
    try:
        server = await c.start()
        for phone in (USER, BOT, OTHER):
            session = cookie_client()
            async with session:
                await register(session, server, phone)
        yield c
    finally:
        await c.close()


class Inbox:
    """A handler that keeps every message, and waits for them."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.events: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()

    async def handler(self, msg: Message) -> None:
        async with self._changed:
            self.messages.append(msg)
            self._changed.notify_all()

    async def on_event(self, frame: dict[str, Any]) -> None:
        async with self._changed:
            self.events.append(frame)
            self._changed.notify_all()

    def texts(self) -> list[str]:
        return [m.text for m in self.messages]

    def receipts(self) -> set[datetime]:
        """The instant of the `message` (a sent_timestamp, as the acknowledgement gave it) of every
        `msg_received` receipt pushed to this user."""
        return {parse_timestamp(e["message"]) for e in self.events if e.get("command") == "msg_received"}

    async def until(self, condition: Callable[[], bool], timeout: float = NET_TIMEOUT) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(condition), timeout)


async def user_online(chat: Chat) -> tuple[Client, Inbox]:
    """USER's client, receiving (its receipts go to the Inbox's events)."""
    user, inbox = await chat.client(USER, label="user"), Inbox()
    chat.run(user, inbox.handler, inbox.on_event)
    await user.wait_ready(NET_TIMEOUT)
    return user, inbox


async def waiting_for(user: Client, peer: str) -> int:
    """How many of `user`'s messages to `peer` no device of `peer` has acknowledged (server side)."""
    info = await user.request("GET", "/chat/info/personal", params={"msg_to": peer})
    return int(info["outgoing"]["waiting"])


# -- receiving ---------------------------------------------------------------------------------------


async def test_fetch_on_connect_delivers_what_was_sent_while_the_bot_was_away(chat: Chat) -> None:
    user, receipts = await user_online(chat)
    session = cookie_client()
    async with session:
        await login(session, chat.server, USER)
        key = await create_group(session, chat.server, "bots", [BOT, OTHER])
    sent = [await user.send(BOT, f"while away {i}") for i in range(3)]
    group_sent = await user.send(f"group:{key}", "to the group")
    assert [s.created for s in sent] == [True] * 3 and group_sent.msg_to == key
    assert await waiting_for(user, BOT) == 3

    bot, inbox = await chat.client(BOT), Inbox()
    chat.run(bot, inbox.handler)
    await inbox.until(lambda: len(inbox.messages) == 4)
    personal = [m for m in inbox.messages if isinstance(m, PersonalMessage)]
    assert [(m.sender, m.recipient, m.text) for m in personal] == \
        [(USER, BOT, f"while away {i}") for i in range(3)]  # oldest first
    assert [m.sent_at for m in personal] == [parse_timestamp(s.message) for s in sent]
    (group,) = [m for m in inbox.messages if isinstance(m, GroupMessage)]
    assert (group.group, group.sender, group.recipient, group.text, group.reply_to) == \
        (key, USER, BOT, "to the group", f"group:{key}")
    assert sorted(group.pending) == [BOT, OTHER]
    # Each acknowledged (after the handler) and so deleted: the sender gets the receipts.
    await receipts.until(lambda: len(receipts.receipts()) == 4)
    assert await waiting_for(user, BOT) == 0


async def test_the_acknowledgement_is_sent_only_after_the_handler_returned(chat: Chat) -> None:
    user, receipts = await user_online(chat)
    bot = await chat.client(BOT)
    entered, release = asyncio.Event(), asyncio.Event()
    handled: list[str] = []

    async def slow(msg: Message) -> None:
        entered.set()
        await release.wait()
        handled.append(msg.text)

    chat.run(bot, slow)
    await bot.wait_ready(NET_TIMEOUT)
    sent = await user.send(BOT, "hold me")
    await asyncio.wait_for(entered.wait(), NET_TIMEOUT)
    # The handler holds it: the server still stores it, and no receipt was pushed.
    assert await waiting_for(user, BOT) == 1
    await asyncio.sleep(QUIET)  # "nothing arrives" is a quiet period
    assert receipts.receipts() == set() and await waiting_for(user, BOT) == 1
    release.set()
    await receipts.until(lambda: parse_timestamp(sent.message) in receipts.receipts())
    assert handled == ["hold me"] and await waiting_for(user, BOT) == 0


async def test_a_handler_that_raises_gets_the_message_again_at_the_next_connection(chat: Chat) -> None:
    user, receipts = await user_online(chat)
    token = await chat.token(BOT)
    first = await chat.client(BOT, token)
    failed = asyncio.Event()

    async def crash(msg: Message) -> None:
        failed.set()
        raise RuntimeError("the bot's bug")

    chat.run(first, crash)
    await first.wait_ready(NET_TIMEOUT)
    await user.send(BOT, "try again")
    await asyncio.wait_for(failed.wait(), NET_TIMEOUT)
    await first.close()
    assert await waiting_for(user, BOT) == 1 and receipts.receipts() == set()

    second, inbox = await chat.client(BOT, token), Inbox()
    chat.run(second, inbox.handler)
    await inbox.until(lambda: inbox.texts() == ["try again"])
    await receipts.until(lambda: len(receipts.receipts()) == 1)


# A bot whose handler announces the message and never returns (killed -9 there by the test).
STUCK_BOT = """
import asyncio, os
from chatclient import Client

async def main():
    async with Client(os.environ["CHAT_URL"], os.environ["CHAT_TOKEN"], os.environ["CHAT_PHONE"]) as c:
        async def stuck(msg):
            print("handling", msg.text, flush=True)
            await asyncio.Event().wait()
        await c.run(stuck)

asyncio.run(main())
"""


def env_of(chat: Chat, phone: str, token: str, **more: str) -> dict[str, str]:
    return {**os.environ, "CHAT_URL": chat.server.base, "CHAT_PHONE": phone, "CHAT_TOKEN": token,
            "PYTHONUNBUFFERED": "1", **more}


@contextlib.asynccontextmanager
async def process(*args: str, env: dict[str, str],
                  stdin: int | None = None) -> AsyncIterator[asyncio.subprocess.Process]:
    """A Python subprocess in the repository, killed at the end."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=REPO, env=env, stdin=stdin, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def line(proc: asyncio.subprocess.Process, timeout: float = NET_TIMEOUT) -> str:
    """The next line of its stdout; AssertionError with its stderr when it ends first."""
    assert proc.stdout is not None and proc.stderr is not None
    text = (await asyncio.wait_for(proc.stdout.readline(), timeout)).decode()
    if not text:
        raise AssertionError(f"exited {await proc.wait()}: {(await proc.stderr.read()).decode()}")
    return text.rstrip("\n")


async def test_a_bot_killed_in_its_handler_gets_the_message_again(chat: Chat) -> None:
    user, receipts = await user_online(chat)
    token = await chat.token(BOT)
    async with process("-c", STUCK_BOT, env=env_of(chat, BOT, token)) as bot_proc:
        await user.send(BOT, "survive me")  # stored: fetched on connect or pushed
        assert await line(bot_proc) == "handling survive me"
        bot_proc.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(bot_proc.wait(), NET_TIMEOUT) == -signal.SIGKILL
    assert await waiting_for(user, BOT) == 1 and receipts.receipts() == set()
    bot, inbox = await chat.client(BOT, token), Inbox()
    chat.run(bot, inbox.handler)
    await inbox.until(lambda: inbox.texts() == ["survive me"])
    await receipts.until(lambda: len(receipts.receipts()) == 1)


async def test_the_bot_reconnects_after_the_server_restarts(chat: Chat) -> None:
    bot, inbox = await chat.client(BOT), Inbox()
    chat.run(bot, inbox.handler)
    await bot.wait_ready(NET_TIMEOUT)
    port = chat.server.port
    assert await chat.server.stop() == 0
    await until(lambda: not bot.connected, NET_TIMEOUT, "the bot sees the server go")
    await chat.start(port)
    await bot.wait_ready(WAIT)
    assert bot.connections == 2
    user, receipts = await user_online(chat)
    sent = await user.send(BOT, "after the restart")
    await inbox.until(lambda: inbox.texts() == ["after the restart"])
    await receipts.until(lambda: parse_timestamp(sent.message) in receipts.receipts())


async def test_nothing_is_lost_across_a_kill_9_of_the_server(chat: Chat) -> None:
    """The bot's handler is held (on an event) from the first message until the server is back:
    at the kill, the bot has messages pushed and not acknowledged, and the user is in the middle
    of sending, retrying through the outage. Every message reaches the handler, at least once."""
    n = 60
    bot, inbox, gate = await chat.client(BOT), Inbox(), asyncio.Event()

    async def held(msg: Message) -> None:
        await gate.wait()
        await inbox.handler(msg)

    chat.run(bot, held)
    await bot.wait_ready(NET_TIMEOUT)
    user = await chat.client(USER, label="user")  # sends only, retrying through the outage
    midway = asyncio.Event()
    results = []

    async def send_all() -> None:
        for i in range(n):
            results.append(await user.send(BOT, f"m{i}"))
            if i == n // 3:
                midway.set()

    sender = asyncio.create_task(send_all())
    try:
        await asyncio.wait_for(midway.wait(), WAIT)
        port = chat.server.port
        await kill_9(chat.server)
        at_kill = len(results)
        await chat.start(port)
        gate.set()
        await asyncio.wait_for(sender, WAIT)
    finally:
        sender.cancel()
    assert len(results) == n and at_kill < n
    expected = {f"m{i}" for i in range(n)}
    await inbox.until(lambda: set(inbox.texts()) == expected, WAIT)
    assert bot.connections >= 2
    print(f"\n{n} sent, {at_kill} of them before the kill -9 (none acknowledged by the held bot): "
          f"{len(inbox.messages)} deliveries to the handler, {len(inbox.messages) - n} repeated, "
          f"0 lost; {sum(not r.created for r in results)} sends answered as retries")
    # Every one acknowledged in the end (the bot re-acknowledges what it fetches again).
    deadline = time.monotonic() + WAIT
    while await waiting_for(user, BOT) != 0:
        assert time.monotonic() < deadline, "messages left unacknowledged"
        await asyncio.sleep(0.1)  # a poll: no event says "the last acknowledgement committed"


# -- sending -----------------------------------------------------------------------------------------


class DropFirstAnswer:
    """A TCP proxy in front of the server that passes the first connection's request on and drops
    that connection as soon as the answer begins (the server has committed and answered; the
    client never hears it); later connections are passed through."""

    def __init__(self, port: int) -> None:
        self.target, self.port, self.connections = port, free_port(), 0
        self.dropped = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> DropFirstAnswer:
        self._server = await asyncio.start_server(self._serve, HOST, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        first = self.connections == 1
        up_reader, up_writer = await asyncio.open_connection(HOST, self.target)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()

        upstream = asyncio.create_task(pipe(reader, up_writer))
        try:
            if first:
                await up_reader.read(1)  # the answer begins: committed
                self.dropped.set()
            else:
                await pipe(up_reader, writer)
        finally:
            upstream.cancel()
            writer.transport.abort()
            up_writer.transport.abort()


async def test_a_send_whose_answer_was_lost_is_retried_and_stored_once(chat: Chat) -> None:
    bot, inbox = await chat.client(BOT), Inbox()
    chat.run(bot, inbox.handler)
    await bot.wait_ready(NET_TIMEOUT)
    async with DropFirstAnswer(chat.server.port) as proxy:
        user = await chat.client(USER, base=f"http://{HOST}:{proxy.port}")
        ts = now_timestamp()
        sent = await user.send(BOT, "once only", ts)
        assert proxy.dropped.is_set() and proxy.connections == 2
    assert (sent.message, sent.created, sent.msg_from, sent.msg_to) == (ts, False, USER, BOT)
    await inbox.until(lambda: inbox.texts() == ["once only"])
    await asyncio.sleep(QUIET)  # "nothing more arrives" is a quiet period
    assert inbox.texts() == ["once only"]


async def test_a_repeated_sent_timestamp_is_stored_once(chat: Chat) -> None:
    user = await chat.client(USER)
    ts = now_timestamp()
    first, again = await user.send(BOT, "same", ts), await user.send(BOT, "same", ts)
    assert (first.created, again.created, first.message, again.message) == (True, False, ts, ts)
    assert await waiting_for(user, BOT) == 1
    bot, inbox = await chat.client(BOT), Inbox()
    chat.run(bot, inbox.handler)
    await bot.wait_ready(NET_TIMEOUT)
    await inbox.until(lambda: inbox.texts() == ["same"])
    await asyncio.sleep(QUIET)  # "nothing more arrives" is a quiet period
    assert inbox.texts() == ["same"]


async def test_send_errors(chat: Chat) -> None:
    user = await chat.client(USER)
    with pytest.raises(RefusedError) as refused:
        await user.send("5559999999", "nobody")
    assert refused.value.status == 404 and refused.value.reason
    with pytest.raises(RefusedError) as refused:
        await user.send(BOT, "")
    assert refused.value.status == 400
    wrong = Client(chat.server.base, "ct_" + "x" * 43, USER)
    async with wrong:
        with pytest.raises(AuthError):
            await wrong.send(BOT, "hi")
        with pytest.raises(AuthError):
            await asyncio.wait_for(wrong.run(Inbox().handler), NET_TIMEOUT)


# -- the command line --------------------------------------------------------------------------------


async def test_cli_send_and_listen(chat: Chat) -> None:
    bot_token, user_token = await chat.token(BOT), await chat.token(USER)
    user, receipts = await user_online(chat)
    async with process("-m", "chatclient", "listen", env=env_of(chat, BOT, bot_token)) as listen:
        async with process("-m", "chatclient", "send", BOT, "from the shell",
                           env=env_of(chat, USER, user_token)) as send:
            out, err = await asyncio.wait_for(send.communicate(), NET_TIMEOUT)
            assert send.returncode == 0, err.decode()
            answer = json.loads(out)
            assert (answer["command"], answer["msg_from"], answer["msg_to"], answer["created"]) == \
                ("msg_sent", USER, BOT, True)
        got = json.loads(await line(listen))
        assert (got["kind"], got["sender"], got["recipient"], got["text"]) == \
            ("personal", USER, BOT, "from the shell")
        assert parse_timestamp(got["sent_timestamp"]) == parse_timestamp(answer["message"])
        await receipts.until(lambda: parse_timestamp(answer["message"]) in receipts.receipts())
        listen.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(listen.wait(), NET_TIMEOUT) == 0


async def test_cli_needs_its_environment_and_a_valid_token(chat: Chat) -> None:
    env = {k: v for k, v in env_of(chat, USER, "t").items() if k != "CHAT_TOKEN"}
    async with process("-m", "chatclient", "send", BOT, "x", env=env) as proc:
        _, err = await asyncio.wait_for(proc.communicate(), NET_TIMEOUT)
        assert proc.returncode == 2 and b"CHAT_TOKEN" in err
    async with process("-m", "chatclient", "send", BOT, "x",
                       env=env_of(chat, USER, "ct_" + "y" * 43)) as proc:
        _, err = await asyncio.wait_for(proc.communicate(), NET_TIMEOUT)
        assert proc.returncode == 1 and b"AuthError" in err
        assert b"ct_yyy" not in err, "the token is never printed"


# -- the example bots --------------------------------------------------------------------------------


async def test_echo_bot_answers(chat: Chat) -> None:
    user, inbox = await user_online(chat)
    async with process("examples/echo_bot.py", env=env_of(chat, BOT, await chat.token(BOT))) as bot:
        assert (await line(bot)).startswith(f"echo bot {BOT}")
        sent = await user.send(BOT, "hello, bot")
        await inbox.until(lambda: [(m.sender, m.text) for m in inbox.messages] == [(BOT, "hello, bot")])
        assert "'hello, bot'; echoed at" in await line(bot)
        # SPEC 13: the echo quotes the message; a reaction to it is not echoed (the next echo
        # is the next message's).
        assert inbox.messages[0].replying_to == {"msg_from": sent.msg_from,
                                                 "sent_timestamp": sent.message}  # as sent
        await user.send(BOT, "\N{THUMBS UP SIGN}", react_to=ref_of(inbox.messages[0]))
        await user.send(BOT, "second")
        await inbox.until(lambda: [m.text for m in inbox.messages] == ["hello, bot", "second"])
        assert "'second'; echoed at" in await line(bot)
        bot.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(bot.wait(), NET_TIMEOUT) == 0


async def test_reminder_bot_reminds_also_across_its_kill_9(chat: Chat) -> None:
    user, inbox = await user_online(chat)
    token, store = await chat.token(BOT), chat.tmp / "reminders.json"
    env = env_of(chat, BOT, token, REMINDER_FILE=str(store))
    async with process("examples/reminder_bot.py", env=env) as bot:
        assert "0 reminders" in await line(bot)
        asked = time.monotonic()
        await user.send(BOT, "remind me in 2 seconds to test")
        await inbox.until(lambda: any(t.startswith("OK, at ") for t in inbox.texts()))
        await inbox.until(lambda: "Reminder: test" in inbox.texts(), WAIT)
        assert time.monotonic() - asked >= 2.0
        assert (await line(bot)).startswith(f"{USER} asked for 'test' at ")
        assert await line(bot) == f"reminded {USER}: 'test'"
        assert json.loads(store.read_text()) == []

        await user.send(BOT, "remind me in 3 seconds to survive")
        await inbox.until(lambda: sum(t.startswith("OK, at ") for t in inbox.texts()) == 2)
        kept = json.loads(store.read_text())
        assert [(r["to"], r["what"]) for r in kept] == [(USER, "survive")]
        bot.send_signal(signal.SIGKILL)
        await bot.wait()
    async with process("examples/reminder_bot.py", env=env) as bot:
        assert "1 reminders" in await line(bot)
        await inbox.until(lambda: "Reminder: survive" in inbox.texts(), WAIT)
    assert inbox.texts().count("Reminder: survive") == 1 and inbox.texts().count("Reminder: test") == 1
