"""The "Check your understanding" questions that end each lesson, their answers, and the prose fixes around them.

Each lesson in notebooks/ ends with a markdown cell of two or three numbered
questions that closes with "Answers: at the end of `solutions/NN_....ipynb`."
(lesson 00, which has no solution notebook, puts its answers in a collapsed
`<details>` cell right after the questions). The solution notebook ends with the
same questions, each followed by its model answer between solution markers; the
exercise notebook built from it shows the questions with "YOUR ANSWER HERE" in
place of each answer.
"""

import re
from pathlib import Path

import nbformat
import pytest

from mlakit.course import exercises
from mlakit.course.grade import read_solution
from mlakit.layers import rope_inv_freq, yarn_mscale

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Check your understanding"
# lessons that must have questions now; lesson 04's are written separately and are checked once present
LESSONS_WITH_QUESTIONS = {"00", "01", "02", "03", "05", "06", "07"}
SOLUTIONS_WITH_ANSWERS = {"01", "02", "03", "05", "06", "07"}  # and 04 once its answers are added
ITEM = re.compile(r"^(\d+)\. (.*)")
# an answer between the markers exercises.py clears: HTML comments (they do not render) or nbgrader's "### ..." lines
ANSWER_REGION = re.compile(r"^[ \t]*(?:<!--\s*BEGIN SOLUTION\b.*?-->|### BEGIN SOLUTION.*?)\n(.*?)\n"
                           r"[ \t]*(?:<!--\s*END SOLUTION\s*-->|### END SOLUTION)", re.S | re.M)


def _read(path: Path):
    return nbformat.read(path, as_version=4)


def _number(path: Path) -> str:
    return path.name.split("_", 1)[0]


def _words(text: str) -> str:
    return " ".join(text.split())


def questions(source: str) -> list[str]:
    """The numbered items of a markdown cell: the first paragraph of each, whitespace normalised."""
    found, current = [], None
    for line in source.split("\n"):
        m = ITEM.match(line)
        if m:
            current = [m.group(2)]
            found.append(current)
        elif current is not None and line.startswith("   ") and line.strip():
            current.append(line)
        else:
            current = None  # a blank line ends the item's first paragraph
    return [_words(" ".join(q)) for q in found]


def check_cell(nb):
    """(index, cell) of the "Check your understanding" cell among the last two cells, else (None, None)."""
    for i in range(len(nb.cells) - 1, max(len(nb.cells) - 3, -1), -1):
        cell = nb.cells[i]
        if cell.cell_type == "markdown" and cell.source.startswith(HEADING):
            return i, cell
    return None, None


def _with_answers(path: Path) -> bool:
    _, cell = check_cell(_read(path))
    return cell is not None and bool(ANSWER_REGION.search(cell.source))


LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SOLUTIONS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
ANSWERED = [p for p in SOLUTIONS if _with_answers(p)]
_name = lambda p: p.name  # noqa: E731


def _cell_text(path: Path, index: int) -> str:
    return _read(path).cells[index].source


def _lesson(nn: str) -> Path:
    (path,) = [p for p in LESSONS if _number(p) == nn]
    return path


# ------------------------------------------------------------------- lessons
@pytest.mark.parametrize("path", LESSONS, ids=_name)
def test_lessons_end_with_check_your_understanding(path):
    nn = _number(path)
    nb = _read(path)
    index, cell = check_cell(nb)
    if cell is None:
        assert nn not in LESSONS_WITH_QUESTIONS, f"{path.name} does not end with '{HEADING}'"
        pytest.skip(f"{path.name} has no questions yet")
    qs = questions(cell.source)
    assert 2 <= len(qs) <= 3, qs
    assert all(len(q.split()) >= 5 and "?" in q for q in qs), qs
    last = cell.source.strip().split("\n")[-1]
    if nn == "00":  # no solution notebook: the answers sit in a collapsed cell right after the questions
        assert not list((ROOT / "solutions").glob("00_*.ipynb"))
        assert last.startswith("Answers: in the collapsed cell below")
        assert index == len(nb.cells) - 2
        answers = nb.cells[-1].source
        assert answers.startswith("<details>\n<summary>") and answers.rstrip().endswith("</details>")
        assert len(questions(answers)) == len(qs)
    else:
        assert index == len(nb.cells) - 1, f"{path.name}: the questions are not the last cell"
        assert (ROOT / "solutions" / path.name).is_file()
        # "Answers: at the end of `solutions/NN_....ipynb`." (lesson 04 words it "Answers are at the end of")
        assert re.fullmatch(rf"Answers(:| are) at the end of `solutions/{re.escape(path.name)}`\.", last), last


def test_the_lessons_that_must_have_questions_have_them():
    assert LESSONS_WITH_QUESTIONS <= {_number(p) for p in LESSONS if check_cell(_read(p))[1] is not None}


# ----------------------------------------------------------------- solutions
def test_the_solutions_that_must_have_answers_have_them():
    # solutions/04 joins the parametrised tests below as soon as its answer cell exists
    assert SOLUTIONS_WITH_ANSWERS <= {_number(p) for p in ANSWERED}


