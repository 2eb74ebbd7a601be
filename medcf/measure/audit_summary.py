"""The audit's report per attribute, from the audit table (the columns are described in
:mod:`medcf.measure.statistics`): each direction's effect with its interval, test and detectable effect, the
attribute's verdict, and the classifier's rates per subgroup.

- :func:`direction_summary`, :func:`verdict`, :func:`summarize`: the report per attribute, with the verdicts
  "depends", "no dependence detected" (always with its detectable effect), "unreliable" (the generator's
  effectiveness is below the gate) and "insufficient data" (too few patients to have seen an effect, or a
  degenerate bootstrap).
- :func:`subgroup_rates`: AUC, TPR and FPR per subgroup at one global threshold, withheld on too few images.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from medcf.measure.metrics import roc_auc
from medcf.measure.statistics import (
    POWER,
    SIGNIFICANCE,
    ArrayLike,
    adjust_p_values,
    detectable_effect,
    flip_counts,
    minimum_patients,
    paired_p_value,
    patient_bootstrap,
    patient_means,
)

#: The columns :func:`summarize` reads. ``source`` and ``flipped`` are part of the table but not read here:
#: flips are recounted from the probabilities at the threshold the summary is given.
REQUIRED_COLUMNS = ("patient", "attribute", "from", "to", "p_factual", "p_counterfactual", "p_null")


DEPENDS, NO_DEPENDENCE = "depends", "no dependence detected"


UNRELIABLE, INSUFFICIENT = "unreliable", "insufficient data"


#: Subgroup rates on fewer images than this, or fewer than MIN_SUBGROUP_CLASS of the class they are taken over,
#: are withheld as TOO_SMALL (:func:`subgroup_rates`).
MIN_SUBGROUP_IMAGES = 20


MIN_SUBGROUP_CLASS = 5


TOO_SMALL = "n too small"


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
        "detectable_effect": detectable_effect(patient_means(corrected, patients), SIGNIFICANCE / family),
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
