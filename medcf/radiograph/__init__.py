"""DICOM: read real-world radiographs and write synthetic and derived images as realistic DICOM files.

DICOM input: :mod:`medcf.radiograph.reader` reads real-world radiographs. Its names are exported lazily, because
the reader imports MONAI (several seconds), which the writers do not need.
"""

from typing import Any

from medcf.radiograph.encode import (
    PixelEncoding,
    attach_pixels,
    decode_display,
    encode_pixels,
    new_uid,
    write_dataset_atomic,
)

_READER_NAMES = (
    "DicomReadError",
    "RadiographHeader",
    "RadiographReader",
    "parse_patient_age",
    "radiograph_loader",
    "read_header",
    "read_radiograph",
)

__all__ = [
    "PixelEncoding",
    "attach_pixels",
    "decode_display",
    "encode_pixels",
    "new_uid",
    "write_dataset_atomic",
    *_READER_NAMES,
]


def __getattr__(name: str) -> Any:
    """Import the reader's names on first use (PEP 562)."""
    if name in _READER_NAMES:
        from medcf.radiograph import reader

        return getattr(reader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
