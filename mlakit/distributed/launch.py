"""Start a few local processes with a process group, run jobs in them, bring their results home.

:func:`spawn` is what lesson 13, the tests and ``bench/ep.py`` use: it starts
``world_size`` processes with ``torch.multiprocessing`` (start method "spawn"),
initialises ``torch.distributed`` in each (gloo on the CPU; nccl where every
rank has its own GPU), runs every job ``(fn, args)`` in order and returns what
each rank's ``fn(rank, world_size, *args)`` returned. Starting processes that
import torch costs 4-8 s, so pass several jobs to one call instead of calling
it several times. ``fn`` must be a module-level function of an importable
module (a notebook cell's function cannot be pickled into a new process).

:func:`torchrun_command` builds the command line ``mlakit train --nproc N``
launches (torchrun sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT;
:func:`init_from_env` reads them).
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

Job = tuple[Callable[..., Any], tuple]


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now (for MASTER_PORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, backend: str, jobs: list[Job], out_dir: str, threads: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(threads)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    try:
        results = [fn(rank, world_size, *args) for fn, args in jobs]
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def spawn(jobs: Job | Sequence[Job], world_size: int = 2, backend: str = "gloo", threads: int = 1) -> list[list[Any]]:
    """Run each job ``(fn, args)`` as ``fn(rank, world_size, *args)`` on ``world_size`` new processes.

    Returns ``results[job][rank]``. ``backend`` "gloo" (CPU) or "nccl" (one GPU
    per rank: needs ``world_size`` GPUs); ``threads`` torch threads per process.
    An exception in any rank is raised here, with that rank's traceback.
    """
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"spawn backend={backend!r} is invalid: use 'gloo' (CPU) or 'nccl' (GPUs)")
    if world_size < 1:
        raise ValueError(f"spawn world_size={world_size} is invalid: must be >= 1")
    if backend == "nccl" and torch.cuda.device_count() < world_size:
        raise ValueError(f"spawn backend='nccl' with world_size={world_size} needs {world_size} GPUs; "
                         f"this machine has {torch.cuda.device_count()}")
    single = callable(jobs[0]) if isinstance(jobs, tuple) else False
    job_list: list[Job] = [jobs] if single else list(jobs)
    with tempfile.TemporaryDirectory(prefix="mlakit-spawn-") as out_dir:
        torch.multiprocessing.start_processes(
            _worker, args=(world_size, free_port(), backend, job_list, out_dir, threads), nprocs=world_size,
            join=True, start_method="spawn")
        per_rank = [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
    results = [[per_rank[r][j] for r in range(world_size)] for j in range(len(job_list))]
    return results[0] if single else results


def init_from_env(backend: str | None = None) -> tuple[int, int]:
    """Join the process group torchrun described in the environment; (rank, world_size), (0, 1) outside torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= world_size else "gloo"
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def torchrun_command(nproc: int, module_args: Sequence[str], drop: str | None = None) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node N -m mlakit.cli ARGS``: N local processes.

    ``drop`` removes an option and its value from ARGS (``--nproc 2`` or ``--nproc=2``: torchrun's own
    parser would take ``--nproc`` for an abbreviation of its ``--nproc-per-node``).
    """
    if nproc < 1:
        raise ValueError(f"nproc={nproc} is invalid: must be >= 1")
    args, kept = list(module_args), []
    while args:
        a = args.pop(0)
        if drop is not None and a == drop:
            args = args[1:]
        elif drop is None or not a.startswith(drop + "="):
            kept.append(a)
    module_args = kept
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "mlakit.cli", *module_args]


__all__ = ["spawn", "free_port", "init_from_env", "torchrun_command"]
