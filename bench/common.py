"""What the service benchmarks share: a server process, a lean HTTP/SSE client, statistics, tables.

The server is a real `trainwire serve` subprocess on 127.0.0.1 with its own SQLite file in a
temporary folder; it is stopped by its PID when the benchmark ends, also when it fails.

The client is a minimal HTTP/1.1 client on asyncio streams (keep-alive requests, chunked bodies,
server-sent events), so that the client process spends as little CPU as possible: on a 2-core
machine the client and the server share the cores, and a heavy client would measure itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
FINAL = frozenset({"succeeded", "failed", "cancelled"})

# The job that keeps a CPU worker busy while a benchmark sets up: `tensors` at a size where one
# step takes some tens of milliseconds (so a cancel takes effect at once) and that mostly runs in
# torch kernels (which release the GIL), with more steps than any benchmark waits for.
BLOCKER = {
    "variant": "tensors",
    "hyperparameters": {
        "batch_size": 128,
        "d_in": 1000,
        "hidden": 1000,
        "steps": 200_000,
        "learning_rate": 1e-9,  # small enough that the loss never diverges at this size
    },
    "seed": 1,
    # one core each: a blocker alone would otherwise take every core, and the next would wait
    "threads": 1,
}


# -- results -----------------------------------------------------------------------------------
@dataclass
class Figure:
    """One reported number with its baseline and target, for the summary of `python -m bench`."""

    bench: str
    name: str
    value: str
    baseline: str
    target: str
    met: bool | None  # None: no target


def met_text(met: bool | None) -> str:
    return "-" if met is None else ("yes" if met else "**no**")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A Markdown table (the numbers right-aligned), ready to paste into docs/benchmarks.md."""
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    print()
    sys.stdout.flush()


def print_figures(figures: Sequence[Figure]) -> None:
    print_table(
        ["benchmark", "figure", "value", "baseline", "target", "met"],
        [(f.bench, f.name, f.value, f.baseline, f.target, met_text(f.met)) for f in figures],
    )


def reproduce(name: str, quick: bool) -> None:
    print(f"reproduce: .venv/bin/python -m bench {name}{' --quick' if quick else ''}\n")
    sys.stdout.flush()


# -- statistics ----------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), interpolated between the closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def steal_seconds() -> float:
    """CPU seconds the hypervisor gave to other guests so far (all cores; 0 where not told).

    On a shared virtual machine this is the noise of every timing here: a core that is stolen
    for a while slows whichever side of a comparison runs then.
    """
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


@contextlib.contextmanager
def lower_priority(increment: int) -> Iterator[None]:
    """Run this (client) thread at a higher nice value meanwhile; the server started before keeps
    its own. A client on the server's machine stands in for users on other machines: it should
    take the CPU that the server and the training leave, not compete with them for it."""
    before = os.getpriority(os.PRIO_PROCESS, 0)
    os.setpriority(os.PRIO_PROCESS, 0, before + increment)
    try:
        yield
    finally:
        with contextlib.suppress(PermissionError):  # only root may lower it again
            os.setpriority(os.PRIO_PROCESS, 0, before)


def iso_epoch(stamp: str) -> float:
    """Seconds since the epoch of an ISO 8601 UTC timestamp as the service writes them."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


# -- the machine -----------------------------------------------------------------------------------
def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def commit() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_line() -> str:
    import numpy
    import torch

    return (
        f"{os.cpu_count()} cores, {cpu_model()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"commit {commit()}, python {platform.python_version()}, torch {torch.__version__}, "
        f"numpy {numpy.__version__}, load average {os.getloadavg()[0]:.2f}"
    )


def raise_open_file_limit(want: int = 65536) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards `want` (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that `finally` blocks stop the servers we started."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def use_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def proc_rss_kib(pid: int) -> int:
    """Resident set size (VmRSS) of a process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def proc_cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU seconds a process (or one of its threads) has used so far."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime


