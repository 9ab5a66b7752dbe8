"""Helpers for the browser tests: Debian's Chromium driven by Playwright, a watched page per test,
and a TCP proxy that can cut the connections a page holds open.

The fixtures around `launch_chromium()` and `watched_tab()` are in conftest.py; the servers
come from tests/servers.py.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 900}
# Waits that hold up under a loaded CI machine; the default is 5 s.
expect.set_options(timeout=15_000)
# Schemes that never reach the network: Swagger UI and ReDoc inline images as data: URLs.
LOCAL_SCHEMES = {"data", "blob", "about"}


@contextmanager
def launch_chromium() -> Iterator[Browser]:
    """Headless Debian Chromium, driven by Playwright's sync API (one at a time per process)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: `make browser-deps` installs Debian's Chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS
        )
        yield browser
        browser.close()


@dataclass
class Tab:
    """A page in a fresh browser context, with every request, console error and page error kept."""

    page: Page
    name: str
    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    allowed_errors: list[re.Pattern[str]] = field(default_factory=list)
    checked: bool = False

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append(f"{message.text} @ {message.location.get('url', '')}")

    def allow_console_error(self, pattern: str) -> None:
        """A console error that the test provokes on purpose (regex on "text @ url")."""
        self.allowed_errors.append(re.compile(pattern))

    def screenshot(self, suffix: str = "", full_page: bool = True) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{self.name}{suffix}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def check(self) -> None:
        """Every request went to 127.0.0.1, and the page logged no error it was not meant to."""
        self.checked = True
        assert self.requests, "the page made no request at all"
        elsewhere = [
            url
            for url in self.requests
            if urlsplit(url).scheme not in LOCAL_SCHEMES and urlsplit(url).hostname != "127.0.0.1"
        ]
        assert not elsewhere, f"requests that left 127.0.0.1: {elsewhere}"
        unexpected = [
            text
            for text in self.console_errors
            if not any(pattern.search(text) for pattern in self.allowed_errors)
        ]
        assert not unexpected, f"console errors: {unexpected}"
        assert not self.page_errors, f"page errors: {self.page_errors}"


@contextmanager
def watched_tab(browser: Browser, test_name: str) -> Iterator[Tab]:
    """A page in a fresh context (empty localStorage), watched from the first request on.

    Afterwards: a full-page screenshot, artifacts/screenshots/<test_name>.png, and `check()`
    unless the test called it.
    """
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)  # type: ignore[arg-type]
    context.set_default_timeout(20_000)
    watched = Tab(context.new_page(), re.sub(r"[^\w.-]+", "_", test_name))
    page = watched.page
    context.on("request", lambda r: watched.requests.append(r.url))  # workers' requests too
    page.on("console", watched.on_console)
    page.on("pageerror", lambda error: watched.page_errors.append(str(error)))
    try:
        yield watched
        watched.screenshot()  # also after a failure: a picture of where the page stood
    finally:
        context.close()
    if not watched.checked:
        watched.check()


# ---------------------------------------------------------------- the dashboard


def open_dashboard(page: Page, url: str) -> None:
    """Load `/` and wait until the variants and the job list have arrived."""
    page.goto(url + "/")
    page.wait_for_function(
        "document.querySelectorAll('#variant option').length > 0"
        " && document.querySelector('#jobs-updated').textContent !== ''"
    )


def clear_chart(page: Page) -> None:
    """Untick every job on the chart (a first visit puts the newest job there)."""
    for job_id in page.evaluate("window.trainwire.shown()"):
        row(page, job_id).locator(".show-toggle").uncheck()
    page.wait_for_function("window.trainwire.shown().length === 0")
    expect(page.locator("#legend li")).to_have_count(0)


def fill_form(page: Page, variant: str, **fields: Any) -> None:
    """Pick a variant and set fields by their data-field name (selects and text inputs)."""
    page.select_option("#variant", variant)
    for name, value in fields.items():
        control = page.locator(f"#job-form [data-field={name}]")
        if control.evaluate("node => node.tagName") == "SELECT":
            control.select_option(str(value))
        else:
            control.fill(str(value))


