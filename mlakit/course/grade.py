"""Grade a learner's notebook: run it in a fresh kernel, read every exercise check, report a score.

``mlakit grade PATH.ipynb [--json] [--timeout S]``

The notebook is read, executed in memory and never written back. Every cell
runs with a timeout (an infinite loop is interrupted and reported); errors do
not stop the run (a syntax error in one exercise does not cost the others);
each cell's output is capped so a cell that prints without end cannot exhaust
memory. The exercises are the check cells (cells that call ``checks.check_*``);
each one's status is the line its checker printed (see
:mod:`mlakit.course.checks`), or, when the check cell could not run, the error
it raised; a checker that printed nothing is numbered from its docstring.

The grader also reads the notebook's solution (``solutions/`` of the course,
found from the name the exercise notebook records in its metadata, else from
its file name): every exercise the solution checks must appear (a deleted or
never-run check cell counts as failed), and the solution's hidden tests
(``### BEGIN HIDDEN TESTS`` regions, stripped from the exercise notebook) run
right after the check of the exercise they follow; a passing check that fails
a hidden test fails. A check cell copied twice counts once (the last run).

Exit status: 0 only when every exercise passes.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

from . import checks
from .checks import FAIL, NOT_ATTEMPTED, PASS, RESULT_LINE
from .exercises import BEGIN_HIDDEN, END_HIDDEN, METADATA_KEY

CHECK_CALL = re.compile(r"checks\.(check_\w+)\s*\(")
MAX_OUTPUT_CHARS = 20_000  # per cell; the rest is dropped (result lines are always kept)
TIMEOUT_NAME = "CellTimeoutError"
TEMP_FILE = re.compile(r"\(\d+\.py, line (\d+)\)")  # how IPython names a cell in a SyntaxError
COURSE_SOLUTIONS = Path(__file__).resolve().parents[2] / "solutions"


@dataclass
class Solution:
    """What the solution notebook says a graded notebook must contain."""

    path: Path
    exercises: list[tuple[str, str]]  # (exercise, name), in order
    hidden_tests: dict[str, list[str]]  # exercise -> hidden test sources, run after its check


def _hidden_regions(source: str) -> list[str]:
    regions, inside = [], None
    for line in source.split("\n"):
        if line.strip().startswith(BEGIN_HIDDEN):
            inside = []
        elif line.strip().startswith(END_HIDDEN) and inside is not None:
            regions.append("\n".join(inside))
            inside = None
        elif inside is not None:
            inside.append(line)
    return regions


def read_solution(path: Path) -> Solution:
    """The exercises a solution notebook checks and the hidden tests that follow each one."""
    nb = nbformat.read(path, as_version=4)
    exercises: list[tuple[str, str]] = []
    hidden: dict[str, list[str]] = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for name in CHECK_CALL.findall(cell.source):
            exercises.append((_exercise_id(name), name.removeprefix("check_")))
        regions = _hidden_regions(cell.source)
        if regions:
            if not exercises:
                raise ValueError(f"{path.name}: a hidden test comes before any exercise check")
            hidden.setdefault(exercises[-1][0], []).extend(regions)
    return Solution(path, exercises, hidden)


def find_solution(path: Path, nb, solutions_dir: str | Path | None = None) -> Path | None:
    """The solution notebook of a graded one: by the name its metadata records, else by its own file name."""
    name = nb.metadata.get(METADATA_KEY, {}).get("solution", path.name)
    for folder in ([Path(solutions_dir)] if solutions_dir else [path.resolve().parent.parent / "solutions",
                                                                 COURSE_SOLUTIONS]):
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


@dataclass
class ExerciseGrade:
    exercise: str
    name: str
    status: str  # PASS, FAIL, NOT ATTEMPTED
    message: str


@dataclass
class GradeReport:
    notebook: str
    exercises: list[ExerciseGrade] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # cells outside the checks that failed
    seconds: float = 0.0

    @property
    def passed(self) -> int:
        return sum(e.status == PASS for e in self.exercises)

    @property
    def total(self) -> int:
        return len(self.exercises)

    @property
    def ok(self) -> bool:
        return self.total > 0 and self.passed == self.total

    def to_dict(self) -> dict:
        return {"notebook": self.notebook, "score": self.passed, "total": self.total, "ok": self.ok,
                "seconds": round(self.seconds, 1), "exercises": [asdict(e) for e in self.exercises],
                "errors": self.errors}

    def text(self) -> str:
        lines = [f"Grading {self.notebook}", ""]
        width = max((len(e.exercise) + len(e.name) + 1 for e in self.exercises), default=10)
        for e in self.exercises:
            label = f"{e.exercise} {e.name}".ljust(width)
            status = {PASS: "passed", FAIL: "failed", NOT_ATTEMPTED: "not attempted"}[e.status]
            lines.append(f"  {label}  {status:<13}  {e.message}")
        if not self.exercises:
            lines.append("  no exercise checks found (cells calling checks.check_...)")
        for err in self.errors:
            lines.append(f"  note: {err}")
        lines += ["", f"Score: {self.passed}/{self.total}" + ("  all exercises pass" if self.ok else "")]
        return "\n".join(lines)


class _CappedClient(NotebookClient):
    """A NotebookClient that keeps at most MAX_OUTPUT_CHARS of stream output per cell."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._chars: dict[int, int] = {}

    def output(self, outs, msg, display_id, cell_index):
        content = msg.get("content", {})
        if msg["msg_type"] == "stream":
            used = self._chars.get(cell_index, 0)
            text = content.get("text", "")
            if used + len(text) > MAX_OUTPUT_CHARS:
                keep = "".join(line for line in text.splitlines(True) if RESULT_LINE.match(line))
                if used <= MAX_OUTPUT_CHARS:
                    keep = f"\n[output truncated after {MAX_OUTPUT_CHARS:,} characters]\n" + keep
                self._chars[cell_index] = MAX_OUTPUT_CHARS + 1
                if not keep:
                    return None
                content["text"] = keep
            else:
                self._chars[cell_index] = used + len(text)
        return super().output(outs, msg, display_id, cell_index)


