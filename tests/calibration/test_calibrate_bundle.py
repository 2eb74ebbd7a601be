"""The calibrate job as a user types it (with small settings so it runs in about a minute on two cores): it writes
a plan the bundle's inference then decodes with, and records which plan in the DICOM and in MLflow."""

import json
import subprocess
from pathlib import Path

import mlflow
import pandas as pd
import pydicom

from medcf.core.guidance_plan import STATUSES, CalibratedPlan
from medcf.phantoms.cxr import CXR_SCHEMA
from medcf.runtime.files import file_sha256
from tests.conftest import bundle_refusal, run_bundle

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles" / "cxr_counterfactual" / "configs"
SMALL = ["--images", "4", "--steps", "4", "--max_evaluations", "2", "--heldout_subjects", "16"]
BANDS = "[None, [0.0, 2.0]]"  # two candidate guidance intervals: every step, or only at sigma_t <= 2


def bundle(config: str, cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    return run_bundle(CONFIGS / config, cwd, *overrides)


def test_calibrate_writes_a_plan_that_inference_uses_and_records(tmp_path, monkeypatch):
    result = bundle("calibrate.yaml", tmp_path, "--output_dir", "cal", *SMALL, "--intervals", BANDS)
    assert result.returncode == 0, result.stderr[-3000:]
    model = REPO / "bundles" / "cxr_counterfactual" / "models" / "model.pt"
    plan_path = tmp_path / "cal" / "guidance_plan.json"
    plan = CalibratedPlan.load(plan_path, CXR_SCHEMA, model_sha256=file_sha256(model))
    assert list(plan.attributes) == list(CXR_SCHEMA.names)
    for name, guidance in plan.attributes.items():
        assert guidance.status in STATUSES and 0.0 <= guidance.weight <= 8.0, name
        assert f"{name}: w = {guidance.weight:g} ({guidance.status}" in result.stdout
    assert plan.data["images"] == 4 and len(plan.data["fingerprint"]) == 64
    assert plan.affected_descendants == "changed"  # calibrate.yaml's: descendants guided where their value changes
    assert plan.inversion_refinements == 1  # common.yaml's, recorded
    assert "calibration_data" not in json.dumps(plan.to_dict()), "no paths in the plan"
    tried = pd.read_csv(tmp_path / "cal" / "calibration.csv")
    assert set(tried["attribute"]) == set(CXR_SCHEMA.names)
    matched = [n for n, g in plan.attributes.items() if g.status != "no_effect"]
    for name in matched:  # each band searched (2 weights, then its choice decoded unless tried); the plan
        rows = tried[tried["attribute"] == name]  # records the winner's
        assert set(rows["interval"]) == {"none", "0-2"} and 4 <= len(rows) <= 6
        guidance = plan.attributes[name]
        assert guidance.interval in (None, (0.0, 2.0))
        band = "none" if guidance.interval is None else "0-2"
        recorded = {float(w) for w in guidance.figures["ratio_at_weights"]}
        decoded = rows[rows["interval"] == band]["weight"].round(6).tolist()
        assert len(set(decoded)) == len(decoded), "one decode per weight"
        assert recorded <= set(decoded) and len(decoded) - len(recorded) <= 1  # + the choice, where new
        assert guidance.figures["texture_score"] is not None
        # a decode guided at sigma_t <= 2 (2 of the 4 steps) costs fewer network rows than one guided at every step
        cost = rows.groupby("interval")["network_evaluations"].max()
        assert cost["0-2"] < cost["none"], cost

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("medcf-cxr-calibrate").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["weight.sex"] == plan.attributes["sex"].weight
    assert run.data.params["model_sha256"] == file_sha256(model)
    assert run.data.params["affected_descendants"] == "changed"

    made = bundle(
        "inference.yaml",
        tmp_path,
        "--guidance",
        "calibrated",
        "--guidance_plan",
        str(plan_path),
        "--steps",
        "4",
        "--interventions",
        "['do(sex=F)']",
        "--output_dir",
        "out",
    )
    assert made.returncode == 0, made.stderr[-3000:]
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv", keep_default_na=False)
    row = manifest[manifest["status"] == "ok"].iloc[0]
    description = pydicom.dcmread(tmp_path / "out" / row["dicom"]).DerivationDescription
    assert f"guidance calibrated (plan {plan.label})" in description
    assert f"sex w={plan.attributes['sex'].weight:g}" in description
    (run,) = client.search_runs([client.get_experiment_by_name("medcf-cxr-inference").experiment_id])
    assert run.data.params["guidance.plan"] == plan.label
    assert run.data.params["guidance.mode"] == "calibrated"
    assert run.data.params["guidance.affected_descendants"] == "changed"  # inference.yaml's null: the plan's

    content = json.loads(plan_path.read_text())
    plan_path.write_text(json.dumps({**content, "model_sha256": "0" * 64}))
    last = bundle_refusal(
        CONFIGS / "inference.yaml", tmp_path, monkeypatch, guidance="calibrated", guidance_plan=str(plan_path),
        output_dir="x",
    )  # fmt: skip
    assert "guidance_plan:" in last and "was calibrated for model sha256:000000000000, not this model" in last
    assert not (tmp_path / "x").exists()
