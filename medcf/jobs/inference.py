"""The counterfactual inference job: DICOM files + labels -> counterfactual DICOMs, previews, a manifest and one
MLflow run.

A thin layer around the in-memory core; each image crosses each step once::

    preparation (medcf.prepare) -> counterfactual core (medcf.core.engine) -> writers (medcf.outputs.writers)
    -> run manifest (medcf.outputs.manifest) -> MLflow (medcf.runtime.tracking)

Everything that can be checked without an image (model file, schema, causal graph, interventions, guidance
settings, image size, pseudonym key) is checked before the first image is read. Output folder::

    OUT/<image>/<slug>.dcm|.png|_diff.png   per input and intervention (see medcf.outputs.writers); <image> is
                                            the input's keyed pseudonym (its source path with keep_identifiers)
    OUT/manifest.csv      one row per (image, intervention): status, reason, outputs, counterfactual attributes
                          and the fingerprint of the settings that made it
    OUT/source_key.csv    image -> source (path relative to dataset_dir) for every input, rejected ones too: the
                          only link back to the sources; never sent to MLflow
    OUT/pseudonym.key     the pseudonym key, when no pseudonym_key file is given
    OUT/inference.json    the folder's pseudonym key id, UID root and keep_identifiers
    OUT/grids/<time>/batch_NNN.png   factual | counterfactual and |difference| per intervention, one row per image
                          for the first GRID_ROWS images of each batch

A re-run skips rows made with the same settings and retries the rest; rows are recorded as they finish, so a
killed run loses at most the rows in flight, and its MLflow run is marked KILLED at the next start.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from medcf.core.attributes import AttributeSchema, AttributeValue, SchemaError
from medcf.core.engine import CounterfactualBatch, CounterfactualEngine
from medcf.core.guidance_settings import GuidanceSettings
from medcf.core.intensity import to_unit_scale
from medcf.core.interventions import Intervention
from medcf.jobs.context import JobContext
from medcf.jobs.inference_folder import (
    SOURCE_KEY,
    input_fingerprint,
    open_folder,
    settings_fingerprint,
    update_source_key,
)
from medcf.jobs.loading import LoadedModel, load_model, parse_interventions
from medcf.outputs.background import BackgroundWriter
from medcf.outputs.grids import counterfactual_grid
from medcf.outputs.manifest import MANIFEST, RunManifest
from medcf.outputs.pseudonyms import Pseudonyms
from medcf.outputs.writers import CounterfactualWriter, Drawn, SourceImage, output_folder
from medcf.prepare.base import PreparedImage, Preparer
from medcf.prepare.cohort import CohortIndex
from medcf.prepare.inputs import discover_inputs
from medcf.runtime.settings import require_integer
from medcf.runtime.tracking import flatten

GRID_ROWS = 8
"""Images shown in each batch's preview grid: matplotlib takes about 0.17 s a row, so a GPU batch of 64 drawn in
full (11 s) took longer than decoding it; the DICOM and PNG files of every image are written regardless."""
MADE_EARLIER = "made by an earlier run"
"""A grid cell's text for an intervention this run skipped (a column of only these is not drawn)."""


@dataclass
class _Pending:
    """A prepared input waiting for its batch."""

    item: SourceImage
    array: np.ndarray
    attributes: dict[str, AttributeValue]
    todo: list[Intervention]


