"""A store made before sweeps existed opens with every job kept, and takes sweeps."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from app.store import Store
from app.store.store import _MIGRATIONS, make_engine
from app.store.sweeps import SweepStore


def test_a_store_of_the_first_schema_is_upgraded_in_place(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
        conn.execute(
            text(
                "INSERT INTO jobs (id, variant, hyperparameters, seed, device, status, step, "
                "steps, created_at, attempts) VALUES ('00000000000000aa', 'numpy', '{}', 1, "
                "'cpu', 'succeeded', 0, 5, '2026-01-01T00:00:00Z', 1)"
            )
        )
    engine.dispose()

    store = Store(url)
    try:
        job = store.get_job("00000000000000aa")
        assert job is not None and job.sweep_id is None and job.to_job().sweep_id is None
        assert SweepStore(store).get_sweep("00000000000000bb") is None
        assert store.list_jobs(10, sweep_ids=["00000000000000bb"]) == []
    finally:
        store.close()
