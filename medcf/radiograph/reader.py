"""Read real-world radiographs (CR, DX, MG) as display images in [0, 1], with the header fields the pipeline
needs and none that identify the patient.

Pixel pipeline of :func:`read_radiograph` (PS3.3 C.11, the grayscale standard display pipeline):

    stored --Modality LUT (C.11.1)--> m --VOI LUT (C.11.2)--> v --normalise--> u in [0, 1]
    --MONOCHROME1 / Presentation LUT Shape (C.7.6.3.1.2, C.11.6)--> display, bright = attenuating

1. Modality: ``pydicom.pixels.apply_modality_lut``. With Rescale Slope/Intercept (0028,1053)/(0028,1052)
   it returns float64 ``stored * slope + intercept``; with a Modality LUT Sequence (0028,3000) the LUT's
   entries (uint8/uint16, by the third LUT Descriptor value); with neither, the input unchanged.
2. VOI, in this order of preference (recorded as :attr:`RadiographHeader.voi_source`):

   * ``"VOILUTSequence"`` (0028,3010), first item: ``pydicom.pixels.apply_voi`` returns the LUT's entries
     (uint8 or uint16) and clamps inputs outside the LUT to its first/last entry. Output range
     ``[0, 2**n - 1]`` with n the third LUT Descriptor value (C.11.2.1.1). pydicom truncates float inputs
     (after a rescale) towards zero and warns; we pass ``floor(m)`` as integers, which gives the same
     entries without the warning.
   * ``"Window"``: Window Center/Width (0028,1050)/(0028,1051), first value when multi-valued, VOI LUT
     Function (0028,1056) LINEAR (default), LINEAR_EXACT or SIGMOID (C.11.2.1.2, C.11.2.1.3), through
     ``pydicom.pixels.apply_windowing``. It returns float64 in the *input* range ``[y_min, y_max]``: the
     stored range (from Bits Stored and Pixel Representation, or ``[0, 2**n - 1]`` for a Modality LUT
     Sequence) through the rescale. LINEAR and LINEAR_EXACT reach both ends, SIGMOID neither. It also
     writes float values back into ``ds.RescaleSlope`` etc. (harmless: the dataset is private here).
   * ``"Percentiles"``: no usable VOI (none present, or a window pydicom would reject): the 0.5th and 99.5th
     percentiles of the image's modality values (numpy's default linear method) act as a LINEAR_EXACT
     window. Scanned film (CBIS-DDSM) and FOR PROCESSING images typically take this path.
3. Normalise: ``(v - low) / (high - low)`` clipped to [0, 1], with the output range of step 2.
4. Presentation: invert (``1 - u``) when the file says its values are MONOCHROME1-like; see
   :func:`inverts_display` for how Presentation LUT Shape combines with Photometric Interpretation.
   A Presentation LUT Sequence (2050,0010) is not applied (it is absent from radiograph IODs).

For integer pixels of at most 16 bits, steps 1-4 run once over every possible stored value (at most 65,536)
and the image is a single lookup into that table; this gives exactly what the functions give pixel by pixel,
at a fraction of the time (pydicom's windowing uses boolean masks and float64 copies of the whole image).
Percentiles come from a histogram of the stored values weighted over the table, equal to ``np.percentile``
of the modality image.
"""

from __future__ import annotations

import math
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pydicom
from monai.data import ImageReader
from monai.transforms import LoadImage
from monai.utils import MetaKeys, TraceKeys, ensure_tuple
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing

PathLike = str | os.PathLike[str]

REASONS: dict[str, str] = {
    "not_dicom": "not a DICOM file",
    "truncated": "the file is truncated",
    "no_pixel_data": "the dataset has no pixel data",
    "undecodable": "the pixel data cannot be decoded",
    "multi_frame": "the image has more than one frame",
    "not_grayscale": "the image is not grayscale",
    "unsupported": "the dataset is not a supported image",
    "too_large": "the image is larger than the pixel budget",
}
"""Machine codes of :class:`DicomReadError` and their meaning in words."""

