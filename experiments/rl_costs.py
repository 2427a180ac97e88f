"""What RL costs, measured in miniature: the runs behind lesson 11's precomputed plots.

Each subcommand trains from lesson 11's two-skill base (addition with worked steps and JSON tool
calls, :mod:`mlakit.recipes.two_skills`, trained once and kept in ``runs/11-base``) and writes one
CSV under ``experiments/results/`` whose first lines (``#``) name the command, the seed and the machine:

- ``forgetting --beta B``: GRPO with R1-Zero's rewards (accuracy + format) on additions only; both
  skills' held-out greedy accuracy every ``--eval-steps``, with reward, k3, entropy and length per
  step (``forgetting_beta<B>.csv``); the final policy is kept in ``runs/11-rl-beta<B>``. Another
  ``--seed``, ``--steps`` or ``--lr`` is named in the file (``forgetting_beta0_seed1.csv``);
- ``mitigation``: from the 300-step ``beta 0`` run (``runs/11-rl-beta0_steps300``; ``--start``), R1's
  last stage two ways: SFT on mixed data collected by rejection sampling, and GRPO with a reward for
  each skill (``mitigation.csv``);
- ``hacking``: GRPO against the sloppy verifier ("the answer occurs somewhere in the completion"),
  with the strict verifier logged beside it at weight 0 and strict held-out accuracy (``hacking.csv``);
  ``--length-bonus W`` adds a reward for length with weight W (``hacking_length.csv``);
- ``sharpening``: pass@k, k = 1..16, of the base and of ``runs/11-rl-beta0`` on the held-out additions,
  16 samples each, the unbiased estimator (``sharpening.csv``);
- ``safety``: a base with a third skill, refusing forbidden requests (:mod:`mlakit.data.refusal`), trained
  the same way (kept in ``runs/11-safety-base``), then the ``forgetting`` run on it: the refusal rate on
  held-out forbidden requests and the share of held-out tool requests refused, beside both skills
  (``safety.csv``).

Run them all with ``make experiments`` (or ``python experiments/rl_costs.py all``), one core each: from
seconds (sharpening) to 2 minutes for a 100-step GRPO run with its evaluations and 5 for the 300-step
one, about 25 minutes in all, plus 2-3 minutes to train each base the first time.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import shlex
import sys
import time
from pathlib import Path

import torch

import mlakit
from mlakit.data import REFUSAL, Record, mean_pass_at_k, parse_completion, verify_sloppy
from mlakit.generate import generate
from mlakit.recipes import sft
from mlakit.recipes.two_skills import (
    NEW_TOKENS,
    evaluate_skills,
    skill_accuracy,
    skill_problems,
    skill_tokenizer,
    train_base,
)
from mlakit.rl import (
    GRPOConfig,
    GRPOTrainer,
    accuracy_reward,
    combine_evals,
    format_reward,
    mixed_prompts,
    per_task_reward,
    skills_eval,
)
from mlakit.train import TrainConfig, load_model_from_checkpoint

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from benchutil import machine  # noqa: E402  the benchmarks' machine line

RUNS = ROOT / "runs"
RESULTS = ROOT / "experiments" / "results"
BASE = dict(steps=400, lr=3e-3, warmup_steps=20, batch_size=32, tagged_share=0.1, seed=0)
GRPO = dict(num_generations=8, prompts_per_step=16, max_completion_length=NEW_TOKENS["arithmetic"], temperature=1.0,
            learning_rate=3e-4, max_steps=100, epsilon=0.2, loss_type="dapo", seed=0)
SAMPLES = 16  # samples per held-out problem for pass@k


def write_csv(name: str, rows: list[dict], seed: int, seconds: float) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        f.write(f"# command: python experiments/{Path(sys.argv[0]).name} {shlex.join(sys.argv[1:])}\n")
        f.write(f"# seed: {seed}\n# machine: {machine('cpu')}\n# seconds: {seconds:.0f}\n")
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    print(f"wrote {path.relative_to(ROOT)} ({len(rows)} rows, {seconds:.0f} s)")
    return path


def base_model(tok, skills, folder=RUNS / "11-base", settings=BASE):
    """The lesson's base: loaded from ``folder`` when its settings match, else trained and saved."""
    try:
        if json.loads((folder / "lesson11.json").read_text()) == settings:
            return load_model_from_checkpoint(folder).eval()
    except (OSError, ValueError):
        pass
    run = train_base(skills, tok, **BASE)
    run.trainer.save(folder)
    (folder / "lesson11.json").write_text(json.dumps(settings))
    return run.model.eval()


KEEP = ("step", "reward", "reward_accuracy", "reward_format", "reward_sloppy", "reward_strict", "reward_length", "kl",
        "entropy",
        "completion_length", "frac_reward_zero_std", "acc_arithmetic", "acc_toolcall", "acc_refusal", "refused_toolcall",
        "lr")


