"""The evaluate job and bundle on a tiny model: metrics.csv as the contract names it, MLflow, bad input."""

import json
import math
import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch

from medcf.core.guidance_settings import guidance_label, guidance_settings_from
from medcf.core.interventions import InterventionError
from medcf.jobs.evaluate import EvaluationRun
from medcf.measure.evaluation_set import EvaluationDataError
from medcf.measure.phantom_truth import TruthError
from medcf.prepare import ChestPreparer
from tests.conftest import run_bundle, save_tiny_evaluation_files

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "cxr_counterfactual"
CONTRACT = [
    "intervention", "guidance", "w", "w_aff", "w_inv", "seed", "effectiveness", "off_target",
    "composition_1", "composition_10", "reversibility", "fid", "truth_error", "target_ratio",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    save_tiny_evaluation_files(root)
    return root


def test_the_bundle_writes_every_metric_for_each_intervention_setting_and_seed(tiny_files, tmp_path):
    """As a user runs it, without a dataset: a held-out phantom set is made and its ground truth used."""
    arguments = {
        "output_dir": "OUT", "model_path": tiny_files / "model.pt", "predictors_path": tiny_files / "predictors.pt",
        "image_size": 32, "heldout_subjects": 6, "steps": 2, "seeds": "[0, 1]", "images_per_seed": 3,
        "composition_images": 1, "composition_cycles": 10,
        "guidance_settings": "[{'mode': 'cfg', 'weight': 3.0}, {'mode': 'dcfg', 'w_aff': 3.0, 'w_inv': 1.0}]",
    }  # fmt: skip
    result = run_bundle(BUNDLE / "configs" / "evaluate.yaml", tmp_path, **arguments)
    assert result.returncode == 0, result.stderr[-3000:]

    out = tmp_path / "OUT"
    table = pd.read_csv(out / "metrics.csv")
    assert set(CONTRACT) <= set(table.columns)
    interventions = ["do(sex=F)", "do(age=+20)", "do(race=Black)"]
    guidance = ["cfg w=3", "dcfg w_aff=3 w_inv=1"]
    assert sorted(zip(table["intervention"], table["guidance"], table["seed"], strict=True)) == sorted(
        (i, g, s) for i in interventions for g in guidance for s in (0, 1)
    )
    made = table[table["images"] > 0]
    assert len(made) >= 10
    measured = ["off_target", "off_target_null", "off_target_vs_null", "composition_1", "composition_10"]
    for column in (*measured, "reversibility", "truth_error", "truth_off_target_source", "fid"):
        # an untrained tiny model changes every image it decodes: each error is a positive finite number
        assert (made[column] > 0).all() and made[column].apply(math.isfinite).all(), column
    assert ((made["composition_ssim_1"] <= 1) & (made["composition_ssim_10"] <= 1)).all()
    categorical = made[made["effectiveness_metric"] == "accuracy"]
    assert categorical["effectiveness"].between(0, 1).all() and len(categorical) >= 6
    assert (made.loc[made["effectiveness_metric"] == "mae", "effectiveness"] > 0).all()
    assert made["target_ratio"].apply(math.isfinite).all()
    # per image against the exact counterfactual: every made row here has images the intervention changes
    for column in ("exact_target_ratio", "exact_off_target", "texture_ratio", "mean_abs_change"):
        assert made[column].apply(math.isfinite).all(), column
    assert (made["exact_off_target"] > 0).all() and (made["texture_ratio"] > 0).all()
    assert (made["mean_abs_change"] > 0).all()
    # regression figures on fixed seeds (the seeded tiny model, held-out phantom seed 1000, seeds 0 and 1): a change
    # that moves a decoded pixel or a prediction moves these
    figures = made.set_index(["intervention", "guidance", "seed"])
    expected = {  # (effectiveness, truth_error, mean_abs_change)
        ("do(sex=F)", "cfg w=3", 0): (1.0, 0.583039, 1.164878),
        ("do(age=+20)", "dcfg w_aff=3 w_inv=1", 0): (42.333333, 0.751722, 2.770518),
        ("do(race=Black)", "cfg w=3", 1): (0.0, 0.730905, 1.461908),
        ("do(sex=F)", "dcfg w_aff=3 w_inv=1", 1): (1.0, 0.310614, 1.799193),
    }
    for key, values in expected.items():
        found = tuple(figures.loc[key, ["effectiveness", "truth_error", "mean_abs_change"]])
        assert found == pytest.approx(values, rel=1e-3, abs=1e-5), key
    # an intervention's own attribute and its descendants are never counted as off-target
    assert table.loc[table["intervention"] == "do(sex=F)", "off_target.sex"].isna().all()
    assert (
        table.loc[table["intervention"] == "do(age=+20)", ["off_target.age", "off_target.disease"]].isna().all().all()
    )
    assert table.loc[table["intervention"] == "do(sex=F)", "off_target.race"].notna().all()
    assert (table["w"][table["guidance"] == "cfg w=3"] == 3).all()

    summary = json.loads((out / "metrics.json").read_text())
    assert len(summary["rows"]) == len(table) and summary["ground_truth"] == "phantom"
    assert {(r["intervention"], r["guidance"]) for r in summary["summary"]} == {
        (i, g) for i in interventions for g in guidance
    }
    assert {p.name for p in (out / "plots").iterdir()} == {
        "effectiveness_vs_off_target.png", "truth_error_vs_weight.png", "target_ratio.png",
        "off_target_source_vs_weight.png",
    }  # fmt: skip
    assert (out / "heldout_data" / "export" / "phantom_truth.csv").is_file()

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=["medcf-cxr-evaluate"], output_format="list")
    assert run.info.status == "FINISHED" and run.data.tags["medcf.job"] == "evaluate"
    assert run.data.metrics["do_sex-F.cfg w-3.truth_error"] == pytest.approx(table.loc[
        (table["intervention"] == "do(sex=F)") & (table["guidance"] == "cfg w=3") & (table["seed"] == 1), "truth_error"
    ].item())  # fmt: skip
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"metrics.csv", "metrics.json", "plots"} <= artifacts
    assert str(tmp_path) not in json.dumps(run.data.params), "no local paths in the run's parameters"


