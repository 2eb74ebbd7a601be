"""MLflow tracking for training runs: parameters, the config, loss and learning-rate curves, validation
metrics and sample grids, as an ignite handler.

The tracking store is ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///mlflow.db`` in the working
directory (mlflow 3 no longer accepts a plain folder). Only rank 0 of a distributed run logs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import torch.distributed as dist
from ignite.engine import Engine, Events
from mlflow.exceptions import MlflowException
from monai.handlers import from_engine

from medcf.runtime.files import write_json_atomic

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
RESUMED_FROM_TAG = "medcf.resumed_from_run_id"
"""Tag of a new run started by a resumed training whose own run is not in the tracking store."""

logger = logging.getLogger("medcf.runtime.tracking")


def tracking_uri() -> str:
    """medcf's tracking store.

    Returns:
        ``MLFLOW_TRACKING_URI`` when set (and not empty), else :data:`DEFAULT_TRACKING_URI`.
    """
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def absolute_uri(uri: str) -> str:
    """A tracking URI that means the same from any working directory (``sqlite:///mlflow.db`` is relative).

    Args:
        uri: a tracking URI.

    Returns:
        A relative ``sqlite:///`` URI with its file path made absolute; any other URI as given.
    """
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested parameters as ``a.b = value`` strings (MLflow params are flat and at most 6000 characters).

    Args:
        values: the parameters; nested mappings are flattened.
        prefix: text put before every name (used for the nested levels).

    Returns:
        Dotted name -> ``str(value)``, cut to 6000 characters.
    """
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:6000]
    return flat


