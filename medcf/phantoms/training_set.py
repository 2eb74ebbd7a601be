"""Phantom data sets shaped like a hospital export, with the cohort table a real export would get."""

from __future__ import annotations

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
