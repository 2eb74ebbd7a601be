"""What real images show in pixels, for matching a counterfactual's size without the phantom truth: an attribute's
effect map and the fine texture real images with a value have.

For image i moved from u_i to v_i, with r_i its ``do()`` output and c_i its counterfactual, the change is
d_i = c_i - r_i. The data's effect map m_uv is the per-pixel least-squares coefficient of the value (v against u)
over the real images, the attributes that are not descendants held fixed (:func:`pixel_effect`). The **pixel
ratio** sum_i <d_i, m_i> / sum_i |m_i|^2 (|m|^2 estimated as <m_1, m_2> from two disjoint halves of the data,
which does not grow with the noise of the estimate) is the truth's target ratio with the data's average effect in
place of the image's exact one; it is used where the halves agree (the map is not noise). The halves split
**patients**, not images: a patient's images (two views of one breast, follow-up studies) share their anatomy, so
halves that share a patient share noise, and <m_1, m_2> then counts that noise as effect (on the mammogram phantom
an image split made |m|^2 1.5x the true effect's, and the calibration overshoot by as much). The estimate is the
mean over several random splits.
:func:`texture_expectation` gives the fine texture a move should bring, from the real images' high-frequency
energy. The reading-space counterpart is :mod:`medcf.measure.matching`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from medcf.core.attributes import AttributeSchema, AttributeValue
from medcf.measure.matching import adjusted_covariates, finite_or_none

SPLITS = 8  # random patient splits averaged: one split's <m_1, m_2> varies a lot with 15-40 patients per move


@dataclass(frozen=True)
class PixelEffect:
    """The attribute's effect on the pixels, estimated from real images (no truth): per move the map of how much
    brighter each pixel is with the target value than with the source value, the other non-descendant
    attributes held fixed (least squares per pixel), and an unbiased estimate of its squared norm from two
    disjoint halves of the patients (<m_1, m_2>: the noise of each half does not add up).

    Attributes:
        maps: (source, target) -> (map (1, H, W), squared norm estimate, split-half correlation), both averaged
            over the random splits; a continuous
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
                f"{u}->{v}" if u else "per unit": finite_or_none(c) for (u, v), (_, _, c) in self.maps.items()
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
    patients: Sequence[str] | None = None,
    splits: int = SPLITS,
) -> PixelEffect:
    """Estimate :class:`PixelEffect` of ``name`` from real prepared images and their labels.

    Args:
        schema: the attributes (their parents give the descendants, which are not held fixed).
        name: the attribute.
        images: (N, 1, H, W) real images on [-1, 1], in the preparation's common orientation.
        rows: their attribute values.
        min_correlation: split-half correlation of the two maps needed to call the effect detected.
        seed: the random splits into halves.
        patients: each image's patient: the halves never share one (None: every image its own patient, right
            only when no patient has two images).
        splits: random splits averaged for the squared norm and the split-half correlation.

    Returns:
        The maps and whether the data show a pixel effect.
    """
    shape = images.shape[1:]
    pixels = images.double().numpy().reshape(len(images), -1)
    covariates = adjusted_covariates(schema, rows, name)
    owners = np.asarray([str(p) for p in patients] if patients is not None else [str(k) for k in range(len(rows))])
    if len(owners) != len(rows):
        raise ValueError(f"patients: {len(owners)} given for {len(rows)} images")
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
        products, correlations = [], []
        for halves in _patient_halves(owners[members], splits, rng):  # two disjoint sets of patients
            first, second = (
                _pixel_coefficients(pixels[members[half]], treatment[half], covariates[members[half]])
                for half in halves
            )
            products.append(float(first @ second))
            if np.std(first) > 0 and np.std(second) > 0:
                correlations.append(float(np.corrcoef(first, second)[0, 1]))
        squared = float(np.mean(products)) if products else math.nan
        correlation = float(np.mean(correlations)) if correlations else math.nan
        maps[key] = (torch.from_numpy(full.reshape(shape)), squared, correlation)
        agree.append(math.isfinite(correlation) and correlation >= min_correlation and squared > 0)
    return PixelEffect(maps, schema[name].kind == "continuous", bool(agree) and all(agree))


def _patient_halves(owners: np.ndarray, splits: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """``splits`` random splits of the positions into two halves of the patients (none when fewer than 4)."""
    distinct = np.unique(owners)
    if len(distinct) < 4:
        return []
    halves = []
    for _ in range(splits):
        in_first = np.isin(owners, rng.permutation(distinct)[: len(distinct) // 2])
        halves.append((np.flatnonzero(in_first), np.flatnonzero(~in_first)))
    return halves


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
