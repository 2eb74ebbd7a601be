"""Which way a mammogram faces: the tags decide unless they are missing or contradictory, then the tissue."""

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from medcf.phantoms.writer import TRUTH_FILE
from medcf.prepare import MammoPreparer


def _right_breast_copy(mammo_phantom: Path, target: Path, **tags) -> Path:
    """A stored right breast (chest wall on the image's right) with its orientation tags replaced."""
    truth = pd.read_csv(mammo_phantom / TRUTH_FILE, keep_default_na=False)
    source = truth.query("laterality == 'R' and presentation == 'FOR PRESENTATION'")["path"].iloc[0]
    ds = pydicom.dcmread(mammo_phantom / source)
    for keyword in ("ImageLaterality", "Laterality", "PatientOrientation"):
        if keyword in ds:
            delattr(ds, keyword)
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.save_as(target, enforce_file_format=True)
    return target


@pytest.mark.parametrize(
    ("tags", "source"),
    [
        ({"Laterality": "R"}, "tags"),
        ({"PatientOrientation": ["P", "L"]}, "tags"),
        ({}, "tissue centroid (no orientation or laterality tags)"),
        (
            {"Laterality": "L", "PatientOrientation": ["P", "L"]},
            "tissue centroid (PatientOrientation and laterality disagree)",
        ),
        ({"ImageLaterality": "L"}, "tissue centroid (tags disagree with the tissue)"),
    ],
)
def test_orientation_source_and_result(mammo_phantom, tmp_path, tags, source):
    """Whatever the tags say, the prepared breast faces left; the manifest says what decided it."""
    path = _right_breast_copy(mammo_phantom, tmp_path / "r.dcm", **tags)
    outcome = MammoPreparer((64, 64)).prepare(str(path), None)
    assert outcome.status == "ok", outcome.reason
    assert outcome.details["flipped"] is True
    assert outcome.details["flip_source"] == source
    tissue = outcome.array[0] > -1.0
    assert np.nonzero(tissue)[1].mean() < 32
