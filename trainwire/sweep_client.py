"""Sweeps from Python: submit a grid of runs, read it, list, cancel, delete, and follow every run's
losses on one stream. `Client` and `AsyncClient` (trainwire.client) have these methods.

```python
with Client() as tw:
    sweep = tw.submit_sweep("nn", {"learning_rate": [1e-5, 1e-4, 1e-3], "seed": [0, 1]}, steps=500)
    for event in tw.stream_sweep(sweep.id):   # RunLoss(job_id, step, loss) ... SweepUpdate(sweep)
        ...
    sweep = tw.wait_sweep(sweep.id)           # the final sweep: every run's status and last loss
```

A reconnect sends the id of the last event seen (`Last-Event-ID`): the server goes on from each
run's next step, and the client gives out each step once.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterable, Iterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
from httpx_sse import ServerSentEvent, SSEError, aconnect_sse, connect_sse
from tenacity import AsyncRetrying, Retrying

from trainwire.sweeps import Fuse, Sweep, SweepList

if TYPE_CHECKING:
    from trainwire.client import _Base

    _Mixin = _Base
else:
    _Mixin = object

SWEEP_PAGE_SIZE = 100  # the most sweeps the API gives in one page


@dataclass(frozen=True, slots=True)
class RunLoss:
    """The loss of one step of one run of the sweep; None where it was not finite."""

    job_id: str
    step: int
    loss: float | None


@dataclass(frozen=True, slots=True)
class SweepUpdate:
    """The sweep, sent when its runs change status; the last event of a stream is final."""

    sweep: Sweep


SweepEvent = RunLoss | SweepUpdate


def _sweep_path(sweep_id: str) -> str:
    if not sweep_id:
        raise ValueError("a sweep id is not empty")
    return "/v1/sweeps/" + quote(sweep_id, safe="")


def sweep_body(
    variant: str,
    grid: dict[str, list[Any]],
    hyperparameters: dict[str, Any],
    *,
    seed: int | None,
    device: str,
    label: str | None,
    fuse: Fuse,
    exact: bool | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "variant": variant,
        "hyperparameters": hyperparameters,
        "grid": {name: list(values) for name, values in grid.items()},
        "device": device,
        "fuse": fuse,
    }
    if seed is not None:
        body["seed"] = seed
    if label is not None:
        body["label"] = label
    if exact is not None:
        body["exact"] = exact
    return body


class _SweepStreamState:
    """Where a sweep's stream stands across connections: each run's next step, the last sweep
    given out, and whether the final one came."""

    def __init__(self, thinned: bool):
        self.thinned = thinned  # ?max_points: the history skips steps on purpose
        self.next_step: dict[str, int] = {}
        self.last: Sweep | None = None
        self.done = False
        self.progressed = False
        self.connected = False
        self.sweeps_seen = 0  # on this connection
        self.last_id: str | None = None  # the stream's position, sent back on a reconnect

    def headers(self) -> dict[str, str]:
        return {"Last-Event-ID": self.last_id} if self.last_id else {}

    def accept(self, sse: ServerSentEvent) -> SweepEvent | None:
        from trainwire.client import ProtocolError, _parse, _StreamGap, strict_json

        if sse.id:
            self.last_id = sse.id
        if sse.event == "loss":
            try:
                data = strict_json(sse.data)
                job_id, step, loss = data["job_id"], data["step"], data["loss"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ProtocolError(f"not a loss event: {sse.data[:200]!r}") from exc
            expected = self.next_step.get(job_id, 0)
            if step < expected:  # sent again after a reconnect
                return None
            if step > expected and not self.thinned:
                raise _StreamGap(f"run {job_id} went from step {expected - 1} to {step}")
            self.next_step[job_id] = step + 1
            self.progressed = True
            return RunLoss(job_id, step, None if loss is None else float(loss))
        if sse.event == "sweep":
            sweep = _parse(Sweep, sse.data)
            self.sweeps_seen += 1
            # the first event of a connection tells where the sweep stands: a final one is
            # followed by the history, then by the final one that ends the stream
            if sweep.status.is_final:
                if self.sweeps_seen == 1:
                    return None
                self.done = True
            if sweep == self.last and not self.done:
                return None
            self.last = sweep
            self.progressed = True
            return SweepUpdate(sweep)
        return None


class SweepCalls(_Mixin):
    """The sweep methods of `Client`."""

    _http: httpx.Client

    if TYPE_CHECKING:

        def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response: ...
        def _get(self, path: str, **kwargs: Any) -> httpx.Response: ...
        def _create(self, path: str, body: dict[str, Any], key: str | None) -> httpx.Response: ...
        def _paged(
            self, path: str, model: type[SweepList], filters: dict[str, Any], limit: int | None,
            page_size: int,
        ) -> Iterator[Any]: ...  # fmt: skip

    def submit_sweep(
        self,
        variant: str,
        grid: dict[str, list[Any]],
        *,
        seed: int | None = None,
        device: str = "auto",
        label: str | None = None,
        fuse: Fuse = "auto",
        exact: bool | None = None,
        idempotency_key: str | None = None,
        **hyperparameters: Any,
    ) -> Sweep:
        """Queue every combination of `grid`'s values as a run (a job); hyperparameters not
        given take the variant's defaults. Retried as `Client.submit` is: one sweep, whatever
        happens."""
        from trainwire.client import _body, _parse

        body = sweep_body(
            variant, grid, hyperparameters, seed=seed, device=device, label=label, fuse=fuse,
            exact=exact,
        )  # fmt: skip
        return _parse(Sweep, _body(self._create("/v1/sweeps", body, idempotency_key)))

    def get_sweep(self, sweep_id: str) -> Sweep:
        """The sweep and its runs as they stand now."""
        from trainwire.client import _body, _parse

        return _parse(Sweep, _body(self._get(_sweep_path(sweep_id))))

    def sweeps(
        self,
        status: str | Iterable[str] | None = None,
        variant: str | Iterable[str] | None = None,
        limit: int | None = None,
        *,
        label: str | Iterable[str] | None = None,
        id_prefix: str | None = None,
    ) -> Iterator[Sweep]:
        """Sweeps, newest first, page after page; at most `limit` of them (None: every one).
        Filters as `jobs` takes them."""
        filters = {"status": status, "variant": variant, "label": label, "id_prefix": id_prefix}
        return self._paged("/v1/sweeps", SweepList, filters, limit, SWEEP_PAGE_SIZE)

    def cancel_sweep(self, sweep_id: str) -> Sweep:
        """Cancel every run of the sweep that is not final."""
        from trainwire.client import _body, _parse

        path = _sweep_path(sweep_id) + "/cancel"
        return _parse(Sweep, _body(self._send("POST", path)))

    def delete_sweep(self, sweep_id: str) -> None:
        """Delete a sweep whose runs are all final, with its runs and their losses."""
        self._send("DELETE", _sweep_path(sweep_id))

    def stream_sweep(
        self, sweep_id: str, *, max_points: int | None = None
    ) -> Generator[SweepEvent, None, None]:
        """`RunLoss` for every step of every run (each once; with max_points the history is
        thinned per run), `SweepUpdate` when runs change status, the final `SweepUpdate` last.
        Reconnects when the connection drops or the server restarts."""
        from trainwire.client import APIError, ServerUnreachable, _should_reconnect, _StreamGap

        state = _SweepStreamState(thinned=max_points is not None)
        params = {"max_points": max_points} if max_points is not None else {}
        path = _sweep_path(sweep_id) + "/events"
        while not state.done:
            for attempt in Retrying(**self._reconnects(state)):  # type: ignore[arg-type]
                with attempt:
                    state.progressed = False
                    try:
                        yield from self._sweep_stream_once(path, params, state)
                    except (ServerUnreachable, _StreamGap, APIError) as exc:
                        if not (state.progressed and _should_reconnect(exc, state)):  # type: ignore[arg-type]
                            raise

    def _sweep_stream_once(
        self, path: str, params: dict[str, Any], state: _SweepStreamState
    ) -> Generator[SweepEvent, None, None]:
        from trainwire.client import ProtocolError, ServerUnreachable, _check_stream, _unreachable

        state.sweeps_seen = 0
        try:
            with connect_sse(
                self._http,
                "GET",
                path,
                params=params,
                headers=state.headers(),
                timeout=self._stream_timeout,
            ) as source:
                state.connected = True
                if source.response.status_code >= 400:
                    source.response.read()
                _check_stream(source.response)
                for sse in source.iter_sse():
                    event = state.accept(sse)
                    if event is not None:
                        yield event
                    if state.done:
                        return
        except httpx.TransportError as exc:
            raise _unreachable(exc, self.url) from exc
        except SSEError as exc:
            raise ProtocolError(str(exc)) from exc
        raise ServerUnreachable("the event stream ended before the sweep did")

    def wait_sweep(self, sweep_id: str) -> Sweep:
        """Block until every run of the sweep is final; returns the final sweep."""
        sweep = self.get_sweep(sweep_id)
        if sweep.status.is_final:
            return sweep
        for event in self.stream_sweep(sweep_id, max_points=1):
            if isinstance(event, SweepUpdate) and event.sweep.status.is_final:
                sweep = event.sweep
        return sweep


class AsyncSweepCalls(_Mixin):
    """The sweep methods of `AsyncClient`: `SweepCalls`', awaited."""

    _http: httpx.AsyncClient

    if TYPE_CHECKING:

        async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response: ...
        async def _get(self, path: str, **kwargs: Any) -> httpx.Response: ...
        async def _create(
            self, path: str, body: dict[str, Any], key: str | None
        ) -> httpx.Response: ...
        def _paged(
            self, path: str, model: type[SweepList], filters: dict[str, Any], limit: int | None,
            page_size: int,
        ) -> AsyncIterator[Any]: ...  # fmt: skip

    async def submit_sweep(
        self,
        variant: str,
        grid: dict[str, list[Any]],
        *,
        seed: int | None = None,
        device: str = "auto",
        label: str | None = None,
        fuse: Fuse = "auto",
        exact: bool | None = None,
        idempotency_key: str | None = None,
        **hyperparameters: Any,
    ) -> Sweep:
        """`SweepCalls.submit_sweep`, awaited."""
        from trainwire.client import _body, _parse

        body = sweep_body(
            variant, grid, hyperparameters, seed=seed, device=device, label=label, fuse=fuse,
            exact=exact,
        )  # fmt: skip
        response = await self._create("/v1/sweeps", body, idempotency_key)
        return _parse(Sweep, _body(response))

    async def get_sweep(self, sweep_id: str) -> Sweep:
        """The sweep and its runs as they stand now."""
        from trainwire.client import _body, _parse

        return _parse(Sweep, _body(await self._get(_sweep_path(sweep_id))))

    def sweeps(
        self,
        status: str | Iterable[str] | None = None,
        variant: str | Iterable[str] | None = None,
        limit: int | None = None,
        *,
        label: str | Iterable[str] | None = None,
        id_prefix: str | None = None,
    ) -> AsyncIterator[Sweep]:
        """Sweeps, newest first, page after page; at most `limit` of them (None: every one).
        Filters as `jobs` takes them."""
        filters = {"status": status, "variant": variant, "label": label, "id_prefix": id_prefix}
        return self._paged("/v1/sweeps", SweepList, filters, limit, SWEEP_PAGE_SIZE)

    async def cancel_sweep(self, sweep_id: str) -> Sweep:
        """Cancel every run of the sweep that is not final."""
        from trainwire.client import _body, _parse

        response = await self._send("POST", _sweep_path(sweep_id) + "/cancel")
        return _parse(Sweep, _body(response))

    async def delete_sweep(self, sweep_id: str) -> None:
        """Delete a sweep whose runs are all final, with its runs and their losses."""
        await self._send("DELETE", _sweep_path(sweep_id))

    async def stream_sweep(
        self, sweep_id: str, *, max_points: int | None = None
    ) -> AsyncGenerator[SweepEvent, None]:
        """`RunLoss` for every step of every run once, `SweepUpdate` on status changes, the
        final `SweepUpdate` last; reconnects as `SweepCalls.stream_sweep` does."""
        from trainwire.client import APIError, ServerUnreachable, _should_reconnect, _StreamGap

        state = _SweepStreamState(thinned=max_points is not None)
        params = {"max_points": max_points} if max_points is not None else {}
        path = _sweep_path(sweep_id) + "/events"
        while not state.done:
            async for attempt in AsyncRetrying(**self._reconnects(state)):  # type: ignore[arg-type]
                with attempt:
                    state.progressed = False
                    try:
                        async with aclosing(self._sweep_stream_once(path, params, state)) as events:
                            async for event in events:
                                yield event
                    except (ServerUnreachable, _StreamGap, APIError) as exc:
                        if not (state.progressed and _should_reconnect(exc, state)):  # type: ignore[arg-type]
                            raise

    async def _sweep_stream_once(
        self, path: str, params: dict[str, Any], state: _SweepStreamState
    ) -> AsyncGenerator[SweepEvent, None]:
        from trainwire.client import ProtocolError, ServerUnreachable, _check_stream, _unreachable

        state.sweeps_seen = 0
        try:
            async with aconnect_sse(
                self._http,
                "GET",
                path,
                params=params,
                headers=state.headers(),
                timeout=self._stream_timeout,
            ) as source:
                state.connected = True
                if source.response.status_code >= 400:
                    await source.response.aread()
                _check_stream(source.response)
                async for sse in source.aiter_sse():
                    event = state.accept(sse)
                    if event is not None:
                        yield event
                    if state.done:
                        return
        except httpx.TransportError as exc:
            raise _unreachable(exc, self.url) from exc
        except SSEError as exc:
            raise ProtocolError(str(exc)) from exc
        raise ServerUnreachable("the event stream ended before the sweep did")

    async def wait_sweep(self, sweep_id: str) -> Sweep:
        """Wait until every run of the sweep is final; returns the final sweep."""
        sweep = await self.get_sweep(sweep_id)
        if sweep.status.is_final:
            return sweep
        async for event in self.stream_sweep(sweep_id, max_points=1):
            if isinstance(event, SweepUpdate) and event.sweep.status.is_final:
                sweep = event.sweep
        return sweep
