"""MIMIC-CXR cohort: frontal chest X-rays labelled No Finding / Pleural Effusion with age, sex and race.

Usage::

    python -m data_prep.mimic_cxr --root DIR --out COHORT.csv [--seed 42] [--split 0.6 0.1 0.3]
                                  [--no-check-files]

DIR holds ``mimic-cxr-2.0.0-metadata.csv``, ``mimic-cxr-2.0.0-chexpert.csv`` and the MIMIC-IV tables
``patients.csv`` and ``admissions.csv`` (each may be ``.csv.gz``) and the images under
``files/p1X/pXXXXXXXX/sYYYYYYYY/<dicom_id>.dcm``. Filters, in order (each is a row of the flow table):

1. ViewPosition AP or PA;
2. one chexpert row per study; disease "Pleural Effusion" if Pleural Effusion == 1, else "No Finding" if
   No Finding == 1, else dropped (uncertain -1 effusion labels, other findings);
3. one patients row per subject; sex = gender M/F; age = anchor_age + year(StudyDate) - anchor_year;
4. admissions: subjects whose race (``race``, or ``ethnicity`` in older releases) differs between
   admissions are dropped; WHITE, ASIAN, BLACK/AFRICAN AMERICAN are kept as White, Asian, Black;
5. the DICOM file exists (skipped with ``--no-check-files``).

Whole patients are then split into train/val/test (see :mod:`data_prep.flow`). The cohort has one row per
image: path (relative to DIR), patient, study, image_id, split, age, sex, race, disease, view.
"""

from __future__ import annotations

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

PROG = "data_prep.mimic_cxr"
METADATA = "mimic-cxr-2.0.0-metadata.csv"
CHEXPERT = "mimic-cxr-2.0.0-chexpert.csv"
PATIENTS = "patients.csv"
ADMISSIONS = "admissions.csv"
TABLES = (METADATA, CHEXPERT, PATIENTS, ADMISSIONS)
IDS = ("subject_id", "study_id", "dicom_id")

FRONTAL = ("AP", "PA")
SEXES = ("F", "M")
RACES = {"WHITE": "White", "ASIAN": "Asian", "BLACK/AFRICAN AMERICAN": "Black"}
COLUMNS = ("path", "patient", "study", "image_id", "split", "age", "sex", "race", "disease", "view")
ATTRIBUTES = ("sex", "race", "disease", "view")


def chexpert_disease(chexpert: pd.DataFrame) -> pd.Series:
    """Pleural Effusion if its label is 1 (wins), else No Finding if its label is 1, else "other"."""
    effusion = pd.to_numeric(chexpert["Pleural Effusion"], errors="coerce") == 1
    normal = pd.to_numeric(chexpert["No Finding"], errors="coerce") == 1
    disease = pd.Series("other", index=chexpert.index, dtype=object)
    disease[normal] = "No Finding"
    disease[effusion] = "Pleural Effusion"
    return disease


def dicom_path(frame: pd.DataFrame) -> pd.Series:
    """files/p1X/pXXXXXXXX/sYYYYYYYY/<dicom_id>.dcm, p1X being "p" + the subject id's first two digits."""
    subject, study, dicom = frame["subject_id"], frame["study_id"], frame["dicom_id"]
    return "files/p" + subject.str[:2] + "/p" + subject + "/s" + study + "/" + dicom + ".dcm"


def read_tables(root: Path) -> dict[str, pd.DataFrame]:
    """The four input tables, reduced to the columns the cohort needs."""
    paths = locate_tables(root, TABLES)
    columns = {
        METADATA: ["dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate"],
        CHEXPERT: ["subject_id", "study_id", "No Finding", "Pleural Effusion"],
        PATIENTS: ["subject_id", "gender", "anchor_age", "anchor_year"],
        ADMISSIONS: ["subject_id", ("race", "ethnicity")],
    }
    return {name: read_table(paths[name], columns[name], ids=IDS) for name in TABLES}


def add_labels(images: pd.DataFrame, chexpert: pd.DataFrame, flow: Flow) -> pd.DataFrame:
    """Join each study's chexpert labels; keep No Finding and Pleural Effusion."""
    labels = chexpert[["subject_id", "study_id"]].assign(disease=chexpert_disease(chexpert))
    images = attach_unique(
        images, labels, ["subject_id", "study_id"], flow, "no chexpert row", "conflicting chexpert rows"
    )
    return flow.keep(images, images["disease"] != "other", "disease other than No Finding / Pleural Effusion")


def add_demographics(images: pd.DataFrame, patients: pd.DataFrame, flow: Flow) -> pd.DataFrame:
    """Join sex and anchor age; age at the study in whole years of anchor age plus elapsed years."""
    images = attach_unique(images, patients, ["subject_id"], flow, "no patients row", "conflicting patients rows")
    images = images.assign(sex=clean_text(images["gender"]))
    images = flow.keep(images, images["sex"].isin(SEXES), "sex not M/F")
    year = pd.to_numeric(images["StudyDate"], errors="coerce") // 10_000
    anchor_age = pd.to_numeric(images["anchor_age"], errors="coerce")
    age = anchor_age + year - pd.to_numeric(images["anchor_year"], errors="coerce")
    images = images.assign(age=age.astype(float))
    return flow.keep(images, images["age"].notna(), "age missing (anchor_age, anchor_year or StudyDate)")


def add_race(images: pd.DataFrame, admissions: pd.DataFrame, flow: Flow) -> pd.DataFrame:
    """Join the race recorded at admission; drop subjects recorded with different races, keep three."""
    recorded = admissions[["subject_id"]].assign(recorded_race=clean_text(admissions["race"]))
    images = attach_unique(
        images, recorded, ["subject_id"], flow, "no admissions row", "race differs between admissions"
    )
    images = images.assign(race=images["recorded_race"].map(RACES))
    return flow.keep(images, images["race"].notna(), "race not White/Asian/Black")


def build_cohort(root: Path, check_files: bool = True) -> tuple[pd.DataFrame, Flow]:
    """The filtered, labelled image table (without split) and its flow table."""
    tables = read_tables(root)
    flow = Flow(patient="subject_id")
    images = tables[METADATA].assign(view=clean_text(tables[METADATA]["ViewPosition"]))
    images = flow.keep(images, images["view"].isin(FRONTAL), "view not AP/PA")
    images = add_labels(images, tables[CHEXPERT], flow)
    images = add_demographics(images, tables[PATIENTS], flow)
    images = add_race(images, tables[ADMISSIONS], flow)
    images = images.assign(path=dicom_path(images))
    if check_files:
        images = keep_existing_files(images, root, flow)
    cohort = images.rename(columns={"subject_id": "patient", "study_id": "study", "dicom_id": "image_id"})
    return cohort, flow


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    description = "Build the MIMIC-CXR cohort table (one row per frontal image) with its flow table."
    return run_cli(PROG, description, build_cohort, COLUMNS, ATTRIBUTES, argv)


if __name__ == "__main__":
    raise SystemExit(main())
