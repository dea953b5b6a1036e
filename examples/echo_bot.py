"""Echo bot: answers every message with the same text, in the same dialogue or group, as a reply
quoting it (SPEC 13); edits, unsends and reactions are not echoed.

    CHAT_URL=http://127.0.0.1:8080 CHAT_PHONE=5550000001 CHAT_TOKEN=ct_... \\
        .venv/bin/python examples/echo_bot.py

Make the token with `python run.py token 5550000001 --label "echo bot"` (or POST
/chat/devices/token). Each message is acknowledged after its answer was stored by the server, so a
bot stopped or killed mid-way answers it after its restart (at least once). Stop it with Ctrl-C.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: chatclient

from chatclient import Client, Message, ref_of  # noqa: E402


async def main() -> None:
    client = Client(os.environ["CHAT_URL"], os.environ["CHAT_TOKEN"], os.environ["CHAT_PHONE"])
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(client.close()))

    async def echo(msg: Message) -> None:
        # An edit, an unsend or a reaction (SPEC 13) changes an earlier message: nothing to echo.
        if not msg.text or msg.edit_of or msg.delete_of or msg.react_to:
            return  # (no text: attachments only)
        sent = await client.send(msg.reply_to, msg.text, reply_to=ref_of(msg))  # quoting it
        print(f"{msg.sender} in {msg.reply_to}: {msg.text!r}; echoed at {sent.sent_timestamp}", flush=True)

    async with client:
        print(f"echo bot {client.phone} on {client.base_url}", flush=True)
        await client.run(echo)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(main())
