"""Plots and dashboards. Sits on top of the library; the core never imports it.

- :mod:`mlakit.viz.cache`: cache tables (:func:`cache_table`, :func:`models_table`),
  cache against context, measured against theory, the V2 "93.3%" headline.
- :mod:`mlakit.viz.dashboard`: :func:`cache_dashboard`, the interactive version (ipywidgets).
- :mod:`mlakit.viz.moe`: expert-load heatmaps, MaxVio curves, total vs active parameters.
- :mod:`mlakit.viz.train`: :func:`plot_training`, loss curves and evaluations of a training run.
- :mod:`mlakit.viz.data`: synthetic data: the data card's funnel, the LSH S-curve, pass@k
  against samples, accuracy on leaked and fresh test problems.
- :mod:`mlakit.viz.rl`: GRPO runs: rewards, held-out accuracy, completion length, k3 and entropy
  against step (:func:`plot_grpo`), pass@k and maj@k before and after RL (:func:`plot_pass_maj_at_k`).
- :mod:`mlakit.viz.rl_costs`: what RL costs: forgetting against the KL budget (:func:`plot_forgetting`),
  reward hacking (:func:`plot_hacking`), held-out measures against step (:func:`plot_measures`), the
  experiments' CSVs (:func:`read_results`).
- :mod:`mlakit.viz.sft`: SFT and distillation: held-out accuracy of several runs against step
  (:func:`plot_accuracy_curves`), R1's distilled models beside RL (:func:`plot_r1_distillation`).
- :mod:`mlakit.viz.kernels`: GPU kernels: a roofline with kernels placed on it (:func:`plot_roofline`),
  split-KV decoding's splits over a batch of cached sequences (:func:`plot_split_kv`).
- :mod:`mlakit.viz.scaling`: a 1F1B timeline (:func:`plot_pipeline_timeline`), the bubbles of 1F1B, ZB1P and
  DualPipe against PP (:func:`plot_bubbles`), compute hiding communication (:func:`plot_overlap`).
- :mod:`mlakit.viz.fp8`: FP8: accumulation error against K (:func:`plot_accumulation_error`), 1x128 tile
  scales (:func:`plot_tile_scales`), FP8 against full-precision training (:func:`plot_fp8_training`).
"""

from .cache import (
    cache_table,
    measure_cache_bytes,
    models_table,
    plot_cache_vs_context,
    plot_measured_vs_theory,
    plot_v2_headline,
)
from .dashboard import CacheDashboard, cache_dashboard, parameter_count
from .data import plot_contamination, plot_data_funnel, plot_pass_at_k, plot_s_curve
from .fp8 import plot_accumulation_error, plot_fp8_training, plot_tile_scales
from .kernels import plot_roofline, plot_split_kv
from .moe import plot_active_parameters, plot_expert_load, plot_max_violation
from .rl import plot_grpo, plot_pass_maj_at_k
from .rl_costs import plot_forgetting, plot_hacking, plot_measures, read_results, tradeoff
from .scaling import plot_bubbles, plot_overlap, plot_pipeline_timeline
from .sft import final_accuracies, plot_accuracy_curves, plot_r1_distillation
from .train import plot_training

__all__ = ["cache_table", "models_table", "plot_cache_vs_context", "measure_cache_bytes",
           "plot_measured_vs_theory", "plot_v2_headline", "cache_dashboard", "CacheDashboard",
           "parameter_count", "plot_expert_load", "plot_max_violation", "plot_active_parameters", "plot_training",
           "plot_data_funnel", "plot_s_curve", "plot_pass_at_k", "plot_contamination",
           "plot_grpo", "plot_pass_maj_at_k", "plot_forgetting", "plot_hacking", "plot_measures", "read_results",
           "tradeoff",
           "plot_accuracy_curves", "plot_r1_distillation", "final_accuracies",
           "plot_roofline", "plot_split_kv",
           "plot_pipeline_timeline", "plot_bubbles", "plot_overlap",
           "plot_accumulation_error", "plot_tile_scales", "plot_fp8_training"]
