"""The calibration itself, without the job around it: one abduction and one ``do()`` output per held-out image,
then per attribute (descendants first) the images moved to other values decoded at the weights the search tries,
their change measured in pixels and with the attribute predictors, and the weight with ratio 1 chosen (see
:mod:`medcf.jobs.calibrate` for the rules, :mod:`medcf.measure.matching`, :mod:`medcf.measure.pixel_effect` and
:mod:`medcf.measure.weight_search` for the statistics).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from medcf.core.attributes import AttributeSchema, AttributeValue
from medcf.core.engine import CounterfactualEngine
from medcf.core.guidance_plan import AttributeGuidance
from medcf.core.guidance_settings import GuidanceSettings
from medcf.core.interventions import Assignment, Intervention
from medcf.jobs.loading import LoadedModel
from medcf.measure.evaluation_set import EvaluationSet
from medcf.measure.ground_truth import field_mask, high_frequency
from medcf.measure.matching import (
    ExpectedEffect,
    expected_effect,
    finite_or_none,
    raw_readings,
    reading,
    rendering_slope,
    shift_ratio,
)
from medcf.measure.pixel_effect import PixelEffect, pixel_effect, texture_expectation
from medcf.measure.predictors import AttributePredictor
from medcf.measure.weight_search import WeightSearch, match_weight

if TYPE_CHECKING:
    from medcf.jobs.calibrate import CalibrationRun


@dataclass
class Move:
    """The images moved to one target value of one attribute (or by one shift).

    Attributes:
        intervention: the move.
        positions: the moved images' positions in the calibration set.
    """

    intervention: Intervention
    positions: list[int]


@dataclass
class MoveReading:
    """One move decoded and read by the attribute predictors, image by image.

    Attributes:
        positions: the positions of the images the engine moved (an image already at the target is not).
        images: their counterfactuals (n, C, H, W), on the CPU.
        targets: the value each image was moved to.
        after: the predictors' reading of each counterfactual, from its source value towards its target
            (:func:`reading`; above 0: the target is preferred).
        measured: the reading's shift from the image's ``do()`` output.
        expected: the shift it should show: the real images' expected effect times the rendering slope.
        network_evaluations: the network rows the decoding cost per image.
    """

    positions: list[int]
    images: torch.Tensor
    targets: list[AttributeValue]
    after: list[float]
    measured: list[float]
    expected: list[float]
    network_evaluations: int


class Calibrator:
    """The decoding and measuring of one calibration: one abduction and one do() output per image, made at
    construction; then :meth:`calibrate` searches each attribute's weight.

    Args:
        run: the calibrate job's settings (search bounds, tolerance, intervals, shifts, steps, w_inv).
        loaded: the model, its diffusion and causal graph.
        predictor: the attribute predictors.
        pool: every held-out image (the data's effects are estimated on them).
        chosen: the images that are moved and decoded.
        patients: each pool image's patient (the pixel maps' halves split patients, the predictors' standard
            errors are clustered by patient).
    """

    def __init__(
        self,
        run: CalibrationRun,
        loaded: LoadedModel,
        predictor: AttributePredictor,
        pool: EvaluationSet,
        chosen: EvaluationSet,
        patients: Sequence[str],
    ) -> None:
        self.run, self.loaded, self.predictor, self.pool, self.chosen = run, loaded, predictor, pool, chosen
        self.patients = patients
        self.schema = loaded.model.schema
        self.weights: dict[str, float] = {}
        self.bands: dict[str, tuple[float, float] | None] = {}
        engine = self.engine({}, {})
        self.latents = engine.abduct(chosen.images, chosen.factual)
        reference = engine.predict(self.latents, chosen.factual, Intervention(())).images.cpu()
        self.reference = reference
        self.reference_readings = raw_readings(predictor, reference)
        self.real_readings = raw_readings(predictor, pool.images)
        self.source_readings = raw_readings(predictor, chosen.images)
        self.field = field_mask(chosen.images)
        self.reference_hf = high_frequency(reference, self.field).numpy()
        self.real_hf = high_frequency(pool.images, field_mask(pool.images)).numpy()

    def engine(self, weights: Mapping[str, float], bands: Mapping[str, Any]) -> CounterfactualEngine:
        """The engine that decodes with ``weights`` and ``bands`` for the attributes they name (the others
        conditionally), under the job's w_inv, rule, affected descendants, steps and inversion refinements.

        Args:
            weights: attribute -> DCFG weight.
            bands: attribute -> guidance interval (None: every step).

        Returns:
            The engine.
        """
        settings = GuidanceSettings(
            mode="calibrated",
            per_attribute=dict(weights),
            intervals=dict(bands),
            w_aff=1.0,  # an attribute not calibrated yet is decoded conditionally
            w_inv=self.run.w_inv,
            steps=self.run.steps,
            inversion_refinements=self.run.inversion_refinements,
            rule=self.run.rule,
            affected_descendants=self.run.affected_descendants,
            plan="calibrating",
        )
        return CounterfactualEngine(self.loaded.model, self.loaded.diffusion, self.loaded.graph, settings)

    def calibrate(self, names: Sequence[str]) -> tuple[dict[str, AttributeGuidance], list[dict[str, Any]]]:
        """Calibrate each attribute in turn, decoding with the weights and intervals chosen before it.

        Args:
            names: the attributes to calibrate, descendants first (:func:`descendants_first`).

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

    def moves(self, name: str) -> list[Move]:
        """How the calibration images are moved along ``name``: a continuous attribute by the job's shift (every
        image), a categorical one each image to one of its other values, in turn.

        Args:
            name: the attribute.

        Returns:
            One move per target value (or one shift).
        """
        attribute = self.schema[name]
        if attribute.kind == "continuous":
            shift = float(self.run.shifts[name])
            return [Move(Intervention((Assignment(name, shift, relative=True),)), list(range(len(self.chosen))))]
        targets: dict[AttributeValue, list[int]] = {}
        for k, factual in enumerate(self.chosen.factual):
            others = [v for v in attribute.values if v != factual[name]]
            targets.setdefault(others[k % len(others)], []).append(k)
        return [Move(Intervention((Assignment(name, value),)), positions) for value, positions in targets.items()]

    @functools.cache  # noqa: B019  (one calibrator per job; the slope of a move is the same at every weight)
    def slope(self, name: str, source: AttributeValue, target: AttributeValue) -> float:
        """The rendering slope of the reading a move is judged on (:func:`rendering_slope`), over the images.

        Args:
            name: the attribute moved.
            source: the value moved from.
            target: the value moved to.

        Returns:
            The slope (NaN where the images cannot give one).
        """
        real = reading(self.schema, name, self.source_readings[name], source, target)
        rendered = reading(self.schema, name, self.reference_readings[name], source, target)
        return rendering_slope(real.tolist(), rendered.tolist())

    def read_move(self, engine: CounterfactualEngine, name: str, move: Move) -> MoveReading | None:
        """Decode one move with ``engine`` and read its images' shift of ``name`` as the calibration judges it.

        Args:
            engine: the engine that decodes (its weights and intervals).
            name: the attribute moved.
            move: the intervention and the images it moves.

        Returns:
            The reading, or None when the engine moved none of the images.
        """
        factual = [self.chosen.factual[p] for p in move.positions]
        batch = engine.predict(self.latents[move.positions], factual, move.intervention)
        if not batch.made:
            return None
        positions = [move.positions[j] for j in batch.made]
        images = batch.images.cpu()
        readings = raw_readings(self.predictor, images)[name]
        before = self.reference_readings[name][positions]
        effect = self.expected(name)
        targets, after, measured, expected = [], [], [], []
        for j, position in enumerate(positions):
            source, target = self.chosen.factual[position][name], batch.attributes[j][name]
            after_j = reading(self.schema, name, readings[j : j + 1], source, target)
            before_j = reading(self.schema, name, before[j : j + 1], source, target)
            targets.append(target)
            after.append(float(after_j))
            measured.append(float(after_j - before_j))
            expected.append(effect.of(source, target) * self.slope(name, source, target))
        return MoveReading(positions, images, targets, after, measured, expected, batch.network_evaluations)

    def _decode(self, name: str, weight: float, band: Any, pixels: PixelEffect, texture: Any) -> dict[str, Any]:
        """The moves of ``name`` decoded at ``weight`` (guided in ``band``): the pixel ratio (change projected on the
        data's effect map), the predictors' shift ratio (against the real shift times the rendering slope), mean
        |change|, texture score (``texture``: the real images' expected HF ratio of a move) and what the
        predictors read."""
        engine = self.engine({**self.weights, name: weight}, {**self.bands, name: band})
        measured, expected, changes, hits, textures, moved = [], [], [], [], [], 0
        along, squared, evaluations = [], [], []
        for move in self.moves(name):
            read = self.read_move(engine, name, move)
            if read is None:
                continue
            positions, images = read.positions, read.images
            evaluations.append(read.network_evaluations)
            measured += read.measured
            expected += read.expected
            hf = high_frequency(images, self.field[positions]).numpy()
            for j, position in enumerate(positions):
                source, target = self.chosen.factual[position][name], read.targets[j]
                found = pixels.of(source, target)
                if found is not None:
                    change_j = (images[j] - self.reference[position]).double()
                    along.append(float((change_j * found[0]).sum()))
                    squared.append(found[1])
                textures.append(hf[j] / self.reference_hf[position] / texture(source, target))
                if self.schema[name].kind == "categorical":
                    hits.append(read.after[j] > 0)  # the predictor prefers the target value over the source
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
            "network_evaluations": max(evaluations, default=0),
            "images": moved,
        }

    @functools.cache  # noqa: B019  (one calibrator per job)
    def expected(self, name: str) -> ExpectedEffect:
        """How the real images with the attribute's values differ in the predictors' reading (held-out pool,
        adjusted for the non-descendant attributes, errors clustered by patient; :func:`expected_effect`).

        Args:
            name: the attribute.

        Returns:
            The expected effect.
        """
        return expected_effect(
            self.schema, name, self.real_readings[name], self.pool.factual, self.run.min_z, patients=self.patients
        )

    def _attribute(self, name: str) -> tuple[AttributeGuidance, list[dict[str, Any]]]:
        labels = [f[name] for f in self.pool.factual]
        effect = self.expected(name)
        pixels = pixel_effect(
            self.schema, name, self.pool.images, self.pool.factual, self.run.min_correlation, patients=self.patients
        )
        texture = texture_expectation(self.schema, name, self.real_hf, labels)
        space = "pixel_ratio" if self.run.match == "pixels" and pixels.detected else "shift_ratio"
        tried: list[dict[str, Any]] = []
        if not (effect.detected or pixels.detected):
            for weight in self.run.no_effect_weights:
                tried.append(self._decode(name, float(weight), None, pixels, texture))
            best = min(tried, key=lambda row: row["mean_abs_change"])
            figures = {
                "expected": effect.to_dict(),
                "pixels": pixels.to_dict(),
                "mean_abs_change": rounded(best["mean_abs_change"]),
                "tried": rounded_rows(tried),
            }
            return AttributeGuidance(best["weight"], None, "no_effect", figures), tried
        outcomes = []
        for candidate in self.run.intervals:
            band = None if candidate is None else (float(candidate[0]), float(candidate[1]))
            first = len(tried)
            decoded: dict[float, dict[str, Any]] = {}  # one decode per weight, whichever ratio is searched

            def ratio_at(weight: float, measure: str, band: Any = band, decoded: dict = decoded) -> float:
                if weight not in decoded:
                    decoded[weight] = self._decode(name, weight, band, pixels, texture)
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
            cost = closest["network_evaluations"]
            outcomes.append(BandOutcome(band, search, closest["texture_score"], measure, cost))
        chosen = choose_band(outcomes, self.run.texture_tolerance)
        band, search, texture_score, measure = chosen.band, chosen.search, chosen.texture_score, chosen.measure
        ratios = list(search.tried.values())
        if max(ratios) - min(ratios) < self.run.tolerance:  # the weight does not move what is matched
            search = WeightSearch(1.0, "insensitive", search.tried)
        figures = {
            "matched": measure,
            **({"pixel_ratio_not_rising": True} if measure != space else {}),
            "expected": effect.to_dict(),
            "pixels": pixels.to_dict(),
            "ratio_at_weights": {f"{w:g}": rounded(r) for w, r in search.tried.items()},
            "texture_score": rounded(texture_score),
            "tried": rounded_rows(tried),
        }
        return AttributeGuidance(search.weight, band, search.status, figures), tried


