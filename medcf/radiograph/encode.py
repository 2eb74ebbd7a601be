"""Write synthetic display images as realistic DICOM pixel data, and read them back.

A phantom renders a *display image* ``v`` in [0, 1]: what a MONOCHROME2 viewer shows after every LUT,
bright meaning attenuating. :func:`encode_pixels` chooses stored values and window attributes such that
a DICOM reader's standard pipeline gives ``v`` back:

    stored --Rescale Slope/Intercept--> modality value m --Window Center/Width (VOI LUT Function)--> u
    u in [0, 1] is the VOI output; the display is u for MONOCHROME2 and 1 - u for MONOCHROME1.

The window covers the stored values ``window_low_fraction * (2**bits_stored - 1)`` to
``window_high_fraction * (2**bits_stored - 1)``; their modality values are called ``lo`` and ``hi``.
:func:`decode_display` is the reference reader (pydicom's modality and VOI functions, then normalising).

Typical use::

    stored, attributes = encode_pixels(v, encoding)
    ds = Dataset()  # patient / study / series tags, SOPClassUID, SOPInstanceUID = new_uid(...)
    attach_pixels(ds, stored, attributes, encoding.transfer_syntax)
    write_dataset_atomic(ds, path)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from pydicom.valuerep import DSfloat, format_number_as_ds

from medcf.runtime.files import atomic_path

Photometric = Literal["MONOCHROME1", "MONOCHROME2"]
VoiFunction = Literal["LINEAR", "LINEAR_EXACT", "SIGMOID"]
PixelAttributes = dict[str, str | int | float]

PHOTOMETRICS: tuple[str, ...] = ("MONOCHROME1", "MONOCHROME2")
VOI_FUNCTIONS: tuple[str, ...] = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
TRANSFER_SYNTAXES: tuple[UID, ...] = (ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless, JPEGLSLossless)
BITS_ALLOCATED = 16
MIN_BITS_STORED, MAX_BITS_STORED = 10, 16
SIGMOID_CLIP = 0.002
"""Display values are clipped to [SIGMOID_CLIP, 1 - SIGMOID_CLIP] before inverting a SIGMOID window,
which never reaches 0 or 1."""


def _require(ok: bool, field: str, value: object, allowed: str) -> None:
    """Raise a ValueError naming the PixelEncoding field, its value and what is allowed, unless ``ok``."""
    if not ok:
        raise ValueError(f"PixelEncoding.{field} = {value!r} is not allowed: must be {allowed}")


def _is_finite_number(value: object) -> bool:
    """True for a finite int or float (bool excluded)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class PixelEncoding:
    """How a display image is stored: pixel format, modality rescale, VOI window and transfer syntax.

    Args:
        photometric: ``"MONOCHROME2"`` (stored high = bright) or ``"MONOCHROME1"`` (stored high = dark).
        bits_stored: significant bits of each 16-bit unsigned pixel, 10 to 16.
        rescale_slope: Rescale Slope (modality value per stored step), > 0.
        rescale_intercept: Rescale Intercept (modality value of stored 0).
        voi_function: VOI LUT Function of the window.
        window_low_fraction: start of the window, as a fraction of the stored range.
        window_high_fraction: end of the window, as a fraction of the stored range.
        transfer_syntax: one of :data:`TRANSFER_SYNTAXES` (all lossless).
    """

    photometric: Photometric = "MONOCHROME2"
    bits_stored: int = 12
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    voi_function: VoiFunction = "LINEAR"
    window_low_fraction: float = 0.05
    window_high_fraction: float = 0.95
    transfer_syntax: UID = ExplicitVRLittleEndian

    def __post_init__(self) -> None:
        _require(self.photometric in PHOTOMETRICS, "photometric", self.photometric, f"one of {PHOTOMETRICS}")
        _require(
            isinstance(self.bits_stored, int)
            and not isinstance(self.bits_stored, bool)
            and MIN_BITS_STORED <= self.bits_stored <= MAX_BITS_STORED,
            "bits_stored",
            self.bits_stored,
            f"an int from {MIN_BITS_STORED} to {MAX_BITS_STORED}",
        )
        _require(
            _is_finite_number(self.rescale_slope) and self.rescale_slope > 0,
            "rescale_slope",
            self.rescale_slope,
            "a finite number > 0",
        )
        _require(
            _is_finite_number(self.rescale_intercept),
            "rescale_intercept",
            self.rescale_intercept,
            "a finite number",
        )
        _require(self.voi_function in VOI_FUNCTIONS, "voi_function", self.voi_function, f"one of {VOI_FUNCTIONS}")
        for name in ("window_low_fraction", "window_high_fraction"):
            value = getattr(self, name)
            _require(_is_finite_number(value) and 0 <= value <= 1, name, value, "a number in [0, 1]")
        _require(
            self.window_low_fraction < self.window_high_fraction,
            "window_low_fraction",
            self.window_low_fraction,
            f"less than window_high_fraction ({self.window_high_fraction!r})",
        )
        allowed_syntaxes = ", ".join(f"{uid} ({uid.name})" for uid in TRANSFER_SYNTAXES)
        _require(
            self.transfer_syntax in TRANSFER_SYNTAXES,
            "transfer_syntax",
            self.transfer_syntax,
            f"one of {allowed_syntaxes}",
        )

    @property
    def max_stored(self) -> int:
        """Largest stored value, ``2**bits_stored - 1``."""
        return 2**self.bits_stored - 1

    @property
    def window_stored_span(self) -> float:
        """Width of the window in stored units (how many quantisation steps the display range gets)."""
        return (self.window_high_fraction - self.window_low_fraction) * self.max_stored


