"""A TCP forwarder on 127.0.0.1 in front of a real service (PostgreSQL, Redis) that a test can
cut (the service becomes unreachable: the listener closes and every connection through it is
dropped) and restore on the same port: an outage without stopping the shared service."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from helpers.server import HOST, free_port


class Forwarder:
    """Forwards connections to `HOST:port` on to `target_host:target_port`, byte for byte."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen (again) on `port`."""
        self._server = await asyncio.start_server(self._serve, HOST, self.port, reuse_address=True)

    async def cut(self) -> None:
        """Stop listening and drop every connection (no FIN-wait niceties: an outage)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        pipes = [asyncio.ensure_future(self._pipe(reader, up_writer)),
                 asyncio.ensure_future(self._pipe(up_reader, writer))]
        self._tasks.update(pipes)
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
                self._tasks.discard(task)
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()


@contextlib.asynccontextmanager
async def forwarding(target_host: str, target_port: int) -> AsyncIterator[Forwarder]:
    """A started Forwarder, cut at the end."""
    forwarder = Forwarder(target_host, target_port)
    await forwarder.start()
    try:
        yield forwarder
    finally:
        await forwarder.cut()
