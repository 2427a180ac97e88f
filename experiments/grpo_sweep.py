"""Lesson 10's recorded runs: the base's strength against GRPO's learning rate, and R1's order.

    python experiments/grpo_sweep.py                   # every row (about 40 minutes on 2 quiet cores)
    python experiments/grpo_sweep.py --only 200:1e-4   # one row: base steps, learning rate
    python experiments/grpo_sweep.py --only cold        # the cold start, then GRPO

Each row is lesson 10's own recipe with the row's settings: a ``nano`` base
pretrained by ``mlakit.recipes.sft`` on the additions with worked steps, one
example in ten in R1's format (``BASE["steps"]`` set to the row's steps); the
held-out measurement (200 problems, greedy and 16 samples at temperature 1);
120 GRPO steps (8 completions x 16 prompts, 24 new tokens, beta 0, the "dapo"
loss) at the row's learning rate; the measurement again. The "cold" row is
lesson 10's section 5: 40 SFT steps on 2,000 examples in R1's format on top of
the 200-step base, then the same GRPO at 1e-4.

Torch runs on one thread, as in the lesson, so the 200-step 1e-4 row repeats
the lesson's own run number for number on the machine that executed it.
Results go to ``experiments/results/grpo_sweep.csv``, one row per run with the
command, the seed and the machine; the lesson reads that file. Bases are kept
in ``runs/sweep/`` (git-ignored) and reused by later rows.
"""

from __future__ import annotations

import argparse
import copy
import csv
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from benchutil import machine  # noqa: E402

from mlakit import ModelConfig  # noqa: E402
from mlakit.data import AdditionTask, Record, format_ok, make_splits, mean_pass_at_k  # noqa: E402
from mlakit.generate import generate  # noqa: E402
from mlakit.recipes import sft  # noqa: E402
from mlakit.rl import GRPOConfig, GRPOTrainer, accuracy_reward, format_reward  # noqa: E402
from mlakit.tokenizer import CharTokenizer  # noqa: E402
from mlakit.train import TrainConfig, load_model_from_checkpoint  # noqa: E402
from mlakit.utils import seed_everything, set_progress  # noqa: E402

OUT = ROOT / "experiments" / "results" / "grpo_sweep.csv"
RUNS = ROOT / "runs" / "sweep"
SEED = 0
TAGGED_SHARE = 0.1
SAMPLES, NEW_TOKENS = 16, 24
GRPO_STEPS = 120
ROWS = [(100, 1e-4), (150, 1e-4), (150, 3e-4), (200, 1e-4), (200, 3e-4), (200, 1e-3)]  # base steps, GRPO lr
COLD = dict(examples=2000, steps=40, lr=5e-4, warmup_steps=4, batch_size=32)
FIELDS = ["run", "base_steps", "learning_rate", "grpo_steps", "base_greedy", "base_sampled", "start_greedy",
          "start_sampled", "start_format", "after_greedy", "after_sampled", "after_format", "grpo_seconds",
          "seed", "command", "machine"]

tok = CharTokenizer()
task = AdditionTask(1, 2)
cfg = ModelConfig.from_preset("nano", vocab_size=tok.vocab_size, max_position_embeddings=64)
splits = make_splits(task.all_problems(), seed=SEED)
held_out = splits["test"][::5][:200]


def pretraining_records(problems, share, seed=SEED):
    """Each problem once, in R1's format with probability ``share``, else plain (lesson 10, section 2)."""
    rng = random.Random(f"mix-{seed}")
    return [Record(f"add-{i}", "addition", p.prompt, task.reference_completion(p, reasoning=rng.random() < share),
                   p.answer, problem=p) for i, p in enumerate(problems)]


def base_model(steps: int):
    """Lesson 10's base with ``steps`` pretraining steps, trained once and kept in runs/sweep/."""
    folder = RUNS / f"base-{steps}"
    if folder.exists():
        try:
            return load_model_from_checkpoint(folder).eval()
        except (OSError, ValueError):  # an unfinished folder: train again
            pass
    train_cfg = TrainConfig(steps=steps, lr=3e-3, warmup_steps=20, eval_every=0, seed=SEED)
    run = sft(cfg, pretraining_records(splits["train"], TAGGED_SHARE), tok, train_cfg, batch_size=64, seed=SEED,
              desc=f"base {steps}")
    run.trainer.save(folder)
    return run.model.eval()


