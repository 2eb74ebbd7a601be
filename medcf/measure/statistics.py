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
- :func:`direction_summary`, :func:`verdict`, :func:`summarize`: the audit's report per attribute, with the
  verdicts "depends", "no dependence detected" (always with its detectable effect), "unreliable" (the
  generator's effectiveness is below the gate) and "insufficient data" (too few patients to have seen an
  effect, or a degenerate bootstrap).
- :func:`subgroup_rates`: AUC, TPR and FPR per subgroup at one global threshold, withheld on too few images.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats

from medcf.measure.metrics import roc_auc

ArrayLike = npt.ArrayLike

#: The columns :func:`summarize` reads. ``source`` and ``flipped`` are part of the table but not read here:
#: flips are recounted from the probabilities at the threshold the summary is given.
REQUIRED_COLUMNS = ("patient", "attribute", "from", "to", "p_factual", "p_counterfactual", "p_null")

SIGNIFICANCE = 0.05
#: The power at which :func:`detectable_effect` states what an audit could have seen.
POWER = 0.8

DEPENDS, NO_DEPENDENCE = "depends", "no dependence detected"
UNRELIABLE, INSUFFICIENT = "unreliable", "insufficient data"

#: Subgroup rates on fewer images than this, or fewer than MIN_SUBGROUP_CLASS of the class they are taken over,
#: are withheld as TOO_SMALL (:func:`subgroup_rates`).
MIN_SUBGROUP_IMAGES = 20
MIN_SUBGROUP_CLASS = 5
TOO_SMALL = "n too small"

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


def _patient_means(values: ArrayLike, patients: ArrayLike) -> np.ndarray:
    """The mean of ``values`` per distinct patient, in the order of first appearance."""
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
    patient_means = _patient_means(deltas, patients)
    if patient_means.size < 2:
        return math.nan
    if np.all(patient_means == 0):
        return 1.0
    return float(stats.wilcoxon(patient_means).pvalue)


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


def direction_summary(
    rows: pd.DataFrame, threshold: float, resamples: int, seed: int, family: int = 1
) -> dict[str, Any]:
    """Effects of one intervention direction (one attribute, one ``from`` -> ``to``) on the classifier.

    With d = p_counterfactual - p_factual and d0 = p_null - p_factual per row: ``delta_p`` = mean(d),
    ``delta_p_abs`` = mean(|d|), ``delta_p_null`` = mean(d0), ``delta_p_corrected`` = mean(d - d0) =
    mean(p_counterfactual - p_null), the effect beyond the generator's artefacts. ``delta_p`` and
    ``delta_p_corrected`` and their ``_ci`` intervals come from :func:`patient_bootstrap` (same ``seed`` for
    both), ``p_value`` is :func:`paired_p_value` of d - d0, and the flip counts come from :func:`flip_counts`
    at ``threshold``. Where the rows have a ``recognised`` column (the predictors recognised the intervened
    value), ``effectiveness`` is its mean.

    What the direction could have shown, in a Benjamini-Hochberg family of ``family`` directions:
    ``patients`` (distinct), ``min_patients`` (:func:`minimum_patients`), ``detectable_effect`` (the
    :func:`detectable_effect` of the per-patient corrected deltas at alpha / family) and ``insufficient``, the
    reason in words when the direction cannot support a verdict (too few patients, a zero-width interval or no
    p-value), else None.

    Args:
        rows: the audit table's rows of one direction (the columns of :data:`REQUIRED_COLUMNS`, optionally
            ``recognised``).
        threshold: the probability at or above which a prediction is positive, for the flip counts.
        resamples: bootstrap resamples of both intervals.
        seed: seed of both bootstraps.
        family: the number of directions in the Benjamini-Hochberg family (default 1).

    Returns:
        ``from``, ``to``, ``n`` (rows), ``patients``, the flip counts and ``flip_rate``, the deltas and intervals
        above, ``p_value``, ``min_patients``, ``detectable_effect``, ``effectiveness`` (with ``recognised``) and
        ``insufficient``; :func:`summarize` adds ``p_adjusted``.

    Raises:
        ValueError: when the rows do not hold exactly one (from, to) direction, or ``resamples`` is below 1.
    """
    directions = rows[["from", "to"]].drop_duplicates()
    if len(directions) != 1:
        raise ValueError(f"direction_summary needs the rows of exactly one direction, got {len(directions)}")
    factual = rows["p_factual"].to_numpy(dtype=float)
    counterfactual = rows["p_counterfactual"].to_numpy(dtype=float)
    null = rows["p_null"].to_numpy(dtype=float)
    patients = rows["patient"].to_numpy()
    delta, corrected = counterfactual - factual, counterfactual - null
    counts = flip_counts(factual, counterfactual, threshold)
    effectiveness = {"effectiveness": float(rows["recognised"].mean())} if "recognised" in rows else {}
    delta_p, delta_p_ci = patient_bootstrap(delta, patients, resamples, seed)
    delta_p_corrected, corrected_ci = patient_bootstrap(corrected, patients, resamples, seed)
    summary = {
        "from": str(directions["from"].iloc[0]),
        "to": str(directions["to"].iloc[0]),
        "n": counts["n"],
        "patients": int(pd.unique(patients).size),
        "flip_rate": float(counts["flip_rate"]),
        "flips": counts["flips"],
        "neg_to_pos": counts["neg_to_pos"],
        "pos_to_neg": counts["pos_to_neg"],
        "delta_p": delta_p,
        "delta_p_ci": list(delta_p_ci),
        "delta_p_abs": float(np.abs(delta).mean()),
        "delta_p_null": float((null - factual).mean()),
        "delta_p_corrected": delta_p_corrected,
        "delta_p_corrected_ci": list(corrected_ci),
        "p_value": paired_p_value(corrected, patients),
        "min_patients": minimum_patients(family),
        "detectable_effect": detectable_effect(_patient_means(corrected, patients), SIGNIFICANCE / family),
        **effectiveness,
    }
    summary["insufficient"] = _insufficiency(summary, family)
    return summary


