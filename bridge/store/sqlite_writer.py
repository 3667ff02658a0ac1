"""The SQLite outbox's writer thread, with group commit (see bridge.store.sqlite), and the
small helpers its callers share.

Every commit is made without a sync (synchronous=NORMAL: SQLite only writes the log);
the thread then syncs the log itself, after the commit has let go of the file's write
lock, and only then answers a durable batch. So the intake's sync holds up no other
writer: the lanes' claims and outcomes go on while it lasts.

The lanes' quick jobs (claims, outcomes) run on the event loop, on a connection of their
own, whenever no other writer holds the file: handing each to the thread and back passes
the GIL between the two threads twice, which cost a delivery a sixth of its CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from bridge.store.records import StoreUnavailable, unavailable
from bridge.store.sqlite_checkpoint import Checkpointer
from bridge.store.sqlite_reader import SqliteReader
from bridge.store.sqlite_schema import migrate

T = TypeVar("T")
# The work, where its answer goes, and whether its commit must reach the disk first.
Job = tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any], bool]

# Enough to amortise one fsync over a burst, small enough to keep each commit short.
MAX_BATCH = 512
# The most quick jobs run at once on the event loop (more wait for its next turn).
MAX_QUICK_BATCH = 64
# The most rows a long write (a purge, a removed destination's backlog) changes in one job:
# the webhooks and the lanes' jobs go between two of them.
JOB_ROWS = 500
# An in-memory change a job made, undone when its writes are rolled back.
Undo = Callable[[], None]
LOWEST, HIGHEST = -(2**63), 2**63 - 1
# A job's future with its answer, or the error it is to raise.
Settled = tuple[asyncio.Future[Any], Any, BaseException | None]


class SqliteWriter:
    """Opens the file (its schema migrated), and runs every store call on the writer thread,
    but the lanes' quick jobs, on the event loop when they can."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock_file: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._log: int | None = None  # the write-ahead log, opened to sync it
        # The event loop's connection for quick jobs (serving only), the jobs waiting for
        # it, and the bookkeeping jobs queued for the thread and not yet answered: while
        # there are any, quick jobs queue behind them, so that jobs run in the order queued.
        self._quick: sqlite3.Connection | None = None
        self._quick_jobs: list[Job] = []
        self._queued_bookkeeping = 0
        # Claimed deliveries (id -> claimed until): only this process serves the file, so
        # claims live in memory, read and changed by jobs alone. Jobs never run two at a
        # time: each batch holds the file's write lock (BEGIN IMMEDIATE), on either thread.
        self._claims: dict[int, float] = {}
        # What the jobs of the running batch changed in memory, to undo on a rollback.
        self._undo: list[Undo] = []
        # Sent outcomes noted by the lanes, not yet queued for the writer (sqlite_lanes).
        self._sent: list[tuple[int, float]] = []
        # Deliveries noted sent whose outcome is not written yet: a claim passes over them.
        self._unwritten: set[int] = set()
        self._sent_writes: set[asyncio.Future[None]] = set()
        self._closing = False
        self._checkpointer: Checkpointer | None = None
        self._reader = SqliteReader(self.path)  # for the reports (see sqlite_reader)

    # -- the writer thread --------------------------------------------------

    async def open(self, *, serving: bool) -> None:
        self._loop = asyncio.get_running_loop()
        self._closing = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if serving:
                self._lock_file = _exclusive_lock(self.path)
            connection = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
            (mode,) = connection.execute("PRAGMA journal_mode=WAL").fetchone()
            if mode != "wal":  # the log is what the writer syncs: without it, nothing is
                connection.close()
                raise StoreUnavailable(
                    f"cannot open {self.path}: SQLite cannot keep a write-ahead log there"
                    f" (journal mode {mode!r}); put the store on a local disk"
                )
            connection.execute("PRAGMA synchronous=NORMAL")  # the thread syncs (see above)
            if serving:  # its own thread checkpoints (see sqlite_checkpoint)
                connection.execute("PRAGMA wal_autocheckpoint=0")
            migrate(connection)
            self._log = _synced_log(self.path)
            if serving:
                self._quick = _quick_connection(self.path)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from None
        self._thread = threading.Thread(
            target=self._run, args=(connection,), name="sqlite-store", daemon=True
        )
        self._thread.start()
        self._reader.open()
        if serving:
            self._checkpointer = Checkpointer(self.path)
            self._checkpointer.start()
        self._claims, self._sent, self._unwritten = {}, [], set()
        self._quick_jobs, self._queued_bookkeeping = [], 0
        if serving:
            # We hold the lock: no other process serves from this file, so claims live in
            # this process's memory; a claim stored by a version before that is void.
            await self._call(lambda c: c.execute("UPDATE deliveries SET claimed_until = NULL"))

    async def _before_close(self) -> None:
        """What must reach the writer before it stops (the lanes' outcomes)."""

    async def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            await self._before_close()
        self._closing = True
        self._run_quick()  # what is waiting for the loop's next turn
        await asyncio.to_thread(self._reader.close)
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.stop)
            self._checkpointer = None
        if self._thread is not None:
            self._jobs.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        if self._quick is not None:
            self._quick.close()
            self._quick = None
        if self._log is not None:
            os.close(self._log)
            self._log = None
        if self._lock_file is not None:
            os.close(self._lock_file)
            self._lock_file = None

    def _run(self, connection: sqlite3.Connection) -> None:
        """Take the jobs waiting; commit the bookkeeping ones, then the durable ones (and
        sync the log): the bookkeeping is answered without waiting for that sync."""
        while True:
            first = self._jobs.get()
            if first is None:
                break
            waiting = [first]
            stop = False
            while len(waiting) < 2 * MAX_BATCH:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                waiting.append(job)
            bookkeeping = [job for job in waiting if not job[2]]
            durable = [job for job in waiting if job[2]]
            for batch, queued in ((bookkeeping, len(bookkeeping)), (durable, 0)):
                if batch:
                    results = self._run_batch(connection, batch)
                    assert self._loop is not None
                    self._loop.call_soon_threadsafe(self._answer, results, queued)
            if stop:
                break
        connection.close()

    def _forget(self, mark: int) -> None:
        """Undo the in-memory changes made since `mark` (newest first)."""
        while len(self._undo) > mark:
            self._undo.pop()()

    def _run_batch(
        self, connection: sqlite3.Connection, batch: list[Job], *, began: bool = False
    ) -> list[Settled]:
        """Run the batch in one transaction (`began`: already begun) and commit it; a batch
        with a durable job is answered once the log is on the disk."""
        try:
            if not began:
                if connection.in_transaction:  # a batch before could not even roll back
                    connection.execute("ROLLBACK")
                connection.execute("BEGIN IMMEDIATE")
        except BaseException as exc:
            return _failed(batch, exc)
        self._undo = []  # only now: until the write lock is ours, a quick batch may be running
        try:
            results = self._run_jobs(connection, batch)
            connection.execute("COMMIT")
        except BaseException as exc:
            # The commit (or SQLite itself) failed: nothing of the batch is stored, so
            # every job in it fails, and the thread lives on for the next batch.
            with contextlib.suppress(sqlite3.Error):
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
            self._forget(0)
            return _failed(batch, exc)
        if any(durable for _, _, durable in batch):
            try:
                assert self._log is not None
                os.fsync(self._log)  # not holding the write lock: the lanes go on meanwhile
            except OSError as exc:  # committed, but maybe not on the disk: not accepted
                return _failed(batch, exc, "cannot sync the store's log")
        return results

    def _answer(self, results: list[Settled], bookkeeping: int) -> None:
        """On the loop: the thread ran a batch with `bookkeeping` jobs of that kind."""
        self._queued_bookkeeping -= bookkeeping
        _settle_all(results)

    def _run_quick(self) -> None:
        """On the loop: run the quick jobs waiting, unless another writer holds the file
        (the writer thread, in the middle of a batch; a CLI command): then they queue for
        the thread, as any other job."""
        batch, self._quick_jobs = (
            self._quick_jobs[:MAX_QUICK_BATCH],
            self._quick_jobs[MAX_QUICK_BATCH:],
        )
        if self._quick_jobs:
            assert self._loop is not None
            self._loop.call_soon(self._run_quick)
        if not batch:
            return
        try:
            if self._quick is None or self._closing:
                raise sqlite3.OperationalError("the store is closing")
            self._quick.execute("BEGIN IMMEDIATE")  # no wait: the loop must not block
        except sqlite3.Error as exc:
            if self._thread is None or not self._thread.is_alive():
                _settle_all(_failed(batch, exc))
                return
            for job in batch:
                self._queue(job)
            return
        _settle_all(self._run_batch(self._quick, batch, began=True))

    def _run_jobs(self, connection: sqlite3.Connection, batch: list[Job]) -> list[Settled]:
        """Each job's answer; a job that fails is undone alone, the others stand.

        Jobs seldom fail, and a savepoint around each is two more statements, each a hand-off
        of the GIL to and from SQLite: the jobs run without, and only when one fails is the
        batch run again, from its start, each job in a savepoint of its own.
        """
        try:
            return [(future, work(connection), None) for work, future, _ in batch]
        except Exception:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            self._forget(0)
            connection.execute("BEGIN IMMEDIATE")
        results: list[Settled] = []
        for work, future, _ in batch:
            connection.execute("SAVEPOINT job")
            mark = len(self._undo)
            try:
                result = work(connection)
            except Exception as exc:
                connection.execute("ROLLBACK TO job")
                self._forget(mark)
                results.append((future, None, sqlite_unavailable("store error", exc)))
            else:
                results.append((future, result, None))
            connection.execute("RELEASE job")
        return results

    async def _call(
        self,
        work: Callable[[sqlite3.Connection], T],
        *,
        durable: bool = False,
        quick: bool = False,
    ) -> T:
        """Run `work` in the writer thread; `durable`: answer only once it is on disk.
        `quick`: a lane's short job, run on the event loop when it can (see above)."""
        return await self._submit(work, durable=durable, quick=quick)

    def _submit(
        self,
        work: Callable[[sqlite3.Connection], T],
        *,
        durable: bool = False,
        quick: bool = False,
    ) -> asyncio.Future[T]:
        """Queue `work` now (jobs of a kind run in the order queued)."""
        if self._thread is None or self._loop is None:
            raise StoreUnavailable("store is not open")
        if not self._thread.is_alive():
            raise StoreUnavailable("the store's writer thread has stopped")
        future: asyncio.Future[T] = self._loop.create_future()
        job: Job = (work, future, durable)
        if quick and self._quick is not None and not self._queued_bookkeeping:
            self._quick_jobs.append(job)
            if len(self._quick_jobs) == 1:
                self._loop.call_soon(self._run_quick)
            return future
        if not durable:  # bookkeeping for the thread: the quick jobs before it go first
            for waiting in self._quick_jobs:
                self._queue(waiting)
            self._quick_jobs.clear()
        self._queue(job)
        return future

    def _queue(self, job: Job) -> None:
        """Queue the job for the writer thread."""
        if not job[2]:
            self._queued_bookkeeping += 1
        self._jobs.put(job)

    # -- the store interface --------------------------------------------------


