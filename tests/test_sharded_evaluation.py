"""Sharded evaluate and audit as a user runs them: `torchrun --nproc_per_node=2 -m monai.bundle run` with
multi_gpu_evaluate.yaml / multi_gpu_audit.yaml over evaluate.yaml / audit.yaml (gloo on the CPU), against a
single-process run of the same inputs (monai.bundle.run, what `python -m monai.bundle run` calls, in the test's
process: it saves the seconds of a fresh interpreter's imports): the same rows in the same order, one MLflow
run. Floats are compared at a relative 1e-4 in the audit (the processes decode the chunks a single process
decodes: equal to the bit here) and 1e-3 in the evaluation: the processes batch a seed's images differently,
which changes float sums, and some metrics are differences of nearly equal images (worst seen here: 7e-5 in the
ground truth's off-target error)."""

import json
import math
import re
from pathlib import Path

import monai.bundle
import numpy as np
import pandas as pd
import pytest
from monai.bundle import ConfigParser

from tests.conftest import REPO, mlflow_runs, run_bundle, save_tiny_evaluation_files

CONFIGS = REPO / "bundles" / "cxr_counterfactual" / "configs"
AUDIT_RTOL, EVALUATE_RTOL, ATOL = 1e-4, 1e-3, 1e-7


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded_evaluation")
    save_tiny_evaluation_files(root)
    (root / "key").write_text("cd" * 32 + "\n")  # one pseudonym key for both audits: the same pseudonyms
    return root


def run_both(job: str, tmp_path: Path, monkeypatch, **settings) -> dict[int, Path]:
    """``job``.yaml in one process, and layered with multi_gpu_``job``.yaml in two; their output folders."""
    settings = {"output_dir": "OUT", "device": "cpu", **settings}
    single, sharded = tmp_path / "processes_1", tmp_path / "processes_2"
    single.mkdir(), sharded.mkdir()
    with monkeypatch.context() as patch:
        patch.chdir(single)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{single / 'mlflow.db'}")
        monai.bundle.run(config_file=str(CONFIGS / f"{job}.yaml"), **settings)
    result = run_bundle([CONFIGS / f"{job}.yaml", CONFIGS / f"multi_gpu_{job}.yaml"], sharded, processes=2, **settings)
    assert result.returncode == 0, result.stderr[-3000:]
    return {1: single / "OUT", 2: sharded / "OUT"}


def assert_same_table(one: pd.DataFrame, two: pd.DataFrame, rtol: float, skip: tuple[str, ...] = ()) -> None:
    """The same columns and rows in the same order: numbers within ``rtol`` (NaN where NaN), the rest equal."""
    assert list(one.columns) == list(two.columns) and len(one) == len(two)
    for column in (c for c in one.columns if c not in skip):
        if pd.api.types.is_float_dtype(one[column]) or pd.api.types.is_float_dtype(two[column]):
            np.testing.assert_allclose(two[column], one[column], rtol=rtol, atol=ATOL, err_msg=column)
        else:
            assert one[column].tolist() == two[column].tolist(), column


def assert_same_record(one, two, rtol: float, where: str = "") -> None:
    """Two JSON records alike: numbers within ``rtol``, everything else equal."""
    if isinstance(one, dict):
        assert isinstance(two, dict) and one.keys() == two.keys(), where
        for key in one:
            assert_same_record(one[key], two[key], rtol, f"{where}.{key}")
    elif isinstance(one, list):
        assert isinstance(two, list) and len(one) == len(two), where
        for k, (a, b) in enumerate(zip(one, two, strict=True)):
            assert_same_record(a, b, rtol, f"{where}[{k}]")
    elif isinstance(one, float) and not isinstance(one, bool):
        assert isinstance(two, int | float) and (math.isnan(one) == math.isnan(two)), where
        assert math.isnan(one) or two == pytest.approx(one, rel=rtol, abs=ATOL), where
    else:
        assert one == two, where


