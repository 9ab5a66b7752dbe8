"""The store's one writer thread: group commits, and writes that are never dropped.

The writer takes whatever writes have queued up and commits them in one transaction, so losses
arrive in batches and many submissions share a commit; consecutive loss writes (of any jobs) go
in as one statement. After a commit it runs each write's callback, then resolves its future.

When a commit fails because the database cannot write now (a full disk, a PostgreSQL server that
went away), the writer marks itself unwritable, says so once, and tries the same transaction
again with a growing pause until it goes through. A write that fails for itself (not the
database's state) is isolated: the others are committed one by one and its future fails.

A request's write (a new job, a cancel) is a `Tentative`: while it is not committed its caller
may give it up (`Tentative.abandon`), and then no try of the transaction runs it again. So a
caller that answers 503 during an outage never has its write go through afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from app.store.chunks import pack

log = logging.getLogger("app.store")

Operation = Callable[[Connection], Any]
AfterCommit = Callable[[Any], None]

# while the database cannot write: the longest pause between two tries of one transaction
MAX_RETRY_PAUSE = 2.0
# at close, how long a write that cannot go through is tried before it is given up
CLOSE_GRACE_SECONDS = 5.0
BATCH_LIMIT = 2000  # writes per transaction


def cannot_write_now(exc: BaseException) -> bool:
    """Whether a failed commit may go through later as it is: the database is full, or
    unreachable, not the transaction wrong."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


class StoreUnwritable(Exception):
    """The store cannot write now (full, or unreachable); it retries by itself."""

    def __init__(self, since: float, reason: str):
        self.since = since
        self.reason = reason
        super().__init__(f"the job store cannot write now ({reason}); retrying")


class AppendLosses:
    """Store the losses of steps first_step, first_step + 1, ... of one job (None: not finite)."""

    def __init__(self, job_pk: int, first_step: int, values: list[float | None]):
        self.job_pk, self.first_step, self.values = job_pk, first_step, values

    def __call__(self, conn: Connection) -> None:
        AppendLosses.run_many(conn, [self])

    @staticmethod
    def run_many(conn: Connection, ops: list[AppendLosses]) -> None:
        # driver-level executemany: the hot path of the store, without per-row SQL building;
        # a chunk row per batch, as the worker cut it
        ops = [op for op in ops if op.values]
        if not ops:
            return
        mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        conn.exec_driver_sql(
            "INSERT INTO loss_chunks (job_pk, first_step, end_step, losses) "
            f"VALUES ({mark}, {mark}, {mark}, {mark})",
            [
                (op.job_pk, op.first_step, op.first_step + len(op.values), pack(op.values))
                for op in ops
            ],
        )
        last: dict[int, AppendLosses] = {op.job_pk: op for op in ops}  # the latest per job
        conn.exec_driver_sql(
            f"UPDATE jobs SET step = {mark}, last_loss = {mark} WHERE pk = {mark}",
            [(op.first_step + len(op.values), op.values[-1], op.job_pk) for op in last.values()],
        )


_Write = tuple[Operation, Future[Any], AfterCommit | None]


class Abandoned(Exception):
    """A tentative write given up by its caller before it was committed."""


class Tentative(Future[Any]):
    """The future of a write that its caller may give up until it is committed."""

    def __init__(self, op: Operation):
        super().__init__()
        # not `_state`: Future's own attribute
        self._op, self._phase, self._guard = op, "pending", threading.Lock()

    def run(self, conn: Connection) -> Any:
        """The write, in the writer's transaction; nothing once abandoned."""
        with self._guard:
            if self._phase == "abandoned":
                return None
            self._phase = "running"
        return self._op(conn)

    def rolled_back(self) -> None:
        with self._guard:
            if self._phase == "running":
                self._phase = "pending"

    def committed(self) -> bool:
        """Mark it committed; False if it was abandoned (it did not run)."""
        with self._guard:
            if self._phase == "abandoned":
                return False
            self._phase = "committed"
            return True

    def abandon(self) -> bool:
        """Give it up if no transaction holds it now; True: it will never be committed."""
        with self._guard:
            if self._phase != "pending":
                return False
            self._phase = "abandoned"
        self.set_exception(Abandoned())
        return True


