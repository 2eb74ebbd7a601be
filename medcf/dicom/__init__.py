"""DICOM output: store synthetic display images as realistic DICOM files and read them back."""

from medcf.dicom.encode import (
    PixelEncoding,
    attach_pixels,
    decode_display,
    encode_pixels,
    new_uid,
    write_dataset_atomic,
)

__all__ = [
    "PixelEncoding",
    "attach_pixels",
    "decode_display",
    "encode_pixels",
    "new_uid",
    "write_dataset_atomic",
]
