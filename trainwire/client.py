"""The Python client of the trainwire API: jobs, their losses and their live loss streams.

`Client` and `AsyncClient` have the same methods (the async ones are awaited, and the iterators
are `async for`). Bodies and events are parsed as strict JSON (RFC 8259: no `NaN`, no `Infinity`)
into the API's own models (`trainwire.models`).

Retries: `stream` (and `wait`, which reads the stream) reconnects with `Last-Event-ID` and
exponential backoff when the connection drops or the server restarts, and yields each step once.
Plain GETs are retried a few times on a lost connection or a 502/503/504. A submit (`submit`,
`submit_sweep`) carries an `Idempotency-Key` of its own (a new UUID, or the one given) and is
retried with it when its answer is lost (a connection that drops or times out, a 502/503/504, a
429 after its Retry-After) for up to `submit_retry_timeout` seconds: the server answers a retry
with the job the first request made, so a retry never makes a second one. Nothing else is
retried: a 4xx never (but a 429), cancel and delete never.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterable, Iterator
from contextlib import aclosing, suppress
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from httpx_sse import ServerSentEvent, SSEError, aconnect_sse, connect_sse
from pydantic import BaseModel
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from trainwire.checkpoint_client import AsyncCheckpointCalls, CheckpointCalls
from trainwire.models import Job, JobList, Losses, VariantInfo, Webhook
from trainwire.sweep_client import AsyncSweepCalls, RunLoss, SweepCalls, SweepUpdate
from trainwire.sweeps import SweepList

__all__ = [
    "DEFAULT_URL",
    "APIError",
    "AsyncClient",
    "Client",
    "Event",
    "Loss",
    "ProtocolError",
    "RunLoss",
    "ServerUnreachable",
    "Status",
    "SweepUpdate",
    "TrainwireError",
]

DEFAULT_URL = "http://127.0.0.1:8000"
KEEPALIVE_SECONDS = 15.0  # the server's `: ping` interval on an idle stream
PAGE_SIZE = 500  # the most jobs the API gives in one page
LOSS_PAGE_SIZE = 100_000  # the most losses the API gives in one page

ModelT = TypeVar("ModelT", bound=BaseModel)
_Page = JobList | SweepList  # a listing's page: `items`, newest first, and `next_cursor`


# -- errors ---------------------------------------------------------------------------------------


class TrainwireError(Exception):
    """Base class of the client's errors."""


class APIError(TrainwireError):
    """The server answered with an error status; `detail` is its `{"detail": ...}`."""

    def __init__(
        self,
        status_code: int,
        detail: Any,
        *,
        method: str = "",
        url: str = "",
        retry_after: float | None = None,
    ):
        self.status_code = status_code
        self.detail = detail
        self.method = method
        self.url = url
        self.retry_after = retry_after  # seconds, from Retry-After (a full queue's 429)
        super().__init__(f"{status_code}: {format_detail(detail)}")


class ServerUnreachable(TrainwireError):
    """The server could not be reached, or it went away and did not come back in time."""


class ProtocolError(TrainwireError):
    """The server's answer is not what the API says (not JSON, a wrong shape, not a stream)."""


class _StreamGap(ProtocolError):
    """The stream skipped steps: reconnecting from the last step seen asks for them again."""


def format_detail(detail: Any) -> str:
    """A server's `detail` as one line: FastAPI's validation errors as `field: message; ...`."""
    if isinstance(detail, list) and all(isinstance(e, dict) for e in detail):
        parts = []
        for error in detail:
            loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path")]
            message = str(error.get("msg", error))
            parts.append(f"{'.'.join(loc)}: {message}" if loc else message)
        return "; ".join(parts)
    return detail if isinstance(detail, str) else json.dumps(detail)


# -- events ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Loss:
    """The loss of one step; None where it was NaN or infinite (the job then diverged)."""

    step: int
    loss: float | None


@dataclass(frozen=True, slots=True)
class Status:
    """The job, sent when its status changes; the last event of a stream is its final one."""

    job: Job


Event = Loss | Status


# -- strict parsing -------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259)")


def strict_json(text: str | bytes) -> Any:
    """json.loads that refuses NaN, Infinity and -Infinity."""
    return json.loads(text, parse_constant=_reject_constant)


def _parse(model: type[ModelT], data: str | bytes) -> ModelT:
    try:
        return model.model_validate(strict_json(data))
    except ValueError as exc:  # bad JSON, and pydantic's ValidationError (a ValueError)
        raise ProtocolError(f"not a {model.__name__}: {exc}") from None


