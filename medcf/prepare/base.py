"""What every preparation shares: a rejection with a reason, the label checks, and the per-file driver.

A :class:`Preparer` turns one DICOM file into a training-ready array (channel-first, float32 in [-1, 1])
or rejects it with a short, specific reason. Policy (which files are acceptable) lives in
:meth:`Preparer.check_header`, which runs on the header alone so that unsuitable files are never decoded;
pixel work lives in :meth:`Preparer.prepare_pixels`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from monai.transforms import Resize

from medcf.dicom.reader import DicomReadError, RadiographHeader, read_header, read_radiograph
from medcf.geometry import Geometry
from medcf.prepare.cohort import CohortIndex, CohortMatchError


class Rejected(Exception):
    """A file the preparation does not accept; ``reason`` is one short line for the manifest."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class PreparedImage:
    """The outcome for one input file."""

    status: str  # "ok" or "rejected"
    reason: str = ""
    array: np.ndarray | None = None
    details: dict[str, Any] = field(default_factory=dict)
    geometry: Geometry | None = None  # where the array lies in its source (ok images)


#: header fields that may go into the manifest (no patient identifiers exist in RadiographHeader)
MANIFEST_HEADER_FIELDS = (
    "modality",
    "view_position",
    "laterality",
    "laterality_source",
    "presentation_intent",
    "body_part",
    "patient_sex",
    "patient_age_years",
    "manufacturer",
    "photometric",
    "rows",
    "columns",
    "transfer_syntax",
)


def header_details(header: RadiographHeader) -> dict[str, Any]:
    values = asdict(header)
    return {f"dicom_{name}": values.get(name) for name in MANIFEST_HEADER_FIELDS}


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


class Preparer(ABC):
    """Prepares one kind of radiograph. Subclasses set :attr:`required_labels` and the two steps."""

    kind: str
    #: attributes a cohort row must provide
    required_labels: tuple[str, ...] = ()

    @abstractmethod
    def check_header(self, header: RadiographHeader) -> None:
        """Raise :class:`Rejected` when the file is not one this preparation accepts."""

    @abstractmethod
    def prepare_pixels(
        self, image: np.ndarray, header: RadiographHeader
    ) -> tuple[np.ndarray, Geometry, dict[str, Any]]:
        """Display image in [0, 1] (rows x columns) -> channel-first float32 array in [-1, 1], where it lies in
        the source (see :class:`medcf.geometry.Geometry`), and details for the manifest."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """The settings that determine the output (an output folder is only resumed with the same ones)."""

    def check_attributes(self, header: RadiographHeader, attributes: Mapping[str, Any]) -> None:
        """Checks that need the header and the final attributes together (cohort or header); none here."""
        return None

    def header_labels(self, header: RadiographHeader) -> dict[str, Any]:
        """Attributes readable from the header, used when no cohort table is given."""
        return {}

    def check_labels(self, header: RadiographHeader, labels: Mapping[str, Any]) -> dict[str, Any]:
        """Cohort labels must be complete and must not contradict the header; returns the labels to keep."""
        missing = [name for name in self.required_labels if _missing(labels.get(name))]
        if missing:
            raise Rejected(f"missing label(s) in the cohort table: {', '.join(missing)}")
        for name, from_header in self.header_labels(header).items():
            given = labels.get(name)
            if _missing(from_header) or _missing(given):
                continue
            same = (abs(float(given) - float(from_header)) <= 2.0) if name == "age" else str(given) == str(from_header)
            if not same:
                raise Rejected(f"contradictory labels: cohort {name}={given}, DICOM header says {from_header}")
        return dict(labels)

    def prepare(self, path: str, cohort: CohortIndex | None = None, source: str | None = None) -> PreparedImage:
        """Read, check and prepare one file; every failure becomes a rejection with its reason.

        Args:
            path: the DICOM file.
            cohort: the labels table. The file's row is found by ``source`` (its path relative to the data set
                folder; default ``path``) or, when the table has the column, by its SOPInstanceUID; a file
                without exactly one row is rejected. Without a cohort the attributes come from the header.
            source: the file's path relative to the data set folder.

        Reasons never contain the file's path (paths of hospital exports hold patient and study IDs).
        """
        try:
            header = read_header(path)
            details = header_details(header)
            try:
                if header.number_of_frames > 1:
                    raise Rejected(f"multi_frame: {header.number_of_frames} frames; one image per file expected")
                if header.samples_per_pixel != 1:
                    raise Rejected("not_grayscale: colour image; radiographs are single-channel")
                self.check_header(header)
                if cohort is None:
                    kept = self.header_labels(header)
                else:
                    kept = self.check_labels(header, self._cohort_row(cohort, source or path, header))
                self.check_attributes(header, kept)
                image, header = read_radiograph(path)
                array, geometry, extra = self.prepare_pixels(image, header)
            except Rejected as rejection:
                return PreparedImage("rejected", rejection.reason, details=details)
        except DicomReadError as error:
            return PreparedImage("rejected", f"{error.reason}: {error.without_path}")
        except OSError as error:  # permissions, a file removed while the job runs, a failing disk
            return PreparedImage("rejected", f"unreadable: {error.strerror or type(error).__name__}")
        details.update(extra)
        details.update(geometry.to_record())
        details.update(kept)
        return PreparedImage("ok", array=array, details=details, geometry=geometry)

    @staticmethod
    def _cohort_row(cohort: CohortIndex, source: str, header: RadiographHeader) -> dict[str, Any]:
        try:
            return cohort.labels_for(source, header.sop_instance_uid)
        except CohortMatchError as error:
            raise Rejected(error.reason) from None


def source_spacing(header: RadiographHeader) -> dict[str, Any]:
    """The spacing arguments of :class:`Geometry` from a header."""
    return {"spacing_mm": header.spacing_mm, "spacing_tag": header.spacing_source}


def resize_area(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Anti-aliased downsizing by area averaging (MONAI Resize, mode="area"); (H, W) -> (H', W')."""
    if image.shape == tuple(size):
        return image
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    return Resize(spatial_size=size, mode="area")(tensor)[0].numpy()


def robust_unit_range(
    image: np.ndarray, mask: np.ndarray | None = None, low: float = 0.5, high: float = 99.5
) -> np.ndarray:
    """Map the ``low``..``high`` percentiles (within ``mask``) to 0..1, clipping outliers."""
    values = image[mask] if mask is not None and mask.any() else image
    lo, hi = np.percentile(values, (low, high))
    if hi - lo < 1e-6:
        raise Rejected("image has no contrast (constant pixel values)")
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0)
