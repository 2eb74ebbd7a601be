"""The audit's report.html: one self-contained page (inline style, images as data URIs; nothing loaded from
elsewhere) with the verdict per attribute and its reason, a forest plot of every direction's null-corrected
delta p with its interval and patient count, every direction in a table, the per-subgroup rates (withheld on
too few images), a scatter of p(x) against p(x_cf) with the line y = x, and example triplets factual /
counterfactual / difference."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from html import escape
from typing import Any

import numpy as np
import pandas as pd

from medcf.measure.audit_summary import (
    DEPENDS,
    INSUFFICIENT,
    MIN_SUBGROUP_CLASS,
    MIN_SUBGROUP_IMAGES,
    NO_DEPENDENCE,
    TOO_SMALL,
    UNRELIABLE,
)
from medcf.measure.statistics import POWER, SIGNIFICANCE

STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto; max-width: 84em;
       color: #1b1b1b; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.88em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.text, th.text { text-align: left; }
.depends { color: #fff; background: #b3261e; } .none { color: #fff; background: #2e7d32; }
.unreliable { color: #1b1b1b; background: #f9a825; } .insufficient { color: #fff; background: #616161; }
.verdict { padding: 0.15em 0.5em; border-radius: 0.3em; font-weight: 600; white-space: nowrap; }
img { max-width: 100%; } .note { color: #555; font-size: 0.9em; }
"""
VERDICT_CLASS = {DEPENDS: "depends", NO_DEPENDENCE: "none", UNRELIABLE: "unreliable", INSUFFICIENT: "insufficient"}


def render_report(table: pd.DataFrame, summary: dict[str, Any], triplets: Sequence[Any]) -> str:
    """The report page for an audit table and its summary (see :mod:`medcf.measure.audit_summary`).

    Args:
        table: the audit's rows (audit.csv: ``source``, ``attribute``, ``from``, ``to``, ``p_factual``,
            ``p_counterfactual``, ...).
        summary: the audit's summary (summary.json: ``settings``, ``images``, ``attributes`` with their verdicts
            and directions, ``subgroups``); a missing part is left out or shown as ``?``.
        triplets: the examples to draw (factual, counterfactual and their difference; see
            :class:`medcf.jobs.audit_examples.Triplet`); none: no examples section.

    Returns:
        The self-contained HTML page.
    """
    settings = summary.get("settings", {})
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>medcf classifier audit</title>',
        f"<style>{STYLE}</style></head><body>",
        "<h1>Classifier audit with counterfactuals</h1>",
        f'<p class="note">{len(table)} counterfactuals of {table["source"].nunique() if len(table) else 0} images; '
        f"guidance {escape(_setting_text(settings.get('guidance', {})))}, {settings.get('steps', '?')} DDIM steps; "
        f"threshold {settings.get('threshold', '?')}; effectiveness gate {settings.get('gate', '?')}; "
        f"{settings.get('resamples', '?')} patient-level bootstrap resamples (seed {settings.get('seed', '?')}).</p>",
        _images_note(summary.get("images")),
        "<h2>Verdicts</h2>",
        _verdict_table(summary.get("attributes", {})),
        f'<p class="note"><b>depends</b>: a direction\'s null-corrected mean change of the prediction has a 95 % '
        f"interval excluding 0 and a Benjamini-Hochberg adjusted p below {SIGNIFICANCE:g}. <b>no dependence "
        f"detected</b>: none does, and every direction had the patients to find one; the detectable effect is the "
        f"smallest |corrected delta p| its test finds with {POWER:.0%} power, and larger effects would have been seen. "
        "<b>insufficient data</b>: a direction has too few patients for its signed-rank test to reach significance "
        "at all after the correction for every direction audited (the minimum is shown), or its bootstrap is "
        "degenerate; nothing is concluded. <b>unreliable</b>: the attribute predictors do not recognise the "
        "intervened value on enough counterfactuals, so no verdict is given. Corrected = counterfactual minus the "
        "null-intervention reconstruction (what the generator alone moves), paired per image.</p>",
        "<h2>Every direction: null-corrected delta p with its 95 % interval</h2>",
        _image_tag(_forest(summary.get("attributes", {})), "forest plot of the corrected delta p per direction"),
        _direction_table(summary.get("attributes", {})),
        "<h2>p(x) against p(x<sub>cf</sub>)</h2>",
        _image_tag(_scatter(table), "scatter of the classifier's probability before and after each intervention"),
    ]
    if summary.get("subgroups"):
        parts += [
            "<h2>Per subgroup (factual images, one global threshold)</h2>",
            f'<p class="note">A rate is shown only over at least {MIN_SUBGROUP_IMAGES} images of the group and '
            f"{MIN_SUBGROUP_CLASS} of the class it is taken over (TPR: positives, FPR: negatives, AUC: both); "
            f"below that it reads <i>{TOO_SMALL}</i>: a rate over k images is uncertain by about 1 / sqrt(k).</p>",
            _subgroup_tables(summary["subgroups"]),
        ]
    if triplets:
        parts += [
            "<h2>Examples: the largest changes of the prediction</h2>",
            _image_tag(_triplets(triplets), "examples"),
        ]
    parts.append("</body></html>")
    return "\n".join(parts)