def scalar(c: sqlite3.Connection, sql: str, args: tuple[object, ...]) -> int | None:
    row = c.execute(sql, args).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def bound(value: int | None, default: int) -> int:
    return default if value is None else value


def sqlite_unavailable(what: str, exc: BaseException) -> StoreUnavailable:
    return unavailable(what, exc, (sqlite3.Error, OSError))


def _failed(
    batch: list[Job], exc: BaseException, what: str = "store write failed"
) -> list[Settled]:
    failure = sqlite_unavailable(what, exc)
    return [(future, None, failure) for _, future, _ in batch]


def _synced_log(path: Path) -> int:
    """The write-ahead log (a file descriptor, to sync it), with what is in it already and
    its name in the folder on the disk."""
    log = os.open(f"{path}-wal", os.O_RDONLY | os.O_CREAT, 0o600)
    os.fsync(log)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    return log


def _quick_connection(path: Path) -> sqlite3.Connection:
    """The event loop's connection: it never waits for the file's lock (timeout 0), and its
    commits are bookkeeping, which sync nothing (see bridge.store.sqlite)."""
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=0)
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA wal_autocheckpoint=0")
    return connection


def _settle_all(results: list[Settled]) -> None:
    for future, result, error in results:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _exclusive_lock(path: Path) -> int:
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreUnavailable(
            f"{path} is in use by another jobserv-bridge serve (lock {lock_path})"
        ) from None
    return fd
