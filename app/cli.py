"""The `trainwire` command: `serve` starts the service, `run` runs one variant in the terminal."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

_HP_HELP = {
    "batch_size": "N, batch size",
    "d_in": "D_in, input dimension",
    "hidden": "H, hidden dimension",
    "d_out": "D_out, output dimension",
    "steps": "number of training steps",
    "learning_rate": "learning rate",
    "dtype": "float32 or float64",
    "momentum": "SGD momentum (dynamic only)",
    "max_middle_layers": "most reuses of the middle layer per step (dynamic only)",
}


def _build_parser() -> argparse.ArgumentParser:
    from workers.variants import VARIANTS

    parser = argparse.ArgumentParser(prog="trainwire", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start the HTTP service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)

    run = sub.add_parser(
        "run", help="run one variant and print `t loss` per step, as the tutorial does"
    )
    run.add_argument("--variant", required=True, choices=sorted(VARIANTS))
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    types: dict[str, Any] = {"learning_rate": float, "momentum": float, "dtype": str}
    for field in _HP_HELP:
        run.add_argument(
            "--" + field.replace("_", "-"),
            dest=field,
            type=types.get(field, int),
            default=None,
            help=_HP_HELP[field] + " (default: the variant's)",
        )
    return parser


def _run(args: argparse.Namespace) -> int:
    from workers.hyperparameters import HyperparameterError, Limits, parse_hyperparameters
    from workers.runner import JobSpec, run_job
    from workers.variants import VARIANTS

    variant = VARIANTS[args.variant]
    given = {f: getattr(args, f) for f in _HP_HELP if getattr(args, f) is not None}
    try:
        hp = parse_hyperparameters(
            variant.hyperparameters, given, args.variant, Limits(max_job_bytes=1 << 62)
        )
    except HyperparameterError as exc:
        for e in exc.errors:
            print(
                f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}", file=sys.stderr
            )
        return 2
    device = args.device
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        print(f"--device: {device!r} is not cpu, cuda or cuda:N", file=sys.stderr)
        return 2
    if device == "cuda":
        device = "cuda:0"
    if device != "cpu" and "cuda" not in variant.devices:
        print(f"--device: {args.variant!r} runs on the CPU only", file=sys.stderr)
        return 2

    def sink(first_step: int, losses: list[float]) -> None:
        for i, loss in enumerate(losses):
            print(first_step + i, loss)

    outcome = run_job(JobSpec(args.variant, hp, args.seed, device), sink)
    if outcome.status != "succeeded":
        print(f"{outcome.status}: {outcome.error_code}: {outcome.error_message}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "run":
        return _run(args)
    from app.server import serve

    return serve(args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
