"""Prometheus metrics of one app, in a registry of its own (`GET /metrics`).

Where each comes from:
- jobs submitted, finished, queue wait, job duration: the consumer of worker messages
  (app.consumer), from each job's stored status change (after its commit), so that the counts
  agree with what the API shows;
- steps: the consumer again, one increment per loss batch (never per step, never in the worker);
- jobs queued and running, workers, worker restarts, open event streams: read from the live
  state at scrape time (`LiveState`, a custom collector);
- store commits: the store's writer times each transaction;
- HTTP requests: `HTTPMetrics`, an ASGI middleware that labels each request with its route's
  template (`/v1/jobs/{job_id}`), never the raw path.

A registry per app, not prometheus_client's global one: several apps in one process (tests build
them) would otherwise collide ("Duplicated timeseries"). Counters start at 0 with the process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trainwire.jobs import JobStatus

if TYPE_CHECKING:
    from app.consumer import MessageConsumer
    from app.hub import EventHub
    from app.store import JobRow, Store
    from workers.backend import Backend

log = logging.getLogger(__name__)

# created -> started: from an idle server's milliseconds to an hour in a long queue
QUEUE_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600)
# started -> finished: the tutorial's 50 steps take milliseconds; the time limit is an hour
JOB_DURATION_BUCKETS = (0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600)
# one write transaction: SQLite commits in well under a millisecond to a few ms
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
WORKER_STATES = ("idle", "busy", "starting")
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class JobMetrics:
    """What the consumer of worker messages counts. Without a registry, counted for nobody."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.submitted_total = Counter(
            "trainwire_jobs_submitted",
            "Jobs submitted to this process.",
            ["variant"],
            registry=registry,
        )
        self.finished_total = Counter(
            "trainwire_jobs_finished",
            "Jobs that reached a final status; error: the error code, or empty.",
            ["variant", "status", "error"],
            registry=registry,
        )
        self.steps_total = Counter(
            "trainwire_steps",
            "Training steps run (a rerun's recomputed steps included).",
            ["variant", "device"],
            registry=registry,
        )
        self.queue_wait = Histogram(
            "trainwire_queue_wait_seconds",
            "From a job's submission to its first start.",
            ["variant"],
            buckets=QUEUE_WAIT_BUCKETS,
            registry=registry,
        )
        self.duration = Histogram(
            "trainwire_job_duration_seconds",
            "From a job's (last) start to its end.",
            ["variant", "status"],
            buckets=JOB_DURATION_BUCKETS,
            registry=registry,
        )

        self.rerun_mismatches_total = Counter(
            "trainwire_rerun_mismatches",
            "Reruns whose recomputed steps differ from the steps stored before.",
            ["variant"],
            registry=registry,
        )
        self.checkpoints_total = Counter(
            "trainwire_checkpoints",
            "Checkpoints written (durably, and listed).",
            registry=registry,
        )
        self.checkpoint_failures_total = Counter(
            "trainwire_checkpoint_failures",
            "Checkpoints that could not be written (the job went on).",
            registry=registry,
        )
        self.checkpoint_bytes_total = Counter(
            "trainwire_checkpoint_bytes",
            "Bytes of the checkpoints written.",
            registry=registry,
        )

    def submitted(self, variant: str) -> None:
        self.submitted_total.labels(variant).inc()

    def checkpoint_written(self, size: int) -> None:
        self.checkpoints_total.inc()
        self.checkpoint_bytes_total.inc(size)

    def rerun_mismatch(self, variant: str) -> None:
        self.rerun_mismatches_total.labels(variant).inc()

    def checkpoint_failed(self) -> None:
        self.checkpoint_failures_total.inc()

    def steps_counter(self, variant: str, device: str) -> Any:
        """The steps counter of one job's variant and device: looked up once per run, then
        incremented by each loss batch."""
        return self.steps_total.labels(variant, device)

    def status_stored(self, row: JobRow) -> None:
        """A job's new status is committed: its first start, or its end. Never raises: counting
        must not stop the recording of jobs."""
        try:
            self._count(row)
        except Exception:
            log.exception("counting the status of job %s failed", row.id)

    def _count(self, row: JobRow) -> None:
        if row.status == JobStatus.running and row.attempts == 1 and row.started_at:
            wait = _epoch(row.started_at) - _epoch(row.created_at)
            self.queue_wait.labels(row.variant).observe(max(0.0, wait))
        elif row.status.is_final:
            self.finished_total.labels(row.variant, row.status.value, row.error_code or "").inc()
            if row.started_at and row.finished_at:
                took = _epoch(row.finished_at) - _epoch(row.started_at)
                self.duration.labels(row.variant, row.status.value).observe(max(0.0, took))


