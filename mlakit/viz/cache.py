"""Cache-size tables and plots: how the KV cache grows with context under each attention design.

Every number comes from :mod:`mlakit.kvcache` (the formulas of DeepSeek-V2
§2.1.4, Table 1) or from a real cache allocated by
:class:`~mlakit.model.MiniDeepSeek`; nothing here types a size by hand.

- :func:`cache_table` and :func:`models_table`: rows of dicts for one model
  across designs, or for several models each with its own attention.
- :func:`plot_cache_vs_context`: cache size against context length on log
  axes, with GPU memory drawn in.
- :func:`measure_cache_bytes` and :func:`plot_measured_vs_theory`: bytes held
  by the cache of a real model after generating, beside the formula.
- :func:`plot_v2_headline`: DeepSeek-V2's "KV cache reduced by 93.3%" split
  into what MLA saves and what the 6-bit cache saves.

Sizes are in GB as vendors quote GPU memory (1 GB = 1e9 bytes), the unit of
``kvcache.comparison_table``.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..config import ModelConfig
from ..kvcache import (
    bytes_per_token,
    cache_bytes,
    comparison_table,
    decompose_v2_headline,
    default_gqa_groups,
    dtype_bits,
    elements_per_token,
    ratio_to_mha,
)

GB = 1e9  # bytes in a vendor gigabyte: GPU memory is sold in these units
GPU_MEMORY_GB = {"H100": 80, "H200": 141}  # memory of one GPU as the vendor quotes it
KIND_STYLE = {"mha": ("MHA", "tab:red"), "gqa": ("GQA", "tab:orange"), "mqa": ("MQA", "tab:green"),
              "mla": ("MLA", "tab:blue"), "mla-expanded": ("MLA, expanded K/V", "tab:purple")}
MODELS_TABLE_PRESETS = ("deepseek-v3", "deepseek-v2", "deepseek-v2-lite", "llama3-70b-gqa", "llama3-70b-mha", "nano")


# ---------------------------------------------------------------- labels
def context_label(tokens: int) -> str:
    """Context lengths as people say them: 131072 -> "128k", 1048576 -> "1M", 100 -> "100"."""
    for size, suffix in ((1024**2, "M"), (1024, "k")):
        if tokens >= size and tokens % size == 0:
            return f"{tokens // size}{suffix}"
    return f"{tokens:,}"


def dtype_label(dtype) -> str:
    """A short name for a cache precision: "bf16" stays "bf16", a bit width 6 becomes "6-bit"."""
    if isinstance(dtype, str):
        return dtype
    if isinstance(dtype, int) and not isinstance(dtype, bool):
        return f"{dtype}-bit"
    return {32: "fp32", 16: "16-bit", 8: "8-bit"}.get(dtype_bits(dtype), f"{dtype_bits(dtype)}-bit")


def gpu_label(gb: float) -> str:
    """ "80 GB GPU (H100)" for sizes of known GPUs, "48 GB GPU" otherwise."""
    names = [name for name, size in GPU_MEMORY_GB.items() if size == gb]
    return f"{gb:g} GB GPU ({', '.join(names)})" if names else f"{gb:g} GB GPU"


def _attention_label(config: ModelConfig) -> str:
    if config.attn_type == "gqa":
        return f"gqa (g={config.num_key_value_heads})"
    return config.attn_type


# ---------------------------------------------------------------- tables
def cache_table(config: ModelConfig, seq_len: int = 128 * 1024, dtype="bf16") -> list[dict]:
    """One row per attention design for ``config``: ``kvcache.comparison_table`` with its size column named.

    Columns: attention, elements/token/layer, bytes/token (all layers),
    "GB @ <context>" (one sequence of ``seq_len`` tokens, e.g. "GB @ 128k") and
    "MHA / this". MLA appears when the config is an MLA model.
    """
    size_col = f"GB @ {context_label(seq_len)}"
    rows = comparison_table(config, seq_len, dtype)
    return [{(size_col if k == "GB @ context" else k): v for k, v in row.items()} for row in rows]


def models_table(presets=MODELS_TABLE_PRESETS, seq_len: int = 128 * 1024, dtype="bf16") -> list[dict]:
    """One row per preset, each with its own attention design.

    Columns: model, attention, elements/token/layer, bytes/token (all layers),
    "GB @ <context>" and "MHA / this", the ratio to the same model with plain MHA.
    """
    size_col = f"GB @ {context_label(seq_len)}"
    rows = []
    for name in presets:
        cfg = ModelConfig.from_preset(name)
        rows.append({
            "model": name,
            "attention": _attention_label(cfg),
            "elements/token/layer": elements_per_token(cfg),
            "bytes/token": bytes_per_token(cfg, dtype),
            size_col: cache_bytes(cfg, seq_len, 1, dtype) / GB,
            "MHA / this": ratio_to_mha(cfg),
        })
    return rows


# ---------------------------------------------------------------- cache against context
def _default_title(config, kinds, dtype, batch_size, max_context, num_key_value_heads) -> str:
    sizes = {}
    for kind in kinds:
        g = (num_key_value_heads or default_gqa_groups(config)) if kind == "gqa" else None
        sizes[KIND_STYLE[kind][0]] = cache_bytes(config, max_context, batch_size, dtype, kind, g) / GB
    at = f"at {context_label(max_context)} tokens"
    big, small = max(sizes, key=sizes.get), min(sizes, key=sizes.get)
    if "MLA" in sizes and "MHA" in sizes:  # DeepSeek's comparison, whatever else is drawn
        big, small = "MHA", "MLA"
    if big == small:
        return f"{big} cache {at}: {sizes[big]:.3g} GB"
    return (f"{big} caches {sizes[big] / sizes[small]:.1f}x more than {small} "
            f"{at} ({sizes[big]:.3g} GB vs {sizes[small]:.3g} GB)")


def plot_cache_vs_context(config: ModelConfig, kinds=("mha", "gqa", "mqa"), dtype="bf16", batch_size: int = 1,
                          max_context: int = 128 * 1024, gpu_memory_gb=(80,), num_key_value_heads: int | None = None,
                          title: str | None = None, ax=None):
    """Cache size (GB, log scale) against context length (log scale), one line per design.

    ``gpu_memory_gb`` draws one horizontal line per GPU, named in the legend when
    the size is a known GPU's: ``gpu_memory_gb=(80, 141)`` gives "80 GB GPU (H100)"
    and "141 GB GPU (H200)". Sizes and GPU lines are both in vendor GB (1e9 bytes).
    Without ``title`` the title states how far apart MHA and MLA (or else the
    largest and smallest designs) are at ``max_context``. Returns the matplotlib Axes.
    """
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(7, 4.2))
    contexts = np.unique(np.geomspace(256, max_context, 60).astype(int))
    for kind in kinds:
        label, color = KIND_STYLE[kind]
        g = (num_key_value_heads or default_gqa_groups(config)) if kind == "gqa" else None
        sizes = [cache_bytes(config, int(t), batch_size, dtype, kind, g) / GB for t in contexts]
        if kind == "gqa":
            label = f"GQA ({g} KV heads)"
        ax.plot(contexts, sizes, label=label, color=color, lw=2)
    for gb, ls in zip(gpu_memory_gb, itertools.cycle(("--", "-.", (0, (5, 1, 1, 1, 1, 1)))), strict=False):
        ax.axhline(gb, color="black", ls=ls, lw=1, label=gpu_label(gb))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(_context_formatter())
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(f"KV cache (GB, {dtype_label(dtype)}, batch {batch_size})")
    ax.set_title(title or _default_title(config, kinds, dtype, batch_size, max_context, num_key_value_heads),
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=9)  # outside: the lines fill the axes
    return ax


def _context_formatter():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda x, _: context_label(int(round(x))) if x >= 1 else f"{x:g}")


# ---------------------------------------------------------------- measured against theory
def measure_cache_bytes(config: ModelConfig, contexts=(16, 32, 64, 128), batch_size: int = 1,
                        seed: int = 0, new_tokens: int = 4) -> list[dict]:
    """Bytes held by a real model's cache, filled by greedy generation, beside the formula.

    For each context length: allocate ``model.new_cache(batch_size, max_len=context)``
    for a :class:`~mlakit.model.MiniDeepSeek` of ``config``, prefill a random
    prompt of ``context - new_tokens`` tokens (at least one), then decode
    greedily one token at a time until the cache holds ``context`` positions:
    prompt + new tokens = context, so both the prefill and the decode path write
    to the cache. ``cache.nbytes`` counts the whole preallocated buffer, which is
    why the cache is allocated at exactly ``context`` positions. The FFN never
    touches the cache, so an MoE config is measured as its dense counterpart
    (``n_routed_experts=0``). The model is built once, seeded, without disturbing
    the caller's random state.

    Returns rows {"context", "attention", "batch_size", "filled", "measured_bytes" (``cache.nbytes``),
    "theory_bytes" (``kvcache.cache_bytes`` in the weights' dtype, fp32 here), "dtype"}.
    """
    import torch

    from ..model import MiniDeepSeek

    if config.is_moe:
        config = config.replace(n_routed_experts=0)
    longest = max(contexts)
    if longest > config.max_position_embeddings:
        raise ValueError(f"contexts up to {longest} tokens are longer than the model's "
                         f"max_position_embeddings={config.max_position_embeddings}; "
                         "use shorter contexts or config.replace(max_position_embeddings=...)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MiniDeepSeek(config).eval()
    dtype = model.embed_tokens.weight.dtype
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for context in contexts:
        cache = model.new_cache(batch_size, max_len=context)
        prompt_len = max(1, context - new_tokens)
        prompt = torch.randint(config.vocab_size, (batch_size, prompt_len), generator=gen).to(model.embed_tokens.weight.device)  # (B, T0)
        with torch.no_grad():
            logits = model(prompt, cache).logits[:, -1]  # (B, vocab): prefill writes T0 positions
            while cache.length < context:
                nxt = logits.argmax(-1, keepdim=True)  # (B, 1): greedy
                logits = model(nxt, cache).logits[:, -1]  # decode writes one position per step
        rows.append({
            "context": context,
            "attention": _attention_label(config),
            "batch_size": batch_size,
            "filled": cache.length,
            "measured_bytes": cache.nbytes,
            "theory_bytes": cache_bytes(config, context, batch_size, dtype=dtype),
            "dtype": dtype_label(dtype),
        })
    return rows


def plot_measured_vs_theory(measurements_by_label: dict[str, list[dict]], ax=None):
    """Formula (lines) and bytes held by real caches (open markers), log-log, one colour per label.

    ``measurements_by_label`` maps a label such as "nano, MHA" to the rows of
    :func:`measure_cache_bytes`. The title says whether every measurement equals
    the formula and how far apart the largest and smallest caches are.
    Returns the matplotlib Axes.
    """
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(7, 4.2))
    exact, largest = True, {}
    dtypes = sorted({r.get("dtype", "fp32") for rows in measurements_by_label.values() for r in rows})
    for i, (label, rows) in enumerate(measurements_by_label.items()):
        rows = sorted(rows, key=lambda r: r["context"])
        ctx = [r["context"] for r in rows]
        color = f"C{i}"
        ax.plot(ctx, [r["theory_bytes"] for r in rows], color=color, lw=2, label=f"{label}: formula")
        ax.plot(ctx, [r["measured_bytes"] for r in rows], "o", color=color, mfc="none", ms=10, mew=2,
                label=f"{label}: measured")
        exact &= all(r["measured_bytes"] == r["theory_bytes"] for r in rows)
        largest[label] = rows[-1]["measured_bytes"]
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(_context_formatter())
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(f"cache allocated (bytes, {'/'.join(dtypes)})")
    finding = "Allocated cache bytes equal the formula at every length" if exact else \
        "Allocated cache bytes differ from the formula"
    if len(largest) > 1:
        big, small = max(largest, key=largest.get), min(largest, key=largest.get)
        finding += f";\n{big} holds {largest[big] / largest[small]:.2f}x the bytes of {small}"
    ax.set_title(finding, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return ax


# ---------------------------------------------------------------- the V2 headline
def plot_v2_headline(ax=None, v2_bits: int = 6, dense_bits: int = 16):
    """Bars of cache bytes per token (all layers) behind DeepSeek-V2's "KV cache reduced by 93.3%".

    DeepSeek 67B (GQA, bf16), V2 with MLA at the same precision (what the
    architecture saves) and V2 with MLA in a 6-bit cache (what quantisation
    saves on top), each annotated with its saving against 67B; numbers from
    :func:`mlakit.kvcache.decompose_v2_headline`. Returns the matplotlib Axes.
    """
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(7, 4.2))
    d = decompose_v2_headline(v2_bits, dense_bits)
    dense = d.dense67b_elements_per_token * d.dense67b_bits / 8
    v2_same = d.v2_elements_per_token * d.dense67b_bits / 8
    v2_low = d.v2_elements_per_token * d.v2_bits / 8
    names = [f"DeepSeek 67B\nGQA, {dtype_label(dense_bits)}", f"DeepSeek-V2\nMLA, {dtype_label(dense_bits)}",
             f"DeepSeek-V2\nMLA, {dtype_label(v2_bits)} cache"]
    values = [dense / 1e3, v2_same / 1e3, v2_low / 1e3]  # kB per token
    notes = ["baseline",
             f"-{100 * d.architecture_saving:.1f}%\narchitecture (MLA)",
             f"-{100 * d.total_saving:.1f}% total\n(quantisation: -{100 * d.quantisation_saving:.1f}% more)"]
    bars = ax.bar(names, values, color=["tab:gray", "tab:blue", "tab:cyan"])
    for bar, value, note in zip(bars, values, notes, strict=True):
        ax.annotate(f"{value:,.1f} kB\n{note}", (bar.get_x() + bar.get_width() / 2, value),
                    xytext=(0, 4), textcoords="offset points", ha="center", va="bottom", fontsize=9)
    ax.set_ylim(0, values[0] * 1.3)
    ax.set_ylabel("KV cache per token, all layers (kB)")
    ax.set_title(f"V2's {100 * d.total_saving:.1f}% smaller cache: {100 * d.architecture_saving:.0f}% from MLA, "
                 f"the rest from a {dtype_label(v2_bits)} cache", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    return ax


__all__ = ["cache_table", "models_table", "plot_cache_vs_context", "measure_cache_bytes",
           "plot_measured_vs_theory", "plot_v2_headline", "context_label", "dtype_label", "gpu_label",
           "GPU_MEMORY_GB", "GB"]
