"""Dataset records and their JSONL files: one JSON object a line.

A record is one training example: ``id``, ``task``, ``prompt``, ``completion``,
``answer`` (the reference answer), ``source`` ("generator" or "teacher") and
``meta`` (the problem's key as a string, its difficulty, the seed, ...). JSONL
is what SFT and RL libraries read (TRL, datatrove) and what a person can grep.

``read_jsonl`` is strict: a line that is not JSON, not an object, or misses a
field raises :class:`JSONLError`, which names the file and the line. Blank
lines are skipped. A record built in this session also holds its problem
object (``record.problem``, never written), for filters that re-verify.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIELDS = ("id", "task", "prompt", "completion", "answer", "source", "meta")


class JSONLError(ValueError):
    """A JSONL file that cannot be read as records; the message names the file and line."""


@dataclass
class Record:
    id: str
    task: str
    prompt: str
    completion: str
    answer: str
    source: str = "generator"
    meta: dict[str, Any] = field(default_factory=dict)
    problem: Any = field(default=None, compare=False, repr=False)  # in memory only

    @property
    def text(self) -> str:
        return self.prompt + self.completion

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        missing = [f for f in FIELDS if f not in data]
        if missing:
            raise ValueError(f"missing field {missing[0]!r}")
        for name in FIELDS[:-1]:
            if not isinstance(data[name], str):
                raise ValueError(f"field {name!r} is a {type(data[name]).__name__}; expected a string")
        if not isinstance(data["meta"], dict):
            raise ValueError("field 'meta' is not an object")
        return cls(**{name: data[name] for name in FIELDS})


def write_jsonl(path: str | Path, records: Iterable[Record]) -> Path:
    """Write one record a line (UTF-8); parent folders are created. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[Record]:
    """The records of a JSONL file; raises JSONLError naming the file and line of a bad one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    out = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                raise JSONLError(f"{path}, line {lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(data, dict):
                raise JSONLError(f"{path}, line {lineno}: a JSON {type(data).__name__}, not an object")
            try:
                out.append(Record.from_dict(data))
            except ValueError as e:
                raise JSONLError(f"{path}, line {lineno}: {e}") from None
    return out


__all__ = ["FIELDS", "JSONLError", "Record", "read_jsonl", "write_jsonl"]
