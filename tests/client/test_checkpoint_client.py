"""Checkpoints from the client and the `trainwire` command, against a real server: pause,
resume, list, download (sha256 checked) and fork."""

from __future__ import annotations

import hashlib
from pathlib import Path

from safetensors.torch import load_file
from servers import Server, wait_for
from test_command_line import trainwire

from trainwire import Client
from trainwire.models import JobStatus

TINY = {"batch_size": 8, "d_in": 20, "hidden": 10, "d_out": 2}


def test_pause_resume_fork_and_download_from_python_and_the_command_line(
    shared_server: Server, tmp_path: Path
) -> None:
    url = shared_server.url
    with Client(url) as tw:
        job = tw.submit("custom_module", seed=4, threads=1, steps=1_000_000, **TINY)
        wait_for(lambda: tw.get(job.id).step > 0, timeout=60)
        paused = trainwire("pause", job.id, url=url)
        assert paused.returncode == 0, paused.stderr
        assert paused.stdout.split()[0] == job.id
        at = wait_for(lambda: (j := tw.get(job.id)).status == JobStatus.paused and j).step

        listed = trainwire("checkpoints", job.id, url=url)
        assert listed.returncode == 0, listed.stderr
        step, size, sha, _ = listed.stdout.strip().split("\t")
        assert int(step) == at and [c.step for c in tw.checkpoints(job.id)] == [at]

        out = tmp_path / "w.safetensors"
        got = trainwire("download", job.id, "-o", str(out), url=url)
        assert got.returncode == 0, got.stderr
        assert hashlib.sha256(out.read_bytes()).hexdigest() == sha and out.stat().st_size == int(
            size
        )
        assert set(load_file(out)) >= {"linear1.weight", "linear2.bias"}
        assert (
            tw.download_checkpoint(job.id, at, tmp_path / "again.safetensors").read_bytes()
            == out.read_bytes()
        )

        forked = trainwire(
            "fork", job.id, "--step", str(at), "--learning-rate", "0.001", "--steps",
            str(at + 5), url=url,
        )  # fmt: skip
        assert forked.returncode == 0, forked.stderr
        fork = tw.wait(forked.stdout.strip())
        assert fork.status == JobStatus.succeeded and fork.step == at + 5
        assert fork.forked_from is not None and fork.forked_from.step == at
        assert fork.hyperparameters["learning_rate"] == 0.001

        again = tw.fork(job.id, at, steps=at + 3)
        assert tw.wait(again.id).step == at + 3

        assert tw.resume(job.id).status == JobStatus.queued
        wait_for(lambda: tw.get(job.id).step > at, timeout=60)
        refused = trainwire("resume", job.id, url=url)
        assert refused.returncode == 2 and "409" in refused.stderr
        tw.cancel(job.id)
