"""What the browser tests share: the servers they open (JupyterLab, Voila), Chromium's path and arguments,
and the KV-cache dashboard as a learner sees it: its controls moved by mouse and keyboard, its numbers
read from the page and compared with :mod:`mlakit.kvcache` for the same settings."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("MLAKIT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ARTIFACTS = ROOT / "build" / "browser-tests"  # screenshots, and the servers' logs
START_TIMEOUT = 240  # seconds for a server to answer: JupyterLab takes a while on 2 busy cores
ROOT_FLAG = ["--allow-root"] if hasattr(os, "getuid") and os.getuid() == 0 else []


def missing(reason: str):
    """Skip the test with ``reason``; fail it instead where the browser tests are required
    (MLAKIT_BROWSER_REQUIRED=1, as .ci/run sets it)."""
    import pytest

    if os.environ.get("MLAKIT_BROWSER_REQUIRED") == "1":
        pytest.fail(f"{reason} (MLAKIT_BROWSER_REQUIRED=1)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env() -> dict:
    """The servers' (and so the kernels') environment: this checkout's mlakit, no progress bars."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.update(MLAKIT_PROGRESS="0", OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1")
    return env


class Server:
    """A server process on 127.0.0.1:``port`` with ``token``, its output in ``log``; ``stop()`` ends it."""

    def __init__(self, name: str, argv: list[str], port: int, token: str, cwd: Path, env: dict | None = None):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.name, self.port, self.token = name, port, token
        self.log = ARTIFACTS / f"{name}.log"
        self._log_file = open(self.log, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env or server_env(), stdout=self._log_file,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.started = time.perf_counter()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        sep = "&" if "?" in path else "?"
        return f"{self.base}/{path.lstrip('/')}{sep}token={self.token}"

    def wait(self, probe: str, timeout: float = START_TIMEOUT) -> float:
        """Wait until GET ``probe`` answers 200; the seconds it took since the start."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with status {self.proc.returncode}: see {self.log}\n"
                                   + self.log.read_text()[-3000:])
            try:
                with urllib.request.urlopen(self.url(probe), timeout=10) as r:
                    if r.status == 200:
                        return time.perf_counter() - self.started
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{self.name} did not answer in {timeout:.0f} s: see {self.log}\n"
                           + self.log.read_text()[-3000:])

    def stop(self) -> None:
        """End the server, then whatever it started and left behind (its kernels: the process group)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group of the server: only what it started
        except (ProcessLookupError, PermissionError):
            pass
        self._log_file.close()


def lab_settings(folder: Path) -> Path:
    """JupyterLab user settings for a test: no autosave (the notebook on disk is never written), every cell
    drawn (no windowing, so a locator finds any cell), no news or update prompts."""
    settings = {
        "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    }
    for plugin, values in settings.items():
        package, name = plugin.rsplit("/", 1)
        path = folder / package / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    return folder


def start_lab(root_dir: Path, work: Path) -> Server:
    """JupyterLab the way `make lab` starts it (127.0.0.1, a free port, a token), serving ``root_dir``."""
    port, token = free_port(), secrets.token_hex(16)
    env = server_env()
    env["JUPYTERLAB_SETTINGS_DIR"] = str(lab_settings(work / "lab-settings"))
    env["JUPYTERLAB_WORKSPACES_DIR"] = str(work / "lab-workspaces")
    env["JUPYTER_RUNTIME_DIR"] = str(work / "runtime")
    argv = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root_dir}", *ROOT_FLAG]
    return Server("jupyterlab", argv, port, token, cwd=root_dir, env=env)


def start_voila(preset: str = "deepseek-v3", **options) -> Server:
    """``mlakit dashboard`` (Voila) on 127.0.0.1 with a free port and a token; ``options`` as its flags."""
    port, token = free_port(), secrets.token_hex(16)
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in options.items()]
    argv = [sys.executable, "-m", "mlakit.cli", "dashboard", f"--preset={preset}", f"--port={port}",
            f"--token={token}", "--no-browser", *flags]
    return Server("voila", argv, port, token, cwd=ROOT)


# ---------------------------------------------------------------- the dashboard in a page

WIDGET_ERROR = "Error displaying widget"
UPDATE_TIMEOUT = 60  # seconds for the kernel to answer a moved control (a redraw of the plot included)
PLOT_LAG = 0.25  # seconds the plot may follow the numbers on the page: the browser's own work, not a redraw


