"""One rule for symbolic links under ``--dataset_dir``, in prepare, inference and evaluate/audit alike: a file
whose resolved path lies outside the folder (a link to a file, or a folder, outside) is a rejected row
``outside_dataset`` and is never read; links that stay inside are followed; a link loop is not searched twice.
The same export carries a decompression bomb, which every job refuses ``too_large`` and goes on."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medcf.core.guidance_settings import GuidanceSettings
from medcf.jobs.inference import InferenceRun
from medcf.jobs.inference_folder import input_fingerprint
from medcf.jobs.prepare import MANIFEST, PreparationRun
from medcf.measure.evaluation_set import load_evaluation_set
from medcf.phantoms.cxr import CXR_SCHEMA
from medcf.prepare import ChestPreparer
from medcf.prepare.cohort import CohortIndex
from medcf.prepare.inputs import discover_inputs
from tests.conftest import save_tiny_chest_model
from tests.dicom.bombs import write_rle_bomb

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "bundles" / "cxr_counterfactual" / "sample_data"
OUTSIDE = ("out_file.dcm", "out_dir")
INSIDE = ("in_file.dcm", "in_dir")


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> dict:
    """The bundle's sample chest export (8 frontal, 2 lateral) plus, under ``data``: ``out_file.dcm`` (a link to a
    frontal file outside), ``out_dir`` (a link to a folder outside holding one), ``in_file.dcm`` and ``in_dir`` (links
    to a frontal file and to a study folder inside), ``files/loop`` (a link to the folder above) and ``bomb.dcm``
    (an RLE file declaring 12000 x 12000 x 16 bit). Every one of them has a cohort row, so that only the rules
    refuse them."""
    root = tmp_path_factory.mktemp("links")
    data = root / "data"
    shutil.copytree(SAMPLE / "files", data / "files")
    files = sorted(p.relative_to(data).as_posix() for p in (data / "files").rglob("*.dcm"))
    cohort = pd.read_csv(SAMPLE / "cohort.csv", keep_default_na=False).set_index("path")  # the frontal files
    target = cohort.index[0]
    study = str(Path(target).parent)
    outside = root / "outside"
    (outside / "folder").mkdir(parents=True)
    shutil.copy(data / target, outside / "frontal.dcm")
    shutil.copy(data / target, outside / "folder" / "frontal.dcm")
    (data / "out_file.dcm").symlink_to(outside / "frontal.dcm")
    (data / "out_dir").symlink_to(outside / "folder", target_is_directory=True)
    (data / "in_file.dcm").symlink_to(Path(target))  # relative, inside
    (data / "in_dir").symlink_to(data / study, target_is_directory=True)  # absolute, inside
    (data / "files" / "loop").symlink_to("..", target_is_directory=True)
    write_rle_bomb(data / target, data / "bomb.dcm", 12000, 12000)
    linked = {f"in_dir/{Path(p).name}": p for p in files if str(Path(p).parent) == study}
    copies = {"out_file.dcm": target, "out_dir/frontal.dcm": target, "in_file.dcm": target, "bomb.dcm": target}
    copies.update({link: original for link, original in linked.items() if original in cohort.index})
    rows = pd.DataFrame([{**cohort.loc[original].to_dict(), "path": link} for link, original in copies.items()])
    labels = root / "cohort.csv"
    pd.concat([cohort.reset_index(), rows], ignore_index=True).to_csv(labels, index=False)
    return {"root": root, "data": data, "labels": labels, "outside": outside, "target": target, "files": files,
            "linked": linked, "frontal": set(cohort.index)}  # fmt: skip


def prepared_ok(export: dict) -> set[str]:
    """The sources every job prepares: the frontal files with cohort rows and the inside links to them."""
    linked = {link for link, original in export["linked"].items() if original in export["frontal"]}
    return export["frontal"] | linked | {"in_file.dcm"}


def assert_outside_rejected(reasons: dict[str, str], export: dict) -> None:
    """Both outside links are one rejected row each, ``outside_dataset: ...`` without any path."""
    for source in OUTSIDE:
        assert reasons[source].startswith("outside_dataset: "), (source, reasons[source])
        assert str(export["outside"]) not in reasons[source] and str(export["root"]) not in reasons[source]
        assert "frontal" not in reasons[source]
    assert reasons["bomb.dcm"].startswith("too_large: "), reasons["bomb.dcm"]
    assert "12000 x 12000" in reasons["bomb.dcm"]


def test_inputs_are_listed_through_links_inside_and_as_one_row_per_link_outside(export):
    """The lister follows inside links (the study folder under in_dir too), lists each outside link once and
    searches nothing outside, and does not search files/loop (a link to the folder above) again."""
    sources = discover_inputs(export["data"])
    assert sorted(sources) == sources
    assert set(sources) == {*export["files"], *OUTSIDE, "in_file.dcm", "bomb.dcm", *export["linked"]}
    assert not [s for s in sources if s.startswith(("out_dir/", "files/loop"))]


def test_prepare(export, tmp_path):
    """In prepare, the outside links and the bomb are rejected rows; the inside links are prepared exactly like
    their targets; every sample file keeps its outcome."""
    out = tmp_path / "out"
    summary = PreparationRun(export["data"], out, ChestPreparer(64), cohort=export["labels"], workers=1,
                             progress=False).run()  # fmt: skip
    manifest = pd.read_csv(out / MANIFEST, keep_default_na=False).set_index("source")
    assert summary["files"] == len(manifest) == len(discover_inputs(export["data"]))
    assert_outside_rejected(manifest["reason"].to_dict(), export)
    assert (manifest.loc[list(OUTSIDE), "status"] == "rejected").all()
    assert manifest.loc[list(OUTSIDE), "output"].tolist() == ["", ""]
    for source, original in {**export["linked"], "in_file.dcm": export["target"]}.items():
        assert manifest.loc[source, "status"] == manifest.loc[original, "status"]
        if manifest.loc[source, "status"] == "ok":
            np.testing.assert_array_equal(np.load(out / manifest.loc[source, "output"]),
                                          np.load(out / manifest.loc[original, "output"]))  # fmt: skip
    assert set(manifest.index[manifest["status"] == "ok"]) == prepared_ok(export)


def test_inference(export, tmp_path, monkeypatch):
    """In inference, the outside links and the bomb are rejected rows of the manifest, the inside link gets its
    counterfactual, and the job goes on."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        save_tiny_chest_model(tmp_path)
        out = tmp_path / "out"
        InferenceRun(export["data"], out, tmp_path / "model.pt", tmp_path / "graph.json", export["labels"],
                     ChestPreparer(32), ["do(sex=F)"], GuidanceSettings(steps=2), batch_size=8,
                     progress=False).run()  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    manifest = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    source_of = dict(pd.read_csv(out / "source_key.csv", dtype=str).values)
    reasons = {source_of[row.image]: row.reason for row in manifest.itertuples()}
    status = {source_of[row.image]: row.status for row in manifest.itertuples()}
    assert_outside_rejected(reasons, export)
    assert {source for source, value in status.items() if value == "ok"} == prepared_ok(export)