@dataclass
class InferenceRun:
    """Counterfactuals for every DICOM file under ``dataset_dir`` (see the module docstring).

    Args:
        dataset_dir: folder of DICOM files (searched recursively).
        output_dir: where outputs and the manifest go (re-runs skip finished rows).
        model_path: medcf model file (bundle ``models/model.pt``), read weights-only.
        graph_path: fitted causal graph (``models/graph.json``).
        labels: cohort table with each file's factual attributes (``path`` relative to ``dataset_dir``).
        preparer: the preparation the model was trained with (its image size must match the model's).
        interventions: e.g. ``["do(sex=F)", "do(age=+20)"]`` (one string is one intervention).
        guidance: decoding settings (mode, weights, steps, inversion depth).
        keep_identifiers: copy patient identifiers into the counterfactual DICOMs, name output folders by
            source path and list the source in the manifest.
        nifti: also write NIfTI images (nibabel) for analysis tools.
        batch_size: images abducted and decoded together.
        experiment: MLflow experiment name.
        schema: the attributes the bundle expects; a model trained for other attributes is refused.
        pseudonym_key: a file holding the secret of the keyed pseudonyms and UIDs (default: generated once
            into ``output_dir/pseudonym.key``).
        uid_root: root of the generated DICOM UIDs (default ``2.25``, UUID-derived).
        progress: show a progress bar (rank 0's share of the inputs).
        workers: DataLoader worker processes that read and prepare the DICOM files while the model works
            (0: in this process).
        device: where the model, the stacked guidance batch and the sampler run: ``auto`` (CUDA when present),
            ``cpu``, ``cuda`` or ``cuda:N``. Preparation and writing stay on the CPU.
    """

    dataset_dir: str | Path
    output_dir: str | Path
    model_path: str | Path
    graph_path: str | Path
    labels: str | Path
    preparer: Preparer
    interventions: Sequence[str] | str
    guidance: GuidanceSettings = field(default_factory=GuidanceSettings)
    keep_identifiers: bool = False
    nifti: bool = False
    batch_size: int = 8
    experiment: str = "medcf-inference"
    progress: bool = True
    schema: AttributeSchema | None = None
    pseudonym_key: str | Path | None = None
    uid_root: str | None = None
    workers: int = 0
    device: str | torch.device = "auto"

    def __post_init__(self) -> None:
        require_integer("batch_size", self.batch_size, 1)
        require_integer("workers", self.workers, 0)

    def run(self) -> dict[str, Any]:
        """Make, write and record every counterfactual the folder does not hold yet.

        Returns:
            The run's figures on rank 0 (``counterfactuals``, ``rows_ok``, ``rows_rejected``, ``seconds_total``,
            network evaluations and device seconds per counterfactual); ``{}`` on the other ranks.

        Raises:
            ValueError: when a setting is refused before any image is read (e.g. ``batch_size`` or ``workers``
                out of range, an intervention the model cannot take), ``dataset_dir`` holds no input files, or the
                output folder was made with another pseudonym key or ``keep_identifiers``.
        """
        job = JobContext("inference", self.output_dir, self.experiment)
        shard, output_dir = job.shard, job.output_dir
        engine, interventions, loaded = self._checked_engine(job)
        model_sha256 = loaded.sha256
        dataset_dir = Path(self.dataset_dir)
        sources = discover_inputs(dataset_dir) if dataset_dir.is_dir() else []
        if not sources:
            raise ValueError(f"dataset_dir: no input files under {dataset_dir}")
        labels = CohortIndex.from_csv(self.labels)
        with job.folder():
            pseudonyms, manifest = open_folder(
                output_dir, shard, self.pseudonym_key, self.uid_root, self.keep_identifiers
            )
            images = {source: pseudonyms.image(source) for source in sources}
            if shard.main:
                update_source_key(output_dir / SOURCE_KEY, images)
            settings = settings_fingerprint(
                self.guidance, model_sha256, self.graph_path, self.preparer, self.keep_identifiers, self.nifti,
                pseudonyms.uid_root,
            )  # fmt: skip
            writer = CounterfactualWriter(output_dir, pseudonyms, settings, self.keep_identifiers, self.nifti)
            with manifest, job.tracked("counterfactuals", engine.model_device, loaded.lineage_tags()):
                if shard.main:
                    parameters = self._parameters(interventions, model_sha256, settings, len(sources), pseudonyms)
                    mlflow.log_params(flatten(parameters))
                work = _Job(self, engine, interventions, writer, manifest, settings, output_dir, shard.rank)
                work.process(shard.pick(sources), images, dataset_dir, labels)
                totals, grids = shard.gather(work.totals), shard.gather(work.grids)
                shard.barrier()  # every rank's rows are in its journal
                if not shard.main:
                    return {}
                manifest.collect()
                table = manifest.save()
                metrics = self._metrics(manifest, images, interventions, totals, job.seconds)
                mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
                mlflow.log_text(table.to_csv(index=False), MANIFEST)  # pseudonyms only, unless identifiers are kept
                for grid in (grid for rank_grids in grids for grid in rank_grids):
                    mlflow.log_artifact(str(grid), artifact_path="grids")
        print(
            f"{metrics['counterfactuals']} counterfactuals made, {metrics['rows_ok']} ok and "
            f"{metrics['rows_rejected']} rejected rows in {metrics['seconds_total']:.1f} s -> {output_dir / MANIFEST}"
        )
        return metrics

    def _parameters(
        self, interventions: list[Intervention], model_sha256: str, settings: str, inputs: int, pseudonyms: Pseudonyms
    ) -> dict[str, Any]:
        return {
            "interventions": [i.text for i in interventions],
            "guidance": asdict(self.guidance),
            "model_sha256": model_sha256,
            "model_file": str(self.model_path),
            "settings_fingerprint": settings,
            "images": inputs,
            "batch_size": self.batch_size,
            "keep_identifiers": self.keep_identifiers,
            "uid_root": pseudonyms.uid_root,
        }

    @staticmethod
    def _metrics(
        manifest: RunManifest,
        images: dict[str, str],
        interventions: list[Intervention],
        totals: list[dict[str, float]],
        seconds: float,
    ) -> dict[str, float]:
        """The run's figures, summed over the ranks' totals (seconds per counterfactual: device seconds)."""
        made = sum(t["made"] for t in totals)
        statuses = [(manifest.get(im, i.text) or {}).get("status") for im in images.values() for i in interventions]
        return {
            "counterfactuals": made,
            "rows_ok": statuses.count("ok"),
            "rows_rejected": statuses.count("rejected"),
            "seconds_total": seconds,
            "network_evaluations_per_counterfactual": sum(t["evaluations"] for t in totals) / made if made else 0.0,
            "seconds_per_counterfactual": sum(t["seconds"] for t in totals) / made if made else 0.0,
        }

    def _checked_engine(self, job: JobContext) -> tuple[CounterfactualEngine, list[Intervention], LoadedModel]:
        """Model, graph, interventions and settings, all checked before any image is read."""
        device = job.device(self.device)
        loaded = load_model(self.model_path, self.graph_path, self.preparer, self.schema, device)
        engine = CounterfactualEngine(loaded.model, loaded.diffusion, loaded.graph, self.guidance)
        interventions = parse_interventions(loaded.model.schema, self.interventions)
        job.note_precision(device, [self.guidance.precision], "--precision bf16")  # once the settings passed
        return engine, interventions, loaded