def control(root, label: str):
    """The control whose label reads ``label`` ("model", "context", "precision", ...) inside ``root``:
    the widget element around that label."""
    return root.locator("xpath=.//label[contains(concat(' ', normalize-space(@class), ' '), ' widget-label ')"
                        f" and normalize-space(.)='{label}']/..").first


def numbers(root) -> dict[str, str]:
    """The table of numbers the dashboard shows, {row label: value}, as text on the page."""
    rows = root.locator(".widget-html-content table").first.locator("tr")
    out = {}
    for i in range(rows.count()):
        cells = rows.nth(i).locator("td")
        if cells.count() == 2:
            out[cells.nth(0).inner_text().strip()] = cells.nth(1).inner_text().strip()
    return out


def context_label(tokens: int) -> str:
    """How the context slider labels ``tokens`` (1024 -> 1k, 1048576 -> 1M)."""
    return f"{tokens // 1024**2}M" if tokens % 1024**2 == 0 else f"{tokens // 1024}k"


def expected_numbers(model: str, context: int, batch: int, precision: str, gpu: str) -> dict:
    """What the dashboard must show for these settings, from the library's own functions:
    :mod:`mlakit.kvcache` for the cache, :mod:`mlakit.params` for the weights."""
    from mlakit.config import ModelConfig
    from mlakit.kvcache import bytes_per_token, cache_bytes, elements_per_token, ratio_to_mha
    from mlakit.params import count_parameters
    from mlakit.viz.cache import GPU_MEMORY_GB
    from mlakit.viz.dashboard import PRECISIONS

    base = model.removesuffix("-mha")
    cfg = ModelConfig.from_preset(base)
    if model.endswith("-mha"):
        cfg = cfg.variant("mha")
    dtype = PRECISIONS[precision]
    bits = {"fp32": 32, "bf16": 16, "fp8": 8, 6: 6}[dtype]
    return {"cache_gb": cache_bytes(cfg, context, batch, dtype) / 1e9, "ratio": ratio_to_mha(cfg),
            "bytes_per_token": bytes_per_token(cfg, dtype), "elements_per_token": elements_per_token(cfg),
            "weights_gb": count_parameters(cfg) * bits / 8 / 1e9, "label": f"{context_label(context)} tokens x batch {batch}",
            "gpu": f"{GPU_MEMORY_GB[gpu]} GB {gpu}", "trained": cfg.max_position_embeddings}


def _number(text: str) -> float:
    return float(re.match(r"[\d,.]+", text).group(0).replace(",", ""))


def mismatches(shown: dict[str, str], want: dict) -> list[str]:
    """What the shown numbers get wrong against ``want`` (empty when they agree to their printed digits)."""
    problems = []
    cache_key = next((k for k in shown if k.startswith("KV cache,")), None)
    if cache_key is None:
        return [f"no KV cache row in {shown}"]
    if not cache_key.endswith(want["label"]):
        problems.append(f"cache row is {cache_key!r}, want {want['label']!r}")
    gb = _number(shown[cache_key])
    tol = 0.5 if want["cache_gb"] >= 100 else 0.006 * want["cache_gb"]  # 3 significant digits, or whole GB
    if abs(gb - want["cache_gb"]) > tol:
        problems.append(f"cache {shown[cache_key]!r}, mlakit.kvcache says {want['cache_gb']:.4g} GB")
    ratio = shown.get("against the same model with MHA", "")
    if want["ratio"] == 1:
        if ratio != "same as MHA":
            problems.append(f"ratio {ratio!r}, want 'same as MHA'")
    elif not ratio.endswith("x smaller than MHA") or abs(_number(ratio) - want["ratio"]) > 0.051:
        problems.append(f"ratio {ratio!r}, mlakit.kvcache says {want['ratio']:.3f}")
    bpt = next((v for k, v in shown.items() if k.startswith("bytes per token")), "")
    if bpt != f"{want['bytes_per_token']:,}":
        problems.append(f"bytes per token {bpt!r}, mlakit.kvcache says {want['bytes_per_token']:,}")
    ept = shown.get("elements per token per layer", "")
    if ept != f"{want['elements_per_token']:,}":
        problems.append(f"elements per token {ept!r}, mlakit.kvcache says {want['elements_per_token']:,}")
    weights = next((v for k, v in shown.items() if k.startswith("weights in")), "")
    if not weights or abs(_number(weights) - want["weights_gb"]) > 0.051:
        problems.append(f"weights {weights!r}, mlakit.params says {want['weights_gb']:.2f} GB")
    trained = shown.get("trained context of the model", "")
    if trained != f"{want['trained']:,} tokens":
        problems.append(f"trained context {trained!r}, the config says {want['trained']:,}")
    if not any(want["gpu"] in k for k in shown):
        problems.append(f"no row names the {want['gpu']}")
    return problems