def _insufficiency(direction: Mapping[str, Any], family: int) -> str | None:
    """Why a direction cannot support a verdict, in words naming its counts; None when it can."""
    name = f"{direction['from']} -> {direction['to']}"
    patients, needed = direction["patients"], direction["min_patients"]
    if patients < needed:
        return (
            f"{name}: {_count(patients, 'patient')} ({_count(direction['n'], 'image')}); the signed-rank test "
            f"needs at least {needed} to reach p < {SIGNIFICANCE:g} after correcting for {_count(family, 'direction')}"
        )
    low, high = direction["delta_p_corrected_ci"]
    if not low < high:
        return f"{name}: the bootstrap interval has zero width (every patient's corrected delta p is {low:+.3g})"
    if math.isnan(direction["p_value"]):
        return f"{name}: no p-value"
    return None


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _excludes_zero(interval: Sequence[float]) -> bool:
    """Whether the closed interval [lo, hi] lies strictly on one side of 0."""
    low, high = interval
    return low > 0 or high < 0


def _significant(direction: Mapping[str, Any]) -> bool:
    """A testable direction whose corrected interval excludes 0 and whose adjusted p is below alpha."""
    return (
        not direction.get("insufficient")
        and _excludes_zero(direction["delta_p_corrected_ci"])
        and direction["p_adjusted"] < SIGNIFICANCE
    )


