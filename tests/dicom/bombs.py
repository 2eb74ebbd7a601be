"""DICOM files whose headers declare far more pixels than the file holds: a small RLE Lossless file that decodes
to gigabytes, and a sparse uncompressed file whose Pixel Data is a hole (large to read, nothing on disk)."""

from __future__ import annotations

import struct
from pathlib import Path

import pydicom
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"


def _as_16_bit(source: Path, rows: int, columns: int) -> pydicom.Dataset:
    """The header of ``source`` (a real or phantom radiograph) claiming ``rows`` x ``columns`` x 16 bit."""
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 16, 15, 0
    for keyword in ("NumberOfFrames", "LossyImageCompression", "LossyImageCompressionRatio"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _rle_segment(count: int) -> bytes:
    """PackBits (PS3.5 G.3) of ``count`` zero bytes: runs of 128 (control byte -127), then the rest."""
    runs, rest = divmod(count, 128)
    segment = b"\x81\x00" * runs
    if rest >= 2:
        segment += bytes([257 - rest, 0])
    elif rest == 1:
        segment += b"\x00\x00"  # a literal run of one byte
    return segment + b"\x00" * (len(segment) % 2)  # segments are padded to an even length


def write_rle_bomb(source: Path, target: Path, rows: int = 30000, columns: int = 30000) -> Path:
    """A valid RLE Lossless copy of ``source``'s header with an all-zero ``rows`` x ``columns`` x 16-bit image:
    about 1/64 of the decoded size on disk (30000 x 30000: a 28 MB file that decodes to 1.8 GB)."""
    ds = _as_16_bit(source, rows, columns)
    segment = _rle_segment(rows * columns)  # two segments for 16 bits: high bytes, then low bytes
    header = struct.pack("<16L", 2, 64, 64 + len(segment), *([0] * 13))
    ds.PixelData = encapsulate([header + segment + segment])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = RLELossless
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, enforce_file_format=True)
    return target


def write_sparse_uncompressed(source: Path, target: Path, rows: int, columns: int) -> Path:
    """An uncompressed (Explicit VR Little Endian) ``rows`` x ``columns`` x 16-bit file whose Pixel Data value is
    a hole in a sparse file: the full size to read, no space on disk. Pixel Data is its last element."""
    ds = _as_16_bit(source, rows, columns)
    ds.PixelData = b"\x00\x00"
    ds["PixelData"].VR = "OW"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, enforce_file_format=True)
    data = target.read_bytes()
    at = data.rfind(PIXEL_DATA_TAG + b"OW\x00\x00")
    assert at > 0 and len(data) == at + 12 + 2, "Pixel Data must be the last element"
    length = rows * columns * 2
    with open(target, "r+b") as file:
        file.seek(at + 8)
        file.write(struct.pack("<L", length))
        file.truncate(at + 12 + length)
    return target