def _setting_text(setting: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in setting.items()) or "default"


def _number(value: Any, digits: int = 3) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return escape(str(value))
    return "n/a" if not np.isfinite(value) else f"{value:.{digits}g}"


def _interval(values: Sequence[float] | None) -> str:
    return f"[{_number(values[0])}, {_number(values[1])}]" if values else "n/a"


def _images_note(images: dict[str, Any] | None) -> str:
    if not images:
        return ""
    rejected = images.get("rejected", [])
    text = f"{images.get('audited', 0)} images audited"
    if rejected:
        reasons = pd.Series([r["reason"].split(":")[0] for r in rejected]).value_counts()
        counts = ", ".join(f"{reason}: {count}" for reason, count in reasons.items())
        text += f"; {len(rejected)} rejected ({counts}), each listed in summary.json"
    return f'<p class="note">{escape(text)}.</p>'


def _verdict_table(attributes: dict[str, Any]) -> str:
    rows = ["<table><tr><th class='text'>attribute</th><th class='text'>verdict</th><th>effectiveness</th>"
            "<th>detectable effect</th><th class='text'>why</th></tr>"]  # fmt: skip
    for name, found in attributes.items():
        verdict = found.get("verdict", "")
        rows.append(
            f"<tr><td class='text'>{escape(name)}</td><td class='text'><span class='verdict "
            f"{VERDICT_CLASS.get(verdict, '')}'>{escape(verdict)}</span></td>"
            f"<td>{_number(found.get('effectiveness'))}</td><td>{_number(found.get('detectable_effect'))}</td>"
            f"<td class='text'>{escape(str(found.get('reason', '')))}</td></tr>"
        )
    rows.append("</table>")
    return "\n".join(rows)


def _direction_table(attributes: dict[str, Any]) -> str:
    header = ["attribute", "from", "to", "images", "patients (min)", "flip rate", "flips (neg&rarr;pos / pos&rarr;neg)",
              "delta p", "95 % interval", "corrected", "95 % interval", "adjusted p", "detectable effect",
              "effectiveness"]  # fmt: skip
    rows = ["<table><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>"]
    for name, found in attributes.items():
        for d in found.get("directions", []):
            patients = f"{d.get('patients', '?')} ({d.get('min_patients', '?')})"
            if d.get("insufficient"):
                patients = f"<b>{patients}</b>"
            cells = [
                escape(name), escape(str(d["from"])), escape(str(d["to"])), str(d["n"]), patients,
                _number(d["flip_rate"]), f"{d.get('neg_to_pos', 0)} / {d.get('pos_to_neg', 0)}",
                _number(d["delta_p"]), _interval(d.get("delta_p_ci")), _number(d["delta_p_corrected"]),
                _interval(d.get("delta_p_corrected_ci")), _number(d.get("p_adjusted")),
                _number(d.get("detectable_effect")), _number(d.get("effectiveness")),
            ]  # fmt: skip
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _subgroup_tables(subgroups: dict[str, Any]) -> str:
    parts = []
    for name, records in subgroups.items():
        rows = [f"<table><tr><th class='text'>{escape(name)}</th><th>n</th><th>positives</th><th>negatives</th>"
                "<th>AUC</th><th>TPR</th><th>FPR</th></tr>"]  # fmt: skip
        for record in records:
            cells = [record.get(key) for key in ("n", "positives", "negatives")]
            rates = [record.get(key) for key in ("auc", "tpr", "fpr")]
            rows.append(
                f"<tr><td class='text'>{escape(str(record.get('group')))}</td>"
                + "".join(f"<td>{escape(str(c))}</td>" for c in cells)
                + "".join(f"<td>{_number(r)}</td>" for r in rates)
                + "</tr>"
            )
        rows.append("</table>")
        parts.append("\n".join(rows))
    return "\n".join(parts)


