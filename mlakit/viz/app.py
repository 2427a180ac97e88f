"""``mlakit dashboard``: the KV-cache dashboard as a web app of its own, served by Voilà.

    mlakit dashboard                                   # http://127.0.0.1:8866/?token=...
    mlakit dashboard --preset deepseek-v2 --precision fp8 --port 8870 --no-browser

Voilà runs a notebook of one cell, ``cache_dashboard(...)`` with the settings
given, in a kernel of this Python, and serves only its output (no code, no
notebook): the same widgets, numbers and plot as in lesson 04, moved in a
browser. The server listens on 127.0.0.1 only, with an access token (printed
in the URL; ``--token`` chooses it). Ctrl+C stops it. Voilà comes with the
``browser`` extra: ``pip install 'mlakit[browser]'`` (``make lab`` and ``make
test`` install it).

:func:`register` adds the subcommand to the ``mlakit`` parser; :func:`run` is
its handler; :func:`app_notebook` and :func:`voila_command` are what it runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from .cache import GPU_MEMORY_GB, context_label
from .dashboard import CONTEXTS, MODEL_CHOICES, PRECISIONS

DEFAULT_PORT = 8866  # Voilà's own default
MAX_BATCH = 128  # the batch slider's range


def app_notebook(settings: dict) -> dict:
    """The one-cell notebook Voilà serves: the dashboard with ``settings`` (as ``cache_dashboard`` takes them)."""
    import nbformat

    args = ", ".join(f"{name}={value!r}" for name, value in settings.items())
    source = ("import matplotlib\nmatplotlib.use('Agg')\n"
              "from mlakit.viz import cache_dashboard\n"
              f"cache_dashboard({args})")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def voila_command(notebook: Path, port: int, token: str, open_browser: bool = False) -> list[str]:
    """The Voilà command line: this Python, 127.0.0.1 only, the token, no sources shown."""
    argv = [sys.executable, "-m", "voila", str(notebook), "--Voila.ip=127.0.0.1", f"--port={port}",
            "--Voila.port_retries=0", f"--token={token}", "--strip_sources=True"]
    if not open_browser:
        argv.append("--no-browser")
    return argv


def check(args: argparse.Namespace) -> str | None:
    """Why the options cannot serve a dashboard (one line), or None."""
    if importlib.util.find_spec("voila") is None:
        return "Voila is not installed: pip install 'mlakit[browser]' (make lab installs it)"
    if not 1 <= args.batch_size <= MAX_BATCH:
        return f"--batch-size {args.batch_size} is invalid: must be in [1, {MAX_BATCH}]"
    if not 1 <= args.port <= 65535:
        return f"--port {args.port} is invalid: must be in [1, 65535]"
    return None


def run(args: argparse.Namespace) -> int:
    """The handler of ``mlakit dashboard``: one line and exit status 2 on bad input, else Voila's status."""
    problem = check(args)
    if problem:
        print(f"mlakit dashboard: {problem}")
        return 2
    settings = {"preset": args.preset, "context": args.context, "batch_size": args.batch_size,
                "precision": args.precision, "gpu": args.gpu}
    token = args.token or secrets.token_hex(16)
    folder = Path(tempfile.mkdtemp(prefix="mlakit-dashboard-"))
    try:
        import nbformat

        notebook = folder / "mlakit_cache_dashboard.ipynb"
        nbformat.write(app_notebook(settings), notebook)
        print(f"\n  mlakit dashboard: http://127.0.0.1:{args.port}/?token={token}\n  (Ctrl+C stops it)\n",
              flush=True)
        proc = subprocess.Popen(voila_command(notebook, args.port, token, open_browser=not args.no_browser),
                                cwd=folder)
        previous = signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops Voila and its kernels too
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            return 0
        finally:
            signal.signal(signal.SIGTERM, previous)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def register(sub) -> None:
    """Add ``mlakit dashboard`` to the subparsers ``sub`` of the mlakit command."""
    p = sub.add_parser("dashboard", help="serve the KV-cache dashboard as a web app (Voila) on 127.0.0.1")
    p.add_argument("--preset", default="deepseek-v3", choices=list(MODEL_CHOICES),
                   help="model at start (default deepseek-v3)")
    p.add_argument("--context", type=int, default=128 * 1024, choices=CONTEXTS, metavar="TOKENS",
                   help=f"context at start, one of {context_label(CONTEXTS[0])} to {context_label(CONTEXTS[-1])} "
                        "doubling: 1024, 2048, ..., 1048576 (default 131072)")
    p.add_argument("--batch-size", type=int, default=1, help=f"sequences at start, 1 to {MAX_BATCH} (default 1)")
    p.add_argument("--precision", default="bf16", choices=list(PRECISIONS), help="default bf16")
    p.add_argument("--gpu", default="H100", choices=list(GPU_MEMORY_GB), help="default H100")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    p.add_argument("--token", default=None, help="access token (default: a new random one)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.set_defaults(func=run)
