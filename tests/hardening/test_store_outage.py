"""A store that cannot write for a while: a full disk (SQLite on a small tmpfs that the test then
grows), or a PostgreSQL server that goes away and comes back (the throwaway cluster of
`make pytest-postgres`, stopped and started again).

Nothing may be lost or papered over: while the store cannot write, training pauses, /readyz
answers 503, new jobs get a 503 JSON answer with Retry-After, and the log says so once; when it
can write again the service goes on by itself and every job ends with its whole curve, each
step stored once, contiguous from step 0.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from servers import POSTGRES, Server, submit, wait_final, wait_for

# small problems: each job makes thousands of steps a second, so the store fills up fast
FAST = {"batch_size": 4, "d_in": 8, "hidden": 4, "d_out": 2}
STEPS = 150_000
# a fresh store and a few thousand steps fit; 150,000 steps of 3 jobs (~3.6 MB of chunks) don't
DISK_BYTES = 2 << 20

Outage = Callable[[], None]
POSTGRES_CTL = os.environ.get("TRAINWIRE_TEST_POSTGRES_CTL")  # set by tests/with_postgres.sh


@contextmanager
def small_disk(where: Path) -> Iterator[Callable[[int], None]]:
    """A tmpfs of DISK_BYTES at `where`; yields a function that resizes it."""
    where.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(where)],
            check=True,
            capture_output=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"this test mounts a tmpfs (root, as `make test` runs in CI): {exc}")

    def resize(size: int) -> None:
        subprocess.run(
            ["mount", "-o", f"remount,size={size}", str(where)], check=True, capture_output=True
        )

    try:
        yield resize
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@contextmanager
def outage(
    tmp_path: Path,
) -> Iterator[tuple[dict[str, str], Callable[[], None], Callable[[], None]]]:
    """(server settings, cause the outage, end it) for this run's store."""
    if POSTGRES is None:
        with small_disk(tmp_path / "disk") as resize:
            database = f"sqlite:///{tmp_path / 'disk' / 'trainwire.db'}"
            # the disk fills by itself: the outage begins as the jobs run
            yield {"TRAINWIRE_DATABASE_URL": database}, lambda: None, lambda: resize(256 << 20)
        return
    if POSTGRES_CTL is None:
        pytest.fail("TRAINWIRE_TEST_POSTGRES_CTL is not set: run under tests/with_postgres.sh")
    try:
        yield (
            {},
            lambda: subprocess.run([POSTGRES_CTL, "stop"], check=True),
            lambda: subprocess.run([POSTGRES_CTL, "start"], check=True),
        )
    finally:
        subprocess.run([POSTGRES_CTL, "start"], check=False)  # never leave the cluster down


def readiness(client: httpx.Client) -> int:
    try:
        return client.get("/readyz", timeout=5).status_code
    except httpx.HTTPError:
        return 0


@pytest.mark.slow
def test_jobs_pause_while_the_store_cannot_write_and_finish_whole_after(
    make_server: Callable[..., Server], tmp_path: Path
) -> None:
    with outage(tmp_path) as (settings, begin, end):
        server = make_server(TRAINWIRE_CPU_WORKERS="2", **settings)
        with server.client() as client:
            jobs = [
                submit(client, variant, hp={**FAST, "steps": STEPS}, seed=i)
                for i, variant in enumerate(["numpy", "tensors", "nn"])
            ]
            wait_for(lambda: client.get(f"/v1/jobs/{jobs[0]['id']}").json()["step"] > 0)
            begin()

            # the store cannot write: not ready, no new jobs, the log says why once
            wait_for(lambda: readiness(client) == 503, timeout=120)
            refused = client.post("/v1/jobs", json={"variant": "numpy"})
            assert refused.status_code == 503, refused.text
            assert "store cannot write" in refused.json()["detail"]
            assert int(refused.headers["Retry-After"]) >= 1
            for job in jobs:  # still readable, and not over
                got = client.get(f"/v1/jobs/{job['id']}")
                if got.status_code == 200:  # PostgreSQL down: reads fail too (503)
                    assert got.json()["status"] in ("queued", "running")
                else:
                    assert got.status_code == 503 and "Retry-After" in got.headers

            end()
            wait_for(lambda: readiness(client) == 200, timeout=120)
            finals = [wait_final(client, job["id"], timeout=600) for job in jobs]

        assert [job["status"] for job in finals] == ["succeeded"] * 3
        assert all(job["step"] == STEPS for job in finals)
        for job in jobs:
            assert server.stored_steps(job["id"]) == (STEPS, STEPS, 0, STEPS - 1)
        # once per episode, not once per batch (a WAL checkpoint may free a little room and
        # open a short second episode on a full disk)
        log = server.log()
        episodes = log.count("job store writes again")
        assert 1 <= episodes <= 5 and log.count("job store cannot write") == episodes, log[-3000:]


@contextmanager
def store_gone(tmp_path: Path) -> Iterator[tuple[dict[str, str], Outage, Outage]]:
    """(server settings, take the store away, bring it back), with the server idle: SQLite on
    a small disk that a file of the test's fills up, or the PostgreSQL server stopped at once."""
    if POSTGRES is None:
        with small_disk(tmp_path / "disk"):
            filler = tmp_path / "disk" / "filler"

            def fill() -> None:
                with open(filler, "wb") as f:
                    try:
                        while True:
                            f.write(b"\0" * (64 << 10))
                            f.flush()
                    except OSError:  # the disk is full
                        pass

            database = f"sqlite:///{tmp_path / 'disk' / 'trainwire.db'}"
            yield {"TRAINWIRE_DATABASE_URL": database}, fill, lambda: filler.unlink()
        return
    if POSTGRES_CTL is None:
        pytest.fail("TRAINWIRE_TEST_POSTGRES_CTL is not set: run under tests/with_postgres.sh")
    try:
        yield (
            {},
            lambda: subprocess.run([POSTGRES_CTL, "stop", "immediate"], check=True),
            lambda: subprocess.run([POSTGRES_CTL, "start"], check=True),
        )
    finally:
        subprocess.run([POSTGRES_CTL, "start"], check=False)


def test_a_submit_while_the_store_is_gone_is_refused_at_once_and_never_made(
    make_server: Callable[..., Server], tmp_path: Path
) -> None:
    with store_gone(tmp_path) as (settings, begin, end):
        server = make_server(TRAINWIRE_CPU_WORKERS="1", **settings)
        # the client gives up well before an outage that lasts: a 503 must come first
        with server.client(timeout=15) as client:
            before = [j["id"] for j in client.get("/v1/jobs").json()["items"]]
            begin()
            # the first write after the store went away: refused, not held for the outage
            refused = client.post("/v1/jobs", json={"variant": "numpy", "label": "never"})
            assert refused.status_code == 503, refused.text
            assert int(refused.headers["Retry-After"]) >= 1
            if POSTGRES is not None:  # a server gone fails /readyz's read; a full disk, writes
                assert readiness(client) == 503
            sweep = client.post("/v1/sweeps", json={"variant": "numpy", "grid": {"seed": [1]}})
            assert sweep.status_code == 503, sweep.text
            end()
            wait_for(lambda: readiness(client) == 200, timeout=60)
            # what the caller was told holds: neither the job nor the sweep was made later
            after = client.get("/v1/jobs").json()["items"]
            assert [j["id"] for j in after] == before
            assert client.get("/v1/sweeps").json()["items"] == []
            made = client.post(
                "/v1/jobs", json={"variant": "numpy", "hyperparameters": {"steps": 2}}
            )
            assert made.status_code == 201, made.text
            assert wait_final(client, made.json()["id"])["status"] == "succeeded"
