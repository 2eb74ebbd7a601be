"""Matching, not maximising: how far a counterfactual moves, against how far real images with the new value
differ from real images with the old one, the other attributes held fixed. No phantom truth is used; everything
here a hospital has: its held-out images, their labels and its attribute predictors.

For image i moved from u_i to v_i, with r_i its ``do()`` output (the null intervention: the control that takes the
decoding's own drift out) and c_i its counterfactual, the change is d_i = c_i - r_i. Two spaces judge it:

- **pixels** (:func:`pixel_effect`): the data's effect map m_uv, the per-pixel least-squares coefficient of the
  value (v against u) over the real images, the attributes that are not descendants held fixed. The **pixel
  ratio** sum_i <d_i, m_i> / sum_i |m_i|^2 (|m|^2 estimated as <m_1, m_2> from two disjoint halves of the data,
  which does not grow with the noise of the estimate) is the truth's target ratio with the data's average effect
  in place of the image's exact one. Used where the halves agree (the map is not noise).
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

:func:`search_weight` finds the weight with ratio 1 by secant steps on a ratio that grows with the weight,
bracketing and interpolating between the two closest weights tried.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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
        found: dict[str, object] = {"z": _finite(self.z), "detected": self.detected}
        if not math.isnan(self.slope):
            found["slope"] = _finite(self.slope)
        else:
            found["shifts"] = {f"{u}->{v}": _finite(s) for (u, v), s in self.shifts.items()}
            found["counts"] = dict(self.counts)
        return found


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 6)


def _design(schema: AttributeSchema, rows: Sequence[Mapping[str, AttributeValue]], names: Sequence[str]) -> np.ndarray:
    """Covariate columns of ``names`` for ``rows``: a continuous attribute standardised, a categorical one as
    indicators of its values but the first (one column per value that occurs beyond the first)."""
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


def _coefficient(y: np.ndarray, treatment: np.ndarray, covariates: np.ndarray) -> tuple[float, float]:
    """OLS of y on [1, treatment, covariates]: the treatment's coefficient and its standard error."""
    design = np.column_stack([np.ones(len(y)), treatment, covariates])
    beta, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ beta
    dof = len(y) - np.linalg.matrix_rank(design)
    if dof < 1:
        return float(beta[1]), math.inf
    covariance = np.linalg.pinv(design.T @ design) * float(residual @ residual) / dof
    return float(beta[1]), math.sqrt(max(float(covariance[1, 1]), 0.0))


