"""Teacher sampling with rejection: sample n completions per prompt, keep the ones the verifier accepts.

R1's reasoning SFT data was made this way (R1 §2.3.3): sample several
responses per prompt from the RL checkpoint, keep only the correct ones,
about 600k samples; STaR (Zelikman et al. 2022) is the same loop at small
scale. Here the n completions of a prompt come from one grouped generation
(``mlakit.generate.generate(..., num_return_sequences=n, return_dict=True)``:
one prefill, the cache copied n times), ``<bos> prompt`` encoded by the
tokenizer as lesson 07's pretraining data is, and each completion is the text
up to the model's ``<eos>`` (special tokens such as ``<think>`` written out).
A completion that never reaches ``<eos>`` within ``max_new_tokens`` is
unfinished and rejected, whatever it says.

``mode="first"`` keeps the first correct completion of each prompt,
``mode="all"`` every distinct correct one. The result reports the acceptance
rate (correct samples / samples) per difficulty and pass@k over the prompts
with the unbiased estimator (:func:`~mlakit.data.passk.pass_at_k`): how much
sampling buys over one greedy try. Anything the tokenizer can encode works:
the task gives the prompt and the verifier, the model only continues text.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..generate import generate
from ..utils import progress as progress_bar
from ..utils import progress_enabled
from .passk import mean_pass_at_k, pass_at_k
from .task import check_choice, check_int

MODES = ("first", "all")


@dataclass
class Sample:
    problem: Any
    completion: str
    correct: bool
    finished: bool  # the model ended the completion with <eos> within max_new_tokens
    index: int  # sample j of its prompt


@dataclass
class RejectionResult:
    samples: list[Sample] = field(repr=False)  # every sample, prompt-major: num_samples per problem
    kept: list[Sample] = field(repr=False)  # the accepted ones (mode "first" or "all")
    num_samples: int
    mode: str
    difficulties: list[int] = field(repr=False)  # per problem

    @property
    def correct_counts(self) -> list[int]:
        """Correct samples per problem, in problem order."""
        G = self.num_samples
        return [sum(s.correct for s in self.samples[i * G:(i + 1) * G]) for i in range(len(self.difficulties))]

    @property
    def acceptance_rate(self) -> float:
        return sum(s.correct for s in self.samples) / max(1, len(self.samples))

    def pass_at_k(self, k: int) -> float:
        return mean_pass_at_k(self.num_samples, self.correct_counts, k)

    def pass_at(self) -> dict[int, float]:
        """pass@k for k = 1, 2, 4, ... up to num_samples (and num_samples itself)."""
        ks = sorted({2**i for i in range(self.num_samples.bit_length()) if 2**i <= self.num_samples}
                    | {self.num_samples})
        return {k: self.pass_at_k(k) for k in ks}

    def by_difficulty(self) -> dict[int, dict[str, float]]:
        """{difficulty: problems, samples, correct, acceptance, solved, pass@1}."""
        groups: dict[int, list[int]] = defaultdict(list)
        for d, c in zip(self.difficulties, self.correct_counts, strict=True):
            groups[d].append(c)
        G = self.num_samples
        return {d: {"problems": len(cs), "samples": len(cs) * G, "correct": sum(cs),
                    "acceptance": sum(cs) / (len(cs) * G), "solved": sum(c > 0 for c in cs),
                    "pass@1": sum(pass_at_k(G, c, 1) for c in cs) / len(cs)}
                for d, cs in sorted(groups.items())}

    def report(self) -> dict[str, Any]:
        """What the data card keeps: acceptance per difficulty and pass@k (string keys, JSON-ready)."""
        return {"samples": self.num_samples, "mode": self.mode, "acceptance": self.acceptance_rate,
                "by_difficulty": {str(d): row for d, row in self.by_difficulty().items()},
                "pass_at_k": {str(k): v for k, v in self.pass_at().items()}}


def _device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def decode_completion(tokenizer, ids: list[int]) -> tuple[str, bool]:
    """(text up to the first <eos>, with special tokens written out; whether an <eos> was reached)."""
    if tokenizer.eos_id in ids:
        return tokenizer.decode(ids[:ids.index(tokenizer.eos_id)]), True
    return tokenizer.decode(ids), False


@torch.no_grad()
def rejection_sample(model: nn.Module, tokenizer, task, problems, num_samples: int = 4,
                     temperature: float = 1.0, max_new_tokens: int = 32, mode: str = "first",
                     batch_size: int = 32, top_k: int | None = None, top_p: float | None = None,
                     seed: int = 0, use_cache: bool = True, progress: bool | None = None,
                     desc: str = "teacher sampling") -> RejectionResult:
    """Sample ``num_samples`` completions of every problem's prompt; keep the verified ones.

    ``batch_size`` prompts go through one grouped generation (batch_size x num_samples rows).
    Deterministic for a seed (and batch size): one torch.Generator drives all the sampling.
    ``progress`` None follows mlakit's switch (``MLAKIT_PROGRESS``, :func:`mlakit.utils.set_progress`).
    ``max_new_tokens`` shrinks to what the model's context leaves after the longest prompt.
    """
    check_int("num_samples", num_samples, 1, 4096)
    check_int("batch_size", batch_size, 1, 1 << 20)
    check_int("max_new_tokens", max_new_tokens, 1, 1 << 20)
    check_choice("mode", mode, MODES)
    if temperature < 0:
        raise ValueError(f"temperature={temperature} is invalid: must be >= 0 (0 = greedy: every sample alike)")
    problems = list(problems)
    if not problems:
        raise ValueError("rejection_sample needs at least one problem")
    model.eval()
    device = _device(model)
    gen = torch.Generator(device=device).manual_seed(seed)
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    samples: list[Sample] = []
    show = progress_enabled() if progress is None else progress
    bar = progress_bar(total=len(problems), desc=desc, disable=False) if show else None
    for start in range(0, len(problems), batch_size):
        chunk = problems[start:start + batch_size]
        ids, mask = tokenizer.encode_batch([p.prompt for p in chunk], bos=True, device=device)  # (B, T)
        budget = max_new_tokens if limit is None else min(max_new_tokens, limit - ids.shape[1])
        if budget < 1:
            raise ValueError(f"a prompt of {ids.shape[1]} tokens leaves no room in the model's context "
                             f"of {limit} positions")
        out = generate(model, ids, budget, use_cache=use_cache, temperature=temperature, top_k=top_k,
                       top_p=top_p, attention_mask=mask, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                       generator=gen, num_return_sequences=num_samples, return_dict=True)
        new = out.sequences[:, ids.shape[1]:].tolist()  # (B * G, n), prompt-major
        for row, tokens in enumerate(new):
            problem = chunk[row // num_samples]
            text, finished = decode_completion(tokenizer, tokens)
            ok = finished and bool(task.verify(problem, text))
            samples.append(Sample(problem, text, ok, finished, row % num_samples))
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    kept = []
    for i in range(len(problems)):
        seen = set()
        for s in samples[i * num_samples:(i + 1) * num_samples]:
            if s.correct and s.completion not in seen:
                kept.append(s)
                seen.add(s.completion)
                if mode == "first":
                    break
    return RejectionResult(samples, kept, num_samples, mode, [task.difficulty(p) for p in problems])


__all__ = ["Sample", "RejectionResult", "rejection_sample", "decode_completion", "MODES"]
