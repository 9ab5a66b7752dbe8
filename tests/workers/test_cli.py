"""`trainwire run`: the tutorial's `print(t, loss)` in a terminal, from the same engine."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from app.cli import main

ROOT = Path(__file__).resolve().parents[2]


def parse_lines(text: str) -> list[tuple[int, float]]:
    rows = []
    for line in text.splitlines():
        t, loss = line.split(" ")
        rows.append((int(t), float(loss)))
    return rows


def test_run_prints_t_and_loss_per_step_as_run_job_makes_them(train: Callable[..., Any]) -> None:
    # one torch and one BLAS thread, as in this process (see conftest): the same arithmetic
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "run", "--variant", "numpy", "--steps", "5"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    rows = parse_lines(done.stdout)
    assert [t for t, _ in rows] == [0, 1, 2, 3, 4]
    assert [loss for _, loss in rows] == train("numpy", 0, steps=5).losses


@pytest.mark.parametrize(
    ("variant", "options", "hp"),
    [
        ("custom_function", ["--seed", "3", "--steps", "4"], {"steps": 4}),
        (
            "dynamic",
            ["--seed", "2", "--steps", "6", "--momentum", "0.5", "--max-middle-layers", "1"],
            {"steps": 6, "momentum": 0.5, "max_middle_layers": 1},
        ),
        (
            "nn",
            ["--steps", "3", "--batch-size", "8", "--d-in", "30", "--hidden", "7", "--d-out", "2"],
            {"steps": 3, "batch_size": 8, "d_in": 30, "hidden": 7, "d_out": 2},
        ),
        (
            "tensors",
            ["--steps", "3", "--dtype", "float64", "--learning-rate", "1e-7"],
            {"steps": 3, "dtype": "float64", "learning_rate": 1e-7},
        ),
    ],
)
def test_options_reach_the_run(
    capsys: pytest.CaptureFixture[str],
    train: Callable[..., Any],
    variant: str,
    options: list[str],
    hp: dict[str, Any],
) -> None:
    assert main(["run", "--variant", variant, *options]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    seed = int(options[options.index("--seed") + 1]) if "--seed" in options else 0
    want = train(variant, seed, **hp).losses
    assert parse_lines(out) == list(enumerate(want))


@pytest.mark.parametrize(
    ("options", "option"),
    [
        (["--variant", "numpy", "--steps", "0"], "--steps"),
        (["--variant", "numpy", "--steps", "2000000"], "--steps"),
        (["--variant", "nn", "--batch-size", "-3"], "--batch-size"),
        (["--variant", "nn", "--d-in", "0"], "--d-in"),
        (["--variant", "tensors", "--dtype", "float16"], "--dtype"),
        (["--variant", "autograd", "--learning-rate", "nan"], "--learning-rate"),
        (["--variant", "autograd", "--learning-rate", "inf"], "--learning-rate"),
        (["--variant", "autograd", "--learning-rate=-1e-3"], "--learning-rate"),
        (["--variant", "numpy", "--momentum", "0.5"], "--momentum"),
        (["--variant", "nn", "--max-middle-layers", "2"], "--max-middle-layers"),
        (["--variant", "dynamic", "--momentum", "1.5"], "--momentum"),
        (["--variant", "numpy", "--device", "cuda"], "--device"),
        (["--variant", "numpy", "--device", "cuda:1"], "--device"),
    ],
)
def test_a_bad_value_exits_2_naming_the_option(
    capsys: pytest.CaptureFixture[str], options: list[str], option: str
) -> None:
    assert main(["run", *options]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # no step ran
    assert err.startswith(option + ":"), err


@pytest.mark.parametrize(
    ("options", "option"),
    [
        (["--variant", "numpy", "--steps", "five"], "--steps"),
        (["--variant", "numpy", "--steps", "2.5"], "--steps"),
        (["--variant", "numpy", "--seed", "x"], "--seed"),
        (["--variant", "nn", "--learning-rate", "fast"], "--learning-rate"),
        (["--variant", "numpyy"], "--variant"),
        (["--steps", "5"], "--variant"),
    ],
)
def test_a_value_argparse_cannot_read_exits_2_naming_the_option(
    capsys: pytest.CaptureFixture[str], options: list[str], option: str
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", *options])
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert option in err


def test_a_diverging_run_prints_its_steps_and_exits_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", "--variant", "numpy", "--learning-rate", "1e-2"]) == 1
    out, err = capsys.readouterr()
    rows = parse_lines(out)
    assert [t for t, _ in rows] == list(range(len(rows)))
    assert not math.isfinite(rows[-1][1])
    assert err.startswith("failed: diverged: ")
    assert f"at step {len(rows) - 1}" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_run_without_a_gpu_fails_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--variant", "tensors", "--device", "cuda", "--steps", "2"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("failed: internal: ") and "CUDA" in err
