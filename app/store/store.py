"""Jobs and their losses in a SQL database: typed writes and reads.

Every write goes through one writer thread (app.store.writer; SQLite allows one writer at a
time, and a single writer never meets "database is locked"), which commits in groups and runs
each write's after-commit callback: that is where the service notifies subscribers, so a
subscriber never hears of a step before it is stored. A write is never dropped: while the
database cannot write, loss writes wait for room (`MAX_PENDING_LOSS_WRITES`), which pauses the
training that makes them.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    create_engine,
    delete,
    event,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url

from app.store import idempotency, webhooks
from app.store.chunks import contiguous_prefix, pack, unpack
from app.store.idempotency import Claim, Claimed
from app.store.lock import lock_store
from app.store.rows import CheckpointRow, JobRow
from app.store.tables import checkpoints, jobs, loss_chunks, webhook_deliveries
from app.store.writer import AfterCommit, AppendLosses, Operation, StoreUnwritable, Writer
from trainwire.jobs import FINAL_STATUSES, JobStatus
from trainwire.models import WebhookDelivery

log = logging.getLogger(__name__)

_MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
_FINAL = [s.value for s in FINAL_STATUSES]
_UNFINISHED = [JobStatus.queued.value, JobStatus.running.value]  # paused waits for a resume

# loss writes queued before `append_losses` waits: ~7 minutes of 100 ms batches of one job
MAX_PENDING_LOSS_WRITES = 4096
# loss chunks read per query (a page of losses usually spans a handful)
CHUNKS_PER_READ = 64


def _nothing() -> None:
    pass


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers never block the writer; NORMAL: a commit survives a crash of the process
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


CONNECT_TIMEOUT = 3  # seconds for a new connection to a database server


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # a server that is gone answers a connect at once (refused) or within connect_timeout
    connect_args = (
        {"connect_timeout": CONNECT_TIMEOUT} if parsed.drivername.startswith("postgresql") else {}
    )
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision."""
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