def submit_form(page: Page, expect_status: int = 201) -> dict[str, Any]:
    """Click "Start job"; returns the JSON the server answered."""
    with page.expect_response(
        lambda r: urlsplit(r.url).path == "/v1/jobs" and r.request.method == "POST"
    ) as info:
        page.click("#submit-job")
    response = info.value
    assert response.status == expect_status, response.text()
    return dict(response.json())


def row(page: Page, job_id: str) -> Any:
    return page.locator(f'#jobs tbody tr[data-job-id="{job_id}"]')


def points(page: Page, job_id: str) -> list[list[Any]]:
    return list(page.evaluate("id => window.trainwire.points(id)", job_id))


def wait_points(page: Page, job_id: str, count: int, timeout: float = 30_000) -> None:
    page.wait_for_function(
        "([id, n]) => window.trainwire.points(id).length >= n", arg=[job_id, count], timeout=timeout
    )


def wait_follow(page: Page, job_id: str, mode: str, timeout: float = 30_000) -> None:
    page.wait_for_function(
        "([id, mode]) => window.trainwire.follow(id) === mode", arg=[job_id, mode], timeout=timeout
    )


def stored_losses(client: httpx.Client, job_id: str) -> list[list[Any]]:
    """Every recorded (step, loss) of a job as [[step, loss], ...], following next_after."""
    pairs: list[list[Any]] = []
    after = -1
    while True:
        response = client.get(f"/v1/jobs/{job_id}/losses", params={"after": after})
        assert response.status_code == 200, response.text
        page = response.json()
        pairs += [[s, loss] for s, loss in zip(page["steps"], page["losses"], strict=True)]
        if page["next_after"] is None:
            return pairs
        after = page["next_after"]


# ---------------------------------------------------------------- a proxy to cut connections

REQUEST_LINE = re.compile(rb"^[A-Z]+ (\S+) HTTP/1\.[01]\r\n")


@dataclass
class _Link:
    client: socket.socket
    upstream: socket.socket
    path: str | None = None

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class CuttingProxy:
    """Forwards 127.0.0.1:<port> to a server, byte for byte, one TCP connection for each.

    `cut(match)` closes the connections whose latest request path matches, as a network failure
    would; `refuse(match, count)` closes the connections of the next `count` such requests
    before they reach the server (Chromium silently retries a request once on a fresh
    connection when one closes with no answer: it takes two for a page to see a failure).
    `requests` keeps every request head that went through, with its time.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.lock = threading.Lock()
        self.links: list[_Link] = []
        self.requests: list[tuple[float, str, bytes]] = []
        self.refused: list[str] = []
        self._refuse: Callable[[str], bool] | None = None
        self._refuse_left = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        except OSError:
            client.close()
            return
        link = _Link(client, upstream)
        with self.lock:
            self.links.append(link)
        threading.Thread(target=self._pump, args=(link, False), daemon=True).start()
        self._pump(link, True)

    def _pump(self, link: _Link, from_client: bool) -> None:
        source, target = (
            (link.client, link.upstream) if from_client else (link.upstream, link.client)
        )
        try:
            while data := source.recv(65536):
                if from_client and (head := REQUEST_LINE.match(data)):
                    link.path = head.group(1).decode("latin-1")
                    with self.lock:
                        refuse = (
                            self._refuse is not None
                            and self._refuse_left > 0
                            and self._refuse(link.path)
                        )
                        if refuse:
                            self._refuse_left -= 1
                            self.refused.append(link.path)
                        else:
                            self.requests.append((time.monotonic(), link.path, data))
                    if refuse:
                        break
                target.sendall(data)
        except OSError:
            pass
        finally:
            link.close()

    def cut(self, match: Callable[[str], bool]) -> int:
        with self.lock:
            links = [link for link in self.links if link.path is not None and match(link.path)]
        for link in links:
            link.close()
        return len(links)

    def refuse(self, match: Callable[[str], bool], count: int = 1) -> None:
        with self.lock:
            self._refuse = match
            self._refuse_left = count

    def __enter__(self) -> CuttingProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.listener.close()
        with self.lock:
            links = list(self.links)
        for link in links:
            link.close()
