"""A job's whole life through the API, for each of the eight variants, on the shared server."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from jobclient import JOB_FIELDS, all_losses, body, parse_csv, read_events
from servers import submit, wait_final

from workers.variants import VARIANTS as VARIANT_CATALOGUE

VARIANTS = list(VARIANT_CATALOGUE)


def _defaults(client: httpx.Client) -> dict[str, dict[str, Any]]:
    response = client.get("/v1/variants")
    assert response.status_code == 200
    return {v["name"]: v["defaults"] for v in body(response)}


def _utc(timestamp: str) -> datetime:
    parsed = datetime.fromisoformat(timestamp)
    assert parsed.utcoffset() is not None and parsed.utcoffset().total_seconds() == 0, timestamp
    return parsed.astimezone(UTC)


@pytest.mark.parametrize("variant", VARIANTS)
def test_job_runs_to_the_end_and_every_view_of_its_losses_agrees(
    client: httpx.Client, variant: str
) -> None:
    steps = 37
    given_seed = VARIANTS.index(variant) % 2 == 0
    payload: dict[str, Any] = {
        "variant": variant,
        "hyperparameters": {"steps": steps, "hidden": 50},
        "label": f"lifecycle {variant}",
    }
    if given_seed:
        payload["seed"] = 4_000_000_000 + VARIANTS.index(variant)
    response = client.post("/v1/jobs", json=payload)

    assert response.status_code == 201, response.text
    job = body(response)
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert set(job) >= JOB_FIELDS, JOB_FIELDS - set(job)
    assert job["variant"] == variant
    assert job["label"] == f"lifecycle {variant}"
    assert job["hyperparameters"] == {**_defaults(client)[variant], "steps": steps, "hidden": 50}
    assert job["steps"] == steps
    assert job["device"] == "auto"
    assert job["status"] in {"queued", "running"}
    assert job["finished_at"] is None and job["error"] is None
    if given_seed:
        assert job["seed"] == payload["seed"]
    else:
        assert isinstance(job["seed"], int) and 0 <= job["seed"] < 2**32
    created = _utc(job["created_at"])

    # the stream carries the whole run, then ends
    stream = read_events(client, job["id"])
    stream.assert_complete(first_step=0, final_status="succeeded")
    assert stream.statuses[0]["id"] == job["id"]

    done = body(client.get(f"/v1/jobs/{job['id']}"))
    assert done == stream.statuses[-1]
    assert done["status"] == "succeeded"
    assert done["step"] == done["steps"] == steps
    assert done["seed"] == job["seed"]  # recorded, whether given or drawn
    assert done["hyperparameters"] == job["hyperparameters"]
    assert done["created_at"] == job["created_at"]
    assert created <= _utc(done["started_at"]) <= _utc(done["finished_at"])
    assert done["assigned_device"] == "cpu"
    assert done["error"] is None
    environment = done["environment"]
    for key in ("python", "torch", "numpy", "device_name"):
        assert isinstance(environment.get(key), str) and environment[key], environment

    stored_steps, losses = all_losses(client, job["id"])
    assert stored_steps == list(range(steps))
    assert all(isinstance(x, float) and math.isfinite(x) for x in losses), losses
    assert done["last_loss"] == losses[-1]
    assert stream.steps == stored_steps
    assert stream.losses == losses

    by_header = client.get(f"/v1/jobs/{job['id']}/losses", headers={"Accept": "text/csv"})
    by_query = client.get(f"/v1/jobs/{job['id']}/losses", params={"format": "csv"})
    for response in (by_header, by_query):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        assert parse_csv(response.text) == (stored_steps, losses)


def test_a_job_without_a_seed_gets_one_drawn_and_recorded(client: httpx.Client) -> None:
    first = submit(client, "numpy", hp={"steps": 3})
    second = submit(client, "numpy", hp={"steps": 3})
    for job in (first, second):
        assert isinstance(job["seed"], int) and 0 <= job["seed"] <= 2**32 - 1
        assert wait_final(client, job["id"])["seed"] == job["seed"]
    # drawn, not a constant: two draws of 32 bits are equal once in 4 billion
    assert first["seed"] != second["seed"]


def test_the_seed_bounds_are_accepted(client: httpx.Client) -> None:
    for seed in (0, 2**32 - 1):
        job = submit(client, "numpy", hp={"steps": 2}, seed=seed)
        assert job["seed"] == seed
        assert wait_final(client, job["id"])["status"] == "succeeded"


def test_a_label_of_200_characters_is_kept(client: httpx.Client) -> None:
    label = "λ" * 200
    job = submit(client, "numpy", hp={"steps": 2}, label=label)
    assert body(client.get(f"/v1/jobs/{job['id']}"))["label"] == label
    wait_final(client, job["id"])


def test_an_unknown_job_is_404_everywhere(client: httpx.Client) -> None:
    missing = "0123456789abcdef"
    assert client.get(f"/v1/jobs/{missing}").status_code == 404
    assert client.get(f"/v1/jobs/{missing}/losses").status_code == 404
    assert client.get(f"/v1/jobs/{missing}/losses", params={"format": "csv"}).status_code == 404
    assert client.get(f"/v1/jobs/{missing}/losses", params={"max_points": 5}).status_code == 404
    assert client.get(f"/v1/jobs/{missing}/events").status_code == 404
    assert client.post(f"/v1/jobs/{missing}/cancel").status_code == 404
    assert client.delete(f"/v1/jobs/{missing}").status_code == 404
    assert "detail" in body(client.get(f"/v1/jobs/{missing}"))
