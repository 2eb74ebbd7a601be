"""The true counterfactuals of a phantom data set, in the model's prepared space.

A phantom export carries ``phantom_truth.csv`` (each file's subject: attributes, exogenous noise, texture
seeds, and how the file was rendered) and ``phantom.json`` (the phantom kind and population). From them the
exact counterfactual of any file under any intervention is rendered and then prepared with the same
preparer, from the same header, as the real file: the factual image and the true counterfactual are
"prepared the same way", so their difference is the true change the model should make.

Rows are found by the file's path relative to the data set folder, never by file name alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medcf.core.attributes import AttributeSchema, AttributeValue
from medcf.phantoms.dataset import CONFIG_FILE, KINDS, make_phantom
from medcf.phantoms.scm import Phantom, Subject
from medcf.phantoms.writer import TRUTH_FILE, render_display, subject_from_truth
from medcf.prepare.base import Preparer
from medcf.radiograph.header import RadiographHeader


class TruthError(ValueError):
    """A ground-truth file that does not fit the data or the model (one line, naming the file).

    Args:
        message: the one line.
    """


@dataclass
class PhantomTruth:
    """Ground truth of one phantom data set folder.

    Args:
        phantom: the phantom (kind and population of ``phantom.json``).
        kind: ``cxr`` or ``mammo``.
        rows: ground-truth row by the file's path relative to the data set folder.
        path: the ``phantom_truth.csv`` file (for messages).
    """

    phantom: Phantom
    kind: str
    rows: dict[str, dict[str, Any]]
    path: Path

    @classmethod
    def find(cls, dataset_dir: str | Path, schema: AttributeSchema, kind: str) -> PhantomTruth | None:
        """The truth of ``dataset_dir`` when it holds ``phantom_truth.csv`` (else None), checked against the
        model's ``schema`` and the bundle's phantom ``kind``.

        Args:
            dataset_dir: the data set folder.
            schema: the model's attributes; the phantom's must be the same.
            kind: the bundle's phantom kind, ``cxr`` or ``mammo``.

        Returns:
            The ground truth, or None when the folder has no ``phantom_truth.csv``.

        Raises:
            TruthError: when ``phantom.json`` is missing or unreadable, names another kind or population the
                phantom refuses, its attributes are not the model's, or the truth file lacks columns.
        """
        folder = Path(dataset_dir)
        path = folder / TRUTH_FILE
        if not path.exists():
            return None
        config_path = folder / CONFIG_FILE
        if not config_path.exists():
            raise TruthError(f"{path}: found without {CONFIG_FILE} beside it (the phantom's kind and population)")
        try:
            config = json.loads(config_path.read_text())
            truth_kind = config["kind"]
        except (ValueError, KeyError) as error:
            raise TruthError(f"{config_path}: not a phantom description ({error})") from None
        if truth_kind != kind:
            raise TruthError(f"{path}: ground truth of a {truth_kind} phantom; this model is for {kind} images")
        try:
            phantom = make_phantom(truth_kind, config.get("population"))
        except ValueError as error:
            raise TruthError(f"{config_path}: {error}") from None
        theirs, ours = phantom.schema.names, schema.names
        if phantom.schema.to_config() != schema.to_config():
            raise TruthError(
                f"{path}: the phantom's attributes ({', '.join(theirs)}) are not the model's ({', '.join(ours)})"
            )
        table = pd.read_csv(path, dtype={"path": str}, keep_default_na=False)  # an empty label stays ""
        needed = ["path", *ours, *(f"u_{n}" for n in ours), *(f.name for f in phantom.factors)]
        missing = [column for column in needed if column not in table.columns]
        if missing:
            raise TruthError(f"{path}: missing column(s) {', '.join(missing[:5])}; not a {kind} phantom truth file")
        rows = {str(row["path"]): row for row in table.to_dict("records")}
        return cls(phantom, truth_kind, rows, path)

    def subject(self, source: str) -> Subject:
        """The phantom subject of the file at ``source`` (path relative to the data set folder).

        Args:
            source: the file's path relative to the data set folder.

        Returns:
            The subject its row describes.

        Raises:
            TruthError: when the truth file has no row for ``source``.
        """
        if source not in self.rows:
            raise TruthError(f"{self.path}: no row for {source}")
        return subject_from_truth(self.phantom, self.rows[source])

    def counterfactual(self, subject: Subject, intervened: Mapping[str, AttributeValue]) -> Subject:
        """The subject under ``do(intervened)``: descendants follow the phantom's true mechanisms.

        Args:
            subject: the factual subject.
            intervened: attribute -> the value it is set to.

        Returns:
            The counterfactual subject.
        """
        return self.phantom.counterfactual(subject, intervened)

    def prepared(self, source: str, subject: Subject, header: RadiographHeader, preparer: Preparer) -> np.ndarray:
        """``subject`` rendered the way the file at ``source`` was, prepared from its header: (1, H, W).

        Args:
            source: the file's path relative to the data set folder; its row says how it was rendered.
            subject: the subject to render (factual or counterfactual).
            header: the file's radiograph header; its rows and columns give the render's size.
            preparer: the preparer that prepared the file.

        Returns:
            The prepared array (1, H, W).

        Raises:
            TruthError: when the header's image is not square.
        """
        options, flip, label = KINDS[self.kind].truth_rendering(self.rows[source])
        if header.rows != header.columns:
            raise TruthError(f"{source}: phantom files are square, this one is {header.rows}x{header.columns}")
        display = render_display(self.phantom, subject, header.rows, options, flip, label)
        array, _, _ = preparer.prepare_pixels(display, header)
        return array
