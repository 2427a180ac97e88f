"""Exercise generation from solutions, the drift check, and the grader on real and broken notebooks."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from mlakit.course import checks, exercises
from mlakit.course.grade import CHECK_CALL, _exercise_id, grade

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
EXERCISES = sorted((ROOT / "exercises").glob("*.ipynb"))


# ------------------------------------------------------------------ generation
def test_solution_region_becomes_a_stub_at_the_same_indentation():
    src = "def f(x):\n    y = 1\n    ### BEGIN SOLUTION: add one\n    return x + y\n    ### END SOLUTION\n"
    out = exercises.exercise_source(src)
    assert out == ("def f(x):\n    y = 1\n    # YOUR CODE HERE: add one\n"
                   "    raise NotImplementedError('f: add one')\n")


def test_stub_without_pointer_and_at_top_level():
    out = exercises.exercise_source("### BEGIN SOLUTION\nanswer = 42\n### END SOLUTION\nprint(answer)")
    assert out == "# YOUR CODE HERE\nraise NotImplementedError('write your code here')\nprint(answer)"


def test_hidden_tests_are_removed_and_markdown_answers_cleared():
    assert exercises.exercise_source("a = 1\n### BEGIN HIDDEN TESTS\nassert a == 1\n### END HIDDEN TESTS\nb = 2") == "a = 1\nb = 2"
    md = exercises.exercise_source("Why?\n### BEGIN SOLUTION\nBecause.\n### END SOLUTION", "markdown")
    assert md == "Why?\nYOUR ANSWER HERE"


@pytest.mark.parametrize("src", [
    "### BEGIN SOLUTION\nx = 1",
    "x = 1\n### END SOLUTION",
    "### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION",
])
def test_broken_markers_are_reported(src):
    with pytest.raises(exercises.MarkerError):
        exercises.exercise_source(src, where="nb cell 3")


def test_build_clears_outputs_and_leaves_the_solution_untouched():
    cell = new_code_cell("def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION", execution_count=3,
                         outputs=[nbformat.v4.new_output("stream", text="hi")])
    nb = new_notebook(cells=[new_markdown_cell("# t"), cell])
    before = nbformat.writes(nb)
    ex = exercises.build_notebook(nb)
    assert ex.cells[1].outputs == [] and ex.cells[1].execution_count is None
    assert "NotImplementedError" in ex.cells[1].source
    assert nbformat.writes(nb) == before


def test_there_are_exercises_for_lesson_01():
    assert [p.name for p in SOLUTIONS] == [p.name for p in EXERCISES]
    assert any(p.name.startswith("01_") for p in SOLUTIONS)


def test_exercises_are_in_step_with_solutions():
    problems = exercises.drift(ROOT / "solutions", ROOT / "exercises")
    assert problems == [], f"{problems}: run `make exercises`"


def test_exercises_contain_no_solutions_and_no_outputs():
    for path in EXERCISES:
        nb = nbformat.read(path, as_version=4)
        text = "\n".join(c.source for c in nb.cells)
        assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


def test_build_into_a_new_folder_and_stale_files_go(tmp_path):
    (tmp_path / "stale.ipynb").write_text("{}")
    written = exercises.build(ROOT / "solutions", tmp_path)
    assert sorted(p.name for p in written) == [p.name for p in SOLUTIONS]
    assert not (tmp_path / "stale.ipynb").exists()
    assert exercises.drift(ROOT / "solutions", tmp_path) == []


def test_cli_exercises_check_passes():
    out = subprocess.run([sys.executable, "-m", "mlakit.cli", "exercises", "check"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


# ------------------------------------------------------------------- grading
def test_grader_numbers_every_checker_from_its_docstring():
    names = [n for n in checks.__all__ if n.startswith("check_")]
    assert names
    for name in names:
        assert _exercise_id(name) == getattr(checks, name).__doc__.split(":", 1)[0].removeprefix("Exercise "), name
    assert _exercise_id("check_no_such_exercise") == "?"


def test_every_check_cell_calls_a_checker_the_package_exports():
    for path in SOLUTIONS:
        nb = nbformat.read(path, as_version=4)
        source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        assert "from mlakit.course import checks" in source, path.name
        for name in CHECK_CALL.findall(source):
            assert name in checks.__all__, f"{path.name} calls checks.{name}, which mlakit.course.checks does not export"


# Every solution notebook runs once in make test, under nbval, whose stored check-cell outputs are the
# PASS lines: a solution losing full marks fails there. The grader itself is run end to end on one.
@pytest.mark.notebooks
@pytest.mark.parametrize("path", SOLUTIONS[:1], ids=lambda p: p.name)
def test_grader_gives_full_marks_to_solutions(path):
    report = grade(path, timeout=120)
    assert report.total >= 3
    assert report.ok, report.text()
    assert report.errors == []


@pytest.mark.notebooks
@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.name)
def test_exercises_run_to_their_stubs_and_grade_as_not_attempted(path):
    report = grade(path, timeout=120)
    assert report.total >= 3
    assert {e.status for e in report.exercises} == {"NOT ATTEMPTED"}, report.text()
    assert report.errors == [], "only NotImplementedError may be raised in an exercise notebook"


def _learner_copy(tmp_path, replacements):
    """The lesson-01 exercise notebook with some stubs replaced by the given code."""
    nb = nbformat.read(ROOT / "exercises" / "01_attention_and_kv_cache.ipynb", as_version=4)
    for cell in nb.cells:
        for name, body in replacements.items():
            if cell.cell_type == "code" and cell.source.startswith(f"def {name}("):
                head = cell.source.split("\n")[0]
                cell.source = head + "\n" + body
    path = tmp_path / "learner.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.mark.notebooks
def test_grader_survives_syntax_errors_loops_exceptions_and_floods(tmp_path):
    path = _learner_copy(tmp_path, {
        "causal_scores": "    return q @@ k",  # syntax error
        "append_kv": "    while True:\n        pass",  # endless loop
        "gqa_cache_bytes": "    print('x' * 1000, end='')\n    for _ in range(5000): print('spam ' * 200)\n"
                           "    return 2 * num_layers * num_kv_heads * head_dim * seq_len * batch_size * bytes_per_element",
        "repeat_kv": "    return x.repeat(1, n_rep, 1, 1)",  # wrong answer
    })
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    report = grade(path, timeout=5)
    by_name = {e.name: e for e in report.exercises}
    assert by_name["causal_scores"].status == "FAIL" and "SyntaxError" in by_name["causal_scores"].message
    assert by_name["causal_scores"].exercise == "01.1"
    assert by_name["append_kv"].status == "FAIL" and "timed out" in by_name["append_kv"].message
    assert by_name["gqa_cache_bytes"].status == "PASS"  # passes despite the flood of output
    assert by_name["repeat_kv"].status == "FAIL" and "0,0,1,1" in by_name["repeat_kv"].message
    assert report.passed == 1 and not report.ok
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest  # the learner's file is never changed


@pytest.mark.notebooks
def test_grade_command_json_and_exit_status(tmp_path):
    path = _learner_copy(tmp_path, {})
    out = subprocess.run([sys.executable, "-m", "mlakit.cli", "grade", str(path), "--json", "--timeout", "60"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    data = json.loads(out.stdout)
    assert data["score"] == 0 and data["total"] >= 3 and data["ok"] is False
    missing = subprocess.run([sys.executable, "-m", "mlakit.cli", "grade", str(tmp_path / "nope.ipynb")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no such notebook" in missing.stdout
