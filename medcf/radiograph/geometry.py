"""What preparation did to an image's geometry, so that a counterfactual can be put back the way its source lies.

Preparation crops a box out of the source's pixel grid, may mirror it left-right (mammograms are turned so
that every chest wall is on the left) and resizes it to the model's size. :class:`Geometry` records those
three steps with the source's pixel spacing. Writers call :meth:`Geometry.to_source_orientation` to undo the
mirroring, so the counterfactual's anatomy lies on the same side as the source's and agrees with the
source's orientation and laterality tags, and :attr:`Geometry.output_spacing_mm` for the pixel spacing of
the counterfactual (the source's spacing times the crop's extent over the model's size, per axis).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Geometry:
    """Where a prepared image lies in its source.

    Attributes:
        source_shape: the source image's (rows, columns).
        crop: (top, bottom, left, right) of the box the prepared image shows, in the source's stored pixel
            grid (before any mirroring); bottom and right are exclusive.
        output_shape: the prepared image's (rows, columns).
        mirrored: the prepared image is the crop mirrored left-right.
        spacing_mm: the source's (row, column) pixel spacing in mm, or None when it has none.
        spacing_tag: the tag the spacing came from (``PixelSpacing`` or ``ImagerPixelSpacing``), or None.
    """

    source_shape: tuple[int, int]
    crop: tuple[int, int, int, int]
    output_shape: tuple[int, int]
    mirrored: bool = False
    spacing_mm: tuple[float, float] | None = None
    spacing_tag: str | None = None

    def __post_init__(self) -> None:
        top, bottom, left, right = self.crop
        rows, columns = self.source_shape
        if not (0 <= top < bottom <= rows and 0 <= left < right <= columns):
            raise ValueError(f"crop {self.crop} does not lie inside a {rows}x{columns} source image")

    @classmethod
    def from_mirrored_crop(
        cls,
        source_shape: tuple[int, int],
        crop_in_mirrored: tuple[int, int, int, int],
        output_shape: tuple[int, int],
        mirrored: bool,
        **spacing: Any,
    ) -> Geometry:
        """A crop given in the coordinates of the (possibly) mirrored source, as preparation computes it.

        Args:
            source_shape: the source image's (rows, columns).
            crop_in_mirrored: (top, bottom, left, right) in the mirrored source when ``mirrored``, else in the
                source; bottom and right are exclusive.
            output_shape: the prepared image's (rows, columns).
            mirrored: the prepared image is the crop mirrored left-right.
            **spacing: ``spacing_mm`` and ``spacing_tag``, as for :class:`Geometry`.

        Returns:
            The geometry, its crop in the source's stored pixel grid.

        Raises:
            ValueError: the crop does not lie inside the source image.
        """
        top, bottom, left, right = crop_in_mirrored
        if mirrored:
            left, right = source_shape[1] - right, source_shape[1] - left
        return cls(tuple(source_shape), (top, bottom, left, right), tuple(output_shape), mirrored, **spacing)

    @property
    def scale(self) -> tuple[float, float]:
        """Source pixels per prepared pixel, (rows, columns)."""
        top, bottom, left, right = self.crop
        return (bottom - top) / self.output_shape[0], (right - left) / self.output_shape[1]

    @property
    def output_spacing_mm(self) -> tuple[float, float] | None:
        """The (row, column) spacing of a prepared-size image of this crop, or None without source spacing."""
        if self.spacing_mm is None:
            return None
        return self.spacing_mm[0] * self.scale[0], self.spacing_mm[1] * self.scale[1]

    def to_source_orientation(self, image: np.ndarray) -> np.ndarray:
        """A prepared-size image (..., rows, columns) turned back the way the source lies (mirroring undone).

        Args:
            image: an image or batch of images, columns last.

        Returns:
            A contiguous copy mirrored left-right when :attr:`mirrored`, else ``image`` itself.
        """
        return np.ascontiguousarray(image[..., ::-1]) if self.mirrored else image

    def to_record(self) -> dict[str, Any]:
        """Flat manifest columns (``geometry_*``).

        Returns:
            ``geometry_mirrored``, ``geometry_source_shape`` (``RxC``), ``geometry_crop``, ``geometry_scale`` and,
            with source spacing, ``geometry_output_spacing_mm``; values as text except the first.
        """
        top, bottom, left, right = self.crop
        record: dict[str, Any] = {
            "geometry_mirrored": self.mirrored,
            "geometry_source_shape": f"{self.source_shape[0]}x{self.source_shape[1]}",
            "geometry_crop": f"{top},{bottom},{left},{right}",
            "geometry_scale": f"{self.scale[0]:.6g},{self.scale[1]:.6g}",
        }
        if self.output_spacing_mm is not None:
            record["geometry_output_spacing_mm"] = ",".join(f"{v:.6g}" for v in self.output_spacing_mm)
        return record
