"""The preparation batch job: every DICOM file under a folder -> a prepared array or a rejection, listed in
one manifest; parallel, resumable, and never leaving a half-written file.

Output folder layout::

    OUT/images/<source path>.npy    prepared array, float32 (1, H, W) in [-1, 1]
    OUT/manifest.csv                one row per input file: source, status (ok | rejected), reason, output,
                                    attributes, header fields and the geometry (crop, mirroring, scale)
    OUT/prepare.json                the settings and the summary of the last run
    OUT/preview.png                 a grid of prepared images to look at

Every array is written atomically and its row recorded after it (:class:`medcf.outputs.manifest.RunManifest`),
so a run killed at any moment resumes with the finished files skipped and no partial output. Only the
source path and non-identifying header fields reach the manifest and the log: patient names, IDs and birth
dates are never read out of the files. (The prepared set is the hospital's own working copy: it keeps the
source paths that link it to the export; counterfactual outputs use pseudonyms.)
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from medcf.jobs.context import JobContext
from medcf.outputs.lock import LOCK_FILE
from medcf.outputs.manifest import JOURNAL, MANIFEST, RunManifest
from medcf.prepare.base import Preparer
from medcf.prepare.cohort import CohortIndex
from medcf.prepare.inputs import discover_inputs
from medcf.runtime.files import atomic_path, remove_temporaries, write_json_atomic

logger = logging.getLogger("medcf.prepare")

SETTINGS = "prepare.json"


class NothingPreparedError(RuntimeError):
    """No input file could be prepared at all.

    Args:
        *args: the one-line message, as for :class:`RuntimeError`.
    """


def output_name(source: str) -> str:
    """Where the prepared array of a file goes, relative to the output folder (the manifest's ``output``).

    Args:
        source: the file's path relative to the dataset folder.

    Returns:
        ``images/<source>.npy``.
    """
    return f"images/{source}.npy"


_worker: dict[str, Any] = {}


def _init_worker(preparer: Preparer, dataset_dir: Path, output_dir: Path, cohort: CohortIndex | None) -> None:
    torch.set_num_threads(1)  # one process per core already
    _worker.update(preparer=preparer, dataset_dir=dataset_dir, output_dir=output_dir, cohort=cohort)


def _prepare_one(source: str) -> dict[str, Any]:
    """Prepare one file in a worker; returns its manifest record (the array is already on disk)."""
    outcome = _worker["preparer"].prepare_input(_worker["dataset_dir"], source, _worker["cohort"])
    record: dict[str, Any] = {"source": source, "status": outcome.status, "reason": outcome.reason, "output": ""}
    if outcome.array is not None:
        record["output"] = output_name(source)
        with atomic_path(_worker["output_dir"] / record["output"]) as temporary, open(temporary, "wb") as handle:
            np.save(handle, outcome.array)
    record.update(outcome.details)
    return record


@dataclass
class PreparationRun:
    """Prepare every DICOM file under ``dataset_dir`` into ``output_dir``.

    Args:
        dataset_dir: folder searched recursively for DICOM files.
        output_dir: where prepared arrays, the manifest and the summary go; an earlier run's folder is
            resumed (finished files skipped) when its settings match.
        preparer: what to do with each file (chest or mammogram preparation and its settings).
        cohort: optional cohort table from ``data_prep`` (path relative to ``dataset_dir`` + attributes).
            With one, files without a row are rejected; without one, attributes come from the headers.
        workers: parallel processes (default: one per available core).
        progress: show a progress bar.
    """

    dataset_dir: str | Path
    output_dir: str | Path
    preparer: Preparer
    cohort: str | Path | None = None
    workers: int | None = None
    progress: bool = True

    def run(self) -> dict[str, Any]:
        """Prepare every file the folder does not hold yet, then write the manifest, summary and preview.

        Returns:
            The summary (files ok and rejected, reasons counted), as written to ``prepare.json`` with the settings.

        Raises:
            NothingPreparedError: no file could be prepared.
            FileNotFoundError: ``dataset_dir`` is not a folder.
            ValueError: ``output_dir`` holds a preparation with other settings, or files that are not a medcf
                preparation.
        """
        dataset_dir, output_dir = Path(self.dataset_dir), Path(self.output_dir)
        if not dataset_dir.is_dir():
            raise FileNotFoundError(f"dataset_dir {dataset_dir}: no such folder")
        cohort = CohortIndex.from_csv(self.cohort) if self.cohort else None
        with JobContext("prepare", output_dir).folder():
            return self._run(dataset_dir, output_dir, cohort)

    def _run(self, dataset_dir: Path, output_dir: Path, cohort: CohortIndex | None) -> dict[str, Any]:
        settings = self._check_settings(output_dir)
        if (output_dir / "images").is_dir():
            remove_temporaries(output_dir / "images")  # arrays a killed run was writing are prepared again
        sources = discover_inputs(dataset_dir)
        present = set(sources)
        with RunManifest(output_dir, key=("source",), first=("output",)) as manifest:
            manifest.retain(lambda row: row["source"] in present and _finished(row, output_dir))
            pending = [s for s in sources if manifest.get(s) is None]
            logger.info(
                "%d input files, %d finished earlier, %d to prepare", len(sources), len(manifest.rows), len(pending)
            )
            workers = self.workers or len(os.sched_getaffinity(0))
            for record in self._results(pending, dataset_dir, output_dir, cohort, workers):
                manifest.record(record)
        records = [manifest.get(s) for s in sources]
        summary = summarise(records)
        write_json_atomic(output_dir / SETTINGS, {"settings": settings, "summary": summary})
        write_preview(records, output_dir)
        logger.info(format_summary(summary))
        print(format_summary(summary))
        if summary["ok"] == 0:
            raise NothingPreparedError(
                f"no input could be prepared ({len(records)} files under {dataset_dir}); see {output_dir / MANIFEST}"
            )
        return summary

    def _results(
        self, pending: list[str], dataset_dir: Path, output_dir: Path, cohort: CohortIndex | None, workers: int
    ) -> Iterator[dict[str, Any]]:
        initargs = (self.preparer, dataset_dir, output_dir, cohort)
        bar = tqdm(total=len(pending), desc=f"preparing {self.preparer.kind}", unit="file", disable=not self.progress)
        with bar:
            if workers == 1 or len(pending) <= 1:
                _init_worker(*initargs)
                for task in pending:
                    yield _prepare_one(task)
                    bar.update()
                return
            with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=initargs) as pool:
                for record in pool.map(_prepare_one, pending, chunksize=1):
                    yield record
                    bar.update()

    def _check_settings(self, output_dir: Path) -> dict[str, Any]:
        """The run's settings: the preparer's, the pixel budget and the cohort. An earlier run's folder is only
        resumed with the same ones (its rejected rows are final, so a budget is one of them); a folder prepared
        before the budget existed (no ``max_pixel_bytes`` recorded) is resumed and gets the current one."""
        settings = {
            **self.preparer.settings(),
            "max_pixel_bytes": self.preparer.max_pixel_bytes,
            "cohort": str(self.cohort) if self.cohort else None,
        }
        previous = output_dir / SETTINGS
        if previous.exists():
            earlier = json.loads(previous.read_text())["settings"]
            earlier.setdefault("max_pixel_bytes", settings["max_pixel_bytes"])
            if earlier != settings:
                raise ValueError(
                    f"output_dir {output_dir} holds a preparation with other settings ({earlier}); "
                    f"use a new output_dir or the same settings ({settings})"
                )
        elif any(p.name not in (JOURNAL, LOCK_FILE) for p in output_dir.iterdir()):
            raise ValueError(f"output_dir {output_dir} is not empty and holds no medcf preparation")
        write_json_atomic(previous, {"settings": settings, "summary": None})
        return settings


def _finished(row: dict[str, Any], output_dir: Path) -> bool:
    """A recorded row that needs no new attempt: a rejection, or an ok row whose array is on disk."""
    return row["status"] != "ok" or (output_dir / row["output"]).is_file()


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """A run's summary: files, how many were prepared and rejected, and why.

    Args:
        records: the manifest rows, one per input file (``status``, ``reason``).

    Returns:
        ``files``, ``ok``, ``rejected`` and ``reasons`` (each reason's text before its first colon -> how many
        files, most frequent first).
    """
    reasons = Counter(r["reason"].split(":")[0] for r in records if r["status"] != "ok")
    ok = sum(r["status"] == "ok" for r in records)
    return {
        "files": len(records),
        "ok": ok,
        "rejected": len(records) - ok,
        "reasons": dict(reasons.most_common()),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as printed and logged: the counts, then one indented line per rejection reason.

    Args:
        summary: a run's summary (:func:`summarise`).

    Returns:
        The text, lines joined by newlines.
    """
    lines = [f"prepared {summary['ok']} of {summary['files']} files; rejected {summary['rejected']}"]
    lines += [f"  {count:6d}  {reason}" for reason, count in summary["reasons"].items()]
    return "\n".join(lines)


def write_preview(records: list[dict[str, Any]], output_dir: Path, count: int = 16) -> None:
    """A grid of the first prepared images, to look at.

    Written to ``output_dir/preview.png``, at most 8 images a row; nothing is written when no file was prepared.

    Args:
        records: the manifest rows (``status``, ``output``).
        output_dir: the preparation's folder, holding the arrays the rows name.
        count: at most this many images (default 16).
    """
    outputs = [r["output"] for r in records if r["status"] == "ok"][:count]
    if not outputs:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medcf.outputs.grids import save_figure

    columns = min(8, len(outputs))
    rows = (len(outputs) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, output in zip(axes.flat, outputs, strict=False):
        ax.imshow(np.load(output_dir / output)[0], cmap="gray", vmin=-1, vmax=1)
    fig.tight_layout()
    save_figure(fig, output_dir / "preview.png", dpi=90)
