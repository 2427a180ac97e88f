"""The ``mlakit`` command: doctor, cache, exercises build/check, grade, train, generate, dashboard."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

TRAIN_BYTES_PER_PARAMETER = 16  # fp32 weight + gradient + Adam's two moments, before any activation


class CLIError(Exception):
    """Bad input to a command: printed as one line, ``mlakit <command>: <message>``, exit status 2."""


def _at_least(value, low, flag: str, what: str = "") -> None:
    if value is not None and value < low:
        raise CLIError(f"{flag} {value} is invalid: must be >= {low}{what}")


def _available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _writable_folder(out: str) -> Path:
    """The --out folder, created now (with its parents) and checked writable, before any training."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise CLIError(f"--out {out} is an existing file, not a folder: choose a folder for the checkpoint")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".mlakit-write-test-{os.getpid()}"  # one per process: data-parallel ranks check at once
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CLIError(f"--out {out} cannot be written ({e.strerror or e}): choose a folder you can write to") from None
    return folder


def _cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import main

    return main()


def _cmd_cache(args: argparse.Namespace) -> int:
    from .config import ModelConfig
    from .kvcache import comparison_table, format_table

    _at_least(args.context, 1, "--context", " token")
    config = ModelConfig.from_preset(args.preset)
    rows = comparison_table(config, seq_len=args.context, dtype=args.dtype)
    print(f"KV cache of {args.preset} for one sequence of {args.context:,} tokens ({args.dtype}):\n")
    print(format_table(rows))
    return 0


def _cmd_exercises(args: argparse.Namespace) -> int:
    from .course.exercises import build, drift

    if args.action == "build":
        for path in build(args.solutions, args.exercises):
            print(f"wrote {path}")
        return 0
    problems = drift(args.solutions, args.exercises)
    for p in problems:
        print(f"out of date: {p}")
    if problems:
        print("run `make exercises` (or `mlakit exercises build`) to regenerate exercises/")
        return 1
    print("exercises/ is in step with solutions/")
    return 0


