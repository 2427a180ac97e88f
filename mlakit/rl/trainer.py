"""GRPOTrainer: rollouts, rewards, group advantages and the clipped objective on the shared Trainer.

One GRPO step (DeepSeekMath §4.1, Algorithm 1 with one policy and no reward model):

1. take ``prompts_per_step`` prompts (a pure function of seed and step, so a
   resumed run sees the prompts an uninterrupted one would);
2. rollouts: sample G = ``num_generations`` completions per prompt with
   :func:`mlakit.generate.generate` (``num_return_sequences=G``): one prefill of the
   prompts, the latent cache copied G times, then MLA's absorbed decode; the
   log-prob of every sampled token at the sampling temperature is recorded as
   pi_old. Rows are prompt-major: row i * G + j is sample j of prompt i;
3. rewards from the reward functions (TRL's signature, :mod:`.rewards`), their
   weighted sum, group-relative advantages (:mod:`.advantages`); with
   ``dynamic_sampling`` the groups whose rewards are all equal are dropped (DAPO);
4. ``num_iterations`` (mu) passes, each one optimizer step: a teacher-forced
   forward of the policy over prompt + completion, :func:`~mlakit.rl.loss.grpo_loss`
   against the rollout's pi_old (and the frozen reference's log-probs when
   ``beta`` > 0 or a reference is given), then the shared
   :meth:`mlakit.train.Trainer.optimizer_step`: backward, gradient clipping, the
   schedule's learning rate, AdamW, and DeepSeek-V3's aux-loss-free bias update
   from the routing of that forward when the model has MoE layers;
5. per-step metrics as TRL logs them (reward mean and std, per reward function
   too; the share of zero-std groups; completion length overall and for correct
   and incorrect completions; truncation rate; k3, entropy, clip ratios) and, every
   ``eval_steps``, the held-out greedy accuracy.

Everything else is the :class:`~mlakit.train.Trainer`'s: AdamW, the schedule,
the tqdm bar (live reward; ``MLAKIT_PROGRESS=0`` turns it off), ``history`` as a
list of dicts, :meth:`write_csv`, and safetensors checkpoints with exact resume
(:meth:`save` / :meth:`load`: weights, AdamW's state, step, metrics and torch's
random state, which the rollouts sample from).

Simplifications, named: one process and one minibatch per pass (TRL can split a
generation batch into several optimizer steps, ``steps_per_generation``); DAPO's
dynamic sampling drops zero-std groups and trains on a smaller batch rather than
sampling more prompts until the batch is full; the reference model is a frozen
copy of the policy as the trainer first sees it (not saved in checkpoints: build
the trainer on the base model, then :meth:`load`), never refreshed (R1-Zero
replaced it every 400 steps); top-k / top-p are not offered (the log-probs would
not be those of the sampler's distribution, see :func:`~mlakit.generate.generate`).
TRL's defaults otherwise (:class:`~mlakit.rl.GRPOConfig`).
"""

from __future__ import annotations

import copy
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..generate import generate
from ..losses import LossOutput, token_logprobs
from ..train import Trainer, exact_match, lr_at
from .advantages import group_advantages, zero_std_groups
from .config import GRPOConfig
from .loss import grpo_loss
from .rewards import ACCURACY, RewardFunc, compute_rewards, overlong_penalty, reward_name


# ---------------------------------------------------------------------- prompts
def prompt_and_fields(item) -> tuple[str, dict]:
    """A prompt's text and its reward fields: a string (no fields), a dict with ``"prompt"`` (the other
    keys), or a task problem with ``.prompt`` (fields ``problem`` and, when it has one, ``answer``)."""
    if isinstance(item, str):
        return item, {}
    if isinstance(item, dict):
        if not isinstance(item.get("prompt"), str):
            raise ValueError(f"a prompt dict needs a 'prompt' string; got keys {sorted(item)}")
        return item["prompt"], {k: v for k, v in item.items() if k != "prompt"}
    text = getattr(item, "prompt", None)
    if not isinstance(text, str):
        raise TypeError(f"a prompt is a string, a dict with 'prompt', or a problem with .prompt; got "
                        f"{type(item).__name__}")
    fields = {"problem": item}
    if hasattr(item, "answer"):
        fields["answer"] = item.answer
    return text, fields


