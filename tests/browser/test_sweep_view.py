"""The dashboard's sweep view in Debian's Chromium: a sweep started from its form is followed
live, every run's curve held equals its stored losses, the runs sort by final loss, both charts
are drawn, a wrong value is shown under its field, and a sweep can be cancelled."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from browserkit import CuttingProxy, Tab, open_dashboard, stored_losses
from playwright.sync_api import Page, expect
from servers import Server, wait_for

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("sweep-view"), {"TRAINWIRE_CPU_WORKERS": "2"}).start()
    yield server
    server.stop()


def fill_sweep_form(page: Page, **fields: Any) -> None:
    for name, value in fields.items():
        control = page.locator(f"#sweep-form [data-sweep-field={name}]")
        if control.evaluate("node => node.tagName") == "SELECT":
            control.select_option(str(value))
        else:
            control.fill(str(value))


def submit_sweep_form(page: Page, expect_status: int = 201) -> dict[str, Any]:
    with page.expect_response(
        lambda r: urlsplit(r.url).path == "/v1/sweeps" and r.request.method == "POST"
    ) as info:
        page.click("#submit-sweep")
    assert info.value.status == expect_status, info.value.text()
    return dict(info.value.json())


def colored_pixels(page: Page, chart: str, color: str) -> int:
    """Pixels of a chart's canvas within a small distance of a CSS colour."""
    rgb = [int(part) for part in re.findall(r"\d+", color)[:3]]
    return int(
        page.evaluate(
            """([selector, [r, g, b]]) => {
                const canvas = document.querySelector(selector + ' canvas');
                const data = canvas.getContext('2d')
                    .getImageData(0, 0, canvas.width, canvas.height).data;
                let count = 0;
                for (let i = 0; i < data.length; i += 4) {
                    const d = Math.abs(data[i] - r) + Math.abs(data[i + 1] - g)
                        + Math.abs(data[i + 2] - b);
                    if (data[i + 3] > 200 && d < 40) count++;
                }
                return count;
            }""",
            [chart, rgb],
        )
    )


def final_losses(page: Page) -> list[float]:
    cells = page.locator("#sweep-runs tbody .run-final-loss")
    return [float(v) for v in cells.evaluate_all("cells => cells.map(c => c.dataset.finalLoss)")]


def test_a_sweep_from_the_form_is_followed_live_and_compared(tab: Tab, server: Server) -> None:
    page = tab.page
    open_dashboard(page, server.url)
    page.wait_for_function("document.querySelectorAll('#s-variant option').length > 0")
    fill_sweep_form(
        page, variant="nn", steps=300, swept="learning_rate", values="1e-4, 1e-3", seeds="0, 1"
    )
    fill_sweep_form(page, label="browser scan")
    sweep = submit_sweep_form(page)
    assert [(r["hyperparameters"]["learning_rate"], r["seed"]) for r in sweep["jobs"]] == [
        (1e-4, 0),
        (1e-4, 1),
        (1e-3, 0),
        (1e-3, 1),
    ]
    expect(page.locator("#sweep-form-status")).to_have_text(f"Started {sweep['id'][:8]} (4 runs)")
    expect(page.locator(f'#sweeps tbody tr[data-sweep-id="{sweep["id"]}"]')).to_be_visible()
    page.wait_for_function(
        "id => { const v = window.trainwire.sweepView(); return v && v.id === id"
        " && v.follow === 'done'; }",
        arg=sweep["id"],
        timeout=60_000,
    )
    expect(page.locator("#sweep-view")).to_have_attribute("data-status", "succeeded")
    expect(page.locator("#sweep-status")).to_have_text("succeeded")

    # every run's curve, live then final, is its stored losses
    with server.client() as client:
        for run in sweep["jobs"]:
            held = page.evaluate("id => window.trainwire.sweepPoints(id)", run["id"])
            assert held == stored_losses(client, run["id"]), run["id"]

    # the runs as a table, by final loss, lowest first; a click on the header turns it around
    rows = page.locator("#sweep-runs tbody tr")
    expect(rows).to_have_count(4)
    ascending = final_losses(page)
    assert ascending == sorted(ascending) and len(ascending) == 4
    page.locator('#sweep-runs th[data-sort="final"] button').click()
    assert final_losses(page) == sorted(ascending, reverse=True)
    expect(page.locator('#sweep-runs th[data-sort="final"]')).to_have_attribute(
        "aria-sort", "descending"
    )

    # both charts are drawn: each rate's colour on the curves, one line per seed on the other
    for run in sweep["jobs"]:
        swatch = rows.and_(page.locator(f'[data-job-id="{run["id"]}"]')).locator(".swatch")
        color = swatch.evaluate("node => getComputedStyle(node).backgroundColor")
        assert colored_pixels(page, "#sweep-curves", color) > 100, run["id"]
        assert colored_pixels(page, "#sweep-finals", color) >= 0
    legend = page.locator("#sweep-finals .u-legend .u-series")
    expect(legend).to_have_count(3)  # the x axis, seed=0, seed=1
    tab.screenshot("-view")
    tab.check()


