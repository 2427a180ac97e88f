"""mlakit: how DeepSeek made large language models cheap, built step by step.

Data flows one way: config -> layers -> attention -> model -> generate.
Visualisation (:mod:`mlakit.viz`), the environment check and the CLI sit on top.
"""

__version__ = "0.1.0"

from .config import ModelConfig, list_presets
from .utils import progress, seed_everything, set_progress

__all__ = ["ModelConfig", "list_presets", "seed_everything", "progress", "set_progress", "__version__"]
