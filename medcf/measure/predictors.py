"""Anti-causal attribute predictors: the measuring instruments of counterfactual evaluation.

One small MONAI ResNet trunk is shared by one linear head per attribute of the schema: logits over the values
of a categorical attribute, the value scaled to [0, 1] over its range for a continuous one. Images are the
prepared arrays, (B, 1, H, W) in [-1, 1]. Attribute codes are those of
:func:`medcf.core.conditioning.encode_attributes` (category index, raw value).

The bundles' ``train_predictors.yaml`` train them with MONAI's ``SupervisedTrainer`` (:class:`PredictorLoss`,
:func:`attribute_batch`) and :class:`HeldoutSelection` chooses the epoch on ``val``, scores ``test`` and writes
``predictors.pt`` and ``predictors.json``.
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
from monai.networks.nets import ResNet
from torch import nn

from medcf.core.attributes import AttributeSchema, SchemaError, attribute_text
from medcf.core.network import read_medcf_file
from medcf.measure.metrics import roc_auc
from medcf.runtime.files import atomic_path, write_json_atomic

PREDICTORS_FORMAT = "medcf-predictors/1"

DEFAULT_NETWORK: dict[str, Any] = {
    "block": "basic",
    "layers": [1, 1, 1, 1],
    "block_inplanes": [16, 32, 64, 128],
}
"""Settings of the MONAI ResNet trunk (any ``monai.networks.nets.ResNet`` argument may be overridden)."""

logger = logging.getLogger("medcf")


def head_width(schema: AttributeSchema, name: str) -> int:
    """The number of outputs of an attribute's head.

    Args:
        schema: the attributes.
        name: the attribute.

    Returns:
        Its number of values when categorical, 1 when continuous.
    """
    attribute = schema[name]
    return len(attribute.values) if attribute.kind == "categorical" else 1


class AttributePredictor(nn.Module):
    """A MONAI ResNet trunk (2D, one input channel, no classifier) with one linear head per attribute.

    Args:
        schema: the attributes to predict (heads in schema order).
        network_settings: ``monai.networks.nets.ResNet`` arguments overriding :data:`DEFAULT_NETWORK`.
    """

    def __init__(self, schema: AttributeSchema, **network_settings: Any) -> None:
        super().__init__()
        self.schema = schema
        self.network_settings = {**DEFAULT_NETWORK, **network_settings}
        self.trunk = ResNet(spatial_dims=2, n_input_channels=1, feed_forward=False, **self.network_settings)
        with torch.no_grad():  # the feature width, in eval mode so no BatchNorm statistics move
            width = self.trunk.eval()(torch.zeros(1, 1, 32, 32)).shape[1]
        self.trunk.train()
        self.heads = nn.ModuleList(nn.Linear(width, head_width(schema, name)) for name in schema.names)
        ranges = [(a.low, a.high) if a.kind == "continuous" else (0.0, 1.0) for a in schema.attributes]
        self.register_buffer("low", torch.tensor([r[0] for r in ranges]), persistent=False)
        self.register_buffer("high", torch.tensor([r[1] for r in ranges]), persistent=False)
        self.image_size: tuple[int, int] | None = None  # set by load_predictors from the file

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) images in [-1, 1] -> (B, F) pooled trunk features.

        Args:
            images: (B, 1, H, W) in [-1, 1].

        Returns:
            (B, F) the trunk's pooled features.
        """
        return self.trunk(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """All heads' raw outputs side by side, (B, sum of head widths), in schema order.

        Args:
            images: (B, 1, H, W) in [-1, 1].

        Returns:
            (B, sum of head widths): logits of a categorical head, the scaled value of a continuous one.
        """
        features = self.features(images)
        return torch.cat([head(features) for head in self.heads], dim=1)

    def split_outputs(self, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw outputs -> attribute name -> its head's columns (B, width).

        Args:
            outputs: (B, sum of head widths), as :meth:`forward` gives them.

        Returns:
            attribute name -> its columns (B, width), in schema order.
        """
        widths = [head.out_features for head in self.heads]
        return dict(zip(self.schema.names, outputs.split(widths, dim=1), strict=True))

    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Categorical attribute -> probabilities (B, n_values); continuous -> value in its units (B,),
        clamped to the attribute's range.

        Args:
            images: (B, 1, H, W) in [-1, 1].

        Returns:
            attribute name -> its prediction, as above.
        """
        predictions = {}
        for k, (name, output) in enumerate(self.split_outputs(self(images)).items()):
            if self.schema[name].kind == "categorical":
                predictions[name] = output.softmax(dim=1)
            else:
                low, high = self.low[k], self.high[k]
                predictions[name] = low + output[:, 0].clamp(0.0, 1.0) * (high - low)
        return predictions


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


@torch.no_grad()
def predict_all(predictor: AttributePredictor, images: torch.Tensor, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """:meth:`AttributePredictor.predict` over many images in eval mode, batch by batch, on the CPU.

    Args:
        predictor: the predictor (evaluated in eval mode, restored afterwards).
        images: (N, 1, H, W) in [-1, 1]; moved to the predictor's device a batch at a time.
        batch_size: images per forward pass (default 64).

    Returns:
        attribute name -> its predictions for every image, on the CPU.
    """
    was_training = predictor.training
    predictor.eval()
    device = next(predictor.parameters()).device
    try:
        parts = [
            {name: value.cpu() for name, value in predictor.predict(images[i : i + batch_size].to(device)).items()}
            for i in range(0, len(images), batch_size)
        ]
    finally:
        predictor.train(was_training)
    return {name: torch.cat([part[name] for part in parts]) for name in predictor.schema.names}


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


def save_predictors(predictor: AttributePredictor, path: str | Path, extra: dict | None = None) -> Path:
    """Write the weights, schema and trunk settings (plus ``extra``: plain data only) atomically.

    Args:
        predictor: the predictor to save.
        path: the file to write.
        extra: more entries for the file (None: none).

    Returns:
        The path written.
    """
    payload = {
        "format": PREDICTORS_FORMAT,
        "schema": predictor.schema.to_config(),
        "network": predictor.network_settings,
        "state_dict": {key: value.detach().cpu() for key, value in predictor.state_dict().items()},
        **(extra or {}),
    }
    with atomic_path(path) as temporary:
        torch.save(payload, temporary)
    return Path(path)


def describe_attribute(schema: AttributeSchema, name: str) -> str:
    """``sex{M,F}``, ``age[18,95]``, with ``<-parents`` when it has any.

    Args:
        schema: the attributes.
        name: the attribute described.

    Returns:
        The short description.
    """
    a = schema[name]
    return attribute_text(a) + (f"<-{','.join(a.parents)}" if a.parents else "")


def schema_difference(found: AttributeSchema, expected: AttributeSchema) -> str:
    """What differs between two schemas, in a few words.

    Args:
        found: the schema of the file.
        expected: the schema wanted.

    Returns:
        The differences joined by ``; `` (the attribute order when nothing else differs).
    """
    parts = [f"{describe_attribute(found, n)} is not expected" for n in found.names if n not in expected]
    parts += [f"{describe_attribute(expected, n)} is missing" for n in expected.names if n not in found]
    parts += [
        f"{n}: the file has {describe_attribute(found, n)}, expected {describe_attribute(expected, n)}"
        for n in found.names
        if n in expected and describe_attribute(found, n) != describe_attribute(expected, n)
    ]
    if not parts:
        parts.append(f"attribute order {','.join(found.names)}, expected {','.join(expected.names)}")
    return "; ".join(parts)


def load_predictors(path: str | Path, expected_schema: AttributeSchema | None = None) -> AttributePredictor:
    """The predictor saved in ``path`` (weights-only read, eval mode, on the CPU); ``image_size`` is set from
    the file when it records one. A file for another schema than ``expected_schema`` is a one-line error.

    Args:
        path: the predictors file.
        expected_schema: the schema the predictors must be for (None: any).

    Returns:
        The predictor in eval mode on the CPU.

    Raises:
        SchemaError: when the file is for another schema than ``expected_schema``.
        ValueError: when the file cannot be read or is not a medcf predictors file.
    """
    payload, schema = read_medcf_file(path, PREDICTORS_FORMAT, "medcf predictors file")
    if expected_schema is not None and schema.to_config() != expected_schema.to_config():
        raise SchemaError(
            f"{path}: predictors for another attribute schema ({schema_difference(schema, expected_schema)}); "
            "train predictors for this schema or use the matching bundle's"
        )
    predictor = AttributePredictor(schema, **payload["network"])
    predictor.load_state_dict(payload["state_dict"])
    if payload.get("image_size") is not None:
        predictor.image_size = tuple(int(side) for side in payload["image_size"])
    return predictor.eval()


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
        log_metrics({"val_loss": val_loss, **terms, **flat_scores(scores, "val")}, trainer.state.iteration)
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
        log_metrics(flat_scores(test_scores, "test"), trainer.state.iteration)
        from medcf.runtime.tracking import log_files  # here: loading the predictors must not import mlflow

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


def log_metrics(metrics: Mapping[str, float], step: int) -> None:
    """Log finite metrics to the active MLflow run, if any.

    Args:
        metrics: name -> value (NaN and infinite values are left out).
        step: the training iteration they belong to.
    """
    from medcf.runtime.tracking import log_finite_metrics  # here: loading the predictors must not import mlflow

    log_finite_metrics(metrics, step)