def test_a_wrong_value_is_shown_under_its_field(tab: Tab, server: Server) -> None:
    page = tab.page
    open_dashboard(page, server.url)
    page.wait_for_function("document.querySelectorAll('#s-variant option').length > 0")
    fill_sweep_form(page, variant="tensors", swept="learning_rate", values="1e-6, -2", seeds="1")
    tab.allow_console_error("422")
    submit_sweep_form(page, expect_status=422)
    expect(page.locator('#sweep-form .field-error[data-for="values"]')).to_contain_text("-2")
    fill_sweep_form(page, values="1e-6", seeds="1, 1")
    submit_sweep_form(page, expect_status=422)
    expect(page.locator('#sweep-form .field-error[data-for="seeds"]')).to_contain_text(
        "more than once"
    )
    tab.check()


def test_a_sweep_is_cancelled_from_its_view(tab: Tab, server: Server) -> None:
    with server.client() as client:
        response = client.post(
            "/v1/sweeps",
            json={
                "variant": "tensors",
                "hyperparameters": {"steps": 1_000_000, "batch_size": 8, "d_in": 20},
                "grid": {"learning_rate": [1e-9, 2e-9]},
            },
        )
        assert response.status_code == 201, response.text
        sweep = response.json()
        wait_for(lambda: client.get(f"/v1/sweeps/{sweep['id']}").json()["status"] == "running")
    page = tab.page
    open_dashboard(page, server.url)
    page.locator(f'#sweeps tbody tr[data-sweep-id="{sweep["id"]}"]').click()
    expect(page.locator("#sweep-view")).to_have_attribute("data-follow", "stream")
    page.click("#sweep-cancel")
    expect(page.locator("#sweep-view")).to_have_attribute(
        "data-status", "cancelled", timeout=30_000
    )
    expect(page.locator("#sweep-view")).to_have_attribute("data-follow", "done")
    expect(page.locator("#sweep-cancel")).to_be_hidden()
    tab.check()


@pytest.mark.timeout(300)
def test_a_cut_sweep_stream_goes_on_from_its_last_id(tab: Tab, server: Server) -> None:
    tab.allow_console_error(r"net::ERR_\w+ @ http://127\.0\.0\.1:\d+/v1/sweeps/\w+/events\b")
    page = tab.page
    with CuttingProxy(server.port) as proxy:
        open_dashboard(page, proxy.url)
        page.wait_for_function("document.querySelectorAll('#s-variant option').length > 0")
        # slow steps (a wide input: ~7 ms), fewer than the 2,000 points a run keeps exactly
        fill_sweep_form(page, variant="nn", steps=1800, swept="d_in", values="8000", seeds="0, 1")
        sweep = submit_sweep_form(page)
        runs = [run["id"] for run in sweep["jobs"]]

        def held(run_id: str) -> list[list[Any]]:
            return list(page.evaluate("id => window.trainwire.sweepPoints(id) || []", run_id))

        wait_for(lambda: len(held(runs[0])) >= 100, timeout=120)

        def is_stream(path: str) -> bool:
            return path.startswith(f"/v1/sweeps/{sweep['id']}/events")

        assert proxy.cut(is_stream) == 1
        page.wait_for_function(
            "id => { const v = window.trainwire.sweepView(); return v && v.id === id"
            " && v.follow === 'done'; }",
            arg=sweep["id"],
            timeout=120_000,
        )
        with server.client() as client:
            for run_id in runs:
                assert held(run_id) == stored_losses(client, run_id), run_id
        opened = [head.decode("latin-1") for _, path, head in proxy.requests if is_stream(path)]
    assert len(opened) >= 2, opened
    # the reconnect went on from where the stream stood, not from the start
    marks = re.findall(r"(?im)^last-event-id: *([0-9x.]+)\r?$", opened[1])
    marks += re.findall(r"[?&]after=([0-9x.%A-F]+)", opened[1].split("\r\n", 1)[0])
    assert marks and marks[0] not in ("0x2", "0.0"), opened[1]
    tab.check()
