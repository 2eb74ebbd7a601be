"""The guidance study's tables, from the evaluate job's metrics of every setting and seed
(:mod:`medcf.jobs.study` runs the study): the weight a user without ground truth would select, CFG against DCFG
at matched effectiveness and at equal weight, and the study's markdown tables.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from medcf.measure.soundness import TRUTH_COLUMNS

TOLERANCE = {"accuracy": 0.05, "mae": 1.0}

#: The measures :func:`matched_table` shows, those the table has: the predictors' (effectiveness, off-target), the
#: truth's and FID.
MATCHED_COLUMNS = ("effectiveness", "off_target", "off_target_vs_null", *TRUTH_COLUMNS, "fid")


def reaches(value: float, target: float, metric: str) -> bool:
    """Effectiveness at least ``target`` (accuracy) or at most it (age MAE: lower is better).

    Args:
        value: the effectiveness.
        target: the level to reach.
        metric: ``accuracy`` or ``mae`` (the row's ``effectiveness_metric``).

    Returns:
        Whether ``value`` reaches ``target``.
    """
    return value <= target if metric == "mae" else value >= target


def select_weights(table: pd.DataFrame) -> dict[str, float]:
    """Per intervention: the smallest DCFG w_aff within the tolerance of the best effectiveness (predictors
    only, no ground truth).

    Args:
        table: the selection stage's metrics (DCFG rows with w_inv = 1 over the study's weights).

    Returns:
        Intervention -> its selected w_aff.
    """
    chosen = {}
    dcfg = table[(table["mode"] == "dcfg") & table["guidance"].str.fullmatch(r"dcfg w_aff=\S+ w_inv=1")]
    for intervention, part in dcfg.groupby("intervention", sort=False):
        metric = part["effectiveness_metric"].dropna().iloc[0]
        means = part.groupby("w_aff")["effectiveness"].mean().sort_index()
        best = means.min() if metric == "mae" else means.max()
        target = best + TOLERANCE[metric] if metric == "mae" else best - TOLERANCE[metric]
        chosen[intervention] = float(next(w for w, v in means.items() if reaches(v, target, metric)))
    return chosen


def closest_to_right_size(family: pd.DataFrame) -> str | None:
    """The setting of ``family`` whose mean exact_target_ratio over seeds is closest to 1 on a log scale (the best
    single weight with hindsight of the truth, which no user has), or None without the measure.

    Args:
        family: one intervention's rows of one guidance family (e.g. CFG at every weight), over the seeds.

    Returns:
        The ``guidance`` label of that setting, or None (no ``exact_target_ratio`` column, or no positive mean).
    """
    if "exact_target_ratio" not in family.columns:
        return None
    means = family.groupby("guidance", sort=False)["exact_target_ratio"].mean()
    means = means[means > 0]
    return None if means.empty else str((np.log(means)).abs().idxmin())


def matched_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per intervention, CFG and DCFG at matched effectiveness (the smallest weight of each reaching the level
    both reach), CFG and DCFG at the single weight closest to the right size on the truth, the selected DCFG, the
    calibrated plan and the variants: mean and sd over seeds; ``choice`` says why each row is there.

    Args:
        table: the study's combined metrics (every stage's rows, one per intervention, setting and seed).

    Returns:
        One row per intervention and chosen setting: ``intervention``, ``guidance``, ``choice``, ``seeds``, each
        measure the table has as ``mean ± sd`` text, and ``effectiveness_metric``.
    """
    columns = [c for c in MATCHED_COLUMNS if c in table.columns]
    rows = []
    for intervention, part in table.groupby("intervention", sort=False):
        metric = part["effectiveness_metric"].dropna().iloc[0]
        means = part.groupby("guidance", sort=False)["effectiveness"].mean()
        families = {
            "cfg": part[part["mode"] == "cfg"],
            "dcfg": part[part["guidance"].str.fullmatch(r"dcfg w_aff=\S+ w_inv=1")],
        }
        bests = [
            (means[f["guidance"].unique()].min() if metric == "mae" else means[f["guidance"].unique()].max())
            for f in families.values()
            if len(f)
        ]
        level = (max(bests) if metric == "mae" else min(bests)) if bests else None
        picked: dict[str, str] = {}
        for family in families.values():
            ordered = family.sort_values(["w", "w_aff"])["guidance"].unique()
            match = next((g for g in ordered if level is not None and reaches(means[g], level, metric)), None)
            if match is not None:
                picked.setdefault(match, "matched effectiveness")
        for family in families.values():
            best = closest_to_right_size(family) if len(family) else None
            if best is not None:
                picked.setdefault(best, "closest to right size (truth)")
        for g in part["guidance"].unique():
            if g == "calibrated":
                picked.setdefault(g, "calibrated plan")
            elif g == "none" or "selected" in g or "rule=" in g or "interval=" in g:
                picked.setdefault(g, "selected" if "selected" in g else "reference")
        for guidance, choice in picked.items():
            group = part[part["guidance"] == guidance]
            row: dict[str, Any] = {
                "intervention": intervention,
                "guidance": guidance,
                "choice": choice,
                "seeds": len(group),
            }
            for column in columns:
                row[column] = _mean_sd(group[column])
            row["effectiveness_metric"] = metric
            rows.append(row)
    return pd.DataFrame(rows)


