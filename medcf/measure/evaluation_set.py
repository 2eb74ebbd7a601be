"""The images an evaluation measures: prepared held-out images with their factual attributes, and, for a
phantom data set, the true change of any intervention.

- :func:`load_evaluation_set` prepares every DICOM file under a folder with the bundle's preparer and the
  cohort table, exactly as inference does; files the preparation refuses are listed with their reason.
- :func:`patient_ids` gives each image's patient from the cohort table (statistics resample or split patients,
  not images).
- :class:`TrueChanges` renders, for the images of a phantom data set, the true change of an intervention
  (true counterfactual minus factual, both rendered and prepared the same way) and each attribute's own
  direction (its controlled effect: only that attribute changed, first against last value of its sweep),
  averaged over the set or per image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medcf.core.attributes import AttributeSchema, AttributeValue
from medcf.core.interventions import Intervention, InterventionError
from medcf.measure.ground_truth import unit_direction, unit_maps
from medcf.measure.phantom_truth import PhantomTruth
from medcf.prepare.base import Preparer
from medcf.prepare.cohort import CohortIndex
from medcf.prepare.inputs import discover_inputs
from medcf.radiograph.header import RadiographHeader, header_from_dataset
from medcf.training.samples import attribute_sweeps


class EvaluationDataError(ValueError):
    """Evaluation data that cannot be used (one line naming the folder or file).

    Args:
        message: the one line.
    """


@dataclass
class EvaluationSet:
    """Prepared images (N, 1, H, W) in [-1, 1] with their factual attributes, sources and headers.

    Attributes:
        images: the prepared images (N, 1, H, W) in [-1, 1].
        factual: each image's factual attributes, checked against the schema.
        sources: each image's file, as a path relative to the data set folder.
        headers: each image's radiograph header, as preparation read it.
        rejected: source -> reason, for the files that could not be used.
    """

    images: torch.Tensor
    factual: list[dict[str, AttributeValue]]
    sources: list[str]
    headers: list[RadiographHeader]
    rejected: dict[str, str]

    def __len__(self) -> int:
        return len(self.sources)

    def subset(self, positions: Sequence[int]) -> EvaluationSet:
        """The images at ``positions``, in that order.

        Args:
            positions: indices into this set.

        Returns:
            A new set of those images, with no rejected files.
        """
        positions = list(positions)
        return EvaluationSet(
            self.images[positions],
            [self.factual[p] for p in positions],
            [self.sources[p] for p in positions],
            [self.headers[p] for p in positions],
            {},
        )

    def draw(self, count: int, seed: int) -> EvaluationSet:
        """``count`` images drawn without replacement by ``seed`` (all of them, in a seeded order, when fewer).

        Args:
            count: how many images to draw.
            seed: seed of the random permutation.

        Returns:
            The drawn images (see :meth:`subset`), in the order of this set.
        """
        order = np.random.default_rng(seed).permutation(len(self))[:count]
        return self.subset(sorted(order.tolist()))


def load_evaluation_set(
    dataset_dir: str | Path, labels: str | Path, preparer: Preparer, schema: AttributeSchema
) -> EvaluationSet:
    """Prepare every DICOM file under ``dataset_dir`` with its labels from the cohort table ``labels``.

    Args:
        dataset_dir: the data set folder, searched recursively.
        labels: the cohort table (CSV) holding each file's attributes.
        preparer: the bundle's preparer, as inference uses it.
        schema: the model's attributes; each file's labels are validated against it.

    Returns:
        The prepared images; files preparation or validation refuses are in ``rejected`` with their reason.

    Raises:
        EvaluationDataError: when the folder holds no input files, or none of them can be prepared.
        ValueError: when the cohort table cannot be read.
    """
    folder = Path(dataset_dir)
    sources = discover_inputs(folder) if folder.is_dir() else []
    if not sources:
        raise EvaluationDataError(f"dataset_dir: no input files under {folder}")
    cohort = CohortIndex.from_csv(labels)
    images, factual, kept, headers, rejected = [], [], [], [], {}
    for source in sources:
        prepared = preparer.prepare_input(folder, source, cohort)
        if prepared.status != "ok":
            rejected[source] = prepared.reason
            continue
        try:
            factual.append(schema.validate({name: prepared.details[name] for name in schema.names}))
        except (KeyError, ValueError) as error:
            rejected[source] = f"labels: {error}"
            continue
        images.append(torch.from_numpy(prepared.array))
        headers.append(header_from_dataset(prepared.header, folder / source))  # the header preparation read
        kept.append(source)
    if not images:
        first = next(iter(rejected.items()), ("", ""))
        raise EvaluationDataError(
            f"dataset_dir: none of the {len(sources)} files under {folder} could be prepared "
            f"(first refusal: {first[1]})"
        )
    return EvaluationSet(torch.stack(images).float(), factual, kept, headers, rejected)


def patient_ids(sources: Sequence[str], labels: str | Path) -> list[str]:
    """The patient of each image, from the cohort table's ``patient`` column (the raw identifier: keep it in
    memory, or pseudonymise it before it is written anywhere).

    Args:
        sources: the images' paths relative to the data set folder (:attr:`EvaluationSet.sources`).
        labels: the cohort table.

    Returns:
        One patient identifier per source, in order.

    Raises:
        ValueError: when the table has no patient for an image (one line naming the table).
    """
    cohort = CohortIndex.from_csv(labels)
    patients = []
    for source in sources:
        patient = str(cohort.labels_for(source).get("patient") or "").strip()
        if not patient or patient.lower() == "nan":
            raise ValueError(f"labels: the cohort table has no patient for an image ({labels} needs a patient column)")
        patients.append(patient)
    return patients


class TrueChanges:
    """True changes of an evaluation set drawn from a phantom data set, on the model's [-1, 1] scale.

    The factual image each true change starts from is the subject rendered and prepared like its file
    (not the file read back), so that the difference holds the intervention's effect only.

    Args:
        truth: the ground truth of the phantom data set the images come from.
        images: the evaluation set; every source must have a row in ``truth``.
        preparer: the preparer that prepared ``images``.

    Raises:
        TruthError: when a source has no ground-truth row or a file is not square.
    """

    def __init__(self, truth: PhantomTruth, images: EvaluationSet, preparer: Preparer) -> None:
        self.truth, self.images, self.preparer = truth, images, preparer
        self.subjects = [truth.subject(source) for source in images.sources]
        self.factual = torch.stack([self._prepared(k, subject) for k, subject in enumerate(self.subjects)])
        self._effects: dict[str, torch.Tensor] | None = None

    def _prepared(self, position: int, subject: Any) -> torch.Tensor:
        source, header = self.images.sources[position], self.images.headers[position]
        return torch.from_numpy(self.truth.prepared(source, subject, header, self.preparer)).float()

    def of_intervention(self, intervention: Intervention, positions: Sequence[int]) -> torch.Tensor:
        """True counterfactual minus factual for the images at ``positions`` (N, 1, H, W). A relative shift
        applies to the subject's exact value; a shift the subject cannot take leaves its image unchanged.

        Args:
            intervention: the intervention, applied to each subject's exact attributes.
            positions: indices into the evaluation set.

        Returns:
            The true changes (len(positions), 1, H, W) on [-1, 1], in the order of ``positions``.
        """
        changes = []
        for position in positions:
            counterfactual = self.counterfactual_subject(intervention, position)
            if counterfactual is None:
                changes.append(torch.zeros_like(self.factual[position]))
                continue
            changes.append(self._prepared(position, counterfactual) - self.factual[position])
        return torch.stack(changes)

    def counterfactual_subject(self, intervention: Intervention, position: int) -> Any:
        """The subject of the image at ``position`` under ``intervention`` (descendants by the phantom's true
        mechanisms), or None where its exact value cannot take the intervention (a shift past the range).

        Args:
            intervention: the intervention, applied to the subject's exact attributes.
            position: index into the evaluation set.

        Returns:
            The counterfactual subject, or None.
        """
        subject = self.subjects[position]
        try:
            intervened = intervention.apply(self.truth.phantom.schema, subject.attributes)
        except InterventionError:
            return None
        return self.truth.counterfactual(subject, intervened)

    def controlled_effects(self) -> dict[str, torch.Tensor]:
        """Attribute -> its controlled effect on each image (N, 1, H, W): the subject with only that attribute
        set to the last value of its sweep minus only it set to the first (age 18 -> 95, sex M -> F, ...).
        Rendered on the first call and kept: :meth:`directions` and :meth:`image_directions` share them."""
        if self._effects is None:
            effects = {}
            for name, rows in attribute_sweeps(self.truth.phantom.schema).items():
                first, last = rows[0][name], rows[-1][name]
                maps = [
                    self._prepared(k, _with(subject, name, last)) - self._prepared(k, _with(subject, name, first))
                    for k, subject in enumerate(self.subjects)
                ]
                effects[name] = torch.stack(maps)
            self._effects = effects
        return self._effects

    def directions(self) -> dict[str, torch.Tensor]:
        """Attribute -> unit direction (1, H, W) of its controlled effect averaged over the set (zeros where the
        phantom draws nothing)."""
        return {name: unit_direction(maps).float() for name, maps in self.controlled_effects().items()}

    def image_directions(self) -> dict[str, torch.Tensor]:
        """Attribute -> each image's own unit controlled effect u_io (N, 1, H, W), normalised per image (a zero map
        where the attribute draws nothing on that image)."""
        return {name: unit_maps(maps).float() for name, maps in self.controlled_effects().items()}


def _with(subject: Any, name: str, value: AttributeValue) -> Any:
    attributes: Mapping[str, AttributeValue] = {**subject.attributes, name: value}
    return subject.replace(attributes=attributes)
