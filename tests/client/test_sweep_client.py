"""Sweeps from Python and the terminal, against real servers: submit, read, list, the stream of
every run across a server restart, cancel, delete, errors, and `trainwire sweep`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
from servers import Server, wait_for
from test_command_line import trainwire
from test_sdk import restart_on_the_same_port

from trainwire import APIError, AsyncClient, Client, RunLoss, Sweep, SweepUpdate
from trainwire.sweeps import SweepStatus

TINY = {"batch_size": 8, "d_in": 20, "hidden": 10, "d_out": 2}


def check_sweep_stream(events: list[RunLoss | SweepUpdate], tw: Client) -> Sweep:
    """Every step of every run once and in order, the final sweep last; returns it."""
    assert events and isinstance(events[-1], SweepUpdate)
    final = events[-1].sweep
    assert final.status.is_final
    assert not any(e.sweep.status.is_final for e in events[:-1] if isinstance(e, SweepUpdate)), (
        "a final sweep before the end"
    )
    for run in final.jobs:
        got = [(e.step, e.loss) for e in events if isinstance(e, RunLoss) and e.job_id == run.id]
        steps, losses = tw.losses(run.id)
        assert got == list(zip(steps, losses, strict=True)), run.id
    return final


def test_submit_read_list_stream_and_delete_a_sweep(shared_server: Server) -> None:
    with Client(shared_server.url) as tw:
        sweep = tw.submit_sweep(
            "numpy",
            {"learning_rate": [1e-6, 2e-6], "seed": [1, 2]},
            label="sdk sweep",
            steps=60,
            **TINY,
        )
        assert isinstance(sweep, Sweep) and len(sweep.jobs) == 4
        assert sweep.hyperparameters["steps"] == 60 and sweep.label == "sdk sweep"
        assert tw.get_sweep(sweep.id).id == sweep.id
        final = check_sweep_stream(list(tw.stream_sweep(sweep.id)), tw)
        assert final.status is SweepStatus.succeeded
        assert tw.wait_sweep(sweep.id) == final
        assert sweep.id in [s.id for s in tw.sweeps(variant="numpy", limit=50)]
        assert [j.id for j in tw.jobs(limit=4)] != []
        thin = list(tw.stream_sweep(sweep.id, max_points=10))
        assert isinstance(thin[-1], SweepUpdate) and thin[-1].sweep == final
        assert all(
            len([e for e in thin if isinstance(e, RunLoss) and e.job_id == r.id]) <= 10
            for r in final.jobs
        )
        tw.delete_sweep(sweep.id)
        with pytest.raises(APIError) as missing:
            tw.get_sweep(sweep.id)
        assert missing.value.status_code == 404


def test_a_bad_sweep_is_an_error_with_the_servers_detail(shared_server: Server) -> None:
    with Client(shared_server.url) as tw, pytest.raises(APIError) as refused:
        tw.submit_sweep("nn", {"learning_rate": [1e-4, 0.0]})
    assert refused.value.status_code == 422
    assert refused.value.detail[0]["loc"] == ["body", "grid", "learning_rate", 1]


def test_cancel_a_sweep_and_wait_for_it(shared_server: Server) -> None:
    with Client(shared_server.url) as tw:
        sweep = tw.submit_sweep("tensors", {"seed": [1, 2]}, steps=1_000_000, **TINY)
        wait_for(lambda: tw.get_sweep(sweep.id).status is SweepStatus.running)
        tw.cancel_sweep(sweep.id)
        assert tw.wait_sweep(sweep.id).status is SweepStatus.cancelled
        with pytest.raises(APIError) as again:
            tw.cancel_sweep(sweep.id)
        assert again.value.status_code == 409


def test_the_stream_gives_every_step_once_across_a_server_restart(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(TRAINWIRE_CPU_WORKERS="2")
    with Client(server.url, reconnect_timeout=60) as tw:
        sweep = tw.submit_sweep(
            "autograd", {"learning_rate": [1e-6, 2e-6]}, steps=6000, seed=3, **TINY
        )
        events: list[RunLoss | SweepUpdate] = []
        restarted = False
        for event in tw.stream_sweep(sweep.id):
            events.append(event)
            losses = sum(isinstance(e, RunLoss) for e in events)
            if not restarted and losses > 500:
                server.stop()  # SIGTERM: the running runs go back to the queue
                server = restart_on_the_same_port(make_server, server)
                restarted = True
        assert restarted
        assert check_sweep_stream(events, tw).status is SweepStatus.succeeded


def test_the_async_client_has_the_same_sweep_calls(shared_server: Server) -> None:
    async def scenario() -> Sweep:
        async with AsyncClient(shared_server.url) as tw:
            sweep = await tw.submit_sweep("nn", {"seed": [4, 5]}, steps=20, **TINY)
            events = [event async for event in tw.stream_sweep(sweep.id)]
            assert isinstance(events[-1], SweepUpdate)
            got = [e for e in events if isinstance(e, RunLoss)]
            assert len(got) == 40
            assert [s.id async for s in tw.sweeps(limit=1)] == [sweep.id]
            return await tw.wait_sweep(sweep.id)

    assert asyncio.run(scenario()).status is SweepStatus.succeeded


def test_trainwire_sweep_prints_the_id_and_with_watch_the_runs_by_final_loss(
    shared_server: Server,
) -> None:
    url = shared_server.url
    plain = trainwire("sweep", "numpy", "--grid", "seed=1,2", "--steps", "3", url=url)
    assert plain.returncode == 0, plain.stderr
    assert len(plain.stdout.strip()) == 16

    watched = trainwire(
        "sweep", "tensors", "--grid", "learning_rate=1e-6,3e-7", "--grid", "seed=0,1",
        "--steps", "30", "--label", "cli sweep", "--watch", "--json", url=url,
    )  # fmt: skip
    assert watched.returncode == 0, watched.stderr
    sweep = json.loads(watched.stderr)  # stdout is the runs alone
    lines = [line.split("\t") for line in watched.stdout.splitlines()]
    assert len(lines) == 4 and {line[0] for line in lines} == {r["id"] for r in sweep["jobs"]}
    finals = [float(line[-1]) for line in lines]
    assert finals == sorted(finals)
    assert all(line[3] == "succeeded" for line in lines)
    with Client(url) as tw:
        for line in lines:
            assert float(line[-1]) == tw.get(line[0]).last_loss

    refused = trainwire("sweep", "nn", "--grid", "learning_rate=-1", url=url)
    assert refused.returncode == 2 and "learning_rate" in refused.stderr
    usage = trainwire("sweep", "nn", "--grid", "learning_rate", url=url)
    assert usage.returncode == 2 and "FIELD=VALUE" in usage.stderr
