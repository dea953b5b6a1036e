"""The wire format (SPEC 5): timestamps, decode, parse_frame, command_of, error_frame, is_phone.

Plain functions, no server: every table of good and bad input is a parametrize list.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chatserver.protocol import (
    FRAME_FIELDS,
    Frame,
    ProtocolError,
    command_of,
    decode,
    encode,
    error_frame,
    fetch_timestamp,
    is_phone,
    now_micros,
    parse_frame,
    parse_timestamp,
    per_recipient,
    server_now,
    server_timestamp,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SERVER_FORMAT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}")
FETCH_FORMAT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")


def micros(*args: int) -> int:
    """Microseconds since the epoch of datetime(*args) in UTC, computed without the code under test."""
    return (datetime(*args, tzinfo=UTC) - EPOCH) // timedelta(microseconds=1)


# -- parse_timestamp ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-14 17:11:06", micros(2026, 3, 14, 17, 11, 6)),
        ("2026-03-14T17:11:06", micros(2026, 3, 14, 17, 11, 6)),
        ("2026-03-14T17:11:06Z", micros(2026, 3, 14, 17, 11, 6)),
        ("2026-03-14 17:11:06.2", micros(2026, 3, 14, 17, 11, 6, 200000)),
        ("2026-03-14 17:11:06.23", micros(2026, 3, 14, 17, 11, 6, 230000)),
        ("2026-03-14 17:11:06.230", micros(2026, 3, 14, 17, 11, 6, 230000)),
        ("2026-03-14 17:11:06.2301", micros(2026, 3, 14, 17, 11, 6, 230100)),
        ("2026-03-14 17:11:06.23012", micros(2026, 3, 14, 17, 11, 6, 230120)),
        ("2026-03-14 17:11:06.230123", micros(2026, 3, 14, 17, 11, 6, 230123)),
        ("2026-03-14T17:11:06.000001Z", micros(2026, 3, 14, 17, 11, 6, 1)),
        ("2026-03-14T17:11:06.999999", micros(2026, 3, 14, 17, 11, 6, 999999)),
        ("1970-01-01 00:00:00", 0),
        ("1970-01-01T00:00:00.000001Z", 1),
        ("1969-12-31 23:59:59.999999", -1),
        ("2024-02-29 23:59:59", micros(2024, 2, 29, 23, 59, 59)),  # leap year
        ("2000-02-29T00:00:00Z", micros(2000, 2, 29)),  # divisible by 400: leap
        ("9999-12-31T23:59:59.999999Z", micros(9999, 12, 31, 23, 59, 59, 999999)),
    ],
)
def test_parse_timestamp_accepts_both_forms(text: str, expected: int) -> None:
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize(
    "same",
    [
        "2026-03-14 17:11:06.23",
        "2026-03-14 17:11:06.230",
        "2026-03-14 17:11:06.2300",
        "2026-03-14 17:11:06.23000",
        "2026-03-14 17:11:06.230000",
        "2026-03-14T17:11:06.23",
        "2026-03-14T17:11:06.23Z",
        "2026-03-14T17:11:06.230000Z",
    ],
)
def test_same_instant_to_the_microsecond_is_the_same_timestamp(same: str) -> None:
    """SPEC 5: `17:11:06.23` equals `17:11:06.230000`, whatever the form."""
    assert parse_timestamp(same) == parse_timestamp("2026-03-14 17:11:06.230000")


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("2026-03-14 17:11:06.23", "2026-03-14 17:11:06.023"),
        ("2026-03-14 17:11:06.230001", "2026-03-14 17:11:06.23"),
        ("2026-03-14 17:11:06", "2026-03-14 17:11:07"),
        ("2026-03-14T17:11:06Z", "2026-03-15T17:11:06Z"),
    ],
)
def test_different_instants_differ(a: str, b: str) -> None:
    assert parse_timestamp(a) != parse_timestamp(b)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "２０２６-03-14 17:11:06",  # fullwidth digits are not [0-9]
        "٢٠٢٦-03-14 17:11:06",  # Arabic-Indic digits
        "2026-03-14 17:11:06.٢٣",  # ... also in the fraction
        "2026-03-14 17:11:06.1234567",  # 7 fraction digits
        "2026-03-14T17:11:06.1234567Z",
        "2026-03-14 17:11:06.",  # a dot without digits
        "2026-03-14T17:11:06.Z",
        "2026-13-01 00:00:00",  # month 13
        "2026-00-10 00:00:00",  # month 0
        "2026-03-00 00:00:00",  # day 0
        "2026-02-30 00:00:00",  # Feb 30
        "2025-02-29 00:00:00",  # not a leap year
        "1900-02-29 00:00:00",  # divisible by 100, not by 400
        "2026-04-31T00:00:00Z",  # April has 30 days
        "0000-01-01 00:00:00",  # year 0
        "2026-03-14 24:00:00",
        "2026-03-14 17:60:00",
        "2026-03-14 17:11:60",
        "2026-03-14 17:11:06x",  # trailing junk
        "2026-03-14 17:11:06 ",
        " 2026-03-14 17:11:06",
        "2026-03-14 17:11:06\n",
        "2026-03-14T17:11:06ZZ",
        "2026-03-14T17:11:06+00:00",  # offsets are not in the grammar
        "2026-03-14T17:11:06.23+01:00",
        "2026-03-14 17:11:06Z",  # Z only belongs to the ISO form
        "2026-03-14",
        "2026-03-14 17:11",
        "2026-3-14 17:11:06",
        "26-03-14 17:11:06",
        "20260314T171106Z",
        "2026/03/14 17:11:06",
        "2026-03-14_17:11:06",
        "not a timestamp",
    ],
)
def test_parse_timestamp_refuses(text: str) -> None:
    with pytest.raises(ProtocolError, match="timestamp"):
        parse_timestamp(text)


def test_parse_timestamp_error_does_not_echo_a_huge_input() -> None:
    """The reason is shown in an error frame: it must stay short, whatever was sent."""
    with pytest.raises(ProtocolError) as info:
        parse_timestamp("9" * 100_000)
    assert len(str(info.value)) < 200


# -- server_timestamp / fetch_timestamp ---------------------------------------------------------


@pytest.mark.parametrize(
    ("us", "server", "fetch"),
    [
        (0, "1970-01-01 00:00:00.000", "1970-01-01T00:00:00.000000Z"),
        (1, "1970-01-01 00:00:00.000", "1970-01-01T00:00:00.000001Z"),
        (micros(2026, 3, 14, 17, 11, 6, 230000), "2026-03-14 17:11:06.230", "2026-03-14T17:11:06.230000Z"),
        (micros(2026, 3, 14, 17, 11, 6, 234400), "2026-03-14 17:11:06.234", "2026-03-14T17:11:06.234400Z"),
        (micros(2026, 3, 14, 7, 1, 2, 3000), "2026-03-14 07:01:02.003", "2026-03-14T07:01:02.003000Z"),
        (micros(2024, 2, 29, 23, 59, 59, 123000), "2024-02-29 23:59:59.123", "2024-02-29T23:59:59.123000Z"),
        (-1_000_000, "1969-12-31 23:59:59.000", "1969-12-31T23:59:59.000000Z"),
        (-1, None, "1969-12-31T23:59:59.999999Z"),
        (micros(9999, 12, 31, 23, 59, 59, 999000), "9999-12-31 23:59:59.999",
         "9999-12-31T23:59:59.999000Z"),
    ],
)
def test_server_and_fetch_formats(us: int, server: str | None, fetch: str) -> None:
    """SPEC 5: server `YYYY-MM-DD HH:MM:SS.fff`, fetch `YYYY-MM-DDTHH:MM:SS.ffffffZ`, both UTC."""
    if server is not None:
        assert server_timestamp(us) == server
    assert SERVER_FORMAT.fullmatch(server_timestamp(us))
    assert fetch_timestamp(us) == fetch


@pytest.mark.parametrize(
    "text",
    [
        "2026-03-14 17:11:06.23",
        "2026-03-14T17:11:06Z",
        "1970-01-01 00:00:00",
        "1969-07-20 20:17:40.5",
        "2038-01-19T03:14:08.000001Z",
        "9999-12-31T23:59:59.999999Z",
    ],
)
def test_fetch_timestamp_round_trips(text: str) -> None:
    """A timestamp in a fetch result names the same message as the one the client sent."""
    us = parse_timestamp(text)
    assert FETCH_FORMAT.fullmatch(fetch_timestamp(us))
    assert parse_timestamp(fetch_timestamp(us)) == us
    assert SERVER_FORMAT.fullmatch(server_timestamp(us))
    assert parse_timestamp(server_timestamp(us)) == us // 1000 * 1000


@pytest.mark.parametrize("text", ["0001-01-01 00:00:00", "0999-12-31T23:59:59.5Z"])
def test_early_years_keep_four_digits(text: str) -> None:
    """parse_timestamp accepts any year from 0001, so the formats must print it as 4 digits
    (glibc's strftime %Y does not zero-pad years before 1000)."""
    us = parse_timestamp(text)
    assert FETCH_FORMAT.fullmatch(fetch_timestamp(us)), fetch_timestamp(us)
    assert SERVER_FORMAT.fullmatch(server_timestamp(us)), server_timestamp(us)
    assert parse_timestamp(fetch_timestamp(us)) == us


def test_server_now_is_the_current_utc_time_in_server_format() -> None:
    before = now_micros()
    stamp = server_now()
    after = now_micros()
    assert SERVER_FORMAT.fullmatch(stamp)
    assert before // 1000 * 1000 <= parse_timestamp(stamp) <= after
    wall = (datetime.now(UTC) - EPOCH) // timedelta(microseconds=1)
    assert abs(wall - parse_timestamp(stamp)) < 5_000_000


# -- decode -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{}", {}),
        ('{"command": "new_msg"}', {"command": "new_msg"}),
        ('  {"a": [1, {"b": null}]}  ', {"a": [1, {"b": None}]}),
        ('{"message": "h\\u00e9 \\ud83c\\udf89"}', {"message": "hé 🎉"}),
        ('{"a": ' + "[" * 50 + "]" * 50 + "}", {"a": json.loads("[" * 50 + "]" * 50)}),
    ],
)
def test_decode_accepts_objects(text: str, expected: dict[str, Any]) -> None:
    assert decode(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", " ", "not json", "{", '{"a": 1', "{'a': 1}", '{"a": 1,}', '{"a" 1}', "\x00", "}{"],
)
def test_decode_refuses_what_is_not_json(text: str) -> None:
    with pytest.raises(ProtocolError, match="JSON"):
        decode(text)


@pytest.mark.parametrize("text", ["[]", "[{}]", "1", "1.5", '"a string"', "null", "true", "false"])
def test_decode_refuses_what_is_not_an_object(text: str) -> None:
    with pytest.raises(ProtocolError, match="object"):
        decode(text)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 100_000 + "1" + "}" * 100_000,
        '{"message": ' + "[" * 100_000 + "]" * 100_000 + "}",
    ],
    ids=["deep-list", "deep-object", "object-holding-deep-list"],
)
def test_decode_refuses_deep_nesting(text: str) -> None:
    """A RecursionError must not escape: the socket answers an error frame and stays open."""
    with pytest.raises(ProtocolError):
        decode(text)


