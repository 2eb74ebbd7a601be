"""The counterfactual inference job on a tiny model: outputs, manifest, MLflow, re-runs, kills and bad settings."""

import threading
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from PIL import Image

import medcf.jobs.inference
from medcf.core.attributes import SchemaError
from medcf.core.diffusion import DiffusionConfig
from medcf.core.guidance_settings import GuidanceSettings
from medcf.core.interventions import InterventionError, parse_intervention
from medcf.core.network import CounterfactualUNet, ModelConfig, load_checkpoint, save_checkpoint
from medcf.jobs.inference import InferenceRun
from medcf.outputs.background import BackgroundWriter
from medcf.outputs.grids import CELL_TEXT_LINES, CELL_TEXT_WIDTH, counterfactual_figure, counterfactual_grid
from medcf.outputs.writers import CounterfactualWriter, output_folder, slug
from medcf.phantoms.cxr import CXR_SCHEMA
from medcf.phantoms.mammo import MAMMO_SCHEMA
from medcf.prepare import ChestPreparer
from medcf.runtime.tracking import RUN_MARKER
from tests.conftest import chest_export_with_cohort, save_tiny_chest_model

TINY = ModelConfig(channels=(32, 64), attention_levels=(False, False), num_head_channels=8, block_dim=8, hidden_dim=16)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference")
    data, cohort = chest_export_with_cohort(root, 4, seed=9)
    save_tiny_chest_model(root)
    return root, data, cohort


def job(setup, out, interventions=("do(sex=F)", "do(age=+10)"), size=32, cohort=None, **options) -> InferenceRun:
    root, data, default_cohort = setup
    settings = {k: options.pop(k) for k in list(options) if k in GuidanceSettings.__dataclass_fields__}
    return InferenceRun(
        options.pop("dataset_dir", data),
        out,
        options.pop("model_path", root / "model.pt"),
        root / "graph.json",
        cohort or default_cohort,
        ChestPreparer(size),
        interventions if isinstance(interventions, str) else list(interventions),
        GuidanceSettings(**{"steps": 4, **settings}),
        batch_size=options.pop("batch_size", 2),
        progress=False,
        **options,
    )


def run(setup, out, **options):
    return job(setup, out, **options).run()


def read_manifest(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "manifest.csv", keep_default_na=False)


def sources_of(out: Path) -> dict[str, str]:
    """image pseudonym -> source path, from OUT/source_key.csv."""
    return dict(pd.read_csv(out / "source_key.csv", dtype=str).values)


