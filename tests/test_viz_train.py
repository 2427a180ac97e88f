import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from mlakit import ModelConfig  # noqa: E402
from mlakit.data import AdditionTask, LMBatches, encode_problems, make_splits  # noqa: E402
from mlakit.model import MiniDeepSeek  # noqa: E402
from mlakit.tokenizer import CharTokenizer  # noqa: E402
from mlakit.train import TrainConfig, Trainer  # noqa: E402
from mlakit.viz.train import plot_training  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def fake_history(steps: int = 20):
    return [{"step": s, "loss_main": 3.0 / (s + 1), "loss_mtp": 1.0 / (s + 1), "loss_balance": 1e-4,
             "loss": 4.0 / (s + 1) + 1e-4} for s in range(steps)]


def test_one_curve_per_loss_part_on_a_log_axis():
    ax = plot_training(fake_history())
    assert isinstance(ax, matplotlib.axes.Axes)
    assert ax.get_yscale() == "log"
    assert ax.get_xlabel() == "training step" and "loss" in ax.get_ylabel()
    assert ax.get_title()
    lines = ax.get_lines()
    assert len(lines) == 3
    np.testing.assert_allclose(lines[0].get_xdata(), np.arange(20))
    np.testing.assert_allclose(lines[0].get_ydata(), [3.0 / (s + 1) for s in range(20)])
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("main" in t for t in labels) and any("MTP" in t for t in labels) and any("balance" in t for t in labels)
    assert len(ax.figure.axes) == 1  # no evaluations: no second axis


def test_evaluations_go_on_a_twin_axis_in_percent():
    evals = [{"step": 10, "exact_match": 0.25}, {"step": 20, "exact_match": 0.9}, {"step": 20, "other": 1}]
    ax = plot_training(fake_history(), evals, title="the loss falls and the answers become right")
    assert ax.get_title() == "the loss falls and the answers become right"
    others = [a for a in ax.figure.axes if a is not ax]
    assert len(others) == 1
    right = others[0]
    assert "exact match" in right.get_ylabel()
    (points,) = right.get_lines()
    assert list(points.get_xdata()) == [10, 20] and list(points.get_ydata()) == [0.25, 0.9]
    lo, hi = right.get_ylim()
    assert lo < 0 and hi > 1
    assert right.yaxis.get_major_formatter()(0.5, 0) == "50%"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "exact match" in labels  # one legend for both axes


def test_missing_parts_and_zero_values_are_skipped():
    history = [{"step": s, "loss_main": 1.0 + s, "loss_balance": 0.0} for s in range(5)]  # dense model: no MTP
    ax = plot_training(history)
    assert len(ax.get_lines()) == 1  # a balance loss of exactly 0 cannot be drawn on a log axis


def test_draws_into_a_given_axes_and_refuses_bad_input():
    fig, (a, b) = plt.subplots(1, 2)
    assert plot_training(fake_history(), ax=b) is b
    assert not a.get_lines()
    with pytest.raises(ValueError, match="empty"):
        plot_training([])
    with pytest.raises(ValueError, match="loss_main"):
        plot_training([{"step": 0, "loss": 1.0}])


def test_plots_a_real_trainer_with_its_evaluations():
    tok = CharTokenizer()
    cfg = ModelConfig.from_preset("nano", vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8,
                                  qk_rope_head_dim=8, v_head_dim=8, intermediate_size=64, moe_intermediate_size=16,
                                  max_position_embeddings=48)
    splits = make_splits(AdditionTask(1, 2).all_problems(), seed=0)
    batches = LMBatches(encode_problems(splits["train"], tok), batch_size=4, pad_id=tok.pad_id)
    torch.manual_seed(0)
    trainer = Trainer(MiniDeepSeek(cfg), TrainConfig(steps=4, warmup_steps=1, eval_every=2), batches,
                      eval_fn=lambda m: {"exact_match": 0.5})
    trainer.train()
    ax = plot_training(trainer)
    assert len(ax.get_lines()) == 3  # main, MTP, balance
    (right,) = [a for a in ax.figure.axes if a is not ax]
    assert list(right.get_lines()[0].get_xdata()) == [2, 4]
