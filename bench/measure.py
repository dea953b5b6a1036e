"""What the machine spent over a measured phase, read from /proc (proc(5)): the server's whole process
tree (CPU, RSS), the PostgreSQL and Redis server processes, this client, and everything else.
"""

from __future__ import annotations

import contextlib
import os
import resource
import threading
import time
from dataclasses import dataclass, field

CLK_TCK = os.sysconf("SC_CLK_TCK")

# The engines of the scaled deployment, found by process name (comm); what each one used is
# reported apart from the server's CPU (`--database-url`, `--hub-url`).
ENGINES = {"postgres": "postgres", "redis": "redis-server"}


def proc_mem(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of `pid`, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) * 1024
    return out


@dataclass(frozen=True, slots=True)
class Proc:
    """One line of /proc/PID/stat: enough to find a process tree and to add up CPU."""

    pid: int
    comm: str
    ppid: int
    start: int  # starttime (field 22): with the pid, tells a reused pid apart
    cpu: float  # utime + stime, seconds


def processes() -> dict[int, Proc]:
    """Every process on the machine, from /proc/PID/stat (those that vanish meanwhile skipped)."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                text = fh.read()
        except OSError:
            continue
        head, _, rest = text.rpartition(")")
        fields = rest.split()
        # fields 4, 14 + 15 and 22 of proc(5): the fields after the comm start at field 3
        out[int(name)] = Proc(int(name), head.partition("(")[2], int(fields[1]), int(fields[19]),
                              (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def tree(pid: int, procs: dict[int, Proc]) -> list[Proc]:
    """Process `pid` and all its descendants (a `--workers N` server: the parent and workers)."""
    children: dict[int, list[Proc]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p)
    found, todo = [], [procs[pid]] if pid in procs else []
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p.pid, [])
    return found


# CPU seconds so far per process, keyed by (pid, starttime)
CpuSnapshot = dict[tuple[int, int], float]


def snapshot(procs: list[Proc]) -> CpuSnapshot:
    """The CPU seconds used so far by each of `procs`."""
    return {(p.pid, p.start): p.cpu for p in procs}


def cpu_since(before: CpuSnapshot, after: CpuSnapshot) -> float:
    """CPU seconds used between two snapshots of a set of processes; a process started meanwhile
    counts whole, one that ended meanwhile is not seen after it ended."""
    return sum(cpu - before.get(key, 0.0) for key, cpu in after.items())


def server_cpu(pid: int) -> float:
    """CPU seconds used so far by the server `pid` with all its worker processes."""
    return sum(p.cpu for p in tree(pid, processes()))


def server_mem(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of the server `pid`, summed over it and its worker processes, in bytes."""
    out = {"VmRSS": 0, "VmHWM": 0}
    for p in tree(pid, processes()):
        with contextlib.suppress(OSError):
            for key, value in proc_mem(p.pid).items():
                out[key] += value
    return out


def machine_busy() -> tuple[float, float]:
    """CPU seconds the whole machine has been busy (all cores; idle and iowait excluded, time
    stolen by the hypervisor included), and the part of it spent in interrupts and softirqs
    (which includes the kernel's loopback networking for our own sockets)."""
    with open("/proc/stat") as fh:
        ticks = [int(v) for v in fh.readline().split()[1:]]
    busy = sum(ticks[:8]) - ticks[3] - ticks[4]  # user..steal minus idle, iowait
    return busy / CLK_TCK, (ticks[5] + ticks[6]) / CLK_TCK


def client_cpu() -> float:
    """CPU seconds (user + system) used so far by this process, the benchmark's client."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg writes them ("0.50 0.37 0.18")."""
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


