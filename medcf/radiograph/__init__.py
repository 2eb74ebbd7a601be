"""Radiographs as DICOM: reading real-world files and writing synthetic and derived images as realistic DICOM.

Reading is small steps, each its own module: :mod:`.opening` opens a file (and names why one cannot be read),
:mod:`.header` reads its header without the pixel data (the pixel budget is checked there), :mod:`.pixels` decodes
and renders the display image (PS3.3's grayscale pipeline), and :mod:`.monai_reader` wraps them as a MONAI
``ImageReader``. Its names are exported lazily, because it imports MONAI (several seconds), which the rest does not
need. Writing: :mod:`.encode` (pixel encodings, atomic DICOM files) and :mod:`.derived` (counterfactual DICOM
derived from a source); :mod:`.geometry` records the crop, flip and resize a preparation applied.
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
from medcf.radiograph.header import RadiographHeader, parse_patient_age, read_header
from medcf.radiograph.opening import DicomReadError
from medcf.radiograph.pixels import read_radiograph

_MONAI_READER_NAMES = ("RadiographReader", "radiograph_loader")

__all__ = [
    "DicomReadError",
    "PixelEncoding",
    "RadiographHeader",
    "attach_pixels",
    "decode_display",
    "encode_pixels",
    "new_uid",
    "parse_patient_age",
    "read_header",
    "read_radiograph",
    "write_dataset_atomic",
    *_MONAI_READER_NAMES,
]


def __getattr__(name: str) -> Any:
    """Import the MONAI reader's names on first use (PEP 562)."""
    if name in _MONAI_READER_NAMES:
        from medcf.radiograph import monai_reader

        return getattr(monai_reader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
