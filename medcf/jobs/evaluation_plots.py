"""Plots of an evaluation or a guidance study (one PNG each, written atomically by medcf.outputs.grids.save_figure).

- effectiveness against off-target change, one panel per intervention, one point per guidance setting:
  the trade-off the literature reports (up-left is better for accuracy; for age MAE lower is better);
- truth_error against the guidance weight (w for CFG, w_aff for DCFG), one line per guidance family;
- target_ratio per intervention and setting, with the line 1 (right size) drawn;
- truth_off_target_source against the guidance weight: how far the untouched attributes moved from the source
  beyond what the truth moves them (attribute amplification as a viewer sees it).
Points are means over seeds; bars show +- one sd where there are several seeds.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medcf.outputs.grids import save_figure


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _means(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    keys = ["intervention", "guidance", "mode", "w", "w_aff"]
    keys = [k for k in keys if k in table.columns]
    present = [c for c in columns if c in table.columns]
    numeric = table[keys + present].copy()
    for column in present:
        numeric[column] = pd.to_numeric(numeric[column], errors="coerce")
    grouped = numeric.groupby(keys, sort=False, dropna=False)[present]
    return grouped.mean().join(grouped.std(ddof=1).add_suffix("_sd")).reset_index()


def _family(row: pd.Series) -> str:
    """The guidance family a setting's weight varies in: its label without the weight."""
    words = [w for w in str(row["guidance"]).split() if not w.startswith(("w=", "w_aff="))]
    return " ".join(words)


def _weight(row: pd.Series) -> float:
    return float(row["w"]) if row.get("mode") == "cfg" else float(row["w_aff"]) if row.get("mode") != "none" else 1.0


def _with_family(part: pd.DataFrame) -> pd.DataFrame:
    part = part.copy()
    part["family"], part["weight"] = part.apply(_family, axis=1), part.apply(_weight, axis=1)
    return part.sort_values("weight")


def _against_weight(plt, means: pd.DataFrame, interventions: list[str], column: str, label: str, path: Path) -> Path:
    """One panel per intervention: ``column`` against the guidance weight, one line per guidance family."""
    fig, axes = plt.subplots(1, len(interventions), figsize=(4.2 * len(interventions), 3.6), squeeze=False)
    for ax, intervention in zip(axes[0], interventions, strict=True):
        part = _with_family(means[means["intervention"] == intervention])
        for family, line in part.groupby("family", sort=False):
            ax.errorbar(
                line["weight"], line[column], yerr=line[f"{column}_sd"], marker="o", ms=3, capsize=2, label=family
            )
        ax.set_xlabel("guidance weight (w or w_aff)")
        ax.set_ylabel(label)
        ax.set_title(intervention, fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def save_study_plots(table: pd.DataFrame, folder: str | Path) -> list[Path]:
    """Write the plots the table's columns allow to ``folder``; returns their paths.

    Args:
        table: metrics rows of an evaluation or a study (``intervention``, ``guidance``, ``mode``, ``w``,
            ``w_aff``, ``effectiveness``, ``effectiveness_metric``, ``off_target``, and the truth measures when
            there is a ground truth), one row per intervention, setting and seed.
        folder: where the PNG files go.

    Returns:
        The paths of the plots written: effectiveness against off-target change always, the truth plots when the
        table holds truth measures; none for an empty table or one without ``effectiveness``.
    """
    folder = Path(folder)
    if table.empty or "effectiveness" not in table.columns:
        return []
    plt = _pyplot()
    columns = ["effectiveness", "off_target", "truth_error", "target_ratio", "truth_off_target_source"]
    means = _means(table, columns)
    interventions = list(dict.fromkeys(means["intervention"]))
    written = []

    fig, axes = plt.subplots(1, len(interventions), figsize=(4.2 * len(interventions), 3.8), squeeze=False)
    for ax, intervention in zip(axes[0], interventions, strict=True):
        part = _with_family(means[means["intervention"] == intervention])
        for family, group in part.groupby("family", sort=False):
            line = "-" if len(group) > 1 else ""  # a family over several weights is joined in weight order
            ax.errorbar(
                group["off_target"], group["effectiveness"], xerr=group["off_target_sd"],
                yerr=group["effectiveness_sd"], fmt=f"o{line}", ms=4, capsize=2, label=family, alpha=0.85,
            )  # fmt: skip
            if len(group) > 1:
                for _, row in group.iterrows():
                    ax.annotate(f"{row['weight']:g}", (row["off_target"], row["effectiveness"]), fontsize=6)
        metric = table.loc[table["intervention"] == intervention, "effectiveness_metric"].dropna()
        ax.set_xlabel("off-target change (mean |delta p|)")
        ax.set_ylabel(f"effectiveness ({metric.iloc[0] if len(metric) else ''})")
        ax.set_title(intervention, fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    written.append(save_figure(fig, folder / "effectiveness_vs_off_target.png", dpi=110))

    if "truth_error" in means.columns and means["truth_error"].notna().any():
        written.append(
            _against_weight(
                plt,
                means,
                interventions,
                "truth_error",
                "truth_error (mean |change - true change|)",
                folder / "truth_error_vs_weight.png",
            )  # fmt: skip
        )
        fig, ax = plt.subplots(figsize=(max(5.0, 0.35 * len(means) + 2), 3.8))
        labels = [f"{r.intervention}\n{r.guidance}" for r in means.itertuples()]
        ax.bar(range(len(means)), means["target_ratio"], yerr=means["target_ratio_sd"], capsize=2)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xticks(range(len(means)), labels, rotation=90, fontsize=5)
        ax.set_ylabel("target_ratio (1 = right size)")
        fig.tight_layout()
        written.append(save_figure(fig, folder / "target_ratio.png", dpi=110))
    if "truth_off_target_source" in means.columns and means["truth_off_target_source"].notna().any():
        written.append(
            _against_weight(
                plt,
                means,
                interventions,
                "truth_off_target_source",
                "off-target movement from the source (truth)",
                folder / "off_target_source_vs_weight.png",
            )  # fmt: skip
        )
    return written
