"""The counterfactual inference job: DICOM files + labels -> counterfactual DICOMs, previews and a manifest,
tracked in MLflow.

For each input file the preparation of training is applied (so the model sees what it was trained on);
each batch of images is abducted once and every intervention is decoded from the same latents. Outputs per
(image, intervention), under ``OUT/<image folder>/`` (a pseudonym of the source path, or the source path
itself with ``keep_identifiers``): ``<slug>.dcm`` (derived Secondary Capture, see :mod:`medcf.dicom.derived`),
``<slug>.png`` (factual | counterfactual | |difference|) and ``<slug>_diff.png``; optionally
``<slug>.nii.gz``. Each batch also gets ``OUT/grids/<run time>/batch_NNN.png`` (one row per image:
factual | counterfactual and |difference| per intervention), logged to MLflow with the run.
``OUT/manifest.csv`` has one row per (image, intervention) with its status and a fingerprint of the
settings that made it; it is rewritten atomically after every batch. A re-run skips rows made with the same
settings and tries rejected rows again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from medcf.atomic import atomic_path
from medcf.attributes import AttributeSchema, SchemaError
from medcf.causal import CausalGraph
from medcf.counterfactual import CounterfactualBatch, CounterfactualEngine, GuidanceSettings
from medcf.dicom.derived import write_counterfactual
from medcf.diffusion import DiffusionConfig
from medcf.grids import counterfactual_grid
from medcf.interventions import Intervention, InterventionError, parse_intervention
from medcf.model import load_checkpoint
from medcf.prepare.base import PreparedImage, Preparer
from medcf.prepare.cohort import CohortIndex
from medcf.prepare.runner import discover_inputs

MANIFEST = "manifest.csv"
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")


def slug(intervention: Intervention) -> str:
    """A file-name-safe name of an intervention: do(age=+20, sex=F) -> age-+20_sex-F; do() -> null."""
    if intervention.is_null:
        return "null"
    text = intervention.text[3:-1].replace(", ", "_").replace("=", "-")
    return re.sub(r"[^A-Za-z0-9_+.-]", "", text.replace(" ", ""))


def pseudonym(source: str) -> str:
    """A stable name for an input file that does not show its path (paths often hold patient identifiers)."""
    return "img-" + hashlib.sha256(source.encode()).hexdigest()[:16]


def output_folder(source: str, keep_identifiers: bool) -> str:
    """The folder of a source's outputs: its pseudonym, or with ``keep_identifiers`` its path without a
    DICOM suffix (other suffixes stay: UID-named files such as ``1.2.3.4`` must not collide)."""
    if not keep_identifiers:
        return pseudonym(source)
    path = PurePosixPath(source)
    return str(path.with_suffix("")) if path.suffix.lower() in DICOM_SUFFIXES else source


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class InferenceRun:
    """Counterfactuals for every DICOM file under ``dataset_dir`` (see the module docstring).

    Args:
        dataset_dir: folder of DICOM files (searched recursively).
        output_dir: where outputs and the manifest go (re-runs skip finished rows).
        model_path: medcf model file (bundle ``models/model.pt``).
        graph_path: fitted causal graph (``models/graph.json``).
        labels: cohort table with each file's factual attributes (``path`` relative to ``dataset_dir``).
        preparer: the preparation the model was trained with (its image size must match the model's).
        interventions: e.g. ``["do(sex=F)", "do(age=+20)"]``.
        guidance: decoding settings (mode, weights, steps, inversion depth).
        keep_identifiers: copy patient identifiers into the counterfactual DICOMs.
        nifti: also write NIfTI images (nibabel) for analysis tools.
        batch_size: images abducted and decoded together.
        experiment: MLflow experiment name.
        schema: the attributes the bundle expects; a model trained for other attributes is refused.
    """

    dataset_dir: str | Path
    output_dir: str | Path
    model_path: str | Path
    graph_path: str | Path
    labels: str | Path
    preparer: Preparer
    interventions: Sequence[str]
    guidance: GuidanceSettings = field(default_factory=GuidanceSettings)
    keep_identifiers: bool = False
    nifti: bool = False
    batch_size: int = 8
    experiment: str = "medcf-inference"
    progress: bool = True
    schema: AttributeSchema | None = None

    def run(self) -> dict[str, Any]:
        import mlflow

        from medcf.tracking import flatten, tracking_uri

        started = time.perf_counter()
        model, payload = load_checkpoint(self.model_path, expected_schema=self.schema)
        schema, diffusion = model.schema, DiffusionConfig(**payload["diffusion"])
        graph = CausalGraph.load(schema, self.graph_path)
        self._trained_size = tuple(payload.get("image_size") or ())
        interventions = [parse_intervention(schema, text) for text in self.interventions]
        repeated = sorted(text for text, count in Counter(i.text for i in interventions).items() if count > 1)
        if repeated:
            raise ValueError(f"interventions: {', '.join(repeated)} given more than once")
        engine = CounterfactualEngine(model, diffusion, graph, self.guidance)
        dataset_dir, output_dir = Path(self.dataset_dir), Path(self.output_dir)
        sources = discover_inputs(dataset_dir) if dataset_dir.is_dir() else []
        if not sources:
            raise ValueError(f"dataset_dir: no input files under {dataset_dir}")
        labels = CohortIndex.from_csv(self.labels)
        model_sha256 = file_sha256(self.model_path)
        self._settings = self._fingerprint(model_sha256)
        output_dir.mkdir(parents=True, exist_ok=True)
        self._previous = self._read_manifest(output_dir)
        done = {key: row for key, row in self._previous.items() if self._is_made(row, output_dir)}
        self._grid_folder = output_dir / "grids" / time.strftime("%Y%m%d-%H%M%S")
        self._grids: list[Path] = []

        mlflow.set_tracking_uri(tracking_uri())
        mlflow.set_experiment(self.experiment)
        with mlflow.start_run(run_name="counterfactuals"):
            mlflow.log_params(
                flatten(
                    {
                        "interventions": [i.text for i in interventions],
                        "guidance": asdict(self.guidance),
                        "model_sha256": model_sha256,
                        "model_file": str(self.model_path),
                        "settings_fingerprint": self._settings,
                        "images": len(sources),
                        "batch_size": self.batch_size,
                    }
                )
            )
            rows, stats = self._process(engine, interventions, sources, dataset_dir, output_dir, labels, done)
            table = self._save_manifest(output_dir, rows)
            seconds = time.perf_counter() - started
            statuses = pd.Series([row["status"] for row in rows])
            metrics = {
                "counterfactuals": stats.pop("made"),
                "rows_ok": int((statuses == "ok").sum()),
                "rows_rejected": int((statuses == "rejected").sum()),
                "seconds_total": seconds,
                **stats,
            }
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
            mlflow.log_text(self._tracked_manifest(table).to_csv(index=False), MANIFEST)
            for grid in self._grids:
                mlflow.log_artifact(str(grid), artifact_path="grids")
        print(
            f"{metrics['counterfactuals']} counterfactuals made, {metrics['rows_ok']} ok and "
            f"{metrics['rows_rejected']} rejected rows in {seconds:.1f} s -> {output_dir / MANIFEST}"
        )
        return metrics

    def _fingerprint(self, model_sha256: str) -> str:
        """A short hash of everything that decides an output: a re-run only skips rows made with the same."""
        settings = {
            "guidance": asdict(self.guidance),
            "model": model_sha256,
            "graph": file_sha256(self.graph_path),
            "preparer": self.preparer.settings(),
            "keep_identifiers": self.keep_identifiers,
            "nifti": self.nifti,
        }
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _is_made(self, row: dict[str, Any], output_dir: Path) -> bool:
        """A row to skip: made with the current settings and its DICOM is there (rejected rows are retried)."""
        return row["status"] == "ok" and row.get("settings") == self._settings and (output_dir / row["dicom"]).is_file()

    @staticmethod
    def _read_manifest(output_dir: Path) -> dict[tuple[str, str], dict[str, Any]]:
        manifest = output_dir / MANIFEST
        if not manifest.exists():
            return {}
        table = pd.read_csv(manifest, keep_default_na=False, dtype=str)
        return {(r["source"], r["intervention"]): r for r in table.to_dict("records")}

    def _save_manifest(self, output_dir: Path, rows: list[dict[str, Any]]) -> pd.DataFrame:
        """The earlier manifest updated with ``rows``, written atomically (rows of other interventions stay)."""
        merged = {**self._previous, **{(r["source"], r["intervention"]): r for r in rows}}
        ordered = sorted(merged.values(), key=lambda r: (r["source"], r["intervention"]))
        table = pd.DataFrame(ordered)
        first = ["source", "intervention", "status", "reason"]
        table = table[first + sorted(c for c in table.columns if c not in first)]
        with atomic_path(output_dir / MANIFEST) as temporary:
            table.to_csv(temporary, index=False)
        return table

    def _tracked_manifest(self, table: pd.DataFrame) -> pd.DataFrame:
        """The manifest as MLflow gets it: source paths replaced by their pseudonyms unless identifiers are kept."""
        if self.keep_identifiers:
            return table
        return table.assign(source=table["source"].map(pseudonym))

    def _check_shape(self, shape: tuple[int, ...], engine: CounterfactualEngine) -> None:
        """The prepared image must have the model's channels and training size (a settings error, not a file's)."""
        channels = engine.model.config.in_channels
        if shape[0] != channels:
            raise ValueError(f"prepared images have {shape[0]} channel(s); the model takes {channels}")
        if self._trained_size and tuple(shape[1:]) != self._trained_size:
            raise ValueError(
                f"prepared images are {shape[1]}x{shape[2]}, the model was trained at "
                f"{self._trained_size[0]}x{self._trained_size[1]}: set image_size to match"
            )

    def _process(
        self,
        engine: CounterfactualEngine,
        interventions: list[Intervention],
        sources: list[str],
        dataset_dir: Path,
        output_dir: Path,
        labels: CohortIndex,
        done: dict,
    ) -> tuple[list[dict[str, Any]], dict[str, float]]:
        rows: list[dict[str, Any]] = []
        pending: list[tuple[str, np.ndarray, dict[str, Any]]] = []
        totals = {"evaluations": 0, "made": 0, "seconds": 0.0}

        def decode_pending() -> None:
            made, evaluations, seconds = self._decode_batch(engine, interventions, pending, dataset_dir, done)
            rows.extend(made)
            totals["evaluations"] += evaluations
            totals["made"] += sum(row["status"] == "ok" for row in made)
            totals["seconds"] += seconds
            pending.clear()
            self._save_manifest(output_dir, rows)  # a killed run keeps every finished row

        for source in tqdm(sources, desc="counterfactuals", disable=not self.progress):
            todo = [i for i in interventions if (source, i.text) not in done]
            rows.extend(done[(source, i.text)] for i in interventions if (source, i.text) in done)
            if not todo:
                continue
            outcome = self.preparer.prepare(str(dataset_dir / source), labels, source)
            if outcome.status == "ok":
                self._check_shape(outcome.array.shape, engine)
                try:  # the labels as the preparer checked them, then against the model's attribute ranges
                    names = engine.model.schema.names
                    attributes = engine.model.schema.validate({name: outcome.details.get(name) for name in names})
                except (SchemaError, ValueError) as error:
                    outcome = PreparedImage("rejected", f"labels: {error}")
            if outcome.status != "ok":
                rows.extend(self._row(source, i, "rejected", outcome.reason) for i in todo)
                continue
            pending.append((source, outcome.array, attributes))
            if len(pending) == self.batch_size:
                decode_pending()
        if pending:
            decode_pending()
        made = totals["made"]
        stats = {
            "made": made,
            "network_evaluations_per_counterfactual": totals["evaluations"] / made if made else 0.0,
            "seconds_per_counterfactual": totals["seconds"] / made if made else 0.0,
        }
        return sorted(rows, key=lambda r: (r["source"], r["intervention"])), stats

    def _decode_batch(
        self,
        engine: CounterfactualEngine,
        interventions: list[Intervention],
        batch: list,
        dataset_dir: Path,
        done: dict,
    ) -> tuple[list[dict[str, Any]], int, float]:
        """Abduct a batch once, decode every intervention not yet made; (rows, network evaluations, seconds),
        the time covering abduction, decoding and writing."""
        started = time.perf_counter()
        images = torch.from_numpy(np.stack([image for _, image, _ in batch]))
        factual = [attributes for _, _, attributes in batch]
        latents = engine.abduct(images, factual)
        rows, evaluations = [], len(batch) * len(engine.sampler.timesteps)
        factual_displays = [_unit(image) for image in images[:, 0].numpy()]
        shown: dict[str, list[np.ndarray | None]] = {}
        for intervention in interventions:
            members = []
            for k, (source, _, _) in enumerate(batch):
                if (source, intervention.text) in done:
                    continue
                try:
                    intervention.apply(engine.model.schema, factual[k])
                except InterventionError as error:  # e.g. a shift past the attribute's range for this image
                    rows.append(self._row(source, intervention, "rejected", str(error)))
                    continue
                members.append(k)
            if not members:
                continue
            result = engine.predict(latents[members], [factual[k] for k in members], intervention)
            evaluations += result.network_evaluations * len(members)
            shown[intervention.text] = [None] * len(batch)
            for position, k in enumerate(members):
                display = _unit(result.images[position, 0].cpu().numpy())
                shown[intervention.text][k] = display
                source = batch[k][0]
                rows.append(
                    self._write(source, intervention, factual_displays[k], display, result, position, dataset_dir)
                )
        if shown:
            names = [output_folder(source, self.keep_identifiers) for source, _, _ in batch]
            grid = self._grid_folder / f"batch_{len(self._grids):03d}.png"
            self._grids.append(counterfactual_grid(factual_displays, shown, grid, names))
        return rows, evaluations, time.perf_counter() - started

    def _write(
        self,
        source: str,
        intervention: Intervention,
        factual: np.ndarray,
        display: np.ndarray,
        result: CounterfactualBatch,
        position: int,
        dataset_dir: Path,
    ) -> dict[str, Any]:
        """Write one counterfactual's DICOM, previews (and NIfTI); its manifest row. ``factual`` and ``display``
        (the counterfactual) are on the [0, 1] display scale."""
        relative = output_folder(source, self.keep_identifiers)
        folder = Path(self.output_dir) / relative
        folder.mkdir(parents=True, exist_ok=True)
        name = slug(intervention)
        difference = np.abs(display - factual)
        g = self.guidance
        description = (
            f"medcf {intervention.text}; guidance {g.mode}: {result.plan.describe()}; {g.steps} DDIM steps, "
            f"inversion depth {g.inversion_depth:g}; affected {','.join(sorted(result.affected)) or 'none'}"
        )
        write_counterfactual(
            dataset_dir / source, display, folder / f"{name}.dcm", description, intervention.text, self.keep_identifiers
        )
        _save_png(np.concatenate([factual, display, difference], axis=1), folder / f"{name}.png")
        _save_png(difference / max(float(difference.max()), 1e-6), folder / f"{name}_diff.png", cmap="magma")
        if self.nifti:
            import nibabel

            nifti = folder / f"{name}.nii.gz"
            temporary = folder / f".{name}.tmp.nii.gz"
            nibabel.save(nibabel.Nifti1Image(display.T[:, :, None].astype(np.float32), np.eye(4)), temporary)
            os.replace(temporary, nifti)
        row = self._row(source, intervention, "ok", "")
        row.update(
            {
                "dicom": f"{relative}/{name}.dcm",
                "png": f"{relative}/{name}.png",
                "diff": f"{relative}/{name}_diff.png",
                "affected": ",".join(sorted(result.affected)),
                "mean_abs_change": float(difference.mean()),
            }
        )
        row.update({f"cf_{k}": v for k, v in result.attributes[position].items()})
        return row

    def _row(self, source: str, intervention: Intervention, status: str, reason: str) -> dict[str, Any]:
        return {
            "source": source,
            "intervention": intervention.text,
            "status": status,
            "reason": reason,
            "settings": self._settings,
            "dicom": "",
            "png": "",
            "diff": "",
        }


def _unit(image: np.ndarray) -> np.ndarray:
    """A model-scale image ([-1, 1]) on the [0, 1] display scale."""
    return np.clip((image + 1.0) / 2.0, 0.0, 1.0)


def _save_png(image: np.ndarray, path: Path, cmap: str = "gray") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    temporary = path.with_name(f".{path.stem}.tmp.png")
    plt.imsave(temporary, np.clip(image, 0, 1), cmap=cmap, vmin=0, vmax=1)
    os.replace(temporary, path)
