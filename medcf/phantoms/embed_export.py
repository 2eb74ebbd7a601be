"""Mammogram phantom data set shaped exactly like an EMBED (Emory Breast Imaging Dataset) export.

Layout written under the output folder::

    cohort_1/<empi_anon>/<acc_anon>/<SOPInstanceUID>.dcm   MG images (CC, MLO; both sides)
    EMBED_OpenData_metadata.csv                            one row per DICOM; anon_dicom_path as in EMBED
    EMBED_OpenData_clinical.csv                            one row per exam (or per side), tissueden, race
    phantom_truth.csv                                      ground truth (attributes, exogenous noise)

As in the real export, ``anon_dicom_path`` is an absolute path on the source system
(``/mnt/NAS2/mammo/anon_dicom/cohort_1/...``): the part from ``cohort_1/`` on is relative to the output
folder. What the cohort builder and the preparation must cope with is all there: laterality sometimes only
in the series-level Laterality tag, some FOR PROCESSING images (files only: EMBED's tables list
presentation images), burned-in view labels, XCCL views,
spot-magnification and C-view rows, a few male patients (tissueden 5) and unreported ethnicity.
Right breasts are stored mirrored (chest wall on the image's right), with PatientOrientation to match.
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
from medcf.phantoms.encodings import describe_encoding, random_encoding
from medcf.phantoms.mammo import MammogramPhantom
from medcf.phantoms.scm import Subject
from medcf.phantoms.writer import ImageJob
from medcf.radiograph.encode import new_uid

SOURCE_ROOT = "/mnt/NAS2/mammo/anon_dicom/"
EMBED_ETHNICITY = {"White": "Caucasian or White", "Black": "African American  or Black", "Asian": "Asian"}
SOP_CLASS = {
    "FOR PRESENTATION": UID("1.2.840.10008.5.1.4.1.1.1.2"),
    "FOR PROCESSING": UID("1.2.840.10008.5.1.4.1.1.1.2.1"),
}
MANUFACTURERS = (
    ("HOLOGIC, Inc.", "Selenia Dimensions", "SIGMOID"),
    ("GE MEDICAL SYSTEMS", "Senographe Pristina", "LINEAR"),
)
FIELD_OF_VIEW_MM = 240.0


@dataclass(frozen=True)
class ExportMix:
    """How often the export holds the awkward cases real EMBED data holds.

    Attributes:
        laterality_only_in_series: fraction of images with ImageLaterality absent, only Laterality.
        burned_label: fraction of images with the view label burned into the pixels.
        for_processing_twin: fraction of 2D screening images with an extra raw FOR PROCESSING copy.
        xccl: fraction of CC images recorded as XCCL.
        spot_mag: fraction of exams with an extra spot-magnification image.
        cview: fraction of exams with an extra C-view (synthetic 2D) image.
        unilateral: fraction of exams of one breast only.
        male: fraction of male patients (rendered as density A, recorded with tissueden 5).
        ethnicity_unknown: fraction of patients whose ethnicity is recorded as unreported.
        second_exam: fraction of patients with a second exam.
    """

    laterality_only_in_series: float = 0.3  # ImageLaterality absent, only Laterality
    burned_label: float = 0.3  # view label burned into the pixels
    for_processing_twin: float = 0.08  # an extra raw FOR PROCESSING copy of an image
    xccl: float = 0.03  # a CC image recorded as XCCL
    spot_mag: float = 0.03  # an extra spot-magnification image in the exam
    cview: float = 0.05  # an extra C-view (synthetic 2D) image in the exam
    unilateral: float = 0.1  # exams of one breast only
    male: float = 0.01
    ethnicity_unknown: float = 0.03
    second_exam: float = 0.3


def plan_embed(
    phantom: MammogramPhantom,
    n: int,
    size: int,
    rng: np.random.Generator,
    do: Mapping[str, AttributeValue] | None = None,
    mix: ExportMix = ExportMix(),
) -> tuple[list[ImageJob], dict[str, pd.DataFrame]]:
    """Plan about ``n`` screening images (2D CC/MLO FOR PRESENTATION; extras on top) and both tables.

    Args:
        phantom: the mammogram phantom that draws the patients.
        n: number of screening images; new patients are drawn until it is reached, so the last may go past it.
        size: image side in pixels (for the header and the metadata table).
        rng: random generator for every choice.
        do: attribute values to set on every subject (default: none).
        mix: how often the awkward cases occur (default: ``ExportMix()``).

    Returns:
        The image jobs, and the EMBED tables by file name (``EMBED_OpenData_metadata.csv``,
        ``EMBED_OpenData_clinical.csv``).
    """
    do = dict(do or {})
    jobs: list[ImageJob] = []
    metadata, clinical = [], []
    screening = 0
    while screening < n:
        empi = int(rng.integers(10_000_000, 99_999_999))
        male = rng.uniform() < mix.male
        patient = phantom.sample(1, rng, do)[0]
        ethnicity = (
            "Unknown, Unavailable or Unreported"
            if rng.uniform() < mix.ethnicity_unknown
            else EMBED_ETHNICITY[str(patient.attributes["race"])]
        )
        date = dt.date(int(rng.integers(2012, 2020)), 1, 1) + dt.timedelta(days=int(rng.integers(0, 365)))
        exam = patient
        for visit in range(2 if rng.uniform() < mix.second_exam else 1):
            if visit:
                days = int(rng.integers(300, 800))
                date += dt.timedelta(days=days)
                age = min(float(exam.attributes["age"]) + days / 365.25, 95.0)
                exam = phantom.follow_up(exam, rng, ("study",), {"age": age, **do})
            acc = int(rng.integers(10**15, 10**16))
            sides = ["L", "R"] if rng.uniform() >= mix.unilateral else [str(rng.choice(["L", "R"]))]
            manufacturer = MANUFACTURERS[int(rng.integers(len(MANUFACTURERS)))]
            images = [(side, view, "2D", False) for side in sides for view in ("CC", "MLO")]
            if rng.uniform() < mix.spot_mag:
                images.append((sides[0], "CC", "2D", True))
            if rng.uniform() < mix.cview:
                images.append((sides[0], "MLO", "cview", False))
            clinical.extend(_clinical_rows(rng, empi, acc, date, exam, ethnicity, male, sides))
            for side, view, image_type, spot in images:
                subject = phantom.follow_up(exam, rng, ("image",), {"view": view, **_male(male), **do})
                subject = subject.replace(seeds={**subject.seeds, "anatomy": exam.seeds["anatomy"] + (side == "R")})
                presentations = ["FOR PRESENTATION"]
                if image_type == "2D" and not spot and rng.uniform() < mix.for_processing_twin:
                    presentations.append("FOR PROCESSING")
                for presentation in presentations:
                    job, row = _image(
                        rng,
                        empi,
                        acc,
                        date,
                        exam_age=float(exam.attributes["age"]),
                        male=male,
                        side=side,
                        view=view,
                        image_type=image_type,
                        spot=spot,
                        presentation=presentation,
                        subject=subject,
                        manufacturer=manufacturer,
                        size=size,
                        mix=mix,
                    )
                    jobs.append(job)
                    if presentation == "FOR PRESENTATION":  # EMBED's tables list presentation images only
                        metadata.append(row)
                    screening += image_type == "2D" and not spot and presentation == "FOR PRESENTATION"
    tables = {
        "EMBED_OpenData_metadata.csv": pd.DataFrame(metadata),
        "EMBED_OpenData_clinical.csv": pd.DataFrame(clinical),
    }
    return jobs, tables


def _male(male: bool) -> dict[str, AttributeValue]:
    """A male patient's breast renders fatty (density A); his exam is recorded with tissueden 5."""
    return {"density": "A"} if male else {}


