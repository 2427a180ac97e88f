"""Plots and dashboards. Sits on top of the library; the core never imports it."""

from .cache import plot_cache_vs_context

__all__ = ["plot_cache_vs_context"]
