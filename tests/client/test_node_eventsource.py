"""A job's stream as a browser-style client from npm reads it: Node's `eventsource` package
follows a stream whose connection a proxy on 127.0.0.1 cuts, reconnects with Last-Event-ID and
gets every step once, in order, then the final status."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from servers import ByteCuttingProxy, Server

from trainwire import Client

EVENTSOURCE = "eventsource@4.0.0"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "trainwire-tests"
READER = Path(__file__).with_name("eventsource_reader.mjs")
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # the registry is reached through a proxy


def node_modules() -> Path:
    """A folder with the npm package installed (once; kept between runs)."""
    folder = CACHE / "node"
    if not (folder / "node_modules" / "eventsource" / f".{EVENTSOURCE}").exists():
        folder.mkdir(parents=True, exist_ok=True)
        npm = shutil.which("npm")
        assert npm is not None, "npm is missing: `make node-deps` installs Debian's nodejs"
        subprocess.run(
            [npm, "install", "--no-save", "--silent", "--cafile", CA_BUNDLE, EVENTSOURCE],
            cwd=folder,
            check=True,
            timeout=300,
        )
        (folder / "node_modules" / "eventsource" / f".{EVENTSOURCE}").touch()
    return folder / "node_modules"


def test_node_eventsource_reads_every_step_once_across_cuts(shared_server: Server) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is missing: `make node-deps` installs Debian's nodejs")
    modules = node_modules()
    with Client(shared_server.url) as tw:
        job = tw.wait(tw.submit("numpy", steps=3000, seed=3).id)
        steps, losses = tw.losses(job.id)
    # an ES module's imports resolve from its own folder up: the reader sits by node_modules
    reader = shutil.copy(READER, modules.parent / READER.name)
    proxy = ByteCuttingProxy(shared_server.port, after=20_000, cuts=3)
    try:
        done = subprocess.run(
            [node, reader, f"http://127.0.0.1:{proxy.port}/v1/jobs/{job.id}/events"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        proxy.close()
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["status"] == "succeeded"
    assert seen["steps"] == steps == list(range(3000))  # every step once, in order
    assert seen["opens"] == 4  # three cuts, three reconnects
    # each reconnect asked to resume after the last step it had seen
    resumed = [r for r in proxy.requests[1:] if b"last-event-id:" in r.lower()]
    assert len(resumed) == 3
