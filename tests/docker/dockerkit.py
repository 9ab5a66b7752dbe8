"""A private Docker engine for the image tests, and the images they run.

The engine is Debian's `dockerd` (`make docker-deps` installs it), started as root with its own
data root, exec root, PID file and socket under a short /tmp path, no bridge and no iptables
rules: containers use the host's network (`--network host`) or none. It is stopped by its PID at
the end; a system-wide daemon is never touched.

No image registry can be reached here, so the product image is built on a stand-in base made on
this machine: Debian bookworm by debootstrap, imported, plus a virtual environment and the CPU
build of torch (base/Dockerfile). That base is saved under ~/.cache/trainwire-docker, keyed on
its recipe, and loaded from there by later runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("TRAINWIRE_DOCKER_CACHE", Path.home() / ".cache/trainwire-docker"))
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
DEBOOTSTRAP = [
    "debootstrap", "--variant=minbase",
    "--include=python3,python3-pip,python3-venv,ca-certificates",
    "bookworm", "{rootfs}", "http://deb.debian.org/debian",
]  # fmt: skip
ROOTFS_IMAGE = "trainwire-test-rootfs:bookworm"
IMAGE = "trainwire:test-cpu"


def torch_version() -> str:
    """The torch that the CPU constraints pin (the same wheel as the local environment's)."""
    found = re.search(r"^torch==(\S+)", (ROOT / "constraints-cpu.txt").read_text(), re.M)
    assert found, "constraints-cpu.txt pins no torch"
    return found.group(1)


def _term_with_parent() -> None:
    """In the engine's process: SIGTERM it should the test process die first."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _missing(what: str) -> None:
    pytest.fail(f"{what}: `make docker-deps` installs Docker's engine (as root)", pytrace=False)


class Engine:
    """One `dockerd` of this test run's own."""

    def __init__(self) -> None:
        if os.geteuid() != 0:
            _missing("the image tests start a Docker engine of their own, which needs root")
        for tool in ("dockerd", "docker", "debootstrap", "docker-compose"):
            if shutil.which(tool) is None:
                _missing(f"{tool} not found")
        # a unix socket's path is limited to 107 bytes: keep the folder short
        self.dir = Path(tempfile.mkdtemp(prefix="twd", dir="/tmp"))
        self.socket = self.dir / "s"
        self.exec_root = self.dir / "e"
        self.pidfile = self.dir / "p"
        self.log_path = self.dir / "dockerd.log"
        self.env = {
            **os.environ,
            "DOCKER_HOST": f"unix://{self.socket}",
            "DOCKER_BUILDKIT": "0",  # the legacy builder: no buildx here
            "DOCKER_CONFIG": str(self.dir / "client"),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> Engine:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                ["dockerd", "--bridge=none", "--iptables=false", "--ip6tables=false",
                 "--data-root", str(self.dir / "d"), "--exec-root", str(self.exec_root),
                 "--pidfile", str(self.pidfile), "-H", f"unix://{self.socket}"],
                stdout=log, stderr=subprocess.STDOUT, preexec_fn=_term_with_parent,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while self.docker("version", check=False, timeout=10).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"dockerd did not start:\n{self.log()}", pytrace=False)
            time.sleep(0.2)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def docker(
        self, *args: str, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        return self.run(["docker", *args], check=check, timeout=timeout)

    def run(
        self,
        argv: Sequence[str],
        check: bool = True,
        timeout: float = 120.0,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """A client command (docker, docker-compose) against this engine."""
        result = subprocess.run(
            list(argv), env=self.env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
            check=False,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def inspect(self, container: str) -> dict[str, Any]:
        return dict(json.loads(self.docker("inspect", container).stdout)[0])

    def has_image(self, name: str) -> bool:
        return self.docker("image", "inspect", name, check=False).returncode == 0

    def stop(self) -> None:
        """Remove every container, stop the engine by its PID, and clean up after it."""
        if self.process is not None and self.process.poll() is None:
            ids = self.docker("ps", "-aq", check=False).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        netns = self.exec_root / "netns" / "default"
        if os.path.ismount(netns):
            subprocess.run(["umount", str(netns)], check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def engine() -> Iterator[Engine]:
    running = Engine().start()
    try:
        yield running
    finally:
        running.stop()


def base_key() -> str:
    """What the stand-in base is made from: its recipe, the torch pin and the host's CA bundle."""
    digest = hashlib.sha256()
    digest.update(json.dumps(DEBOOTSTRAP).encode())
    digest.update((HERE / "base" / "Dockerfile").read_bytes())
    digest.update(torch_version().encode())
    digest.update(HOST_CA.read_bytes())
    return digest.hexdigest()[:16]


def base_image(docker: Engine) -> str:
    """The stand-in base image, loaded from the cache or made (and cached) here."""
    key = base_key()
    name = f"trainwire-test-base:{key}"
    cached = CACHE / f"base-{key}.tar"
    if docker.has_image(name):
        return name
    if cached.exists():
        docker.docker("load", "-i", str(cached), timeout=600)
        if docker.has_image(name):
            return name
    work = Path(tempfile.mkdtemp(prefix="twbase", dir="/tmp"))
    try:
        rootfs = work / "rootfs"
        made = subprocess.run(
            [arg.format(rootfs=rootfs) for arg in DEBOOTSTRAP],
            capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        assert made.returncode == 0, f"debootstrap failed:\n{made.stdout[-3000:]}{made.stderr}"
        with subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE) as tar:
            imported = subprocess.run(
                ["docker", "import", "-", ROOTFS_IMAGE],
                stdin=tar.stdout, env=docker.env, capture_output=True, timeout=600, check=False,
            )  # fmt: skip
        assert tar.returncode == 0 and imported.returncode == 0, imported.stderr
        context = work / "context"
        context.mkdir()
        shutil.copy(HERE / "base" / "Dockerfile", context / "Dockerfile")
        shutil.copy(HOST_CA, context / "ca-certificates.crt")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--only-binary=:all:", "--python-version", "3.11",
             f"torch=={torch_version()}", "-d", str(context)],
            check=True, timeout=900,
        )  # fmt: skip
        docker.docker(
            "build", "--network", "host", "--build-arg", f"BASE_ROOTFS={ROOTFS_IMAGE}",
            "-t", name, str(context), timeout=900,
        )  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    for old in CACHE.glob("base-*.tar"):
        old.unlink()
    partial = cached.with_suffix(".partial")
    docker.docker("save", "-o", str(partial), name, timeout=600)
    partial.rename(cached)
    return name


# What a build context must not carry into the image: local state planted in the copy.
PLANTED = {
    ".venv/bin/python": "#!/bin/false\n",
    ".env": "TRAINWIRE_API_TOKEN=planted-in-the-context\n",
    "data/trainwire.db": "not a database\n",
    "app/planted.db": "not a database\n",
    "app/__pycache__/planted.cpython-311.pyc": "not bytecode\n",
    "notes.swp": "an editor's swap file\n",
}

# heavy or generated folders that a checkout may hold; the rest of the folder is copied as it is
_NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", "*.egg-info", "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache",
    "data", "build", "dist",
)  # fmt: skip


def build_context(where: Path) -> Path:
    """A copy of the project folder, with the local state of PLANTED added to it."""
    context = where / "context"
    shutil.copytree(ROOT, context, ignore=_NOT_COPIED)
    for path, text in PLANTED.items():
        (context / path).parent.mkdir(parents=True, exist_ok=True)
        (context / path).write_text(text)
    return context
