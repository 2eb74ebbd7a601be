"""The preparation batch job: one manifest row per input file, specific rejection reasons, cohort labels,
no PHI, resuming after a kill."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from medcf.jobs.prepare import JOURNAL, MANIFEST, NothingPreparedError, PreparationRun
from medcf.phantoms.writer import TRUTH_FILE
from medcf.prepare import ChestPreparer, MammoPreparer
from medcf.prepare.inputs import discover_inputs

EXPECTED_REASONS = {
    "truncated": r"^truncated",
    "not_dicom": r"^not_dicom",
    "not_dicom_no_suffix": r"^not_dicom",
    "no_pixel_data": r"^no_pixel_data",
    "wrong_modality_ct": r"^wrong modality CT",
    "wrong_modality_mr": r"^wrong modality MR",
    "body_part": r"^body part KNEE is not chest",
    "lateral": r"^view LL is not frontal",
    "multi_frame": r"^multi_frame",
    "undecodable": r"^undecodable",
    "too_small": r"^image too small to resize",
}


@pytest.fixture(scope="module")
def chest_run(bad_chest_folder, tmp_path_factory):
    folder, cases = bad_chest_folder
    out = tmp_path_factory.mktemp("prepared") / "out"
    summary = PreparationRun(folder, out, ChestPreparer(64), workers=2, progress=False).run()
    return folder, cases, out, summary, pd.read_csv(out / MANIFEST, keep_default_na=False)


class TestManifest:
    def test_one_row_per_input_file(self, chest_run):
        """Every candidate file under the folder has exactly one row; tables and notes are not inputs."""
        folder, _, _, summary, manifest = chest_run
        assert sorted(manifest["source"]) == discover_inputs(folder)
        assert len(manifest) == summary["files"] == summary["ok"] + summary["rejected"]
        assert not manifest["source"].str.endswith(".csv").any()

    @pytest.mark.parametrize("case", sorted(EXPECTED_REASONS))
    def test_bad_input_is_rejected_with_its_reason(self, chest_run, case):
        """Each kind of bad file is a rejected row whose reason says what is wrong."""
        _, cases, _, _, manifest = chest_run
        row = manifest.set_index("source").loc[cases[case]]
        assert row["status"] == "rejected"
        assert re.search(EXPECTED_REASONS[case], row["reason"]), row["reason"]
        assert row["output"] == ""

    def test_good_frontal_images_are_prepared(self, chest_run):
        """Frontal phantom images become 1 x 64 x 64 arrays in [-1, 1] using the full range."""
        folder, _, out, _, manifest = chest_run
        truth = pd.read_csv(folder / TRUTH_FILE)
        frontal = set(truth.loc[truth["view_position"].isin(["PA", "AP"]), "path"])
        ok = manifest[manifest["status"] == "ok"]
        assert set(ok["source"]) == frontal
        for output in ok["output"]:
            array = np.load(out / output)
            assert array.shape == (1, 64, 64) and array.dtype == np.float32
            assert array.min() == -1.0 and array.max() == 1.0

    def test_attributes_come_from_headers_without_a_cohort(self, chest_run):
        """Without a cohort, sex and age are read from PatientSex / PatientAge where present."""
        folder, _, _, _, manifest = chest_run
        truth = pd.read_csv(folder / TRUTH_FILE).set_index("path")
        for row in manifest[manifest["status"] == "ok"].itertuples():
            ds = pydicom.dcmread(folder / row.source, stop_before_pixels=True)
            if "PatientSex" in ds:
                assert row.sex == truth.loc[row.source, "sex"]
            if "PatientAge" in ds:
                assert abs(float(row.age) - truth.loc[row.source, "age"]) <= 1.5

    def test_no_patient_identifiers_beyond_the_source_path(self, chest_run, capsys):
        """Patient names and IDs appear nowhere in the manifest except inside the source path."""
        folder, _, out, _, manifest = chest_run
        identifiers = set()
        for path in folder.rglob("*.dcm"):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:
                continue
            identifiers |= {str(ds.get("PatientName", "")), str(ds.get("PatientID", ""))} - {""}
        text = manifest.drop(columns=["source", "output"]).to_csv(index=False)
        text += (out / "prepare.json").read_text()
        leaked = [i for i in identifiers if i in text]
        assert identifiers and not leaked


class TestCohort:
    def _cohort(self, folder: Path, target: Path, edit=None) -> Path:
        truth = pd.read_csv(folder / TRUTH_FILE)
        frontal = truth[truth["view_position"].isin(["PA", "AP"])]
        cohort = pd.DataFrame(
            {
                "path": frontal["path"],
                "patient": frontal["subject_id"],
                "split": "train",
                "age": frontal["recorded_age"].astype(float),
                "sex": frontal["sex"],
                "race": frontal["race"],
                "disease": frontal["disease"],
                "view": frontal["view_position"],
            }
        )
        if edit:
            cohort = edit(cohort)
        cohort.to_csv(target, index=False)
        return target

    def test_labels_come_from_the_cohort(self, chest_phantom, tmp_path):
        """With a cohort, prepared rows carry the cohort's attributes; files without a row are rejected."""
        cohort = self._cohort(chest_phantom, tmp_path / "cohort.csv", lambda c: c.iloc[1:])
        dropped = pd.read_csv(chest_phantom / TRUTH_FILE).query("view_position in ['PA', 'AP']")["path"].iloc[0]
        PreparationRun(
            chest_phantom, tmp_path / "out", ChestPreparer(64), cohort=cohort, workers=1, progress=False
        ).run()
        manifest = pd.read_csv(tmp_path / "out" / MANIFEST).set_index("source")
        expected = pd.read_csv(cohort).set_index("path")
        ok = manifest[manifest["status"] == "ok"]
        assert set(ok.index) == set(expected.index)
        for column in ("race", "disease", "sex", "split"):
            assert (ok[column] == expected.loc[ok.index, column]).all()
        assert manifest.loc[dropped, "reason"].startswith("not in the cohort table")

    def test_missing_and_contradictory_labels_are_rejected(self, chest_phantom, tmp_path):
        """A cohort row without race, or with a sex the header contradicts, is a rejected row saying so."""
        truth = pd.read_csv(chest_phantom / TRUTH_FILE)
        with_sex = [
            p
            for p in truth.query("view_position in ['PA', 'AP']")["path"]
            if "PatientSex" in pydicom.dcmread(chest_phantom / p, stop_before_pixels=True)
        ]
        missing, contradicted = with_sex[0], with_sex[1]

        def edit(cohort):
            cohort.loc[cohort["path"] == missing, "race"] = None
            flip = {"M": "F", "F": "M"}
            cohort.loc[cohort["path"] == contradicted, "sex"] = cohort.loc[cohort["path"] == contradicted, "sex"].map(
                flip
            )
            return cohort

        cohort = self._cohort(chest_phantom, tmp_path / "cohort.csv", edit)
        PreparationRun(
            chest_phantom, tmp_path / "out", ChestPreparer(64), cohort=cohort, workers=1, progress=False
        ).run()
        manifest = pd.read_csv(tmp_path / "out" / MANIFEST).set_index("source")
        assert manifest.loc[missing, "reason"] == "missing label(s) in the cohort table: race"
        assert manifest.loc[contradicted, "reason"].startswith("contradictory labels: cohort sex=")


