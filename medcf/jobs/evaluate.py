"""The evaluate job: how sound are the counterfactuals, per intervention, guidance setting and seed?

    held-out images (prepared once) -> counterfactual core (one abduction per seed, every setting and
    intervention decoded from the same latents) -> predictors + metrics -> metrics.csv, metrics.json, plots
    -> one MLflow run

For each seed, ``images_per_seed`` images are drawn from the held-out set. For each guidance setting and
intervention a row of metrics.csv holds (definitions: ../shared/reference/evaluation.md and the modules named):

- effectiveness (:func:`medcf.measure.metrics.effectiveness`): accuracy of the intervened categorical
  attribute (``effectiveness_metric`` = accuracy) or MAE in years of age (mae); ``auroc`` where defined;
- off_target: mean absolute change of the predicted probability of each image's own value of every
  attribute that is neither intervened nor a descendant (``off_target_signed``: its signed mean), averaged
  over those attributes; per attribute in ``off_target.<attribute>`` (age in years). The same for the
  null-intervention reconstruction under the same guidance (``off_target_null``, the control: what decoding
  alone moves) and from that reconstruction to the counterfactual (``off_target_vs_null``: what the
  intervention moves);
- composition_1 / composition_10: L1 (0-255) to the source after 1 and 10 null-intervention cycles
  (``composition_ssim_*``: SSIM), on the first ``composition_images`` images of the seed;
- reversibility: L1 (0-255) to the source after do(a') and back to the factual attributes;
- minimality (:func:`medcf.measure.metrics.minimality`) and fid (FID on the predictors' features against
  every held-out image);
- on a phantom data set (``phantom_truth.csv`` beside the images): truth_error, target_ratio and
  truth_off_target (:mod:`medcf.measure.ground_truth`), with change = counterfactual - null-intervention
  reconstruction under the same guidance; truth_off_target_source: the same off-target error with change =
  counterfactual - source image (what a viewer sees: drift of decoding and amplification included); and, per
  image against the phantom's exact counterfactual (:mod:`medcf.measure.ground_truth`), exact_target_ratio
  (1 = right size, > 1 overshoot), exact_off_target (movement along each image's own unit effect of the
  untouched attributes, relative to the true change's size), texture_ratio (fine texture of the counterfactual
  against the exact one, relative to what decoding keeps: well below 1 = washed out) and mean_abs_change (mean
  |change| on [-1, 1]: what counts for an attribute whose true effect is zero), all four with change =
  counterfactual - the image's ``do()`` output (what inference writes for ``do()``);
- reconstruction_mae: mean |do() output - source| on [-1, 1] (the round trip through the product).

Settings, interventions, model and predictors are all checked before any image is read.

Under torchrun with ``multi_gpu_evaluate.yaml`` each process abducts, decodes and scores with the predictors its
share of every seed's images (every N-th, :class:`medcf.runtime.distributed.Shard`); rank 0 puts the shares back
together in the order of the seed's images, computes the metrics and alone writes the outputs and the MLflow
run. DDIM inversion and decoding draw no noise and a seed's images are drawn by the seed alone, so the rows are
a single process's up to float rounding.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from medcf.core.attributes import AttributeSchema, AttributeValue
from medcf.core.engine import CounterfactualBatch, CounterfactualEngine
from medcf.core.guidance_plan import plan_if_used
from medcf.core.guidance_settings import GuidanceSettings, guidance_label, guidance_settings_from, short_value
from medcf.core.interventions import Intervention
from medcf.jobs.context import JobContext
from medcf.jobs.evaluation_plots import save_study_plots
from medcf.jobs.loading import load_model, parse_interventions
from medcf.jobs.phantom_sets import MeasuredData, measured_data
from medcf.measure import ground_truth, metrics
from medcf.measure.evaluation_set import EvaluationSet, TrueChanges, load_evaluation_set
from medcf.measure.phantom_truth import PhantomTruth
from medcf.measure.predictors import AttributePredictor, load_predictors, predict_all
from medcf.prepare.base import Preparer
from medcf.runtime.distributed import Shard
from medcf.runtime.files import file_sha256, write_csv_atomic, write_json_atomic
from medcf.runtime.tracking import flatten

METRICS_CSV, METRICS_JSON, PLOTS = "metrics.csv", "metrics.json", "plots"


@dataclass
class EvaluationRun:
    """Measure a model's counterfactuals on held-out images (see the module docstring).

    Args:
        output_dir: where metrics.csv, metrics.json and plots/ go (rewritten by each run).
        model_path, graph_path: the counterfactual model and its causal graph.
        predictors_path: the attribute predictors (``models/predictors.pt``).
        preparer: the preparation the model was trained with.
        phantom_kind: ``cxr`` or ``mammo``: the ground truth a ``phantom_truth.csv`` must be for.
        dataset_dir, labels: held-out DICOM files and their cohort table (default ``DATASET_DIR/cohort.csv``;
            :func:`medcf.jobs.phantom_sets.measured_data`); with ``dataset_dir`` None, a
            held-out phantom export of ``heldout_subjects`` subjects (phantom seed ``heldout_seed``, never a
            training seed) is made once in ``output_dir/heldout_data`` and used with its ground truth.
        interventions: e.g. ``["do(sex=F)", "do(age=+20)"]``.
        guidance_settings: entries like ``{mode: dcfg, w_aff: 3, w_inv: 1}`` (GuidanceSettings fields), or
            ``{mode: calibrated}``: the guidance plan at ``guidance_plan``.
        guidance_plan: the bundle's calibrated guidance plan (read when an entry has mode calibrated).
        steps: DDIM steps of every setting.
        seeds: one row per seed; each seed draws its own ``images_per_seed`` images.
        composition_images, composition_cycles: the null-intervention cycles (0 images: skipped).
        reversibility: also decode each counterfactual back to its factual attributes.
        schema: the bundle's attributes; a model or predictors for others are refused.
        device: where the model and predictors run (``auto``: CUDA when present, else the CPU); metrics are
            computed on the CPU.
    """

    output_dir: str | Path
    model_path: str | Path
    graph_path: str | Path
    predictors_path: str | Path
    preparer: Preparer
    phantom_kind: str
    dataset_dir: str | Path | None
    labels: str | Path | None
    interventions: Sequence[str] | str
    guidance_settings: Sequence[Mapping[str, Any]]
    heldout_subjects: int = 24
    heldout_seed: int = 1000
    guidance_plan: str | Path | None = None
    steps: int = 25
    seeds: Sequence[int] = (0,)
    images_per_seed: int = 16
    composition_images: int = 4
    composition_cycles: int = 10
    reversibility: bool = True
    schema: AttributeSchema | None = None
    experiment: str = "medcf-evaluate"
    progress: bool = True
    device: str | torch.device = "auto"
    _timing: dict[str, float] = field(default_factory=dict, repr=False)

    @property
    def metrics_path(self) -> Path:
        """Where the run writes its metrics table (``output_dir/metrics.csv``)."""
        return Path(self.output_dir) / METRICS_CSV

    def run(self) -> dict[str, Any]:
        """Measure every intervention under every guidance setting on each seed's held-out images.

        Returns:
            On rank 0 what ``metrics.json`` holds (model and predictor hashes, settings, summary, rows, seconds);
            ``{}`` on the other ranks.
        """
        job = JobContext("evaluate", self.output_dir, self.experiment)
        shard, output_dir = job.shard, job.output_dir
        loaded = load_model(self.model_path, self.graph_path, self.preparer, self.schema, job.device(self.device))
        device, schema = loaded.device, loaded.model.schema
        predictor = load_predictors(self.predictors_path, expected_schema=schema).to(device).eval()
        interventions = parse_interventions(schema, self.interventions)
        plan = plan_if_used(self.guidance_settings, self.guidance_plan, schema, loaded.sha256)
        settings = guidance_settings_from(self.guidance_settings, self.steps, plan=plan)
        engines = [CounterfactualEngine(loaded.model, loaded.diffusion, loaded.graph, s) for s in settings]
        self._check_numbers()
        with job.folder():
            data = shard.once(lambda: self._data(output_dir))  # a held-out set is written once
            truth = PhantomTruth.find(data.dataset_dir, schema, self.phantom_kind)
            pool = load_evaluation_set(data.dataset_dir, data.labels, self.preparer, schema)
            ground_truth_tag = "phantom" if truth else "none"
            with job.tracked("evaluate", device, loaded.lineage_tags(), ground_truth=ground_truth_tag):
                measure = _Measurements(schema, predictor, pool, truth, self.preparer) if shard.main else None
                rows = []
                total = len(self.seeds) * len(engines)
                quiet = not (self.progress and shard.main)  # one bar per job: rank 0's share
                with tqdm(total=total, desc="evaluate", unit="setting", disable=quiet) as bar:
                    for seed in self.seeds:
                        chosen = pool.draw(self.images_per_seed, seed)
                        rows.extend(self._seed(seed, chosen, engines, interventions, predictor, measure, shard, bar))
                if measure is None:
                    return {}  # rank 0 measured the rows and writes the outputs
                table = pd.DataFrame(rows)
                result = self._save(output_dir, table, pool, truth, loaded.sha256, job.seconds)
        print(summary_text(table))
        print(f"{len(table)} rows in {result['seconds']:.0f} s -> {output_dir / METRICS_CSV}")
        return result

    def _data(self, output_dir: Path) -> MeasuredData:
        """The held-out folder and cohort table: the given ones, or a held-out phantom export made once."""
        size = getattr(self.preparer, "image_size", 64)
        return measured_data(
            self.dataset_dir, self.labels, output_dir / "heldout_data", self.phantom_kind, self.heldout_subjects,
            size, self.heldout_seed,
        )  # fmt: skip

    def make_heldout_set(self, folder: Path) -> tuple[Path, Path]:
        """A held-out phantom export of ``heldout_subjects`` subjects (seed ``heldout_seed``) with its cohort
        table, made once in ``folder`` at twice the model's size, as the training sets are.

        Args:
            folder: where the set is made (once).

        Returns:
            The export folder and its cohort table.
        """
        size = getattr(self.preparer, "image_size", 64)
        data = measured_data(None, None, folder, self.phantom_kind, self.heldout_subjects, size, self.heldout_seed)
        return data.dataset_dir, data.labels

    def _check_numbers(self) -> None:
        for name in ("steps", "images_per_seed", "composition_cycles", "heldout_subjects"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: {value!r} must be an integer >= 1")
        if not isinstance(self.composition_images, int) or self.composition_images < 0:
            raise ValueError(f"composition_images: {self.composition_images!r} must be an integer >= 0")
        seeds = [self.seeds] if isinstance(self.seeds, int) else list(self.seeds)
        if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
            raise ValueError(f"seeds: {self.seeds!r} must be a list of integers >= 0")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds: {self.seeds!r} repeats a seed")
        self.seeds = seeds

    def _seed(
        self,
        seed: int,
        chosen: EvaluationSet,
        engines: list[CounterfactualEngine],
        interventions: list[Intervention],
        predictor: AttributePredictor,
        measure: _Measurements | None,
        shard: Shard,
        bar: tqdm,
    ) -> list[dict[str, Any]]:
        """Every setting x intervention on one seed's images, from one abduction. Each process decodes its share of
        the images (every ``world``-th); rank 0 (``measure`` given) joins the shares and measures the rows, the
        other ranks return none."""
        share = shard.pick(range(len(chosen)))
        mine = chosen.subset(share)
        latents = engines[0].abduct(mine.images, mine.factual) if share else None
        context = measure.context(chosen) if measure is not None else {}
        rows = []
        for engine in engines:
            shares = shard.gather(self._decode(engine, mine, share, latents, interventions, predictor))
            if measure is not None:
                decoded = _Decoded.joined(shares)
                rows.extend(self._rows(seed, engine, interventions, decoded, measure, context))
            bar.update()
        return rows

    def _decode(
        self,
        engine: CounterfactualEngine,
        mine: EvaluationSet,
        share: list[int],
        latents: torch.Tensor | None,
        interventions: list[Intervention],
        predictor: AttributePredictor,
    ) -> _Decoded:
        """One setting on this process's images (``mine``, at positions ``share`` of the seed's set, abducted to
        ``latents``): the composition cycles of those among the first ``composition_images``, and per intervention
        the counterfactuals, their null-intervention reference, the way back and what the predictors read."""
        cycled = [position for position in share if position < self.composition_images]
        composition = self._composition(engine, mine, latents, len(cycled))
        made: dict[str, _Made] = {}
        references = engine.references(latents, mine.factual) if latents is not None else None
        for intervention in interventions:
            started = time.perf_counter()
            if latents is None:  # no image in this share
                made[intervention.text] = _Made([], [], rejected=0, network_evaluations=0)
                continue
            batch = _on_cpu(engine.predict(latents, mine.factual, intervention))
            found = _Made(
                [share[k] for k in batch.made], batch.attributes, len(batch.rejected), batch.network_evaluations
            )
            if batch.made:
                found.images = batch.images
                found.reference = references(batch.affected)[batch.made]  # the same guidance's reference
                found.null_output = references(set())[batch.made]  # the do() output, as inference makes it
                found.back = self._reversed(engine, batch, mine) if self.reversibility else None
                found.after = predict_all(predictor, batch.images)
                found.reconstructed = predict_all(predictor, found.reference)
                found.features = _features(predictor, batch.images)
            found.seconds = time.perf_counter() - started
            made[intervention.text] = found
        return _Decoded(cycled, composition, made)

    def _rows(
        self,
        seed: int,
        engine: CounterfactualEngine,
        interventions: list[Intervention],
        decoded: _Decoded,
        measure: _Measurements,
        context: Mapping[str, Any],
    ) -> list[dict[str, Any]]:
        """The rows of one setting on one seed's images (``seconds``: decoding, summed over the processes, and
        measuring)."""
        label = guidance_label(engine.settings)
        composition = {name: float(values.mean()) for name, values in decoded.composition.items()}
        rows = []
        for intervention in interventions:
            started = time.perf_counter()
            made = decoded.made[intervention.text]
            row: dict[str, Any] = {
                "intervention": intervention.text,
                "guidance": label,
                **_setting_columns(engine.settings),
                "seed": seed,
                "images": len(made.positions),
                "rejected": made.rejected,
                **composition,
            }
            if made.positions:
                row.update(measure.row(context, intervention, made, engine.graph.affected(intervention.names)))
            row["network_evaluations_per_image"] = made.network_evaluations
            row["seconds"] = round(made.seconds + time.perf_counter() - started, 2)
            rows.append(row)
        return rows

    def _composition(
        self, engine: CounterfactualEngine, chosen: EvaluationSet, latents: torch.Tensor | None, count: int
    ) -> dict[str, torch.Tensor]:
        """Per image of the first ``count``: L1 (0-255) and SSIM to its source after 1 and ``composition_cycles``
        null-intervention cycles."""
        if count == 0 or latents is None:
            return {}
        sources, factual = chosen.images[:count], chosen.factual[:count]
        images, found = sources, {}
        for cycle in range(1, self.composition_cycles + 1):
            cycle_latents = latents[:count] if cycle == 1 else engine.abduct(images, factual)
            images = engine.reconstruct(cycle_latents, factual, set()).cpu()
            if cycle in (1, self.composition_cycles):
                found[f"composition_{cycle}"] = metrics.l1_255(images, sources)
                found[f"composition_ssim_{cycle}"] = metrics.ssim(images, sources)
        return found

    @staticmethod
    def _reversed(engine: CounterfactualEngine, batch: Any, chosen: EvaluationSet) -> torch.Tensor:
        """The counterfactuals abducted under their own attributes and decoded back under the factual ones."""
        factual = [chosen.factual[p] for p in batch.made]
        return engine.reconstruct(engine.abduct(batch.images, batch.attributes), factual, batch.affected).cpu()

    def _save(
        self,
        output_dir: Path,
        table: pd.DataFrame,
        pool: EvaluationSet,
        truth: PhantomTruth | None,
        model_sha256: str,
        seconds: float,
    ) -> dict[str, Any]:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_csv_atomic(output_dir / METRICS_CSV, table)
        plots = save_study_plots(table, output_dir / PLOTS)
        reasons: dict[str, int] = {}
        for reason in pool.rejected.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        result = {
            "model_sha256": model_sha256,
            "predictors_sha256": file_sha256(self.predictors_path),
            "ground_truth": "phantom" if truth else None,
            "held_out_images": len(pool),
            "files_refused": reasons,  # reasons only: source paths may hold identifiers
            "settings": {
                "interventions": list(self.interventions)
                if not isinstance(self.interventions, str)
                else [self.interventions],
                "guidance_settings": [dict(entry) for entry in self.guidance_settings],
                "steps": self.steps,
                "seeds": list(self.seeds),
                "images_per_seed": self.images_per_seed,
                "composition_images": self.composition_images,
                "composition_cycles": self.composition_cycles,
                "reversibility": self.reversibility,
            },
            "summary": summary_records(table),
            "rows": table.to_dict("records"),
            "seconds": round(seconds, 1),
        }
        write_json_atomic(output_dir / METRICS_JSON, result)
        mlflow.log_params(flatten({k: result[k] for k in ("model_sha256", "predictors_sha256", "settings")}))
        mlflow.log_params({"held_out_images": len(pool), "ground_truth": result["ground_truth"] or "none"})
        for record in table.to_dict("records"):
            prefix = f"{_metric_key(record['intervention'])}.{_metric_key(record['guidance'])}"
            values = {
                f"{prefix}.{name}": float(value)
                for name, value in record.items()
                if isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
                and name not in ("seed",)
            }
            mlflow.log_metrics(values, step=int(record["seed"]))
        mlflow.log_metric("seconds_total", seconds)
        mlflow.log_artifact(str(output_dir / METRICS_CSV))
        mlflow.log_artifact(str(output_dir / METRICS_JSON))
        for plot in plots:
            mlflow.log_artifact(str(plot), artifact_path=PLOTS)
        return result


def _on_cpu(batch: CounterfactualBatch) -> CounterfactualBatch:
    """The batch with its images on the CPU, where the metrics and the ground truth are."""
    return replace(batch, images=batch.images.cpu())


def _setting_columns(settings: GuidanceSettings) -> dict[str, Any]:
    values = asdict(settings)
    columns = {"mode": settings.mode, "w": settings.weight, "w_aff": settings.w_aff, "w_inv": settings.w_inv}
    for name, value in values.items():
        if name in ("mode", "weight", "w_aff", "w_inv", "steps", "inversion_depth", "max_rows"):
            continue
        columns[name] = short_value(value) if isinstance(value, tuple | list | dict) else value
    if isinstance(values.get("per_attribute"), dict):
        columns["per_attribute"] = ",".join(f"{k}={v:g}" for k, v in sorted(values["per_attribute"].items()))
    return columns


def _metric_key(text: str) -> str:
    """MLflow allows letters, digits and _-./ and spaces in keys: ``do(sex=F)`` -> ``do_sex-F``."""
    out = []
    for char in text:
        out.append(char if char.isalnum() or char in "_-./ " else {"=": "-", "+": "p", ",": "_"}.get(char, "_"))
    return "".join(out).strip("_")


def _in_order(positions: Sequence[int], items: Sequence[Any]) -> list[Any]:
    """``items`` sorted by their ``positions`` (the processes' shares back in the order of the seed's images)."""
    return [item for _, item in sorted(zip(positions, items, strict=True), key=lambda pair: pair[0])]


def _joined(positions: Sequence[int], tensors: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    """The shares' per-image tensors as one, rows in the order of ``positions`` (None where one share has none)."""
    if not tensors or any(t is None for t in tensors):
        return None
    rows = [row for tensor in tensors for row in tensor]
    return torch.stack(_in_order(positions, rows))