def complete(model, problems, n, temperature, seed=0, chunk=32):
    """n completions per problem (tags written out, cut at eos), sampled with a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    out = []
    for start in range(0, len(problems), chunk):
        part = problems[start:start + chunk]
        ids, mask = tok.encode_batch([p.prompt for p in part], bos=True)
        res = generate(model, ids, NEW_TOKENS, temperature=temperature, attention_mask=mask, eos_id=tok.eos_id,
                       pad_id=tok.pad_id, num_return_sequences=n, return_dict=True, generator=gen)
        rows = res.sequences[:, ids.shape[1]:].tolist()
        for i in range(len(part)):
            texts = []
            for row, keep in zip(rows[i * n:(i + 1) * n], res.completion_mask[i * n:(i + 1) * n].tolist(), strict=True):
                texts.append(tok.decode([t for t, k in zip(row, keep, strict=True) if k and t != tok.eos_id]))
            out.append(texts)
    return out


def measure(model) -> dict:
    """Held-out greedy accuracy, sampled accuracy (pass@1 of 16) and the share of samples in R1's format."""
    greedy = [texts[0] for texts in complete(model, held_out, 1, temperature=0.0)]
    samples = complete(model, held_out, SAMPLES, temperature=1.0, seed=1)
    correct = [sum(task.verify(p, s) for s in texts) for p, texts in zip(held_out, samples, strict=True)]
    return {"greedy": sum(task.verify(p, c) for p, c in zip(held_out, greedy, strict=True)) / len(held_out),
            "sampled": mean_pass_at_k(SAMPLES, correct, 1),
            "format": sum(format_ok(s) for texts in samples for s in texts) / (SAMPLES * len(held_out))}


def grpo(start, lr: float):
    """Lesson 10's GRPO cell at learning rate ``lr``: returns the policy and the seconds it took."""
    config = GRPOConfig(num_generations=8, prompts_per_step=16, max_completion_length=NEW_TOKENS, temperature=1.0,
                        learning_rate=lr, max_steps=GRPO_STEPS, beta=0.0, epsilon=0.2, loss_type="dapo",
                        eval_steps=40, seed=SEED)
    policy = copy.deepcopy(start)
    trainer = GRPOTrainer(policy, tok, [accuracy_reward(task), format_reward], splits["train"], config,
                          ref_model=copy.deepcopy(start))
    trainer.train(desc=f"GRPO lr {lr:g}")
    return policy.eval(), trainer.seconds


def cold_start(base):
    """Lesson 10's section 5: 40 SFT steps on examples in R1's format, on top of the base."""
    records = [Record(f"cold-{i}", "addition", p.prompt, task.reference_completion(p, reasoning=True), p.answer,
                      problem=p) for i, p in enumerate(splits["train"][:COLD["examples"]])]
    train_cfg = TrainConfig(steps=COLD["steps"], lr=COLD["lr"], warmup_steps=COLD["warmup_steps"], eval_every=0,
                            seed=SEED)
    return sft(copy.deepcopy(base), records, tok, train_cfg, batch_size=COLD["batch_size"], seed=SEED,
               desc="cold start").model.eval()


def run_row(name: str, steps: int, lr: float, command: str) -> dict:
    seed_everything(SEED, threads=1)
    base = base_model(steps)
    before = measure(base)
    start, start_eval = base, before
    if name == "cold":
        start = cold_start(base)
        start_eval = measure(start)
    policy, seconds = grpo(start, lr)
    after = measure(policy)
    return {"run": name, "base_steps": steps, "learning_rate": lr, "grpo_steps": GRPO_STEPS,
            "base_greedy": before["greedy"], "base_sampled": before["sampled"],
            "start_greedy": start_eval["greedy"], "start_sampled": start_eval["sampled"],
            "start_format": start_eval["format"], "after_greedy": after["greedy"],
            "after_sampled": after["sampled"], "after_format": after["format"], "grpo_seconds": round(seconds, 1),
            "seed": SEED, "command": command, "machine": machine("cpu")}


def write(rows: list[dict]) -> None:
    """Merge ``rows`` into the CSV, replacing earlier rows of the same run and settings."""
    key = lambda r: (r["run"], int(r["base_steps"]), float(r["learning_rate"]))  # noqa: E731
    kept = {}
    if OUT.exists():
        with OUT.open() as f:
            kept = {key(r): r for r in csv.DictReader(f)}
    kept.update({key(r): r for r in rows})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        for k in sorted(kept, key=lambda k: (k[0] == "cold", k[1], k[2])):
            writer.writerow(kept[k])


def parse_only(values: list[str]) -> list[tuple[str, int, float]]:
    todo = []
    for value in values:
        if value == "cold":
            todo.append(("cold", 200, 1e-4))
            continue
        try:
            steps, lr = value.split(":")
            todo.append(("sweep", int(steps), float(lr)))
        except ValueError:
            raise SystemExit(f"--only {value!r}: give STEPS:LR (e.g. 200:1e-4) or 'cold'") from None
    return todo


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=None, help="rows to run: STEPS:LR or 'cold' (default: all)")
    args = parser.parse_args(argv)
    set_progress(False)
    todo = parse_only(args.only) if args.only else [("sweep", s, lr) for s, lr in ROWS] + [("cold", 200, 1e-4)]
    for name, steps, lr in todo:
        start = time.perf_counter()
        spec = "cold" if name == "cold" else f"{steps}:{lr:g}"
        row = run_row(name, steps, lr, f"python experiments/grpo_sweep.py --only {spec}")  # reproduces this row
        write([row])  # after every row: a stopped sweep keeps what it finished
        print(f"{name} base {steps} lr {lr:g}: greedy {row['start_greedy']:.3f} -> {row['after_greedy']:.3f}, "
              f"sampled {row['start_sampled']:.3f} -> {row['after_sampled']:.3f}, format after "
              f"{row['after_format']:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
