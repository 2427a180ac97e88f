"""``mlakit data``: build a synthetic dataset (``build``) or describe one (``card``).

    mlakit data build --task addition --n 20000 --out data/add.jsonl
    mlakit data build --task addition --n 2000 --out data/teacher.jsonl --teacher runs/nano --samples 4
    mlakit data build --task countdown --knob num_numbers=3 --reasoning --n 5000 --out data/cd.jsonl
    mlakit data card data/add.jsonl

``build`` runs :func:`~mlakit.data.build_dataset` with a progress bar
(``MLAKIT_PROGRESS=0`` turns it off), writes the JSONL and its data card
(``add.card.json`` beside ``add.jsonl``) and prints the card. ``--teacher``
takes a checkpoint folder written by ``mlakit train``. ``--eval`` names a JSONL
of evaluation records to decontaminate against. ``card`` prints the stored
card, if any, and a summary computed from the records. Bad input prints one
line and exits with status 2.

:func:`register` adds the subcommand to the ``mlakit`` parser; :func:`run`
is its handler.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

_INT = re.compile(r"-?\d+")
_FLOAT = re.compile(r"-?\d+\.\d*(e-?\d+)?|-?\d+e-?\d+")


def _knob_value(text: str):
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_knobs(items: list[str] | None) -> dict:
    """``["max_digits=3", "with_steps=false"]`` -> {"max_digits": 3, "with_steps": False}."""
    knobs = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--knob {item!r} is not NAME=VALUE")
        knobs[name.strip()] = _knob_value(value.strip())
    return knobs


def _build(args: argparse.Namespace) -> int:
    from .card import card_path
    from .filters import length_filter
    from .pipeline import Teacher, build_dataset
    from .records import read_jsonl, write_jsonl
    from .registry import get_task

    task = get_task(args.task, **parse_knobs(args.knob))
    teacher = None
    if args.teacher:
        from ..tokenizer import CharTokenizer
        from ..train import load_model_from_checkpoint

        folder = Path(args.teacher)
        if not (folder / "model.safetensors").exists():
            raise ValueError(f"no checkpoint in {folder} (expected model.safetensors, written by `mlakit train`)")
        teacher = Teacher(load_model_from_checkpoint(folder).eval(), CharTokenizer.load(folder / "tokenizer.json"),
                          samples=args.samples, temperature=args.temperature,
                          max_new_tokens=args.max_new_tokens)
    eval_items = read_jsonl(args.eval) if args.eval else None
    filters = [length_filter(max_chars=args.max_chars)] if args.max_chars else []
    ds = build_dataset(task, args.n, seed=args.seed, reasoning=args.reasoning, teacher=teacher,
                       eval_items=eval_items, per_key=args.per_key or None, near_threshold=args.near_threshold,
                       filters=filters)
    out = write_jsonl(args.out, ds.records)
    ds.card.save(card_path(out))
    print(ds.card.format())
    print(f"wrote {len(ds.records):,} records to {out} (card: {card_path(out)})")
    return 0


def _card(args: argparse.Namespace) -> int:
    from .card import DataCard, card_path, summarize
    from .records import read_jsonl

    records = read_jsonl(args.path)
    stored = card_path(args.path)
    if stored.is_file():
        print(DataCard.load(stored).format())
    print(f"{args.path}: {summarize(records)}")
    return 0


def run(args: argparse.Namespace) -> int:
    """The handler of ``mlakit data``: one line and exit status 2 on bad input."""
    from .pipeline import EmptyDatasetError

    try:
        return _build(args) if args.action == "build" else _card(args)
    except EmptyDatasetError as e:
        print(f"mlakit data {args.action}: {str(e).splitlines()[0]}")
        return 2
    except (ValueError, FileNotFoundError) as e:
        print(f"mlakit data {args.action}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        return 2


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``data`` (actions ``build`` and ``card``) to an argparse subparsers object."""
    p = subparsers.add_parser("data", help="build a synthetic dataset (JSONL + data card) or describe one")
    actions = p.add_subparsers(dest="action", required=True)
    b = actions.add_parser("build", help="generate, verify, dedup, decontaminate and filter; write JSONL")
    b.add_argument("--task", required=True, help="addition, countdown, toolcall or wordproblem")
    b.add_argument("--n", type=_positive, required=True, help="problems to generate")
    b.add_argument("--out", required=True, help="the JSONL file to write (its card goes beside it)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--knob", action="append", metavar="NAME=VALUE", help="a difficulty knob; repeat for more")
    b.add_argument("--reasoning", action="store_true", help="completions in R1's <think>/<answer> format")
    b.add_argument("--teacher", metavar="CKPT", help="sample completions from this checkpoint folder")
    b.add_argument("--samples", type=_positive, default=4, help="completions per prompt with --teacher")
    b.add_argument("--temperature", type=float, default=1.0, help="sampling temperature with --teacher")
    b.add_argument("--max-new-tokens", type=_positive, default=64, help="completion budget with --teacher")
    b.add_argument("--per-key", type=int, default=1, help="records kept per problem key (0: no limit)")
    b.add_argument("--near-threshold", type=float, default=0.8, help="Jaccard similarity of near duplicates")
    b.add_argument("--eval", metavar="JSONL", help="evaluation records to decontaminate against")
    b.add_argument("--max-chars", type=_positive, default=None, help="drop longer prompt + completion")
    b.set_defaults(func=run)
    c = actions.add_parser("card", help="print a dataset's data card and a summary of its records")
    c.add_argument("path", help="a JSONL file written by `mlakit data build`")
    c.set_defaults(func=run)
    return p


__all__ = ["register", "run", "parse_knobs"]