def _forest(attributes: dict[str, Any]) -> bytes:
    """One row per direction: the null-corrected delta p as a point with its 95 % interval as a bar, 0 as a
    line, and the direction's patients and images at the right (grey and hollow where the data is insufficient)."""
    plt = _pyplot()
    directions = [(name, d) for name, found in attributes.items() for d in found.get("directions", [])]
    figure, axis = plt.subplots(figsize=(7.0, 0.9 + 0.42 * max(1, len(directions))))
    for row, (_, d) in enumerate(reversed(directions)):
        low, high = d["delta_p_corrected_ci"]
        short = bool(d.get("insufficient"))
        colour = "#9e9e9e" if short else "#1b1b1b"
        axis.plot([low, high], [row, row], color=colour, lw=2)
        axis.plot([d["delta_p_corrected"]], [row], "o", color=colour, mfc="white" if short else colour, ms=6)
        label = f"n = {d.get('patients', '?')} patients, {d['n']} images" + (" (insufficient)" if short else "")
        axis.annotate(label, (1.02, row), xycoords=("axes fraction", "data"), va="center", fontsize=8, color=colour)
    axis.axvline(0.0, color="#b3261e", lw=0.8, ls="--")
    axis.set_yticks(range(len(directions)), [f"{name}: {d['from']} -> {d['to']}" for name, d in reversed(directions)])
    axis.set_ylim(-0.6, len(directions) - 0.4)
    axis.set_xlabel("null-corrected delta p = p(x_cf) - p(x_null), mean over patients, 95 % interval")
    return _png(figure)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(figure)
    return buffer.getvalue()


def _image_tag(png: bytes, alt: str) -> str:
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _scatter(table: pd.DataFrame) -> bytes:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.2, 4.8))
    for (attribute, source, target), part in table.groupby(["attribute", "from", "to"], sort=False):
        axis.scatter(
            part["p_factual"], part["p_counterfactual"], s=14, alpha=0.75, label=f"{attribute}: {source} -> {target}"
        )
    axis.plot([0, 1], [0, 1], color="k", lw=0.8, ls="--", label="y = x")
    axis.set(xlim=(0, 1), ylim=(0, 1), xlabel="p(x), factual", ylabel="p(x_cf), counterfactual")
    axis.legend(fontsize=7, loc="best")
    return _png(figure)


def _triplets(triplets: Sequence[Any]) -> bytes:
    plt = _pyplot()
    figure, axes = plt.subplots(len(triplets), 3, figsize=(6.6, 2.3 * len(triplets)), squeeze=False)
    for row, triplet in zip(axes, triplets, strict=True):
        difference = triplet.counterfactual - triplet.factual
        limit = float(np.abs(difference).max()) or 1.0
        row[0].imshow(triplet.factual, cmap="gray", vmin=-1, vmax=1)
        row[1].imshow(triplet.counterfactual, cmap="gray", vmin=-1, vmax=1)
        row[2].imshow(difference, cmap="RdBu_r", vmin=-limit, vmax=limit)
        row[0].set_title(f"{triplet.attribute} {triplet.direction}: factual", fontsize=8)
        row[1].set_title(f"counterfactual (delta p {triplet.delta_p:+.2f})", fontsize=8)
        row[2].set_title("difference", fontsize=8)
        for axis in row:
            axis.set_axis_off()
    figure.tight_layout()
    return _png(figure)