def only_run(experiment: str):
    client = mlflow.MlflowClient()
    (found,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return client, found


@pytest.fixture(autouse=True)
def isolated_mlflow(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_outputs_manifest_source_key_and_mlflow(setup, tmp_path):
    """One row per (input, intervention) named by pseudonym; source_key.csv is the only link to the sources;
    ok rows have a derived DICOM and previews; MLflow holds the run and never the key."""
    root, data, cohort = setup
    metrics = run(setup, tmp_path / "out")
    out = tmp_path / "out"
    manifest = read_manifest(out)
    inputs = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.dcm"))
    key = sources_of(out)
    assert sorted(key.values()) == inputs, "every input is listed, rejected ones too"
    assert set(manifest["image"]) == set(key) and "source" not in manifest.columns
    assert len(manifest) == 2 * len(inputs)
    ok = manifest[manifest["status"] == "ok"]
    assert len(ok) == 2 * len(pd.read_csv(cohort)) and metrics["counterfactuals"] == len(ok)
    assert set(manifest.loc[manifest["status"] != "ok", "reason"]) <= {
        "view LL is not frontal (AP/PA)",
        "not in the cohort table (no row with this path relative to dataset_dir)",
    }
    for row in ok.itertuples():
        ds = pydicom.dcmread(out / row.dicom)
        assert (
            ds.SeriesDescription.startswith("SYNTHETIC COUNTERFACTUAL") and row.intervention in ds.DerivationDescription
        )
        assert row.dicom.startswith(f"{row.image}/") and (out / row.png).is_file() and (out / row.diff).is_file()
    sex = ok[ok["intervention"] == "do(sex=F)"]
    assert (sex["cf_sex"] == "F").all() and (sex["affected"] == "sex").all()
    assert set(ok.loc[ok["intervention"] == "do(age=+10)", "affected"]) == {"age,disease"}
    client, found = only_run("medcf-inference")
    assert found.info.status == "FINISHED" and found.data.params["guidance.mode"] == "dcfg"
    assert len(found.data.params["model_sha256"]) == 64
    # per counterfactual: 4 DCFG decoding steps of 3 rows (affected, invariant, null) + its half of the 4 inversion
    # steps the image's two interventions share
    assert found.data.metrics["network_evaluations_per_counterfactual"] == 4 * 3 + 4 / 2
    assert [a.path for a in client.list_artifacts(found.info.run_id, "grids")]
    assert "source_key.csv" not in [a.path for a in client.list_artifacts(found.info.run_id)]
    assert not (out / RUN_MARKER).exists()
    assert (out / "source_key.csv").stat().st_mode & 0o777 == 0o600, "the link back is readable by its owner only"


def test_preparing_in_worker_processes_writes_what_one_process_writes(setup, tmp_path):
    """workers > 0 (the default on a GPU machine): DataLoader workers read and prepare the DICOM files; the rows,
    their order of statuses and the counterfactual pixels are those of a run that prepares in the main process."""
    run(setup, tmp_path / "main", workers=0)
    run(setup, tmp_path / "workers", workers=2, pseudonym_key=tmp_path / "main" / "pseudonym.key")
    main, workers = read_manifest(tmp_path / "main"), read_manifest(tmp_path / "workers")
    key = ["image", "intervention"]
    main, workers = main.sort_values(key).reset_index(drop=True), workers.sort_values(key).reset_index(drop=True)
    assert (main["status"] == "ok").sum() >= 4
    pd.testing.assert_frame_equal(
        main.drop(columns=["seconds"], errors="ignore"), workers.drop(columns=["seconds"], errors="ignore")
    )
    for dicom in main.loc[main["status"] == "ok", "dicom"]:
        assert (
            pydicom.dcmread(tmp_path / "main" / dicom).pixel_array
            == pydicom.dcmread(tmp_path / "workers" / dicom).pixel_array
        ).all(), dicom


def test_writing_in_the_background_thread_writes_what_writing_in_line_writes(setup, tmp_path, monkeypatch):
    """On a GPU the writing runs in a background thread while the next batch decodes; forced here on the CPU, with
    batches of one image so that several batches are pending, the rows, grids and pixels are those written in line."""
    import medcf.jobs.inference as inference

    threads = set()

    class Threaded(BackgroundWriter):
        def __init__(self, depth: int = 2, background: bool = False) -> None:
            super().__init__(depth, background=True)

        def submit(self, task, *args):
            super().submit(lambda: (threads.add(threading.current_thread().name), task(*args)))

    run(setup, tmp_path / "inline", batch_size=1)
    monkeypatch.setattr(inference, "BackgroundWriter", Threaded)
    run(setup, tmp_path / "threaded", batch_size=1, pseudonym_key=tmp_path / "inline" / "pseudonym.key")
    assert threads and threading.current_thread().name not in threads
    inline, threaded = read_manifest(tmp_path / "inline"), read_manifest(tmp_path / "threaded")
    assert (inline["status"] == "ok").sum() >= 4
    pd.testing.assert_frame_equal(inline, threaded)
    for dicom in inline.loc[inline["status"] == "ok", "dicom"]:
        assert (
            pydicom.dcmread(tmp_path / "inline" / dicom).pixel_array
            == pydicom.dcmread(tmp_path / "threaded" / dicom).pixel_array
        ).all(), dicom
    grids = [sorted(p.name for p in (tmp_path / folder / "grids").rglob("*.png")) for folder in ("inline", "threaded")]
    assert grids[0] == grids[1] and len(grids[0]) >= 2


def test_a_batch_grid_shows_its_first_images_and_every_image_is_written(setup, tmp_path, monkeypatch):
    """A GPU-sized batch draws only GRID_ROWS rows in its preview grid (matplotlib is slow), never fewer files."""
    monkeypatch.setattr(medcf.jobs.inference, "GRID_ROWS", 2)
    run(setup, tmp_path / "out", batch_size=8)
    manifest = read_manifest(tmp_path / "out")
    ok = manifest[manifest["status"] == "ok"]
    assert ok["image"].nunique() > 2 and all((tmp_path / "out" / d).is_file() for d in ok["dicom"])
    (grid,) = (tmp_path / "out" / "grids").rglob("*.png")
    assert Image.open(grid).height == round((1.7 * 2 + 0.3) * 110), "two rows, as a figure of two rows is tall"


def test_rerun_skips_finished_rows_and_redoes_missing_files(setup, tmp_path):
    """A second run changes nothing that is finished and gives the same UIDs; a deleted output is made again."""
    out = tmp_path / "out"
    run(setup, out)
    manifest = read_manifest(out)
    ok = manifest[manifest["status"] == "ok"]
    kept, removed = out / ok["dicom"].iloc[0], out / ok["dicom"].iloc[1]
    stamp, uids = kept.stat().st_mtime_ns, pydicom.dcmread(removed).SOPInstanceUID
    removed.unlink()
    run(setup, out)
    assert kept.stat().st_mtime_ns == stamp and removed.is_file()
    assert pydicom.dcmread(removed).SOPInstanceUID == uids, "re-runs derive the same UIDs"
    pd.testing.assert_frame_equal(
        read_manifest(out)[["image", "intervention", "status"]], manifest[["image", "intervention", "status"]]
    )


def test_rerun_tries_rejected_rows_again(setup, tmp_path):
    """A file rejected for missing labels is made on the next run once the labels are there."""
    root, data, cohort = setup
    table = pd.read_csv(cohort)
    partial = tmp_path / "partial.csv"
    table.iloc[1:].to_csv(partial, index=False)
    out = tmp_path / "out"
    run(setup, out, interventions=("do(sex=F)",), cohort=partial, steps=2)
    image = {source: image for image, source in sources_of(out).items()}[table["path"].iloc[0]]
    first = read_manifest(out).set_index("image")
    assert first.loc[image, "status"] == "rejected" and "not in the cohort" in first.loc[image, "reason"]
    run(setup, out, interventions=("do(sex=F)",), steps=2)
    second = read_manifest(out).set_index("image")
    assert second.loc[image, "status"] == "ok" and (out / second.loc[image, "dicom"]).is_file()
    assert (second["status"] == "ok").sum() == (first["status"] == "ok").sum() + 1


def test_rerun_with_other_settings_makes_the_rows_again(setup, tmp_path):
    """Rows made with other guidance are not skipped: the new run rewrites them, with new UIDs."""
    out = tmp_path / "out"
    run(setup, out, interventions=("do(sex=F)",))
    first = read_manifest(out)
    made = first[first["status"] == "ok"]
    uid = pydicom.dcmread(out / made["dicom"].iloc[0]).SOPInstanceUID
    run(setup, out, interventions=("do(sex=F)",), mode="cfg", weight=3.0)
    second = read_manifest(out)
    assert len(second) == len(first) and set(second["settings"]).isdisjoint(first["settings"])
    for row in second[second["status"] == "ok"].itertuples():
        assert "guidance cfg: age+sex+race+disease w=3" in pydicom.dcmread(out / row.dicom).DerivationDescription
    assert pydicom.dcmread(out / made["dicom"].iloc[0]).SOPInstanceUID != uid, "another image, another UID"


def test_a_bad_label_is_a_rejected_row_and_the_run_goes_on(setup, tmp_path):
    root, data, cohort = setup
    table = pd.read_csv(cohort)
    table.loc[0, "race"] = "Purple"
    broken = tmp_path / "broken.csv"
    table.to_csv(broken, index=False)
    out = tmp_path / "out"
    run(setup, out, interventions=("do(sex=F)",), cohort=broken)
    image = {source: image for image, source in sources_of(out).items()}[table["path"][0]]
    manifest = read_manifest(out).set_index("image")
    reason = manifest.loc[image, "reason"]
    assert manifest.loc[image, "status"] == "rejected" and "race" in reason and "Purple" in reason
    assert (manifest["status"] == "ok").sum() == len(table) - 1


def test_a_shift_past_the_range_rejects_that_image_only(setup, tmp_path):
    """do(age=+60) cannot apply to an image of a 50-year-old (95 is the top): that row is rejected with the reason.
    (One string is one intervention, as a user types --interventions 'do(age=+60)'.)"""
    out = tmp_path / "out"
    run(setup, out, interventions="do(age=+60)", steps=2)
    manifest = read_manifest(out)
    rejected = manifest[manifest["reason"].str.contains("is outside")]
    assert len(rejected) and rejected["reason"].str.startswith("do(age=+60): age").all()


def test_a_grid_cell_that_was_not_made_shows_why():
    """A cell given as text prints it, wrapped to the cell; None stays blank; images are drawn."""
    image = np.full((8, 8), 0.5)
    reason = "not made: age 80 +20 = 100 is outside [18, 95]"
    long = "not made: " + "a reason far too long for one cell " * 10
    figure = counterfactual_figure(
        [image, image], {"do(age=+20)": [image, reason], "do(sex=F)": [None, long]}, ["one", "two"]
    )
    axes = np.array(figure.axes).reshape(2, 5)
    texts = [[[t.get_text() for t in ax.texts] for ax in row] for row in axes]
    images = [[len(ax.images) for ax in row] for row in axes]
    plt.close(figure)
    assert images == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]
    (shown,) = texts[1][1]
    assert shown.replace("\n", " ") == reason and all(len(line) <= CELL_TEXT_WIDTH for line in shown.split("\n"))
    (cut,) = texts[1][3]
    assert len(cut.split("\n")) == CELL_TEXT_LINES and cut.endswith("...")
    assert texts[0][3] == [] and texts[1][2] == [] and texts[1][4] == [], "blank and difference cells hold no text"


def test_the_grid_shows_the_manifests_reason_where_a_shift_is_past_the_range(setup, tmp_path, monkeypatch):
    """do(age=+30) is past 95 for the 66- and 67-year-olds: their cells print the manifest's reason (without the
    intervention, the column's title); the 64- and 58-year-olds' are drawn."""
    grids = []

    def recording(factual, counterfactuals, path, row_labels=None):
        grids.append(counterfactuals)
        return counterfactual_grid(factual, counterfactuals, path, row_labels)

    monkeypatch.setattr(medcf.jobs.inference, "counterfactual_grid", recording)
    out = tmp_path / "out"
    run(setup, out, interventions=("do(sex=F)", "do(age=+30)"), steps=2, batch_size=8)
    manifest = read_manifest(out)
    rejected = manifest.loc[manifest["reason"].str.contains("is outside"), "reason"]
    (grid,) = grids
    cells = grid["do(age=+30)"]
    texts = sorted(cell for cell in cells if isinstance(cell, str))
    assert texts == sorted("not made: " + r.removeprefix("do(age=+30): ") for r in rejected)
    assert texts == ["not made: age 66 +30 = 96 is outside [18, 95]", "not made: age 67 +30 = 97 is outside [18, 95]"]
    assert sum(isinstance(cell, np.ndarray) for cell in cells) == 2
    assert all(isinstance(cell, np.ndarray) for cell in grid["do(sex=F)"])


def test_a_kill_keeps_every_row_whose_files_are_written(setup, tmp_path, monkeypatch):
    """Interrupted while writing the first batch's second image: the first image's rows are in the manifest
    and its files exist; the MLflow run says KILLED; the next run finishes the rest and skips the first."""
    write = CounterfactualWriter.write
    calls = []

    def interrupted_on_the_second_image(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return write(self, *args)

    monkeypatch.setattr(CounterfactualWriter, "write", interrupted_on_the_second_image)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run(setup, out, interventions=("do(sex=F)",), batch_size=4)
    made = read_manifest(out).query("status == 'ok'")
    assert len(made) == 1 and (out / made["dicom"].iloc[0]).is_file()
    _, killed = only_run("medcf-inference")
    assert killed.info.status == "KILLED"
    monkeypatch.setattr(CounterfactualWriter, "write", write)
    stamp = (out / made["dicom"].iloc[0]).stat().st_mtime_ns
    run(setup, out, interventions=("do(sex=F)",), batch_size=4)
    assert (out / made["dicom"].iloc[0]).stat().st_mtime_ns == stamp
    assert (read_manifest(out)["status"] == "ok").sum() == len(pd.read_csv(setup[2]))


def test_the_mlflow_run_of_a_killed_job_is_closed_at_the_next_start(setup, tmp_path):
    """A job killed outright (no chance to end its run) leaves its run RUNNING; the next start marks it KILLED."""
    out = tmp_path / "out"
    out.mkdir()
    mlflow.set_experiment("medcf-inference")
    with mlflow.start_run() as left_running:
        pass
    client = mlflow.MlflowClient()
    client.update_run(left_running.info.run_id, "RUNNING")
    uri = mlflow.get_tracking_uri()
    (out / RUN_MARKER).write_text(f'{{"run_id": "{left_running.info.run_id}", "tracking_uri": "{uri}"}}')
    run(setup, out, interventions=("do(sex=F)",), steps=2)
    assert client.get_run(left_running.info.run_id).info.status == "KILLED"
    statuses = {
        r.info.status for r in client.search_runs([client.get_experiment_by_name("medcf-inference").experiment_id])
    }
    assert statuses == {"KILLED", "FINISHED"}


def test_files_of_two_patients_with_the_same_name_never_share_labels(setup, tmp_path):
    """p1/s1/image.dcm has a cohort row; p2/s2/image.dcm (another patient, same file name) has none: it is
    rejected, not made with the first patient's labels."""
    root, data, cohort = setup
    table = pd.read_csv(cohort)
    folder = tmp_path / "in"
    patients = table.drop_duplicates("patient").iloc[:2]
    for k, original in enumerate(patients["path"]):
        (folder / f"p{k}/s{k}").mkdir(parents=True)
        (folder / f"p{k}/s{k}/image.dcm").write_bytes((data / original).read_bytes())
    labelled = patients.iloc[:1].assign(path="p0/s0/image.dcm")
    labelled.to_csv(tmp_path / "cohort.csv", index=False)
    out = tmp_path / "out"
    run(setup, out, interventions=("do(sex=F)",), cohort=tmp_path / "cohort.csv", dataset_dir=folder, steps=2)
    by_source = read_manifest(out).assign(source=lambda t: t["image"].map(sources_of(out))).set_index("source")
    assert by_source.loc["p0/s0/image.dcm", "status"] == "ok"
    assert by_source.loc["p1/s1/image.dcm", "status"] == "rejected"
    assert by_source.loc["p1/s1/image.dcm", "reason"].startswith("not in the cohort table")


def test_settings_are_checked_before_any_image_is_read(setup, tmp_path, monkeypatch):
    """Bad weights, modes, sizes, interventions or batch sizes stop the run with a message naming the setting,
    before a single image is prepared or a folder is made."""
    prepared = []
    monkeypatch.setattr(ChestPreparer, "prepare", lambda self, *a: prepared.append(a))
    cases = [
        (dict(w_aff=-1.0), r"w_aff: -1\.0 is not allowed: must be a finite number >= 0"),
        (dict(w_inv=float("nan")), r"w_inv: nan is not allowed"),
        (dict(weight=float("inf"), mode="cfg"), r"w: inf is not allowed"),
        (dict(mode="dcgf"), r"guidance: 'dcgf' is not allowed: must be one of none, cfg, dcfg"),
        (dict(steps=0), r"steps: 0 is not allowed"),
        (dict(inversion_depth=1.5), r"inversion_depth: 1\.5 is not allowed"),
        (dict(inversion_refinements=-1), r"inversion_refinements: -1 is not allowed: must be an integer >= 0"),
        (dict(inversion_refinements=True), r"inversion_refinements: True is not allowed"),
        (dict(mode="dcfg_per_attribute", per_attribute={"colour": 2.0}), r"unknown attributes \['colour'\]"),
        (dict(size=64), r"image_size: prepared images are 64x64, the model was trained at 32x32"),
        (dict(interventions=("do(colour=red)",)), r"unknown attribute 'colour'"),
        (dict(interventions=("do(sex=F)", "do( sex = F )")), r"interventions: do\(sex=F\) given more than once"),
        (dict(batch_size=0), r"batch_size: 0 must be an integer >= 1"),
        (dict(interventions=()), r"interventions: none given"),
    ]
    for k, (options, message) in enumerate(cases):
        with pytest.raises((ValueError, InterventionError), match=message):
            run(setup, tmp_path / f"out{k}", **options)
        assert not (tmp_path / f"out{k}").exists()
    assert prepared == []
    root, data, cohort = setup
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="dataset_dir: no input files under"):
        run(setup, tmp_path / "d", dataset_dir=empty)


def test_a_model_file_with_a_pickle_payload_runs_nothing(setup, tmp_path, pickle_payload_file):
    """The inference job refuses a model.pt that carries code: one line naming the file; no output at all."""
    root, _, _ = setup
    entries = torch.load(root / "model.pt", weights_only=True)
    marker = pickle_payload_file(tmp_path / "model.pt", **entries)
    with pytest.raises(ValueError) as info:
        run(setup, tmp_path / "out", model_path=tmp_path / "model.pt")
    assert "\n" not in str(info.value) and str(tmp_path / "model.pt") in str(info.value)
    assert "refused" in str(info.value)
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_model_for_other_attributes_or_channels_is_refused(setup, tmp_path):
    """The bundle's attribute schema must be the model's; the model must take the prepared channels."""
    with pytest.raises(SchemaError, match="trained for attributes age.*expects age.*density"):
        run(setup, tmp_path / "out", schema=MAMMO_SCHEMA)
    two_channels = CounterfactualUNet(CXR_SCHEMA, replace(TINY, in_channels=2))
    save_checkpoint(tmp_path / "rgb.pt", two_channels, DiffusionConfig().to_dict(), image_size=[32, 32])
    with pytest.raises(ValueError, match=r"prepared images have 1 channel\(s\); the model takes 2"):
        run(setup, tmp_path / "out", model_path=tmp_path / "rgb.pt")


def test_an_output_folder_keeps_its_pseudonym_key(setup, tmp_path):
    """Another key for a folder made with one would break its names and UIDs: refused, naming the setting."""
    out = tmp_path / "out"
    run(setup, out, interventions=("do(sex=F)",), steps=2)
    other = tmp_path / "other.key"
    other.write_text("ab" * 32)
    with pytest.raises(ValueError, match="made with another pseudonym key; give that key \\(pseudonym_key\\)"):
        run(setup, out, interventions=("do(sex=F)",), steps=2, pseudonym_key=other)


def test_an_output_folder_keeps_its_choice_of_identifiers(setup, tmp_path):
    """A pseudonymous folder never gains rows with source paths (nor the reverse): switching is refused."""
    out = tmp_path / "out"
    run(setup, out, interventions=("do(sex=F)",), steps=2)
    with pytest.raises(ValueError, match="made with keep_identifiers=false; use that or a new output_dir"):
        run(setup, out, interventions=("do(sex=F)",), steps=2, keep_identifiers=True)


def test_a_corrected_label_makes_that_images_rows_again(setup, tmp_path):
    """Labels are inputs: a re-run after a cohort fix remakes the rows of the fixed image and only those."""
    root, data, cohort = setup
    out = tmp_path / "out"
    table = pd.read_csv(cohort)
    run(setup, out, interventions=("do(sex=F)",), steps=2)
    before = read_manifest(out).set_index("image")
    stamps = {image: (out / row.dicom).stat().st_mtime_ns for image, row in before.iterrows() if row.status == "ok"}
    fixed = table.copy()
    fixed.loc[0, "race"] = {"White": "Black"}.get(fixed.loc[0, "race"], "White")
    fixed.to_csv(tmp_path / "fixed.csv", index=False)
    run(setup, out, interventions=("do(sex=F)",), steps=2, cohort=tmp_path / "fixed.csv")
    after = read_manifest(out).set_index("image")
    changed = {source: image for image, source in sources_of(out).items()}[table["path"][0]]
    remade = {image for image, stamp in stamps.items() if (out / after.loc[image, "dicom"]).stat().st_mtime_ns != stamp}
    assert remade == {changed} and after.loc[changed, "input"] != before.loc[changed, "input"]


def test_inference_bundles_declare_the_attributes_of_their_training_bundles():
    """inference.yaml and train.yaml take the same attributes (from common.yaml; the check above relies on it)."""
    from monai.bundle import ConfigParser

    for bundle in ("cxr_counterfactual", "mammo_counterfactual"):
        declared = []
        for name in ("train.yaml", "inference.yaml"):
            parser = ConfigParser()
            parser.read_config(str(REPO / "bundles" / bundle / "configs" / name))
            declared.append(parser.get_parsed_content("schema").to_config())
        assert declared[0] == declared[1], bundle


def test_output_folders_are_pseudonyms_unless_identifiers_are_kept():
    assert output_folder("p1/s2/1.2.840.55.3", "img-1", keep_identifiers=True) == "p1/s2/1.2.840.55.3"
    assert output_folder("p1/s2/image.dcm", "img-1", keep_identifiers=True) == "p1/s2/image"
    assert output_folder("p1/s2/image.dcm", "img-1", keep_identifiers=False) == "img-1"


def test_slugs_are_file_names():
    """Interventions map to short, safe, distinct file names."""
    names = [
        slug(parse_intervention(CXR_SCHEMA, t))
        for t in ("do(sex=F)", "do(age=+20, race=Black)", "do(disease=Pleural Effusion)", "do()")
    ]
    assert names == ["sex-F", "age-+20_race-Black", "disease-PleuralEffusion", "null"]
    assert all("/" not in n and " " not in n for n in names)


def test_the_run_is_tagged_with_the_training_run_of_its_model(setup, tmp_path):
    """Lineage: a model file that records the MLflow run that trained it passes that id on as a tag."""
    root = setup[0]
    model, payload = load_checkpoint(root / "model.pt")
    save_checkpoint(tmp_path / "model.pt", model, payload["diffusion"], image_size=[32, 32], training_run_id="abc123")
    run(setup, tmp_path / "out", interventions=("do(sex=F)",), steps=2, model_path=tmp_path / "model.pt")
    _, found = only_run("medcf-inference")
    assert found.data.tags["medcf.training_run_id"] == "abc123"
