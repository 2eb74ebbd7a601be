"""Statistics of a classifier bias audit with counterfactuals: pure functions on the audit table.

For an image x and an intervention do(A=a') on a protected attribute, a classifier f gives
``p_factual`` = f(x), ``p_counterfactual`` = f(CF(x, do(A=a'))) and ``p_null`` = f(CF(x, do())), the
null-intervention reconstruction that carries the generator's artefacts alone. The audit table has one row
per image and intervention with the columns ``source``, ``patient``, ``attribute``, ``from``, ``to``,
``p_factual``, ``p_counterfactual``, ``p_null``, ``flipped`` and (optional) ``recognised``, whether the
attribute predictors recognise the intervened value on the counterfactual.

- :func:`flip_counts`: how often the thresholded prediction changes, and in which direction.
- :func:`patient_bootstrap`: a mean and its percentile interval, resampling patients, not rows, on one
  arithmetic path (the interval contains its estimate by construction).
- :func:`paired_p_value`: Wilcoxon signed-rank test on per-patient mean deltas.
- :func:`adjust_p_values`: Benjamini-Hochberg adjustment that keeps NaNs out of the family.
- :func:`minimum_patients`, :func:`detectable_effect`: what a direction could have shown at all: the fewest
  patients with which its test can reach significance in the family, and the smallest effect it detects with
  80 % power.

The report built from these (summaries, verdicts, subgroup rates) is :mod:`medcf.measure.audit_summary`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats

ArrayLike = npt.ArrayLike


SIGNIFICANCE = 0.05
#: The power at which :func:`detectable_effect` states what an audit could have seen.
POWER = 0.8


#: Patients drawn per block of resamples, to bound the memory of the bootstrap.
RESAMPLING_BLOCK = 1 << 20


def flip_counts(p_factual: ArrayLike, p_counterfactual: ArrayLike, threshold: float) -> dict[str, Any]:
    """Changes of the thresholded prediction (positive means p >= threshold) from factual to counterfactual.

    neg_to_pos = #{p_factual < t <= p_counterfactual}, pos_to_neg = #{p_counterfactual < t <= p_factual},
    flips = neg_to_pos + pos_to_neg and flip_rate = flips / n (NaN when n == 0).

    Args:
        p_factual: the classifier's probability on each factual image.
        p_counterfactual: its probability on each counterfactual, in the same order and shape.
        threshold: the probability t at or above which a prediction is positive.

    Returns:
        ``n``, ``flips``, ``neg_to_pos``, ``pos_to_neg`` and ``flip_rate``.

    Raises:
        ValueError: when the two arrays differ in shape.
    """
    factual_positive = np.asarray(p_factual, dtype=float) >= threshold
    counterfactual_positive = np.asarray(p_counterfactual, dtype=float) >= threshold
    if factual_positive.shape != counterfactual_positive.shape:
        shapes = f"{factual_positive.shape} and {counterfactual_positive.shape}"
        raise ValueError(f"p_factual and p_counterfactual differ in shape: {shapes}")
    n = int(factual_positive.size)
    neg_to_pos = int((~factual_positive & counterfactual_positive).sum())
    pos_to_neg = int((factual_positive & ~counterfactual_positive).sum())
    flips = neg_to_pos + pos_to_neg
    return {
        "n": n,
        "flips": flips,
        "neg_to_pos": neg_to_pos,
        "pos_to_neg": pos_to_neg,
        "flip_rate": flips / n if n else math.nan,
    }


def _per_patient(values: ArrayLike, patients: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(sum of ``values``, number of rows) per distinct patient, in the order of first appearance: the rows'
    order, not the pseudonyms' (which change with the pseudonym key), decides which patient a bootstrap draw
    picks, so that the same images give the same interval under any key."""
    values = np.asarray(values, dtype=float).reshape(-1)
    patients = np.asarray(patients).reshape(-1)
    if values.shape != patients.shape:
        raise ValueError(f"{values.size} values but {patients.size} patients")
    index, _ = pd.factorize(patients, sort=False)
    return np.bincount(index, weights=values), np.bincount(index).astype(float)