def _parse_list(model: type[ModelT], data: str | bytes) -> list[ModelT]:
    try:
        body = strict_json(data)
        if not isinstance(body, list):
            raise ValueError("not a JSON list")
        return [model.model_validate(item) for item in body]
    except ValueError as exc:
        raise ProtocolError(f"not a list of {model.__name__}: {exc}") from None


def _parse_loss(data: str) -> Loss:
    try:
        body = strict_json(data)
    except ValueError as exc:
        raise ProtocolError(f"a loss event that is not JSON: {exc}") from None
    if not isinstance(body, dict) or "loss" not in body:
        raise ProtocolError(f"not a loss event: {data[:200]!r}")
    step, loss = body.get("step"), body["loss"]
    if type(step) is not int or step < 0 or not (loss is None or type(loss) in (int, float)):
        raise ProtocolError(f"not a loss event: {data[:200]!r}")
    return Loss(step, None if loss is None else float(loss))


def _body(response: httpx.Response) -> str:
    if response.headers.get("content-type", "").partition(";")[0].strip() != "application/json":
        raise ProtocolError(
            f"{response.request.method} {response.request.url.path} answered "
            f"{response.headers.get('content-type')!r}, not JSON"
        )
    return response.text


def _api_error(response: httpx.Response) -> APIError:
    """The error of an answer >= 400 (its body already read)."""
    try:
        detail = strict_json(response.text)["detail"]
    except (ValueError, KeyError, TypeError):
        detail = response.text[:1000] or response.reason_phrase
    retry_after = None
    with suppress(KeyError, ValueError):
        retry_after = float(response.headers["retry-after"])
    return APIError(
        response.status_code,
        detail,
        method=response.request.method,
        url=str(response.request.url),
        retry_after=retry_after,
    )


def _unreachable(exc: httpx.TransportError, url: str) -> ServerUnreachable:
    return ServerUnreachable(f"{url}: {type(exc).__name__}: {exc or 'connection lost'}")


def _job_path(job_id: str) -> str:
    if not job_id:
        raise ValueError("a job id is not empty")
    return "/v1/jobs/" + quote(job_id, safe="")


def _submit_body(
    variant: str,
    seed: int | None,
    device: str,
    label: str | None,
    threads: int | None,
    hyperparameters: dict[str, Any],
) -> dict[str, Any]:
    body: dict[str, Any] = {"variant": variant, "hyperparameters": hyperparameters}
    if seed is not None:
        body["seed"] = seed
    body["device"] = device
    if label is not None:
        body["label"] = label
    if threads is not None:
        body["threads"] = threads
    return body


def _add_webhook(body: dict[str, Any], webhook: Webhook | dict[str, Any] | None) -> None:
    """A request's `webhook`, checked here first (a wrong event fails before any request)."""
    if webhook is not None:
        checked = webhook if isinstance(webhook, Webhook) else Webhook.model_validate(webhook)
        body["webhook"] = checked.model_dump(mode="json")


class _Listing:
    """Where a listing (`/v1/jobs`, `/v1/sweeps`) stands between its pages: what to ask for
    next, and the items of a page that are still wanted. No I/O: the sync and async clients
    fetch the pages."""

    def __init__(
        self,
        model: type[_Page],
        filters: dict[str, str | Iterable[str] | None],
        limit: int | None,
        page_size: int,
    ):
        self.model, self.left, self.page_size = model, limit, page_size
        # a filter given as one string is that one value (repeatable filters take a list)
        self.filters: dict[str, Any] = {
            name: value if isinstance(value, str) else [str(v) for v in value]
            for name, value in filters.items()
            if value is not None
        }
        self.cursor: str | None = None
        self.done = limit is not None and limit <= 0

    def params(self) -> dict[str, Any]:
        """The next page's query."""
        size = self.page_size if self.left is None else max(1, min(self.page_size, self.left))
        params = {"limit": size, **self.filters}
        if self.cursor is not None:
            params["cursor"] = self.cursor
        return params

    def read(self, body: str) -> list[Any]:
        """The wanted items of a page (`body`, the answer to `params()`); sets `done` after the
        last."""
        page = _parse(self.model, body)
        items = page.items[: self.left]
        if self.left is not None:
            self.left -= len(page.items)
        self.cursor = page.next_cursor
        self.done = self.cursor is None or (self.left is not None and self.left <= 0)
        return items


