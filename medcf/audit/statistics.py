"""Statistics of a classifier bias audit with counterfactuals: pure functions on the audit table.

For an image x and an intervention do(A=a') on a protected attribute, a classifier f gives
``p_factual`` = f(x), ``p_counterfactual`` = f(CF(x, do(A=a'))) and ``p_null`` = f(CF(x, do())), the
null-intervention reconstruction that carries the generator's artefacts alone. The audit table has one row
per image and intervention with the columns ``source``, ``patient``, ``attribute``, ``from``, ``to``,
``p_factual``, ``p_counterfactual``, ``p_null``, ``flipped`` and (optional) ``recognised``, whether the
attribute predictors recognise the intervened value on the counterfactual.

- :func:`flip_counts`: how often the thresholded prediction changes, and in which direction.
- :func:`patient_bootstrap_interval`: percentile interval of a mean, resampling patients, not rows.
- :func:`paired_p_value`: Wilcoxon signed-rank test on per-patient mean deltas.
- :func:`adjust_p_values`: Benjamini-Hochberg adjustment that keeps NaNs out of the family.
- :func:`direction_summary`, :func:`verdict`, :func:`summarize`: the audit's report per attribute.
- :func:`subgroup_rates`: AUC, TPR and FPR per subgroup at one global threshold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats

from medcf.evaluation.metrics import roc_auc

ArrayLike = npt.ArrayLike

#: The columns :func:`summarize` reads. ``source`` and ``flipped`` are part of the table but not read here:
#: flips are recounted from the probabilities at the threshold the summary is given.
REQUIRED_COLUMNS = ("patient", "attribute", "from", "to", "p_factual", "p_counterfactual", "p_null")

SIGNIFICANCE = 0.05

#: Patients drawn per block of resamples, to bound the memory of the bootstrap.
RESAMPLING_BLOCK = 1 << 20


def flip_counts(p_factual: ArrayLike, p_counterfactual: ArrayLike, threshold: float) -> dict[str, Any]:
    """Changes of the thresholded prediction (positive means p >= threshold) from factual to counterfactual.

    neg_to_pos = #{p_factual < t <= p_counterfactual}, pos_to_neg = #{p_counterfactual < t <= p_factual},
    flips = neg_to_pos + pos_to_neg and flip_rate = flips / n (NaN when n == 0).
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


