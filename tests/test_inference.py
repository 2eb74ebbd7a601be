"""The counterfactual inference job on a tiny model: outputs, manifest, MLflow, re-runs and bad settings."""

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch

from medcf.attributes import SchemaError
from medcf.causal import CausalGraph
from medcf.counterfactual import GuidanceSettings
from medcf.diffusion import DiffusionConfig
from medcf.inference import InferenceRun, output_folder, slug
from medcf.interventions import InterventionError, parse_intervention
from medcf.model import CounterfactualUNet, ModelConfig, save_checkpoint
from medcf.phantoms import write_phantom_dataset
from medcf.phantoms.cxr import CXR_SCHEMA, ChestXRayPhantom
from medcf.phantoms.mammo import MAMMO_SCHEMA
from medcf.prepare import ChestPreparer

TINY = ModelConfig(channels=(32, 64), attention_levels=(False, False), num_head_channels=8, block_dim=8, hidden_dim=16)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference")
    data = write_phantom_dataset("cxr", root / "data", 4, 64, seed=9, workers=1, progress=False)
    cohort = root / "cohort.csv"
    subprocess.run(
        [sys.executable, "-m", "data_prep.mimic_cxr", "--root", str(data), "--out", str(cohort)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    torch.manual_seed(0)
    model = CounterfactualUNet(CXR_SCHEMA, TINY)
    save_checkpoint(root / "model.pt", model, DiffusionConfig().to_dict(), image_size=[32, 32])
    table = pd.DataFrame([s.attributes for s in ChestXRayPhantom().sample(1000, np.random.default_rng(0))])
    CausalGraph.fit(CXR_SCHEMA, table).save(root / "graph.json")
    return root, data, cohort


def run(
    setup, out, interventions=("do(sex=F)", "do(age=+10)"), size=32, cohort=None, keep_identifiers=False, **settings
):
    root, data, default_cohort = setup
    return InferenceRun(
        data,
        out,
        root / "model.pt",
        root / "graph.json",
        cohort or default_cohort,
        ChestPreparer(size),
        list(interventions),
        GuidanceSettings(steps=4, **settings),
        keep_identifiers=keep_identifiers,
        batch_size=2,
        progress=False,
    ).run()


@pytest.fixture(autouse=True)
def isolated_mlflow(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_outputs_manifest_and_mlflow(setup, tmp_path):
    """One row per (input, intervention); ok rows have a valid derived DICOM, previews; MLflow holds the run."""
    root, data, cohort = setup
    metrics = run(setup, tmp_path / "out")
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv", keep_default_na=False)
    inputs = [p for p in data.rglob("*.dcm")]
    assert len(manifest) == 2 * len(inputs)
    ok = manifest[manifest["status"] == "ok"]
    assert len(ok) == 2 * len(pd.read_csv(cohort)) and metrics["counterfactuals"] == len(ok)
    assert set(manifest.loc[manifest["status"] != "ok", "reason"]) <= {
        "view LL is not frontal (AP/PA)",
        "not in the cohort table (no row with this path relative to dataset_dir)",
    }
    for row in ok.itertuples():
        ds = pydicom.dcmread(tmp_path / "out" / row.dicom)
        assert (
            ds.SeriesDescription.startswith("SYNTHETIC COUNTERFACTUAL") and row.intervention in ds.DerivationDescription
        )
        assert (tmp_path / "out" / row.png).is_file() and (tmp_path / "out" / row.diff).is_file()
    sex = ok[ok["intervention"] == "do(sex=F)"]
    assert (sex["cf_sex"] == "F").all() and (sex["affected"] == "sex").all()
    older = ok[ok["intervention"] == "do(age=+10)"]
    assert set(older["affected"]) == {"age,disease"}
    client = mlflow.MlflowClient()
    (found,) = client.search_runs([client.get_experiment_by_name("medcf-inference").experiment_id])
    assert found.data.params["guidance.mode"] == "dcfg" and len(found.data.params["model_sha256"]) == 64
    assert found.data.metrics["network_evaluations_per_counterfactual"] > 0
    assert [a.path for a in client.list_artifacts(found.info.run_id, "grids")]


def test_rerun_skips_finished_rows_and_redoes_missing_files(setup, tmp_path):
    """A second run changes nothing that is finished; a deleted output is produced again."""
    run(setup, tmp_path / "out")
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv", keep_default_na=False)
    ok = manifest[manifest["status"] == "ok"]
    kept, removed = tmp_path / "out" / ok["dicom"].iloc[0], tmp_path / "out" / ok["dicom"].iloc[1]
    stamp = kept.stat().st_mtime_ns
    removed.unlink()
    run(setup, tmp_path / "out")
    assert kept.stat().st_mtime_ns == stamp and removed.is_file()
    again = pd.read_csv(tmp_path / "out" / "manifest.csv", keep_default_na=False)
    pd.testing.assert_frame_equal(
        again[["source", "intervention", "status"]], manifest[["source", "intervention", "status"]]
    )


def test_rerun_tries_rejected_rows_again(setup, tmp_path):
    """A file rejected for missing labels is made on the next run once the labels are there."""
    root, data, cohort = setup
    table = pd.read_csv(cohort)
    partial = tmp_path / "partial.csv"
    table.iloc[1:].to_csv(partial, index=False)
    arguments = (data, tmp_path / "out", root / "model.pt", root / "graph.json")
    settings = dict(guidance=GuidanceSettings(steps=2), batch_size=2, progress=False)
    InferenceRun(*arguments, partial, ChestPreparer(32), ["do(sex=F)"], **settings).run()
    first = pd.read_csv(tmp_path / "out" / "manifest.csv", keep_default_na=False).set_index("source")
    missing = table["path"].iloc[0]
    assert first.loc[missing, "status"] == "rejected" and "not in the cohort" in first.loc[missing, "reason"]
    InferenceRun(*arguments, cohort, ChestPreparer(32), ["do(sex=F)"], **settings).run()
    second = pd.read_csv(tmp_path / "out" / "manifest.csv", keep_default_na=False).set_index("source")
    assert second.loc[missing, "status"] == "ok" and (tmp_path / "out" / second.loc[missing, "dicom"]).is_file()
    assert (second["status"] == "ok").sum() == (first["status"] == "ok").sum() + 1


def test_rerun_with_other_settings_makes_the_rows_again(setup, tmp_path):
    """Rows made with other guidance are not skipped: the new run rewrites them with its own settings."""
    run(setup, tmp_path / "out", interventions=("do(sex=F)",))
    first = pd.read_csv(tmp_path / "out" / "manifest.csv", keep_default_na=False)
    run(setup, tmp_path / "out", interventions=("do(sex=F)",), mode="cfg", weight=3.0)
    second = pd.read_csv(tmp_path / "out" / "manifest.csv", keep_default_na=False)
    assert len(second) == len(first) and set(second["settings"]).isdisjoint(first["settings"])
    for row in second[second["status"] == "ok"].itertuples():
        assert (
            "guidance cfg: age+sex+race+disease w=3"
            in pydicom.dcmread(tmp_path / "out" / row.dicom).DerivationDescription
        )


def test_a_bad_label_is_a_rejected_row_and_the_run_goes_on(setup, tmp_path):
    root, data, cohort = setup
    table = pd.read_csv(cohort)
    table.loc[0, "race"] = "Purple"
    broken = tmp_path / "broken.csv"
    table.to_csv(broken, index=False)
    run(setup, tmp_path / "out", interventions=("do(sex=F)",), cohort=broken)
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv", keep_default_na=False).set_index("source")
    reason = manifest.loc[table["path"][0], "reason"]
    assert manifest.loc[table["path"][0], "status"] == "rejected" and "race" in reason and "Purple" in reason
    assert (manifest["status"] == "ok").sum() == len(table) - 1


def test_a_killed_run_keeps_the_rows_of_finished_batches(setup, tmp_path, monkeypatch):
    decode = InferenceRun._decode_batch
    calls = []

    def failing_second_batch(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return decode(self, *args)

    monkeypatch.setattr(InferenceRun, "_decode_batch", failing_second_batch)
    with pytest.raises(KeyboardInterrupt):
        run(setup, tmp_path / "out", interventions=("do(sex=F)",))
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv", keep_default_na=False)
    made = manifest[manifest["status"] == "ok"]
    assert len(made) == 2 and all((tmp_path / "out" / d).is_file() for d in made["dicom"])


def test_outputs_and_tracking_do_not_show_source_paths_unless_identifiers_are_kept(setup, tmp_path):
    """Source paths (which hold patient IDs in real layouts) stay out of output names, grids and MLflow."""
    root, data, cohort = setup
    run(setup, tmp_path / "out", interventions=("do(sex=F)",))
    patients = {part for p in data.rglob("*.dcm") for part in p.relative_to(data).parts[:-1]}
    written = [p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert written and not any(patient in name for name in written for patient in patients)
    client = mlflow.MlflowClient()
    (found,) = client.search_runs([client.get_experiment_by_name("medcf-inference").experiment_id])
    tracked = Path(client.download_artifacts(found.info.run_id, "manifest.csv", str(tmp_path))).read_text()
    assert not any(patient in tracked for patient in patients)
    run(setup, tmp_path / "kept", interventions=("do(sex=F)",), keep_identifiers=True)
    kept = [p.relative_to(tmp_path / "kept").as_posix() for p in (tmp_path / "kept").rglob("*.dcm")]
    assert any(patient in name for name in kept for patient in patients)


def test_output_folders_keep_uid_named_files_apart():
    assert output_folder("p1/s2/1.2.840.55.3", keep_identifiers=True) == "p1/s2/1.2.840.55.3"
    assert output_folder("p1/s2/image.dcm", keep_identifiers=True) == "p1/s2/image"
    assert output_folder("p1/1.2.3", keep_identifiers=False) != output_folder("p1/1.2.4", keep_identifiers=False)
    assert output_folder("p1/1.2.3", keep_identifiers=False).startswith("img-")


def test_bad_settings_fail_clearly(setup, tmp_path):
    """An image size other than the model's, or an unknown attribute, stops with a clear message."""
    with pytest.raises(ValueError, match="prepared images are 64x64, the model was trained at 32x32"):
        run(setup, tmp_path / "a", size=64)
    with pytest.raises(InterventionError, match="unknown attribute 'colour'"):
        run(setup, tmp_path / "b", interventions=("do(colour=red)",))
    with pytest.raises(ValueError, match=r"interventions: do\(sex=F\) given more than once"):
        run(setup, tmp_path / "c", interventions=("do(sex=F)", "do( sex = F )"))
    root, data, cohort = setup
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="dataset_dir: no input files under"):
        InferenceRun(empty, tmp_path / "d", root / "model.pt", root / "graph.json", cohort, ChestPreparer(32), []).run()


def test_a_model_for_other_attributes_or_channels_is_refused(setup, tmp_path):
    """The bundle's attribute schema must be the model's; the model must take the prepared channels."""
    root, data, cohort = setup
    arguments = (data, tmp_path / "out", root / "model.pt", root / "graph.json", cohort, ChestPreparer(32))
    with pytest.raises(SchemaError, match="trained for attributes age.*expects age.*density"):
        InferenceRun(*arguments, ["do(sex=F)"], GuidanceSettings(steps=2), schema=MAMMO_SCHEMA, progress=False).run()
    two_channels = CounterfactualUNet(CXR_SCHEMA, replace(TINY, in_channels=2))
    save_checkpoint(tmp_path / "rgb.pt", two_channels, DiffusionConfig().to_dict(), image_size=[32, 32])
    arguments = (data, tmp_path / "out", tmp_path / "rgb.pt", root / "graph.json", cohort, ChestPreparer(32))
    with pytest.raises(ValueError, match=r"prepared images have 1 channel\(s\); the model takes 2"):
        InferenceRun(*arguments, ["do(sex=F)"], GuidanceSettings(steps=2), progress=False).run()


def test_inference_bundles_declare_the_attributes_of_their_training_bundles():
    """inference.yaml repeats train.yaml's attributes (the check above relies on them being the same)."""
    from monai.bundle import ConfigParser

    for bundle in ("cxr_counterfactual", "mammo_counterfactual"):
        declared = []
        for name in ("train.yaml", "inference.yaml"):
            parser = ConfigParser()
            parser.read_config(str(REPO / "bundles" / bundle / "configs" / name))
            declared.append(parser.get_parsed_content("schema").to_config())
        assert declared[0] == declared[1], bundle


def test_slugs_are_file_names():
    """Interventions map to short, safe, distinct file names."""
    names = [
        slug(parse_intervention(CXR_SCHEMA, t))
        for t in ("do(sex=F)", "do(age=+20, race=Black)", "do(disease=Pleural Effusion)", "do()")
    ]
    assert names == ["sex-F", "age-+20_race-Black", "disease-PleuralEffusion", "null"]
    assert all("/" not in n and " " not in n for n in names)
