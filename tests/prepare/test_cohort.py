"""Cohort rows are matched to files by their path relative to the data set folder (or an explicit SOP
Instance UID column), never by file name alone; missing and ambiguous matches are rejected rows."""

import shutil

import pandas as pd
import pydicom
import pytest

from medcf.jobs.prepare import MANIFEST, PreparationRun
from medcf.phantoms.writer import TRUTH_FILE
from medcf.prepare import ChestPreparer
from medcf.prepare.cohort import CohortIndex, CohortMatchError

ROW = {"age": 60.0, "sex": "M", "race": "White", "disease": "No Finding", "view": "PA"}


def index(*paths, **columns) -> CohortIndex:
    records = [{"path": path, **ROW, **{k: v[i] for k, v in columns.items()}} for i, path in enumerate(paths)]
    return CohortIndex.from_records(records, with_uid="sop_instance_uid" in columns)


class TestCohortIndex:
    def test_rows_match_by_relative_path_in_any_spelling(self):
        cohort = index("files/p1/s1/image.dcm")
        assert cohort.labels_for("files/p1/s1/image.dcm")["sex"] == "M"
        assert cohort.labels_for("./files/p1/../p1/s1/image.dcm")["age"] == 60.0
        assert cohort.labels_for("files\\p1\\s1\\image.dcm")["race"] == "White"

    def test_a_file_name_alone_never_matches(self):
        """The same file name under another patient's folder has no row (the old stem fallback is gone)."""
        cohort = index("files/p1/s1/image.dcm")
        with pytest.raises(CohortMatchError, match="not in the cohort table"):
            cohort.labels_for("files/p2/s9/image.dcm")
        with pytest.raises(CohortMatchError, match="not in the cohort table"):
            cohort.labels_for("image.dcm")

    def test_two_rows_for_one_path_are_ambiguous(self):
        with pytest.raises(CohortMatchError, match="ambiguous labels: 2 cohort rows have this file's path"):
            index("a/1.dcm", "a/./1.dcm").labels_for("a/1.dcm")

    def test_an_explicit_uid_column_matches_files_whose_path_is_not_listed(self):
        cohort = index("old/location/1.dcm", "old/location/2.dcm", sop_instance_uid=["1.2.3", "1.2.4"])
        assert cohort.labels_for("new/place/x.dcm", "1.2.4")["sop_instance_uid"] == "1.2.4"
        with pytest.raises(CohortMatchError, match="nor this sop_instance_uid"):
            cohort.labels_for("new/place/x.dcm", "9.9.9")
        with pytest.raises(CohortMatchError, match="ambiguous labels: 2 cohort rows have this file's sop_instance_uid"):
            index("a.dcm", "b.dcm", sop_instance_uid=["1.2.3", "1.2.3"]).labels_for("c.dcm", "1.2.3")

    def test_a_path_row_naming_another_image_is_refused(self):
        cohort = index("p1/1.dcm", sop_instance_uid=["1.2.3"])
        assert cohort.labels_for("p1/1.dcm", "1.2.3")["sex"] == "M"
        with pytest.raises(CohortMatchError, match="names another image"):
            cohort.labels_for("p1/1.dcm", "1.2.999")


def test_two_patients_whose_files_share_a_name_never_swap_labels(chest_phantom, tmp_path):
    """p1/s1/image.dcm is in the cohort, p2/s2/image.dcm (another patient, same name) is not: it is rejected,
    and the cohort's duplicate row for a third file makes that file a rejected row, not a failed job."""
    truth = pd.read_csv(chest_phantom / TRUTH_FILE).query("view_position in ['PA', 'AP']").drop_duplicates("subject_id")
    folder = tmp_path / "in"
    sources = ["p1/s1/image.dcm", "p2/s2/image.dcm", "p3/s3/image.dcm"]
    for source, original in zip(sources, truth["path"], strict=False):
        (folder / source).parent.mkdir(parents=True)
        shutil.copy(chest_phantom / original, folder / source)
    first, third = (
        {"age": row["recorded_age"], "sex": row["sex"], "race": row["race"], "disease": row["disease"]}
        for row in (truth.iloc[0], truth.iloc[2])
    )
    cohort = pd.DataFrame([{"path": sources[0], **first}, {"path": sources[2], **third}, {"path": sources[2], **third}])
    cohort.to_csv(tmp_path / "cohort.csv", index=False)
    PreparationRun(folder, tmp_path / "out", ChestPreparer(64), cohort=tmp_path / "cohort.csv", workers=1).run()
    manifest = pd.read_csv(tmp_path / "out" / MANIFEST, keep_default_na=False).set_index("source")
    assert manifest.loc[sources[0], "status"] == "ok" and manifest.loc[sources[0], "race"] == first["race"]
    assert manifest.loc[sources[1], "status"] == "rejected"
    assert manifest.loc[sources[1], "reason"].startswith("not in the cohort table")
    assert manifest.loc[sources[2], "reason"] == "ambiguous labels: 2 cohort rows have this file's path"
    assert (
        pydicom.dcmread(folder / sources[1], stop_before_pixels=True).PatientID
        != pydicom.dcmread(folder / sources[0], stop_before_pixels=True).PatientID
    ), "the two files are different patients"


def test_paths_are_read_verbatim(tmp_path):
    """A file named 00012 or NA is matched by that name, not read as the number 12 or a missing value."""
    (tmp_path / "cohort.csv").write_text("path,age,sex\n00012,60,M\nNA,70,F\nfiles/Ère/é.dcm,50,M\n")
    cohort = CohortIndex.from_csv(tmp_path / "cohort.csv")
    assert cohort.labels_for("00012")["age"] == 60 and cohort.labels_for("NA")["sex"] == "F"
    decomposed = "files/E\u0300re/e\u0301.dcm"  # as a table written on macOS spells it
    assert cohort.labels_for(decomposed)["age"] == 50
