"""A hospital-like folder of DICOM files for the preparation tests: good files and every kind of bad one."""

import shutil
from pathlib import Path

import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian

from medcf.phantoms import write_phantom_dataset
from medcf.phantoms.writer import TRUTH_FILE


def _first(truth: pd.DataFrame, **conditions) -> str:
    rows = truth
    for column, value in conditions.items():
        rows = rows[rows[column] == value]
    return rows["path"].iloc[0]


def _uncompressed_copy(source: Path, target: Path, **changes) -> None:
    """Copy a DICOM file decompressed, with some attributes changed."""
    ds = pydicom.dcmread(source)
    ds.decompress()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, enforce_file_format=True)


@pytest.fixture(scope="session")
def chest_phantom(tmp_path_factory) -> Path:
    return write_phantom_dataset(
        "cxr", tmp_path_factory.mktemp("cxr") / "data", 10, 64, seed=7, workers=1, progress=False
    )


@pytest.fixture(scope="session")
def mammo_phantom(tmp_path_factory) -> Path:
    return write_phantom_dataset(
        "mammo", tmp_path_factory.mktemp("mammo") / "data", 8, 64, seed=8, workers=1, progress=False
    )


@pytest.fixture(scope="session")
def bad_chest_folder(tmp_path_factory, chest_phantom) -> tuple[Path, dict[str, str]]:
    """Phantom chest files plus one file per bad-input case; returns the folder and {case: relative path}."""
    folder = tmp_path_factory.mktemp("hospital") / "in"
    shutil.copytree(chest_phantom, folder)
    truth = pd.read_csv(folder / TRUTH_FILE)
    frontal = folder / _first(truth, view_position="PA")
    bad = folder / "bad"
    bad.mkdir()
    cases: dict[str, str] = {}

    cases["truncated"] = "bad/truncated.dcm"
    data = frontal.read_bytes()
    (folder / cases["truncated"]).write_bytes(data[: len(data) // 2])

    cases["not_dicom"] = "bad/notes.dcm"
    (folder / cases["not_dicom"]).write_text("this is a radiology report, not an image\n")
    cases["not_dicom_no_suffix"] = "bad/README"
    (folder / cases["not_dicom_no_suffix"]).write_bytes(b"\x00\x01 junk " * 40)

    cases["no_pixel_data"] = "bad/no_pixels.dcm"
    ds = pydicom.dcmread(frontal)
    del ds.PixelData
    ds.save_as(folder / cases["no_pixel_data"], enforce_file_format=True)

    cases["wrong_modality_ct"] = "bad/ct.dcm"
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / cases["wrong_modality_ct"])
    cases["wrong_modality_mr"] = "bad/mr.dcm"
    shutil.copy(get_testdata_file("MR_small.dcm"), folder / cases["wrong_modality_mr"])

    cases["body_part"] = "bad/knee.dcm"
    _uncompressed_copy(frontal, folder / cases["body_part"], BodyPartExamined="KNEE")

    cases["lateral"] = _first(truth, view_position="LL")

    cases["multi_frame"] = "bad/multiframe.dcm"
    ds = pydicom.dcmread(frontal)
    ds.decompress()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    ds.save_as(folder / cases["multi_frame"], enforce_file_format=True)

    cases["undecodable"] = "bad/mpeg.dcm"
    ds = pydicom.dcmread(frontal)
    ds.decompress()
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([b"\xff\xd8 not really an mpeg stream " * 8])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder exists for it here
    ds.save_as(folder / cases["undecodable"], enforce_file_format=False)

    cases["too_small"] = "bad/tiny.dcm"
    tiny = write_phantom_dataset("cxr", folder.parent / "tiny", 1, 32, seed=1, workers=1, progress=False)
    shutil.copy(tiny / pd.read_csv(tiny / TRUTH_FILE)["path"].iloc[0], folder / cases["too_small"])
    return folder, cases
