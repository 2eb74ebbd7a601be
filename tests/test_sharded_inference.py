"""Sharded inference as a user runs it: `torchrun --nproc_per_node=2 -m monai.bundle run` with
multi_gpu_inference.yaml over inference.yaml (gloo on the CPU), against a single-process run of the same inputs."""

import json
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pydicom
import pytest

from medcf.outputs.manifest import RunManifest
from tests.conftest import chest_export_with_cohort, mlflow_runs, run_bundle, save_tiny_chest_model

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "cxr_counterfactual" / "configs"
#: columns computed from pixels: equal up to float rounding (the shards batch the images differently)
MEASURED = ("mean_abs_change",)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded")
    data, cohort = chest_export_with_cohort(root, 5, seed=4)
    save_tiny_chest_model(root)
    return root, data, cohort


def infer(inputs, out: Path, processes: int, interventions: str) -> subprocess.CompletedProcess:
    root, data, cohort = inputs
    configs = [CONFIGS / "inference.yaml", *([CONFIGS / "multi_gpu_inference.yaml"] if processes > 1 else [])]
    settings = {
        "dataset_dir": data, "labels": cohort, "output_dir": out, "model_path": root / "model.pt",
        "graph_path": root / "graph.json", "image_size": 32, "steps": 4, "batch_size": 2, "pseudonym_key": root / "key",
        "interventions": interventions, "device": "cpu", "guidance": "dcfg",
    }  # fmt: skip
    return run_bundle(configs, out.parent, processes=processes, **settings)


def test_two_processes_write_what_one_process_writes(inputs, tmp_path):
    (inputs[0] / "key").write_text("ab" * 32 + "\n")
    single, sharded = tmp_path / "one" / "out", tmp_path / "two" / "out"
    single.parent.mkdir(), sharded.parent.mkdir()
    interventions = "['do(sex=F)','do(age=+10)']"
    for out, processes in ((single, 1), (sharded, 2)):
        result = infer(inputs, out, processes, interventions)
        assert result.returncode == 0, result.stderr[-3000:]
    one, two = (pd.read_csv(out / "manifest.csv", keep_default_na=False) for out in (single, sharded))
    images, made = one["image"].nunique(), int((one["status"] == "ok").sum())
    assert len(one) == 2 * images and images >= 6 and made >= 6
    assert list(one.columns) == list(two.columns)
    exact = [c for c in one.columns if c not in MEASURED]
    pd.testing.assert_frame_equal(one[exact], two[exact])
    for column in MEASURED:  # empty on rejected rows
        numbers = [pd.to_numeric(table[column], errors="coerce") for table in (one, two)]
        np.testing.assert_allclose(*numbers, rtol=1e-4)
    for path in one.loc[one["status"] == "ok", "dicom"]:
        a, b = (pydicom.dcmread(out / path) for out in (single, sharded))
        assert np.abs(a.pixel_array.astype(int) - b.pixel_array.astype(int)).max() <= 1, path
    assert not list(sharded.glob(".journal*.jsonl")) or all(p.stat().st_size == 0 for p in sharded.glob(".journal*"))
    grids = sorted(p.name for p in sharded.glob("grids/*/*.png"))
    assert any(name.startswith("rank1_") for name in grids) and any(name.startswith("batch_") for name in grids)

    (run,) = mlflow_runs(sharded.parent, "medcf-cxr-inference")  # one MLflow run for the two processes
    assert run.data.metrics["counterfactuals"] == made and run.data.tags["medcf.processes"] == "2"
    experiment = mlflow.MlflowClient().get_experiment_by_name("medcf-cxr-inference")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # mlflow ui: model-training view
    logged = mlflow.MlflowClient().list_artifacts(run.info.run_id, "grids")
    assert len(logged) == len(grids)

    # a re-run with one more intervention makes only its rows, on both ranks, and the manifest stays one table
    result = infer(inputs, sharded, 2, "['do(sex=F)','do(age=+10)','do(race=Black)']")
    assert result.returncode == 0, result.stderr[-3000:]
    again = pd.read_csv(sharded / "manifest.csv", keep_default_na=False)
    assert len(again) == 3 * images
    latest = mlflow_runs(sharded.parent, "medcf-cxr-inference")[-1]
    made = int(((again["intervention"] == "do(race=Black)") & (again["status"] == "ok")).sum())
    assert latest.data.metrics["counterfactuals"] == made


def test_the_journals_of_a_killed_sharded_run_are_folded_in_once(tmp_path):
    """Rank 1 of a killed run left rows in its journal: the next run's table writer reads them and removes the
    journal at its first save; a rank that does not write the table never touches the table."""
    row = {"image": "img-1", "intervention": "do(sex=F)", "status": "ok", "reason": ""}
    (tmp_path / ".journal.rank1.jsonl").write_text(json.dumps(row) + "\n")
    reader = RunManifest(tmp_path, ("image", "intervention"), rank=1, writes_table=False)
    assert reader.get("img-1", "do(sex=F)")["status"] == "ok"
    reader.record({**row, "image": "img-2"})
    reader.close()
    assert not (tmp_path / "manifest.csv").exists()
    writer = RunManifest(tmp_path, ("image", "intervention"))
    assert writer.get("img-1", "do(sex=F)") is not None and writer.get("img-2", "do(sex=F)") is not None
    writer.close()
    assert not (tmp_path / ".journal.rank1.jsonl").exists()
    assert sorted(pd.read_csv(tmp_path / "manifest.csv")["image"]) == ["img-1", "img-2"]
