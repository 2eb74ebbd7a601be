"""Training the attribute predictors: the loss and batch of MONAI's ``SupervisedTrainer``, the held-out scores and
the handler that chooses the epoch on ``val``, scores ``test`` and exports the predictors.

The bundles' ``train_predictors.yaml`` train them with MONAI's ``SupervisedTrainer`` (:class:`PredictorLoss`,
:func:`attribute_batch`) and :class:`HeldoutSelection` chooses the epoch on ``val``, scores ``test`` and writes
``predictors.pt`` and ``predictors.json`` (:func:`medcf.measure.predictors.save_predictors`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch import nn

from medcf.core.attributes import AttributeSchema, SchemaError
from medcf.measure.metrics import roc_auc
from medcf.measure.predictors import AttributePredictor, head_width, predict_all, save_predictors
from medcf.runtime.files import write_json_atomic
from medcf.runtime.tracking import log_files, log_finite_metrics

logger = logging.getLogger("medcf")


class PredictorLoss(nn.Module):
    """The training loss of an :class:`AttributePredictor`: ``loss(outputs, codes)``.

    The sum over attributes of ``weight * term``: cross-entropy (mean over the batch) for a categorical
    attribute, L1 error of the value scaled to [0, 1] over its range for a continuous one (an age error of
    7.7 years on [18, 95] costs 0.1). Every weight is 1 unless ``weights`` says otherwise.

    Args:
        schema: the attributes, in the order of the outputs' heads and the codes' columns.
        weights: attribute name -> weight of its term.
    """

    def __init__(self, schema: AttributeSchema, weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        unknown = set(weights or {}) - set(schema.names)
        if unknown:
            raise SchemaError(f"PredictorLoss weights: unknown attribute(s) {', '.join(sorted(unknown))}")
        self.schema = schema
        self.weights = {name: float((weights or {}).get(name, 1.0)) for name in schema.names}
        self.widths = [head_width(schema, name) for name in schema.names]

    def terms(self, outputs: torch.Tensor, codes: torch.Tensor) -> dict[str, torch.Tensor]:
        """Attribute name -> its unweighted term.

        Args:
            outputs: the predictor's raw outputs (B, sum of head widths).
            codes: attribute codes (B, K) in schema order.

        Returns:
            attribute name -> its term, a scalar tensor (mean over the batch).
        """
        terms = {}
        for k, (name, output) in enumerate(zip(self.schema.names, outputs.split(self.widths, dim=1), strict=True)):
            attribute = self.schema[name]
            if attribute.kind == "categorical":
                terms[name] = nn.functional.cross_entropy(output, codes[:, k].long())
            else:
                target = (codes[:, k] - attribute.low) / (attribute.high - attribute.low)
                terms[name] = nn.functional.l1_loss(output[:, 0], target.to(output.dtype))
        return terms

    def forward(self, outputs: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """The loss: the weighted sum of the terms.

        Args:
            outputs: the predictor's raw outputs (B, sum of head widths).
            codes: attribute codes (B, K) in schema order.

        Returns:
            A scalar tensor.
        """
        return sum(
            (self.weights[name] * term for name, term in self.terms(outputs, codes).items()), outputs.new_zeros(())
        )


def attribute_batch(
    batchdata: Mapping[str, torch.Tensor], device: str | torch.device | None = None, non_blocking: bool = False, **_
) -> tuple[torch.Tensor, torch.Tensor]:
    """``prepare_batch`` for MONAI engines: a prepared-dataset batch -> (images, attribute codes).

    Args:
        batchdata: the batch, with ``image`` and ``attributes`` entries.
        device: where the tensors go (None: left where they are).
        non_blocking: copy to ``device`` asynchronously when possible (default False).

    Returns:
        (images, codes), both float32.
    """
    images = torch.as_tensor(batchdata["image"]).float().to(device=device, non_blocking=non_blocking)
    codes = torch.as_tensor(batchdata["attributes"]).float().to(device=device, non_blocking=non_blocking)
    return images, codes


def score_predictions(
    schema: AttributeSchema, predictions: Mapping[str, torch.Tensor], codes: torch.Tensor
) -> dict[str, dict[str, float]]:
    """Scores of :meth:`AttributePredictor.predict` outputs against attribute codes (see :func:`heldout_scores`).

    Args:
        schema: the attributes scored, in the order of the codes' columns.
        predictions: attribute name -> the predictor's outputs.
        codes: (N, K) attribute codes in schema order.

    Returns:
        attribute name -> ``accuracy``, ``auroc`` and ``n`` (categorical) or ``mae`` and ``n`` (continuous).
    """
    scores: dict[str, dict[str, float]] = {}
    for k, name in enumerate(schema.names):
        predicted, truth = predictions[name].detach().cpu().double(), codes[:, k].detach().cpu()
        if schema[name].kind == "continuous":
            scores[name] = {"mae": float((predicted - truth.double()).abs().mean()), "n": float(len(truth))}
            continue
        labels = truth.long()
        accuracy = float((predicted.argmax(dim=1) == labels).double().mean())
        if predicted.shape[1] == 2:
            area = roc_auc(predicted[:, 1].numpy(), (labels == 1).numpy())
        else:  # macro one-vs-rest over the classes that occur (and do not make up every label)
            areas = [roc_auc(predicted[:, c].numpy(), (labels == c).numpy()) for c in range(predicted.shape[1])]
            areas = [a for a in areas if not math.isnan(a)]
            area = sum(areas) / len(areas) if areas else math.nan
        scores[name] = {"accuracy": accuracy, "auroc": area, "n": float(len(labels))}
    return scores


def heldout_scores(
    predictor: AttributePredictor, images: torch.Tensor, codes: torch.Tensor, batch_size: int = 64
) -> dict[str, dict[str, float]]:
    """Per attribute: categorical -> ``accuracy`` and ``auroc`` (binary: of the second value; more values:
    macro one-vs-rest over the classes present in the labels; NaN when undefined); continuous -> ``mae`` in
    its units. Each also has ``n``, the number of images.

    Args:
        predictor: the predictor (evaluated in eval mode, restored afterwards).
        images: (N, 1, H, W) images in [-1, 1].
        codes: (N, K) attribute codes in schema order (``medcf.core.conditioning.encode_attributes``).
        batch_size: images per forward pass.
    """
    if len(images) != len(codes) or len(images) == 0:
        raise ValueError(f"heldout_scores: need as many codes as images (got {len(images)} and {len(codes)})")
    return score_predictions(predictor.schema, predict_all(predictor, images, batch_size), codes)


def constant_baseline(
    schema: AttributeSchema, train_codes: torch.Tensor, heldout_codes: torch.Tensor
) -> dict[str, dict[str, float]]:
    """The scores of a predictor that ignores the image (the training median; the most frequent training value):
    what a predictor must beat to show that it reads the attribute from the images.

    Args:
        schema: the attributes, in the order of the codes' columns.
        train_codes: (N, K) the training images' attribute codes.
        heldout_codes: (M, K) the held-out images' attribute codes.

    Returns:
        attribute name -> ``mae`` (continuous) or ``accuracy`` and ``auroc`` (0.5) (categorical).
    """
    baseline: dict[str, dict[str, float]] = {}
    for k, name in enumerate(schema.names):
        train, heldout = train_codes[:, k].double(), heldout_codes[:, k].double()
        if schema[name].kind == "continuous":
            baseline[name] = {"mae": float((heldout - train.median()).abs().mean())}
        else:
            majority = torch.bincount(train.long(), minlength=len(schema[name].values)).argmax()
            baseline[name] = {"accuracy": float((heldout.long() == majority).double().mean()), "auroc": 0.5}
    return baseline


def stacked(dataset: Sequence[Mapping[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """All images (N, 1, H, W) and attribute codes (N, K) of a prepared dataset.

    Args:
        dataset: items with ``image`` and ``attributes`` entries.

    Returns:
        (images, codes), both float32.
    """
    images = torch.stack([torch.as_tensor(item["image"]).float() for item in dataset])
    codes = torch.stack([torch.as_tensor(item["attributes"]).float() for item in dataset])
    return images, codes


class HeldoutSelection:
    """Ignite handler: validates on ``val``, keeps the chosen epoch's weights, then scores them on ``test``
    and writes ``predictors.pt`` and ``predictors.json`` into ``output_dir``.

    ``select="val_loss"`` keeps the epoch with the lowest validation loss; ``"last"`` keeps the final epoch
    (validation then only monitors). The validation loss sums every head, so one head that overfits (an
    attribute the images barely show) can make it choose an early epoch that is worse for every other head.

    Validation figures (``val_loss``, ``val_loss_<attribute>``, ``val_<attribute>_<score>``) go to the active
    MLflow run each ``interval`` epochs and the test scores (``test_<attribute>_<score>``) at the end, with
    both files as artifacts; list this handler before the MLflow tracker so the run is still open.

    Args:
        network: the predictor being trained.
        loss: the training loss (for the validation loss).
        val_dataset: held-out images for the choice of epoch.
        test_dataset: held-out images for the reported scores.
        output_dir: where the two files go.
        train_dataset: the training images (their number and the constant baseline are recorded).
        settings: training settings to record in ``predictors.json``.
        interval: epochs between validations (the last epoch is always validated).
        select: ``"val_loss"`` or ``"last"`` (see above).
    """

    def __init__(
        self,
        network: AttributePredictor,
        loss: PredictorLoss,
        val_dataset: Sequence[Mapping[str, Any]],
        test_dataset: Sequence[Mapping[str, Any]],
        output_dir: str | Path,
        train_dataset: Sequence[Mapping[str, Any]],
        settings: Mapping[str, Any] | None = None,
        interval: int = 1,
        select: str = "val_loss",
    ) -> None:
        if select not in ("val_loss", "last"):
            raise ValueError(f"HeldoutSelection select: {select!r} must be 'val_loss' or 'last'")
        self.network, self.loss, self.select = network, loss, select
        self.val, self.test = stacked(val_dataset), stacked(test_dataset)
        self.output_dir = Path(output_dir)
        items = getattr(train_dataset, "data", train_dataset)  # a CacheDataset's items, without loading images
        self.train_codes = torch.stack([torch.as_tensor(item["attributes"]).float() for item in items])
        self.settings, self.interval = dict(settings or {}), max(1, interval)
        self.best: dict[str, Any] | None = None
        self.started = time.monotonic()

    def attach(self, trainer: Engine) -> None:
        """Register :meth:`start`, :meth:`validate` (each epoch) and :meth:`export` (at the end) on ``trainer``.

        Args:
            trainer: the training engine.
        """
        trainer.add_event_handler(Events.STARTED, self.start)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self.validate)
        trainer.add_event_handler(Events.COMPLETED, self.export)

    def start(self, trainer: Engine) -> None:
        """Restart the training clock and forget any chosen epoch.

        Args:
            trainer: the training engine (unused).
        """
        self.started, self.best = time.monotonic(), None

    @torch.no_grad()
    def validate(self, trainer: Engine) -> None:
        """Every ``interval`` epochs and at the last: score ``val``, log the figures, and keep this epoch's weights
        when it is chosen (lowest validation loss so far, or every validated epoch with ``select="last"``).

        Args:
            trainer: the training engine (its epoch, iteration and number of epochs).
        """
        epoch = trainer.state.epoch
        if epoch % self.interval and epoch != trainer.state.max_epochs:
            return
        images, codes = self.val
        was_training = self.network.training
        self.network.eval()
        device = next(self.network.parameters()).device
        outputs = torch.cat([self.network(images[i : i + 64].to(device)).cpu() for i in range(0, len(images), 64)])
        self.network.train(was_training)
        val_loss = float(self.loss(outputs, codes))
        terms = {f"val_loss_{name}": float(term) for name, term in self.loss.terms(outputs, codes).items()}
        scores = heldout_scores(self.network, images, codes)
        log_finite_metrics({"val_loss": val_loss, **terms, **flat_scores(scores, "val")}, trainer.state.iteration)
        logger.info("epoch %d: val_loss %.4f %s", epoch, val_loss, brief(scores))
        if self.best is None or self.select == "last" or val_loss < self.best["val_loss"]:
            state = {key: value.detach().cpu().clone() for key, value in self.network.state_dict().items()}
            self.best = {"epoch": epoch, "val_loss": val_loss, "val": scores, "state_dict": state}

    def export(self, trainer: Engine) -> None:
        """Load the chosen epoch's weights, score them on ``test``, write ``predictors.pt`` and ``predictors.json``
        and log the test scores and both files to the active MLflow run (validating first if no epoch was).

        Args:
            trainer: the training engine (its iteration).
        """
        if self.best is None:
            self.validate(trainer)
        assert self.best is not None
        self.network.load_state_dict(self.best["state_dict"])
        test_scores = heldout_scores(self.network, *self.test)
        image_size = list(self.test[0].shape[-2:])
        sizes = {"train": len(self.train_codes), "val": len(self.val[0]), "test": len(self.test[0])}
        record = {
            "heldout_split": "test",
            "heldout_scores": finite_or_none(test_scores),
            "constant_baseline": constant_baseline(self.network.schema, self.train_codes, self.test[1]),
            "val_scores": finite_or_none(self.best["val"]),
            "selection": self.select,
            "selected_epoch": self.best["epoch"],
            "val_loss": self.best["val_loss"],
            "split_sizes": sizes,
            "image_size": image_size,
            "training_seconds": round(time.monotonic() - self.started, 1),
            "settings": self.settings,
        }
        model_path = save_predictors(self.network, self.output_dir / "predictors.pt", extra=record)
        json_path = write_json_atomic(self.output_dir / "predictors.json", record)
        log_finite_metrics(flat_scores(test_scores, "test"), trainer.state.iteration)
        log_files([json_path, model_path])
        logger.info("held-out test (%d images, epoch %d): %s", sizes["test"], self.best["epoch"], brief(test_scores))


def finite_or_none(scores: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float | None]]:
    """Scores with undefined values (NaN) as None, so the JSON file stays standard JSON.

    Args:
        scores: attribute name -> score name -> value.

    Returns:
        The same scores with every non-finite value as None.
    """
    return {name: {k: v if math.isfinite(v) else None for k, v in values.items()} for name, values in scores.items()}


def flat_scores(scores: Mapping[str, Mapping[str, float]], prefix: str) -> dict[str, float]:
    """Scores as metrics named ``<prefix>_<attribute>_<score>``, without the image counts ``n``.

    Args:
        scores: attribute name -> score name -> value.
        prefix: the metrics' prefix (``val``, ``test``).

    Returns:
        metric name -> value.
    """
    return {
        f"{prefix}_{name}_{key}": value
        for name, values in scores.items()
        for key, value in values.items()
        if key != "n"
    }


def brief(scores: Mapping[str, Mapping[str, float]]) -> str:
    """Scores as one line for the log, three decimals, without the image counts ``n``.

    Args:
        scores: attribute name -> score name -> value.

    Returns:
        The line.
    """
    return ", ".join(
        f"{name} " + " ".join(f"{key} {value:.3f}" for key, value in values.items() if key != "n")
        for name, values in scores.items()
    )
