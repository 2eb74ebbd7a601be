"""Which share of a job this process does when torchrun starts several (one rule for every sharded job).

A job run by ``torchrun --nproc_per_node=N -m monai.bundle run ...`` with a ``multi_gpu_*.yaml`` overlay that
initialises the process group sees ``Shard.current()`` as (rank, world size, local rank); a plain run sees
(0, 1, 0) and every helper below is a no-op. Rank 0 is the main process: it alone holds the output folder's
lock, writes shared files and the MLflow run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from medcf.runtime.devices import resolve_device

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """One process's share of a job (see the module docstring); the defaults are a plain, unsharded run.

    Attributes:
        rank: this process's rank, 0 to ``world`` - 1.
        world: the number of processes.
        local_rank: this process's rank on its node (``LOCAL_RANK``), which picks its GPU.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def current(cls) -> Shard:
        """This process's share: from the initialised process group, else the whole job.

        Returns:
            (rank, world size, ``LOCAL_RANK``) of the process group, or ``Shard()`` without one.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def pick(self, items: Sequence[T]) -> list[T]:
        """Every ``world``-th item from position ``rank``: shares differ by at most one item.

        Args:
            items: the whole job's items, in the same order on every rank.

        Returns:
            This process's items.
        """
        return list(items)[self.rank :: self.world]

    def barrier(self) -> None:
        """Wait until every rank gets here (nothing in a single process)."""
        if self.world > 1:
            dist.barrier()

    def gather(self, value: Any) -> list[Any]:
        """``value`` of every rank, in rank order (a picklable object).

        Every rank must call it.

        Args:
            value: this rank's value.

        Returns:
            One value per rank (``[value]`` in a single process).
        """
        if self.world == 1:
            return [value]
        found: list[Any] = [None] * self.world
        dist.all_gather_object(found, value)
        return found

    def once(self, make: Callable[[], T]) -> T:
        """``make()`` run by rank 0 alone (e.g. it writes a shared file), its result handed to every rank once it
        has returned: the other ranks wait for it. If it fails, every rank fails (rank 0 with its own error, the
        others naming it) instead of waiting for a result that never comes.

        Args:
            make: the work to do once; its result must be picklable in a sharded run.

        Returns:
            What ``make()`` returned on rank 0.

        Raises:
            RuntimeError: on the other ranks, if ``make()`` failed on rank 0.
        """
        if self.world == 1:
            return make()
        outcome: tuple[bool, Any] = (True, None)
        if self.main:
            try:
                outcome = (True, make())
            except Exception as error:
                self.gather((False, f"{type(error).__name__}: {error}"))
                raise
        done, value = self.gather(outcome)[0]
        if not done:
            raise RuntimeError(f"rank 0 failed, so this rank stops too: {value}")
        return value

    def seed(self, seed: int) -> int:
        """This process's random seed: ``seed`` itself on rank 0 (a single process is unchanged), a distinct
        seed derived from (``seed``, rank) on the others, so that the ranks of a sharded training draw different
        noise, timesteps and dropout and a rerun with the same seed draws the same again.

        Args:
            seed: the job's seed.

        Returns:
            This process's seed, a non-negative integer.
        """
        if self.rank == 0:
            return seed
        return int(np.random.SeedSequence([seed, self.rank]).generate_state(1)[0] >> 1)

    def device(self, device: str | torch.device | None) -> torch.device:
        """The job's device for this process: ``auto`` in a sharded run on GPUs is this process's own GPU
        (``cuda:LOCAL_RANK``); anything else as :func:`medcf.runtime.devices.resolve_device` reads it.

        Args:
            device: the job's ``device`` setting (``auto``, None, ``cpu``, ``cuda``, ``cuda:N``, ...).

        Returns:
            The device this process runs on.

        Raises:
            ValueError: if the device is not usable here (:func:`~medcf.runtime.devices.resolve_device`).
        """
        chosen = resolve_device(device)
        if self.world > 1 and chosen.type == "cuda" and chosen.index is None:
            return resolve_device(f"cuda:{self.local_rank}")
        return chosen


def init_process_group(device: str | torch.device | None = "auto") -> None:
    """Join the process group of a job that torchrun started (the ``multi_gpu_*.yaml`` configs call this first,
    with the job's ``device``): on GPUs NCCL, each process bound to its own GPU, ``cuda:LOCAL_RANK`` (NCCL's object
    gathers run on the current GPU, and NCCL refuses two ranks on one); with ``device`` cpu (or no GPU) gloo.
    Nothing when the group is up already.

    Args:
        device: the job's ``device`` setting; a CPU device (or ``auto`` without a GPU) uses gloo.

    Raises:
        ValueError: if the device is not usable here, names one GPU while torchrun started several processes, or
            this process's local rank has no GPU of its own.
    """
    if dist.is_initialized():
        return
    chosen = resolve_device(device)
    if chosen.type != "cuda":
        dist.init_process_group(backend="gloo")
        return
    local_rank, gpus = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
    if chosen.index is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(
            f"device: {str(device)!r} names one GPU, but each of the torchrun processes takes its own "
            "(cuda:LOCAL_RANK); use --device cuda or auto"
        )
    if local_rank >= gpus:
        raise ValueError(
            f"torchrun started process {local_rank} on a node with {gpus} GPU(s): one process per GPU "
            f"(--nproc_per_node={gpus} at most), or --device cpu"
        )
    torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl")


def destroy_process_group() -> None:
    """Leave the process group (the configs' ``finalize``), if one is up."""
    if dist.is_initialized():
        dist.destroy_process_group()
