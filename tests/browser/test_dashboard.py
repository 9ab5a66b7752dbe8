"""The dashboard in Debian's Chromium: the form, the live chart, reconnection, cancel, CSV, auth.

The tests share one server (the token test has its own) and each opens a fresh browser context,
so a first visit may put the newest job of an earlier test on the chart. Every request must stay
on 127.0.0.1 and the page must log no error that the test does not provoke on purpose.
Screenshots land in artifacts/screenshots/.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from browserkit import (
    CuttingProxy,
    Tab,
    clear_chart,
    fill_form,
    open_dashboard,
    points,
    row,
    stored_losses,
    submit_form,
    wait_follow,
    wait_points,
)
from playwright.sync_api import Page, expect
from servers import Server, submit, wait_final

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("dashboard"), {"TRAINWIRE_CPU_WORKERS": "2"}).start()
    yield server
    server.stop()


@pytest.fixture
def proxy(server: Server) -> Iterator[CuttingProxy]:
    """The server behind a proxy that can cut the page's connections."""
    with CuttingProxy(server.port) as cutting:
        yield cutting


# A run that lasts several seconds on a CPU yet stays within the 4,000 points the page keeps
# exactly per job (past that it thins the older ones), so every step can be compared.
LONG_STEPS = 4000
LONG_RUN: dict[str, Any] = {
    "steps": LONG_STEPS,
    "batch_size": 128,
    "hidden": 200,
    "learning_rate": "1e-7",
    "device": "cpu",
}


def chart_pixels(page: Page, job_id: str) -> int:
    """How many pixels of the chart have the colour of the job's legend swatch."""
    swatch = page.locator(f'#legend li[data-job-id="{job_id}"] .swatch')
    color = swatch.evaluate("node => getComputedStyle(node).backgroundColor")
    rgb = [int(part) for part in re.findall(r"\d+", color)[:3]]
    return int(
        page.evaluate(
            """([r, g, b]) => {
                const canvas = document.querySelector('#chart');
                const ctx = canvas.getContext('2d');
                const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
                let count = 0;
                for (let i = 0; i < data.length; i += 4) {
                    const distance = Math.abs(data[i] - r) + Math.abs(data[i + 1] - g)
                        + Math.abs(data[i + 2] - b);
                    if (data[i + 3] > 200 && distance < 40) count++;
                }
                return count;
            }""",
            rgb,
        )
    )


def test_started_job_is_listed_charted_and_matches_its_losses(tab: Tab, server: Server) -> None:
    page = tab.page
    open_dashboard(page, server.url)
    clear_chart(page)
    expect(page.locator("#chart-empty")).to_be_visible()

    fill_form(page, "tensors", steps=300, seed=1234, label="three hundred steps")
    job = submit_form(page)
    job_id = job["id"]
    assert (job["variant"], job["seed"], job["label"]) == ("tensors", 1234, "three hundred steps")
    assert job["hyperparameters"]["steps"] == 300
    expect(page.locator("#form-status")).to_have_text(f"Started {job_id[:8]}")

    job_row = row(page, job_id)
    expect(job_row).to_be_visible()
    expect(job_row.locator(".variant")).to_have_text("tensors")
    expect(job_row.locator(".show-toggle")).to_be_checked()
    expect(page.locator(f'#legend li[data-job-id="{job_id}"]')).to_be_visible()

    wait_points(page, job_id, 300)
    expect(job_row).to_have_attribute("data-status", "succeeded")
    expect(job_row.locator(".status")).to_have_text("succeeded")
    expect(job_row.locator(".step")).to_have_text("300 / 300")
    wait_follow(page, job_id, "done")
    expect(page.locator("#chart-empty")).to_be_hidden()
    expect(page.locator(f'#legend li[data-job-id="{job_id}"] .legend-step')).to_have_text(
        "step 299"
    )

    held = points(page, job_id)
    assert [step for step, _ in held] == list(range(300))
    with server.client() as client:
        assert held == stored_losses(client, job_id)
    assert chart_pixels(page, job_id) > 200, "the curve is not drawn"
    tab.check()


