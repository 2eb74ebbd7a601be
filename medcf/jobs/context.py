"""The shell every bundle job runs in: its process's shard, the output folder's lock, the MLflow run with the
job's tags and the model's lineage, and the time since the job started.

A job is written once around it::

    job = JobContext("audit", output_dir, experiment)      # shard and clock; no file touched yet
    device = job.device(settings.device)                    # checks before any output (model, settings, ...)
    with job.folder():                                      # rank 0 holds the folder's lock
        ...                                                 # inputs, held-out sets (job.shard.once)
        with job.tracked("audit", device, loaded.lineage_tags()):   # rank 0's MLflow run
            ...                                             # work; rank 0 writes and logs

Under torchrun every rank builds the same context; only rank 0 (``job.main``) locks the folder and opens the run,
the other ranks share both. A single process is rank 0 of one.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from medcf.outputs.lock import OutputFolderLock
from medcf.runtime.devices import precision_hint
from medcf.runtime.distributed import Shard
from medcf.runtime.tracking import job_run


@dataclass
class JobContext:
    """One job's process: what it shares with the job's other processes and what only rank 0 does.

    Args:
        job: the job's name, recorded as the MLflow tag ``medcf.job`` (``inference``, ``evaluate``, ...).
        output_dir: the job's output folder (locked by rank 0 for the job's duration, see :meth:`folder`).
        experiment: the MLflow experiment the run goes to (None for a job without a run, such as prepare).
        shard: this process's share of a torchrun job (default: from the environment; a single process is rank 0
            of one).
        started: the job's start, as :func:`time.perf_counter` (default: when the context is made; see
            :attr:`seconds`).
    """

    job: str
    output_dir: str | Path
    experiment: str | None = None
    shard: Shard = field(default_factory=Shard.current)
    started: float = field(default_factory=time.perf_counter, repr=False)

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)

    @property
    def main(self) -> bool:
        """True on the process that locks the folder, opens the MLflow run and writes the job's tables."""
        return self.shard.main

    @property
    def seconds(self) -> float:
        """Wall seconds since the context was made (the job's start)."""
        return time.perf_counter() - self.started

    def device(self, setting: str | torch.device | None) -> torch.device:
        """The device of a ``device`` setting for this process (``auto``: CUDA when present; a torchrun rank takes
        its local GPU).

        Args:
            setting: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or a device.

        Returns:
            The device this process's model and batches go to.
        """
        return self.shard.device(setting)

    def note_precision(self, device: torch.device, precisions: Iterable[str], setting: str) -> None:
        """On rank 0, print :func:`~medcf.runtime.devices.precision_hint`'s line where a network of the job runs in
        fp32 on a CPU with bfloat16 instructions (bf16 would run it faster there).

        Args:
            device: the device the job's network runs on.
            precisions: the precision of each of the job's guidance settings.
            setting: how the job's user asks for bf16 (e.g. ``--precision bf16``).
        """
        hint = next(filter(None, (precision_hint(device, p, setting) for p in sorted(set(precisions)))), None)
        if hint and self.main:
            print(hint)

    @contextmanager
    def folder(self) -> Iterator[Path]:
        """Hold the output folder for the job: rank 0 takes its lock (one job writes a folder at a time) and the
        other ranks write under it.

        Returns:
            A context manager yielding the output folder.
        """
        with OutputFolderLock(self.output_dir) if self.main else nullcontext():
            yield self.output_dir

    def tags(self, device: str | torch.device, lineage: Mapping[str, str] | None = None, **more: str) -> dict[str, str]:
        """The job's MLflow tags: ``medcf.job``, ``medcf.device`` and ``medcf.processes``, the model's lineage,
        then ``more`` (``ground_truth="phantom"`` becomes ``medcf.ground_truth``).

        Args:
            device: the device the model ran on.
            lineage: the model's lineage tags (:meth:`medcf.jobs.loading.LoadedModel.lineage_tags`).
            more: further tags, named without the ``medcf.`` prefix.

        Returns:
            Tag name -> value, every value a string.
        """
        tags = {"medcf.job": self.job, "medcf.device": str(device), "medcf.processes": str(self.shard.world)}
        tags.update(lineage or {})
        tags.update({f"medcf.{name}": str(value) for name, value in more.items()})
        return tags

    @contextmanager
    def tracked(
        self, run_name: str, device: str | torch.device, lineage: Mapping[str, str] | None = None, **more: str
    ) -> Iterator[None]:
        """Rank 0's MLflow run for the job (:func:`medcf.runtime.tracking.job_run`, tagged by :meth:`tags`); the
        other ranks run without one. Hold :meth:`folder` around it.

        Args:
            run_name: the MLflow run's name.
            device: the device the model runs on.
            lineage: the model's lineage tags.
            more: further tags, named without the ``medcf.`` prefix.

        Returns:
            A context manager; inside it on rank 0, ``mlflow.log_*`` calls go to the job's run.

        Raises:
            ValueError: when the context has no ``experiment``.
        """
        if self.experiment is None:
            raise ValueError(f"{self.job}: a tracked job needs an MLflow experiment")
        tags = self.tags(device, lineage, **more)
        with job_run(self.output_dir, self.experiment, run_name, tags) if self.main else nullcontext():
            yield