def verdict(directions: Sequence[Mapping[str, Any]], effectiveness: float, gate: float) -> tuple[str, str]:
    """The audit's verdict on one attribute, and its reason in words.

    In this order: "insufficient data" when no direction can support a verdict (see :func:`direction_summary`'s
    ``insufficient``); "unreliable" when the counterfactuals' effectiveness is NaN or below ``gate`` (the
    generator does not change the attribute well enough to test the classifier); "depends" when a testable
    direction's ``delta_p_corrected_ci`` excludes 0 and its ``p_adjusted`` < 0.05; "insufficient data" when
    some direction could not have shown an effect; else "no dependence detected", with the effect each
    direction would have detected at 80 % power.

    Args:
        directions: the attribute's :func:`direction_summary` results, each with its ``p_adjusted``; none gives
            "insufficient data" ("no counterfactuals").
        effectiveness: the fraction of the attribute's counterfactuals on which the predictors recognise the
            intervened value.
        gate: the least effectiveness for a verdict on the classifier.

    Returns:
        (verdict, reason).
    """
    short = [d["insufficient"] for d in directions if d.get("insufficient")]
    if len(short) == len(directions):
        return INSUFFICIENT, "; ".join(short) or "no counterfactuals"
    if math.isnan(effectiveness) or effectiveness < gate:
        return UNRELIABLE, f"effectiveness {effectiveness:.2f} is below the gate {gate:g}"
    found = [d for d in directions if _significant(d)]
    if found:
        return DEPENDS, "; ".join(
            f"{d['from']} -> {d['to']}: corrected delta p {d['delta_p_corrected']:+.3f} "
            f"[{d['delta_p_corrected_ci'][0]:+.3f}, {d['delta_p_corrected_ci'][1]:+.3f}], "
            f"adjusted p {d['p_adjusted']:.2g}"
            for d in found
        )
    if short:
        return INSUFFICIENT, "; ".join(short)
    return NO_DEPENDENCE, "would have detected " + ", ".join(
        f"|corrected delta p| >= {d['detectable_effect']:.2g} ({d['from']} -> {d['to']}, {d['patients']} patients)"
        for d in directions
    ) + f" with {POWER:.0%} power"


def verdict_line(name: str, found: Mapping[str, Any]) -> str:
    """One attribute's verdict for the job's one-line summary: what an undetected effect could have been, or
    which direction had too little data.

    Args:
        name: the attribute.
        found: its entry of :func:`summarize`'s ``attributes`` (``verdict``, ``detectable_effect``,
            ``directions``).

    Returns:
        The line: the verdict, with the detectable effect ("no dependence detected") or each short direction's
        patients against the patients it needs ("insufficient data").
    """
    text = f"{name}: {found['verdict']}"
    if found["verdict"] == NO_DEPENDENCE:
        text += f" (|corrected delta p| >= {found['detectable_effect']:.2g} detectable at {POWER:.0%} power)"
    elif found["verdict"] == INSUFFICIENT:
        counts = ", ".join(
            f"{d['from']} -> {d['to']}: {d['patients']} of {d['min_patients']} patients"
            for d in found["directions"]
            if d.get("insufficient")
        )
        text += f" ({counts})"
    return text


def _check_table(table: pd.DataFrame, effectiveness: Mapping[str, float]) -> None:
    """ValueError, one line, for missing columns or attributes without an effectiveness."""
    missing = [column for column in REQUIRED_COLUMNS if column not in table.columns]
    if missing:
        raise ValueError(f"audit table lacks the columns: {', '.join(missing)}")
    unknown = [str(name) for name in pd.unique(table["attribute"]) if name not in effectiveness]
    if unknown:
        raise ValueError(f"no effectiveness for the attributes: {', '.join(unknown)}")


