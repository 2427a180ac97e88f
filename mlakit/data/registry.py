"""Tasks by name: ``get_task("countdown", num_numbers=3)`` and ``list_tasks()``.

One table of the synthetic tasks the CLI and the lessons can name. Knobs are
passed as keywords and validated by the task itself; an unknown task or knob
raises a ValueError that lists the valid ones.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .arithmetic import AdditionTask
from .countdown import CountdownTask
from .task import Task
from .toolcall import ToolCallTask
from .wordproblem import WordProblemTask

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (AdditionTask, CountdownTask, ToolCallTask, WordProblemTask)}


def list_tasks() -> list[str]:
    """The names :func:`get_task` accepts, sorted."""
    return sorted(TASKS)


def task_knobs(name: str) -> dict[str, Any]:
    """A task's knobs and their defaults."""
    cls = _lookup(name)
    return {f.name: f.default for f in dataclasses.fields(cls)}


def _lookup(name: str) -> type[Task]:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(list_tasks())}")
    return TASKS[name]


def get_task(name: str, **knobs: Any) -> Task:
    """The task ``name`` with its difficulty knobs set (the rest at their defaults)."""
    cls = _lookup(name)
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(knobs) - set(valid))
    if unknown:
        raise ValueError(f"task {name!r} has no knob {unknown[0]!r}; its knobs: {', '.join(valid)}")
    return cls(**knobs)


__all__ = ["TASKS", "get_task", "list_tasks", "task_knobs"]
