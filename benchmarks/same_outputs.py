"""Check that a change left the inference bundle's outputs alone: two output folders made from the same inputs with
the same pseudonym key, compared row by row (manifest cells) and pixel by pixel (PNG previews, DICOM pixel data).

    python benchmarks/same_outputs.py BEFORE_OUT AFTER_OUT [--grey-levels 1]

Make the two folders with the same command on the two versions, e.g. ``--steps 10 --pseudonym_key KEY.txt`` (one
key, so image names and UIDs agree). The ``input`` column fingerprints each source file's size and modification time:
run both versions on the same files (or copy the times across) for it to agree. Exits 1 when a manifest cell differs
or a pixel differs by more than ``--grey-levels``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from PIL import Image


def manifest(folder: Path) -> pd.DataFrame:
    """The folder's manifest as text, in a fixed row order."""
    table = pd.read_csv(folder / "manifest.csv", dtype=str, keep_default_na=False)
    return table.sort_values(["image", "intervention"]).reset_index(drop=True)


def largest_pixel_differences(before: Path, after: Path, rows: pd.DataFrame) -> tuple[int, int]:
    """The largest absolute difference over the made rows' PNG and DICOM pixels.

    Args:
        before, after: the two output folders.
        rows: the manifest rows (``status``, ``png``, ``dicom``).

    Returns:
        (PNG grey levels, DICOM stored values).
    """
    png = dicom = 0
    for row in rows[rows["status"] == "ok"].itertuples():
        a, b = (np.asarray(Image.open(folder / row.png), dtype=np.int64) for folder in (before, after))
        png = max(png, int(np.abs(a - b).max()))
        a, b = (pydicom.dcmread(folder / row.dicom).pixel_array.astype(np.int64) for folder in (before, after))
        dicom = max(dicom, int(np.abs(a - b).max()))
    return png, dicom


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--grey-levels", type=int, default=1, help="largest pixel difference allowed")
    args = parser.parse_args(argv)
    before, after = manifest(args.before), manifest(args.after)
    if list(before.columns) != list(after.columns) or len(before) != len(after):
        print(f"manifests differ in shape: {before.shape} {list(before.columns)} against {after.shape}")
        return 1
    same = before == after
    print(f"manifest: {len(before)} rows, {int(same.values.sum())} of {same.size} cells identical")
    for column in before.columns[~same.all().to_numpy()]:
        print(f"  {column} differs, e.g. {before[column].iloc[0]!r} against {after[column].iloc[0]!r}")
    png, dicom = largest_pixel_differences(args.before, args.after, before)
    print(f"pixels: {int((before['status'] == 'ok').sum())} made rows, largest difference {png} grey levels (PNG), "
          f"{dicom} (DICOM stored values)")  # fmt: skip
    return 0 if same.values.all() and max(png, dicom) <= args.grey_levels else 1


if __name__ == "__main__":
    sys.exit(main())
