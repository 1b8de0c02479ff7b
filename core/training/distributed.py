"""Data-parallel training under ``torchrun``: process group, DDP wrapping, per-rank data, rank-0 duties.

One process per device (``torchrun --nproc_per_node N ...``); each holds a full replica, draws its
own share of the data, and DDP all-reduces the gradients so every replica takes the same optimiser
step and the parameters stay identical. Without torchrun (``WORLD_SIZE`` unset or 1) every helper is
a no-op, so a training loop written with them runs unchanged in one process::

    info = init_distributed()                     # gloo on CPU, nccl on CUDA; no-op in one process
    net = wrap_ddp(net)                           # DDP when world_size > 1
    rng = np.random.default_rng(rank_seed(seed))  # each rank its own crops / samples
    batches = shard(items)                        # each rank its own slice, same length everywhere
    metrics = on_main(validate)(net)              # rank 0 validates, every rank gets the result
    if is_main():
        save(...)

Tested with two CPU processes over gloo (``tests/core/training/test_distributed.py``).
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import itertools
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: Offset between the random streams of consecutive ranks (a large prime, so streams never collide
#: with the small seed offsets the apps already use per split or per scan).
RANK_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job.

    Args:
        rank: Global rank (0 in one process).
        world_size: Number of processes (1 without torchrun).
        local_rank: Rank on this machine: the CUDA device it uses.
        backend: ``gloo`` or ``nccl``; None when no process group is up.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the one that logs, validates and saves."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def is_distributed() -> bool:
    """True when a process group with more than one process is up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def info() -> DistInfo:
    """This process's ``DistInfo`` (from the process group when up, else one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(
        dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0), str(dist.get_backend())
    )


def init_distributed(backend: str | None = None, *, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment; idempotent.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT`` through the
    ``env://`` rendezvous). With ``WORLD_SIZE`` unset or 1 nothing is initialised and the result says
    rank 0 of 1. On CUDA the process binds to ``cuda:LOCAL_RANK``, so a plain ``"cuda"`` device means
    this rank's GPU. The group is destroyed at exit.

    Args:
        backend: ``gloo`` or ``nccl``; default nccl when CUDA is available, else gloo.
        timeout_s: How long collectives wait for a slow rank (rank 0 validating, for instance).

    Returns:
        This process's ``DistInfo``.

    Raises:
        ValueError: ``nccl`` asked for without CUDA, or inconsistent rank variables.
    """
    if dist.is_available() and dist.is_initialized():
        return info()
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return DistInfo()
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world_size}")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ValueError("backend nccl needs CUDA; use gloo on CPU")
        torch.cuda.set_device(local_rank)
    dist.init_process_group(
        backend, init_method="env://", rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s)
    )
    atexit.register(cleanup)
    if rank == 0:
        log.info("distributed: %d processes, backend %s", world_size, backend)
    return DistInfo(rank, world_size, local_rank, backend)


def cleanup() -> None:
    """Leave the process group (safe to call twice, or without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main() -> bool:
    """True on rank 0, and in a single process."""
    return info().is_main


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if is_distributed():
        dist.barrier()


def local_device(device: str | torch.device) -> torch.device:
    """``device`` with this rank's CUDA index under DDP (``cuda`` -> ``cuda:LOCAL_RANK``)."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and is_distributed():
        return torch.device("cuda", info().local_rank)
    return dev


def wrap_ddp(model: nn.Module, *, find_unused_parameters: bool = False, **kwargs: Any) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` when several processes train, else ``model`` itself.

    DDP broadcasts rank 0's parameters and buffers at construction (so the replicas start equal
    whatever their seeds) and all-reduces (averages) gradients in backward.

    Args:
        model: Already on its device (``local_device``).
        find_unused_parameters: Set when some parameters get no gradient in a step.
        kwargs: More ``DistributedDataParallel`` arguments.
    """
    if not is_distributed():
        return model
    param = next(model.parameters(), None)
    device_ids = [param.device.index] if param is not None and param.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=find_unused_parameters, **kwargs
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or ``model``): for its own methods, saving and evaluation."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def rank_seed(seed: int) -> int:
    """The seed of this rank's random stream: ``seed`` on rank 0 (single-process runs unchanged)."""
    return seed + info().rank * RANK_SEED_STRIDE


def shard(
    items: Sequence[T], *, rank: int | None = None, world_size: int | None = None, pad: bool = True
) -> list[T]:
    """This rank's share of ``items``, like ``DistributedSampler`` without shuffling.

    Rank ``r`` takes ``items[r::world_size]``. With ``pad`` the list is first extended by wrapping
    around so every rank gets ``ceil(len / world_size)`` items (DDP needs the same number of steps
    on every rank, or the last collective waits forever); without it the tail is dropped.

    Args:
        items: The epoch's batches or samples, the same list on every rank.
        rank, world_size: Default from the process group.
        pad: Repeat items (True) or drop the remainder (False) to even the shares.
    """
    here = info()
    rank = here.rank if rank is None else rank
    world_size = here.world_size if world_size is None else world_size
    items = list(items)
    if world_size <= 1:
        return items
    if pad and items:
        total = -(-len(items) // world_size) * world_size
        items = [items[i % len(items)] for i in range(total)]
    else:
        items = items[: len(items) // world_size * world_size]
    return items[rank::world_size]


def shard_iter(items: Iterable[T]) -> Iterator[T]:
    """This rank's items of an iterable (every ``world_size``-th, from ``rank``); no padding."""
    here = info()
    return itertools.islice(items, here.rank, None, here.world_size)


def shard_epochs(batches: Callable[[int], Iterable[T]]) -> Callable[[int], list[T]]:
    """``batches(epoch)`` -> this rank's ``shard`` of it (``batches`` itself in one process)."""
    if not is_distributed():
        return batches  # type: ignore[return-value]

    def sharded(epoch: int) -> list[T]:
        return shard(list(batches(epoch)))

    return sharded


def on_main(fn: Callable[..., R]) -> Callable[..., R]:
    """``fn`` run on rank 0 only, its result broadcast to every rank.

    For validation that decides something every rank must agree on (early stopping, which state is
    best). An exception on rank 0 is raised on every rank, so none waits forever.
    """

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> R:
        if not is_distributed():
            return fn(*args, **kwargs)
        box: list[Any] = [None]
        if is_main():
            try:
                box[0] = ("ok", fn(*args, **kwargs))
            except Exception as exc:  # sent to the other ranks, then raised here too
                box[0] = ("error", f"{type(exc).__name__}: {exc}")
                dist.broadcast_object_list(box, src=0)
                raise
        dist.broadcast_object_list(box, src=0)
        status, value = box[0]
        if status == "error":
            raise RuntimeError(f"rank 0 failed in {getattr(fn, '__name__', 'fn')}: {value}")
        return value

    return run


def parameter_digest(model: nn.Module) -> str:
    """SHA-256 over the named parameters' bytes (not buffers): equal digests, identical replicas."""
    h = hashlib.sha256()
    for name, param in sorted(unwrap(model).named_parameters()):
        h.update(name.encode())
        h.update(param.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


__all__ = [
    "RANK_SEED_STRIDE",
    "DistInfo",
    "barrier",
    "cleanup",
    "info",
    "init_distributed",
    "is_distributed",
    "is_main",
    "local_device",
    "on_main",
    "parameter_digest",
    "rank_seed",
    "shard",
    "shard_epochs",
    "shard_iter",
    "unwrap",
    "wrap_ddp",
]