def test_two_jobs_compared_on_one_chart(tab: Tab, server: Server) -> None:
    page = tab.page
    open_dashboard(page, server.url)
    clear_chart(page)

    # one job from the form, one from the API put on the chart with its "Chart" box
    fill_form(page, "numpy", steps=500, dtype="float64", seed=42, label="numpy")
    first = submit_form(page)
    with server.client() as client:
        second = submit(
            client, "autograd", hp={"steps": 500, "dtype": "float64"}, seed=42, label="autograd"
        )
    toggle = row(page, second["id"]).locator(".show-toggle")
    expect(toggle).not_to_be_checked()
    toggle.check()

    ids = [first["id"], second["id"]]
    legend = page.locator("#legend li")
    expect(legend).to_have_count(2)
    assert sorted(legend.evaluate_all("items => items.map(li => li.dataset.jobId)")) == sorted(ids)
    expect(page.locator(f'#legend li[data-job-id="{ids[0]}"] .legend-name')).to_contain_text(
        "numpy"
    )
    expect(page.locator(f'#legend li[data-job-id="{ids[1]}"] .legend-name')).to_contain_text(
        "autograd"
    )

    with server.client() as client:
        for job_id in ids:
            wait_follow(page, job_id, "done")
            expect(row(page, job_id)).to_have_attribute("data-status", "succeeded")
            held = points(page, job_id)
            assert [step for step, _ in held] == list(range(500))
            assert held == stored_losses(client, job_id)
    assert sorted(page.evaluate("window.trainwire.shown()")) == sorted(ids)
    colors = page.locator("#legend .swatch").evaluate_all(
        "nodes => nodes.map(node => getComputedStyle(node).backgroundColor)"
    )
    assert len(set(colors)) == 2
    # With one seed and float64 the two programs trace the same curve: the one drawn last
    # covers the other. Taking it off the chart (its legend's x) uncovers the first.
    assert chart_pixels(page, ids[1]) > 100, "the curves are not drawn"
    tab.screenshot("-both")
    page.locator(f'#legend li[data-job-id="{ids[1]}"] .legend-hide').click()
    expect(legend).to_have_count(1)
    expect(toggle).not_to_be_checked()
    assert page.evaluate("window.trainwire.shown()") == [ids[0]]
    page.wait_for_function("id => window.trainwire.follow(id) === null", arg=ids[1])
    page.wait_for_function(
        "() => new Promise(resolve => requestAnimationFrame(() => resolve(true)))"
    )
    assert chart_pixels(page, ids[0]) > 100, "the first curve is not drawn"
    tab.check()


def test_invalid_learning_rate_is_shown_next_to_the_field(tab: Tab, server: Server) -> None:
    tab.allow_console_error(r"status of 422\b.* @ http://127\.0\.0\.1:\d+/v1/jobs$")
    page = tab.page
    with server.client() as client:
        jobs_before = client.get("/v1/jobs").json()["items"]
    open_dashboard(page, server.url)
    rows_before = page.locator("#jobs tbody tr").count()
    learning_rate = page.locator("#job-form [data-field=learning_rate]")
    error = page.locator(".field-error[data-for=learning_rate]")

    for bad in ("-1", "0"):
        fill_form(page, "tensors", learning_rate=bad, steps=10)
        submit_form(page, expect_status=422)
        expect(error).to_be_visible()
        expect(error).to_have_text(re.compile(r"\S"))
        expect(learning_rate).to_have_attribute("aria-invalid", "true")
        # the message is under its field, not in the banner or the form-wide slot
        expect(page.locator("#form-error")).to_be_hidden()
        expect(page.locator(".field-error[data-for=hyperparameters]")).to_be_hidden()
        expect(page.locator("#banner")).to_be_hidden()
        expect(page.locator("#form-status")).to_have_text("")
        tab.screenshot(f"-{bad}")

    # editing the field clears its error
    learning_rate.fill("1e-6")
    expect(error).to_be_hidden()
    expect(learning_rate).not_to_have_attribute("aria-invalid", "true")

    with server.client() as client:
        assert client.get("/v1/jobs").json()["items"] == jobs_before, "a job was created"
    expect(page.locator("#jobs tbody tr")).to_have_count(rows_before)
    tab.check()