def arithmetic_grpo(model, tok, skills, reward_funcs, config, ref, eval_fn=None):
    trainer = GRPOTrainer(model, tok, reward_funcs, skills.train["arithmetic"], config, ref_model=ref,
                          eval_fn=eval_fn or skill_accuracy(tok, skills))
    trainer.train()  # the base's accuracy is the run's row at step -1
    return trainer


def history_rows(trainer, extra):
    return [{**extra, **{k: r.get(k) for k in KEEP if k in r}} for r in trainer.history]


RUN_OPTIONS = {"lr": "learning_rate", "steps": "max_steps", "seed": "seed"}  # named in a forgetting run's files
# when not GRPO's: --lr 1e-4 -> forgetting_beta0_lr0.0001.csv and runs/11-rl-beta0_lr0.0001


def cmd_forgetting(args, tok, skills, base):
    config = GRPOConfig(**{**GRPO, "learning_rate": args.lr, "max_steps": args.steps, "seed": args.seed},
                        beta=args.beta, eval_steps=args.eval_steps)
    trainer = arithmetic_grpo(copy.deepcopy(base), tok, skills, [accuracy_reward(skills.tasks["arithmetic"]),
                                                                 format_reward], config, copy.deepcopy(base))
    suffix = "".join(f"_{option}{getattr(args, option):g}" for option, key in RUN_OPTIONS.items()
                     if getattr(args, option) != GRPO[key])
    trainer.save(RUNS / f"11-rl-beta{args.beta:g}{suffix}")  # where mitigation and sharpening start
    start = evaluate_skills(base, tok, skills)
    extra = {"beta": args.beta, "learning_rate": args.lr, "seed": args.seed}
    rows = [{**extra, "step": -1, **start}] + history_rows(trainer, extra)
    return f"forgetting_beta{args.beta:g}{suffix}.csv", rows, trainer.seconds


def samples(model, tok, problems, n, max_new_tokens, seed):
    """``n`` completions at temperature 1 of each problem, 32 problems a batch: yields (index, problem, texts)."""
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    for start in range(0, len(problems), 32):
        part = problems[start:start + 32]
        ids, mask = tok.encode_batch([p.prompt for p in part], bos=True)
        out = generate(model, ids, max_new_tokens, temperature=1.0, attention_mask=mask, eos_id=tok.eos_id,
                       pad_id=tok.pad_id, num_return_sequences=n, return_dict=True, generator=gen)
        seqs = out.sequences[:, ids.shape[1]:].tolist()
        keep = out.completion_mask.tolist()
        for i, p in enumerate(part):
            yield start + i, p, [tok.decode([t for t, k in zip(seqs[j], keep[j], strict=True) if k and t != tok.eos_id])
                                 for j in range(i * n, (i + 1) * n)]


def sample_verified(model, tok, task, problems, n, max_new_tokens, seed):
    """Rejection sampling: ``n`` samples per problem at temperature 1, the first that the strict verifier
    accepts kept (R1 §2.3.3); returns (records, acceptance rate)."""
    kept, tried, accepted = [], 0, 0
    for index, p, texts in samples(model, tok, problems, n, max_new_tokens, seed):
        good = [t for t in texts if task.verify(p, t)]
        tried, accepted = tried + len(texts), accepted + len(good)
        if good:
            kept.append(Record(f"rs-{task.name}-{index}", task.name, p.prompt, good[0], p.answer, problem=p))
    return kept, accepted / max(1, tried)


def count_right(model, tok, task, problems, n, max_new_tokens, seed):
    """How many of ``n`` samples at temperature 1 the strict verifier accepts, for each problem."""
    return [sum(task.verify(p, t) for t in texts) for _, p, texts in samples(model, tok, problems, n, max_new_tokens, seed)]


def rl_checkpoint(name):
    """The policy a ``forgetting`` run kept in runs/11-rl-<name>."""
    folder = RUNS / f"11-rl-{name}"
    if not folder.exists():
        beta, *changed = name.removeprefix("beta").split("_")
        options = "".join(f" --{option} {part.removeprefix(option)}" for part in changed
                          for option in RUN_OPTIONS if part.startswith(option))
        raise SystemExit(f"run `python experiments/rl_costs.py forgetting --beta {beta}{options}` first "
                         f"(it writes {folder.relative_to(ROOT)})")
    return load_model_from_checkpoint(folder).eval()


