"""Multi-Head Latent Attention (DeepSeek-V2 §2.1, appendix C; DeepSeek-V3 §2.1.1).

Equation for equation (V2 eqs. 9-19), with transformers' DeepseekV3Attention
names and row layouts so weights move 1:1:

- query:  c_Q = RMSNorm(W_DQ h)           ``q_a_proj``, ``q_a_layernorm`` (eps 1e-6)
          [q_C ; q_R] = W_UQ c_Q per head  ``q_b_proj``  (or ``q_proj`` straight
          from h when q_lora_rank is None, as in DeepSeek-V2-Lite)
- KV:     [c_KV ; k_R'] = W_DKV h          ``kv_a_proj_with_mqa``: the first
          kv_lora_rank rows give the latent, the last qk_rope_head_dim rows the
          rope key; c_KV = RMSNorm(c_KV)    ``kv_a_layernorm`` (eps 1e-6)
          [k_C ; v_C] = W_UK/W_UV c_KV      ``kv_b_proj``, per head [k_nope ; v] rows
- RoPE:   q_R = RoPE(q_R) per head; k_R = RoPE(k_R') ONE key shared by all heads
- score:  [q_C ; q_R] . [k_C ; k_R] * scale, scale = 1/sqrt(d_nope + d_rope),
          times YaRN's mscale^2 when configured (V3: 0.13523)
- output: o_proj(concat_heads(softmax(scores) v_C))

Only c_KV and k_R are cached: (kv_lora_rank + qk_rope_head_dim) numbers per
token per layer, 576 for V2/V3 instead of MHA's 32,768.

Two paths compute the same function:

- ``"naive"``: expand keys and values from the cached latent through kv_b_proj,
  then ordinary multi-head attention. Right for prefill, where every position
  is new anyway (and what transformers does at every step).
- ``"absorbed"``: fold W_UK into the query (q_lat = W_UK^T q_C, kv_lora_rank
  wide), attend over the cached latents directly, as multi-query attention with
  key [c_KV ; k_R] (576 wide) and value c_KV (512 wide), then apply W_UV and
  o_proj. Nothing per head is ever materialised per cached token: the right
  path for decode, where reading the cache is the cost.

``mode="auto"`` (the default) picks naive for a prefill (several tokens and nothing
cached before them: every key is new, so expanding them costs what absorbing
the queries would) and absorbed otherwise: a one-token decode step, and the
few tokens that continue a cached prefix, such as speculative decoding's
verify step (naive would re-expand every cached latent for two new tokens).
Counting multiply-adds over a long cached prefix, a chunk of new tokens after it
(chunked prefill) is cheaper naive once it passes about
d_c (d_nope + d_v) / (2 d_c - d_nope - d_v) tokens: 170 for V3's dimensions (pass
``mode="naive"`` for such chunks), never for ``nano``'s (2 d_c = d_nope + d_v). The mode is set per layer
(``MultiHeadLatentAttention(config, mode=...)``, or the ``mode`` attribute) and
can be overridden per call (``layer(x, cache, mode="absorbed")``).

A one-token decode step without a key mask can run the absorbed attention
as the kernel op :func:`mlakit.kernels.mla_decode` (``backend``: "auto",
"torch" or "triton", the layer's attribute, set by
:func:`mlakit.kernels.set_backend`, or per call): where the op resolves to
the Triton split-KV kernel (a GPU, or ``TRITON_INTERPRET=1``, and no
gradients needed) the kernel computes softmax(q . latent) latent[:d_c];
otherwise, and for several tokens or a key mask (left padding), the torch
code below runs, unchanged. W_UK, W_UV and o_proj stay in torch either way.

The cache is :class:`~mlakit.cache.LatentCache` (defined in :mod:`mlakit.cache`,
importable from here): the layer writes its new rows, then reads every cached
row back (``cache.write``, ``cache.read``); a kernel reads ``cache.storage(layer)``
and ``cache.row_lengths(layer)`` instead.
"""

from __future__ import annotations

import torch
from torch import nn

from . import kernels
from .attention import scaled_dot_product_attention
from .cache import LatentCache
from .config import ModelConfig
from .layers import RMSNorm, RotaryEmbedding, softmax_scale

MODES = ("naive", "absorbed", "auto")
LATENT_NORM_EPS = 1e-6  # q_a_layernorm and kv_a_layernorm use 1e-6 whatever rms_norm_eps is (released configs)


