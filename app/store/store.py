"""Jobs and their losses in a SQL database.

Every write goes through one writer thread (SQLite allows one writer at a time; a single writer
never meets "database is locked"). The writer takes whatever operations have queued up and commits
them in one transaction, so losses arrive in batches and many submissions share a commit. After a
commit it runs each operation's callback: that is where the service notifies subscribers, so a
subscriber never hears of a step before it is stored.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, delete, event, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from app.store.tables import jobs, losses

log = logging.getLogger(__name__)

JobRow = dict[str, Any]
Operation = Callable[[Connection], Any]

FINAL_STATUSES = ("succeeded", "failed", "cancelled")
_MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers never block the writer; NORMAL: a commit survives a crash of the process
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class DatabaseInUse(Exception):
    """Another server holds this store."""


def _in_use(holder: str, where: object) -> DatabaseInUse:
    return DatabaseInUse(
        f"another trainwire server ({holder}) uses {where}: stop it first, or give this one its "
        "own TRAINWIRE_DATABASE_URL"
    )


class _FileLock:
    """An exclusive lock beside a SQLite file, held for as long as the server runs.

    A second server on the same file would take the first one's running jobs for crashed ones,
    requeue them and run them again beside it. The kernel drops the lock when the process dies,
    so a `kill -9` leaves nothing to clean up.
    """

    def __init__(self, database: Path):
        database.parent.mkdir(parents=True, exist_ok=True)
        lock = open(database.with_name(database.name + ".lock"), "a+")  # noqa: SIM115 (held open)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            lock.close()
            raise _in_use(f"pid {holder}", database) from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        self._file = lock

    def close(self) -> None:
        self._file.close()  # closing the file releases the lock


class _PostgresLock:
    """The same for a PostgreSQL database: a session-level advisory lock on a connection of its
    own, which the server dies holding no longer than its connection lives."""

    KEY = 0x7472_6E77  # "trnw"; advisory locks are per database

    def __init__(self, url: str):
        self._engine = create_engine(
            url,
            poolclass=NullPool,
            connect_args={"application_name": f"trainwire pid {os.getpid()}"},
        )
        self._conn = self._engine.connect()
        try:
            got = self._conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({self.KEY})").scalar()
            if not got:
                holder = self._conn.exec_driver_sql(
                    "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a "
                    "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                    f"AND l.objid = {self.KEY} AND l.database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())"
                ).scalar()
                name = str(holder or "")
                raise _in_use(
                    name.removeprefix("trainwire ") if name.startswith("trainwire pid ") else "?",
                    make_url(url).render_as_string(hide_password=True),
                )
            self._conn.commit()  # the lock is the session's: it outlives this transaction
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._conn.close()
        self._engine.dispose()


def _lock_store(url: str) -> _FileLock | _PostgresLock | None:
    """Take the store's one-server lock (SQLite file or PostgreSQL database); None elsewhere."""
    database = _sqlite_file(url)
    if database is not None:
        return _FileLock(database)
    if make_url(url).get_backend_name() == "postgresql":
        return _PostgresLock(url)
    return None


def database_in_use(url: str) -> str | None:
    """Why a server could not start on `url` now (another one holds the store), or None.

    A look before starting, so that a busy store is reported in one line; the store takes the
    lock itself when it opens, which settles a race between two starts."""
    database = _sqlite_file(url)
    if database is not None and not database.parent.is_dir():
        return None  # nothing to hold yet, and nothing to create before the port is bound
    try:
        lock = _lock_store(url)
    except DatabaseInUse as exc:
        return str(exc)
    except Exception:  # unreachable or misconfigured: the store says why when it opens
        return None
    if lock is not None:
        lock.close()
    return None