def threads_cpu_seconds(pid: int) -> float:
    """CPU seconds the live threads of a process have used, to the nanosecond (their schedstat;
    /proc/PID/stat counts 10 ms ticks). A thread that exited meanwhile is not counted."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # it exited
    return total / 1e9


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# -- the server --------------------------------------------------------------------------------
@dataclass
class BenchServer:
    """A `trainwire serve` subprocess on 127.0.0.1, its SQLite file in a temporary folder."""

    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    data_dir: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix="trainwire-bench-"))
    )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "trainwire.db"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def start(self, timeout: float = 120.0) -> BenchServer:
        # the server's own defaults, not whatever TRAINWIRE_ settings this shell has
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINWIRE_")}
        env.update({"TRAINWIRE_DATABASE_URL": f"sqlite:///{self.db_path}", **self.env})
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "app.cli",
                    "serve",
                    "--host",
                    HOST,
                    "--port",
                    str(self.port),
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        # ready: our process says it listens on our port (not some other server that took it)
        # and answers /readyz
        banner = f"running on http://{HOST}:{self.port}"
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited at start:\n{self.log_tail()}")
            if banner in self.log_path.read_text(errors="replace") and self._ready():
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server not ready within {timeout} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def _ready(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=2) as s:
                s.sendall(b"GET /readyz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                return s.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def rss_kib(self) -> int:
        return proc_rss_kib(self.pid)

    def cpu_seconds(self) -> float:
        """CPU seconds of the server's own process (its worker children apart)."""
        return threads_cpu_seconds(self.pid)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM our process by its PID, SIGKILL if it has not exited within `timeout`."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> BenchServer:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def checkpoint_size(self) -> int:
        """Bytes of the SQLite file plus its WAL, after checkpointing the WAL into the file."""
        conn = sqlite3.connect(self.db_path, timeout=30)
        try:
            for _ in range(100):
                busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if not busy:
                    break
                time.sleep(0.05)
        finally:
            conn.close()
        size = self.db_path.stat().st_size
        wal = self.db_path.with_name(self.db_path.name + "-wal")
        if wal.exists():
            size += wal.stat().st_size
        return size


@contextlib.contextmanager
def server(**env: object) -> Iterator[BenchServer]:
    """A started server with these TRAINWIRE_ settings (keyword: the name after the prefix)."""
    with BenchServer({f"TRAINWIRE_{k.upper()}": str(v) for k, v in env.items()}) as s:
        yield s


# -- a lean HTTP/1.1 client ----------------------------------------------------------------------
@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Event = tuple[str, str | None, str]
"""A server-sent event: (event type, id or None, data)."""