def _cell_text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out.get("text", ""))
        elif out.get("output_type") in ("execute_result", "display_data"):
            parts.append(out.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def _cell_error(cell) -> tuple[str, str] | None:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            return out.get("ename", "Error"), out.get("evalue", "")
    return None


def _exercise_id(check_name: str) -> str:
    """'01.1' from the checker's docstring ("Exercise 01.1: ..."), '?' for an unknown checker."""
    doc = getattr(getattr(checks, check_name, None), "__doc__", None) or ""
    m = re.match(r"Exercise ([\w.]+):", doc)
    return m.group(1) if m else "?"


def _describe(error: tuple[str, str], timeout: float, index: int | None = None) -> str:
    ename, evalue = error
    if ename in (TIMEOUT_NAME, "KeyboardInterrupt"):
        return f"timed out after {timeout:g} s (an endless loop?)"
    if index is not None:
        evalue = TEMP_FILE.sub(lambda m: f"(cell {index}, line {m.group(1)})", evalue)
    return f"{ename}: {evalue}".strip().rstrip(":")


def _cell_failure(index: int, error: tuple[str, str], timeout: float) -> str:
    if error[0] in (TIMEOUT_NAME, "KeyboardInterrupt"):
        return f"cell {index} {_describe(error, timeout)}"
    return f"cell {index} raised {_describe(error, timeout, index)}"


def _traceback_line(cell) -> str:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            m = re.findall(r"line (\d+)", re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(out.get("traceback", []))))
            if m:
                return f" at line {m[0]}"
    return ""


