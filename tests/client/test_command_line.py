"""The `trainwire` console script against real servers: what it prints and its exit status."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from servers import Server, free_port, wait_for

from trainwire import APIError, Client
from trainwire.models import JobStatus

TRAINWIRE = Path(sys.executable).with_name("trainwire")  # the console script
TINY = {"batch_size": 8, "d_in": 20, "hidden": 10, "d_out": 2}


def trainwire(
    *args: str, url: str | None = None, timeout: float = 120, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run the console script, stdout and stderr captured (so stdout is not a terminal)."""
    command = [str(TRAINWIRE), *args] + (["--url", url] if url else [])
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
    )


def tutorial_lines(steps: list[int], losses: list[float | None]) -> str:
    """What the tutorial's `print(t, loss.item())` writes for this curve."""
    pairs = zip(steps, losses, strict=True)
    return "".join(f"{t} {'nan' if loss is None else loss}\n" for t, loss in pairs)


def test_piped_watch_prints_the_stored_curve_exactly(shared_server: Server) -> None:
    with Client(shared_server.url) as tw:
        job = tw.submit("nn", seed=4, steps=60)
        watched = trainwire("watch", job.id, url=shared_server.url)
        assert watched.returncode == 0, watched.stderr
        assert watched.stderr == ""
        assert watched.stdout == tutorial_lines(*tw.losses(job.id))
        assert len(watched.stdout.splitlines()) == 60


def test_submit_prints_the_id_and_with_watch_follows_the_job(shared_server: Server) -> None:
    submitted = trainwire(
        "submit", "dynamic", "--steps", "20", "--momentum", "0.5", "--seed", "9",
        "--label", "cli", "--threads", "1", "--json", url=shared_server.url,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)
    assert (job["variant"], job["seed"], job["label"]) == ("dynamic", 9, "cli")
    assert job["environment"]["threads"] == 1
    assert job["hyperparameters"]["momentum"] == 0.5 and job["hyperparameters"]["steps"] == 20

    watched = trainwire("submit", "tensors", "--steps", "25", "--watch", url=shared_server.url)
    assert watched.returncode == 0, watched.stderr
    job_id = watched.stderr.strip()  # stdout is the curve alone
    with Client(shared_server.url) as tw:
        assert tw.get(job_id).status is JobStatus.succeeded
        assert watched.stdout == tutorial_lines(*tw.losses(job_id))

    plain = trainwire("submit", "numpy", "--steps", "2", url=shared_server.url)
    assert plain.returncode == 0 and len(plain.stdout.strip()) == 16, plain


def test_show_losses_cancel_and_delete(shared_server: Server) -> None:
    url = shared_server.url
    with Client(url) as tw:
        done = tw.wait(tw.submit("custom_module", steps=30, seed=2).id)
        running = tw.submit("tensors", **{**TINY, "steps": 1_000_000})

    shown = trainwire("show", done.id, url=url)
    assert shown.returncode == 0 and json.loads(shown.stdout)["id"] == done.id  # piped: JSON

    lines = trainwire("losses", done.id, url=url)
    with Client(url) as tw:
        steps, losses = tw.losses(done.id)
    assert lines.stdout == tutorial_lines(steps, losses)
    csv = trainwire("losses", done.id, "--csv", url=url).stdout.splitlines()
    assert csv[0] == "step,loss"
    assert csv[1:] == [f"{s},{v!r}" for s, v in zip(steps, losses, strict=True)]
    thin = trainwire("losses", done.id, "--max-points", "6", url=url).stdout.splitlines()
    assert 0 < len(thin) <= 6
    assert all(float(v) == losses[int(s)] for s, v in (line.split() for line in thin))

    with Client(url) as tw:
        wait_for(lambda: tw.get(running.id).step > 0)
    cancelled = trainwire("cancel", running.id, url=url)
    assert cancelled.returncode == 0, cancelled.stderr
    with Client(url) as tw:
        assert tw.wait(running.id).status is JobStatus.cancelled
    again = trainwire("cancel", running.id, url=url)
    assert again.returncode == 2 and "already cancelled" in again.stderr
    assert trainwire("delete", running.id, url=url).returncode == 0
    assert trainwire("show", running.id, url=url).returncode == 2


def test_a_diverging_job_exits_1_with_its_error_on_stderr(shared_server: Server) -> None:
    done = trainwire(
        "submit", "numpy", "--steps", "50", "--learning-rate", "1.0", "--watch",
        url=shared_server.url,
    )  # fmt: skip
    assert done.returncode == 1
    assert "failed" in done.stderr and "diverged" in done.stderr
    lines = done.stdout.splitlines()
    # the step that diverged, as the tutorial prints it: what the error says the loss became
    assert f"the loss became {lines[-1].split()[1]} at step {len(lines) - 1}" in done.stderr
    assert [int(line.split()[0]) for line in lines] == list(range(len(lines)))


