"""Bearer-token auth and CORS, against a server with TRAINWIRE_API_TOKEN and one allowed origin.

Every /v1 operation in the server's own schema is tried: 401 (with `WWW-Authenticate: Bearer`)
without the token or with a wrong one, its usual answer with it. The probes, the docs and the
schema stay open, and the token never reaches the server's log, even when a browser's EventSource
passes it as `?access_token=` (uvicorn's access log prints query strings).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from servers import Server, submit, wait_final, wait_for

TOKEN = "hardening-Token_0123456789"
ORIGIN = "http://example.test"
LONG = {"batch_size": 2, "d_in": 2, "hidden": 2, "d_out": 1, "steps": 1_000_000}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"TRAINWIRE_API_TOKEN": TOKEN, "TRAINWIRE_CORS_ORIGINS": ORIGIN}
    started = Server(tmp_path_factory.mktemp("auth"), env).start()
    yield started
    started.kill()


@pytest.fixture(scope="module")
def authed(server: Server) -> Iterator[httpx.Client]:
    with server.client(headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


@pytest.fixture(scope="module")
def finished_job(authed: httpx.Client) -> str:
    job_id = str(submit(authed, "numpy", hp={"steps": 3}, seed=1)["id"])
    assert wait_final(authed, job_id)["status"] == "succeeded"
    return job_id


def v1_operations(client: httpx.Client) -> set[tuple[str, str]]:
    """(METHOD, path) of every /v1 operation in the server's schema."""
    paths = client.get("/openapi.json").json()["paths"]
    return {(m.upper(), p) for p, ops in paths.items() if p.startswith("/v1") for m in ops}


def request(
    client: httpx.Client,
    method: str,
    path: str,
    job_id: str,
    sweep_id: str = "{sweep_id}",
    **kw: Any,
) -> httpx.Response:
    body: dict[str, Any] | None = None
    if method == "POST":
        body = {"variant": "numpy", "hyperparameters": {"steps": 3}}
        if path == "/v1/sweeps":
            body["grid"] = {"seed": [1]}
    if path.endswith(("/cancel", "/pause", "/resume")):
        body = None
    # {step}: the final checkpoint of a finished 3-step job
    path = path.replace("{job_id}", job_id).replace("{sweep_id}", sweep_id).replace("{step}", "3")
    return client.request(method, path, json=body, **kw)


