"""A client's mistakes: a 4xx that names what was wrong, never a 5xx, never a traceback.

Each bad input goes to one live server (the session's shared one, with the default limits:
1,000,000 steps and 1 GiB of tensors per job). After each, the server must still answer, and the
part of its log written for that request must hold no traceback.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from servers import Server, submit, wait_final, wait_for


@dataclass(frozen=True)
class Bad:
    """One bad request and the answer it must get."""

    name: str
    method: str
    path: str  # "{job}" stands for a real, finished job's id
    status: int
    loc: tuple[str | int, ...] | None = None  # the field a 422 must name
    body: bytes | None = None
    json_body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def raw(name: str, body: bytes | str, loc: tuple[str | int, ...] | None, status: int = 422) -> Bad:
    """POST /v1/jobs with `body` sent byte for byte as application/json."""
    content = body.encode() if isinstance(body, str) else body
    headers = {"Content-Type": "application/json"}
    return Bad(name, "POST", "/v1/jobs", status, loc, body=content, headers=headers)


def job(name: str, payload: Any, loc: tuple[str | int, ...] | None, status: int = 422) -> Bad:
    """POST /v1/jobs with `payload` as JSON."""
    return Bad(name, "POST", "/v1/jobs", status, loc, json_body=payload)


def hp(name: str, variant: str, loc: str, **hyperparameters: Any) -> Bad:
    """A job whose hyperparameter `loc` is wrong."""
    payload = {"variant": variant, "hyperparameters": hyperparameters}
    return job(name, payload, ("body", "hyperparameters", loc))


def get(
    name: str, path: str, loc: tuple[str | int, ...] | None, status: int = 422, **h: str
) -> Bad:
    return Bad(name, "GET", path, status, loc, headers=h)


HUGE = 10**6
BODY = ("body",)

CASES = [
    # -- the body is not a job at all ---------------------------------------------------------
    raw("malformed JSON", '{"variant": "numpy", ', BODY),
    raw("truncated JSON", '{"variant": "num', BODY),
    raw("JSON array", "[1, 2, 3]", BODY),
    raw("JSON string", '"numpy"', BODY),
    raw("JSON number", "42", BODY),
    raw("JSON null", "null", BODY),
    raw("empty body", "", BODY),
    raw("invalid UTF-8", b'{"variant": "\xff\xfe"}', None, status=400),
    raw("nesting deeper than the parser goes", "[" * 100_000 + "]" * 100_000, None, status=400),
    Bad(
        "plain-text body",
        "POST",
        "/v1/jobs",
        422,
        BODY,
        body=b'{"variant": "numpy"}',
        headers={"Content-Type": "text/plain"},
    ),
    # -- wrong top-level fields ---------------------------------------------------------------
    job("missing variant", {"hyperparameters": {}}, ("body", "variant")),
    job("unknown variant", {"variant": "keras"}, ("body", "variant")),
    job("variant of the wrong type", {"variant": 5}, ("body", "variant")),
    job("unknown top-level field", {"variant": "numpy", "epochs": 3}, ("body", "epochs")),
    job(
        "hyperparameters not an object",
        {"variant": "numpy", "hyperparameters": [1]},
        ("body", "hyperparameters"),
    ),
    raw(
        "NaN hyperparameters",
        '{"variant": "numpy", "hyperparameters": NaN}',
        ("body", "hyperparameters"),
    ),
    job("negative seed", {"variant": "numpy", "seed": -1}, ("body", "seed")),
    job("seed above 2**32-1", {"variant": "numpy", "seed": 2**32}, ("body", "seed")),
    job("seed as a string", {"variant": "numpy", "seed": "7"}, ("body", "seed")),
    job("seed as a float", {"variant": "numpy", "seed": 1.5}, ("body", "seed")),
    job("device that does not exist", {"variant": "numpy", "device": "tpu"}, ("body", "device")),
    job("GPU for a CPU-only variant", {"variant": "numpy", "device": "cuda"}, ("body", "device")),
    job("label over 200 characters", {"variant": "numpy", "label": "x" * 201}, ("body", "label")),
    job("label of the wrong type", {"variant": "numpy", "label": 5}, ("body", "label")),
    raw("NaN seed", '{"variant": "numpy", "seed": NaN}', ("body", "seed")),
    raw("NaN variant", '{"variant": NaN}', ("body", "variant")),
    raw("Infinity label", '{"variant": "numpy", "label": Infinity}', ("body", "label")),
    raw("lone surrogate in label", '{"variant": "numpy", "label": "\\ud800"}', ("body", "label")),
    raw("NUL character in label", '{"variant": "numpy", "label": "a\\u0000b"}', ("body", "label")),
    raw(
        "lone surrogate in device", '{"variant": "numpy", "device": "\\udfff"}', ("body", "device")
    ),
    raw("NaN in an unknown field", '{"variant": "numpy", "x": NaN}', ("body", "x")),
    # -- wrong hyperparameters ----------------------------------------------------------------
    hp("steps as a string", "numpy", "steps", steps="50"),
    hp("batch_size as a float", "numpy", "batch_size", batch_size=64.5),
    hp("hidden as a boolean", "tensors", "hidden", hidden=True),
    hp("learning_rate as a string", "nn", "learning_rate", learning_rate="fast"),
    hp("unknown hyperparameter", "numpy", "lr", lr=0.1),
    hp("momentum for numpy", "numpy", "momentum", momentum=0.5),
    hp("max_middle_layers for optim", "optim", "max_middle_layers", max_middle_layers=2),
    hp("dtype float16", "autograd", "dtype", dtype="float16"),
    hp("zero batch_size", "numpy", "batch_size", batch_size=0),
    hp("negative hidden", "nn", "hidden", hidden=-5),
    hp("zero steps", "numpy", "steps", steps=0),
    hp("zero learning_rate", "numpy", "learning_rate", learning_rate=0),
    hp("negative learning_rate", "optim", "learning_rate", learning_rate=-1e-4),
    raw(
        "NaN learning_rate",
        '{"variant":"numpy","hyperparameters":{"learning_rate":NaN}}',
        ("body", "hyperparameters", "learning_rate"),
    ),
    raw(
        "Infinity learning_rate",
        '{"variant":"tensors","hyperparameters":{"learning_rate":Infinity}}',
        ("body", "hyperparameters", "learning_rate"),
    ),
    raw(
        "learning_rate 1e400 (infinite as a double)",
        '{"variant":"nn","hyperparameters":{"learning_rate":1e400}}',
        ("body", "hyperparameters", "learning_rate"),
    ),
    hp("momentum of 1", "dynamic", "momentum", momentum=1.0),
    hp("max_middle_layers above 16", "dynamic", "max_middle_layers", max_middle_layers=17),
    hp("steps over the server's limit", "numpy", "steps", steps=HUGE + 1),
    hp("sizes over the memory budget", "numpy", "d_in", d_in=100_000, hidden=100_000),
    hp("one size over the memory budget", "optim", "hidden", hidden=10**8),
    hp("a size beyond any integer type", "tensors", "d_in", d_in=10**30),
    # -- too big ------------------------------------------------------------------------------
    raw(
        "body over 1 MiB", b'{"variant": "numpy", "label": "' + b"x" * (1 << 20) + b'"}', None, 413
    ),
    # -- unknown jobs: 404 on every job route -------------------------------------------------
    get("unknown job", "/v1/jobs/no-such-job", None, 404),
    Bad("cancel an unknown job", "POST", "/v1/jobs/no-such-job/cancel", 404),
    Bad("delete an unknown job", "DELETE", "/v1/jobs/no-such-job", 404),
    get("losses of an unknown job", "/v1/jobs/no-such-job/losses", None, 404),
    get("CSV of an unknown job", "/v1/jobs/no-such-job/losses?format=csv", None, 404),
    get("downsampled unknown job", "/v1/jobs/no-such-job/losses?max_points=5", None, 404),
    get("events of an unknown job", "/v1/jobs/no-such-job/events", None, 404),
    get("id with a NUL byte", "/v1/jobs/%00", None, 404),
    # -- a job in the wrong state -------------------------------------------------------------
    Bad("cancel a finished job", "POST", "/v1/jobs/{job}/cancel", 409),
    Bad("unsupported method", "PUT", "/v1/jobs/{job}", 405),
    # -- bad query values ---------------------------------------------------------------------
    get("cursor that is not base64", "/v1/jobs?cursor=%25%25%25", ("query", "cursor")),
    get("cursor of random text", "/v1/jobs?cursor=abc", ("query", "cursor")),
    get("cursor of another shape", "/v1/jobs?cursor=eHk6MQ", ("query", "cursor")),
    get("cursor over 200 characters", "/v1/jobs?cursor=" + "A" * 201, ("query", "cursor")),
    get("unknown status filter", "/v1/jobs?status=done", ("query", "status", 0)),
    get("unknown variant filter", "/v1/jobs?variant=keras", ("query", "variant", 0)),
    get("zero limit", "/v1/jobs?limit=0", ("query", "limit")),
    get("limit above 500", "/v1/jobs?limit=501", ("query", "limit")),
    get("limit not a number", "/v1/jobs?limit=ten", ("query", "limit")),
    get("after=abc on losses", "/v1/jobs/{job}/losses?after=abc", ("query", "after")),
    get("after below -1 on losses", "/v1/jobs/{job}/losses?after=-2", ("query", "after")),
    get("zero losses limit", "/v1/jobs/{job}/losses?limit=0", ("query", "limit")),
    get("zero max_points", "/v1/jobs/{job}/losses?max_points=0", ("query", "max_points")),
    get("unknown format", "/v1/jobs/{job}/losses?format=xml", ("query", "format")),
    get("after=abc on events", "/v1/jobs/{job}/events?after=abc", ("query", "after")),
    get("after below -1 on events", "/v1/jobs/{job}/events?after=-5", ("query", "after")),
    get(
        "Last-Event-ID not an integer",
        "/v1/jobs/{job}/events",
        ("header", "last-event-id"),
        **{"Last-Event-ID": "abc"},
    ),
    get(
        "Last-Event-ID a float",
        "/v1/jobs/{job}/events",
        ("header", "last-event-id"),
        **{"Last-Event-ID": "1.5"},
    ),
    # Python's int() takes each of these; an event id is -1 or digits, nothing else
    *(
        get(
            f"Last-Event-ID {value}",
            "/v1/jobs/{job}/events",
            ("header", "last-event-id"),
            **{"Last-Event-ID": value},
        )
        for value in ["1_7", "+17", "-0", "-2", "-01", "0x11", "1e3"]
    ),
]

# Integers past SQLite's 64 bits reach the store and fail there (see the reason): the correct
# answer is pinned down as an expected failure, which turns into a failure once it is fixed.
OUT_OF_RANGE = [
    get("cursor past 64 bits", "/v1/jobs?cursor=cGs6OTk5OTk5OTk5OTk5OTk5OTk5OTk5", None, 0),
    get("after past 64 bits on losses", f"/v1/jobs/{{job}}/losses?after={10**20}", None, 0),
    get("after past 64 bits, CSV", f"/v1/jobs/{{job}}/losses?format=csv&after={10**20}", None, 0),
    get(
        "after past 64 bits, downsampled",
        f"/v1/jobs/{{job}}/losses?max_points=3&after={10**20}",
        None,
        0,
    ),
    get("after past 64 bits on events", f"/v1/jobs/{{job}}/events?after={10**20}", None, 0),
    get(
        "Last-Event-ID past 64 bits",
        "/v1/jobs/{job}/events",
        None,
        0,
        **{"Last-Event-ID": str(10**20)},
    ),
]


@pytest.fixture(scope="module")
def tried(request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """Names of the bad inputs sent; their count is printed at the end of the module."""
    names: list[str] = []
    yield names
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\nhardening: {len(names)} bad inputs tried, each one a 4xx")


@pytest.fixture(scope="module")
def finished_job(shared_server: Server) -> str:
    """A real job that has finished, for the routes that take a job id."""
    with shared_server.client() as client:
        created = submit(client, "numpy", hp={"steps": 5}, seed=3)
        assert wait_final(client, created["id"])["status"] == "succeeded"
    return str(created["id"])


def send(server: Server, bad: Bad, job_id: str) -> httpx.Response:
    """Send one bad request; the whole answer is read, streams included (a final job's end)."""
    with server.client(timeout=30.0) as client:
        return client.request(
            bad.method,
            bad.path.replace("{job}", job_id),
            content=bad.body,
            json=bad.json_body,
            headers=bad.headers,
        )


def log_of_request(server: Server, start: int, marker: str) -> str:
    """The server's log from `start` to the access line of a `/healthz?{marker}` sent now."""
    with server.client() as client:
        assert client.get(f"/healthz?{marker}").status_code == 200, "the server stopped serving"
    return str(wait_for(lambda: marker in server.log()[start:] and server.log()[start:], 10))


def strict_json(text: str) -> Any:
    def reject(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=reject)


@pytest.mark.parametrize("bad", CASES, ids=[c.name for c in CASES])
def test_bad_input_gets_a_4xx_naming_the_field(
    shared_server: Server, finished_job: str, tried: list[str], bad: Bad
) -> None:
    start = len(shared_server.log())
    response = send(shared_server, bad, finished_job)
    tried.append(bad.name)

    assert response.status_code == bad.status, response.text
    if response.headers.get("content-type", "").startswith("application/json"):
        detail = strict_json(response.text)["detail"]
        if bad.status == 422:
            assert all(error["loc"][0] in ("body", "query", "header") for error in detail)
        if bad.loc is not None:
            locs = [tuple(error["loc"]) for error in detail]
            assert any(loc[: len(bad.loc)] == bad.loc for loc in locs), locs
            assert all(error["msg"] for error in detail)
    else:
        assert bad.loc is None, f"a {bad.status} without a JSON detail: {response.text[:200]}"
    log = log_of_request(shared_server, start, f"after-{len(tried)}")
    assert "Traceback" not in log, log


@pytest.mark.parametrize("bad", OUT_OF_RANGE, ids=[c.name for c in OUT_OF_RANGE])
def test_out_of_range_integers_get_a_4xx_or_an_empty_page(
    shared_server: Server, finished_job: str, bad: Bad
) -> None:
    start = len(shared_server.log())
    response = send(shared_server, bad, finished_job)
    assert response.status_code < 500, response.text
    if response.status_code == 200 and "/events" in bad.path:
        # a stream of a finished job: the status, then the job's final status, whole
        assert response.text.count("event: status") == 2, response.text
    log = log_of_request(shared_server, start, f"range-{bad.name.replace(' ', '-')}")
    assert "Traceback" not in log, log


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_over_the_limit_is_a_json_413_however_it_is_framed(
    shared_server: Server, framing: str
) -> None:
    payload = b'{"variant": "numpy", "label": "' + b"x" * (1 << 20) + b'"}'

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(payload), 64 << 10):
            yield payload[start : start + (64 << 10)]

    content = payload if framing == "content-length" else chunks()
    with shared_server.client() as client:
        response = client.post(
            "/v1/jobs", content=content, headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 413, response.text
    assert response.headers["content-type"] == "application/json"
    detail = strict_json(response.text)["detail"]
    assert isinstance(detail, str) and detail


@pytest.mark.parametrize("where", ["top level", "hyperparameters"])
def test_a_body_with_thousands_of_errors_gets_a_short_422(
    shared_server: Server, where: str
) -> None:
    """60,000 unknown keys fit in a 1 MiB body; the answer lists the first few and a count."""
    unknown = {f"k{i}": 0 for i in range(60_000)}
    payload: dict[str, Any] = {"variant": "numpy"}
    if where == "top level":
        payload.update(unknown)
    else:
        payload["hyperparameters"] = unknown
    with shared_server.client() as client:
        response = client.post("/v1/jobs", json=payload)
    assert response.status_code == 422
    assert len(response.content) < 64 << 10, len(response.content)
    detail = strict_json(response.text)["detail"]
    listed, rest = detail[:-1], detail[-1]
    assert len(listed) == 50
    assert all(error["type"] == "extra_forbidden" for error in listed)
    assert listed[0]["loc"][-1] == "k0"
    assert rest["type"] == "too_many_errors"
    assert "59,950 more" in rest["msg"]
    assert rest["loc"] == listed[0]["loc"][:1]


def test_concurrent_deletes_of_one_job_delete_it_once(client: httpx.Client) -> None:
    job = submit(client, "numpy", hp={"steps": 3}, seed=5)
    wait_final(client, job["id"])

    async def deletes() -> list[int]:
        async with httpx.AsyncClient(base_url=str(client.base_url), timeout=30) as aclient:
            answers = await asyncio.gather(
                *(aclient.delete(f"/v1/jobs/{job['id']}") for _ in range(20))
            )
        return [a.status_code for a in answers]

    codes = asyncio.run(deletes())
    assert codes.count(204) == 1 and codes.count(404) == 19, codes