VOI_LUT_SEQUENCE, WINDOW, PERCENTILES = "VOILUTSequence", "Window", "Percentiles"
VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
ROBUST_PERCENTILES = (0.5, 99.5)
GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
UNDEFINED_LENGTH = 0xFFFFFFFF
ROW_BLOCK = 128
"""Rows per block in table lookups and histograms: numpy converts each index block to intp, and a small
block stays in cache (about 30% faster than whole-image calls on a 4.5k x 2.8k mammogram)."""

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


class DicomReadError(ValueError):
    """A file that cannot be read as a single-frame grayscale radiograph.

    Attributes:
        path: the file.
        reason: a key of :data:`REASONS` (``"not_dicom"``, ``"truncated"``, ...).
        detail: what exactly was found, in words.
    """

    def __init__(self, path: PathLike, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown DicomReadError reason {reason!r}; one of {sorted(REASONS)}")
        self.path, self.reason, self.detail = Path(path), reason, detail
        super().__init__(f"{self.path}: {REASONS[reason]} [{reason}]{self._detail_suffix}")

    @property
    def _detail_suffix(self) -> str:
        return f": {self.detail}" if self.detail else ""

    @property
    def without_path(self) -> str:
        """The message without the file's path (for manifests and logs: paths may hold patient IDs)."""
        return f"{REASONS[self.reason]}{self._detail_suffix}"

    def __reduce__(self) -> tuple[type, tuple[Path, str, str]]:
        """Pickle with the constructor's arguments (worker processes re-raise it)."""
        return type(self), (self.path, self.reason, self.detail)


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


class Radiograph(NamedTuple):
    """What :meth:`RadiographReader.read` returns per file: display pixels and header."""

    pixels: np.ndarray
    header: RadiographHeader


# ---------------------------------------------------------------------------------------------------------
# Public functions


def read_header(path: PathLike) -> RadiographHeader:
    """The header of a DICOM file, read without its pixel data.

    Raises DicomReadError: ``not_dicom``, ``truncated`` (the file ends inside the header), ``unsupported``
    (Rows, Columns, Samples per Pixel, Photometric Interpretation or Bits Stored missing). Truncated pixel
    data is only found by :func:`read_radiograph`.
    """
    path = Path(path)
    return _header_from_dataset(_read_dataset(path, header_only=True), path)


def read_radiograph(
    path: PathLike, max_pixel_bytes: int | None = DEFAULT_MAX_PIXEL_BYTES
) -> tuple[np.ndarray, RadiographHeader]:
    """The display image (float32, shape (Rows, Columns), [0, 1], bright = attenuating) and the header.

    See the module docstring for the pipeline. With a ``max_pixel_bytes`` budget (default
    :data:`DEFAULT_MAX_PIXEL_BYTES`; None: no limit) the header is read first, without the pixel data, and a file
    declaring more decoded bytes is refused (``too_large``, see :func:`check_pixel_budget`) before the rest of the
    file is read or anything is decoded. Raises DicomReadError with reason ``not_dicom``, ``truncated``,
    ``no_pixel_data``, ``unsupported``, ``too_large``, ``multi_frame``, ``not_grayscale`` or ``undecodable``.
    """
    path = Path(path)
    if max_pixel_bytes is not None:
        check_pixel_budget(read_header(path), max_pixel_bytes)
    ds = _read_dataset(path, header_only=False)
    if not any(keyword in ds for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DicomReadError(path, "no_pixel_data", "no (7FE0,0010) Pixel Data or float pixel data element")
    header = _header_from_dataset(ds, path)
    _check_single_grayscale_frame(header)
    stored = _decode_pixels(ds, header)
    return _render(stored, ds, header), header


def check_pixel_budget(header: RadiographHeader, max_pixel_bytes: int) -> None:
    """Raise DicomReadError ``too_large`` when the header declares more than ``max_pixel_bytes`` bytes of decoded
    pixel data (:attr:`RadiographHeader.pixel_bytes`); the detail gives the dimensions, the bytes and the budget."""
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
    """
    return photometric == "MONOCHROME1" or (presentation_lut_shape or "").upper() == "INVERSE"


def parse_patient_age(value: object) -> float | None:
    """Patient's Age (0010,1010), Age String ``nnnD``/``nnnW``/``nnnM``/``nnnY`` (PS3.5 6.2), in years.

    One to three digits are accepted (some exporters drop leading zeros); anything else, including an
    empty value or a missing unit, gives None.
    """
    match = AGE_PATTERN.fullmatch(str(value or "").strip().upper())
    if not match:
        return None
    return int(match.group(1)) * AGE_UNITS_IN_YEARS[match.group(2)]


def view_of(ds: Dataset) -> tuple[str | None, str | None]:
    """(view, source tag): View Position (0018,5101), else the View Code Sequence (0054,0220) Code Meaning
    mapped by :data:`VIEW_MEANINGS`, else a single-valued Patient Orientation (0020,0020) that holds a
    mammography view (CBIS-DDSM puts ``CC`` / ``MLO`` there), else (None, None)."""
    if view := _text(ds, "ViewPosition"):
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
    IODs, PS3.3 C.7.6.16.2.8), else (None, None)."""
    for keyword in ("ImageLaterality", "Laterality"):
        if value := _text(ds, keyword):
            return value.upper(), keyword
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for item in (ds.get(groups) or [])[:1]:
            for anatomy in item.get("FrameAnatomySequence") or []:
                if value := _text(anatomy, "FrameLaterality"):
                    return value.upper(), "FrameLaterality"
    return None, None


# ---------------------------------------------------------------------------------------------------------
# Reading the file


def _read_dataset(path: Path, header_only: bool) -> Dataset:
    """``pydicom.dcmread(force=False)``, with not-DICOM and truncated files turned into DicomReadError."""
    with open(path, "rb") as file:
        try:
            ds = pydicom.dcmread(file, force=False, stop_before_pixels=header_only)
        except InvalidDicomError as error:
            raise DicomReadError(path, "not_dicom", "no 'DICM' prefix after the 128-byte preamble") from error
        except (EOFError, struct.error, BytesLengthException) as error:
            raise DicomReadError(path, "truncated", f"the file ends while reading the header ({error})") from error
        size = os.fstat(file.fileno()).st_size
        stopped_at_pixel_data = header_only and file.tell() < size
    _check_complete(ds, path, size, stopped_at_pixel_data)
    return ds


def _check_complete(ds: Dataset, path: Path, size: int, stopped_at_pixel_data: bool) -> None:
    """Raise ``truncated`` when pydicom quietly stopped at the end of a cut-off file.

    pydicom 3 keeps what it could read: a last value shorter than its declared length, or, when the file ends
    inside an undefined-length element (encapsulated Pixel Data whose Sequence Delimitation Item (FFFE,E0DD)
    never comes), no elements at all, with only a UserWarning. So: an empty dataset, a last element running
    past the end of the file, or bytes after the last element that form no element, mean truncated. A cut
    exactly between two elements leaves a well-formed shorter file and cannot be told apart (it reads as
    missing attributes or missing pixel data).
    """
    if len(ds) == 0:
        raise DicomReadError(
            path,
            "truncated",
            "no data elements could be read: the file ends in its file meta information, or inside an "
            "undefined-length element such as compressed Pixel Data (pydicom then drops the whole dataset)",
        )
    last = ds.get_item(max(ds.keys()))
    if not isinstance(last, RawDataElement) or last.length == UNDEFINED_LENGTH:
        return
    end = last.value_tell + last.length
    if end > size:
        raise DicomReadError(
            path,
            "truncated",
            f"element {last.tag} needs {last.length} bytes, the file has {size - last.value_tell}",
        )
    if end < size and not stopped_at_pixel_data:
        raise DicomReadError(
            path,
            "truncated",
            f"the last {size - end} bytes, after element {last.tag}, are an incomplete data element "
            "(e.g. compressed pixel data without its closing delimiter)",
        )


# ---------------------------------------------------------------------------------------------------------
# Header


def _text(ds: Dataset, keyword: str) -> str | None:
    """A string attribute (its first value if multi-valued), stripped; None when absent or empty."""
    values = _multi_text(ds, keyword)
    return (values[0] or None) if values else None


def _multi_text(ds: Dataset, keyword: str) -> tuple[str, ...] | None:
    """A multi-valued string attribute as a tuple of stripped strings; None when absent or empty."""
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    values = list(value) if isinstance(value, list | tuple | MultiValue) else [value]
    return tuple(str(v).strip() for v in values) or None


def _required_int(ds: Dataset, keyword: str, path: Path, default: int | None = None) -> int:
    """An integer attribute that images must have (Rows, Columns, ...); ``unsupported`` when it is missing
    (and there is no ``default``) or malformed."""
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
    function = (_text(ds, "VOILUTFunction") or "LINEAR").upper()
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
    sex = (_text(ds, "PatientSex") or "").upper()
    return sex if sex in ("M", "F") else None


def _transfer_syntax(ds: Dataset) -> str:
    """Transfer Syntax UID (0002,0010) from the file meta information; empty when absent."""
    return str(getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID", ""))


def _header_from_dataset(ds: Dataset, path: Path) -> RadiographHeader:
    """The :class:`RadiographHeader` of a dataset read from ``path``."""
    view, view_source = view_of(ds)
    laterality, laterality_source = laterality_of(ds)
    spacing, spacing_source = _spacing(ds)
    photometric = _text(ds, "PhotometricInterpretation")
    if photometric is None:
        raise DicomReadError(path, "unsupported", "the dataset has no PhotometricInterpretation")
    bits_stored = _required_int(ds, "BitsStored", path)
    return RadiographHeader(
        path=path,
        modality=_text(ds, "Modality"),
        view_position=view,
        view_source=view_source,
        laterality=laterality,
        laterality_source=laterality_source,
        patient_orientation=_multi_text(ds, "PatientOrientation"),
        presentation_intent=_text(ds, "PresentationIntentType"),
        body_part=(_text(ds, "BodyPartExamined") or "").upper() or None,
        patient_sex=_sex(ds),
        patient_age_years=parse_patient_age(ds.get("PatientAge")),
        manufacturer=_text(ds, "Manufacturer"),
        photometric=photometric.upper(),
        rows=_required_int(ds, "Rows", path),
        columns=_required_int(ds, "Columns", path),
        number_of_frames=_required_int(ds, "NumberOfFrames", path, default=1),
        samples_per_pixel=_required_int(ds, "SamplesPerPixel", path),
        bits_stored=bits_stored,
        bits_allocated=_required_int(ds, "BitsAllocated", path, default=bits_stored),
        transfer_syntax=_transfer_syntax(ds),
        spacing_mm=spacing,
        spacing_source=spacing_source,
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        image_type=_multi_text(ds, "ImageType") or (),
        burned_in_annotation=_text(ds, "BurnedInAnnotation"),
        voi_source=_voi_source(ds),
        presentation_lut_shape=_text(ds, "PresentationLUTShape"),
    )


# ---------------------------------------------------------------------------------------------------------
# Pixels


def _check_single_grayscale_frame(header: RadiographHeader) -> None:
    """Raise ``multi_frame`` or ``not_grayscale`` (Samples per Pixel != 1, or not MONOCHROME1/2)."""
    if header.number_of_frames > 1:
        raise DicomReadError(header.path, "multi_frame", f"NumberOfFrames is {header.number_of_frames}")
    if header.samples_per_pixel != 1 or header.photometric not in GRAYSCALE:
        raise DicomReadError(
            header.path,
            "not_grayscale",
            f"SamplesPerPixel {header.samples_per_pixel}, PhotometricInterpretation {header.photometric}",
        )


def _check_native_length(ds: Dataset, header: RadiographHeader) -> None:
    """Raise ``truncated`` when uncompressed Pixel Data holds fewer bytes than Rows x Columns needs."""
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if "PixelData" not in ds or not syntax or not syntax.is_transfer_syntax or syntax.is_compressed:
        return
    bits = _required_int(ds, "BitsAllocated", header.path)
    expected = math.ceil(header.rows * header.columns * header.number_of_frames * bits / 8)
    if (actual := len(ds.PixelData)) < expected:
        raise DicomReadError(header.path, "truncated", f"Pixel Data has {actual} bytes, {expected} expected")


def _decode_pixels(ds: Dataset, header: RadiographHeader) -> np.ndarray:
    """``ds.pixel_array`` (stored values, shape (Rows, Columns)), with codec failures as ``undecodable``."""
    if "PixelData" in ds:
        for keyword in ("BitsAllocated", "PixelRepresentation"):
            _required_int(ds, keyword, header.path)
    _check_native_length(ds, header)
    try:
        stored = ds.pixel_array
    except Exception as error:  # pydicom and its plugins raise many types; all mean "cannot decode"
        syntax = pydicom.uid.UID(header.transfer_syntax)
        detail = " | ".join(line.strip() for line in str(error).splitlines() if line.strip())
        raise DicomReadError(
            header.path, "undecodable", f"transfer syntax {syntax.name} ({syntax}): {detail[:400]}"
        ) from error
    if stored.shape != (header.rows, header.columns):
        raise DicomReadError(
            header.path,
            "undecodable",
            f"decoded shape {stored.shape}, Rows x Columns {header.rows, header.columns}",
        )
    return stored


def _render(stored: np.ndarray, ds: Dataset, header: RadiographHeader) -> np.ndarray:
    """The display image of the stored pixels: through a table of every possible value when they are
    integers of at most 16 bits, pixel by pixel otherwise."""
    if stored.dtype.kind not in "ui" or stored.dtype.itemsize > 2:
        return _display_values(stored, ds, header, counts=None)
    unsigned = np.dtype(f"u{stored.dtype.itemsize}")
    index = stored.view(unsigned)
    domain = np.arange(2 ** (8 * unsigned.itemsize), dtype=unsigned).view(stored.dtype)
    counts = _histogram(index, domain.size) if header.voi_source == PERCENTILES else None
    return _lookup(_display_values(domain, ds, header, counts), index)


def _histogram(index: np.ndarray, size: int) -> np.ndarray:
    """How often each value 0 .. size - 1 occurs in ``index``, counted ROW_BLOCK rows at a time."""
    counts = np.zeros(size, dtype=np.int64)
    for start in range(0, index.shape[0], ROW_BLOCK):
        counts += np.bincount(index[start : start + ROW_BLOCK].ravel(), minlength=size)
    return counts


def _lookup(table: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``table[index]``, ROW_BLOCK rows at a time."""
    out = np.empty(index.shape, dtype=table.dtype)
    for start in range(0, index.shape[0], ROW_BLOCK):
        rows = slice(start, start + ROW_BLOCK)
        np.take(table, index[rows], out=out[rows])
    return out


def _display_values(values: np.ndarray, ds: Dataset, header: RadiographHeader, counts: np.ndarray | None) -> np.ndarray:
    """Stored values -> display values (float32 in [0, 1]); ``counts`` weights ``values`` for percentiles."""
    try:
        modality = apply_modality_lut(values, ds)
        if header.voi_source == VOI_LUT_SEQUENCE:
            voi, (low, high) = apply_voi(_voi_lut_input(modality, ds), ds, index=0), _voi_lut_range(ds)
        elif header.voi_source == WINDOW:
            _drop_empty_voi_function(ds)
            voi, (low, high) = apply_windowing(modality, ds, index=0), _window_output_range(ds)
        else:
            voi, (low, high) = modality, _robust_range(modality, counts)
    except (AttributeError, IndexError, KeyError, NotImplementedError, TypeError, ValueError) as error:
        raise DicomReadError(header.path, "unsupported", f"cannot apply its LUTs: {error}") from error
    display = _normalise(voi, low, high)
    if header.inverted:
        np.subtract(1.0, display, out=display)
    return display


def _voi_lut_input(modality: np.ndarray, ds: Dataset) -> np.ndarray:
    """Modality values as integers in the VOI LUT's input range (floor; pydicom truncates floats alike)."""
    descriptor = ds.VOILUTSequence[0].LUTDescriptor
    first, entries = int(descriptor[1]), int(descriptor[0]) or 2**16
    values = np.floor(modality) if modality.dtype.kind == "f" else modality
    return np.clip(values, first, first + entries - 1).astype(np.int64)


def _voi_lut_range(ds: Dataset) -> tuple[float, float]:
    """Output range of the first VOI LUT: [0, 2**bits - 1], bits the third LUT Descriptor value."""
    return 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)


def _drop_empty_voi_function(ds: Dataset) -> None:
    """Delete an empty VOI LUT Function, which pydicom rejects but PS3.3 C.11.2.1.3 reads as LINEAR."""
    if "VOILUTFunction" in ds and not _text(ds, "VOILUTFunction"):
        del ds.VOILUTFunction


def _window_output_range(ds: Dataset) -> tuple[float, float]:
    """[y_min, y_max] that ``apply_windowing`` maps into: the stored range (or Modality LUT output range,
    PS3.3 C.11.1.1.1) through Rescale Slope/Intercept, computed as pydicom 3 does."""
    if ds.get("ModalityLUTSequence"):
        low, high = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(ds.PixelRepresentation) == 0:
        low, high = 0.0, float(2 ** int(ds.BitsStored) - 1)
    else:
        low, high = float(-(2 ** (int(ds.BitsStored) - 1))), float(2 ** (int(ds.BitsStored) - 1) - 1)
    if ds.get("RescaleSlope") is not None and ds.get("RescaleIntercept") is not None:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        low, high = low * slope + intercept, high * slope + intercept
    return low, high


def _robust_range(values: np.ndarray, counts: np.ndarray | None) -> tuple[float, float]:
    """The ROBUST_PERCENTILES of ``values`` (each counted ``counts`` times, if given); the full range when
    they coincide (an image that is mostly one value)."""
    if counts is None:
        low, high = (float(p) for p in np.percentile(values, ROBUST_PERCENTILES))
        return (low, high) if high > low else (float(values.min()), float(values.max()))
    present = counts > 0
    values, counts = np.asarray(values, dtype=np.float64)[present], counts[present]
    order = np.argsort(values, kind="stable")
    values, cumulative = values[order], np.cumsum(counts[order])
    low, high = (_weighted_percentile(values, cumulative, q) for q in ROBUST_PERCENTILES)
    return (low, high) if high > low else (float(values[0]), float(values[-1]))


def _weighted_percentile(sorted_values: np.ndarray, cumulative: np.ndarray, q: float) -> float:
    """np.percentile's linear method on the expanded data: rank ``q/100 * (n - 1)``, interpolated."""
    rank = q / 100 * (int(cumulative[-1]) - 1)
    below = math.floor(rank)
    lower = sorted_values[np.searchsorted(cumulative, below, side="right")]
    upper = sorted_values[min(np.searchsorted(cumulative, below + 1, side="right"), sorted_values.size - 1)]
    return float(lower + (rank - below) * (upper - lower))


def _normalise(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """``(values - low) / (high - low)`` clipped to [0, 1], as float32, converted once and then in place.
    A degenerate range (a constant image) gives zeros."""
    out = np.array(values, dtype=np.float32)
    if not high > low:
        out.fill(0.0)
        return out
    out -= np.float32(low)
    out /= np.float32(high - low)
    return np.clip(out, 0.0, 1.0, out=out)


# ---------------------------------------------------------------------------------------------------------
# MONAI


def _plain(value: Any) -> Any:
    """A metadata value MONAI can collate: None -> "none" (as MONAI's readers do), tuples of strings ->
    backslash-joined DICOM multi-value text, paths -> str."""
    if value is None:
        return str(TraceKeys.NONE)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple) and all(isinstance(v, str) for v in value):
        return "\\".join(value)
    return value


def radiograph_meta(header: RadiographHeader) -> dict[str, Any]:
    """MONAI metadata for a radiograph: every header field as a plain value (see :func:`_plain`;
    ``spacing_mm`` is ``(nan, nan)`` when unknown), plus the keys LoadImage and EnsureChannelFirst use."""
    meta = {field.name: _plain(getattr(header, field.name)) for field in fields(header)}
    spacing = header.spacing_mm or (1.0, 1.0)
    meta["spacing_mm"] = header.spacing_mm or (math.nan, math.nan)
    affine = np.diag([spacing[0], spacing[1], 1.0, 1.0])
    meta[MetaKeys.AFFINE], meta[MetaKeys.ORIGINAL_AFFINE] = affine, affine.copy()
    meta[MetaKeys.SPATIAL_SHAPE] = np.array([header.rows, header.columns])
    meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = float("nan")  # no channel axis
    meta["filename_or_obj"] = str(header.path)
    return meta


class RadiographReader(ImageReader):
    """MONAI image reader for radiographs: :func:`read_radiograph` behind ``LoadImage`` / ``LoadImaged``.

    Arrays are (Rows, Columns), never transposed, float32 display values; the affine is diagonal with the
    (row, column) spacing in mm (identity without spacing). A list of files is stacked on a new first axis.

    ``LoadImage(reader=RadiographReader())`` falls back to MONAI's default readers when this one raises, so
    a rejected file may still be loaded by another reader (so may ``LoadImaged``); :func:`radiograph_loader`
    registers this reader alone, so that DicomReadError propagates.
    """

    SUFFIXES = (".dcm", ".dicom")

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """True when every name ends in .dcm or .dicom (any case), or has no suffix (a last dot-part of
        digits, as in a SOP Instance UID file name, counts as none)."""
        return all(self._suffix_ok(Path(name)) for name in ensure_tuple(filename))

    @classmethod
    def _suffix_ok(cls, path: Path) -> bool:
        """Whether one file name looks like a DICOM file."""
        suffix = path.suffix.lower()
        return suffix in cls.SUFFIXES or suffix == "" or suffix[1:].isdigit()

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> Radiograph | list[Radiograph]:
        """Read one file, or each of a list of files, with :func:`read_radiograph`."""
        radiographs = [Radiograph(*read_radiograph(name)) for name in ensure_tuple(data)]
        return radiographs[0] if len(radiographs) == 1 else radiographs

    def get_data(self, img: Radiograph | Sequence[Radiograph]) -> tuple[np.ndarray, dict]:
        """(array, metadata) of what :meth:`read` returned; several files become channels of one array."""
        radiographs = [img] if isinstance(img, Radiograph) else list(img)
        meta = radiograph_meta(radiographs[0].header)
        if len(radiographs) == 1:
            return radiographs[0].pixels, meta
        shapes = {r.pixels.shape for r in radiographs}
        if len(shapes) > 1:
            raise ValueError(f"cannot stack radiographs of different shapes {sorted(shapes)}")
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
        return np.stack([r.pixels for r in radiographs]), meta


def radiograph_loader(**kwargs: Any) -> LoadImage:
    """``LoadImage(**kwargs)`` that reads with a :class:`RadiographReader` only.

    With ``reader=RadiographReader()``, LoadImage catches the reader's errors and tries its default readers
    (PydicomReader loads a multi-frame file that this reader rejects, transposed). Here the reader list is
    replaced while LoadImage keeps choosing by suffix, a path that calls the reader without catching, so a
    DicomReadError reaches the caller.
    """
    loader = LoadImage(reader=None, **kwargs)
    loader.readers = [RadiographReader()]
    return loader
