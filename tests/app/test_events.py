"""The live stream (server-sent events): order, replay, resuming, joining mid-run, many readers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from jobclient import Stream, all_losses, body, read_events, strict_json
from servers import Server, submit, wait_final, wait_for

# small tensors: a step costs less than its bookkeeping: long runs in steps, short in time
TINY = {"batch_size": 8, "d_in": 20, "hidden": 10, "d_out": 2}
# the server's most steps: a job that runs until the test cancels it, however fast the CPU
ENDLESS = {**TINY, "steps": 1_000_000}


@pytest.fixture(scope="module")
def finished_job(shared_server: Server) -> dict[str, Any]:
    """A succeeded job of 40 steps, with its stored losses under "losses"."""
    with shared_server.client() as client:
        job = submit(client, "autograd", hp={"steps": 40}, seed=7)
        job = wait_final(client, job["id"])
        assert job["status"] == "succeeded", job
        steps, losses = all_losses(client, job["id"])
        assert steps == list(range(40))
        return {**job, "losses": losses}


def _step_reached(client: httpx.Client, job_id: str, step: int) -> bool:
    job = body(client.get(f"/v1/jobs/{job_id}"))
    assert job["status"] in {"queued", "running"}, f"the job ended before step {step}: {job}"
    return bool(job["step"] > step)


def test_a_finished_job_is_replayed_from_the_start(
    client: httpx.Client, finished_job: dict[str, Any]
) -> None:
    response_headers: dict[str, str] = {}
    with client.stream("GET", f"/v1/jobs/{finished_job['id']}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        response_headers.update(response.headers)
        response.read()

    stream = read_events(client, finished_job["id"])
    stream.assert_complete(first_step=0, final_status="succeeded")
    assert stream.losses == finished_job["losses"]
    assert [s["status"] for s in stream.statuses] == ["succeeded", "succeeded"]
    assert stream.statuses[-1] == body(client.get(f"/v1/jobs/{finished_job['id']}"))
    assert "no-cache" in response_headers.get("cache-control", "")


@pytest.mark.parametrize(
    "resume",
    [{"params": {"after": 17}}, {"headers": {"Last-Event-ID": "17"}}],
    ids=["after-query", "last-event-id-header"],
)
def test_resuming_after_step_17_starts_the_losses_at_18(
    client: httpx.Client, finished_job: dict[str, Any], resume: dict[str, Any]
) -> None:
    stream = read_events(client, finished_job["id"], **resume)
    stream.assert_complete(first_step=18, final_status="succeeded")
    assert stream.losses == finished_job["losses"][18:]


@pytest.mark.parametrize("after", [39, 40, 1000])
def test_resuming_at_or_past_the_end_sends_only_the_statuses(
    client: httpx.Client, finished_job: dict[str, Any], after: int
) -> None:
    stream = read_events(client, finished_job["id"], params={"after": after})
    assert [e.event for e in stream.events] == ["status", "status"]
    assert stream.statuses[-1]["status"] == "succeeded"


@pytest.mark.parametrize(("last_event_id", "first_step"), [("-1", 0), ("0", 1), ("017", 18)])
def test_a_last_event_id_of_minus_one_or_digits_is_taken(
    client: httpx.Client, finished_job: dict[str, Any], last_event_id: str, first_step: int
) -> None:
    stream = read_events(client, finished_job["id"], headers={"Last-Event-ID": last_event_id})
    stream.assert_complete(first_step=first_step, final_status="succeeded")
    assert stream.losses == finished_job["losses"][first_step:]


def test_a_last_event_id_that_is_not_a_step_is_422(
    client: httpx.Client, finished_job: dict[str, Any]
) -> None:
    response = client.get(
        f"/v1/jobs/{finished_job['id']}/events", headers={"Last-Event-ID": "seventeen"}
    )
    assert response.status_code == 422
    assert [e["loc"] for e in body(response)["detail"]] == [["header", "last-event-id"]]


class Watcher:
    """Reads one job's stream on a thread of its own; `seen` fills as events arrive."""

    def __init__(self, pool: ThreadPoolExecutor, server: Server, job_id: str, **kw: Any):
        self.seen: list[Any] = []
        self.future = pool.submit(self._read, server, job_id, kw)

    def _read(self, server: Server, job_id: str, kw: dict[str, Any]) -> Stream:
        with server.client() as client:
            return read_events(client, job_id, timeout=100, on_event=self.seen.append, **kw)

    def live_past(self, step: int) -> bool:
        """Whether a loss event after `step` has arrived."""
        return any(e.event == "loss" and int(e.id) > step for e in list(self.seen))

    def result(self) -> Stream:
        return self.future.result(timeout=110)


