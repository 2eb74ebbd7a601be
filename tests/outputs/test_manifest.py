"""The run manifest: rows survive a kill (journal), the table is rewritten atomically, rows are replaced by key."""

import json

import pandas as pd
import pytest

from medcf.outputs.manifest import JOURNAL, MANIFEST, RunManifest


def row(image, intervention="do(sex=F)", status="ok", **extra):
    return {"image": image, "intervention": intervention, "status": status, "reason": "", **extra}


def test_rows_recorded_before_a_kill_are_there_at_the_next_open(tmp_path):
    """No save and no close (a SIGKILL): the next open replays the journal; a torn last line is skipped."""
    manifest = RunManifest(tmp_path, key=("image", "intervention"), save_every=3600)
    manifest.record(row("img-1", dicom="img-1/sex-F.dcm"))
    manifest.record(row("img-2", status="rejected", reason="labels: race 'Purple'"))
    assert not (tmp_path / MANIFEST).exists()
    with open(tmp_path / JOURNAL, "a") as journal:
        journal.write(json.dumps(row("img-3"))[:20])
    reopened = RunManifest(tmp_path, key=("image", "intervention"))
    assert sorted(reopened.rows) == [("img-1", "do(sex=F)"), ("img-2", "do(sex=F)")]
    assert reopened.get("img-1", "do(sex=F)")["dicom"] == "img-1/sex-F.dcm"


def test_save_writes_the_table_and_empties_the_journal(tmp_path):
    with RunManifest(tmp_path, key=("image", "intervention"), first=("dicom",)) as manifest:
        manifest.record(row("img-2", dicom="b"))
        manifest.record(row("img-1", dicom="a", cf_sex="F"))
        manifest.record(row("img-1", dicom="a2", cf_sex="F"))  # a re-made row replaces the old one
    table = pd.read_csv(tmp_path / MANIFEST, keep_default_na=False)
    assert list(table.columns) == ["image", "intervention", "status", "reason", "dicom", "cf_sex"]
    assert table["image"].tolist() == ["img-1", "img-2"] and table["dicom"].tolist() == ["a2", "b"]
    assert (tmp_path / JOURNAL).read_text() == ""
    again = RunManifest(tmp_path, key=("image", "intervention"))
    assert again.get("img-1", "do(sex=F)")["dicom"] == "a2"
    again.retain(lambda r: r["image"] != "img-2")
    assert again.close()["image"].tolist() == ["img-1"]


def test_rows_are_saved_every_few_seconds_while_they_come_in(tmp_path):
    manifest = RunManifest(tmp_path, key=("image", "intervention"), save_every=0.0)
    manifest.record(row("img-1"))
    assert pd.read_csv(tmp_path / MANIFEST)["image"].tolist() == ["img-1"]
    manifest.close()


def test_a_row_without_key_or_status_is_refused(tmp_path):
    manifest = RunManifest(tmp_path, key=("image", "intervention"))
    with pytest.raises(ValueError, match="intervention"):
        manifest.record({"image": "img-1", "status": "ok", "reason": ""})
    with pytest.raises(ValueError, match="status"):
        manifest.record(row("img-1", status="done"))
    manifest.close()


def test_a_row_reads_the_same_in_memory_and_after_a_reload(tmp_path):
    """Values are kept as the CSV text they become, so save -> reload -> save gives the same bytes."""
    import numpy as np

    with RunManifest(tmp_path, key=("image", "intervention")) as manifest:
        manifest.record(row("img-1", rows=np.int64(2048), change=np.float32(0.125), flipped=True, missing=None))
        manifest.record(row("img-2", change=float("nan")))
        in_memory = dict(manifest.get("img-1", "do(sex=F)"))
    first = (tmp_path / MANIFEST).read_bytes()
    reloaded = RunManifest(tmp_path, key=("image", "intervention"))
    assert reloaded.get("img-1", "do(sex=F)") == in_memory
    assert in_memory["rows"] == "2048" and in_memory["flipped"] == "True" and in_memory["missing"] == ""
    reloaded.close()
    assert (tmp_path / MANIFEST).read_bytes() == first
