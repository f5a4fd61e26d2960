"""Data-parallel set-up under torchrun: the same command on one process or many.

``torchrun --nproc_per_node N -m medsam2kit.cli finetune run.yaml`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous variables; :func:`init_distributed` then joins the process group
(``nccl`` on CUDA, ``gloo`` on CPU) and gives each process its device (``cuda:LOCAL_RANK``).
Without those variables it is a no-op and the run is a single process.

Example:
    >>> env = init_distributed("cpu")
    >>> env.rank, env.world_size, env.is_main
    (0, 1, True)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from medsam2kit.errors import DeviceError


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands.

    Attributes:
        rank: global rank.
        world_size: number of processes.
        local_rank: rank on this machine.
        device: this process's device.
        initialized_here: :func:`init_distributed` created the process group (and
            :func:`shutdown` destroys it).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 (writes files, shows progress)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1


def init_distributed(device: str | torch.device = "auto") -> DistEnv:
    """Join the process group described by torchrun's environment variables (if any).

    Args:
        device: ``"auto"`` (``cuda:LOCAL_RANK`` when CUDA is available, else cpu), ``"cpu"`` or
            ``"cuda"`` (each process takes ``cuda:LOCAL_RANK``).

    Returns:
        The :class:`DistEnv`.
    """
    from medsam2kit.predictor import resolve_device

    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        created = False
    else:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        created = False
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        if local >= torch.cuda.device_count():
            raise DeviceError(f"LOCAL_RANK {local}: only {torch.cuda.device_count()} CUDA devices are visible")
        dev = torch.device("cuda", local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        created = True
    return DistEnv(rank, world, local, dev, created)


def shutdown(env: DistEnv) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if env.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over processes (the tensor itself when not distributed)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values)
    return values


def barrier() -> None:
    """Wait for every process (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


__all__ = ["DistEnv", "all_reduce_sum", "barrier", "init_distributed", "shutdown"]
