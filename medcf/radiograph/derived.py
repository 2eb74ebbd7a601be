"""Counterfactual images as DICOM: derived, plainly synthetic, in their source's orientation, grouped the way a
viewer expects, and without identifiers unless asked.

Each counterfactual is a Secondary Capture image (PS3.3 A.8.1) with Conversion Type SYN ("synthetic image"),
ImageType DERIVED\\SECONDARY, a DerivationDescription naming the intervention, guidance and weights, and a
SeriesDescription that starts with "SYNTHETIC COUNTERFACTUAL". Who and where it belongs is a
:class:`DerivedIdentity` the caller derives (keyed pseudonyms and UIDs, see
:mod:`medcf.outputs.pseudonyms`): one counterfactual study per source study, one series per (source series,
intervention), one pseudonymous patient per source patient. Patient and study identifiers of the source
(name, ID, birth date, accession number, dates, ...) are copied only with ``keep_identifiers=True``.

Geometry: the pixels are expected in the source's orientation (preparation's mirroring undone, see
:class:`medcf.radiograph.geometry.Geometry`); the source's Patient Orientation (0020,0020) and laterality therefore
still hold and are written (laterality as Image Laterality (0020,0062) only: the series-level Laterality
(0020,0060) must be absent when Image Laterality is present, PS3.3 C.7.3.1). Pixel Spacing / Imager Pixel
Spacing is the source's, scaled by the preparation's crop and resize.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian

import medcf
from medcf.radiograph.encode import PixelEncoding, as_ds, attach_pixels, encode_pixels, write_dataset_atomic
from medcf.radiograph.geometry import Geometry
from medcf.radiograph.header import laterality_of, view_of

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
IDENTIFIERS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "InstitutionName",
)
"""Source tags copied only with ``keep_identifiers`` (Type 2 tags are written empty otherwise). The source
study's Accession Number and Study ID are never copied: the counterfactual study is another study, and a PACS
would take two studies with one accession number for one."""
CARRIED = ("BodyPartExamined", "ViewPosition")
"""Descriptive, non-identifying tags carried over from the source."""
_ORIENTATION = re.compile(r"[APRLHF]{1,3}")
MAMMO_VIEW_ROWS = {"CC": "", "XCCL": "", "XCCM": "", "MLO": "F"}
"""The caudal part of a mammogram's column direction per view (PS3.3 C.7.6.1.1.1; e.g. left MLO is A\\FR)."""


@dataclass(frozen=True)
class DerivedIdentity:
    """Where a counterfactual file belongs: its patient, study, series and instance, and its source.

    ``source_reference_uid`` is the source image's SOP Instance UID when identifiers are kept, else its
    pseudonymous counterpart (the same keyed UID on every counterfactual of that source).

    Attributes:
        patient_id: Patient ID (0010,0020) of the counterfactual (the source's is written instead with
            ``keep_identifiers``).
        patient_name: Patient's Name (0010,0010) (likewise).
        study_uid: Study Instance UID (0020,000D).
        study_id: Study ID (0020,0010).
        series_uid: Series Instance UID (0020,000E).
        series_number: Series Number (0020,0011).
        instance_uid: SOP Instance UID (0008,0018).
        instance_number: Instance Number (0020,0013).
        source_reference_uid: Referenced SOP Instance UID (0008,1155) of the Source Image Sequence (0008,2112).
    """

    patient_id: str
    patient_name: str
    study_uid: str
    study_id: str
    series_uid: str
    series_number: int
    instance_uid: str
    instance_number: int
    source_reference_uid: str


def patient_orientation(source: Dataset, geometry: Geometry | None) -> list[str]:
    """Patient Orientation (row, column direction) of a counterfactual lying as its source does.

    The source's own value when it is a valid pair of directions; for a mammogram without one (film scans
    often hold the view there), the standard directions from laterality and view, with the row direction
    from where the chest wall lies (preparation mirrored the images whose chest wall was on the right);
    otherwise empty (Type 2: unknown).

    Args:
        source: the source image's dataset (pixels not needed).
        geometry: what preparation did (its mirroring says where a mammogram's chest wall was); None: no
            directions are derived for a mammogram.

    Returns:
        The (row, column) directions, e.g. ``["A", "FR"]`` for a left MLO, or ``[]``.
    """
    value = source.get("PatientOrientation") or []
    values = [str(v).upper() for v in ([value] if isinstance(value, str) else value)]
    if len(values) == 2 and all(_ORIENTATION.fullmatch(v) for v in values):
        return values
    laterality, _ = laterality_of(source)
    view, _ = view_of(source)
    if source.get("Modality") == "MG" and laterality in ("L", "R") and view in MAMMO_VIEW_ROWS and geometry:
        row = "P" if geometry.mirrored else "A"
        across = "R" if laterality == "L" else "L"
        return [row, MAMMO_VIEW_ROWS[view] + across]
    return []


