"""The two layouts of routed-expert weights: stacked in memory, one tensor per expert on disk.

In memory (:class:`mlakit.moe.RoutedExperts`, transformers' DeepseekV3 layout)
the experts are stacked with the expert first: ``experts.gate_up_proj`` (E, 2I, H),
expert j's gate rows then its up rows, and ``experts.down_proj`` (E, H, I).
On disk (DeepSeek's released checkpoints and transformers' safetensors) each
expert is a SwiGLU of its own: ``experts.{j}.gate_proj.weight`` (rows [0, I) of
``gate_up_proj[j]``), ``experts.{j}.up_proj.weight`` (rows [I, 2I)) and
``experts.{j}.down_proj.weight``. :func:`to_per_expert_state_dict` and
:func:`from_per_expert_state_dict` map one to the other 1:1, keeping every
other key (and any prefix such as ``model.layers.3.mlp.``).
"""

from __future__ import annotations

import re

import torch

_STACKED_KEY = re.compile(r"^(?P<prefix>(?:.*\.)?)experts\.(?P<proj>gate_up_proj|down_proj)$")  # "." or start: not shared_experts
_PER_EXPERT_KEY = re.compile(r"^(?P<prefix>(?:.*\.)?)experts\.(?P<j>\d+)\.(?P<proj>gate_proj|up_proj|down_proj)\.weight$")


def to_per_expert_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stacked expert weights to transformers' on-disk per-expert names; other keys are kept.

    ``...experts.gate_up_proj`` (E, 2I, H) -> ``...experts.{j}.gate_proj.weight`` (I, H)
    and ``...experts.{j}.up_proj.weight`` (I, H); ``...experts.down_proj`` (E, H, I) ->
    ``...experts.{j}.down_proj.weight`` (H, I).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        m = _STACKED_KEY.match(key)
        if m is None:
            out[key] = value
            continue
        for j, w in enumerate(value.unbind(0)):
            base = f"{m['prefix']}experts.{j}."
            if m["proj"] == "down_proj":
                out[base + "down_proj.weight"] = w.contiguous()
            else:
                gate, up = w.chunk(2, dim=0)  # (2I, H) -> (I, H), (I, H)
                out[base + "gate_proj.weight"], out[base + "up_proj.weight"] = gate.contiguous(), up.contiguous()
    return out


def from_per_expert_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`to_per_expert_state_dict`: per-expert weights back to ``gate_up_proj`` / ``down_proj``."""
    out: dict[str, torch.Tensor] = {}
    found: dict[str, dict[tuple[str, int], torch.Tensor]] = {}  # prefix -> (proj, j) -> weight
    for key, value in state_dict.items():
        m = _PER_EXPERT_KEY.match(key)
        if m is None:
            out[key] = value
        else:
            found.setdefault(m["prefix"], {})[(m["proj"], int(m["j"]))] = value
    for prefix, weights in found.items():
        n = 1 + max(j for _, j in weights)
        missing = [f"{prefix}experts.{j}.{p}.weight" for j in range(n) for p in ("gate_proj", "up_proj", "down_proj")
                   if (p, j) not in weights]
        if missing:
            raise ValueError(f"per-expert weights incomplete: missing {', '.join(missing[:4])}"
                             + (f" and {len(missing) - 4} more" if len(missing) > 4 else ""))
        out[f"{prefix}experts.gate_up_proj"] = torch.stack(
            [torch.cat([weights[("gate_proj", j)], weights[("up_proj", j)]]) for j in range(n)])  # (E, 2I, H)
        out[f"{prefix}experts.down_proj"] = torch.stack([weights[("down_proj", j)] for j in range(n)])  # (E, H, I)
    return out


__all__ = ["to_per_expert_state_dict", "from_per_expert_state_dict"]
