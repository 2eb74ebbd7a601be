"""The radiograph reader as a MONAI ``ImageReader``: ``LoadImage(reader=RadiographReader())`` or
:func:`radiograph_loader` gives the display image of :func:`medcf.radiograph.pixels.read_radiograph` with the header
fields as MONAI metadata. The only radiograph module that imports MONAI (several seconds on first use)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from monai.data import ImageReader
from monai.transforms import LoadImage
from monai.utils import MetaKeys, TraceKeys, ensure_tuple

from medcf.radiograph.header import RadiographHeader
from medcf.radiograph.opening import PathLike
from medcf.radiograph.pixels import read_radiograph


class Radiograph(NamedTuple):
    """What :meth:`RadiographReader.read` returns per file: display pixels and header.

    Attributes:
        pixels: the display image (float32, (Rows, Columns), [0, 1], bright = attenuating).
        header: the file's header fields.
    """

    pixels: np.ndarray
    header: RadiographHeader


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
    ``spacing_mm`` is ``(nan, nan)`` when unknown), plus the keys LoadImage and EnsureChannelFirst use.

    Args:
        header: the file's header.

    Returns:
        Field name -> value, with the affine (diagonal: row and column spacing in mm, 1 without spacing), the
        original affine, the spatial shape (Rows, Columns), no original channel axis (NaN) and
        ``filename_or_obj``.
    """
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

    Attributes:
        SUFFIXES: the file suffixes :meth:`verify_suffix` accepts besides none (the constructor takes no
            arguments).
    """

    SUFFIXES = (".dcm", ".dicom")

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """True when every name ends in .dcm or .dicom (any case), or has no suffix (a last dot-part of
        digits, as in a SOP Instance UID file name, counts as none).

        Args:
            filename: one file name, or several.

        Returns:
            Whether this reader takes all of them.
        """
        return all(self._suffix_ok(Path(name)) for name in ensure_tuple(filename))

    @classmethod
    def _suffix_ok(cls, path: Path) -> bool:
        """Whether one file name looks like a DICOM file."""
        suffix = path.suffix.lower()
        return suffix in cls.SUFFIXES or suffix == "" or suffix[1:].isdigit()

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> Radiograph | list[Radiograph]:
        """Read one file, or each of a list of files, with :func:`read_radiograph`.

        Args:
            data: one path, or several.
            **kwargs: ignored (part of MONAI's reader interface).

        Returns:
            One :class:`Radiograph` for one path (also a list of one), else a list of them.

        Raises:
            DicomReadError: a file is refused (see :func:`read_radiograph`; default pixel budget).
        """
        radiographs = [Radiograph(*read_radiograph(name)) for name in ensure_tuple(data)]
        return radiographs[0] if len(radiographs) == 1 else radiographs

    def get_data(self, img: Radiograph | Sequence[Radiograph]) -> tuple[np.ndarray, dict]:
        """(array, metadata) of what :meth:`read` returned; several files become channels of one array.

        Args:
            img: one :class:`Radiograph`, or several.

        Returns:
            The pixels, (Rows, Columns) or (files, Rows, Columns), and the metadata of the first file (see
            :func:`radiograph_meta`; original channel axis 0 when stacked).

        Raises:
            ValueError: the radiographs differ in shape.
        """
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

    Args:
        **kwargs: the other arguments of ``LoadImage`` (e.g. ``image_only``, ``ensure_channel_first``); not
            ``reader``.

    Returns:
        The loader.
    """
    loader = LoadImage(reader=None, **kwargs)
    loader.readers = [RadiographReader()]
    return loader