def evaluation(tiny_files, tmp_path, **changes):
    settings = dict(
        output_dir=tmp_path / "out",
        model_path=tiny_files / "model.pt",
        graph_path=BUNDLE / "models" / "graph.json",
        predictors_path=tiny_files / "predictors.pt",
        preparer=ChestPreparer(32),
        phantom_kind="cxr",
        dataset_dir=BUNDLE / "sample_data",
        labels=BUNDLE / "sample_data" / "cohort.csv",
        interventions=["do(sex=F)"],
        guidance_settings=[{"mode": "none"}],
        steps=2,
        images_per_seed=2,
        composition_images=0,
        reversibility=False,
        progress=False,
    )
    return EvaluationRun(**{**settings, **changes})


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"interventions": ["do(height=2)"]}, InterventionError, r"height"),
        ({"guidance_settings": [{"mode": "cfg", "wieght": 2}]}, ValueError, r"guidance_settings\[0\]: unknown setting"),
        ({"guidance_settings": [{"mode": "cfg", "weight": -1}]}, ValueError, r"guidance_settings\[0\]: w: -1"),
        ({"guidance_settings": []}, ValueError, r"guidance_settings: give a list"),
        ({"seeds": [0, 0]}, ValueError, r"seeds: \[0, 0\] repeats a seed"),
        ({"images_per_seed": 0}, ValueError, r"images_per_seed: 0 must be an integer >= 1"),
        ({"dataset_dir": BUNDLE.parent / "mammo_counterfactual" / "sample_data"}, TruthError, r"mammo phantom"),
        ({"device": "gpu"}, ValueError, r"device: 'gpu' is not a device"),
    ],
)
def test_bad_input_fails_in_one_line_before_any_output(tiny_files, tmp_path, changes, error, message):
    with pytest.raises(error, match=message) as caught:
        evaluation(tiny_files, tmp_path, **changes).run()
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out" / "metrics.csv").exists()


def test_an_empty_folder_is_refused(tiny_files, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvaluationDataError, match=r"dataset_dir: no input files under"):
        evaluation(tiny_files, tmp_path, dataset_dir=tmp_path / "empty").run()


def test_a_run_on_given_data_without_truth_has_no_truth_columns(tiny_files, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    data = tmp_path / "data"
    shutil.copytree(BUNDLE / "sample_data", data, ignore=shutil.ignore_patterns("phantom_truth.csv", "phantom.json"))
    result = evaluation(tiny_files, tmp_path, dataset_dir=data, labels=data / "cohort.csv").run()
    table = pd.read_csv(tmp_path / "out" / "metrics.csv")
    assert result["ground_truth"] is None and "truth_error" not in table.columns
    assert result["held_out_images"] == 8 and sum(result["files_refused"].values()) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the lent GPU machine)")
def test_a_cuda_run_measures_what_a_cpu_run_measures(tiny_files, tmp_path, monkeypatch):
    """The model and predictors on the GPU, the metrics on the CPU: the same rows within float noise."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    tables = {}
    for device in ("cpu", "cuda"):
        run = evaluation(tiny_files, tmp_path, output_dir=tmp_path / device, device=device, reversibility=True,
                         guidance_settings=[{"mode": "dcfg", "w_aff": 3, "w_inv": 1}])  # fmt: skip
        run.run()
        tables[device] = pd.read_csv(tmp_path / device / "metrics.csv")
    for column in ("effectiveness", "off_target", "reversibility", "truth_error", "target_ratio"):
        assert tables["cuda"][column].to_numpy() == pytest.approx(tables["cpu"][column].to_numpy(), rel=1e-3, abs=1e-4)


def test_guidance_labels_name_what_differs():
    settings = guidance_settings_from(
        [
            {"mode": "none"},
            {"mode": "cfg", "weight": 1.5},
            {"mode": "dcfg", "w_aff": 3},
            {"mode": "dcfg", "rule": "apg"},
        ],
        steps=5,
    )
    labels = [guidance_label(s) for s in settings]
    assert labels[:3] == ["none", "cfg w=1.5", "dcfg w_aff=3 w_inv=1"]
    assert labels[3].startswith("dcfg w_aff=2 w_inv=1 rule=apg")
