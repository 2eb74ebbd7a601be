"""The soundness measures of the evaluate job: one row of metrics per intervention and guidance setting from what
was decoded (:mod:`medcf.measure.decoded`), and the summary over seeds.

Definitions: ../shared/reference/evaluation.md; the columns are listed in :mod:`medcf.jobs.evaluate`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from medcf.core.attributes import AttributeSchema
from medcf.core.interventions import Intervention
from medcf.measure import ground_truth, metrics
from medcf.measure.decoded import MadeCounterfactuals
from medcf.measure.evaluation_set import EvaluationSet, TrueChanges
from medcf.measure.phantom_truth import PhantomTruth
from medcf.measure.predictors import AttributePredictor, predict_all
from medcf.prepare.base import Preparer


class SoundnessMeasures:
    """The predictors' view of the held-out set and, on phantoms, the true changes: computed once per seed.

    Args:
        schema: the model's attributes.
        predictor: the attribute predictors (on the device the rows are measured on).
        pool: the whole held-out set (FID and minimality compare against it).
        truth: the phantom ground truth beside the images, or None.
        preparer: the preparation the images went through (the true changes are prepared the same way).
    """

    def __init__(
        self,
        schema: AttributeSchema,
        predictor: AttributePredictor,
        pool: EvaluationSet,
        truth: PhantomTruth | None,
        preparer: Preparer,
    ) -> None:
        self.schema, self.predictor, self.pool, self.truth, self.preparer = schema, predictor, pool, truth, preparer
        self.real_features = predictor_features(predictor, pool.images)

    def context(self, chosen: EvaluationSet) -> dict[str, Any]:
        """What every row of one seed shares: the seed's images, the predictors' reading of them and, on phantoms,
        their true changes.

        Args:
            chosen: the seed's images.

        Returns:
            The context :meth:`row` takes.
        """
        context: dict[str, Any] = {"set": chosen, "factual_predictions": predict_all(self.predictor, chosen.images)}
        if self.truth is not None:
            changes = TrueChanges(self.truth, chosen, self.preparer)
            context["truth"], context["directions"] = changes, changes.directions()
            context["image_directions"] = changes.image_directions()
        return context

    def row(
        self, context: Mapping[str, Any], intervention: Intervention, made: MadeCounterfactuals, affected: set[str]
    ) -> dict[str, Any]:
        """The metrics of one intervention's counterfactuals.

        Args:
            context: the seed's :meth:`context`.
            intervention: the intervention.
            made: its counterfactuals under one guidance setting, every process's share joined.
            affected: the intervened attributes and their descendants (never counted as off-target).

        Returns:
            Column -> value of the row (effectiveness, off-target, reversibility, minimality, FID and, on phantoms,
            the truth measures).
        """
        chosen: EvaluationSet = context["set"]
        positions = made.positions
        sources = chosen.images[positions]
        factual = [chosen.factual[p] for p in positions]
        before = {name: values[positions] for name, values in context["factual_predictions"].items()}
        after = made.after
        row: dict[str, Any] = {}
        for k, name in enumerate(intervention.names):
            scores = metrics.effectiveness(self.schema, name, after, made.attributes)
            for metric, value in scores.items():
                row[f"effectiveness.{name}.{metric}"] = value
            if k == 0:
                metric = "mae" if self.schema[name].kind == "continuous" else "accuracy"
                row["effectiveness"], row["effectiveness_metric"] = scores[metric], metric
                row["auroc"] = scores.get("auroc", math.nan)
        untouched = [n for n in self.schema.names if n not in affected]
        changes = metrics.off_target_change(self.schema, untouched, before, after, factual)
        categorical = [n for n in untouched if self.schema[n].kind == "categorical"]
        for name, change in changes.items():
            row[f"off_target.{name}"] = change["absolute"]
            row[f"off_target_signed.{name}"] = change["signed"]
        reconstructed = made.reconstructed
        control = metrics.off_target_change(self.schema, untouched, before, reconstructed, factual)
        net = metrics.off_target_change(self.schema, untouched, reconstructed, after, factual)

        def mean(found: Mapping[str, Mapping[str, float]], key: str = "absolute") -> float:
            return float(np.mean([found[n][key] for n in categorical])) if categorical else math.nan

        row["off_target"], row["off_target_signed"] = mean(changes), mean(changes, "signed")
        row["off_target_null"], row["off_target_vs_null"] = mean(control), mean(net)
        back = made.back
        row["reversibility"] = float(metrics.l1_255(back, sources).mean()) if back is not None else math.nan
        row["reconstruction_mae"] = float((made.null_output - sources).abs().mean())
        intervened_categorical = [n for n in intervention.names if self.schema[n].kind == "categorical"]
        row["minimality"] = metrics.minimality(
            sources, made.images, made.attributes, self.pool.images, self.pool.factual, intervened_categorical
        )
        row["fid"] = metrics.frechet_distance(made.features, self.real_features)
        if "truth" in context:
            row.update(self._truth_row(context, intervention, made, sources, untouched))
        return row

    @staticmethod
    def _truth_row(
        context: Mapping[str, Any],
        intervention: Intervention,
        made: MadeCounterfactuals,
        sources: torch.Tensor,
        untouched: list[str],
    ) -> dict[str, float]:
        """truth_error, target_ratio and, per untouched attribute, the off-target error of the intervention's
        change (against the null reconstruction under the same guidance: ``truth_off_target``) and of the whole
        change a viewer sees (against the source image: ``truth_off_target_source``, which adds what decoding
        under this guidance moves on its own, e.g. CFG amplifying attributes nobody intervened on); and, per image
        against the exact counterfactual, exact_target_ratio, exact_off_target (along each image's own unit effect
        of the untouched attributes), texture_ratio (against the phantom's factual render and its exact
        counterfactual) and mean_abs_change. The per-image measures take the change a user gets: the counterfactual
        minus the image's ``do()`` output (``null_output``)."""
        changes = {"truth_off_target": made.images - made.reference, "truth_off_target_source": made.images - sources}
        truth: TrueChanges = context["truth"]
        positions = made.positions
        true_change = truth.of_intervention(intervention, positions)
        target = ground_truth.unit_direction(true_change)
        change = changes["truth_off_target"]
        own = {name: context["image_directions"][name][positions] for name in untouched}
        against_do = made.images - made.null_output
        row = {
            "truth_error": ground_truth.truth_error(change, true_change),
            "target_ratio": ground_truth.target_ratio(change, true_change, target),
            "exact_target_ratio": ground_truth.exact_target_ratio(against_do, true_change),
            "exact_off_target": ground_truth.exact_off_target(against_do, true_change, own),
            "texture_ratio": ground_truth.texture_ratio(
                made.images, made.null_output, truth.factual[positions], true_change
            ),
            "mean_abs_change": ground_truth.mean_abs_change(against_do),
        }
        for column, moved in changes.items():
            errors = {}
            for name in untouched:
                direction = context["directions"][name]
                if float(direction.abs().sum()) > 0:
                    errors[name] = ground_truth.off_target_error(moved, true_change, direction)
                    row[f"{column}.{name}"] = errors[name]
            row[column] = float(np.mean(list(errors.values()))) if errors else math.nan
        return row


