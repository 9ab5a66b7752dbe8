"""A job that cannot get its memory fails alone: out_of_memory, and the worker goes on.

The server's memory budget is raised far above any machine's memory, so that the requests pass
the budget check and then really fail to allocate: ~300 GiB matrices. The server runs with its
address space capped (RLIMIT_AS, which its worker processes inherit) far below that and far above
what it needs, so the allocations are refused at once whatever the host's overcommit policy
(with `vm.overcommit_memory=1` the kernel would grant them, and the OOM killer would end the
worker while the pages were filled). Two ways to fail are covered: numpy's MemoryError while the
problem is drawn, and torch's CPU allocator (a RuntimeError) in the first forward pass. One
worker runs every job in turn, so the jobs after the faults run on the worker that met them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from servers import Server, submit, wait_final

# a server with torch loaded maps ~1 GiB (more with CUDA's libraries): 64 GiB is room to spare,
# and a fifth of one 298 GiB matrix
ADDRESS_SPACE = 64 << 30
NORMAL = {"batch_size": 16, "d_in": 64, "hidden": 16, "d_out": 4, "steps": 300}
FAULTS = {
    # numpy: w1 (D_in, H) of 200000 x 200000 float64 = 298 GiB, drawn before the first step
    "numpy": {"d_in": 200_000, "hidden": 200_000, "dtype": "float64", "steps": 5},
    # torch: x (N, 1) and w1 (1, H) are small; x.mm(w1) is (N, H) = 298 GiB
    "tensors": {
        "batch_size": 200_000,
        "d_in": 1,
        "hidden": 200_000,
        "d_out": 1,
        "dtype": "float64",
        "steps": 5,
    },
}


def losses(client: Any, job_id: str) -> list[float | None]:
    return list(client.get(f"/v1/jobs/{job_id}/losses").json()["losses"])


def test_out_of_memory_fails_that_job_only_and_the_worker_goes_on(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(
        TRAINWIRE_CPU_WORKERS="1",
        TRAINWIRE_MAX_JOB_BYTES=str(10**15),
        CUDA_VISIBLE_DEVICES="",  # a CPU-only server: a CUDA context maps far more than 64 GiB
        address_space=ADDRESS_SPACE,
    )
    with server.client() as client:
        before = submit(client, "tensors", hp=NORMAL, seed=11, device="cpu")
        faults = [
            submit(client, variant, hp=hp, seed=12, device="cpu") for variant, hp in FAULTS.items()
        ]
        after = submit(client, "tensors", hp=NORMAL, seed=11, device="cpu")

        for fault in faults:
            job = wait_final(client, fault["id"], timeout=90)
            assert job["status"] == "failed", job
            assert job["error"]["code"] == "out_of_memory", job["error"]
            assert "allocate" in job["error"]["message"]
            assert job["step"] == 0

        first, last = (wait_final(client, j["id"], timeout=90) for j in (before, after))
        assert first["status"] == last["status"] == "succeeded"
        assert last["step"] == NORMAL["steps"]
        # the worker that met the faults still computes the same curve, bit for bit
        assert losses(client, after["id"]) == losses(client, before["id"])
        assert len(losses(client, after["id"])) == NORMAL["steps"]

        assert client.get("/readyz").status_code == 200
    assert "Traceback" not in server.log(), server.log()
