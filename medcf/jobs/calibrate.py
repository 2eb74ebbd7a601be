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

With several candidate guidance ``intervals`` each is searched; the one whose counterfactuals keep fine texture
as real images with the new value have it (texture score closest to 1: HF(c) / HF(r) over the real images' HF
ratio of the two values, HF the standard deviation of an image minus its 1-pixel Gaussian blur inside the field)
wins. One candidate (the default, no interval) costs one search per attribute.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

import medcf
from medcf.core.attributes import AttributeSchema, AttributeValue
from medcf.core.engine import CounterfactualEngine
from medcf.core.guidance_plan import AttributeGuidance, CalibratedPlan
from medcf.core.guidance_settings import GuidanceSettings
from medcf.core.interventions import Assignment, Intervention
from medcf.jobs.context import JobContext
from medcf.jobs.loading import LoadedModel, load_model
from medcf.jobs.phantom_sets import job_data
from medcf.measure.evaluation_set import EvaluationSet, load_evaluation_set
from medcf.measure.ground_truth import field_mask, high_frequency
from medcf.measure.matching import (
    ExpectedEffect,
    expected_effect,
    raw_readings,
    reading,
    rendering_slope,
    shift_ratio,
)
from medcf.measure.pixel_effect import PixelEffect, pixel_effect, texture_expectation
from medcf.measure.predictors import AttributePredictor, load_predictors
from medcf.measure.weight_search import WeightSearch, match_weight
from medcf.prepare.base import Preparer
from medcf.runtime.files import file_sha256, write_csv_atomic
from medcf.runtime.tracking import flatten

PLAN_FILE, CALIBRATION_CSV = "guidance_plan.json", "calibration.csv"


@dataclass
class _Move:
    """The images moved to one target value of one attribute (or by one shift)."""

    intervention: Intervention
    positions: list[int]


