"""Phantom data sets shaped like a hospital export, with the cohort table a real export would get, and the
prepared phantom training sets the training and predictor bundles use when given no manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from medcf.phantoms.dataset import write_phantom_dataset
from medcf.phantoms.writer import TRUTH_FILE


def phantom_export_with_cohort(
    kind: str, folder: str | Path, n: int, export_size: int, seed: int, workers: int | None = None
) -> tuple[Path, Path]:
    """Write (once) a phantom export of ``n`` subjects to ``folder/export`` and build its cohort table
    ``folder/cohort.csv`` with the data_prep builder a real MIMIC-CXR or EMBED export goes through. The
    phantom's ``marker`` (not in EMBED's tables) is added to the mammogram cohort from the ground truth.
    Returns (export folder, cohort table)."""
    from data_prep import embed, mimic_cxr

    folder = Path(folder)
    export, cohort = folder / "export", folder / "cohort.csv"
    if not (export / TRUTH_FILE).exists():
        write_phantom_dataset(kind, export, n, export_size, seed, workers=workers, progress=False)
    builder = mimic_cxr if kind == "cxr" else embed
    if builder.main(["--root", str(export), "--out", str(cohort), "--seed", str(seed)]) != 0:
        raise RuntimeError(f"building the phantom cohort in {folder} failed")
    if kind == "mammo":
        truth = pd.read_csv(export / TRUTH_FILE, dtype={"path": str})[["path", "marker"]]
        pd.read_csv(cohort, dtype={"path": str}).merge(truth, on="path", how="left").to_csv(cohort, index=False)
    return export, cohort


def heldout_phantom_set(
    kind: str, folder: str | Path, subjects: int, image_size: int | tuple[int, ...], seed: int
) -> tuple[Path, Path]:
    """A held-out phantom export of ``subjects`` subjects (phantom ``seed``, never a training seed) with its cohort
    table, made once in ``folder`` at twice the model's ``image_size`` (at least 64), as the training sets are.
    Returns (export folder, cohort table)."""
    side = image_size if isinstance(image_size, int) else max(image_size)
    return phantom_export_with_cohort(kind, folder, subjects, max(64, 2 * side), seed)


def phantom_training_set(
    kind: str, folder: str | Path, n: int, size: int, seed: int = 0, workers: int | None = None
) -> Path:
    """Make (once) a prepared phantom training set in ``folder`` and return its manifest path.

    The phantom export is written at twice ``size`` and goes through the cohort builder and the preparation,
    exactly as a real export would. The phantom's ``marker`` (not in EMBED's tables) is added to the
    mammogram cohort from the ground truth. A folder made with other settings is an error.
    """
    from medcf.jobs.prepare import PreparationRun
    from medcf.prepare import ChestPreparer, MammoPreparer

    folder = Path(folder)
    settings = {"kind": kind, "n": n, "size": size, "seed": seed}
    stamp = folder / "phantom_training_set.json"
    manifest = folder / "prepared" / "manifest.csv"
    if stamp.exists():
        if json.loads(stamp.read_text()) != settings:
            raise ValueError(
                f"{folder}: holds a phantom training set with other settings "
                f"({stamp.read_text().strip()}); use another folder"
            )
        if manifest.exists():
            return manifest
    folder.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(settings) + "\n")
    export, cohort = phantom_export_with_cohort(kind, folder, n, max(64, 2 * size), seed, workers)
    preparer = ChestPreparer(size) if kind == "cxr" else MammoPreparer((size, size))
    PreparationRun(export, folder / "prepared", preparer, cohort=cohort, workers=workers, progress=False).run()
    return manifest


def phantom_training_set_once(kind: str, folder: str | Path, n: int, size: int, seed: int = 0) -> Path:
    """:func:`phantom_training_set` in a distributed run: rank 0 makes it while the other ranks wait."""
    from medcf.runtime.distributed import Shard

    return Shard.current().once(lambda: phantom_training_set(kind, folder, n, size, seed))
