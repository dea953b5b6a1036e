"""`GET /metrics` (SPEC 11): who may read it, and what it answers: the metric objects of
chatserver/metrics.py (this process's, or with `serve --workers N` every worker's, added up from
prometheus-client's multiprocess folder), the process's own figures, and the store's figures read
at scrape time (cached a few seconds)."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from .config import Metrics as MetricsSettings
from .metrics import MULTIPROC_ENV
from .remote import client_address
from .stores.base import Store, StoreError

METRICS_PATH: Final = "/metrics"
# Seconds the figures read from the store (stored messages, attachment bytes, ...) are reused:
# scrapes cost at most one read of them per STORE_FIGURES_SECONDS, however frequent.
STORE_FIGURES_SECONDS: Final = 5.0
# A scrape waits at most this long for the store's figures; past it, they are left out.
STORE_FIGURES_TIMEOUT: Final = 2.0


@dataclass(slots=True)
class _Figures:
    users: int
    devices: int
    stored_messages: int
    database_bytes: int
    attachment_bytes: int


class StoreCollector(Collector):
    """The store's figures as gauges (`chat_stored_messages`, `chat_attachment_bytes`, ...), read
    by `refresh()` at most once per STORE_FIGURES_SECONDS (a scrape is cheap, and answers the
    figures of the last read); `collect()` only renders them (it is synchronous)."""

    def __init__(self, store: Store, session_seconds: int) -> None:
        self._store = store
        self._session_seconds = session_seconds
        self._figures: _Figures | None = None
        self._read_at = float("-inf")
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        """Read the figures again when the last read is older than STORE_FIGURES_SECONDS; a store
        that fails or does not answer in time leaves the figures out until it does."""
        async with self._lock:
            if time.monotonic() - self._read_at < STORE_FIGURES_SECONDS:
                return
            try:
                async with asyncio.timeout(STORE_FIGURES_TIMEOUT):
                    stats = await self._store.stats(self._session_seconds)
                    attachment_bytes = await self._store.attachment_bytes()
            except (StoreError, OSError, TimeoutError):
                self._figures = None  # /healthz says why
            else:
                self._figures = _Figures(stats.users, stats.devices, stats.stored_messages,
                                         stats.database_bytes, attachment_bytes)
            self._read_at = time.monotonic()

    def collect(self) -> Iterator[Metric]:
        figures = self._figures
        if figures is None:
            return
        for name, doc, value in (
            ("chat_stored_messages", "Personal and group messages stored (each group message "
             "once), waiting for an acknowledgement.", figures.stored_messages),
            ("chat_attachment_bytes", "Bytes of stored attachments, thumbnails included.",
             figures.attachment_bytes),
            ("chat_users", "Accounts.", figures.users),
            ("chat_devices", "Devices (login sessions and tokens) used within "
             "security.session_seconds.", figures.devices),
            ("chat_database_bytes", "The database's size in bytes.", figures.database_bytes),
        ):
            yield GaugeMetricFamily(name, doc, value=value)


_DB_FILE_PID: Final = re.compile(r"gauge_livesum_([0-9]+)\.db")


class WorkersProcessCollector(Collector):
    """With `--workers N`, the process figures (`process_cpu_seconds_total`,
    `process_resident_memory_bytes`, ...) of every live worker, labelled `pid`: prometheus-client's
    own ProcessCollector reads one process only. The live workers are those whose file of live
    gauges is in the multiprocess folder (removed by the supervisor when a worker exits)."""

    def __init__(self, path: str) -> None:
        self._path = Path(path)

    def _pids(self) -> list[int]:
        return sorted(int(m[1]) for f in self._path.iterdir()
                      if (m := _DB_FILE_PID.fullmatch(f.name)))

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for pid in self._pids():
            reader = ProcessCollector(pid=lambda pid=pid: pid, registry=None)  # type: ignore[misc]
            for family in reader.collect():
                out = merged.get(family.name)
                if out is None:
                    out = merged[family.name] = Metric(family.name, family.documentation,
                                                       family.type)
                for sample in family.samples:
                    out.add_sample(sample.name, {**sample.labels, "pid": str(pid)}, sample.value)
        yield from merged.values()


class _Answer(Collector):
    """What one scrape answers: this process's metrics (or every worker's), and the store's."""

    def __init__(self, parts: Iterable[Collector]) -> None:
        self._parts = tuple(parts)

    def collect(self) -> Iterator[Metric]:
        for part in self._parts:
            yield from part.collect()


class Exporter:
    """One app's /metrics (SPEC 11): who may read it (`[metrics]`) and what it answers. Built
    with the app; `attach(store)` once the store is open; `handle` is the handler.

    In multiprocess mode (MULTIPROC_ENV set, `serve --workers N`) it answers the figures of every
    worker, else this process's (with prometheus-client's process, platform and
    garbage-collector collectors of its default registry), and the store's in both.
    """

    def __init__(self, settings: MetricsSettings, session_seconds: int) -> None:
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in settings.allow)
        self.enabled = settings.enabled
        self._session_seconds = session_seconds
        self._figures: StoreCollector | None = None
        path = os.environ.get(MULTIPROC_ENV)
        self._process: list[Collector]
        if path:
            workers = CollectorRegistry()
            MultiProcessCollector(workers, path=path)
            self._process = [workers, WorkersProcessCollector(path)]
        else:
            self._process = [REGISTRY]
        self._registry = CollectorRegistry(auto_describe=False)

    def attach(self, store: Store) -> None:
        """Read the store's figures from `store` (open) from now on."""
        self._figures = StoreCollector(store, self._session_seconds)
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Answer([*self._process, self._figures]))

    def allows(self, remote: str | None) -> bool:
        """True when a client at `remote` (an IP address; None or junk: no) may read /metrics."""
        if not self.enabled or not remote:
            return False
        try:
            address = ipaddress.ip_address(remote)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # ::ffff:127.0.0.1 on a dual-stack socket
        return any(address in network for network in self.networks)

    async def handle(self, request: web.Request) -> web.Response:
        """GET /metrics: the Prometheus text format to an address in `metrics.allow`; 404 to
        anyone else (and to everyone with `metrics.enabled = false`), as if there were no such
        page. The client's address is remote.client_address's (a trusted proxy's forwarded
        one: a client of the proxy is never taken for the proxy's own loopback address)."""
        if not self.allows(client_address(request)):
            raise web.HTTPNotFound()
        if self._figures is not None:
            await self._figures.refresh()
        return web.Response(body=generate_latest(self._registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})
