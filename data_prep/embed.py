"""EMBED cohort: 2D screening mammograms (CC/MLO) of women with density, race and age.

Usage::

    python -m data_prep.embed --root DIR --out COHORT.csv [--seed 42] [--split 0.6 0.1 0.3]
                              [--no-check-files]

DIR holds ``EMBED_OpenData_metadata.csv`` (one row per image) and ``EMBED_OpenData_clinical.csv`` (one row
per exam, or per side; each may be ``.csv.gz``) and the images. ``anon_dicom_path`` is a path on the
source system: the part from its first ``cohort_<n>/`` component on is taken relative to DIR; a path
without one is taken relative to DIR as it is (an absolute one only when it lies under DIR). Filters, in
order (each is a row of the flow table):

1. FinalImageType 2D (no C-view); ViewPosition CC or MLO, XCCL counted as CC; no spot/magnification view
   (spot_mag == 1); ImageLateralityFinal L or R;
2. the clinical row of the exam (acc_anon) for the image's side: side L/R rows apply to that side, B or
   blank to both; images with none, or with contradicting rows, are dropped;
3. female: GENDER_DESC Female (when the column exists); tissueden 1-4 gives density A-D (5 = male);
4. race from ETHNICITY_DESC: Caucasian or White, African American or Black (any spacing), Asian;
5. age_at_study present; the DICOM path resolvable and (unless ``--no-check-files``) the file present.

Whole patients are then split into train/val/test (see :mod:`data_prep.flow`). The cohort has one row per
image: path (relative to DIR), patient, study, image_id, split, age, race, density, view, laterality.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from data_prep.flow import (
    Flow,
    attach_unique,
    clean_text,
    keep_existing_files,
    locate_tables,
    read_table,
    run_cli,
)

PROG = "data_prep.embed"
METADATA = "EMBED_OpenData_metadata.csv"
CLINICAL = "EMBED_OpenData_clinical.csv"
TABLES = (METADATA, CLINICAL)
IDS = ("empi_anon", "acc_anon")

VIEWS = {"CC": "CC", "XCCL": "CC", "MLO": "MLO"}
SIDES = {"L": ["L"], "R": ["R"], "B": ["L", "R"], "": ["L", "R"]}  # clinical side -> image sides it covers
DENSITIES = {1: "A", 2: "B", 3: "C", 4: "D"}
RACES = {"Caucasian or White": "White", "African American or Black": "Black", "Asian": "Asian"}
COHORT_PART = re.compile(r"(?:^|/)(cohort_\d+/.+)$")
COLUMNS = ("path", "patient", "study", "image_id", "split", "age", "race", "density", "view", "laterality")
ATTRIBUTES = ("race", "density", "view", "laterality")


def resolve_path(source: object, root: Path) -> str | None:
    """The image's path relative to ``root`` (forward slashes), or None when it cannot be placed there."""
    if not isinstance(source, str) or not source.strip():
        return None
    text = source.strip().replace("\\", "/")
    match = COHORT_PART.search(text)
    if match:
        text = match.group(1)
    elif text.startswith("/"):
        prefix = root.resolve().as_posix().rstrip("/") + "/"
        if not text.startswith(prefix):
            return None
        text = text[len(prefix) :]
    text = posixpath.normpath(text)
    return None if text.startswith("../") or text in (".", "..") else text


def image_id(path: str) -> str:
    """The DICOM file name without ``.dcm`` (UID file names contain dots, so not Path.stem)."""
    name = posixpath.basename(path)
    return name[: -len(".dcm")] if name.lower().endswith(".dcm") else name


def read_tables(root: Path) -> dict[str, pd.DataFrame]:
    """Both input tables, reduced to the columns the cohort needs."""
    paths = locate_tables(root, TABLES)
    metadata = read_table(
        paths[METADATA],
        [
            "anon_dicom_path",
            "empi_anon",
            "acc_anon",
            "ViewPosition",
            "ImageLateralityFinal",
            "FinalImageType",
        ],
        optional=["spot_mag"],
        ids=IDS,
    )
    clinical = read_table(
        paths[CLINICAL],
        ["acc_anon", "tissueden", "age_at_study", "ETHNICITY_DESC"],
        optional=["side", "GENDER_DESC"],
        ids=IDS,
    )
    return {METADATA: metadata, CLINICAL: clinical}


