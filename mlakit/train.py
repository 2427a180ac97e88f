"""Training loop: AdamW, warmup + cosine schedule, clipping, evaluation, balancing, safetensors checkpoints.

What a step does, in order:

1. take the batch of this step from ``batch_fn(step)`` (a pure function of the
   step, so a resumed run sees exactly the batches an uninterrupted one would);
2. ``loss_fn(model, batch)`` composes the loss from :mod:`mlakit.losses`
   (default :func:`~mlakit.losses.pretrain_loss`: ``main``, ``mtp``, ``balance``);
   backpropagate the sum of its parts;
3. clip the gradient norm, set the learning rate of the schedule, AdamW step;
4. auxiliary-loss-free balancing (V3 §2.1.2): every DeepSeekMoE layer moves its
   selection bias by ``bias_update_gamma`` towards balance, from this step's
   loads, which the forward returned with its output (gamma 0 turns it off);
5. log the losses, the learning rate and the MoE loads (MaxVio); every
   ``eval_every`` steps run ``eval_fn(model)`` and log what it returns.

Checkpoints are one folder in the layout of :mod:`mlakit.checkpoint`, which is
transformers' DeepseekV3 layout (``config.json`` with the full ModelConfig
under ``"mlakit_config"``, ``model.safetensors`` under transformers' names,
the balancing biases and the MTP module, as layer ``num_hidden_layers + k``,
included), so ``DeepseekV3ForCausalLM.from_pretrained`` reads a training
checkpoint as it is. :meth:`Trainer.save` adds ``optimizer.safetensors``
(AdamW's moments and step counts, ``state.{param index}.{name}``) and
``trainer.json`` (TrainConfig, step, the optimizer's param groups, metrics and
the torch random-number state). No pickle anywhere: loading restores the model
bit for bit, and resuming continues with exactly the losses of an
uninterrupted run (dropout included: the random state is restored).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import (
    from_pretrained,
    load_into,
    load_training_checkpoint,
    save_pretrained,
    save_training_checkpoint,
)
from .losses import LossOutput, pretrain_loss
from .moe import iter_moe_layers, max_violation
from .utils import progress

Batch = dict[str, torch.Tensor]  # input_ids (B, T), targets (B, T), optional loss_mask (B, T)


@dataclass
class TrainConfig:
    steps: int = 300  # optimizer steps
    lr: float = 3e-3  # peak learning rate (AdamW)
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio
    warmup_steps: int = 30  # linear warmup from 0 to lr
    weight_decay: float = 0.1  # AdamW decoupled weight decay on matrices (not on norms, biases, embeddings)
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas (DeepSeek-V3 uses 0.9, 0.95)
    grad_clip: float = 1.0  # max global gradient norm (V3: 1.0)
    bias_update_gamma: float = 0.001  # aux-loss-free balancing speed (V3: 0.001); 0 = off
    eval_every: int = 100  # steps between evaluations (0 = only at the end)
    compile: bool = False  # torch.compile the model's forward (off: CPU lessons gain little)
    seed: int = 0  # seeds torch before the model's first step

    def __post_init__(self) -> None:
        checks = {"steps": self.steps >= 1, "lr": self.lr > 0, "min_lr_ratio": 0 <= self.min_lr_ratio <= 1,
                  "warmup_steps": self.warmup_steps >= 0, "weight_decay": self.weight_decay >= 0,
                  "grad_clip": self.grad_clip > 0, "bias_update_gamma": self.bias_update_gamma >= 0,
                  "eval_every": self.eval_every >= 0}
        allowed = {"steps": ">= 1", "lr": "> 0", "min_lr_ratio": "in [0, 1]", "warmup_steps": ">= 0",
                   "weight_decay": ">= 0", "grad_clip": "> 0", "bias_update_gamma": ">= 0", "eval_every": ">= 0"}
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r} is invalid: must be {allowed[name]}")
        self.betas = tuple(self.betas)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of step ``step`` (0-based): linear warmup, then cosine to lr * min_lr_ratio."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress_ = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress_))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on 2-D+ weights only (norm gains, biases and embeddings are not decayed)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and "embed" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


class Trainer:
    """Trains ``model`` on ``batch_fn(step)`` batches; ``history`` is a list of dicts, one per step."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, batch_fn: Callable[[int], Batch],
                 eval_fn: Callable[[nn.Module], dict] | None = None,
                 loss_fn: Callable[[nn.Module, Batch], LossOutput] = pretrain_loss):
        self.model, self.cfg, self.batch_fn, self.eval_fn, self.loss_fn = model, cfg, batch_fn, eval_fn, loss_fn
        self.optimizer = make_optimizer(model, cfg)
        self.step = 0
        self.history: list[dict] = []
        self.evals: list[dict] = []
        self._forward = torch.compile(model) if cfg.compile else model

    # --------------------------------------------------------------- one step
    def train_step(self) -> dict:
        self.model.train()
        device = next(self.model.parameters()).device
        batch = {name: t.to(device) for name, t in self.batch_fn(self.step).items()}  # batches follow the model
        out = self.loss_fn(self._forward, batch)
        record = {"step": self.step, **self.optimizer_step(out)}
        self.step += 1
        self.history.append(record)
        return record

    def optimizer_step(self, out: LossOutput) -> dict:
        """Steps 2-4 of the module docstring for one loss: backward, clip, the schedule's learning rate of
        ``self.step``, AdamW step, bias update from the routing of ``out.output``. Returns the record's
        lr, loss, grad_norm, loss parts, max_vio and expert_load; the caller advances ``self.step``
        (GRPO takes several of these per step, :class:`mlakit.rl.GRPOTrainer`)."""
        model, cfg = self.model, self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        lr = lr_at(self.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        record = {"lr": lr, "loss": out.loss.item(), "grad_norm": float(grad_norm)}
        record.update({f"loss_{name}": value.item() for name, value in out.parts.items()})
        routing = getattr(out.output, "routing", None) or []
        if routing:
            counts = torch.stack([r.counts for r in routing])  # (layers that ran, E)
            record["max_vio"] = float(max_violation(counts).mean())
            record["expert_load"] = counts.tolist()
            if cfg.bias_update_gamma > 0:
                # the forward lists its MoE layers in module order (main blocks, then the MTP blocks it ran)
                for m, r in zip(iter_moe_layers(model), routing, strict=False):
                    m.update_bias(r.counts, cfg.bias_update_gamma)
        return record

    def progress_postfix(self, record: dict) -> dict:
        """What the progress bar shows after a step (the loss; GRPO shows the reward)."""
        return {"loss": f"{record['loss']:.3f}"}

    def evaluate(self) -> dict:
        if self.eval_fn is None:
            return {}
        self.model.eval()
        with torch.no_grad():
            result = {"step": self.step, **self.eval_fn(self.model)}
        self.evals.append(result)
        return result

    def train(self, steps: int | None = None, desc: str = "training") -> list[dict]:
        """Run until ``steps`` total steps (default cfg.steps); returns the history."""
        target = self.cfg.steps if steps is None else steps
        if self.step == 0:
            torch.manual_seed(self.cfg.seed)
        bar = progress(total=target, initial=self.step, desc=desc)
        start = time.perf_counter()
        while self.step < target:
            record = self.train_step()
            bar.update(1)
            bar.set_postfix(self.progress_postfix(record))
            if self.cfg.eval_every and self.step % self.cfg.eval_every == 0 and self.step < target:
                self.evaluate()
        bar.close()
        if self.eval_fn is not None and (not self.evals or self.evals[-1]["step"] != self.step):
            self.evaluate()
        self.seconds = time.perf_counter() - start
        return self.history

    # ------------------------------------------------------------ persistence
    def save(self, folder: str | Path) -> Path:
        """Write a checkpoint folder (see the module docstring); returns its path."""
        return save_training_checkpoint(folder, self.model, self.optimizer, self.checkpoint_meta())

    def checkpoint_meta(self) -> dict:
        """What trainer.json holds besides the optimizer's param groups and the random state."""
        return {"train_config": dataclasses.asdict(self.cfg), "step": self.step, "history": self.history,
                "evals": self.evals}

    def load(self, folder: str | Path) -> Trainer:
        """Restore model, optimizer, step, metrics and random state from a checkpoint written by :meth:`save`."""
        meta = load_training_checkpoint(folder, self.model, self.optimizer)
        self.step, self.history, self.evals = meta["step"], meta["history"], meta["evals"]
        return self

    def write_csv(self, path: str | Path) -> None:
        """The per-step metrics as CSV (the expert loads, a nested list, are left out)."""
        rows = [{k: v for k, v in r.items() if k != "expert_load"} for r in self.history]
        columns = sorted({k for r in rows for k in r}, key=lambda k: (k != "step", k))
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)