def _resampled_means(sums: np.ndarray, counts: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``resamples`` bootstrap means sum_j c_rj S_j / sum_j c_rj n_j, drawing blocks of about 2**20 patients."""
    patients = sums.size
    per_block = max(1, RESAMPLING_BLOCK // patients)
    means = []
    for start in range(0, resamples, per_block):
        drawn = rng.integers(0, patients, size=(min(per_block, resamples - start), patients), dtype=np.int32)
        means.append(sums[drawn].sum(axis=1) / counts[drawn].sum(axis=1))
    return np.concatenate(means)


def patient_bootstrap(
    values: ArrayLike, patients: ArrayLike, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, tuple[float, float]]:
    """mean(values) and its percentile bootstrap interval, resampling patients with replacement.

    Each resample draws P patients out of the P present; every row of a drawn patient enters, once per draw.
    With S_j, n_j the sum and row count of patient j and c_rj how often resample r drew it, the resample's mean
    is sum_j c_rj S_j / sum_j c_rj n_j, and the estimate is the same expression with every c_rj = 1: one
    arithmetic path for both. The interval is the (1 - level) / 2 and (1 + level) / 2 quantiles of the
    ``resamples`` means, widened to the estimate where it would fall outside (which only rounding or a
    bootstrap distribution piled on one side can do), so that the interval contains its estimate by
    construction. Values are centred on their first element first, so a constant c gives (c, (c, c)) exactly.
    (NaN, (NaN, NaN)) without values.

    Args:
        values: one value per row.
        patients: each row's patient, in the same order; a patient's rows are drawn together.
        resamples: bootstrap resamples, at least 1 (default 2000).
        seed: seed of the resampling's random generator (default 0).
        level: the interval's coverage (default 0.95).

    Returns:
        (estimate, (low, high)).

    Raises:
        ValueError: when ``resamples`` is below 1, or ``values`` and ``patients`` differ in length.
    """
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    values = np.asarray(values, dtype=float).reshape(-1)
    if values.size == 0:
        return math.nan, (math.nan, math.nan)
    origin = values[0]
    sums, counts = _per_patient(values - origin, patients)
    estimate = sums.sum() / counts.sum()
    means = _resampled_means(sums, counts, resamples, np.random.default_rng(seed))
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(origin + estimate), (float(origin + min(low, estimate)), float(origin + max(high, estimate)))


def patient_means(values: ArrayLike, patients: ArrayLike) -> np.ndarray:
    """The mean of ``values`` per distinct patient, in the order of first appearance.

    Args:
        values: one value per row.
        patients: the patient of each row.

    Returns:
        One mean per patient.
    """
    sums, counts = _per_patient(values, patients)
    return sums / counts


def paired_p_value(deltas: ArrayLike, patients: ArrayLike) -> float:
    """Two-sided p-value that the mean per-patient delta is 0.

    The deltas are averaged per patient, m_j = S_j / n_j, and the m_j go to the Wilcoxon signed-rank test
    (``scipy.stats.wilcoxon``). 1.0 when every m_j is exactly 0; NaN with fewer than 2 patients.

    Args:
        deltas: one paired difference per row.
        patients: each row's patient, in the same order.

    Returns:
        The two-sided p-value, 1.0 or NaN as above.

    Raises:
        ValueError: when ``deltas`` and ``patients`` differ in length.
    """
    means = patient_means(deltas, patients)
    if means.size < 2:
        return math.nan
    if np.all(means == 0):
        return 1.0
    return float(stats.wilcoxon(means).pvalue)


def smallest_p_value(patients: int) -> float:
    """The smallest p-value :func:`paired_p_value` can give on ``patients`` patients: that of the most extreme
    outcome (every patient mean of one sign, all distinct), through the same ``scipy.stats.wilcoxon`` call. For
    the exact test (up to 50 patients) it is 2 / 2**n; 1.0 below 2 patients, where no test runs.

    Args:
        patients: the number of patients n.

    Returns:
        The smallest attainable p-value.
    """
    if patients < 2:
        return 1.0
    return float(stats.wilcoxon(np.arange(1.0, patients + 1.0)).pvalue)


def minimum_patients(directions: int, alpha: float = SIGNIFICANCE) -> int:
    """The fewest patients with which one direction of a family of ``directions`` can reach significance.

    Benjamini-Hochberg over m directions rejects a direction whatever the others show when its p-value is at
    most alpha / m (the threshold of the family's smallest p-value); below that it depends on the other
    directions also being significant. The rule asks for that guarantee: the smallest n with
    :func:`smallest_p_value` (n) <= alpha / m, i.e. 2**(1 - n) <= alpha / m for the exact signed-rank test
    (m = 1: 6 patients; 2: 7; 4: 8; 10: 9; alpha 0.05).

    Args:
        directions: m, the number of directions in the family, at least 1.
        alpha: the significance level of the family (default 0.05).

    Returns:
        The fewest patients, at least 2.

    Raises:
        ValueError: when ``directions`` is below 1.
    """
    if directions < 1:
        raise ValueError(f"directions must be at least 1, got {directions}")
    level = alpha / directions
    n = 2
    while smallest_p_value(n) > level:
        n += 1
    return n


def detectable_effect(patient_means: ArrayLike, level: float, power: float = POWER, draws: int = 1000) -> float:
    """The smallest |mean shift| the audit's paired test detects with probability ``power`` at ``level``.

    Monte Carlo power of the test itself (:func:`paired_p_value`'s signed-rank test, exact up to 50 patients)
    on n per-patient means drawn from a normal distribution with the observed standard deviation s of
    ``patient_means``: the same ``draws`` standard normal samples z (seed 0) for every shift delta, so that the
    power P(p(delta + s z) < level) rises with delta, and bisection for the smallest delta whose power reaches
    ``power`` (to 0.1 % of s). A simulation rather than a normal approximation, because at the patient counts of
    an audit the exact test's few attainable p-values matter (7 patients at level 0.025: a normal approximation
    promises 80 % power where the test has about 64 %). NaN with fewer patients than the test needs to reach
    ``level`` at all, or with all patient means equal, where no power can be stated.

    Args:
        patient_means: the per-patient means; their number n and standard deviation s set the simulation.
        level: the p-value the test must fall below (alpha / family in :func:`direction_summary`).
        power: the probability of detection asked for (default :data:`POWER`, 0.8).
        draws: simulated samples of n means per shift (default 1000).

    Returns:
        The smallest shift, in the units of ``patient_means``; NaN as above, or when a mean is not finite.
    """
    patient_means = np.asarray(patient_means, dtype=float).reshape(-1)
    n = patient_means.size
    if smallest_p_value(n) >= level or np.ptp(patient_means) == 0 or not np.isfinite(patient_means).all():
        return math.nan
    spread = float(patient_means.std(ddof=1))
    noise = spread * np.random.default_rng(0).standard_normal((draws, n))

    def reached(delta: float) -> float:
        return float(np.mean(stats.wilcoxon(delta + noise, axis=1).pvalue < level))

    low, high = 0.0, spread
    while reached(high) < power:
        low, high = high, 2.0 * high
    while high - low > 1e-3 * spread:
        middle = (low + high) / 2.0
        low, high = (low, middle) if reached(middle) >= power else (middle, high)
    return high


def adjust_p_values(p_values: ArrayLike) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values, q_(i) = min_{k >= i} min(1, m p_(k) / k) over the m non-NaN ones.

    NaNs stay NaN and do not count as comparisons.

    Args:
        p_values: the family's p-values, NaN for a direction without one.

    Returns:
        The adjusted p-values, float, in the same shape and order.
    """
    p_values = np.asarray(p_values, dtype=float)
    adjusted = np.full(p_values.shape, math.nan)
    tested = ~np.isnan(p_values)
    if tested.any():
        adjusted[tested] = stats.false_discovery_control(p_values[tested], method="bh")
    return adjusted
