"""Matching, not maximising: how far a counterfactual moves, against how far real images with the new value
differ from real images with the old one, the other attributes held fixed. No phantom truth is used; everything
here a hospital has: its held-out images, their labels and its attribute predictors.

For image i moved from u_i to v_i, with r_i its ``do()`` output (the null intervention: the control that takes the
decoding's own drift out) and c_i its counterfactual, the change is d_i = c_i - r_i. Two spaces judge it: the
pixels (:mod:`medcf.measure.pixel_effect`) and, here, the predictors' readings:

- **predictors** (:func:`expected_effect`): the predictors' raw outputs, which do not saturate as probabilities do:
  the contrast logit L_vu = logit_v - logit_u (categorical) or the age head's unclamped value. Measured shift
  m_i = reading(c_i) - reading(r_i); expected shift e_i = the adjusted difference of the reading between real
  images with v and with u (for age, the slope of the reading on the label times the shift), times the
  :func:`rendering_slope` (the fraction of a reading the product's round trip keeps: a decoded image reads softer
  than its source, so a counterfactual can show only that fraction of a real difference). The **shift ratio**
  R = sum_i m_i e_i / sum_i e_i^2.

Both ratios are 1 at the right size, above 1 at an overshoot. Adjusting for the other attributes matters: real
images with different values also differ in the attributes associated with them in the population (the chest
phantom's older patients are more often female), and a plain class difference would credit those to the
intervened attribute.

The weight with ratio 1 is found by :mod:`medcf.measure.weight_search`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from medcf.core.attributes import AttributeSchema, AttributeValue
from medcf.measure.predictors import AttributePredictor


@torch.no_grad()
def raw_readings(predictor: AttributePredictor, images: torch.Tensor, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Attribute -> the predictor's unsaturated reading of each image, on the CPU: logits (N, values) of a
    categorical attribute, the unclamped value in its units (N,) of a continuous one.

    Args:
        predictor: the attribute predictors (evaluated in eval mode).
        images: (N, 1, H, W) on the model's [-1, 1] scale.
        batch_size: images per forward call.

    Returns:
        The readings by attribute name.
    """
    was_training = predictor.training
    predictor.eval()
    device = next(predictor.parameters()).device
    try:
        outputs = torch.cat(
            [predictor(images[i : i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)]
        )
    finally:
        predictor.train(was_training)
    readings = {}
    for k, (name, output) in enumerate(predictor.split_outputs(outputs).items()):
        if predictor.schema[name].kind == "categorical":
            readings[name] = output.double()
        else:
            low, high = float(predictor.low[k]), float(predictor.high[k])
            readings[name] = low + output[:, 0].double() * (high - low)
    return readings


def reading(
    schema: AttributeSchema, name: str, values: torch.Tensor, source: AttributeValue, target: AttributeValue
) -> torch.Tensor:
    """The reading of ``name`` that a move from ``source`` to ``target`` is judged on: the contrast logit
    logit_target - logit_source (categorical) or the value itself (continuous), per image.

    Args:
        schema: the attributes.
        name: the attribute moved.
        values: its raw readings (:func:`raw_readings`): logits (N, values) or the value (N,).
        source: the value moved from (categorical only).
        target: the value moved to (categorical only).

    Returns:
        (N,) the reading per image.
    """
    attribute = schema[name]
    if attribute.kind == "continuous":
        return values
    return values[:, attribute.values.index(target)] - values[:, attribute.values.index(source)]


@dataclass(frozen=True)
class ExpectedEffect:
    """How real images with the attribute's values differ, in the predictor's reading.

    Attributes:
        shifts: per (source, target) pair of a categorical attribute the difference of mean contrast logits
            (target's images minus source's); a continuous attribute has ``slope`` instead.
        slope: continuous: the least-squares slope of the reading on the label.
        z: the largest |effect| / standard error over the pairs (the slope's for a continuous attribute).
        detected: z >= the job's ``min_z`` with at least two real images per value involved.
        counts: real images per value (categorical).
    """

    shifts: Mapping[tuple[str, str], float] = field(default_factory=dict)
    slope: float = math.nan
    z: float = math.nan
    detected: bool = False
    counts: Mapping[str, int] = field(default_factory=dict)

    def of(self, source: AttributeValue, target: AttributeValue) -> float:
        """Expected shift of one move (NaN where the data cannot say: a value without real images).

        Args:
            source: the value moved from.
            target: the value moved to.

        Returns:
            ``slope * (target - source)`` for a continuous attribute, else the pair's entry of ``shifts``.
        """
        if not math.isnan(self.slope):
            return self.slope * (float(target) - float(source))
        return self.shifts.get((str(source), str(target)), math.nan)

    def to_dict(self) -> dict[str, object]:
        found: dict[str, object] = {"z": finite_or_none(self.z), "detected": self.detected}
        if not math.isnan(self.slope):
            found["slope"] = finite_or_none(self.slope)
        else:
            found["shifts"] = {f"{u}->{v}": finite_or_none(s) for (u, v), s in self.shifts.items()}
            found["counts"] = dict(self.counts)
        return found


def finite_or_none(value: float | None, digits: int = 6) -> float | None:
    """``value`` rounded for a report, or None where it is missing or not finite.

    Args:
        value: a figure.
        digits: decimals kept.

    Returns:
        The rounded figure or None.
    """
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def adjusted_covariates(schema: AttributeSchema, rows: Sequence[Mapping[str, AttributeValue]], name: str) -> np.ndarray:
    """The covariates an effect of ``name`` is adjusted for: every other attribute that is not a causal descendant
    of it (descendants carry part of the effect), a continuous one standardised, a categorical one as indicators
    of its values but the first (one column per value that occurs beyond the first).

    Args:
        schema: the attributes (their parents give the descendants).
        name: the attribute whose effect is estimated.
        rows: the real images' attribute values.

    Returns:
        (len(rows), columns) design columns; (len(rows), 0) when there is nothing to adjust for.
    """
    names = [n for n in schema.names if n != name and n not in schema.descendants({name})]
    columns = []
    for name in names:
        attribute = schema[name]
        values = [row[name] for row in rows]
        if attribute.kind == "continuous":
            x = np.asarray(values, dtype=float)
            columns.append((x - x.mean()) / (x.std() or 1.0))
        else:
            present = [v for v in attribute.values if v in values]
            columns.extend(np.asarray([v == level for v in values], dtype=float) for level in present[1:])
    return np.stack(columns, axis=1) if columns else np.zeros((len(rows), 0))


def _coefficient(
    y: np.ndarray, treatment: np.ndarray, covariates: np.ndarray, clusters: np.ndarray | None = None
) -> tuple[float, float]:
    """OLS of y on [1, treatment, covariates]: the treatment's coefficient and its standard error, clustered by
    ``clusters`` (the sandwich estimator with the CR1 small-sample factor; None: images independent)."""
    design = np.column_stack([np.ones(len(y)), treatment, covariates])
    beta, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ beta
    dof = len(y) - np.linalg.matrix_rank(design)
    if dof < 1:
        return float(beta[1]), math.inf
    bread = np.linalg.pinv(design.T @ design)
    if clusters is None:
        covariance = bread * float(residual @ residual) / dof
        return float(beta[1]), math.sqrt(max(float(covariance[1, 1]), 0.0))
    names, index = np.unique(clusters, return_inverse=True)
    if len(names) < 2:
        return float(beta[1]), math.inf
    scores = np.zeros((len(names), design.shape[1]))
    np.add.at(scores, index, design * residual[:, None])  # each cluster's summed score
    factor = len(names) / (len(names) - 1) * (len(y) - 1) / dof
    covariance = bread @ (scores.T @ scores) @ bread * factor
    return float(beta[1]), math.sqrt(max(float(covariance[1, 1]), 0.0))


def expected_effect(
    schema: AttributeSchema,
    name: str,
    readings: torch.Tensor,
    rows: Sequence[Mapping[str, AttributeValue]],
    min_z: float = 3.0,
    patients: Sequence[str] | None = None,
) -> ExpectedEffect:
    """The attribute's effect on the predictor's reading over real images (see the module docstring), adjusted
    for the attributes that are not its causal descendants.

    Real images with different values of ``name`` also differ in the attributes associated with it (the chest
    phantom's older patients are more often female): a plain difference of class means would credit those to
    ``name`` and push the weight too high. So the expected shift is the coefficient of ``name`` in a least-squares
    fit of the reading on ``name`` and every other attribute that is not a descendant of it (descendants carry
    part of the effect an intervention has, and the causal graph changes them in the counterfactual too).

    Args:
        schema: the attributes (their parents give the descendants).
        name: the attribute.
        readings: its raw readings of the real images (:func:`raw_readings`).
        rows: the real images' attribute values (every attribute of the schema).
        min_z: standard errors the effect must exceed to count as detected.
        patients: each image's patient: the standard errors are clustered by patient, whose images are not
            independent evidence (None: every image independent).

    Returns:
        The expected shifts (or slope) and whether the data show an effect.
    """
    attribute = schema[name]
    covariates = adjusted_covariates(schema, rows, name)
    clusters = None if patients is None else np.asarray([str(p) for p in patients])
    if attribute.kind == "continuous":
        x = np.asarray([float(row[name]) for row in rows])
        if len(x) < 3 or np.ptp(x) == 0:
            return ExpectedEffect(slope=math.nan, z=math.nan, detected=False)
        slope, se = _coefficient(readings.numpy(), x, covariates, clusters)
        z = abs(slope) / se if se > 0 else math.inf
        return ExpectedEffect(slope=slope, z=float(z), detected=bool(z >= min_z))
    labels = [str(row[name]) for row in rows]
    counts = {value: labels.count(value) for value in attribute.values}
    shifts, z_best = {}, 0.0
    for source in attribute.values:
        for target in attribute.values:
            if source == target or counts[source] < 2 or counts[target] < 2:
                continue
            pair = [k for k, v in enumerate(labels) if v in (source, target)]
            contrast = reading(schema, name, readings[pair], source, target).numpy()
            treated = np.asarray([labels[k] == target for k in pair], dtype=float)
            shift, se = _coefficient(contrast, treated, covariates[pair], None if clusters is None else clusters[pair])
            shifts[(source, target)] = shift
            z_best = max(z_best, abs(shift) / se if se > 0 else math.inf)
    detected = bool(shifts) and z_best >= min_z
    return ExpectedEffect(shifts=shifts, z=z_best if shifts else math.nan, detected=detected, counts=counts)


def rendering_slope(real: Sequence[float], rendered: Sequence[float]) -> float:
    """How much of a real image's reading survives the product's round trip: the least-squares slope of the
    ``do()`` outputs' readings on the source images' readings (1: the predictors read the round trip as the
    source; below 1: decoding softens what they read, so a counterfactual can only show that fraction of a real
    difference). NaN with fewer than three images or no spread.

    Args:
        real: the reading of each source image.
        rendered: the reading of each source's ``do()`` output, in the same order.

    Returns:
        The slope, or NaN as above.
    """
    x, y = np.asarray(real, dtype=float), np.asarray(rendered, dtype=float)
    if len(x) < 3 or np.ptp(x) == 0:
        return math.nan
    return float(np.polyfit(x, y, 1)[0])


def shift_ratio(measured: Sequence[float], expected: Sequence[float]) -> float:
    """R = sum_i m_i e_i / sum_i e_i^2 over the moves with a finite expected shift (NaN when none).

    Args:
        measured: the measured shift m_i of each move.
        expected: the expected shift e_i of each move, in the same order.

    Returns:
        R over the moves where both are finite; NaN when sum_i e_i^2 is zero there.
    """
    m, e = np.asarray(measured, dtype=float), np.asarray(expected, dtype=float)
    keep = np.isfinite(e) & np.isfinite(m)
    denominator = float(e[keep] @ e[keep])
    return float(m[keep] @ e[keep]) / denominator if denominator > 0 else math.nan
