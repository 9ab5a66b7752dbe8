"""trainwire.Client against real servers: every method, the stream, and errors with their detail."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

import pytest
from servers import Server, wait_for

from trainwire import APIError, Client, Loss, Status
from trainwire.models import Job, JobStatus

TINY = {"batch_size": 8, "d_in": 20, "hidden": 10, "d_out": 2}
LONG = {**TINY, "steps": 1_000_000}  # runs until cancelled


def restart_on_the_same_port(make_server: Callable[..., Server], old: Server) -> Server:
    """A new server on the old one's data directory and port (where its clients look)."""
    new = make_server(data_dir=old.data_dir, start=False, **old.env)
    new.port = old.port
    return new.start()


def check_stream(events: list[Loss | Status], first_step: int = 0) -> Job:
    """Losses first_step, first_step + 1, ... once each, then the final status last; returns it."""
    assert events and isinstance(events[-1], Status), events[-3:]
    final = events[-1].job
    assert final.status.is_final
    steps = [e.step for e in events if isinstance(e, Loss)]
    assert steps == list(range(first_step, final.step))
    # status changes only, and nothing final before the end
    statuses = [e.job.status for e in events if isinstance(e, Status)]
    assert all(a != b for a, b in zip(statuses, statuses[1:], strict=False)), statuses
    assert not any(s.is_final for s in statuses[:-1]), statuses
    return final


def test_submit_get_wait_stream_and_losses(shared_server: Server) -> None:
    with Client(shared_server.url) as tw:
        job = tw.submit("numpy", seed=7, label="sdk", steps=30, learning_rate=2e-6)
        assert isinstance(job, Job)
        assert (job.variant, job.seed, job.label, job.steps) == ("numpy", 7, "sdk", 30)
        assert job.hyperparameters["learning_rate"] == 2e-6
        assert job.hyperparameters["d_in"] == 1000  # the variant's default, resolved
        assert tw.get(job.id).id == job.id

        events = list(tw.stream(job.id))
        final = check_stream(events)
        assert final.status is JobStatus.succeeded and final.step == 30
        assert tw.wait(job.id) == tw.get(job.id)

        streamed = [(e.step, e.loss) for e in events if isinstance(e, Loss)]
        steps, losses = tw.losses(job.id)
        assert list(zip(steps, losses, strict=True)) == streamed
        with shared_server.client() as http:  # what the API itself says
            page = http.get(f"/v1/jobs/{job.id}/losses").json()
        assert (page["steps"], page["losses"]) == (steps, losses)

        # page after page gives the same curve, and max_points a thinned one of real points
        assert tw.losses(job.id, page_size=7) == (steps, losses)
        thin_steps, thin_losses = tw.losses(job.id, max_points=10)
        assert 0 < len(thin_steps) <= 10
        assert all(losses[s] == v for s, v in zip(thin_steps, thin_losses, strict=True))

        # a stream that starts part way, and one of a finished job: the rest of the curve, then
        # the final status alone
        assert check_stream(list(tw.stream(job.id, after=19)), first_step=20) == final


def test_a_job_s_threads_can_be_pinned(shared_server: Server) -> None:
    with Client(shared_server.url) as tw:
        pinned = tw.submit("nn", seed=3, threads=1, steps=20, **TINY)
        assert pinned.environment is not None and pinned.environment["threads"] == 1
        done = tw.wait(pinned.id)
        assert done.status is JobStatus.succeeded and done.environment is not None
        assert done.environment["threads"] == 1  # what the run used
        with pytest.raises(APIError) as refused:
            tw.submit("nn", threads=0, steps=20)
        assert refused.value.status_code == 422 and "threads" in str(refused.value.detail)


def test_a_live_stream_gives_each_status_change_and_every_step_once(shared_server: Server) -> None:
    with Client(shared_server.url) as tw:
        job = tw.submit("tensors", seed=3, **{**TINY, "steps": 3_000})
        events = list(tw.stream(job.id))
        final = check_stream(events)
        assert final.status is JobStatus.succeeded
        assert [e.step for e in events if isinstance(e, Loss)] == tw.losses(job.id)[0]
        assert events[0] == Status(events[0].job) and not events[0].job.status.is_final  # type: ignore[union-attr]