def test_every_v1_route_answers_401_without_the_right_token(
    server: Server, finished_job: str
) -> None:
    wrong = [
        {},
        {"headers": {"Authorization": "Bearer not-the-token"}},
        {"headers": {"Authorization": f"Bearer {TOKEN}x"}},
        {"headers": {"Authorization": f"Basic {TOKEN}"}},
        {"headers": {"Authorization": TOKEN}},
        {"params": {"access_token": "not-the-token"}},
    ]
    with server.client() as client:
        operations = v1_operations(client)
        assert len(operations) >= 8
        for method, path in sorted(operations):
            for kw in wrong:
                response = request(client, method, path, finished_job, **kw)
                assert response.status_code == 401, (method, path, kw, response.text)
                assert response.headers["WWW-Authenticate"] == "Bearer"
                assert TOKEN not in response.text
    # nothing was created, cancelled or deleted
    with server.client(headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        assert client.get(f"/v1/jobs/{finished_job}").json()["status"] == "succeeded"
        assert len(client.get("/v1/jobs").json()["items"]) == 1


def test_every_v1_route_answers_with_the_token(
    server: Server, authed: httpx.Client, finished_job: str
) -> None:
    expected = {
        ("GET", "/v1/variants"): 200,
        ("GET", "/v1/jobs"): 200,
        ("POST", "/v1/jobs"): 201,
        ("GET", "/v1/jobs/{job_id}"): 200,
        ("GET", "/v1/jobs/{job_id}/losses"): 200,
        ("GET", "/v1/jobs/{job_id}/events"): 200,
        ("GET", "/v1/jobs/{job_id}/deliveries"): 200,
        ("GET", "/v1/jobs/{job_id}/checkpoints"): 200,
        ("GET", "/v1/jobs/{job_id}/checkpoints/{step}"): 200,
        ("POST", "/v1/jobs/{job_id}/pause"): 202,
        ("POST", "/v1/jobs/{job_id}/resume"): 202,
        ("POST", "/v1/jobs/{job_id}/cancel"): 202,
        ("DELETE", "/v1/jobs/{job_id}"): 204,
        ("GET", "/v1/sweeps"): 200,
        ("POST", "/v1/sweeps"): 201,
        ("GET", "/v1/sweeps/{sweep_id}"): 200,
        ("GET", "/v1/sweeps/{sweep_id}/events"): 200,
        ("GET", "/v1/sweeps/{sweep_id}/deliveries"): 200,
        ("POST", "/v1/sweeps/{sweep_id}/pause"): 202,
        ("POST", "/v1/sweeps/{sweep_id}/resume"): 202,
        ("POST", "/v1/sweeps/{sweep_id}/cancel"): 202,
        ("DELETE", "/v1/sweeps/{sweep_id}"): 204,
    }
    assert v1_operations(authed) == set(expected), "a route this test does not know"
    # a job and a sweep to cancel, then delete; a finished sweep to read
    # one thread: a job alone would take every core, and the sweeps would wait for it to end
    running = str(submit(authed, "tensors", hp=LONG, seed=2, device="cpu", threads=1)["id"])
    wait_for(lambda: authed.get(f"/v1/jobs/{running}").json()["status"] == "running")
    sweeps = {
        name: authed.post(
            "/v1/sweeps", json={"variant": variant, "hyperparameters": hp, "grid": {"seed": [3]}}
        ).json()["id"]
        for name, variant, hp in (("done", "numpy", {"steps": 3}), ("running", "tensors", LONG))
    }

    def sweep_status(name: str) -> str:
        return str(authed.get(f"/v1/sweeps/{sweeps[name]}").json()["status"])

    wait_for(lambda: sweep_status("done") == "succeeded" and sweep_status("running") == "running")
    for (method, path), status in expected.items():
        job_id = running if method in ("POST", "DELETE") and "{job_id}" in path else finished_job
        mutates = method in ("POST", "DELETE") and "{sweep_id}" in path
        sweep_id = sweeps["running" if mutates else "done"]
        response = request(authed, method, path, job_id, sweep_id)
        assert response.status_code == status, (method, path, response.text)
        if path == "/v1/jobs/{job_id}/pause":
            wait_for(lambda: authed.get(f"/v1/jobs/{running}").json()["status"] == "paused")
        if path == "/v1/sweeps/{sweep_id}/pause":
            wait_for(
                lambda: (
                    authed.get(f"/v1/sweeps/{sweeps['running']}").json()["counts"]["paused"] == 1
                )
            )
        if path == "/v1/jobs/{job_id}/cancel":
            assert wait_final(authed, running)["status"] == "cancelled"
        if path == "/v1/sweeps/{sweep_id}/cancel":
            wait_for(lambda: sweep_status("running") == "cancelled")
    # the query token, as a browser's EventSource sends it
    with server.client() as client:
        events = client.get(f"/v1/jobs/{finished_job}/events", params={"access_token": TOKEN})
        assert events.status_code == 200
        assert events.text.count("event: loss") == 3


def test_probes_docs_and_schema_stay_open(server: Server) -> None:
    with server.client() as client:
        for path in ("/healthz", "/readyz", "/docs", "/redoc", "/openapi.json", "/"):
            response = client.get(path)
            assert response.status_code == 200, (path, response.text)


def test_schema_declares_an_http_bearer_scheme_on_every_v1_route(server: Server) -> None:
    with server.client() as client:
        schema = client.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    bearer = [name for name, s in schemes.items() if s == {**s, "type": "http", "scheme": "bearer"}]
    assert bearer, schemes
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            names = {name for requirement in operation.get("security", []) for name in requirement}
            if path.startswith("/v1"):
                assert names & set(bearer), (method, path)
                assert "401" in operation["responses"], (method, path)
            else:
                assert not names, (method, path)


def test_without_a_token_the_schema_asks_for_none(shared_server: Server) -> None:
    """A server with no token takes every request without one: its schema must not say
    otherwise, or a client generated from it sends a header that means nothing."""
    with shared_server.client() as client:
        schema = client.get("/openapi.json").json()
        assert client.get("/v1/jobs").status_code == 200
    assert not schema.get("components", {}).get("securitySchemes")
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert not operation.get("security"), (method, path)
            assert "401" not in operation["responses"], (method, path)


def test_token_never_reaches_the_log(server: Server, authed: httpx.Client) -> None:
    job_id = str(submit(authed, "numpy", hp={"steps": 3}, seed=3)["id"])
    wait_final(authed, job_id)
    with server.client() as client:
        for name in ("access_token", quote("access_token", safe="").replace("_", "%5F")):
            url = f"/v1/jobs/{job_id}/events?after=0&{name}={TOKEN}"
            assert client.get(url).status_code == 200
            assert client.get(f"/v1/jobs?{name}={TOKEN}&limit=5").status_code == 200
        assert client.get(f"/v1/jobs?access_token={TOKEN}x").status_code == 401
        assert client.get("/healthz?logged").status_code == 200
    log = str(wait_for(lambda: "/healthz?logged" in server.log() and server.log(), 10))
    assert TOKEN not in log
    assert f"/v1/jobs/{job_id}/events?after=0&access_token=[redacted]" in log


def percent_encoded(text: str, lower: bool = False) -> str:
    """Every character of `text` as %XX: a spelling that decodes to `text`."""
    encoded = "".join(f"%{b:02X}" for b in text.encode())
    return encoded.lower() if lower else encoded


# Query strings that carry the token, as sent: the spellings Starlette decodes to
# `access_token` (percent-encoded names, any case of hex digit), and mistakes that do not reach
# the token check but still put the token in the URL (other cases, `;` or a second `?` as a
# separator, other names, the token alone or percent-encoded, the token in the path).
SPELLINGS = [
    "access_token={token}",
    "access%5ftoken={token}",
    "%61ccess_token={token}",
    percent_encoded("access_token", lower=True) + "={token}",
    "after=0&access_token={encoded_token}",
    "ACCESS_TOKEN={token}",
    "Access_Token={token}",
    "access-token={token}",
    "accessToken={token}",
    "token={token}",
    "api_key={token}",
    "Authorization=Bearer+{token}",
    "after=0;access_token={token}",
    "after=0?access_token={token}",
    "after=0&access_token={token};after=1",
    "q={token}",
    "{token}",
    "q={encoded_token}",
]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_no_spelling_of_the_query_token_reaches_the_log(server: Server, spelling: str) -> None:
    query = spelling.format(token=TOKEN, encoded_token=percent_encoded(TOKEN))
    marker = f"/healthz?spelling-{SPELLINGS.index(spelling)}"
    with server.client() as client:
        start = len(server.log())
        client.get(f"/v1/jobs?{query}")
        client.get(f"/v1/variants?{query}")
        assert client.get(marker).status_code == 200
    log = str(wait_for(lambda: marker in server.log()[start:] and server.log()[start:], 10))
    assert "/v1/jobs?" in log and "/v1/variants?" in log, log
    for shown in (TOKEN, percent_encoded(TOKEN), percent_encoded(TOKEN, lower=True)):
        assert shown not in log, log
    assert TOKEN.lower() not in log.lower()


def test_a_token_in_the_path_does_not_reach_the_log(server: Server) -> None:
    with server.client() as client:
        start = len(server.log())
        assert client.get(f"/v1/jobs/{TOKEN}").status_code == 401
        assert client.get(f"/v1/jobs/{percent_encoded(TOKEN)}/losses").status_code == 401
        assert client.get("/healthz?path-token").status_code == 200
    log = str(wait_for(lambda: "path-token" in server.log()[start:] and server.log()[start:], 10))
    assert TOKEN.lower() not in log.lower(), log
    assert percent_encoded(TOKEN) not in log, log


def test_cors_allows_the_configured_origin(server: Server) -> None:
    with server.client() as client:
        preflight = client.options(
            "/v1/jobs",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
        allowed = preflight.headers["Access-Control-Allow-Headers"].lower()
        assert "authorization" in allowed and "content-type" in allowed

        simple = client.get(
            "/v1/jobs", headers={"Origin": ORIGIN, "Authorization": f"Bearer {TOKEN}"}
        )
        assert simple.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert "location" in simple.headers["Access-Control-Expose-Headers"].lower()


def test_cors_refuses_other_origins(server: Server) -> None:
    other = "http://elsewhere.test"
    with server.client() as client:
        preflight = client.options(
            "/v1/jobs",
            headers={"Origin": other, "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code >= 400
        assert "Access-Control-Allow-Origin" not in preflight.headers
        simple = client.get(
            "/v1/jobs", headers={"Origin": other, "Authorization": f"Bearer {TOKEN}"}
        )
        assert simple.status_code == 200
        assert "Access-Control-Allow-Origin" not in simple.headers


def test_no_cors_headers_by_default(shared_server: Server) -> None:
    with shared_server.client() as client:
        simple = client.get("/v1/jobs", headers={"Origin": ORIGIN})
        preflight = client.options(
            "/v1/jobs", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
        )
    assert simple.status_code == 200
    for response in (simple, preflight):
        assert not [h for h in response.headers if h.lower().startswith("access-control-")]
    assert preflight.status_code == 405
