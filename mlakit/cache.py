"""Preallocated attention caches: the baseline's keys and values (MHA / GQA / MQA) and MLA's latents.

Every cache is allocated to a maximum length up front, so its memory is fixed
and ``nbytes`` is exactly what :mod:`mlakit.kvcache` predicts; writing past the
end raises :class:`CacheFullError` instead of silently reallocating.

Writing is separate from reading, so an attention backend can read the cache
its own way:

- ``write(layer, *new)`` copies the new positions of one layer in after the
  cached ones and advances ``lengths[layer]``;
- ``read(layer)`` returns views of the filled positions: what the torch
  attention paths take (``(k, v)`` for :class:`KVCache`, the latent rows for
  :class:`LatentCache`);
- ``storage(layer)`` returns the whole preallocated buffers of one layer,
  filled or not, and ``row_lengths(layer)`` the filled positions of each row
  as a (B,) int32 tensor on the cache's device: what a kernel takes, e.g.
  ``mlakit.kernels.mla_decode(q, cache.storage(layer), cache.row_lengths(layer), scale, kv_lora_rank)``,
  which reads (B, max_len, d_c + d_rope) storage up to each row's length;
- ``append(layer, *new)`` is ``write`` then ``read``, the one call the lessons use.

Every row of a batch is written together, so all rows hold the same number of
positions; a left-padded batch counts its padding among them and hides it with
the attention mask (a kernel that only takes lengths needs that mask too).

``truncate`` forgets positions (a rejected draft in speculative decoding) and
``expand(G)`` repeats every row G times, prompt-major, for G samples per prompt
from one prefill (GRPO's group).
"""

from __future__ import annotations

import copy

import torch

from .config import ModelConfig


class CacheFullError(RuntimeError):
    """Raised when a write would pass the cache's maximum length."""


class PreallocatedCache:
    """Per-layer buffers preallocated to ``max_len`` positions along ``time_dim``, filled left to right.

    Every buffer is (layers, B, ...) with its positions along ``time_dim``.
    Subclasses name their buffers (they become attributes: ``k`` and ``v``, or
    ``latent``). ``lengths[layer]`` counts the positions written to one layer;
    it is a plain list that may be set directly (a benchmark rewinding the cache).
    Methods that return one tensor per buffer return the tensor alone when
    there is one buffer (:class:`LatentCache`).
    """

    def __init__(self, buffers: dict[str, torch.Tensor], max_len: int, time_dim: int):
        self._names = list(buffers)
        for name, tensor in buffers.items():
            setattr(self, name, tensor)
        self.max_len, self.time_dim = max_len, time_dim
        self.lengths = [0] * next(iter(buffers.values())).shape[0]

    @staticmethod
    def _check_sizes(**sizes: int) -> None:
        for name, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"cache {name}={value!r} is invalid: must be a positive integer")

    def _buffers(self) -> list[torch.Tensor]:
        return [getattr(self, name) for name in self._names]

    def _one_or_all(self, tensors: tuple[torch.Tensor, ...]):
        return tensors[0] if len(tensors) == 1 else tensors

    # ------------------------------------------------------------ sizes
    @property
    def length(self) -> int:
        """Positions held by the last layer (all layers hold the same after a full forward pass)."""
        return self.lengths[-1]

    @property
    def num_layers(self) -> int:
        return len(self.lengths)

    @property
    def batch_size(self) -> int:
        return self._buffers()[0].shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self._buffers()[0].dtype

    @property
    def device(self) -> torch.device:
        return self._buffers()[0].device

    @property
    def nbytes(self) -> int:
        """Bytes held by the cache tensors (allocated, whether filled or not)."""
        return sum(buf.nbytes for buf in self._buffers())

    def bytes_per_token(self) -> int:
        """Bytes one position of one sequence occupies across all layers."""
        return self.nbytes // (self.batch_size * self.max_len)

    # ------------------------------------------------------ write / read
    def write(self, layer: int, *new: torch.Tensor) -> None:
        """Copy the new positions of one layer (one tensor per buffer, without the layer axis) in
        after the cached ones."""
        start = self.lengths[layer]
        t = new[0].shape[self.time_dim - 1]  # the buffers have a leading layer axis, the inputs do not
        end = start + t
        if end > self.max_len:
            raise CacheFullError(
                f"{type(self).__name__} is full: layer {layer} holds {start} of {self.max_len} positions and "
                f"{t} more were written; allocate a longer cache (max_len) or shorten the sequence"
            )
        for buf, value in zip(self._buffers(), new, strict=True):
            buf[layer].narrow(self.time_dim - 1, start, t).copy_(value)
        self.lengths[layer] = end

    def read(self, layer: int):
        """Views of the filled positions of one layer: one tensor per buffer, (B, ..., S, ...)."""
        n = self.lengths[layer]
        return self._one_or_all(tuple(buf[layer].narrow(self.time_dim - 1, 0, n) for buf in self._buffers()))

    def storage(self, layer: int):
        """The whole preallocated buffers of one layer, filled or not (max_len positions): for a kernel
        that reads up to :meth:`row_lengths` itself. Views: writing to them writes the cache."""
        return self._one_or_all(tuple(buf[layer] for buf in self._buffers()))

    def row_lengths(self, layer: int) -> torch.Tensor:
        """Filled positions of each row of one layer, (B,) int32 on the cache's device (padding included)."""
        return torch.full((self.batch_size,), self.lengths[layer], dtype=torch.int32, device=self.device)

    def append(self, layer: int, *new: torch.Tensor):
        """:meth:`write` then :meth:`read`: write the new positions, return everything cached for the layer."""
        self.write(layer, *new)
        return self.read(layer)

    # ------------------------------------------------------ bookkeeping
    def reset(self) -> None:
        self.lengths = [0] * len(self.lengths)

    def truncate(self, length: int, layers: range | None = None) -> None:
        """Forget every position from ``length`` on (in ``layers``, default all): a rejected draft token
        in speculative decoding. The memory stays allocated and is overwritten by the next write."""
        for layer in layers if layers is not None else range(len(self.lengths)):
            if not 0 <= length <= self.lengths[layer]:
                raise ValueError(f"cannot truncate layer {layer} holding {self.lengths[layer]} positions to {length}")
            self.lengths[layer] = length

    def expand(self, group_size: int) -> PreallocatedCache:
        """A new cache of batch B * group_size in which row i * group_size + j is a copy of row i
        (prompt-major, as ``repeat_interleave``): ``group_size`` samples continue each prompt from one
        prefill. Same class, max_len and lengths; this cache is left unchanged (drop it to free it)."""
        self._check_sizes(group_size=group_size)
        new = copy.copy(self)
        for name, buf in zip(self._names, self._buffers(), strict=True):
            setattr(new, name, buf.repeat_interleave(group_size, dim=1))  # (layers, B * G, ...)
        new._names, new.lengths = list(self._names), list(self.lengths)
        return new

    def __repr__(self) -> str:
        shapes = ", ".join(f"{name}={tuple(buf.shape)}" for name, buf in zip(self._names, self._buffers(), strict=True))
        return f"{type(self).__name__}({shapes}, lengths={self.lengths}, {self.dtype}, {self.device})"


