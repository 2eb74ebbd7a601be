"""Write a complete phantom data set (DICOM files, label tables, ground truth) in one call."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

import medcf
from medcf.core.attributes import AttributeValue, SchemaError
from medcf.phantoms.cxr import ChestXRayPhantom, CXRPopulation
from medcf.phantoms.embed_export import plan_embed
from medcf.phantoms.embed_export import truth_rendering as embed_truth_rendering
from medcf.phantoms.mammo import MammogramPhantom, MammoPopulation
from medcf.phantoms.mimic_export import plan_mimic_cxr
from medcf.phantoms.mimic_export import truth_rendering as mimic_truth_rendering
from medcf.phantoms.scm import Phantom, Population
from medcf.phantoms.writer import (
    TRUTH_FILE,
    ImageJob,
    staged_directory,
    truth_table,
    write_images,
)
from medcf.runtime.files import write_csv_atomic

PhantomKind = Literal["cxr", "mammo"]
CONFIG_FILE = "phantom.json"
MIN_SIZE, MAX_SIZE = 32, 4096


@dataclass(frozen=True)
class PhantomSpec:
    """What each phantom kind is made of: its model, its population settings and its export planner.

    Attributes:
        phantom: the phantom class.
        population: its population settings class.
        planner: plans the export: ``(phantom, n, size, rng, interventions)`` -> (image jobs, label tables by
            file name).
        truth_rendering: maps a ground-truth row to the render options, mirroring and burned-in label of its file.
    """

    phantom: type[Phantom]
    population: type[Population]
    planner: Callable[..., tuple[list[ImageJob], dict[str, pd.DataFrame]]]
    #: a ground-truth row -> (render options, mirrored, burned-in label) of its file
    truth_rendering: Callable[[Mapping[str, Any]], tuple[dict[str, Any], bool, str | None]]


KINDS: dict[str, PhantomSpec] = {
    "cxr": PhantomSpec(ChestXRayPhantom, CXRPopulation, plan_mimic_cxr, mimic_truth_rendering),
    "mammo": PhantomSpec(MammogramPhantom, MammoPopulation, plan_embed, embed_truth_rendering),
}


def make_phantom(kind: str, population: Population | Mapping | None = None) -> Phantom:
    """The phantom of ``kind`` ("cxr" or "mammo"), with default or given population settings.

    Args:
        kind: "cxr" or "mammo".
        population: population settings, or a mapping of them (checked by ``from_mapping``); None for the
            defaults.

    Returns:
        The phantom.

    Raises:
        SchemaError: when ``kind`` is unknown or the population settings are invalid.
    """
    if kind not in KINDS:
        raise SchemaError(f"unknown phantom kind {kind!r}; choose one of {', '.join(KINDS)}")
    spec = KINDS[kind]
    if isinstance(population, Mapping):
        population = spec.population.from_mapping(population)
    return spec.phantom(population)  # type: ignore[call-arg]


def check_size(size: int) -> None:
    """Raise unless ``size`` is a multiple of 16 between 32 and 4096.

    Args:
        size: image side in pixels.

    Raises:
        SchemaError: when ``size`` is not allowed.
    """
    if size % 16 or not MIN_SIZE <= size <= MAX_SIZE:
        raise SchemaError(f"size: {size} must be a multiple of 16 between {MIN_SIZE} and {MAX_SIZE}")


def write_phantom_dataset(
    kind: str,
    out: str | Path,
    n: int,
    size: int,
    seed: int,
    population: Population | Mapping | None = None,
    do: Mapping[str, AttributeValue] | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Write ``n`` phantom images (plus the extra views a real export holds) shaped like MIMIC-CXR
    (``kind="cxr"``) or EMBED (``kind="mammo"``) into the new folder ``out``.

    ``do`` intervenes on attributes for the whole data set (e.g. ``{"sex": "F"}``). The folder appears only
    when everything is written; an existing non-empty ``out`` is an error before any work is done.

    Args:
        kind: "cxr" or "mammo".
        out: the new data set folder.
        n: number of images to plan, > 0: frontal images for "cxr", about that many 2D screening images for
            "mammo"; the extra views come on top.
        size: image side in pixels, a multiple of 16 between 32 and 4096.
        seed: seed of the random generator that plans the data set.
        population: population settings or a mapping of them; None for the defaults.
        do: attribute values to set on every subject (default: none).
        workers: processes that write the files (default: one per available core; 1: in this process).
        progress: show a progress bar (default True).

    Returns:
        ``out``, holding the DICOM files, the label tables, ``phantom_truth.csv`` and ``phantom.json``.

    Raises:
        SchemaError: when ``n``, ``size``, ``kind``, ``population`` or ``do`` is invalid.
        OutputExistsError: when ``out`` exists and is not an empty folder.
    """
    if n <= 0:
        raise SchemaError(f"n: {n} must be a positive number of images")
    check_size(size)
    phantom = make_phantom(kind, population)
    interventions = phantom.schema.validate(do or {})
    with staged_directory(Path(out)) as staging:
        jobs, tables = KINDS[kind].planner(phantom, n, size, np.random.default_rng(seed), interventions)
        write_images(phantom, jobs, size, staging, workers=workers, progress=progress)
        for name, table in tables.items():
            write_csv_atomic(staging / name, table)
        write_csv_atomic(staging / TRUTH_FILE, truth_table(phantom, jobs))
        config = {
            "kind": kind,
            "n": n,
            "size": size,
            "seed": seed,
            "files": len(jobs),
            "interventions": interventions,
            "population": phantom.population.to_dict(),
            "medcf_version": medcf.__version__,
        }
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str) + "\n")
    return Path(out)