def save_checkpoint(model: nn.Module, folder: str | Path) -> Path:
    """config.json and model.safetensors of a MiniDeepSeek: :func:`mlakit.checkpoint.save_pretrained`."""
    return save_pretrained(model, folder)


def load_checkpoint_into(model: nn.Module, folder: str | Path) -> nn.Module:
    """Copy a checkpoint's weights into ``model`` in place (strict): :func:`mlakit.checkpoint.load_into`."""
    return load_into(model, folder)


def load_model_from_checkpoint(folder: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """A MiniDeepSeek from a checkpoint folder, on ``device``: :func:`mlakit.checkpoint.from_pretrained`."""
    return from_pretrained(folder, device=device)


@torch.no_grad()
def exact_match(model: nn.Module, tokenizer, problems, verify, max_new_tokens: int = 32,
                batch_size: int = 64, skip_special: bool = True) -> dict:
    """Share of problems whose greedy completion (up to eos) passes ``verify(problem, text)``.

    Prompts are left-padded into batches and decoded with the model's cache.
    ``skip_special=False`` writes special tokens out (R1's ``<think>`` / ``<answer>``
    tags, which a reasoning verifier reads) and cuts the text at the first eos.
    Returns {"exact_match": share, "n": count, "samples": [(prompt, completion, ok), ...first 5]}.
    """
    from .generate import generate

    model.eval()
    device = next(model.parameters()).device  # prompts go where the model is
    correct, samples = 0, []
    for start in range(0, len(problems), batch_size):
        chunk = problems[start:start + batch_size]
        ids, mask = tokenizer.encode_batch([p.prompt for p in chunk], bos=True)
        ids, mask = ids.to(device), mask.to(device)
        out = generate(model, ids, max_new_tokens, attention_mask=mask, eos_id=tokenizer.eos_id,
                       pad_id=tokenizer.pad_id)
        for p, row in zip(chunk, out[:, ids.shape[1]:], strict=True):
            tokens = row.tolist()
            if not skip_special and tokenizer.eos_id in tokens:
                tokens = tokens[:tokens.index(tokenizer.eos_id)]
            text = tokenizer.decode(tokens, skip_special=skip_special)
            ok = verify(p, text)
            correct += ok
            if len(samples) < 5:
                samples.append((p.prompt, text, bool(ok)))
    return {"exact_match": correct / max(1, len(problems)), "n": len(problems), "samples": samples}