def _should_retry_get(exc: BaseException) -> bool:
    # a connection lost under a request, or a proxy's answer while the service restarts; not a
    # refused connection: a service that is not there now will not be in a second either
    if isinstance(exc, ServerUnreachable):
        return not isinstance(exc.__cause__, httpx.ConnectError)
    return isinstance(exc, APIError) and exc.status_code in (502, 503, 504)


def _should_retry_submit(exc: BaseException) -> bool:
    # the answer lost (the request may have reached the server: its key makes a retry safe),
    # a proxy's answer while the service restarts, or a full queue that says when to come back
    if isinstance(exc, ServerUnreachable):
        return True
    if isinstance(exc, APIError):
        return exc.status_code in (502, 503, 504) or (
            exc.status_code == 429 and exc.retry_after is not None
        )
    return False


_backoff = wait_exponential(multiplier=0.2, max=5.0) + wait_random(0, 0.2)


def _submit_wait(state: RetryCallState) -> float:
    """A Retry-After where the server gave one (at most 30 s), else exponential backoff."""
    exc = state.outcome.exception() if state.outcome is not None else None
    if isinstance(exc, APIError) and exc.retry_after is not None:
        return min(max(exc.retry_after, 0.0), 30.0)
    return float(_backoff(state))


def new_idempotency_key() -> str:
    """A fresh key for one submit and its retries."""
    return str(uuid.uuid4())


def _should_reconnect(exc: BaseException, state: _StreamState) -> bool:
    if isinstance(exc, ServerUnreachable) and not state.connected:
        # never reached it: a wrong URL or a server that is down fails at once, as a GET does
        return not isinstance(exc.__cause__, httpx.ConnectError)
    return isinstance(exc, ServerUnreachable | _StreamGap) or (
        isinstance(exc, APIError) and exc.status_code >= 500
    )


class _StreamState:
    """Where a stream stands across its connections: which step comes next, which status was
    last given out, and whether the final status arrived."""

    def __init__(self, after: int):
        self.next_step = after + 1
        self.status: str | None = None
        self.done = False
        self.progressed = False  # this connection gave out something new
        self.connected = False  # the server has answered once

    def headers(self) -> dict[str, str]:
        return {"Last-Event-ID": str(self.next_step - 1)} if self.next_step > 0 else {}

    def accept(self, sse: ServerSentEvent) -> Event | None:
        """The event to give out for this SSE message, or None (a repeat, a comment)."""
        if sse.event == "loss":
            loss = _parse_loss(sse.data)
            if loss.step < self.next_step:  # sent again after a reconnect
                return None
            if loss.step > self.next_step:
                raise _StreamGap(f"the stream went from step {self.next_step - 1} to {loss.step}")
            self.next_step += 1
            self.progressed = True
            return loss
        if sse.event == "status":
            job = _parse(Job, sse.data)
            if job.status.is_final:
                # a finished job's stream opens with its final status, then replays the losses:
                # the end is the final status once every step has been given out
                if job.step <= self.next_step:
                    self.done = True
                    return Status(job)
                return None
            if job.status != self.status:  # a reconnect opens with the status again
                self.status = job.status
                self.progressed = True
                return Status(job)
        return None

    def ended(self) -> ServerUnreachable:
        return ServerUnreachable("the event stream ended before the job did")


def _check_stream(response: httpx.Response) -> None:
    """Raise for an answer that is not a stream of events (its body read if it is an error)."""
    if response.status_code >= 400:
        raise _api_error(response)
    content_type = response.headers.get("content-type", "")
    if not content_type.startswith("text/event-stream"):
        raise ProtocolError(f"the events answered {content_type!r}, not text/event-stream")


