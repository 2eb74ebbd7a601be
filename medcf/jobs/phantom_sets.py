"""Phantom data sets shaped like a hospital export, with the cohort table a real export would get, and the
prepared phantom training sets the training and predictor bundles use when given no manifest."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from medcf.phantoms.dataset import write_phantom_dataset
from medcf.phantoms.writer import TRUTH_FILE


def phantom_export_with_cohort(
    kind: str, folder: str | Path, n: int, export_size: int, seed: int, workers: int | None = None
) -> tuple[Path, Path]:
    """Write (once) a phantom export of ``n`` subjects to ``folder/export`` and build its cohort table
    ``folder/cohort.csv`` with the data_prep builder a real MIMIC-CXR or EMBED export goes through. The
    phantom's ``marker`` (not in EMBED's tables) is added to the mammogram cohort from the ground truth.

    Args:
        kind: ``cxr`` (MIMIC-CXR layout, :mod:`data_prep.mimic_cxr`) or ``mammo`` (EMBED layout,
            :mod:`data_prep.embed`).
        folder: where ``export/`` and ``cohort.csv`` go.
        n: subjects of the export (``n`` of :func:`medcf.phantoms.dataset.write_phantom_dataset`; extra views
            come on top).
        export_size: the side of the phantom images, in pixels.
        seed: the phantom's seed, also the seed of the cohort's patient-level split.
        workers: processes that write the files (default: one per available core).

    Returns:
        (export folder, cohort table).

    Raises:
        RuntimeError: when the cohort builder fails.
    """
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

    Args:
        kind: ``cxr`` or ``mammo``.
        folder: where the set is made (once).
        subjects: subjects of the export.
        image_size: the model's image size, a side or (height, width) (the larger side counts).
        seed: the phantom's seed (never a training seed).

    Returns:
        (export folder, cohort table).

    Raises:
        RuntimeError: when the cohort builder fails.
    """
    side = image_size if isinstance(image_size, int) else max(image_size)
    return phantom_export_with_cohort(kind, folder, subjects, max(64, 2 * side), seed)


@dataclass(frozen=True)
class MeasuredData:
    """The images a measuring job (evaluate, audit, calibrate) reads.

    Attributes:
        dataset_dir: the folder of DICOM files.
        labels: its cohort table.
        description: what the data is, in words without paths (for plans and reports).
    """

    dataset_dir: Path
    labels: Path
    description: str


def cohort_table(dataset_dir: str | Path, labels: str | Path | None) -> Path:
    """The cohort table of a user's DICOM folder: ``labels``, by default ``DATASET_DIR/cohort.csv``.

    Args:
        dataset_dir: the DICOM folder.
        labels: its cohort table, or None for ``DATASET_DIR/cohort.csv``.

    Returns:
        The table's path.

    Raises:
        ValueError: the table does not exist (one line naming it).
    """
    table = Path(dataset_dir) / "cohort.csv" if labels is None else Path(labels)
    if not table.is_file():
        raise ValueError(f"labels: {table} does not exist; give the cohort table of dataset_dir")
    return table


def measured_data(
    dataset_dir: str | Path | None,
    labels: str | Path | None,
    heldout_folder: Path,
    kind: str,
    subjects: int,
    image_size: int | tuple[int, ...],
    seed: int,
) -> MeasuredData:
    """One rule for every measuring job: the user's ``dataset_dir`` with its cohort table (``labels``, by default
    ``DATASET_DIR/cohort.csv``), or without a folder a held-out phantom export of ``subjects`` subjects (phantom
    ``seed``) made once in ``heldout_folder`` (:func:`heldout_phantom_set`).

    Args:
        dataset_dir: the user's DICOM folder, or None for the held-out phantom set.
        labels: the folder's cohort table (None: ``DATASET_DIR/cohort.csv``); ignored without a folder.
        heldout_folder: where the held-out phantom set is made once.
        kind: ``cxr`` or ``mammo``.
        subjects: subjects of the held-out phantom set.
        image_size: the model's image size (the export is made at twice it).
        seed: the held-out phantom seed (never a training seed).

    Returns:
        The folder, its cohort table and a description.

    Raises:
        ValueError: the cohort table of ``dataset_dir`` does not exist (one line naming it).
    """
    if dataset_dir is not None:
        table = cohort_table(dataset_dir, labels)
        return MeasuredData(Path(dataset_dir), table, "user data set (dataset_dir with its cohort table)")
    export, cohort = heldout_phantom_set(kind, heldout_folder, subjects, image_size, seed)
    return MeasuredData(export, cohort, f"held-out {kind} phantom set ({subjects} subjects, seed {seed})")


