"""Resumable training checkpoints and the exported model file (an ignite handler)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch import nn

from medcf.core.causal import CausalGraph
from medcf.core.diffusion import DiffusionConfig
from medcf.core.network import CounterfactualUNet, load_checkpoint, read_torch_file, save_checkpoint
from medcf.runtime.files import atomic_path
from medcf.runtime.tracking import active_run_id, is_main_process, log_files
from medcf.training.batch import NoisingPrepareBatch
from medcf.training.ema import EMAHandler

logger = logging.getLogger("medcf.training")


def _unwrap(network: nn.Module) -> nn.Module:
    return network.module if hasattr(network, "module") else network


class ResumableCheckpoint:
    """Every ``every`` epochs (and at the end) save network, optimizer, EMA, the trainer's position, the
    batch RNG and the MLflow run to ``path`` (atomically); at start, load them when ``path`` exists so training
    continues from the saved step (and in the saved run: :func:`saved_run_id`). With ``export_path`` the EMA
    weights are also exported as a medcf model file (weights + attribute schema + architecture + diffusion
    settings), which inference loads; at the end of training it (and graph.json beside it) is logged to the
    MLflow training run as artifacts ``model/``. Without a checkpoint, ``init_weights`` (a medcf model file)
    warm-starts the network and its EMA.

    Args:
        path: the training checkpoint file.
        network: the trained network (a DistributedDataParallel wrapper is unwrapped).
        optimizer: its optimizer.
        diffusion: diffusion settings, written into the exported model file.
        ema: the EMA handler; its weights are saved, and exported instead of the network's (default: none).
        prepare_batch: the training batch preparation, whose random generator state is saved and restored.
        every: save every this many epochs (at least 1).
        export_path: where to export the medcf model file (default: no export).
        init_weights: medcf model file to start from when ``path`` does not exist (default: none).
        image_size: training image size, recorded in the exported model file (an int means square).
        graph_manifest: preparation manifest to fit the causal mechanisms on; they are written to graph.json
            beside ``export_path`` at a save when that file does not exist yet (default: none).
    """

    def __init__(
        self,
        path: str | Path,
        network: CounterfactualUNet | nn.Module,
        optimizer: torch.optim.Optimizer,
        diffusion: DiffusionConfig,
        ema: EMAHandler | None = None,
        prepare_batch: NoisingPrepareBatch | None = None,
        every: int = 1,
        export_path: str | Path | None = None,
        init_weights: str | Path | None = None,
        image_size: int | Sequence[int] | None = None,
        graph_manifest: str | Path | None = None,
    ) -> None:
        self.path, self.network, self.optimizer = Path(path), network, optimizer
        self.diffusion, self.ema, self.prepare_batch = diffusion, ema, prepare_batch
        self.every, self.export_path = max(1, every), Path(export_path) if export_path else None
        self.init_weights = Path(init_weights) if init_weights else None
        self.image_size = [image_size] * 2 if isinstance(image_size, int) else list(image_size or [])
        self.graph_manifest = graph_manifest
        self.training_run_id = ""  # the MLflow run of this training, kept for the export after the run has ended

    def attach(self, trainer: Engine) -> None:
        """Load at STARTED; on the main process also save every ``every`` epochs and at COMPLETED, then log
        the model.

        Args:
            trainer: the ignite trainer.
        """
        trainer.add_event_handler(Events.STARTED, self.load)
        if is_main_process():
            trainer.add_event_handler(Events.EPOCH_COMPLETED(every=self.every), self.save)
            trainer.add_event_handler(Events.COMPLETED, self.save)
            trainer.add_event_handler(Events.COMPLETED, self.log_model)

    def load(self, trainer: Engine) -> None:
        """Resume from the checkpoint at ``path``: weights, optimizer, EMA, batch RNG, the trainer's epoch and
        iteration and the MLflow run id. Without a checkpoint, warm-start from ``init_weights`` if it exists.

        Args:
            trainer: the ignite trainer whose position is restored.

        Raises:
            ValueError: when the checkpoint or ``init_weights`` is not a readable torch file of plain data, or
                ``init_weights`` is not a medcf model file.
            SchemaError: when ``init_weights`` was trained for other attributes than the network's.
        """
        if not self.path.exists():
            self._warm_start()
            return
        state = read_torch_file(self.path, what="medcf training checkpoint")
        _unwrap(self.network).load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])
        if self.prepare_batch is not None and "batch_rng" in state:
            self.prepare_batch.generator.set_state(state["batch_rng"])
        trainer.state.epoch, trainer.state.iteration = int(state["epoch"]), int(state["iteration"])
        self.training_run_id = str(state.get("training_run_id", ""))
        logger.info(
            "resumed from %s at epoch %d, iteration %d", self.path, trainer.state.epoch, trainer.state.iteration
        )

    def _export_graph(self, model: CounterfactualUNet) -> None:
        """Fit the causal mechanisms on the training images' attributes; inference reads graph.json."""
        CausalGraph.fit_manifest(model.schema, self.graph_manifest).save(self.export_path.with_name("graph.json"))

    def _warm_start(self) -> None:
        """No checkpoint yet: start from the weights of a medcf model file (e.g. earlier demo weights)."""
        if self.init_weights is None or not self.init_weights.exists():
            return
        model = _unwrap(self.network)
        trained, _ = load_checkpoint(self.init_weights, expected_schema=getattr(model, "schema", None))
        model.load_state_dict(trained.state_dict())
        if self.ema is not None:
            self.ema.ema_model.load_state_dict(trained.state_dict())
        logger.info("started from the weights in %s", self.init_weights)

    def save(self, trainer: Engine) -> None:
        """Write the checkpoint atomically and, with ``export_path``, the medcf model file (EMA weights when
        there is an EMA) and, if missing and ``graph_manifest`` is set, graph.json.

        Args:
            trainer: the ignite trainer whose epoch and iteration are saved.
        """
        self.training_run_id = active_run_id() or self.training_run_id
        state: dict[str, Any] = {
            "network": _unwrap(self.network).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": trainer.state.epoch,
            "iteration": trainer.state.iteration,
            "training_run_id": self.training_run_id,
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if self.prepare_batch is not None:
            state["batch_rng"] = self.prepare_batch.generator.get_state()
        with atomic_path(self.path) as temporary:
            torch.save(state, temporary)
        if self.export_path is not None:
            model = _unwrap(self.network)
            weights = self.ema.ema_model.state_dict() if self.ema is not None else model.state_dict()
            if self.graph_manifest is not None and not self.export_path.with_name("graph.json").exists():
                self._export_graph(model)
            save_checkpoint(
                self.export_path,
                model,
                self.diffusion.to_dict(),
                state_dict=weights,
                trained_epochs=trainer.state.epoch,
                trained_iterations=trainer.state.iteration,
                image_size=self.image_size,
                training_run_id=self.training_run_id,
            )

    def log_model(self, trainer: Engine) -> None:
        """Log the exported model file and graph.json as artifacts ``model/`` of the training run. The run may
        have ended already (the MLflow tracker closes it at COMPLETED too), so it is named by its id.

        Does nothing without ``export_path`` or a known run.

        Args:
            trainer: the ignite trainer (not read; ignite passes it).
        """
        if self.export_path is None or not self.training_run_id:
            return
        log_files([self.export_path, self.export_path.with_name("graph.json")], self.training_run_id, "model")


def saved_run_id(path: str | Path) -> str:
    """The MLflow run of the training checkpoint at ``path`` ("" when there is no checkpoint or it predates
    the record): a resumed training continues that run (``MLflowTracker(resume_run_id=...)``).

    Args:
        path: the training checkpoint file.

    Returns:
        The run id, or "".

    Raises:
        ValueError: when the file is not a readable torch file of plain data.
    """
    if not Path(path).exists():
        return ""
    return str(read_torch_file(path, what="medcf training checkpoint", mmap=True).get("training_run_id", ""))
