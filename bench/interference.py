"""interference: what other work on the host costs a lone job that holds every core.

Why the `overhead` pair with default threads is hard on a small host: the job's torch threads
meet at a barrier in every parallel region, so when anything else takes a core for a moment (the
server storing and streaming losses, a reader), the whole job waits, not one thread. This
benchmark measures that without trainwire: the plain loop of `overhead` (torch's default threads)
runs 3,000 `tensors` steps alone, then beside a burner process that spins `busy` ms every
`period` ms (a fixed share of one core, in bursts like a server's batches), and reports the
slowdown against that share.

Each setting: fresh plain processes, a warm-up run, then a run alone and a run with the burner,
in that order, in the same process; the slowdown is the median of the paired ratios.
Reproduce: `.venv/bin/python -m bench interference` (`--quick`: fewer runs).
"""

from __future__ import annotations

import subprocess
import sys
import time

from bench.common import Figure, median, print_table, reproduce, standalone
from bench.overhead import PlainWorker

NAME = "interference"
VARIANT = "tensors"
STEPS = 3000
# (busy ms, period ms): 2.5 % and 5 % of one core in bursts of a server's size, 10 % in two sizes
SETTINGS = ((0.5, 20.0), (2.5, 100.0), (2.5, 50.0), (2.0, 20.0), (10.0, 100.0))

BURNER = """
import sys, time
busy, period = float(sys.argv[1]) / 1000, float(sys.argv[2]) / 1000
end = time.monotonic() + 60
while time.monotonic() < end:
    began = time.perf_counter()
    while time.perf_counter() - began < busy:
        pass
    time.sleep(max(0.0, period - busy))
"""


def paired(busy: float, period: float) -> tuple[float, float]:
    """(wall alone, wall beside the burner) of one fresh plain process, in seconds."""
    worker = PlainWorker(None)
    try:
        worker.run(VARIANT, 20)
        worker.run(VARIANT, STEPS)  # the first long run of a process is the slowest: not counted
        alone = float(worker.run(VARIANT, STEPS)["wall"])
        burner = subprocess.Popen([sys.executable, "-c", BURNER, str(busy), str(period)])
        try:
            time.sleep(0.05)
            beside = float(worker.run(VARIANT, STEPS)["wall"])
        finally:
            burner.kill()
            burner.wait()
        return alone, beside
    finally:
        worker.stop()


def run(quick: bool) -> list[Figure]:
    reps = 2 if quick else 5
    print(
        f"## interference: a lone {STEPS}-step `{VARIANT}` job on torch's default threads, alone "
        f"and beside a burner that takes a share of one core, {reps} fresh processes each\n"
    )
    rows, figures = [], []
    for busy, period in SETTINGS:
        pairs = [paired(busy, period) for _ in range(reps)]
        slowdown = median([beside / alone for alone, beside in pairs])
        share = busy / period
        rows.append(
            (
                f"{busy:g} ms every {period:g} ms",
                f"{100 * share:.1f} %",
                f"{1000 * median([a for a, _ in pairs]):.1f} ms",
                f"{1000 * median([b for _, b in pairs]):.1f} ms",
                f"{slowdown:.3f}",
                f"{(slowdown - 1) / share:.2f}",
            )
        )
        figures.append(
            Figure(
                NAME,
                f"slowdown beside {100 * share:.1f} % of a core ({busy:g}/{period:g} ms)",
                f"{slowdown:.3f}",
                "the job alone",
                "-",
                None,
            )
        )
    print_table(
        [
            "burner",
            "share of one core",
            "job alone (median)",
            "job beside it (median)",
            "slowdown (median of pairs)",
            "slowdown per share",
        ],
        rows,
    )
    reproduce(NAME, quick)
    return figures


if __name__ == "__main__":
    sys.exit(standalone(NAME, run))
