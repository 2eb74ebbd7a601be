"""An inference output folder between runs: what makes a re-run skip the rows already made and refuse to mix
folders made under other keys.

- :func:`open_folder`: the folder's pseudonyms and run manifest, rank 0 first (it removes what a killed run was
  writing and checks the folder's pseudonym key and ``keep_identifiers`` against ``OUT/inference.json``).
- :func:`settings_fingerprint`: a short hash of every setting that decides an output; a re-run only skips rows
  made with the same.
- :func:`input_fingerprint`: the same for one input (its file and its cohort row).
- :func:`update_source_key`: ``OUT/source_key.csv``, the only link from pseudonyms back to source paths.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

import medcf
from medcf.core.guidance_settings import GuidanceSettings
from medcf.outputs.manifest import RunManifest
from medcf.outputs.pseudonyms import Pseudonyms
from medcf.prepare.base import Preparer, Rejected, dataset_file
from medcf.prepare.cohort import CohortIndex, CohortMatchError
from medcf.radiograph.header import read_header
from medcf.radiograph.opening import DicomReadError
from medcf.runtime.distributed import Shard
from medcf.runtime.files import file_sha256, remove_temporaries, write_csv_atomic, write_json_atomic

SOURCE_KEY = "source_key.csv"
FOLDER_SETTINGS = "inference.json"


def open_folder(
    output_dir: Path, shard: Shard, pseudonym_key: str | Path | None, uid_root: str | None, keep_identifiers: bool
) -> tuple[Pseudonyms, RunManifest]:
    """The folder's pseudonyms and manifest. Rank 0 (or a single process) makes or checks the shared files first;
    the other ranks of a sharded run open them after that, each recording into its own journal.

    Args:
        output_dir: the output folder (made by the caller).
        shard: this process's place in the run.
        pseudonym_key: the file holding the pseudonym secret (None: ``OUT/pseudonym.key``).
        uid_root: root of the generated UIDs (None: 2.25).
        keep_identifiers: whether the rows carry source paths.

    Returns:
        The pseudonyms and the run manifest (rank 0's writes the table; the others only their journals).

    Raises:
        ValueError: when the folder was made with another pseudonym key or another ``keep_identifiers``.
    """
    first = ("settings", "dicom", "png", "diff", *(("source",) if keep_identifiers else ()))
    key = ("image", "intervention")
    if shard.main:
        remove_temporaries(output_dir)  # files a killed run was writing; their rows were never recorded
        pseudonyms = Pseudonyms.for_output(output_dir, pseudonym_key, uid_root)
        _check_folder(output_dir, pseudonyms, keep_identifiers)
        manifest = RunManifest(output_dir, key, first)
        manifest.save()  # folds in what the ranks of a killed sharded run left in their journals
    shard.barrier()
    if not shard.main:
        pseudonyms = Pseudonyms.for_output(output_dir, pseudonym_key, uid_root)
        manifest = RunManifest(output_dir, key, first, rank=shard.rank, writes_table=False)
    return pseudonyms, manifest


def _check_folder(output_dir: Path, pseudonyms: Pseudonyms, keep_identifiers: bool) -> None:
    """An output folder keeps one pseudonym key (its names and UIDs stay consistent) and one choice of
    keep_identifiers (a pseudonymous folder never gains rows with source paths, nor the reverse)."""
    path = output_dir / FOLDER_SETTINGS
    if path.exists():
        earlier = json.loads(path.read_text())
        if earlier.get("pseudonym_key_id") != pseudonyms.key_id:
            raise ValueError(
                f"output_dir {output_dir}: its outputs were made with another pseudonym key; give that key "
                "(pseudonym_key) or use a new output_dir"
            )
        if earlier.get("keep_identifiers", False) != keep_identifiers:
            raise ValueError(
                f"output_dir {output_dir}: its outputs were made with keep_identifiers="
                f"{str(earlier.get('keep_identifiers', False)).lower()}; use that or a new output_dir"
            )
    settings = {
        "pseudonym_key_id": pseudonyms.key_id,
        "uid_root": pseudonyms.uid_root,
        "keep_identifiers": keep_identifiers,
    }
    write_json_atomic(path, settings)


def settings_fingerprint(
    guidance: GuidanceSettings,
    model_sha256: str,
    graph_path: str | Path,
    preparer: Preparer,
    keep_identifiers: bool,
    nifti: bool,
    uid_root: str,
) -> str:
    """A short hash of everything that decides an output: a re-run only skips rows made with the same.

    Args:
        guidance: the guidance settings (``max_rows``, which changes speed only, is left out).
        model_sha256: the model file's SHA-256.
        graph_path: the causal graph file.
        preparer: the preparer (its settings).
        keep_identifiers: whether the outputs carry source identifiers.
        nifti: whether NIfTI files are written.
        uid_root: the root of the generated UIDs.

    Returns:
        16 hex digits.
    """
    chosen = {k: float(v) if k in ("weight", "w_aff", "w_inv") else v for k, v in asdict(guidance).items()}
    chosen["per_attribute"] = {k: float(v) for k, v in sorted(chosen["per_attribute"].items())}
    del chosen["max_rows"]  # speed only
    settings = {
        "medcf": medcf.__version__,
        "guidance": chosen,
        "model": model_sha256,
        "graph": file_sha256(graph_path),
        "preparer": preparer.settings(),
        "keep_identifiers": keep_identifiers,
        "nifti": nifti,
        "uid_root": uid_root,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def input_fingerprint(dataset_dir: Path, source: str, labels: CohortIndex) -> str:
    """What decides an input's counterfactuals besides the settings: its file (size, modification time) and
    its cohort row. A re-run makes a row again when either changed (a corrected label, a replaced file). A file
    outside ``dataset_dir`` (through a symbolic link) is not looked at (see :func:`dataset_file`).

    Args:
        dataset_dir: the folder of DICOM files.
        source: the input, its path relative to ``dataset_dir``.
        labels: the cohort table.

    Returns:
        16 hex digits of the SHA-256 of the file's size and modification time (the error's name where the file
        cannot be read) and its cohort row (the reason where it has none).
    """
    try:
        path = dataset_file(dataset_dir, source)
        stat = path.stat()
        uid = read_header(path).sop_instance_uid if labels.by_uid is not None else None
        file = [stat.st_size, stat.st_mtime_ns]
    except (OSError, DicomReadError, Rejected) as error:
        file, uid = [type(error).__name__], None
    try:
        row: dict[str, Any] = labels.labels_for(source, uid)
    except CohortMatchError as error:
        row = {"unmatched": error.reason}
    return hashlib.sha256(json.dumps([file, row], sort_keys=True, default=str).encode()).hexdigest()[:16]


def update_source_key(path: Path, images: dict[str, str]) -> None:
    """Write ``image, source`` for every input (kept from earlier runs too), atomically, readable by its owner
    only (it links pseudonyms back to paths that hold patient IDs).

    Args:
        path: ``OUT/source_key.csv``.
        images: source -> image pseudonym of this run's inputs.
    """
    rows = {}
    if path.exists():
        earlier = pd.read_csv(path, dtype=str, keep_default_na=False, encoding_errors="surrogateescape")
        rows = dict(earlier.values)
    rows.update({image: source for source, image in images.items()})
    write_csv_atomic(path, pd.DataFrame(sorted(rows.items()), columns=["image", "source"]), mode=0o600)