def test_an_infinite_loss_prints_as_inf(shared_server: Server) -> None:
    # the tutorial's numpy program at learning rate 1e-2, seed 7: the loss is inf at step 4
    url = shared_server.url
    submitted = trainwire(
        "submit", "numpy", "--steps", "50", "--learning-rate", "0.01", "--seed", "7",
        url=url,
    )  # fmt: skip
    job_id = submitted.stdout.strip()
    watched = trainwire("watch", job_id, url=url)
    assert watched.returncode == 1
    assert "the loss became inf at step 4" in watched.stderr
    lines = watched.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["0", "1", "2", "3", "4"]
    assert lines[-1] == "4 inf"
    assert all(float(line.split()[1]) < float("inf") for line in lines[:-1])

    printed = trainwire("losses", job_id, url=url)
    assert printed.stdout.splitlines() == lines
    csv = trainwire("losses", job_id, "--csv", url=url).stdout.splitlines()
    assert csv[-1] == "4,"  # CSV leaves a value it cannot write empty, as before


def test_a_cancelled_job_exits_1(shared_server: Server) -> None:
    with Client(shared_server.url) as tw:
        job = tw.submit("tensors", **{**TINY, "steps": 1_000_000})
        tw.cancel(job.id)
    watched = trainwire("watch", job.id, url=shared_server.url)
    assert watched.returncode == 1 and "cancelled" in watched.stderr


def test_unknown_jobs_and_bad_usage_exit_2(shared_server: Server) -> None:
    for command in ("watch", "show", "cancel", "delete", "losses"):
        done = trainwire(command, "0123456789abcdef", url=shared_server.url)
        assert done.returncode == 2, (command, done)
        assert "404" in done.stderr and "no job with id '0123456789abcdef'" in done.stderr
        assert done.stdout == ""
    invalid = trainwire("submit", "numpy", "--max-middle-layers", "2", url=shared_server.url)
    assert invalid.returncode == 2 and "max_middle_layers" in invalid.stderr
    assert trainwire("submit", "lstm", url=shared_server.url).returncode == 2
    assert trainwire("submit", "numpy", "--steps", "many", url=shared_server.url).returncode == 2
    assert trainwire("frobnicate").returncode == 2


def test_no_server_exits_3() -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    for args in (("jobs",), ("watch", "0123456789abcdef"), ("submit", "numpy")):
        done = trainwire(*args, url=nobody, timeout=30)
        assert done.returncode == 3, (args, done)
        assert "cannot reach" in done.stderr and done.stdout == ""
    # the URL can come from the environment too
    assert trainwire("show", "0123456789abcdef", TRAINWIRE_URL=nobody).returncode == 3


