import importlib.util
import os
import sys

import pytest
import torch


def _import_triton_for_the_interpreter() -> None:
    """Import triton once with ``TRITON_INTERPRET=1``, then take the variable out of the environment again.

    ``triton.jit`` reads the variable when a function is defined, and triton
    defines its own library (``tl.sum``, ``tl.max``, ...) when it is first
    imported: both must see it for a kernel to run on CPU tensors. Afterwards
    the variable is set only inside the tests that ask for ``triton_device``,
    so every other test, and the notebooks nbval runs in kernels of their own
    (they inherit this process's environment), keep "auto" on the torch
    reference. On a machine with a GPU nothing is changed: the kernels compile.
    """
    if torch.cuda.is_available() or "triton" in sys.modules or importlib.util.find_spec("triton") is None:
        return
    before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton.language  # noqa: F401
    finally:
        if before is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = before


_import_triton_for_the_interpreter()

from mlakit.utils import seed_everything  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state (python, numpy, torch), whatever ran before it
    and on whichever xdist worker it lands."""
    seed_everything(0)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one torch thread avoids OpenMP hand-off costs that dominate on a busy CPU.

    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``; the
    previous thread count is restored afterwards.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def triton_device(monkeypatch):
    """Where a test runs the Triton kernels: "cuda" where a GPU is visible, else "cpu" through Triton's interpreter.

    Triton's own library was defined for the interpreter when this file
    imported triton; the library defines its kernels on their backend's first
    call (``mlakit/kernels/<op>_triton.py``), inside a test that set the
    variable, and the interpreter needs it set while it runs. Only the tests
    that ask for this fixture see it: the rest keep "auto" on the torch
    reference. Skips where triton is not installed.
    """
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        return "cuda"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    return "cpu"