class _Job:
    """One run's loop: prepare, batch, generate, write, record."""

    def __init__(
        self,
        config: InferenceRun,
        engine: CounterfactualEngine,
        interventions: list[Intervention],
        writer: CounterfactualWriter,
        manifest: RunManifest,
        settings: str,
        output_dir: Path,
        rank: int = 0,
    ) -> None:
        self.config, self.engine, self.interventions, self.rank = config, engine, interventions, rank
        self.writer, self.manifest, self.settings, self.output_dir = writer, manifest, settings, output_dir
        self.grid_folder = output_dir / "grids" / time.strftime("%Y%m%d-%H%M%S")
        self.grid_prefix = "batch_" if rank == 0 else f"rank{rank}_batch_"  # the ranks of a sharded run share it
        self.grids: list[Path] = []
        self.totals = {"evaluations": 0, "made": 0, "seconds": 0.0}  # seconds: decoding, not writing
        self.inputs: dict[str, str] = {}  # image -> fingerprint of its file and cohort row
        self.output = BackgroundWriter(background=engine.model_device.type == "cuda")  # CPU: inline, see there

    def process(self, sources: list[str], images: dict[str, str], dataset_dir: Path, labels: CohortIndex) -> None:
        """Prepare (in DataLoader workers when ``workers`` > 0), batch, generate, write and record every
        intervention each source still needs; the figures add up in ``totals``. With the network on a GPU, writing
        (files, rows, grids) runs in a background thread (:class:`medcf.outputs.background.BackgroundWriter`), so
        the next batch is decoded while the last one is written; every row is recorded when this returns.

        Args:
            sources: this process's inputs, paths relative to ``dataset_dir``.
            images: source -> its keyed pseudonym (the manifest's ``image``), for every input of the job.
            dataset_dir: the folder of DICOM files.
            labels: the cohort table, with each file's factual attributes.
        """
        todo: dict[str, list[Intervention]] = {}
        for source in sources:
            image = images[source]
            self.inputs[image] = input_fingerprint(dataset_dir, source, labels)
            needed = [i for i in self.interventions if not self._is_made(self.manifest.get(image, i.text), image)]
            if needed:
                todo[source] = needed
        pending: list[_Pending] = []
        prepared = _Preparation(self.config.preparer, dataset_dir, labels, list(todo))
        loader = DataLoader(
            prepared, batch_size=None, num_workers=self.config.workers, collate_fn=_as_is, shuffle=False
        )
        quiet = not self.config.progress or self.rank > 0  # one bar per job: rank 0's share
        progress = tqdm(loader, total=len(prepared), desc="counterfactuals", disable=quiet)
        with self.output:  # writing runs in the background; leaving waits for it (also on an error)
            for source, outcome in progress:
                image = images[source]
                attributes: dict[str, AttributeValue] = {}
                if outcome.status == "ok":
                    try:  # the labels as the preparer checked them, then against the model's attribute ranges
                        names = self.engine.model.schema.names
                        attributes = self.engine.model.schema.validate({n: outcome.details.get(n) for n in names})
                    except (SchemaError, ValueError) as error:
                        outcome.status, outcome.reason = "rejected", f"labels: {error}"
                if outcome.status != "ok":
                    rows = [self._row(image, source, i, "rejected", outcome.reason) for i in todo[source]]
                    self.output.submit(self._record_all, rows)
                    continue
                item = SourceImage(image, source, outcome.header, outcome.geometry)
                pending.append(_Pending(item, outcome.array, attributes, todo[source]))
                if len(pending) == self.config.batch_size:
                    self._generate(pending)
                    pending = []
            if pending:
                self._generate(pending)

    def _is_made(self, row: dict[str, Any] | None, image: str) -> bool:
        """A row to skip: made with the current settings from the same file and labels, and its DICOM is there
        (rejected rows are retried)."""
        return (
            row is not None
            and row["status"] == "ok"
            and row.get("settings") == self.settings
            and row.get("input") == self.inputs[image]
            and (self.output_dir / row["dicom"]).is_file()
        )

    def _generate(self, batch: list[_Pending]) -> None:
        """Abduct a batch once and decode each intervention its images still need; the writing and recording go to
        the background writer, so the next batch decodes while this one is written."""
        started = time.perf_counter()
        images = torch.from_numpy(np.stack([p.array for p in batch]))
        factual = [p.attributes for p in batch]
        latents = self.engine.abduct(images, factual)
        self.totals["evaluations"] += len(batch) * len(self.engine.sampler.timesteps)
        factual_displays = [to_unit_scale(image) for image in images[:, 0].numpy()]
        drawn: dict[int, list[tuple[Drawn, dict[str, Any]]]] = defaultdict(list)
        not_made: dict[int, dict[str, str]] = defaultdict(dict)  # the grid prints the manifest's reason
        rejected: list[dict[str, Any]] = []
        for intervention in self.interventions:
            members = [k for k, p in enumerate(batch) if intervention in p.todo]
            if not members:
                continue
            result = self.engine.predict(latents[members], [factual[k] for k in members], intervention)
            self.totals["evaluations"] += result.network_evaluations * len(result.made)
            for position, reason in result.rejected.items():
                p = batch[members[position]]
                rejected.append(self._row(p.item.image, p.item.source, intervention, "rejected", reason))
                shown_reason = reason.removeprefix(f"{intervention.text}: ")  # the column's title says it
                not_made[members[position]][intervention.text] = f"not made: {shown_reason}"
            for j, position in enumerate(result.made):
                display = to_unit_scale(result.images[j, 0].cpu().numpy())
                shown = Drawn(intervention, display, self._describe(result, j))
                drawn[members[position]].append((shown, self._extra(result, j)))
        self.totals["seconds"] += time.perf_counter() - started
        self.output.submit(self._write, batch, factual_displays, drawn, not_made, rejected)

    def _record_all(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.manifest.record(row)

    def _write(
        self,
        batch: list[_Pending],
        factual_displays: list[np.ndarray],
        drawn: dict[int, list[tuple[Drawn, dict[str, Any]]]],
        not_made: dict[int, dict[str, str]],
        rejected: list[dict[str, Any]],
    ) -> None:
        """Write a decoded batch (in the background writer): every image's files, then its rows (a row is recorded
        once its files exist), then the batch's preview grid."""
        self._record_all(rejected)
        shown: dict[str, list[np.ndarray | str]] = {i.text: [] for i in self.interventions}
        factual_shown, labels = [], []
        for k, p in enumerate(batch):
            if not drawn[k]:
                continue  # every intervention was impossible for this image (rows recorded above)
            written = self.writer.write(p.item, factual_displays[k], [d for d, _ in drawn[k]])
            displays = {}
            for (counterfactual, extra), files, display in zip(drawn[k], written.files, written.displays, strict=True):
                row = self._row(p.item.image, p.item.source, counterfactual.intervention, "ok", "")
                self.manifest.record({**row, **files, **extra, **p.item.geometry.to_record()})
                displays[counterfactual.intervention.text] = display
            self.totals["made"] += len(drawn[k])
            if len(factual_shown) == GRID_ROWS:
                continue
            for text, column in shown.items():
                column.append(displays.get(text, not_made[k].get(text, MADE_EARLIER)))
            factual_shown.append(written.factual)
            labels.append(output_folder(p.item.source, p.item.image, self.config.keep_identifiers))
        shown = {text: column for text, column in shown.items() if any(c is not MADE_EARLIER for c in column)}
        if shown:
            grid = self.grid_folder / f"{self.grid_prefix}{len(self.grids):03d}.png"
            self.grids.append(counterfactual_grid(factual_shown, shown, grid, labels))

    def _describe(self, result: CounterfactualBatch, j: int) -> str:
        g = self.config.guidance
        mode = f"{g.mode} (plan {g.plan})" if g.plan else g.mode
        return (
            f"medcf {result.intervention.text}; guidance {mode}: {result.image_plans[j].describe()}; {g.steps} DDIM "
            f"steps, inversion depth {g.inversion_depth:g}, inversion refinements {g.inversion_refinements}; "
            f"affected {','.join(sorted(result.image_affected[j])) or 'none'}"
        )

    @staticmethod
    def _extra(result: CounterfactualBatch, j: int) -> dict[str, Any]:
        return {
            "affected": ",".join(sorted(result.image_affected[j])),
            **{f"cf_{name}": value for name, value in result.attributes[j].items()},
        }

    def _row(self, image: str, source: str, intervention: Intervention, status: str, reason: str) -> dict[str, Any]:
        row = {
            "image": image,
            "intervention": intervention.text,
            "status": status,
            "reason": reason,
            "settings": self.settings,
            "input": self.inputs[image],
            "dicom": "",
            "png": "",
            "diff": "",
        }
        if self.config.keep_identifiers:
            row["source"] = source
        return row


class _Preparation(Dataset):
    """(source, PreparedImage) per source, for a DataLoader whose workers read and prepare the DICOM files."""

    def __init__(self, preparer: Preparer, dataset_dir: Path, labels: CohortIndex, sources: list[str]) -> None:
        self.preparer, self.dataset_dir, self.labels, self.sources = preparer, dataset_dir, labels, sources

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> tuple[str, PreparedImage]:
        source = self.sources[index]
        return source, self.preparer.prepare_input(self.dataset_dir, source, self.labels)


def _as_is(item: Any) -> Any:
    return item
