"""`serve --workers N`: start N server processes on one port (SO_REUSEPORT), pass SIGTERM and
SIGINT on to them, and stop them all when one dies; give them one folder for their metrics
(prometheus-client's multiprocess mode, SPEC 11: any worker's /metrics answers all of them)."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from multiprocessing import connection as mp_connection
from pathlib import Path

from prometheus_client import multiprocess

from .config import Config
from .logs import configure_logging
from .metrics import MULTIPROC_ENV

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
    with metrics_folder() as folder:
        return _supervise(serve, config, workers, folder)


@contextlib.contextmanager
def metrics_folder() -> Iterator[Path]:
    """The workers' metrics folder, in MULTIPROC_ENV for the workers to inherit (prometheus-
    client reads it when a worker imports it): the operator's when MULTIPROC_ENV is set (emptied
    of what an earlier run left, whose figures would be added to this run's), else a fresh
    private one (mode 0700) removed at the end."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        folder = Path(given)
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.db"):
            old.unlink()
        yield folder
        return
    folder = Path(tempfile.mkdtemp(prefix="chat-metrics-"))
    os.environ[MULTIPROC_ENV] = str(folder)
    try:
        yield folder
    finally:
        del os.environ[MULTIPROC_ENV]
        shutil.rmtree(folder, ignore_errors=True)


def _supervise(serve: Serve, config: Config, workers: int, folder: Path) -> int:
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
            if proc.pid is not None:  # its open sockets no longer count (livesum gauges)
                multiprocess.mark_process_dead(proc.pid, str(folder))
            if not stopping:
                log.error("%s exited with status %s: stopping the others", proc.name, proc.exitcode)
                stop(signal.SIGTERM, None)
    # A worker killed by signal N has exitcode -N: reported as 128 + N, as a shell would.
    codes = [128 - code if code < 0 else code for code in (proc.exitcode or 0 for proc in procs)]
    return max(codes)


def _worker(serve: Serve, config: Config) -> None:
    configure_logging(config.server.log_format)
    sys.exit(serve(config))
