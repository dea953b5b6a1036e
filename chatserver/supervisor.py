"""`serve --workers N`: start N server processes on one port (SO_REUSEPORT), pass SIGTERM and
SIGINT on to them, and stop them all when one dies."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from multiprocessing import connection as mp_connection

from .config import Config

log = logging.getLogger(__name__)

# What a worker runs: serve `config` on its port shared with the other workers; returns the
# process's exit status. Must be picklable (a module-level function): workers are spawned.
Serve = Callable[[Config], int]


def supervise(serve: Serve, config: Config, workers: int) -> int:
    """Start `workers` processes each running `serve(config)` (the kernel spreads connections
    over them, SO_REUSEPORT) and wait. SIGTERM or SIGINT is passed on to every worker; when one
    worker exits, the others are stopped too, and the worst exit status is returned (a process
    manager such as systemd restarts the whole). A worker killed by signal N counts as 128 + N,
    as a shell reports it."""
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no state shared by fork
    procs = [ctx.Process(target=_worker, args=(serve, config), name=f"worker-{i}")
             for i in range(workers)]
    for proc in procs:
        proc.start()
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    waiting = list(procs)
    while waiting:
        ready = mp_connection.wait([proc.sentinel for proc in waiting])
        for proc in [proc for proc in waiting if proc.sentinel in ready]:
            waiting.remove(proc)
            proc.join()
            if not stopping:
                log.error("%s exited with status %s: stopping the others", proc.name, proc.exitcode)
                stop(signal.SIGTERM, None)
    # A worker killed by signal N has exitcode -N: reported as 128 + N, as a shell would.
    codes = [128 - code if code < 0 else code for code in (proc.exitcode or 0 for proc in procs)]
    return max(codes)


def _worker(serve: Serve, config: Config) -> None:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s")
    sys.exit(serve(config))
