"""GET /v1/jobs: newest first, cursor pages, status and variant filters; on a server of its own
so that the full set of jobs is known."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from jobclient import body
from servers import Server, submit, wait_final, wait_for

TINY = {"batch_size": 8, "d_in": 20, "hidden": 10, "d_out": 2}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("list"), {"TRAINWIRE_CPU_WORKERS": "1"}).start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def jobs(server: Server) -> Iterator[dict[str, list[str]]]:
    """Twelve jobs, ids oldest first: 8 succeeded (numpy, nn), 1 running, 1 queued, 2 cancelled."""
    with server.client() as client:
        done = [submit(client, ("numpy", "nn")[i % 2], hp={"steps": 3})["id"] for i in range(8)]
        for job_id in done:
            assert wait_final(client, job_id)["status"] == "succeeded"
        running = submit(client, "tensors", hp={**TINY, "steps": 1_000_000})["id"]
        wait_for(lambda: body(client.get(f"/v1/jobs/{running}"))["status"] == "running")
        waiting = [submit(client, "numpy", hp={"steps": 3})["id"] for _ in range(3)]
        for job_id in waiting[:2]:
            assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
        yield {
            "all": [*done, running, *waiting],
            "succeeded": done,
            "numpy": done[0::2] + waiting,
            "nn": done[1::2],
            "tensors": [running],
            "running": [running],
            "queued": waiting[2:],
            "cancelled": waiting[:2],
        }
        for job_id in (running, waiting[2]):
            client.post(f"/v1/jobs/{job_id}/cancel")


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def _pages(client: httpx.Client, **params: Any) -> list[list[dict[str, Any]]]:
    """Every page of the listing, following next_cursor."""
    pages = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = client.get("/v1/jobs", params=query)
        assert response.status_code == 200, response.text
        page = body(response)
        pages.append(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 100, "next_cursor never ends"


def _ids(pages: list[list[dict[str, Any]]]) -> list[str]:
    return [job["id"] for page in pages for job in page]


def test_jobs_are_listed_newest_first(client: httpx.Client, jobs: dict[str, list[str]]) -> None:
    listing = body(client.get("/v1/jobs"))
    assert listing["next_cursor"] is None
    assert [j["id"] for j in listing["items"]] == jobs["all"][::-1]
    created = [j["created_at"] for j in listing["items"]]
    assert created == sorted(created, reverse=True)
    assert listing["items"][0] == body(client.get(f"/v1/jobs/{jobs['all'][-1]}"))


def test_cursor_pages_return_every_job_exactly_once(
    client: httpx.Client, jobs: dict[str, list[str]]
) -> None:
    pages = _pages(client, limit=5)
    assert [len(p) for p in pages] == [5, 5, 2]
    assert _ids(pages) == jobs["all"][::-1]


def test_a_job_submitted_between_pages_does_not_disturb_the_pages(
    client: httpx.Client, jobs: dict[str, list[str]]
) -> None:
    first = body(client.get("/v1/jobs", params={"limit": 4}))
    newer = submit(client, "numpy", hp={"steps": 2})  # queued behind the running job
    try:
        rest = _pages(client, limit=4, cursor=first["next_cursor"])
        assert [j["id"] for j in first["items"]] + _ids(rest) == jobs["all"][::-1]
    finally:
        assert client.post(f"/v1/jobs/{newer['id']}/cancel").status_code == 202
        assert client.delete(f"/v1/jobs/{newer['id']}").status_code == 204


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"status": "succeeded"}, ["succeeded"]),
        ({"status": "running"}, ["running"]),
        ({"status": ["cancelled", "queued"]}, ["cancelled", "queued"]),
        ({"variant": "nn"}, ["nn"]),
        ({"variant": ["nn", "tensors"]}, ["nn", "tensors"]),
        ({"status": "succeeded", "variant": "numpy"}, ["succeeded&numpy"]),
        ({"variant": "dynamic"}, []),
    ],
)
def test_filters(
    client: httpx.Client,
    jobs: dict[str, list[str]],
    params: dict[str, Any],
    expected: list[str],
) -> None:
    def members(key: str) -> set[str]:
        sets = [set(jobs[k]) for k in key.split("&")]
        return set.intersection(*sets)

    wanted = set().union(*(members(k) for k in expected)) if expected else set()
    ids = _ids(_pages(client, limit=2, **params))
    assert len(ids) == len(set(ids))
    assert set(ids) == wanted
    assert ids == [j for j in jobs["all"][::-1] if j in wanted]  # still newest first


@pytest.mark.parametrize(
    ("params", "loc"),
    [
        ({"cursor": "not-a-cursor"}, ["query", "cursor"]),
        ({"cursor": "!!!"}, ["query", "cursor"]),
        ({"status": "finished"}, ["query", "status", 0]),
        ({"variant": "keras"}, ["query", "variant", 0]),
        ({"limit": 0}, ["query", "limit"]),
        ({"limit": 501}, ["query", "limit"]),
    ],
)
def test_bad_list_parameters_are_422(
    client: httpx.Client, jobs: dict[str, list[str]], params: dict[str, Any], loc: list[Any]
) -> None:
    response = client.get("/v1/jobs", params=params)
    assert response.status_code == 422
    assert loc in [e["loc"] for e in body(response)["detail"]]


def test_label_and_id_prefix_filters(client: httpx.Client, jobs: dict[str, list[str]]) -> None:
    """Jobs and sweeps by label (exact, repeatable) and by the start of their id."""
    a = [submit(client, "numpy", hp={"steps": 2}, label="lr-a")["id"] for _ in range(2)]
    b = submit(client, "numpy", hp={"steps": 2}, label="lr-b")["id"]
    made = client.post(
        "/v1/sweeps", json={"variant": "numpy", "grid": {"seed": [1, 2]}, "label": "lr-a"}
    )
    assert made.status_code == 201, made.text
    sweep = body(made)
    runs = [r["id"] for r in sweep["jobs"]]
    try:
        assert _ids(_pages(client, label="lr-a", limit=2)) == [*runs[::-1], *a[::-1]]
        assert _ids(_pages(client, label=["lr-b", "lr-a"])) == [*runs[::-1], b, *a[::-1]]
        assert _ids(_pages(client, label="lr")) == []  # exact, not a substring
        for job_id in (a[0], jobs["all"][0]):
            listed = _ids(_pages(client, id_prefix=job_id[:5]))
            assert job_id in listed
            assert all(i.startswith(job_id[:5]) for i in listed)
        assert _ids(_pages(client, id_prefix=b)) == [b]
        sweeps = body(client.get("/v1/sweeps", params={"label": "lr-a"}))["items"]
        assert [s["id"] for s in sweeps] == [sweep["id"]]
        assert body(client.get("/v1/sweeps", params={"label": "lr-b"}))["items"] == []
        by_prefix = body(client.get("/v1/sweeps", params={"id_prefix": sweep["id"][:6]}))
        assert [s["id"] for s in by_prefix["items"]] == [sweep["id"]]
    finally:
        assert client.post(f"/v1/sweeps/{sweep['id']}/cancel").status_code == 202
        assert client.delete(f"/v1/sweeps/{sweep['id']}").status_code == 204
        for job_id in (*a, b):
            assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
            assert client.delete(f"/v1/jobs/{job_id}").status_code == 204


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/sweeps"])
@pytest.mark.parametrize(
    ("params", "loc"),
    [
        ({"lable": "x"}, ["query", "lable"]),
        ({"id_prefix": "XYZ"}, ["query", "id_prefix"]),
        ({"id_prefix": "0" * 17}, ["query", "id_prefix"]),
        ({"label": ""}, ["query", "label", 0]),
    ],
)
def test_unknown_or_bad_filters_are_422(
    client: httpx.Client, path: str, params: dict[str, Any], loc: list[Any]
) -> None:
    response = client.get(path, params=params)
    assert response.status_code == 422, response.text
    assert loc in [e["loc"] for e in body(response)["detail"]]
