"""Soundness of counterfactuals (Monteiro et al. 2023): pure functions on images and predictor outputs.

Images are tensors (N, 1, H, W) on the model's [-1, 1] scale; distances are reported on the 0-255 scale
(L1) or for images mapped to [0, 1] (SSIM), as the literature does. Predictor outputs are the dictionaries of
:meth:`medcf.measure.predictors.AttributePredictor.predict`: a categorical attribute gives probabilities
(N, values), a continuous one its value in its own units (N,).

- :func:`effectiveness`: do the counterfactuals show the intervened values? (accuracy, AUROC, MAE)
- :func:`off_target_change`: how far the predictions of attributes nobody intervened on move
  (attribute amplification), signed and absolute.
- :func:`l1_255`, :func:`ssim`: composition and reversibility distances.
- :func:`minimality`: how far a counterfactual lies from its source, relative to how far real images that
  share its attributes lie from each other.
- :func:`frechet_distance`: realism, FID on the predictors' features (monai.metrics.FIDMetric).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monai.metrics import FIDMetric, SSIMMetric
from scipy import stats

from medcf.core.attributes import AttributeSchema, AttributeValue
from medcf.core.intensity import to_unit_scale


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clipped, in float32 (:func:`medcf.core.intensity.to_unit_scale`).

    Args:
        images: images on the [-1, 1] scale.

    Returns:
        The images on [0, 1], float32.
    """
    return to_unit_scale(images.float())