@pytest.mark.timeout(360)  # a loaded machine: the page redraws thousands of points per update
def test_cut_stream_resumes_with_every_step_once(
    tab: Tab, server: Server, proxy: CuttingProxy
) -> None:
    # The page talks to the server through a proxy that can break its connections; the broken
    # stream and the refused reconnect are the only errors the browser may log.
    tab.allow_console_error(r"net::ERR_\w+ @ http://127\.0\.0\.1:\d+/v1/jobs/\w+/events\b")
    page = tab.page
    open_dashboard(page, proxy.url)
    clear_chart(page)

    fill_form(page, "tensors", seed=7, label="cut mid-run", **LONG_RUN)
    job_id = submit_form(page)["id"]
    steps = LONG_STEPS
    wait_points(page, job_id, 200)
    assert page.evaluate("id => window.trainwire.follow(id)", job_id) == "stream"

    def is_stream(path: str) -> bool:
        return path.startswith(f"/v1/jobs/{job_id}/events")

    # The next attempt to reconnect fails too (two refusals: Chromium retries once unseen).
    proxy.refuse(is_stream, 2)
    assert proxy.cut(is_stream) == 1
    held_at_cut = points(page, job_id)
    with server.client() as client:
        at_cut = client.get(f"/v1/jobs/{job_id}").json()
    assert at_cut["status"] == "running" and at_cut["step"] < steps, "the run ended before the cut"

    wait_follow(page, job_id, "done", timeout=300_000)
    expect(row(page, job_id)).to_have_attribute("data-status", "succeeded")
    held = points(page, job_id)
    assert [step for step, _ in held] == list(range(steps))
    with server.client() as client:
        assert held == stored_losses(client, job_id)

    # It did reconnect (after a refusal), and asked for the steps after the last one it held
    # rather than the whole run again.
    assert len(proxy.refused) == 2
    opened = [head.decode("latin-1") for _, path, head in proxy.requests if is_stream(path)]
    assert len(opened) >= 2, opened
    resumed_after = []
    for head in opened[1:]:
        marks = re.findall(r"(?im)^last-event-id: *(\d+)\r?$", head)
        marks += re.findall(r"[?&]after=(\d+)", head.split("\r\n", 1)[0])
        resumed_after.append(max(int(mark) for mark in marks))
    assert min(resumed_after) >= held_at_cut[-1][0], (resumed_after, held_at_cut[-1])
    tab.check()


def test_cancel_running_job_and_csv_link(tab: Tab, server: Server) -> None:
    page = tab.page
    open_dashboard(page, server.url)
    clear_chart(page)
    fill_form(page, "tensors", seed=11, label="to cancel", **LONG_RUN)
    job_id = submit_form(page)["id"]
    job_row = row(page, job_id)
    expect(job_row).to_have_attribute("data-status", "running")
    wait_points(page, job_id, 50)

    cancel = job_row.locator(".cancel")
    expect(cancel).to_be_visible()
    with page.expect_response(lambda r: r.url.endswith(f"/v1/jobs/{job_id}/cancel")) as answer:
        cancel.click()
    assert answer.value.status == 202
    expect(job_row).to_have_attribute("data-status", "cancelled")
    expect(job_row.locator(".status")).to_have_text("cancelled")
    expect(cancel).to_be_hidden()
    expect(job_row.locator(".delete")).to_be_visible()
    wait_follow(page, job_id, "done")

    with server.client() as client:
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "cancelled" and 50 <= job["step"] < LONG_STEPS
        losses = stored_losses(client, job_id)
        assert len(losses) == job["step"]
        assert points(page, job_id) == losses

        href = job_row.locator("a.csv").evaluate("link => link.href")
        assert urlsplit(href).netloc == f"127.0.0.1:{server.port}"
        response = client.get(href)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        table = list(csv.reader(io.StringIO(response.text)))
    assert table[0] == ["step", "loss"]
    assert [[int(step), float(loss)] for step, loss in table[1:]] == losses

    # the link itself, clicked in the browser, saves the same file
    with page.expect_download() as download:
        job_row.locator("a.csv").click()
    assert Path(download.value.path()).read_text() == response.text
    tab.check()


