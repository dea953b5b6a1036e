"""Group commit, written once for every engine: the queue of writes, the writer task that runs
everything queued so far in one transaction, split-on-failure, retry, and the scrub timer.

An engine subclasses `GroupCommitStore` and supplies its driver's hooks (begin / commit / rollback
on its writer connection, reconnecting, which errors are a write's fault and which are worth a
retry, wrapping them into StoreError, one scrub) and its batch runners (`Runners`). Why and how:
docs/storage.md, "Group commit".
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Generic, TypeVar

from ..metrics import COMMIT_BATCH, COMMIT_SECONDS
from ..protocol import now_micros
from .base import Ack, Store, StoreClosed, Stored, StoreError, ref_target

log = logging.getLogger(__name__)

# The writer connection's type, as the engine's driver names it.
DB = TypeVar("DB")
# A batch that lost to another process's transaction (a deadlock, a serialization failure) is
# run again up to this many times in all before its writes fail.
MAX_ATTEMPTS: Final = 5
# A scrub that failed (not merely busy) is tried again after this many seconds.
SCRUB_RETRY_SECONDS: Final = 1.0
# security.session_seconds's default (config.py), for stores opened without a config.
DEFAULT_SESSION_SECONDS: Final = 30 * 24 * 3600


@dataclass(slots=True)
class QueuedWrite:
    run: Callable[[Any, list[Any]], Awaitable[list[Any]]]
    args: Any
    future: asyncio.Future[Any]
    deletes: bool  # leaves freed bodies behind: the store must be scrubbed (SPEC 6)


@dataclass(frozen=True, slots=True)
class Runners(Generic[DB]):
    """An engine's batch runners, one per kind of write: each runs a list of argument lists in
    the open transaction on connection DB and returns one result per list, in one SQL statement
    whatever the list's length (`call_ops` excepted: the rare writes, one small coroutine each).
    A result that is a StoreError (MailboxFull) fails that write alone; the others commit."""

    add_personal: Callable[[DB, list[Any]], Awaitable[list[Any]]]
    ack_personal: Callable[[DB, list[Any]], Awaitable[list[Any]]]
    read_personal: Callable[[DB, list[Any]], Awaitable[list[Any]]]
    add_group: Callable[[DB, list[Any]], Awaitable[list[Any]]]
    ack_group: Callable[[DB, list[Any]], Awaitable[list[Any]]]
    read_group: Callable[[DB, list[Any]], Awaitable[list[Any]]]
    add_room: Callable[[DB, list[Any]], Awaitable[list[Any]]]
    call_ops: Callable[[DB, list[Any]], Awaitable[list[Any]]]


async def call_ops(db: Any, ops: list[Callable[[Any], Awaitable[Any]]]) -> list[Any]:
    """Runner of the rare writes (accounts, sessions, groups): each is its own small coroutine."""
    return [await op(db) for op in ops]


class GroupCommitStore(Store, Generic[DB]):
    """The queue of writes for the next batch (group commit), the writes of SPEC 5 put on it, the
    scrub timer and the blocks mirrored in memory. An engine sets RUNNERS, implements the hooks
    below, calls `_start()` once open and `close()` closes it."""

    RUNNERS: ClassVar[Runners[Any]]

    def __init__(self, scrub_seconds: float, rooms_keep: int, max_waiting: int = 10000,
                 session_seconds: float = DEFAULT_SESSION_SECONDS) -> None:
        self._scrub_seconds = scrub_seconds
        # security.session_seconds: a session unused that long is no device (SPEC 7); new
        # messages do not wait for it.
        self._session_us = round(session_seconds * 1_000_000)
        self._rooms_keep = rooms_keep
        self._max_waiting = max_waiting  # limits.max_waiting_per_recipient (SPEC 10)
        # (blocker, blocked) pairs, mirrored in memory: every new_msg is checked against them.
        # Engines update this set in place, never replace it.
        self._blocks: set[tuple[str, str]] = set()
        self._queue: list[QueuedWrite] = []
        self._wakeup = asyncio.Event()
        self._closing = False
        # Held by the writer around each batch: an engine whose scrub needs the writer connection
        # (SQLite's checkpoint) takes it too, so that it never runs inside a batch's transaction.
        self._writing = asyncio.Lock()
        self._scrub_at: float | None = None  # loop time of the next scrub
        self._scrub_waiters: list[asyncio.Future[None]] = []  # answered after the next scrub
        self._scrub_wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._scrubber: asyncio.Task[None] | None = None

    def _start(self, name: str) -> None:
        """Start the writer and scrubber tasks (once the engine's connections are open)."""
        self._task = asyncio.create_task(self._write_loop(), name=f"{name}-writer")
        self._scrubber = asyncio.create_task(self._scrub_loop(), name=f"{name}-scrubber")

    # -- the engine's hooks -------------------------------------------------------------------

    @abstractmethod
    async def _connection(self) -> DB:
        """The writer connection, made again if it was lost."""

    @abstractmethod
    async def _begin(self, db: DB) -> None:
        """Open the batch's transaction."""

    @abstractmethod
    async def _commit_transaction(self, db: DB) -> None:
        """Commit the batch's transaction."""

    @abstractmethod
    async def _rollback(self, db: DB | None) -> None:
        """Roll back whatever is open on `db` (None: no connection was made); never raises."""

    @abstractmethod
    def _write_fault(self, error: Exception) -> bool:
        """True when a statement's error is the fault of the writes it ran (a constraint, a bad
        value), not of the connection or the transaction: the batch is then split."""

    def _retryable(self, error: Exception) -> bool:
        """True when a failed statement lost to another transaction and the batch, run again as
        it was, may succeed (PostgreSQL: deadlock, serialization failure)."""
        return False

    @abstractmethod
    def _wrap(self, error: BaseException) -> BaseException:
        """What a caller gets for a failed write: StoreError & co as they are, the driver's
        errors wrapped (IntegrityError for a constraint), anything not an Exception as is."""

    @abstractmethod
    async def _scrub_once(self) -> float | None:
        """Scrub now; None when done, or the seconds after which to try again (busy, failed)."""

    @abstractmethod
    async def _close_connections(self) -> None:
        """Close every connection, after the writer and scrubber tasks have ended."""

    # -- submitting writes --------------------------------------------------------------------

    def _submit(self, run: Callable[[Any, list[Any]], Awaitable[list[Any]]], args: Any, *,
                deletes: bool = False) -> asyncio.Future[Any]:
        """Queue one write for the next batch; the future resolves after its COMMIT.

        Raises StoreClosed once `close()` has begun."""
        if self._closing:
            raise StoreClosed("the store is closing")
        future = asyncio.get_running_loop().create_future()
        self._queue.append(QueuedWrite(run, args, future, deletes))
        self._wakeup.set()
        return future

    async def _write(self, op: Callable[[DB], Awaitable[Any]], *, deletes: bool = False) -> Any:
        """Run a rare write (one small coroutine taking the writer connection) in the next batch."""
        return await self._submit(self.RUNNERS.call_ops, op, deletes=deletes)

    def _live_after_us(self) -> int:
        """Cookie sessions last used before this are no devices any more (SPEC 7); tokens are,
        whenever last used (SPEC 12: the queries that take this also take kind 'token')."""
        return now_micros() - self._session_us

    # The per-message rows end with [..., ref, unsent]: the message's SPEC 13 field as JSON text
    # (or None) and, for a delete_of, the sent_us of the original the runner deletes (else None).

    def add_personal(self, msg_from: str, msg_to: str, sent_us: int, sent_timestamp: str,
                     message: str, device: str | None = None, attachments: Sequence[str] = (),
                     *, ref: str | None = None) -> asyncio.Future[Stored | None]:
        unsent = ref_target(ref)
        return self._submit(self.RUNNERS.add_personal,
                            [msg_from, msg_to, sent_us, sent_timestamp, message, self._max_waiting,
                             device, self._live_after_us(), list(attachments), ref, unsent],
                            deletes=unsent is not None)

    def ack_personal(self, msg_from: str, msg_to: str, sent_us: int, received_at: str,
                     device: str) -> asyncio.Future[Ack]:
        return self._submit(self.RUNNERS.ack_personal,
                            [msg_from, msg_to, sent_us, received_at, device], deletes=True)

    def read_personal(self, msg_from: str, msg_to: str, seen_at: str) -> asyncio.Future[None]:
        return self._submit(self.RUNNERS.read_personal, [msg_from, msg_to, seen_at])

    def add_group_message(self, grp: str, msg_from: str, sent_us: int, sent_timestamp: str,
                          message: str, device: str | None = None,
                          attachments: Sequence[str] = (), *,
                          ref: str | None = None) -> asyncio.Future[Stored | None]:
        unsent = ref_target(ref)
        return self._submit(self.RUNNERS.add_group,
                            [grp, msg_from, sent_us, sent_timestamp, message, self._max_waiting,
                             device, self._live_after_us(), list(attachments), ref, unsent],
                            deletes=unsent is not None)

    def ack_group(self, grp: str, msg_from: str, sent_us: int, phone: str,
                  device: str) -> asyncio.Future[Ack]:
        return self._submit(self.RUNNERS.ack_group, [grp, msg_from, sent_us, phone, device],
                            deletes=True)

    def read_group(self, grp: str, phone: str, up_to: str) -> asyncio.Future[None]:
        return self._submit(self.RUNNERS.read_group, [grp, phone, up_to])

    def add_room_message(self, room: str, msg_from: str, sent_us: int, sent_timestamp: str,
                         message: str, attachments: Sequence[str] = (), *,
                         ref: str | None = None) -> asyncio.Future[int | None]:
        return self._submit(
            self.RUNNERS.add_room,
            [room, msg_from, sent_us, sent_timestamp, message, self._rooms_keep, list(attachments),
             ref, ref_target(ref)],
            deletes=True)

    def is_blocked(self, blocker: str, blocked: str) -> bool:
        return (blocker, blocked) in self._blocks

    # -- the writer ---------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # Everything queued while the previous commit was in flight forms this batch.
            batch, self._queue = self._queue, []
            async with self._writing:
                started = time.perf_counter()
                await self._commit(batch)
                COMMIT_SECONDS.observe(time.perf_counter() - started)
            COMMIT_BATCH.observe(len(batch))
            if any(w.deletes for w in batch):
                self._scrub_soon()

    async def _commit(self, batch: list[QueuedWrite]) -> None:
        """Run `batch` in one transaction, one statement per kind of write.

        When a statement fails, the batch is rolled back and run again with every write on its
        own statement, so that only the write at fault fails and the others are committed. A
        statement that lost to another transaction (`_retryable`) runs the same batch again,
        MAX_ATTEMPTS times in all.
        """
        alone = False
        attempts = 0
        while batch:
            groups: dict[Callable[[Any, list[Any]], Awaitable[list[Any]]], list[QueuedWrite]] = {}
            for write in batch:
                groups.setdefault(write.run, []).append(write)
            steps = [(w.run, [w]) for w in batch] if alone else list(groups.items())
            results: dict[int, Any] = {}  # id(write) -> result
            failed: tuple[list[QueuedWrite], Exception] | None = None
            db: DB | None = None
            try:
                db = await self._connection()
                await self._begin(db)
                for run, writes in steps:
                    try:
                        outcome = await run(db, [w.args for w in writes])
                    except Exception as e:
                        if not self._write_fault(e):
                            raise
                        failed = (writes, e)  # these writes' fault, not the transaction's
                        break
                    results.update(zip(map(id, writes), outcome, strict=True))
                if failed is None:
                    await self._commit_transaction(db)
            except BaseException as e:  # the transaction itself failed: nothing is stored
                log.exception("commit of %d writes failed", len(batch))
                await self._rollback(db)
                wrapped = self._wrap(e)
                for write in batch:
                    if not write.future.done():
                        write.future.set_exception(wrapped)
                if not isinstance(e, Exception):
                    raise
                return
            if failed is None:
                # In submission order: a socket's callbacks then run in the order of its frames.
                for write in batch:
                    if not write.future.done():  # the caller may have been cancelled
                        result = results[id(write)]
                        if isinstance(result, StoreError):  # refused by the runner, not by SQL
                            write.future.set_exception(result)
                        else:
                            write.future.set_result(result)
                return
            await self._rollback(db)
            writes, error = failed
            if self._retryable(error) and attempts + 1 < MAX_ATTEMPTS:
                attempts += 1  # lost to another process's transaction: nobody's fault
                continue
            if len(writes) > 1:
                alone = True
                continue
            if not writes[0].future.done():
                writes[0].future.set_exception(self._wrap(error))
            batch = [w for w in batch if w is not writes[0]]

    # -- scrub (SPEC 6) -----------------------------------------------------------------------

    def _scrub_soon(self) -> None:
        """Scrub within `scrub_seconds` (unless a scrub is due sooner): something was deleted."""
        if self._scrub_at is None:
            self._scrub_at = asyncio.get_running_loop().time() + self._scrub_seconds
            self._scrub_wakeup.set()

    async def scrub(self) -> None:
        if self._closing:
            raise StoreClosed("the store is closing")
        waiter = asyncio.get_running_loop().create_future()
        self._scrub_waiters.append(waiter)
        self._scrub_at = asyncio.get_running_loop().time()
        self._scrub_wakeup.set()
        await waiter

    async def _scrub_loop(self) -> None:
        """Scrub `scrub_seconds` after the first delete since the last scrub, or when asked."""
        loop = asyncio.get_running_loop()
        while True:
            if self._scrub_at is None:
                self._scrub_wakeup.clear()
                await self._scrub_wakeup.wait()
                continue
            delay = self._scrub_at - loop.time()
            if delay > 0:
                self._scrub_wakeup.clear()
                try:  # scrub() wakes this early
                    async with asyncio.timeout(delay):
                        await self._scrub_wakeup.wait()
                except TimeoutError:
                    pass
                continue
            await self._run_scrub()

    async def _run_scrub(self) -> None:
        """Scrub once; resolves the scrub() calls made before it began. When it could not finish,
        they wait for the next attempt."""
        self._scrub_at = None
        waiters, self._scrub_waiters = self._scrub_waiters, []
        try:
            retry = await self._scrub_once()
        except BaseException:  # cancelled by close(), which answers the waiters
            self._scrub_waiters[:0] = waiters
            raise
        if retry is not None:
            self._scrub_waiters[:0] = waiters
            if self._scrub_at is None:
                self._scrub_at = asyncio.get_running_loop().time() + retry
            return
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- closing ------------------------------------------------------------------------------

    async def close(self) -> None:
        if self._closing:  # closed already, or closing: once is enough (a second call is a no-op)
            return
        self._closing = True
        self._wakeup.set()
        try:
            if self._task is not None:
                await self._task
            if self._scrubber is not None:
                self._scrubber.cancel()
                await asyncio.gather(self._scrubber, return_exceptions=True)
            if self._scrub_at is not None or self._scrub_waiters:
                await self._run_scrub()
        finally:
            for waiter in self._scrub_waiters:  # that last scrub did not finish: nobody retries it
                if not waiter.done():
                    waiter.set_exception(StoreClosed("the store closed before the scrub"))
            await self._close_connections()