def test_inference_fingerprint_does_not_look_at_a_file_outside(tmp_path):
    """input_fingerprint of an outside link does not change when the file outside does (it is never looked at),
    while that of an inside file does."""
    data, outside = tmp_path / "data", tmp_path / "outside.dcm"
    data.mkdir()
    outside.write_bytes(b"\x00" * 100)
    (data / "inside.dcm").write_bytes(b"\x00" * 100)
    (data / "link.dcm").symlink_to(outside)
    labels = tmp_path / "cohort.csv"
    pd.DataFrame({"path": ["link.dcm", "inside.dcm"], "sex": ["F", "F"]}).to_csv(labels, index=False)
    index = CohortIndex.from_csv(labels)
    before = {name: input_fingerprint(data, name, index) for name in ("link.dcm", "inside.dcm")}
    outside.write_bytes(b"\x00" * 200)
    (data / "inside.dcm").write_bytes(b"\x00" * 200)
    after = {name: input_fingerprint(data, name, index) for name in ("link.dcm", "inside.dcm")}
    assert before["link.dcm"] == after["link.dcm"] and before["inside.dcm"] != after["inside.dcm"]


def test_evaluate_and_audit_evaluation_set(export):
    """load_evaluation_set (what evaluate and audit prepare their images with) lists the outside links and the
    bomb among the refused files and keeps the inside link."""
    images = load_evaluation_set(export["data"], export["labels"], ChestPreparer(32), CXR_SCHEMA)
    assert_outside_rejected(images.rejected, export)
    assert set(images.sources) == prepared_ok(export)
    position = images.sources.index("in_file.dcm")
    assert torch.equal(images.images[position], images.images[images.sources.index(export["target"])])