# -- parse_frame --------------------------------------------------------------------------------


def good_frame(**changes: Any) -> dict[str, Any]:
    """A valid personal `new_msg` frame, with some fields changed."""
    frame: dict[str, Any] = {
        "message": "hello",
        "command": "new_msg",
        "msg_from": "1234567890",
        "msg_to": "1234567891",
        "sent_timestamp": "2026-03-14 17:11:06.23",
    }
    frame.update(changes)
    return frame


def test_parse_frame_gives_the_fields_as_sent() -> None:
    data = good_frame(message="héllo 🎉", extra="ignored")
    frame = parse_frame(data)
    assert isinstance(frame, Frame)
    assert (frame.command, frame.message, frame.msg_from, frame.msg_to, frame.sent_timestamp) == (
        "new_msg", "héllo 🎉", "1234567890", "1234567891", "2026-03-14 17:11:06.23")
    assert frame.sent_us == parse_timestamp("2026-03-14 17:11:06.230000")
    # pushed to the recipient exactly as sent: the five fields, nothing else
    assert frame.wire() == good_frame(message="héllo 🎉")


def test_parse_frame_keeps_the_timestamp_text_unchanged() -> None:
    """The client's own spelling is echoed back; only sent_us is normalised."""
    a = parse_frame(good_frame(sent_timestamp="2026-03-14T17:11:06.230000Z"))
    b = parse_frame(good_frame(sent_timestamp="2026-03-14 17:11:06.23"))
    assert a.sent_timestamp == "2026-03-14T17:11:06.230000Z"
    assert b.sent_timestamp == "2026-03-14 17:11:06.23"
    assert a.sent_us == b.sent_us


