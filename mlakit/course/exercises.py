"""Generate exercise notebooks from solution notebooks: one source, no drift.

A notebook in ``solutions/`` marks the learner's part with nbgrader's markers::

    def causal_scores(q, k):
        ### BEGIN SOLUTION
        scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
        ...
        ### END SOLUTION

Text after ``### BEGIN SOLUTION`` (``### BEGIN SOLUTION: scale, then mask``) becomes
the pointer in the stub. :func:`build_notebook` replaces every solution region
by a stub at the marker's indentation::

        # YOUR CODE HERE: scale, then mask
        raise NotImplementedError("causal_scores: scale, then mask")

removes ``### BEGIN HIDDEN TESTS`` ... ``### END HIDDEN TESTS`` regions (and a
cell left empty by that), replaces the text of markdown answers between the
markers with "YOUR ANSWER HERE", clears every output and execution count, and
records the solution's file name in the notebook's metadata (``mlakit.solution``),
where ``mlakit grade`` finds the exercises to expect and the hidden tests to run. This honours the same markers as
nbgrader's ClearSolutions / ClearHiddenTests / ClearOutput without depending on
nbgrader. ``mlakit exercises build`` (``make exercises``) writes ``exercises/``;
``mlakit exercises check`` fails when ``exercises/`` differs from what it would write.

Markdown answers: the "Check your understanding" cell that ends each solution
notebook holds the lesson's questions, each followed by its model answer
between markers on lines of their own. In a markdown cell the markers may be
written as HTML comments, which do not render (no "BEGIN SOLUTION" headings in
the solution notebook or its table of contents)::

    1. Why is decoding memory-bound?

       <!-- BEGIN SOLUTION -->
       Each weight is read for about two operations per token ...
       <!-- END SOLUTION -->

The exercise notebook keeps the question and shows ``YOUR ANSWER HERE`` at the
marker's indentation (inside the list item). ``### BEGIN SOLUTION`` lines work
in markdown too. Markdown cells are never executed, so the grader does not
count them as exercises.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
MARKDOWN_MARKER = re.compile(r"<!--\s*(BEGIN|END) SOLUTION\b(.*?)\s*-->")  # a marker line that does not render
ANSWER_STUB = "YOUR ANSWER HERE"
DEF_LINE = re.compile(r"^\s*def (\w+)\(")
METADATA_KEY = "mlakit"  # notebook metadata: {"solution": "01_attention_and_kv_cache.ipynb"}


class MarkerError(ValueError):
    """A solution region that is not closed, or closed without being opened."""


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _strip_regions(lines: list[str], begin: str, end: str, replace, where: str) -> list[str]:
    out: list[str] = []
    inside = None  # the BEGIN line while inside a region
    for line in lines:
        stripped = line.strip()
        if stripped.startswith(begin):
            if inside is not None:
                raise MarkerError(f"{where}: '{begin}' inside another region")
            inside = line
            out.extend(replace(line, out))
        elif stripped.startswith(end):
            if inside is None:
                raise MarkerError(f"{where}: '{end}' without '{begin}'")
            inside = None
        elif inside is None:
            out.append(line)
    if inside is not None:
        raise MarkerError(f"{where}: '{begin}' is never closed by '{end}'")
    return out


def _code_stub(begin_line: str, before: list[str]) -> list[str]:
    indent = _indent(begin_line)
    pointer = begin_line.strip()[len(BEGIN_SOLUTION):].lstrip(" :-").strip()
    owner = next((m.group(1) for line in reversed(before) if (m := DEF_LINE.match(line))), None)
    message = ": ".join(x for x in (owner, pointer or "write your code here") if x)
    comment = f"{indent}# YOUR CODE HERE" + (f": {pointer}" if pointer else "")
    return [comment, f"{indent}raise NotImplementedError({message!r})"]


def _markdown_markers(lines: list[str]) -> list[str]:
    """``<!-- BEGIN SOLUTION -->`` / ``<!-- END SOLUTION -->`` lines as the ``### ...`` markers."""
    out = []
    for line in lines:
        m = MARKDOWN_MARKER.fullmatch(line.strip())
        if m:
            marker = BEGIN_SOLUTION if m.group(1) == "BEGIN" else END_SOLUTION
            line = _indent(line) + marker + m.group(2)
        out.append(line)
    return out


def exercise_source(source: str, cell_type: str = "code", where: str = "cell") -> str:
    """The learner's version of one cell's source."""
    lines = source.split("\n")
    lines = _strip_regions(lines, BEGIN_HIDDEN, END_HIDDEN, lambda b, o: [], where)
    if cell_type == "code":
        lines = _strip_regions(lines, BEGIN_SOLUTION, END_SOLUTION, _code_stub, where)
    else:
        lines = _strip_regions(_markdown_markers(lines), BEGIN_SOLUTION, END_SOLUTION,
                               lambda b, o: [_indent(b) + ANSWER_STUB], where)
    return "\n".join(lines)


def build_notebook(solution: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    """The exercise notebook for a solution notebook (a new object; the input is not changed)."""
    nb = copy.deepcopy(solution)
    cells = []
    for i, cell in enumerate(nb.cells):
        source = exercise_source(cell.source, cell.cell_type, f"{name} cell {i}")
        if cell.source.strip() and not source.strip():
            continue  # only hidden tests: the learner would see an empty cell
        cell.source = source
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
        cell.pop("id", None)
        cells.append(cell)
    nb.cells = cells
    nb.metadata.pop("widgets", None)
    nb.metadata[METADATA_KEY] = {"solution": name}
    return nb


def render(nb: nbformat.NotebookNode) -> str:
    """Serialise deterministically (what is written to exercises/)."""
    nb = nbformat.from_dict(nb)
    nb.nbformat_minor = 4  # no cell ids: they would change on every build
    for cell in nb.cells:
        cell.pop("id", None)
    return nbformat.writes(nb) + "\n"


def expected_exercises(solutions_dir: Path) -> dict[str, str]:
    """Exercise file name -> text, for every notebook in solutions_dir."""
    result = {}
    for path in sorted(Path(solutions_dir).glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        result[path.name] = render(build_notebook(nb, path.name))
    return result


def build(solutions_dir: str | Path = "solutions", exercises_dir: str | Path = "exercises") -> list[Path]:
    """Write exercises_dir from solutions_dir; remove exercise notebooks whose solution is gone."""
    exercises_dir = Path(exercises_dir)
    exercises_dir.mkdir(parents=True, exist_ok=True)
    written = []
    expected = expected_exercises(Path(solutions_dir))
    for name, text in expected.items():
        target = exercises_dir / name
        if not target.exists() or target.read_text() != text:
            target.write_text(text)
        written.append(target)
    for stale in exercises_dir.glob("*.ipynb"):
        if stale.name not in expected:
            stale.unlink()
    return written


def drift(solutions_dir: str | Path = "solutions", exercises_dir: str | Path = "exercises") -> list[str]:
    """Names of exercise notebooks that differ from what :func:`build` would write (empty: in sync)."""
    expected = expected_exercises(Path(solutions_dir))
    exercises_dir = Path(exercises_dir)
    present = {p.name for p in exercises_dir.glob("*.ipynb")}
    problems = [f"{name}: missing" for name in expected if name not in present]
    problems += [f"{name}: no solution notebook" for name in sorted(present - set(expected))]
    problems += [f"{name}: differs" for name, text in expected.items()
                 if name in present and (exercises_dir / name).read_text() != text]
    return problems
