"""Chest phantom data set shaped exactly like a MIMIC-CXR export (with the MIMIC-IV tables it joins to).

Layout written under the output folder::

    files/p1X/pXXXXXXXX/sYYYYYYYY/<dicom_id>.dcm   CR and DX, frontal (PA/AP) and some lateral views
    mimic-cxr-2.0.0-metadata.csv                  one row per DICOM (dicom_id, subject_id, study_id, ...)
    mimic-cxr-2.0.0-chexpert.csv                  one row per study, 14 findings as 1.0 / 0.0 / -1.0 / blank
    patients.csv                                  MIMIC-IV: subject_id, gender, anchor_age, anchor_year, ...
    admissions.csv                                MIMIC-IV: one row per admission, with race
    phantom_truth.csv                             ground truth (attributes, exogenous noise) per DICOM

Patients have 1-3 studies; a follow-up keeps the patient's anatomy, sex and race, ages by the time
between studies and draws its disease noise anew. As in the real data, the recorded age is
``anchor_age + year(StudyDate) - anchor_year`` (whole years), and the tables carry realistic label noise
for the cohort builder to handle: uncertain (-1) effusion labels, other findings, subjects whose race
differs between admissions or is unknown. Labels are never written into the DICOM headers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pydicom.uid import UID

from medcf.core.attributes import AttributeValue
from medcf.phantoms.cxr import ChestXRayPhantom
from medcf.phantoms.encodings import describe_encoding, random_encoding
from medcf.phantoms.scm import Subject
from medcf.phantoms.writer import ImageJob
from medcf.radiograph.encode import PixelEncoding, new_uid

CHEXPERT_FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)
MIMIC_RACE = {"White": "WHITE", "Asian": "ASIAN", "Black": "BLACK/AFRICAN AMERICAN"}
SOP_CLASS = {"CR": UID("1.2.840.10008.5.1.4.1.1.1"), "DX": UID("1.2.840.10008.5.1.4.1.1.1.1")}
VIEW_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior", "LL": "left lateral"}
FIELD_OF_VIEW_MM = 430.0


@dataclass(frozen=True)
class LabelNoise:
    """How often the tables disagree with the truth, as real exports do.

    Attributes:
        uncertain_effusion: fraction of Pleural Effusion studies recorded as -1.0 (uncertain).
        other_finding: fraction of No Finding studies recorded with another finding instead.
        race_conflict: fraction of patients with a second admission of a different race.
        race_unknown: fraction of patients whose race is recorded as UNKNOWN.
        lateral_study: fraction of studies that also have a lateral view.
        follow_up: probabilities of 1, 2 and 3 studies per patient.
    """

    uncertain_effusion: float = 0.04  # Pleural Effusion recorded as -1.0
    other_finding: float = 0.05  # a No Finding study recorded with another finding instead
    race_conflict: float = 0.04  # a second admission with a different race
    race_unknown: float = 0.03  # race recorded as UNKNOWN
    lateral_study: float = 0.3  # studies that also have a lateral view
    follow_up: tuple[float, float, float] = (0.6, 0.25, 0.15)  # P(1, 2, 3 studies per patient)


def _dicom_id(rng: np.random.Generator) -> str:
    return "-".join(f"{int(v):08x}" for v in rng.integers(0, 2**32, size=5, dtype=np.uint64))


def _unique_ids(rng: np.random.Generator, count: int, low: int, high: int) -> list[int]:
    return [low + int(v) for v in rng.choice(high - low, size=count, replace=False)]


def plan_mimic_cxr(
    phantom: ChestXRayPhantom,
    n: int,
    size: int,
    rng: np.random.Generator,
    do: Mapping[str, AttributeValue] | None = None,
    label_noise: LabelNoise = LabelNoise(),
) -> tuple[list[ImageJob], dict[str, pd.DataFrame]]:
    """Plan ``n`` frontal images (plus lateral views) and the four MIMIC tables.

    Args:
        phantom: the chest phantom that draws the patients.
        n: number of studies, each with one frontal image.
        size: image side in pixels (for the header and the metadata table).
        rng: random generator for every choice.
        do: attribute values to set on every subject (default: none).
        label_noise: how often the tables disagree with the truth (default: ``LabelNoise()``).

    Returns:
        The image jobs, and the tables by file name (``mimic-cxr-2.0.0-metadata.csv``,
        ``mimic-cxr-2.0.0-chexpert.csv``, ``patients.csv``, ``admissions.csv``).
    """
    do = dict(do or {})
    study_counts: list[int] = []
    while sum(study_counts) < n:
        study_counts.append(min(int(rng.choice(3, p=label_noise.follow_up)) + 1, n - sum(study_counts)))
    subject_ids = _unique_ids(rng, len(study_counts), 10_000_000, 20_000_000)
    study_ids = iter(_unique_ids(rng, n, 50_000_000, 60_000_000))

    jobs: list[ImageJob] = []
    metadata, chexpert, patients, admissions = [], [], [], []
    for subject_id, count in zip(subject_ids, study_counts, strict=True):
        first = phantom.sample(1, rng, do)[0]
        anchor_year = int(rng.integers(2110, 2190))
        first_year = anchor_year + int(rng.integers(0, 3))
        first_date = dt.date(first_year, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365)))
        anchor_age = round(float(first.attributes["age"])) - (first_year - anchor_year)
        patients.append(
            {
                "subject_id": subject_id,
                "gender": first.attributes["sex"],
                "anchor_age": anchor_age,
                "anchor_year": anchor_year,
                "anchor_year_group": _year_group(rng),
                "dod": "",
            }
        )
        admissions.extend(_admissions(rng, subject_id, str(first.attributes["race"]), first_date, label_noise))

        date, subject = first_date, first
        for visit in range(count):
            if visit:
                years_left = 95.0 - float(subject.attributes["age"])  # the schema's age range ends at 95
                days = min(int(rng.integers(60, 900)), int(years_left * 365.25))
                date = date + dt.timedelta(days=days)
                age = float(subject.attributes["age"]) + days / 365.25
                subject = phantom.follow_up(subject, rng, ("study", "image"), {"age": age, **do})
            study_id = next(study_ids)
            recorded_age = anchor_age + date.year - anchor_year
            chexpert.append(_chexpert_row(rng, subject_id, study_id, subject, label_noise))
            views = [str(rng.choice(["PA", "AP"], p=[0.6, 0.4]))]
            if rng.uniform() < label_noise.lateral_study:
                views.append("LL")
            study_uid = new_uid("study", subject_id, study_id)
            procedure = _procedure(views)
            time = _study_time(rng)
            for number, view in enumerate(views, start=1):
                dicom_id = _dicom_id(rng)
                modality = str(rng.choice(["CR", "DX"]))
                encoding = random_encoding(rng, bits=(12, 14, 15, 16))
                path = f"files/p{str(subject_id)[:2]}/p{subject_id}/s{study_id}/{dicom_id}.dcm"
                header = _header(
                    rng,
                    subject_id,
                    study_id,
                    study_uid,
                    dicom_id,
                    number,
                    modality,
                    view,
                    subject,
                    recorded_age,
                    date,
                    time,
                    size,
                )
                metadata.append(
                    {
                        "dicom_id": dicom_id,
                        "subject_id": subject_id,
                        "study_id": study_id,
                        "PerformedProcedureStepDescription": procedure,
                        "ViewPosition": "LATERAL" if view == "LL" and rng.uniform() < 0.7 else view,
                        "Rows": size,
                        "Columns": size,
                        "StudyDate": int(date.strftime("%Y%m%d")),
                        "StudyTime": float(time),
                        "ProcedureCodeSequence_CodeMeaning": procedure,
                        "ViewCodeSequence_CodeMeaning": VIEW_MEANING[view],
                        "PatientOrientationCodeSequence_CodeMeaning": "Erect" if view != "AP" else "Recumbent",
                    }
                )
                jobs.append(
                    ImageJob(
                        path=path,
                        subject=subject,
                        header=header,
                        encoding=encoding,
                        render_options={"view": view},
                        info=_info(subject_id, study_id, dicom_id, view, modality, encoding, recorded_age),
                    )
                )
    tables = {
        "mimic-cxr-2.0.0-metadata.csv": pd.DataFrame(metadata),
        "mimic-cxr-2.0.0-chexpert.csv": pd.DataFrame(chexpert, columns=["subject_id", "study_id", *CHEXPERT_FINDINGS]),
        "patients.csv": pd.DataFrame(patients),
        "admissions.csv": pd.DataFrame(admissions),
    }
    return jobs, tables


def _procedure(views: list[str]) -> str:
    """The procedure description MIMIC records for a study with these views."""
    if "LL" in views:
        return "CHEST (PA AND LAT)"
    return "CHEST (PORTABLE AP)" if views[0] == "AP" else "CHEST (PA)"


def _study_time(rng: np.random.Generator) -> str:
    hour, minute, second, millis = (int(rng.integers(0, k)) for k in (24, 60, 60, 1000))
    return f"{hour:02d}{minute:02d}{second:02d}.{millis:03d}"


def _year_group(rng: np.random.Generator) -> str:
    start = int(rng.choice([2008, 2011, 2014, 2017, 2020]))
    return f"{start} - {start + 2}"


def _admissions(
    rng: np.random.Generator, subject_id: int, race: str, first_date: dt.date, noise: LabelNoise
) -> list[dict[str, Any]]:
    count = int(rng.integers(1, 4))
    recorded = [MIMIC_RACE[race]] * count
    if rng.uniform() < noise.race_unknown:
        recorded = ["UNKNOWN"] * count
    elif rng.uniform() < noise.race_conflict:
        others = [v for v in MIMIC_RACE.values() if v != recorded[0]] + [
            "OTHER",
            "HISPANIC/LATINO - PUERTO RICAN",
        ]
        recorded = recorded + [str(rng.choice(others))]
    rows = []
    for label in recorded:
        admit = dt.datetime.combine(
            first_date, dt.time(int(rng.integers(0, 24)), int(rng.integers(0, 60)))
        ) + dt.timedelta(days=int(rng.integers(-400, 400)))
        rows.append(
            {
                "subject_id": subject_id,
                "hadm_id": int(rng.integers(20_000_000, 30_000_000)),
                "admittime": admit.strftime("%Y-%m-%d %H:%M:%S"),
                "dischtime": (admit + dt.timedelta(days=int(rng.integers(1, 12)))).strftime("%Y-%m-%d %H:%M:%S"),
                "deathtime": "",
                "admission_type": str(rng.choice(["EW EMER.", "URGENT", "ELECTIVE", "OBSERVATION ADMIT"])),
                "admit_provider_id": f"P{int(rng.integers(10000, 99999))}",
                "admission_location": "EMERGENCY ROOM",
                "discharge_location": "HOME",
                "insurance": str(rng.choice(["Medicare", "Medicaid", "Other"])),
                "language": "ENGLISH",
                "marital_status": str(rng.choice(["MARRIED", "SINGLE", "WIDOWED", "DIVORCED"])),
                "race": label,
                "edregtime": "",
                "edouttime": "",
                "hospital_expire_flag": 0,
            }
        )
    return rows


def _chexpert_row(
    rng: np.random.Generator, subject_id: int, study_id: int, subject: Subject, noise: LabelNoise
) -> dict[str, Any]:
    row: dict[str, Any] = {"subject_id": subject_id, "study_id": study_id}
    if subject.attributes["disease"] == "Pleural Effusion":
        row["Pleural Effusion"] = -1.0 if rng.uniform() < noise.uncertain_effusion else 1.0
        if rng.uniform() < 0.3:
            row["Lung Opacity"] = 1.0
    elif rng.uniform() < noise.other_finding:
        row[str(rng.choice(["Atelectasis", "Cardiomegaly", "Lung Opacity"]))] = 1.0
    else:
        row["No Finding"] = 1.0
        if rng.uniform() < 0.3:
            row["Pleural Effusion"] = 0.0  # a negated mention ("no effusion"), common in the real labels
    if rng.uniform() < 0.1:
        row["Support Devices"] = 1.0
    return row


def _header(
    rng: np.random.Generator,
    subject_id: int,
    study_id: int,
    study_uid: str,
    dicom_id: str,
    number: int,
    modality: str,
    view: str,
    subject: Subject,
    recorded_age: int,
    date: dt.date,
    time: str,
    size: int,
) -> dict[str, Any]:
    spacing = [round(FIELD_OF_VIEW_MM / size, 4)] * 2
    header: dict[str, Any] = {
        "SOPClassUID": SOP_CLASS[modality],
        "SOPInstanceUID": new_uid("sop", dicom_id),
        "StudyInstanceUID": study_uid,
        "SeriesInstanceUID": new_uid("series", dicom_id),
        "PatientName": f"PHANTOM^CXR{subject_id}",
        "PatientID": str(subject_id),
        "StudyDate": date.strftime("%Y%m%d"),
        "StudyTime": time,
        "StudyID": str(study_id)[-8:],
        "AccessionNumber": f"PHA{study_id}",
        "StudyDescription": "CHEST (PA AND LAT)",
        "SeriesDescription": f"CHEST {view}",
        "SeriesNumber": number,
        "InstanceNumber": 1,
        "Modality": modality,
        "Manufacturer": "MEDCF PHANTOM",
        "ManufacturerModelName": "chest-scm",
        "BodyPartExamined": "CHEST",
        "ViewPosition": view,
        "PatientOrientation": ["P", "F"] if view == "LL" else ["L", "F"],
        "ImageType": ["ORIGINAL", "PRIMARY"],
        "BurnedInAnnotation": "NO",
        "PatientIdentityRemoved": "YES",
        "DeidentificationMethod": "synthetic phantom: no real patient",
    }
    if rng.uniform() < 0.9:
        header["PatientSex"] = subject.attributes["sex"]
    if rng.uniform() < 0.8:
        header["PatientAge"] = f"{recorded_age:03d}Y"
    if modality == "DX":
        header["PresentationIntentType"] = "FOR PRESENTATION"
        header["ImagerPixelSpacing"] = spacing
        if rng.uniform() < 0.5:
            header["PixelSpacing"] = spacing
    else:
        header["PixelSpacing"] = spacing
    return header


def _info(
    subject_id: int,
    study_id: int,
    dicom_id: str,
    view: str,
    modality: str,
    encoding: PixelEncoding,
    recorded_age: int,
) -> dict[str, Any]:
    return {
        "subject_id": subject_id,
        "study_id": study_id,
        "dicom_id": dicom_id,
        "view_position": view,
        "modality": modality,
        "recorded_age": recorded_age,
        **describe_encoding(encoding),
    }


def truth_rendering(row: Mapping[str, Any]) -> tuple[dict[str, Any], bool, str | None]:
    """How the file of a ground-truth row was rendered: (render options, mirrored, burned-in label).

    Args:
        row: one row of ``phantom_truth.csv``; ``view_position`` is read.

    Returns:
        ``{"view": ...}``, False (never mirrored) and None (no burned-in label).
    """
    return {"view": str(row["view_position"])}, False, None