@torch.no_grad()
def predictor_features(predictor: AttributePredictor, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The predictors' pooled features of ``images`` (what FID compares), computed where the predictor is.

    Args:
        predictor: the attribute predictors.
        images: (N, 1, H, W) on the model's scale.
        batch_size: images per forward.

    Returns:
        (N, F) features on the CPU.
    """
    device = next(predictor.parameters()).device
    return torch.cat(
        [
            predictor.features(images[k : k + batch_size].float().to(device)).cpu()
            for k in range(0, len(images), batch_size)
        ]
    )


#: The measures against the phantom's ground truth (:mod:`medcf.measure.ground_truth`).
TRUTH_COLUMNS = (
    "truth_error",
    "target_ratio",
    "truth_off_target",
    "truth_off_target_source",
    "exact_target_ratio",
    "exact_off_target",
    "texture_ratio",
)

#: The columns summarised over seeds (:func:`summary_records`).
SUMMARY_COLUMNS = (
    "effectiveness",
    "off_target",
    "off_target_null",
    "off_target_vs_null",
    "composition_1",
    "composition_10",
    "reversibility",
    "reconstruction_mae",
    "minimality",
    "fid",
    *TRUTH_COLUMNS,
    "mean_abs_change",
)


def summary_records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Mean and sd over seeds of the main columns, per intervention x guidance setting.

    Args:
        table: the rows of metrics.csv.

    Returns:
        One record per (intervention, guidance): ``seeds``, and per column of :data:`SUMMARY_COLUMNS` present its
        mean and ``<column>_sd`` (None where a seed had no value or only one seed ran).
    """
    columns = [c for c in SUMMARY_COLUMNS if c in table.columns]
    records = []
    for (intervention, guidance), group in table.groupby(["intervention", "guidance"], sort=False):
        record: dict[str, Any] = {"intervention": intervention, "guidance": guidance, "seeds": len(group)}
        for column in columns:
            values = pd.to_numeric(group[column], errors="coerce").dropna()
            record[column] = float(values.mean()) if len(values) else None
            record[f"{column}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else None
        records.append(record)
    return records


def summary_text(table: pd.DataFrame) -> str:
    """The summary (:func:`summary_records`) as an aligned text table for the terminal.

    Args:
        table: the rows of metrics.csv.

    Returns:
        The table's text, or ``no rows``.
    """
    records = summary_records(table)
    if not records:
        return "no rows"
    frame = pd.DataFrame(records)
    shown = [c for c in ("intervention", "guidance", "seeds", *SUMMARY_COLUMNS) if c in frame.columns]
    return frame[shown].to_string(index=False, float_format=lambda v: f"{v:.3g}")
