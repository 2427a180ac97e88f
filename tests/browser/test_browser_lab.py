"""Lesson 04's KV-cache dashboards in JupyterLab, in Chromium, as a learner meets them.

One JupyterLab (started as `make lab` starts it: 127.0.0.1, a free port, a token) serves a copy of
notebooks/04_mla_inference.ipynb, so nothing is written to the course; the notebook is opened once
for the module, its first cell (the imports) run, then each dashboard cell. Every dashboard of the
course lives in lesson 04 (the others show plots): the defaults one, and the "served" one (fp8,
H200, batch 32). For each: the widgets draw (no "Error displaying widget"), the numbers shown are
mlakit.kvcache's for the settings, and stay so after moving the context slider, switching the model,
the precision (and the GPU). Screenshots: build/browser-tests/.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
from browser_support import ROOT, WIDGET_ERROR, control, exercise_dashboard, readout, start_lab

from mlakit.config import ModelConfig
from mlakit.kvcache import decompose_v2_headline

pytestmark = pytest.mark.browser

LESSON = "notebooks/04_mla_inference.ipynb"
OPEN_TIMEOUT = 180_000  # ms: opening the notebook and starting its kernel on 2 busy cores
RUN_TIMEOUT = 180_000  # ms: one cell (the imports take torch's start-up)


class Notebook:
    """The lesson open in JupyterLab: its code cells' sources, and running a cell as a learner does."""

    def __init__(self, page, sources: list[str]):
        self.page, self.sources, self.runs = page, sources, 0

    def index(self, test) -> int:
        found = [i for i, s in enumerate(self.sources) if test(s)]
        assert len(found) == 1, f"{len(found)} code cells of {LESSON} match, want 1"
        return found[0]

    def cell(self, i: int):
        return self.page.locator(".jp-Notebook .jp-CodeCell").nth(i)

    def run(self, i: int):
        """Select code cell ``i`` by its prompt, press Ctrl+Enter, wait for its new execution count."""
        cell = self.cell(i)
        cell.locator(".jp-InputPrompt").click()
        self.page.keyboard.press("Control+Enter")
        self.runs += 1
        self.page.wait_for_function(
            "([el, want]) => el.innerText.replace(/\\s/g, '') === want",
            arg=[cell.locator(".jp-InputPrompt").element_handle(), f"[{self.runs}]:"], timeout=RUN_TIMEOUT)
        errors = cell.locator(".jp-RenderedText[data-mime-type='application/vnd.jupyter.stderr']")
        tracebacks = [t for t in errors.all_inner_texts() if "Traceback" in t or "Error" in t]
        assert not tracebacks, f"cell {i} failed: {tracebacks[0][-2000:]}"
        return cell

    def run_dashboard(self, i: int):
        """Run code cell ``i``, which displays a dashboard; its output area once the widgets are drawn."""
        cell = self.run(i)
        out = cell.locator(".jp-Cell-outputArea")
        out.locator(".widget-tab").first.wait_for(timeout=RUN_TIMEOUT)
        out.locator(".widget-html-content table").first.wait_for(timeout=RUN_TIMEOUT)
        out.scroll_into_view_if_needed()
        return out


@pytest.fixture(scope="module")
def lesson04(browser, tmp_path_factory):
    src = ROOT / LESSON
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    work = tmp_path_factory.mktemp("lab")
    (work / "course" / "notebooks").mkdir(parents=True)
    shutil.copy(src, work / "course" / LESSON)
    sources = ["".join(c["source"]) for c in json.loads(src.read_text())["cells"] if c["cell_type"] == "code"]
    lab = start_lab(work / "course", work)
    context = None
    try:
        seconds = lab.wait("api/status")
        print(f"JupyterLab answered after {seconds:.1f} s")
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(OPEN_TIMEOUT)
        page.goto(lab.url(f"lab/tree/{LESSON}"))
        n_cells = len(json.loads(src.read_text())["cells"])
        page.wait_for_function(f"document.querySelectorAll('.jp-Notebook .jp-Cell').length === {n_cells}",
                               timeout=OPEN_TIMEOUT)
        page.wait_for_function("document.querySelector('#jp-main-statusbar')?.innerText.includes('| Idle')",
                               timeout=OPEN_TIMEOUT)
        nb = Notebook(page, sources)
        nb.run(0)  # the lesson's imports
        yield nb
    finally:
        if context is not None:
            context.close()
        lab.stop()
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest, f"{LESSON} was changed by the test"


def test_default_dashboard_follows_its_controls(lesson04, shot):
    nb = lesson04
    out = nb.run_dashboard(nb.index(lambda s: s.startswith('dash = mlakit.viz.cache_dashboard("deepseek-v3")')))
    shot(out)
    start = {"model": "deepseek-v3", "context": 128 * 1024, "batch": 1, "precision": "bf16", "gpu": "H100"}
    seen = exercise_dashboard(out, start, [("context", -2), ("model", "deepseek-v2-lite", "deepseek-v2-lite"),
                                           ("precision", "fp8")])
    assert seen[-1] == {**start, "context": 32 * 1024, "model": "deepseek-v2-lite", "precision": "fp8"}
    # the MLA sliders took the new model's values, and are enabled for an MLA model
    lite = ModelConfig.from_preset("deepseek-v2-lite")
    assert control(out, "kv_lora_rank d_c").locator("[disabled]").count() == 0
    assert readout(out, "kv_lora_rank d_c") == str(lite.kv_lora_rank)
    assert readout(out, "rope dim d_h^R") == str(lite.qk_rope_head_dim)
    # the second tab: DeepSeek-V2's headline split in two
    out.locator(".lm-TabBar-tab").filter(has_text="V2 headline").click()
    headline = out.locator(".widget-html-content").filter(has_text="reduced by 93.3%").first
    headline.wait_for(state="visible")
    text = headline.inner_text()
    d = decompose_v2_headline()
    for share in (d.architecture_saving, d.quantisation_saving, d.total_saving):
        assert f"{100 * share:.1f}%" in text, f"{100 * share:.1f}% not in the headline tab: {text}"
    out.locator(".lm-TabBar-tab").filter(has_text="KV cache").click()
    assert nb.page.get_by_text(WIDGET_ERROR).count() == 0


def test_served_dashboard_follows_its_controls(lesson04, shot):
    nb = lesson04
    nb.run(nb.index(lambda s: "v3_served = mlakit.viz.cache_dashboard(" in s))
    out = nb.run_dashboard(nb.index(lambda s: s.strip() == "v3_served"))
    shot(out)
    start = {"model": "deepseek-v3", "context": 128 * 1024, "batch": 32, "precision": "fp8", "gpu": "H200"}
    assert readout(out, "batch size") == "32"
    seen = exercise_dashboard(out, start, [("context", 1), ("model", "deepseek-v3-mha", "deepseek-v3, with MHA"),
                                           ("precision", "6-bit"), ("gpu", "H100", "80 GB H100")])
    assert seen[-1]["context"] == 256 * 1024
    # plain MHA: the MLA sliders are disabled
    for name in ("kv_lora_rank d_c", "rope dim d_h^R"):
        assert control(out, name).locator("[disabled]").count() > 0, f"{name} is not disabled for MHA"
    assert nb.page.get_by_text(WIDGET_ERROR).count() == 0
