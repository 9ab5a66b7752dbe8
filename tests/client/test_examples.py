"""The notebook example runs as written against a real server."""

from __future__ import annotations

import os
import subprocess
import sys

from servers import ROOT, Server


def test_the_notebook_example_runs(shared_server: Server) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "notebook.py")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TRAINWIRE_URL": shared_server.url, "MPLBACKEND": "Agg"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("succeeded") == 5  # the live run's status, then the four of the scan
    assert "step  150" in done.stdout
