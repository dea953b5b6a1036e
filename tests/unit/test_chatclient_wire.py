"""The client library's pure parts (chatclient/): wire frames to typed messages, timestamps, the
backoff's bounds, the reminder bot's parser; and that it imports nothing of the server."""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import pytest

from chatclient import (
    Attachment,
    Backoff,
    GroupMessage,
    PersonalMessage,
    message_to_json,
    parse_timestamp,
    ref_of,
)
from chatclient.messages import message_from_wire, message_key

REPO = Path(__file__).resolve().parents[2]
ME, PEER, GRP = "5550001111", "5550002222", "AbCdEf0123"


def test_importable_without_the_server() -> None:
    code = ("import sys, chatclient, chatclient.__main__; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('chatserver', 'asyncpg', 'aiosqlite', 'redis', 'jinja2', 'aiohttp_session')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=30)


@pytest.mark.parametrize("text, expected", [
    ("2024-05-06 17:11:06", datetime(2024, 5, 6, 17, 11, 6, tzinfo=UTC)),
    ("2024-05-06 17:11:06.23", datetime(2024, 5, 6, 17, 11, 6, 230000, tzinfo=UTC)),
    ("2024-05-06T17:11:06.230000Z", datetime(2024, 5, 6, 17, 11, 6, 230000, tzinfo=UTC)),
    ("2024-05-06T17:11:06.000001", datetime(2024, 5, 6, 17, 11, 6, 1, tzinfo=UTC)),
])
def test_timestamps_denote_instants(text: str, expected: datetime) -> None:
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize("text", ["", "2024-05-06", "2024-05-06 17:11", "2024-05-06 17:11:06.1234567",
                                  "yesterday", "2024-05-06 17:11:06+02:00"])
def test_bad_timestamps_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_timestamp(text)


def test_a_pushed_personal_message() -> None:
    msg = message_from_wire({"message": "hi", "command": "new_msg", "msg_from": PEER, "msg_to": ME,
                             "sent_timestamp": "2024-05-06 17:11:06.23"}, ME)
    assert msg == PersonalMessage(sender=PEER, recipient=ME, text="hi",
                                  sent_timestamp="2024-05-06 17:11:06.23")
    assert (msg.reply_to, msg.own) == (PEER, False)


def test_a_copy_of_my_own_message_answers_the_peer() -> None:
    msg = message_from_wire({"message": "hi", "command": "new_msg", "msg_from": ME, "msg_to": PEER,
                             "sent_timestamp": "2024-05-06 17:11:06.23"}, ME)
    assert isinstance(msg, PersonalMessage) and msg.own and msg.peer == PEER


def test_a_fetched_group_message_with_attachments() -> None:
    wire = {"message": "", "command": "new_msg", "msg_from": f"{GRP}-{PEER}", "msg_to": ME,
            "sent_timestamp": "2024-05-06T17:11:06.230000Z", "pending": [ME, "5550003333"],
            "attachments": [{"id": "x" * 22, "name": "a.png", "content_type": "image/png", "size": 10,
                             "width": 2, "height": 3, "thumbnail": False}]}
    msg = message_from_wire(wire, ME)
    assert msg == GroupMessage(group=GRP, sender=PEER, recipient=ME, text="",
                               sent_timestamp="2024-05-06T17:11:06.230000Z",
                               attachments=(Attachment("x" * 22, "a.png", "image/png", 10, False, 2, 3),),
                               pending=(ME, "5550003333"))
    assert msg.reply_to == f"group:{GRP}"
    assert message_to_json(msg)["attachments"] == [{"id": "x" * 22, "name": "a.png",
                                                    "content_type": "image/png", "size": 10,
                                                    "thumbnail": False, "width": 2, "height": 3}]


def test_the_same_message_pushed_and_fetched_has_one_identity() -> None:
    pushed = message_from_wire({"message": "hi", "command": "new_msg", "msg_from": PEER, "msg_to": ME,
                                "sent_timestamp": "2024-05-06 17:11:06.23"}, ME)
    fetched = message_from_wire({"message": "hi", "command": "new_msg", "msg_from": PEER, "msg_to": ME,
                                 "sent_timestamp": "2024-05-06T17:11:06.230000Z"}, ME)
    other = message_from_wire({"message": "hi", "command": "new_msg", "msg_from": PEER, "msg_to": ME,
                               "sent_timestamp": "2024-05-06T17:11:06.230001Z"}, ME)
    assert message_key(pushed) == message_key(fetched) != message_key(other)


@pytest.mark.parametrize("wire", [
    {"command": "new_msg", "msg_from": PEER, "msg_to": ME, "sent_timestamp": "2024-05-06 17:11:06"},
    {"message": 3, "command": "new_msg", "msg_from": PEER, "msg_to": ME,
     "sent_timestamp": "2024-05-06 17:11:06"},
    {"message": "x", "command": "new_msg", "msg_from": PEER, "msg_to": ME, "sent_timestamp": "soon"},
])
def test_frames_that_are_no_message_are_refused(wire: dict[str, object]) -> None:
    with pytest.raises((KeyError, TypeError, ValueError)):
        message_from_wire(wire, ME)


def test_backoff_is_capped_full_jitter() -> None:
    backoff = Backoff(base=0.5, cap=8.0, rng=random.Random(1))
    assert [backoff.bound(n) for n in range(7)] == [0.5, 1, 2, 4, 8, 8, 8]
    assert backoff.bound(10_000) == 8.0
    delays = [backoff.delay(3) for _ in range(2000)]
    assert 0 <= min(delays) < 0.2 and 3.8 < max(delays) <= 4.0  # spread over the whole [0, bound]
    with pytest.raises(ValueError):
        Backoff(base=1.0, cap=0.5)


def _reminder_bot() -> ModuleType:
    spec = importlib.util.spec_from_file_location("reminder_bot", REPO / "examples" / "reminder_bot.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("text, expected", [
    ("remind me in 10 minutes to call mum", (600.0, "call mum")),
    ("Remind me in 2 seconds to test", (2.0, "test")),
    ("remind me in 1.5 hours to stretch", (5400.0, "stretch")),
    ("remind me in 3h water the plants", (10800.0, "water the plants")),
    ("remind me in 5 mins to go", (300.0, "go")),
    ("hello", None),
    ("remind me in ten minutes to x", None),
    ("remind me in 10 fortnights to x", None),
])
def test_reminder_requests(text: str, expected: tuple[float, str] | None) -> None:
    assert _reminder_bot().parse(text) == expected


