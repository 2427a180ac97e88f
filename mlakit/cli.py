"""The ``mlakit`` command: doctor, cache, exercises build/check, grade."""

from __future__ import annotations

import argparse
import sys


def _cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import main

    return main()


def _cmd_cache(args: argparse.Namespace) -> int:
    from .config import ModelConfig
    from .kvcache import comparison_table, format_table

    config = ModelConfig.from_preset(args.preset)
    rows = comparison_table(config, seq_len=args.context, dtype=args.dtype)
    print(f"KV cache of {args.preset} for one sequence of {args.context:,} tokens ({args.dtype}):\n")
    print(format_table(rows))
    return 0


def _cmd_exercises(args: argparse.Namespace) -> int:
    from .exercises import build, drift

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
    from .grade import main

    return main(args.notebook, as_json=args.json, timeout=args.timeout)


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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
