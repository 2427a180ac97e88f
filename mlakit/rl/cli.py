"""``mlakit grpo``: GRPO from a checkpoint on a synthetic task with rule rewards; writes a checkpoint.

    mlakit grpo --ckpt runs/sft --task addition --steps 200 --out runs/grpo
    mlakit grpo --ckpt runs/sft --task countdown --knob num_numbers=3 --steps 300 --out runs/grpo-cd \\
        --loss-type dr_grpo --scale-rewards none --epsilon-high 0.28 --dynamic-sampling

Runs :func:`mlakit.recipes.grpo` with a :class:`~mlakit.rl.GRPOConfig` built from
the flags (TRL's names with dashes: ``--num-generations``, ``--beta``,
``--epsilon``, ``--epsilon-high``, ``--loss-type``, ...; a flag left out keeps the
config's default). The rewards are accuracy (the task's strict verifier) and R1's
format, weighted by ``--reward-weights`` (default 1,1). ``--out`` receives the
checkpoint (model, AdamW state, trainer.json), ``tokenizer.json`` and
``metrics.csv``; ``--resume`` continues from such a folder. A progress bar shows the
live reward (``MLAKIT_PROGRESS=0`` turns it off). Bad input prints one line and
exits with status 2.

:func:`register` adds the subcommand to the ``mlakit`` parser; :func:`run` is its handler.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

# flag -> GRPOConfig field, for the flags that set a config field directly
CONFIG_FLAGS = {
    "num_generations": int, "prompts_per_step": int, "max_completion_length": int, "temperature": float,
    "beta": float, "epsilon": float, "epsilon_high": float, "num_iterations": int, "loss_type": str,
    "scale_rewards": str, "soft_punish_cache": int, "learning_rate": float, "warmup_steps": int,
    "eval_steps": int, "bias_update_gamma": float,
}
REWARDS = ("accuracy", "format")  # the rule rewards of R1-Zero, in the order --reward-weights weighs them
_FIELD_ERROR = re.compile(r"GRPOConfig\.(\w+)=")


def _flag(field_name: str) -> str:
    return "--" + {"max_steps": "steps"}.get(field_name, field_name).replace("_", "-")


def _weights(text: str) -> list[float]:
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise ValueError(f"--reward-weights {text!r} is not a comma-separated list of numbers (e.g. 1,0.5)") from None


def _config(args: argparse.Namespace):
    from .config import GRPOConfig

    fields = {name: getattr(args, name) for name in CONFIG_FLAGS if getattr(args, name) is not None}
    fields.update(max_steps=args.steps, seed=args.seed, mask_truncated_completions=args.mask_truncated_completions,
                  dynamic_sampling=args.dynamic_sampling)
    if args.reward_weights is not None:
        fields["reward_weights"] = _weights(args.reward_weights)
        if len(fields["reward_weights"]) != len(REWARDS):
            raise ValueError(f"--reward-weights {args.reward_weights!r} gives {len(fields['reward_weights'])} "
                             f"weights; give {len(REWARDS)}, for {','.join(REWARDS)}")
    try:
        return GRPOConfig(**fields)
    except ValueError as e:  # name the flag, not the field
        raise ValueError(_FIELD_ERROR.sub(lambda m: f"{_flag(m.group(1))} ", str(e))) from None


def _out_folder(out: str) -> Path:
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {out} is an existing file, not a folder: choose a folder for the checkpoint")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".mlakit-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"--out {out} cannot be written ({e.strerror or e}): choose a folder you can write "
                         "to") from None
    return folder


def _grpo(args: argparse.Namespace) -> int:
    import torch

    from ..data.cli import parse_knobs
    from ..data.registry import get_task
    from ..recipes.grpo import grpo
    from ..tokenizer import CharTokenizer
    from ..train import load_model_from_checkpoint

    config = _config(args)
    task = get_task(args.task, **parse_knobs(args.knob))
    base = Path(args.ckpt)
    if not (base / "model.safetensors").is_file():
        raise ValueError(f"--ckpt {base}: no model.safetensors there (`mlakit train --out {base}` writes one)")
    if not (base / "tokenizer.json").is_file():
        raise ValueError(f"--ckpt {base}: no tokenizer.json beside the model (`mlakit train` writes it)")
    for name in ("prompts", "eval_problems"):
        if getattr(args, name) < (1 if name == "prompts" else 0):
            raise ValueError(f"--{name.replace('_', '-')} {getattr(args, name)} is invalid: must be "
                             f">= {1 if name == 'prompts' else 0}")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads {args.threads} is invalid: must be >= 1")
        torch.set_num_threads(args.threads)
    if args.resume is not None and not Path(args.resume).is_dir():
        raise ValueError(f"--resume {args.resume}: no such checkpoint folder")
    folder = _out_folder(args.out)
    model = load_model_from_checkpoint(base)
    tokenizer = CharTokenizer.load(base / "tokenizer.json")
    run = grpo(model, task, config, tokenizer=tokenizer, num_prompts=args.prompts, num_eval=args.eval_problems,
               seed=args.seed, resume_from=args.resume)
    print(f"GRPO on {task.name} from {base}: G={config.num_generations}, {config.prompts_per_step} prompts per step, "
          f"loss_type={config.loss_type}, beta={config.beta}, {config.max_steps} steps")
    for e in run.trainer.evals:
        shown = ", ".join(f"{k} {v:.1%}" for k, v in e.items() if k != "step" and isinstance(v, float))
        print(f"step {e['step']:>5}: {shown}")
    last = run.history[-1] if run.history else {}
    if last:
        print(f"last step: reward {last['reward']:.3f} (std {last['reward_std']:.3f}), completion length "
              f"{last['completion_length']:.1f}, truncated {last['truncated_ratio']:.1%}")
    out = run.trainer.save(folder)
    tokenizer.save(out / "tokenizer.json")
    run.trainer.write_csv(out / "metrics.csv")
    print(f"checkpoint written to {out}: {', '.join(sorted(p.name for p in out.iterdir() if p.is_file()))}")
    return 0


def run(args: argparse.Namespace) -> int:
    """The handler of ``mlakit grpo``: one line and exit status 2 on bad input."""
    try:
        return _grpo(args)
    except (ValueError, FileNotFoundError, TypeError) as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"mlakit grpo: {message}")
        return 2


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``grpo`` to an argparse subparsers object."""
    p = subparsers.add_parser("grpo", help="GRPO with rule rewards (accuracy + format) from a checkpoint")
    p.add_argument("--ckpt", required=True, help="base checkpoint folder (model.safetensors + tokenizer.json)")
    p.add_argument("--task", required=True, help="addition, countdown, toolcall or wordproblem")
    p.add_argument("--steps", type=int, required=True, help="GRPO steps (GRPOConfig.max_steps)")
    p.add_argument("--out", required=True, help="folder for the checkpoint, tokenizer.json and metrics.csv")
    p.add_argument("--knob", action="append", metavar="NAME=VALUE", help="a task knob; repeat for more")
    p.add_argument("--prompts", type=int, default=1000, help="training problems drawn from the task")
    p.add_argument("--eval-problems", type=int, default=100, help="held-out problems for greedy accuracy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--resume", metavar="DIR", default=None, help="continue from a checkpoint this command wrote")
    g = p.add_argument_group("GRPOConfig (TRL's names; left out: the config's default)")
    for name, kind in CONFIG_FLAGS.items():
        g.add_argument(_flag(name), dest=name, type=kind, default=None)
    g.add_argument("--reward-weights", default=None, metavar="W1,W2", help="accuracy,format weights (default 1,1)")
    g.add_argument("--mask-truncated-completions", action="store_true", help="DAPO: no loss on cut-off completions")
    g.add_argument("--dynamic-sampling", action="store_true", help="DAPO: drop groups whose rewards are all equal")
    p.set_defaults(func=run)
    return p


__all__ = ["register", "run", "CONFIG_FLAGS"]
