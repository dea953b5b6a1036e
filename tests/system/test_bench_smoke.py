"""The benchmark still runs against the real server and finds nothing lost (bench/bench.py), also
in its scaled mode (`--workers 2` on PostgreSQL and Redis) when those are configured for the tests.

Tiny sizes, and no timing assertion: performance is measured by `make bench`, not by a test.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import backends
from helpers.server import REPO


def test_bench_quick_run_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "bench/bench.py", "--quick", "--pairs", "3", "--messages", "20",
         "--group", "5", "--group-messages", "10", "--idle", "40", "--settle", "0.2",
         "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=50)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"full", "normal", "devices", "group", "fanout", "idle"}
    for name, result in results.items():
        assert set(result["checks"].values()) == {0}, (name, result["checks"])
    assert results["full"]["delivered"] == 3 * 20
    # two devices per user (SPEC 7): each message on both of the receiver's devices, its receipt
    # on both of the sender's, and a copy on the sender's other device
    devices = results["devices"]
    assert (devices["delivered"], devices["copies"]) == (3 * 20, 3 * 20)
    assert (devices["pushes"], devices["receipts"]) == (2 * 3 * 20, 2 * 3 * 20)
    assert results["group"]["pushes"] == 4 * 10
    assert results["fanout"]["pushes"] == 4 * 10
    assert results["idle"]["answered_fetch"] == 40


@pytest.mark.skipif(not (backends.POSTGRES_URL and backends.REDIS_URL),
                    reason=f"{backends.POSTGRES_ENV} and {backends.REDIS_ENV} must both be set "
                           "for the benchmark's scaled mode")
def test_bench_scaled_mode_loses_nothing_and_measures_the_engines(tmp_path: Path) -> None:
    """`--workers 2` on PostgreSQL and Redis: the engines' CPU is reported, and the run's schema
    and key prefix are gone afterwards."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "bench/bench.py", "--quick", "--cases", "full", "--pairs", "3",
         "--messages", "20", "--database-url", backends.POSTGRES_URL,
         "--hub-url", backends.REDIS_URL, "--workers", "2", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=50)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "total CPU (server + PostgreSQL + Redis)" in proc.stdout, proc.stdout
    [run] = json.loads(out.read_text())["results"]["full"]["runs"]
    assert set(run["checks"].values()) == {0}, run["checks"]
    assert run["delivered"] == 3 * 20
    measured = run["measured"]
    assert measured["postgres_cpu_s"] > 0, measured  # the store's commits ran in PostgreSQL
    assert measured["total_cpu_s"] == pytest.approx(
        measured["server_cpu_s"] + measured["postgres_cpu_s"] + measured["redis_cpu_s"])
    assert "Scaled mode: 2 worker processes" in proc.stdout, proc.stdout
    assert asyncio.run(left_behind(run["engines"]["schema"], run["engines"]["prefix"])) == (0, 0)


async def left_behind(schema: str, prefix: str) -> tuple[int, int]:
    """How many schemas named `schema` and Redis keys starting with `prefix` exist."""
    import asyncpg
    import redis.asyncio as redis

    conn = await asyncpg.connect(backends.POSTGRES_URL)
    try:
        schemas = await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema)
    finally:
        await conn.close()
    client = redis.Redis.from_url(backends.REDIS_URL)
    try:
        keys = len([k async for k in client.scan_iter(match=f"{prefix}*")])
    finally:
        await client.aclose()
    return schemas, keys


@pytest.mark.backends(backends.LOCAL, backends.POSTGRES)
def test_bench_attachments_case_gets_back_what_it_sent(tmp_path: Path,
                                                       backend: backends.Backend) -> None:
    """`--cases attachments`, tiny (a 2 MiB file, 2 photos): every download is the bytes uploaded
    (sha256), the photos come back re-encoded without EXIF, every attachment is gone after the
    acknowledgements, and the RSS figures were sampled. PostgreSQL through `--database-url` (the
    bench makes and drops a schema of its own)."""
    out = tmp_path / "bench.json"
    engine = ["--database-url", backends.POSTGRES_URL] if backend.name == backends.POSTGRES else []
    proc = subprocess.run(
        [sys.executable, "bench/bench.py", "--cases", "attachments", "--attachment-mib", "2",
         "--photos", "2", "--drain-timeout", "10", *engine, "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "8. attachments" in proc.stdout, proc.stdout
    [run] = json.loads(out.read_text())["results"]["attachments"]["runs"]
    assert set(run["checks"].values()) == {0}, (run["checks"], run["failures"])
    assert (run["file_bytes"], run["photos"]) == (2 * 2**20, 2)
    # the big file's message and one message carrying both photos, all acknowledged and deleted
    assert run["acks"]["messages"] == 2
    assert run["acks"]["bytes"] == 2 * 2**20 + 2 * run["photo_upload"]["stored_bytes_mean"]
    assert run["attachments_still_served"] == 0
    for phase in ("upload", "download", "downloads_at_once", "photo_upload"):
        assert run[phase]["rss"]["samples"] >= 2, (phase, run[phase]["rss"])
    assert run["downloads_at_once"]["mib_per_s"] > 0


def test_bench_push_case_pushes_each_message_once(tmp_path: Path) -> None:
    """`--cases push` (SPEC 9): every message pushed exactly once to the local push service,
    decrypted and matched to its message, and its latency figures reported."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "bench/bench.py", "--quick", "--cases", "push", "--push-devices", "20",
         "--push-messages", "40", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=50)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "commit (msg_sent at the sender) -> push request" in proc.stdout, proc.stdout
    [run] = json.loads(out.read_text())["results"]["push"]["runs"]
    assert set(run["checks"].values()) == {0}, run["checks"]
    # messages of one conversation in one batch of the sender are pushed once, for the newest
    assert run["sent"] == run["pushed"] + run["collapsed"] == 40
    assert run["pushed"] >= 20  # at least the newest to each of the devices
    assert run["commit_push_ms"]["p99"] is not None
