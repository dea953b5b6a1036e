"""GET /metrics (SPEC 11): the Prometheus text format, only to addresses in `metrics.allow`
(anyone else: 404), figures that move with what the server does, no per-user label values.

The counters are the test process's (prometheus-client's module-level metrics, shared by every
app a test builds): each test compares a scrape after with a scrape before. The figures read
from the store are cached STORE_FIGURES_SECONDS: the test that reads them builds a fresh app.
With `serve --workers N`: tests/system/test_metrics_workers.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re

import aiohttp
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from chatserver.app import create_app
from chatserver.config import Config, Metrics
from helpers.accounts import UserFactory
from helpers.frames import frame, new_phone
from helpers.timing import POLL, TIMEOUT
from helpers.ws import open_personal, open_receive, recv, send_new_msg

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape_text(server: TestServer) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, \
            session.get(server.make_url("/metrics")) as resp:
        return resp.status, await resp.text()


def parse(text: str) -> Samples:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def scrape(server: TestServer) -> Samples:
    status, text = await scrape_text(server)
    assert status == 200, text
    return parse(text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_metrics_answer_allowed_addresses_only(aiohttp_server, config: Config) -> None:
    server = await aiohttp_server(create_app(config))  # default allow: 127.0.0.1/32, ::1/128
    status, text = await scrape_text(server)
    assert status == 200
    assert "# TYPE chat_messages_accepted_total counter" in text
    assert "process_cpu_seconds_total" in text  # the process's own figures

    # 127.0.0.1 is not in 10.0.0.0/8: as if there were no such page.
    elsewhere = dataclasses.replace(config, metrics=Metrics(allow=("10.0.0.0/8", "::1/128")))
    server = await aiohttp_server(create_app(elsewhere))
    status, text = await scrape_text(server)
    assert status == 404 and "chat_" not in text
    # and switched off, for everyone
    off = dataclasses.replace(config, metrics=Metrics(enabled=False))
    server = await aiohttp_server(create_app(off))
    assert (await scrape_text(server))[0] == 404


async def test_counters_move_with_messages_acks_errors_sockets_and_logins(
        server: TestServer, as_user: UserFactory, aiohttp_client) -> None:
    a, b = new_phone(), new_phone()
    alice, bob = await as_user(a), await as_user(b)
    before = await scrape(server)

    a_send = await open_personal(alice, a, b)
    b_recv = await open_receive(bob, b)
    b_send = await open_personal(bob, b, a)
    during = await scrape(server)
    assert moved(before, during, "chat_open_sockets", kind="personal") == 2
    assert moved(before, during, "chat_open_sockets", kind="receive") == 1

    sent = await send_new_msg(a_send, a, b, "hello")
    assert (await recv(b_recv))["message"] == "hello"
    await b_send.send_json(frame("msg_received", b, a, sent["sent_timestamp"]))
    await b_send.send_json(frame("msg_received", b, a, sent["sent_timestamp"]))  # nothing left
    assert (await recv(b_send))["command"] == "error"
    await a_send.send_str("not json")
    assert (await recv(a_send))["command"] == "error"
    # a failed login (a wrong password), from a client of its own
    stranger: TestClient = await aiohttp_client(server)
    resp = await stranger.post("/login", data={"phone": a, "password": "not the password"},
                               allow_redirects=False)
    assert resp.status == 401

    after = await scrape(server)
    assert moved(before, after, "chat_messages_accepted_total", kind="personal") == 1
    assert moved(before, after, "chat_acknowledgements_total", kind="personal") == 1
    assert moved(before, after, "chat_error_frames_total", reason="not_found") == 1
    assert moved(before, after, "chat_error_frames_total", reason="invalid") == 1
    assert moved(before, after, "chat_login_failures_total", reason="credentials") == 1
    assert moved(before, after, "chat_group_commit_batch_size_count") >= 2  # message, ack
    assert moved(before, after, "chat_group_commit_seconds_count") >= 2

    for ws in (a_send, b_recv, b_send):
        await ws.close()
    # The handlers leave their blocks just after the close handshake: no event tells a client
    # when, so the gauge is polled (bounded).
    async with asyncio.timeout(TIMEOUT):
        while True:
            closed = await scrape(server)
            if (moved(before, closed, "chat_open_sockets", kind="personal"),
                    moved(before, closed, "chat_open_sockets", kind="receive")) == (0, 0):
                break
            await asyncio.sleep(POLL)


async def test_logins_and_registrations_are_counted(server: TestServer, aiohttp_client) -> None:
    before = await scrape(server)
    phone = new_phone()
    client: TestClient = await aiohttp_client(server)
    resp = await client.post("/register", data={"phone": phone, "name": "x",
                                                "password": "correct horse"},
                             allow_redirects=False)
    assert resp.status == 302
    resp = await client.post("/login", data={"phone": phone, "password": "correct horse"},
                             allow_redirects=False)
    assert resp.status == 302
    after = await scrape(server)
    assert moved(before, after, "chat_registrations_total") == 1
    assert moved(before, after, "chat_logins_total") == 1


async def test_store_figures_and_no_phone_anywhere(aiohttp_server, config: Config,
                                                  aiohttp_client) -> None:
    """A fresh app (its store figures are read at its first scrape): the stored message is
    counted, and nothing of a user (a phone, a name, a message) is in the scrape."""
    server = await aiohttp_server(create_app(config))
    a, b = new_phone(), new_phone()
    clients = []
    for phone in (a, b):
        client: TestClient = await aiohttp_client(server)
        resp = await client.post("/register", data={"phone": phone, "name": f"name-{phone}",
                                                    "password": "correct horse"},
                                 allow_redirects=False)
        assert resp.status == 302
        clients.append(client)
    a_send = await open_personal(clients[0], a, b)
    await send_new_msg(a_send, a, b, "a body that waits")
    status, text = await scrape_text(server)
    assert status == 200
    samples = parse(text)
    assert value(samples, "chat_stored_messages") == 1
    assert value(samples, "chat_users") == 2
    assert "chat_attachment_bytes" in text
    for secret in (a, b, f"name-{a}", "a body that waits"):
        assert secret not in text
    # No label value anywhere looks like a phone (SPEC 1: 10 to 15 digits).
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for label in sample.labels.values():
                assert not re.fullmatch(r"[0-9]{10,15}", label), (sample.name, label)
    await a_send.close()
