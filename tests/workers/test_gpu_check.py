"""`make gpu-check` on a host without CUDA, and its wheels folder (the rehearsal of every part on
the CPU is `make gpu-check GPU_CHECK_ARGS=--dry-run`, minutes: not a test)."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has CUDA")
def test_without_cuda_the_check_exits_2_and_says_so(tmp_path: Path) -> None:
    out = tmp_path / "gpu-check.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "no CUDA device" in done.stderr
    assert json.loads(out.read_text())["cuda"] is False


def test_the_wheels_folder_goes_on_the_path_unpacked(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "tinypkg-1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("tinypkg/__init__.py", "WHERE = __file__\n")
        wheel.writestr("tinypkg-1.0.dist-info/METADATA", "Name: tinypkg\nVersion: 1.0\n")
    code = (
        "import sys; from bench.gpu_check import use_wheels; "
        f"paths = use_wheels({str(wheels)!r}); import tinypkg; "
        "import importlib.metadata as m; print(tinypkg.WHERE.startswith(paths[0]), "
        "m.version('tinypkg'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.split() == ["True", "1.0"], done.stderr