EQUAL_WEIGHT_COLUMNS = ("effectiveness", "target_ratio", "truth_off_target", "truth_off_target_source", "off_target")


def _mean_sd(values: pd.Series) -> str:
    values = pd.to_numeric(values, errors="coerce").dropna()
    if len(values) < 2:
        return f"{values.mean():.3g}" if len(values) else "n/a"
    return f"{values.mean():.3g} ± {values.std(ddof=1):.2g}"


def equal_weight_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per intervention and weight w: CFG (w) beside DCFG (w_aff = w, w_inv = 1), mean +- sd over seeds, and two
    per-seed paired comparisons of truth_off_target_source: DCFG's change against CFG's in % (negative: DCFG
    moves the untouched attributes less), and the amplification ratio, DCFG's excess over the unguided decoder
    divided by CFG's (1 = no better, 0 = DCFG adds nothing to what decoding without guidance moves).

    Args:
        table: the study's combined metrics (every stage's rows, one per intervention, setting and seed).

    Returns:
        One row per intervention and CFG weight with a DCFG run at that weight: ``<measure> cfg`` and
        ``<measure> dcfg`` as ``mean ± sd`` text and, with ``truth_off_target_source``, the two comparisons
        (the amplification ratio only above w = 1 and with an unguided run).
    """
    rows = []
    columns = [c for c in EQUAL_WEIGHT_COLUMNS if c in table.columns]
    for intervention, part in table.groupby("intervention", sort=False):
        cfg = part[part["mode"] == "cfg"]
        unguided = part[part["mode"] == "none"].set_index("seed").get("truth_off_target_source", pd.Series(dtype=float))
        for w in sorted(cfg["w"].unique()):
            pair = {
                "cfg": cfg[cfg["w"] == w].set_index("seed"),
                "dcfg": part[part["guidance"] == f"dcfg w_aff={w:g} w_inv=1"].set_index("seed"),
            }
            if pair["dcfg"].empty:
                continue
            row: dict[str, Any] = {"intervention": intervention, "w": f"{w:g}"}
            for column in columns:
                for family, group in pair.items():
                    row[f"{column} {family}"] = _mean_sd(group[column])
            if "truth_off_target_source" in columns:
                cfg_side, dcfg_side = (pair[f]["truth_off_target_source"] for f in ("cfg", "dcfg"))
                row["dcfg vs cfg, % (source)"] = _mean_sd((100 * (dcfg_side - cfg_side) / cfg_side).dropna())
                if w > 1 and not unguided.empty:  # at w = 1 CFG is the unguided decoder: no excess to compare
                    ratio = (dcfg_side - unguided) / (cfg_side - unguided)
                    row["amplification dcfg / cfg"] = _mean_sd(ratio.dropna())
            rows.append(row)
    return pd.DataFrame(rows)


def markdown_table(table: pd.DataFrame) -> str:
    """A pipe table of ``table``'s cells as text.

    Args:
        table: the table to show.

    Returns:
        The Markdown table: a header line, a rule and one line per row.
    """
    header = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body])
