import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mlakit.viz import plot_grpo, plot_pass_maj_at_k  # noqa: E402
from mlakit.viz.rl import moving_average  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def fake_history(steps: int = 30, kl: bool = True):
    out = []
    for s in range(steps):
        record = {"step": s, "reward": 1.0 + s / steps, "reward_std": 0.5, "reward_accuracy": 0.4 + 0.01 * s,
                  "reward_accuracy_std": 0.5, "reward_format": min(1.0, 0.1 + 0.05 * s), "reward_format_std": 0.3,
                  "completion_length": 18.0 + s / 10, "completion_length_correct": 19.0,
                  "completion_length_incorrect": float("nan") if s == 3 else 17.0, "entropy": 0.2 - s / 300}
        if kl:
            record["kl"] = 0.001 * s
        if s in (9, 19, 29):
            record["held_out_accuracy"] = 0.5 + s / 100
        out.append(record)
    return out


def test_moving_average_is_trailing_and_keeps_length():
    np.testing.assert_allclose(moving_average([1, 2, 3, 4], 2), [1.0, 1.5, 2.5, 3.5])
    np.testing.assert_allclose(moving_average([1, 2, 3], 1), [1, 2, 3])
    with pytest.raises(ValueError, match="window"):
        moving_average([1, 2], 0)


def test_four_panels_with_labelled_axes_and_the_logged_values():
    axes = plot_grpo(fake_history(), smooth=1)
    assert len(axes) == 4
    reward, length, kl, entropy = axes
    for ax in axes:
        assert ax.get_ylabel() and ax.get_title()
    assert [ax.get_xlabel() for ax in axes] == ["", "", "GRPO step", "GRPO step"]  # the shared axis, labelled once
    labels = [t.get_text() for t in reward.get_legend().get_texts()]
    assert labels == ["accuracy reward (sampled)", "format reward (sampled)", "held out accuracy (greedy)"]
    acc, fmt, held_out = reward.get_lines()
    np.testing.assert_allclose(acc.get_xdata(), np.arange(30))
    np.testing.assert_allclose(fmt.get_ydata()[:3], [0.1, 0.15, 0.2])
    assert list(held_out.get_xdata()) == [9, 19, 29]
    assert reward.yaxis.get_major_formatter()(0.5, 0) == "50%"
    assert [t.get_text() for t in length.get_legend().get_texts()] == ["all", "correct", "incorrect"]
    incorrect = length.get_lines()[2]
    assert len(incorrect.get_xdata()) == 29  # the NaN step is left out
    np.testing.assert_allclose(kl.get_lines()[0].get_ydata(), 0.001 * np.arange(30))
    assert "k3" in kl.get_ylabel() and "nats" in entropy.get_ylabel()


def test_smoothing_draws_raw_and_averaged_curves():
    axes = plot_grpo(fake_history(), panels=["entropy"], smooth=5, title="entropy falls as the policy sharpens")
    (ax,) = axes
    raw, smooth = ax.get_lines()
    assert raw.get_alpha() < 1
    np.testing.assert_allclose(smooth.get_ydata(), moving_average(raw.get_ydata(), 5))
    assert "5-step moving average" in ax.get_title()
    assert ax.figure._suptitle.get_text() == "entropy falls as the policy sharpens"


def test_missing_k3_says_why_and_a_trainer_is_accepted():
    class FakeTrainer:
        history = fake_history(kl=False)

        evals = [{"step": 0, "held_out_accuracy": 0.5}, {"step": 30, "held_out_accuracy": 0.8}]

    axes = plot_grpo(FakeTrainer(), panels=["kl", "reward"])
    kl, reward = axes
    assert not kl.get_lines()
    assert any("reference model" in t.get_text() for t in kl.texts)
    points = reward.get_lines()[-1]  # the trainer's evaluations, the base's at step 0 included
    assert list(points.get_xdata()) == [0, 30] and list(points.get_ydata()) == [0.5, 0.8]


def test_draws_into_given_axes_and_refuses_bad_input():
    _, given = plt.subplots(1, 2)
    axes = plot_grpo(fake_history(), panels=["reward", "length"], axes=given)
    assert list(axes) == list(given)
    with pytest.raises(ValueError, match="empty"):
        plot_grpo([])
    with pytest.raises(ValueError, match="panels"):
        plot_grpo(fake_history(), panels=["loss"])
    with pytest.raises(ValueError, match="one Axes per panel"):
        plot_grpo(fake_history(), axes=given)


def test_pass_and_maj_at_k_curves():
    curves = {"base": {"pass": {1: 0.5, 4: 0.8, 16: 0.95}, "maj": {1: 0.5, 4: 0.6, 16: 0.7}},
              "after RL": {"pass": {1: 0.8, 4: 0.9, 16: 0.95}}}
    ax = plot_pass_maj_at_k(curves)
    lines = ax.get_lines()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["base: pass@k", "base: maj@k", "after RL: pass@k"]
    assert list(lines[0].get_xdata()) == [1, 4, 16] and list(lines[1].get_ydata()) == [0.5, 0.6, 0.7]
    assert lines[0].get_color() == lines[1].get_color() != lines[2].get_color()
    assert ax.get_xscale() == "log" and ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
    with pytest.raises(ValueError, match="empty"):
        plot_pass_maj_at_k({})
    with pytest.raises(ValueError, match="'pass' and/or 'maj'"):
        plot_pass_maj_at_k({"base": {"best": {1: 0.5}}})