@dataclass
class _Made:
    """One intervention's counterfactuals under one setting, for the images of the seed's set at ``positions``
    (one process's share, or every share joined): their attributes and images, the null-intervention
    ``reference`` (same guidance), the ``null_output`` (the ``do()`` output, as inference makes it), the way
    ``back`` (with reversibility), the predictors' outputs on the counterfactuals
    (``after``) and on the references (``reconstructed``), and their ``features`` (FID)."""

    positions: list[int]
    attributes: list[dict[str, AttributeValue]]
    rejected: int
    network_evaluations: int
    images: torch.Tensor | None = None
    reference: torch.Tensor | None = None
    null_output: torch.Tensor | None = None
    back: torch.Tensor | None = None
    after: dict[str, torch.Tensor] = field(default_factory=dict)
    reconstructed: dict[str, torch.Tensor] = field(default_factory=dict)
    features: torch.Tensor | None = None
    seconds: float = 0.0

    @classmethod
    def joined(cls, shares: Sequence[_Made]) -> _Made:
        """Every process's share as one, in the order of the seed's images."""
        filled = [share for share in shares if share.positions]
        positions = [k for share in filled for k in share.positions]

        def join(pick: Any) -> torch.Tensor | None:
            return _joined(positions, [pick(share) for share in filled])

        names = list(filled[0].after) if filled else []
        return cls(
            positions=sorted(positions),
            attributes=_in_order(positions, [a for share in filled for a in share.attributes]),
            rejected=sum(share.rejected for share in shares),
            network_evaluations=max(share.network_evaluations for share in shares),
            images=join(lambda share: share.images),
            reference=join(lambda share: share.reference),
            null_output=join(lambda share: share.null_output),
            back=join(lambda share: share.back),
            after={name: join(lambda share, n=name: share.after[n]) for name in names},
            reconstructed={name: join(lambda share, n=name: share.reconstructed[n]) for name in names},
            features=join(lambda share: share.features),
            seconds=sum(share.seconds for share in shares),
        )