class LiveState(Collector):
    """Gauges read at scrape time from the running service: jobs queued and running, workers
    by state, worker restarts, open event streams. Empty until `watch` is called. Collect on
    the event loop's thread (the hub is read there)."""

    def __init__(self) -> None:
        self.consumer: MessageConsumer | None = None
        self.backend: Backend | None = None
        self.hub: EventHub | None = None

    def watch(self, consumer: MessageConsumer, backend: Backend, hub: EventHub) -> None:
        self.consumer, self.backend, self.hub = consumer, backend, hub

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        return self._families(live=True)

    def _families(self, live: bool = False) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("trainwire_jobs", "Jobs queued or running now.", labels=["status"])
        workers = GaugeMetricFamily(
            "trainwire_workers", "Workers by device and state.", labels=["device", "state"]
        )
        restarts = CounterMetricFamily(
            "trainwire_worker_restarts",
            "Worker processes started to replace one that died.",
            labels=["device"],
        )
        streams = GaugeMetricFamily("trainwire_event_streams", "Open event streams (SSE).")
        if live and self.consumer is not None:
            queued, running = self.consumer.job_counts()
            jobs.add_metric(["queued"], queued)
            jobs.add_metric(["running"], running)
        if live and self.backend is not None:
            counts: dict[tuple[str, str], int] = {}
            for device in self.backend.devices:
                for state in WORKER_STATES:
                    counts[(device, state)] = 0
            for device, state in self.backend.worker_states():
                counts[(device, state)] = counts.get((device, state), 0) + 1
            for (device, state), count in sorted(counts.items()):
                workers.add_metric([device, state], count)
            replaced = self.backend.worker_restarts()
            for device in sorted(set(self.backend.devices) | set(replaced)):
                restarts.add_metric([device], replaced.get(device, 0))
        if live and self.hub is not None:
            streams.add_metric([], self.hub.open_streams)
        yield from (jobs, workers, restarts, streams)


class WebhookMetrics:
    """What the webhook sender counts (app.webhooks), and the age of the oldest pending
    delivery, read from the store at scrape time."""

    def __init__(self, registry: CollectorRegistry):
        self.sent_total = Counter(
            "trainwire_webhook_deliveries_sent",
            "Webhook deliveries a receiver took (2xx).",
            registry=registry,
        )
        self.failed_total = Counter(
            "trainwire_webhook_deliveries_failed",
            "Webhook deliveries given up after their last attempt.",
            registry=registry,
        )
        self.retries_total = Counter(
            "trainwire_webhook_delivery_retries",
            "Failed attempts of webhook deliveries that are tried again.",
            registry=registry,
        )
        self.oldest_pending = Gauge(
            "trainwire_webhook_oldest_pending_seconds",
            "Age of the oldest webhook delivery not yet delivered nor given up (0: none).",
            registry=registry,
        )
        self._store: Store | None = None
        self.oldest_pending.set_function(self._oldest_age)

    def watch(self, store: Store) -> None:
        self._store = store

    def _oldest_age(self) -> float:
        if self._store is None:
            return 0.0
        try:
            oldest = self._store.oldest_pending_delivery()
        except Exception:  # a store that cannot be read: the other metrics still answer
            return 0.0
        return 0.0 if oldest is None else max(0.0, time.time() - _epoch(oldest))

    def sent(self) -> None:
        self.sent_total.inc()

    def failed(self) -> None:
        self.failed_total.inc()

    def retried(self) -> None:
        self.retries_total.inc()


class Metrics:
    """Every metric of one app, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs = JobMetrics(self.registry)
        self.webhooks = WebhookMetrics(self.registry)
        self.live = LiveState()
        self.registry.register(self.live)
        self.store_commit = Histogram(
            "trainwire_store_commit_seconds",
            "One write transaction of the store's writer (the group commit of what had queued).",
            buckets=COMMIT_BUCKETS,
            registry=self.registry,
        )
        self.http_requests = Counter(
            "trainwire_http_requests",
            "HTTP requests answered; route: the route's template.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "trainwire_http_request_duration_seconds",
            "From a request's arrival to the end of its answer (an event stream: its whole life).",
            ["method", "route", "status"],
            registry=self.registry,
        )

    def watch(
        self, consumer: MessageConsumer, backend: Backend, hub: EventHub, store: Store
    ) -> None:
        """Read the live state of this running service, and time its store's commits."""
        self.live.watch(consumer, backend, hub)
        self.webhooks.watch(store)
        store.observe_commit = self.store_commit.observe


class HTTPMetrics:
    """ASGI middleware: counts and times each HTTP request by method, route template and status.

    The template comes from the route that the router matched (it leaves it in the scope); a
    request that matched none is `unmatched`, and an unusual method `other`, so that scanning
    random paths cannot grow the series without bound."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.requests = metrics.http_requests
        self.duration = metrics.http_duration

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500  # what the server error handler answers if the app raises

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            template = route_template(scope)
            method = scope["method"] if scope["method"] in HTTP_METHODS else "other"
            labels = (method, template, str(status))
            self.requests.labels(*labels).inc()
            self.duration.labels(*labels).observe(time.perf_counter() - began)


def route_template(scope: Scope) -> str:
    """The template of the route that answered (`/v1/jobs/{job_id}`), or `unmatched`."""
    route = scope.get("route")  # the router leaves the route it matched in the scope
    own = getattr(route, "path", None)
    if not isinstance(own, str):
        return "unmatched"
    if isinstance(route, Mount):  # the app's own mounts (static files): their prefix is whole
        return own.rstrip("/") + "/{path}"
    # a route of an included router has its path without the router's prefix: the prefix is
    # what comes before it in the request's path (every path parameter here is one segment)
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    own_segments = [s for s in own.split("/") if s]
    segments = [s for s in path.split("/") if s]
    if len(segments) < len(own_segments):
        return own
    prefix = segments[: len(segments) - len(own_segments)]
    return "/" + "/".join(prefix + own_segments)