class Conn:
    """One keep-alive HTTP/1.1 connection. Not for concurrent use: one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int):
        self.reader = reader
        self.writer = writer
        self.port = port

    @classmethod
    async def open(cls, port: int) -> Conn:
        reader, writer = await asyncio.open_connection(HOST, port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer, port)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self.writer.wait_closed()

    async def _fresh(self) -> None:
        """Reconnect if the server closed this connection (uvicorn ends idle ones after 5 s)."""
        if self.reader.at_eof() or self.writer.is_closing():
            await self.close()
            fresh = await Conn.open(self.port)
            self.reader, self.writer = fresh.reader, fresh.writer

    async def _send_and_read_head(
        self, method: str, path: str, body: Any, headers: dict[str, str] | None
    ) -> tuple[int, dict[str, str]]:
        await self._fresh()
        self.send(method, path, body, headers)
        try:
            return await self.read_head()
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
        # closed before answering a byte: the server dropped the idle connection; once more
        await self.close()
        await self._fresh()
        self.send(method, path, body, headers)
        return await self.read_head()

    def send(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        head = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{self.port}"]
        data = b""
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            head += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)

    async def read_head(self) -> tuple[int, dict[str, str]]:
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        return status, headers

    async def body_pieces(self, headers: dict[str, str]) -> AsyncIterator[bytes]:
        """The body as it arrives: each chunk of a chunked body, or the whole fixed-size body."""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            decoder = ChunkedDecoder()
            while not decoder.done:
                data = await self.reader.read(65536)
                if not data:
                    raise asyncio.IncompleteReadError(bytes(decoder.buffer), None)
                payload = decoder.feed(data)
                if payload:
                    yield payload
        elif "content-length" in headers:
            length = int(headers["content-length"])
            if length:
                yield await self.reader.readexactly(length)
        else:
            while data := await self.reader.read(65536):
                yield data

    async def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Response:
        status, resp_headers = await self._send_and_read_head(method, path, body, headers)
        data = b"".join([piece async for piece in self.body_pieces(resp_headers)])
        return Response(status, resp_headers, data)

    async def stream(
        self, path: str, headers: dict[str, str] | None = None
    ) -> AsyncIterator[bytes]:
        """GET an SSE stream; yield the raw bytes of its complete events as they arrive."""
        status, resp_headers = await self._send_and_read_head("GET", path, None, headers)
        if status != 200:
            body = b"".join([p async for p in self.body_pieces(resp_headers)])
            raise RuntimeError(f"GET {path}: {status} {body[:200]!r}")
        blocks = EventBlocks()
        async for piece in self.body_pieces(resp_headers):
            block = blocks.feed(piece)
            if block:
                yield block

    async def events(
        self, path: str, headers: dict[str, str] | None = None
    ) -> AsyncIterator[list[Event]]:
        """GET an SSE stream; yield its events as they arrive, a list per received chunk."""
        parser = SSEParser()
        async for block in self.stream(path, headers):
            events = parser.feed(block)
            if events:
                yield events


class ChunkedDecoder:
    """Decodes a chunked HTTP body as it arrives (no trailers)."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.chunks = 0  # complete chunks so far: one per write of the server
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """The payload of every chunk that `data` completes (b"" if none)."""
        self.buffer += data
        pieces, pos = [], 0
        while (eol := self.buffer.find(b"\r\n", pos)) >= 0:
            size = int(bytes(self.buffer[pos:eol]).split(b";", 1)[0], 16)
            if size == 0:
                end = self.buffer.find(b"\r\n\r\n", eol)
                if end < 0:
                    break
                if end + 4 != len(self.buffer):
                    raise RuntimeError("bytes after the end of a response")
                self.done = True
                pos = end + 4
                break
            if len(self.buffer) < eol + 4 + size:
                break
            pieces.append(bytes(self.buffer[eol + 2 : eol + 2 + size]))
            self.chunks += 1
            pos = eol + 4 + size
        del self.buffer[:pos]
        return b"".join(pieces)


class EventBlocks:
    """Cuts a byte stream into runs of complete server-sent events (each ends with a blank line)."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> bytes:
        data = self._rest + data if self._rest else data
        cut = data.rfind(b"\n\n") + 2
        if cut < 2:
            self._rest = data
            return b""
        self._rest = data[cut:]
        return data[:cut]


class SSEParser:
    """Server-sent events from a byte stream (events end with a blank line; LF line ends)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[Event]:
        self._buffer += data
        if b"\n\n" not in self._buffer:
            return []
        *blocks, self._buffer = self._buffer.split(b"\n\n")
        events: list[Event] = []
        for block in blocks:
            kind, event_id, data_lines = "message", None, []
            for line in block.split(b"\n"):
                if not line or line[0] == 0x3A:  # ":" starts a comment (keep-alives)
                    continue
                name, _, value = line.partition(b":")
                if value[:1] == b" ":
                    value = value[1:]
                if name == b"event":
                    kind = value.decode()
                elif name == b"data":
                    data_lines.append(value.decode())
                elif name == b"id":
                    event_id = value.decode()
            if data_lines:
                events.append((kind, event_id, "\n".join(data_lines)))
        return events


# -- service calls -------------------------------------------------------------------------------
async def submit(conn: Conn, job: dict[str, Any]) -> dict[str, Any]:
    response = await conn.request("POST", "/v1/jobs", job)
    if response.status != 201:
        raise RuntimeError(f"POST /v1/jobs: {response.status} {response.body[:300]!r}")
    return dict(response.json())