def _clinical_rows(
    rng: np.random.Generator,
    empi: int,
    acc: int,
    date: dt.date,
    exam: Subject,
    ethnicity: str,
    male: bool,
    sides: list[str],
) -> list[dict[str, Any]]:
    density = "ABCD".index(str(exam.attributes["density"])) + 1
    per_side = len(sides) == 2 and rng.uniform() < 0.3
    rows = []
    for side in sides if per_side else ["B" if len(sides) == 2 else sides[0]]:
        rows.append(
            {
                "empi_anon": empi,
                "acc_anon": acc,
                "study_date_anon": date.isoformat(),
                "desc": "MG Screening Bilateral" if len(sides) == 2 else "MG Diagnostic Unilateral",
                "side": side,
                "asses": str(rng.choice(["N", "B", "A"], p=[0.8, 0.15, 0.05])),
                "tissueden": 5 if male else density,
                "age_at_study": round(float(exam.attributes["age"]), 1),
                "ETHNICITY_DESC": ethnicity,
                "ETHNIC_GROUP_DESC": "Non-Hispanic or Latino",
                "GENDER_DESC": "Male" if male else "Female",
            }
        )
    return rows


def _image(
    rng: np.random.Generator,
    empi: int,
    acc: int,
    date: dt.date,
    *,
    exam_age: float,
    male: bool,
    side: str,
    view: str,
    image_type: str,
    spot: bool,
    presentation: str,
    subject: Subject,
    manufacturer: tuple[str, str, str],
    size: int,
    mix: ExportMix,
) -> tuple[ImageJob, dict[str, Any]]:
    sop_uid = new_uid("mg", empi, acc, rng.integers(2**62))
    recorded_view = "XCCL" if view == "CC" and rng.uniform() < mix.xccl else view
    relative = f"cohort_1/{empi}/{acc}/{sop_uid}.dcm"
    orientation = _orientation(side, view)
    raw = presentation == "FOR PROCESSING"
    burned = None if raw or rng.uniform() >= mix.burned_label else f"{side}{recorded_view}"
    encoding = random_encoding(
        rng,
        bits=(12, 14, 16),
        monochrome1=0.1,
        voi_weights=(1.0, 0.0, 0.0) if manufacturer[2] == "LINEAR" else (0.0, 0.0, 1.0),
    )
    spacing = [round(FIELD_OF_VIEW_MM / size, 4)] * 2
    header: dict[str, Any] = {
        "SOPClassUID": SOP_CLASS[presentation],
        "SOPInstanceUID": sop_uid,
        "StudyInstanceUID": new_uid("study", empi, acc),
        "SeriesInstanceUID": new_uid("series", sop_uid),
        "PatientName": f"PHANTOM^MG{empi}",
        "PatientID": str(empi),
        "PatientSex": "M" if male else "F",
        "PatientAge": f"{int(exam_age):03d}Y",
        "StudyDate": date.strftime("%Y%m%d"),
        "StudyTime": "093000",
        "AccessionNumber": str(acc)[-16:],
        "Modality": "MG",
        "Manufacturer": manufacturer[0],
        "ManufacturerModelName": manufacturer[1],
        "BodyPartExamined": "BREAST",
        "ViewPosition": recorded_view,
        "Laterality": side,
        "PatientOrientation": orientation,
        "PresentationIntentType": presentation,
        "ImageType": ["ORIGINAL", "PRIMARY"] if image_type == "2D" else ["DERIVED", "PRIMARY", "GENERATED_2D"],
        "SeriesDescription": f"{side} {recorded_view}" + (" SPOT MAG" if spot else ""),
        "StudyDescription": "MG Screening Bilateral",
        "BurnedInAnnotation": "YES" if burned and rng.uniform() < 0.5 else "NO",
        "ImagerPixelSpacing": spacing,
        "PixelSpacing": spacing,
        "SeriesNumber": 1,
        "InstanceNumber": 1,
        "PatientIdentityRemoved": "YES",
        "DeidentificationMethod": "synthetic phantom: no real patient",
    }
    if rng.uniform() >= mix.laterality_only_in_series:
        header["ImageLaterality"] = side
    job = ImageJob(
        path=relative,
        subject=subject,
        header=header,
        encoding=encoding,
        render_options={"for_processing": raw},
        flip=side == "R",
        burned_label=burned,
        info={
            "empi_anon": empi,
            "acc_anon": acc,
            "laterality": side,
            "view_position": recorded_view,
            "presentation": presentation,
            "final_image_type": image_type,
            "spot_mag": spot,
            "burned_label": burned or "",
            "flipped": side == "R",
            **describe_encoding(encoding),
        },
    )
    row = {
        "anon_dicom_path": SOURCE_ROOT + relative,
        "empi_anon": empi,
        "acc_anon": acc,
        "study_date_anon": date.isoformat(),
        "StudyDescription": "MG Screening Bilateral",
        "SeriesDescription": header["SeriesDescription"],
        "ViewPosition": recorded_view,
        "ImageLateralityFinal": side,
        "FinalImageType": image_type,
        "spot_mag": 1.0 if spot else np.nan,
        "PatientOrientation": str(list(orientation)),
        "Manufacturer": manufacturer[0],
        "ManufacturerModelName": manufacturer[1],
        "Rows": size,
        "Columns": size,
    }
    return job, row


def _orientation(side: str, view: str) -> list[str]:
    """PatientOrientation of a stored image: left breasts face right (row direction anterior)."""
    row = "A" if side == "L" else "P"
    column = ("R" if side == "L" else "L") if view == "CC" else "F"
    return [row, column]


def truth_rendering(row: Mapping[str, Any]) -> tuple[dict[str, Any], bool, str | None]:
    """How the file of a ground-truth row was rendered: (render options, mirrored, burned-in label).

    Args:
        row: one row of ``phantom_truth.csv``; ``presentation``, ``flipped`` and ``burned_label`` are read.

    Returns:
        ``{"for_processing": ...}``, whether the image was mirrored, and the burned-in label (None if empty
        or missing).
    """
    label = row.get("burned_label")
    label = None if label is None or (isinstance(label, float) and label != label) or label == "" else str(label)
    flipped = str(row["flipped"]).strip().lower() in ("true", "1")
    return {"for_processing": row["presentation"] == "FOR PROCESSING"}, flipped, label