def check_mode(mode: str) -> str:
    """Return ``mode`` if it names an MLA computation path, else raise naming the valid ones."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is invalid: use one of {', '.join(map(repr, MODES))}")
    return mode


class MultiHeadLatentAttention(nn.Module):
    """MLA with a latent cache and two computation paths (see the module docstring)."""

    kernel_ops = ("mla_decode",)  # what kernels.set_backend reaches

    def __init__(self, config: ModelConfig, layer_idx: int = 0, mode: str = "auto", backend: str = "auto"):
        super().__init__()
        self.backend = kernels.check_backend(backend)
        if config.attn_type != "mla":
            raise ValueError(f"MultiHeadLatentAttention needs attn_type='mla', got {config.attn_type!r}")
        self.layer_idx = layer_idx
        self.mode = check_mode(mode)
        self.n_heads = config.num_attention_heads
        self.d_nope, self.d_rope, self.d_v = config.qk_nope_head_dim, config.qk_rope_head_dim, config.v_head_dim
        self.d_c, self.q_lora_rank = config.kv_lora_rank, config.q_lora_rank
        d, qk = config.hidden_size, config.qk_nope_head_dim + config.qk_rope_head_dim
        if self.q_lora_rank is None:
            self.q_proj = nn.Linear(d, self.n_heads * qk, bias=False)
        else:
            self.q_a_proj = nn.Linear(d, self.q_lora_rank, bias=False)  # W_DQ
            self.q_a_layernorm = RMSNorm(self.q_lora_rank, LATENT_NORM_EPS)
            self.q_b_proj = nn.Linear(self.q_lora_rank, self.n_heads * qk, bias=False)  # W_UQ and W_QR
        self.kv_a_proj_with_mqa = nn.Linear(d, self.d_c + self.d_rope, bias=False)  # W_DKV and W_KR
        self.kv_a_layernorm = RMSNorm(self.d_c, LATENT_NORM_EPS)
        self.kv_b_proj = nn.Linear(self.d_c, self.n_heads * (self.d_nope + self.d_v), bias=False)  # W_UK and W_UV
        self.o_proj = nn.Linear(self.n_heads * self.d_v, d, bias=False)
        self.rope = RotaryEmbedding(self.d_rope, config.rope_theta, config.rope_interleave, config.rope_scaling)
        self.scale = softmax_scale(qk, config.rope_scaling)
        self.dropout = config.attention_dropout

    # ------------------------------------------------------------- pieces
    def query(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q_C (B, n_h, T, d_nope) and the rotated q_R (B, n_h, T, d_rope)."""
        B, T, _ = x.shape
        q = self.q_proj(x) if self.q_lora_rank is None else self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.view(B, T, self.n_heads, self.d_nope + self.d_rope).transpose(1, 2)  # (B, n_h, T, d_nope + d_rope)
        q_nope, q_rope = q.split([self.d_nope, self.d_rope], dim=-1)
        return q_nope, self.rope(q_rope, positions)

    def latent(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """What MLA caches for x: [RMSNorm(c_KV) ; RoPE(k_R)], (B, T, d_c + d_rope)."""
        c_kv, k_rope = self.kv_a_proj_with_mqa(x).split([self.d_c, self.d_rope], dim=-1)  # (B, T, d_c), (B, T, d_rope)
        return torch.cat([self.kv_a_layernorm(c_kv), self.rope(k_rope, positions)], dim=-1)

    def up_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W_UK (n_h, d_nope, d_c) and W_UV (n_h, d_v, d_c): views of kv_b_proj's per-head rows."""
        w = self.kv_b_proj.weight.view(self.n_heads, self.d_nope + self.d_v, self.d_c)  # (n_h, d_nope + d_v, d_c)
        return w[:, : self.d_nope], w[:, self.d_nope:]

    # ------------------------------------------------------------- paths
    def attend_naive(self, q_nope, q_rope, latent, key_mask=None):
        """Expand per-head keys and values from the latent, then multi-head attention. Returns (B, n_h, T, d_v)."""
        B, S, _ = latent.shape
        c_kv, k_rope = latent.split([self.d_c, self.d_rope], dim=-1)  # (B, S, d_c), (B, S, d_rope)
        kv = self.kv_b_proj(c_kv).view(B, S, self.n_heads, self.d_nope + self.d_v).transpose(1, 2)  # (B, n_h, S, d_nope + d_v)
        k_nope, v = kv.split([self.d_nope, self.d_v], dim=-1)  # (B, n_h, S, d_nope), (B, n_h, S, d_v)
        k = torch.cat([k_nope, k_rope[:, None].expand(-1, self.n_heads, -1, -1)], dim=-1)  # (B, n_h, S, d_nope + d_rope)
        q = torch.cat([q_nope, q_rope], dim=-1)  # (B, n_h, T, d_nope + d_rope)
        return scaled_dot_product_attention(q, k, v, self.scale, causal=True, dropout_p=self._dropout_p(),
                                            key_mask=key_mask)

    def attend_absorbed(self, q_nope, q_rope, latent, key_mask=None, backend: str | None = None):
        """Absorb W_UK into the query and W_UV after attention; attend over the latents as MQA. Returns (B, n_h, T, d_v).

        A single query token without ``key_mask`` goes to :func:`mlakit.kernels.mla_decode` where that op
        resolves to its Triton kernel for ``backend`` (None: ``self.backend``); otherwise the torch code runs.
        """
        w_uk, w_uv = self.up_weights()
        q_latent = q_nope @ w_uk  # (B, n_h, T, d_c): q_C^T W_UK per head, (B, n_h, T, d_nope) @ (n_h, d_nope, d_c)
        q = torch.cat([q_latent, q_rope], dim=-1)  # (B, n_h, T, d_c + d_rope)
        if self._decode_kernel(q, latent, key_mask, backend or self.backend) == "triton":
            B, S = latent.shape[:2]
            lengths = torch.full((B,), S, dtype=torch.int32, device=latent.device)  # every row is filled
            o_latent = kernels.mla_decode(q[:, :, 0], latent, lengths, self.scale, self.d_c,
                                          backend="triton")[:, :, None]  # (B, n_h, 1, d_c)
        else:
            k = latent[:, None]  # (B, 1, S, d_c + d_rope): one "KV head" shared by every query head
            v = latent[:, None, :, : self.d_c]  # (B, 1, S, d_c): the latent itself is the value
            o_latent = scaled_dot_product_attention(q, k, v, self.scale, causal=True, dropout_p=self._dropout_p(),
                                                    key_mask=key_mask)  # (B, n_h, T, d_c)
        return o_latent @ w_uv.transpose(-2, -1)  # (B, n_h, T, d_v): W_UV applied after the sum, per head

    def _decode_kernel(self, q: torch.Tensor, latent: torch.Tensor, key_mask, backend: str) -> str:
        """The backend of the mla_decode op for this call: "triton" only for one query token, no key mask,
        no dropout and no gradients (the kernel is forward-only); "torch" means the code of attend_absorbed."""
        kernels.check_backend(backend)
        if backend == "torch" or q.shape[2] != 1 or key_mask is not None or self._dropout_p() > 0:
            return "torch"
        if backend == "auto" and kernels.needs_grad(q, latent):
            return "torch"
        return kernels.resolve("mla_decode", backend, q.device)  # a named "triton" that cannot run raises

    def _dropout_p(self) -> float:
        return self.dropout if self.training else 0.0

    def forward(self, x: torch.Tensor, cache: LatentCache | None = None, key_mask: torch.Tensor | None = None,
                mode: str | None = None, backend: str | None = None) -> torch.Tensor:
        """x (B, T, d) -> (B, T, d). ``key_mask`` (B, S): True for real tokens over cached + new positions;
        ``mode``: "naive", "absorbed" or "auto" (naive for a prefill of several tokens, absorbed for a decode
        step or a few tokens after a cached prefix); None uses ``self.mode``. ``backend`` overrides
        ``self.backend`` (the mla_decode kernel of a one-token absorbed step) for this call."""
        B, T, _ = x.shape
        mode = self.mode if mode is None else check_mode(mode)
        start = cache.lengths[self.layer_idx] if cache is not None else 0
        if mode == "auto":
            mode = "naive" if T > 1 and start == 0 else "absorbed"  # prefill naive; decode / verify absorbed
        positions = torch.arange(start, start + T, device=x.device)  # (T,)
        q_nope, q_rope = self.query(x, positions)
        latent = self.latent(x, positions)  # (B, T, d_c + d_rope)
        if cache is not None:
            cache.write(self.layer_idx, latent)
            latent = cache.read(self.layer_idx)  # (B, S, d_c + d_rope), S = start + T
        if mode == "naive":
            out = self.attend_naive(q_nope, q_rope, latent, key_mask)  # (B, n_h, T, d_v)
        else:
            out = self.attend_absorbed(q_nope, q_rope, latent, key_mask, backend)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_heads * self.d_v))


__all__ = ["MultiHeadLatentAttention", "LatentCache", "MODES"]