@dataclass(frozen=True)
class BandOutcome:
    """One candidate guidance interval of an attribute, searched.

    Attributes:
        band: the interval (None: every step).
        search: the weight search in it.
        texture_score: the texture score at the weight found (1: real images' fine texture; NaN: not measured).
        measure: the ratio the search matched (``pixel_ratio`` or ``shift_ratio``).
        evaluations: network evaluations per image of a decode at that weight (its cost; 0 when it made no image).
    """

    band: tuple[float, float] | None
    search: WeightSearch
    texture_score: float
    measure: str
    evaluations: int


def choose_band(outcomes: Sequence[BandOutcome], texture_tolerance: float) -> BandOutcome:
    """The guidance interval an attribute keeps: of the bands whose search matched (all, if none did), those whose
    texture score is within ``texture_tolerance`` of the best one's distance from 1; of those the cheapest (fewest
    network evaluations per decode), then the one with the better texture.

    Args:
        outcomes: the searched candidates, in the order tried.
        texture_tolerance: how much further from 1 a texture score may be and still count as equal.

    Returns:
        The chosen outcome.
    """

    def distance(outcome: BandOutcome) -> float:
        return abs(outcome.texture_score - 1) if math.isfinite(outcome.texture_score) else math.inf

    matched = [o for o in outcomes if o.search.status == "matched"] or list(outcomes)
    best = min(distance(o) for o in matched)
    equal = [o for o in matched if distance(o) <= best + texture_tolerance] if math.isfinite(best) else matched
    return min(equal, key=lambda o: (o.evaluations or math.inf, distance(o)))  # 0: nothing was decoded


def rounded(value: float | None) -> float | None:
    """A figure of the plan or calibration.csv: 4 decimals, or None where it is not finite.

    Args:
        value: the figure.

    Returns:
        The rounded figure or None.
    """
    return finite_or_none(value, digits=4)


def rounded_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with every float :func:`rounded`.

    Args:
        rows: rows of calibration.csv.

    Returns:
        The rows, copied.
    """
    return [{key: rounded(value) if isinstance(value, float) else value for key, value in row.items()} for row in rows]


def descendants_first(schema: AttributeSchema, names: Sequence[str]) -> list[str]:
    """``names`` ordered so that an attribute comes after every descendant of it (deepest first, then schema order).

    Args:
        schema: the attributes (their parents give the depth).
        names: the attributes to order.

    Returns:
        The names, descendants first.
    """

    def depth(name: str) -> int:
        parents = schema[name].parents
        return 0 if not parents else 1 + max(depth(p) for p in parents)

    return sorted(names, key=lambda n: (-depth(n), schema.names.index(n)))
