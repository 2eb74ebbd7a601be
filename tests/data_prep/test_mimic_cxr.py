"""MIMIC-CXR cohort builder on a phantom MIMIC export: rows agree with the ground truth, the flow table adds
up, whole patients go to one split, input variants (.csv.gz, ``ethnicity``) work, bad inputs fail clearly."""

import functools
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_prep import mimic_cxr
from data_prep.flow import flow_path, patient_split
from medcf.phantoms import write_phantom_dataset
from medcf.phantoms.writer import TRUTH_FILE
from tests.data_prep.conftest import IDS, ModuleRun, copy_tables, dropped, run_builder

N, SIZE, SEED = 60, 32, 8  # seed 8: laterals, other findings, uncertain effusion, conflicting, unknown race
AGE_CAP = 95.0


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cxr") / "export"
    return write_phantom_dataset("cxr", out, N, SIZE, SEED, workers=1, progress=False)


@pytest.fixture(scope="module")
def run(root, tmp_path_factory) -> ModuleRun:
    """The builder run once as ``python -m data_prep.mimic_cxr`` on the phantom export."""
    out = tmp_path_factory.mktemp("cohort") / "cohort.csv"
    return run_builder("data_prep.mimic_cxr", root, out)


@pytest.fixture(scope="module")
def cohort(run) -> pd.DataFrame:
    return pd.read_csv(run.out, dtype=IDS)


@pytest.fixture(scope="module")
def flow(run) -> pd.DataFrame:
    return pd.read_csv(flow_path(run.out))


@pytest.fixture(scope="module")
def tables(root) -> dict[str, pd.DataFrame]:
    ids = {"subject_id": str, "study_id": str, "dicom_id": str}
    return {name: pd.read_csv(root / name, dtype=ids) for name in (*mimic_cxr.TABLES, TRUTH_FILE)}


variant = functools.partial(copy_tables, tables=mimic_cxr.TABLES)


def build(root: Path, out: Path, *options: str) -> tuple[int, pd.DataFrame | None, pd.DataFrame | None]:
    """Exit status, cohort and flow table of one ``main`` run."""
    status = mimic_cxr.main(["--root", str(root), "--out", str(out), *options])
    if status:
        return status, None, None
    return status, pd.read_csv(out, dtype=IDS), pd.read_csv(flow_path(out))


class TestCommandLine:
    def test_module_run_writes_cohort_and_flow(self, run):
        """``python -m data_prep.mimic_cxr`` exits 0, writes both CSVs, prints flow and summary."""
        assert run.returncode == 0, run.stderr
        assert run.out.is_file() and flow_path(run.out).is_file()
        assert flow_path(run.out).name == "cohort_flow.csv"
        assert "view not AP/PA" in run.stdout and "cohort: " in run.stdout
        assert sorted(p.name for p in run.out.parent.iterdir()) == ["cohort.csv", "cohort_flow.csv"]

    def test_columns(self, cohort):
        """One row per image with exactly the documented columns."""
        assert tuple(cohort.columns) == mimic_cxr.COLUMNS
        assert cohort["image_id"].is_unique and len(cohort) > 0


