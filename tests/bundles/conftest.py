"""The main job as a user types it: `python -m monai.bundle run --config_file .../inference.yaml --steps 5`, on
the bundle's own sample DICOMs and demo weights, tracked in a real MLflow store in the working directory. Every
other setting is the default; 5 DDIM steps instead of 50 keep the run to about half a minute on two CPU cores (the
structure of what it writes does not depend on the steps; `make demo` runs the full default). Each bundle has
its own test file (the suite's workers take whole files) and this conftest holds the one check both use."""

import functools
from pathlib import Path

import mlflow
import pandas as pd
import pydicom
import pytest
from monai.bundle import ConfigParser

from medcf.core.guidance_plan import CalibratedPlan
from medcf.radiograph.pixels import read_radiograph
from medcf.runtime.files import file_sha256
from tests.conftest import run_bundle

REPO = Path(__file__).resolve().parents[2]
BUNDLES = {"cxr_counterfactual": "counterfactuals_cxr", "mammo_counterfactual": "counterfactuals_mammo"}


def bundle_settings(bundle: str) -> dict:
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / "inference.yaml"))
    keys = ("interventions", "dataset_dir", "model_path", "guidance", "guidance_plan", "inference#experiment")
    return {key.split("#")[-1]: parser.get_parsed_content(key) for key in keys}


def load_schema(bundle: str):
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / "inference.yaml"))
    return parser.get_parsed_content("schema")


#: The one setting the suite changes from the defaults: DDIM steps (inference's default is 50). Five steps make
#: rough counterfactuals (the do() output of so coarse an inversion is far from its source) but the same files,
#: rows, DICOM tags and MLflow records as fifty, in half the time of ten.
STEPS = 5

#: Regression figures: per default intervention, the mean |counterfactual - do() output| over the sample images
#: made with the shipped weights and guidance plan at STEPS steps, one inversion refinement (measured 2026-12-07,
#: sixth session; at 10 steps they were 0.043 / 0.045 / 0.051 and 0.069 / 0.031: coarser steps, larger changes).
#: New weights, a new plan or another inversion change them: measure again.
MEAN_CHANGE = {
    "cxr_counterfactual": {"do(sex=F)": 0.120472, "do(age=+20)": 0.114623, "do(race=Black)": 0.12756},
    "mammo_counterfactual": {"do(density=D)": 0.103045, "do(age=+15)": 0.082078},
}