def test_token_prompt_then_job_list(tab: Tab, make_server: Callable[..., Server]) -> None:
    server = make_server(TRAINWIRE_CPU_WORKERS="2", TRAINWIRE_API_TOKEN="secret")
    tab.allow_console_error(r"status of 401\b.* @ http://127\.0\.0\.1:\d+/v1/")
    with server.client(headers={"Authorization": "Bearer secret"}) as client:
        earlier = submit(client, "numpy", hp={"steps": 20}, seed=3, label="before the token")
        wait_final(client, earlier["id"])
    page = tab.page
    page.goto(server.url + "/")

    auth = page.locator("#auth")
    expect(auth).to_be_visible()
    expect(page.locator("#token")).to_be_visible()
    expect(page.locator("#jobs tbody tr")).to_have_count(0)

    page.fill("#token", "not the token")
    page.click("#token-save")
    expect(page.locator("#auth-message")).to_have_text(re.compile("refused"))
    expect(auth).to_be_visible()

    page.fill("#token", "secret")
    page.click("#token-save")
    expect(row(page, earlier["id"])).to_have_attribute("data-status", "succeeded")
    expect(auth).to_be_hidden()
    page.wait_for_function("document.querySelectorAll('#variant option').length > 0")

    # a job started from the page is streamed with the token too
    fill_form(page, "nn", steps=100, seed=9)
    job_id = submit_form(page)["id"]
    wait_follow(page, job_id, "done")
    held = points(page, job_id)
    assert [step for step, _ in held] == list(range(100))
    with server.client(headers={"Authorization": "Bearer secret"}) as client:
        assert held == stored_losses(client, job_id)

    # the token is remembered, and so is the chart
    page.reload()
    expect(row(page, job_id)).to_have_attribute("data-status", "succeeded")
    expect(auth).to_be_hidden()
    for shown in (earlier["id"], job_id):
        wait_follow(page, shown, "done")
    assert points(page, job_id) == held
    tab.check()


def test_screenshots_of_finished_jobs(tab: Tab, server: Server) -> None:
    runs: list[tuple[str, dict[str, Any], str]] = [
        ("numpy", {"steps": 500}, "numpy baseline"),
        ("autograd", {"steps": 500, "learning_rate": 5e-7}, "half the learning rate"),
        ("optim", {"steps": 500}, "adam"),
    ]
    with server.client() as client:
        ids = [submit(client, v, hp=hp, seed=1, label=label)["id"] for v, hp, label in runs]
        for job_id in ids:
            wait_final(client, job_id)
    page = tab.page
    open_dashboard(page, server.url)
    # a first visit puts the newest job on the chart; tick the others
    for job_id in ids:
        toggle = row(page, job_id).locator(".show-toggle")
        if job_id == ids[-1]:
            expect(toggle).to_be_checked()
        else:
            toggle.check()
    expect(page.locator("#legend li")).to_have_count(3)
    for job_id in ids:
        wait_follow(page, job_id, "done")
        assert chart_pixels(page, job_id) > 100, f"the curve of {job_id} is not drawn"
        legend_step = page.locator(f'#legend li[data-job-id="{job_id}"] .legend-step')
        expect(legend_step).to_have_text("step 499")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    tab.screenshot("-wide")

    box = page.locator("#chart").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.5)
    tooltip = page.locator("#chart-tooltip")
    expect(tooltip).to_be_visible()
    expect(tooltip.locator(".tt-row")).to_have_count(3)
    tab.screenshot("-hover", full_page=False)
    page.mouse.move(0, 0)

    page.set_viewport_size({"width": 820, "height": 1000})
    expect(page.locator("#legend li")).to_have_count(3)
    # the chart follows the narrower window once its ResizeObserver has run (a frame later)
    page.wait_for_function("document.documentElement.scrollWidth <= window.innerWidth")
    tab.screenshot("-narrow")
    tab.check()


def test_a_queued_job_shows_why_it_waits(tab: Tab, server: Server) -> None:
    page = tab.page
    tiny = {"batch_size": 8, "d_in": 20, "hidden": 10, "d_out": 2}
    with server.client() as client:
        # a job on every core of the server (it inherits this process's affinity)
        holder = submit(
            client, "tensors", hp={**tiny, "steps": 1_000_000}, threads=len(os.sched_getaffinity(0))
        )["id"]
        waiting = submit(client, "numpy", hp={"steps": 5})["id"]
        try:
            open_dashboard(page, server.url)
            expect(row(page, waiting)).to_have_attribute("data-status", "queued")
            expect(row(page, waiting).locator(".job-waiting")).to_contain_text("free cores")
            expect(row(page, holder).locator(".job-waiting")).to_have_text("")
        finally:
            for job_id in (waiting, holder):
                client.post(f"/v1/jobs/{job_id}/cancel")
        expect(row(page, waiting)).to_have_attribute("data-status", "cancelled")
        expect(row(page, waiting).locator(".job-waiting")).to_be_hidden()
