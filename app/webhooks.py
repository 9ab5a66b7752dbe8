"""Webhooks: which URLs a request may name, and the sender of the outbox's deliveries.

A URL is checked when a job or sweep is submitted (a 422 naming `webhook.url` otherwise) and
again before every attempt (a name may resolve elsewhere since): http or https, no userinfo, at
most 2048 characters, a host the settings allow (TRAINWIRE_WEBHOOK_ALLOWED_HOSTS). A host listed
as such is called whatever it resolves to; one allowed by a wildcard only where every address it
resolves to is public (no loopback, link-local, private, reserved or multicast one).

The sender is one dispatching thread and a few sending threads, off the event loop: it reads
the pending deliveries (rows of the store, so they outlive a restart or kill -9), sends each
signed as the Standard Webhooks spec says (the same webhook-id on every attempt), follows no
redirect, reads at most RESPONSE_CAP bytes of an answer, gives an attempt 5 s to connect and
10 s in all, and retries with exponential back-off and jitter up to the attempts allowed. Each
destination (scheme, host, port) gets one attempt at a time and backs off after a failure, so a
receiver that hangs holds one sending thread at most and delays no other destination.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import urlsplit

import httpx
from standardwebhooks import Webhook as Signer

from app.errors import InvalidField
from app.settings import Settings
from app.store import Store
from app.store import webhooks as outbox
from trainwire.models import MAX_WEBHOOK_URL, Webhook

log = logging.getLogger(__name__)

RESPONSE_CAP = 64 * 1024  # bytes of an answer read (the rest is never downloaded)
CONNECT_TIMEOUT_S = 5.0
ATTEMPT_TIMEOUT_S = 10.0
READ_BATCH = 200  # pending deliveries read per query
READ_PAGES = 20  # queries per look at most
RECORD_TIMEOUT_S = 30.0  # an attempt's outcome not stored by then: it stays pending
IDLE_LOOK_S = 5.0  # a look at the outbox at least this often (a wake-up comes sooner)


class UnsafeURL(ValueError):
    """A webhook URL the settings do not allow (the message says why)."""


def _explicit(host: str, allowed: list[str]) -> bool:
    return host in allowed


def _wildcard(host: str, allowed: list[str]) -> bool:
    return "*" in allowed or any(
        a.startswith("*.") and host.endswith(a[1:]) and host != a[2:] for a in allowed
    )


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_url(url: str, allowed: list[str], resolve: bool = True) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL a webhook may call; UnsafeURL says why not. `resolve`:
    look up a host allowed by a wildcard only, and refuse it unless all its addresses are
    public (this blocks: call it off the event loop)."""
    if len(url) > MAX_WEBHOOK_URL:
        raise UnsafeURL(f"at most {MAX_WEBHOOK_URL} characters")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise UnsafeURL("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURL(f"not a URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeURL("the scheme must be http or https")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise UnsafeURL("must not carry a user or password (user@host)")
    host = (parts.hostname or "").lower()
    if not host:
        raise UnsafeURL("has no host")
    port = port or (443 if scheme == "https" else 80)
    if not allowed:
        raise UnsafeURL(
            "this server calls no webhooks: its operator allows hosts with "
            "TRAINWIRE_WEBHOOK_ALLOWED_HOSTS (and signs with TRAINWIRE_WEBHOOK_SECRET)"
        )
    if _explicit(host, allowed):
        return scheme, host, port
    if not _wildcard(host, allowed):
        raise UnsafeURL(
            f"host {host!r} is not among the hosts this server calls "
            "(TRAINWIRE_WEBHOOK_ALLOWED_HOSTS)"
        )
    if resolve:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise UnsafeURL(f"host {host!r} cannot be resolved: {exc}") from None
        addresses = {str(info[4][0]) for info in infos}
        if not addresses or not all(_public(a) for a in addresses):
            raise UnsafeURL(
                f"host {host!r} resolves to a loopback, link-local or private address; "
                "a host is called there only when TRAINWIRE_WEBHOOK_ALLOWED_HOSTS names it"
            )
    return scheme, host, port


def _destination(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a stored URL, the key of its destination's back-off."""
    try:
        parts = urlsplit(url)
        return parts.scheme, (parts.hostname or "").lower(), parts.port or 0
    except ValueError:
        return "", url, 0


def validate_webhook(webhook: Webhook | None, settings: Settings, loc: tuple[str, ...]) -> None:
    """A request's webhook, checked (blocking: a wildcard host is resolved); InvalidField
    naming `<loc>.url` otherwise."""
    if webhook is None:
        return
    try:
        if settings.webhook_secret is None:
            raise UnsafeURL(
                "this server calls no webhooks: its operator sets TRAINWIRE_WEBHOOK_SECRET "
                "and TRAINWIRE_WEBHOOK_ALLOWED_HOSTS"
            )
        check_url(webhook.url, settings.webhook_allowed_hosts)
    except UnsafeURL as exc:
        raise InvalidField((*loc, "url"), str(exc), "webhook_url") from None


def stored_webhook(webhook: Webhook | None) -> dict[str, object]:
    """The job's or sweep's columns of a request's webhook."""
    if webhook is None:
        return {"webhook_url": None, "webhook_events": None}
    return {"webhook_url": webhook.url, "webhook_events": [e.value for e in webhook.events]}


class DeliveryMetrics(Protocol):
    """What the sender counts (app.metrics.WebhookMetrics)."""

    def sent(self) -> None: ...
    def failed(self) -> None: ...
    def retried(self) -> None: ...


class _Uncounted:
    def sent(self) -> None:
        pass

    def failed(self) -> None:
        pass

    def retried(self) -> None:
        pass


class WebhookSender:
    """Sends the outbox's pending deliveries until stopped (see the module's docstring)."""

    def __init__(self, store: Store, settings: Settings, metrics: DeliveryMetrics | None = None):
        assert settings.webhook_secret is not None
        self.store = store
        self.settings = settings
        self.metrics: DeliveryMetrics = metrics or _Uncounted()
        self._signer = Signer(settings.webhook_secret.get_secret_value())
        self._http = httpx.Client(
            follow_redirects=False,
            timeout=httpx.Timeout(ATTEMPT_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            limits=httpx.Limits(max_connections=settings.webhook_senders * 2),
            headers={"user-agent": "trainwire-webhooks"},
            trust_env=False,  # no proxy from the environment: the checked host is the one called
        )
        self._pool = ThreadPoolExecutor(settings.webhook_senders, thread_name_prefix="webhook")
        self._lock = threading.Lock()
        self._sending: set[int] = set()  # deliveries (pk) being sent
        self._busy: set[tuple[str, str, int]] = set()  # destinations with an attempt on
        self._backoff: dict[tuple[str, str, int], float] = {}  # destination -> calm until
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._dispatch, name="webhook-outbox", daemon=True)

    def start(self) -> None:
        self.store.deliveries_queued = self.wake
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Stop sending; what is pending stays pending for the next start."""
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=5)
        self._http.close()  # ends the attempts under way (left pending)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- the dispatching thread -------------------------------------------------------------
    def _dispatch(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                wait = self._look()
            except Exception:
                log.exception("reading the webhook outbox failed")
                wait = IDLE_LOOK_S
            self._wake.wait(max(0.0, wait))

    def _look(self) -> float:
        """Hand the due deliveries to senders; seconds until the next look. Reads on past
        deliveries that wait for their destination (one that hangs, with many pending), so
        that they hold up no other destination's."""
        wait = IDLE_LOOK_S
        for page in range(READ_PAGES):
            with self.store.engine.connect() as conn:
                pending = outbox.due(conn, READ_BATCH, page * READ_BATCH)
            now = time.time()
            with self._lock:
                for item in pending:
                    if len(self._sending) >= self.settings.webhook_senders:
                        return wait  # a sender that ends wakes this thread
                    if item.pk in self._sending:
                        continue
                    destination = _destination(item.url)
                    at = max(item.next_attempt, self._backoff.get(destination, 0.0))
                    if at > now:
                        wait = min(wait, at - now)
                        continue
                    if destination in self._busy:
                        continue
                    self._sending.add(item.pk)
                    self._busy.add(destination)
                    self._pool.submit(self._attempt, item, destination)
            if len(pending) < READ_BATCH:
                break
        return wait

    # -- a sending thread -------------------------------------------------------------------
    def _attempt(self, item: outbox.Due, destination: tuple[str, str, int]) -> None:
        try:
            error = self._send(item)
            if self._stopping.is_set():
                return  # not recorded: still pending, it goes out again after the next start
            attempts = item.attempts + 1
            gave_up = error is not None and attempts >= self.settings.webhook_attempts
            delay = self._delay(attempts)
            next_at = None if error is None or gave_up else time.time() + delay
            self.store.write(
                lambda conn: outbox.record(conn, item.pk, error, next_at, gave_up)
            ).result(timeout=RECORD_TIMEOUT_S)
            if error is None:
                self.metrics.sent()
            elif gave_up:
                self.metrics.failed()
                log.warning("webhook %s given up after %d attempts: %s", item.id, attempts, error)
            else:
                self.metrics.retried()
            with self._lock:
                if error is None:
                    self._backoff.pop(destination, None)
                else:
                    self._backoff[destination] = time.time() + delay
        except Exception:
            log.exception("sending webhook %s failed", item.id)
        finally:
            with self._lock:
                self._sending.discard(item.pk)
                self._busy.discard(destination)
            self._wake.set()

    def _delay(self, attempts: int) -> float:
        """Seconds before the attempt after `attempts` failed ones."""
        base = self.settings.webhook_retry_s * 2 ** (attempts - 1)
        return min(self.settings.webhook_retry_max_s, base) * random.uniform(0.75, 1.25)

    def _send(self, item: outbox.Due) -> str | None:
        """One attempt; None when delivered, else why not."""
        try:
            check_url(item.url, self.settings.webhook_allowed_hosts)
        except UnsafeURL as exc:
            return f"not called: {exc}"
        at = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "webhook-id": item.id,
            "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": self._signer.sign(item.id, at, item.payload),
        }
        deadline = time.monotonic() + ATTEMPT_TIMEOUT_S
        try:
            with self._http.stream("POST", item.url, content=item.payload, headers=headers) as r:
                read = 0
                for chunk in r.iter_raw():
                    read += len(chunk)
                    if read >= RESPONSE_CAP or time.monotonic() > deadline:
                        break  # the answer's status is all that counts
                status = r.status_code
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"[:500] or type(exc).__name__
        if 200 <= status < 300:
            return None
        if 300 <= status < 400:
            return f"HTTP {status}: a redirect, not followed"
        return f"HTTP {status}"
