"""A rerun after a kill recomputes the steps already stored and compares them: equal on the
same machine (no alarm), and said in the log and trainwire_rerun_mismatches_total when a stored
step differs from what the rerun computes (here: a stored loss changed while the server was
down, as another GPU or driver would change the recomputed one)."""

from __future__ import annotations

from collections.abc import Callable

from servers import Server, submit, wait_for

from app.store.chunks import pack, unpack

CURVE = {"batch_size": 16, "d_in": 64, "hidden": 16, "d_out": 4, "steps": 1_000_000}


def _mismatches(server: Server, variant: str) -> float:
    with server.client() as client:
        text = client.get("/metrics").text
    prefix = f'trainwire_rerun_mismatches_total{{variant="{variant}"}} '
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_a_rerun_that_recomputes_other_losses_than_stored_says_so(
    make_server: Callable[..., Server],
) -> None:
    first = make_server(TRAINWIRE_CPU_WORKERS="2", TRAINWIRE_THREADS_PER_CPU_JOB="1")
    with first.client() as client:
        same = submit(client, "autograd", hp=CURVE, seed=1, device="cpu")["id"]
        changed = submit(client, "tensors", hp=CURVE, seed=2, device="cpu")["id"]

        def both_under_way() -> bool:
            jobs = [client.get(f"/v1/jobs/{i}").json() for i in (same, changed)]
            return all(job["step"] >= 200 for job in jobs)

        wait_for(both_under_way, timeout=60, interval=0.02)
    first.kill()
    # the first chunk of one job (step 0 alone: the first loss goes out at once) now differs
    pk = first.query("SELECT pk FROM jobs WHERE id = :id", id=changed)[0][0]
    step0, blob = first.query(
        "SELECT first_step, losses FROM loss_chunks WHERE job_pk = :pk ORDER BY first_step",
        pk=pk,
    )[0]
    values = unpack(blob)
    assert step0 == 0 and values
    values[0] = (values[0] or 0.0) * 2 + 1
    first.execute(
        "UPDATE loss_chunks SET losses = :blob WHERE job_pk = :pk AND first_step = 0",
        blob=pack(values),
        pk=pk,
    )

    stored = {i: first.stored_steps(i)[0] for i in (same, changed)}
    second = make_server(
        data_dir=first.data_dir, TRAINWIRE_CPU_WORKERS="2", TRAINWIRE_THREADS_PER_CPU_JOB="1"
    )
    with second.client() as client:

        def both_past_what_was_stored() -> bool:
            jobs = {i: client.get(f"/v1/jobs/{i}").json() for i in (same, changed)}
            return all(job["attempts"] == 2 and job["step"] > stored[i] for i, job in jobs.items())

        wait_for(both_past_what_was_stored, timeout=120, interval=0.05)
        assert _mismatches(second, "tensors") == 1
        assert _mismatches(second, "autograd") == 0  # recomputed bit for bit: no alarm
        assert f"job {changed}: its rerun computed" in second.log()
        assert f"job {same}: its rerun computed" not in second.log()
        for i in (same, changed):
            assert client.post(f"/v1/jobs/{i}/cancel").status_code == 202