def wait_for_numbers(root, settings: dict, timeout: float = UPDATE_TIMEOUT) -> dict[str, str]:
    """Wait until the dashboard in ``root`` shows the numbers of ``settings`` (keyword arguments of
    :func:`expected_numbers`); its table, or an AssertionError naming each wrong number."""
    want = expected_numbers(**settings)
    deadline = time.perf_counter() + timeout
    while True:
        shown = numbers(root)
        problems = mismatches(shown, want)
        if not problems:
            return shown
        if time.perf_counter() > deadline:
            raise AssertionError(f"after {timeout:.0f} s the dashboard for {settings} shows {shown}: "
                                 + "; ".join(problems))
        time.sleep(0.5)


def readout(root, label: str) -> str:
    return control(root, label).locator(".widget-readout").inner_text().strip()


def move_slider(root, label: str, steps: int) -> None:
    """Move a slider by ``steps`` positions with the keyboard, as a learner does after clicking its handle."""
    handle = control(root, label).locator(".noUi-handle")
    handle.click()
    key = "ArrowRight" if steps > 0 else "ArrowLeft"
    for _ in range(abs(steps)):
        handle.press(key)


def choose_model(root, label: str) -> None:
    control(root, "model").locator("select").select_option(label=label)


def press_toggle(root, label: str, value: str) -> None:
    """Click the toggle button ``value`` of the control ``label``; checks it became the active one."""
    button = control(root, label).locator("button.widget-toggle-button").filter(has_text=value).first
    button.click()
    button.page.wait_for_function("b => b.classList.contains('mod-active')", arg=button.element_handle(),
                                  timeout=UPDATE_TIMEOUT * 1000)


def plot_source(root) -> str:
    """The data URL of the dashboard's plot (its first tab's picture)."""
    return root.locator(".widget-output img").first.get_attribute("src") or ""


def _pixels(png_base64: str):
    """A PNG as RGB pixels over a white page (the kernel may draw with a transparent background)."""
    import base64
    import io

    from matplotlib.image import imread

    rgba = imread(io.BytesIO(base64.b64decode(png_base64)), format="png")
    if rgba.shape[-1] == 3:
        return rgba
    alpha = rgba[..., 3:]
    return rgba[..., :3] * alpha + (1 - alpha)


def expected_plot(settings: dict):
    """The plot the dashboard must show for ``settings``, drawn here by the library, as pixels."""
    from mlakit.viz.dashboard import CacheDashboard

    dash = CacheDashboard(settings["model"], context=settings["context"], batch_size=settings["batch"],
                          precision=settings["precision"], gpu=settings["gpu"])
    return _pixels(dash.plot.outputs[0]["data"]["image/png"])


def plot_shows(src: str, want) -> bool:
    """Whether the data URL ``src`` is the picture ``want`` (pixels, as :func:`expected_plot` gives)."""
    if not src.startswith("data:image/png;base64,"):
        return False
    shown = _pixels(src.split(",", 1)[1])
    return shown.shape == want.shape and float(abs(shown - want).max()) < 0.02


SNAPSHOT = """root => {
    const table = root.querySelector('.widget-html-content table'), img = root.querySelector('.widget-output img');
    const rows = table ? Array.from(table.querySelectorAll('tr')) : [];
    return {rows: rows.map(r => Array.from(r.querySelectorAll('td')).map(c => c.innerText.trim())),
            src: img ? img.getAttribute('src') || '' : ''};
}"""


def expected(settings: dict) -> tuple[dict, object]:
    """The numbers and the plot (pixels) the dashboard must show for ``settings``: computed before a move,
    so that the page is watched from the moment the move is made."""
    return expected_numbers(**settings), expected_plot(settings)


