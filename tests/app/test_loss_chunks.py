"""Losses stored in chunks (a row per batch of steps): every read gives what a row per step gave.

A real store on a SQLite file: batches of uneven sizes, losses that were not finite, a gap, the
recovery cut, and the migration of a store that kept one row per step. (On PostgreSQL the API
tests under `make pytest-postgres` store and read every curve through the same code.)
"""

from __future__ import annotations

import math
import random
import sqlite3
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text

from app.store import JobRow, Store
from app.store.chunks import contiguous_prefix, pack, unpack
from app.store.store import _MIGRATIONS, make_engine

# uneven batches: a first step alone (the worker sends it at once), a 512-step one,
# single steps, a long one
BATCHES = [1, 7, 512, 1, 1, 300, 2048, 3, 130]
STEPS = sum(BATCHES)


def curve(n: int, seed: int = 7) -> list[float | None]:
    """Losses of every magnitude, with a few that were not finite (None, as the consumer
    hands them over)."""
    draw = random.Random(seed)
    values: list[float | None] = [
        draw.uniform(-1, 1) * 10 ** draw.randint(-300, 300) for _ in range(n)
    ]
    for step in (0, 5, 600, n - 1):
        values[step] = None
    values[9] = 5e-324  # the smallest subnormal
    values[10] = -0.0
    return values


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'trainwire.db'}")
    try:
        yield s
    finally:
        s.close()


def new_job(store: Store, steps: int = STEPS) -> JobRow:
    return store.insert_job(
        {
            "id": f"{random.getrandbits(64):016x}",
            "variant": "numpy",
            "label": None,
            "hyperparameters": {},
            "seed": 1,
            "device": "cpu",
            "status": "running",
            "step": 0,
            "steps": steps,
            "created_at": "2026-11-30T00:00:00.000Z",
            "attempts": 1,
            "environment": None,
        }
    ).result()


def store_in_batches(store: Store, pk: int, values: list[float | None], first: int = 0) -> None:
    at = 0
    for size in BATCHES:
        if at >= len(values):
            break
        store.append_losses(pk, first + at, values[at : at + size]).result()
        at += size


def bits(values: list[float | None]) -> bytes:
    """The values' IEEE bits (None as a NaN): equal bits, equal floats (-0.0 is not 0.0)."""
    return struct.pack(f"<{len(values)}d", *(math.nan if v is None else v for v in values))


def same(a: list[float | None], b: list[float | None]) -> bool:
    """The same losses, bit for bit, None where the other has None."""
    return bits(a) == bits(b) and [v is None for v in a] == [v is None for v in b]


def test_packing_keeps_every_float_bit_for_bit() -> None:
    values = curve(1000)
    assert same(unpack(pack(values)), values)
    assert same(unpack(pack(values), skip=600, count=5), values[600:605])
    # the consumer hands over None for what was not finite; NaN is how a chunk holds it
    assert unpack(pack([None, 1.5, math.nan])) == [None, 1.5, None]
    assert len(pack(values)) == 8 * len(values)


def test_any_page_of_a_curve_stored_in_uneven_batches_reads_as_the_curve(store: Store) -> None:
    values = curve(STEPS)
    job = new_job(store)
    store_in_batches(store, job.pk, values)
    stored = store.get_job(job.id)
    assert stored is not None and stored.step == STEPS
    assert stored.last_loss is None  # the last step's loss was not finite
    for after in (-1, 0, 1, 7, 8, 9, 519, 520, 521, 1000, 2900, STEPS - 2, STEPS - 1, STEPS + 5):
        for limit in (1, 2, 511, 1000, 10_000):
            steps, got = store.read_losses(job.pk, after, limit)
            want = list(range(after + 1, min(STEPS, after + 1 + limit)))
            assert steps == want, (after, limit)
            assert same(got, values[after + 1 : after + 1 + limit]), (after, limit)
    pages = list(store.iter_losses(job.pk, after=3, chunk=333))
    assert [s for steps, _ in pages for s in steps] == list(range(4, STEPS))
    assert same([v for _, page in pages for v in page], values[4:])


def test_a_page_past_a_gap_counts_the_steps_it_holds(store: Store) -> None:
    job = new_job(store)
    store.append_losses(job.pk, 0, [1.0, 2.0, 3.0]).result()
    store.append_losses(job.pk, 10, [4.0, 5.0]).result()  # steps 3..9 missing
    assert store.read_losses(job.pk, -1, 4) == ([0, 1, 2, 10], [1.0, 2.0, 3.0, 4.0])
    assert store.read_losses(job.pk, 2, 10) == ([10, 11], [4.0, 5.0])