def summarize(
    table: pd.DataFrame,
    effectiveness: Mapping[str, float],
    threshold: float = 0.5,
    gate: float = 0.8,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """The audit report: per attribute its verdict, effectiveness and one :func:`direction_summary` per direction.

    Attributes, and their (from, to) directions, come in the order of first appearance in ``table``. The
    p-values of all directions of all attributes form one Benjamini-Hochberg family; each direction gets its
    ``p_adjusted``. Returns ``{"attributes": {name: {"verdict", "reason", "effectiveness",
    "detectable_effect", "directions": [...]}}}``; ``detectable_effect`` is the largest of the directions' (what
    the weakest direction could have seen; NaN unless the verdict is "no dependence detected").

    Args:
        table: the audit table (at least the columns of :data:`REQUIRED_COLUMNS`).
        effectiveness: attribute -> its effectiveness; every attribute of the table needs one.
        threshold: the probability at or above which a prediction is positive (default 0.5).
        gate: the least effectiveness for a verdict on the classifier (default 0.8).
        resamples: bootstrap resamples per interval (default 2000).
        seed: seed of every bootstrap (default 0).

    Returns:
        The report described above. Every direction's ``min_patients`` and ``detectable_effect`` are for the
        family of all directions.

    Raises:
        ValueError: when the table lacks a required column or an attribute has no effectiveness.
    """
    _check_table(table, effectiveness)
    groups = {
        name: [group for _, group in rows.groupby(["from", "to"], sort=False, dropna=False)]
        for name, rows in table.groupby("attribute", sort=False, dropna=False)
    }
    size = max(1, sum(len(found) for found in groups.values()))
    directions = {
        name: [direction_summary(group, threshold, resamples, seed, size) for group in found]
        for name, found in groups.items()
    }
    family = [direction for summaries in directions.values() for direction in summaries]
    for direction, adjusted in zip(family, adjust_p_values([d["p_value"] for d in family]), strict=True):
        direction["p_adjusted"] = float(adjusted)
    attributes = {}
    for name, summaries in directions.items():
        found, reason = verdict(summaries, float(effectiveness[name]), gate)
        detectable = max(d["detectable_effect"] for d in summaries) if found == NO_DEPENDENCE else math.nan
        attributes[str(name)] = {
            "verdict": found,
            "reason": reason,
            "effectiveness": float(effectiveness[name]),
            "detectable_effect": detectable,
            "directions": summaries,
        }
    return {"attributes": attributes}


def subgroup_rates(
    scores: ArrayLike,
    labels: ArrayLike,
    groups: ArrayLike,
    threshold: float,
    min_images: int = MIN_SUBGROUP_IMAGES,
    min_class: int = MIN_SUBGROUP_CLASS,
) -> pd.DataFrame:
    """Per group (rows in order of first appearance, index ``group``): n, positives, negatives, auc, tpr, fpr.

    Predictions are scores >= ``threshold``, one global threshold for every group. TPR = P(predicted | label),
    FPR = P(predicted | not label), AUC by :func:`medcf.measure.metrics.roc_auc`. A rate is :data:`TOO_SMALL`
    instead of a number when the group has fewer than ``min_images`` images or the class it is taken over
    (TPR: positives; FPR: negatives; AUC: both) has fewer than ``min_class`` (and at least one): a rate over k
    images has a 95 % interval of about +-1 / sqrt(k), +-0.22 at the default 20, so fewer images give noise.

    Args:
        scores: the classifier's probability per image.
        labels: each image's true label (read as bool).
        groups: each image's subgroup.
        threshold: the score at or above which an image is predicted positive.
        min_images: the fewest images of a group for any rate (default :data:`MIN_SUBGROUP_IMAGES`).
        min_class: the fewest images of the class a rate is taken over (default :data:`MIN_SUBGROUP_CLASS`).

    Returns:
        One row per group, indexed by ``group``, with the columns above.

    Raises:
        ValueError: when ``scores``, ``labels`` and ``groups`` differ in length.
    """
    scores = np.asarray(scores, dtype=float).reshape(-1)
    labels = np.asarray(labels, dtype=bool).reshape(-1)
    groups = np.asarray(groups).reshape(-1)
    if not scores.size == labels.size == groups.size:
        raise ValueError(f"{scores.size} scores, {labels.size} labels and {groups.size} groups differ in length")
    records = []
    for group in pd.unique(groups):
        member = groups == group
        group_scores, group_labels = scores[member], labels[member]
        predicted = group_scores >= threshold
        n, positives = int(member.sum()), int(group_labels.sum())
        negatives = n - positives
        # the class counts a rate rests on must reach the minimum, in a group that reaches its own
        least = max(1, min_class) if n >= min_images else n + 1
        records.append(
            {
                "group": group,
                "n": n,
                "positives": positives,
                "negatives": negatives,
                "auc": roc_auc(group_scores, group_labels) if min(positives, negatives) >= least else TOO_SMALL,
                "tpr": float(predicted[group_labels].mean()) if positives >= least else TOO_SMALL,
                "fpr": float(predicted[~group_labels].mean()) if negatives >= least else TOO_SMALL,
            }
        )
    columns = ["group", "n", "positives", "negatives", "auc", "tpr", "fpr"]
    return pd.DataFrame.from_records(records, columns=columns).set_index("group")