class MeasuringJob(Protocol):
    """The settings of a job that measures held-out data (evaluate, audit, calibrate), as their YAML keys name
    them: the user's folder and cohort table, or the held-out phantom set made without one.

    Attributes:
        dataset_dir, labels: the user's DICOM folder and its cohort table (None: the held-out phantom set).
        phantom_kind: ``cxr`` or ``mammo``: the phantom of the held-out set.
        heldout_subjects, heldout_seed: the held-out set's size and phantom seed.
        preparer: the job's preparer; its ``image_size`` sizes the held-out set.
    """

    dataset_dir: str | Path | None
    labels: str | Path | None
    phantom_kind: str
    heldout_subjects: int
    heldout_seed: int
    preparer: Any


def job_data(job: MeasuringJob, heldout_folder: Path) -> MeasuredData:
    """:func:`measured_data` with a measuring job's own settings, the held-out set at its preparer's image size.

    Args:
        job: the job's settings.
        heldout_folder: where the held-out phantom set is made once (used without ``job.dataset_dir``).

    Returns:
        The folder, its cohort table and a description.
    """
    size = getattr(job.preparer, "image_size", 64)
    return measured_data(
        job.dataset_dir, job.labels, heldout_folder, job.phantom_kind, job.heldout_subjects, size, job.heldout_seed
    )


def phantom_training_set(
    kind: str, folder: str | Path, n: int, size: int, seed: int = 0, workers: int | None = None
) -> Path:
    """Make (once) a prepared phantom training set in ``folder`` and return its manifest path.

    The phantom export is written at twice ``size`` and goes through the cohort builder and the preparation,
    exactly as a real export would. The phantom's ``marker`` (not in EMBED's tables) is added to the
    mammogram cohort from the ground truth. A folder made with other settings is an error.

    Args:
        kind: ``cxr`` (chest preparation) or ``mammo`` (mammogram preparation).
        folder: where the export, its cohort table, ``prepared/`` and the settings
            (``phantom_training_set.json``) go.
        n: subjects of the phantom export.
        size: the side of the prepared images, in pixels.
        seed: the phantom's seed (default 0).
        workers: processes that write and prepare the files (default: one per available core).

    Returns:
        The preparation manifest, ``folder/prepared/manifest.csv``.

    Raises:
        ValueError: when ``folder`` holds a phantom training set made with other settings.
    """
    from medcf.jobs.bundles import preparer as preparer_of
    from medcf.jobs.prepare import PreparationRun

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
    preparer = preparer_of(kind, size)
    PreparationRun(export, folder / "prepared", preparer, cohort=cohort, workers=workers, progress=False).run()
    return manifest


def phantom_training_set_once(kind: str, folder: str | Path, n: int, size: int, seed: int = 0) -> Path:
    """:func:`phantom_training_set` in a distributed run: rank 0 makes it while the other ranks wait.

    Args:
        kind: ``cxr`` or ``mammo``.
        folder: where the training set is made.
        n: subjects of the phantom export.
        size: the side of the prepared images, in pixels.
        seed: the phantom's seed (default 0).

    Returns:
        The preparation manifest, on every rank.

    Raises:
        ValueError: on rank 0, when ``folder`` holds a phantom training set made with other settings.
        RuntimeError: on the other ranks, when making it failed on rank 0.
    """
    from medcf.runtime.distributed import Shard

    return Shard.current().once(lambda: phantom_training_set(kind, folder, n, size, seed))
