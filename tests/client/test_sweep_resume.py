"""A sweep's stream over a connection that keeps dropping: the client goes on from the last
event's id (Last-Event-ID), every step of every run once, then the final sweep."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from servers import ByteCuttingProxy, Server

from trainwire import AsyncClient, Client, RunLoss, SweepUpdate

STEPS = 1500
SEEDS = [0, 1, 2, 3]


@pytest.fixture(scope="module")
def finished(shared_server: Server) -> tuple[str, dict[str, list[float | None]]]:
    """A finished sweep of four runs and each run's stored curve."""
    with Client(shared_server.url) as tw:
        sweep = tw.wait_sweep(tw.submit_sweep("numpy", {"seed": SEEDS}, steps=STEPS).id)
        return sweep.id, {run.id: tw.losses(run.id)[1] for run in sweep.jobs}


def test_the_sync_client_resumes_through_cuts_every_16_kb(
    shared_server: Server, finished: tuple[str, dict[str, list[float | None]]]
) -> None:
    sweep_id, curves = finished
    proxy = ByteCuttingProxy(shared_server.port, after=16_384)
    try:
        with Client(proxy.url) as tw:
            events = list(tw.stream_sweep(sweep_id))
    finally:
        proxy.close()
    losses = [e for e in events if isinstance(e, RunLoss)]
    got = {run: [e.loss for e in losses if e.job_id == run] for run in curves}
    assert got == curves  # every step of every run, once, in order
    assert [e.step for e in losses if e.job_id == next(iter(curves))] == list(range(STEPS))
    assert isinstance(events[-1], SweepUpdate) and events[-1].sweep.status.value == "succeeded"
    # it went on, not over: 4 x 1,500 events take ~30 connections of 16 KB
    assert len(proxy.requests) > 10
    resumed = [r for r in proxy.requests[1:] if b"last-event-id:" in r.lower()]
    assert len(resumed) == len(proxy.requests) - 1


def test_the_async_client_resumes_too(
    shared_server: Server, finished: tuple[str, dict[str, list[float | None]]]
) -> None:
    sweep_id, curves = finished
    proxy = ByteCuttingProxy(shared_server.port, after=16_384)

    async def read() -> list[RunLoss | SweepUpdate]:
        async with AsyncClient(proxy.url) as tw:
            return [event async for event in tw.stream_sweep(sweep_id)]

    try:
        events = asyncio.run(read())
    finally:
        proxy.close()
    losses = [e for e in events if isinstance(e, RunLoss)]
    assert {run: [e.loss for e in losses if e.job_id == run] for run in curves} == curves
    assert isinstance(events[-1], SweepUpdate) and events[-1].sweep.status.is_final


def test_a_live_sweep_resumes_with_every_step_once(shared_server: Server) -> None:
    with Client(shared_server.url) as tw:
        sweep = tw.submit_sweep("numpy", {"seed": [5, 6]}, steps=4000)
        proxy = ByteCuttingProxy(shared_server.port, after=8_192)
        try:
            with Client(proxy.url) as through:
                events = list(through.stream_sweep(sweep.id))
        finally:
            proxy.close()
        final = tw.get_sweep(sweep.id)
        for run in final.jobs:
            steps = [e.step for e in events if isinstance(e, RunLoss) and e.job_id == run.id]
            assert steps == list(range(4000))
            assert [e.loss for e in events if isinstance(e, RunLoss) and e.job_id == run.id] == (
                tw.losses(run.id)[1]
            )
        assert len(proxy.requests) > 3


def test_an_id_from_another_sweep_is_a_422_naming_it(
    shared_server: Server, finished: tuple[str, dict[str, list[float | None]]]
) -> None:
    sweep_id, _ = finished
    path = f"{shared_server.url}/v1/sweeps/{sweep_id}/events"
    for headers, params, loc in (
        ({"Last-Event-ID": "5.5"}, {}, ["header", "last-event-id"]),  # two runs, not four
        ({"Last-Event-ID": "nope"}, {}, ["header", "last-event-id"]),
        ({}, {"after": "1x4x4"}, ["query", "after"]),
    ):
        answer = httpx.get(path, headers=headers, params=params)
        assert answer.status_code == 422, answer.text
        assert loc in [e["loc"] for e in answer.json()["detail"]]
    # a valid one: only what comes after it (the last 10 steps of each run), then the end
    answer = httpx.get(path, headers={"Last-Event-ID": f"{STEPS - 10}x4"})
    assert answer.status_code == 200
    assert answer.text.count("event: loss") == 40
