"""Data-parallel training across processes: the same code for 1 process or ``torchrun`` N.

``torchrun --nproc_per_node=N`` sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` and the
rendezvous address in each process's environment; :func:`distributed_session` reads
them, starts the process group (NCCL on CUDA, gloo on CPU) and ends it on exit. Without
those variables (or with ``WORLD_SIZE=1``) it starts nothing, so a plain ``python`` run is
the 1-process case of the same code. Nothing here touches the process group at import.

Conventions used by :mod:`maskface.training.train`: rank 0 alone writes outputs, logs curves and
runs validation, broadcasting its results; every rank sees ``batch_size // world_size``
images per step, so the global batch (and the learning rate that suits it) does not
change with the number of processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from maskface.device import resolve_device

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DistributedContext:
    """Where this process sits: ``rank`` in [0, ``world_size``), ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} = {value!r} is invalid; valid: an integer (set by torchrun)") from None


def launch_environment() -> DistributedContext:
    """The ranks ``torchrun`` put in the environment (1 process when it did not)."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"RANK = {rank} / WORLD_SIZE = {world_size} is invalid; valid: 0 <= RANK < WORLD_SIZE")
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank)


def choose_backend(device: torch.device) -> str:
    """NCCL for CUDA tensors, gloo for CPU ones."""
    return "nccl" if device.type == "cuda" else "gloo"


@contextlib.contextmanager
def distributed_session(device_name: str = "auto") -> Iterator[tuple[DistributedContext, torch.device]]:
    """Yield (context, device) for this process; start and end the process group if launched by torchrun.

    ``device_name``: ``auto`` | ``cpu`` | ``cuda``; under torchrun with CUDA each process
    takes ``cuda:<LOCAL_RANK>``. A process group that already exists (started by the
    caller) is used as it is and left running.
    """
    launched = launch_environment()
    device = resolve_device(device_name)
    if not launched.is_distributed:
        yield DistributedContext(), device
        return
    if device.type == "cuda":
        if launched.local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK = {launched.local_rank} but only {torch.cuda.device_count()} CUDA devices are visible; "
                "valid: --nproc_per_node <= the number of GPUs"
            )
        device = torch.device("cuda", launched.local_rank)
        torch.cuda.set_device(device)
    backend = choose_backend(device)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(backend=backend, init_method="env://")
    context = dataclasses.replace(launched, backend=dist.get_backend())
    logger.info("rank %d of %d on %s (%s)", context.rank, context.world_size, device, context.backend)
    try:
        yield context, device
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def _collective_device(context: DistributedContext, device: torch.device) -> torch.device:
    return device if context.backend == "nccl" else torch.device("cpu")


def all_reduce_mean(value: float, context: DistributedContext, device: torch.device) -> float:
    """The mean of ``value`` over all processes (``value`` itself for one process)."""
    if not context.is_distributed:
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=_collective_device(context, device))
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item()) / context.world_size


def broadcast_object(obj: Any, context: DistributedContext, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (picklable objects; small ones: it goes through pickle)."""
    if not context.is_distributed:
        return obj
    holder = [obj if context.rank == src else None]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def gather_objects(obj: Any, context: DistributedContext) -> list[Any]:
    """Every rank's ``obj``, indexed by rank, on every rank."""
    if not context.is_distributed:
        return [obj]
    out: list[Any] = [None] * context.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(context: DistributedContext) -> None:
    if context.is_distributed:
        dist.barrier()


def epoch_batches(count: int, batch_size: int, context: DistributedContext, seed: int, epoch: int) -> list[np.ndarray]:
    """This rank's batches of one epoch: indices into ``range(count)``, each sorted (memmap reads in order).

    A :class:`torch.utils.data.DistributedSampler` (shuffled with ``seed + epoch``,
    ``drop_last``) gives every rank a disjoint, equally long share; ``batch_size`` is the
    global batch, so each rank takes ``batch_size // world_size`` per step and every rank
    runs the same number of steps (incomplete batches are dropped).
    """
    per_rank = batch_size // context.world_size
    if per_rank < 1:
        raise ValueError(
            f"batch_size = {batch_size} is smaller than the {context.world_size} processes; "
            f"valid: batch_size >= world size"
        )
    sampler = DistributedSampler(
        range(count), num_replicas=context.world_size, rank=context.rank, shuffle=True, seed=seed, drop_last=True
    )
    sampler.set_epoch(epoch)
    order = np.fromiter(iter(sampler), dtype=np.int64)
    steps = len(order) // per_rank
    return [np.sort(order[step * per_rank : (step + 1) * per_rank]) for step in range(steps)]


def wrap_model(module: nn.Module, context: DistributedContext, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(module)`` across processes; ``module`` itself for one process.

    DDP averages gradients across ranks during backward and broadcasts rank 0's
    parameters and buffers at construction, so every rank starts identical.
    """
    if not context.is_distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)
