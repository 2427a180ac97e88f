"""rejection_sample's progress bar follows mlakit's switch unless told otherwise (lesson 08 runs it with
MLAKIT_PROGRESS=0 and must store no bar)."""

from types import SimpleNamespace

import pytest
import torch

import mlakit.data.teacher as teacher_module
from mlakit.data import AdditionTask, rejection_sample
from mlakit.tokenizer import CharTokenizer
from mlakit.utils import set_progress

TOK = CharTokenizer()


class SaysEos(torch.nn.Module):
    """Ends every completion at once: enough to run the sampling loop."""

    def forward(self, ids, cache=None, mask=None):
        logits = torch.full((ids.shape[0], ids.shape[1], TOK.vocab_size), -1e4)
        logits[:, -1, TOK.eos_id] = 0.0
        return SimpleNamespace(logits=logits)


@pytest.fixture
def bars(monkeypatch):
    made = []

    class Bar:
        def __init__(self, **kwargs):
            made.append(kwargs)

        def update(self, n=1):
            pass

        def close(self):
            pass

    monkeypatch.setattr(teacher_module, "progress_bar", lambda **kwargs: Bar(**kwargs))
    yield made
    set_progress(None)


@pytest.mark.parametrize("switch, progress, shown", [(False, None, False), (True, None, True), (False, True, True),
                                                     (True, False, False)])
def test_progress_follows_the_switch_unless_given(bars, switch, progress, shown):
    set_progress(switch)
    problems = list(AdditionTask(1, 1).generate(3, seed=0))
    result = rejection_sample(SaysEos(), TOK, AdditionTask(1, 1), problems, num_samples=2, use_cache=False,
                              progress=progress)
    assert len(result.samples) == 6
    assert (len(bars) == 1) is shown
