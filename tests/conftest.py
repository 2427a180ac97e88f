import pytest
import torch

from mlakit.utils import seed_everything


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