def is_main_process() -> bool:
    """Whether this process logs: rank 0 of a distributed run, or a plain run.

    Returns:
        True unless a process group is up and this process's rank is not 0.
    """
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class MLflowTracker:
    """Logs a training run to MLflow.

    Args:
        experiment: MLflow experiment name.
        run_name: name of the run.
        params: parameters to record (nested mappings are flattened).
        config_files: files to store as artifacts (the bundle configs).
        log_every: iterations between loss / learning-rate points.
        evaluator: a validation engine whose metrics are logged after each of its runs.
        samples: ``samples(epoch, folder) -> PNG path`` drawn every ``sample_every`` epochs and at the end.
        sample_every: epochs between sample grids.
        output_transform: engine output -> loss (default: MONAI's decollated "loss" of the first item).
        resume_run_id: the run of the training being resumed (its checkpoint's
            :func:`~medcf.training.checkpoint.saved_run_id`): reopened, so that the resumed training's metrics
            continue it at the saved iteration. When this store does not hold it, a warning and a new run tagged
            ``medcf.resumed_from_run_id``. A setting changed on resuming keeps its first value as the run's
            parameter (MLflow parameters are immutable) and the new one as the tag ``medcf.resumed.<name>``.
    """

    def __init__(
        self,
        experiment: str = "medcf",
        run_name: str | None = None,
        params: Mapping[str, Any] | None = None,
        config_files: list[str] | None = None,
        log_every: int = 10,
        evaluator: Engine | None = None,
        samples: Callable[[int, Path], Path] | None = None,
        sample_every: int = 5,
        output_transform: Callable[[Any], Any] | None = None,
        resume_run_id: str = "",
    ) -> None:
        self.experiment, self.run_name = experiment, run_name
        self.params, self.config_files = dict(params or {}), list(config_files or [])
        self.log_every, self.evaluator = max(1, log_every), evaluator
        self.samples, self.sample_every = samples, max(1, sample_every)
        self.output_transform = output_transform or from_engine(["loss"], first=True)
        self.resume_run_id = resume_run_id
        self.run_id: str | None = None

    def attach(self, trainer: Engine) -> None:
        """Register the tracker's handlers on ``trainer`` (and on the evaluator); nothing on ranks other than 0.

        Args:
            trainer: the training engine.
        """
        if not is_main_process():
            return
        trainer.add_event_handler(Events.STARTED, self.start)
        trainer.add_event_handler(Events.ITERATION_COMPLETED(every=self.log_every), self.log_iteration)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self.log_epoch)
        trainer.add_event_handler(Events.COMPLETED, self.finish, "FINISHED")
        trainer.add_event_handler(Events.EXCEPTION_RAISED, self.fail)
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.COMPLETED, self.log_validation, trainer)

    def start(self, trainer: Engine) -> None:
        """Open the run (the resumed one, or a new one with the parameters) and store the config files.

        Args:
            trainer: the training engine (unused; ignite passes it).
        """
        use_experiment(self.experiment)
        run = self._continued_run() or self._new_run()
        self.run_id = run.info.run_id
        for path in self.config_files:
            if Path(path).is_file():
                mlflow.log_artifact(str(path), artifact_path="config")

    def _new_run(self) -> mlflow.ActiveRun:
        tags = {RESUMED_FROM_TAG: self.resume_run_id} if self.resume_run_id else None
        run = mlflow.start_run(run_name=self.run_name, tags=tags)
        mlflow.log_params(flatten(self.params))
        return run

    def _continued_run(self) -> mlflow.ActiveRun | None:
        """The run of the resumed training (``resume_run_id``) reopened; None when there is none to reopen."""
        if not self.resume_run_id:
            return None
        experiment_id = mlflow.get_experiment_by_name(self.experiment).experiment_id
        try:
            previous = mlflow.MlflowClient().get_run(self.resume_run_id)
            found = previous.info.lifecycle_stage == "active" and previous.info.experiment_id == experiment_id
        except MlflowException:  # not in this store (another MLFLOW_TRACKING_URI)
            found = False
        if not found:
            logger.warning(
                "resuming a training whose MLflow run %s is not in experiment %r of %s: starting a new run, tagged %s",
                self.resume_run_id,
                self.experiment,
                tracking_uri(),
                RESUMED_FROM_TAG,
            )
            return None
        run = mlflow.start_run(run_id=self.resume_run_id)
        recorded, params = previous.data.params, flatten(self.params)
        mlflow.log_params({name: value for name, value in params.items() if name not in recorded})
        changed = {name: value for name, value in params.items() if recorded.get(name, value) != value}
        if changed:
            mlflow.set_tags({f"medcf.resumed.{name}": value for name, value in changed.items()})
        logger.info("continuing MLflow run %s", self.resume_run_id)
        return run

    def log_iteration(self, trainer: Engine) -> None:
        """Log the loss and, when the trainer has an optimizer, its first group's learning rate.

        Args:
            trainer: the training engine; its iteration is the metrics' step.
        """
        loss = self.output_transform(trainer.state.output)
        step = trainer.state.iteration
        if loss is not None:
            mlflow.log_metric("train_loss", float(loss), step=step)
        optimizer = getattr(trainer, "optimizer", None)
        if optimizer is not None:
            mlflow.log_metric("lr", float(optimizer.param_groups[0]["lr"]), step=step)

    def log_epoch(self, trainer: Engine) -> None:
        """Log the epoch number, and a sample grid every ``sample_every`` epochs and after the last one.

        Args:
            trainer: the training engine.
        """
        epoch = trainer.state.epoch
        mlflow.log_metric("epoch", epoch, step=trainer.state.iteration)
        last = epoch == trainer.state.max_epochs
        if self.samples is not None and (epoch % self.sample_every == 0 or last):
            with tempfile.TemporaryDirectory() as folder:
                grid = self.samples(epoch, Path(folder))
                mlflow.log_artifact(str(grid), artifact_path="samples")

    def log_validation(self, evaluator: Engine, trainer: Engine) -> None:
        """Log every metric of the evaluator's run at the trainer's iteration.

        Args:
            evaluator: the validation engine that just completed.
            trainer: the training engine.
        """
        for name, value in evaluator.state.metrics.items():
            mlflow.log_metric(name, float(value), step=trainer.state.iteration)

    def finish(self, trainer: Engine, status: str) -> None:
        """End the active run, if there is one.

        Args:
            trainer: the training engine (unused; ignite passes it).
            status: the run's final MLflow status, e.g. ``FINISHED``.
        """
        if mlflow.active_run() is not None:
            mlflow.end_run(status)

    def fail(self, trainer: Engine, error: Exception) -> None:
        """End the run as FAILED and raise the training's error again.

        Args:
            trainer: the training engine.
            error: the exception the training raised.

        Raises:
            Exception: ``error`` itself.
        """
        self.finish(trainer, "FAILED")
        raise error


