"""Fixtures of the browser tests: Chromium through Playwright, a page per test with its screenshot kept.

They skip, saying why, when Playwright or Chromium is missing; with MLAKIT_BROWSER_REQUIRED=1 (CI,
.ci/run) they fail instead. Screenshots and server logs: build/browser-tests/.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from browser_support import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, missing

VIEWPORT = {"width": 1280, "height": 1000}  # a laptop's browser window


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, headless, driven by Playwright (no browser download: `playwright install` is not
    needed)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("browser tests skipped: Playwright is not installed (pip install -e '.[browser]')")
    if not os.access(CHROMIUM, os.X_OK):
        missing(f"browser tests skipped: no Chromium at {CHROMIUM} (apt-get install chromium, "
                "or MLAKIT_CHROMIUM=/path/to/chromium)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def screenshot_path(request) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / (re.sub(r"[^\w.-]+", "_", request.node.nodeid.split("::", 1)[-1]) + ".png")


@pytest.fixture
def shot(request):
    """Call ``shot(page_or_locator)`` to say what the test's screenshot shows; taken at the end of the test
    (passed or failed) under build/browser-tests/<test name>.png."""
    target = {}
    yield lambda what: target.update(what=what)
    what = target.get("what")
    if what is not None:
        try:
            what.screenshot(path=str(screenshot_path(request)), timeout=30_000)
        except Exception as err:  # a screenshot that cannot be taken must not hide the test's own result
            print(f"no screenshot: {err}")
