"""What every preparation shares: a rejection with a reason, the label checks, and the per-file driver.

A :class:`Preparer` turns one DICOM file into a training-ready array (channel-first, float32 in [-1, 1])
or rejects it with a short, specific reason. Policy (which files are acceptable) lives in
:meth:`Preparer.check_header`, which runs on the header alone so that unsuitable files are never decoded;
pixel work lives in :meth:`Preparer.prepare_pixels`.

Two checks come before any policy and apply to every job that reads DICOM files (prepare, inference, evaluate,
audit), all through :meth:`Preparer.prepare_input`:

- the file must lie inside the data set folder: a file whose resolved path (through symbolic links, of the file
  or of a folder above it) is outside ``dataset_dir`` is rejected ``outside_dataset`` without being opened;
- the pixel budget: a header declaring more than ``max_pixel_bytes`` bytes of decoded pixel data (Rows x Columns
  x frames x samples x bytes per sample) is rejected ``too_large`` before anything is decoded.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Resize
from pydicom.dataset import Dataset

from medcf.prepare.cohort import CohortIndex, CohortMatchError
from medcf.radiograph.geometry import Geometry
from medcf.radiograph.header import DEFAULT_MAX_PIXEL_BYTES, RadiographHeader, check_pixel_budget, header_from_dataset
from medcf.radiograph.opening import DicomReadError, read_dataset
from medcf.radiograph.pixels import read_radiograph


class Rejected(Exception):
    """A file the preparation does not accept; ``reason`` is one short line for the manifest.

    Args:
        reason: why the file is not accepted, one short line without the file's path (kept as ``reason``).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OutsideDataset(Rejected):
    """An input whose resolved path lies outside the data set folder (a symbolic link out of it).

    Attributes:
        reason: always the same line, starting ``outside_dataset:`` (the constructor takes no arguments).
    """

    def __init__(self) -> None:
        super().__init__(
            "outside_dataset: its resolved path (through a symbolic link) lies outside dataset_dir; "
            "files outside dataset_dir are never read"
        )


def dataset_file(dataset_dir: str | os.PathLike[str], source: str) -> Path:
    """``dataset_dir / source``, when its resolved path lies inside the resolved ``dataset_dir``.

    The one rule for symbolic links, in every job that reads the data set: a link (to a file, or a folder above
    it) whose target stays inside ``dataset_dir`` is followed; one whose target is outside raises
    :class:`OutsideDataset`, before anything of the target is read. (A link may still be swapped between this
    check and the read; the rule guards against exports that point outside, not against a hostile owner of the
    folder.)

    Args:
        dataset_dir: the data set folder.
        source: the file's path relative to ``dataset_dir``.

    Returns:
        ``dataset_dir / source`` as given (not resolved).

    Raises:
        OutsideDataset: the resolved path lies outside the resolved ``dataset_dir``.
        Rejected: ``unreadable``: the path runs into a loop of symbolic links.
    """
    path = Path(dataset_dir, source)
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):  # a loop of symbolic links (RuntimeError before Python 3.13)
        raise Rejected("unreadable: a loop of symbolic links") from None
    if not resolved.is_relative_to(Path(dataset_dir).resolve()):
        raise OutsideDataset()
    return path