@pytest.mark.parametrize("field", ["reply_to", "edit_of", "delete_of", "react_to"])
def test_a_message_with_a_spec_13_field(field: str) -> None:
    ref = {"msg_from": PEER, "sent_timestamp": "2024-05-06 17:11:06.23"}
    wire = {"message": "", "command": "new_msg", "msg_from": f"{GRP}-{PEER}", "msg_to": ME,
            "sent_timestamp": "2024-05-06 17:12:00", field: ref}
    msg = message_from_wire(wire, ME)
    attribute = "replying_to" if field == "reply_to" else field
    assert getattr(msg, attribute) == ref
    assert [getattr(msg, a) for a in ("replying_to", "edit_of", "delete_of", "react_to")].count(None) == 3
    assert msg.reply_to == f"group:{GRP}"  # where to answer, as before
    assert message_to_json(msg)[field] == ref
    assert ref_of(msg) == {"msg_from": PEER, "sent_timestamp": "2024-05-06 17:12:00"}


def test_an_ordinary_message_has_no_reference() -> None:
    msg = message_from_wire({"message": "hi", "command": "new_msg", "msg_from": PEER, "msg_to": ME,
                             "sent_timestamp": "2024-05-06 17:11:06.23"}, ME)
    assert (msg.replying_to, msg.edit_of, msg.delete_of, msg.react_to) == (None, None, None, None)
    assert not {"reply_to", "edit_of", "delete_of", "react_to"} & set(message_to_json(msg))


@pytest.mark.parametrize("bad", ["x", ["a"], {"msg_from": PEER}, {"msg_from": 1, "sent_timestamp": "t"}])
def test_a_malformed_reference_is_not_a_message(bad: object) -> None:
    with pytest.raises(TypeError):
        message_from_wire({"message": "", "command": "new_msg", "msg_from": PEER, "msg_to": ME,
                           "sent_timestamp": "2024-05-06 17:11:06.23", "edit_of": bad}, ME)
