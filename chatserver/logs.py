"""Logging (SPEC 11): one line per event, as text or as JSON (`server.log_format`), and the access
log's lines.

JSON lines come from python-json-logger: `{"time", "level", "logger", "message", ...}` plus
whatever context the code passed as `extra` (`remote`, `path`, `method`, `status`, ...). What
must never reach a line, at any level (tests/features/test_log_secrets.py): a message body, a
password, a cookie, an invite code, a token. The code never logs them; two things around it
would, and are stopped here:
- aiohttp's default access log writes the request line with its query string (`/register?
  invite=CODE`) and the Referer (which carries the same): `AccessLogger` writes the path alone.
- aiosqlite logs every call it runs at DEBUG, with its arguments (message bodies, password
  hashes, session hashes): `_Quiet` drops its records below INFO, whatever the loggers' levels.
"""

from __future__ import annotations

import logging
import sys
from typing import Final, TextIO

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from pythonjsonlogger.json import JsonFormatter

from .remote import client_address

# Probes: answered often, by machines; not worth a line each (SPEC 11: /healthz not logged).
QUIET_PATHS: Final = frozenset({"/healthz", "/metrics"})
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"
# Loggers whose records below INFO carry what a log must not (see the module docstring).
_CHATTY: Final = ("aiosqlite",)


class _Quiet(logging.Filter):
    """Drops the DEBUG records of _CHATTY loggers (they carry SQL arguments)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.INFO or not record.name.startswith(_CHATTY)


def make_handler(log_format: str, stream: TextIO | None = None) -> logging.Handler:
    """A handler writing one line per record to `stream` (standard error by default), as text
    or as JSON (`log_format`, "text" or "json"; ValueError for anything else)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(
            "{levelname}{name}{processName}{message}", style="{", timestamp="time",
            rename_fields={"levelname": "level", "name": "logger", "processName": "process"}))
    elif log_format == "text":
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    else:
        raise ValueError(f"log format must be text or json, not {log_format!r}")
    handler.addFilter(_Quiet())
    return handler


def configure_logging(log_format: str = "text", level: int = logging.INFO) -> None:
    """Send every record of `level` and above to standard error, one line each, in
    `log_format` (`server.log_format`); replaces the root logger's handlers."""
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(make_handler(log_format))
    root.setLevel(level)
    logging.getLogger("aiosqlite").setLevel(logging.INFO)


def request_context(request: web.BaseRequest) -> dict[str, object]:
    """A request's context for a log record's `extra` (fields of a JSON line): the client's
    address, the method and the path, never the query string (an invite code travels in one)."""
    return {"remote": _remote(request), "method": request.method, "path": request.path}


def _remote(request: web.BaseRequest) -> str:
    """The client's address (a trusted proxy's forwarded one: remote.client_address), "-" when
    unknown."""
    if isinstance(request, web.Request):  # always, for requests of the app
        return client_address(request) or "-"
    return "-"


class AccessLogger(AbstractAccessLogger):
    """aiohttp's access log (`server.access_log = true`), one line per request: client address,
    method, path (without its query string: an invite code travels in one), status, bytes and
    seconds, also as `extra` fields for JSON; nothing for QUIET_PATHS."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        path = request.path
        if path in QUIET_PATHS:
            return
        remote = _remote(request)
        self.logger.info("%s %s %s %d %d %.4fs", remote, request.method, path, response.status,
                         response.body_length, time,
                         extra={"remote": remote, "method": request.method, "path": path,
                                "status": response.status, "bytes": response.body_length,
                                "seconds": round(time, 6)})
