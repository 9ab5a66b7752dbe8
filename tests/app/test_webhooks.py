"""Webhooks: signed notifications of status changes, to real receivers on 127.0.0.1 that verify
each signature with the `standardwebhooks` package."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from jobclient import body, read_events, strict_json
from servers import Server, submit, wait_final, wait_for
from standardwebhooks import Webhook

from app.webhooks import UnsafeURL, check_url
from trainwire import Client

SECRET = "whsec_" + base64.b64encode(os.urandom(24)).decode()
TINY = {"batch_size": 8, "d_in": 20, "hidden": 10, "d_out": 2}
ENDLESS = {**TINY, "steps": 1_000_000}
FAST_RETRIES = {
    "TRAINWIRE_CPU_WORKERS": "2",
    "TRAINWIRE_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1,*",
    "TRAINWIRE_WEBHOOK_SECRET": SECRET,
    "TRAINWIRE_WEBHOOK_RETRY_S": "0.05",
    "TRAINWIRE_WEBHOOK_RETRY_MAX_S": "0.2",
    "TRAINWIRE_WEBHOOK_ATTEMPTS": "6",
}


@dataclass
class Receiver:
    """An HTTP server of the test's own: `answer(n)` (n: requests so far) gives the status and
    headers of each answer, or None to hang until the receiver closes."""

    answer: Callable[[int], tuple[int, dict[str, str]] | None] = lambda _: (200, {})
    got: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (webhook-id, payload)
    requests: int = 0
    unverified: int = 0
    streamed: int = 0  # bytes of endless answers written
    cut_off: bool = False  # the server stopped reading one
    release: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        receiver, verifier = self, Webhook(SECRET)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers["content-length"]))
                receiver.requests += 1
                reply = receiver.answer(receiver.requests)
                if reply is None:
                    receiver.release.wait()
                    return
                try:
                    verifier.verify(data, dict(self.headers))
                except Exception:
                    receiver.unverified += 1
                    reply = (400, {})
                status, headers = reply
                if status == 200:
                    receiver.got.append((self.headers["webhook-id"], strict_json(data.decode())))
                self.send_response(status)
                endless = headers.pop("x-endless", None) is not None
                for name, value in headers.items():
                    self.send_header(name, value)
                if not endless:
                    self.send_header("content-length", "0")
                self.end_headers()
                while endless and receiver.streamed < 1 << 30:  # a gigabyte, unless cut off
                    try:
                        self.wfile.write(b"x" * (1 << 20))
                    except OSError:
                        receiver.cut_off = True
                        return
                    receiver.streamed += 1 << 20

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def types(self, resource_id: str) -> list[str]:
        """The event types received for a job or sweep, each webhook-id once."""
        seen: dict[str, str] = {}
        for msg_id, payload in self.got:
            if payload["data"]["id"] == resource_id:
                assert seen.setdefault(msg_id, payload["type"]) == payload["type"]
        return sorted(seen.values())

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(**kw: Any) -> Receiver:
        made.append(Receiver(**kw))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("webhooks"), FAST_RETRIES).start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.kill()


def deliveries(client: Any, path: str) -> list[dict[str, Any]]:
    return list(body(client.get(f"{path}/deliveries"))["items"])


def delivery_status(client: Any, path: str) -> str | None:
    """The status of the one delivery of a job or sweep (None before there is one)."""
    listed = deliveries(client, path)
    return listed[0]["status"] if listed else None


def test_every_event_of_a_job_and_a_sweep_arrives_once_verified(
    server: Server, receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers()
    every = ["started", "paused", "succeeded", "failed", "cancelled"]
    hook = {"url": receiver.url, "events": every}
    with server.client() as client:
        done = submit(client, "numpy", hp={"steps": 20}, webhook=hook)
        assert done["webhook"] == hook  # shown with the job, no secret in it
        paused = submit(client, "tensors", hp=ENDLESS, webhook=hook)["id"]
        sweep = client.post(
            "/v1/sweeps",
            json={
                "variant": "numpy",
                "hyperparameters": {"steps": 10},
                "grid": {"learning_rate": [1e-4, 1e-3]},
                "webhook": {"url": receiver.url},
            },
        )
        assert sweep.status_code == 201, sweep.text
        sweep_id = sweep.json()["id"]
        assert sweep.json()["webhook"]["events"] == ["succeeded", "failed", "cancelled"]

        wait_final(client, done["id"])
        wait_for(lambda: body(client.get(f"/v1/jobs/{paused}"))["step"] > 0, timeout=60)
        assert client.post(f"/v1/jobs/{paused}/pause").status_code == 202
        wait_for(lambda: body(client.get(f"/v1/jobs/{paused}"))["status"] == "paused", timeout=60)
        assert client.post(f"/v1/jobs/{paused}/cancel").status_code == 202
        ended = {"succeeded", "failed", "cancelled"}
        wait_for(lambda: body(client.get(f"/v1/sweeps/{sweep_id}"))["status"] in ended, 60)
        sweep_end = body(client.get(f"/v1/sweeps/{sweep_id}"))["status"]

        wait_for(lambda: len(receiver.types(done["id"])) == 2)
        wait_for(lambda: len(receiver.types(paused)) == 3)
        wait_for(lambda: receiver.types(sweep_id) == [f"sweep.{sweep_end}"])
        assert receiver.types(done["id"]) == ["job.started", "job.succeeded"]
        assert receiver.types(paused) == ["job.cancelled", "job.paused", "job.started"]
        assert receiver.unverified == 0
        for _, payload in receiver.got:
            kind, event = payload["type"].split(".")
            if kind == "job":
                assert payload["data"]["status"] == {"started": "running"}.get(event, event)
            else:
                assert payload["data"]["status"] == event
        runs = [job["id"] for job in body(client.get(f"/v1/sweeps/{sweep_id}"))["jobs"]]
        assert all(receiver.types(run) == [] for run in runs)  # runs carry no webhook

        # the receiver has answered; the sender records that just after
        wait_for(
            lambda: all(
                d["status"] == "delivered" for d in deliveries(client, f"/v1/jobs/{paused}")
            )
        )
        listed = deliveries(client, f"/v1/jobs/{paused}")
        assert [d["event"] for d in listed] == ["job.started", "job.paused", "job.cancelled"]
        assert all(d["attempts"] == 1 for d in listed)
        assert [d["event"] for d in deliveries(client, f"/v1/sweeps/{sweep_id}")] == [
            f"sweep.{sweep_end}"
        ]
        metrics = client.get("/metrics").text
        assert "trainwire_webhook_deliveries_sent_total" in metrics
        assert "trainwire_webhook_oldest_pending_seconds" in metrics


def test_a_receiver_that_fails_five_times_gets_it_in_the_end(
    server: Server, receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers(answer=lambda n: (500, {}) if n <= 5 else (200, {}))
    with server.client() as client:
        job = submit(client, "numpy", hp={"steps": 10}, webhook={"url": receiver.url})["id"]
        wait_for(lambda: receiver.types(job) == ["job.succeeded"])
        # the receiver has answered; the sender records that just after
        wait_for(lambda: delivery_status(client, f"/v1/jobs/{job}") == "delivered")
        [delivery] = deliveries(client, f"/v1/jobs/{job}")
    assert delivery["status"] == "delivered"
    assert delivery["attempts"] == 6
    assert delivery["last_error"] is None
    assert receiver.requests == 6
    assert [msg_id for msg_id, _ in receiver.got] == [delivery["id"]]


def test_a_redirect_is_not_followed(server: Server, receivers: Callable[..., Receiver]) -> None:
    target = receivers()
    redirecting = receivers(answer=lambda _: (302, {"location": target.url}))
    with server.client() as client:
        job = submit(client, "numpy", hp={"steps": 10}, webhook={"url": redirecting.url})["id"]
        wait_for(lambda: delivery_status(client, f"/v1/jobs/{job}") == "failed", 60)
        [delivery] = deliveries(client, f"/v1/jobs/{job}")
    assert delivery["attempts"] == 6
    assert "302" in delivery["last_error"] and "redirect" in delivery["last_error"]
    assert target.requests == 0


def test_an_endless_answer_is_cut_off(server: Server, receivers: Callable[..., Receiver]) -> None:
    receiver = receivers(answer=lambda _: (200, {"x-endless": "1"}))
    with server.client() as client:
        job = submit(client, "numpy", hp={"steps": 10}, webhook={"url": receiver.url})["id"]
        wait_for(lambda: delivery_status(client, f"/v1/jobs/{job}") == "delivered", 60)
    wait_for(lambda: receiver.cut_off)
    assert receiver.streamed < 1 << 30


def test_a_hanging_receiver_stalls_nothing_else(
    server: Server, receivers: Callable[..., Receiver]
) -> None:
    hanging = receivers(answer=lambda _: None)
    good = receivers()
    with server.client() as client:
        stuck = submit(client, "numpy", hp={"steps": 10}, webhook={"url": hanging.url})["id"]
        wait_for(lambda: hanging.requests >= 1)
        job = submit(client, "numpy", hp={"steps": 30}, webhook={"url": good.url})["id"]
        read_events(client, job).assert_complete(0, "succeeded")  # its stream goes on
        wait_for(lambda: good.types(job) == ["job.succeeded"])
        assert not hanging.release.is_set()  # its attempt is still hanging meanwhile
        [delivery] = deliveries(client, f"/v1/jobs/{stuck}")
        assert delivery["status"] == "pending"


def test_pending_deliveries_go_out_after_kill_9(
    make_server: Callable[..., Server], tmp_path: Path, receivers: Callable[..., Receiver]
) -> None:
    down = threading.Event()
    down.set()
    receiver = receivers(answer=lambda _: (503, {}) if down.is_set() else (200, {}))
    env = {**FAST_RETRIES, "TRAINWIRE_WEBHOOK_ATTEMPTS": "100"}
    first = make_server(tmp_path / "data", **env)
    with first.client() as client:
        job = submit(client, "numpy", hp={"steps": 10}, webhook={"url": receiver.url})["id"]
        wait_for(lambda: receiver.requests >= 2)
        [pending] = deliveries(client, f"/v1/jobs/{job}")
    first.kill()
    assert pending["status"] == "pending"
    down.clear()
    second = make_server(tmp_path / "data", **env)
    with second.client() as client:
        wait_for(lambda: receiver.types(job) == ["job.succeeded"])
        wait_for(lambda: delivery_status(client, f"/v1/jobs/{job}") == "delivered")
    assert {msg_id for msg_id, _ in receiver.got} == {pending["id"]}


@pytest.mark.parametrize(
    ("webhook", "loc", "says"),
    [
        ({"url": "ftp://127.0.0.1/hook"}, ["body", "webhook", "url"], "http or https"),
        ({"url": "file:///etc/passwd"}, ["body", "webhook", "url"], "http or https"),
        ({"url": "http://user:pw@127.0.0.1/"}, ["body", "webhook", "url"], "user"),
        ({"url": "http://127.0.0.1/" + "a" * 2100}, ["body", "webhook", "url"], "2048"),
        ({"url": "http://localhost:9/"}, ["body", "webhook", "url"], "loopback"),
        ({"url": "http://127.0.0.1/", "events": ["done"]}, ["body", "webhook", "events", 0], ""),
        ({"url": "http://127.0.0.1/", "secret": "x"}, ["body", "webhook", "secret"], ""),
    ],
)
def test_refused_webhooks_get_422_naming_the_field(
    server: Server, webhook: dict[str, Any], loc: list[Any], says: str
) -> None:
    with server.client() as client:
        for path, request in [
            ("/v1/jobs", {"variant": "numpy"}),
            ("/v1/sweeps", {"variant": "numpy", "grid": {"seed": [1, 2]}}),
        ]:
            response = client.post(path, json={**request, "webhook": webhook})
            assert response.status_code == 422, response.text
            [error] = [e for e in body(response)["detail"] if e["loc"] == loc]
            assert says in error["msg"]


def test_a_sweep_sends_its_end_only(server: Server) -> None:
    with server.client() as client:
        response = client.post(
            "/v1/sweeps",
            json={
                "variant": "numpy",
                "grid": {"seed": [1, 2]},
                "webhook": {"url": "http://127.0.0.1:9/", "events": ["started", "failed"]},
            },
        )
    assert response.status_code == 422
    [error] = body(response)["detail"]
    assert error["loc"] == ["body", "webhook", "events"]
    assert "started" in error["msg"]


def test_a_server_without_an_allow_list_calls_no_webhook(client: Any) -> None:
    response = client.post(
        "/v1/jobs", json={"variant": "numpy", "webhook": {"url": "http://127.0.0.1:9/"}}
    )
    assert response.status_code == 422
    [error] = body(response)["detail"]
    assert error["loc"] == ["body", "webhook", "url"]
    assert "TRAINWIRE_WEBHOOK_ALLOWED_HOSTS" in error["msg"]


def test_the_allow_list() -> None:
    assert check_url("https://hooks.example.com/x", ["hooks.example.com"])[1:] == (
        "hooks.example.com",
        443,
    )
    assert check_url("http://127.0.0.1:8/", ["127.0.0.1"]) == ("http", "127.0.0.1", 8)
    for url, allowed in [
        ("http://example.com/", ["127.0.0.1"]),
        ("http://example.com/", ["*.example.com"]),  # subdomains only
        ("http://127.0.0.1/", ["*"]),  # a wildcard never reaches a private address
        ("http://[::1]/", ["*"]),
        ("http://169.254.169.254/latest/meta-data", ["*"]),
        ("http://10.0.0.1/", ["*.example.com", "*"]),
        ("http://127.0.0.1/", []),
    ]:
        with pytest.raises(UnsafeURL):
            check_url(url, allowed)


def test_the_client_and_the_command_line_submit_a_webhook(
    server: Server, receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers()
    with Client(server.url) as tw:
        job = tw.submit("numpy", steps=10, webhook={"url": receiver.url, "events": ["started"]})
        assert job.webhook is not None and [e.value for e in job.webhook.events] == ["started"]
    command = [str(Path(sys.executable).with_name("trainwire")), "submit", "numpy", "--steps"]
    given = subprocess.run(
        [*command, "10", "--webhook", receiver.url, "--webhook-event", "succeeded"]
        + ["--url", server.url],
        capture_output=True,
        text=True,
        check=True,
    )
    by_cli = given.stdout.strip()
    wait_for(lambda: receiver.types(job.id) == ["job.started"])
    wait_for(lambda: receiver.types(by_cli) == ["job.succeeded"])
