"""Environment check: is everything the course needs installed, and can Triton run here?

Run ``mlakit doctor`` or ``python -m mlakit.doctor``. Three groups of packages:

- ``REQUIRED``: what the library imports (``pip install mlakit``);
- ``COURSE``: what the notebooks, the dashboards and ``mlakit grade`` need
  (``pip install mlakit[course]``, which ``make lab`` installs);
- ``DEV``: the test and authoring tools (``pip install mlakit[dev]``, which ``make test``
  installs), reported as "dev" and never a failure.

Exit status 0 when every required and course package imports, 1 otherwise;
optional packages (Triton) and dev tools never fail it.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
from dataclasses import dataclass

REQUIRED = ("mlakit", "torch", "numpy", "safetensors", "tqdm", "datasketch")  # the library's imports
COURSE = ("matplotlib", "ipywidgets", "jupyterlab", "nbclient", "nbformat")  # notebooks, dashboards, grader
DEV = ("pytest", "nbval", "hypothesis", "ruff", "transformers")  # tests and authoring
OPTIONAL = ("triton",)
MIN_PYTHON = (3, 10)


@dataclass
class Check:
    name: str
    version: str | None
    status: str  # "OK", "FAIL" or "optional"
    detail: str = ""


def _version(module_name: str) -> str | None:
    try:
        module = importlib.import_module(module_name)
    except Exception:  # noqa: BLE001 - any import failure means "not usable"
        return None
    return str(getattr(module, "__version__", "unknown"))


def run_checks() -> tuple[list[Check], dict]:
    """The package checks and a dict of facts about the hardware."""
    checks = []
    py_ok = sys.version_info[:2] >= MIN_PYTHON
    checks.append(Check("python", platform.python_version(), "OK" if py_ok else "FAIL",
                        "" if py_ok else f"needs Python >= {'.'.join(map(str, MIN_PYTHON))}"))
    for name in REQUIRED:
        v = _version(name)
        checks.append(Check(name, v, "OK" if v else "FAIL", "" if v else "not installed: run `make lab` or `pip install -e .`"))
    for name in COURSE:
        v = _version(name)
        checks.append(Check(name, v, "OK" if v else "FAIL", "" if v else "not installed: run `make lab` or `pip install -e .[course]`"))
    for name in DEV:
        v = _version(name)
        checks.append(Check(name, v, "OK" if v else "dev", "" if v else "for tests only: `make test` or `pip install -e .[dev]`"))
    for name in OPTIONAL:
        v = _version(name)
        checks.append(Check(name, v, "OK" if v else "optional", "" if v else "not installed; for the GPU kernels lesson: pip install -e .[gpu]"))
    return checks, hardware()


def hardware() -> dict:
    """GPU visibility and where Triton kernels can run."""
    import torch

    gpu = torch.cuda.is_available()
    facts = {
        "gpu": torch.cuda.get_device_name(0) if gpu else None,
        "cpu_threads": torch.get_num_threads(),
        "triton_installed": _version("triton") is not None,
        "triton_interpreter": os.environ.get("TRITON_INTERPRET") == "1",
    }
    if facts["triton_installed"] and gpu:
        facts["triton_mode"] = "GPU (compiled kernels)"
    elif facts["triton_installed"]:
        facts["triton_mode"] = "CPU interpreter (set TRITON_INTERPRET=1); torch reference otherwise"
    else:
        facts["triton_mode"] = "not available: kernels fall back to their torch reference"
    return facts


def report() -> tuple[str, bool]:
    """The printable report and whether every required check passed."""
    checks, hw = run_checks()
    width = max(len(c.name) for c in checks)
    lines = ["mlakit environment check", ""]
    for c in checks:
        line = f"  {c.name.ljust(width)}  {str(c.version or '-').ljust(12)}  {c.status}"
        lines.append(line + (f"  ({c.detail})" if c.detail else ""))
    lines += ["", f"  GPU visible: {hw['gpu'] or 'no (CPU only; every lesson runs on CPU)'}",
              f"  torch threads: {hw['cpu_threads']}", f"  Triton: {hw['triton_mode']}"]
    ok = all(c.status != "FAIL" for c in checks)
    lines += ["", "All required packages found." if ok else "Some required packages are missing (FAIL above)."]
    return "\n".join(lines), ok


def main() -> int:
    text, ok = report()
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
