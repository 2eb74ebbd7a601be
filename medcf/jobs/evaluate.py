"""The evaluate job: how sound are the counterfactuals, per intervention, guidance setting and seed?

    held-out images (prepared once) -> counterfactual core (one abduction per seed, every setting and
    intervention decoded from the same latents) -> predictors + metrics -> metrics.csv, metrics.json, plots
    -> one MLflow run

For each seed, ``images_per_seed`` images are drawn from the held-out set. For each guidance setting and
intervention a row of metrics.csv holds (measured by :class:`medcf.measure.soundness.SoundnessMeasures`; definitions:
../shared/reference/evaluation.md and the modules named):

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
together in the order of the seed's images (:mod:`medcf.measure.decoded`), computes the metrics and alone writes
the outputs and the MLflow run. DDIM inversion and decoding draw no noise and a seed's images are drawn by the seed
alone, so the rows are a single process's up to float rounding.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch
from tqdm import tqdm

from medcf.core.attributes import AttributeSchema
from medcf.core.engine import CounterfactualBatch, CounterfactualEngine
from medcf.core.guidance_plan import plan_if_used
from medcf.core.guidance_settings import (
    SHARED_DECODING,
    GuidanceSettings,
    guidance_label,
    guidance_settings_from,
    short_value,
)
from medcf.core.interventions import Intervention
from medcf.jobs.context import JobContext
from medcf.jobs.evaluation_plots import save_study_plots
from medcf.jobs.loading import load_model, parse_interventions
from medcf.jobs.phantom_sets import heldout_phantom_set, job_data
from medcf.measure import metrics
from medcf.measure.decoded import DecodedSetting, MadeCounterfactuals
from medcf.measure.evaluation_set import EvaluationSet, load_evaluation_set
from medcf.measure.phantom_truth import PhantomTruth
from medcf.measure.predictors import AttributePredictor, load_predictors, predict_all
from medcf.measure.soundness import SoundnessMeasures, predictor_features, summary_records, summary_text
from medcf.prepare.base import Preparer
from medcf.runtime.distributed import Shard
from medcf.runtime.files import file_sha256, write_csv_atomic, write_json_atomic
from medcf.runtime.settings import require_integer
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
        inversion_refinements: fixed-point refinements per inversion step (0: plain DDIM inversion; see
            :class:`~medcf.core.guidance_settings.GuidanceSettings`).
        seeds: one row per seed; each seed draws its own ``images_per_seed`` images.
        composition_images, composition_cycles: the null-intervention cycles (0 images: skipped).
        reversibility: also decode each counterfactual back to its factual attributes.
        schema: the bundle's attributes; a model or predictors for others are refused.
        device: where the model and predictors run (``auto``: CUDA when present, else the CPU); metrics are
            computed on the CPU.
        experiment: MLflow experiment name.
        progress: show a progress bar (one step per seed and setting, rank 0's share).
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
    inversion_refinements: int = 1
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

    def __post_init__(self) -> None:
        for name in ("steps", "images_per_seed", "composition_cycles", "heldout_subjects"):
            require_integer(name, getattr(self, name), 1)
        require_integer("composition_images", self.composition_images, 0)
        require_integer("inversion_refinements", self.inversion_refinements, 0)
        seeds = [self.seeds] if isinstance(self.seeds, int) else list(self.seeds)
        if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
            raise ValueError(f"seeds: {self.seeds!r} must be a list of integers >= 0")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds: {self.seeds!r} repeats a seed")
        self.seeds = seeds

    @property
    def metrics_path(self) -> Path:
        """Where the run writes its metrics table (``output_dir/metrics.csv``)."""
        return Path(self.output_dir) / METRICS_CSV

    def run(self) -> dict[str, Any]:
        """Measure every intervention under every guidance setting on each seed's held-out images.

        Returns:
            On rank 0 what ``metrics.json`` holds (model and predictor hashes, settings, summary, rows, seconds);
            ``{}`` on the other ranks.

        Raises:
            ValueError: when a setting is refused before any image is read (e.g. a count below its minimum,
                ``seeds`` not distinct integers >= 0, an intervention or guidance setting the model cannot take).
        """
        job = JobContext("evaluate", self.output_dir, self.experiment)
        shard, output_dir = job.shard, job.output_dir
        loaded = load_model(self.model_path, self.graph_path, self.preparer, self.schema, job.device(self.device))
        device, schema = loaded.device, loaded.model.schema
        predictor = load_predictors(self.predictors_path, expected_schema=schema).to(device).eval()
        interventions = parse_interventions(schema, self.interventions)
        plan = plan_if_used(self.guidance_settings, self.guidance_plan, schema, loaded.sha256)
        settings = guidance_settings_from(
            self.guidance_settings, self.steps, plan=plan, inversion_refinements=self.inversion_refinements
        )
        job.note_precision(device, [s.precision for s in settings], "precision: bf16 in each guidance setting")
        engines = [CounterfactualEngine(loaded.model, loaded.diffusion, loaded.graph, s) for s in settings]
        with job.folder():
            data = shard.once(lambda: job_data(self, output_dir / "heldout_data"))  # a held-out set is written once
            truth = PhantomTruth.find(data.dataset_dir, schema, self.phantom_kind)
            pool = load_evaluation_set(data.dataset_dir, data.labels, self.preparer, schema)
            ground_truth_tag = "phantom" if truth else "none"
            with job.tracked("evaluate", device, loaded.lineage_tags(), ground_truth=ground_truth_tag):
                measure = SoundnessMeasures(schema, predictor, pool, truth, self.preparer) if shard.main else None
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

    def make_heldout_set(self, folder: Path) -> tuple[Path, Path]:
        """A held-out phantom export of ``heldout_subjects`` subjects (seed ``heldout_seed``) with its cohort
        table, made once in ``folder`` at twice the model's size, as the training sets are.

        Args:
            folder: where the set is made (once).

        Returns:
            The export folder and its cohort table.
        """
        size = getattr(self.preparer, "image_size", 64)
        return heldout_phantom_set(self.phantom_kind, folder, self.heldout_subjects, size, self.heldout_seed)

    def _seed(
        self,
        seed: int,
        chosen: EvaluationSet,
        engines: list[CounterfactualEngine],
        interventions: list[Intervention],
        predictor: AttributePredictor,
        measure: SoundnessMeasures | None,
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
                decoded = DecodedSetting.joined(shares)
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
    ) -> DecodedSetting:
        """One setting on this process's images (``mine``, at positions ``share`` of the seed's set, abducted to
        ``latents``): the composition cycles of those among the first ``composition_images``, and per intervention
        the counterfactuals, their null-intervention reference, the way back and what the predictors read."""
        cycled = [position for position in share if position < self.composition_images]
        composition = self._composition(engine, mine, latents, len(cycled))
        made: dict[str, MadeCounterfactuals] = {}
        references = engine.references(latents, mine.factual) if latents is not None else None
        for intervention in interventions:
            started = time.perf_counter()
            if latents is None:  # no image in this share
                made[intervention.text] = MadeCounterfactuals([], [], rejected=0, network_evaluations=0)
                continue
            batch = _on_cpu(engine.predict(latents, mine.factual, intervention))
            found = MadeCounterfactuals(
                [share[k] for k in batch.made], batch.attributes, len(batch.rejected), batch.network_evaluations
            )
            if batch.made:
                found.images = batch.images
                found.reference = references.of(batch)  # each image's reference under its own guidance
                found.null_output = references(set())[batch.made]  # the do() output, as inference makes it
                found.back = self._reversed(engine, batch, mine) if self.reversibility else None
                found.after = predict_all(predictor, batch.images)
                found.reconstructed = predict_all(predictor, found.reference)
                found.features = predictor_features(predictor, batch.images)
            found.seconds = time.perf_counter() - started
            made[intervention.text] = found
        return DecodedSetting(cycled, composition, made)

    def _rows(
        self,
        seed: int,
        engine: CounterfactualEngine,
        interventions: list[Intervention],
        decoded: DecodedSetting,
        measure: SoundnessMeasures,
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
                "inversion_refinements": self.inversion_refinements,
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
        if name in ("mode", "weight", "w_aff", "w_inv", "max_rows", "overrides") or name in SHARED_DECODING:
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
