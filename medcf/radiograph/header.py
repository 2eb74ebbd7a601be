"""Read a DICOM file's header: the fields the pipeline needs and none that identify the patient, and the pixel
budget checked from the header alone (opening the file and its failures: :mod:`medcf.radiograph.opening`).

Reading stops at the pixel data (:func:`read_header`), so a header can be checked (size, view, laterality, age)
before anything is decoded; :mod:`medcf.radiograph.pixels` decodes the pixels of a file that passed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from medcf.radiograph.opening import DicomReadError, PathLike, read_dataset

"""Machine codes of :class:`DicomReadError` and their meaning in words."""

VOI_LUT_SEQUENCE, WINDOW, PERCENTILES = "VOILUTSequence", "Window", "Percentiles"
VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")

MAMMOGRAPHY_VIEWS = frozenset({"CC", "MLO", "ML", "LM", "LMO", "XCCL", "XCCM", "FB", "SIO"})
VIEW_MEANINGS: dict[str, str] = {
    "cranio caudal": "CC",
    "medio lateral oblique": "MLO",
    "medio lateral": "ML",
    "latero medial": "LM",
    "latero medial oblique": "LMO",
    "cranio caudal exaggerated laterally": "XCCL",
    "exaggerated cranio caudal": "XCCL",
    "cranio caudal exaggerated medially": "XCCM",
    "caudo cranial": "FB",
    "caudo cranial from below": "FB",
    "superolateral to inferomedial oblique": "SIO",
    "postero anterior": "PA",
    "antero posterior": "AP",
    "left lateral": "LL",
    "right lateral": "RL",
    "lateral": "LATERAL",
}
"""View Code Sequence (0054,0220) Code Meanings (CID 4014 / 4010, lower case, hyphens as spaces) -> view."""

DEFAULT_MAX_PIXEL_BYTES = 128 * 2**20
"""The default pixel budget (128 MiB: 8192 x 8192 x 16 bit): the most bytes of decoded pixel data (Rows x Columns x
frames x samples x bytes per sample) a file may declare before it is decoded. Real radiographs need well under half
of it: FFDM up to about 4.7k x 5.9k x 16 bit (56 MB), scanned film about 4.5k x 2.8k (25 MB), CR and DX up to
about 4.3k x 4.3k (37 MB). A header claiming more is refused ``too_large`` from the header alone, so that a small
compressed file cannot decode into gigabytes (a 27 MB RLE file claiming 30000 x 30000 x 16 bit is 1.8 GB decoded).
Reading a file at the budget takes about 4 x the budget (the file's bytes, the stored array, its float32 display
image): measured 520 MiB more peak memory to prepare an uncompressed 8192 x 8192 x 16-bit chest file."""

AGE_UNITS_IN_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}
AGE_PATTERN = re.compile(r"(\d{1,3})([DWMY])")


@dataclass(frozen=True)
class RadiographHeader:
    """The header fields the pipeline needs, from one DICOM file. No patient name, ID or birth date.

    Attributes:
        path: the source file.
        modality: Modality (0008,0060), e.g. ``"CR"``, ``"DX"``, ``"MG"``.
        view_position: see :func:`view_of`; ``view_source`` names the tag it came from.
        laterality: ``"L"``, ``"R"``, ``"B"`` or ``"U"``; see :func:`laterality_of` and ``laterality_source``.
        patient_orientation: Patient Orientation (0020,0020) values (row, column directions).
        presentation_intent: Presentation Intent Type (0008,0068), FOR PRESENTATION / FOR PROCESSING.
        body_part: Body Part Examined (0018,0015), upper case.
        patient_sex: ``"M"`` or ``"F"`` from Patient's Sex (0010,0040); None for O, empty or absent.
        patient_age_years: Patient's Age (0010,1010), see :func:`parse_patient_age`.
        spacing_mm: (row, column) spacing from Pixel Spacing (0028,0030), else Imager Pixel Spacing
            (0018,1164); a tag with a zero, negative or missing value is skipped. ``spacing_source`` names it.
        voi_source: which VOI step the pixels get: ``"VOILUTSequence"``, ``"Window"`` or ``"Percentiles"``.
        presentation_lut_shape: Presentation LUT Shape (2050,0020), IDENTITY / INVERSE.
    """

    path: Path
    modality: str | None
    view_position: str | None
    view_source: str | None
    laterality: str | None
    laterality_source: str | None
    patient_orientation: tuple[str, ...] | None
    presentation_intent: str | None
    body_part: str | None
    patient_sex: str | None
    patient_age_years: float | None
    manufacturer: str | None
    photometric: str
    rows: int
    columns: int
    number_of_frames: int
    samples_per_pixel: int
    bits_stored: int
    bits_allocated: int
    transfer_syntax: str
    spacing_mm: tuple[float, float] | None
    spacing_source: str | None
    sop_instance_uid: str | None
    image_type: tuple[str, ...]
    burned_in_annotation: str | None
    voi_source: str
    presentation_lut_shape: str | None

    @property
    def pixel_bytes(self) -> int:
        """Bytes of decoded pixel data the header declares: Rows x Columns x frames x samples x bytes per sample
        (Bits Allocated rounded up to whole bytes, at least one: pydicom unpacks 1-bit data to a byte each)."""
        per_sample = max(1, math.ceil(max(self.bits_allocated, self.bits_stored) / 8))
        return self.rows * self.columns * self.number_of_frames * self.samples_per_pixel * per_sample

    @property
    def inverted(self) -> bool:
        """Whether the display is ``1 - VOI output`` (see :func:`inverts_display`)."""
        return inverts_display(self.photometric, self.presentation_lut_shape)


def read_header(path: PathLike) -> RadiographHeader:
    """The header of a DICOM file, read without its pixel data.

    Truncated pixel data is only found by :func:`read_radiograph`.

    Args:
        path: the DICOM file.

    Returns:
        The header fields (see :func:`header_from_dataset`).

    Raises:
        DicomReadError: ``not_dicom``, ``truncated`` (the file ends inside the header), ``unsupported``
            (Rows, Columns, Samples per Pixel, Photometric Interpretation or Bits Stored missing).
        OSError: the file cannot be opened.
    """
    path = Path(path)
    return header_from_dataset(read_dataset(path, header_only=True), path)


def check_pixel_budget(header: RadiographHeader, max_pixel_bytes: int) -> None:
    """Raise DicomReadError ``too_large`` when the header declares more than ``max_pixel_bytes`` bytes of decoded
    pixel data (:attr:`RadiographHeader.pixel_bytes`); the detail gives the dimensions, the bytes and the budget.

    Args:
        header: the file's header.
        max_pixel_bytes: the budget, in bytes (see :data:`DEFAULT_MAX_PIXEL_BYTES`).

    Raises:
        DicomReadError: ``too_large``: the header declares more than ``max_pixel_bytes`` bytes.
    """
    if (needed := header.pixel_bytes) > max_pixel_bytes:
        bytes_per_sample = needed // (header.rows * header.columns * header.number_of_frames * header.samples_per_pixel)
        raise DicomReadError(
            header.path,
            "too_large",
            f"the header declares {header.rows} x {header.columns} pixels x {header.number_of_frames} frame(s) x "
            f"{header.samples_per_pixel} sample(s) x {bytes_per_sample} byte(s) = {needed:,} bytes "
            f"({_mib(needed)} MiB), over the budget of {max_pixel_bytes:,} bytes "
            f"({_mib(max_pixel_bytes)} MiB; setting max_pixel_bytes); it was not decoded",
        )


def _mib(count: int) -> str:
    """A byte count in MiB, one decimal at most: ``128``, ``0.1``, ``1,716.6``."""
    return f"{count / 2**20:,.1f}".removesuffix(".0")


def inverts_display(photometric: str, presentation_lut_shape: str | None) -> bool:
    """Whether bright display (attenuating) needs ``1 - VOI output``: exactly one inversion, or none.

    MONOCHROME1 (PS3.3 C.7.6.3.1.2) means the lowest value is white, so the VOI output is inverted. In the
    DX Image Module (PS3.3 C.8.11.3, also part of the mammography IODs with C.8.11.7), Presentation LUT
    Shape (2050,0020) "specifies an identity transformation ... other than to account for the value of
    Photometric Interpretation": INVERSE *shall* be used with MONOCHROME1 and IDENTITY with MONOCHROME2. So
    INVERSE on a MONOCHROME1 file restates the same inversion (C.11.6: "output after inversion is in
    P-Values"); it is not a second one. INVERSE on a MONOCHROME2 file has no such reading and means invert;
    IDENTITY never cancels MONOCHROME1 (the photometric interpretation describes the stored values).

    Args:
        photometric: Photometric Interpretation (0028,0004), upper case.
        presentation_lut_shape: Presentation LUT Shape (2050,0020), or None when absent.

    Returns:
        True for MONOCHROME1 or for Presentation LUT Shape INVERSE (any case).
    """
    return photometric == "MONOCHROME1" or (presentation_lut_shape or "").upper() == "INVERSE"


def parse_patient_age(value: object) -> float | None:
    """Patient's Age (0010,1010), Age String ``nnnD``/``nnnW``/``nnnM``/``nnnY`` (PS3.5 6.2), in years.

    One to three digits are accepted (some exporters drop leading zeros); anything else, including an
    empty value or a missing unit, gives None.

    Args:
        value: the attribute's value as read (None, an empty or malformed value give None).

    Returns:
        The age in years (days, weeks and months converted), or None.
    """
    match = AGE_PATTERN.fullmatch(str(value or "").strip().upper())
    if not match:
        return None
    return int(match.group(1)) * AGE_UNITS_IN_YEARS[match.group(2)]


def view_of(ds: Dataset) -> tuple[str | None, str | None]:
    """(view, source tag): View Position (0018,5101), else the View Code Sequence (0054,0220) Code Meaning
    mapped by :data:`VIEW_MEANINGS`, else a single-valued Patient Orientation (0020,0020) that holds a
    mammography view (CBIS-DDSM puts ``CC`` / ``MLO`` there), else (None, None).

    Args:
        ds: the dataset (pixels not needed).

    Returns:
        The view in upper case and the keyword it came from (``"ViewPosition"``, ``"ViewCodeSequence"`` or
        ``"PatientOrientation"``), or (None, None).
    """
    if view := text_value(ds, "ViewPosition"):
        return view.upper(), "ViewPosition"
    for item in ds.get("ViewCodeSequence") or []:
        meaning = re.sub(r"[\s\-_()]+", " ", str(item.get("CodeMeaning", ""))).strip().lower()
        if meaning in VIEW_MEANINGS:
            return VIEW_MEANINGS[meaning], "ViewCodeSequence"
    orientation = _multi_text(ds, "PatientOrientation") or ()
    if len(orientation) == 1 and orientation[0].upper() in MAMMOGRAPHY_VIEWS:
        return orientation[0].upper(), "PatientOrientation"
    return None, None


def laterality_of(ds: Dataset) -> tuple[str | None, str | None]:
    """(laterality, source tag): Image Laterality (0020,0062), else the series-level Laterality (0020,0060),
    else Frame Laterality (0020,9072) in the shared, then the first per-frame, functional groups (enhanced
    IODs, PS3.3 C.7.6.16.2.8), else (None, None).

    Args:
        ds: the dataset (pixels not needed).

    Returns:
        The laterality in upper case and the keyword it came from (``"ImageLaterality"``, ``"Laterality"`` or
        ``"FrameLaterality"``), or (None, None).
    """
    for keyword in ("ImageLaterality", "Laterality"):
        if value := text_value(ds, keyword):
            return value.upper(), keyword
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for item in (ds.get(groups) or [])[:1]:
            for anatomy in item.get("FrameAnatomySequence") or []:
                if value := text_value(anatomy, "FrameLaterality"):
                    return value.upper(), "FrameLaterality"
    return None, None


# ---------------------------------------------------------------------------------------------------------
# Header


def text_value(ds: Dataset, keyword: str) -> str | None:
    """A string attribute (its first value if multi-valued), stripped; None when absent or empty.

    Args:
        ds: the dataset (or a sequence item).
        keyword: the attribute's keyword, e.g. ``"Modality"``.

    Returns:
        The stripped text, or None.
    """
    values = _multi_text(ds, keyword)
    return (values[0] or None) if values else None


def _multi_text(ds: Dataset, keyword: str) -> tuple[str, ...] | None:
    """A multi-valued string attribute as a tuple of stripped strings; None when absent or empty."""
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    values = list(value) if isinstance(value, list | tuple | MultiValue) else [value]
    return tuple(str(v).strip() for v in values) or None


def required_int(ds: Dataset, keyword: str, path: Path, default: int | None = None) -> int:
    """An integer attribute that images must have (Rows, Columns, ...); ``unsupported`` when it is missing
    (and there is no ``default``) or malformed.

    Args:
        ds: the dataset.
        keyword: the attribute's keyword, e.g. ``"Rows"``.
        path: the file, named in the error.
        default: the value when the attribute is absent or empty; None: it is required.

    Returns:
        The value as an int.

    Raises:
        DicomReadError: ``unsupported``: the attribute is missing without a ``default``, or is not an integer.
    """
    value = ds.get(keyword)
    if value is None or value == "":
        if default is None:
            raise DicomReadError(path, "unsupported", f"the dataset has no {keyword}")
        return default
    try:
        return int(value)
    except (TypeError, ValueError) as error:
        raise DicomReadError(path, "unsupported", f"{keyword} {value!r} is not an integer") from error


def _spacing(ds: Dataset) -> tuple[tuple[float, float] | None, str | None]:
    """(row, column) spacing in mm and its tag: Pixel Spacing, else Imager Pixel Spacing (both positive)."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            values = [float(v) for v in ds.get(keyword) or []]
        except (TypeError, ValueError):
            continue
        if len(values) == 2 and all(math.isfinite(v) and v > 0 for v in values):
            return (values[0], values[1]), keyword
    return None, None


def _voi_source(ds: Dataset) -> str:
    """Which VOI step applies: a usable VOI LUT Sequence, else a window pydicom accepts, else percentiles."""
    items = ds.get("VOILUTSequence") or []
    if items and "LUTDescriptor" in items[0] and "LUTData" in items[0]:
        return VOI_LUT_SEQUENCE
    center, width = _first_number(ds, "WindowCenter"), _first_number(ds, "WindowWidth")
    function = (text_value(ds, "VOILUTFunction") or "LINEAR").upper()
    if center is None or width is None or function not in VOI_FUNCTIONS:
        return PERCENTILES
    return WINDOW if (width >= 1 if function == "LINEAR" else width > 0) else PERCENTILES


def _first_number(ds: Dataset, keyword: str) -> float | None:
    """The first value of a numeric attribute as a finite float; None when absent, empty or malformed."""
    try:
        value = float((_multi_text(ds, keyword) or ("",))[0])
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _sex(ds: Dataset) -> str | None:
    """Patient's Sex (0010,0040) as M or F; None otherwise."""
    sex = (text_value(ds, "PatientSex") or "").upper()
    return sex if sex in ("M", "F") else None


def _transfer_syntax(ds: Dataset) -> str:
    """Transfer Syntax UID (0002,0010) from the file meta information; empty when absent."""
    return str(getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID", ""))


def header_from_dataset(ds: Dataset, path: Path) -> RadiographHeader:
    """The :class:`RadiographHeader` of a dataset read from ``path``.

    Args:
        ds: the dataset (pixels not needed).
        path: the file it was read from (the header's ``path``, named in errors).

    Returns:
        The header fields.

    Raises:
        DicomReadError: ``unsupported``: Photometric Interpretation, Bits Stored, Rows, Columns or Samples per
            Pixel is missing, or an integer attribute (also Number of Frames, Bits Allocated) is malformed.
    """
    view, view_source = view_of(ds)
    laterality, laterality_source = laterality_of(ds)
    spacing, spacing_source = _spacing(ds)
    photometric = text_value(ds, "PhotometricInterpretation")
    if photometric is None:
        raise DicomReadError(path, "unsupported", "the dataset has no PhotometricInterpretation")
    bits_stored = required_int(ds, "BitsStored", path)
    return RadiographHeader(
        path=path,
        modality=text_value(ds, "Modality"),
        view_position=view,
        view_source=view_source,
        laterality=laterality,
        laterality_source=laterality_source,
        patient_orientation=_multi_text(ds, "PatientOrientation"),
        presentation_intent=text_value(ds, "PresentationIntentType"),
        body_part=(text_value(ds, "BodyPartExamined") or "").upper() or None,
        patient_sex=_sex(ds),
        patient_age_years=parse_patient_age(ds.get("PatientAge")),
        manufacturer=text_value(ds, "Manufacturer"),
        photometric=photometric.upper(),
        rows=required_int(ds, "Rows", path),
        columns=required_int(ds, "Columns", path),
        number_of_frames=required_int(ds, "NumberOfFrames", path, default=1),
        samples_per_pixel=required_int(ds, "SamplesPerPixel", path),
        bits_stored=bits_stored,
        bits_allocated=required_int(ds, "BitsAllocated", path, default=bits_stored),
        transfer_syntax=_transfer_syntax(ds),
        spacing_mm=spacing,
        spacing_source=spacing_source,
        sop_instance_uid=text_value(ds, "SOPInstanceUID"),
        image_type=_multi_text(ds, "ImageType") or (),
        burned_in_annotation=text_value(ds, "BurnedInAnnotation"),
        voi_source=_voi_source(ds),
        presentation_lut_shape=text_value(ds, "PresentationLUTShape"),
    )