@dataclass
class _Decoded:
    """One setting on a seed's images (one process's share, or every share joined): L1 and SSIM per image of the
    composition cycles (``cycled``: the positions of those images) and each intervention's counterfactuals."""

    cycled: list[int]
    composition: dict[str, torch.Tensor]
    made: dict[str, _Made]

    @classmethod
    def joined(cls, shares: Sequence[_Decoded]) -> _Decoded:
        """Every process's share as one, in the order of the seed's images."""
        cycled = [k for share in shares for k in share.cycled]
        names = next((list(share.composition) for share in shares if share.composition), [])
        composition = {
            name: _joined(cycled, [share.composition[name] for share in shares if share.cycled]) for name in names
        }
        made = {text: _Made.joined([share.made[text] for share in shares]) for text in shares[0].made}
        return cls(sorted(cycled), composition, made)


class _Measurements:
    """The predictors' view of the held-out set and, on phantoms, the true changes: computed once per seed."""

    def __init__(
        self,
        schema: AttributeSchema,
        predictor: AttributePredictor,
        pool: EvaluationSet,
        truth: PhantomTruth | None,
        preparer: Preparer,
    ) -> None:
        self.schema, self.predictor, self.pool, self.truth, self.preparer = schema, predictor, pool, truth, preparer
        self.real_features = _features(predictor, pool.images)

    def context(self, chosen: EvaluationSet) -> dict[str, Any]:
        context: dict[str, Any] = {"set": chosen, "factual_predictions": predict_all(self.predictor, chosen.images)}
        if self.truth is not None:
            changes = TrueChanges(self.truth, chosen, self.preparer)
            context["truth"], context["directions"] = changes, changes.directions()
            context["image_directions"] = changes.image_directions()
        return context

    def row(
        self, context: Mapping[str, Any], intervention: Intervention, made: _Made, affected: set[str]
    ) -> dict[str, Any]:
        """The metrics of one intervention's counterfactuals (``affected``: the intervened attributes and their
        descendants)."""
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
        context: Mapping[str, Any], intervention: Intervention, made: _Made, sources: torch.Tensor, untouched: list[str]
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
def _features(predictor: AttributePredictor, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The predictors' pooled features of ``images``, computed where the predictor is, returned on the CPU."""
    device = next(predictor.parameters()).device
    return torch.cat(
        [
            predictor.features(images[k : k + batch_size].float().to(device)).cpu()
            for k in range(0, len(images), batch_size)
        ]
    )


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
    "truth_error",
    "target_ratio",
    "truth_off_target",
    "truth_off_target_source",
    "exact_target_ratio",
    "exact_off_target",
    "texture_ratio",
    "mean_abs_change",
)


def summary_records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Mean and sd over seeds of the main columns, per intervention x guidance setting."""
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
    """The summary as an aligned text table for the terminal."""
    records = summary_records(table)
    if not records:
        return "no rows"
    frame = pd.DataFrame(records)
    shown = [c for c in ("intervention", "guidance", "seeds", *SUMMARY_COLUMNS) if c in frame.columns]
    return frame[shown].to_string(index=False, float_format=lambda v: f"{v:.3g}")