def patient_bootstrap_interval(
    values: ArrayLike, patients: ArrayLike, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(values), resampling patients with replacement.

    Each resample draws P patients out of the P present; every row of a drawn patient enters, once per draw.
    With S_j, n_j the sum and row count of patient j and c_rj how often resample r drew it, the resample's mean
    is sum_j c_rj S_j / sum_j c_rj n_j. The interval is the (1 - level) / 2 and (1 + level) / 2 quantiles of
    the ``resamples`` means. Values are centred on their first element first, so a constant c gives (c, c)
    exactly. (NaN, NaN) without values.
    """
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    values = np.asarray(values, dtype=float).reshape(-1)
    if values.size == 0:
        return math.nan, math.nan
    origin = values[0]
    sums, counts = _per_patient(values - origin, patients)
    means = _resampled_means(sums, counts, resamples, np.random.default_rng(seed))
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(origin + low), float(origin + high)


def paired_p_value(deltas: ArrayLike, patients: ArrayLike) -> float:
    """Two-sided p-value that the mean per-patient delta is 0.

    The deltas are averaged per patient, m_j = S_j / n_j, and the m_j go to the Wilcoxon signed-rank test
    (``scipy.stats.wilcoxon``). 1.0 when every m_j is exactly 0; NaN with fewer than 2 patients.
    """
    sums, counts = _per_patient(deltas, patients)
    if sums.size < 2:
        return math.nan
    patient_means = sums / counts
    if np.all(patient_means == 0):
        return 1.0
    return float(stats.wilcoxon(patient_means).pvalue)


def adjust_p_values(p_values: ArrayLike) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values, q_(i) = min_{k >= i} min(1, m p_(k) / k) over the m non-NaN ones.

    NaNs stay NaN and do not count as comparisons.
    """
    p_values = np.asarray(p_values, dtype=float)
    adjusted = np.full(p_values.shape, math.nan)
    tested = ~np.isnan(p_values)
    if tested.any():
        adjusted[tested] = stats.false_discovery_control(p_values[tested], method="bh")
    return adjusted


def direction_summary(rows: pd.DataFrame, threshold: float, resamples: int, seed: int) -> dict[str, Any]:
    """Effects of one intervention direction (one attribute, one ``from`` -> ``to``) on the classifier.

    With d = p_counterfactual - p_factual and d0 = p_null - p_factual per row: ``delta_p`` = mean(d),
    ``delta_p_abs`` = mean(|d|), ``delta_p_null`` = mean(d0), ``delta_p_corrected`` = mean(d - d0) =
    mean(p_counterfactual - p_null), the effect beyond the generator's artefacts. The ``_ci`` intervals are
    :func:`patient_bootstrap_interval` (same ``seed`` for both), ``p_value`` is :func:`paired_p_value` of
    d - d0, and the flip counts come from :func:`flip_counts` at ``threshold``. Where the rows have a
    ``recognised`` column (the predictors recognised the intervened value), ``effectiveness`` is its mean.
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
    return {
        "from": str(directions["from"].iloc[0]),
        "to": str(directions["to"].iloc[0]),
        "n": counts["n"],
        "flip_rate": float(counts["flip_rate"]),
        "flips": counts["flips"],
        "neg_to_pos": counts["neg_to_pos"],
        "pos_to_neg": counts["pos_to_neg"],
        "delta_p": float(delta.mean()),
        "delta_p_ci": list(patient_bootstrap_interval(delta, patients, resamples, seed)),
        "delta_p_abs": float(np.abs(delta).mean()),
        "delta_p_null": float((null - factual).mean()),
        "delta_p_corrected": float(corrected.mean()),
        "delta_p_corrected_ci": list(patient_bootstrap_interval(corrected, patients, resamples, seed)),
        "p_value": paired_p_value(corrected, patients),
        **effectiveness,
    }


def _excludes_zero(interval: Sequence[float]) -> bool:
    """Whether the closed interval [lo, hi] lies strictly on one side of 0."""
    low, high = interval
    return low > 0 or high < 0


def verdict(directions: Sequence[Mapping[str, Any]], effectiveness: float, gate: float) -> str:
    """The audit's verdict on one attribute.

    "unreliable" when the counterfactuals' effectiveness is NaN or below ``gate`` (the generator does not
    change the attribute well enough to test the classifier); else "depends" when some direction's
    ``delta_p_corrected_ci`` excludes 0 and its ``p_adjusted`` < 0.05; else "no dependence detected".
    """
    if math.isnan(effectiveness) or effectiveness < gate:
        return "unreliable"
    if any(_excludes_zero(d["delta_p_corrected_ci"]) and d["p_adjusted"] < SIGNIFICANCE for d in directions):
        return "depends"
    return "no dependence detected"


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
    ``p_adjusted``. Returns ``{"attributes": {name: {"verdict", "effectiveness", "directions": [...]}}}``.
    """
    _check_table(table, effectiveness)
    directions = {
        name: [
            direction_summary(group, threshold, resamples, seed)
            for _, group in rows.groupby(["from", "to"], sort=False, dropna=False)
        ]
        for name, rows in table.groupby("attribute", sort=False, dropna=False)
    }
    family = [direction for summaries in directions.values() for direction in summaries]
    for direction, adjusted in zip(family, adjust_p_values([d["p_value"] for d in family]), strict=True):
        direction["p_adjusted"] = float(adjusted)
    return {
        "attributes": {
            str(name): {
                "verdict": verdict(summaries, float(effectiveness[name]), gate),
                "effectiveness": float(effectiveness[name]),
                "directions": summaries,
            }
            for name, summaries in directions.items()
        }
    }


def _rate(predicted_positive: np.ndarray) -> float:
    """Fraction of True; NaN when empty."""
    return float(predicted_positive.mean()) if predicted_positive.size else math.nan


def subgroup_rates(scores: ArrayLike, labels: ArrayLike, groups: ArrayLike, threshold: float) -> pd.DataFrame:
    """Per group (rows in order of first appearance, index ``group``): n, auc, tpr and fpr.

    Predictions are scores >= ``threshold``, one global threshold for every group. TPR = P(predicted | label),
    FPR = P(predicted | not label), each NaN when its class is absent from the group; AUC by
    :func:`medcf.evaluation.metrics.roc_auc`.
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
        records.append(
            {
                "group": group,
                "n": int(member.sum()),
                "auc": roc_auc(group_scores, group_labels),
                "tpr": _rate(predicted[group_labels]),
                "fpr": _rate(predicted[~group_labels]),
            }
        )
    return pd.DataFrame.from_records(records, columns=["group", "n", "auc", "tpr", "fpr"]).set_index("group")
