"""Configuration: SPEC defaults, reading a TOML file, overrides, refusal of unknown keys and bad values."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from chatserver.config import Config, ConfigError, load_config
from helpers.server import REPO


def write(tmp_path: Path, text: str) -> Path:
    """A config file in tmp_path with this TOML text."""
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_the_spec_defaults() -> None:
    config = Config()
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8080)  # SPEC 3
    assert config.limits.max_message_chars == 4096  # SPEC 5.1
    assert config.limits.max_frame_bytes == 65536  # SPEC 5.5
    assert config.fetch.chunk_size == 100  # SPEC 5.2
    assert config.rooms.history == 50  # SPEC 5.4
    assert config.rooms.keep == 1000
    assert config.websocket.heartbeat == 25.0  # SPEC 5
    assert config.database.scrub_seconds == 5.0  # SPEC 6
    assert config.security.cookie_secret == ""  # SPEC 3: generated on first start
    assert config.security.https is False
    assert config.security.allowed_origins == ()
    assert config.limits.sockets_per_user == 10  # SPEC 10
    assert config.security.session_check_seconds == 2.0  # issue 12: sessions end everywhere
    assert config.limits.body_timeout_seconds == 10.0  # issue 12: slow request bodies


def test_no_file_and_no_overrides_is_all_defaults() -> None:
    assert load_config() == Config()
    assert load_config(None, server__port=None, database__path=None) == Config()


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == Config()


def test_a_toml_file_is_read(tmp_path: Path) -> None:
    path = write(tmp_path, """
[server]
host = "0.0.0.0"
port = 9000
access_log = true

[database]
path = "/srv/chat/chat.db"
synchronous = "NORMAL"
scrub_seconds = 1

[security]
cookie_secret = "abc"
https = true
allowed_origins = ["https://chat.example.org", "https://other.example.org"]
bcrypt_rounds = 10
session_seconds = 3600

[limits]
max_message_chars = 1000
max_frame_bytes = 4096
messages_per_second = 5
outgoing_queue = 10

[fetch]
chunk_size = 7

[rooms]
history = 3
keep = 30

