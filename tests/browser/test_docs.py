"""The API docs in Debian's Chromium: Swagger UI and ReDoc work offline, Try it out works."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from browserkit import Tab
from playwright.sync_api import Locator, Page, expect
from servers import Server

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("docs"), {"TRAINWIRE_CPU_WORKERS": "2"}).start()
    yield server
    server.stop()


def open_swagger(page: Page, url: str) -> None:
    page.goto(url + "/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("trainwire")


def submit_operation(page: Page) -> Locator:
    """The expanded `POST /v1/jobs` block, with "Try it out" on."""
    block = page.locator(".opblock.opblock-post").filter(
        has=page.locator('.opblock-summary-path[data-path="/v1/jobs"]')
    )
    expect(block).to_have_count(1)
    block.locator(".opblock-summary").first.click()
    block.locator("button.try-out__btn").click()
    return block


def execute(page: Page, block: Locator, expect_status: int) -> dict[str, Any]:
    """Click Execute with the prefilled example body; returns the response as the page shows it."""
    body = json.loads(block.locator("textarea.body-param__text").input_value())
    assert body["variant"], body  # the schema's example
    with page.expect_response(
        lambda r: r.url.endswith("/v1/jobs") and r.request.method == "POST"
    ) as answer:
        block.locator("button.execute").click()
    assert answer.value.status == expect_status
    status = block.locator(".live-responses-table .response .response-col_status").first
    expect(status).to_have_text(str(expect_status))
    shown = block.locator(".live-responses-table .response-col_description pre").first
    expect(shown).not_to_be_empty()
    return dict(json.loads(shown.inner_text()))


def test_swagger_try_it_out(tab: Tab, server: Server) -> None:
    page = tab.page
    open_swagger(page, server.url)
    block = submit_operation(page)
    job = execute(page, block, 201)
    with server.client() as client:
        stored = client.get(f"/v1/jobs/{job['id']}")
    assert stored.status_code == 200
    assert stored.json()["variant"] == job["variant"]
    tab.check()


def test_swagger_with_a_token(tab: Tab, make_server: Callable[..., Server]) -> None:
    server = make_server(TRAINWIRE_CPU_WORKERS="2", TRAINWIRE_API_TOKEN="secret")
    tab.allow_console_error(r"status of 401\b.* @ http://127\.0\.0\.1:\d+/v1/jobs$")
    page = tab.page
    open_swagger(page, server.url)
    block = submit_operation(page)
    refused = execute(page, block, 401)
    assert refused["detail"]

    page.locator(".scheme-container button.authorize").click()
    dialog = page.locator(".modal-ux")
    expect(dialog).to_be_visible()
    dialog.locator("input").first.fill("secret")
    dialog.locator(".auth-btn-wrapper button.authorize").click()
    expect(dialog.get_by_role("heading", name="Authorized")).to_be_visible()
    dialog.get_by_role("button", name="Close").click()
    expect(dialog).to_be_hidden()

    job = execute(page, block, 201)
    with server.client(headers={"Authorization": "Bearer secret"}) as client:
        assert client.get(f"/v1/jobs/{job['id']}").status_code == 200
    tab.check()


def test_redoc_renders(tab: Tab, server: Server) -> None:
    page = tab.page
    page.goto(server.url + "/redoc")
    expect(page.locator("h1").first).to_contain_text("trainwire")
    # an operation of the API, rendered from the schema
    expect(page.get_by_text("/v1/jobs/{job_id}/events").first).to_be_attached()
    expect(page.locator("h2").filter(has_text="Submit").first).to_be_visible()
    tab.check()
