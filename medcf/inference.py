"""The counterfactual inference job: DICOM files + labels -> counterfactual DICOMs, previews and a manifest,
tracked in MLflow.

For each input file the preparation of training is applied (so the model sees what it was trained on);
each batch of images is abducted once and every intervention is decoded from the same latents. Outputs per
(image, intervention), under ``OUT/<source path without suffix>/``: ``<slug>.dcm`` (derived Secondary Capture, see
:mod:`medcf.dicom.derived`), ``<slug>.png`` (factual | counterfactual | |difference|) and ``<slug>_diff.png``;
optionally ``<slug>.nii.gz``. Each batch also gets ``OUT/grids/<first source>.png`` (one row per image:
factual | counterfactual and |difference| per intervention), logged to MLflow with the run.
``OUT/manifest.csv`` has one row per (image, intervention) with its status; files are written atomically and
a re-run skips rows already made (rejected rows are tried again).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from medcf.attributes import AttributeSchema
from medcf.causal import CausalGraph
from medcf.counterfactual import CounterfactualEngine, GuidanceSettings
from medcf.dicom.derived import write_counterfactual
from medcf.diffusion import DiffusionConfig
from medcf.grids import counterfactual_grid
from medcf.interventions import Intervention, InterventionError, parse_intervention
from medcf.model import load_checkpoint
from medcf.prepare.base import Preparer
from medcf.prepare.cohort import CohortIndex
from medcf.prepare.runner import discover_inputs

MANIFEST = "manifest.csv"


def slug(intervention: Intervention) -> str:
    """A file-name-safe name of an intervention: do(age=+20, sex=F) -> age+20_sex-F; do() -> null."""
    if intervention.is_null:
        return "null"
    text = intervention.text[3:-1].replace(", ", "_").replace("=", "-")
    return re.sub(r"[^A-Za-z0-9_+.-]", "", text.replace(" ", ""))


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
        self._grids: list[Path] = []
        model, payload = load_checkpoint(self.model_path, expected_schema=self.schema)
        schema, diffusion = model.schema, DiffusionConfig(**payload["diffusion"])
        graph = CausalGraph.load(schema, self.graph_path)
        self._trained_size = tuple(payload.get("image_size") or ())
        interventions = [parse_intervention(schema, text) for text in self.interventions]
        engine = CounterfactualEngine(model, diffusion, graph, self.guidance)
        dataset_dir, output_dir = Path(self.dataset_dir), Path(self.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        done = self._finished_rows(output_dir)
        labels = CohortIndex.from_csv(self.labels)

        mlflow.set_tracking_uri(tracking_uri())
        mlflow.set_experiment(self.experiment)
        with mlflow.start_run(run_name="counterfactuals"):
            mlflow.log_params(
                flatten(
                    {
                        "interventions": [i.text for i in interventions],
                        "guidance": asdict(self.guidance),
                        "model_sha256": file_sha256(self.model_path),
                        "model_file": str(self.model_path),
                        "dataset_dir": str(dataset_dir),
                        "batch_size": self.batch_size,
                    }
                )
            )
            rows, stats = self._process(engine, interventions, dataset_dir, output_dir, labels, done)
            table = pd.DataFrame(rows)
            temporary = output_dir / f".{MANIFEST}.tmp"
            table.to_csv(temporary, index=False)
            os.replace(temporary, output_dir / MANIFEST)
            made = int((table["status"] == "ok").sum()) if len(table) else 0
            seconds = time.perf_counter() - started
            metrics = {"counterfactuals": made, "seconds_total": seconds, **stats}
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
            mlflow.log_artifact(str(output_dir / MANIFEST))
            for grid in self._grids:
                mlflow.log_artifact(str(grid), artifact_path="grids")
        print(f"{made} counterfactuals ({len(table)} rows) in {seconds:.1f} s -> {output_dir / MANIFEST}")
        return metrics

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

    def _finished_rows(self, output_dir: Path) -> dict[tuple[str, str], dict[str, Any]]:
        manifest = output_dir / MANIFEST
        if not manifest.exists():
            return {}
        table = pd.read_csv(manifest, keep_default_na=False)
        # rejected rows are tried again (cheap, and the labels or settings may have been fixed since)
        finished = table[(table["status"] == "ok") & table["dicom"].map(lambda p: (output_dir / p).is_file())]
        return {(r["source"], r["intervention"]): r for r in finished.to_dict("records")}

    def _process(
        self,
        engine: CounterfactualEngine,
        interventions: list[Intervention],
        dataset_dir: Path,
        output_dir: Path,
        labels: CohortIndex,
        done: dict,
    ) -> tuple[list[dict[str, Any]], dict[str, float]]:
        rows: list[dict[str, Any]] = []
        pending: list[tuple[str, np.ndarray, dict[str, Any]]] = []
        evaluations, decoded, decode_seconds = 0, 0, 0.0
        for source in tqdm(discover_inputs(dataset_dir), desc="counterfactuals", disable=not self.progress):
            todo = [i for i in interventions if (source, i.text) not in done]
            rows.extend(done[(source, i.text)] for i in interventions if (source, i.text) in done)
            if not todo:
                continue
            factual = labels.labels_for(source)
            outcome = self.preparer.prepare(str(dataset_dir / source), factual, cohort_given=True)
            if outcome.status != "ok":
                rows.extend(_row(source, i, "rejected", outcome.reason) for i in todo)
                continue
            image = outcome.array
            self._check_shape(image.shape, engine)
            attributes = {name: factual[name] for name in engine.model.schema.names}
            pending.append((source, image, attributes))
            if len(pending) == self.batch_size:
                out, ev, n, secs = self._decode_batch(engine, interventions, pending, dataset_dir, output_dir, done)
                rows.extend(out)
                evaluations, decoded, decode_seconds = evaluations + ev, decoded + n, decode_seconds + secs
                pending = []
        if pending:
            out, ev, n, secs = self._decode_batch(engine, interventions, pending, dataset_dir, output_dir, done)
            rows.extend(out)
            evaluations, decoded, decode_seconds = evaluations + ev, decoded + n, decode_seconds + secs
        stats = {
            "network_evaluations_per_counterfactual": evaluations / decoded if decoded else 0.0,
            "seconds_per_counterfactual": decode_seconds / decoded if decoded else 0.0,
        }
        return sorted(rows, key=lambda r: (r["source"], r["intervention"])), stats

    def _decode_batch(
        self,
        engine: CounterfactualEngine,
        interventions: list[Intervention],
        batch: list,
        dataset_dir: Path,
        output_dir: Path,
        done: dict,
    ) -> tuple[list[dict[str, Any]], int, int, float]:
        started = time.perf_counter()
        images = torch.from_numpy(np.stack([image for _, image, _ in batch]))
        factual = [attributes for _, _, attributes in batch]
        latents = engine.abduct(images, factual)
        rows, evaluations, count = [], len(batch) * len(engine.sampler.timesteps), 0
        shown: dict[str, list[np.ndarray | None]] = {}
        for intervention in interventions:
            members = []
            for k, (source, _, _) in enumerate(batch):
                if (source, intervention.text) in done:
                    continue
                try:
                    intervention.apply(engine.model.schema, factual[k])
                except InterventionError as error:  # e.g. a shift past the attribute's range for this image
                    rows.append(_row(source, intervention, "rejected", str(error)))
                    continue
                members.append(k)
            if not members:
                continue
            result = engine.predict(latents[members], [factual[k] for k in members], intervention)
            evaluations += result.network_evaluations * len(members)
            count += len(members)
            shown[intervention.text] = [None] * len(batch)
            for position, k in enumerate(members):
                shown[intervention.text][k] = _unit(result.images[position, 0].cpu().numpy())
                source = batch[k][0]
                rows.append(
                    self._write(
                        source,
                        intervention,
                        images[k, 0].numpy(),
                        result.images[position, 0].cpu().numpy(),
                        result.attributes[position],
                        result.affected,
                        dataset_dir,
                        output_dir,
                    )
                )
        if shown:
            sources = [source for source, _, _ in batch]
            grid = output_dir / "grids" / f"{Path(sources[0]).with_suffix('').as_posix().replace('/', '_')}.png"
            self._grids.append(
                counterfactual_grid([_unit(images[k, 0].numpy()) for k in range(len(batch))], shown, grid, sources)
            )
        return rows, evaluations, count, time.perf_counter() - started

    def _write(
        self,
        source: str,
        intervention: Intervention,
        factual: np.ndarray,
        counterfactual: np.ndarray,
        attributes: dict[str, Any],
        affected: set[str],
        dataset_dir: Path,
        output_dir: Path,
    ) -> dict[str, Any]:
        folder = output_dir / Path(source).with_suffix("")
        folder.mkdir(parents=True, exist_ok=True)
        name = slug(intervention)
        display = _unit(counterfactual)
        difference = np.abs(display - _unit(factual))
        g = self.guidance
        description = (
            f"medcf {intervention.text}; guidance {g.mode} w={g.weight:g} w_aff={g.w_aff:g} "
            f"w_inv={g.w_inv:g}; {g.steps} DDIM steps, inversion depth {g.inversion_depth:g}; "
            f"affected {','.join(sorted(affected)) or 'none'}"
        )
        write_counterfactual(
            dataset_dir / source, display, folder / f"{name}.dcm", description, intervention.text, self.keep_identifiers
        )
        _save_png(np.concatenate([_unit(factual), display, difference], axis=1), folder / f"{name}.png")
        _save_png(difference / max(float(difference.max()), 1e-6), folder / f"{name}_diff.png", cmap="magma")
        if self.nifti:
            import nibabel

            nifti = folder / f"{name}.nii.gz"
            temporary = folder / f".{name}.tmp.nii.gz"
            nibabel.save(nibabel.Nifti1Image(display.T[:, :, None].astype(np.float32), np.eye(4)), temporary)
            os.replace(temporary, nifti)
        relative = folder.relative_to(output_dir)
        row = _row(source, intervention, "ok", "")
        row.update(
            {
                "dicom": f"{relative}/{name}.dcm",
                "png": f"{relative}/{name}.png",
                "diff": f"{relative}/{name}_diff.png",
                "affected": ",".join(sorted(affected)),
                "mean_abs_change": float(difference.mean()),
            }
        )
        row.update({f"cf_{k}": v for k, v in attributes.items()})
        return row


def _row(source: str, intervention: Intervention, status: str, reason: str) -> dict[str, Any]:
    return {
        "source": source,
        "intervention": intervention.text,
        "status": status,
        "reason": reason,
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
