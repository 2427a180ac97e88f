"""The README and environment.yml stay true as the code moves: every file they name exists, every claim they make about the code holds."""

import re
from pathlib import Path

import pytest

from mlakit.kernels import registry

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "environment.yml"]
# a repository path in backticks or after "tests/" in a comment: folder/name.ext (globs and placeholders are not paths)
PATH = re.compile(r"(?<![\w./-])((?:mlakit|tests|notebooks|exercises|solutions|bench|scripts|\.ci)/[\w./-]*\w)")


def _named_paths(text: str) -> list[str]:
    return [p for p in PATH.findall(text) if not re.search(r"NN|<|\*|\.\.\.", p)]


@pytest.mark.parametrize("doc", DOCS)
def test_every_file_the_docs_name_exists(doc):
    paths = _named_paths((ROOT / doc).read_text())
    assert paths, f"{doc} names no file: the pattern is wrong"
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, f"{doc} names files that do not exist: {missing}"


def test_the_path_pattern_finds_what_it_should():
    assert _named_paths("see `mlakit/checks.py` and tests/test_checks.py, not `tests/test_checks_lessonNN.py`") == \
        ["mlakit/checks.py", "tests/test_checks.py"]


def test_the_gpu_section_says_which_triton_kernels_exist():
    gpu = (ROOT / "README.md").read_text().split("## Running on a GPU", 1)[1].split("\n## ", 1)[0]
    triton_ops = [op for op in registry.ops() if "triton" in registry._kernels_of(op)]
    if triton_ops:
        assert "No Triton kernel is registered yet" not in gpu
        for op in triton_ops:
            assert f"`{op}`" in gpu, f"the README's GPU section does not name the Triton kernel {op}"
    else:
        assert "No Triton kernel is registered yet" in gpu