async def get_job(conn: Conn, job_id: str) -> dict[str, Any]:
    response = await conn.request("GET", f"/v1/jobs/{job_id}")
    if response.status != 200:
        raise RuntimeError(f"GET /v1/jobs/{job_id}: {response.status}")
    return dict(response.json())


async def cancel(conn: Conn, job_id: str) -> None:
    response = await conn.request("POST", f"/v1/jobs/{job_id}/cancel")
    if response.status not in (202, 409):
        raise RuntimeError(f"cancel {job_id}: {response.status} {response.body[:200]!r}")


async def wait_job(
    conn: Conn,
    job_id: str,
    until: Callable[[dict[str, Any]], bool],
    timeout: float,
    interval: float = 0.02,
) -> dict[str, Any]:
    """Poll a job until `until(job)`; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        job = await get_job(conn, job_id)
        if until(job):
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['status']} after {timeout} s")
        await asyncio.sleep(interval)


async def wait_idle(conn: Conn, timeout: float, interval: float = 0.05) -> None:
    """Wait until no job is queued or running."""
    deadline = time.monotonic() + timeout
    while True:
        response = await conn.request("GET", "/v1/jobs?status=queued&status=running&limit=1")
        if response.status != 200:
            raise RuntimeError(f"GET /v1/jobs: {response.status}")
        if not response.json()["items"]:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs still queued or running after {timeout} s")
        await asyncio.sleep(interval)


async def list_all(conn: Conn, query: str = "") -> list[dict[str, Any]]:
    """Every job (newest first), paging through the list."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        path = f"/v1/jobs?limit=500{query}" + (f"&cursor={cursor}" if cursor else "")
        response = await conn.request("GET", path)
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status}")
        page = response.json()
        items += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return items


async def start_blockers(conn: Conn, workers: int, timeout: float = 60.0) -> list[str]:
    """Occupy every CPU worker with a blocker job; returns their ids once they all run."""
    ids = [str((await submit(conn, BLOCKER))["id"]) for _ in range(workers)]
    for job_id in ids:
        job = await wait_job(conn, job_id, lambda j: j["status"] != "queued", timeout)
        if job["status"] != "running":
            raise RuntimeError(f"blocker job ended {job['status']}: {job['error']}")
    return ids


def standalone(name: str, run: Callable[[bool], list[Figure]]) -> int:
    """`python -m bench.NAME [--quick]`: run one benchmark."""
    import argparse

    parser = argparse.ArgumentParser(prog=f"python -m bench.{name}")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    args = parser.parse_args()
    exit_on_sigterm()
    raise_open_file_limit()
    print(f"machine: {machine_line()}\n")
    run(args.quick)
    return 0


_ID_LINE = re.compile(rb"^id: (\d+)$", re.MULTILINE)
_STATUS_EVENT = re.compile(rb"^event: status\ndata: (.*)$", re.MULTILINE)


@dataclass
class Subscriber:
    """One SSE subscriber's record of a stream: steps in order, statuses, when it ended."""

    steps_seen: int = 0
    out_of_order: int = 0
    chunks: int = 0  # HTTP chunks that carried events: one per server write
    statuses: list[str] = field(default_factory=list)
    connected_at: float = math.nan
    ended_at: float = math.nan
    error: str | None = None

    def check(self, block: bytes) -> bool:
        """Account for a block of complete events; True if it held a status event.

        A fast path for many streams (regular expressions, no per-event parsing): only `loss`
        events carry an `id:` line (the step), and each must be the next step; no loss may follow
        the final status.
        """
        ids = _ID_LINE.findall(block)
        if ids:
            first = self.steps_seen
            if (self.statuses and self.statuses[-1] in FINAL) or list(map(int, ids)) != list(
                range(first, first + len(ids))
            ):
                self.out_of_order += 1
            self.steps_seen += len(ids)
        found = False
        for match in _STATUS_EVENT.finditer(block):
            found = True
            self.statuses.append(json.loads(match.group(1))["status"])
            if self.statuses[-1] in FINAL and _ID_LINE.search(block, match.end()):
                self.out_of_order += 1
        return found

    def complete(self, steps: int) -> bool:
        return (
            self.error is None
            and self.steps_seen == steps
            and self.out_of_order == 0
            and bool(self.statuses)
            and self.statuses[-1] in FINAL
        )


