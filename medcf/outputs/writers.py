"""Writers of the counterfactual job: each image's counterfactuals as derived DICOM, PNG previews (and NIfTI),
turned back the way the source lies, under a pseudonymous folder.

Layout under the output folder, per input image (its pseudonym, or its source path with ``keep_identifiers``)::

    <image>/<slug>.dcm        derived Secondary Capture (see medcf.radiograph.derived), pseudonymous by default
    <image>/<slug>.png        factual | counterfactual | |difference|
    <image>/<slug>_diff.png   |difference|, scaled to its maximum
    <image>/<slug>.nii.gz     the counterfactual for analysis tools (optional), with the pixel spacing

Every file is written atomically. Images arrive on the model's display scale ([0, 1]) in the prepared
orientation; :meth:`medcf.radiograph.geometry.Geometry.to_source_orientation` undoes the preparation's mirroring first.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from medcf.core.interventions import Intervention
from medcf.outputs.pseudonyms import Pseudonyms
from medcf.radiograph.derived import DerivedIdentity, write_counterfactual
from medcf.radiograph.geometry import Geometry
from medcf.runtime.files import atomic_path

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")


def slug(intervention: Intervention) -> str:
    """A file-name-safe name of an intervention: do(age=+20, sex=F) -> age-+20_sex-F; do() -> null.

    Args:
        intervention: the intervention.

    Returns:
        The name: letters, digits and ``_+.-`` only.
    """
    if intervention.is_null:
        return "null"
    text = intervention.text[3:-1].replace(", ", "_").replace("=", "-")
    return re.sub(r"[^A-Za-z0-9_+.-]", "", text.replace(" ", ""))


def output_folder(source: str, image: str, keep_identifiers: bool) -> str:
    """The folder of an input's outputs: its pseudonym ``image``, or with ``keep_identifiers`` its source path
    without a DICOM suffix (other suffixes stay: UID-named files such as ``1.2.3.4`` must not collide).

    Args:
        source: the input's path relative to the data set folder (POSIX).
        image: the input's pseudonym.
        keep_identifiers: name the folder after ``source`` instead of ``image``.

    Returns:
        The folder, relative to the output folder.
    """
    if not keep_identifiers:
        return image
    path = PurePosixPath(source)
    return str(path.with_suffix("")) if path.suffix.lower() in DICOM_SUFFIXES else source


@dataclass(frozen=True)
class SourceImage:
    """One input as the writers need it.

    Attributes:
        image: its pseudonym.
        source: its path relative to the data set folder.
        header: its DICOM header without pixel data, as preparation read it (the DICOM provenance comes from it).
        geometry: what preparation did to it.
    """

    image: str
    source: str
    header: Dataset
    geometry: Geometry


@dataclass(frozen=True)
class Drawn:
    """One counterfactual of an image: the intervention, the image ([0, 1], prepared orientation) and the
    DerivationDescription of its DICOM.

    Attributes:
        intervention: the intervention it answers.
        display: the counterfactual image, rows x columns, [0, 1], in the prepared orientation.
        description: the DerivationDescription (0008,2111) of its DICOM.
    """

    intervention: Intervention
    display: np.ndarray
    description: str


@dataclass
class Written:
    """What :meth:`CounterfactualWriter.write` wrote for one image: the factual and each counterfactual image as
    written (source orientation, [0, 1]) and, per counterfactual, its files and mean absolute change (manifest
    columns).

    Attributes:
        factual: the factual image, in the source's orientation.
        displays: each counterfactual image, in the source's orientation, in the order they were given.
        files: per counterfactual, ``dicom``, ``png`` and ``diff`` (paths relative to the output folder) and
            ``mean_abs_change``.
    """

    factual: np.ndarray
    displays: list[np.ndarray] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)


class CounterfactualWriter:
    """Writes the counterfactuals of one image at a time (see the module docstring).

    Args:
        output_dir: the job's output folder.
        pseudonyms: keyed pseudonyms and UIDs.
        settings_id: fingerprint of the settings (part of series and instance UIDs: other settings, other images).
        keep_identifiers: copy the source's identifiers and reference its real SOP Instance UID.
        nifti: also write NIfTI files.
    """

    def __init__(
        self,
        output_dir: str | Path,
        pseudonyms: Pseudonyms,
        settings_id: str,
        keep_identifiers: bool = False,
        nifti: bool = False,
    ) -> None:
        self.output_dir, self.pseudonyms, self.settings_id = Path(output_dir), pseudonyms, settings_id
        self.keep_identifiers, self.nifti = keep_identifiers, nifti

    def write(self, item: SourceImage, factual: np.ndarray, drawn: Sequence[Drawn]) -> Written:
        """Write every counterfactual of ``item`` (``factual`` is the prepared factual image); what was written,
        with the images as written (in the source's orientation) for grids.

        Args:
            item: the input.
            factual: the prepared factual image, rows x columns, [0, 1], in the prepared orientation.
            drawn: its counterfactuals.

        Returns:
            The images and files written.
        """
        header = item.header
        folder = output_folder(item.source, item.image, self.keep_identifiers)
        factual = item.geometry.to_source_orientation(factual)
        written = Written(factual)
        for counterfactual in drawn:
            display = item.geometry.to_source_orientation(counterfactual.display)
            difference = np.abs(display - factual)
            name = f"{folder}/{slug(counterfactual.intervention)}"
            write_counterfactual(
                self.output_dir / f"{name}.dcm",
                header,
                display,
                identity=self.identity(header, item, counterfactual.intervention),
                description=counterfactual.description,
                series_title=counterfactual.intervention.text,
                geometry=item.geometry,
                keep_identifiers=self.keep_identifiers,
            )
            save_png(np.concatenate([factual, display, difference], axis=1), self.output_dir / f"{name}.png")
            save_png(difference / max(float(difference.max()), 1e-6), self.output_dir / f"{name}_diff.png", "magma")
            if self.nifti:
                self._save_nifti(display, item.geometry, self.output_dir / f"{name}.nii.gz")
            written.displays.append(display)
            written.files.append(
                {
                    "dicom": f"{name}.dcm",
                    "png": f"{name}.png",
                    "diff": f"{name}_diff.png",
                    "mean_abs_change": float(difference.mean()),
                }
            )
        return written

    def identity(self, header: Dataset, item: SourceImage, intervention: Intervention) -> DerivedIdentity:
        """Patient, study, series and instance of a counterfactual: keyed, so re-runs agree (see pseudonyms).

        Args:
            header: the source's DICOM header; its Patient ID, Study, Series and SOP Instance UIDs and Instance
                Number are the keyed values (the image's pseudonym stands in for a missing UID, the study for a
                missing Patient ID).
            item: the input.
            intervention: the counterfactual's intervention (with the settings, part of series and instance).

        Returns:
            The identity; the instance number is the source's (1 when it has none).
        """
        p = self.pseudonyms
        study = str(header.get("StudyInstanceUID") or item.image)
        series = str(header.get("SeriesInstanceUID") or item.image)
        instance = str(header.get("SOPInstanceUID") or item.image)
        patient = p.patient(str(header.get("PatientID") or f"study:{study}"))
        series_key = (series, intervention.text, self.settings_id)
        return DerivedIdentity(
            patient_id=patient,
            patient_name=f"COUNTERFACTUAL^{patient}",
            study_uid=p.uid("study", study),
            study_id=p.short("study-id", study),
            series_uid=p.uid("series", *series_key),
            series_number=1000 + int(p.short("series-number", "\x1f".join(series_key)), 16) % 9000,
            instance_uid=p.uid("instance", instance, intervention.text, self.settings_id),
            instance_number=int(header.get("InstanceNumber") or 1),
            source_reference_uid=instance if self.keep_identifiers else p.uid("source-instance", instance),
        )

    @staticmethod
    def _save_nifti(display: np.ndarray, geometry: Geometry, path: Path) -> None:
        import nibabel

        rows, columns = geometry.output_spacing_mm or (1.0, 1.0)
        affine = np.diag([columns, rows, 1.0, 1.0])  # NIfTI axes: x = columns, y = rows
        with atomic_path(path) as temporary:
            nibabel.save(nibabel.Nifti1Image(display.T[:, :, None].astype(np.float32), affine), temporary)


def save_png(image: np.ndarray, path: Path, cmap: str = "gray") -> None:
    """Save a [0, 1] image as a PNG atomically.

    Args:
        image: a 2-D image; values outside [0, 1] are clipped.
        path: the PNG file to create or replace.
        cmap: the matplotlib colour map (default ``"gray"``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with atomic_path(path) as temporary:
        plt.imsave(temporary, np.clip(image, 0, 1), cmap=cmap, vmin=0, vmax=1)
