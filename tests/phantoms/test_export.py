"""Phantom data sets on disk: DICOM files that read back to the rendered pixels, tables that join the way
MIMIC-CXR / MIMIC-IV and EMBED tables do, ground truth that reproduces every image, atomic output."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from medcf.core.attributes import SchemaError
from medcf.phantoms import make_phantom, write_phantom_dataset
from medcf.phantoms import writer as writer_module
from medcf.phantoms.embed_export import SOURCE_ROOT
from medcf.phantoms.mimic_export import MIMIC_RACE
from medcf.phantoms.writer import TRUTH_FILE, OutputExistsError, burn_in_text, subject_from_truth
from medcf.radiograph.encode import decode_display

N, SIZE = 24, 64


@pytest.fixture(scope="module")
def cxr_dir(tmp_path_factory) -> Path:
    return write_phantom_dataset(
        "cxr", tmp_path_factory.mktemp("cxr") / "out", N, SIZE, seed=3, workers=2, progress=False
    )


@pytest.fixture(scope="module")
def mammo_dir(tmp_path_factory) -> Path:
    return write_phantom_dataset(
        "mammo", tmp_path_factory.mktemp("mammo") / "out", N, SIZE, seed=4, workers=2, progress=False
    )


def _tolerance(ds) -> float:
    """Quantisation of the stored window plus the SIGMOID clip."""
    return 0.01 if ds.VOILUTFunction == "SIGMOID" else 2e-3


class TestChestExport:
    def test_layout_and_counts(self, cxr_dir):
        """files/p1X/pXXXXXXXX/sYYYYYYYY/<dicom_id>.dcm for every metadata row; n frontal images."""
        metadata = pd.read_csv(cxr_dir / "mimic-cxr-2.0.0-metadata.csv")
        assert (metadata["ViewPosition"].isin(["PA", "AP"])).sum() == N
        assert set(metadata["ViewPosition"]) - {"PA", "AP"} <= {"LATERAL", "LL"}
        for row in metadata.itertuples():
            path = cxr_dir / f"files/p{str(row.subject_id)[:2]}/p{row.subject_id}/s{row.study_id}/{row.dicom_id}.dcm"
            assert path.is_file()
            assert re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}", row.dicom_id)
        assert len(list(cxr_dir.rglob("*.dcm"))) == len(metadata)

    def test_dicom_reads_back_to_the_pixels_the_truth_renders(self, cxr_dir):
        """Decoding each file through its LUTs gives what re-rendering its ground-truth row gives."""
        phantom = make_phantom("cxr")
        for row in pd.read_csv(cxr_dir / TRUTH_FILE).to_dict("records"):
            ds = pydicom.dcmread(cxr_dir / row["path"])
            expected = phantom.render(subject_from_truth(phantom, row), SIZE, view=row["view_position"])
            assert np.abs(decode_display(ds) - expected).max() < _tolerance(ds), row["path"]

    def test_headers_are_varied_like_a_real_export(self, cxr_dir):
        """CR and DX, both photometrics, several VOI functions and transfer syntaxes, 12-16 bits."""
        datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in cxr_dir.rglob("*.dcm")]
        assert {ds.Modality for ds in datasets} == {"CR", "DX"}
        assert {ds.PhotometricInterpretation for ds in datasets} == {"MONOCHROME1", "MONOCHROME2"}
        assert len({ds.file_meta.TransferSyntaxUID for ds in datasets}) >= 3
        assert len({ds.VOILUTFunction for ds in datasets}) >= 2
        assert {ds.BitsStored for ds in datasets} <= {12, 14, 15, 16}
        for ds in datasets:
            assert "ImagerPixelSpacing" in ds if ds.Modality == "DX" else "PixelSpacing" in ds
            assert ds.Rows == ds.Columns == SIZE
            assert ds.WindowWidth > 0 and "RescaleSlope" in ds

    def test_no_labels_and_only_synthetic_identifiers_in_headers(self, cxr_dir):
        """Race and disease never appear in a header; names and IDs are plainly synthetic."""
        for path in cxr_dir.rglob("*.dcm"):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            text = " ".join(str(e.value) for e in ds if e.VR not in ("OB", "OW"))
            assert not re.search(r"Effusion|Finding|White|Black|Asian", text)
            assert str(ds.PatientName).startswith("PHANTOM^")
            assert "PatientBirthDate" not in ds

    def test_tables_join_like_mimic(self, cxr_dir):
        """metadata joins chexpert on (subject_id, study_id) and patients on subject_id; age formula holds."""
        metadata = pd.read_csv(cxr_dir / "mimic-cxr-2.0.0-metadata.csv")
        chexpert = pd.read_csv(cxr_dir / "mimic-cxr-2.0.0-chexpert.csv")
        patients = pd.read_csv(cxr_dir / "patients.csv")
        truth = pd.read_csv(cxr_dir / TRUTH_FILE)
        assert not chexpert.duplicated(["subject_id", "study_id"]).any()
        joined = metadata.merge(
            chexpert, on=["subject_id", "study_id"], how="left", validate="many_to_one", indicator=True
        )
        assert (joined["_merge"] == "both").all()
        joined = joined.drop(columns="_merge").merge(patients, on="subject_id", validate="many_to_one")
        joined = joined.merge(truth, on="dicom_id", suffixes=("", "_truth"))
        assert len(joined) == len(metadata)
        age = joined["anchor_age"] + joined["StudyDate"] // 10000 - joined["anchor_year"]
        assert (np.abs(age - joined["age"]) <= 1.5).all()
        assert (joined["gender"] == joined["sex"]).all()
        effusion = joined["Pleural Effusion"] == 1.0
        assert (joined.loc[effusion, "disease"] == "Pleural Effusion").all()
        assert (joined.loc[joined["No Finding"] == 1.0, "disease"] == "No Finding").all()

    def test_admissions_record_race_with_realistic_conflicts(self, cxr_dir):
        """Subjects with one consistent race label carry their true race in MIMIC spelling."""
        admissions = pd.read_csv(cxr_dir / "admissions.csv")
        truth = pd.read_csv(cxr_dir / TRUTH_FILE).drop_duplicates("subject_id")
        labels = admissions.groupby("subject_id")["race"].agg(lambda r: set(r))
        consistent = labels[labels.map(len) == 1].map(lambda s: next(iter(s)))
        expected = truth.set_index("subject_id")["race"].map(MIMIC_RACE)
        known = consistent[consistent != "UNKNOWN"]
        assert len(known) > 0.8 * len(labels)
        assert (known == expected[known.index]).all()


class TestMammoExport:
    def test_paths_and_joins_like_embed(self, mammo_dir):
        """anon_dicom_path points into the folder below the source root; clinical rows join on acc_anon."""
        metadata = pd.read_csv(mammo_dir / "EMBED_OpenData_metadata.csv")
        clinical = pd.read_csv(mammo_dir / "EMBED_OpenData_clinical.csv")
        truth = pd.read_csv(mammo_dir / TRUTH_FILE)
        assert metadata["anon_dicom_path"].str.startswith(SOURCE_ROOT).all()
        for path in metadata["anon_dicom_path"]:
            assert (mammo_dir / path.removeprefix(SOURCE_ROOT)).is_file()
        assert metadata["acc_anon"].isin(clinical["acc_anon"]).all()
        screening = metadata[(metadata["FinalImageType"] == "2D") & metadata["spot_mag"].isna()]
        assert len(screening) >= N
        joined = truth.merge(clinical.drop_duplicates("acc_anon"), on="acc_anon", suffixes=("", "_clinical"))
        female = joined[joined["tissueden"] != 5]
        assert (female["tissueden"] == female["density"].map("ABCD".index) + 1).all()
        assert set(metadata["ViewPosition"]) <= {"CC", "MLO", "XCCL"}

    def test_dicom_reads_back_and_right_breasts_are_mirrored(self, mammo_dir):
        """Pixels equal the truth re-rendered (flipped for R, label burned in); R breasts face left."""
        phantom = make_phantom("mammo")
        for row in pd.read_csv(mammo_dir / TRUTH_FILE, keep_default_na=False).to_dict("records"):
            ds = pydicom.dcmread(mammo_dir / row["path"])
            raw = row["presentation"] == "FOR PROCESSING"
            expected = phantom.render(subject_from_truth(phantom, row), SIZE, for_processing=raw)
            if row["flipped"]:
                expected = expected[:, ::-1]
            if row["burned_label"]:
                expected = burn_in_text(expected, row["burned_label"], right_side=not row["flipped"])
            decoded = decode_display(ds)
            assert np.abs(decoded - expected).max() < _tolerance(ds), row["path"]
            tissue = (1.0 - decoded) if raw else decoded
            left, right = tissue[:, : SIZE // 2].sum(), tissue[:, SIZE // 2 :].sum()
            assert (right > left) if row["laterality"] == "R" else (left > right)
            assert ds.Laterality == row["laterality"]
            assert ds.PatientOrientation[0] == ("P" if row["laterality"] == "R" else "A")

    def test_awkward_cases_are_present(self, mammo_dir):
        """Some files carry laterality only at series level; raw FOR PROCESSING files are marked as such."""
        datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in mammo_dir.rglob("*.dcm")]
        assert any("ImageLaterality" not in ds for ds in datasets)
        assert any("ImageLaterality" in ds for ds in datasets)
        for ds in datasets:
            assert ds.Modality == "MG" and ds.BodyPartExamined == "BREAST"
            raw = ds.PresentationIntentType == "FOR PROCESSING"
            assert ds.SOPClassUID.endswith(".1.2.1") == raw
        truth = pd.read_csv(mammo_dir / TRUTH_FILE, keep_default_na=False)
        assert (truth["burned_label"] != "").any()


class TestOutputSafety:
    def test_same_seed_same_data_set(self, tmp_path):
        """Two runs with one seed write identical tables and pixels; another seed differs."""
        runs = [
            write_phantom_dataset("mammo", tmp_path / name, 6, 32, seed, workers=1, progress=False)
            for name, seed in (("a", 1), ("b", 1), ("c", 2))
        ]
        tables = [(run / "EMBED_OpenData_metadata.csv").read_text() for run in runs]
        assert tables[0] == tables[1] != tables[2]
        truth = pd.read_csv(runs[0] / TRUTH_FILE)
        first = truth["path"].iloc[0]
        assert np.array_equal(
            pydicom.dcmread(runs[0] / first).pixel_array, pydicom.dcmread(runs[1] / first).pixel_array
        )

    def test_existing_non_empty_output_is_refused_before_any_work(self, tmp_path):
        """A non-empty target is an error and stays untouched; no staging folder is left."""
        out = tmp_path / "out"
        out.mkdir()
        (out / "keep.txt").write_text("precious")
        with pytest.raises(OutputExistsError, match="not empty"):
            write_phantom_dataset("cxr", out, 4, 32, 0, progress=False)
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
        assert [p.name for p in tmp_path.iterdir()] == ["out"]

    def test_failure_half_way_leaves_nothing(self, tmp_path, monkeypatch):
        """If writing fails after some files, neither the output nor a partial folder remains."""
        calls = {"n": 0}
        original = writer_module.write_job

        def failing(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError("disk full")
            return original(*args, **kwargs)

        monkeypatch.setattr(writer_module, "write_job", failing)
        with pytest.raises(OSError, match="disk full"):
            write_phantom_dataset("cxr", tmp_path / "out", 6, 32, 0, workers=1, progress=False)
        assert list(tmp_path.iterdir()) == []

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"n": 0}, "n: 0 must be a positive"),
            ({"size": 40}, "multiple of 16"),
            ({"do": {"colour": "red"}}, "unknown attribute 'colour'"),
            ({"do": {"sex": "X"}}, "sex: unknown value 'X'"),
            ({"population": {"female_fraction": 1.5}}, "female_fraction"),
        ],
    )
    def test_bad_arguments_fail_before_writing(self, tmp_path, kwargs, message):
        """Each bad argument raises a message naming it, and nothing is created."""
        arguments = {"kind": "cxr", "out": tmp_path / "out", "n": 4, "size": 32, "seed": 0, "progress": False}
        arguments.update(kwargs)
        with pytest.raises((SchemaError, ValueError), match=message):
            write_phantom_dataset(**arguments)
        assert list(tmp_path.iterdir()) == []
