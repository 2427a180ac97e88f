"""The data card: what each stage of the pipeline did to the data, in counts.

A synthetic dataset is only as trustworthy as its account of what was thrown
away. The card records, in pipeline order: generated, failed verification,
exact duplicates, near duplicates, contaminated, dropped by each filter,
kept, so generated = the removals + kept always holds, with the task, its
knobs, the seed and the settings of every stage (and, with a teacher, its
acceptance rate per difficulty and pass@k). It is written beside the JSONL
(``add.jsonl`` -> ``add.card.json``) and printed by ``mlakit data card``,
together with a summary computed from the records themselves.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .records import Record

STAGES = ("generated", "failed_verification", "exact_duplicates", "near_duplicates", "contaminated")


@dataclass
class DataCard:
    task: str
    knobs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    source: str = "generator"  # or "teacher"
    generated: int = 0  # candidate records (problems, times samples per problem with a teacher)
    failed_verification: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    contaminated: int = 0
    filtered: dict[str, int] = field(default_factory=dict)  # filter name -> records it dropped
    kept: int = 0
    settings: dict[str, Any] = field(default_factory=dict)  # dedup and decontamination parameters
    teacher: dict[str, Any] | None = None  # acceptance per difficulty, pass@k

    def check(self) -> None:
        """generated = every removal + kept."""
        removed = self.failed_verification + self.exact_duplicates + self.near_duplicates + self.contaminated
        if removed + sum(self.filtered.values()) + self.kept != self.generated:
            raise AssertionError(f"data card does not add up: {self.one_line()}")

    def rows(self) -> list[tuple[str, int]]:
        rows = [(stage.replace("_", " "), getattr(self, stage)) for stage in STAGES]
        rows += [(f"filtered: {name}", n) for name, n in self.filtered.items()]
        return rows + [("kept", self.kept)]

    def one_line(self) -> str:
        return ", ".join(f"{name} {n:,}" for name, n in self.rows())

    def format(self) -> str:
        knobs = ", ".join(f"{k}={v}" for k, v in self.knobs.items())
        lines = [f"data card: task {self.task} ({knobs}), seed {self.seed}, source {self.source}"]
        width = max(len(name) for name, _ in self.rows())
        for name, n in self.rows():
            share = f"{n / self.generated:7.1%}" if self.generated else ""
            lines.append(f"  {name:<{width}}  {n:>9,}  {share}")
        if self.settings:
            lines.append("  settings: " + ", ".join(f"{k}={v}" for k, v in self.settings.items()))
        if self.teacher:
            lines.append(f"  teacher: {self.teacher.get('samples')} samples per prompt at temperature "
                         f"{self.teacher.get('temperature')}")
            for d, row in sorted(self.teacher.get("by_difficulty", {}).items(), key=lambda kv: int(kv[0])):
                lines.append(f"    difficulty {d}: {row['correct']}/{row['samples']} samples accepted "
                             f"({row['acceptance']:.1%}), {row['solved']}/{row['problems']} problems solved")
            passk = ", ".join(f"pass@{k} {v:.3f}" for k, v in self.teacher.get("pass_at_k", {}).items())
            if passk:
                lines.append(f"    {passk}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> DataCard:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(data, dict) or "task" not in data:
            raise ValueError(f"{path} is not a data card")
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


def card_path(jsonl_path: str | Path) -> Path:
    """Where the card of a JSONL file lives: ``add.jsonl`` -> ``add.card.json``."""
    p = Path(jsonl_path)
    return p.with_name(p.stem + ".card.json")


def summarize(records: Sequence[Record]) -> str:
    """A summary computed from the records alone: counts by task, source and difficulty, distinct
    keys, and the lengths of prompts and completions."""
    n = len(records)
    if not n:
        return "0 records"
    tasks = Counter(r.task for r in records)
    sources = Counter(r.source for r in records)
    keys = {r.meta.get("key") for r in records if "key" in r.meta}
    difficulty = Counter(r.meta.get("difficulty") for r in records if "difficulty" in r.meta)
    plen = [len(r.prompt) for r in records]
    clen = [len(r.completion) for r in records]
    lines = [f"{n:,} records",
             "  tasks: " + ", ".join(f"{t} {c:,}" for t, c in sorted(tasks.items())),
             "  sources: " + ", ".join(f"{s} {c:,}" for s, c in sorted(sources.items()))]
    if keys:
        lines.append(f"  distinct problem keys: {len(keys):,}")
    if difficulty:
        lines.append("  difficulty: " + ", ".join(f"{d}: {c:,}" for d, c in sorted(difficulty.items(), key=str)))
    lines.append(f"  prompt chars: mean {sum(plen) / n:.1f}, max {max(plen)}; "
                 f"completion chars: mean {sum(clen) / n:.1f}, max {max(clen)}")
    return "\n".join(lines)


__all__ = ["DataCard", "card_path", "summarize", "STAGES"]