def l1_255(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference per image on the 0-255 scale, (N,).

    Args:
        images: (N, 1, H, W) on [-1, 1].
        reference: the images to compare with, same shape.

    Returns:
        (N,) mean absolute difference of the [0, 1] images times 255.
    """
    return (to_unit(images) - to_unit(reference)).abs().flatten(1).mean(1) * 255


def ssim(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """SSIM per image (Gaussian window 11, sigma 1.5) of the images mapped to [0, 1], (N,).

    Args:
        images: (N, 1, H, W) on [-1, 1].
        reference: the images to compare with, same shape.

    Returns:
        (N,) SSIM per image.
    """
    metric = SSIMMetric(spatial_dims=2, data_range=1.0, reduction="none")
    return metric(to_unit(images), to_unit(reference)).reshape(-1)


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney statistic, ties counted half); NaN with one class only.

    Args:
        scores: one score per sample, higher meaning more likely positive.
        positive: whether each sample is positive (read as bool).

    Returns:
        The AUC in [0, 1], or NaN when every sample is of one class.
    """
    scores, positive = np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = stats.rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def effectiveness(
    schema: AttributeSchema,
    name: str,
    predicted: Mapping[str, torch.Tensor],
    targets: Sequence[Mapping[str, AttributeValue]],
) -> dict[str, float]:
    """How well the predictor finds the intervened value of attribute ``name`` in the counterfactuals.

    Categorical: ``accuracy`` (argmax equals the target), ``target_probability`` (mean probability of the
    target) and ``auroc`` (binary: the target's probability against whether it is the positive value; more
    values: macro one-vs-rest over the targets present; NaN when every target is the same value, as for
    do(sex=F) on everyone). Continuous: ``mae`` in the attribute's units.

    Args:
        schema: the model's attributes.
        name: the intervened attribute.
        predicted: the predictors' outputs on the counterfactuals (:meth:`AttributePredictor.predict`).
        targets: each counterfactual's attributes, holding the intervened value of ``name``.

    Returns:
        The scores above, by name.
    """
    attribute = schema[name]
    if attribute.kind == "continuous":
        values = predicted[name].detach().double().cpu().numpy()
        wanted = np.array([float(row[name]) for row in targets])
        return {"mae": float(np.abs(values - wanted).mean())}
    probabilities = predicted[name].detach().double().cpu().numpy()
    wanted = np.array([attribute.index(row[name]) for row in targets])
    rows = np.arange(len(wanted))
    scores = {
        "accuracy": float((probabilities.argmax(1) == wanted).mean()),
        "target_probability": float(probabilities[rows, wanted].mean()),
    }
    if probabilities.shape[1] == 2:
        scores["auroc"] = roc_auc(probabilities[:, 1], wanted == 1)
    else:
        per_class = [roc_auc(probabilities[:, k], wanted == k) for k in np.unique(wanted)]
        defined = [a for a in per_class if not math.isnan(a)]
        scores["auroc"] = float(np.mean(defined)) if defined else math.nan
    return scores


def prediction_of_value(
    schema: AttributeSchema, name: str, predicted: Mapping[str, torch.Tensor], rows: Sequence[Mapping]
) -> np.ndarray:
    """Per image: the probability of its own value in ``rows`` (categorical) or the predicted value.

    Args:
        schema: the model's attributes.
        name: the attribute read.
        predicted: the predictors' outputs (:meth:`AttributePredictor.predict`).
        rows: each image's attributes; only used for a categorical attribute.

    Returns:
        (N,) float64.
    """
    values = predicted[name].detach().double().cpu().numpy()
    if schema[name].kind == "continuous":
        return values
    return values[np.arange(len(rows)), [schema[name].index(row[name]) for row in rows]]


def off_target_change(
    schema: AttributeSchema,
    names: Sequence[str],
    before: Mapping[str, torch.Tensor],
    after: Mapping[str, torch.Tensor],
    factual: Sequence[Mapping[str, AttributeValue]],
) -> dict[str, dict[str, float]]:
    """For each attribute of ``names`` (neither intervened nor a descendant): the mean ``signed`` and mean
    ``absolute`` change of its prediction from the factual images (``before``) to the counterfactuals
    (``after``). Categorical: the probability of the image's factual value (negative = moved away from it);
    continuous: the predicted value in its units.

    Args:
        schema: the model's attributes.
        names: the attributes to measure: neither intervened nor a descendant.
        before: the predictors' outputs on the factual images.
        after: the predictors' outputs on the counterfactuals, the same images in the same order.
        factual: each image's factual attributes.

    Returns:
        attribute name -> ``{"signed", "absolute"}`` mean change.
    """
    changes = {}
    for name in names:
        delta = prediction_of_value(schema, name, after, factual) - prediction_of_value(schema, name, before, factual)
        changes[name] = {"signed": float(delta.mean()), "absolute": float(np.abs(delta).mean())}
    return changes


def minimality(
    images: torch.Tensor,
    counterfactuals: torch.Tensor,
    counterfactual_rows: Sequence[Mapping[str, AttributeValue]],
    real: torch.Tensor,
    real_rows: Sequence[Mapping[str, AttributeValue]],
    categorical: Sequence[str],
) -> float:
    """Mean L1 (0-255) from each source to its counterfactual, divided by the median L1 between distinct real
    images that share the counterfactual's values of the ``categorical`` attributes (all distinct real pairs
    where none share them). Below 1: the counterfactual stays nearer its source than two different people with
    those attributes are to each other. NaN with fewer than two real images.

    Args:
        images: the sources (N, 1, H, W) on [-1, 1].
        counterfactuals: their counterfactuals, same shape and order.
        counterfactual_rows: each counterfactual's attributes.
        real: real images (M, 1, H, W) on [-1, 1], the reference population.
        real_rows: each real image's attributes.
        categorical: the attributes whose values a reference pair must share with the counterfactual.

    Returns:
        The ratio (the reference median pools the pairs of every counterfactual); NaN with fewer than two real
        images or a zero reference.
    """
    if len(real) < 2:
        return math.nan
    moved = float(l1_255(counterfactuals, images).mean())
    flat = to_unit(real).flatten(1)
    pairwise = torch.cdist(flat, flat, p=1) * 255 / flat.shape[1]
    upper = torch.triu(torch.ones_like(pairwise, dtype=torch.bool), diagonal=1)
    references = []
    for row in counterfactual_rows:
        same = torch.tensor([all(r[n] == row[n] for n in categorical) for r in real_rows])
        mask = upper & same[:, None] & same[None, :]
        references.append(pairwise[mask] if mask.any() else pairwise[upper])
    reference = float(torch.cat(references).median())
    return moved / reference if reference > 0 else math.nan


def frechet_distance(features: torch.Tensor, real_features: torch.Tensor) -> float:
    """FID between two sets of feature vectors (N, F) (monai.metrics.FIDMetric); NaN with under 2 of either.

    Args:
        features: the generated images' features (N, F).
        real_features: the real images' features (M, F).

    Returns:
        The Frechet distance, or NaN with fewer than two vectors in either set.
    """
    if len(features) < 2 or len(real_features) < 2:
        return math.nan
    return float(FIDMetric()(features.double(), real_features.double()))