class TestCohortRows:
    def test_every_file_exists(self, root, cohort):
        """Every path is relative to the root, with forward slashes, and names an existing DICOM file."""
        assert all((root / path).is_file() for path in cohort["path"])
        assert not cohort["path"].str.startswith("/").any() and not cohort["path"].str.contains("\\\\").any()

    def test_attributes_agree_with_truth(self, cohort, tables):
        """sex, race, disease, view equal the truth; age is the recorded whole-year age, within 1.5 y."""
        truth = tables[TRUTH_FILE]
        rows = cohort.merge(truth, on="path", how="left", validate="one_to_one", suffixes=("", "_true"))
        assert rows["age_true"].notna().all()
        for column in ("sex", "race", "disease"):
            assert (rows[column] == rows[f"{column}_true"]).all(), column
        assert (rows["view"] == rows["view_position"]).all()
        assert (rows["patient"] == rows["subject_id"]).all() and (rows["study"] == rows["study_id"]).all()
        assert (rows["image_id"] == rows["dicom_id"]).all()
        assert np.allclose(rows["age"], rows["recorded_age"])
        uncapped = rows["age_true"] < AGE_CAP  # the phantom caps true age at 95, not the recorded age
        assert (rows.loc[uncapped, "age"] - rows.loc[uncapped, "age_true"]).abs().max() <= 1.5
        assert (rows.loc[~uncapped, "age"] >= AGE_CAP - 1.5).all()

    def test_no_lateral_views(self, cohort, tables):
        """Only AP/PA images, although the export holds lateral views."""
        assert set(cohort["view"]) <= {"AP", "PA"}
        lateral = tables[TRUTH_FILE].query("view_position == 'LL'")["path"]
        assert len(lateral) > 0 and not cohort["path"].isin(lateral).any()

    def test_conflicting_and_unknown_race_subjects_absent(self, cohort, tables):
        """Subjects recorded with two races, or only as UNKNOWN, are not in the cohort."""
        admissions = tables[mimic_cxr.ADMISSIONS]
        races = admissions.groupby("subject_id")["race"].agg(set)
        conflicting = races[races.map(len) > 1].index
        unknown = races[races.map(lambda r: r == {"UNKNOWN"})].index
        assert len(conflicting) > 0 and len(unknown) > 0
        assert not cohort["patient"].isin(conflicting.union(unknown)).any()

    def test_uncertain_and_other_findings_absent(self, cohort, tables):
        """Studies with neither effusion nor No Finding labelled 1 (-1 effusion, other findings): absent."""
        chexpert = tables[mimic_cxr.CHEXPERT]
        effusion = chexpert["Pleural Effusion"].astype(float)
        unlabelled = chexpert.loc[(effusion != 1) & (chexpert["No Finding"].astype(float) != 1), "study_id"]
        assert (effusion == -1).any() and len(unlabelled) > 0
        assert not cohort["study"].isin(unlabelled).any()


class TestDiseaseLabel:
    def test_effusion_wins_uncertain_and_others_are_other(self):
        """Effusion 1 wins over No Finding 1; -1, 0 and blank effusion without No Finding are "other"."""
        chexpert = pd.DataFrame(
            {
                "No Finding": [1.0, 1.0, np.nan, np.nan, np.nan, 1.0],
                "Pleural Effusion": [1.0, np.nan, -1.0, 0.0, np.nan, -1.0],
            }
        )
        expected = ["Pleural Effusion", "No Finding", "other", "other", "other", "No Finding"]
        assert mimic_cxr.chexpert_disease(chexpert).tolist() == expected


class TestFlowTable:
    def test_counts_chain_and_add_up(self, flow, cohort, tables):
        """rows_in of each filter is the previous rows_kept; drops plus the cohort give all metadata rows."""
        assert (flow["rows_in"].iloc[1:].to_numpy() == flow["rows_kept"].iloc[:-1].to_numpy()).all()
        assert (flow["rows_dropped"] == flow["rows_in"] - flow["rows_kept"]).all()
        assert flow["rows_in"].iloc[0] == len(tables[mimic_cxr.METADATA])
        assert flow["rows_kept"].iloc[-1] == len(cohort)
        assert flow["rows_dropped"].sum() + len(cohort) == len(tables[mimic_cxr.METADATA])
        assert flow["patients_kept"].iloc[-1] == cohort["patient"].nunique()

    def test_each_reason_with_such_rows_drops_them(self, flow, tables):
        """Laterals, unusable labels, conflicting and unknown race each show up as drops of their filter."""
        truth = tables[TRUTH_FILE]
        assert dropped(flow, "view not AP/PA") == (truth["view_position"] == "LL").sum()
        assert dropped(flow, "disease other than No Finding / Pleural Effusion") > 0
        assert dropped(flow, "race differs between admissions") > 0
        assert dropped(flow, "race not White/Asian/Black") > 0
        for reason in ("no chexpert row", "no patients row", "no admissions row", "DICOM file missing"):
            assert dropped(flow, reason) == 0, reason

    def test_missing_file_is_dropped_and_reported(self, root, tmp_path):
        """A deleted DICOM file drops its row (counted); --no-check-files keeps it."""
        copy = tmp_path / "export"
        shutil.copytree(root, copy)
        _, cohort, _ = build(copy, tmp_path / "before.csv")
        (copy / cohort["path"].iloc[0]).unlink()
        status, after, flow = build(copy, tmp_path / "after.csv")
        assert status == 0 and dropped(flow, "DICOM file missing") == 1 and len(after) == len(cohort) - 1
        status, unchecked, flow = build(copy, tmp_path / "unchecked.csv", "--no-check-files")
        assert status == 0 and len(unchecked) == len(cohort)
        assert "DICOM file missing" not in set(flow["reason"])


