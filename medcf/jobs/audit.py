"""The audit job: does a classifier's prediction change when only a protected attribute of the patient changes?

    prepared images -> counterfactual core (one abduction per image; every intervention and its
    null-intervention reconstruction decoded from the same latent) -> classifier p(x), p(x_cf), p(x_null)
    + attribute predictors (effectiveness gate) -> audit.csv, summary.json, report.html -> one MLflow run

An intervention only counts for images whose attribute it changes (do(sex=F) is audited on the male images);
``from`` and ``to`` name the direction (``M`` -> ``F``; for a shift of a continuous attribute ``observed`` ->
``+20``). The statistics are :mod:`medcf.measure.statistics`, the report per attribute
:mod:`medcf.measure.audit_summary`; the classifier is :mod:`medcf.measure.classifier`.
Everything that can be checked (model, predictors, classifier file, interventions, guidance settings) is
checked before any image is read. Sources and patients appear only as keyed pseudonyms.

Under torchrun with ``multi_gpu_audit.yaml`` each process abducts, decodes and scores (classifier and
predictors) every N-th chunk of ``batch_size`` images (:class:`medcf.runtime.distributed.Shard`); rank 0 puts the rows
back in the order of the chunks, computes the statistics and alone writes the outputs and the MLflow run: the
rows a single process writes, since decoding draws no noise and the chunks are the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from medcf.core.attributes import AttributeSchema
from medcf.core.engine import CounterfactualEngine
from medcf.core.guidance_plan import plan_if_used
from medcf.core.guidance_settings import GuidanceSettings, guidance_settings_from
from medcf.core.interventions import Intervention, parse_intervention
from medcf.jobs.audit_examples import ExampleKeeper, Triplet
from medcf.jobs.audit_report import render_report
from medcf.jobs.context import JobContext
from medcf.jobs.loading import load_model, parse_interventions
from medcf.jobs.phantom_sets import cohort_table, job_data
from medcf.measure.audit_summary import subgroup_rates, summarize, verdict_line
from medcf.measure.audited_moves import age_band, changes_image, recognised_moves, refuse_inapplicable, row_direction
from medcf.measure.classifier import AuditedClassifier, ClassifierSettings
from medcf.measure.evaluation_set import EvaluationSet, load_evaluation_set, patient_ids
from medcf.measure.predictors import AttributePredictor, load_predictors, predict_all
from medcf.outputs.pseudonyms import Pseudonyms
from medcf.prepare.base import Preparer
from medcf.runtime.distributed import Shard
from medcf.runtime.files import file_sha256, write_csv_atomic, write_json_atomic, write_text_atomic
from medcf.runtime.settings import require_integer
from medcf.runtime.tracking import flatten

AUDIT_CSV, SUMMARY_JSON, REPORT_HTML = "audit.csv", "summary.json", "report.html"
AUDIT_COLUMNS = [
    "source", "patient", "attribute", "from", "to", "p_factual", "p_counterfactual", "p_null", "flipped",
    "recognised",
]  # fmt: skip


@dataclass
class AuditRun:
    """Audit ``classifier`` with counterfactuals of the images under ``dataset_dir`` (see the module docstring).

    Args:
        output_dir: audit.csv, summary.json and report.html go here.
        classifier: a TorchScript file or a MONAI bundle folder; ``classifier_settings`` adapts it.
        model_path, graph_path, predictors_path, preparer, schema: the bundle's generator and instruments.
        dataset_dir, labels: the DICOM files and their cohort table (with a ``patient`` column; default
            ``dataset_dir/cohort.csv``); None: the held-out phantom set below.
        heldout_subjects: without ``dataset_dir``, audit a held-out phantom export of this many subjects (phantom
            seed ``heldout_seed``, never a training seed), made once in ``output_dir/heldout_data``.
        interventions: e.g. ``["do(sex=F)", "do(sex=M)", "do(age=+20)"]``.
        guidance: one guidance setting, e.g. ``{mode: dcfg, w_aff: 2, w_inv: 1}``, or ``{mode: calibrated}``: the
            plan at ``guidance_plan`` (the bundle's default); ``steps`` DDIM steps.
        inversion_refinements: fixed-point refinements per inversion step (0: plain DDIM inversion; see
            :class:`~medcf.core.guidance_settings.GuidanceSettings`).
        label_attribute, positive_value: the attribute the classifier predicts, for per-subgroup AUC / TPR / FPR
            (None: no labels).
        gate: the least effectiveness (predictors recognising the intervened value) for a verdict.
        resamples, seed: the patient bootstrap.
        examples: image triplets per attribute in the report.
        batch_size: images abducted, decoded and scored together (one chunk).
        phantom_kind: ``cxr`` or ``mammo``: the held-out phantom set made when ``dataset_dir`` is None.
        pseudonym_key: a file holding the secret of the keyed pseudonyms (default: generated once into
            ``output_dir/pseudonym.key``).
        device: where the model, the predictors and the classifier run: ``auto`` (CUDA when present), ``cpu``,
            ``cuda`` or ``cuda:N``.
        experiment: MLflow experiment name.
        progress: show a progress bar (rank 0's share of the work).
    """

    output_dir: str | Path
    classifier: str | Path
    classifier_settings: ClassifierSettings
    model_path: str | Path
    graph_path: str | Path
    predictors_path: str | Path
    preparer: Preparer
    dataset_dir: str | Path | None
    labels: str | Path | None
    interventions: Sequence[str] | str
    guidance: Mapping[str, Any]
    guidance_plan: str | Path | None = None
    steps: int = 50
    inversion_refinements: int = 1
    label_attribute: str | None = None
    positive_value: str | None = None
    gate: float = 0.8
    resamples: int = 2000
    seed: int = 0
    batch_size: int = 8
    examples: int = 2
    phantom_kind: str = "cxr"
    heldout_subjects: int = 0
    heldout_seed: int = 1000
    schema: AttributeSchema | None = None
    pseudonym_key: str | Path | None = None
    device: str | torch.device = "auto"
    experiment: str = "medcf-audit"
    progress: bool = True

    def __post_init__(self) -> None:
        require_integer("heldout_subjects", self.heldout_subjects, 0)
        if self.dataset_dir is None and not self.heldout_subjects:
            raise ValueError("dataset_dir: none given and heldout_subjects is 0; give one of them")
        if not 0 < self.gate <= 1:
            raise ValueError(f"gate: {self.gate!r} must lie in (0, 1]")
        for name in ("resamples", "batch_size", "steps"):
            require_integer(name, getattr(self, name), 1)
        require_integer("inversion_refinements", self.inversion_refinements, 0)

    def run(self) -> dict[str, Any]:
        """Audit the classifier: every intervention's counterfactuals against the ``do()`` control, per patient.

        Returns:
            On rank 0 the summary (verdicts, directions, subgroups, settings) and the output files; ``{}`` on the
            other ranks.

        Raises:
            ValueError: when a setting is refused before any image is read (e.g. ``do()`` among the
                interventions, a missing cohort table, an out-of-range ``gate`` or count, an unknown
                ``label_attribute`` or ``positive_value``, neither ``dataset_dir`` nor ``heldout_subjects``), an
                intervention changes none of the images, the cohort table has no patient for an image, or no
                counterfactual could be made.
        """
        job = JobContext("audit", self.output_dir, self.experiment)
        shard, output_dir = job.shard, job.output_dir
        loaded = load_model(self.model_path, self.graph_path, self.preparer, self.schema, job.device(self.device))
        device, schema = loaded.device, loaded.model.schema
        predictor = load_predictors(self.predictors_path, expected_schema=schema).to(device).eval()
        classifier = AuditedClassifier.load(self.classifier, self.classifier_settings, device)
        interventions = parse_interventions(schema, self.interventions)
        if any(i.is_null for i in interventions):
            raise ValueError("interventions: do() is the control the audit adds itself; name attributes to change")
        plan = plan_if_used(self.guidance, self.guidance_plan, schema, loaded.sha256)
        (settings,) = guidance_settings_from(
            [self.guidance], self.steps, plan=plan, inversion_refinements=self.inversion_refinements
        )
        job.note_precision(device, [settings.precision], "--guidance#precision bf16")
        engine = CounterfactualEngine(loaded.model, loaded.diffusion, loaded.graph, settings)
        self._check_settings(schema)
        with job.folder():
            data = shard.once(lambda: job_data(self, output_dir / "heldout_data"))  # a held-out set is written once
            pool = load_evaluation_set(data.dataset_dir, data.labels, self.preparer, schema)
            refuse_inapplicable(schema, interventions, pool.factual)
            pseudonyms = Pseudonyms.for_output(output_dir, self.pseudonym_key) if shard.main else None
            patients = shard.once(lambda: self._patients(pool, data.labels, pseudonyms))  # the key stays with rank 0
            with job.tracked("audit", device, loaded.lineage_tags()):
                # once per process (one classifier pass): the rows and the subgroup rates share it
                p_factual = classifier.probabilities(pool.images)
                measured = self._measure(engine, classifier, predictor, pool, patients, interventions, p_factual, shard)
                if measured is None:
                    return {}  # rank 0 computes the statistics and writes the outputs
                table, effectiveness, examples = measured
                table["source"] = [pseudonyms.image(source) for source in table["source"]]
                summary = summarize(
                    table, effectiveness, self.classifier_settings.threshold, self.gate, self.resamples, self.seed
                )
                audited = list(dict.fromkeys(i.names[0] for i in interventions))
                summary["subgroups"] = self._subgroups(schema, pool, p_factual, audited)
                summary["images"] = _images_record(pool, pseudonyms)
                summary["settings"] = self._settings_record(loaded.sha256, settings)
                result = self._save(output_dir, table, summary, examples, job.seconds)
        return result

    def _check_settings(self, schema: AttributeSchema) -> None:
        """The settings that need the model's attributes or the user's files (the others are checked when the job
        is made)."""
        if self.dataset_dir is not None:
            cohort_table(self.dataset_dir, self.labels)  # refused before any output
        if self.label_attribute is not None:
            if self.label_attribute not in schema.names:
                raise ValueError(f"label_attribute: {self.label_attribute!r} is not one of {list(schema.names)}")
            values = schema[self.label_attribute].values or ()
            if self.positive_value not in values:
                raise ValueError(f"positive_value: {self.positive_value!r} is not a value of {self.label_attribute}")

    def _patients(self, pool: EvaluationSet, labels: Path, pseudonyms: Pseudonyms | None) -> list[str]:
        """The keyed pseudonym of each image's patient (the bootstrap resamples patients)."""
        return [pseudonyms.patient(patient) for patient in patient_ids(pool.sources, labels)]

    def _measure(
        self,
        engine: CounterfactualEngine,
        classifier: AuditedClassifier,
        predictor: AttributePredictor,
        pool: EvaluationSet,
        patients: list[str],
        interventions: list[Intervention],
        p_factual: np.ndarray,
        shard: Shard,
    ) -> tuple[pd.DataFrame, dict[str, float], list[Triplet]] | None:
        """The rows, chunk by chunk of ``batch_size`` images: each process measures every ``world``-th chunk, rank 0
        gets the rows in the order of the chunks, the effectiveness per attribute and the report's examples of
        every process (the other ranks get None)."""
        starts = shard.pick(range(0, len(pool), self.batch_size))
        chunks, examples = [], ExampleKeeper(self.examples)
        quiet = not (self.progress and shard.main)  # one bar per job: rank 0's share
        with tqdm(total=len(starts) * len(interventions), desc="audit", disable=quiet) as bar:
            for start in starts:
                rows = self._chunk(
                    start, engine, classifier, predictor, pool, patients, interventions, p_factual, examples, bar
                )
                chunks.append((start, rows))
        gathered = shard.gather((chunks, examples.kept))
        if not shard.main:
            return None
        ordered = sorted((chunk for found, _ in gathered for chunk in found), key=lambda chunk: chunk[0])
        table = pd.DataFrame(
            [row for _, rows in ordered for row in rows], columns=[c for c in AUDIT_COLUMNS if c != "flipped"]
        )
        if table.empty:
            raise ValueError(
                f"audit: no counterfactual could be made for any of the {len(pool)} images under "
                f"{', '.join(i.text for i in interventions)}; nothing to report"
            )
        threshold = self.classifier_settings.threshold
        table["flipped"] = (table["p_factual"] >= threshold) != (table["p_counterfactual"] >= threshold)
        effectiveness = table.groupby("attribute", sort=False)["recognised"].mean().astype(float).to_dict()
        every = ExampleKeeper(self.examples)
        for order, triplet in sorted((entry for _, kept in gathered for entry in kept), key=lambda entry: entry[0]):
            every.add(order, triplet)
        return table, effectiveness, every.triplets

    def _chunk(
        self,
        start: int,
        engine: CounterfactualEngine,
        classifier: AuditedClassifier,
        predictor: AttributePredictor,
        pool: EvaluationSet,
        patients: list[str],
        interventions: list[Intervention],
        p_factual: np.ndarray,
        examples: ExampleKeeper,
        bar: tqdm,
    ) -> list[dict[str, Any]]:
        """The rows of the ``batch_size`` images from position ``start`` of the pool (one abduction), every
        intervention after the other; their examples go to ``examples``."""
        schema = engine.model.schema
        rows: list[dict[str, Any]] = []
        chunk = pool.subset(range(start, min(start + self.batch_size, len(pool))))
        latents = engine.abduct(chunk.images, chunk.factual)
        predicted_factual = predict_all(predictor, chunk.images)
        references = engine.references(latents, chunk.factual)
        p_null: dict[str, np.ndarray] = {}  # per guidance plan: the classifier reads each reference once
        for intervention in interventions:
            changed = [
                k for k, attributes in enumerate(chunk.factual) if changes_image(schema, intervention, attributes)
            ]
            for decoded, positions in self._holding_the_label(engine, intervention, chunk, changed):
                batch = engine.predict(latents[positions], [chunk.factual[k] for k in positions], decoded)
                made = [positions[k] for k in batch.made]
                keys = [plan.describe() for plan in batch.image_plans]
                for key, chosen in zip(keys, batch.image_affected, strict=True):
                    if key not in p_null:  # one null reconstruction per guidance plan and chunk
                        p_null[key] = classifier.probabilities(references(set(chosen)))
                p_cf = classifier.probabilities(batch.images.cpu())
                after = predict_all(predictor, batch.images.cpu())
                before = {name: values[made] for name, values in predicted_factual.items()}
                name = intervention.names[0]
                factual = [chunk.factual[k] for k in made]
                recognised = recognised_moves(schema, name, before, after, batch.attributes, factual)
                for j, k in enumerate(made):
                    source_value, target_value = row_direction(intervention, chunk.factual[k])
                    delta = float(p_cf[j] - p_factual[start + k])
                    direction = f"{source_value} -> {target_value}"
                    triplet = Triplet(
                        name, direction, delta, chunk.images[k][0].cpu().numpy(), batch.images[j][0].cpu().numpy()
                    )
                    examples.add((start, len(rows)), triplet)
                    rows.append({
                        "source": chunk.sources[k], "patient": patients[start + k], "attribute": name,
                        "from": source_value, "to": target_value, "p_factual": float(p_factual[start + k]),
                        "p_counterfactual": float(p_cf[j]), "p_null": float(p_null[keys[j]][k]),
                        "recognised": bool(recognised[j]),
                    })  # fmt: skip
            bar.update()
        return rows

    def _holding_the_label(
        self, engine: CounterfactualEngine, intervention: Intervention, chunk: EvaluationSet, positions: list[int]
    ) -> list[tuple[Intervention, list[int]]]:
        """The intervention as decoded, with the images it applies to. When the classifier's label is a causal
        descendant of the intervened attribute (disease of age), it is held at each image's own value, so that
        the audit asks what the classifier does when only the protected attribute changes."""
        label = self.label_attribute
        if not positions or label is None or label in intervention.names:
            return [(intervention, positions)] if positions else []
        if label not in engine.graph.affected(intervention.names):
            return [(intervention, positions)]
        schema = engine.model.schema
        groups: dict[str, list[int]] = {}
        for k in positions:
            groups.setdefault(str(chunk.factual[k][label]), []).append(k)
        held = []
        for value, members in groups.items():
            text = f"{intervention.text[:-1]}, {label}={value})"
            held.append((parse_intervention(schema, text), members))
        return held

    def _subgroups(
        self, schema: AttributeSchema, pool: EvaluationSet, scores: np.ndarray, audited: list[str]
    ) -> dict[str, Any]:
        """Per audited attribute: AUC, TPR and FPR of the classifier on the factual images, per subgroup (a
        continuous attribute in bands of 20), at the one global threshold."""
        if self.label_attribute is None:
            return {}
        labels = np.array([row[self.label_attribute] == self.positive_value for row in pool.factual])
        found = {}
        for name in audited:
            if schema[name].kind == "continuous":
                groups = [age_band(float(row[name])) for row in pool.factual]
            else:
                groups = [str(row[name]) for row in pool.factual]
            rates = subgroup_rates(scores, labels, groups, self.classifier_settings.threshold)
            found[name] = sorted(rates.reset_index().to_dict("records"), key=lambda record: str(record["group"]))
        return found

    def _settings_record(self, model_sha256: str, settings: GuidanceSettings) -> dict[str, Any]:
        guidance = dict(self.guidance)
        if settings.plan:  # what the plan resolved to, and which plan
            guidance.update(plan=settings.plan, per_attribute=dict(settings.per_attribute), w_inv=settings.w_inv)
        return {
            "model_sha256": model_sha256,
            "classifier_sha256": file_sha256(_classifier_file(Path(self.classifier))),
            "interventions": [self.interventions] if isinstance(self.interventions, str) else list(self.interventions),
            "guidance": guidance,
            "steps": self.steps,
            "inversion_refinements": self.inversion_refinements,
            "threshold": self.classifier_settings.threshold,
            "gate": self.gate,
            "resamples": self.resamples,
            "seed": self.seed,
        }

    def _save(
        self, output_dir: Path, table: pd.DataFrame, summary: dict[str, Any], examples: list[Triplet], seconds: float
    ) -> dict[str, Any]:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_csv_atomic(output_dir / AUDIT_CSV, table[AUDIT_COLUMNS])
        summary["seconds"] = round(seconds, 1)
        write_json_atomic(output_dir / SUMMARY_JSON, summary)
        write_text_atomic(output_dir / REPORT_HTML, render_report(table, summary, examples))
        mlflow.log_params(flatten(summary["settings"]))
        for name, found in summary["attributes"].items():
            mlflow.log_metric(f"{name}.effectiveness", found["effectiveness"])
            if np.isfinite(found["detectable_effect"]):
                mlflow.log_metric(f"{name}.detectable_effect", found["detectable_effect"])
            for direction in found["directions"]:
                prefix = f"{name}.{direction['from']}-{direction['to']}".replace("+", "p")
                mlflow.log_metrics({
                    f"{prefix}.delta_p_corrected": direction["delta_p_corrected"],
                    f"{prefix}.flip_rate": direction["flip_rate"],
                    f"{prefix}.patients": direction["patients"],
                })  # fmt: skip
            mlflow.set_tag(f"medcf.verdict.{name}", found["verdict"])
        for artifact in (AUDIT_CSV, SUMMARY_JSON, REPORT_HTML):
            mlflow.log_artifact(str(output_dir / artifact))
        verdicts = "; ".join(verdict_line(name, found) for name, found in summary["attributes"].items())
        print(f"{len(table)} rows in {summary['seconds']:.0f} s -> {output_dir / REPORT_HTML} ({verdicts})")
        return summary


def _classifier_file(classifier: Path) -> Path:
    """The file that holds the classifier's weights: the TorchScript file, or a bundle folder's models/model.pt."""
    return classifier / "models" / "model.pt" if classifier.is_dir() else classifier


def _images_record(pool: EvaluationSet, pseudonyms: Pseudonyms) -> dict[str, Any]:
    """How many images the audit used, and every rejected one (as a pseudonym) with its reason."""
    rejected = [{"source": pseudonyms.image(source), "reason": reason} for source, reason in pool.rejected.items()]
    return {"audited": len(pool), "rejected": rejected}
