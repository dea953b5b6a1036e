"""A client library for this chat server, for bots and scripts (SPEC 12): a device authenticated
by a token, receiving with fetch on connect and acknowledgement after the handler (at least once),
sending with safe retries, reconnecting with backoff and jitter. Needs aiohttp only (orjson when
installed); imports nothing of the server.

    import asyncio, os
    from chatclient import Client, Message

    async def main() -> None:
        async with Client(os.environ["CHAT_URL"], os.environ["CHAT_TOKEN"],
                          os.environ["CHAT_PHONE"]) as client:
            async def echo(msg: Message) -> None:
                await client.send(msg.reply_to, msg.text)
            await client.run(echo)

    asyncio.run(main())

The command line: `python -m chatclient send PHONE TEXT`, `python -m chatclient listen`.
"""

from chatclient.backoff import Backoff
from chatclient.client import Client, EventHandler, Handler
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
    Attachment,
    GroupMessage,
    Message,
    PersonalMessage,
    Ref,
    Sent,
    message_to_json,
    now_timestamp,
    parse_timestamp,
    ref_of,
)

__all__ = [
    "Attachment", "AuthError", "Backoff", "ChatError", "Client", "EventHandler", "GroupMessage",
    "Handler", "Message", "NetworkError", "PersonalMessage", "ProtocolError", "RateLimitedError",
    "Ref", "RefusedError", "Sent", "ServerError", "TooManySocketsError", "message_to_json",
    "now_timestamp", "parse_timestamp", "ref_of",
]