def expected_effect(
    schema: AttributeSchema,
    name: str,
    readings: torch.Tensor,
    rows: Sequence[Mapping[str, AttributeValue]],
    min_z: float = 3.0,
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

    Returns:
        The expected shifts (or slope) and whether the data show an effect.
    """
    attribute = schema[name]
    adjusted = [n for n in schema.names if n != name and n not in schema.descendants({name})]
    covariates = _design(schema, rows, adjusted)
    if attribute.kind == "continuous":
        x = np.asarray([float(row[name]) for row in rows])
        if len(x) < 3 or np.ptp(x) == 0:
            return ExpectedEffect(slope=math.nan, z=math.nan, detected=False)
        slope, se = _coefficient(readings.numpy(), x, covariates)
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
            shift, se = _coefficient(contrast, treated, covariates[pair])
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


@dataclass(frozen=True)
class PixelEffect:
    """The attribute's effect on the pixels, estimated from real images (no truth): per move the map of how much
    brighter each pixel is with the target value than with the source value, the other non-descendant
    attributes held fixed (least squares per pixel), and an unbiased estimate of its squared norm from two
    disjoint halves of the images (<m_1, m_2>: the noise of each half does not add up).

    Attributes:
        maps: (source, target) -> (map (1, H, W), squared norm estimate, split-half correlation); a continuous
            attribute has the key ("", "") for the map per unit.
        continuous: whether the attribute is continuous (one map per unit of its value).
        detected: the halves agree (split-half correlation >= the job's threshold) for every move estimated.
    """

    maps: Mapping[tuple[str, str], tuple[torch.Tensor, float, float]]
    continuous: bool
    detected: bool

    def of(self, source: AttributeValue, target: AttributeValue) -> tuple[torch.Tensor, float] | None:
        """(effect map of the move, its squared norm estimate), or None where the data cannot say.

        Args:
            source: the value moved from.
            target: the value moved to.

        Returns:
            For a continuous attribute the per-unit map times (target - source) and its squared norm times the
            square of that; for a categorical one the pair's map and squared norm; None without a map.
        """
        if self.continuous:
            found = self.maps.get(("", ""))
            if found is None:
                return None
            delta = float(target) - float(source)
            return found[0] * delta, found[1] * delta * delta
        found = self.maps.get((str(source), str(target)))
        return None if found is None else (found[0], found[1])

    def to_dict(self) -> dict[str, object]:
        return {
            "detected": self.detected,
            "split_half_correlation": {
                f"{u}->{v}" if u else "per unit": _finite(c) for (u, v), (_, _, c) in self.maps.items()
            },
        }


def _pixel_coefficients(images: np.ndarray, treatment: np.ndarray, covariates: np.ndarray) -> np.ndarray:
    """Least squares of every pixel on [1, treatment, covariates]: the treatment's coefficient per pixel."""
    design = np.column_stack([np.ones(len(images)), treatment, covariates])
    beta, *_ = np.linalg.lstsq(design, images.reshape(len(images), -1), rcond=None)
    return beta[1]


def pixel_effect(
    schema: AttributeSchema,
    name: str,
    images: torch.Tensor,
    rows: Sequence[Mapping[str, AttributeValue]],
    min_correlation: float = 0.3,
    seed: int = 0,
) -> PixelEffect:
    """Estimate :class:`PixelEffect` of ``name`` from real prepared images and their labels.

    Args:
        schema: the attributes (their parents give the descendants, which are not held fixed).
        name: the attribute.
        images: (N, 1, H, W) real images on [-1, 1], in the preparation's common orientation.
        rows: their attribute values.
        min_correlation: split-half correlation of the two maps needed to call the effect detected.
        seed: the split into halves.

    Returns:
        The maps and whether the data show a pixel effect.
    """
    shape = images.shape[1:]
    pixels = images.double().numpy().reshape(len(images), -1)
    adjusted = [n for n in schema.names if n != name and n not in schema.descendants({name})]
    covariates = _design(schema, rows, adjusted)
    rng = np.random.default_rng(seed)
    groups: dict[tuple[str, str], tuple[list[int], np.ndarray]] = {}
    if schema[name].kind == "continuous":
        values = np.asarray([float(row[name]) for row in rows])
        groups[("", "")] = (list(range(len(rows))), values)
    else:
        labels = [str(row[name]) for row in rows]
        for source in schema[name].values:
            for target in schema[name].values:
                members = [k for k, v in enumerate(labels) if v in (source, target)]
                treated = np.asarray([labels[k] == target for k in members], dtype=float)
                if source != target and treated.sum() >= 4 and (1 - treated).sum() >= 4:
                    groups[(source, target)] = (members, treated)
    maps, agree = {}, []
    for key, (members, treatment) in groups.items():
        members = np.asarray(members)
        full = _pixel_coefficients(pixels[members], treatment, covariates[members])
        order = rng.permutation(len(members))
        halves = [
            _pixel_coefficients(pixels[members[half]], treatment[half], covariates[members[half]])
            for half in (order[: len(order) // 2], order[len(order) // 2 :])
        ]
        correlation = float(np.corrcoef(halves[0], halves[1])[0, 1]) if np.std(halves[0]) > 0 else math.nan
        squared = float(halves[0] @ halves[1])
        maps[key] = (torch.from_numpy(full.reshape(shape)), squared, correlation)
        agree.append(math.isfinite(correlation) and correlation >= min_correlation and squared > 0)
    return PixelEffect(maps, schema[name].kind == "continuous", bool(agree) and all(agree))


def texture_expectation(
    schema: AttributeSchema, name: str, high_frequency: np.ndarray, labels: Sequence[AttributeValue]
) -> Callable[[AttributeValue, AttributeValue], float]:
    """How much fine texture real images with the target value have against real images with the source value:
    a function (source, target) -> mean HF(target's images) / mean HF(source's images) for a categorical attribute,
    exp(slope (target - source)) of a line fitted to log HF over the label for a continuous one (NaN where a value
    has no real image with a finite HF).

    Args:
        schema: the attributes.
        name: the attribute.
        high_frequency: HF of each real image (:func:`medcf.measure.ground_truth.high_frequency`).
        labels: the real images' values of the attribute.

    Returns:
        The expected HF ratio of a move.
    """
    hf = np.asarray(high_frequency, dtype=float)
    finite = np.isfinite(hf) & (hf > 0)
    if schema[name].kind == "continuous":
        x = np.asarray(labels, dtype=float)[finite]
        slope = np.polyfit(x, np.log(hf[finite]), 1)[0] if len(x) >= 3 and np.ptp(x) > 0 else math.nan
        return lambda source, target: math.exp(slope * (float(target) - float(source)))
    values = np.asarray([str(v) for v in labels])
    means = {v: float(hf[finite & (values == v)].mean()) for v in set(values[finite])}
    return lambda source, target: means.get(str(target), math.nan) / means.get(str(source), math.nan)


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


@dataclass(frozen=True)
class WeightSearch:
    """The outcome of :func:`search_weight`.

    Attributes:
        weight: the chosen weight.
        status: ``matched`` (R = 1 bracketed, or met within the tolerance) or ``bound`` (R = 1 lies beyond the
            search bounds; the bound closest to it).
        tried: weight -> R for every weight evaluated, in the order tried.
    """

    weight: float
    status: str
    tried: dict[float, float]


def search_weight(
    ratio_at: Callable[[float], float],
    start: Sequence[float] = (1.0, 2.0),
    bounds: tuple[float, float] = (0.0, 8.0),
    tolerance: float = 0.05,
    max_evaluations: int = 5,
) -> WeightSearch:
    """The weight w with shift ratio R(w) = 1, for an R that grows with w.

    Starts from two weights, then takes secant steps (clipped to ``bounds``) until |R - 1| <= ``tolerance`` or
    ``max_evaluations`` weights are spent; the answer interpolates linearly between the two tried weights that
    bracket R = 1 and lie closest to it.

    Args:
        ratio_at: w -> R(w) (a decode of the calibration images at weight w, measured).
        start: the first two weights.
        bounds: the weights allowed (low, high).
        tolerance: |R - 1| accepted without a further step.
        max_evaluations: at most this many weights are decoded.

    Returns:
        The chosen weight, its status and every weight tried.
    """
    low, high = bounds
    if not (0 <= low < high) or len(start) != 2 or max_evaluations < 2:
        raise ValueError("search_weight: needs 0 <= low < high, two start weights and max_evaluations >= 2")
    tried: dict[float, float] = {}
    for w in start:
        tried[float(min(max(w, low), high))] = ratio_at(float(min(max(w, low), high)))
    while len(tried) < max_evaluations:
        best = min(tried, key=lambda w: abs(tried[w] - 1) if math.isfinite(tried[w]) else math.inf)
        if math.isfinite(tried[best]) and abs(tried[best] - 1) <= tolerance:
            break
        proposal = _next_weight(tried, low, high)
        if proposal is None or any(abs(proposal - w) < 1e-3 for w in tried):
            break
        tried[proposal] = ratio_at(proposal)
    return _choose(tried, low, high, tolerance)


def grows_with_weight(tried: Mapping[float, float], tolerance: float) -> bool:
    """Whether a ratio responds to the weight as :func:`search_weight` assumes: R at the largest tried weight
    exceeds R at the smallest by more than ``tolerance`` (both finite).

    Args:
        tried: weight -> R, as :attr:`WeightSearch.tried` holds it.
        tolerance: the rise a response needs (the search's tolerance on |R - 1|).

    Returns:
        False for a flat or falling R, or fewer than two finite points.
    """
    points = sorted((w, r) for w, r in tried.items() if math.isfinite(r))
    return len(points) >= 2 and points[-1][1] - points[0][1] > tolerance


def match_weight(
    ratio_at: Callable[[float, str], float],
    measure: str,
    fallback: str | None = None,
    **search: Any,
) -> tuple[WeightSearch, str]:
    """:func:`search_weight` on ``measure``; where that ratio does not rise with the weight but ``fallback`` does at
    the same weights (:func:`grows_with_weight`), the search is run again on ``fallback``.

    Args:
        ratio_at: (w, measure) -> that ratio of the decode at w; it should cache its decodes, since the fallback
            reads the weights already tried again.
        measure: the ratio matched first (e.g. ``pixel_ratio``).
        fallback: the ratio matched where ``measure`` does not respond (e.g. ``shift_ratio``); None: none.
        search: ``start``, ``bounds``, ``tolerance``, ``max_evaluations`` of :func:`search_weight`.

    Returns:
        The search matched and the name of its ratio.
    """
    found = search_weight(lambda w: ratio_at(w, measure), **search)
    tolerance = search.get("tolerance", 0.05)
    if fallback is None or grows_with_weight(found.tried, tolerance):
        return found, measure
    if not grows_with_weight({w: ratio_at(w, fallback) for w in found.tried}, tolerance):
        return found, measure
    return search_weight(lambda w: ratio_at(w, fallback), **search), fallback


def _bracket(tried: Mapping[float, float]) -> tuple[float, float] | None:
    """The two adjacent tried weights whose R straddle 1 (the pair closest to R = 1), or None."""
    points = sorted((w, r) for w, r in tried.items() if math.isfinite(r))
    pairs = [(a, b) for a, b in zip(points, points[1:], strict=False) if (a[1] - 1) * (b[1] - 1) <= 0]
    if not pairs:
        return None
    a, b = min(pairs, key=lambda pair: abs(pair[0][1] - 1) + abs(pair[1][1] - 1))
    return a[0], b[0]


def _interpolate(tried: Mapping[float, float], a: float, b: float) -> float:
    ra, rb = tried[a], tried[b]
    if ra == rb:
        return a
    return a + (1 - ra) * (b - a) / (rb - ra)


def _next_weight(tried: Mapping[float, float], low: float, high: float) -> float | None:
    bracket = _bracket(tried)
    if bracket is not None:
        return _interpolate(tried, *bracket)
    points = sorted((w, r) for w, r in tried.items() if math.isfinite(r))
    if len(points) < 2:
        return None
    (w1, r1), (w2, r2) = sorted(points, key=lambda p: abs(p[1] - 1))[:2]
    if r1 == r2 or (r2 - r1) / (w2 - w1) <= 0:  # flat or falling: step towards the side that should help
        step = high if r1 < 1 else low
        return None if any(abs(step - w) < 1e-3 for w in tried) else step
    return float(min(max(w1 + (1 - r1) * (w2 - w1) / (r2 - r1), low), high))


def _choose(tried: Mapping[float, float], low: float, high: float, tolerance: float) -> WeightSearch:
    finite = {w: r for w, r in tried.items() if math.isfinite(r)}
    if not finite:
        return WeightSearch(1.0, "bound", dict(tried))
    bracket = _bracket(finite)
    if bracket is not None:
        return WeightSearch(round(_interpolate(finite, *bracket), 3), "matched", dict(tried))
    best = min(finite, key=lambda w: abs(finite[w] - 1))
    status = "matched" if abs(finite[best] - 1) <= tolerance else "bound"
    return WeightSearch(round(best, 3), status, dict(tried))