def as_ds(value: float) -> DSfloat:
    """``value`` rounded to 10 significant digits, as a Decimal String whose float is exactly what is written.

    Short values look like real exports (``"16384.0"``, not ``"16384.0000000000"``); computing with the
    returned value keeps the encoder consistent with what a reader parses.

    Args:
        value: a number.

    Returns:
        The Decimal String value (a float subclass).
    """
    return DSfloat(format_number_as_ds(float(f"{float(value):.10g}")))


def _check_display(display: np.ndarray) -> np.ndarray:
    """The display image as float64, after checking it is a finite 2-D array in [0, 1]."""
    v = np.asarray(display, dtype=np.float64)
    if v.ndim != 2 or v.size == 0:
        raise ValueError(f"display image must be a non-empty 2-D array, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError("display image contains NaN or infinite values")
    if v.min() < 0 or v.max() > 1:
        raise ValueError(f"display image must lie in [0, 1], got [{v.min()}, {v.max()}]")
    return v


def window_for(lo: float, hi: float, voi_function: str) -> tuple[float, float]:
    """Window centre and width whose VOI output goes from 0 at modality ``lo`` to 1 at ``hi``.

    LINEAR (PS3.3 C.11.2.1.2.1) maps x to ``(x - (c - 0.5)) / (w - 1) + 0.5``. Asking for 0 at ``lo`` and
    1 at ``hi`` gives ``(hi - lo) / (w - 1) = 1`` and ``lo + hi - 2c + 1 = 0``, so ``w = hi - lo + 1``
    and ``c = (lo + hi) / 2 + 0.5``. LINEAR_EXACT maps x to ``(x - c) / w + 0.5``: ``c`` is the middle,
    ``w = hi - lo``. SIGMOID maps x to ``1 / (1 + exp(-4 (x - c) / w))``: ``c`` is the middle and ``w``
    is chosen so that outputs SIGMOID_CLIP and 1 - SIGMOID_CLIP fall exactly at ``lo`` and ``hi``.

    Args:
        lo: the modality value whose VOI output is 0.
        hi: the modality value whose VOI output is 1.
        voi_function: VOI LUT Function (0028,1056): ``"LINEAR"``, ``"LINEAR_EXACT"`` or ``"SIGMOID"``.

    Returns:
        (Window Center, Window Width).

    Raises:
        ValueError: ``voi_function`` is not one of :data:`VOI_FUNCTIONS`.
    """
    middle = (lo + hi) / 2
    if voi_function == "LINEAR":
        return middle + 0.5, hi - lo + 1
    if voi_function == "LINEAR_EXACT":
        return middle, hi - lo
    if voi_function == "SIGMOID":
        logit_limit = math.log((1 - SIGMOID_CLIP) / SIGMOID_CLIP)
        return middle, 2 * (hi - lo) / logit_limit
    raise ValueError(f"VOI LUT Function {voi_function!r} is not one of {VOI_FUNCTIONS}")


def inverse_window(u: np.ndarray, center: float, width: float, voi_function: str) -> np.ndarray:
    """Modality values that the window (``center``, ``width``, ``voi_function``) maps to VOI output ``u``.

    Args:
        u: VOI outputs in [0, 1] (clipped to [SIGMOID_CLIP, 1 - SIGMOID_CLIP] for SIGMOID).
        center: Window Center (0028,1050).
        width: Window Width (0028,1051).
        voi_function: VOI LUT Function (0028,1056): ``"LINEAR"``, ``"LINEAR_EXACT"`` or ``"SIGMOID"``.

    Returns:
        The modality values, same shape as ``u``.

    Raises:
        ValueError: ``voi_function`` is not one of :data:`VOI_FUNCTIONS`.
    """
    if voi_function == "LINEAR":
        return center - 0.5 + (u - 0.5) * (width - 1)
    if voi_function == "LINEAR_EXACT":
        return center + (u - 0.5) * width
    if voi_function == "SIGMOID":
        clipped = np.clip(u, SIGMOID_CLIP, 1 - SIGMOID_CLIP)
        return center + width / 4 * np.log(clipped / (1 - clipped))
    raise ValueError(f"VOI LUT Function {voi_function!r} is not one of {VOI_FUNCTIONS}")


def encode_pixels(display: np.ndarray, encoding: PixelEncoding) -> tuple[np.ndarray, PixelAttributes]:
    """Stored pixels (uint16, same shape) for a display image in [0, 1], and the attributes describing them.

    The attributes (keyword -> value, decimal ones as exact DS values) are those of the Image Pixel,
    Modality LUT and VOI LUT modules; see the module docstring for the mapping.

    Args:
        display: the display image, a non-empty, finite 2-D array in [0, 1] (bright = attenuating).
        encoding: pixel format, rescale and window to store it with.

    Returns:
        (stored, attributes): the stored values, clipped to [0, :attr:`PixelEncoding.max_stored`], and the
        attributes to set with :func:`attach_pixels`.

    Raises:
        ValueError: ``display`` is not 2-D, is empty, holds NaN or infinite values, or lies outside [0, 1].
    """
    v = _check_display(display)
    slope, intercept = as_ds(encoding.rescale_slope), as_ds(encoding.rescale_intercept)
    lo, hi = (
        fraction * encoding.max_stored * slope + intercept
        for fraction in (encoding.window_low_fraction, encoding.window_high_fraction)
    )
    center, width = (as_ds(x) for x in window_for(lo, hi, encoding.voi_function))
    voi_output = v if encoding.photometric == "MONOCHROME2" else 1 - v
    modality = inverse_window(voi_output, center, width, encoding.voi_function)
    stored = np.clip(np.rint((modality - intercept) / slope), 0, encoding.max_stored).astype(np.uint16)
    attributes: PixelAttributes = {
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": encoding.photometric,
        "Rows": v.shape[0],
        "Columns": v.shape[1],
        "BitsAllocated": BITS_ALLOCATED,
        "BitsStored": encoding.bits_stored,
        "HighBit": encoding.bits_stored - 1,
        "PixelRepresentation": 0,
        "RescaleIntercept": intercept,
        "RescaleSlope": slope,
        "RescaleType": "US",
        "WindowCenter": center,
        "WindowWidth": width,
        "VOILUTFunction": encoding.voi_function,
    }
    return stored, attributes


def _require_tags(ds: Dataset, keywords: tuple[str, ...], purpose: str) -> None:
    """Raise a ValueError naming the first of ``keywords`` that ``ds`` lacks (or has empty)."""
    for keyword in keywords:
        if ds.get(keyword) in (None, ""):
            raise ValueError(f"dataset has no {keyword}, needed to {purpose}")


def _voi_output_range(ds: Dataset) -> tuple[float, float]:
    """The (min, max) that pydicom's windowing outputs for ``ds``: its stored range through the rescale."""
    bits = int(ds.BitsStored)
    if ds.PixelRepresentation == 0:
        low, high = 0.0, float(2**bits - 1)
    else:
        low, high = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    if "RescaleSlope" in ds:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        low, high = low * slope + intercept, high * slope + intercept
    return low, high


def decode_display(ds: Dataset) -> np.ndarray:
    """The display image (float32 in [0, 1], bright = attenuating) that a viewer shows for ``ds``.

    Applies pydicom's modality LUT, then its windowing (Window Center/Width, index 0, even when a VOI LUT
    Sequence is present). pydicom 3's windowing returns float64 in the *input* range [y_min, y_max] = the
    stored range [0, 2**BitsStored - 1] (signed if PixelRepresentation is 1) through the rescale, for all
    of LINEAR, LINEAR_EXACT and SIGMOID; LINEAR and LINEAR_EXACT reach both ends, SIGMOID neither. That
    range is normalised to [0, 1] and inverted for MONOCHROME1.

    Args:
        ds: a dataset with its pixel data and file meta, as read from a file or made by :func:`attach_pixels`.

    Returns:
        The display image, shape (Rows, Columns).

    Raises:
        ValueError: PixelData, PhotometricInterpretation, BitsStored, PixelRepresentation, WindowCenter,
            WindowWidth or file_meta.TransferSyntaxUID is missing; the photometric interpretation is not
            MONOCHROME1 or MONOCHROME2; the dataset has a ModalityLUTSequence; or it has only one of
            RescaleSlope and RescaleIntercept.
    """
    _require_tags(
        ds,
        ("PixelData", "PhotometricInterpretation", "BitsStored", "PixelRepresentation")
        + ("WindowCenter", "WindowWidth"),
        "decode the display image",
    )
    if "TransferSyntaxUID" not in ds.get("file_meta", {}):
        raise ValueError("dataset has no file_meta.TransferSyntaxUID, needed to decode the pixel data")
    if ds.PhotometricInterpretation not in PHOTOMETRICS:
        raise ValueError(f"PhotometricInterpretation {ds.PhotometricInterpretation!r} is not one of {PHOTOMETRICS}")
    if "ModalityLUTSequence" in ds:
        raise ValueError("datasets with a ModalityLUTSequence are not supported; use Rescale Slope/Intercept")
    if ("RescaleSlope" in ds) != ("RescaleIntercept" in ds):
        raise ValueError("dataset has only one of RescaleSlope and RescaleIntercept; it needs both or neither")
    modality = apply_modality_lut(ds.pixel_array, ds)
    windowed = apply_voi_lut(modality, ds, index=0, prefer_lut=False)
    low, high = _voi_output_range(ds)
    u = np.clip((windowed - low) / (high - low), 0.0, 1.0)
    display = 1.0 - u if ds.PhotometricInterpretation == "MONOCHROME1" else u
    return display.astype(np.float32)


def attach_pixels(ds: Dataset, stored: np.ndarray, attributes: PixelAttributes, transfer_syntax: UID) -> Dataset:
    """Set the pixel attributes and Pixel Data of ``ds`` (in place), compressed as ``transfer_syntax`` asks.

    Also sets ``ds.file_meta.TransferSyntaxUID``. Compression keeps the dataset's SOPInstanceUID.

    Args:
        ds: the dataset to complete.
        stored: the stored pixels, uint16, shape (Rows, Columns) as ``attributes`` say.
        attributes: keyword -> value, as :func:`encode_pixels` returns them.
        transfer_syntax: one of :data:`TRANSFER_SYNTAXES`; Explicit VR Little Endian stores the pixels
            uncompressed (VR OW), the others compress them with ``Dataset.compress``.

    Returns:
        ``ds`` for convenience.

    Raises:
        ValueError: ``transfer_syntax`` is not one of :data:`TRANSFER_SYNTAXES`, ``stored`` is not uint16, or
            its shape is not the attributes' (Rows, Columns).
    """
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"transfer syntax {transfer_syntax!r} is not one of {TRANSFER_SYNTAXES}")
    if stored.dtype != np.uint16:
        raise ValueError(f"stored pixels must be uint16, got {stored.dtype}")
    expected_shape = (attributes.get("Rows"), attributes.get("Columns"))
    if stored.shape != expected_shape:
        raise ValueError(f"stored pixels have shape {stored.shape}, attributes say (Rows, Columns) = {expected_shape}")
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    if transfer_syntax == ExplicitVRLittleEndian:
        ds.PixelData = stored.astype("<u2").tobytes()
        ds["PixelData"].VR = "OW"
        ds.file_meta = ds.get("file_meta") or FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    else:
        ds.compress(transfer_syntax, stored, generate_instance_uid=False)
    return ds


