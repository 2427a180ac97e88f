"""Pipeline-parallel bubbles: 1F1B simulated, and the bubble formulas of 1F1B, ZB1P and DualPipe.

With PP pipeline stages, a device idles while the first micro-batches have not
reached it and while the last gradients have not come back: the **bubble**.
DeepSeek-V3 (§3.2.1, Table 2) compares, per device, with F a forward chunk,
B a full backward chunk, W its weight-gradient part and F&B a forward and a
backward chunk run overlapped:

- 1F1B: (PP - 1)(F + B);
- ZB1P (zero bubble, Qi et al. 2023): (PP - 1)(F + B - 2W), the weight
  gradients W deferred into the bubble;
- DualPipe: (PP/2 - 1)(F&B + B - 3W), micro-batches fed from both ends of the
  pipeline, a forward chunk overlapping a backward chunk (and its all-to-alls),
  for 2x the parameters per device and PP + 1 in-flight activations.

:func:`simulate_1f1b` schedules 1F1B op by op (warm-up forwards, one forward
one backward, cool-down backwards; an op starts when its stage is free and its
input has arrived) and its idle time per stage equals the formula;
:func:`simulate_zb1p` does the same for a greedy zero-bubble schedule (equal to
its formula when F = B - W = W). DualPipe is left to its formula.
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEDULES = ("1F1B", "ZB1P", "DualPipe")


def _check(pp: int, **times: float) -> None:
    if pp < 1:
        raise ValueError(f"pp={pp} is invalid: must be >= 1 pipeline stages")
    for name, t in times.items():
        if t < 0:
            raise ValueError(f"{name}={t} is invalid: a duration must be >= 0")


def bubble_1f1b(pp: int, F: float, B: float) -> float:
    """(PP - 1)(F + B): idle time per device of 1F1B."""
    _check(pp, F=F, B=B)
    return (pp - 1) * (F + B)


def bubble_zb1p(pp: int, F: float, B: float, W: float) -> float:
    """(PP - 1)(F + B - 2W): ZB1P, the weight-gradient parts W fill the bubble."""
    _check(pp, F=F, B=B, W=W)
    return (pp - 1) * (F + B - 2 * W)


def bubble_dualpipe(pp: int, FB: float, B: float, W: float) -> float:
    """(PP/2 - 1)(F&B + B - 3W): DualPipe; PP must be even (the pipeline is fed from both ends)."""
    _check(pp, FB=FB, B=B, W=W)
    if pp % 2:
        raise ValueError(f"DualPipe pp={pp} is invalid: must be even")
    return (pp // 2 - 1) * (FB + B - 3 * W)


def bubble(schedule: str, pp: int, F: float, B: float, W: float = 0.0, FB: float | None = None) -> float:
    """The bubble of ``schedule`` ("1F1B", "ZB1P", "DualPipe"); F&B defaults to F + B (no overlap gained)."""
    if schedule == "1F1B":
        return bubble_1f1b(pp, F, B)
    if schedule == "ZB1P":
        return bubble_zb1p(pp, F, B, W)
    if schedule == "DualPipe":
        return bubble_dualpipe(pp, F + B if FB is None else FB, B, W)
    raise ValueError(f"schedule={schedule!r} is invalid: use one of {', '.join(SCHEDULES)}")


def bubble_fraction(bubble_time: float, microbatches: int, F: float, B: float) -> float:
    """Share of a device's step spent idle: bubble / (bubble + microbatches (F + B))."""
    if microbatches < 1:
        raise ValueError(f"microbatches={microbatches} is invalid: must be >= 1")
    busy = microbatches * (F + B)
    return bubble_time / (bubble_time + busy)


@dataclass(frozen=True)
class Op:
    """One chunk of work on one stage: ``kind`` "F", "B" (or "W", a weight gradient) of micro-batch ``mb``."""

    stage: int
    kind: str
    mb: int
    start: float
    end: float


