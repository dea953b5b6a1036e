#!/usr/bin/env python3
"""The project's benchmark: real `run.py serve` subprocesses, real sockets, numbers with units.

    .venv/bin/python bench/bench.py [--quick] [--cases full,normal,devices,group,fanout,idle]
                                    [--pairs 50 --messages 200 --window 10]
                                    [--idle 5000] [--group 100] [--json out.json]
    .venv/bin/python bench/bench.py --cases attachments [--attachment-mib 25] [--photos 100]
    .venv/bin/python bench/bench.py --cases push [--push-devices 50] [--push-messages 1000]

The entry point: the command line, the plan of runs, the exit status. The cases, what they measure
and how, and the modules beside this one: bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # chatserver, imported by the modules below
# The one server-process harness (`helpers.server`, tests/helpers/server.py) for deployment.py.
# It stays in the tests' helpers package, where STYLE.md puts it and where every test imports it
# from, and bench borrows it: moving it to a top-level package would change every test's import
# for one more user. Appended, so that the modules beside this one still win on a bare name.
sys.path.append(str(REPO / "tests"))

from chatserver import config as chat_config  # noqa: E402

from attachments import case_attachments  # noqa: E402
from deployment import Deployment  # noqa: E402
from devices import case_devices  # noqa: E402
from group import case_group  # noqa: E402
from idle import case_idle  # noqa: E402
from measure import load_average  # noqa: E402
from personal import case_personal  # noqa: E402
from report import machine_info, merge, problems, report  # noqa: E402
from scrape import case_scrape  # noqa: E402
from stage import Lab  # noqa: E402
from webpush import case_push  # noqa: E402

Case = Callable[[str], Awaitable[dict[str, Any]]]
# The cases of the default run, in its order (bench/README.md "Cases").
CASES = ("full", "normal", "devices", "group", "fanout", "idle")
# Cases run only when named in --cases (each takes a minute or more).
EXTRA_CASES = ("attachments", "push", "scrape")


def raise_fd_limit() -> int:
    """Raise the open-file limit to the hard limit (each socket is a file)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


async def run_case(lab: Lab, name: str, case: Case) -> dict[str, Any]:
    """One run of a case on its own server; the server's log and exit status join the checks."""
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    result = await case(name)
    note = lab.notes.get(name, {})
    errors = list(note.get("errors", []))
    if note.get("exit_code") not in (0, None):
        errors.append(f"server exit status {note.get('exit_code')}")
    result["checks"]["server_errors"] = len(errors)
    result["server_errors_logged"] = errors[:20]
    result["server_warnings"] = note.get("warnings", 0)
    if "engines" in note:
        result["engines"] = note["engines"]
    bad = {k: v for k, v in result["checks"].items() if v}
    print(f"[bench] {name} done in {time.perf_counter() - t0:.1f} s"
          + (f"; FAILED checks {bad}" if bad else ""), file=sys.stderr, flush=True)
    return result


def plan(lab: Lab, args: argparse.Namespace) -> list[tuple[str, str, Case]]:
    """The runs to make, in order: (case key, run name, the run)."""
    runs: list[tuple[str, str, Case]] = []
    # FULL, NORMAL and two devices alternate: all see the same noise, so their ratios hold
    for i in range(1, args.repeat + 1):
        if "full" in args.cases:
            runs.append(("full", f"personal-full-{i}",
                         lambda n: case_personal(lab, n, "FULL", args,
                                                 metrics=args.metrics != "off")))
            if args.metrics == "both":  # the same run on a server that counts nothing
                runs.append(("full_nometrics", f"personal-full-nometrics-{i}",
                             lambda n: case_personal(lab, n, "FULL", args, metrics=False)))
        if "normal" in args.cases:
            runs.append(("normal", f"personal-normal-{i}",
                         lambda n: case_personal(lab, n, "NORMAL", args)))
        if "devices" in args.cases:
            runs.append(("devices", f"devices-full-{i}", lambda n: case_devices(lab, n, args)))
    if "group" in args.cases and args.group >= 2:
        runs += [("group", f"group-{i}", lambda n: case_group(lab, n, args))
                 for i in range(1, args.repeat + 1)]
    if "fanout" in args.cases and args.group >= 2:
        runs += [("fanout", f"fanout-{i}", lambda n: case_group(lab, n, args, ack=False))
                 for i in range(1, args.repeat + 1)]
    if "idle" in args.cases and args.idle > 0:
        runs.append(("idle", "idle", lambda n: case_idle(lab, n, args)))
    if "attachments" in args.cases:
        runs.append(("attachments", "attachments", lambda n: case_attachments(lab, n, args)))
    if "push" in args.cases:
        runs.append(("push", "push", lambda n: case_push(lab, n, args)))
    if "scrape" in args.cases:
        runs.append(("scrape", "scrape", lambda n: case_scrape(lab, n, args)))
    return runs


