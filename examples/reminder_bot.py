"""Reminder bot: "remind me in 10 minutes to call mum" -> ten minutes later, "Reminder: call mum".

    CHAT_URL=http://127.0.0.1:8080 CHAT_PHONE=5550000002 CHAT_TOKEN=ct_... \\
        .venv/bin/python examples/reminder_bot.py

Units: seconds (s, sec), minutes (m, min), hours (h, hr); "remind me in 1.5 hours to ...". The delay
counts from when the message was sent (a message fetched after the bot was down fires at once when
due). Reminders are kept in memory and in a JSON file (REMINDER_FILE, default reminders.json next to
this script), written atomically (a temporary file, fsync, rename) before the message is
acknowledged: a bot killed at any moment loses no reminder, and a message delivered twice makes one
reminder (its id is the message's identity). Each reminder is sent with a fixed sent_timestamp, so a
resend after a crash is not stored twice while the first is still waiting.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: chatclient

from chatclient import ChatError, Client, Message, RefusedError  # noqa: E402

ASK = re.compile(r"\s*remind me in\s+(\d+(?:\.\d+)?)\s*(seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h)\b"
                 r"\s*(?:to\s+)?(.+?)\s*", re.IGNORECASE | re.DOTALL)
SECONDS = {"s": 1, "m": 60, "h": 3600}
FILE = Path(os.environ.get("REMINDER_FILE") or Path(__file__).with_name("reminders.json"))
log = logging.getLogger("reminder_bot")


def parse(text: str) -> tuple[float, str] | None:
    """(delay in seconds, what) of "remind me in N unit [to] what", or None."""
    m = ASK.fullmatch(text)
    return None if m is None else (float(m[1]) * SECONDS[m[2][0].lower()], m[3])


def save(reminders: dict[str, dict[str, object]]) -> None:
    """Write every reminder to FILE atomically: readers see the old file or the new one, whole."""
    tmp = FILE.with_name(FILE.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(list(reminders.values()), f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, FILE)
    dir_fd = os.open(FILE.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)


async def main() -> None:
    client = Client(os.environ["CHAT_URL"], os.environ["CHAT_TOKEN"], os.environ["CHAT_PHONE"])
    reminders: dict[str, dict[str, object]] = {r["id"]: r for r in json.loads(FILE.read_text())} \
        if FILE.exists() else {}
    timers: set[asyncio.Task[None]] = set()

    async def fire(r: dict[str, object]) -> None:
        await asyncio.sleep(max(0.0, float(str(r["due"])) - time.time()))
        while True:
            try:
                await client.send(str(r["to"]), f"Reminder: {r['what']}", str(r["sent_timestamp"]))
                break
            except RefusedError as exc:  # blocked, left the group: drop it
                log.warning("reminder %s dropped: %s", r["id"], exc)
                break
            except ChatError as exc:  # the server is away: keep it, try again later
                log.warning("reminder %s not sent yet: %s", r["id"], exc)
                await asyncio.sleep(30)
        del reminders[str(r["id"])]
        save(reminders)
        print(f"reminded {r['to']}: {r['what']!r}", flush=True)

    def schedule(r: dict[str, object]) -> None:
        task = asyncio.create_task(fire(r))
        timers.add(task)
        task.add_done_callback(timers.discard)

    async def handle(msg: Message) -> None:
        if msg.edit_of or msg.delete_of or msg.react_to:  # SPEC 13: changes an earlier message
            return
        asked = parse(msg.text)
        if asked is None:
            await client.send(msg.reply_to, 'Ask me: "remind me in 10 minutes to call mum" '
                                             "(seconds, minutes or hours).")
            return
        rid = f"{msg.sender}|{msg.reply_to}|{msg.sent_timestamp}"
        if rid in reminders:  # delivered again (not acknowledged before a crash): already kept
            return
        due = min(msg.sent_at.timestamp(), time.time()) + asked[0]
        stamp = datetime.fromtimestamp(due, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        reminders[rid] = r = {"id": rid, "to": msg.reply_to, "what": asked[1], "due": due,
                              "sent_timestamp": stamp}
        save(reminders)  # before the acknowledgement (which follows this handler's return)
        schedule(r)
        print(f"{msg.sender} asked for {asked[1]!r} at {stamp[:19]} UTC", flush=True)
        await client.send(msg.reply_to, f"OK, at {stamp[:19]} UTC I will remind you: {asked[1]}")

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(client.close()))
    async with client:
        for r in list(reminders.values()):
            schedule(r)
        print(f"reminder bot {client.phone} on {client.base_url}, {len(reminders)} reminders "
              f"from {FILE}", flush=True)
        await client.run(handle)
        for task in list(timers):
            task.cancel()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(main())
