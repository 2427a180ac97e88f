"""Turn problems into language-model batches: token ids, next-token targets and a loss mask.

Each example is ``<bos> prompt completion <eos>``. The model learns to predict
every next token; with ``completion_only`` (the default) the loss counts only
the completion and the final eos, the part a model is later asked to produce.
``LMBatches(step)`` is a pure function of the step (its sampler is seeded with
seed and step), so a resumed training run sees the same batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..tokenizer import CharTokenizer
from .arithmetic import Problem


def encode_problems(problems: Sequence[Problem], tokenizer: CharTokenizer,
                    with_steps: bool = True) -> list[tuple[list[int], int]]:
    """(token ids of <bos> prompt completion <eos>, length of <bos> prompt) per problem."""
    out = []
    for p in problems:
        prompt = tokenizer.encode(p.prompt, bos=True)
        out.append((prompt + tokenizer.encode(p.completion(with_steps), eos=True), len(prompt)))
    return out


class LMBatches:
    """Random batches of encoded examples, right-padded: ``batches(step)`` -> dict of (B, T-1) tensors."""

    def __init__(self, examples: list[tuple[list[int], int]], batch_size: int, pad_id: int, seed: int = 0,
                 completion_only: bool = True):
        if not examples:
            raise ValueError("LMBatches needs at least one example")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} is invalid: must be >= 1")
        self.examples, self.batch_size, self.pad_id = examples, batch_size, pad_id
        self.seed, self.completion_only = seed, completion_only

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        picks = torch.randint(len(self.examples), (self.batch_size,), generator=g).tolist()
        return self.collate([self.examples[i] for i in picks])

    def collate(self, chosen: list[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
        width = max(len(ids) for ids, _ in chosen)
        seqs = torch.full((len(chosen), width), self.pad_id, dtype=torch.long, device="cpu")
        mask = torch.zeros(len(chosen), width - 1, device="cpu")
        for row, (ids, prompt_len) in enumerate(chosen):
            seqs[row, : len(ids)] = torch.tensor(ids, device="cpu")  # batches are built on the CPU; the Trainer moves them
            first = prompt_len - 1 if self.completion_only else 0  # target index of the first completion token
            mask[row, first: len(ids) - 1] = 1.0
        return {"input_ids": seqs[:, :-1], "targets": seqs[:, 1:], "loss_mask": mask}