# --------------------------------------------------------------------- rollouts
@dataclass
class Rollout:
    """One step's sampled completions, prompt-major (row i * G + j is sample j of prompt ``indices[i]``)."""

    indices: list[int]  # (P,) which of the trainer's prompts each group answers
    sequences: torch.Tensor  # (N, T + n) left-padded prompt, then the completion (pad after eos)
    attention_mask: torch.Tensor  # (N, T + n) 1 on prompt tokens and on completion tokens up to eos
    prompt_len: int  # T: columns of the (padded) prompt
    completion_mask: torch.Tensor  # (N, n) bool: completion tokens up to and including eos
    logprobs: torch.Tensor  # (N, n) float32: pi_old's log-probs at the sampling temperature, 0 off the mask
    truncated: torch.Tensor  # (N,) bool: no eos within max_completion_length
    prompts: list[str] = field(repr=False)  # (N,) the prompt of each row
    completions: list[str] = field(repr=False)  # (N,) decoded up to (not including) eos, tags written out
    completion_ids: list[list[int]] = field(repr=False)  # (N,) token ids up to and including eos
    fields: dict[str, list] = field(repr=False)  # reward fields, one value per row

    @property
    def lengths(self) -> torch.Tensor:
        """(N,) completion lengths in tokens, eos included."""
        return self.completion_mask.sum(-1)


def completion_logprobs(model: nn.Module, sequences: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int,
                        temperature: float, output_routing: bool = False):
    """Teacher-forced log-probs (N, n) of the completion tokens ``sequences[:, prompt_len:]`` at
    ``temperature``, the logits (N, n, vocab) that give them, and the model's output (routing on request).

    Position T - 1 + j predicts completion token j; the last token is never an input.
    """
    out = model(sequences[:, :-1], attention_mask=attention_mask[:, :-1], output_routing=output_routing)
    logits = out.logits[:, prompt_len - 1:]  # (N, n, vocab)
    return token_logprobs(logits, sequences[:, prompt_len:], temperature=temperature), logits, out


def held_out_accuracy(tokenizer, problems: Sequence, verify: Callable, max_new_tokens: int = 32,
                      name: str = "held_out_accuracy") -> Callable[[nn.Module], dict]:
    """An ``eval_fn``: greedy exact match of ``verify(problem, completion)`` on ``problems`` (tags written out,
    as the accuracy reward reads them), up to ``max_new_tokens`` or what the context leaves."""
    chosen = list(problems)
    if not chosen:
        raise ValueError("held_out_accuracy needs at least one problem")
    longest = max(len(tokenizer.encode(p.prompt, bos=True)) for p in chosen)

    def evaluate(model: nn.Module) -> dict:
        limit = getattr(getattr(model, "config", None), "max_position_embeddings", longest + max_new_tokens)
        budget = min(max_new_tokens, limit - longest)
        return {name: exact_match(model, tokenizer, chosen, verify, max_new_tokens=budget,
                                  skip_special=False)["exact_match"]}

    return evaluate


def _mean(values) -> float | None:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else None


def _std(values) -> float:
    """Unbiased std (0 for fewer than two values), as TRL logs reward_std."""
    values = [float(v) for v in values]
    return statistics.stdev(values) if len(values) > 1 else 0.0


