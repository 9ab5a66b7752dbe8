"""`trainwire sweep`: submit a grid of runs from a terminal, and follow it to the end.

    trainwire sweep nn --grid learning_rate=1e-5,1e-4,1e-3 --grid seed=0,1 --steps 500 --watch

prints the sweep's id (the sweep with --json); with --watch it then follows the sweep (a
progress bar on a terminal) and prints its runs by final loss, lowest first: a table on a
terminal, else one tab-separated line per run (job id, the grid's values, status, final loss).
Exit status with --watch: 0 if every run succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from trainwire.hyperparameters import HYPERPARAMETERS
from trainwire.jobs import VARIANT_NAMES
from trainwire.sweeps import Sweep, SweepRun, SweepStatus

if TYPE_CHECKING:
    from trainwire.client import Client

EXIT_OK, EXIT_SWEEP_FAILED = 0, 1
_TYPES: dict[str, type] = {
    name: info.annotation  # type: ignore[misc]
    for model in HYPERPARAMETERS.values()
    for name, info in model.model_fields.items()
    if info.annotation in (int, float)
}
_TYPES["seed"] = int


def grid_option(text: str) -> tuple[str, list[Any]]:
    """FIELD=V1,V2,...: the values as the field's type where it is known (else as written: the
    server names what is wrong)."""
    field, sep, values = text.partition("=")
    if not sep or not field or not values:
        raise argparse.ArgumentTypeError(f"{text!r} is not FIELD=VALUE,VALUE,...")
    kind = _TYPES.get(field)
    parsed: list[Any] = []
    for raw in values.split(","):
        raw = raw.strip()
        try:
            parsed.append(kind(raw) if kind is not None else raw)
        except ValueError:
            parsed.append(raw)
    return field, parsed


def add_sweep_parser(
    sub: Any, connection: argparse.ArgumentParser, hyperparameter_flags: dict[str, Any]
) -> None:
    sweep = sub.add_parser(
        "sweep",
        parents=[connection],
        help="submit a grid of runs and print its id",
        description="Submit a grid of runs (every combination of the --grid values) and print "
        "its id; with --watch, follow it and print its runs by final loss, lowest first.",
    )
    sweep.add_argument("variant", metavar="VARIANT", choices=VARIANT_NAMES, help="variant")
    sweep.add_argument(
        "--grid",
        action="append",
        type=grid_option,
        required=True,
        metavar="FIELD=V1,V2",
        help="a swept hyperparameter, or seed, and its values (repeatable)",
    )
    sweep.add_argument("--seed", type=int, help="every run's seed when the grid has none")
    for name, (_, kwargs) in hyperparameter_flags.items():
        sweep.add_argument("--" + name.replace("_", "-"), **kwargs)
    sweep.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    sweep.add_argument("--label", help="a name of your choosing")
    sweep.add_argument(
        "--fuse",
        choices=["auto", "true", "false"],
        default="auto",
        help="run the runs as one batched computation: auto (on a GPU), true, false",
    )
    sweep.add_argument(
        "--exact",
        choices=["true", "false"],
        default=None,
        help="fused runs must equal the jobs alone bit for bit (default: true with --fuse true, "
        "false with auto); false: batched kernels for speed",
    )
    sweep.add_argument(
        "--watch", action="store_true", help="then follow it and print its runs (the id on stderr)"
    )
    sweep.add_argument("--json", action="store_true", help="print the sweep object")


def run_sweep(tw: Client, args: argparse.Namespace, hyperparameter_names: list[str]) -> int:
    hyperparameters = {
        name: getattr(args, f"hp_{name}")
        for name in hyperparameter_names
        if getattr(args, f"hp_{name}") is not None
    }
    fuse: Any = "auto" if args.fuse == "auto" else args.fuse == "true"
    sweep = tw.submit_sweep(
        args.variant,
        dict(args.grid),
        seed=args.seed,
        device=args.device,
        label=args.label,
        fuse=fuse,
        exact=None if args.exact is None else args.exact == "true",
        **hyperparameters,
    )
    out = sys.stderr if args.watch else sys.stdout
    print(sweep.model_dump_json(indent=2) if args.json else sweep.id, file=out)
    if not args.watch:
        return EXIT_OK
    sweep = _follow(tw, sweep) if sys.stdout.isatty() else tw.wait_sweep(sweep.id)
    _print_runs(sweep)
    return EXIT_OK if sweep.status is SweepStatus.succeeded else EXIT_SWEEP_FAILED


def _follow(tw: Client, sweep: Sweep) -> Sweep:
    """A progress bar of the runs that ended, until every run has."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from trainwire.client import SweepUpdate

    with Progress(
        TextColumn(f"sweep {sweep.id}"),
        TextColumn("{task.fields[status]}"),
        BarColumn(bar_width=None),
        MofNCompleteColumn(),
        TextColumn("runs"),
    ) as progress:
        task = progress.add_task("", total=len(sweep.jobs), status=sweep.status.value)
        for event in tw.stream_sweep(sweep.id, max_points=1):
            if isinstance(event, SweepUpdate):
                sweep = event.sweep
                ended = sum(1 for run in sweep.jobs if run.status.is_final)
                progress.update(task, completed=ended, status=sweep.status.value)
    return sweep


def _final_loss(run: SweepRun) -> float:
    return run.last_loss if run.last_loss is not None else float("inf")


def _print_runs(sweep: Sweep) -> None:
    """The runs by final loss, lowest first (runs without one last)."""
    fields = list(sweep.grid)
    runs = sorted(sweep.jobs, key=_final_loss)

    def value(run: SweepRun, field: str) -> str:
        return str(run.seed if field == "seed" else run.hyperparameters.get(field))

    if not sys.stdout.isatty():
        for run in runs:
            loss = "nan" if run.last_loss is None else repr(run.last_loss)
            if run.last_loss is None and run.error is not None:
                loss = run.error.non_finite_loss() or loss
            cells = [run.id, *(value(run, f) for f in fields), run.status.value, loss]
            print("\t".join(cells))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"sweep {sweep.id}: {sweep.status.value}")
    table.add_column("job", no_wrap=True)
    for field in fields:
        table.add_column(field, justify="right")
    table.add_column("status")
    table.add_column("final loss", justify="right")
    for run in runs:
        loss = "-" if run.last_loss is None else f"{run.last_loss:.6g}"
        if run.last_loss is None and run.error is not None:
            loss = run.error.non_finite_loss() or loss
        table.add_row(run.id, *(value(run, f) for f in fields), run.status.value, loss)
    Console().print(table)
