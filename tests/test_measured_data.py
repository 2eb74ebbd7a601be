"""One rule for the data of every measuring job (evaluate, audit, calibrate): the user's folder with its cohort table
(by default DATASET_DIR/cohort.csv), refused in one line when the table is missing."""

from pathlib import Path

import pytest

from medcf.jobs.phantom_sets import cohort_table, job_data, measured_data


def test_the_cohort_table_defaults_to_the_folders_cohort_csv(tmp_path):
    (tmp_path / "cohort.csv").write_text("path\n")
    (tmp_path / "other.csv").write_text("path\n")
    assert cohort_table(tmp_path, None) == tmp_path / "cohort.csv"
    assert cohort_table(tmp_path, tmp_path / "other.csv") == tmp_path / "other.csv"


def test_a_missing_cohort_table_is_one_line_naming_it(tmp_path):
    with pytest.raises(ValueError, match=f"^labels: {tmp_path / 'cohort.csv'} does not exist; give the cohort"):
        cohort_table(tmp_path, None)
    with pytest.raises(ValueError, match="labels: nowhere.csv does not exist"):
        cohort_table(tmp_path, "nowhere.csv")


def test_a_users_folder_is_measured_as_given_and_described_without_its_path(tmp_path):
    (tmp_path / "cohort.csv").write_text("path\n")
    data = measured_data(tmp_path, None, tmp_path / "unused", "cxr", 4, 64, 1000)
    assert (data.dataset_dir, data.labels) == (Path(tmp_path), tmp_path / "cohort.csv")
    assert str(tmp_path) not in data.description
    assert not (tmp_path / "unused").exists(), "no phantom set is made when a folder is given"


def test_the_evaluate_audit_and_calibrate_jobs_take_their_data_by_one_rule(tmp_path):
    """job_data reads a job's own settings (its YAML keys), so the three measuring jobs hold no copy of the rule."""
    from types import SimpleNamespace

    (tmp_path / "labels.csv").write_text("path\n")
    job = SimpleNamespace(
        dataset_dir=tmp_path, labels=tmp_path / "labels.csv", phantom_kind="cxr", heldout_subjects=4,
        heldout_seed=1000, preparer=SimpleNamespace(image_size=64),
    )  # fmt: skip
    data = job_data(job, tmp_path / "unused")
    assert (data.dataset_dir, data.labels) == (Path(tmp_path), tmp_path / "labels.csv")