@pytest.mark.parametrize("field", FRAME_FIELDS)
def test_parse_frame_refuses_a_missing_field(field: str) -> None:
    data = good_frame()
    del data[field]
    with pytest.raises(ProtocolError, match=field):
        parse_frame(data)


@pytest.mark.parametrize("field", FRAME_FIELDS)
@pytest.mark.parametrize("value", [None, 1, 1.5, True, [], ["hello"], {}, {"a": "b"}])
def test_parse_frame_refuses_a_wrongly_typed_field(field: str, value: object) -> None:
    with pytest.raises(ProtocolError, match=field):
        parse_frame(good_frame(**{field: value}))


@pytest.mark.parametrize("field", FRAME_FIELDS)
@pytest.mark.parametrize("surrogate", ["\ud800", "\udfff", "a\udc80b", "\ud83c"])
def test_decode_refuses_lone_surrogates_in_any_field(field: str, surrogate: str) -> None:
    """JSON's `\\ud800` escape would decode to a lone surrogate, which is not UTF-8 text."""
    text = json.dumps(good_frame(**{field: surrogate}))  # ASCII, with \\udXXX escapes
    with pytest.raises(ProtocolError, match="surrogate"):
        decode(text)


def test_lone_surrogates_arriving_as_json_are_refused() -> None:
    # orjson refuses them while decoding, before parse_frame sees the frame
    with pytest.raises(ProtocolError, match="surrogate"):
        decode(json.dumps(good_frame()).replace("hello", "\\ud800"))


