"""Exercise self-checks, one module per lesson (``lesson01.py``, ``lesson02.py``, ...), all importable from here.

See :mod:`mlakit.course.checks._core` for the format every checker follows and
:func:`~mlakit.course.checks._core.diagnose`, the diagnosis ladder they share.
Notebooks write ``from mlakit.course import checks`` and
``checks.check_causal_scores(...)``. Every name is imported explicitly below:
a new checker is added to its lesson module's ``__all__`` and here (a test
fails when the two lists differ).
"""

from ._core import (
    FAIL,
    NOT_ATTEMPTED,
    PASS,
    RESULT_LINE,
    Answer,
    CheckResult,
    checker,
    use_or_fallback,
)
from .lesson01 import (
    check_append_kv,
    check_causal_scores,
    check_gqa_cache_bytes,
    check_repeat_kv,
    reference_append_kv,
    reference_causal_scores,
    reference_gqa_cache_bytes,
    reference_repeat_kv,
)
from .lesson02 import (
    check_compress_kv,
    check_expand_kv,
    check_low_rank_factors,
    check_rank_for_energy,
    reference_compress_kv,
    reference_expand_kv,
    reference_low_rank_factors,
    reference_rank_for_energy,
)
from .lesson03 import (
    check_absorbed_content_scores,
    check_decoupled_scores,
    check_rope_pairs,
    check_yarn_softmax_scale,
    reference_absorbed_content_scores,
    reference_decoupled_scores,
    reference_rope_pairs,
    reference_yarn_softmax_scale,
)
from .lesson04 import (
    check_absorbed_attention,
    check_context_that_fits,
    check_latent_cache_bytes,
    check_merge_output,
    reference_absorbed_attention,
    reference_context_that_fits,
    reference_latent_cache_bytes,
    reference_merge_output,
)
from .lesson05 import (
    check_combine_experts,
    check_ffn_active_parameters,
    check_group_limited_mask,
    check_sigmoid_topk_gate,
    reference_combine_experts,
    reference_ffn_active_parameters,
    reference_group_limited_mask,
    reference_sigmoid_topk_gate,
)
from .lesson06 import (
    check_bias_update,
    check_max_violation,
    check_seq_balance_loss,
    reference_bias_update,
    reference_max_violation,
    reference_seq_balance_loss,
)
from .lesson07 import (
    check_completion_mask,
    check_lr_schedule,
    check_mtp_input,
    check_mtp_loss,
    reference_completion_mask,
    reference_lr_schedule,
    reference_mtp_input,
    reference_mtp_loss,
)
from .lesson08 import (
    check_candidate_probability,
    check_ngram_contamination,
    check_pass_at_k,
    check_r1_answer,
    reference_candidate_probability,
    reference_ngram_contamination,
    reference_pass_at_k,
    reference_r1_answer,
)
from .lesson09 import (
    check_distill_loss,
    check_render_example,
    check_sft_loss_mask,
    reference_distill_loss,
    reference_render_example,
    reference_sft_loss_mask,
)
from .lesson10 import (
    check_aggregate_loss,
    check_clipped_objective,
    check_group_advantages,
    check_kl_k3,
    reference_aggregate_loss,
    reference_clipped_objective,
    reference_group_advantages,
    reference_kl_k3,
)
from .lesson11 import (
    check_choose_beta,
    check_run_costs,
    check_strict_reward,
    reference_choose_beta,
    reference_run_costs,
    reference_strict_reward,
)
from .lesson12 import (
    check_merge_splits,
    check_mla_decode_cost,
    check_online_softmax_step,
    reference_merge_splits,
    reference_mla_decode_cost,
    reference_online_softmax_step,
)
from .lesson13 import (
    check_bytes_per_token,
    check_pipeline_bubble,
    check_split_sizes,
    reference_bytes_per_token,
    reference_pipeline_bubble,
    reference_split_sizes,
)
from .lesson14 import (
    check_promoted_sum,
    check_quantize_1x128,
    check_training_gpu_hours,
    reference_promoted_sum,
    reference_quantize_1x128,
    reference_training_gpu_hours,
)

