"""The course website (`make site`) in Chromium: the index and a lesson page, as a reader opens them.

The built site (build/site/_build/html) is served over HTTP on 127.0.0.1; requests leaving the machine
are refused (the pages must not need them: a CDN's script, MathJax's, is the one the theme asks for,
and is recorded, not required). On each page: no local request fails, every image loads, every internal
link (to another page, and to an anchor) resolves. The navigation lists every lesson. Skips, saying
so, when the site is not built. Screenshots: build/browser-tests/.
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import threading
from urllib.parse import urldefrag, urlparse

import pytest
from browser_support import ROOT, free_port, missing

pytestmark = pytest.mark.browser

SITE = ROOT / "build" / "site" / "_build" / "html"
LESSON = "04_mla_inference"  # a lesson with plots and the dashboards' static pictures
TIMEOUT = 60_000  # ms


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site(browser):
    if not (SITE / "index.html").is_file():
        missing(f"site test skipped: no site at {SITE.relative_to(ROOT)} (build it with `make site`)")
    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(_Quiet, directory=str(SITE)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}/"
    server.shutdown()
    server.server_close()


class Visit:
    """A page of the site open in Chromium, with what went wrong while it loaded."""

    def __init__(self, browser, base: str):
        self.base = base
        self.context = browser.new_context(viewport={"width": 1280, "height": 1000})
        self.failed, self.external = [], []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT)
        self.page.on("requestfailed", lambda r: r.url.startswith(base) and self.failed.append(f"{r.url}: {r.failure}"))
        self.page.on("response", lambda r: r.url.startswith(base) and r.status >= 400
                     and self.failed.append(f"{r.url}: HTTP {r.status}"))

    def _route(self, route):
        if route.request.url.startswith(self.base):
            route.continue_()
        else:  # nothing leaves the machine
            self.external.append(route.request.url)
            route.abort()

    def open(self, url: str) -> None:
        self.page.goto(url, wait_until="load")

    def check_images(self, least: int) -> int:
        """Every image on the page loaded (complete, with pixels); at least ``least`` of them."""
        images = self.page.eval_on_selector_all(
            "img", "els => els.map(e => ({src: e.currentSrc || e.src, ok: e.complete && e.naturalWidth > 0}))")
        broken = [i["src"] for i in images if not i["ok"]]
        assert not broken, f"images that did not load on {self.page.url}: {broken}"
        assert len(images) >= least, f"{len(images)} images on {self.page.url}, want at least {least}"
        return len(images)

    def check_links(self) -> int:
        """Every link to this site resolves: its page answers 200 and its anchor, if any, exists there."""
        hrefs = self.page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
        internal = sorted({h for h in hrefs if h.startswith(self.base)})
        assert internal, f"no internal links on {self.page.url}"
        pages: dict[str, str] = {}
        bad = []
        for href in internal:
            url, fragment = urldefrag(href)
            if url not in pages:
                response = self.context.request.get(url)
                pages[url] = response.text() if response.ok else ""
                if not response.ok:
                    bad.append(f"{href}: HTTP {response.status}")
                    continue
            if fragment and not re.search(rf'id="{re.escape(fragment)}"', pages[url]):
                bad.append(f"{href}: no element with id {fragment!r}")
        assert not bad, f"links on {self.page.url} that do not resolve: {bad}"
        return len(internal)


@pytest.fixture
def visit(browser, site):
    v = Visit(browser, site)
    yield v
    v.context.close()


def lessons() -> list[str]:
    return sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_site_index(visit, site, shot):
    visit.open(site)  # index.html sends the reader on to the intro page
    visit.page.wait_for_url(re.compile(r"intro\.html"))
    shot(visit.page)
    assert "mlakit" in visit.page.title()
    nav = visit.page.eval_on_selector_all("nav a[href]", "els => els.map(e => e.getAttribute('href'))")
    for stem in lessons():
        assert any(f"notebooks/{stem}.html" in h for h in nav), f"lesson {stem} is not in the navigation"
    visit.check_images(least=0)  # the intro is text: whatever images it gets must load
    links = visit.check_links()
    print(f"index: {links} internal links resolve; refused off-site requests: {visit.external}")
    assert not visit.failed, f"requests that failed: {visit.failed}"


def test_site_lesson_page(visit, site, shot):
    visit.open(site + "site/intro.html")
    visit.page.locator(f"nav a[href$='notebooks/{LESSON}.html']").first.click()  # as a reader: by the syllabus
    visit.page.wait_for_url(re.compile(rf"{LESSON}\.html$"))
    visit.page.wait_for_load_state("load")
    shot(visit.page)
    nb = json.loads((ROOT / "notebooks" / f"{LESSON}.ipynb").read_text())
    pictures = sum("image/png" in o.get("data", {}) for c in nb["cells"] if c["cell_type"] == "code"
                   for o in c.get("outputs", []))
    assert pictures >= 3, f"{LESSON} should have plots and the dashboards' pictures"
    # every picture of the notebook (plots, and the static view of each dashboard) is on the page
    main = visit.page.locator("main img, article img")
    assert main.count() >= pictures, f"{main.count()} images in the lesson, the notebook has {pictures}"
    images = visit.check_images(least=pictures)
    assert "Error displaying widget" not in visit.page.inner_text("body")
    links = visit.check_links()
    print(f"{LESSON}: {images} images load, {links} internal links resolve; refused: {visit.external}")
    assert urlparse(visit.page.url).path.endswith(f"notebooks/{LESSON}.html")
    assert not visit.failed, f"requests that failed: {visit.failed}"