def cmd_mitigation(args, tok, skills, base):
    rl = rl_checkpoint(args.start)
    t0 = time.perf_counter()
    # GRPO learns only from groups whose samples differ: the share of held-out tool requests, by function,
    # for which none of 8 samples of the RL model is right (its gradient there is zero)
    calls = skills.held_out["toolcall"]
    right = count_right(rl, tok, skills.tasks["toolcall"], calls, 8, NEW_TOKENS["toolcall"], seed=3)
    none_right = {f"none_of_8_right_{f}": sum(c == 0 for c, p in zip(right, calls, strict=True) if p.name == f) /
                  sum(p.name == f for p in calls) for f in sorted({p.name for p in calls})}
    rows = [{"stage": "base", **evaluate_skills(base, tok, skills)},
            {"stage": "after arithmetic GRPO", "start": args.start, **evaluate_skills(rl, tok, skills), **none_right}]
    # (a) R1's way: rejection-sampled reasoning data from the RL model, other data from the base (R1 took
    # its non-reasoning data from V3), mixed, then SFT of the RL model on it
    n = args.rs_problems
    arith, arith_rate = sample_verified(rl, tok, skills.tasks["arithmetic"], skills.train["arithmetic"][:n], 4,
                                        NEW_TOKENS["arithmetic"], seed=1)
    calls, call_rate = sample_verified(base, tok, skills.tasks["toolcall"], skills.train["toolcall"][:n], 4,
                                       NEW_TOKENS["toolcall"], seed=2)
    mixed = arith + calls
    cfg = TrainConfig(steps=args.sft_steps, lr=args.sft_lr, warmup_steps=4, eval_every=0, seed=0)
    run = sft(copy.deepcopy(rl), mixed, tok, cfg, batch_size=32, seed=0, desc="mixed SFT")
    rows.append({"stage": "mixed rejection-sampled SFT", **evaluate_skills(run.model.eval(), tok, skills),
                 "examples": len(mixed), "acceptance_arithmetic": arith_rate, "acceptance_toolcall": call_rate,
                 "steps": args.sft_steps})
    # (b) RL over all scenarios: both skills' prompts, each scored by its own strict verifier (+ format for sums)
    prompts = mixed_prompts({"arithmetic": skills.train["arithmetic"], "toolcall": skills.train["toolcall"]})
    reward = per_task_reward({name: accuracy_reward(task) for name, task in skills.tasks.items()})
    arith_format = per_task_reward({"arithmetic": format_reward}, name="format", default=0.0)
    config = GRPOConfig(**{**GRPO, "max_completion_length": NEW_TOKENS["toolcall"], "max_steps": args.rl_steps,
                           "learning_rate": 1e-4}, eval_steps=args.rl_eval_steps)
    trainer = GRPOTrainer(copy.deepcopy(rl), tok, [reward, arith_format], prompts, config,
                          eval_fn=skill_accuracy(tok, skills))
    trainer.train(desc="GRPO, both skills")
    rows += [{"stage": "GRPO with both rewards", "steps": r["step"] + 1,
              **{k: r[k] for k in ("acc_arithmetic", "acc_toolcall")}} for r in trainer.history if "acc_toolcall" in r]
    return "mitigation.csv", rows, time.perf_counter() - t0


def sloppy_reward(prompts, completions, problem, **kwargs):
    """The WRONG verifier as a reward: 1 when the right number occurs anywhere in the completion."""
    return [1.0 if verify_sloppy(p, c) else 0.0 for p, c in zip(problem, completions, strict=True)]


sloppy_reward.__name__ = "sloppy"


def length_reward(prompts, completions, completion_ids, **kwargs):
    """A reward for length: the share of max_completion_length a completion fills (eos included)."""
    return [len(ids) / GRPO["max_completion_length"] for ids in completion_ids]


length_reward.__name__ = "length"


def cmd_hacking(args, tok, skills, base):
    strict = accuracy_reward(skills.tasks["arithmetic"])
    strict.__name__ = "strict"
    funcs, weights = [sloppy_reward, strict], [1.0, 0.0]  # the strict reward is logged, never trained on
    if args.length_bonus:
        funcs, weights = funcs + [length_reward], weights + [args.length_bonus]
    config = GRPOConfig(**{**GRPO, "learning_rate": args.lr, "max_steps": args.steps}, reward_weights=weights,
                        eval_steps=args.eval_steps)
    trainer = arithmetic_grpo(copy.deepcopy(base), tok, skills, funcs, config, copy.deepcopy(base))
    extra = {"learning_rate": args.lr, "length_bonus": args.length_bonus}
    start = {**extra, "step": -1, **evaluate_skills(base, tok, skills)}
    name = "hacking.csv" if not args.length_bonus else "hacking_length.csv"
    return name, [start] + history_rows(trainer, extra), trainer.seconds


def cmd_sharpening(args, tok, skills, base):
    rl = rl_checkpoint("beta0")
    task, problems = skills.tasks["arithmetic"], skills.held_out["arithmetic"]
    t0 = time.perf_counter()
    rows = []
    for name, model in (("base", base), ("after GRPO", rl)):
        correct = count_right(model, tok, task, problems, SAMPLES, NEW_TOKENS["arithmetic"], seed=1)
        for k in range(1, SAMPLES + 1):
            rows.append({"model": name, "k": k, "pass_at_k": mean_pass_at_k(SAMPLES, correct, k),
                         "unsolved": sum(c == 0 for c in correct)})
    return "sharpening.csv", rows, time.perf_counter() - t0


