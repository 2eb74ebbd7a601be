"""The prepare bundles as users run them: `python -m monai.bundle run --config_file .../prepare.yaml`."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medcf.phantoms import write_phantom_dataset
from tests.conftest import bundle_command, run_bundle

REPO = Path(__file__).resolve().parents[2]


def prepare_command(bundle: str, *overrides: str) -> list[str]:
    """The bundle's prepare.yaml as a user types it, without a progress bar."""
    return bundle_command(REPO / "bundles" / bundle / "configs" / "prepare.yaml", "--progress", "false", *overrides)


def bundle_run(bundle: str, cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    return run_bundle(REPO / "bundles" / bundle / "configs" / "prepare.yaml", cwd, "--progress", "false", *overrides)


@pytest.mark.parametrize(
    ("bundle", "output", "prepared"),
    [("cxr_counterfactual", "prepared_cxr", "AP/PA"), ("mammo_counterfactual", "prepared_mammo", "CC/MLO")],
)
def test_no_arguments_prepares_the_bundle_sample_data(tmp_path, bundle, output, prepared):
    """With no arguments each bundle prepares its shipped sample data into ./prepared_<kind>."""
    result = bundle_run(bundle, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = pd.read_csv(tmp_path / output / "manifest.csv", keep_default_na=False)
    sample = REPO / "bundles" / bundle / "sample_data"
    assert len(manifest) == len(list(sample.rglob("*.dcm")))
    assert (manifest["status"] == "ok").sum() >= 8
    assert "prepared" in result.stdout and (tmp_path / output / "preview.png").is_file()


def test_dataset_and_output_dir_and_cohort_overrides(tmp_path):
    """The documented command: --dataset_dir IN --output_dir OUT --cohort COHORT.csv --image_size 64."""
    data = write_phantom_dataset("cxr", tmp_path / "mimic", 12, 64, seed=3, workers=1, progress=False)
    cohort = tmp_path / "cohort.csv"
    built = subprocess.run(
        [sys.executable, "-m", "data_prep.mimic_cxr", "--root", str(data), "--out", str(cohort)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    out = tmp_path / "prepared"
    settings = ["--dataset_dir", str(data), "--output_dir", str(out), "--cohort", str(cohort), "--image_size", "64"]
    result = bundle_run("cxr_counterfactual", tmp_path, *settings, "--workers", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    rows = pd.read_csv(cohort)
    ok = manifest[manifest["status"] == "ok"].set_index("source")
    assert set(ok.index) == set(rows["path"])
    assert (ok.loc[rows["path"], "split"].to_numpy() == rows["split"].to_numpy()).all()
    assert np.load(out / ok["output"].iloc[0]).shape == (1, 64, 64)
    rerun = bundle_run("cxr_counterfactual", tmp_path, *settings)
    assert rerun.returncode == 0 and "0 to prepare" in rerun.stdout + rerun.stderr


def test_exit_status_is_non_zero_only_when_nothing_was_prepared(tmp_path):
    """A folder without a single usable image makes the bundle command fail, after writing the manifest."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "x.dcm").write_bytes(b"garbage")
    result = bundle_run(
        "mammo_counterfactual", tmp_path, "--dataset_dir", str(folder), "--output_dir", str(tmp_path / "out")
    )
    assert result.returncode != 0
    assert "no input could be prepared" in result.stderr
    assert (tmp_path / "out" / "manifest.csv").is_file()


def test_killed_bundle_run_resumes_to_the_same_result(tmp_path):
    """SIGKILL a bundle run half-way; the re-run finishes with the same manifest as an uninterrupted run,
    every listed array loads, no temporary file is left, and no patient name reaches the log."""
    import signal
    import time

    data = write_phantom_dataset("cxr", tmp_path / "mimic", 60, 256, seed=5, workers=1, progress=False)
    out = tmp_path / "killed"
    command = prepare_command(
        "cxr_counterfactual",
        "--dataset_dir",
        str(data),
        "--output_dir",
        str(out),
        "--image_size",
        "64",
        "--workers",
        "1",
    )
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = out / ".journal.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= 10:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "manifest.csv").exists()

    resumed = bundle_run(
        "cxr_counterfactual",
        tmp_path,
        "--dataset_dir",
        str(data),
        "--output_dir",
        str(out),
        "--image_size",
        "64",
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "PHANTOM^" not in resumed.stdout + resumed.stderr
    reference = tmp_path / "reference"
    assert (
        bundle_run(
            "cxr_counterfactual",
            tmp_path,
            "--dataset_dir",
            str(data),
            "--output_dir",
            str(reference),
            "--image_size",
            "64",
        ).returncode
        == 0
    )
    columns = ["source", "status", "reason", "output"]
    after_kill = pd.read_csv(out / "manifest.csv", keep_default_na=False)[columns]
    pd.testing.assert_frame_equal(after_kill, pd.read_csv(reference / "manifest.csv", keep_default_na=False)[columns])
    for output in after_kill.loc[after_kill["status"] == "ok", "output"]:
        assert np.array_equal(np.load(out / output), np.load(reference / output))
    assert not list(out.rglob("*.tmp"))
