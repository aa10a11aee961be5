"""Training on several GPUs (or CPU processes) with PyTorch's DistributedDataParallel.

``torchrun`` starts one process per device and tells each who it is through environment
variables (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``). Each process holds a full copy of the model,
draws its *own* random windows, and after every backward pass DDP averages the gradients across
processes, so every copy takes the same optimiser step. One step therefore learns from
``batch_size × grad_accum_steps × world_size`` windows: the global batch.

What lal does on top, so that a run on N devices behaves like one process with an N-times
larger batch:

* rank ``r`` draws its windows from a generator seeded ``seed + r`` (rank 0 is the
  single-process stream), and dropout is seeded the same way;
* evaluation splits the *same fixed* validation windows across the ranks and sums their losses,
  so every rank gets the same number (and makes the same decision to stop);
* only rank 0 writes ``metrics.jsonl``, checkpoints and the model card; it gathers every rank's
  random-generator states into ``last.pt`` so ``--resume`` continues exactly;
* a single process (no ``torchrun``) needs no change and no process group.

On one machine::

    torchrun --standalone --nproc_per_node 4 -m lal train --preset char-medium --out runs/ddp

On two machines with 8 GPUs each (run on both; ``--node_rank`` 0 and 1, the address of node 0)::

    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --rdzv_backend c10d \\
        --rdzv_endpoint node0.example.org:29500 -m lal train --preset lal --out /shared/runs/big
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    """Who this process is in a distributed run (rank 0 of 1 when there is none)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True for the one process that prints, plots and writes files."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when ``torchrun`` started this process as one of several (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: str | None = None) -> tuple[DistributedContext, str | None]:
    """Join the process group ``torchrun`` prepared; return the context and the device to train on.

    The backend is NCCL for CUDA GPUs and gloo for CPUs; each process gets the GPU of its
    ``LOCAL_RANK``. Without ``torchrun`` nothing happens: rank 0 of 1 and ``device`` unchanged.
    """
    if not launched_by_torchrun():
        return DistributedContext(), device
    rank, local_rank, world_size = (int(os.environ[name]) for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    use_cuda = device in (None, "auto", "cuda") and torch.cuda.is_available() or (device or "").startswith("cuda")
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"torchrun started {os.environ.get('LOCAL_WORLD_SIZE', '?')} processes on this machine but torch sees "
                f"{torch.cuda.device_count()} GPU(s): use --nproc_per_node {torch.cuda.device_count()} or fewer."
            )
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    elif device in (None, "auto"):
        device = "cpu"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        atexit.register(shutdown_distributed)  # leave the group however the run ends
    return DistributedContext(rank=rank, local_rank=local_rank, world_size=world_size), device


def current_context() -> DistributedContext:
    """The context of the process group this process has joined (rank 0 of 1 when none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistributedContext()
    return DistributedContext(rank=dist.get_rank(), local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())),
                              world_size=dist.get_world_size())


def shutdown_distributed() -> None:
    """Leave the process group (at the end of a run), so the processes exit cleanly."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def finish_distributed() -> None:
    """End a run that succeeded on every process: wait for all of them, then leave the group.

    Without the wait a process that finishes first tears down its side of the connections while
    another is still using them, and gloo aborts that one ("terminate called without an active
    exception"). Only for the path where every process succeeded: after an error the others may
    never arrive, so the exit handler (:func:`shutdown_distributed`) leaves without waiting.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over all processes (returned; unchanged without a process group)."""
    if current_context().is_distributed:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def gather_objects(value: object) -> list[object]:
    """Every rank's ``value``, in rank order, on every rank (``[value]`` without a process group)."""
    context = current_context()
    if not context.is_distributed:
        return [value]
    gathered: list[object] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Run the block on rank 0 first, then on the others: files it writes (a token file, a
    download) are then written once and read by everyone, never written by all at once."""
    context = current_context()
    if context.is_distributed and not context.is_main:
        dist.barrier()
    try:
        yield
    finally:
        if context.is_distributed and context.is_main:
            dist.barrier()