def wait_for_numbers_and_plot(root, settings: dict, want: tuple | None = None,
                              timeout: float = UPDATE_TIMEOUT) -> float:
    """Wait until the numbers show ``settings``; the plot beside them must be the one of the same settings
    in the same look at the page, or at most :data:`PLOT_LAG` seconds later (a plot of an earlier state
    beside the new numbers fails). ``want``: :func:`expected` of ``settings``, if already computed.
    Returns the lag seen, in s (0 when both came together)."""
    want_numbers, want_plot = want or expected(settings)
    deadline = time.perf_counter() + timeout
    while True:  # numbers and picture read in one evaluation: one instant of the page
        snap = root.evaluate(SNAPSHOT)
        shown = {row[0]: row[1] for row in snap["rows"] if len(row) == 2}
        problems = mismatches(shown, want_numbers)
        if not problems:
            break
        if time.perf_counter() > deadline:
            raise AssertionError(f"after {timeout:.0f} s the dashboard for {settings} shows {shown}: "
                                 + "; ".join(problems))
        time.sleep(0.05)  # often enough to see new numbers well before a redraw (0.3 s or more) could follow
    seen = time.perf_counter()
    if plot_shows(snap["src"], want_plot):
        return 0.0
    while True:
        src = plot_source(root)
        lag = time.perf_counter() - seen  # when the page was read (not counting the comparison)
        if plot_shows(src, want_plot) and lag <= PLOT_LAG:
            return lag
        if lag > PLOT_LAG:
            raise AssertionError(f"the numbers show {settings} but the plot beside them does not, {lag:.2f} s "
                                 f"later (at most {PLOT_LAG} s): the plot lags behind the numbers")
        time.sleep(0.05)


LABEL_BOXES = """el => {
    const label = el.querySelector(':scope > label'), next = label.nextElementSibling;
    const a = label.getBoundingClientRect(), b = next.getBoundingClientRect();
    return {right: a.right, top: a.top, bottom: a.bottom, next_left: b.left, next_top: b.top,
            next_bottom: b.bottom, align: getComputedStyle(label).textAlign};
}"""
CONTROL_LABELS = ("model", "context", "batch size", "precision", "GPU", "kv_lora_rank d_c", "rope dim d_h^R")


def assert_labels_beside_controls(root) -> None:
    """Every control's label sits to the left of its control, on the same line, right-aligned, and all
    labels end at the same x, to ipywidgets' own 2 px (the toggle buttons' labels were above their buttons)."""
    rights = {}
    for name in CONTROL_LABELS:
        box = control(root, name).evaluate(LABEL_BOXES)
        assert box["right"] <= box["next_left"] + 1, f"label {name!r} is not left of its control: {box}"
        assert box["top"] < box["next_bottom"] and box["bottom"] > box["next_top"], f"label {name!r} not beside: {box}"
        assert box["align"] == "right", f"label {name!r} is aligned {box['align']}"
        rights[name] = box["right"]
    assert max(rights.values()) - min(rights.values()) <= 3, f"labels end at different x: {rights}"  # ipywidgets: 2 px


def exercise_dashboard(root, start: dict, moves: list[tuple]) -> list[dict]:
    """Check the dashboard in ``root`` shows ``start`` (settings) with every label beside its control, then
    apply each move and check again: the numbers are mlakit.kvcache's for the new settings, and the plot
    beside them is the library's for the same settings as soon as they show (within :data:`PLOT_LAG`).

    A move is ("context", steps), ("model", value, dropdown label), ("precision", value) or ("gpu", value, label).
    Returns the settings after each move. The widgets must draw: no "Error displaying widget" in ``root``.
    """
    assert root.get_by_text(WIDGET_ERROR).count() == 0, f"{WIDGET_ERROR} in the dashboard"
    from mlakit.viz.dashboard import CONTEXTS

    settings = dict(start)
    wait_for_numbers_and_plot(root, settings)
    assert_labels_beside_controls(root)
    assert readout(root, "context") == context_label(settings["context"])
    seen = []
    for move in moves:
        kind = move[0]
        if kind not in ("context", "model", "precision", "gpu"):
            raise ValueError(f"unknown move {move}")
        if kind == "context":
            settings["context"] = CONTEXTS[CONTEXTS.index(settings["context"]) + move[1]]
        else:
            settings[kind] = move[1]
        want = expected(settings)  # before the move: the page is watched from the moment it is made
        if kind == "context":
            move_slider(root, "context", move[1])
            root.page.wait_for_function(
                "([el, want]) => el.innerText.trim() === want",
                arg=[control(root, "context").locator(".widget-readout").element_handle(),
                     context_label(settings["context"])], timeout=UPDATE_TIMEOUT * 1000)
        elif kind == "model":
            choose_model(root, move[2])
        elif kind == "precision":
            press_toggle(root, "precision", move[1])
        else:
            press_toggle(root, "GPU", move[2])
        lag = wait_for_numbers_and_plot(root, settings, want)
        print(f"{move}: the plot matched the numbers {lag:.2f} s after them")
        seen.append(dict(settings))
    assert root.get_by_text(WIDGET_ERROR).count() == 0, f"{WIDGET_ERROR} in the dashboard"
    return seen