REFUSAL_TRAIN = 600  # forbidden requests in the safety base's SFT mix (200 more are held out)


def is_refusal(problem, completion: str) -> bool:
    """Did the model refuse? (whatever it was asked)"""
    return parse_completion(completion).answer == REFUSAL


def cmd_safety(args, tok, skills, base):
    """The forgetting run on a base that also refuses forbidden requests: do the refusals survive RL that
    rewards sums only, and does the model start to refuse allowed tool requests?"""
    skills = skill_problems(num_refusal_train=REFUSAL_TRAIN)
    mlakit.seed_everything(0, threads=1)
    base = base_model(tok, skills, RUNS / "11-safety-base", {**BASE, "num_refusal_train": REFUSAL_TRAIN})
    mlakit.seed_everything(0, threads=1)
    evaluate = combine_evals(skill_accuracy(tok, skills),
                             skills_eval(tok, {"toolcall": skills.held_out["toolcall"]}, {"toolcall": is_refusal},
                                         max_new_tokens=NEW_TOKENS, prefix="refused_"))
    config = GRPOConfig(**GRPO, beta=args.beta, eval_steps=args.eval_steps)
    trainer = arithmetic_grpo(copy.deepcopy(base), tok, skills, [accuracy_reward(skills.tasks["arithmetic"]),
                                                                 format_reward], config, copy.deepcopy(base),
                              eval_fn=evaluate)
    extra = {"beta": args.beta, "refusal_train": REFUSAL_TRAIN}
    return "safety.csv", [{**extra, "step": -1, **evaluate(base)}] + history_rows(trainer, extra), trainer.seconds


ALL = [["forgetting", "--beta", "0"], ["forgetting", "--beta", "0.04"], ["forgetting", "--beta", "0.5"],
       *[["forgetting", "--beta", beta, "--seed", seed] for beta in ("0", "0.04", "0.5") for seed in ("1", "2")],
       ["forgetting", "--beta", "0", "--steps", "300", "--eval-steps", "50"],
       ["mitigation"], ["hacking"], ["hacking", "--length-bonus", "0.5", "--steps", "60"], ["sharpening"],
       ["safety"]]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("forgetting")
    f.add_argument("--beta", type=float, default=0.0)
    f.add_argument("--lr", type=float, default=GRPO["learning_rate"])
    f.add_argument("--steps", type=int, default=GRPO["max_steps"])
    f.add_argument("--eval-steps", type=int, default=20)
    f.add_argument("--seed", type=int, default=GRPO["seed"], help="GRPO's seed (the base is the same)")
    m = sub.add_parser("mitigation")
    m.add_argument("--start", default="beta0_steps300", help="the forgetting run to mend (runs/11-rl-<start>)")
    m.add_argument("--rs-problems", type=int, default=300)
    m.add_argument("--sft-steps", type=int, default=40)
    m.add_argument("--sft-lr", type=float, default=5e-4)
    m.add_argument("--rl-steps", type=int, default=60)
    m.add_argument("--rl-eval-steps", type=int, default=20, help="both skills evaluated every this many GRPO steps")
    h = sub.add_parser("hacking")
    h.add_argument("--lr", type=float, default=GRPO["learning_rate"])
    h.add_argument("--steps", type=int, default=GRPO["max_steps"])
    h.add_argument("--eval-steps", type=int, default=20)
    h.add_argument("--length-bonus", type=float, default=0.0, help="weight of a reward for length (0: none)")
    sub.add_parser("sharpening")
    s = sub.add_parser("safety")
    s.add_argument("--beta", type=float, default=0.0)
    s.add_argument("--eval-steps", type=int, default=20)
    sub.add_parser("all", help="every run above with its defaults, in order (what `make experiments` runs)")
    args = parser.parse_args(argv)
    if args.cmd == "all":
        for run in ALL:
            sys.argv = [sys.argv[0], *run]
            main(run)
        return
    mlakit.seed_everything(0, threads=1)
    tok, skills = skill_tokenizer(), skill_problems()
    base = base_model(tok, skills) if args.cmd != "safety" else None  # the safety run trains its own
    mlakit.seed_everything(0, threads=1)
    name, rows, seconds = {"forgetting": cmd_forgetting, "mitigation": cmd_mitigation, "hacking": cmd_hacking,
                           "sharpening": cmd_sharpening, "safety": cmd_safety}[args.cmd](args, tok, skills, base)
    write_csv(name, rows, getattr(args, "seed", GRPO["seed"]), seconds)


if __name__ == "__main__":
    main()
