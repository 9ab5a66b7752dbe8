"""Run one job in this process and print how much its resident memory grew at the peak, as JSON.

    python tests/workers/peak_memory.py VARIANT SEED '{"batch_size": ..., ...}'

Run as a process of its own by test_memory.py: a process that has imported torch and run a tiny
job of the variant is the baseline; the peak is the kernel's high-water mark of the resident set
(VmHWM in /proc/self/status) while the job runs. One torch thread and one BLAS thread, as a
worker with cpu_threads=1 runs.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

from workers.runner import JobSpec, run_job
from workers.variants import VARIANTS

STATUS = Path("/proc/self/status")


def status_bytes(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB$", STATUS.read_text(), re.MULTILINE)
    assert match is not None, field
    return int(match.group(1)) * 1024


def reset_peak() -> bool:
    """Make VmHWM the current resident set (Linux 4.0+), if this kernel lets us."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def main(variant: str, seed: int, hyperparameters: dict[str, object]) -> None:
    torch.set_num_threads(1)
    threadpool_limits(limits=1, user_api="blas")
    model = VARIANTS[variant].hyperparameters
    dtype = hyperparameters.get("dtype", model().dtype)
    tiny = model(batch_size=2, d_in=2, hidden=2, d_out=1, steps=2, dtype=dtype)
    run_job(JobSpec(variant, tiny, 0), lambda first, losses: None)

    reset = reset_peak()
    # without a reset, the growth is measured from the resident set now, under the old peak:
    # never less than the job's own growth
    baseline = status_bytes("VmRSS")
    outcome = run_job(
        JobSpec(variant, model.model_validate(hyperparameters), seed),
        lambda first, losses: None,
    )
    print(
        json.dumps(
            {
                "status": outcome.status,
                "error": outcome.error_message,
                "steps": outcome.steps_done,
                "growth": status_bytes("VmHWM") - baseline,
                "reset": reset,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]))
