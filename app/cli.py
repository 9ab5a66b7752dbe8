"""The `trainwire` command: `serve` starts the service, `run` runs one variant in the terminal."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import signal
import sys
from types import FrameType
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


def serve(host: str, port: int) -> int:
    import uvicorn
    from pydantic import ValidationError

    from app.server import redact_tokens_in_logs
    from app.settings import Settings
    from app.store import database_in_use

    class Server(uvicorn.Server):
        """uvicorn's server, whose main loop sleeps until it is asked to stop: uvicorn's own
        wakes ten times a second to look, a cost that an idle server pays for nothing and a
        lone job, whose threads hold every core, pays in its speed."""

        _stop_asked: asyncio.Event | None = None
        _loop: asyncio.AbstractEventLoop | None = None

        async def main_loop(self) -> None:
            self._loop, self._stop_asked = asyncio.get_running_loop(), asyncio.Event()
            counter = 0
            while not await self.on_tick(counter):
                counter = (counter + 10) % 864000  # a turn is a second: on_tick's date header
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._stop_asked.wait()

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            if self._loop is not None and self._stop_asked is not None:
                self._loop.call_soon_threadsafe(self._stop_asked.set)

        async def shutdown(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
            hub = getattr(asgi_app.state, "hub", None)
            if hub is not None:
                hub.close()
            await super().shutdown(sockets=sockets)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("trainwire")
    try:
        settings = Settings()
    except ValidationError as exc:
        for error in exc.errors():
            name = "TRAINWIRE_" + "_".join(map(str, error["loc"])).upper()
            given = "" if "TOKEN" in name else f"={error.get('input')!r}"  # never log a secret
            log.error("cannot start: %s%s: %s", name, given, error["msg"])
        return 2
    # a SQLite file that another server holds: say so in one line and stop
    busy = database_in_use(settings.database_url)
    if busy is not None:
        log.error("cannot start: %s", busy)
        return 3
    if settings.backend == "ray":  # join the cluster now: one that does not answer stops us here
        from workers.ray_backend import RayUnavailable, connect

        try:
            connect(settings.ray_address, settings.ray_namespace)
        except RayUnavailable as exc:
            log.error("cannot start: %s", exc)
            return 4
    from app.main import app as asgi_app  # built from the same environment, known valid now

    config = uvicorn.Config(
        asgi_app,
        host=host,
        port=port,
        timeout_graceful_shutdown=8,
        log_level="info",
        proxy_headers=False,
    )
    redact_tokens_in_logs()  # after uvicorn.Config, which configures the loggers
    # uvicorn raises a SIGTERM again once it has shut down, so that the process dies of it (exit
    # status 143); a stop that was asked for and went cleanly should exit 0. uvicorn puts this
    # handler back before raising the signal again.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    # bind before the lifespan opens the store and recovers its jobs: a server that cannot
    # listen (the port is taken) exits here, having touched nothing (uvicorn logs why)
    sock = config.bind_socket()
    Server(config).run(sockets=[sock])
    return 0


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "run":
        return _run(args)
    return serve(args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
