"""Chest X-ray preparation: frontal CR/DX chest radiographs -> square, intensity-normalised arrays.

Accepted: Modality CR, DX or DR; BodyPartExamined CHEST (or absent); ViewPosition AP or PA (a cohort
row may supply the view when the header has none). Steps: optional centre crop to a square, area
resize to ``image_size`` (aspect ratio not kept unless ``square_crop``, as in the published cohorts),
robust percentile normalisation, values in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from medcf.core.intensity import to_model_scale
from medcf.prepare.base import (
    Preparer,
    Rejected,
    checked_pixel_budget,
    resize_area,
    robust_unit_range,
    source_spacing,
)
from medcf.radiograph.geometry import Geometry
from medcf.radiograph.header import DEFAULT_MAX_PIXEL_BYTES, RadiographHeader

CHEST_MODALITIES = ("CR", "DX", "DR")
CHEST_BODY_PARTS = ("CHEST", "THORAX", "LUNG", "CHEST_LAT", "")
FRONTAL_VIEWS = ("AP", "PA")


class ChestPreparer(Preparer):
    """Frontal chest radiographs to ``image_size`` x ``image_size`` arrays in [-1, 1].

    Args:
        image_size: output side in pixels (192 for real data as in the literature; the phantom demo uses 64).
        square_crop: crop the centre square before resizing instead of squeezing the aspect ratio.
        max_pixel_bytes: the pixel budget: a file whose header declares more bytes of decoded pixel data is
            rejected ``too_large`` before decoding (default 128 MiB, 8192 x 8192 x 16 bit; see
            :data:`medcf.radiograph.header.DEFAULT_MAX_PIXEL_BYTES`).
    """

    kind = "cxr"
    required_labels = ("age", "sex", "race", "disease")

    def __init__(
        self, image_size: int = 192, square_crop: bool = False, max_pixel_bytes: int = DEFAULT_MAX_PIXEL_BYTES
    ) -> None:
        if not isinstance(image_size, int) or image_size < 16:
            raise ValueError(f"image_size: {image_size!r} must be an integer >= 16")
        self.image_size = image_size
        self.square_crop = bool(square_crop)
        self.max_pixel_bytes = checked_pixel_budget(max_pixel_bytes)

    def settings(self) -> dict[str, Any]:
        """The settings that determine the prepared arrays.

        Returns:
            ``kind``, ``image_size`` and ``square_crop``.
        """
        return {"kind": self.kind, "image_size": self.image_size, "square_crop": self.square_crop}

    def check_header(self, header: RadiographHeader) -> None:
        """Refuse files that are not frontal chest radiographs of at least ``image_size`` pixels a side.

        Args:
            header: the file's header, read without its pixel data.

        Raises:
            Rejected: Modality (0008,0060) is not CR, DX or DR; Body Part Examined (0018,0015) is present and not
                CHEST, THORAX, LUNG or CHEST_LAT; the view (see :func:`medcf.radiograph.header.view_of`) is
                present and not AP or PA; Rows or Columns is smaller than ``image_size``.
        """
        if header.modality not in CHEST_MODALITIES:
            raise Rejected(f"wrong modality {header.modality or 'missing'}: chest preparation takes CR/DX")
        if (header.body_part or "") not in CHEST_BODY_PARTS:
            raise Rejected(f"body part {header.body_part} is not chest")
        if header.view_position is not None and header.view_position not in FRONTAL_VIEWS:
            raise Rejected(f"view {header.view_position} is not frontal (AP/PA)")
        if min(header.rows, header.columns) < self.image_size:
            raise Rejected(f"image too small to resize: {header.rows}x{header.columns} < {self.image_size}")

    def header_labels(self, header: RadiographHeader) -> dict[str, Any]:
        """Sex, age and view from the header, used when no cohort table is given.

        Args:
            header: the file's header.

        Returns:
            ``sex`` (Patient's Sex, M or F), ``age`` (Patient's Age in years) and ``view``; None where absent.
        """
        return {"sex": header.patient_sex, "age": header.patient_age_years, "view": header.view_position}

    def check_attributes(self, header: RadiographHeader, attributes: Mapping[str, Any]) -> None:
        """The view must be known: the header's, else the ``view`` of the attributes.

        Args:
            header: the file's header.
            attributes: the labels kept for the file (cohort row, or header labels).

        Raises:
            Rejected: neither the header nor the attributes say AP or PA.
        """
        if (header.view_position or attributes.get("view")) not in FRONTAL_VIEWS:
            raise Rejected("view position unknown: neither the header nor the cohort says AP/PA")

    def prepare_pixels(
        self, image: np.ndarray, header: RadiographHeader
    ) -> tuple[np.ndarray, Geometry, dict[str, Any]]:
        """Centre square crop (with ``square_crop``), area resize to ``image_size`` x ``image_size``, robust
        percentile normalisation, values in [-1, 1].

        Args:
            image: the display image (float32, rows x columns, [0, 1], bright = attenuating).
            header: the file's header (for the pixel spacing).

        Returns:
            The array (1, ``image_size``, ``image_size``) float32 in [-1, 1], its :class:`Geometry`, and no
            further manifest columns.

        Raises:
            Rejected: the image has no contrast.
        """
        rows, columns = image.shape
        top, bottom, left, right = 0, rows, 0, columns
        if self.square_crop:
            side = min(rows, columns)
            top, left = (rows - side) // 2, (columns - side) // 2
            bottom, right = top + side, left + side
        size = (self.image_size, self.image_size)
        geometry = Geometry((rows, columns), (top, bottom, left, right), size, **source_spacing(header))
        unit = robust_unit_range(resize_area(image[top:bottom, left:right], size))
        return to_model_scale(unit).astype(np.float32)[None], geometry, {}
