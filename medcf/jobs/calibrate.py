"""The calibrate job: choose each attribute's DCFG weight on held-out images by matching the predictors' reading
of the counterfactuals to real images' (:mod:`medcf.measure.matching`), and write the guidance plan.

    held-out images + labels (never the phantom truth) -> one abduction and one do() output per image ->
    per attribute (descendants first): decode every image moved to another value at weight w, measure its
    change against the data's effect map (pixel ratio) and with the attribute predictors (shift ratio),
    ratio(w) -> the weight with ratio 1 -> OUT/guidance_plan.json, OUT/calibration.csv (every weight tried)
    -> one MLflow run

Each image is moved once per attribute: a categorical attribute to the next of its other values (image k takes
the (k mod n)-th of them), so every value is a target; a continuous one by the bundle's shift (``do(age=+20)``;
images it would carry past the range are left out). The attributes an intervention's descendants change are
guided with the descendants' own calibrated weights, which is why descendants are calibrated first. The pixel
ratio is matched where the data's effect map is found (``match: pixels``), the shift ratio elsewhere; both are
recorded. A pixel ratio that does not rise with the weight while the shift ratio does (a change not along the
data's mean map: a skin marker drawn anywhere on the breast projects on a mean ring at random signs) hands the
search to the shift ratio, reusing the decodes made (``pixel_ratio_not_rising`` in the figures). An attribute
whose values the real images do not tell apart in either space (e.g. race in the mammogram phantom) has no size
to match: it gets the weight among ``no_effect_weights`` that changes the images least. A weight that does not
move the matched ratio (``insensitive``) is left at 1, the conditional prediction.

With several candidate guidance ``intervals`` each is searched; the ones whose counterfactuals keep fine texture
as real images with the new value have it (texture score closest to 1: HF(c) / HF(r) over the real images' HF
ratio of the two values, HF the standard deviation of an image minus its 1-pixel Gaussian blur inside the field;
within ``texture_tolerance`` of the best count as equal) are kept, and of those the cheapest wins: the band that
guides the fewest steps (outside it a step costs one network row per image instead of M + 1). One candidate (no
interval) costs one search per attribute.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import pandas as pd
import torch

import medcf
from medcf.core.attributes import AttributeSchema
from medcf.core.guidance_plan import PLAN_RULES, CalibratedPlan
from medcf.core.guidance_settings import GuidanceSettings
from medcf.jobs.calibrator import Calibrator, descendants_first
from medcf.jobs.context import JobContext
from medcf.jobs.loading import LoadedModel, load_model
from medcf.jobs.phantom_sets import MeasuredData, job_data
from medcf.measure.evaluation_set import EvaluationSet, load_evaluation_set, patient_ids
from medcf.measure.predictors import AttributePredictor, load_predictors
from medcf.prepare.base import Preparer
from medcf.runtime.files import file_sha256, write_csv_atomic
from medcf.runtime.settings import require_integer, require_number
from medcf.runtime.tracking import flatten

PLAN_FILE, CALIBRATION_CSV = "guidance_plan.json", "calibration.csv"


@dataclass
class CalibrationRun:
    """Calibrate a model's guidance on held-out data (see the module docstring).

    Args:
        output_dir: where guidance_plan.json, calibration.csv and the MLflow marker go.
        model_path, graph_path, predictors_path: the model, its causal graph and the attribute predictors.
        preparer: the preparation the model was trained with.
        phantom_kind: ``cxr`` or ``mammo`` (the held-out phantom set made when ``dataset_dir`` is None).
        dataset_dir, labels: held-out DICOM files and their cohort table (default ``DATASET_DIR/cohort.csv``,
            with a ``patient`` column; never the training images); None: a
            held-out phantom export of ``heldout_subjects`` subjects (seed ``heldout_seed``, which neither the
            training sets nor the evaluate job use) made once in ``output_dir/calibration_data``. Its ground
            truth is never read.
        plan_path: where the plan is written (default ``output_dir/guidance_plan.json``; a bundle's
            ``models/guidance_plan.json`` installs it as the bundle's default).
        attributes: the attributes to calibrate (None: every attribute of the model).
        shifts: continuous attribute -> the shift its intervention is calibrated with (e.g. ``{age: 20}``).
        images: at most this many calibration images (drawn by ``seed``); every held-out image is the real
            reference the counterfactuals are compared with.
        steps: DDIM steps; w_inv: the invariant group's weight.
        inversion_refinements: fixed-point refinements per inversion step (0: plain DDIM inversion; see
            :class:`~medcf.core.guidance_settings.GuidanceSettings`).
        rule: how the groups combine at a step while calibrating, recorded in the plan and used by its decodes:
            ``linear`` or ``nested`` (:data:`~medcf.core.guidance_plan.PLAN_RULES`).
        affected_descendants: ``all`` or ``changed``: which descendants of an intervened attribute its decodes
            guide (:class:`~medcf.core.guidance_settings.GuidanceSettings`), recorded in the plan and used by its
            decodes. ``changed`` matches an intervention's weight on its own effect, not on its effect plus the
            unchanged descendants' values amplified.
        bounds, start, tolerance, max_evaluations: the weight search
            (:func:`~medcf.measure.weight_search.search_weight`).
        min_z: standard errors a real effect must exceed to be matched (predictor readings).
        match: ``pixels`` (the change along the effect map estimated from the real images, where the two halves
            of the data agree on it; the predictors' readings otherwise) or ``predictors`` (their readings only).
        min_correlation: split-half correlation the data's effect map needs to be used.
        no_effect_weights: the weights tried for an attribute the data show no effect of.
        intervals: candidate guidance intervals (None: every step, or [low, high] noise levels), see the module.
        texture_tolerance: how much further from 1 a band's texture score may be than the best band's and still
            count as equal, so that the cheaper band is kept (see :func:`~medcf.jobs.calibrator.choose_band`).
        schema: the bundle's attributes; device: ``auto``, ``cpu`` or ``cuda[:N]``.
        experiment: MLflow experiment name.
        progress: show a progress bar (one step per attribute).
    """

    output_dir: str | Path
    model_path: str | Path
    graph_path: str | Path
    predictors_path: str | Path
    preparer: Preparer
    phantom_kind: str
    dataset_dir: str | Path | None = None
    labels: str | Path | None = None
    plan_path: str | Path | None = None
    attributes: Sequence[str] | None = None
    shifts: Mapping[str, float] = field(default_factory=dict)
    heldout_subjects: int = 200
    heldout_seed: int = 2000
    images: int = 24
    seed: int = 0
    steps: int = 50
    inversion_refinements: int = 1
    w_inv: float = 1.0
    rule: str = "linear"
    affected_descendants: str = "changed"
    bounds: Sequence[float] = (0.0, 8.0)
    start: Sequence[float] = (1.0, 2.0)
    tolerance: float = 0.05
    max_evaluations: int = 5
    min_z: float = 3.0
    match: str = "pixels"
    min_correlation: float = 0.3
    no_effect_weights: Sequence[float] = (0.0, 1.0)
    intervals: Sequence[Sequence[float] | None] = (None,)
    texture_tolerance: float = 0.02
    schema: AttributeSchema | None = None
    experiment: str = "medcf-calibrate"
    device: str | torch.device = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        for setting in ("images", "steps", "heldout_subjects"):
            require_integer(setting, getattr(self, setting), 1)
        require_integer("max_evaluations", self.max_evaluations, 2)
        require_integer("inversion_refinements", self.inversion_refinements, 0)
        low, high = (float(b) for b in self.bounds)
        if not (0 <= low < high and math.isfinite(high)):
            raise ValueError(f"bounds: {list(self.bounds)!r} must be [low, high] with 0 <= low < high")
        if self.rule not in PLAN_RULES:
            raise ValueError(f"rule: {self.rule!r} must be one of {', '.join(PLAN_RULES)}")
        if self.match not in ("pixels", "predictors"):
            raise ValueError(f"match: {self.match!r} must be pixels or predictors")
        require_number("texture_tolerance", self.texture_tolerance, 0)
        if not list(self.intervals):
            raise ValueError("intervals: give at least one candidate (null: guide at every step)")
        for band in self.intervals:  # w_inv, steps, the bands and affected_descendants checked as everywhere
            GuidanceSettings(
                mode="dcfg",
                w_inv=self.w_inv,
                steps=self.steps,
                interval=band,
                affected_descendants=self.affected_descendants,
            )

    def run(self) -> CalibratedPlan:
        """Calibrate, write the plan and the table, and return the plan.

        Returns:
            The plan as written to ``plan_path`` (default ``output_dir/guidance_plan.json``) and read back.

        Raises:
            ValueError: when a setting is refused before any image is read (e.g. ``attributes`` naming no
                attribute of the model, a continuous attribute without a non-zero shift, a count below its
                minimum, ``bounds`` not [low, high] with 0 <= low < high, an unknown ``match``, no ``intervals``).
        """
        job = JobContext("calibrate", self.output_dir, self.experiment)
        output_dir = job.output_dir
        loaded, predictor = self.load(job.device(self.device))
        schema = loaded.model.schema
        names = self._check(schema)
        plan_path = Path(self.plan_path) if self.plan_path is not None else output_dir / PLAN_FILE
        with job.folder():
            data, pool, chosen, patients = self.held_out(schema, output_dir / "calibration_data")
            with job.tracked("calibrate", loaded.device, loaded.lineage_tags()):
                calibrator = Calibrator(self, loaded, predictor, pool, chosen, patients)
                attributes, rows = calibrator.calibrate(names)
                plan = CalibratedPlan(
                    attributes=attributes,
                    w_inv=float(self.w_inv),
                    steps=self.steps,
                    rule=self.rule,
                    affected_descendants=self.affected_descendants,
                    inversion_refinements=self.inversion_refinements,
                    model_sha256=loaded.sha256,
                    predictors_sha256=file_sha256(self.predictors_path),
                    data={
                        "fingerprint": _fingerprint(chosen),
                        "images": len(chosen),
                        "reference_images": len(pool),
                        "description": data.description,
                    },
                    created=datetime.now(UTC).isoformat(timespec="seconds"),
                    medcf=medcf.__version__,
                )
                plan.save(plan_path)
                plan = CalibratedPlan.load(plan_path, schema, loaded.sha256)
                table = pd.DataFrame(rows)
                write_csv_atomic(output_dir / CALIBRATION_CSV, table)
                seconds = job.seconds
                self._track(plan, plan_path, output_dir, table, seconds)
        for line in summary_lines(plan):
            print(line)
        print(f"guidance plan -> {plan_path} ({seconds:.0f} s)")
        return plan

    def load(self, device: torch.device) -> tuple[LoadedModel, AttributePredictor]:
        """The model (with its diffusion and causal graph) and the attribute predictors the job calibrates with.

        Args:
            device: where they run.

        Returns:
            (model, predictors in eval mode on the model's device).
        """
        loaded = load_model(self.model_path, self.graph_path, self.preparer, self.schema, device)
        predictor = load_predictors(self.predictors_path, expected_schema=loaded.model.schema)
        return loaded, predictor.to(loaded.device).eval()

    def held_out(
        self, schema: AttributeSchema, folder: Path
    ) -> tuple[MeasuredData, EvaluationSet, EvaluationSet, list[str]]:
        """The held-out images: the user's folder, or the held-out phantom set made once in ``folder``.

        Args:
            schema: the model's attributes.
            folder: where the held-out phantom set is made (used without ``dataset_dir``).

        Returns:
            (the data, every prepared image (the pool the data's effects are estimated on), the ``images`` drawn
            from it to be moved, each pool image's patient (in memory only: the maps' halves split patients)).
        """
        data = job_data(self, folder)
        pool = load_evaluation_set(data.dataset_dir, data.labels, self.preparer, schema)
        return data, pool, pool.draw(self.images, self.seed), patient_ids(pool.sources, data.labels)

    def _check(self, schema: AttributeSchema) -> list[str]:
        """The attributes to calibrate, descendants first, and their shifts: what needs the model's attributes
        (the other settings are checked when the job is made)."""
        names = list(schema.names) if self.attributes is None else list(self.attributes)
        unknown = sorted(set(names) - set(schema.names))
        if unknown or not names:
            raise ValueError(
                f"attributes: {unknown or names!r} must name attributes of the model ({', '.join(schema.names)})"
            )
        for name in names:
            if schema[name].kind == "continuous":
                shift = self.shifts.get(name)
                if (
                    not isinstance(shift, int | float)
                    or isinstance(shift, bool)
                    or not math.isfinite(shift)
                    or shift == 0
                ):
                    raise ValueError(f"shifts.{name}: {shift!r} must be a non-zero number (e.g. {{{name}: 20}})")
        return descendants_first(schema, names)

    def _track(
        self, plan: CalibratedPlan, plan_path: Path, output_dir: Path, table: pd.DataFrame, seconds: float
    ) -> None:
        mlflow.log_params(
            flatten(
                {
                    "images": plan.data["images"],
                    "steps": self.steps,
                    "inversion_refinements": self.inversion_refinements,
                    "w_inv": self.w_inv,
                    "rule": self.rule,
                    "affected_descendants": self.affected_descendants,
                    "bounds": list(self.bounds),
                    "shifts": dict(self.shifts),
                    "model_sha256": plan.model_sha256,
                    "data_fingerprint": plan.data["fingerprint"],
                }
            )
        )
        mlflow.log_metrics({f"weight.{name}": g.weight for name, g in plan.attributes.items()})
        mlflow.log_metric("seconds", seconds)
        mlflow.set_tags({f"medcf.calibration.{name}": g.status for name, g in plan.attributes.items()})
        mlflow.log_artifact(str(plan_path), artifact_path="plan")
        mlflow.log_artifact(str(output_dir / CALIBRATION_CSV), artifact_path="plan")


def _fingerprint(chosen: EvaluationSet) -> str:
    """SHA-256 of the calibration images' prepared pixels and labels (no paths: they may carry identifiers)."""
    digest = hashlib.sha256(chosen.images.numpy().tobytes())
    digest.update(json.dumps(chosen.factual, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def summary_lines(plan: CalibratedPlan) -> list[str]:
    """One line per attribute, e.g. ``sex: w = 1.35 (matched; pixel ratio 0.82 at w=1, 1.31 at w=2)``.

    Args:
        plan: a calibrated guidance plan.

    Returns:
        The lines: each attribute's weight, status and the ratios at the weights tried (for an attribute without
        an effect in the data, its mean |change|).
    """
    lines = []
    for name, guidance in plan.attributes.items():
        if guidance.status == "no_effect":
            detail = f"no effect in the data; mean |change| {guidance.figures.get('mean_abs_change')}"
        else:
            ratios = guidance.figures.get("ratio_at_weights") or {}
            space = "pixel ratio" if guidance.figures.get("matched") == "pixel_ratio" else "shift ratio"
            detail = f"{space} " + ", ".join(f"{r:.2f} at w={w}" for w, r in ratios.items() if r is not None)
        lines.append(f"{name}: w = {guidance.weight:g} ({guidance.status}; {detail})")
    return lines
