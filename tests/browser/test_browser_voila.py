"""`mlakit dashboard`: the KV-cache dashboard as a web app (Voila) on 127.0.0.1, in Chromium.

The command is started as a user would (a free port, a token, some settings given as flags); the page
shows the dashboard alone (no code), its widgets draw, the numbers are mlakit.kvcache's for the
flags, and stay so after moving the context slider, switching the model and the precision.
Screenshot: build/browser-tests/.
"""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from browser_support import WIDGET_ERROR, exercise_dashboard, start_voila

pytestmark = pytest.mark.browser

TIMEOUT = 180_000  # ms: Voila starts a kernel and runs the cell before it answers


@pytest.fixture(scope="module")
def voila(browser):
    server = start_voila("deepseek-v2", precision="fp8", batch_size=4, gpu="H200")
    try:
        seconds = server.wait("login")  # the server is up (its page / runs a kernel per visit: kept for the test)
        print(f"mlakit dashboard answered after {seconds:.1f} s")
        yield server
    finally:
        server.stop()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a redirect is answered as an HTTPError, not followed


@pytest.fixture
def voila_page(browser, voila):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT)
    yield page
    context.close()


def test_voila_needs_its_token(voila, voila_page, shot):
    opener = urllib.request.build_opener(_NoRedirect)
    for url in (f"{voila.base}/", f"{voila.base}/?token=wrong"):
        with pytest.raises(urllib.error.HTTPError) as err:
            opener.open(url, timeout=60)
        assert err.value.code in (302, 403), url  # to the login page, or refused
        assert "login" in err.value.headers.get("Location", "login"), url
    page = voila_page  # in the browser: the login page, no dashboard
    page.goto(f"{voila.base}/?token=wrong")
    shot(page)
    assert "/login" in page.url
    assert page.locator(".widget-tab, .jupyter-widgets").count() == 0


def test_mlakit_dashboard_follows_its_controls(voila, voila_page, shot):
    page = voila_page
    page.goto(voila.url(""))
    shot(page)  # taken at the end, before the page closes (fixtures end in reverse order)
    root = page.locator("body")
    root.locator(".widget-tab").first.wait_for(timeout=TIMEOUT)
    root.locator(".widget-html-content table").first.wait_for(timeout=TIMEOUT)
    assert "cache_dashboard(" not in page.inner_text("body"), "Voila shows the code"
    start = {"model": "deepseek-v2", "context": 128 * 1024, "batch": 4, "precision": "fp8", "gpu": "H200"}
    seen = exercise_dashboard(root, start, [("context", 3), ("model", "llama3-70b-gqa", "llama3-70b-gqa"),
                                            ("precision", "bf16")])
    assert seen[-1] == {**start, "context": 1024 * 1024, "model": "llama3-70b-gqa", "precision": "bf16"}
    assert page.get_by_text(WIDGET_ERROR).count() == 0
