"""The deployment files of deploy/ (README "Deploying"), without systemd: the backup unit's own
command lines run for real against a real database, the server unit asks for what issue 16 names,
and the nginx site's timeouts fit the server's heartbeat. tests/system/test_nginx.py runs the
nginx site itself."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from chatserver.config import Config
from helpers.server import REPO, write_config

DEPLOY = REPO / "deploy"


def directives(unit: Path) -> dict[str, list[str]]:
    """The `Key=value` lines of a systemd unit, every value of a key in order."""
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_the_server_unit_runs_serve_as_its_own_user_in_a_locked_down_system() -> None:
    unit = directives(DEPLOY / "chat.service")
    assert unit["User"] == ["chat"] and unit["Group"] == ["chat"]
    assert re.fullmatch(r"\S+/python run\.py serve --config \S+", unit["ExecStart"][0])
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["ReadWritePaths"] == ["/var/lib/chat"]
    assert unit["NoNewPrivileges"] == ["yes"] and unit["PrivateTmp"] == ["yes"]
    assert unit["Restart"] == ["on-failure"]
    assert int(unit["LimitNOFILE"][0]) >= 65536


def _local(command: str, config: Path, backups: Path) -> str:
    """A command line of chat-backup.service, for this checkout: its paths made local and
    systemd's %% unescaped."""
    return (command.replace("/opt/chat/.venv/bin/python", sys.executable)
            .replace("/etc/chat/config.toml", str(config))
            .replace("/var/backups/chat", str(backups)).replace("%%", "%"))


def test_the_backup_unit_copies_the_database_and_deletes_copies_older_than_two_weeks(
        tmp_path: Path) -> None:
    unit = directives(DEPLOY / "chat-backup.service")
    assert unit["User"] == ["chat"] and unit["Type"] == ["oneshot"]
    assert "/var/backups/chat" in unit["ReadWritePaths"][0].split()
    db = tmp_path / "chat.db"
    config = write_config(tmp_path / "config.toml", {"database": {"path": str(db)},
                                                     "security": {"bcrypt_rounds": 4}})
    subprocess.run([sys.executable, "run.py", "adduser", "5558000001", "--name", "Ann",
                    "--password-stdin", "--config", str(config)], cwd=REPO, check=True,
                   input=b"a long enough password\n", capture_output=True, timeout=60)
    backups = tmp_path / "backups"
    backups.mkdir()
    old, young = backups / "chat-20000101-000000.db", backups / "chat-20990101-000000.db"
    for path, days in ((old, 20), (young, 3)):
        path.write_bytes(b"an earlier copy")
        then = time.time() - days * 86400
        os.utime(path, (then, then))
    # ExecStart is a shell line (`sh -c '...'`): run it with sh as systemd would.
    start = _local(unit["ExecStart"][0], config, backups)
    assert start.startswith("/bin/sh -c '") and start.endswith("'")
    done = subprocess.run(["/bin/sh", "-c", start[len("/bin/sh -c '"):-1]], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    subprocess.run(_local(unit["ExecStartPost"][0], config, backups).replace('"', "").split(),
                   check=True, timeout=60)
    copies = sorted(p.name for p in backups.iterdir())
    made = [name for name in copies if name not in (old.name, young.name)]
    assert old.name not in copies and young.name in copies, copies
    assert len(made) == 1 and re.fullmatch(r"chat-\d{8}-\d{6}\.db", made[0]), copies
    with sqlite3.connect(backups / made[0]) as copy:
        assert copy.execute("SELECT count(*) FROM users").fetchone() == (1,)
    timer = directives(DEPLOY / "chat-backup.timer")
    assert timer["OnCalendar"] == ["daily"] and timer["Persistent"] == ["true"]


def test_the_nginx_socket_timeout_outlasts_the_heartbeat() -> None:
    """nginx closes a proxied socket after proxy_read_timeout without a byte from the server; the
    server pings every websocket.heartbeat seconds (SPEC 5), so the timeout must be longer."""
    site = (DEPLOY / "nginx-chat.conf").read_text()
    ws = re.search(r"location /ws/ \{(.*?)\}", site, re.S)
    assert ws is not None
    timeout = re.search(r"proxy_read_timeout (\d+)s;", ws[1])
    assert timeout is not None and int(timeout[1]) > 2 * Config().websocket.heartbeat
    for needed in ("proxy_http_version 1.1;", "proxy_set_header Upgrade $http_upgrade;",
                   "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
                   "proxy_set_header X-Forwarded-Proto $scheme;"):
        assert needed in site