@dataclass
class Meter:
    """Server CPU, client CPU and the rest of the machine's load over one measured phase.

    The server is process `pid` with its worker processes; with `engines`, the CPU of the
    PostgreSQL and Redis server processes is measured too (ENGINES)."""

    pid: int
    engines: bool = False
    t0: float = 0.0
    server0: CpuSnapshot = field(default_factory=dict)
    engines0: dict[str, CpuSnapshot] = field(default_factory=dict)
    client0: float = 0.0
    machine0: float = 0.0
    irq0: float = 0.0
    result: dict[str, float] = field(default_factory=dict)

    def _engines(self, procs: dict[int, Proc]) -> dict[str, CpuSnapshot]:
        if not self.engines:
            return {}
        return {name: snapshot([p for p in procs.values() if p.comm == comm])
                for name, comm in ENGINES.items()}

    def start(self) -> None:
        """Take the snapshots the phase is measured from."""
        procs = processes()
        self.t0 = time.perf_counter()
        self.server0 = snapshot(tree(self.pid, procs))
        self.engines0 = self._engines(procs)
        self.client0 = client_cpu()
        self.machine0, self.irq0 = machine_busy()

    def stop(self) -> dict[str, float]:
        """The phase's figures: `elapsed_s`; `server_cpu_s`, `client_cpu_s` (CPU seconds);
        `server_cores`, `client_cores`, `irq_cores`, `other_cores` (cores busy on average); with
        engines also `postgres_cpu_s`, `postgres_cores`, `redis_cpu_s`, `redis_cores`, `total_cpu_s`."""
        elapsed = time.perf_counter() - self.t0
        procs = processes()
        server = cpu_since(self.server0, snapshot(tree(self.pid, procs)))
        engines = {name: cpu_since(self.engines0[name], after)
                   for name, after in self._engines(procs).items()}
        client = client_cpu() - self.client0
        machine, irq = machine_busy()
        machine, irq = machine - self.machine0, irq - self.irq0
        self.result = {
            "elapsed_s": elapsed,
            "server_cpu_s": server,
            "client_cpu_s": client,
            "server_cores": server / elapsed if elapsed else 0.0,
            "client_cores": client / elapsed if elapsed else 0.0,
            "irq_cores": irq / elapsed if elapsed else 0.0,
            # anything else running on the box meanwhile (should be ~0 for clean numbers)
            "other_cores": max(0.0, machine - irq - server - client - sum(engines.values()))
                           / elapsed if elapsed else 0.0,
        }
        for name, cpu in engines.items():
            self.result[f"{name}_cpu_s"] = cpu
            self.result[f"{name}_cores"] = cpu / elapsed if elapsed else 0.0
        if engines:
            self.result["total_cpu_s"] = server + sum(engines.values())
        return self.result


class RssSampler:
    """VmRSS of the server's process tree (the processes it has when the sampler starts), read
    every `interval` seconds on a thread of its own, so that a busy event loop in the client
    does not space the samples out. Used as a context manager around one phase:

        with RssSampler(pid) as rss:
            ...
        rss.growth  # bytes: the highest sample minus the one taken on entering

    Also kept: RssAnon and RssFile (proc(5)) at the highest sample, which tell memory the server
    allocated from file pages it mapped."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pids = [p.pid for p in tree(pid, processes())]
        self.interval = interval
        self.samples = 0
        self.baseline: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def sample(self) -> dict[str, int]:
        """VmRSS, RssAnon and RssFile summed over the processes, in bytes (one that ended: 0)."""
        out = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
        for pid in self.pids:
            with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    key, _, value = line.partition(":")
                    if key in out:
                        out[key] += int(value.split()[0]) * 1024
        return out

    def _take(self) -> None:
        now = self.sample()
        self.samples += 1
        if now["VmRSS"] > self.peak.get("VmRSS", -1):
            self.peak = now

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._take()

    def __enter__(self) -> RssSampler:
        self.baseline = self.sample()
        self.peak = self.baseline
        self.samples = 1
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._take()  # the phase's last state, whatever the thread's timing

    @property
    def growth(self) -> int:
        """Bytes: the highest VmRSS seen during the phase minus VmRSS on entering it."""
        return self.peak["VmRSS"] - self.baseline["VmRSS"]

    def figures(self) -> dict[str, int]:
        """`growth`, `baseline`, `peak` (VmRSS), `peak_anon`, `peak_file`, `baseline_anon`,
        `baseline_file` in bytes, and `samples`."""
        return {"growth": self.growth, "baseline": self.baseline["VmRSS"],
                "peak": self.peak["VmRSS"], "baseline_anon": self.baseline["RssAnon"],
                "peak_anon": self.peak["RssAnon"], "baseline_file": self.baseline["RssFile"],
                "peak_file": self.peak["RssFile"], "samples": self.samples}