def grade(path: str | Path, timeout: float = 60, kernel_name: str = "python3", startup_timeout: float = 120,
          solutions_dir: str | Path | None = None) -> GradeReport:
    """Execute the notebook at ``path`` in a fresh kernel and grade its exercise checks against its solution."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)  # the file is only read, never written
    report = GradeReport(str(path))
    solution_path = find_solution(path, nb, solutions_dir)
    solution = read_solution(solution_path) if solution_path else None
    if solution is None:
        report.errors.append(f"no solution notebook found for {path.name}: missing exercises and hidden tests "
                             "cannot be checked")
    client = _CappedClient(
        nb, timeout=timeout, startup_timeout=startup_timeout, kernel_name=kernel_name, allow_errors=True,
        interrupt_on_timeout=True, record_timing=False, extra_arguments=["--log-level=ERROR"],
        error_on_timeout={"ename": TIMEOUT_NAME, "evalue": f"cell timed out after {timeout:g} s", "traceback": []},
        resources={"metadata": {"path": str(path.parent.resolve())}},
    )
    start = time.perf_counter()
    grades: dict[str, ExerciseGrade] = {}  # by exercise: a check run twice counts once (the last run)
    last_error: tuple[int, tuple[str, str]] | None = None  # the latest failing non-check cell
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            client.execute_cell(cell, index)
            error = _cell_error(cell)
            calls = CHECK_CALL.findall(cell.source)
            if not calls:
                if error:
                    last_error = (index, error)
                    if error[0] != "NotImplementedError":
                        report.errors.append(_cell_failure(index, error, timeout))
                continue
            graded = []
            for m in (m for line in _cell_text(cell).splitlines() if (m := RESULT_LINE.match(line))):
                status, message = m["status"], m["message"]
                if status == FAIL and "is not defined" in message and last_error:  # its defining cell failed
                    message = f"the exercise cell above failed: {_describe(last_error[1], timeout, last_error[0])}"
                graded.append(ExerciseGrade(m["exercise"], m["name"], status, message))
            for name in calls[len(graded):]:  # checks that printed nothing: the cell failed before them
                if error and error[0] in (TIMEOUT_NAME, "KeyboardInterrupt"):
                    status, message = FAIL, _describe(error, timeout)
                elif last_error and last_error[1][0] == "NotImplementedError":
                    status, message = NOT_ATTEMPTED, "the exercise cell above still raises NotImplementedError"
                elif last_error:
                    status, message = FAIL, f"the exercise cell above failed: {_describe(last_error[1], timeout, last_error[0])}"
                elif error:
                    status, message = FAIL, f"the check could not run: {_describe(error, timeout, index)}"
                else:
                    status, message = FAIL, "the check printed no result"
                graded.append(ExerciseGrade(_exercise_id(name), name.removeprefix("check_"), status, message))
            for g in graded:
                grades.pop(g.exercise, None)
                grades[g.exercise] = g
                if g.status == PASS and solution:
                    _run_hidden_tests(client, g, solution.hidden_tests.get(g.exercise, []), index, timeout)
            last_error = None
    if solution:
        known = {e: i for i, (e, _) in enumerate(solution.exercises)}
        for exercise, name in solution.exercises:
            if exercise not in grades:
                grades[exercise] = ExerciseGrade(exercise, name, FAIL, f"its check cell (checks.check_{name}()) is "
                                                 "missing or never ran: put it back from the solution notebook's "
                                                 "layout, under your answer, and grade again")
        report.exercises = sorted(grades.values(), key=lambda g: (known.get(g.exercise, len(known)), g.exercise))
    else:
        report.exercises = list(grades.values())
    report.seconds = time.perf_counter() - start
    return report


def _run_hidden_tests(client: NotebookClient, grade_: ExerciseGrade, sources: list[str], index: int,
                      timeout: float) -> None:
    """Run an exercise's hidden tests in the notebook's kernel; a failure turns its PASS into a FAIL."""
    for number, source in enumerate(sources, 1):
        cell = new_code_cell(source)
        client.execute_cell(cell, index)
        error = _cell_error(cell)
        if error:
            what = "an endless loop?" if error[0] in (TIMEOUT_NAME, "KeyboardInterrupt") else error[0]
            grade_.status = FAIL
            grade_.message = (f"passes its check but fails hidden test {number}{_traceback_line(cell)} ({what}). "
                              "Hint: think about edge cases the check above did not try")
            return


def main(path: str, as_json: bool = False, timeout: float = 60, solutions_dir: str | None = None) -> int:
    if not Path(path).is_file():
        print(f"mlakit grade: no such notebook: {path}")
        return 2
    try:
        nbformat.read(path, as_version=4)
    except Exception as e:  # noqa: BLE001 - nbformat raises several kinds for a file that is not a notebook
        print(f"mlakit grade: {path} is not a Jupyter notebook ({type(e).__name__}): give an .ipynb file, "
              "e.g. exercises/01_attention_and_kv_cache.ipynb")
        return 2
    report = grade(path, timeout=timeout, solutions_dir=solutions_dir)
    print(json.dumps(report.to_dict(), indent=2) if as_json else report.text())
    return 0 if report.ok else 1