def test_a_subscriber_joining_mid_run_gets_every_step_exactly_once(
    client: httpx.Client, shared_server: Server
) -> None:
    job = submit(client, "tensors", hp=ENDLESS, seed=11)
    wait_for(lambda: _step_reached(client, job["id"], 0), timeout=60)

    with ThreadPoolExecutor(max_workers=1) as pool:
        watcher = Watcher(pool, shared_server, job["id"])
        wait_for(lambda: watcher.seen)
        joined = strict_json(watcher.seen[0].data)
        # the history, then live steps: the job is cancelled once they flow
        wait_for(lambda: watcher.live_past(joined["step"] + 1000), timeout=60)
        assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
        stream = watcher.result()

    assert joined["status"] == "running" and joined["step"] > 0, joined  # mid-run
    stream.assert_complete(first_step=0, final_status="cancelled")
    assert (stream.steps, stream.losses) == all_losses(client, job["id"])


def test_concurrent_subscribers_all_get_the_same_complete_stream(shared_server: Server) -> None:
    with shared_server.client() as client, ThreadPoolExecutor(max_workers=6) as pool:
        job = submit(client, "custom_function", hp=ENDLESS, seed=12)

        def watch(**kw: Any) -> Watcher:
            return Watcher(pool, shared_server, job["id"], **kw)

        # two from the start, three joining while it runs, one resuming from step 999
        early = [watch() for _ in range(2)]
        wait_for(lambda: _step_reached(client, job["id"], 1000), timeout=60)
        late = [watch() for _ in range(3)]
        resumed = watch(headers={"Last-Event-ID": "999"})
        at_join = body(client.get(f"/v1/jobs/{job['id']}"))["step"]
        # every stream is live before the job is cancelled
        wait_for(lambda: all(w.live_past(at_join) for w in [*early, *late, resumed]), 60)
        assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
        streams = [w.result() for w in early + late]
        resumed_stream = resumed.result()
        stored = all_losses(client, job["id"])

    joined = [s.statuses[0] for s in streams[2:]]
    assert all(j["status"] == "running" and j["step"] >= 1000 for j in joined), joined  # mid-run
    for stream in streams:
        stream.assert_complete(first_step=0, final_status="cancelled")
        assert (stream.steps, stream.losses) == stored
    resumed_stream.assert_complete(first_step=1000, final_status="cancelled")
    assert resumed_stream.losses == stored[1][1000:]


def test_a_diverging_job_streams_strict_json_and_ends_failed(client: httpx.Client) -> None:
    # a learning rate this large overflows float64 within a few steps
    job = submit(client, "numpy", hp={"steps": 50, "learning_rate": 1.0}, seed=3)

    stream = read_events(client, job["id"])  # every event's data is parsed strictly

    stream.assert_complete(first_step=0, final_status="failed")
    final = stream.statuses[-1]
    assert final["error"]["code"] == "diverged", final
    assert final["step"] < 50
    assert stream.losses[-1] is None  # the non-finite loss, written as null
    assert all(x is not None for x in stream.losses[:-1])
    assert final["last_loss"] is None
