"""Mammogram preparation: 2D FOR PRESENTATION CC/MLO mammograms -> breast crops facing one way.

Accepted: Modality MG; PresentationIntentType not FOR PROCESSING (raw detector data); view CC, XCCL
(counted as CC) or MLO, from the header or the cohort. Steps:

1. orientation: every breast is turned to have its chest wall on the left. The tags decide
   (PatientOrientation's row direction "P" means the chest wall is on the right; without it, laterality R
   means the same); when the tags are missing, contradict each other or contradict where the tissue
   actually is, the tissue centroid decides. The manifest records which one did.
2. burned-in text and labels are removed: only the largest connected bright region (the breast) is kept.
3. crop to the breast, widened to the output aspect ratio and anchored at the chest wall; area resize.
4. robust percentile normalisation inside the breast; background -1; values in [-1, 1].
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
from medcf.prepare.breast import breast_mask, chest_wall_on_right, crop_box
from medcf.radiograph.geometry import Geometry
from medcf.radiograph.header import DEFAULT_MAX_PIXEL_BYTES, RadiographHeader

MAMMO_VIEWS = {"CC": "CC", "XCCL": "CC", "MLO": "MLO"}
ANALYSIS_SIZE = 512  # longest side of the downsized copy the mask is computed on
MIN_BREAST_FRACTION = 0.02


class MammoPreparer(Preparer):
    """2D mammograms to ``image_size`` (height, width) arrays in [-1, 1], chest wall on the left.

    Args:
        image_size: output (height, width): 192 x 192 as in the diffusion papers; the phantom demo 64 x 64.
        max_pixel_bytes: the pixel budget: a file whose header declares more bytes of decoded pixel data is
            rejected ``too_large`` before decoding (default 128 MiB, 8192 x 8192 x 16 bit: the largest FFDM,
            about 4.7k x 5.9k x 16 bit, needs 56 MB; see :data:`medcf.radiograph.header.DEFAULT_MAX_PIXEL_BYTES`).
    """

    kind = "mammo"
    required_labels = ("age", "race", "density", "view")

    def __init__(
        self,
        image_size: tuple[int, int] | list[int] | int = (192, 192),
        max_pixel_bytes: int = DEFAULT_MAX_PIXEL_BYTES,
    ) -> None:
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(size) != 2 or not all(isinstance(s, int) and s >= 16 for s in size):
            raise ValueError(f"image_size: {image_size!r} must be one or two integers >= 16")
        self.image_size: tuple[int, int] = (int(size[0]), int(size[1]))
        self.max_pixel_bytes = checked_pixel_budget(max_pixel_bytes)

    def settings(self) -> dict[str, Any]:
        """The settings that determine the prepared arrays.

        Returns:
            ``kind`` and ``image_size`` (as a list).
        """
        return {"kind": self.kind, "image_size": list(self.image_size)}

    def check_header(self, header: RadiographHeader) -> None:
        """Refuse files that are not FOR PRESENTATION CC/MLO mammograms large enough for ``image_size``.

        Args:
            header: the file's header, read without its pixel data.

        Raises:
            Rejected: Modality (0008,0060) is not MG; Presentation Intent Type (0008,0068) is FOR PROCESSING; the
                view (see :func:`medcf.radiograph.header.view_of`) is present and not CC, XCCL or MLO; Rows or
                Columns is smaller than the smaller side of ``image_size``.
        """
        if header.modality != "MG":
            raise Rejected(f"wrong modality {header.modality or 'missing'}: mammogram preparation takes MG")
        if (header.presentation_intent or "").upper() == "FOR PROCESSING":
            raise Rejected("FOR PROCESSING image (raw detector data); only FOR PRESENTATION images are used")
        if header.view_position is not None and header.view_position not in MAMMO_VIEWS:
            raise Rejected(f"view {header.view_position} is not CC or MLO")
        if min(header.rows, header.columns) < min(self.image_size):
            raise Rejected(f"image too small to resize: {header.rows}x{header.columns} < {min(self.image_size)}")

    def header_labels(self, header: RadiographHeader) -> dict[str, Any]:
        """View, laterality and age from the header, used when no cohort table is given.

        Args:
            header: the file's header.

        Returns:
            ``view`` (CC or MLO; XCCL counts as CC; None otherwise), ``laterality`` and ``age`` (Patient's Age in
            years); None where absent.
        """
        view = MAMMO_VIEWS.get(header.view_position or "")
        return {"view": view, "laterality": header.laterality, "age": header.patient_age_years}

    def check_labels(self, header: RadiographHeader, labels: Mapping[str, Any]) -> dict[str, Any]:
        """The cohort's ``view`` spelled as the header's (XCCL counts as CC), then :meth:`Preparer.check_labels`.

        Args:
            header: the file's header.
            labels: the file's cohort row.

        Returns:
            The labels to keep, with ``view`` as CC or MLO where it is one of CC, XCCL or MLO.

        Raises:
            Rejected: a required label is missing, or a label contradicts the header.
        """
        labels = {**labels, "view": MAMMO_VIEWS.get(str(labels.get("view") or ""), labels.get("view"))}
        return super().check_labels(header, labels)

    def check_attributes(self, header: RadiographHeader, attributes: Mapping[str, Any]) -> None:
        """The view must be known: CC or MLO from the header, else the ``view`` of the attributes.

        Args:
            header: the file's header.
            attributes: the labels kept for the file (cohort row, or header labels).

        Raises:
            Rejected: neither the header nor the attributes say CC or MLO.
        """
        if MAMMO_VIEWS.get(header.view_position or "") is None and attributes.get("view") not in (
            "CC",
            "MLO",
        ):
            raise Rejected("view unknown: neither the header nor the cohort says CC/MLO")

    def prepare_pixels(
        self, image: np.ndarray, header: RadiographHeader
    ) -> tuple[np.ndarray, Geometry, dict[str, Any]]:
        """Steps 1-4 of the module docstring: orientation, breast mask, crop and resize, normalisation.

        The mask is computed on a copy downsized to at most :data:`ANALYSIS_SIZE` pixels on its longest side.

        Args:
            image: the display image (float32, rows x columns, [0, 1], bright = attenuating).
            header: the file's header (orientation and laterality tags, pixel spacing).

        Returns:
            The array (1, height, width) float32 in [-1, 1] (background -1, chest wall on the left), its
            :class:`Geometry`, and manifest columns ``flipped``, ``flip_source`` and ``breast_fraction``.

        Raises:
            Rejected: the breast covers under 2% of the image (:data:`MIN_BREAST_FRACTION`), or it has no contrast.
        """
        scale = min(1.0, ANALYSIS_SIZE / max(image.shape))
        small_shape = (max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale)))
        mask = breast_mask(resize_area(image, small_shape))
        if mask.mean() < MIN_BREAST_FRACTION:
            raise Rejected("no breast tissue found (bright region under 2% of the image)")

        flip, source = self._orientation(header, mask)
        if flip:
            image, mask = image[:, ::-1], mask[:, ::-1]

        height, width = self.image_size
        top, bottom, left, right = crop_box(mask, aspect=height / width)
        factor_r, factor_c = image.shape[0] / mask.shape[0], image.shape[1] / mask.shape[1]
        box = (int(top * factor_r), int(bottom * factor_r), int(left * factor_c), int(right * factor_c))
        small = resize_area(image[box[0] : box[1], box[2] : box[3]], self.image_size)
        keep = resize_area(mask[top:bottom, left:right].astype(np.float32), self.image_size) > 0.5
        unit = robust_unit_range(small, keep) * keep
        geometry = Geometry.from_mirrored_crop(image.shape, box, self.image_size, flip, **source_spacing(header))
        details = {"flipped": flip, "flip_source": source, "breast_fraction": round(float(mask.mean()), 4)}
        return to_model_scale(unit).astype(np.float32)[None], geometry, details

    @staticmethod
    def _orientation(header: RadiographHeader, mask: np.ndarray) -> tuple[bool, str]:
        """Whether to mirror the image, and what decided it: the tags, or the tissue centroid."""
        by_tissue = chest_wall_on_right(mask)
        row_direction = (header.patient_orientation or ("",))[0].upper()[:1]
        by_orientation = {"P": True, "A": False}.get(row_direction)
        by_laterality = {"R": True, "L": False}.get((header.laterality or "").upper())
        tags = {v for v in (by_orientation, by_laterality) if v is not None}
        if len(tags) == 1:
            by_tags = tags.pop()
            if by_tags == by_tissue:
                return by_tags, "tags"
            return by_tissue, "tissue centroid (tags disagree with the tissue)"
        if len(tags) == 2:
            return by_tissue, "tissue centroid (PatientOrientation and laterality disagree)"
        return by_tissue, "tissue centroid (no orientation or laterality tags)"