def check_inference_command(tmp_path: Path, bundle: str, dciodvfy_errors, chest_wall_right) -> None:
    """Run the bundle's inference.yaml with only ``--steps`` in ``tmp_path`` and check everything it leaves."""
    settings = bundle_settings(bundle)
    assert Path(settings["model_path"]).is_file(), f"{bundle} has no demo weights (models/model.pt)"
    plan = CalibratedPlan.load(settings["guidance_plan"], load_schema(bundle), file_sha256(settings["model_path"]))
    config = REPO / "bundles" / bundle / "configs" / "inference.yaml"
    result = run_bundle(config, tmp_path, tracking=False, steps=STEPS)  # MLflow where the job puts it by default
    assert result.returncode == 0, result.stderr[-3000:]

    out = tmp_path / BUNDLES[bundle]
    manifest = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    key = dict(pd.read_csv(out / "source_key.csv", dtype=str).values)
    manifest["source"] = manifest["image"].map(key)
    dataset_dir = Path(settings["dataset_dir"])
    sources = sorted(p.relative_to(dataset_dir).as_posix() for p in dataset_dir.rglob("*.dcm"))
    assert sorted(key.values()) == sources and sorted(set(manifest["source"])) == sources
    assert len(manifest) == len(sources) * len(settings["interventions"])
    assert set(manifest["status"]) <= {"ok", "rejected"}
    assert (manifest.loc[manifest["status"] == "rejected", "reason"] != "").all()
    made = manifest[manifest["status"] == "ok"]
    assert set(made["intervention"]) == set(settings["interventions"]), "every default intervention made something"
    change = made.assign(change=made["mean_abs_change"].astype(float)).groupby("intervention")["change"].mean()
    assert change.to_dict() == pytest.approx(MEAN_CHANGE[bundle], rel=1e-3), "the shipped weights' figures moved"

    studies, series = {}, {}
    for row in made.to_dict("records"):
        dataset = pydicom.dcmread(out / row["dicom"])
        assert dataset.SeriesDescription.startswith("SYNTHETIC COUNTERFACTUAL")
        assert row["intervention"] in dataset.DerivationDescription
        assert f"guidance calibrated (plan {plan.label})" in dataset.DerivationDescription
        assert dataset.ImageType[:2] == ["DERIVED", "SECONDARY"]
        source = pydicom.dcmread(dataset_dir / row["source"], stop_before_pixels=True)
        assert dataset.PatientID != source.PatientID and dataset.PatientIdentityRemoved == "YES"
        assert str(dataset.PatientName) != str(source.PatientName)
        assert source.SOPInstanceUID not in {r.ReferencedSOPInstanceUID for r in dataset.SourceImageSequence}
        assert (out / row["png"]).is_file() and (out / row["diff"]).is_file()
        assert float(row["mean_abs_change"]) > 0
        name, _, value = row["intervention"][3:-1].partition("=")
        if not value.startswith(("+", "-")):
            assert str(row[f"cf_{name}"]) == value, f"{row['image']}: counterfactual {name} is not {value}"
        studies.setdefault(source.StudyInstanceUID, set()).add((dataset.StudyInstanceUID, dataset.PatientID))
        series.setdefault((source.SeriesInstanceUID, row["intervention"]), set()).add(dataset.SeriesInstanceUID)
        assert dciodvfy_errors(out / row["dicom"]) == [], row["image"]
        if bundle == "mammo_counterfactual":
            counterfactual, _ = read_radiograph(out / row["dicom"])
            source_image, header = read_radiograph(dataset_dir / row["source"])
            assert chest_wall_right(counterfactual) == chest_wall_right(source_image), "mirrored against its source"
            assert dataset.ImageLaterality == header.laterality and "Laterality" not in dataset
            assert list(dataset.PatientOrientation) == list(source.PatientOrientation)
    assert all(len(v) == 1 for v in studies.values()), "one counterfactual study (and patient) per source study"
    assert len({uid for v in studies.values() for uid, _ in v}) == len(studies)
    assert all(len(v) == 1 for v in series.values()), "one series per (source series, intervention)"
    assert len({uid for v in series.values() for uid in v}) == len(series)

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(settings["experiment"])
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["guidance.mode"] == settings["guidance"] == "calibrated"
    assert run.data.params["guidance.plan"] == plan.label
    assert run.data.params["guidance.steps"] == str(STEPS)
    assert run.data.params["model_sha256"] == file_sha256(settings["model_path"])
    assert all(text in run.data.params["interventions"] for text in settings["interventions"])
    assert run.data.metrics["counterfactuals"] == len(made)
    assert run.data.metrics["seconds_per_counterfactual"] > 0
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    grids = [a.path for a in client.list_artifacts(run.info.run_id, "grids")]
    assert "manifest.csv" in artifacts
    tracked = Path(client.download_artifacts(run.info.run_id, "manifest.csv", str(tmp_path))).read_text()
    assert not any(source in tracked for source in sources), "MLflow gets pseudonyms, not source paths"
    assert "source_key.csv" not in artifacts and "pseudonym.key" not in artifacts
    assert grids and all(g.endswith(".png") for g in grids)


@pytest.fixture
def inference_command_check(dciodvfy_errors, chest_wall_right):
    """``check(tmp_path, bundle)``: run a bundle's inference command (only --steps set) and check its outputs."""
    return functools.partial(
        check_inference_command, dciodvfy_errors=dciodvfy_errors, chest_wall_right=chest_wall_right
    )
