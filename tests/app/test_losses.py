"""GET /v1/jobs/{id}/losses: pages, CSV, and downsampling that keeps a noisy curve's shape."""

from __future__ import annotations

import math
import time
from typing import Any

import httpx
import pytest
from jobclient import FINAL, all_losses, body, parse_csv
from servers import Server, submit, wait_final

STEPS = 2000
# dynamic reuses its middle layer 0-3 times at random each step: a noisy, spiky curve
NOISY = {"batch_size": 8, "d_in": 20, "hidden": 10, "d_out": 2, "steps": STEPS}


@pytest.fixture(scope="module")
def noisy_job(shared_server: Server) -> dict[str, Any]:
    """A finished dynamic job with its full losses, and max_points answers taken while it ran."""
    with shared_server.client() as client:
        job = submit(client, "dynamic", hp=NOISY, seed=2024)
        while_running: list[tuple[int, dict[str, Any]]] = []
        deadline = time.monotonic() + 90
        while body(client.get(f"/v1/jobs/{job['id']}"))["status"] not in FINAL:
            assert time.monotonic() < deadline, "the job did not finish in 90 s"
            for k in (2, 5, 40):
                response = client.get(f"/v1/jobs/{job['id']}/losses", params={"max_points": k})
                assert response.status_code == 200
                while_running.append((k, body(response)))
            time.sleep(0.1)  # a chart's refresh, not a busy loop that starves the job
        job = wait_final(client, job["id"])
        assert job["status"] == "succeeded", job
        steps, losses = all_losses(client, job["id"])
        assert steps == list(range(STEPS))
        return {"id": job["id"], "losses": losses, "while_running": while_running}


def _downsampled(client: httpx.Client, job_id: str, **params: Any) -> list[tuple[int, float]]:
    response = client.get(f"/v1/jobs/{job_id}/losses", params=params)
    assert response.status_code == 200, response.text
    page = body(response)
    assert page["next_after"] is None
    assert page["steps"] == sorted(set(page["steps"])), "points in step order, each once"
    return list(zip(page["steps"], page["losses"], strict=True))


def test_the_curve_is_noisy_enough_to_test_downsampling(noisy_job: dict[str, Any]) -> None:
    losses = noisy_job["losses"]
    rises = sum(1 for a, b in zip(losses, losses[1:], strict=False) if b > a)
    assert rises > STEPS // 10, rises
    assert all(isinstance(x, float) and math.isfinite(x) for x in losses)


@pytest.mark.parametrize("limit", [300, 700, STEPS - 1, STEPS, 10_000])
def test_pages_reproduce_the_full_list(
    client: httpx.Client, noisy_job: dict[str, Any], limit: int
) -> None:
    steps, losses = all_losses(client, noisy_job["id"], limit=limit)
    assert steps == list(range(STEPS))
    assert losses == noisy_job["losses"]


def test_a_page_ends_with_next_after_null_exactly_at_the_end(
    client: httpx.Client, noisy_job: dict[str, Any]
) -> None:
    url = f"/v1/jobs/{noisy_job['id']}/losses"
    last = body(client.get(url, params={"after": STEPS - 301, "limit": 300}))
    assert last["steps"] == list(range(STEPS - 300, STEPS))
    assert last["next_after"] is None
    before = body(client.get(url, params={"after": STEPS - 302, "limit": 300}))
    assert before["next_after"] == STEPS - 2


@pytest.mark.parametrize("after", [STEPS - 1, STEPS, 10**9])
def test_after_the_last_step_there_is_nothing(
    client: httpx.Client, noisy_job: dict[str, Any], after: int
) -> None:
    page = body(client.get(f"/v1/jobs/{noisy_job['id']}/losses", params={"after": after}))
    assert (page["steps"], page["losses"], page["next_after"]) == ([], [], None)


def test_csv_honours_after(client: httpx.Client, noisy_job: dict[str, Any]) -> None:
    response = client.get(
        f"/v1/jobs/{noisy_job['id']}/losses", params={"format": "csv", "after": STEPS - 11}
    )
    assert response.status_code == 200
    assert parse_csv(response.text) == (list(range(STEPS - 10, STEPS)), noisy_job["losses"][-10:])


def test_csv_honours_limit_and_is_whole_without_it(
    client: httpx.Client, noisy_job: dict[str, Any]
) -> None:
    url = f"/v1/jobs/{noisy_job['id']}/losses"
    page = client.get(url, params={"format": "csv", "after": 99, "limit": 25})
    assert parse_csv(page.text) == (list(range(100, 125)), noisy_job["losses"][100:125])
    whole = client.get(url, params={"format": "csv"})
    assert parse_csv(whole.text) == (list(range(STEPS)), noisy_job["losses"])


