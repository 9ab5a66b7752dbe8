"""Fixtures for the browser tests: a headless Chromium per module, a fresh watched page per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from browserkit import Tab, launch_chromium, watched_tab
from playwright.sync_api import Browser


# Per module, so that Playwright's event loop is gone before any later test of the session runs.
@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    with launch_chromium() as browser:
        yield browser


@pytest.fixture
def tab(chromium: Browser, request: pytest.FixtureRequest) -> Iterator[Tab]:
    """A page in a fresh context; afterwards a screenshot, artifacts/screenshots/<test>.png."""
    with watched_tab(chromium, request.node.name) as watched:
        yield watched
