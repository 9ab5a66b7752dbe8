"""Twenty jobs submitted at once: every one completes with all its losses, and a run is a pure
function of (variant, hyperparameters, seed, threads) even when others run beside it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from jobclient import all_losses
from servers import Server, submit, wait_final

from workers.variants import VARIANTS as VARIANT_CATALOGUE

VARIANTS = list(VARIANT_CATALOGUE)


def test_twenty_jobs_at_once_all_succeed_and_equal_specs_give_identical_losses(
    shared_server: Server,
) -> None:
    # the twins pin their thread count: the others get theirs from the cores free when they start
    twin_dynamic = {
        "variant": "dynamic",
        "seed": 99,
        "hp": {"steps": 60, "hidden": 40},
        "threads": 1,
    }
    twin_optim = {"variant": "optim", "seed": 7, "hp": {"steps": 45}, "threads": 1}
    other_seed = {**twin_dynamic, "seed": 100}
    specs: list[dict[str, Any]] = [twin_dynamic, twin_optim, other_seed]
    specs += [{"variant": VARIANTS[i % 8], "hp": {"steps": 30 + i}} for i in range(15)]
    specs += [twin_dynamic, twin_optim]
    assert len(specs) == 20

    with shared_server.client() as client, ThreadPoolExecutor(max_workers=20) as pool:
        created = list(pool.map(lambda spec: submit(client, **spec), specs))
        assert len({job["id"] for job in created}) == 20
        finished = list(pool.map(lambda job: wait_final(client, job["id"], timeout=110), created))
        losses = [all_losses(client, job["id"]) for job in finished]

    for spec, job, (steps, values) in zip(specs, finished, losses, strict=True):
        assert job["status"] == "succeeded", job
        assert job["variant"] == spec["variant"]
        assert job["step"] == job["steps"] == spec["hp"]["steps"]
        assert steps == list(range(job["steps"])), (job["id"], len(steps))
        assert job["last_loss"] == values[-1]

    def bits(i: int) -> list[str]:
        return [float(x).hex() for x in losses[i][1]]

    assert bits(0) == bits(18), "same dynamic spec and seed, different losses"
    assert bits(1) == bits(19), "same optim spec and seed, different losses"
    assert finished[0]["seed"] == finished[18]["seed"] == 99
    assert {finished[i]["environment"]["threads"] for i in (0, 1, 18, 19)} == {1}
    assert bits(0) != bits(2), "another seed gave the very same losses: is the seed used?"