def _sqlite_file(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).resolve()


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision."""
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


class AppendLosses:
    """Store the losses of steps first_step, first_step + 1, ... of one job."""

    def __init__(self, job_pk: int, first_step: int, values: list[float]):
        self.job_pk, self.first_step, self.values = job_pk, first_step, values

    def __call__(self, conn: Connection) -> None:
        AppendLosses.run_many(conn, [self])

    @staticmethod
    def run_many(conn: Connection, ops: list[AppendLosses]) -> None:
        # driver-level executemany: the hot path of the store, without per-row SQL building
        mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        rows = [
            (op.job_pk, op.first_step + i, _finite_or_none(v))
            for op in ops
            for i, v in enumerate(op.values)
        ]
        conn.exec_driver_sql(
            f"INSERT INTO losses (job_pk, step, loss) VALUES ({mark}, {mark}, {mark})", rows
        )
        last: dict[int, AppendLosses] = {op.job_pk: op for op in ops}  # the latest per job
        conn.exec_driver_sql(
            f"UPDATE jobs SET step = {mark}, last_loss = {mark} WHERE pk = {mark}",
            [
                (op.first_step + len(op.values), _finite_or_none(op.values[-1]), op.job_pk)
                for op in last.values()
            ],
        )


class Store:
    def __init__(self, url: str):
        self._lock = _lock_store(url)
        try:
            self.engine = make_engine(url)
            migrate(self.engine)
        except BaseException:
            self._unlock()
            raise
        self._ops: queue.Queue[tuple[Operation, Future[Any], Callable[[Any], None] | None] | None]
        self._ops = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, name="store-writer", daemon=True)
        self._writer.start()

    def close(self) -> None:
        """Commit what is queued, stop the writer, close connections."""
        self._ops.put(None)
        self._writer.join(timeout=30)
        self.engine.dispose()
        self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # -- the writer -------------------------------------------------------------------------
    def submit(
        self, op: Operation, after_commit: Callable[[Any], None] | None = None
    ) -> Future[Any]:
        """Queue a write; the future resolves with op's result once it is committed."""
        future: Future[Any] = Future()
        self._ops.put((op, future, after_commit))
        return future

    def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._ops.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < 2000:
                try:
                    item = self._ops.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._commit(batch)

    def _commit(self, batch: list[tuple[Operation, Future[Any], Any]]) -> None:
        try:
            with self.engine.begin() as conn:
                results: list[Any] = []
                i = 0
                while i < len(batch):
                    op = batch[i][0]
                    if isinstance(op, AppendLosses):
                        # consecutive loss batches (of any jobs) go in as one statement
                        j = i
                        while j < len(batch) and isinstance(batch[j][0], AppendLosses):
                            j += 1
                        AppendLosses.run_many(conn, [b[0] for b in batch[i:j]])  # type: ignore[misc]
                        results.extend([None] * (j - i))
                        i = j
                    else:
                        results.append(op(conn))
                        i += 1
        except Exception:
            if len(batch) > 1:
                # isolate the failing operation: commit the others one by one
                for item in batch:
                    self._commit([item])
                return
            log.exception("store write failed")
            batch[0][1].set_exception(RuntimeError("store write failed"))
            return
        for (_, future, after_commit), result in zip(batch, results, strict=True):
            if after_commit is not None:
                try:
                    after_commit(result)
                except Exception:
                    log.exception("after-commit callback failed")
            future.set_result(result)

    # -- write operations (run on the writer thread) ------------------------------------------
    @staticmethod
    def op_insert_job(values: dict[str, Any]) -> Operation:
        def op(conn: Connection) -> JobRow:
            result = conn.execute(insert(jobs).values(**values))
            pk = result.inserted_primary_key[0]  # type: ignore[index]
            return {**values, "pk": pk}

        return op

    @staticmethod
    def op_update_job(
        job_pk: int, only_if_not_final: bool = True, bump_attempts: bool = False, **values: Any
    ) -> Operation:
        """Update a job; a job in a final state never changes again. Returns the row or None."""
        if bump_attempts:
            values["attempts"] = jobs.c.attempts + 1

        def op(conn: Connection) -> JobRow | None:
            stmt = update(jobs).where(jobs.c.pk == job_pk).values(**values)
            if only_if_not_final:
                stmt = stmt.where(jobs.c.status.not_in(FINAL_STATUSES))
            if conn.execute(stmt).rowcount == 0:
                return None
            row = conn.execute(select(jobs).where(jobs.c.pk == job_pk)).mappings().first()
            return dict(row) if row else None

        return op

    @staticmethod
    def op_append_losses(job_pk: int, first_step: int, values: list[float]) -> Operation:
        return AppendLosses(job_pk, first_step, values)

    @staticmethod
    def op_delete_job(job_pk: int) -> Operation:
        def op(conn: Connection) -> bool:
            conn.execute(delete(losses).where(losses.c.job_pk == job_pk))
            deleted = conn.execute(
                delete(jobs).where(jobs.c.pk == job_pk, jobs.c.status.in_(FINAL_STATUSES))
            ).rowcount
            return bool(deleted)

        return op

    # -- reads (any thread) ---------------------------------------------------------------------
    def get_job(self, job_id: str) -> JobRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
            return dict(row) if row else None

    def list_jobs(
        self,
        limit: int,
        before_pk: int | None = None,
        statuses: list[str] | None = None,
        variants: list[str] | None = None,
    ) -> list[JobRow]:
        """Jobs newest first, at most `limit`, older than `before_pk` when given."""
        stmt = select(jobs).order_by(jobs.c.pk.desc()).limit(limit)
        if before_pk is not None:
            stmt = stmt.where(jobs.c.pk < before_pk)
        if statuses:
            stmt = stmt.where(jobs.c.status.in_(statuses))
        if variants:
            stmt = stmt.where(jobs.c.variant.in_(variants))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]

    def unfinished_jobs(self) -> list[JobRow]:
        """Queued and running jobs, oldest first."""
        stmt = select(jobs).where(jobs.c.status.not_in(FINAL_STATUSES)).order_by(jobs.c.pk)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]

    def count_jobs(self, status: str) -> int:
        from sqlalchemy import func

        with self.engine.connect() as conn:
            return int(
                conn.execute(select(func.count()).where(jobs.c.status == status)).scalar_one()
            )

    def read_losses(
        self, job_pk: int, after: int, limit: int
    ) -> tuple[list[int], list[float | None]]:
        """Up to `limit` (step, loss) pairs with step > after, in step order."""
        stmt = (
            select(losses.c.step, losses.c.loss)
            .where(losses.c.job_pk == job_pk, losses.c.step > after)
            .order_by(losses.c.step)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return [r[0] for r in rows], [_finite_or_none(r[1]) for r in rows]

    def iter_losses(
        self, job_pk: int, after: int = -1, chunk: int = 20000, limit: int | None = None
    ) -> Iterator[tuple[list[int], list[float | None]]]:
        """Every stored loss after `after` (the first `limit` of them), in pages of `chunk`,
        never all in memory at once."""
        left = limit
        while left is None or left > 0:
            want = chunk if left is None else min(chunk, left)
            steps, values = self.read_losses(job_pk, after, want)
            if not steps:
                return
            yield steps, values
            if len(steps) < want:
                return
            if left is not None:
                left -= len(steps)
            after = steps[-1]
