"""Counterfactual DICOM files: derived, synthetic, traceable, no identifiers by default, valid per dciodvfy."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from medcf.dicom.derived import write_counterfactual
from medcf.dicom.encode import decode_display

SAMPLE = Path(__file__).resolve().parents[2] / "bundles" / "cxr_counterfactual" / "sample_data"


@pytest.fixture
def source() -> Path:
    truth = pd.read_csv(SAMPLE / "phantom_truth.csv")
    return SAMPLE / truth["path"].iloc[0]


def _write(source, tmp_path, keep_identifiers=False):
    image = np.random.default_rng(0).uniform(0, 1, (64, 48)).astype(np.float32)
    path = tmp_path / "cf.dcm"
    write_counterfactual(
        source,
        image,
        path,
        "medcf: do(sex=F); guidance dcfg w_aff=2 w_inv=1; 50 steps",
        "do(sex=F)",
        keep_identifiers=keep_identifiers,
    )
    return image, path


def test_pixels_and_provenance(source, tmp_path):
    """The image reads back; the file is DERIVED, synthetic, newly identified and points at its source."""
    image, path = _write(source, tmp_path)
    ds, original = pydicom.dcmread(path), pydicom.dcmread(source, stop_before_pixels=True)
    assert np.abs(decode_display(ds) - image).max() < 1e-3 and (ds.Rows, ds.Columns) == (64, 48)
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"] and ds.ConversionType == "SYN"
    assert ds.SeriesDescription == "SYNTHETIC COUNTERFACTUAL do(sex=F)"
    assert "do(sex=F)" in ds.DerivationDescription and "dcfg" in ds.DerivationDescription
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == original.SOPInstanceUID
    assert {ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID}.isdisjoint(
        {original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID}
    )
    assert ds.Modality == original.Modality


def test_no_identifiers_unless_asked(source, tmp_path):
    """By default neither the patient's name nor ID nor accession number appear anywhere in the file."""
    _, path = _write(source, tmp_path)
    original = pydicom.dcmread(source, stop_before_pixels=True)
    raw = path.read_bytes()
    for keyword in ("PatientName", "PatientID", "AccessionNumber"):
        assert str(original.get(keyword)).encode() not in raw
    kept = pydicom.dcmread(_write(source, tmp_path, keep_identifiers=True)[1])
    assert kept.PatientID == original.PatientID and str(kept.PatientName) == str(original.PatientName)


def test_validates_with_dciodvfy(source, tmp_path):
    """dicom3tools' dciodvfy reports no error (warnings allowed); .ci/run installs it so CI always runs this."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed here; .ci/run installs it")
    _, path = _write(source, tmp_path)
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
    assert errors == []
