"""The command line of the client library:

    python -m chatclient send PHONE|group:KEY [TEXT]   send one message (TEXT read from stdin when
                                                        absent); prints the answer as one JSON line
    python -m chatclient listen [--events] [--own]      print every message as a JSON line, each
                                                        acknowledged after its line was written

The server, the user and the token come from the environment, never from the command line (which
every user of the machine can read with `ps`): CHAT_URL (e.g. http://127.0.0.1:8080), CHAT_PHONE,
CHAT_TOKEN. Exit status: 0, 1 on a ChatError (message on stderr), 2 on bad usage or a missing
variable. `listen` stops cleanly on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from dataclasses import asdict
from typing import Any

from chatclient.client import Client, dumps
from chatclient.errors import ChatError
from chatclient.messages import Message, message_to_json

ENV = ("CHAT_URL", "CHAT_PHONE", "CHAT_TOKEN")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m chatclient",
        description="Send and receive chat messages with a device token. Reads CHAT_URL, CHAT_PHONE "
                    "and CHAT_TOKEN from the environment.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log connections and retries")
    commands = parser.add_subparsers(dest="command", required=True)
    send = commands.add_parser("send", help="send one message")
    send.add_argument("to", help="the recipient's phone, or group:KEY")
    send.add_argument("text", nargs="?", help="the message (default: read from stdin)")
    send.add_argument("--timestamp", help="the message's sent_timestamp (its identity), UTC; "
                                          "repeat it to retry a send safely")
    listen = commands.add_parser("listen", help="print each message as a JSON line")
    listen.add_argument("--events", action="store_true",
                        help="also print the other frames (receipts, typing, presence) as they come")
    listen.add_argument("--own", action="store_true",
                        help="also print copies of what this user sends from other devices")
    return parser


async def _send(client: Client, args: argparse.Namespace) -> int:
    text = args.text if args.text is not None else sys.stdin.read().rstrip("\n")
    sent = await client.send(args.to, text, args.timestamp)
    print(dumps(asdict(sent)), flush=True)
    return 0


async def _listen(client: Client, args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(client.close()))

    async def show(msg: Message) -> None:
        # Written and flushed before returning: the acknowledgement follows the return.
        print(dumps(message_to_json(msg)), flush=True)

    async def event(frame: dict[str, Any]) -> None:
        print(dumps({"kind": "event", **frame}), flush=True)

    await client.run(show, on_event=event if args.events else None)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    missing = [name for name in ENV if not os.environ.get(name)]
    if missing:
        print(f"chatclient: set {', '.join(missing)} in the environment", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        client = Client(os.environ["CHAT_URL"], os.environ["CHAT_TOKEN"], os.environ["CHAT_PHONE"])
    except ValueError as exc:  # a bad CHAT_URL or token
        print(f"chatclient: {exc}", file=sys.stderr)
        return 2

    async def go() -> int:
        async with client:
            return await (_send if args.command == "send" else _listen)(client, args)

    try:
        return asyncio.run(go())
    except ChatError as exc:
        print(f"chatclient: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
