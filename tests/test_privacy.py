"""No identifier of a real DICOM reaches the outputs, the log or MLflow by default.

The input is pydicom's NEMA WG04 chest CR (RG1_UNCR: patient name, ID, birth date, accession number,
institution and UIDs in its header), filed inside folders named after the patient and the study as exports
often are, next to a file the job rejects (pydicom's CT_small, another named patient). The main job runs as a
user types it; then every output file (except the one link back, source_key.csv), the job's log and the whole
MLflow store are searched for each identifier."""

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import torch
from pydicom.data import get_testdata_file

from medcf.core.causal import CausalGraph
from medcf.core.diffusion import DiffusionConfig
from medcf.core.network import CounterfactualUNet, ModelConfig, save_checkpoint
from medcf.phantoms.cxr import CXR_SCHEMA, ChestXRayPhantom
from tests.conftest import run_bundle

REPO = Path(__file__).resolve().parents[1]
TINY = ModelConfig(channels=(32, 64), attention_levels=(False, False), num_head_channels=8, block_dim=8, hidden_dim=16)
IDENTIFYING = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "AccessionNumber",
    "InstitutionName",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
)


def file_in_patient_folders(dataset: Path, name: str) -> tuple[str, set[str]]:
    """Copy a pydicom test file into <patient name>_<ID>/<study UID>/; its relative path and identifiers."""
    original = get_testdata_file(name)
    ds = pydicom.dcmread(original, stop_before_pixels=True)
    values = {str(ds.get(k)) for k in IDENTIFYING if ds.get(k)}
    patient_folder = f"{str(ds.PatientName).replace('^', '_')}_{ds.PatientID}"
    relative = f"{patient_folder}/{ds.StudyInstanceUID}/{name}"
    (dataset / relative).parent.mkdir(parents=True)
    (dataset / relative).write_bytes(Path(original).read_bytes())
    return relative, values | {str(ds.PatientName).split("^")[0], patient_folder, Path(name).stem}


def test_no_identifier_reaches_outputs_log_or_mlflow(tmp_path):
    dataset, work, out = tmp_path / "dataset", tmp_path / "work", tmp_path / "out"
    work.mkdir()
    chest, identifiers = file_in_patient_folders(dataset, "RG1_UNCR.dcm")
    rejected, more = file_in_patient_folders(dataset, "CT_small.dcm")
    identifiers |= more
    cohort = tmp_path / "cohort.csv"
    labels = {"age": 64.0, "sex": "F", "race": "White", "disease": "No Finding", "view": "PA"}
    pd.DataFrame([{"path": chest, **labels}, {"path": rejected, **labels}]).to_csv(cohort, index=False)
    torch.manual_seed(0)
    save_checkpoint(
        tmp_path / "model.pt", CounterfactualUNet(CXR_SCHEMA, TINY), DiffusionConfig().to_dict(), image_size=[32, 32]
    )
    population = pd.DataFrame([s.attributes for s in ChestXRayPhantom().sample(500, np.random.default_rng(0))])
    CausalGraph.fit(CXR_SCHEMA, population).save(tmp_path / "graph.json")

    config = REPO / "bundles" / "cxr_counterfactual" / "configs" / "inference.yaml"
    arguments = {
        "--dataset_dir": dataset,
        "--labels": cohort,
        "--output_dir": out,
        "--model_path": tmp_path / "model.pt",
        "--graph_path": tmp_path / "graph.json",
        "--image_size": 32,
        "--steps": 3,
        "--guidance": "dcfg",
        "--interventions": "['do(sex=M)','do(age=+10)']",
    }
    result = run_bundle(config, work, *[str(part) for pair in arguments.items() for part in pair], tracking=False)
    assert result.returncode == 0, result.stderr[-3000:]

    manifest = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    assert (manifest["status"] == "ok").sum() == 2 and (manifest["status"] == "rejected").sum() == 2
    key = (out / "source_key.csv").read_text()
    assert chest in key and rejected in key, "the one link back lists every input, rejected ones too"
    assert identifiers >= {"CompressedSamples", "9RG1", "19400305", "1CT1"}

    searched = {f"output {p.relative_to(out)}": p.read_bytes() for p in out.rglob("*") if p.is_file()}
    searched.pop("output source_key.csv")
    searched["log"] = (result.stdout + result.stderr).encode()
    searched |= {f"MLflow {p.relative_to(work)}": p.read_bytes() for p in work.rglob("*") if p.is_file()}
    assert any(name.startswith("MLflow mlflow.db") for name in searched) and any(".dcm" in n for n in searched)
    leaks = [(where, value) for where, data in searched.items() for value in identifiers if value.encode() in data]
    assert leaks == []