def test_a_stream_left_early_closes(shared_server: Server) -> None:
    with Client(shared_server.url) as tw:
        job = tw.submit("tensors", **LONG)
        stream = tw.stream(job.id)
        first_losses = [e for e, _ in zip(stream, range(50), strict=False) if isinstance(e, Loss)]
        stream.close()
        assert [e.step for e in first_losses] == list(range(len(first_losses)))
        assert tw.cancel(job.id).id == job.id
        assert tw.wait(job.id).status is JobStatus.cancelled


def test_jobs_pages_filters_cancel_and_delete(make_server: Callable[..., Server]) -> None:
    server = make_server(TRAINWIRE_CPU_WORKERS="1")
    with Client(server.url) as tw:
        blocker = tw.submit("tensors", **LONG)  # holds the only worker: the rest stay queued
        queued = [tw.submit("numpy", seed=i, steps=2) for i in range(5)]
        newest_first = [j.id for j in reversed([blocker, *queued])]

        assert [j.id for j in tw.jobs(page_size=2)] == newest_first
        assert [j.id for j in tw.jobs(limit=3, page_size=2)] == newest_first[:3]
        assert [j.id for j in tw.jobs(variant="tensors")] == [blocker.id]

        assert tw.cancel(queued[1].id).status is JobStatus.cancelled
        assert tw.cancel(queued[3].id).status is JobStatus.cancelled
        cancelled = [j.id for j in tw.jobs(status="cancelled", page_size=1)]
        assert cancelled == [queued[3].id, queued[1].id]
        both = {j.id for j in tw.jobs(status=["cancelled", "running"])}
        assert both == {blocker.id, queued[1].id, queued[3].id}

        tw.cancel(blocker.id)
        for job in queued:
            tw.wait(job.id)
        tw.delete(queued[3].id)
        with pytest.raises(APIError) as gone:
            tw.get(queued[3].id)
        assert gone.value.status_code == 404
        assert [j.id for j in tw.jobs()] == [i for i in newest_first if i != queued[3].id]


def test_4xx_raise_with_the_status_and_the_servers_detail(shared_server: Server) -> None:
    with Client(shared_server.url) as tw:
        with pytest.raises(APIError) as missing:
            tw.get("0123456789abcdef")
        assert missing.value.status_code == 404
        assert "0123456789abcdef" in missing.value.detail

        with pytest.raises(APIError) as unused:
            tw.submit("numpy", momentum=0.5)
        assert unused.value.status_code == 422
        assert "momentum" in str(unused.value)  # the message names the field

        with pytest.raises(APIError) as stream_missing:
            next(tw.stream("0123456789abcdef"))
        assert stream_missing.value.status_code == 404

        job = tw.submit("numpy", steps=2)
        tw.wait(job.id)
        with pytest.raises(APIError) as final:
            tw.cancel(job.id)
        assert final.value.status_code == 409 and "already" in final.value.detail


def test_a_stream_carries_on_across_a_server_restart(make_server: Callable[..., Server]) -> None:
    """SIGTERM ends the stream cleanly (not a final status): the client reconnects to the next
    server on the same data directory with Last-Event-ID and misses or repeats no step."""
    first = make_server(TRAINWIRE_CPU_WORKERS="1")
    events: list[Loss | Status] = []
    errors: list[BaseException] = []
    with Client(first.url, reconnect_timeout=90) as tw:
        job = tw.submit("tensors", seed=5, **{**TINY, "steps": 20_000})

        def read() -> None:
            try:
                events.extend(tw.stream(job.id))
            except BaseException as exc:  # reported below
                errors.append(exc)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        wait_for(lambda: len(events) > 500, timeout=60, interval=0.01)
        assert first.stop(signal.SIGTERM) == 0
        restart_on_the_same_port(make_server, first)
        reader.join(120)
        assert not reader.is_alive() and not errors, errors

    final = check_stream(events)
    assert final.status is JobStatus.succeeded and final.step == 20_000
    assert final.attempts == 2  # it ran again on the second server: the stream spanned both