def test_csv_downsampled_holds_the_same_points_as_json(
    client: httpx.Client, noisy_job: dict[str, Any]
) -> None:
    url = f"/v1/jobs/{noisy_job['id']}/losses"
    as_json = _downsampled(client, noisy_job["id"], max_points=40)
    steps, losses = parse_csv(client.get(url, params={"format": "csv", "max_points": 40}).text)
    assert list(zip(steps, losses, strict=True)) == as_json
    assert len(steps) <= 40


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"after": -2}, "after"),
        ({"max_points": 0}, "max_points"),
        ({"format": "xml"}, "format"),
    ],
)
def test_bad_query_parameters_are_422(
    client: httpx.Client, noisy_job: dict[str, Any], params: dict[str, Any], field: str
) -> None:
    response = client.get(f"/v1/jobs/{noisy_job['id']}/losses", params=params)
    assert response.status_code == 422
    assert ["query", field] in [e["loc"] for e in body(response)["detail"]]


@pytest.mark.parametrize("k", [100, 64, 10])
def test_max_points_keeps_each_buckets_lowest_and_highest_loss(
    client: httpx.Client, noisy_job: dict[str, Any], k: int
) -> None:
    full = noisy_job["losses"]
    points = _downsampled(client, noisy_job["id"], max_points=k)

    assert 0 < len(points) <= k
    assert all(full[step] == loss for step, loss in points), "every point is a recorded pair"
    kept = dict(points)
    assert min(full) in kept.values() and max(full) in kept.values()
    # k points: k/2 buckets of consecutive steps over the whole run, each keeping its extremes
    width = math.ceil(STEPS / (k // 2))
    for start in range(0, STEPS, width):
        bucket = range(start, min(start + width, STEPS))
        in_bucket = [kept[s] for s in bucket if s in kept]
        local = [full[s] for s in bucket]
        assert min(local) in in_bucket and max(local) in in_bucket, (start, in_bucket)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_a_tiny_max_points_is_respected(
    client: httpx.Client, noisy_job: dict[str, Any], k: int
) -> None:
    full = noisy_job["losses"]
    points = _downsampled(client, noisy_job["id"], max_points=k)
    assert 0 < len(points) <= k
    assert all(full[step] == loss for step, loss in points)
    if k >= 2:
        assert {min(full), max(full)} <= {loss for _, loss in points}


def test_max_points_above_the_step_count_returns_every_point(
    client: httpx.Client, noisy_job: dict[str, Any]
) -> None:
    points = _downsampled(client, noisy_job["id"], max_points=STEPS * 2)
    assert points == list(enumerate(noisy_job["losses"]))


@pytest.mark.parametrize("after", [0, 1049, 1899])
@pytest.mark.parametrize("k", [1, 7, 100])
def test_max_points_after_a_step_covers_only_the_rest(
    client: httpx.Client, noisy_job: dict[str, Any], after: int, k: int
) -> None:
    full = noisy_job["losses"]
    points = _downsampled(client, noisy_job["id"], max_points=k, after=after)
    assert 0 < len(points) <= k
    assert all(step > after and full[step] == loss for step, loss in points)
    if k >= 2:
        rest = full[after + 1 :]
        assert {min(rest), max(rest)} <= {loss for _, loss in points}


def test_max_points_is_respected_while_the_job_runs(noisy_job: dict[str, Any]) -> None:
    full = noisy_job["losses"]
    assert noisy_job["while_running"], "no answer was taken while the job ran"
    for k, page in noisy_job["while_running"]:
        assert len(page["steps"]) <= k, (k, page["steps"])
        assert all(full[s] == x for s, x in zip(page["steps"], page["losses"], strict=True))


def test_a_non_finite_loss_is_null_in_json_and_empty_in_csv(client: httpx.Client) -> None:
    job = wait_final(client, submit(client, "tensors", hp={"learning_rate": 1.0}, seed=5)["id"])
    assert job["status"] == "failed" and job["error"]["code"] == "diverged", job

    steps, losses = all_losses(client, job["id"])  # parsed strictly: no NaN, no Infinity
    assert steps == list(range(job["step"]))
    assert losses[-1] is None and None not in losses[:-1]
    csv_steps, csv_losses = parse_csv(
        client.get(f"/v1/jobs/{job['id']}/losses", params={"format": "csv"}).text
    )
    assert (csv_steps, csv_losses) == (steps, losses)
    downsampled = _downsampled(client, job["id"], max_points=2)
    assert all(loss is None or math.isfinite(loss) for _, loss in downsampled)
