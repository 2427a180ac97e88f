"""The ``mlakit`` command: ``mlakit doctor``, ``mlakit cache`` and, as the course grows, more."""

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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
