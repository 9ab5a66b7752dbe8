"""Run the service benchmarks: `python -m bench [--quick] [NAME ...]` (what `make bench` runs).

Each benchmark starts its own `trainwire serve` on 127.0.0.1 (a fresh SQLite file in a temporary
folder), measures its baseline in the same run, prints a table and the command that reproduces
it, and stops its server by PID. At the end: every figure with its baseline and target.
`--quick` is a smoke run with small counts; its numbers are not the benchmark's.
See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from types import ModuleType

from bench import (
    fanout,
    first_loss,
    interference,
    loop_stall,
    memory,
    overhead,
    ray_cluster,
    small_jobs,
    submit_rate,
    sweeps,
)
from bench.common import (
    Figure,
    exit_on_sigterm,
    machine_line,
    print_figures,
    raise_open_file_limit,
    steal_seconds,
)

BENCHMARKS: dict[str, ModuleType] = {
    m.NAME: m
    for m in (
        overhead,
        interference,
        first_loss,
        fanout,
        submit_rate,
        small_jobs,
        memory,
        sweeps,
        loop_stall,
        ray_cluster,
    )
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="trainwire's service benchmarks (docs/benchmarks.md)"
    )
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (small counts)")
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}",
    )
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(
            f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}"
        )
    names = args.names or list(BENCHMARKS)

    exit_on_sigterm()
    raise_open_file_limit()
    began = time.perf_counter()
    print(f"# trainwire benchmarks{' (quick: smoke counts, not results)' if args.quick else ''}\n")
    print(f"machine: {machine_line()}\n")
    figures: list[Figure] = []
    failed: list[str] = []
    for name in names:
        started, stolen_before = time.perf_counter(), steal_seconds()
        try:
            figures += BENCHMARKS[name].run(args.quick)
        except Exception:
            traceback.print_exc()
            print(f"\n{name}: FAILED\n")
            failed.append(name)
        took, stolen = time.perf_counter() - started, steal_seconds() - stolen_before
        share = stolen / took / (os.cpu_count() or 1)
        print(f"({name}: {took:.0f} s; CPU stolen by the hypervisor meanwhile: {share:.1%})\n")
        sys.stdout.flush()

    print("## summary\n")
    print_figures(figures)
    elapsed = time.perf_counter() - began
    print(f"total {elapsed:.0f} s" + (f"; failed to run: {', '.join(failed)}" if failed else ""))
    quick = " --quick" if args.quick else ""
    print(f"reproduce: .venv/bin/python -m bench{quick} {' '.join(args.names)}".rstrip())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
