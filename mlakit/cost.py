"""What training costs: FLOPs from a config, GPU hours at a peak and an MFU, money at a price.

The arithmetic (the usual 6ND rule, with attention added):

- **Weight FLOPs.** A token costs 2 FLOPs per multiply-add with each weight it
  uses in the forward pass and twice that in the backward pass (gradients for
  the activations and for the weights): 6 x the **matmul** parameters it
  touches. Those are the active parameters (:mod:`mlakit.params`) minus the
  input embedding, which is a table lookup, not a GEMM (the RMSNorm gains are
  counted; they are 0.002% of V3).
- **Attention FLOPs.** Scores q.k and the weighted sum of values are GEMMs
  whose size grows with the context, so they are not in the parameter count:
  per layer and per token, 2 n_h (d_qk + d_v) multiply-adds per context
  position in the forward pass, 6 n_h (d_qk + d_v) with the backward. With a
  causal mask a token sees on average (T + 1) / 2 positions of a sequence of T
  (``causal=False`` counts all T, as PaLM's MFU formula does). For MLA,
  d_qk = qk_nope_head_dim + qk_rope_head_dim and d_v = v_head_dim (the
  training path expands the latent per head).
- **Multi-token prediction.** V3 trained with one MTP module: its block and
  projection, and the output head once more (shared weights, a second GEMM).
  ``include_mtp`` adds them.
- **GPU hours** = FLOPs / (peak FLOP/s x MFU) / 3600; **money** = GPU hours x price.

DeepSeek-V3's own accounting (V3 Table 1 and §1) is in :data:`V3_GPU_HOURS`:
2,664K H800 GPU hours of pre-training, 119K of context extension and 5K of
post-training, 2,788K in all, $5.576M at $2 per GPU hour. The report says that
figure covers the official training run only, "excluding the costs
associated with prior research and ablation experiments on architectures,
algorithms, or data". :func:`implied_mfu` turns its pre-training hours back
into the utilisation that our FLOP count implies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import ModelConfig
from .params import count_parameters

# --- DeepSeek-V3's reported training cost (V3 Table 1 and §1) -------------------------
V3_GPU_HOURS = {"pre-training": 2_664_000, "context extension": 119_000, "post-training": 5_000}  # H800 GPU hours
V3_TOTAL_GPU_HOURS = 2_788_000
V3_PRICE_PER_GPU_HOUR = 2.0  # USD, the rental price the report assumes
V3_TOTAL_COST = 5_576_000.0  # USD
V3_TOKENS = 14.8e12  # pre-training tokens
V3_GPUS = 2048  # H800s in the cluster
V3_GPU_HOURS_PER_TRILLION_TOKENS = 180_000  # "3.7 days on our cluster with 2048 H800 GPUs"
V3_EXCLUDED = ("prior research", "ablation experiments on architectures, algorithms and data")

# --- a dense comparison (Llama 3.1 405B's model card) ---------------------------------
LLAMA31_405B_GPU_HOURS = 30_840_000  # H100-80GB GPU hours for training Llama 3.1 405B
LLAMA31_405B_PARAMETERS = 405e9  # dense: every parameter is active for every token

# --- hardware (REFERENCE: dense, without sparsity) ------------------------------------
H800_BF16_PEAK = 989e12  # FLOP/s, dense BF16 on H100 / H800 / H200 (the H800 throttles to about 865)
H800_FP8_PEAK = 2 * H800_BF16_PEAK  # Hopper's tensor cores run dense FP8 at twice the BF16 rate
SECONDS_PER_HOUR = 3600


def _positive(name: str, value, integer: bool = False) -> float:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name}={value!r} is invalid: must be a {'positive integer' if integer else 'finite number > 0'}")
    return value


def _fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{name}={value!r} is invalid: must be a number in (0, 1]")
    return value


def matmul_parameters(config: ModelConfig, include_mtp: bool = False) -> int:
    """Parameters one token multiplies with: active parameters less the input embedding table.

    With ``include_mtp``, the MTP modules' active parameters and one more pass through the
    output head (shared, but applied again to the MTP module's hidden state).
    """
    active = count_parameters(config, active=True, include_mtp=include_mtp)
    embedding = config.vocab_size * config.hidden_size  # a lookup, no FLOPs
    if include_mtp:
        active += config.num_nextn_predict_layers * config.vocab_size * config.hidden_size  # the head again
    if config.tie_word_embeddings:  # one table serves as both: its head GEMM still runs
        return active
    return active - embedding


def attention_flops_per_token(config: ModelConfig, seq_len: int, causal: bool = True,
                              include_mtp: bool = False) -> float:
    """Training FLOPs (forward and backward) of the score and value GEMMs, per token, averaged over a sequence."""
    _positive("seq_len", seq_len, integer=True)
    c = config
    if c.attn_type == "mla":
        d_qk, d_v = c.qk_head_dim, c.v_head_dim
    else:
        d_qk = d_v = c.head_dim
    positions = (seq_len + 1) / 2 if causal else seq_len
    layers = c.num_hidden_layers + (c.num_nextn_predict_layers if include_mtp else 0)
    return 6.0 * layers * c.num_attention_heads * (d_qk + d_v) * positions


def training_flops_per_token(config: ModelConfig, seq_len: int, causal: bool = True,
                             include_mtp: bool = False) -> float:
    """6 x matmul parameters + attention: training FLOPs of one token in sequences of ``seq_len``."""
    return (6.0 * matmul_parameters(config, include_mtp)
            + attention_flops_per_token(config, seq_len, causal, include_mtp))


def training_flops(config: ModelConfig, tokens: float, seq_len: int, causal: bool = True,
                   include_mtp: bool = False) -> float:
    """Training FLOPs for ``tokens`` tokens in sequences of ``seq_len``."""
    _positive("tokens", tokens)
    return tokens * training_flops_per_token(config, seq_len, causal, include_mtp)


def gpu_hours(flops: float, peak_flops: float, mfu: float) -> float:
    """GPU hours to run ``flops`` on GPUs of ``peak_flops`` FLOP/s used at ``mfu`` (model FLOPs utilisation)."""
    _positive("flops", flops)
    _positive("peak_flops", peak_flops)
    _fraction("mfu", mfu)
    return flops / (peak_flops * mfu) / SECONDS_PER_HOUR


def cost(gpu_hours_: float, price_per_gpu_hour: float) -> float:
    """Money for ``gpu_hours_`` at ``price_per_gpu_hour``."""
    _positive("gpu_hours", gpu_hours_)
    _positive("price_per_gpu_hour", price_per_gpu_hour)
    return gpu_hours_ * price_per_gpu_hour


def implied_mfu(flops: float, gpu_hours_: float, peak_flops: float) -> float:
    """The MFU at which ``gpu_hours_`` of GPUs with ``peak_flops`` deliver ``flops``."""
    _positive("flops", flops)
    _positive("gpu_hours", gpu_hours_)
    _positive("peak_flops", peak_flops)
    return flops / (gpu_hours_ * SECONDS_PER_HOUR * peak_flops)


def pretraining_seq_len(config: ModelConfig) -> int:
    """The sequence length pre-training ran at: YaRN's original context when the config has one (V3: 4096)."""
    rs = config.rope_scaling
    if rs is not None:
        return int(rs.get("original_max_position_embeddings", config.max_position_embeddings))
    return config.max_position_embeddings


@dataclass
class CostEstimate:
    """One training run priced from its config (see :func:`estimate`)."""

    tokens: float
    seq_len: int
    flops_per_token: float
    flops: float
    peak_flops: float
    mfu: float
    gpu_hours: float
    price_per_gpu_hour: float
    cost: float

    def days_on(self, gpus: int) -> float:
        """Wall-clock days on ``gpus`` GPUs."""
        return self.gpu_hours / _positive("gpus", gpus, integer=True) / 24


def estimate(config: ModelConfig, tokens: float, peak_flops: float, mfu: float, price_per_gpu_hour: float,
             seq_len: int | None = None, causal: bool = True, include_mtp: bool = False) -> CostEstimate:
    """FLOPs, GPU hours and money to train ``config`` on ``tokens`` (``seq_len``: the pre-training context)."""
    seq_len = pretraining_seq_len(config) if seq_len is None else seq_len
    per_token = training_flops_per_token(config, seq_len, causal, include_mtp)
    flops = training_flops(config, tokens, seq_len, causal, include_mtp)
    hours = gpu_hours(flops, peak_flops, mfu)
    return CostEstimate(tokens, seq_len, per_token, flops, peak_flops, mfu, hours, price_per_gpu_hour,
                        cost(hours, price_per_gpu_hour))


def v3_cost_table(price_per_gpu_hour: float = V3_PRICE_PER_GPU_HOUR) -> list[dict]:
    """V3 Table 1: one row per stage and the total, GPU hours and USD."""
    _positive("price_per_gpu_hour", price_per_gpu_hour)
    rows = [{"stage": stage, "H800 GPU hours": hours, "USD": hours * price_per_gpu_hour}
            for stage, hours in V3_GPU_HOURS.items()]
    total = sum(V3_GPU_HOURS.values())
    rows.append({"stage": "total", "H800 GPU hours": total, "USD": total * price_per_gpu_hour})
    return rows


def dense_flops_per_token(parameters: float) -> float:
    """6 N: a dense model's training FLOPs per token from its parameter count (attention left out)."""
    return 6.0 * _positive("parameters", parameters)


def active_fraction(config: ModelConfig) -> float:
    """Active over total parameters (V3: 37.6B of 671B, 5.6%)."""
    return count_parameters(config, active=True) / count_parameters(config)


__all__ = ["V3_GPU_HOURS", "V3_TOTAL_GPU_HOURS", "V3_PRICE_PER_GPU_HOUR", "V3_TOTAL_COST", "V3_TOKENS", "V3_GPUS",
           "V3_GPU_HOURS_PER_TRILLION_TOKENS", "V3_EXCLUDED", "LLAMA31_405B_GPU_HOURS", "LLAMA31_405B_PARAMETERS",
           "H800_BF16_PEAK", "H800_FP8_PEAK", "SECONDS_PER_HOUR", "matmul_parameters", "attention_flops_per_token",
           "training_flops_per_token", "training_flops", "gpu_hours", "cost", "implied_mfu", "pretraining_seq_len",
           "CostEstimate", "estimate", "v3_cost_table", "dense_flops_per_token", "active_fraction"]