class TestResume:
    def test_a_killed_run_resumes_without_partial_outputs(self, chest_phantom, tmp_path):
        """After a kill (rows only in the journal, a torn last line, a stray temp file, no manifest) a re-run
        finishes only the rest."""
        out = tmp_path / "out"
        PreparationRun(chest_phantom, out, ChestPreparer(64), workers=1, progress=False).run()
        complete = pd.read_csv(out / MANIFEST, keep_default_na=False)
        assert (out / JOURNAL).read_text() == "", "a finished run leaves every row in the manifest"
        rows = complete.to_dict("records")
        kept, lost = rows[: len(rows) // 2], rows[len(rows) // 2 :]
        lines = [json.dumps(row) for row in kept]
        (out / JOURNAL).write_text("\n".join(lines) + "\n" + json.dumps(lost[0])[:25])
        (out / MANIFEST).unlink()
        stamps = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.npy")}
        redo = [row["output"] for row in lost if row["output"]]
        for output in redo:
            (out / output).unlink()
        stray = out / "images" / "files" / ".half.npy.1234abcd.tmp.npy"
        stray.write_bytes(b"partial")

        PreparationRun(chest_phantom, out, ChestPreparer(64), workers=1, progress=False).run()
        resumed = pd.read_csv(out / MANIFEST, keep_default_na=False)
        pd.testing.assert_frame_equal(
            resumed[["source", "status", "reason", "output"]],
            complete[["source", "status", "reason", "output"]],
        )
        assert not stray.exists()
        for path, stamp in stamps.items():
            if path.exists() and path.relative_to(out).as_posix() not in redo:
                assert path.stat().st_mtime_ns == stamp  # finished files were not prepared again
        assert redo and all((out / o).is_file() for o in redo)

    def test_rerun_with_other_settings_is_refused(self, chest_phantom, tmp_path):
        """An output folder is only resumed with the settings it was made with."""
        PreparationRun(chest_phantom, tmp_path, ChestPreparer(64), workers=1, progress=False).run()
        with pytest.raises(ValueError, match="other settings"):
            PreparationRun(chest_phantom, tmp_path, ChestPreparer(32), workers=1, progress=False).run()

    def test_nothing_preparable_is_an_error(self, tmp_path):
        """A folder with no usable image ends in NothingPreparedError, with the manifest still written."""
        folder = tmp_path / "in"
        folder.mkdir()
        (folder / "a.dcm").write_text("not an image")
        with pytest.raises(NothingPreparedError, match="no input could be prepared"):
            PreparationRun(folder, tmp_path / "out", ChestPreparer(64), workers=1, progress=False).run()
        assert pd.read_csv(tmp_path / "out" / MANIFEST)["status"].tolist() == ["rejected"]


class TestMammoPhantoms:
    def test_for_processing_rejected_and_every_breast_faces_left(self, mammo_phantom, tmp_path):
        """FOR PROCESSING twins are rejected; prepared breasts all have the chest wall on the left."""
        out = tmp_path / "out"
        PreparationRun(mammo_phantom, out, MammoPreparer((64, 64)), workers=2, progress=False).run()
        manifest = pd.read_csv(out / MANIFEST, keep_default_na=False).set_index("source")
        truth = pd.read_csv(mammo_phantom / TRUTH_FILE, keep_default_na=False).set_index("path")
        for source, row in manifest.iterrows():
            if truth.loc[source, "presentation"] == "FOR PROCESSING":
                assert row["status"] == "rejected" and row["reason"].startswith("FOR PROCESSING")
                continue
            assert row["status"] == "ok", row["reason"]
            assert row["flipped"] == (truth.loc[source, "laterality"] == "R")
            tissue = np.load(out / row["output"])[0] > -0.9
            assert tissue[:, :16].sum() > 2 * tissue[:, -16:].sum()
            assert tissue[:, 0].mean() > 0.3  # the chest wall touches the left edge

    def test_burned_in_labels_are_removed(self, mammo_phantom, tmp_path):
        """Images with a burned-in view label come out with a single bright component: the breast."""
        from scipy import ndimage

        truth = pd.read_csv(mammo_phantom / TRUTH_FILE, keep_default_na=False)
        labelled = truth[truth["burned_label"] != ""]
        assert len(labelled) > 0
        folder = tmp_path / "in"
        for path in labelled["path"]:
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(mammo_phantom / path, folder / path)
        out = tmp_path / "out"
        PreparationRun(folder, out, MammoPreparer((64, 64)), workers=1, progress=False).run()
        for output in pd.read_csv(out / MANIFEST)["output"]:
            bright = np.load(out / output)[0] > -0.95
            assert ndimage.label(bright)[1] == 1