__all__ = [
    # the result format and the fallback
    "CheckResult", "Answer", "checker", "use_or_fallback", "PASS", "FAIL", "NOT_ATTEMPTED", "RESULT_LINE",
    # lesson 01: attention and the KV cache
    "reference_causal_scores", "check_causal_scores", "reference_append_kv", "check_append_kv",
    "reference_gqa_cache_bytes", "check_gqa_cache_bytes", "reference_repeat_kv", "check_repeat_kv",
    # lesson 02: MLA's low-rank compression
    "reference_compress_kv", "check_compress_kv", "reference_expand_kv", "check_expand_kv",
    "reference_low_rank_factors", "check_low_rank_factors", "reference_rank_for_energy", "check_rank_for_energy",
    # lesson 03: MLA's decoupled RoPE
    "reference_rope_pairs", "check_rope_pairs", "reference_decoupled_scores", "check_decoupled_scores",
    "reference_absorbed_content_scores", "check_absorbed_content_scores", "reference_yarn_softmax_scale",
    "check_yarn_softmax_scale",
    # lesson 04: MLA inference
    "reference_absorbed_attention", "check_absorbed_attention", "reference_merge_output", "check_merge_output",
    "reference_latent_cache_bytes", "check_latent_cache_bytes", "reference_context_that_fits",
    "check_context_that_fits",
    # lesson 05: DeepSeekMoE
    "reference_sigmoid_topk_gate", "check_sigmoid_topk_gate", "reference_group_limited_mask",
    "check_group_limited_mask", "reference_ffn_active_parameters", "check_ffn_active_parameters",
    "reference_combine_experts", "check_combine_experts",
    # lesson 06: load balancing
    "reference_max_violation", "check_max_violation", "reference_bias_update", "check_bias_update",
    "reference_seq_balance_loss", "check_seq_balance_loss",
    # lesson 07: the mini-DeepSeek
    "reference_mtp_input", "check_mtp_input", "reference_mtp_loss", "check_mtp_loss",
    "reference_completion_mask", "check_completion_mask", "reference_lr_schedule", "check_lr_schedule",
    # lesson 08: synthetic data
    "reference_pass_at_k", "check_pass_at_k", "reference_r1_answer", "check_r1_answer",
    "reference_ngram_contamination", "check_ngram_contamination", "reference_candidate_probability",
    "check_candidate_probability",
    # lesson 09: SFT and distillation
    "reference_sft_loss_mask", "check_sft_loss_mask", "reference_distill_loss", "check_distill_loss",
    "reference_render_example", "check_render_example",
    # lesson 10: GRPO
    "reference_group_advantages", "check_group_advantages", "reference_clipped_objective", "check_clipped_objective",
    "reference_kl_k3", "check_kl_k3", "reference_aggregate_loss", "check_aggregate_loss",
    # lesson 11: what RL costs
    "reference_strict_reward", "check_strict_reward", "reference_run_costs", "check_run_costs",
    "reference_choose_beta", "check_choose_beta",
    # lesson 12: GPU kernels
    "reference_mla_decode_cost", "check_mla_decode_cost", "reference_online_softmax_step",
    "check_online_softmax_step", "reference_merge_splits", "check_merge_splits",
    # lesson 13: scaling out
    "reference_bytes_per_token", "check_bytes_per_token", "reference_split_sizes", "check_split_sizes",
    "reference_pipeline_bubble", "check_pipeline_bubble",
    # lesson 14: cost and FP8
    "reference_training_gpu_hours", "check_training_gpu_hours", "reference_quantize_1x128", "check_quantize_1x128",
    "reference_promoted_sum", "check_promoted_sum",
]
