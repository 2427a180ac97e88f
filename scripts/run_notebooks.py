"""Re-execute notebooks in place with outputs: how authors refresh notebooks/ and solutions/.

    python scripts/run_notebooks.py notebooks/*.ipynb

Each notebook runs in a fresh kernel from its own folder with a per-cell
timeout; progress bars are switched off so the stored outputs stay stable.

The state of the widgets the notebook displays is saved in its metadata
(nbclient's ``store_widget_state``), so JupyterLab without a kernel, or an
HTML page made from the notebook, draws the dashboards as they were. Only the
widgets that some output displays, and those they contain, are kept: a widget
built only for its numbers (and never shown) would otherwise be saved too.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

CELL_TIMEOUT = 600
KERNEL = "mlakit"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def _widget_refs(value, found: set[str]) -> None:
    """Collect the widget model ids that ``value`` refers to: "IPY_MODEL_<id>" strings (children, layout,
    style) and the model ids of widget views nested in outputs (an Output widget that shows a widget)."""
    if isinstance(value, str):
        if value.startswith("IPY_MODEL_"):
            found.add(value.removeprefix("IPY_MODEL_"))
    elif isinstance(value, dict):
        view = value.get(WIDGET_VIEW)
        if isinstance(view, dict) and "model_id" in view:
            found.add(view["model_id"])
        for item in value.values():
            _widget_refs(item, found)
    elif isinstance(value, list | tuple):
        for item in value:
            _widget_refs(item, found)


def keep_displayed_widgets(nb) -> int:
    """Drop from ``nb``'s saved widget state every widget that no output displays, directly or inside a
    displayed widget; returns how many were dropped. Without any displayed widget the state goes."""
    widgets = nb.metadata.get("widgets", {}).get(WIDGET_STATE)
    if not widgets:
        return 0
    states = widgets.get("state", {})
    todo: set[str] = set()
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            _widget_refs(output.get("data", {}), todo)
    keep: set[str] = set()
    while todo:
        model_id = todo.pop()
        if model_id in keep or model_id not in states:
            continue
        keep.add(model_id)
        _widget_refs(states[model_id].get("state", {}), todo)
    dropped = len(states) - len(keep)
    if keep:
        widgets["state"] = {model_id: state for model_id, state in states.items() if model_id in keep}
    else:
        del nb.metadata["widgets"]
    return dropped


def run(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name=KERNEL, extra_arguments=["--log-level=ERROR"],
                            record_timing=False, store_widget_state=True,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    keep_displayed_widgets(nb)
    nbformat.write(nb, path)
    return time.perf_counter() - start


def main(paths: list[str]) -> int:
    os.environ["MLAKIT_PROGRESS"] = "0"
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # no busy-waiting threads: same results, far faster when cores are shared
    for p in paths:
        seconds = run(Path(p))
        print(f"{p}: {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