def test_the_token_is_sent_from_the_flag_or_the_environment(
    make_server: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = make_server(TRAINWIRE_API_TOKEN="cli-token-123")
    # the client's defaults come from the environment
    monkeypatch.setenv("TRAINWIRE_URL", server.url)
    monkeypatch.delenv("TRAINWIRE_API_TOKEN", raising=False)
    with Client() as anonymous, pytest.raises(APIError) as refused_sdk:
        list(anonymous.jobs())
    assert refused_sdk.value.status_code == 401
    with Client(token="cli-token-123") as tw:
        assert tw.wait(tw.submit("numpy", steps=3).id).status is JobStatus.succeeded
    monkeypatch.setenv("TRAINWIRE_API_TOKEN", "cli-token-123")
    with Client() as tw:
        assert len(list(tw.jobs())) == 1

    refused = trainwire("jobs", url=server.url, TRAINWIRE_API_TOKEN="")
    assert refused.returncode == 2 and "401" in refused.stderr
    assert trainwire("jobs", "--token", "cli-token-123", url=server.url).returncode == 0
    job_id = trainwire(
        "submit", "numpy", "--steps", "3", url=server.url, TRAINWIRE_API_TOKEN="cli-token-123"
    ).stdout.strip()
    watched = trainwire("watch", job_id, url=server.url, TRAINWIRE_API_TOKEN="cli-token-123")
    assert watched.returncode == 0 and len(watched.stdout.splitlines()) == 3


def test_watch_survives_kill_9_and_a_restart(make_server: Callable[..., Server]) -> None:
    """The server dies mid-run with no warning and comes back on the same data directory: the
    watch prints each step once, in order, and exits 0 when the rerun job succeeds."""
    first = make_server(TRAINWIRE_CPU_WORKERS="1")
    curve = {"batch_size": 16, "d_in": 64, "hidden": 16, "d_out": 4, "steps": 20_000}
    with Client(first.url) as tw:
        job = tw.submit("tensors", seed=1234, device="cpu", **curve)
    out, err = first.data_dir / "watch.out", first.data_dir / "watch.err"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        watch = subprocess.Popen(
            [str(TRAINWIRE), "watch", job.id, "--url", first.url], stdout=stdout, stderr=stderr
        )
    try:
        wait_for(lambda: out.stat().st_size > 20_000, timeout=60, interval=0.01)
        first.kill()
        assert watch.poll() is None, err.read_text()
        second = make_server(data_dir=first.data_dir, start=False, TRAINWIRE_CPU_WORKERS="1")
        second.port = first.port  # where the watch looks for it
        second.start()
        assert watch.wait(timeout=120) == 0, err.read_text()
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert err.read_text() == ""
    with Client(second.url) as tw:
        final = tw.get(job.id)
        assert (final.status, final.attempts) == (JobStatus.succeeded, 2)
        assert out.read_text() == tutorial_lines(*tw.losses(job.id))


def test_jobs_on_a_terminal_is_a_table_and_piped_is_json(shared_server: Server) -> None:
    with Client(shared_server.url) as tw:
        job = tw.submit("optim", label="in the table", steps=5)
    piped = trainwire("jobs", "--variant", "optim", url=shared_server.url)
    assert piped.returncode == 0
    assert job.id in [item["id"] for item in json.loads(piped.stdout)]

    screen = run_in_terminal(
        [str(TRAINWIRE), "jobs", "--variant", "optim", "--url", shared_server.url]
    )
    assert "┏" in screen and "┃" in screen and not screen.lstrip().startswith("["), screen
    assert job.id in screen and "in the table" in screen and "optim" in screen


def run_in_terminal(command: list[str], timeout: float = 60) -> str:
    """What the command writes to a pseudo-terminal (its stdout and stderr) until it exits."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        command,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env={**os.environ, "COLUMNS": "160", "TERM": "xterm"},
    )
    os.close(terminal)
    chunks: list[bytes] = []
    try:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert process.wait(timeout=timeout) == 0, b"".join(chunks)
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
            process.wait()
    return b"".join(chunks).decode(errors="replace")


def test_watch_on_a_terminal_shows_a_progress_bar(shared_server: Server) -> None:
    with Client(shared_server.url) as tw:
        job = tw.submit("tensors", seed=8, **{**TINY, "steps": 2_000})
    screen = run_in_terminal([str(TRAINWIRE), "watch", job.id, "--url", shared_server.url])
    assert "2000/2000" in screen and "steps/s" in screen and "loss" in screen, screen
    assert "succeeded" in screen
    assert "\n1999 " not in screen  # the bar, not the lines


@pytest.mark.parametrize(
    "module", ["trainwire", "trainwire.cli", "trainwire.jobs", "trainwire.models"]
)
def test_the_client_loads_no_torch_and_no_server_code(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        "from trainwire import AsyncClient, Client, Loss, Status, TrainwireError\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'app', 'workers', "
        "'numpy', 'sqlalchemy', 'fastapi'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_serve_and_run_are_still_there(make_server: Callable[..., Server]) -> None:
    ran = subprocess.run(
        [str(TRAINWIRE), "run", "--variant", "numpy", "--steps", "3", "--seed", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    assert [line.split()[0] for line in ran.stdout.splitlines()] == ["0", "1", "2"]

    server = make_server(command=(str(TRAINWIRE), "serve"))  # python .venv/bin/trainwire serve
    assert trainwire("jobs", url=server.url).returncode == 0


def test_url_and_token_go_before_or_after_the_command(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(TRAINWIRE_API_TOKEN="anywhere-token")
    with Client(server.url, token="anywhere-token") as tw:
        job = tw.submit("numpy", steps=2)
    for line in (
        ["--url", server.url, "--token", "anywhere-token", "show", job.id],
        ["--url", server.url, "show", job.id, "--token", "anywhere-token"],
        ["show", job.id, "--url", server.url, "--token", "anywhere-token"],
    ):
        done = trainwire(*line, TRAINWIRE_API_TOKEN="")
        assert done.returncode == 0, (line, done.stderr)
        assert json.loads(done.stdout)["id"] == job.id
    # given after the command, it wins over the one before
    refused = trainwire("--token", "anywhere-token", "jobs", "--token", "wrong", url=server.url)
    assert refused.returncode == 2 and "401" in refused.stderr


def test_a_unique_id_prefix_names_the_job(shared_server: Server) -> None:
    url = shared_server.url
    with Client(url) as tw:
        job = tw.wait(tw.submit("numpy", steps=2).id)
        # 17 jobs or more: two of them share a first digit (16 hex digits), whatever the ids
        for _ in range(17 - len(list(tw.jobs()))):
            tw.submit("numpy", steps=1)
        every_id = [j.id for j in tw.jobs()]

    def sharing(prefix: str) -> list[str]:
        return [i for i in every_id if i.startswith(prefix)]

    # the shortest prefix that names this job alone, and 8 digits as the dashboard shows them
    unique = next(job.id[:n] for n in range(1, 17) if len(sharing(job.id[:n])) == 1)
    for prefix in {unique, job.id[:8]}:
        shown = trainwire("show", prefix, url=url)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["id"] == job.id
        losses = trainwire("losses", prefix, "--json", url=url)
        assert json.loads(losses.stdout)["job_id"] == job.id

    shared = next(d for d in "0123456789abcdef" if len(sharing(d)) >= 2)
    ambiguous = trainwire("show", shared, url=url)
    assert ambiguous.returncode == 2 and ambiguous.stdout == ""
    assert "more than one job id" in ambiguous.stderr
    assert all(i in ambiguous.stderr for i in sharing(shared)[:10])

    missing = next(p for p in (f"{n:x}" * 4 for n in range(16)) if not sharing(p))
    nothing = trainwire("cancel", missing, url=url)
    assert nothing.returncode == 2 and f"no job id starts with '{missing}'" in nothing.stderr


@pytest.mark.parametrize("cancel", [False, True])
def test_ctrl_c_in_watch_says_what_becomes_of_the_job(shared_server: Server, cancel: bool) -> None:
    url = shared_server.url
    with Client(url) as tw:
        job = tw.submit("tensors", **{**TINY, "steps": 1_000_000})
        command = [str(TRAINWIRE), "watch", job.id, "--url", url]
        watcher = subprocess.Popen(
            command + (["--cancel-on-interrupt"] if cancel else []),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert watcher.stdout is not None
            assert watcher.stdout.readline().startswith("0 ")  # it is following the job
            watcher.send_signal(signal.SIGINT)
            _, stderr = watcher.communicate(timeout=60)
        finally:
            if watcher.poll() is None:
                watcher.kill()
        assert watcher.returncode == 130
        assert "Traceback" not in stderr
        if cancel:
            assert f"job {job.id} is cancelled" in stderr
            assert tw.wait(job.id).status is JobStatus.cancelled
        else:
            assert f"job {job.id} keeps running" in stderr
            assert f"trainwire cancel {job.id}" in stderr
            assert tw.get(job.id).status is JobStatus.running
            tw.cancel(job.id)


def test_run_into_a_closed_pipe_ends_quietly(shared_server: Server) -> None:
    with Client(shared_server.url) as tw:
        job = tw.wait(tw.submit("numpy", steps=300).id)
    for command in (
        f"{TRAINWIRE} run --variant numpy --steps 100000",
        f"{TRAINWIRE} watch {job.id} --url {shared_server.url}",
        f"{TRAINWIRE} losses {job.id} --url {shared_server.url}",
    ):
        done = subprocess.run(
            ["bash", "-c", f"{command} 2>&1 | head -5"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = done.stdout.splitlines()
        assert [line.split()[0] for line in lines] == ["0", "1", "2", "3", "4"], (command, done)
        assert "Error" not in done.stdout and "internal" not in done.stdout


def test_variants_and_the_help_that_lists_them(shared_server: Server) -> None:
    listed = trainwire("variants", url=shared_server.url)
    assert listed.returncode == 0, listed.stderr
    variants = {v["name"]: v for v in json.loads(listed.stdout)}
    with Client(shared_server.url) as tw:
        assert variants == {v.name: v.model_dump(mode="json") for v in tw.variants()}
    helped = trainwire("submit", "--help")
    assert helped.returncode == 0
    for name, variant in variants.items():
        line = next(ln for ln in helped.stdout.splitlines() if ln.split()[:1] == [name])
        for field, default in variant["defaults"].items():
            assert f"--{field.replace('_', '-')} {default}" in line, (name, field, line)
    screen = run_in_terminal([str(TRAINWIRE), "variants", "--url", shared_server.url])
    assert "custom_function" in screen and "learning_rate=" in screen


def test_jobs_lists_by_label(shared_server: Server) -> None:
    with Client(shared_server.url) as tw:
        mine = [tw.submit("numpy", steps=1, label="by-label").id for _ in range(2)]
        tw.submit("numpy", steps=1, label="another")
    listed = trainwire("jobs", "--label", "by-label", url=shared_server.url)
    assert listed.returncode == 0, listed.stderr
    assert [job["id"] for job in json.loads(listed.stdout)] == mine[::-1]


def test_main_called_in_a_program_leaves_its_signals_alone() -> None:
    from trainwire.cli import main

    before = signal.getsignal(signal.SIGPIPE)
    nobody = f"http://127.0.0.1:{free_port()}"
    assert main(["variants", "--url", nobody]) == 3
    assert signal.getsignal(signal.SIGPIPE) == before
