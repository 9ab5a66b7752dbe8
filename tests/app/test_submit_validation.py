"""POST /v1/jobs with a wrong request: 422, `detail[].loc` names the field, and no job is made."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from jobclient import body

HP = ("body", "hyperparameters")

CASES: list[tuple[str, dict[str, Any], tuple[Any, ...]]] = [
    ("unknown variant", {"variant": "keras"}, ("body", "variant")),
    ("no variant", {"hyperparameters": {}}, ("body", "variant")),
    ("unknown top-level field", {"variant": "nn", "epochs": 3}, ("body", "epochs")),
    (
        "hyperparameter the variant does not take",
        {"variant": "nn", "hyperparameters": {"momentum": 0.5}},
        (*HP, "momentum"),
    ),
    (
        "unknown hyperparameter",
        {"variant": "numpy", "hyperparameters": {"hiden": 10}},
        (*HP, "hiden"),
    ),
    ("steps as a string", {"variant": "nn", "hyperparameters": {"steps": "50"}}, (*HP, "steps")),
    ("steps as a fraction", {"variant": "nn", "hyperparameters": {"steps": 5.5}}, (*HP, "steps")),
    (
        "learning_rate as a string",
        {"variant": "nn", "hyperparameters": {"learning_rate": "fast"}},
        (*HP, "learning_rate"),
    ),
    (
        "learning_rate 0",
        {"variant": "optim", "hyperparameters": {"learning_rate": 0}},
        (*HP, "learning_rate"),
    ),
    (
        "negative learning_rate",
        {"variant": "optim", "hyperparameters": {"learning_rate": -0.001}},
        (*HP, "learning_rate"),
    ),
    ("zero batch", {"variant": "nn", "hyperparameters": {"batch_size": 0}}, (*HP, "batch_size")),
    ("dtype float16", {"variant": "nn", "hyperparameters": {"dtype": "float16"}}, (*HP, "dtype")),
    (
        "steps above the server's limit",
        {"variant": "nn", "hyperparameters": {"steps": 1_000_001}},
        (*HP, "steps"),
    ),
    (
        "hyperparameters not an object",
        {"variant": "nn", "hyperparameters": [1, 2]},
        HP,
    ),
    ("label of 201 characters", {"variant": "nn", "label": "x" * 201}, ("body", "label")),
    ("seed -1", {"variant": "nn", "seed": -1}, ("body", "seed")),
    ("seed 2**32", {"variant": "nn", "seed": 2**32}, ("body", "seed")),
    ("seed as a string", {"variant": "nn", "seed": "7"}, ("body", "seed")),
    ("seed as a fraction", {"variant": "nn", "seed": 7.5}, ("body", "seed")),
    ("cuda on a host without a GPU", {"variant": "nn", "device": "cuda"}, ("body", "device")),
    ("cuda:0 on a host without a GPU", {"variant": "nn", "device": "cuda:0"}, ("body", "device")),
    ("cuda for numpy", {"variant": "numpy", "device": "cuda"}, ("body", "device")),
    ("device tpu", {"variant": "nn", "device": "tpu"}, ("body", "device")),
]


def _newest_job(client: httpx.Client) -> list[str]:
    return [job["id"] for job in body(client.get("/v1/jobs", params={"limit": 1}))["items"]]


# wrong only where the server has no GPU worker
WITHOUT_A_GPU = {"cuda on a host without a GPU", "cuda:0 on a host without a GPU"}


def _server_has_a_gpu(client: httpx.Client) -> bool:
    variants = body(client.get("/v1/variants"))
    return any("cuda" in v["available_devices"] for v in variants)


@pytest.mark.parametrize(("case", "payload", "loc"), CASES, ids=[c[0] for c in CASES])
def test_a_wrong_submission_is_422_naming_the_field(
    client: httpx.Client, case: str, payload: dict[str, Any], loc: tuple[Any, ...]
) -> None:
    if case in WITHOUT_A_GPU and _server_has_a_gpu(client):
        pytest.skip("this server has a GPU worker: cuda is a right device here")
    before = _newest_job(client)

    response = client.post("/v1/jobs", json=payload)

    assert response.status_code == 422, response.text
    detail = body(response)["detail"]
    assert isinstance(detail, list) and detail
    assert list(loc) in [e["loc"] for e in detail], detail
    assert all(isinstance(e["msg"], str) and e["msg"] for e in detail)
    assert _newest_job(client) == before, "a refused submission must not make a job"


def test_a_non_finite_learning_rate_is_422(client: httpx.Client) -> None:
    # what a client that writes NaN (not JSON, but Python's json.dumps does) would send
    content = '{"variant": "nn", "hyperparameters": {"learning_rate": NaN}}'
    response = client.post(
        "/v1/jobs", content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert body(response)["detail"]


def test_a_body_that_is_not_json_is_422(client: httpx.Client) -> None:
    response = client.post(
        "/v1/jobs", content=b"variant=nn", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
