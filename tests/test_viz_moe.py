import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from mlakit.moe import LoadTracker  # noqa: E402
from mlakit.viz.moe import (  # noqa: E402
    format_params,
    plot_active_parameters,
    plot_expert_load,
    plot_max_violation,
)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def tracker(steps: int = 6, layers: int = 3, experts: int = 8) -> LoadTracker:
    gen = torch.Generator().manual_seed(0)
    t = LoadTracker()
    for _ in range(steps):
        t.record(torch.randint(0, 20, (layers, experts), generator=gen))
    return t


def test_expert_load_heatmap_has_one_labelled_panel_per_layer():
    fig = plot_expert_load(tracker(layers=5), layer_names=[f"layer {i}" for i in range(1, 6)])
    assert isinstance(fig, matplotlib.figure.Figure)
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.images]
    assert len(panels) == 5
    for ax in panels:
        assert ax.get_xlabel() == "training step" and ax.get_ylabel() == "expert"
        assert ax.images[0].get_array().shape == (8, 6)  # experts x steps
    assert [ax.get_title() for ax in panels] == [f"layer {i}" for i in range(1, 6)]
    colorbar = [ax for ax in fig.axes if "mean load" in ax.get_ylabel()]
    assert colorbar, "the colour bar says what the colour means"
    assert fig._suptitle.get_text()


def test_expert_load_accepts_arrays_and_checks_names():
    fig = plot_expert_load(np.ones((4, 8)), steps=[10, 20, 30, 40])  # (steps, experts): one layer
    assert len([ax for ax in fig.axes if ax.images]) == 1
    with pytest.raises(ValueError, match="layer names"):
        plot_expert_load(tracker(layers=2), layer_names=["only one"])


def test_max_violation_curves_for_named_runs():
    runs = {"aux-loss-free": tracker(), "aux loss": np.linspace(2.0, 0.5, 6), "per layer": np.random.rand(6, 3)}
    ax = plot_max_violation(runs, reduce="max")
    assert isinstance(ax, matplotlib.axes.Axes)
    assert ax.get_xlabel() == "training step" and "MaxVio" in ax.get_ylabel()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(runs)
    assert ax.get_title()
    with pytest.raises(ValueError, match="reduce='median'"):
        plot_max_violation(runs, reduce="median")


def test_active_parameter_bars():
    models = {"DeepSeek-V2-Lite": {"total": 15.7e9, "active": 2.4e9}, "DeepSeek-V3": (671e9, 37e9)}
    ax = plot_active_parameters(models)
    assert isinstance(ax, matplotlib.axes.Axes)
    assert ax.get_xlabel() == "model" and ax.get_ylabel().startswith("parameters")
    assert [t.get_text() for t in ax.get_xticklabels()] == list(models)
    assert len(ax.patches) == 4
    texts = [t.get_text() for t in ax.texts]
    assert "671B" in texts and "37B\n(5.5%)" in texts
    with pytest.raises(ValueError, match="active"):
        plot_active_parameters({"bad": (1e9, 2e9)})


def test_format_params():
    assert [format_params(n) for n in (671e9, 2.4e9, 15.7e6, 512)] == ["671B", "2.4B", "15.7M", "512"]