class KVCache(PreallocatedCache):
    """Keys and values of every layer, preallocated: ``k`` and ``v`` are (layers, B, n_kv, max_len, d_h).

    ``write(layer, k, v)`` takes (B, n_kv, T, d_h) each; ``read(layer)`` returns the
    pair (B, n_kv, S, d_h); ``append`` does both.
    """

    def __init__(self, num_layers: int, batch_size: int, max_len: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        self._check_sizes(num_layers=num_layers, batch_size=batch_size, max_len=max_len,
                          num_kv_heads=num_kv_heads, head_dim=head_dim)
        shape = (num_layers, batch_size, num_kv_heads, max_len, head_dim)
        super().__init__({"k": torch.zeros(shape, dtype=dtype, device=device),
                          "v": torch.zeros(shape, dtype=dtype, device=device)}, max_len, time_dim=3)

    @classmethod
    def for_config(cls, config: ModelConfig, batch_size: int, max_len: int | None = None,
                   dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> KVCache:
        if config.attn_type == "mla":
            raise ValueError("KVCache holds per-head keys and values; an MLA model caches latents (mlakit.mla.LatentCache)")
        return cls(config.num_hidden_layers, batch_size, max_len or config.max_position_embeddings,
                   config.num_key_value_heads, config.head_dim, dtype, device)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v of shape (B, n_kv, T, d_h) after the cached positions; return all of them."""
        return super().append(layer, k, v)  # (B, n_kv, S, d_h) each


class LatentCache(PreallocatedCache):
    """MLA's cache: per layer and token the normalised latent c_KV and the rotated shared key k_R.

    Stored together as one (layers, B, max_len, kv_lora_rank + qk_rope_head_dim)
    tensor ``latent``, the layout DeepSeek's FlashMLA kernel reads: the whole row
    is the MQA-style key of the absorbed path, its first kv_lora_rank entries are
    the value. ``storage(layer)`` is that layer's (B, max_len, d_c + d_rope) block.
    """

    def __init__(self, num_layers: int, batch_size: int, max_len: int, kv_lora_rank: int,
                 qk_rope_head_dim: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        self._check_sizes(num_layers=num_layers, batch_size=batch_size, max_len=max_len,
                          kv_lora_rank=kv_lora_rank, qk_rope_head_dim=qk_rope_head_dim)
        self.kv_lora_rank, self.qk_rope_head_dim = kv_lora_rank, qk_rope_head_dim
        shape = (num_layers, batch_size, max_len, kv_lora_rank + qk_rope_head_dim)
        super().__init__({"latent": torch.zeros(shape, dtype=dtype, device=device)}, max_len, time_dim=2)

    @classmethod
    def for_config(cls, config: ModelConfig, batch_size: int, max_len: int | None = None,
                   dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> LatentCache:
        if config.attn_type != "mla":
            raise ValueError(f"LatentCache is MLA's cache; attn_type={config.attn_type!r} caches keys and values "
                             "(mlakit.attention.KVCache)")
        return cls(config.num_hidden_layers, batch_size, max_len or config.max_position_embeddings,
                   config.kv_lora_rank, config.qk_rope_head_dim, dtype, device)

    def append(self, layer: int, latent: torch.Tensor) -> torch.Tensor:
        """Write [c_KV ; k_R] of shape (B, T, d_c + d_R) after the cached positions; return all (B, S, d_c + d_R)."""
        return super().append(layer, latent)

    def c_kv(self, layer: int) -> torch.Tensor:
        """The cached latents of one layer, (B, S, kv_lora_rank)."""
        return self.latent[layer, :, : self.lengths[layer], : self.kv_lora_rank]

    def k_rope(self, layer: int) -> torch.Tensor:
        """The cached shared rope keys of one layer, (B, S, qk_rope_head_dim)."""
        return self.latent[layer, :, : self.lengths[layer], self.kv_lora_rank:]


Cache = KVCache | LatentCache

__all__ = ["PreallocatedCache", "KVCache", "LatentCache", "CacheFullError", "Cache"]