def test_two_processes_evaluate_what_one_process_evaluates(tiny_files, tmp_path, monkeypatch, one_torch_thread):
    """No dataset_dir: rank 0 writes the held-out phantom set, both ranks read it, and its ground truth is used;
    3 images per seed split 2 + 1, the composition cycles on images 0 (rank 0) and 1 (rank 1)."""
    out = run_both(
        "evaluate", tmp_path, monkeypatch, model_path=str(tiny_files / "model.pt"),
        predictors_path=str(tiny_files / "predictors.pt"), image_size=32, heldout_subjects=4, steps=2, seeds=[0],
        images_per_seed=3, composition_images=2, composition_cycles=2, interventions=["do(sex=F)", "do(age=+20)"],
        guidance_settings=[{"mode": "dcfg", "w_aff": 3, "w_inv": 1}],
    )  # fmt: skip
    one, two = (pd.read_csv(out[p] / "metrics.csv") for p in (1, 2))
    assert one["intervention"].tolist() == ["do(sex=F)", "do(age=+20)"] and (one["images"] >= 1).all()
    measured = ["effectiveness", "off_target", "composition_1", "composition_2", "reversibility", "truth_error", "fid"]
    assert one[measured].notna().all().all(), "every metric measured, the ground truth's too"
    assert_same_table(one, two, EVALUATE_RTOL, skip=("seconds",))

    json_one, json_two = (json.loads((out[p] / "metrics.json").read_text()) for p in (1, 2))
    for record in (json_one, json_two):
        record.pop("seconds")
        for row in record["rows"]:
            row.pop("seconds")
    assert_same_record(json_one, json_two, EVALUATE_RTOL)
    assert {p.name for p in (out[2] / "plots").iterdir()} == {p.name for p in (out[1] / "plots").iterdir()}
    assert (out[2] / "heldout_data" / "export" / "phantom_truth.csv").is_file()

    (run,) = mlflow_runs(out[2].parent, "medcf-cxr-evaluate")  # one MLflow run for the two processes
    assert run.info.status == "FINISHED" and run.data.tags["medcf.processes"] == "2"
    assert run.data.metrics["do_sex-F.dcfg w_aff-3 w_inv-1.truth_error"] == pytest.approx(two["truth_error"][0])


def test_two_processes_audit_what_one_process_audits(tiny_files, tmp_path, monkeypatch, one_torch_thread):
    """The 8 sample images in chunks of 3: rank 0 audits chunks 0 and 2, rank 1 chunk 1, and every chunk has rows
    (each image changes sex once); the label (disease) descends from age, so do(age=+20) is decoded per disease
    value within each chunk."""
    out = run_both(
        "audit", tmp_path, monkeypatch, classifier=str(tiny_files / "classifier.ts"),
        model_path=str(tiny_files / "model.pt"), predictors_path=str(tiny_files / "predictors.pt"),
        pseudonym_key=str(tiny_files / "key"), image_size=32, steps=2, batch_size=3, resamples=200,
        interventions=["do(sex=F)", "do(sex=M)", "do(age=+20)"], dataset_dir=str(CONFIGS.parent / "sample_data"),
        **{"guidance#mode": "dcfg"},  # the bundle's plan is for its own model
    )  # fmt: skip
    one, two = (pd.read_csv(out[p] / "audit.csv") for p in (1, 2))
    assert (one["attribute"] == "sex").sum() == one["source"].nunique() == 8 and "age" in set(one["attribute"])
    assert_same_table(one, two, AUDIT_RTOL)

    summary_one, summary_two = (json.loads((out[p] / "summary.json").read_text()) for p in (1, 2))
    summary_one.pop("seconds"), summary_two.pop("seconds")
    assert_same_record(summary_one, summary_two, AUDIT_RTOL)
    # the report's example triplets: the images whose prediction moved most, whichever process decoded them
    examples = [re.search(r'<img[^>]*alt="examples"[^>]*>', (out[p] / "report.html").read_text()) for p in (1, 2)]
    assert examples[0] is not None and examples[0].group(0) == examples[1].group(0)

    (run,) = mlflow_runs(out[2].parent, "medcf-cxr-audit")
    assert run.info.status == "FINISHED" and run.data.tags["medcf.processes"] == "2"
    assert run.data.tags["medcf.verdict.sex"] == summary_two["attributes"]["sex"]["verdict"]


@pytest.mark.parametrize("bundle", ["cxr_counterfactual", "mammo_counterfactual"])
@pytest.mark.parametrize("job", ["inference", "evaluate", "audit"])
def test_each_multi_gpu_config_layers_the_process_group_over_its_job(bundle, job):
    """The overlay keeps its job's run, joins the process group first and leaves it last; the torchrun command in
    its header names this bundle's files."""
    configs = REPO / "bundles" / bundle / "configs"
    overlay = configs / f"multi_gpu_{job}.yaml"
    parser = ConfigParser()
    parser.read_config([str(configs / f"{job}.yaml"), str(overlay)])
    base = ConfigParser()
    base.read_config(str(configs / f"{job}.yaml"))
    assert parser["run"] == base["run"]
    assert parser["initialize"][-1] == "$medcf.runtime.distributed.init_process_group(@device)"  # gloo for --device cpu
    assert parser["finalize"] == ["$medcf.runtime.distributed.destroy_process_group()"]
    named = re.findall(r"'(bundles/[^']+\.yaml)'", overlay.read_text())
    assert named == [f"bundles/{bundle}/configs/{job}.yaml", f"bundles/{bundle}/configs/multi_gpu_{job}.yaml"]
