"""Open a DICOM file as pydicom does, with the ways a file can fail to be a readable radiograph turned into one
error with a machine reason (:class:`DicomReadError`): not DICOM, truncated (also where pydicom stops quietly at a
cut-off end), and the reasons the header and pixel steps refuse a file for."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError

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


UNDEFINED_LENGTH = 0xFFFFFFFF


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


def read_dataset(path: Path, header_only: bool) -> Dataset:
    """``pydicom.dcmread(force=False)``, with not-DICOM and truncated files turned into DicomReadError.

    Args:
        path: the DICOM file.
        header_only: stop before the pixel data (``stop_before_pixels``); bytes left after the header are then
            not taken for a truncated element.

    Returns:
        The dataset, with its file meta.

    Raises:
        DicomReadError: ``not_dicom`` (no 'DICM' prefix after the 128-byte preamble) or ``truncated`` (the file
            ends while reading the header, or pydicom stopped quietly at a cut-off end).
        OSError: the file cannot be opened.
    """
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
