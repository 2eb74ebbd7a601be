"""The pixel budget of the preparation: a header declaring more decoded pixel bytes than ``max_pixel_bytes`` is
one rejected row ``too_large``, refused before decoding, and the job goes on within its memory."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from medcf.jobs.prepare import MANIFEST, SETTINGS, PreparationRun
from medcf.prepare import ChestPreparer, MammoPreparer
from medcf.radiograph.header import DEFAULT_MAX_PIXEL_BYTES
from tests.dicom.bombs import write_rle_bomb

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "bundles" / "cxr_counterfactual" / "sample_data"
BOMB = "files/p99/p99000000/s99000000/bomb.dcm"
PEAK_LIMIT_MIB = 1536

#: prepares a folder in a fresh process and prints its peak resident memory (its own and its workers')
MEASURE = textwrap.dedent(
    """
    import json, resource, sys
    from medcf.prepare import ChestPreparer
    from medcf.jobs.prepare import PreparationRun
    dataset_dir, output_dir, cohort = sys.argv[1:4]
    PreparationRun(dataset_dir, output_dir, ChestPreparer(64), cohort=cohort, workers=2, progress=False).run()
    peaks = [resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    print(json.dumps({"peak_mib": max(peaks) / 1024}))
    """
)


@pytest.fixture(scope="module")
def sample_with_bomb(tmp_path_factory) -> tuple[Path, Path, pd.DataFrame]:
    """The bundle's sample chest export and its cohort, plus a 28 MB RLE Lossless copy of a frontal file's header
    declaring 30000 x 30000 x 16 bit (1.8 GB decoded) with a cohort row of its own, so that nothing but its size
    stops it (as in the measured case: without a budget it decoded, then was refused for lack of contrast)."""
    folder = tmp_path_factory.mktemp("bomb") / "data"
    shutil.copytree(SAMPLE / "files", folder / "files")
    cohort = pd.read_csv(SAMPLE / "cohort.csv", keep_default_na=False)
    write_rle_bomb(folder / cohort["path"].iloc[0], folder / BOMB)
    labels = folder.parent / "cohort.csv"
    pd.concat([cohort, cohort.iloc[:1].assign(path=BOMB)], ignore_index=True).to_csv(labels, index=False)
    return folder, labels, cohort


def test_a_bomb_among_sample_files_is_one_too_large_row_and_the_run_stays_small(sample_with_bomb, tmp_path):
    """Sample files plus the bomb: the bomb is one rejected row whose reason gives its dimensions, bytes and the
    budget (no path), every other file is prepared as without it, and the run's peak memory stays under 1.5 GB
    (without the budget, decoding the bomb alone takes 1.8 GB for the stored array)."""
    folder, labels, cohort = sample_with_bomb
    assert (folder / BOMB).stat().st_size < 30 * 2**20
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, str(folder), str(out), str(labels)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    peak = json.loads(result.stdout.strip().splitlines()[-1])["peak_mib"]
    print(f"peak resident memory of the run with the bomb: {peak:.0f} MiB")
    manifest = pd.read_csv(out / MANIFEST, keep_default_na=False).set_index("source")
    bomb = manifest.loc[BOMB]
    assert bomb["status"] == "rejected" and bomb["output"] == ""
    assert bomb["reason"].startswith("too_large: "), bomb["reason"]
    assert "30000 x 30000 pixels x 1 frame(s) x 1 sample(s) x 2 byte(s) = 1,800,000,000 bytes" in bomb["reason"]
    assert f"{DEFAULT_MAX_PIXEL_BYTES:,} bytes" in bomb["reason"]
    assert "p99" not in bomb["reason"] and str(folder) not in bomb["reason"]
    assert (bomb["dicom_rows"], bomb["dicom_columns"]) == (30000, 30000), "the header fields are still recorded"
    others = manifest.drop(index=BOMB)
    assert set(others.index[others["status"] == "ok"]) == set(cohort["path"]), "every frontal file is prepared"
    assert set(others.loc[others["status"] != "ok", "reason"]) == {"view LL is not frontal (AP/PA)"}
    summary = json.loads((out / SETTINGS).read_text())
    assert summary["settings"]["max_pixel_bytes"] == DEFAULT_MAX_PIXEL_BYTES
    assert summary["summary"]["reasons"]["too_large"] == 1
    assert peak < PEAK_LIMIT_MIB, f"peak RSS {peak:.0f} MiB"


def test_the_budget_is_a_setting_of_both_preparers(sample_with_bomb):
    """A budget below a sample file's 256 x 256 x 2 bytes refuses it too_large; exactly its size prepares it;
    the default is 128 MiB; anything but a positive whole number is refused when the preparer is made."""
    folder, labels, cohort = sample_with_bomb
    source = cohort["path"].iloc[0]
    assert ChestPreparer().max_pixel_bytes == MammoPreparer().max_pixel_bytes == DEFAULT_MAX_PIXEL_BYTES == 2**27
    refused = ChestPreparer(64, max_pixel_bytes=256 * 256 * 2 - 1).prepare(str(folder / source))
    assert refused.status == "rejected" and refused.reason.startswith("too_large: ")
    assert "256 x 256 pixels" in refused.reason and "131,071 bytes" in refused.reason
    assert refused.details["dicom_rows"] == 256
    assert ChestPreparer(64, max_pixel_bytes=256 * 256 * 2).prepare(str(folder / source)).status == "ok"
    assert ChestPreparer(64, max_pixel_bytes=2.5e8).max_pixel_bytes == 250_000_000
    for bad in (0, -1, 1.5, "128 MiB", True, None):
        with pytest.raises(ValueError, match="max_pixel_bytes"):
            ChestPreparer(64, max_pixel_bytes=bad)
        with pytest.raises(ValueError, match="max_pixel_bytes"):
            MammoPreparer(64, max_pixel_bytes=bad)


def test_a_folder_resumes_only_with_its_budget(sample_with_bomb, tmp_path):
    """A prepared folder records its budget; another budget is refused (its rejected rows are final); a folder
    prepared before the budget existed resumes, and records the budget from then on."""
    folder, labels, _ = sample_with_bomb
    out = tmp_path / "out"
    PreparationRun(folder, out, ChestPreparer(64), cohort=labels, workers=1, progress=False).run()
    with pytest.raises(ValueError, match="other settings"):
        PreparationRun(folder, out, ChestPreparer(64, max_pixel_bytes=2**31), cohort=labels, progress=False).run()
    recorded = json.loads((out / SETTINGS).read_text())
    del recorded["settings"]["max_pixel_bytes"]
    (out / SETTINGS).write_text(json.dumps(recorded))
    summary = PreparationRun(folder, out, ChestPreparer(64), cohort=labels, workers=1, progress=False).run()
    assert summary["reasons"]["too_large"] == 1
    assert json.loads((out / SETTINGS).read_text())["settings"]["max_pixel_bytes"] == DEFAULT_MAX_PIXEL_BYTES
