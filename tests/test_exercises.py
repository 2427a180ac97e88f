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
from mlakit.course.grade import (
    CHECK_CALL,
    _cell_failure,
    _describe,
    _exercise_id,
    grade,
    read_solution,
)

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


def test_a_cell_of_hidden_tests_only_disappears_and_the_solution_is_recorded():
    nb = new_notebook(cells=[new_code_cell("ex = checks.check_f()"),
                             new_code_cell("### BEGIN HIDDEN TESTS\nassert f(0) == 0\n### END HIDDEN TESTS"),
                             new_code_cell("")])
    ex = exercises.build_notebook(nb, "99_demo.ipynb")
    assert [c.source for c in ex.cells] == ["ex = checks.check_f()", ""]  # an empty cell of the solution stays
    assert ex.metadata["mlakit"] == {"solution": "99_demo.ipynb"}


def test_exercise_notebooks_have_no_empty_cells_and_name_their_solution():
    for path in EXERCISES:
        nb = nbformat.read(path, as_version=4)
        assert all(c.source.strip() for c in nb.cells if c.cell_type == "code"), path.name
        assert nb.metadata["mlakit"]["solution"] == path.name
        assert (ROOT / "solutions" / path.name).is_file()


def test_solutions_list_their_exercises_and_hidden_tests():
    sol = read_solution(ROOT / "solutions" / "01_attention_and_kv_cache.ipynb")
    assert [e for e, _ in sol.exercises] == ["01.1", "01.2", "01.3", "01.4"]
    assert list(sol.hidden_tests) == ["01.3"] and "gqa_cache_bytes(1, 1, 1, 1, 1, 1)" in sol.hidden_tests["01.3"][0]
    for path in SOLUTIONS:  # every hidden test follows the check of an exercise the notebook has
        sol = read_solution(path)
        assert set(sol.hidden_tests) <= {e for e, _ in sol.exercises}, path.name


def test_failure_wording_names_the_cell_not_a_temporary_file():
    assert _describe(("SyntaxError", "invalid syntax (1969667987.py, line 3)"), 15, 7) == \
        "SyntaxError: invalid syntax (cell 7, line 3)"
    assert _cell_failure(13, ("CellTimeoutError", "cell timed out after 15 s"), 15) == \
        "cell 13 timed out after 15 s (an endless loop?)"
    assert _cell_failure(4, ("ValueError", "cache full"), 15) == "cell 4 raised ValueError: cache full"


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
    assert ".py" not in by_name["causal_scores"].message and "(cell " in by_name["causal_scores"].message
    # the cells after an unfinished exercise fall back to the library: no NameError for its name or its result
    assert not [e for e in report.errors if "NameError" in e and ("ex1" in e or "causal_scores" in e)], report.errors
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


RIGHT_01 = {  # right answers to lesson 01, written as a learner would (their own code, not the library's)
    "causal_scores": "    s = (q.double() @ k.double().mT) / q.shape[-1] ** 0.5\n"
                     "    return s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), float('-inf'))",
    "append_kv": "    end = length + k_new.shape[-2]\n"
                 "    if end > cache_k.shape[-2]:\n        raise ValueError('cache full')\n"
                 "    cache_k[..., length:end, :] = k_new\n    cache_v[..., length:end, :] = v_new\n"
                 "    return cache_k[..., :end, :], cache_v[..., :end, :], end",
    "gqa_cache_bytes": "    return 2 * num_layers * num_kv_heads * head_dim * seq_len * batch_size * bytes_per_element",
    "repeat_kv": "    return x.repeat_interleave(n_rep, dim=1)",
}


@pytest.mark.notebooks
def test_a_deleted_check_cell_counts_as_failed_and_a_duplicated_one_once(tmp_path):
    answers = dict(RIGHT_01)
    del answers["repeat_kv"]  # 01.4 left unattempted, and its check cell deleted
    path = _learner_copy(tmp_path, answers)
    nb = nbformat.read(path, as_version=4)
    nb.cells = [c for c in nb.cells if "checks.check_repeat_kv" not in c.source]
    check_3 = next(c for c in nb.cells if "checks.check_gqa_cache_bytes" in c.source)
    nb.cells.append(nbformat.v4.new_code_cell(check_3.source))  # the same check twice
    nb.cells[-1].pop("id")  # the exercise notebooks are nbformat 4.4, without cell ids
    nbformat.write(nb, path)
    report = grade(path, timeout=60)
    by_exercise = {e.exercise: e for e in report.exercises}
    assert [e.exercise for e in report.exercises] == ["01.1", "01.2", "01.3", "01.4"], report.text()
    assert by_exercise["01.4"].status == "FAIL" and "missing" in by_exercise["01.4"].message
    assert report.passed == 3 and report.total == 4 and not report.ok
    assert "Score: 3/4" in report.text()


@pytest.mark.notebooks
def test_hidden_tests_run_when_grading(tmp_path):
    # a solution whose hidden test an answer that passes the check can still fail
    solution = new_notebook(cells=[
        new_code_cell("from mlakit.course import checks"),
        new_code_cell("def gqa_cache_bytes(num_layers, num_kv_heads, head_dim, seq_len, batch_size, bytes_per_element):\n"
                      "    ### BEGIN SOLUTION\n" + RIGHT_01["gqa_cache_bytes"] + "\n    ### END SOLUTION"),
        new_code_cell("ex3 = checks.check_gqa_cache_bytes()"),
        new_code_cell("### BEGIN HIDDEN TESTS\nassert gqa_cache_bytes(1, 1, 1, 2, 1, 1) == 4\n"
                      "assert gqa_cache_bytes(1, 1, 1, 12345, 1, 1) == 24690\n### END HIDDEN TESTS"),
    ])
    (tmp_path / "solutions").mkdir()
    nbformat.write(solution, tmp_path / "solutions" / "99_demo.ipynb")
    exercises.build(tmp_path / "solutions", tmp_path / "exercises")
    learner = nbformat.read(tmp_path / "exercises" / "99_demo.ipynb", as_version=4)
    assert "HIDDEN" not in nbformat.writes(learner) and len(learner.cells) == 3
    for special_case, status in (("", "PASS"), ("    if seq_len == 12345:\n        return 0\n", "FAIL")):
        learner.cells[1].source = learner.cells[1].source.split("\n")[0] + "\n" + special_case + RIGHT_01["gqa_cache_bytes"]
        path = tmp_path / "learner.ipynb"  # renamed: the grader finds the solution from the metadata
        nbformat.write(learner, path)
        report = grade(path, timeout=60, solutions_dir=tmp_path / "solutions")
        (result,) = report.exercises
        assert result.status == status, report.text()
        if status == "FAIL":
            assert "fails hidden test 1 at line 2" in result.message