class Writer:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._writes: queue.Queue[_Write | None] = queue.Queue()
        self._closing = False
        self.unwritable: StoreUnwritable | None = None  # set while commits fail
        # told the seconds of each committed transaction, on the writer's thread (metrics)
        self.observe_commit: Callable[[float], None] = _ignore_seconds
        # the writer thread's own connection, kept from one transaction to the next (a pool
        # checkout and reset per transaction cost more than a loss batch's INSERT); dropped
        # after a failed transaction, so that a database that went away is connected afresh
        self._conn: Connection | None = None
        self._thread = threading.Thread(target=self._write_loop, name="store-writer", daemon=True)
        self._thread.start()

    def submit(self, op: Operation, after: AfterCommit | None = None) -> Future[Any]:
        """Queue a write; the future resolves with op's result once it is committed."""
        future: Future[Any] = Future()
        self._writes.put((op, future, after))
        return future

    def submit_tentative(self, op: Operation, after: AfterCommit | None = None) -> Tentative:
        """Queue a write that its caller may give up until it is committed."""
        future = Tentative(op)
        self._writes.put((future.run, future, after))
        return future

    def close(self) -> None:
        """Commit what is queued (a write that cannot go through is tried a few seconds more),
        then stop."""
        self._closing = True
        self._writes.put(None)
        self._thread.join(timeout=30)

    def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._writes.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < BATCH_LIMIT:
                try:
                    item = self._writes.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._commit(batch)
        self._drop_connection()

    def _commit(self, batch: list[_Write]) -> None:
        pause = 0.05
        gave_up_at: float | None = None
        while True:
            try:
                began = time.perf_counter()
                results = self._apply(batch)
                self.observe_commit(time.perf_counter() - began)
                break
            except Exception as exc:
                for _, future, _after in batch:
                    if isinstance(future, Tentative):
                        future.rolled_back()
                if not cannot_write_now(exc):
                    self._isolate(batch, exc)
                    return
                self._mark_unwritable(exc)
                if self._closing:
                    gave_up_at = gave_up_at or time.monotonic() + CLOSE_GRACE_SECONDS
                    if time.monotonic() > gave_up_at:
                        log.error("job store: %d writes not committed at shutdown", len(batch))
                        for _, future, _after in batch:
                            if not future.done():
                                future.set_exception(exc)
                        return
                time.sleep(pause)
                pause = min(MAX_RETRY_PAUSE, pause * 2)
        self._mark_writable()
        for (_, future, after), result in zip(batch, results, strict=True):
            if isinstance(future, Tentative) and not future.committed():
                continue  # given up before this try: it did nothing
            if after is not None:
                try:
                    after(result)
                except Exception:
                    log.exception("after-commit callback failed")
            future.set_result(result)

    def _apply(self, batch: list[_Write]) -> list[Any]:
        """Run the batch's writes in one transaction; their results, in order."""
        if self._conn is None:
            self._conn = self.engine.connect()
        conn = self._conn
        try:
            with conn.begin():
                return self._run(conn, batch)
        except BaseException:
            self._drop_connection()
            raise

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a connection to a database gone
                conn.close()

    def _run(self, conn: Connection, batch: list[_Write]) -> list[Any]:
        """The batch's writes on `conn`, in its transaction; their results, in order."""
        results: list[Any] = []
        i = 0
        while i < len(batch):
            if isinstance(batch[i][0], AppendLosses):
                # consecutive loss batches (of any jobs) go in as one statement
                j = i
                while j < len(batch) and isinstance(batch[j][0], AppendLosses):
                    j += 1
                AppendLosses.run_many(conn, [b[0] for b in batch[i:j]])  # type: ignore[misc]
                results.extend([None] * (j - i))
                i = j
            else:
                results.append(batch[i][0](conn))
                i += 1
        return results

    def _isolate(self, batch: list[_Write], exc: Exception) -> None:
        """A write that is wrong in itself (not the database's state): commit the others one by
        one, and fail that one's future (its caller decides what it means)."""
        if len(batch) > 1:
            for item in batch:
                self._commit([item])
            return
        log.error("job store: a write failed: %s", exc)
        if not batch[0][1].done():
            batch[0][1].set_exception(exc)

    def _mark_unwritable(self, exc: Exception) -> None:
        if self.unwritable is None:
            reason = str(getattr(exc, "orig", None) or exc).splitlines()[0][:200]
            self.unwritable = StoreUnwritable(time.monotonic(), reason)
            log.error(
                "job store cannot write (%s): training of running jobs pauses until it can; "
                "retrying",
                reason,
            )

    def _mark_writable(self) -> None:
        if self.unwritable is not None:
            since = self.unwritable.since
            self.unwritable = None
            log.warning("job store writes again after %.1f s", time.monotonic() - since)


def _ignore_seconds(seconds: float) -> None:
    pass