@pytest.mark.parametrize(
    "timestamp", ["", "yesterday", "2026-02-30 00:00:00", "2026-03-14 17:11:06.1234567"])
def test_parse_frame_refuses_an_unparseable_timestamp(timestamp: str) -> None:
    with pytest.raises(ProtocolError, match="timestamp"):
        parse_frame(good_frame(sent_timestamp=timestamp))


# -- command_of ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"command": "new_msg"}, "new_msg"),
        ({"command": "no_such_command", "message": 1}, "no_such_command"),
        ({"command": ""}, ""),
        ({"command": "héllo"}, "héllo"),
        ({}, "invalid"),
        ({"message": "new_msg"}, "invalid"),
        ({"command": None}, "invalid"),
        ({"command": 1}, "invalid"),
        ({"command": True}, "invalid"),
        ({"command": ["new_msg"]}, "invalid"),
        ({"command": {"new_msg": 1}}, "invalid"),
        ("new_msg", "invalid"),
        (["new_msg"], "invalid"),
        (None, "invalid"),
        (1, "invalid"),
    ],
)
def test_command_of(data: object, expected: str) -> None:
    """SPEC 5.5: `type` is the frame's command when that is a string, else 'invalid'."""
    assert command_of(data) == expected


def test_command_of_a_long_command_is_whole() -> None:
    # SPEC 5.5: `type` is the frame's command; max_frame_bytes already bounds its length
    command = "x" * 100_000
    assert command_of({"command": command}) == command


# -- error_frame / encode -----------------------------------------------------------------------


def test_error_frame_shape() -> None:
    """SPEC 5.5: message, command 'error', type, msg_from, msg_to, sent_timestamp (server time)."""
    before = now_micros()
    frame = error_frame("the message is empty", "new_msg", "1234567890", "1234567891")
    after = now_micros()
    assert set(frame) == {"message", "command", "type", "msg_from", "msg_to", "sent_timestamp"}
    assert frame["message"] == "the message is empty"
    assert frame["command"] == "error"
    assert frame["type"] == "new_msg"
    assert frame["msg_from"] == "1234567890"
    assert frame["msg_to"] == "1234567891"
    assert SERVER_FORMAT.fullmatch(frame["sent_timestamp"])
    assert before // 1000 * 1000 <= parse_timestamp(frame["sent_timestamp"]) <= after
    assert json.loads(encode(frame)) == frame


def test_encode_is_compact_utf8_json() -> None:
    frame = {"message": "héllo 🎉", "command": "new_msg"}
    data = encode(frame)
    assert "héllo 🎉".encode() in data  # raw UTF-8, not \\u escapes
    assert b", " not in data and b": " not in data
    assert json.loads(data) == frame


def test_per_recipient_frames_differ_only_in_msg_to() -> None:
    frame = {"message": "hi \"there\"", "command": "new_msg", "msg_from": "AbCdEfGhIj-1234567890"}
    addressed = per_recipient(frame)
    for phone in ("1234567891", "123456789012345"):
        assert json.loads(addressed(phone)) == {**frame, "msg_to": phone}


# -- is_phone -----------------------------------------------------------------------------------


@pytest.mark.parametrize("phone", ["0123456789", "1234567890", "12345678901234", "1" * 15])
def test_is_phone_accepts_10_to_15_ascii_digits(phone: str) -> None:
    assert is_phone(phone)


@pytest.mark.parametrize(
    "phone",
    [
        "",
        "123456789",  # 9
        "1" * 16,
        "+1234567890",
        "123 4567890",
        "123-456-7890",
        "12345abcde",
        "1234567890\n",
        " 1234567890",
        "１２３４５６７８９０",  # fullwidth
        "١٢٣٤٥٦٧٨٩٠",  # Arabic-Indic
        "１234567890",
        None,
        1234567890,
        b"1234567890",
        ["1234567890"],
    ],
)
def test_is_phone_refuses(phone: object) -> None:
    assert not is_phone(phone)