async def main_async(args: argparse.Namespace) -> int:
    """Make every run, print the report, write the JSON; the exit status (see bench/README.md)."""
    runs: dict[str, list[dict[str, Any]]] = {}
    failed: list[str] = []
    with contextlib.ExitStack() as stack:
        if args.keep:
            workdir = Path(tempfile.mkdtemp(prefix="chatbench-"))
            print(f"[bench] servers' databases, configs and logs kept in {workdir}",
                  file=sys.stderr, flush=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chatbench-")))
        lab = Lab(workdir, args.deployment)
        for key, name, case in plan(lab, args):
            try:
                result = await run_case(lab, name, case)
            except Exception as e:  # noqa: BLE001 - report it and go on with the other cases
                failed.append(f"{name}: {type(e).__name__}: {e}")
                print(f"[bench] {name} could not run: {e}", file=sys.stderr, flush=True)
                continue
            runs.setdefault(key, []).append(result)
    results = {}
    for key, rs in runs.items():
        results[key] = merge(rs)
        results[key]["runs"] = rs

    info = machine_info()
    print(report(args, info, runs, results, failed))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"machine": info, "load_at_start": args.load_at_start,
             "args": {k: v for k, v in vars(args).items() if k != "argv"},
             "results": results, "could_not_run": failed}, indent=2, default=str))
    sys.stdout.flush()
    if failed:
        return 2
    return 1 if problems(results) else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with the --quick or full sizes filled in and `deployment` added; exits
    with status 2 and a usage line on a bad combination."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="a smoke run (~20 s): 10 pairs x 50 msgs, group of 20 x 30 msgs, 300 idle "
                        "sockets; explicit flags still win")
    p.add_argument("--pairs", type=int, help="sender/receiver pairs (default 50)")
    p.add_argument("--messages", type=int, help="messages per sender (default 200)")
    p.add_argument("--window", type=int, help="messages a sender may have without msg_sent (default 10)")
    p.add_argument("--idle", type=int, help="idle receive sockets to open (default 5000; 0: skip)")
    p.add_argument("--idle-users", type=int, default=None,
                   help="users owning the idle sockets, socket i belongs to user i mod U "
                        "(default: min(K, 1000))")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds between opening the idle sockets and reading RSS (default 2)")
    p.add_argument("--group", type=int, help="group members incl. the sender (default 100; <2: skip)")
    p.add_argument("--group-messages", type=int, help="group messages sent (default 200)")
    p.add_argument("--cases", default=",".join(CASES),
                   help=f"which cases to run, comma-separated (default {','.join(CASES)}: "
                        "personal with synchronous=FULL, the same with NORMAL, personal FULL with "
                        "two devices per user, group with acknowledgements, group send-only, idle; "
                        "also: attachments, a 25 MiB file and 100 photos uploaded and downloaded, "
                        "~1 min; push, commit -> Web Push latency to a local push service)")
    p.add_argument("--attachment-mib", type=float,
                   help="attachments: the size of the big file in MiB (default 25, the default "
                        "limits.max_attachment_bytes)")
    p.add_argument("--photos", type=int,
                   help="attachments: photos of ~3 MiB uploaded and downloaded (default 100, "
                        "--quick 10; 0: none)")
    p.add_argument("--push-devices", type=int,
                   help="push: offline devices (one per recipient) with a push subscription "
                        "(default 50, --quick 10)")
    p.add_argument("--push-messages", type=int,
                   help="push: messages sent to them in turn, each pushed once (default 1000, "
                        "--quick 200)")
    p.add_argument("--metrics", choices=("on", "off", "both"), default="on",
                   help="personal FULL runs on servers with metrics on (the default config, "
                        "/metrics scraped every --scrape-every s during the measured phase), off "
                        "([metrics] enabled = false: nothing counted), or both, alternating "
                        "(SPEC 11: the CPU per message of each and their ratio)")
    p.add_argument("--scrape-every", type=float, default=1.0,
                   help="seconds between two scrapes of /metrics during a measured phase with "
                        "metrics on (default 1; 0: no scrapes)")
    p.add_argument("--scrape-sockets", type=int, default=10_000,
                   help="scrape case: receive sockets held open while /metrics is scraped "
                        "(default 10000)")
    p.add_argument("--scrapes", type=int, default=50,
                   help="scrape case: scrapes measured (default 50)")
    p.add_argument("--repeat", type=int,
                   help="runs of the personal, devices and group cases, each on a fresh server; figures are "
                        "medians (default 3, --quick 1)")
    p.add_argument("--stall-timeout", type=float, default=15.0,
                   help="give up a run after this many seconds without progress (default 15)")
    p.add_argument("--drain-timeout", type=float, default=5.0,
                   help="seconds to wait for fetch_msgs to come back empty after a run (default 5)")
    p.add_argument("--database-url", default="",
                   help="scaled mode: run every server on this PostgreSQL server "
                        "(postgresql://user@host:port/db), each run in a fresh schema dropped after")
    p.add_argument("--hub-url", default="",
                   help="scaled mode: run every server with the Redis hub at this URL "
                        "(redis://host:port/db), each run with a fresh key prefix deleted after")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes on one port (`run.py serve --workers N`, default 1); "
                        "more than 1 needs --database-url and --hub-url")
    p.add_argument("--json", help="also write every figure and count to this JSON file")
    p.add_argument("--keep", action="store_true",
                   help="keep each server's database, config and log (printed path) instead of "
                        "deleting them")
    args = p.parse_args(argv)
    quick = {"pairs": 10, "messages": 50, "window": 10, "idle": 300, "group": 20,
             "group_messages": 30, "repeat": 1, "attachment_mib": 25.0, "photos": 10,
             "push_devices": 10, "push_messages": 200}
    full = {"pairs": 50, "messages": 200, "window": 10, "idle": 5000, "group": 100,
            "group_messages": 200, "repeat": 3, "attachment_mib": 25.0, "photos": 100,
            "push_devices": 50, "push_messages": 1000}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.idle_users is None:
        args.idle_users = min(args.idle, 1000)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.cases = {c.strip() for c in args.cases.split(",") if c.strip()}
    if not args.cases or args.cases - set(CASES + EXTRA_CASES):
        p.error(f"--cases takes some of {','.join(CASES + EXTRA_CASES)}")
    if args.photos < 0 or not 0 < args.attachment_mib:
        p.error("--photos must be at least 0 and --attachment-mib more than 0")
    for key in ("pairs", "messages", "window", "group_messages", "repeat", "push_devices",
                "push_messages"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be at least 1")
    if args.idle_users < 1 and args.idle > 0:
        p.error("--idle-users must be at least 1")
    if args.workers < 1:
        p.error("--workers must be at least 1")
    if args.workers > 1 and not (args.database_url and args.hub_url):
        p.error("--workers > 1 needs --database-url and --hub-url (PostgreSQL and Redis)")
    if args.database_url and not args.database_url.startswith(chat_config.POSTGRES_SCHEMES):
        p.error("--database-url must start with postgresql://")
    if args.hub_url and not args.hub_url.startswith(chat_config.REDIS_SCHEMES):
        p.error("--hub-url must start with redis://, rediss:// or unix://")
    args.deployment = Deployment(args.database_url, args.hub_url, args.workers)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 all checks passed, 1 a check failed, 2 a case could not run."""
    args = parse_args(argv)
    args.load_at_start = load_average()
    limit = raise_fd_limit()
    need = max(args.idle if "idle" in args.cases else 0,
               (8 if "devices" in args.cases else 4) * args.pairs, 2 * args.group,
               args.scrape_sockets if "scrape" in args.cases else 0) + 100
    if need > limit:
        print(f"error: {need} sockets need more open files than the limit {limit} "
              "(raise the hard limit: ulimit -Hn)", file=sys.stderr)
        return 2
    return uvloop.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