[websocket]
heartbeat = 10.5
""")
    config = load_config(path)
    assert config.server.host == "0.0.0.0"
    assert config.server.port == 9000
    assert config.server.access_log is True
    assert config.database.path == "/srv/chat/chat.db"
    assert config.database.synchronous == "NORMAL"
    assert config.database.scrub_seconds == 1.0
    assert isinstance(config.database.scrub_seconds, float)
    assert config.security.cookie_secret == "abc"
    assert config.security.https is True
    # a TOML list becomes a tuple: the config is frozen all the way down
    assert config.security.allowed_origins == ("https://chat.example.org", "https://other.example.org")
    assert config.security.bcrypt_rounds == 10
    assert config.security.session_seconds == 3600
    assert config.limits.max_message_chars == 1000
    assert config.limits.max_frame_bytes == 4096
    assert config.limits.messages_per_second == 5.0
    assert isinstance(config.limits.messages_per_second, float)
    assert config.limits.outgoing_queue == 10
    assert config.fetch.chunk_size == 7
    assert (config.rooms.history, config.rooms.keep) == (3, 30)
    assert config.websocket.heartbeat == 10.5


def test_a_partial_file_keeps_the_other_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[server]\nport = 9001\n"))
    assert config == dataclasses.replace(Config(), server=dataclasses.replace(Config().server, port=9001))


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nhost = "0.0.0.0"\nport = 9000\n[database]\npath = "a.db"\n')
    config = load_config(path, server__port=9100, database__path="b.db", server__host=None)
    assert config.server.port == 9100
    assert config.database.path == "b.db"
    assert config.server.host == "0.0.0.0"  # None means "not given"


def test_overrides_without_a_file() -> None:
    config = load_config(server__host="::1", limits__max_message_chars=10)
    assert config.server.host == "::1"
    assert config.limits.max_message_chars == 10
    assert config.server.port == 8080


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().server.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[serverr]\nport = 1\n", "serverr"),
        ("[server]\nprot = 9000\n", "prot"),
        ("[limits]\nmax_message_char = 10\n", "max_message_char"),
        ("[security]\ncookie_secrets = \"x\"\n", "cookie_secrets"),
        ("port = 9000\n", "port"),  # a key outside any table
        ("[server.extra]\nx = 1\n", "extra"),  # a sub-table is an unknown key of [server]
    ],
)
def test_unknown_table_or_key_is_refused(tmp_path: Path, text: str, named: str) -> None:
    """A typo must not silently fall back to a default."""
    with pytest.raises(ConfigError, match=named):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize(
    ("override", "named"),
    [("server__prot", "prot"), ("nosuch__key", "nosuch"), ("server", "server")],
)
def test_unknown_override_is_refused(override: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_config(**{override: 1})


@pytest.mark.parametrize(
    "text",
    [
        "server = 1\n",  # a table written as a value
        'server = "127.0.0.1"\n',
        "[server]\nport = \"8080\"\n",
        "[server]\nport = 8080.5\n",
        "[server]\nport = 8080.0\n",
        "[server]\nport = true\n",
        "[server]\nhost = 127\n",
        "[server]\naccess_log = \"yes\"\n",
        "[server]\naccess_log = 1\n",
        "[database]\npath = [\"a.db\"]\n",
        "[database]\nscrub_seconds = \"5\"\n",
        "[database]\nscrub_seconds = false\n",
        "[security]\nallowed_origins = \"https://a.example\"\n",
        "[security]\nallowed_origins = [1, 2]\n",
        "[security]\nhttps = \"true\"\n",
        "[security]\nbcrypt_rounds = 12.0\n",
        "[limits]\nmessages_per_second = \"fast\"\n",
        "[limits]\nmessages_per_second = true\n",
        "[limits]\nmax_frame_bytes = 1e5\n",
        "[fetch]\nchunk_size = [100]\n",
        "[websocket]\nheartbeat = {}\n",
    ],
)
def test_wrong_types_are_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize(
    "text",
    [
        "[server]\nport = 0\n",
        "[server]\nport = -1\n",
        "[limits]\nmax_message_chars = 0\n",
        "[limits]\nmax_frame_bytes = -5\n",
        "[limits]\nmessages_per_second = 0\n",
        "[limits]\noutgoing_queue = 0\n",
        "[limits]\nlogin_failures_per_phone = 0\n",
        "[limits]\nlogin_failures_per_pair = 0\n",
        "[limits]\npassword_workers = 0\n",
        "[limits]\npassword_queue = -1\n",
        "[fetch]\nchunk_size = 0\n",
        "[rooms]\nhistory = 0\n",
        "[rooms]\nkeep = -1\n",
        "[websocket]\nheartbeat = 0\n",
        "[security]\nsession_seconds = 0\n",
        "[security]\nsession_check_seconds = 0\n",
        "[limits]\nsockets_per_user = 0\n",
        "[limits]\nbody_timeout_seconds = -1\n",
        "[security]\nbcrypt_rounds = 3\n",
        "[security]\nbcrypt_rounds = 32\n",
        "[database]\nsynchronous = \"SOMETIMES\"\n",
        "[database]\nsynchronous = \"\"\n",
        "[database]\nsynchronous = \"FULL; DROP TABLE users\"\n",
        "[database]\nscrub_seconds = -1\n",
        "[limits]\nmax_message_bytes = 0\n",
        "[limits]\nmax_waiting_per_recipient = 0\n",
        "[retention]\nundelivered_days = 0\n",
        "[retention]\ncheck_seconds = 0\n",
        "[retention]\ncheck_seconds = 3601\n",  # SPEC 10: checked at least hourly
    ],
)
def test_out_of_range_values_are_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize(
    "override",
    [
        {"server__port": "8080"},
        {"server__port": 0},
        {"server__host": 1},
        {"security__bcrypt_rounds": 99},
        {"limits__messages_per_second": False},
    ],
)
def test_bad_overrides_are_refused(override: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        load_config(**override)


@pytest.mark.parametrize(
    "text",
    [
        "[database]\nscrub_seconds = nan\n",
        "[limits]\nmessages_per_second = nan\n",
        "[websocket]\nheartbeat = nan\n",
    ],
)
def test_nan_is_refused(tmp_path: Path, text: str) -> None:
    """TOML has a `nan` literal, and NaN passes every `<= 0` check; a NaN scrub interval would
    never scrub (SPEC 6)."""
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize("level", ["OFF", "NORMAL", "FULL", "EXTRA", "normal", "Full"])
def test_synchronous_levels(tmp_path: Path, level: str) -> None:
    config = load_config(write(tmp_path, f'[database]\nsynchronous = "{level}"\n'))
    assert config.database.synchronous.upper() == level.upper()


@pytest.mark.parametrize("rounds", [4, 12, 31])
def test_bcrypt_rounds_in_range(tmp_path: Path, rounds: int) -> None:
    config = load_config(write(tmp_path, f"[security]\nbcrypt_rounds = {rounds}\n"))
    assert config.security.bcrypt_rounds == rounds


def test_scrub_seconds_zero_is_allowed(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "[database]\nscrub_seconds = 0\n")).database.scrub_seconds == 0.0


def test_missing_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        load_config(tmp_path / "nope.toml")


def test_invalid_toml_raises(tmp_path: Path) -> None:
    with pytest.raises(tomllib.TOMLDecodeError):
        load_config(write(tmp_path, "[server\nport = \n"))


def test_the_repository_config_loads() -> None:
    """`make run` reads config.toml: it must load and serve on 127.0.0.1:8080 (SPEC 3)."""
    config = load_config(REPO / "config.toml")
    assert isinstance(config, Config)
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8080)


def test_retention_takes_a_fraction_of_a_day(tmp_path: Path) -> None:
    """SPEC 10 `[retention]`: the defaults (30 days, hourly), and a fraction of a day is allowed."""
    assert (load_config().retention.undelivered_days, load_config().retention.check_seconds) == (30, 3600)
    config = load_config(write(tmp_path, "[retention]\nundelivered_days = 0.5\ncheck_seconds = 60\n"))
    assert (config.retention.undelivered_days, config.retention.check_seconds) == (0.5, 60.0)
    assert (load_config().limits.max_waiting_per_recipient, load_config().limits.max_message_bytes) == (
        10000, 16384)


@pytest.mark.parametrize(("tables", "named"), [
    ({"server": {"log_format": "xml"}}, r"\[server\] log_format"),
    ({"metrics": {"allow": ["not-a-network"]}}, r"\[metrics\] allow"),
    ({"metrics": {"allow": ["10.0.0.0/33"]}}, r"\[metrics\] allow"),
    ({"metrics": {"enabled": "yes"}}, r"\[metrics\] enabled"),
])
def test_operations_keys_are_checked(tables: dict[str, dict[str, object]], named: str) -> None:
    """SPEC 11: `server.log_format` and `[metrics]` refuse what they cannot use, naming the key."""
    overrides = {f"{table}__{key}": value for table, keys in tables.items()
                 for key, value in keys.items()}
    with pytest.raises(ConfigError, match=named):
        load_config(None, **overrides)


def test_operations_defaults() -> None:
    config = load_config(None, server__log_format="json", metrics__allow=["10.1.2.3", "fd00::/8"])
    assert config.server.log_format == "json"
    assert config.metrics.allow == ("10.1.2.3", "fd00::/8") and config.metrics.enabled
    assert Config().metrics.allow == ("127.0.0.1/32", "::1/128")