def _fill_file_meta(ds: Dataset) -> None:
    """Complete ``ds.file_meta`` from the dataset: SOP class/instance and pydicom's implementation UID."""
    _require_tags(ds, ("SOPClassUID", "SOPInstanceUID"), "write a DICOM file")
    file_meta = ds.get("file_meta") or FileMetaDataset()
    if not file_meta.get("TransferSyntaxUID"):
        raise ValueError("dataset has no file_meta.TransferSyntaxUID; set the pixels with attach_pixels first")
    file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = file_meta


def write_dataset_atomic(ds: Dataset, path: Path) -> None:
    """Write ``ds`` as a DICOM file (preamble and file meta) so that ``path`` is either complete or untouched.

    Fills the file meta (see :func:`_fill_file_meta`), writes a hidden temporary file in the same
    directory, syncs it and renames it over ``path``. The temporary file is removed on any error.

    Args:
        ds: the dataset, with SOPClassUID, SOPInstanceUID and ``file_meta.TransferSyntaxUID`` (set by
            :func:`attach_pixels`); its file meta is completed in place.
        path: the file to create or replace.

    Raises:
        ValueError: SOPClassUID, SOPInstanceUID or ``file_meta.TransferSyntaxUID`` is missing.
    """
    _fill_file_meta(ds)
    with atomic_path(path, durable=True) as temporary, open(temporary, "wb") as file:
        pydicom.dcmwrite(file, ds, enforce_file_format=True)


def new_uid(*entropy: object) -> str:
    """A new DICOM UID under pydicom's root: random, or derived from ``entropy`` (same entropy, same UID).

    Args:
        *entropy: values whose text (``str``) derives the UID; none: a random UID.

    Returns:
        The UID.
    """
    if entropy:
        return generate_uid(entropy_srcs=[str(source) for source in entropy])
    return generate_uid()
