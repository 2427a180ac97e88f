"""Export to and import from transformers' DeepseekV3: mlakit's own checkpoint format.

There is one on-disk layout (:mod:`mlakit.checkpoint`): the folder
``transformers.DeepseekV3ForCausalLM.from_pretrained(folder)`` reads, a
``config.json`` with DeepseekV3Config's fields and ``model.safetensors`` under
transformers' names, the multi-token-prediction module stored as DeepSeek's
released V3 stores it (layer ``num_hidden_layers + k``, which transformers
does not build). The names here are that module's functions, kept for the
lessons and scripts that import them from ``mlakit.hf``:

- :func:`save_pretrained` (``model, folder``) = ``MiniDeepSeek.save_pretrained(folder)``;
- :func:`from_pretrained` (``folder, device="cpu"``) = ``MiniDeepSeek.from_pretrained(folder)``,
  also for a folder transformers wrote;
- :func:`hf_config_dict`, :func:`config_from_hf`: config.json to and from a ModelConfig;
- :func:`check_exportable`: what the format cannot express (attention other than
  MLA, softmax expert scoring, a tied head), refused with a clear error.
"""

from __future__ import annotations

from .checkpoint import (
    check_exportable,
    config_from_hf,
    from_pretrained,
    hf_config_dict,
    save_pretrained,
)

__all__ = ["check_exportable", "config_from_hf", "from_pretrained", "hf_config_dict", "save_pretrained"]