class _Follower(asyncio.Protocol):
    """One subscriber as a bare protocol: parses in data_received, no task wake-up per read."""

    def __init__(
        self, request: bytes, record: Subscriber, first_status: Callable[[], None], done: Any
    ):
        self.request = request
        self.record = record
        self.first_status = first_status
        self.done: asyncio.Future[None] = done
        self.head = bytearray()
        self.decoder: ChunkedDecoder | None = None
        self.blocks = EventBlocks()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport  # uvloop's transports are not asyncio.Transport subclasses
        try:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            transport.write(self.request)
        except Exception as exc:
            self._finish(exc)

    def data_received(self, data: bytes) -> None:
        try:
            self._feed(data)
        except Exception as exc:
            self._finish(exc)

    def _feed(self, data: bytes) -> None:
        if self.decoder is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.head[:end]).decode("latin-1").lower()
            if head.split(" ", 2)[1] != "200" or "transfer-encoding: chunked" not in head:
                raise RuntimeError(f"unexpected answer: {head[:200]!r}")
            data = bytes(self.head[end + 4 :])
            self.decoder = ChunkedDecoder()
        block = self.blocks.feed(self.decoder.feed(data))
        self.record.chunks = self.decoder.chunks
        if block and self.record.check(block) and len(self.record.statuses) == 1:
            self.first_status()
        if self.decoder.done:
            self.record.ended_at = time.time()
            self._finish(None)

    def _finish(self, exc: Exception | None) -> None:
        if not self.done.done():
            if exc is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"closed before the stream's end ({exc})"))


async def subscribe(
    port: int,
    job_id: str,
    record: Subscriber,
    connected: asyncio.Semaphore,
    gate: asyncio.Semaphore,
) -> None:
    """Follow a job's event stream to its end, checking each step arrives once and in order.

    `gate` bounds concurrent connection attempts; `connected` is released once the first
    `status` event has arrived (or the stream failed before it).
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def first_status() -> None:
        record.connected_at = time.time()
        connected.release()

    request = f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
    transport: asyncio.BaseTransport | None = None
    try:
        async with gate:
            transport, _ = await loop.create_connection(
                lambda: _Follower(request, record, first_status, done), HOST, port
            )
        await done
    except Exception as exc:
        record.error = f"{type(exc).__name__}: {exc}"
    finally:
        if math.isnan(record.connected_at):
            record.connected_at = math.inf
            connected.release()
        if transport is not None:
            transport.close()


async def open_subscribers(
    port: int, job_id: str, count: int, timeout: float
) -> tuple[list[Subscriber], list[asyncio.Task[None]], float]:
    """Open `count` streams on a job; return once each has its first status event.

    Returns the records, the tasks following the streams, and the seconds it took to connect.
    """
    records = [Subscriber() for _ in range(count)]
    connected = asyncio.Semaphore(0)
    gate = asyncio.Semaphore(64)
    began = time.perf_counter()
    tasks = [asyncio.create_task(subscribe(port, job_id, r, connected, gate)) for r in records]

    async def all_connected() -> None:
        for _ in range(count):
            await connected.acquire()

    try:
        await asyncio.wait_for(all_connected(), timeout)
    except TimeoutError:
        for task in tasks:
            task.cancel()
        raise TimeoutError(
            f"{sum(not math.isnan(r.connected_at) for r in records)} of {count} subscribers "
            f"connected within {timeout} s"
        ) from None
    failed = [r.error for r in records if r.error]
    if failed:
        for task in tasks:
            task.cancel()
        raise RuntimeError(f"{len(failed)} subscribers failed: {failed[0]}")
    return records, tasks, time.perf_counter() - began
