"""Without a browser: the notebook `mlakit dashboard` serves, its command line, and the website's
table of contents (scripts/build_site.py). The browser checks are in tests/browser/."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from nbclient import NotebookClient
from script_module import load_script

from mlakit import cli
from mlakit.viz import app

ROOT = Path(__file__).resolve().parents[1]


def test_site_toc_lists_every_lesson_and_exercise_in_order():
    toc = load_script("build_site").toc_text()
    files = [line.split("file: ", 1)[1] for line in toc.splitlines() if "file: " in line]
    lessons = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    exercises = sorted(p.stem for p in (ROOT / "exercises").glob("[0-9][0-9]_*.ipynb"))
    assert files == [f"notebooks/{s}" for s in lessons] + [f"exercises/{s}" for s in exercises]
    assert "root: site/intro" in toc and (ROOT / "site" / "intro.md").is_file()
    assert lessons[0] == "00_welcome" and len(lessons) >= 11


def test_site_toc_of_a_course_without_exercises(tmp_path):
    (tmp_path / "notebooks").mkdir()
    for name in ("01_b.ipynb", "00_a.ipynb", "notes.ipynb"):
        (tmp_path / "notebooks" / name).write_text("{}")
    toc = load_script("build_site").toc_text(tmp_path)
    assert "Exercises" not in toc and "notes" not in toc
    assert toc.index("notebooks/00_a") < toc.index("notebooks/01_b")


def test_site_never_executes_notebooks():
    config = (ROOT / "site" / "_config.yml").read_text()
    assert 'execute_notebooks: "off"' in config


def test_dashboard_app_notebook_runs_and_shows_the_settings():
    nb = app.app_notebook({"preset": "deepseek-v2", "context": 4096, "batch_size": 2, "precision": "fp8",
                           "gpu": "H200"})
    assert len(nb.cells) == 1 and nb.metadata["kernelspec"]["name"] == "python3"
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    text = nb.cells[0].outputs[0]["data"]["text/plain"]
    assert text.startswith("KV-cache dashboard: deepseek-v2, 4k tokens x batch 2, fp8, 141 GB H200")
    assert "application/vnd.jupyter.widget-view+json" in nb.cells[0].outputs[0]["data"]


def test_voila_command_listens_on_localhost_with_the_token(tmp_path):
    argv = app.voila_command(tmp_path / "x.ipynb", 8899, "abc")
    assert argv[:3] == [sys.executable, "-m", "voila"]
    assert "--Voila.ip=127.0.0.1" in argv and "--port=8899" in argv and "--token=abc" in argv
    assert "--no-browser" in argv and "--no-browser" not in app.voila_command(tmp_path / "x.ipynb", 1, "t", True)


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "0"], "--batch-size 0 is invalid: must be in [1, 128]"),
    (["--batch-size", "129"], "--batch-size 129 is invalid: must be in [1, 128]"),
    (["--port", "70000"], "--port 70000 is invalid: must be in [1, 65535]"),
])
def test_dashboard_command_refuses_bad_options(argv, message, capsys):
    assert cli.main(["dashboard", *argv]) == 2
    assert capsys.readouterr().out.strip() == f"mlakit dashboard: {message}"


@pytest.mark.parametrize("argv", [["--context", "1000"], ["--preset", "gpt-4"], ["--precision", "int4"],
                                  ["--gpu", "A100"]])
def test_dashboard_command_names_the_valid_choices(argv, capsys):
    with pytest.raises(SystemExit) as err:
        cli.main(["dashboard", *argv])
    assert err.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