@dataclass
class CalibrationRun:
    """Calibrate a model's guidance on held-out data (see the module docstring).

    Args:
        output_dir: where guidance_plan.json, calibration.csv and the MLflow marker go.
        model_path, graph_path, predictors_path: the model, its causal graph and the attribute predictors.
        preparer: the preparation the model was trained with.
        phantom_kind: ``cxr`` or ``mammo`` (the held-out phantom set made when ``dataset_dir`` is None).
        dataset_dir, labels: held-out DICOM files and their cohort table (default ``DATASET_DIR/cohort.csv``;
            never the training images); None: a
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
        bounds, start, tolerance, max_evaluations: the weight search
            (:func:`~medcf.measure.weight_search.search_weight`).
        min_z: standard errors a real effect must exceed to be matched (predictor readings).
        match: ``pixels`` (the change along the effect map estimated from the real images, where the two halves
            of the data agree on it; the predictors' readings otherwise) or ``predictors`` (their readings only).
        min_correlation: split-half correlation the data's effect map needs to be used.
        no_effect_weights: the weights tried for an attribute the data show no effect of.
        intervals: candidate guidance intervals (None: every step, or [low, high] noise levels), see the module.
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
    w_inv: float = 1.0
    bounds: Sequence[float] = (0.0, 8.0)
    start: Sequence[float] = (1.0, 2.0)
    tolerance: float = 0.05
    max_evaluations: int = 5
    min_z: float = 3.0
    match: str = "pixels"
    min_correlation: float = 0.3
    no_effect_weights: Sequence[float] = (0.0, 1.0)
    intervals: Sequence[Sequence[float] | None] = (None,)
    schema: AttributeSchema | None = None
    experiment: str = "medcf-calibrate"
    device: str | torch.device = "auto"
    progress: bool = True

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
        loaded = load_model(self.model_path, self.graph_path, self.preparer, self.schema, job.device(self.device))
        schema = loaded.model.schema
        predictor = load_predictors(self.predictors_path, expected_schema=schema).to(loaded.device).eval()
        names = self._check(schema)
        plan_path = Path(self.plan_path) if self.plan_path is not None else output_dir / PLAN_FILE
        with job.folder():
            data = job_data(self, output_dir / "calibration_data")
            pool = load_evaluation_set(data.dataset_dir, data.labels, self.preparer, schema)
            chosen = pool.draw(self.images, self.seed)
            with job.tracked("calibrate", loaded.device, loaded.lineage_tags()):
                calibrator = _Calibrator(self, loaded, predictor, pool, chosen)
                attributes, rows = calibrator.calibrate(names)
                plan = CalibratedPlan(
                    attributes=attributes,
                    w_inv=float(self.w_inv),
                    steps=self.steps,
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

    def _check(self, schema: AttributeSchema) -> list[str]:
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
        for setting in ("images", "steps", "heldout_subjects", "max_evaluations"):
            value = getattr(self, setting)
            if (
                not isinstance(value, int)
                or isinstance(value, bool)
                or value < (2 if setting == "max_evaluations" else 1)
            ):
                raise ValueError(
                    f"{setting}: {value!r} must be an integer >= {2 if setting == 'max_evaluations' else 1}"
                )
        low, high = (float(b) for b in self.bounds)
        if not (0 <= low < high and math.isfinite(high)):
            raise ValueError(f"bounds: {list(self.bounds)!r} must be [low, high] with 0 <= low < high")
        if self.match not in ("pixels", "predictors"):
            raise ValueError(f"match: {self.match!r} must be pixels or predictors")
        if not list(self.intervals):
            raise ValueError("intervals: give at least one candidate (null: guide at every step)")
        for band in self.intervals:  # w_inv, steps and the bands checked as everywhere
            GuidanceSettings(mode="dcfg", w_inv=self.w_inv, steps=self.steps, interval=band)
        return _descendants_first(schema, names)

    def _track(
        self, plan: CalibratedPlan, plan_path: Path, output_dir: Path, table: pd.DataFrame, seconds: float
    ) -> None:
        mlflow.log_params(
            flatten(
                {
                    "images": plan.data["images"],
                    "steps": self.steps,
                    "w_inv": self.w_inv,
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


class _Calibrator:
    """The decoding and measuring of one calibration: one abduction and one do() output per image."""

    def __init__(
        self,
        run: CalibrationRun,
        loaded: LoadedModel,
        predictor: AttributePredictor,
        pool: EvaluationSet,
        chosen: EvaluationSet,
    ) -> None:
        self.run, self.loaded, self.predictor, self.pool, self.chosen = run, loaded, predictor, pool, chosen
        self.schema = loaded.model.schema
        self.weights: dict[str, float] = {}
        self.bands: dict[str, tuple[float, float] | None] = {}
        engine = self._engine({}, {})
        self.latents = engine.abduct(chosen.images, chosen.factual)
        reference = engine.predict(self.latents, chosen.factual, Intervention(())).images.cpu()
        self.reference = reference
        self.reference_readings = raw_readings(predictor, reference)
        self.real_readings = raw_readings(predictor, pool.images)
        self.source_readings = raw_readings(predictor, chosen.images)
        self.field = field_mask(chosen.images)
        self.reference_hf = high_frequency(reference, self.field).numpy()
        self.real_hf = high_frequency(pool.images, field_mask(pool.images)).numpy()

    def _engine(self, weights: Mapping[str, float], bands: Mapping[str, Any]) -> CounterfactualEngine:
        settings = GuidanceSettings(
            mode="calibrated",
            per_attribute=dict(weights),
            intervals=dict(bands),
            w_aff=1.0,  # an attribute not calibrated yet is decoded conditionally
            w_inv=self.run.w_inv,
            steps=self.run.steps,
            plan="calibrating",
        )
        return CounterfactualEngine(self.loaded.model, self.loaded.diffusion, self.loaded.graph, settings)

    def calibrate(self, names: Sequence[str]) -> tuple[dict[str, AttributeGuidance], list[dict[str, Any]]]:
        """Calibrate each attribute in turn, decoding with the weights and intervals chosen before it.

        Args:
            names: the attributes to calibrate, descendants first (:func:`_descendants_first`).

        Returns:
            Each attribute's guidance, in the schema's order, and every decode tried as a row of calibration.csv
            (with its ``attribute``).
        """
        attributes, rows = {}, []
        with tqdm(names, desc="calibrate", unit="attribute", disable=not self.run.progress) as bar:
            for name in bar:
                guidance, tried = self._attribute(name)
                attributes[name] = guidance
                self.weights[name], self.bands[name] = guidance.weight, guidance.interval
                rows.extend({"attribute": name, **row} for row in tried)
        return {name: attributes[name] for name in self.schema.names if name in attributes}, rows

    def _moves(self, name: str) -> list[_Move]:
        attribute = self.schema[name]
        if attribute.kind == "continuous":
            shift = float(self.run.shifts[name])
            return [_Move(Intervention((Assignment(name, shift, relative=True),)), list(range(len(self.chosen))))]
        targets: dict[AttributeValue, list[int]] = {}
        for k, factual in enumerate(self.chosen.factual):
            others = [v for v in attribute.values if v != factual[name]]
            targets.setdefault(others[k % len(others)], []).append(k)
        return [_Move(Intervention((Assignment(name, value),)), positions) for value, positions in targets.items()]

    @functools.cache  # noqa: B019  (one calibrator per job; the slope of a move is the same at every weight)
    def _slope(self, name: str, source: AttributeValue, target: AttributeValue) -> float:
        """The rendering slope of the reading a move is judged on (:func:`rendering_slope`), over the images."""
        real = reading(self.schema, name, self.source_readings[name], source, target)
        rendered = reading(self.schema, name, self.reference_readings[name], source, target)
        return rendering_slope(real.tolist(), rendered.tolist())

    def _decode(
        self, name: str, weight: float, band: Any, effect: ExpectedEffect, pixels: PixelEffect, texture: Any
    ) -> dict[str, Any]:
        """The moves of ``name`` decoded at ``weight`` (guided in ``band``): the pixel ratio (change projected on the
        data's effect map), the predictors' shift ratio (against the real shift times the rendering slope), mean
        |change|, texture score (``texture``: the real images' expected HF ratio of a move) and what the
        predictors read."""
        engine = self._engine({**self.weights, name: weight}, {**self.bands, name: band})
        measured, expected, changes, hits, textures, moved = [], [], [], [], [], 0
        along, squared = [], []
        for move in self._moves(name):
            factual = [self.chosen.factual[p] for p in move.positions]
            batch = engine.predict(self.latents[move.positions], factual, move.intervention)
            if not batch.made:
                continue
            positions = [move.positions[j] for j in batch.made]
            images = batch.images.cpu()
            readings = raw_readings(self.predictor, images)[name]
            hf = high_frequency(images, self.field[positions]).numpy()
            before = self.reference_readings[name][positions]
            for j, position in enumerate(positions):
                source, target = self.chosen.factual[position][name], batch.attributes[j][name]
                after_j = reading(self.schema, name, readings[j : j + 1], source, target)
                before_j = reading(self.schema, name, before[j : j + 1], source, target)
                measured.append(float(after_j - before_j))
                expected.append(effect.of(source, target) * self._slope(name, source, target))
                found = pixels.of(source, target)
                if found is not None:
                    change_j = (images[j] - self.reference[position]).double()
                    along.append(float((change_j * found[0]).sum()))
                    squared.append(found[1])
                textures.append(hf[j] / self.reference_hf[position] / texture(source, target))
                if self.schema[name].kind == "categorical":
                    hits.append(float(after_j) > 0)  # the predictor prefers the target value over the source
            changes.append((images - self.reference[positions]).abs().flatten(1).mean(1))
            moved += len(positions)
        change = float(torch.cat(changes).mean()) if changes else math.nan
        finite_textures = [t for t in textures if math.isfinite(t)]
        return {
            "weight": weight,
            "interval": "none" if band is None else f"{band[0]:g}-{band[1]:g}",
            "pixel_ratio": sum(along) / sum(squared) if squared and sum(squared) > 0 else math.nan,
            "shift_ratio": shift_ratio(measured, expected),
            "measured_shift": float(np.mean(measured)) if measured else math.nan,
            "expected_shift": float(np.nanmean(expected)) if expected and np.isfinite(expected).any() else math.nan,
            "mean_abs_change": change,
            "texture_score": float(np.mean(finite_textures)) if finite_textures else math.nan,
            "target_preferred": float(np.mean(hits)) if hits else math.nan,
            "images": moved,
        }

    def _attribute(self, name: str) -> tuple[AttributeGuidance, list[dict[str, Any]]]:
        labels = [f[name] for f in self.pool.factual]
        effect = expected_effect(self.schema, name, self.real_readings[name], self.pool.factual, self.run.min_z)
        pixels = pixel_effect(self.schema, name, self.pool.images, self.pool.factual, self.run.min_correlation)
        texture = texture_expectation(self.schema, name, self.real_hf, labels)
        space = "pixel_ratio" if self.run.match == "pixels" and pixels.detected else "shift_ratio"
        tried: list[dict[str, Any]] = []
        if not (effect.detected or pixels.detected):
            for weight in self.run.no_effect_weights:
                tried.append(self._decode(name, float(weight), None, effect, pixels, texture))
            best = min(tried, key=lambda row: row["mean_abs_change"])
            figures = {
                "expected": effect.to_dict(),
                "pixels": pixels.to_dict(),
                "mean_abs_change": _rounded(best["mean_abs_change"]),
            }
            return AttributeGuidance(best["weight"], None, "no_effect", {**figures, "tried": _tried(tried)}), tried
        outcomes = []
        for candidate in self.run.intervals:
            band = None if candidate is None else (float(candidate[0]), float(candidate[1]))
            first = len(tried)
            decoded: dict[float, dict[str, Any]] = {}  # one decode per weight, whichever ratio is searched

            def ratio_at(weight: float, measure: str, band: Any = band, decoded: dict = decoded) -> float:
                if weight not in decoded:
                    decoded[weight] = self._decode(name, weight, band, effect, pixels, texture)
                    tried.append(decoded[weight])
                return decoded[weight][measure]

            search, measure = match_weight(
                ratio_at,
                space,
                fallback="shift_ratio" if space == "pixel_ratio" and effect.detected else None,
                start=tuple(float(w) for w in self.run.start),
                bounds=(float(self.run.bounds[0]), float(self.run.bounds[1])),
                tolerance=self.run.tolerance,
                max_evaluations=self.run.max_evaluations,
            )
            if len(self.run.intervals) > 1:  # the texture at the chosen weight decides between the bands
                ratio_at(search.weight, measure)
            closest = min(tried[first:], key=lambda row: abs(row["weight"] - search.weight))
            outcomes.append((band, search, closest["texture_score"], measure))
        matched = [o for o in outcomes if o[1].status == "matched"] or outcomes
        band, search, texture_score, measure = min(
            matched, key=lambda o: abs(o[2] - 1) if math.isfinite(o[2]) else math.inf
        )
        ratios = list(search.tried.values())
        if max(ratios) - min(ratios) < self.run.tolerance:  # the weight does not move what is matched
            search = WeightSearch(1.0, "insensitive", search.tried)
        figures = {
            "matched": measure,
            **({"pixel_ratio_not_rising": True} if measure != space else {}),
            "expected": effect.to_dict(),
            "pixels": pixels.to_dict(),
            "ratio_at_weights": {f"{w:g}": _rounded(r) for w, r in search.tried.items()},
            "texture_score": _rounded(texture_score),
            "tried": _tried(tried),
        }
        return AttributeGuidance(search.weight, band, search.status, figures), tried


def _rounded(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 4)


def _tried(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{key: _rounded(value) if isinstance(value, float) else value for key, value in row.items()} for row in rows]


def _descendants_first(schema: AttributeSchema, names: Sequence[str]) -> list[str]:
    """``names`` ordered so that an attribute comes after every descendant of it (deepest first, then schema order)."""

    def depth(name: str) -> int:
        parents = schema[name].parents
        return 0 if not parents else 1 + max(depth(p) for p in parents)

    return sorted(names, key=lambda n: (-depth(n), schema.names.index(n)))


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