def synthetic_export(root: Path, patients: int, rng: np.random.Generator) -> Path:
    """Minimal MIMIC tables (no images) for ``patients`` subjects with 1-4 frontal images each."""
    root.mkdir()
    subjects = np.arange(10_000_000, 10_000_000 + patients)
    images = rng.integers(1, 5, size=patients)
    subject = np.repeat(subjects, images)
    study = 50_000_000 + np.arange(len(subject))
    metadata = pd.DataFrame(
        {
            "dicom_id": [f"d{k:07d}" for k in range(len(subject))],
            "subject_id": subject,
            "study_id": study,
            "ViewPosition": "PA",
            "StudyDate": 21500101,
        }
    )
    chexpert = pd.DataFrame({"subject_id": subject, "study_id": study, "No Finding": 1.0})
    chexpert["Pleural Effusion"] = np.nan
    people = pd.DataFrame({"subject_id": subjects, "gender": "F", "anchor_age": 50, "anchor_year": 2150})
    admissions = pd.DataFrame({"subject_id": subjects, "race": "WHITE"})
    for name, table in zip(mimic_cxr.TABLES, (metadata, chexpert, people, admissions), strict=True):
        table.to_csv(root / name, index=False)
    return root


class TestSplit:
    def test_patients_never_span_splits(self, cohort):
        """Every image of a subject is in the same split; all three split names are used."""
        assert (cohort.groupby("patient")["split"].nunique() == 1).all()
        assert set(cohort["split"]) == {"train", "val", "test"}

    def test_proportions_at_patient_level(self, tmp_path):
        """1000 synthetic patients split 600/100/300 by patient (images follow their patients)."""
        root = synthetic_export(tmp_path / "synthetic", 1000, np.random.default_rng(0))
        status, cohort, _ = build(root, tmp_path / "cohort.csv", "--no-check-files")
        assert status == 0 and cohort["patient"].nunique() == 1000
        patients = cohort.drop_duplicates("patient")["split"].value_counts()
        assert patients.to_dict() == {"train": 600, "test": 300, "val": 100}
        assert (cohort.groupby("patient")["split"].nunique() == 1).all()
        images = cohort["split"].value_counts(normalize=True)
        assert abs(images["train"] - 0.6) < 0.05 and abs(images["test"] - 0.3) < 0.05

    def test_custom_fractions(self, tmp_path):
        """--split 0.8 0.2 0 puts no patient into test."""
        root = synthetic_export(tmp_path / "synthetic", 50, np.random.default_rng(1))
        status, cohort, _ = build(root, tmp_path / "cohort.csv", "--no-check-files", "--split", "0.8", "0.2", "0")
        assert status == 0
        assert cohort.drop_duplicates("patient")["split"].value_counts().to_dict() == {"train": 40, "val": 10}

    def test_seed_determines_the_split(self, cohort, root, tmp_path):
        """The default seed reproduces the module run; another seed gives another split."""
        _, same, _ = build(root, tmp_path / "same.csv")
        _, other, _ = build(root, tmp_path / "other.csv", "--seed", "7")
        assert same.equals(cohort)
        assert not other["split"].equals(cohort["split"])
        assert other.drop(columns="split").equals(cohort.drop(columns="split"))

    def test_split_ignores_row_order(self):
        """patient_split depends on the set of patients and the seed, not on the row order."""
        patients = pd.Series([f"p{k % 37}" for k in range(200)])
        forward = patient_split(patients, (0.6, 0.1, 0.3), seed=3)
        backward = patient_split(patients[::-1].reset_index(drop=True), (0.6, 0.1, 0.3), seed=3)
        assert dict(zip(patients, forward, strict=True)) == dict(zip(patients[::-1], backward, strict=True))


