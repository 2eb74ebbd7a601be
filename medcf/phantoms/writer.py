"""Writing a phantom data set to disk: render, encode and write DICOM files in parallel into a staging
folder that is renamed into place only when everything succeeded (nothing is ever half-written).

An exporter (MIMIC-CXR or EMBED shaped) plans the data set as a list of :class:`ImageJob` plus its label
tables; this module does the rest and writes the ground-truth sidecar ``phantom_truth.csv``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from tqdm import tqdm

from medcf.phantoms.scm import Phantom, Subject
from medcf.radiograph.encode import PixelEncoding, attach_pixels, encode_pixels, write_dataset_atomic

TRUTH_FILE = "phantom_truth.csv"


class OutputExistsError(FileExistsError):
    """The output folder exists and is not empty.

    Args:
        args: as for :class:`FileExistsError`; :func:`staged_directory` passes the message.
    """


@dataclass(frozen=True)
class ImageJob:
    """One DICOM file of a phantom data set.

    Args:
        path: file path relative to the data set root.
        subject: the phantom subject to render.
        header: DICOM attributes (pydicom keywords) of the file; pixel-describing ones are added on write.
        encoding: how display values become stored pixel values.
        render_options: keyword arguments of the phantom's ``render`` (view, for_processing, ...).
        flip: mirror the image left-right after rendering (right breasts).
        burned_label: text burned into the pixels in the top corner away from the chest wall.
        info: extra columns for the ground-truth sidecar.
    """

    path: str
    subject: Subject
    header: Mapping[str, Any]
    encoding: PixelEncoding
    render_options: Mapping[str, Any] = field(default_factory=dict)
    flip: bool = False
    burned_label: str | None = None
    info: Mapping[str, Any] = field(default_factory=dict)


def render_job(phantom: Phantom, job: ImageJob, size: int) -> np.ndarray:
    """The display image the job's DICOM file stores: render, flip, burn in the label.

    Args:
        phantom: the phantom that renders the job's subject.
        job: the file to render.
        size: image side in pixels.

    Returns:
        The float32 display image in [0, 1].
    """
    return render_display(phantom, job.subject, size, job.render_options, job.flip, job.burned_label)


def render_display(
    phantom: Phantom,
    subject: Subject,
    size: int,
    render_options: Mapping[str, Any],
    flip: bool = False,
    burned_label: str | None = None,
) -> np.ndarray:
    """A subject's display image as an exported file shows it: rendered, mirrored, label burned in.

    Args:
        phantom: the phantom that renders the subject.
        subject: the subject to render.
        size: image side in pixels.
        render_options: keyword arguments of the phantom's ``render``.
        flip: mirror the image left-right (default False).
        burned_label: text to burn into the top corner away from the chest wall (right, or left when
            ``flip``); None or empty for none.

    Returns:
        The contiguous float32 display image in [0, 1].
    """
    image = phantom.render(subject, size, **render_options)
    if flip:
        image = image[:, ::-1]
    if burned_label:
        image = burn_in_text(image, burned_label, right_side=not flip)
    return np.ascontiguousarray(image, dtype=np.float32)


def burn_in_text(image: np.ndarray, text: str, right_side: bool) -> np.ndarray:
    """Draw ``text`` in full white into a top corner, as scanners burn in view labels.

    Args:
        image: display image in [0, 1].
        text: the label.
        right_side: put it in the top-right corner; False for the top-left one.

    Returns:
        A new image with the text's pixels raised towards 1.
    """
    size = image.shape[0]
    canvas = Image.new("L", image.shape[::-1], 0)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(8, size // 14))
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    margin = max(2, size // 32)
    x = image.shape[1] - margin - (right - left) if right_side else margin
    draw.text((x - left, margin - top), text, fill=255, font=font)
    mask = np.asarray(canvas, dtype=np.float32) / 255.0
    return np.maximum(image, mask)


def build_dataset(job: ImageJob, stored: np.ndarray, pixel_attributes: Mapping[str, Any]) -> Dataset:
    """A DICOM dataset from the job's header and the encoded pixels.

    For DX and MG files, Presentation LUT Shape is set from the encoding's photometric interpretation.

    Args:
        job: the file; its header and encoding are read.
        stored: the stored pixel values.
        pixel_attributes: the pixel-describing DICOM attributes that go with ``stored``.

    Returns:
        The dataset, pixels attached.
    """
    ds = Dataset()
    for keyword, value in job.header.items():
        setattr(ds, keyword, value)
    if ds.get("Modality") in ("DX", "MG"):  # required by the DX and mammography image modules
        ds.PresentationLUTShape = "INVERSE" if job.encoding.photometric == "MONOCHROME1" else "IDENTITY"
    attach_pixels(ds, stored, pixel_attributes, job.encoding.transfer_syntax)
    return ds


def write_job(phantom: Phantom, job: ImageJob, size: int, root: Path) -> str:
    """Render, encode and write one job's file under ``root``; returns its relative path.

    Args:
        phantom: the phantom that renders the job's subject.
        job: the file to write.
        size: image side in pixels.
        root: data set folder; missing subfolders are created.

    Returns:
        ``job.path``.
    """
    stored, pixel_attributes = encode_pixels(render_job(phantom, job, size), job.encoding)
    target = root / job.path
    target.parent.mkdir(parents=True, exist_ok=True)
    write_dataset_atomic(build_dataset(job, stored, pixel_attributes), target)
    return job.path


_worker_phantom: Phantom | None = None


def _init_worker(phantom: Phantom) -> None:
    global _worker_phantom
    _worker_phantom = phantom


def _write_in_worker(args: tuple[ImageJob, int, Path]) -> str:
    assert _worker_phantom is not None
    return write_job(_worker_phantom, *args)


def default_workers() -> int:
    """One worker per available core."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def write_images(
    phantom: Phantom,
    jobs: Sequence[ImageJob],
    size: int,
    root: Path,
    workers: int | None = None,
    progress: bool = True,
) -> None:
    """Write every job's DICOM file under ``root``, in ``workers`` processes (1: in this process).

    Args:
        phantom: the phantom that renders the subjects.
        jobs: the files to write.
        size: image side in pixels.
        root: data set folder.
        workers: number of processes (default: one per available core).
        progress: show a progress bar (default True).
    """
    workers = workers or default_workers()
    bar = tqdm(total=len(jobs), desc="writing DICOM", unit="img", disable=not progress, leave=False)
    with bar:
        if workers == 1:
            for job in jobs:
                write_job(phantom, job, size, root)
                bar.update()
            return
        tasks = [(job, size, root) for job in jobs]
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(phantom,)) as pool:
            for _ in pool.map(_write_in_worker, tasks, chunksize=max(1, len(jobs) // (8 * workers))):
                bar.update()


def truth_table(phantom: Phantom, jobs: Sequence[ImageJob]) -> pd.DataFrame:
    """Ground truth for evaluation: one row per file with its true attributes, exogenous noise and seeds.

    Args:
        phantom: the phantom of the jobs (not read: each job's subject carries its truth).
        jobs: the files of the data set.

    Returns:
        Columns ``path``, the jobs' ``info`` columns, the attributes, the noise and ``seed_<name>``.
    """
    rows = []
    for job in jobs:
        s = job.subject
        row: dict[str, Any] = {"path": job.path, **job.info}
        row.update(s.attributes)
        row.update(s.noise)
        row.update({f"seed_{k}": v for k, v in s.seeds.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def subject_from_truth(phantom: Phantom, row: Mapping[str, Any]) -> Subject:
    """Rebuild the phantom subject of one ``phantom_truth.csv`` row (for true counterfactuals).

    Args:
        phantom: the phantom that wrote the row; its schema, factors and seed names select the columns.
        row: one row of the ground-truth table.

    Returns:
        The subject.
    """
    noise = {f"u_{n}": float(row[f"u_{n}"]) for n in phantom.schema.names}
    noise.update({f.name: float(row[f.name]) for f in phantom.factors})
    seeds = {k: int(row[f"seed_{k}"]) for k in phantom.seed_names}
    attributes = phantom.schema.validate({n: row[n] for n in phantom.schema.names})
    return Subject(noise, seeds, attributes)


@contextlib.contextmanager
def staged_directory(out: Path) -> Iterator[Path]:
    """Yield a fresh staging folder beside ``out``; on success it becomes ``out``, on failure it is removed.

    Args:
        out: the folder to create; may exist if empty.

    Yields:
        The staging folder, to write into.

    Raises:
        OutputExistsError: ``out`` exists and is not an empty folder (checked before anything is written).
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputExistsError(f"{out}: output folder exists and is not empty; choose a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