def test_recovery_keeps_the_gap_free_prefix_and_its_last_loss(store: Store) -> None:
    values = curve(STEPS)
    cut = new_job(store)
    store_in_batches(store, cut.pk, values)
    whole = new_job(store)
    store.append_losses(whole.pk, 0, [1.0, 2.0]).result()
    empty = new_job(store)
    # a chunk lost in the middle of `cut`'s: BATCHES' fourth holds step 520
    with store.engine.begin() as conn:
        deleted = conn.execute(
            text("DELETE FROM loss_chunks WHERE job_pk = :pk AND first_step = 520"), {"pk": cut.pk}
        )
        assert deleted.rowcount == 1

    rows = {row.id: row for row in store.requeue_unfinished()}
    assert (rows[cut.id].step, rows[cut.id].status.value) == (520, "queued")
    assert rows[cut.id].last_loss == values[519]
    assert store.read_losses(cut.pk, -1, 10_000)[0] == list(range(520))  # the rest is gone
    assert (rows[whole.id].step, rows[whole.id].last_loss) == (2, 2.0)
    assert (rows[empty.id].step, rows[empty.id].last_loss) == (0, None)
    # the rerun's losses go on from the cut
    store.append_losses(cut.pk, 520, values[520:]).result()
    steps, got = store.read_losses(cut.pk, -1, 10_000)
    assert steps == list(range(STEPS)) and same(got, values)


def test_deleting_a_job_deletes_its_chunks(store: Store) -> None:
    job = new_job(store)
    store_in_batches(store, job.pk, curve(STEPS))
    store.update_job(job.pk, status="succeeded").result()
    assert store.delete_job(job.pk).result() is True
    assert store.read_losses(job.pk, -1, 10) == ([], [])


def test_contiguous_prefix() -> None:
    assert contiguous_prefix([]) == 0
    assert contiguous_prefix([(0, 1), (1, 8), (8, 9)]) == 9
    assert contiguous_prefix([(0, 1), (2, 8)]) == 1
    assert contiguous_prefix([(1, 8)]) == 0


def _alembic(url: str) -> tuple[Config, Engine]:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return config, make_engine(url)


def test_a_store_with_a_row_per_step_is_migrated_to_chunks_and_back(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    url = f"sqlite:///{path}"
    config, engine = _alembic(url)
    long = curve(9000, seed=3)  # more than one chunk of 4,096 steps
    long[10] = 0.0  # a REAL column of SQLite gives -0.0 back as 0.0: chunks keep its sign
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0002_sweeps")
        for pk, count in ((1, 9000), (2, 30)):
            conn.execute(
                text(
                    "INSERT INTO jobs (pk, id, variant, hyperparameters, seed, device, status, "
                    "step, steps, created_at, attempts) VALUES (:pk, :id, 'numpy', '{}', 1, "
                    "'cpu', 'running', :step, :step, '2026-01-01T00:00:00Z', 1)"
                ),
                {"pk": pk, "id": f"{pk:016x}", "step": count},
            )
        conn.execute(
            text("INSERT INTO losses (job_pk, step, loss) VALUES (:pk, :step, :loss)"),
            [{"pk": 1, "step": s, "loss": v} for s, v in enumerate(long)]
            # job 2: steps 0-9 and 20-29, a gap between
            + [{"pk": 2, "step": s, "loss": float(s)} for s in (*range(10), *range(20, 30))],
        )
    engine.dispose()

    store = Store(url)  # migrates to the newest revision
    try:
        steps, got = store.read_losses(1, -1, 20_000)
        assert steps == list(range(9000)) and same(got, long)
        assert store.read_losses(2, -1, 100) == (
            [*range(10), *range(20, 30)],
            [float(s) for s in (*range(10), *range(20, 30))],
        )
        rows = {row.pk: row for row in store.requeue_unfinished()}
        assert rows[1].step == 9000 and rows[2].step == 10  # the gap is cut as before
    finally:
        store.close()
    chunks = sqlite3.connect(path).execute("SELECT COUNT(*) FROM loss_chunks").fetchone()[0]
    assert chunks == 4  # 4096 + 4096 + 808 steps, and job 2's first ten

    config, engine = _alembic(url)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0002_sweeps")
    engine.dispose()
    old = sqlite3.connect(path)
    back = old.execute("SELECT step, loss FROM losses WHERE job_pk = 1 ORDER BY step").fetchall()
    assert [s for s, _ in back] == list(range(9000)) and same([v for _, v in back], long)
    assert old.execute("SELECT COUNT(*) FROM losses WHERE job_pk = 2").fetchone()[0] == 10