def spot_magnification(images: pd.DataFrame) -> pd.Series:
    """True for spot-compression / magnification views (spot_mag == 1; none when the column is absent)."""
    if "spot_mag" not in images:
        return pd.Series(False, index=images.index)
    return pd.to_numeric(images["spot_mag"], errors="coerce") == 1


def screening_views(metadata: pd.DataFrame, flow: Flow) -> pd.DataFrame:
    """2D CC/MLO images of one side, without spot/magnification views."""
    images = metadata.assign(
        view=clean_text(metadata["ViewPosition"]).map(VIEWS),
        side=clean_text(metadata["ImageLateralityFinal"]),
    )
    images = flow.keep(images, clean_text(images["FinalImageType"]) == "2D", "not a 2D image (C-view or other)")
    images = flow.keep(images, images["view"].notna(), "view not CC/MLO (XCCL counted as CC)")
    images = flow.keep(images, ~spot_magnification(images), "spot/magnification view")
    return flow.keep(images, images["side"].isin(["L", "R"]), "laterality not L/R")


def clinical_by_side(clinical: pd.DataFrame) -> pd.DataFrame:
    """Clinical rows keyed by (acc_anon, side), a B or blank side standing for both L and R."""
    side = clean_text(clinical["side"]).fillna("").str.upper() if "side" in clinical else ""
    gender = clean_text(clinical["GENDER_DESC"]) if "GENDER_DESC" in clinical else "Female"
    rows = pd.DataFrame(
        {
            "acc_anon": clinical["acc_anon"],
            "side": pd.Series(side, index=clinical.index).map(SIDES),
            "tissueden": pd.to_numeric(clinical["tissueden"], errors="coerce"),
            "age": pd.to_numeric(clinical["age_at_study"], errors="coerce").astype(float),
            "ethnicity": clean_text(clinical["ETHNICITY_DESC"]),
            "gender": gender,
        }
    )
    return rows.explode("side")


def add_clinical(images: pd.DataFrame, clinical: pd.DataFrame, flow: Flow) -> pd.DataFrame:
    """Join the exam's clinical row for the image's side; keep women with density 1-4 and three races."""
    images = attach_unique(
        images,
        clinical_by_side(clinical),
        ["acc_anon", "side"],
        flow,
        "no clinical row for the exam and side",
        "contradictory clinical rows for the exam and side",
    )
    images = flow.keep(images, images["gender"] == "Female", "not female (GENDER_DESC)")
    images = images.assign(density=images["tissueden"].map(DENSITIES), race=images["ethnicity"].map(RACES))
    images = flow.keep(images, images["density"].notna(), "tissueden not 1-4 (5 = male)")
    images = flow.keep(images, images["race"].notna(), "race not White/Asian/Black")
    return flow.keep(images, images["age"].notna(), "age_at_study missing")


def add_paths(images: pd.DataFrame, root: Path, check_files: bool, flow: Flow) -> pd.DataFrame:
    """Place each anon_dicom_path under ``root``; drop unresolvable paths and (optionally) missing files."""
    paths = images["anon_dicom_path"].map(lambda source: resolve_path(source, root))
    images = images.assign(path=paths)
    images = flow.keep(images, images["path"].notna(), "DICOM path not resolvable under root")
    if check_files:
        images = keep_existing_files(images, root, flow)
    return images.assign(image_id=images["path"].map(image_id))


def build_cohort(root: Path, check_files: bool = True) -> tuple[pd.DataFrame, Flow]:
    """The filtered, labelled image table (without split) and its flow table."""
    tables = read_tables(root)
    flow = Flow(patient="empi_anon")
    images = screening_views(tables[METADATA], flow)
    images = add_clinical(images, tables[CLINICAL], flow)
    images = add_paths(images, root, check_files, flow)
    cohort = images.rename(columns={"empi_anon": "patient", "acc_anon": "study", "side": "laterality"})
    return cohort, flow


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    description = "Build the EMBED cohort table (one row per 2D CC/MLO image) with its flow table."
    return run_cli(PROG, description, build_cohort, COLUMNS, ATTRIBUTES, argv)


if __name__ == "__main__":
    raise SystemExit(main())
