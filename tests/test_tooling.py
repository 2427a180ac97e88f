"""The environment check, the CLI, the seeding and progress helpers, and environment.yml."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

try:
    import tomllib  # Python 3.11+
except ModuleNotFoundError:  # Python 3.10: the same parser as tomli, which pytest requires there
    import tomli as tomllib

import mlakit
from mlakit import cli, doctor
from mlakit.utils import progress, progress_enabled, seed_everything, set_progress

ROOT = Path(__file__).resolve().parents[1]


def test_doctor_reports_every_package_and_passes_here():
    text, ok = doctor.report()
    assert ok
    for name in ("mlakit", "python", "torch", "numpy", "jupyterlab", "ipywidgets", "matplotlib", "nbval", "triton"):
        assert re.search(rf"^\s+{name}\s", text, re.M), name
    assert "GPU visible" in text and "Triton:" in text


def test_doctor_fails_when_a_required_package_is_missing(monkeypatch):
    monkeypatch.setattr(doctor, "REQUIRED", doctor.REQUIRED + ("no_such_package_xyz",))
    text, ok = doctor.report()
    assert not ok
    assert re.search(r"no_such_package_xyz\s+-\s+FAIL", text)


def test_doctor_marks_triton_optional_and_explains_where_it_runs(monkeypatch):
    monkeypatch.setattr(doctor, "_version", lambda name: None if name == "triton" else "1.0")
    checks, hw = doctor.run_checks()
    triton = next(c for c in checks if c.name == "triton")
    assert triton.status == "optional"
    assert "torch reference" in hw["triton_mode"]


@pytest.mark.parametrize("argv", [["-m", "mlakit.doctor"], ["-m", "mlakit.cli", "doctor"]])
def test_doctor_command_exits_zero(argv):
    out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "All required packages found." in out.stdout


def test_console_script_is_declared():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["scripts"]["mlakit"] == "mlakit.cli:main"


def test_cache_command_prints_the_v3_table(capsys):
    assert cli.main(["cache", "--preset", "deepseek-v3"]) == 0
    out = capsys.readouterr().out
    assert "70,272" in out and "56.89" in out


def test_seed_everything_reproduces_and_pins_threads():
    before = torch.get_num_threads()
    seed_everything(7, threads=1)
    a = (torch.rand(3), np.random.rand(2))
    assert torch.get_num_threads() == 1
    seed_everything(7)
    b = (torch.rand(3), np.random.rand(2))
    torch.set_num_threads(before)
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert seed_everything(0) is None  # ends a notebook cell without printing a Generator


def test_progress_switch_reaches_the_bar(monkeypatch):
    monkeypatch.setenv("MLAKIT_PROGRESS", "0")
    set_progress(None)
    assert not progress_enabled()
    assert progress(range(3)).disable
    set_progress(True)
    assert progress_enabled() and not progress(range(3)).disable
    set_progress(None)
    monkeypatch.setenv("MLAKIT_PROGRESS", "1")
    assert progress_enabled()


def _names(requirements):
    return {re.split(r"[<>=!~\[ ]", r.strip(), maxsplit=1)[0].lower() for r in requirements}


def test_environment_yml_lists_the_same_packages_as_pyproject():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = meta["optional-dependencies"]
    wanted = _names(meta["dependencies"]) | _names(extras["course"]) | _names(extras["dev"])
    conda, pip_section, in_pip = set(), [], False
    text = (ROOT / "environment.yml").read_text()
    for line in text.split("dependencies:", 1)[1].splitlines():
        item = re.match(r"^(\s*)- (.+)$", line)
        if not item:
            continue
        name = item.group(2).split("#")[0].strip()
        if name == "pip:" or name.startswith("pip:"):
            in_pip = True
            continue
        if in_pip and len(item.group(1)) > 2:
            pip_section.append(name)
        else:
            in_pip = False
            conda |= _names([name])
    conda = {"torch" if n in ("pytorch", "pytorch-cpu") else n for n in conda} - {"python", "pip"}
    assert conda == wanted, f"only in environment.yml: {conda - wanted}; only in pyproject.toml: {wanted - conda}"
    assert pip_section == ["-e ."]
    assert "- conda-forge" in text.split("dependencies:", 1)[0]


def test_version_is_exposed():
    assert re.match(r"^\d+\.\d+\.\d+", mlakit.__version__)