class Store:
    def __init__(self, url: str):
        self._lock = lock_store(url)
        try:
            self.engine = make_engine(url)
            migrate(self.engine)
        except BaseException:
            self._unlock()
            raise
        self._loss_room = threading.Semaphore(MAX_PENDING_LOSS_WRITES)
        self._writer = Writer(self.engine)
        # called after a commit that queued webhook deliveries (app.webhooks wakes its sender)
        self.deliveries_queued: Callable[[], None] = _nothing

    def close(self) -> None:
        """Commit what is queued, stop the writer, close connections."""
        self._writer.close()
        self.engine.dispose()
        self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @property
    def observe_commit(self) -> Callable[[float], None]:
        """Told the seconds of each committed transaction, on the writer's thread (metrics)."""
        return self._writer.observe_commit

    @observe_commit.setter
    def observe_commit(self, observe: Callable[[float], None]) -> None:
        self._writer.observe_commit = observe

    @property
    def writable(self) -> bool:
        return self._writer.unwritable is None

    def check_writable(self) -> None:
        """Raise StoreUnwritable while commits fail (a request then gets 503, not a wait)."""
        unwritable = self._writer.unwritable
        if unwritable is not None:
            raise unwritable

    # -- writes (any thread; the writer commits them in order) -----------------------------
    def find_claim(self, claim: Claim) -> Claimed | None:
        """What an earlier request with this idempotency key made, if the key is kept."""
        with self.engine.connect() as conn:
            return idempotency.find(conn, claim)

    def write(
        self, op: Operation, after: AfterCommit | None = None, tentative: bool = False
    ) -> Future[Any]:
        """Run `op(connection)` in the writer's next transaction; resolves with its result
        (for the store's other tables, app.store.sweeps). `tentative`: its caller may give it
        up until it is committed (`Tentative.abandon`)."""
        if tentative:
            return self._writer.submit_tentative(op, after)
        return self._writer.submit(op, after)

    def probe(self) -> None:
        """A read that reaches the database (OperationalError when it cannot be reached)."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def unwritable_error(self) -> StoreUnwritable:
        """Why a write was given up: the store's state now (503 with Retry-After)."""
        return self._writer.unwritable or StoreUnwritable(0.0, "a write did not commit in time")

    def insert_job(
        self, values: dict[str, Any], claim: Claim | None = None
    ) -> Future[JobRow | Claimed]:
        """Store a new job; resolves with its row. With an idempotency key's claim: the key
        is recorded with the job, or, if an earlier request holds it, nothing is stored and
        the future resolves with what that request made."""

        def op(conn: Connection) -> JobRow | Claimed:
            if claim is not None and (earlier := idempotency.take(conn, claim, values["id"])):
                return earlier
            result = conn.execute(_INSERT_JOB, values)
            pk = result.inserted_primary_key[0]  # type: ignore[index]
            return JobRow.from_mapping({**values, "pk": pk})

        return self._writer.submit_tentative(op)

    def update_job(
        self,
        job_pk: int,
        *,
        after: Callable[[JobRow | None], None] | None = None,
        only_if_not_final: bool = True,
        bump_attempts: bool = False,
        **values: Any,
    ) -> Future[JobRow | None]:
        """Update a job; a job in a final state never changes again. Resolves with the row, or
        None if the job is final (or gone)."""
        stmt = _update_statement(tuple(sorted(values)), only_if_not_final, bump_attempts)
        params = {"pk_": job_pk, **{f"new_{name}": value for name, value in values.items()}}

        queued = [0]

        def op(conn: Connection) -> JobRow | None:
            if conn.execute(stmt, params).rowcount == 0:
                return None
            row = _job_by_pk(conn, job_pk)
            if row is not None and "status" in values:
                # the outbox: its notifications commit with the change, or neither does
                queued[0] = webhooks.enqueue_status_change(conn, row)
            return row

        def then(row: JobRow | None) -> None:
            if after is not None:
                after(row)
            if queued[0]:
                self.deliveries_queued()

        return self._writer.submit(op, then)

    def append_losses(
        self,
        job_pk: int,
        first_step: int,
        values: list[float | None],
        after: Callable[[None], None] | None = None,
    ) -> Future[None]:
        """Store losses of consecutive steps and move the job's `step` past them. Waits while
        too many loss writes are pending (the store is slow, or cannot write)."""
        self._loss_room.acquire()

        def release(_: object) -> None:
            self._loss_room.release()

        future = self._writer.submit(AppendLosses(job_pk, first_step, values), after)
        future.add_done_callback(release)
        return future

    def delete_job(self, job_pk: int) -> Future[bool]:
        """Delete a final job and its losses; resolves with whether it was there to delete."""

        def op(conn: Connection) -> bool:
            job_id = conn.execute(select(jobs.c.id).where(jobs.c.pk == job_pk)).scalar()
            conn.execute(delete(loss_chunks).where(loss_chunks.c.job_pk == job_pk))
            conn.execute(delete(checkpoints).where(checkpoints.c.job_pk == job_pk))
            deleted = conn.execute(
                delete(jobs).where(jobs.c.pk == job_pk, jobs.c.status.in_(_FINAL))
            ).rowcount
            if deleted:  # its notifications, sent or not, go with it
                conn.execute(
                    delete(webhook_deliveries).where(webhook_deliveries.c.job_id == job_id)
                )
            return bool(deleted)

        return self._writer.submit_tentative(op)

    def requeue_unfinished(self) -> list[JobRow]:
        """At start-up: every queued or running job (not a paused one), back to `queued` with its
        `step` cut to the losses stored without a gap from step 0 (anything after a gap is
        deleted: the rerun recomputes it bit for bit). Oldest first."""

        def op(conn: Connection) -> list[JobRow]:
            pks = conn.execute(
                select(jobs.c.pk).where(jobs.c.status.in_(_UNFINISHED)).order_by(jobs.c.pk)
            ).scalars()
            rows = []
            for pk in list(pks):
                mine = loss_chunks.c.job_pk == pk
                spans = conn.execute(
                    select(loss_chunks.c.first_step, loss_chunks.c.end_step)
                    .where(mine)
                    .order_by(loss_chunks.c.first_step)
                ).all()
                stored = contiguous_prefix([(first, end) for first, end in spans])
                conn.execute(delete(loss_chunks).where(mine, loss_chunks.c.end_step > stored))
                last = None
                if stored:
                    blob = conn.execute(
                        select(loss_chunks.c.losses).where(mine, loss_chunks.c.end_step == stored)
                    ).scalar_one()
                    last = unpack(blob)[-1]
                conn.execute(
                    update(jobs)
                    .where(jobs.c.pk == pk)
                    .values(status=JobStatus.queued.value, step=stored, last_loss=last)
                )
                row = _job_by_pk(conn, pk)
                assert row is not None
                rows.append(row)
            return rows

        return self._writer.submit(op).result()

    # -- checkpoints ------------------------------------------------------------------------
    def add_checkpoint(
        self, row: CheckpointRow, keep: int, final_step: int, after: AfterCommit | None = None
    ) -> Future[list[int]]:
        """List a written checkpoint and drop the job's older ones beyond the newest `keep`
        (the final one, after `final_step` steps, stays); resolves with the steps dropped."""

        def op(conn: Connection) -> list[int]:
            mine = checkpoints.c.job_pk == row.job_pk
            conn.execute(delete(checkpoints).where(mine, checkpoints.c.step == row.step))
            conn.execute(insert(checkpoints).values(**vars(row)))
            steps = conn.execute(
                select(checkpoints.c.step).where(mine).order_by(checkpoints.c.step.desc())
            ).scalars()
            dropped = [step for step in steps if step != final_step][keep:]
            if dropped:
                conn.execute(delete(checkpoints).where(mine, checkpoints.c.step.in_(dropped)))
            return dropped

        return self._writer.submit(op, after)

    def list_checkpoints(self, job_pk: int) -> list[CheckpointRow]:
        """A job's checkpoints, in step order."""
        stmt = (
            select(checkpoints).where(checkpoints.c.job_pk == job_pk).order_by(checkpoints.c.step)
        )
        with self.engine.connect() as conn:
            return [CheckpointRow(**r) for r in conn.execute(stmt).mappings()]

    def get_checkpoint(self, job_pk: int, step: int) -> CheckpointRow | None:
        stmt = select(checkpoints).where(checkpoints.c.job_pk == job_pk, checkpoints.c.step == step)
        with self.engine.connect() as conn:
            found = conn.execute(stmt).mappings().first()
            return CheckpointRow(**found) if found else None

    def latest_checkpoint(self, job_pk: int, at_most: int | None = None) -> CheckpointRow | None:
        """The job's newest checkpoint (of a step <= `at_most`), or None."""
        stmt = select(checkpoints).where(checkpoints.c.job_pk == job_pk)
        if at_most is not None:
            stmt = stmt.where(checkpoints.c.step <= at_most)
        stmt = stmt.order_by(checkpoints.c.step.desc()).limit(1)
        with self.engine.connect() as conn:
            found = conn.execute(stmt).mappings().first()
            return CheckpointRow(**found) if found else None

    def insert_fork(
        self,
        values: dict[str, Any],
        parent_pk: int,
        start: CheckpointRow,
        claim: Claim | None = None,
    ) -> Future[JobRow | Claimed]:
        """Store a fork that starts from `start` (a checkpoint of the parent, already copied to
        the fork's folder): its losses of steps before start.step are the parent's, its own
        checkpoint list begins with that one."""

        def op(conn: Connection) -> JobRow | Claimed:
            if claim is not None and (earlier := idempotency.take(conn, claim, values["id"])):
                return earlier
            step = start.step
            pk = conn.execute(_INSERT_JOB, {**values, "step": 0}).inserted_primary_key[0]  # type: ignore[index]
            chunks = conn.execute(
                select(loss_chunks.c.first_step, loss_chunks.c.end_step, loss_chunks.c.losses)
                .where(loss_chunks.c.job_pk == parent_pk, loss_chunks.c.first_step < step)
                .order_by(loss_chunks.c.first_step)
            ).all()
            copied = []
            for first, end, blob in chunks:
                if end > step:  # the chunk that holds step: only the steps before it
                    end, blob = step, pack(unpack(blob, 0, step - first))
                copied.append({"job_pk": pk, "first_step": first, "end_step": end, "losses": blob})
            if copied:
                conn.execute(insert(loss_chunks), copied)
            stored = contiguous_prefix([(c["first_step"], c["end_step"]) for c in copied])
            last = unpack(copied[-1]["losses"])[-1] if copied and stored == step else None
            conn.execute(update(jobs).where(jobs.c.pk == pk).values(step=stored, last_loss=last))
            conn.execute(insert(checkpoints).values(**{**vars(start), "job_pk": pk}))
            row = _job_by_pk(conn, pk)
            assert row is not None
            return row

        return self._writer.submit_tentative(op)

    # -- reads (any thread) -----------------------------------------------------------------
    def deliveries(
        self, *, job_id: str | None = None, sweep_id: str | None = None
    ) -> list[WebhookDelivery]:
        """A job's or a sweep's webhook deliveries, oldest first."""
        with self.engine.connect() as conn:
            return webhooks.listed(conn, job_id=job_id, sweep_id=sweep_id)

    def oldest_pending_delivery(self) -> str | None:
        with self.engine.connect() as conn:
            return webhooks.oldest_pending(conn)

    def get_job(self, job_id: str) -> JobRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(_JOB_BY_ID, {"id_": job_id}).mappings().first()
            return JobRow.from_mapping(row) if row else None

    def list_jobs(
        self,
        limit: int,
        before_pk: int | None = None,
        statuses: list[str] | None = None,
        variants: list[str] | None = None,
        sweep_ids: list[str] | None = None,
        *,
        labels: list[str] | None = None,
        id_prefix: str | None = None,
    ) -> list[JobRow]:
        """Jobs newest first, at most `limit`, older than `before_pk` when given."""
        stmt = select(jobs).order_by(jobs.c.pk.desc()).limit(limit)
        if before_pk is not None:
            stmt = stmt.where(jobs.c.pk < before_pk)
        if statuses:
            stmt = stmt.where(jobs.c.status.in_(statuses))
        if variants:
            stmt = stmt.where(jobs.c.variant.in_(variants))
        if sweep_ids:
            stmt = stmt.where(jobs.c.sweep_id.in_(sweep_ids))
        if labels:
            stmt = stmt.where(jobs.c.label.in_(labels))
        if id_prefix:
            stmt = stmt.where(jobs.c.id.startswith(id_prefix, autoescape=True))
        with self.engine.connect() as conn:
            return [JobRow.from_mapping(r) for r in conn.execute(stmt).mappings()]

    def read_losses(
        self, job_pk: int, after: int, limit: int
    ) -> tuple[list[int], list[float | None]]:
        """Up to `limit` (step, loss) pairs with step > after, in step order."""
        steps: list[int] = []
        values: list[float | None] = []
        start = after + 1  # the first step still wanted
        with self.engine.connect() as conn:
            while len(values) < limit:
                # the chunks that hold `start` and later steps, a few at a time (a chunk holds
                # one or more steps: a page of 1,000 steps is usually in a handful)
                stmt = (
                    select(loss_chunks.c.first_step, loss_chunks.c.end_step, loss_chunks.c.losses)
                    .where(loss_chunks.c.job_pk == job_pk, loss_chunks.c.end_step > start)
                    .order_by(loss_chunks.c.end_step)
                    .limit(CHUNKS_PER_READ)
                )
                rows = conn.execute(stmt).all()
                for first, end, blob in rows:
                    skip = max(0, start - first)
                    count = min(end - first - skip, limit - len(values))
                    values += unpack(blob, skip, count)
                    steps += range(first + skip, first + skip + count)
                    start = first + skip + count
                    if len(values) == limit:
                        break
                if len(rows) < CHUNKS_PER_READ:
                    break
        return steps, values

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


# The statements of every job's path, built once: building one and computing its cache key
# took more than running it (a status change: 370 -> 135 us with SQLite).
_INSERT_JOB = insert(jobs)
_JOB_BY_ID = select(jobs).where(jobs.c.id == bindparam("id_"))
_JOB_BY_PK = select(jobs).where(jobs.c.pk == bindparam("pk_"))


def _job_by_pk(conn: Connection, pk: int) -> JobRow | None:
    row = conn.execute(_JOB_BY_PK, {"pk_": pk}).mappings().first()
    return JobRow.from_mapping(row) if row else None


@functools.cache
def _update_statement(names: tuple[str, ...], only_if_not_final: bool, bump_attempts: bool) -> Any:
    """UPDATE jobs SET each of `names` = :new_<name> WHERE pk = :pk_ (and the job is not final);
    one per kind of change, built once."""
    stmt = (
        update(jobs)
        .where(jobs.c.pk == bindparam("pk_"))
        .values({name: bindparam(f"new_{name}", type_=jobs.c[name].type) for name in names})
    )
    if bump_attempts:
        stmt = stmt.values(attempts=jobs.c.attempts + 1)
    if only_if_not_final:
        stmt = stmt.where(jobs.c.status.not_in(_FINAL))
    return stmt