RUN_MARKER = ".mlflow_run.json"
"""In a batch job's output folder while its MLflow run is open: the run id and tracking URI. A marker found
at the next start means the job was killed, and its run is marked KILLED."""


def close_killed_run(output_dir: str | Path) -> str | None:
    """Mark the MLflow run of a job that was killed in ``output_dir`` as KILLED (if still RUNNING); its id.

    The marker is removed in every case; a store that cannot be reached is a warning, not an error.

    Args:
        output_dir: the job's output folder.

    Returns:
        The killed job's run id, or None when there is no marker or its run could not be read.
    """
    marker = Path(output_dir) / RUN_MARKER
    if not marker.exists():
        return None
    try:
        previous = json.loads(marker.read_text())
        client = mlflow.MlflowClient(tracking_uri=previous["tracking_uri"])
        if client.get_run(previous["run_id"]).info.status == "RUNNING":
            client.set_terminated(previous["run_id"], "KILLED")
        return previous["run_id"]
    except Exception as error:  # a store that is gone or unreadable must not stop the new job
        logging.getLogger("medcf").warning("could not close the MLflow run of the killed job: %s", error)
        return None
    finally:
        marker.unlink(missing_ok=True)


#: MLflow 3 opens an experiment without this tag in its GenAI view (traces, judges); medcf's runs are model
#: development: metrics, parameters and image artifacts.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def use_experiment(name: str) -> str:
    """Point MLflow at medcf's tracking store and experiment ``name`` (made when missing, tagged with
    :data:`EXPERIMENT_KIND` so that ``mlflow ui`` opens it in its model-training view); returns the store URI.

    Args:
        name: the experiment name.

    Returns:
        The tracking URI (:func:`tracking_uri`).
    """
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.set_experiment(name)
    for key, value in EXPERIMENT_KIND.items():
        if experiment.tags.get(key) != value:
            mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, key, value)
    return uri


@contextlib.contextmanager
def job_run(output_dir: str | Path, experiment: str, run_name: str, tags: Mapping[str, str] | None = None):
    """The MLflow run of a batch job writing to ``output_dir`` (hold the folder's lock around it).

    A run left RUNNING by a killed job in the same folder is marked KILLED first. The run ends FINISHED, FAILED
    on an error, or KILLED on Ctrl-C; a job killed outright is caught by the next start.

    Args:
        output_dir: the job's output folder; it holds :data:`RUN_MARKER` while the run is open.
        experiment: the MLflow experiment name.
        run_name: the run's name.
        tags: tags of the run.

    Yields:
        The active MLflow run.
    """
    close_killed_run(output_dir)
    uri = use_experiment(experiment)
    marker = Path(output_dir) / RUN_MARKER
    run = mlflow.start_run(run_name=run_name, tags=dict(tags or {}))
    write_json_atomic(marker, {"run_id": run.info.run_id, "tracking_uri": absolute_uri(uri)})
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        mlflow.end_run(status)
        marker.unlink(missing_ok=True)


def active_run_id() -> str:
    """The MLflow run this process logs to, or "" without one.

    Returns:
        The active run's id, or "".
    """
    run = mlflow.active_run()
    return run.info.run_id if run is not None else ""


def log_finite_metrics(metrics: Mapping[str, float], step: int) -> None:
    """Log the finite ``metrics`` at ``step`` to the active run; nothing without one.

    Args:
        metrics: name -> value (NaN and infinite values are left out: MLflow would store them as text).
        step: the training iteration they belong to.
    """
    if mlflow.active_run() is not None:
        mlflow.log_metrics({key: value for key, value in metrics.items() if math.isfinite(value)}, step=step)


def log_files(paths: Sequence[str | Path], run_id: str | None = None, artifact_path: str | None = None) -> None:
    """Log the files among ``paths`` that exist as artifacts of ``run_id`` (a run that may have ended) or, with
    None, of the active run; nothing without one.

    Args:
        paths: the files (missing ones are skipped).
        run_id: the run, or None for the active run.
        artifact_path: the artifact folder, or None for the run's root.
    """
    if run_id is None and mlflow.active_run() is None:
        return
    client = mlflow.MlflowClient()
    target = run_id or active_run_id()
    for path in paths:
        if Path(path).is_file():
            client.log_artifact(target, str(path), artifact_path=artifact_path)