class TestInputVariants:
    def test_gzipped_tables(self, root, cohort, tmp_path):
        """The same cohort from .csv.gz tables."""
        status, gz_cohort, _ = build(variant(root, tmp_path / "gz", gz=True), tmp_path / "cohort.csv")
        assert status == 0 and gz_cohort.equals(cohort)

    def test_ethnicity_column(self, root, cohort, tmp_path):
        """Older MIMIC-IV admissions name the race column ``ethnicity``: same cohort."""
        rename = {mimic_cxr.ADMISSIONS: lambda t: t.rename(columns={"race": "ethnicity"})}
        status, old, _ = build(variant(root, tmp_path / "old", rename), tmp_path / "cohort.csv")
        assert status == 0 and old.equals(cohort)


class TestErrors:
    def error_line(self, capsys, status: int) -> str:
        lines = capsys.readouterr().err.strip().splitlines()
        assert status != 0 and len(lines) == 1
        assert lines[0].startswith("data_prep.mimic_cxr: error: ")
        return lines[0]

    def test_missing_table(self, root, tmp_path, capsys):
        """A missing table is named, with the list of expected tables."""
        copy = variant(root, tmp_path / "copy")
        (copy / mimic_cxr.PATIENTS).unlink()
        status = mimic_cxr.main(["--root", str(copy), "--out", str(tmp_path / "c.csv")])
        line = self.error_line(capsys, status)
        assert "missing input table patients.csv" in line and mimic_cxr.CHEXPERT in line
        assert not (tmp_path / "c.csv").exists()

    def test_missing_column(self, root, tmp_path, capsys):
        """A missing column is named with its table."""
        drop = {mimic_cxr.CHEXPERT: lambda t: t.drop(columns="Pleural Effusion")}
        copy = variant(root, tmp_path / "copy", drop)
        status = mimic_cxr.main(["--root", str(copy), "--out", str(tmp_path / "c.csv")])
        assert "mimic-cxr-2.0.0-chexpert.csv: missing column 'Pleural Effusion'" in self.error_line(capsys, status)

    def test_missing_race_column_names_both_spellings(self, root, tmp_path, capsys):
        """Without race or ethnicity, the message names both."""
        drop = {mimic_cxr.ADMISSIONS: lambda t: t.drop(columns="race")}
        copy = variant(root, tmp_path / "copy", drop)
        status = mimic_cxr.main(["--root", str(copy), "--out", str(tmp_path / "c.csv")])
        assert "missing column 'race' (or 'ethnicity')" in self.error_line(capsys, status)

    @pytest.mark.parametrize(
        ("fractions", "problem"),
        [(("0.6", "0.3", "0.3"), "sum to 1"), (("1.2", "-0.2", "0"), "non-negative")],
    )
    def test_bad_split(self, root, tmp_path, capsys, fractions, problem):
        """Fractions that do not sum to 1, or negative ones, are refused before any work."""
        status = mimic_cxr.main(["--root", str(root), "--out", str(tmp_path / "c.csv"), "--split", *fractions])
        assert problem in self.error_line(capsys, status)
        assert not (tmp_path / "c.csv").exists()
