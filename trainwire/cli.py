"""The `trainwire` command: run and follow training jobs on a trainwire service from a terminal.

`serve` and `run` (which need torch) are `app.cli`'s, loaded only for them: the client's
commands import no torch and answer at once.

Exit status: 0 done (`watch`: the job succeeded); 1 the watched job failed or was cancelled
(`sweep --watch`: a run did not succeed); 2 a usage error or a 4xx answer; 3 the server could
not be reached; 130 interrupted (Ctrl-C).

A job id may be shortened to any prefix that names one job (the dashboard shows 8 digits).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, Literal, TextIO, get_args, get_origin

from trainwire.checkpoint_cli import CHECKPOINT_COMMANDS, add_checkpoint_parsers
from trainwire.client import (
    DEFAULT_URL,
    APIError,
    Client,
    Loss,
    ProtocolError,
    ServerUnreachable,
    format_detail,
)
from trainwire.hyperparameters import HYPERPARAMETERS
from trainwire.jobs import VARIANT_NAMES, JobStatus
from trainwire.models import Job, JobError, Webhook, WebhookEvent
from trainwire.sweep_cli import add_sweep_parser, run_sweep

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
JOB_ID_LENGTH = 16  # hex digits
SERVER_COMMANDS = ("serve", "run")  # app.cli's

_METAVARS: dict[Any, str] = {int: "N", float: "X"}


class UsageError(Exception):
    """A command line that names nothing the server has (exit status 2)."""


def hyperparameter_flags() -> dict[str, tuple[Any, dict[str, Any]]]:
    """Every hyperparameter of any variant: name -> (its field, argparse keywords), in the
    models' order; the variants that take it are named when not all of them do."""
    takers: dict[str, list[str]] = {}
    fields: dict[str, Any] = {}
    for variant, model in HYPERPARAMETERS.items():
        for name, info in model.model_fields.items():
            fields.setdefault(name, info)
            takers.setdefault(name, []).append(variant)
    flags: dict[str, tuple[Any, dict[str, Any]]] = {}
    for name, info in fields.items():
        help_text = (info.description or name).rstrip(".")
        if len(takers[name]) < len(HYPERPARAMETERS):
            help_text += f" ({', '.join(takers[name])} only)"
        kwargs: dict[str, Any] = {"dest": f"hp_{name}", "default": None}
        if get_origin(info.annotation) is Literal:
            kwargs["choices"] = [str(c) for c in get_args(info.annotation)]
        else:
            kwargs["type"] = info.annotation
            kwargs["metavar"] = _METAVARS.get(info.annotation, "VALUE")
        kwargs["help"] = help_text + " (default: the variant's)"
        flags[name] = (info, kwargs)
    return flags


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trainwire",
        description="Run the training programs of 'Learning PyTorch with Examples' on a "
        "trainwire service and follow their losses.",
        epilog="A job id may be any prefix that names one job. Exit status: 0 done (watch: the "
        "job succeeded), 1 the watched job failed or was cancelled, 2 usage error or a 4xx "
        "answer, 3 the server cannot be reached, 130 interrupted.",
    )
    # --url and --token go before the command or after it: the subcommands' copies leave the
    # main parser's value alone unless they are given (SUPPRESS)
    url_help = f"the service (default: $TRAINWIRE_URL, else {DEFAULT_URL})"
    token_help = "API token (default: $TRAINWIRE_API_TOKEN)"
    parser.add_argument("--url", help=url_help)
    parser.add_argument("--token", help=token_help)
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--url", default=argparse.SUPPRESS, help=url_help)
    connection.add_argument("--token", default=argparse.SUPPRESS, help=token_help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    submit = sub.add_parser(
        "submit",
        parents=[connection],
        help="submit a job and print its id",
        description="Submit a job and print its id (with --json: the job). Hyperparameters "
        "not given take the variant's defaults.",
        epilog=variants_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    submit.add_argument("variant", metavar="VARIANT", choices=VARIANT_NAMES, help="variant")
    submit.add_argument("--seed", type=int, help="seed of every random draw (default: drawn)")
    for name, (_, kwargs) in hyperparameter_flags().items():
        submit.add_argument("--" + name.replace("_", "-"), **kwargs)
    submit.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    submit.add_argument("--label", help="a name of your choosing")
    submit.add_argument(
        "--threads",
        type=int,
        help="torch/BLAS threads of the run (default: the cores free when it starts)",
    )
    submit.add_argument(
        "--webhook", metavar="URL", help="POST its status changes here, signed (docs/webhooks.md)"
    )
    submit.add_argument(
        "--webhook-event",
        action="append",
        choices=[e.value for e in WebhookEvent],
        help="with --webhook: an event to send (repeatable; default: succeeded, failed, cancelled)",
    )
    submit.add_argument(
        "--watch", action="store_true", help="then follow it as `watch` does (the id on stderr)"
    )
    submit.add_argument(
        "--cancel-on-interrupt",
        action="store_true",
        help="with --watch: Ctrl-C cancels the job (default: it keeps running)",
    )
    submit.add_argument("--json", action="store_true", help="print the job object")

    watch = sub.add_parser(
        "watch",
        parents=[connection],
        help="follow a job until it ends",
        description="Follow a job until it ends: a progress bar on a terminal, else one "
        "`t loss` line per step as the tutorial prints them. Exit status 0 if it succeeded, "
        "1 if it failed or was cancelled. Ctrl-C stops watching; the job keeps running "
        "unless --cancel-on-interrupt.",
    )
    watch.add_argument("job", metavar="JOB", type=_job_id, help="job id (or a unique prefix)")
    watch.add_argument("--cancel-on-interrupt", action="store_true", help="Ctrl-C cancels the job")

    jobs = sub.add_parser(
        "jobs",
        parents=[connection],
        help="list jobs, newest first",
        description="List jobs, newest first: a table on a terminal, else JSON.",
    )
    jobs.add_argument(
        "--status", action="append", choices=[s.value for s in JobStatus], help="repeatable"
    )
    jobs.add_argument("--variant", action="append", choices=VARIANT_NAMES, help="repeatable")
    jobs.add_argument("--label", action="append", help="jobs with this label (repeatable)")
    jobs.add_argument(
        "--limit", type=_positive, default=50, metavar="N", help="at most N jobs (default 50)"
    )
    jobs.add_argument("--json", action="store_true", help="print JSON (a list of jobs)")

    show = sub.add_parser("show", parents=[connection], help="show one job")
    show.add_argument("job", metavar="JOB", type=_job_id, help="job id (or a unique prefix)")
    show.add_argument("--json", action="store_true", help="print the job object")

    cancel = sub.add_parser("cancel", parents=[connection], help="cancel a queued or running job")
    cancel.add_argument("job", metavar="JOB", type=_job_id, help="job id (or a unique prefix)")
    delete = sub.add_parser("delete", parents=[connection], help="delete a final job")
    delete.add_argument("job", metavar="JOB", type=_job_id, help="job id (or a unique prefix)")

    losses = sub.add_parser(
        "losses",
        parents=[connection],
        help="print a job's recorded losses",
        description="Print a job's recorded losses: `t loss` lines, `step,loss` CSV, or JSON.",
    )
    losses.add_argument("job", metavar="JOB", type=_job_id, help="job id (or a unique prefix)")
    losses.add_argument("--csv", action="store_true", help="`step,loss` rows with a header")
    losses.add_argument("--json", action="store_true", help='{"steps": [...], "losses": [...]}')
    losses.add_argument(
        "--max-points",
        type=_positive,
        metavar="K",
        help="at most K real points spread over the run, keeping its shape",
    )

    variants = sub.add_parser(
        "variants",
        parents=[connection],
        help="list the variants and their defaults",
        description="The variants the server runs, with their devices and every "
        "hyperparameter's default: a table on a terminal, else JSON.",
    )
    variants.add_argument("--json", action="store_true", help="print JSON (a list of variants)")

    add_sweep_parser(sub, connection, hyperparameter_flags())
    add_checkpoint_parsers(sub, connection, hyperparameter_flags())

    # listed for --help; main() hands them to app.cli before this parser sees them
    sub.add_parser("serve", help="start the HTTP service (needs the server's dependencies)")
    sub.add_parser("run", help="run one variant here and print `t loss` per step (needs torch)")
    return parser


def variants_epilog() -> str:
    """Each variant's hyperparameters and their defaults, for `submit --help`."""
    from trainwire.hyperparameters import HYPERPARAMETERS

    lines = ["variants and their defaults (`trainwire variants` asks the server):"]
    for name, model in HYPERPARAMETERS.items():
        defaults = " ".join(
            f"--{field.replace('_', '-')} {info.default}"
            for field, info in model.model_fields.items()
        )
        lines.append(f"  {name:<16}{defaults}")
    return "\n".join(lines)


def _job_id(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("a job id is not empty")
    return text


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


# -- output ---------------------------------------------------------------------------------------


def non_finite(error: JobError | None) -> str:
    """A loss sent as null (not finite): `nan`, `inf` or `-inf` as the job's error names it;
    `nan` where the error does not say which."""
    return (error.non_finite_loss() if error is not None else None) or "nan"


def format_loss(loss: float | None, error: JobError | None = None) -> str:
    """A loss as the tutorial's `print(t, loss)` writes it; a non-finite one (null) as the job's
    error names it."""
    return non_finite(error) if loss is None else repr(loss)


def short_loss(loss: float | None, error: JobError | None = None) -> str:
    """A loss for a person to read (six significant digits)."""
    return non_finite(error) if loss is None else f"{loss:.6g}"


def _webhook(url: str | None, events: list[str] | None) -> Webhook | None:
    """--webhook and its --webhook-event flags (None without a URL)."""
    if url is None:
        return None
    if not events:
        return Webhook(url=url)
    return Webhook(url=url, events=[WebhookEvent(e) for e in events])


def _job_json(job: Job) -> str:
    return job.model_dump_json(indent=2)


def _error(message: str) -> None:
    print(f"trainwire: {message}", file=sys.stderr)


def _job_outcome(job: Job) -> int:
    """0 for a job that succeeded; else its error on stderr, and 1."""
    if job.status is JobStatus.succeeded:
        return EXIT_OK
    message = f"job {job.id} {job.status.value} at step {job.step}"
    if job.error is not None:
        message += f": {job.error.code.value}: {job.error.message}"
    _error(message)
    return EXIT_JOB_FAILED


def _watch_lines(tw: Client, job_id: str, out: TextIO) -> Job:
    """`t loss` per step, flushed at once (a plotter at the other end draws as they come)."""
    # a null loss is the step a job diverged at, its last: the final status that follows says
    # whether it was nan or inf, so that line waits for it
    held: int | None = None
    for event in tw.stream(job_id):
        if isinstance(event, Loss):
            if held is not None:
                out.write(f"{held} {format_loss(None)}\n")
                held = None
            if event.loss is None:
                held = event.step
                continue
            out.write(f"{event.step} {format_loss(event.loss)}\n")
            out.flush()
        elif event.job.status.is_final:
            if held is not None:
                out.write(f"{held} {format_loss(None, event.job.error)}\n")
                out.flush()
            return event.job
    raise ProtocolError("the stream ended without the job's final status")


def _watch_bar(tw: Client, job_id: str) -> Job:
    """A live progress bar: step / steps, steps per second, time left, the latest loss."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.speed
            return Text(f"{speed:,.0f} steps/s" if speed else "- steps/s", "progress.data.speed")

    job = tw.get(job_id)
    progress = Progress(
        TextColumn("{task.description}"),
        TextColumn("{task.fields[status]}"),
        BarColumn(bar_width=None),
        MofNCompleteColumn(),
        RateColumn(),
        TimeRemainingColumn(),
        TextColumn("loss {task.fields[loss]}"),
        console=Console(),
    )
    with progress:
        task = progress.add_task(
            job.variant,
            total=job.steps,
            completed=job.step,
            status=job.status.value,
            loss=short_loss(job.last_loss, job.error) if job.step else "-",
        )
        for event in tw.stream(job_id, after=job.step - 1):
            if isinstance(event, Loss):
                progress.update(task, completed=event.step + 1, loss=short_loss(event.loss))
                continue
            progress.update(task, status=event.job.status.value, total=event.job.steps)
            if event.job.status.is_final:
                if event.job.step and event.job.last_loss is None:
                    progress.update(task, loss=short_loss(None, event.job.error))
                return event.job
    raise ProtocolError("the stream ended without the job's final status")


def resolve_job_id(tw: Client, text: str) -> str:
    """A whole id as it is; a shorter hex prefix as the one job whose id starts with it."""
    if len(text) >= JOB_ID_LENGTH or not all(c in "0123456789abcdef" for c in text):
        return text  # the server answers 404 for an id it does not have
    found = [job.id for job in tw.jobs(id_prefix=text, limit=11)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise UsageError(f"no job id starts with {text!r}")
    listed = ", ".join(found[:10]) + (", ..." if len(found) > 10 else "")
    raise UsageError(f"{text!r} starts more than one job id: {listed}; give more digits")


def _watch(tw: Client, job_id: str, cancel_on_interrupt: bool = False) -> int:
    try:
        if sys.stdout.isatty():
            return _job_outcome(_watch_bar(tw, job_id))
        return _job_outcome(_watch_lines(tw, job_id, sys.stdout))
    except KeyboardInterrupt:
        if cancel_on_interrupt:
            try:
                job = tw.cancel(job_id)
                _error(
                    f"stopped watching; job {job_id} is cancelled"
                    + ("" if job.status.is_final else " (before its next step)")
                )
            except APIError as exc:  # it ended meanwhile
                _error(f"stopped watching; job {job_id}: {format_detail(exc.detail)}")
        else:
            _error(
                f"stopped watching; job {job_id} keeps running "
                f"(`trainwire watch {job_id}` follows it again, `trainwire cancel {job_id}` "
                "stops it)"
            )
        return EXIT_INTERRUPTED


def _submit(tw: Client, args: argparse.Namespace) -> int:
    if args.webhook_event and args.webhook is None:
        _error("--webhook-event needs --webhook URL")
        return EXIT_USAGE
    hyperparameters = {
        name: getattr(args, f"hp_{name}")
        for name in hyperparameter_flags()
        if getattr(args, f"hp_{name}") is not None
    }
    job = tw.submit(
        args.variant,
        seed=args.seed,
        device=args.device,
        label=args.label,
        threads=args.threads,
        webhook=_webhook(args.webhook, args.webhook_event),
        **hyperparameters,
    )
    # with --watch, stdout is the watch's alone (a clean curve when piped)
    print(_job_json(job) if args.json else job.id, file=sys.stderr if args.watch else sys.stdout)
    return _watch(tw, job.id, args.cancel_on_interrupt) if args.watch else EXIT_OK


def _jobs(tw: Client, args: argparse.Namespace) -> int:
    jobs = list(tw.jobs(args.status, args.variant, args.limit, label=args.label))
    if args.json or not sys.stdout.isatty():
        print(json.dumps([job.model_dump(mode="json") for job in jobs], indent=2))
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table

    table = Table()
    table.add_column("id", no_wrap=True, min_width=16)  # whole: it is what the other commands take
    table.add_column("variant", no_wrap=True)
    table.add_column("status", no_wrap=True, min_width=9)
    table.add_column("step", justify="right", no_wrap=True, min_width=9)
    table.add_column("last loss", justify="right", no_wrap=True)
    table.add_column("label", overflow="ellipsis", max_width=30)
    table.add_column("created (UTC)", overflow="ellipsis", no_wrap=True)
    for job in jobs:
        table.add_row(
            job.id,
            job.variant,
            f"[{_STATUS_STYLE[job.status]}]{job.status.value}[/]",
            f"{job.step}/{job.steps}",
            short_loss(job.last_loss, job.error) if job.step else "",
            job.label or "",
            job.created_at.replace("T", " ")[:19],
        )
    Console().print(table)
    return EXIT_OK


_STATUS_STYLE = {
    JobStatus.queued: "dim",
    JobStatus.running: "cyan",
    JobStatus.paused: "magenta",
    JobStatus.succeeded: "green",
    JobStatus.failed: "red",
    JobStatus.cancelled: "yellow",
}


def _show(tw: Client, args: argparse.Namespace) -> int:
    job = tw.get(args.job)
    if args.json or not sys.stdout.isatty():
        print(_job_json(job))
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None)
    rows: list[tuple[str, Any]] = [
        ("id", job.id),
        ("variant", job.variant),
        ("label", job.label),
        ("status", f"[{_STATUS_STYLE[job.status]}]{job.status.value}[/]"),
        ("step", f"{job.step}/{job.steps}"),
        ("last loss", format_loss(job.last_loss, job.error) if job.step else None),
        ("error", f"{job.error.code.value}: {job.error.message}" if job.error else None),
        ("seed", job.seed),
        ("device", f"{job.device} (assigned: {job.assigned_device or '-'})"),
        ("hyperparameters", json.dumps(job.hyperparameters)),
        ("created", job.created_at),
        ("started", job.started_at),
        ("finished", job.finished_at),
        ("environment", json.dumps(job.environment) if job.environment else None),
    ]
    for key, value in rows:
        if value is not None:
            table.add_row(f"[bold]{key}[/]", str(value))
    Console().print(table)
    return EXIT_OK


def _cancel(tw: Client, args: argparse.Namespace) -> int:
    job = tw.cancel(args.job)
    # a running job stops before its next step: the answer can still say running
    print(f"{job.id} {'cancelled' if job.status.is_final else 'cancelling'}")
    return EXIT_OK


def _delete(tw: Client, args: argparse.Namespace) -> int:
    tw.delete(args.job)
    print(f"{args.job} deleted")
    return EXIT_OK


def _losses(tw: Client, args: argparse.Namespace) -> int:
    steps, losses = tw.losses(args.job, max_points=args.max_points)
    # null is a non-finite loss: the job's error says which
    error = tw.get(args.job).error if None in losses else None
    out = sys.stdout
    if args.json:
        out.write(json.dumps({"job_id": args.job, "steps": steps, "losses": losses}) + "\n")
    elif args.csv:
        out.write("step,loss\n")
        out.writelines(
            f"{s},{'' if v is None else repr(v)}\n" for s, v in zip(steps, losses, strict=True)
        )
    else:
        out.writelines(f"{s} {format_loss(v, error)}\n" for s, v in zip(steps, losses, strict=True))
    return EXIT_OK


def _variants(tw: Client, args: argparse.Namespace) -> int:
    variants = tw.variants()
    if args.json or not sys.stdout.isatty():
        print(json.dumps([v.model_dump(mode="json") for v in variants], indent=2))
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table

    table = Table()
    table.add_column("variant", no_wrap=True)
    table.add_column("devices", no_wrap=True)
    table.add_column("defaults")
    table.add_column("title")
    for v in variants:
        defaults = ", ".join(f"{k}={val}" for k, val in v.defaults.items())
        table.add_row(v.name, ", ".join(v.devices), defaults, v.title)
    Console().print(table)
    return EXIT_OK


COMMANDS: dict[str, Callable[[Client, argparse.Namespace], int]] = {
    "submit": _submit,
    "watch": lambda tw, args: _watch(tw, args.job, args.cancel_on_interrupt),
    "variants": _variants,
    "jobs": _jobs,
    "show": _show,
    "cancel": _cancel,
    "delete": _delete,
    "losses": _losses,
    "sweep": lambda tw, args: run_sweep(tw, args, list(hyperparameter_flags())),
    **CHECKPOINT_COMMANDS,
}


def main(argv: Sequence[str] | None = None) -> int:
    """The console script `trainwire`."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in SERVER_COMMANDS:
        from app.cli import main as server_main  # torch and the service: only for these

        return server_main(arguments)
    args = build_parser().parse_args(arguments)
    try:
        with Client(args.url, token=args.token) as tw:
            if getattr(args, "job", None) is not None:
                args.job = resolve_job_id(tw, args.job)
            return COMMANDS[args.command](tw, args)
    except UsageError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except APIError as exc:
        _error(f"{exc.status_code}: {format_detail(exc.detail)}")
        return EXIT_USAGE if exc.status_code < 500 else EXIT_UNREACHABLE
    except ServerUnreachable as exc:
        _error(f"cannot reach the server: {exc}")
        return EXIT_UNREACHABLE
    except ProtocolError as exc:
        _error(f"the server's answer is not the trainwire API: {exc}")
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def console() -> int:
    """The console script: `trainwire ... | head` ends quietly when the reader goes, as cat
    does (SIGPIPE's default, set for the command's own process only: `main()` called in a
    program of yours leaves its signals alone)."""
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    return main()


if __name__ == "__main__":
    sys.exit(console())