class _Base:
    def __init__(
        self,
        url: str | None,
        token: str | None,
        timeout: float,
        reconnect_timeout: float,
        read_timeout: float,
        submit_retry_timeout: float = 60.0,
    ):
        self.submit_retry_timeout = submit_retry_timeout
        self.url = (url or os.environ.get("TRAINWIRE_URL") or DEFAULT_URL).rstrip("/")
        token = token if token is not None else os.environ.get("TRAINWIRE_API_TOKEN")
        self._headers = {"Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self.reconnect_timeout = reconnect_timeout
        # an idle stream carries a comment every 15 s: silence for longer is a dead connection
        self._stream_timeout = httpx.Timeout(timeout, read=read_timeout)

    def _get_retries(self) -> dict[str, Any]:
        return dict(
            retry=retry_if_exception(_should_retry_get),
            stop=stop_after_attempt(3),
            wait=wait_exponential(multiplier=0.1, max=1.0) + wait_random(0, 0.1),
            reraise=True,
        )

    def _submit_retries(self) -> dict[str, Any]:
        started = time.monotonic()

        def stop(state: RetryCallState) -> bool:
            exc = state.outcome.exception() if state.outcome is not None else None
            if isinstance(exc, ServerUnreachable) and isinstance(exc.__cause__, httpx.ConnectError):
                return state.attempt_number >= 3  # no server there: not for a minute
            return time.monotonic() - started >= self.submit_retry_timeout

        return dict(
            retry=retry_if_exception(_should_retry_submit),
            stop=stop,
            wait=_submit_wait,
            reraise=True,
        )

    def _reconnects(self, state: _StreamState) -> dict[str, Any]:
        return dict(
            retry=retry_if_exception(lambda exc: _should_reconnect(exc, state)),
            stop=stop_after_delay(self.reconnect_timeout),
            wait=wait_exponential(multiplier=0.1, max=5.0) + wait_random(0, 0.2),
            reraise=True,
        )


class Client(CheckpointCalls, SweepCalls, _Base):
    """The trainwire API over HTTP. A context manager; `close()` ends its connections.

    url: `TRAINWIRE_URL`, default http://127.0.0.1:8000; token: `TRAINWIRE_API_TOKEN`.
    `reconnect_timeout`: how long a stream keeps trying to get back to a server that went away.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        reconnect_timeout: float = 60.0,
        read_timeout: float = 3 * KEEPALIVE_SECONDS,
        submit_retry_timeout: float = 60.0,
    ):
        super().__init__(url, token, timeout, reconnect_timeout, read_timeout, submit_retry_timeout)
        self._http = httpx.Client(base_url=self.url, headers=self._headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- plain requests ---------------------------------------------------------------------------

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise _unreachable(exc, self.url) from exc
        if response.status_code >= 400:
            raise _api_error(response)
        return response

    def _get(self, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in Retrying(**self._get_retries()):
            with attempt:
                return self._send("GET", path, **kwargs)
        raise AssertionError("unreachable")  # pragma: no cover

    def _create(self, path: str, body: dict[str, Any], key: str | None) -> httpx.Response:
        """POST what creates a job or a sweep, with an Idempotency-Key, retried as it allows."""
        headers = {"Idempotency-Key": key or new_idempotency_key()}
        for attempt in Retrying(**self._submit_retries()):
            with attempt:
                return self._send("POST", path, json=body, headers=headers)
        raise AssertionError("unreachable")  # pragma: no cover

    def submit(
        self,
        variant: str,
        *,
        seed: int | None = None,
        device: str = "auto",
        label: str | None = None,
        threads: int | None = None,
        idempotency_key: str | None = None,
        webhook: Webhook | dict[str, Any] | None = None,
        **hyperparameters: Any,
    ) -> Job:
        """Queue a job; hyperparameters not given take the variant's defaults. `threads` pins
        the run's torch/BLAS threads (to reproduce a curve from another host); by default the
        server picks them from the cores free when it starts. `webhook`: `{"url": ...,
        "events": [...]}`, notified of its status changes (docs/webhooks.md). Retried with its
        idempotency key (a new one unless given) when the answer is lost: one job, whatever
        happens."""
        body = _submit_body(variant, seed, device, label, threads, hyperparameters)
        _add_webhook(body, webhook)
        return _parse(Job, _body(self._create("/v1/jobs", body, idempotency_key)))

    def get(self, job_id: str) -> Job:
        """The job as it stands now."""
        return _parse(Job, _body(self._get(_job_path(job_id))))

    def jobs(
        self,
        status: str | Iterable[str] | None = None,
        variant: str | Iterable[str] | None = None,
        limit: int | None = None,
        *,
        label: str | Iterable[str] | None = None,
        id_prefix: str | None = None,
        page_size: int = PAGE_SIZE,
    ) -> Iterator[Job]:
        """Jobs, newest first, page after page; at most `limit` of them (None: every one).
        Filters: status, variant and label (each one value or several), id_prefix (the
        start of the id)."""
        filters = {"status": status, "variant": variant, "label": label, "id_prefix": id_prefix}
        return self._paged("/v1/jobs", JobList, filters, limit, page_size)

    def _paged(
        self,
        path: str,
        model: type[_Page],
        filters: dict[str, str | Iterable[str] | None],
        limit: int | None,
        page_size: int,
    ) -> Iterator[Any]:
        """The items of a listing (`/v1/jobs`, `/v1/sweeps`), newest first, page after page,
        fetched as they are read; at most `limit` of them (None: every one)."""
        listing = _Listing(model, filters, limit, page_size)
        while not listing.done:
            yield from listing.read(_body(self._get(path, params=listing.params())))

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job (at once) or a running one (before its next step)."""
        return _parse(Job, _body(self._send("POST", _job_path(job_id) + "/cancel")))

    def delete(self, job_id: str) -> None:
        """Delete a final job and its losses."""
        self._send("DELETE", _job_path(job_id))

    def losses(
        self, job_id: str, *, max_points: int | None = None, page_size: int = LOSS_PAGE_SIZE
    ) -> tuple[list[int], list[float | None]]:
        """(steps, losses) of every recorded step, in order; None where a loss was not finite.
        With max_points: at most that many real points spread over the run (for a chart)."""
        steps: list[int] = []
        values: list[float | None] = []
        params: dict[str, Any] = {"after": -1, "limit": page_size}
        if max_points is not None:
            params = {"max_points": max_points}
        while True:
            page = _parse(Losses, _body(self._get(_job_path(job_id) + "/losses", params=params)))
            steps += page.steps
            values += page.losses
            if page.next_after is None:
                return steps, values
            params["after"] = page.next_after

    def variants(self) -> list[VariantInfo]:
        """The eight variants, with their devices and default hyperparameters."""
        return _parse_list(VariantInfo, _body(self._get("/v1/variants")))

    # -- the live stream --------------------------------------------------------------------------

    def stream(self, job_id: str, *, after: int = -1) -> Generator[Event, None, None]:
        """`Loss` for every step after `after`, in order, exactly once, and `Status` on each
        status change; the last event is the final `Status`. Reconnects when the connection
        drops or the server restarts (ServerUnreachable after `reconnect_timeout` s in vain)."""
        path = _job_path(job_id) + "/events"
        state = _StreamState(after)
        while not state.done:
            # a fresh backoff for each outage: a connection that gave something out succeeded
            for attempt in Retrying(**self._reconnects(state)):
                with attempt:
                    state.progressed = False
                    try:
                        yield from self._stream_once(path, state)
                    except (ServerUnreachable, _StreamGap, APIError) as exc:
                        if not (state.progressed and _should_reconnect(exc, state)):
                            raise

    def _stream_once(self, path: str, state: _StreamState) -> Generator[Event, None, None]:
        try:
            with connect_sse(
                self._http, "GET", path, headers=state.headers(), timeout=self._stream_timeout
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
        raise state.ended()

    def wait(self, job_id: str) -> Job:
        """Block until the job is final; returns it (succeeded, failed or cancelled)."""
        job = self.get(job_id)
        if job.status.is_final:
            return job
        for event in self.stream(job_id, after=job.step - 1):
            if isinstance(event, Status) and event.job.status.is_final:
                return event.job
        raise ProtocolError("the stream ended without the job's final status")  # pragma: no cover


class AsyncClient(AsyncCheckpointCalls, AsyncSweepCalls, _Base):
    """`Client`'s methods, async: `await tw.submit(...)`, `async for event in tw.stream(id)`."""

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        reconnect_timeout: float = 60.0,
        read_timeout: float = 3 * KEEPALIVE_SECONDS,
        submit_retry_timeout: float = 60.0,
    ):
        super().__init__(url, token, timeout, reconnect_timeout, read_timeout, submit_retry_timeout)
        self._http = httpx.AsyncClient(base_url=self.url, headers=self._headers, timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise _unreachable(exc, self.url) from exc
        if response.status_code >= 400:
            raise _api_error(response)
        return response

    async def _get(self, path: str, **kwargs: Any) -> httpx.Response:
        async for attempt in AsyncRetrying(**self._get_retries()):
            with attempt:
                return await self._send("GET", path, **kwargs)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _create(self, path: str, body: dict[str, Any], key: str | None) -> httpx.Response:
        """`Client._create`, awaited."""
        headers = {"Idempotency-Key": key or new_idempotency_key()}
        async for attempt in AsyncRetrying(**self._submit_retries()):
            with attempt:
                return await self._send("POST", path, json=body, headers=headers)
        raise AssertionError("unreachable")  # pragma: no cover

    async def submit(
        self,
        variant: str,
        *,
        seed: int | None = None,
        device: str = "auto",
        label: str | None = None,
        threads: int | None = None,
        idempotency_key: str | None = None,
        webhook: Webhook | dict[str, Any] | None = None,
        **hyperparameters: Any,
    ) -> Job:
        """`Client.submit`, awaited."""
        body = _submit_body(variant, seed, device, label, threads, hyperparameters)
        _add_webhook(body, webhook)
        return _parse(Job, _body(await self._create("/v1/jobs", body, idempotency_key)))

    async def get(self, job_id: str) -> Job:
        """The job as it stands now."""
        return _parse(Job, _body(await self._get(_job_path(job_id))))

    def jobs(
        self,
        status: str | Iterable[str] | None = None,
        variant: str | Iterable[str] | None = None,
        limit: int | None = None,
        *,
        label: str | Iterable[str] | None = None,
        id_prefix: str | None = None,
        page_size: int = PAGE_SIZE,
    ) -> AsyncIterator[Job]:
        """Jobs, newest first, page after page; at most `limit` of them (None: every one).
        Filters: status, variant and label (each one value or several), id_prefix (the
        start of the id)."""
        filters = {"status": status, "variant": variant, "label": label, "id_prefix": id_prefix}
        return self._paged("/v1/jobs", JobList, filters, limit, page_size)

    async def _paged(
        self,
        path: str,
        model: type[_Page],
        filters: dict[str, str | Iterable[str] | None],
        limit: int | None,
        page_size: int,
    ) -> AsyncIterator[Any]:
        """`Client._paged`, awaited."""
        listing = _Listing(model, filters, limit, page_size)
        while not listing.done:
            for item in listing.read(_body(await self._get(path, params=listing.params()))):
                yield item

    async def cancel(self, job_id: str) -> Job:
        """Cancel a queued job (at once) or a running one (before its next step)."""
        return _parse(Job, _body(await self._send("POST", _job_path(job_id) + "/cancel")))

    async def delete(self, job_id: str) -> None:
        """Delete a final job and its losses."""
        await self._send("DELETE", _job_path(job_id))

    async def losses(
        self, job_id: str, *, max_points: int | None = None, page_size: int = LOSS_PAGE_SIZE
    ) -> tuple[list[int], list[float | None]]:
        """(steps, losses) of every recorded step, in order; None where a loss was not finite.
        With max_points: at most that many real points spread over the run (for a chart)."""
        steps: list[int] = []
        values: list[float | None] = []
        params: dict[str, Any] = {"after": -1, "limit": page_size}
        if max_points is not None:
            params = {"max_points": max_points}
        while True:
            response = await self._get(_job_path(job_id) + "/losses", params=params)
            page = _parse(Losses, _body(response))
            steps += page.steps
            values += page.losses
            if page.next_after is None:
                return steps, values
            params["after"] = page.next_after

    async def variants(self) -> list[VariantInfo]:
        """The eight variants, with their devices and default hyperparameters."""
        return _parse_list(VariantInfo, _body(await self._get("/v1/variants")))

    async def stream(self, job_id: str, *, after: int = -1) -> AsyncGenerator[Event, None]:
        """`Loss` for every step after `after`, in order, exactly once, and `Status` on each
        status change; the last event is the final `Status`. Reconnects when the connection
        drops or the server restarts (ServerUnreachable after `reconnect_timeout` s in vain)."""
        path = _job_path(job_id) + "/events"
        state = _StreamState(after)
        while not state.done:
            async for attempt in AsyncRetrying(**self._reconnects(state)):
                with attempt:
                    state.progressed = False
                    try:
                        async with aclosing(self._stream_once(path, state)) as events:
                            async for event in events:
                                yield event
                    except (ServerUnreachable, _StreamGap, APIError) as exc:
                        if not (state.progressed and _should_reconnect(exc, state)):
                            raise

    async def _stream_once(self, path: str, state: _StreamState) -> AsyncGenerator[Event, None]:
        try:
            async with aconnect_sse(
                self._http, "GET", path, headers=state.headers(), timeout=self._stream_timeout
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
        raise state.ended()

    async def wait(self, job_id: str) -> Job:
        """Wait until the job is final; returns it (succeeded, failed or cancelled)."""
        job = await self.get(job_id)
        if job.status.is_final:
            return job
        async for event in self.stream(job_id, after=job.step - 1):
            if isinstance(event, Status) and event.job.status.is_final:
                return event.job
        raise ProtocolError("the stream ended without the job's final status")  # pragma: no cover