def counterfactual_dataset(
    source: Dataset,
    display: np.ndarray,
    identity: DerivedIdentity,
    description: str,
    series_title: str,
    geometry: Geometry | None = None,
    keep_identifiers: bool = False,
    encoding: PixelEncoding | None = None,
) -> Dataset:
    """A Secondary Capture dataset for ``display`` (values in [0, 1], bright = attenuating, in the source's
    orientation) derived from the factual image's dataset ``source``.

    Args:
        source: the factual image's header (pixels not needed).
        display: counterfactual image, rows x columns, in [0, 1].
        identity: patient, study, series and instance of the file, and its source reference.
        description: DerivationDescription (intervention, guidance, weights, steps), at most 1024 chars.
        series_title: short text after "SYNTHETIC COUNTERFACTUAL " in the SeriesDescription.
        geometry: what preparation did (for the pixel spacing and, for mammograms, the orientation).
        keep_identifiers: copy the source's patient and study identifiers (off by default: no PHI).
        encoding: how the pixels are stored (default: 16 bits stored, a LINEAR_EXACT window, MONOCHROME2); its
            transfer syntax is not used: the pixel data is always Explicit VR Little Endian.

    Returns:
        The dataset with its pixel data and file meta transfer syntax, not yet written.
    """
    now = dt.datetime.now()
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = SECONDARY_CAPTURE, identity.instance_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = identity.study_uid, identity.series_uid
    for keyword in IDENTIFIERS:
        setattr(ds, keyword, source.get(keyword, "") if keep_identifiers else "")
    ds.AccessionNumber, ds.StudyID = "", identity.study_id
    if not keep_identifiers:
        ds.PatientName, ds.PatientID = identity.patient_name, identity.patient_id
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "medcf: no source identifiers; keyed pseudonyms"
    ds.PatientSex = ""
    ds.StudyDescription = "SYNTHETIC COUNTERFACTUALS (medcf)"
    for keyword in CARRIED:
        if keyword in source and source.data_element(keyword).value not in (None, ""):
            setattr(ds, keyword, source.data_element(keyword).value)
    laterality, _ = laterality_of(source)
    if laterality:
        ds.ImageLaterality = laterality
    ds.PatientOrientation = patient_orientation(source, geometry)
    spacing = geometry.output_spacing_mm if geometry is not None else None
    if spacing is not None and geometry.spacing_tag:
        setattr(ds, geometry.spacing_tag, [as_ds(spacing[0]), as_ds(spacing[1])])
    ds.Modality = source.get("Modality") or "OT"
    ds.ConversionType = "SYN"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SeriesDescription = f"SYNTHETIC COUNTERFACTUAL {series_title}"[:64]
    ds.DerivationDescription = description[:1024]
    # text burned into the source's pixels may survive preparation (chest images are not cleaned): say so
    ds.BurnedInAnnotation = "YES" if str(source.get("BurnedInAnnotation", "")).upper() == "YES" else "NO"
    ds.Manufacturer, ds.SoftwareVersions = "medcf", medcf.__version__
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = ds.ContentDate, ds.ContentTime
    ds.SeriesNumber, ds.InstanceNumber = identity.series_number, identity.instance_number
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = identity.source_reference_uid
    ds.SourceImageSequence = DicomSequence([reference])
    stored, attributes = encode_pixels(
        np.clip(display, 0.0, 1.0).astype(np.float32),
        encoding or PixelEncoding(bits_stored=16, voi_function="LINEAR_EXACT"),
    )
    attach_pixels(ds, stored, attributes, ExplicitVRLittleEndian)
    return ds


def write_counterfactual(path: str | Path, source: Dataset, display: np.ndarray, **kwargs) -> Dataset:
    """Build the counterfactual dataset (:func:`counterfactual_dataset` arguments) and write it atomically.

    Args:
        path: the DICOM file to write (see :func:`medcf.radiograph.encode.write_dataset_atomic`).
        source: the factual image's header (pixels not needed).
        display: counterfactual image, rows x columns, in [0, 1].
        **kwargs: the other arguments of :func:`counterfactual_dataset` (``identity``, ``description`` and
            ``series_title`` are required).

    Returns:
        The dataset as written.
    """
    ds = counterfactual_dataset(source, display, **kwargs)
    write_dataset_atomic(ds, Path(path))
    return ds
