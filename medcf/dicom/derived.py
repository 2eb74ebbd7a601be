"""Counterfactual images as DICOM: derived, plainly synthetic, traceable to their source, without PHI.

Each counterfactual is a Secondary Capture image (PS3.3 A.8.1) with Conversion Type SYN ("synthetic image"),
ImageType DERIVED\\SECONDARY, new Study/Series/SOP Instance UIDs, a SourceImageSequence referencing the
factual image, a DerivationDescription naming the intervention, guidance and weights, and a
SeriesDescription that starts with "SYNTHETIC COUNTERFACTUAL". Patient and study identifiers of the source
(name, ID, birth date, accession number, study ID, dates) are copied only with ``keep_identifiers=True``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian

import medcf
from medcf.dicom.encode import PixelEncoding, attach_pixels, encode_pixels, new_uid, write_dataset_atomic

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
IDENTIFIERS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "InstitutionName",
)
#: descriptive, non-identifying tags carried over from the source
CARRIED = ("BodyPartExamined", "ViewPosition", "Laterality", "ImageLaterality", "PatientOrientation")


def counterfactual_dataset(
    source: Dataset,
    display: np.ndarray,
    description: str,
    series_title: str,
    keep_identifiers: bool = False,
    encoding: PixelEncoding | None = None,
) -> Dataset:
    """A Secondary Capture dataset for ``display`` (values in [0, 1], bright = attenuating) derived from the
    factual image's dataset ``source``.

    Args:
        source: the factual image's header (pixels not needed).
        display: counterfactual image, rows x columns, in [0, 1].
        description: DerivationDescription (intervention, guidance, weights, steps, model), at most 1024 chars.
        series_title: short text after "SYNTHETIC COUNTERFACTUAL " in the SeriesDescription.
        keep_identifiers: copy the source's patient and study identifiers (off by default: no PHI).
    """
    now = dt.datetime.now()
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = SECONDARY_CAPTURE, new_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = new_uid(), new_uid()
    for keyword in IDENTIFIERS:
        setattr(ds, keyword, source.get(keyword, "") if keep_identifiers else "")
    if not keep_identifiers:
        ds.PatientName, ds.PatientID = "ANONYMOUS^COUNTERFACTUAL", "COUNTERFACTUAL"
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "medcf counterfactual: source identifiers not copied"
    ds.PatientSex = ""
    for keyword in CARRIED:
        if keyword in source and source.data_element(keyword).value not in (None, ""):
            setattr(ds, keyword, source.data_element(keyword).value)
    ds.Modality = source.get("Modality") or "OT"
    ds.ConversionType = "SYN"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SeriesDescription = f"SYNTHETIC COUNTERFACTUAL {series_title}"[:64]
    ds.DerivationDescription = description[:1024]
    ds.BurnedInAnnotation = "NO"
    ds.Manufacturer, ds.SoftwareVersions = "medcf", medcf.__version__
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = ds.ContentDate, ds.ContentTime
    ds.SeriesNumber, ds.InstanceNumber = 900, 1
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    ds.SourceImageSequence = DicomSequence([reference])
    stored, attributes = encode_pixels(
        np.clip(display, 0.0, 1.0).astype(np.float32),
        encoding or PixelEncoding(bits_stored=16, voi_function="LINEAR_EXACT"),
    )
    attach_pixels(ds, stored, attributes, ExplicitVRLittleEndian)
    return ds


def write_counterfactual(
    source_path: str | Path,
    display: np.ndarray,
    path: str | Path,
    description: str,
    series_title: str,
    keep_identifiers: bool = False,
) -> Dataset:
    """Read the factual file's header, build the counterfactual dataset and write it atomically."""
    source = pydicom.dcmread(source_path, stop_before_pixels=True)
    ds = counterfactual_dataset(source, display, description, series_title, keep_identifiers)
    write_dataset_atomic(ds, Path(path))
    return ds
