"""GET /v1/variants, and the health probes."""

from __future__ import annotations

import httpx
from jobclient import body

COMMON = {
    "batch_size": 64,
    "d_in": 1000,
    "hidden": 100,
    "d_out": 10,
    "steps": 50,
}
# the seed tutorial's learning rate and dtype of each program
TABLE = {
    "numpy": (1e-6, "float64"),
    "tensors": (1e-6, "float32"),
    "autograd": (1e-6, "float64"),
    "custom_function": (1e-6, "float32"),
    "nn": (1e-4, "float32"),
    "optim": (1e-4, "float32"),
    "custom_module": (1e-4, "float32"),
    "dynamic": (1e-4, "float32"),
}


def test_healthz_answers_200(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200


def test_readyz_answers_200_once_ready(client: httpx.Client) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert "cpu" in body(response)["devices"]


def test_the_eight_variants_are_listed_with_their_defaults(client: httpx.Client) -> None:
    response = client.get("/v1/variants")
    assert response.status_code == 200
    variants = body(response)
    assert [v["name"] for v in variants] == list(TABLE)

    for variant in variants:
        name = variant["name"]
        assert {"name", "title", "description", "devices", "defaults"} <= set(variant)
        assert isinstance(variant["title"], str) and variant["title"]
        assert isinstance(variant["description"], str) and variant["description"]
        learning_rate, dtype = TABLE[name]
        expected = {**COMMON, "learning_rate": learning_rate, "dtype": dtype}
        if name == "dynamic":
            expected |= {"momentum": 0.9, "max_middle_layers": 3}
        assert variant["defaults"] == expected, name  # exactly the fields it takes
        if name == "numpy":
            assert variant["devices"] == ["cpu"]
        else:
            assert "cpu" in variant["devices"] and "cuda" in variant["devices"], variant


def test_a_job_takes_exactly_the_defaults_listed(client: httpx.Client) -> None:
    variants = {v["name"]: v for v in body(client.get("/v1/variants"))}
    for name in ("numpy", "dynamic"):
        response = client.post("/v1/jobs", json={"variant": name, "hyperparameters": {"steps": 1}})
        assert response.status_code == 201, response.text
        assert body(response)["hyperparameters"] == {**variants[name]["defaults"], "steps": 1}