def checked_pixel_budget(value: Any) -> int:
    """``max_pixel_bytes`` as a positive integer (an integral float such as ``2.5e8`` is accepted).

    Args:
        value: the setting as given (an int, or a float as YAML writes large numbers).

    Returns:
        The budget in bytes, as an int.

    Raises:
        ValueError: ``value`` is a bool, not a number, not a whole number, or less than 1.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not float(value).is_integer() or value < 1:
        raise ValueError(f"max_pixel_bytes: {value!r} must be a positive whole number of bytes")
    return int(value)


@dataclass
class PreparedImage:
    """The outcome for one input file.

    Attributes:
        status: ``"ok"`` or ``"rejected"``.
        reason: why a file was rejected (one line, never its path).
        array: the prepared image, (1, H, W) in [-1, 1] (ok images).
        details: header fields, labels and geometry for the manifest.
        geometry: where the array lies in its source (ok images).
        header: the source's DICOM header without its pixel data, as preparation read it (ok images): the writers
            derive the counterfactual DICOM from it, so nothing downstream opens the source file again.
    """

    status: str
    reason: str = ""
    array: np.ndarray | None = None
    details: dict[str, Any] = field(default_factory=dict)
    geometry: Geometry | None = None
    header: Dataset | None = None


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
    """The header's manifest columns: each of :data:`MANIFEST_HEADER_FIELDS` as ``dicom_<field>``.

    Args:
        header: the file's header.

    Returns:
        ``dicom_<field>`` -> the header's value (None where the file has none).
    """
    values = asdict(header)
    return {f"dicom_{name}": values.get(name) for name in MANIFEST_HEADER_FIELDS}


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


class Preparer(ABC):
    """Prepares one kind of radiograph. Subclasses set :attr:`required_labels` and the two steps.

    The constructor arguments are the subclass's (see :class:`medcf.prepare.chest.ChestPreparer` and
    :class:`medcf.prepare.mammo.MammoPreparer`).

    Attributes:
        kind: the name of the preparation (``"cxr"``, ``"mammo"``), set by each subclass.
        required_labels: attributes a cohort row must provide.
        max_pixel_bytes: the pixel budget (see :func:`medcf.radiograph.header.check_pixel_budget`); subclasses
            take it as a setting.
    """

    kind: str
    #: attributes a cohort row must provide
    required_labels: tuple[str, ...] = ()
    #: the pixel budget (see :func:`medcf.radiograph.header.check_pixel_budget`); subclasses take it as a setting
    max_pixel_bytes: int = DEFAULT_MAX_PIXEL_BYTES

    @abstractmethod
    def check_header(self, header: RadiographHeader) -> None:
        """Raise :class:`Rejected` when the file is not one this preparation accepts.

        Args:
            header: the file's header, read without its pixel data.

        Raises:
            Rejected: the file is not one this preparation accepts; the reason says why.
        """

    @abstractmethod
    def prepare_pixels(
        self, image: np.ndarray, header: RadiographHeader
    ) -> tuple[np.ndarray, Geometry, dict[str, Any]]:
        """Display image in [0, 1] (rows x columns) -> channel-first float32 array in [-1, 1], where it lies in
        the source (see :class:`medcf.radiograph.geometry.Geometry`), and details for the manifest.

        Args:
            image: the display image (float32, rows x columns, [0, 1], bright = attenuating).
            header: the file's header.

        Returns:
            The prepared array (1, H, W), its :class:`Geometry`, and manifest columns to add.

        Raises:
            Rejected: the pixels cannot be prepared (e.g. an image without contrast).
        """

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """The settings that determine the prepared arrays (an output folder is only resumed with the same ones).

        ``max_pixel_bytes`` is not among them: it never changes an array, only which files are refused before
        decoding; the preparation runner records it next to these (inference retries refused files anyway).

        Returns:
            Setting name -> value (plain values, for JSON).
        """

    def check_attributes(self, header: RadiographHeader, attributes: Mapping[str, Any]) -> None:
        """Checks that need the header and the final attributes together (cohort or header); none here.

        Args:
            header: the file's header.
            attributes: the labels kept for the file: its checked cohort row, or :meth:`header_labels` without a
                cohort.
        """
        return None

    def header_labels(self, header: RadiographHeader) -> dict[str, Any]:
        """Attributes readable from the header, used when no cohort table is given.

        :meth:`check_labels` also compares a cohort row with them.

        Args:
            header: the file's header.

        Returns:
            Label name -> value (None when the header has none); empty here.
        """
        return {}

    def check_labels(self, header: RadiographHeader, labels: Mapping[str, Any]) -> dict[str, Any]:
        """Cohort labels must be complete and must not contradict the header; returns the labels to keep.

        Args:
            header: the file's header.
            labels: the file's cohort row.

        Returns:
            A copy of ``labels``.

        Raises:
            Rejected: a label of :attr:`required_labels` is missing (None, NaN or empty), or a label contradicts
                :meth:`header_labels` (ages more than 2 years apart; other labels differ as text). A label the
                header lacks is not compared.
        """
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

    def prepare_input(
        self, dataset_dir: str | os.PathLike[str], source: str, cohort: CohortIndex | None = None
    ) -> PreparedImage:
        """:meth:`prepare` for the file ``source`` (relative path) of the data set folder ``dataset_dir``: what
        prepare, inference, evaluate and audit call for every input. A file whose resolved path lies outside
        ``dataset_dir`` is rejected ``outside_dataset`` and never opened (see :func:`dataset_file`).

        Args:
            dataset_dir: the data set folder.
            source: the file's path relative to ``dataset_dir``; it also finds the file's cohort row.
            cohort: the labels table (see :meth:`prepare`); None: the attributes come from the header.

        Returns:
            The outcome; every failure is a ``"rejected"`` outcome with its reason, not an exception.
        """
        try:
            path = dataset_file(dataset_dir, source)
        except Rejected as rejection:
            return PreparedImage("rejected", rejection.reason)
        return self.prepare(str(path), cohort, source)

    def prepare(self, path: str, cohort: CohortIndex | None = None, source: str | None = None) -> PreparedImage:
        """Read, check and prepare one file; every failure becomes a rejection with its reason.

        Reasons never contain the file's path (paths of hospital exports hold patient and study IDs). A header
        declaring more decoded pixel bytes than ``max_pixel_bytes`` is rejected ``too_large`` before decoding.

        Args:
            path: the DICOM file.
            cohort: the labels table. The file's row is found by ``source`` (its path relative to the data set
                folder; default ``path``) or, when the table has the column, by its SOPInstanceUID; a file
                without exactly one row is rejected. Without a cohort the attributes come from the header.
            source: the file's path relative to the data set folder.

        Returns:
            ``"ok"`` with the array, manifest details (header fields, preparation details, geometry, labels),
            geometry and header without pixel data; or ``"rejected"`` with the reason (and the header fields
            when a check, not reading or decoding, refused the file).
        """
        try:
            dataset = read_dataset(Path(path), header_only=True)
            header = header_from_dataset(dataset, Path(path))
            details = header_details(header)
            try:
                self._check_budget(header)
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
                image, header = read_radiograph(path, max_pixel_bytes=None)  # the budget was checked above
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
        return PreparedImage("ok", array=array, details=details, geometry=geometry, header=dataset)

    def _check_budget(self, header: RadiographHeader) -> None:
        """Raise :class:`Rejected` ``too_large: ...`` when the header declares more pixel bytes than the budget."""
        try:
            check_pixel_budget(header, self.max_pixel_bytes)
        except DicomReadError as error:
            raise Rejected(f"{error.reason}: {error.without_path}") from None

    @staticmethod
    def _cohort_row(cohort: CohortIndex, source: str, header: RadiographHeader) -> dict[str, Any]:
        try:
            return cohort.labels_for(source, header.sop_instance_uid)
        except CohortMatchError as error:
            raise Rejected(error.reason) from None


def source_spacing(header: RadiographHeader) -> dict[str, Any]:
    """The spacing arguments of :class:`Geometry` from a header.

    Args:
        header: the file's header.

    Returns:
        ``spacing_mm`` and ``spacing_tag``: the header's (row, column) spacing and the tag it came from (None
        without spacing).
    """
    return {"spacing_mm": header.spacing_mm, "spacing_tag": header.spacing_source}


def resize_area(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Anti-aliased downsizing by area averaging (MONAI Resize, mode="area"); (H, W) -> (H', W').

    Args:
        image: a 2-D array (H, W).
        size: the output (H', W').

    Returns:
        The resized float32 array; ``image`` itself when it already has that size.
    """
    if image.shape == tuple(size):
        return image
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    return Resize(spatial_size=size, mode="area")(tensor)[0].numpy()


def robust_unit_range(
    image: np.ndarray, mask: np.ndarray | None = None, low: float = 0.5, high: float = 99.5
) -> np.ndarray:
    """Map the ``low``..``high`` percentiles (within ``mask``) to 0..1, clipping outliers.

    Args:
        image: a 2-D array.
        mask: boolean, same shape: the pixels whose values give the percentiles; None or an empty mask: all.
        low: the percentile mapped to 0 (default 0.5).
        high: the percentile mapped to 1 (default 99.5).

    Returns:
        The whole image mapped and clipped to [0, 1].

    Raises:
        Rejected: the two percentiles are less than 1e-6 apart (no contrast).
    """
    values = image[mask] if mask is not None and mask.any() else image
    lo, hi = np.percentile(values, (low, high))
    if hi - lo < 1e-6:
        raise Rejected("image has no contrast (constant pixel values)")
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0)
