"""The benchmark still runs against the real server and finds nothing lost (bench/bench.py).

Tiny sizes, and no timing assertion: performance is measured by `make bench`, not by a test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_bench_quick_run_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "bench/bench.py", "--quick", "--pairs", "3", "--messages", "20",
         "--group", "5", "--group-messages", "10", "--idle", "40", "--settle", "0.2",
         "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=50)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"full", "normal", "group", "fanout", "idle"}
    for name, result in results.items():
        assert set(result["checks"].values()) == {0}, (name, result["checks"])
    assert results["full"]["delivered"] == 3 * 20
    assert results["group"]["pushes"] == 4 * 10
    assert results["fanout"]["pushes"] == 4 * 10
    assert results["idle"]["answered_fetch"] == 40
