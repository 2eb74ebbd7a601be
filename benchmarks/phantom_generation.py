"""Phantom generation speed: images per second with DICOM writing (the issue's figure), and render-only.

    .venv/bin/python benchmarks/phantom_generation.py [--n 120] [--size 256] [--repeats 3]

Each configuration runs ``--repeats`` times; the table reports the median. Images/s counts every DICOM
file written (screening images plus lateral views, FOR PROCESSING twins, ...), including encoding and
compression, CSV tables and the ground-truth sidecar.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from medcf.phantoms import make_phantom, write_phantom_dataset
from medcf.phantoms.dataset import CONFIG_FILE
from medcf.phantoms.writer import default_workers


def time_dataset(kind: str, n: int, size: int, workers: int, seed: int) -> float:
    """Images per second for one data set written from scratch."""
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        out = write_phantom_dataset(kind, Path(tmp) / "out", n, size, seed, workers=workers, progress=False)
        elapsed = time.perf_counter() - started
        files = json.loads((out / CONFIG_FILE).read_text())["files"]
    return files / elapsed


def time_render(kind: str, n: int, size: int, seed: int) -> float:
    """Images per second for rendering alone, one process."""
    phantom = make_phantom(kind)
    subjects = phantom.sample(n, np.random.default_rng(seed))
    started = time.perf_counter()
    for subject in subjects:
        phantom.render(subject, size)
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=120)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cores = default_workers()
    machine = platform.processor() or platform.machine()
    print(f"machine: {machine}, {cores} cores; n={args.n}, size={args.size}, median of {args.repeats}")
    header = ["phantom", "render only, 1 process", "with DICOM, 1 worker", f"with DICOM, {cores} workers"]
    print("| " + " | ".join(header) + " |  (images/s)")
    print("|---|---|---|---|")
    for kind in ("cxr", "mammo"):
        render = statistics.median(time_render(kind, args.n, args.size, r) for r in range(args.repeats))
        single = statistics.median(time_dataset(kind, args.n, args.size, 1, r) for r in range(args.repeats))
        parallel = statistics.median(time_dataset(kind, args.n, args.size, cores, r) for r in range(args.repeats))
        print(f"| {kind} | {render:.1f} | {single:.1f} | {parallel:.1f} |", flush=True)


if __name__ == "__main__":
    main()