@pytest.mark.parametrize("path", ANSWERED, ids=_name)
def test_solutions_answer_the_lessons_questions(path):
    nb = _read(path)
    index, cell = check_cell(nb)
    assert index == len(nb.cells) - 1, f"{path.name}: the answers are not the last cell"
    _, lesson_cell = check_cell(_read(ROOT / "notebooks" / path.name))
    assert lesson_cell is not None, f"notebooks/{path.name} has no questions for the answers of solutions/{path.name}"
    qs = questions(cell.source)
    assert qs == questions(lesson_cell.source)
    answers = ANSWER_REGION.findall(cell.source)
    assert len(answers) == len(qs), "one answer region per question"
    assert all(len(_words(a).split()) >= 40 for a in answers), "an answer is a few sentences"


@pytest.mark.parametrize("path", ANSWERED, ids=_name)
def test_the_answer_cell_is_not_an_exercise(path, tmp_path):
    nb = _read(path)
    nb.cells = nb.cells[:check_cell(nb)[0]]
    nbformat.write(nb, tmp_path / path.name)
    with_answers, without = read_solution(path), read_solution(tmp_path / path.name)
    assert with_answers.exercises == without.exercises and with_answers.hidden_tests == without.hidden_tests


# ----------------------------------------------------------------- exercises
@pytest.mark.parametrize("path", ANSWERED, ids=_name)
def test_exercises_show_the_questions_not_the_answers(path):
    solution_cell = check_cell(_read(path))[1]
    exercise = _read(ROOT / "exercises" / path.name)
    index, cell = check_cell(exercise)
    assert index == len(exercise.cells) - 1
    qs = questions(solution_cell.source)
    assert questions(cell.source) == qs
    assert cell.source.count(exercises.ANSWER_STUB) == len(qs)
    assert "SOLUTION" not in cell.source and "**Answer.**" not in cell.source
    shown = _words(cell.source)
    for answer in ANSWER_REGION.findall(solution_cell.source):
        words = _words(answer).removeprefix("**Answer.** ").split()
        for start in range(0, len(words) - 6, 6):  # no run of seven words of an answer survives
            run = " ".join(words[start:start + 7])
            assert run not in shown or any(run in q for q in qs), run


def test_markdown_answers_between_comment_markers_are_cleared_in_place():
    src = ("## Check\n\n1. Why?\n\n   <!-- BEGIN SOLUTION -->\n   Because.\n   <!-- END SOLUTION -->\n\n"
           "2. And?\n\n<!--BEGIN SOLUTION-->\nSo.\n<!--END SOLUTION-->")
    out = exercises.exercise_source(src, "markdown")
    assert out == "## Check\n\n1. Why?\n\n   YOUR ANSWER HERE\n\n2. And?\n\nYOUR ANSWER HERE"
    # the nbgrader markers keep working in markdown, and a code cell never treats an HTML comment as a marker
    assert exercises.exercise_source("Why?\n### BEGIN SOLUTION\nBecause.\n### END SOLUTION", "markdown") == \
        "Why?\nYOUR ANSWER HERE"
    code = 'html = "<!-- BEGIN SOLUTION -->"'
    assert exercises.exercise_source(code, "code") == code


@pytest.mark.parametrize("src", ["1. Q\n<!-- BEGIN SOLUTION -->\nA", "1. Q\nA\n<!-- END SOLUTION -->"])
def test_broken_markdown_markers_are_reported(src):
    with pytest.raises(exercises.MarkerError):
        exercises.exercise_source(src, "markdown", where="nb cell 9")


# ----------------------------------------------------------------- prose fixes
def test_lesson_00_says_how_to_grade():
    text = "\n".join(c.source for c in _read(_lesson("00")).cells if c.cell_type == "markdown")
    assert "arrives with the exercise system" not in text
    assert "mlakit grade exercises/01_attention_and_kv_cache.ipynb" in text
    assert "make grade NB=exercises/01_attention_and_kv_cache.ipynb" in text


def test_lesson_01_summary_names_repeat_kv():
    nb = _read(_lesson("01"))
    (summary,) = [c.source for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("## Summary")]
    assert summary.count("`repeat_kv`") >= 2  # the GQA bullet and the exercises line


def test_lesson_03_states_the_library_rope_factor():
    text = "\n".join(c.source for c in _read(_lesson("03")).cells if c.cell_type == "markdown")
    formula = "yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)"
    assert formula in text and "`mscale / mscale_all_dim`" not in text
    # the formula the prose states is the library's: with mscale != mscale_all_dim the factor is not 1
    scaling = {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096, "mscale": 0.707,
               "mscale_all_dim": 1.0}
    _, factor = rope_inv_freq(16, 10000.0, scaling)
    assert factor == pytest.approx(yarn_mscale(40, 0.707) / yarn_mscale(40, 1.0))
    assert factor != pytest.approx(0.707 / 1.0)


def test_lesson_05_quotes_the_benchmark_forward_and_backward():
    text = _words("\n".join(c.source for c in _read(_lesson("05")).cells if c.cell_type == "markdown"))
    readme = (ROOT / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| mlakit `sorted`"))
    forward, forward_backward = re.findall(r"(\d+\.\d+x)", row)  # the two "/ floor" columns of the table
    assert "bench/moe_dispatch.py" in text
    assert forward in text and forward_backward in text and "1.2x" in text
    assert "forward + backward" in text


def test_lesson_07_lists_every_file_mlakit_train_writes():
    nb = _read(_lesson("07"))
    (section,) = [c.source for c in nb.cells if c.cell_type == "markdown"
                  and c.source.startswith("## 6. The same run from the command line")]
    prose = section.split("```")[0]
    for name in ("model.safetensors", "optimizer.safetensors", "config.json", "tokenizer.json", "metrics.csv",
                 "trainer.json"):
        assert f"`{name}`" in prose, name