def simulate_1f1b(pp: int, microbatches: int, F: float = 1.0, B: float = 2.0) -> list[Op]:
    """The 1F1B schedule op by op. Stage s runs min(PP - s - 1, m) warm-up forwards, then alternates one forward
    and one backward, then the remaining backwards; F(s, i) needs F(s - 1, i), B(s, i) needs B(s + 1, i)."""
    _check(pp, F=F, B=B)
    if microbatches < 1:
        raise ValueError(f"microbatches={microbatches} is invalid: must be >= 1")
    orders = []
    for s in range(pp):
        warm = min(pp - s - 1, microbatches)
        order = [("F", i) for i in range(warm)]
        f, b = warm, 0
        while b < microbatches:
            if f < microbatches:
                order.append(("F", f))
                f += 1
            order.append(("B", b))
            b += 1
        orders.append(order)
    done: dict[tuple[int, str, int], float] = {}
    free = [0.0] * pp
    nxt = [0] * pp
    ops: list[Op] = []
    while any(nxt[s] < len(orders[s]) for s in range(pp)):
        progressed = False
        for s in range(pp):
            if nxt[s] >= len(orders[s]):
                continue
            kind, i = orders[s][nxt[s]]
            dep = (s - 1, "F", i) if kind == "F" else (s + 1, "B", i)
            if kind == "F" and s == 0 or kind == "B" and s == pp - 1:
                ready = done.get((s, "F", i), 0.0) if kind == "B" else 0.0
            elif dep in done:
                ready = done[dep]
            else:
                continue
            start = max(free[s], ready)
            end = start + (F if kind == "F" else B)
            done[(s, kind, i)], free[s] = end, end
            ops.append(Op(s, kind, i, start, end))
            nxt[s] += 1
            progressed = True
        if not progressed:
            raise RuntimeError("1F1B schedule deadlocked")  # cannot happen with the orders above
    return ops


def simulate_zb1p(pp: int, microbatches: int, F: float = 1.0, B: float = 2.0, W: float = 1.0) -> list[Op]:
    """A zero-bubble schedule op by op: each backward split into "B" (input gradient, B - W) and "W" (weight
    gradient, W), which no other stage waits for.

    Greedy, ZB-H1 style: whenever a stage is free it starts the earliest op it can, preferring an input
    gradient (the previous stage waits for it), then a forward (at most PP - s micro-batches in flight, 1F1B's
    memory), then a deferred weight gradient, which fills what would be bubble. With F = B - W = W (the zero
    bubble paper's setting) its idle time per stage equals (PP - 1)(F + B - 2W); with other durations this
    greedy order can idle more or less than the handcrafted schedule the formula describes.
    """
    _check(pp, F=F, B=B, W=W)
    if microbatches < 1:
        raise ValueError(f"microbatches={microbatches} is invalid: must be >= 1")
    if W > B:
        raise ValueError(f"W={W} is invalid: the weight gradient is part of the backward, W <= B={B}")
    duration = {"F": F, "B": B - W, "W": W}
    done: dict[tuple[int, str, int], float] = {}
    free = [0.0] * pp
    count = [{"F": 0, "B": 0, "W": 0} for _ in range(pp)]
    ops: list[Op] = []
    while len(ops) < 3 * pp * microbatches:
        best = None
        for s in range(pp):
            n, options = count[s], []
            i = n["B"]
            if i < microbatches and (s, "F", i) in done and (s == pp - 1 or (s + 1, "B", i) in done):
                options.append((max(free[s], done[(s, "F", i)], done.get((s + 1, "B", i), 0.0)), 0, "B", i))
            i = n["F"]
            if i < microbatches and n["F"] - n["B"] < pp - s and (s == 0 or (s - 1, "F", i) in done):
                options.append((max(free[s], done.get((s - 1, "F", i), 0.0)), 1, "F", i))
            i = n["W"]
            if i < n["B"]:
                options.append((max(free[s], done[(s, "B", i)]), 2, "W", i))
            if options:
                choice = min(options)  # earliest start, then B before F before W
                if best is None or (choice[0], s) < (best[0][0], best[1]):
                    best = (choice, s)
        (start, _, kind, i), s = best
        end = start + duration[kind]
        done[(s, kind, i)], free[s] = end, end
        count[s][kind] += 1
        ops.append(Op(s, kind, i, start, end))
    return ops


def idle_per_stage(ops: list[Op]) -> list[float]:
    """Idle time of each stage between the step's start (0) and its end (the last op anywhere)."""
    end = max(op.end for op in ops)
    stages = 1 + max(op.stage for op in ops)
    busy = [0.0] * stages
    for op in ops:
        busy[op.stage] += op.end - op.start
    return [end - b for b in busy]


__all__ = ["bubble", "bubble_1f1b", "bubble_zb1p", "bubble_dualpipe", "bubble_fraction", "simulate_1f1b",
           "simulate_zb1p",
           "idle_per_stage", "Op", "SCHEDULES"]
