"""`trainwire pause|resume|fork|checkpoints|download`: a job's checkpoints from a terminal.

trainwire pause JOB                      # stops before its next step, its state saved
trainwire resume JOB                     # goes on from there, the same curve bit for bit
trainwire checkpoints JOB                # `step bytes sha256 created` per checkpoint
trainwire download JOB [--step K] [-o weights.safetensors]   # the last one by default
trainwire fork JOB --step K --learning-rate 1e-5             # a new job from step K
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainwire.client import Client

EXIT_OK, EXIT_USAGE = 0, 2


def _step(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a step (0 or more)")
    return value


def add_checkpoint_parsers(
    sub: Any, connection: argparse.ArgumentParser, flags: dict[str, tuple[Any, dict[str, Any]]]
) -> None:
    """The checkpoint subcommands, on `trainwire`'s subparsers."""
    for name, text in (
        ("pause", "pause a queued or running job (its state is checkpointed)"),
        ("resume", "resume a paused job from its checkpoint"),
        ("checkpoints", "list a job's checkpoints"),
    ):
        command = sub.add_parser(name, parents=[connection], help=text)
        command.add_argument("job", metavar="JOB", help="job id")
    download = sub.add_parser(
        "download", parents=[connection], help="download a checkpoint's safetensors file"
    )
    download.add_argument("job", metavar="JOB", help="job id")
    download.add_argument(
        "--step", type=_step, metavar="K", help="its checkpoint of step K (default: the last)"
    )
    download.add_argument(
        "-o", "--output", metavar="FILE", help="where (default: JOB-K.safetensors)"
    )
    fork = sub.add_parser(
        "fork",
        parents=[connection],
        help="a new job from a job's checkpoint, hyperparameters changed",
        description="A new job that starts from JOB's checkpoint of step K. Hyperparameters not "
        "given (and the seed) are the parent's; those that change a shape must stay.",
    )
    fork.add_argument("job", metavar="JOB", help="the parent job's id")
    fork.add_argument("--step", type=_step, required=True, metavar="K", help="a checkpointed step")
    fork.add_argument("--threads", type=int, metavar="N", help="default: the parent's")
    fork.add_argument(
        "--checkpoint-every", type=_step, metavar="N", help="steps between checkpoints"
    )
    fork.add_argument("--label", help="a name of your choosing")
    fork.add_argument("--json", action="store_true", help="print the job object")
    for name, (_, kwargs) in flags.items():
        fork.add_argument("--" + name.replace("_", "-"), **kwargs)


def _pause(tw: Client, args: argparse.Namespace) -> int:
    job = tw.pause(args.job)
    print(f"{job.id} {'paused' if job.status == 'paused' else 'pausing'}")
    return EXIT_OK


def _resume(tw: Client, args: argparse.Namespace) -> int:
    print(f"{tw.resume(args.job).id} {tw.get(args.job).status.value}")
    return EXIT_OK


def _checkpoints(tw: Client, args: argparse.Namespace) -> int:
    for c in tw.checkpoints(args.job):
        print(f"{c.step}\t{c.bytes}\t{c.sha256}\t{c.created_at}")
    return EXIT_OK


def _download(tw: Client, args: argparse.Namespace) -> int:
    step = args.step
    if step is None:
        listed = tw.checkpoints(args.job)
        if not listed:
            print(f"trainwire: job {args.job} has no checkpoint yet")
            return EXIT_USAGE
        step = listed[-1].step
    path = tw.download_checkpoint(args.job, step, args.output or f"{args.job}-{step}.safetensors")
    print(path)
    return EXIT_OK


def _fork(tw: Client, args: argparse.Namespace) -> int:
    hyperparameters = {
        key[3:]: value
        for key, value in vars(args).items()
        if key.startswith("hp_") and value is not None
    }
    job = tw.fork(
        args.job,
        args.step,
        threads=args.threads,
        checkpoint_every=args.checkpoint_every,
        label=args.label,
        **hyperparameters,
    )
    print(job.model_dump_json(indent=2) if args.json else job.id)
    return EXIT_OK


CHECKPOINT_COMMANDS: dict[str, Callable[[Client, argparse.Namespace], int]] = {
    "pause": _pause,
    "resume": _resume,
    "checkpoints": _checkpoints,
    "download": _download,
    "fork": _fork,
}