def _cmd_grade(args: argparse.Namespace) -> int:
    from .course.grade import main

    return main(args.notebook, as_json=args.json, timeout=args.timeout)


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import ModelConfig
    from .data import encode_problems
    from .params import count_parameters
    from .recipes import addition_splits, pretrain
    from .tokenizer import CharTokenizer
    from .train import TrainConfig
    from .utils import seed_everything

    _at_least(args.nproc, 1, "--nproc")
    rank, trainer_cls = 0, None
    if args.nproc > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:  # data parallel, under torchrun
        from .distributed import DataParallelTrainer, init_from_env, torchrun_command

        nproc = int(os.environ.get("WORLD_SIZE", args.nproc))
        if args.batch_size % nproc:
            raise CLIError(f"--batch-size {args.batch_size} is invalid with --nproc {nproc}: "
                           f"each process takes an equal share, so it must be divisible by {nproc}")
        if "WORLD_SIZE" not in os.environ:  # relaunch this command as nproc processes
            import subprocess

            return subprocess.run(torchrun_command(nproc, args.argv, drop="--nproc")).returncode
        rank, trainer_cls = init_from_env()[0], DataParallelTrainer
    print_ = print if rank == 0 else (lambda *a, **k: None)
    _at_least(args.steps, 1, "--steps")
    _at_least(args.batch_size, 1, "--batch-size")
    _at_least(args.digits, 1, "--digits")
    _at_least(args.threads, 1, "--threads")
    if not args.lr > 0:
        raise CLIError(f"--lr {args.lr} is invalid: must be > 0 (3e-3 is a good start for nano)")
    tok = CharTokenizer()
    try:
        config = ModelConfig.from_preset(args.preset, vocab_size=tok.vocab_size, max_position_embeddings=args.max_len)
    except ValueError as e:
        raise CLIError(str(e)) from None
    need, have = TRAIN_BYTES_PER_PARAMETER * count_parameters(config), _available_memory()
    if have is not None and need > have:
        raise CLIError(f"--preset {args.preset} needs about {need / 1e9:,.1f} GB to train "
                       f"({count_parameters(config):,} parameters x {TRAIN_BYTES_PER_PARAMETER} bytes for weights, "
                       f"gradients and Adam's moments, before activations); this machine has {have / 1e9:,.1f} GB "
                       "available. Use --preset nano")
    folder = _writable_folder(args.out)
    seed_everything(args.seed, threads=args.threads)
    task, splits = addition_splits(args.digits, args.seed)
    longest = max(len(ids) for part in splits.values() for ids, _ in encode_problems(part, tok))
    if args.max_len < longest:
        raise CLIError(f"--max-len {args.max_len} is shorter than the longest training example ({longest} tokens "
                       f"with bos and eos, at --digits {args.digits}): use --max-len {longest} or more")
    print_(f"{args.preset}: {count_parameters(config):,} parameters ({count_parameters(config, active=True):,} active "
          f"per token); {len(splits['train']):,} training problems of up to {args.digits} digits")
    cfg = TrainConfig(steps=args.steps, lr=args.lr, warmup_steps=max(1, args.steps // 10),
                      eval_every=max(1, args.steps // 4), seed=args.seed)
    run = pretrain(config, cfg, tok, batch_size=args.batch_size, seed=args.seed, task=task, splits=splits,
                   **({"trainer_cls": trainer_cls} if trainer_cls else {}))
    for e in run.trainer.evals:
        print_(f"step {e['step']:>5}: validation exact match {e['exact_match']:.1%}")
    out = run.trainer.save(folder)  # rank 0 writes, under data parallelism
    if rank != 0:
        return 0
    tok.save(out / "tokenizer.json")
    run.trainer.write_csv(out / "metrics.csv")
    written = ", ".join(sorted(p.name for p in out.iterdir() if p.is_file()))
    print(f"checkpoint written to {out}: {written}")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from .generate import generate
    from .tokenizer import CharTokenizer
    from .train import load_model_from_checkpoint

    empty = [i + 1 for i, p in enumerate(args.prompt) if not p]
    if empty:
        raise CLIError(f"--prompt number {empty[0]} is empty: give the text to complete, e.g. --prompt '12+34='")
    _at_least(args.max_new_tokens, 0, "--max-new-tokens")
    folder = Path(args.ckpt)
    if not folder.is_dir():
        raise CLIError(f"no checkpoint folder {folder} (`mlakit train --out {folder}` writes one)")
    try:
        model = load_model_from_checkpoint(folder).eval()
        tok = CharTokenizer.load(folder / "tokenizer.json")
        ids, mask = tok.encode_batch(args.prompt, bos=True)
    except (OSError, ValueError, KeyError, TypeError) as e:  # a missing, empty, truncated or foreign file
        raise CLIError(str(e) if not isinstance(e, KeyError) else f"{folder}: config.json lacks {e}") from None
    gen = torch.Generator().manual_seed(args.seed)
    try:
        out = generate(model, ids, args.max_new_tokens, attention_mask=mask, temperature=args.temperature,
                       top_k=args.top_k, top_p=args.top_p, eos_id=tok.eos_id, pad_id=tok.pad_id, generator=gen)
    except ValueError as e:  # a bad option or a prompt past the model's context
        raise CLIError(str(e)) from None
    for prompt, row in zip(args.prompt, out[:, ids.shape[1]:], strict=True):
        print(prompt + tok.decode(row.tolist(), skip_special=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .config import list_presets

    parser = argparse.ArgumentParser(prog="mlakit", description="How DeepSeek made LLMs cheap: course tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("doctor", help="check the environment (packages, GPU, Triton)")
    p.set_defaults(func=_cmd_doctor)
    p = sub.add_parser("cache", help="KV-cache size of a preset under MHA / GQA / MQA / MLA")
    p.add_argument("--preset", default="deepseek-v3", choices=list_presets())
    p.add_argument("--context", type=int, default=128 * 1024, help="tokens in the sequence (default 131072)")
    p.add_argument("--dtype", default="bf16", choices=["fp32", "bf16", "fp16", "fp8"])
    p.set_defaults(func=_cmd_cache)
    p = sub.add_parser("exercises", help="build exercises/ from solutions/, or check they are in step")
    p.add_argument("action", choices=["build", "check"])
    p.add_argument("--solutions", default="solutions")
    p.add_argument("--exercises", default="exercises")
    p.set_defaults(func=_cmd_exercises)
    p = sub.add_parser("grade", help="run a learner's notebook and grade its exercises")
    p.add_argument("notebook")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument("--timeout", type=float, default=60, help="seconds per cell (default 60)")
    p.set_defaults(func=_cmd_grade)
    p = sub.add_parser("train", help="pretrain a model on the synthetic addition task; writes a checkpoint")
    p.add_argument("--preset", default="nano", choices=list_presets())
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--out", required=True, help="checkpoint folder")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--digits", type=int, default=2, help="largest number of digits per operand")
    p.add_argument("--max-len", type=int, default=64, help="longest sequence the model serves")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--nproc", type=int, default=1, help="data-parallel processes, launched with torchrun (default 1)")
    p.set_defaults(func=_cmd_train)
    p = sub.add_parser("generate", help="complete prompts with a trained checkpoint")
    p.add_argument("--ckpt", required=True, help="checkpoint folder written by `mlakit train`")
    p.add_argument("--prompt", action="append", required=True, help="a prompt; repeat for a batch")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_generate)
    from .data.cli import register

    register(sub)  # mlakit data build / card
    from .rl.cli import register as register_grpo

    register_grpo(sub)  # mlakit grpo
    from .viz.app import register as register_dashboard

    register_dashboard(sub)  # mlakit dashboard (Voila)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what `mlakit train --nproc N` relaunches
    try:
        return args.func(args)
    except CLIError as e:
        print(f"mlakit {args.command}: {e}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
