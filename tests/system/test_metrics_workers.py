"""GET /metrics with `serve --workers 2` (SPEC 11: "with --workers N, the figures of every
worker"): whichever worker answers a scrape, it answers the sum of both (prometheus-client's
multiprocess mode, in a private folder the supervisor makes and removes), and the process figures
of each worker, labelled by pid.

Real processes on PostgreSQL and Redis (skipped without CHAT_TEST_POSTGRES_URL and
CHAT_TEST_REDIS_URL); every process is killed at the end.
"""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import backends
from helpers.accounts import client, register, ws_open
from helpers.configs import scaled_config_tables
from helpers.frames import frame, new_phone
from helpers.procs import serving_process
from helpers.server import ServerProcess, start_server, write_config
from helpers.ws import recv

pytestmark = pytest.mark.skipif(
    not (backends.POSTGRES_URL and backends.REDIS_URL),
    reason=f"{backends.POSTGRES_ENV} and {backends.REDIS_ENV} must both be set: --workers needs "
           "PostgreSQL and Redis")

# Receive sockets opened: the kernel spreads connections over the workers by a hash of the
# client's port, so all land on one worker with probability 2**-SOCKETS.
SOCKETS = 16
# Scrapes, each on a new connection (so each may reach either worker).
SCRAPES = 16


@pytest.fixture
async def workers_server(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    async with backends.postgres_schema() as database_url, backends.redis_prefix() as prefix:
        config = write_config(tmp_path / "scaled.toml", scaled_config_tables(database_url, prefix))
        server = start_server(tmp_path / "unused.db", config, tmp_path,
                              extra_args=("--workers", "2"), group=True)
        try:
            yield server
        finally:
            server.kill()


def multiproc_dir(pid: int) -> Path:
    """PROMETHEUS_MULTIPROC_DIR in the environment of process `pid`."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    for entry in environ:
        if entry.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
            return Path(entry.split(b"=", 1)[1].decode())
    raise AssertionError(f"process {pid} has no PROMETHEUS_MULTIPROC_DIR")


async def test_any_worker_answers_the_figures_of_both(workers_server: ServerProcess) -> None:
    server = workers_server
    await server.wait_serving(processes=2)
    workers = server.serving_pids()
    assert len(set(workers)) == 2, server.output()
    folder = multiproc_dir(workers[0])
    assert multiproc_dir(workers[1]) == folder
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700  # private: mkdtemp's

    a, b = new_phone(), new_phone()
    async with client() as alice, client() as bob:
        await register(alice, server, a)
        await register(bob, server, b)
        receivers = [await ws_open(bob, server.ws_url(f"/ws/chat/special/{b}/"))
                     for _ in range(SOCKETS)]
        for ws in receivers:  # each one served (a fetch answered) before it is counted
            await ws.send_json({"command": "fetch_msgs", "msg_to": b})
            assert (await recv(ws))["all"] == "True"
        served = {serving_process(ws, server.port, workers) for ws in receivers}
        assert served == set(workers), served  # the sockets are on both workers
        a_send = await ws_open(alice, server.ws_url(f"/ws/chat/personal/{a}/{b}/"))
        await a_send.send_json(frame("new_msg", a, b, "counted once"))
        assert (await recv(a_send))["command"] == "msg_sent"

        for _ in range(SCRAPES):
            async with aiohttp.ClientSession() as session, \
                    session.get(server.url("/metrics")) as resp:
                assert resp.status == 200
                text = await resp.text()
            assert "counted once" not in text and a not in text and b not in text
            samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                       for family in text_string_to_metric_families(text)
                       for s in family.samples}
            # Both workers' sockets, whichever answers (livesum over live workers).
            assert samples[("chat_open_sockets", (("kind", "receive"),))] == SOCKETS
            assert samples[("chat_open_sockets", (("kind", "personal"),))] == 1
            assert samples[("chat_messages_accepted_total", (("kind", "personal"),))] == 1
            # Each worker's process figures, by pid.
            cpu = {dict(labels)["pid"] for (name, labels) in samples
                   if name == "process_cpu_seconds_total"}
            assert cpu == {str(pid) for pid in workers}, cpu
        for ws in [*receivers, a_send]:
            await ws.close()

    assert await server.stop() == 0, server.output()
    assert not folder.exists()  # removed with the supervisor
    assert os.environ.get("PROMETHEUS_MULTIPROC_DIR") is None