# ---------------------------------------------------------------------- trainer
class GRPOTrainer(Trainer):
    """GRPO on the shared :class:`~mlakit.train.Trainer`; see the module docstring.

    ``reward_funcs``: one reward function or a list (TRL's signature, :mod:`mlakit.rl.rewards`);
    ``prompts``: strings, dicts with ``"prompt"``, or task problems (``.prompt``; their
    ``problem`` and ``answer`` reach the reward functions); ``ref_model``: the frozen
    reference for the KL term (default, when ``config.beta`` > 0: a frozen copy of
    ``model`` as given); ``eval_fn(model) -> dict``: run every ``config.eval_steps``
    steps and at the end, its numbers added to that step's record
    (:func:`held_out_accuracy`).
    """

    def __init__(self, model: nn.Module, tokenizer, reward_funcs: RewardFunc | Sequence[RewardFunc],
                 prompts: Sequence, config: GRPOConfig, ref_model: nn.Module | None = None,
                 eval_fn: Callable[[nn.Module], dict] | None = None):
        if not isinstance(config, GRPOConfig):
            raise TypeError(f"config must be a GRPOConfig, got {type(config).__name__}")
        self.config, self.tokenizer = config, tokenizer
        funcs = [reward_funcs] if callable(reward_funcs) else list(reward_funcs)
        if not funcs or not all(callable(f) for f in funcs):
            raise ValueError("reward_funcs must be one reward function or a non-empty list of them")
        weights = [1.0] * len(funcs) if config.reward_weights is None else list(config.reward_weights)
        if len(weights) != len(funcs):
            raise ValueError(f"GRPOConfig.reward_weights has {len(weights)} weights for {len(funcs)} reward functions "
                             f"({', '.join(reward_name(f) for f in funcs)}): give one weight per function")
        if config.soft_punish_cache:  # DAPO's overlong shaping joins the rewards with weight 1
            funcs.append(overlong_penalty(config.max_completion_length, config.soft_punish_cache))
            weights.append(1.0)
        self.reward_funcs, self.reward_weights = funcs, weights
        names = [reward_name(f) for f in funcs]
        self.reward_names = [n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names)]
        self._check_vocab(model, tokenizer)
        self.prompts = list(prompts)
        parsed = [prompt_and_fields(p) for p in self.prompts]
        self.prompt_texts = [text for text, _ in parsed]
        self.prompt_fields = [fields for _, fields in parsed]
        self._check_prompts(model)
        if ref_model is None and config.beta > 0:
            ref_model = copy.deepcopy(model)  # the policy as it starts: GRPO's pi_ref
        if ref_model is not None:
            ref_model.eval().requires_grad_(False)
        self.ref_model = ref_model
        super().__init__(model, config.train_config(), self.prompt_indices, eval_fn)

    # ---------------------------------------------------------------- checks
    @staticmethod
    def _check_vocab(model: nn.Module, tokenizer) -> None:
        size = getattr(getattr(model, "config", None), "vocab_size", None)
        if size is not None and tokenizer.vocab_size > size:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is {size}")

    def _check_prompts(self, model: nn.Module) -> None:
        cfg = self.config
        if len(self.prompts) < cfg.prompts_per_step:
            raise ValueError(f"{len(self.prompts)} prompts, but a step needs prompts_per_step={cfg.prompts_per_step}: "
                             "give more prompts or lower GRPOConfig.prompts_per_step")
        limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        room = None if limit is None else limit - cfg.max_completion_length
        if room is not None and room < 1:
            raise ValueError(f"max_completion_length={cfg.max_completion_length} leaves no room for a prompt in the "
                             f"model's context of {limit} positions")
        for i, text in enumerate(self.prompt_texts):
            try:
                n = len(self.tokenizer.encode(text, bos=True))
            except ValueError as e:
                raise ValueError(f"prompt {i} ({text[:60]!r}): {e}") from None
            if room is not None and n > room:
                raise ValueError(f"prompt {i} ({text[:60]!r}) has {n} tokens with bos, more than the model's context "
                                 f"of {limit} minus max_completion_length={cfg.max_completion_length} leaves ({room}): "
                                 "shorten it or lower max_completion_length")

    # --------------------------------------------------------------- prompts
    def _epoch_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.prompts)))
        random.Random(f"grpo-{self.config.seed}-{epoch}").shuffle(order)  # string seeds hash stably
        return order

    def prompt_indices(self, step: int) -> list[int]:
        """The ``prompts_per_step`` prompt indices of ``step``: a fresh shuffle each pass over the prompts."""
        n, need = len(self.prompts), self.config.prompts_per_step
        out: list[int] = []
        while len(out) < need:
            epoch, offset = divmod(step * need + len(out), n)
            take = min(need - len(out), n - offset)
            out.extend(self._epoch_order(epoch)[offset: offset + take])
        return out

    # -------------------------------------------------------------- rollouts
    @torch.no_grad()
    def rollout(self, indices: Sequence[int]) -> Rollout:
        """Sample G completions for each prompt of ``indices`` (see the module docstring, step 2)."""
        cfg, tok, model = self.config, self.tokenizer, self.model
        G = cfg.num_generations
        device = next(model.parameters()).device
        model.eval()
        ids, mask = tok.encode_batch([self.prompt_texts[i] for i in indices], bos=True, device=device)
        out = generate(model, ids, cfg.max_completion_length, temperature=cfg.temperature, attention_mask=mask,
                       eos_id=tok.eos_id, pad_id=tok.pad_id, num_return_sequences=G, return_dict=True)
        T = ids.shape[1]
        completion = out.sequences[:, T:]  # (N, n)
        cmask = out.completion_mask  # (N, n)
        finished = ((completion == tok.eos_id) & cmask).any(-1)  # (N,)
        attention = torch.cat([mask.repeat_interleave(G, 0), cmask.long()], dim=1)  # (N, T + n)
        completion_ids, completions = [], []
        for row, keep in zip(completion.tolist(), cmask.tolist(), strict=True):
            kept = [t for t, k in zip(row, keep, strict=True) if k]
            completion_ids.append(kept)
            text = kept[:-1] if kept and kept[-1] == tok.eos_id else kept
            completions.append(tok.decode(text))  # tags written out: the format reward reads them
        rows = [i for i in indices for _ in range(G)]  # prompt-major
        keys = sorted({k for i in indices for k in self.prompt_fields[i]})
        fields = {k: [self.prompt_fields[i].get(k) for i in rows] for k in keys}
        return Rollout(list(indices), out.sequences, attention, T, cmask, out.logprobs, ~finished,
                       [self.prompt_texts[i] for i in rows], completions, completion_ids, fields)

    def score(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """Rewards of every function (N, F) and their weighted sum (N,) for a rollout."""
        return compute_rewards(self.reward_funcs, rollout.prompts, rollout.completions, self.reward_weights,
                               completion_ids=rollout.completion_ids, **rollout.fields)

    # ------------------------------------------------------------------ step
    def train_step(self) -> dict:
        cfg = self.config
        G = cfg.num_generations
        rollout = self.rollout(self.prompt_indices(self.step))
        per_func, rewards = self.score(rollout)
        advantages = group_advantages(rewards, G, cfg.scale_rewards)  # (N,)
        zero = zero_std_groups(rewards, G)  # (P,)
        record = {"step": self.step, **self._rollout_metrics(rollout, per_func, rewards, zero)}
        keep = torch.ones_like(rewards, dtype=torch.bool)
        if cfg.dynamic_sampling:
            keep = (~zero).repeat_interleave(G)  # DAPO: groups with equal rewards carry no signal
            record["groups_kept"] = int((~zero).sum())
        if bool(keep.any()):
            record.update(self._update(rollout, advantages.to(rollout.logprobs.device), keep))
        else:
            record.update({"lr": lr_at(self.step, self.cfg), "loss": 0.0, "grad_norm": 0.0})  # nothing to learn
        self.step += 1
        self.history.append(record)
        return record

    def _update(self, rollout: Rollout, advantages: torch.Tensor, keep: torch.Tensor) -> dict:
        """``num_iterations`` optimizer steps on the kept rows; the passes' metrics averaged."""
        cfg = self.config
        rows = keep.nonzero().squeeze(1).to(rollout.sequences.device)
        seqs, attention = rollout.sequences[rows], rollout.attention_mask[rows]
        mask = rollout.completion_mask[rows]
        if cfg.mask_truncated_completions:  # DAPO: a cut-off completion is not evidence either way
            mask = mask & ~rollout.truncated[rows, None]
        old, adv, T = rollout.logprobs[rows], advantages[rows], rollout.prompt_len
        ref = None
        if self.ref_model is not None:
            with torch.no_grad():
                ref_device = next(self.ref_model.parameters()).device
                ref, _, _ = completion_logprobs(self.ref_model, seqs.to(ref_device), attention.to(ref_device), T,
                                                cfg.temperature)
            ref = ref.to(seqs.device)
        passes = []
        self.model.train()
        for _ in range(cfg.num_iterations):
            logprobs, logits, out = completion_logprobs(self._forward, seqs, attention, T, cfg.temperature,
                                                        output_routing=True)
            loss, metrics = grpo_loss(logprobs, old, adv, mask, cfg, ref, logits=logits.detach())
            passes.append({**self.optimizer_step(LossOutput(loss, {}, out)), **metrics})
        merged = {k: _mean(p[k] for p in passes) for k in passes[0] if isinstance(passes[0][k], (int, float))}
        if "expert_load" in passes[-1]:
            merged["expert_load"] = passes[-1]["expert_load"]
        return merged

    def _rollout_metrics(self, rollout: Rollout, per_func: torch.Tensor, rewards: torch.Tensor,
                         zero: torch.Tensor) -> dict:
        record = {"reward": _mean(rewards.tolist()), "reward_std": _std(rewards.tolist())}
        for name, column in zip(self.reward_names, per_func.T.tolist(), strict=True):
            record[f"reward_{name}"] = _mean(column)
            record[f"reward_{name}_std"] = _std(column)
        record["frac_reward_zero_std"] = float(zero.float().mean())
        lengths = rollout.lengths.tolist()
        record["completion_length"] = _mean(lengths)
        if ACCURACY in self.reward_names:  # correct: the accuracy reward is positive
            correct = per_func[:, self.reward_names.index(ACCURACY)].gt(0).tolist()
            record["completion_length_correct"] = _mean(n for n, ok in zip(lengths, correct, strict=True) if ok)
            record["completion_length_incorrect"] = _mean(n for n, ok in zip(lengths, correct, strict=True) if not ok)
        record["truncated_ratio"] = float(rollout.truncated.float().mean())
        return record

    # --------------------------------------------------------- Trainer hooks
    def train(self, steps: int | None = None, desc: str = "GRPO") -> list[dict]:
        """Run until ``steps`` total steps (default ``config.max_steps``); returns the history."""
        return super().train(steps, desc)

    def progress_postfix(self, record: dict) -> dict:
        return {"reward": f"{record['reward']:.3f}"}

    def evaluate(self) -> dict:
        """The Trainer's evaluation; its numbers also go into the record of the step just taken."""
        result = super().evaluate()
        if result and self.history and self.history[-1]["step"] == self.step - 1:
            self.history[-1].update({k: v for k, v in result.items() if k != "step"})
        return result

    def checkpoint_meta(self) -> dict:
        return {**super().checkpoint_meta(), "grpo_config": self.config.to_dict()}


__all__ = ["GRPOTrainer", "Rollout", "completion_logprobs", "held_out_accuracy", "prompt_and_fields"]
