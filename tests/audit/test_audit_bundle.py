"""The audit bundle end to end on a tiny generator, as a user runs it: audit.csv, summary.json (the contract),
report.html (self-contained, every verdict named), one MLflow run; bad input fails in one line."""

import json
from html.parser import HTMLParser
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from medcf.core.diffusion import DiffusionConfig
from medcf.core.interventions import InterventionError
from medcf.jobs.audit import AuditRun
from medcf.measure.classifier import ClassifierError, ClassifierSettings
from medcf.prepare import ChestPreparer
from medcf.runtime.files import file_sha256
from tests.conftest import bundle_refusal, run_bundle, save_tiny_evaluation_files

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "cxr_counterfactual"
DIRECTION_KEYS = {"from", "to", "n", "patients", "min_patients", "flip_rate", "delta_p", "delta_p_ci",
                  "delta_p_corrected", "delta_p_corrected_ci", "p_adjusted", "detectable_effect",
                  "insufficient"}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_audit")
    save_tiny_evaluation_files(root)  # classifier.ts reads brightness
    return root


def audit_settings(tiny_files, **changes) -> dict:
    return {
        "output_dir": "OUT", "classifier": tiny_files / "classifier.ts", "model_path": tiny_files / "model.pt",
        "predictors_path": tiny_files / "predictors.pt", "image_size": 32, "steps": 2, "resamples": 200,
        "dataset_dir": BUNDLE / "sample_data", "guidance#mode": "dcfg",
        "interventions": ["do(sex=F)", "do(sex=M)", "do(age=+20)"], **changes,
    }  # fmt: skip


def run_audit(tiny_files, cwd, **changes):
    return run_bundle(BUNDLE / "configs" / "audit.yaml", cwd, **audit_settings(tiny_files, **changes))


def audit_refusal(tiny_files, cwd, monkeypatch, **changes) -> str:
    """The line the audit bundle's refusal ends with, run in this process (:func:`tests.conftest.bundle_refusal`)."""
    return bundle_refusal(BUNDLE / "configs" / "audit.yaml", cwd, monkeypatch, **audit_settings(tiny_files, **changes))


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources, self.text = [], []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.sources.append(value)

    def handle_data(self, data):
        self.text.append(data)


def test_the_bundle_writes_the_audit_table_the_summary_contract_and_a_self_contained_report(tiny_files, tmp_path):
    result = run_audit(tiny_files, tmp_path)  # the 8 sample images: too few patients for any verdict
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "OUT"

    table = pd.read_csv(out / "audit.csv")
    assert list(table.columns) == ["source", "patient", "attribute", "from", "to", "p_factual",
                                   "p_counterfactual", "p_null", "flipped", "recognised"]  # fmt: skip
    cohort = pd.read_csv(BUNDLE / "sample_data" / "cohort.csv", dtype=str)
    sex = table[table["attribute"] == "sex"]
    # do(sex=F) only on the male images and do(sex=M) only on the female ones, each once
    assert set(zip(sex["from"], sex["to"], strict=True)) <= {("M", "F"), ("F", "M")}
    assert len(sex) == table["source"].nunique() and len(sex) >= 6
    assert table["source"].str.fullmatch(r"img-[0-9a-f]{16}").all() and table["patient"].str.startswith("CF-").all()
    assert not set(table["patient"]) & set(cohort["patient"]), "patients appear only as pseudonyms"
    assert table[["p_factual", "p_counterfactual", "p_null"]].apply(lambda c: c.between(0, 1).all()).all()
    # the classifier reads brightness: flipped is exactly the thresholded change
    assert (table["flipped"] == ((table["p_factual"] >= 0.5) != (table["p_counterfactual"] >= 0.5))).all()

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["attributes"]) == {"sex", "age"}
    assert summary["settings"]["classifier_sha256"] == file_sha256(tiny_files / "classifier.ts")
    # the two lateral views of the sample data are rejected rows of the summary, by pseudonym
    assert summary["images"]["audited"] == 8
    assert [r["reason"] for r in summary["images"]["rejected"]] == ["view LL is not frontal (AP/PA)"] * 2
    assert all(r["source"].startswith("img-") for r in summary["images"]["rejected"])
    for name, found in summary["attributes"].items():
        assert found["verdict"] in {"depends", "no dependence detected", "unreliable", "insufficient data"}
        assert 0 <= found["effectiveness"] <= 1
        rows = table[table["attribute"] == name]
        assert found["effectiveness"] == pytest.approx(rows["recognised"].mean())
        for direction in found["directions"]:
            chosen = rows[(rows["from"].astype(str) == direction["from"]) & (rows["to"].astype(str) == direction["to"])]
            assert direction["effectiveness"] == pytest.approx(chosen["recognised"].mean())
            assert DIRECTION_KEYS <= set(direction)
            assert direction["patients"] == chosen["patient"].nunique() and direction["n"] == len(chosen)
            low, high = direction["delta_p_corrected_ci"]
            assert low <= direction["delta_p_corrected"] <= high
    # 3 directions in the family: 7 patients needed; the sample sex directions have 4 (5 images) and 1 (3 images)
    sex = summary["attributes"]["sex"]
    assert [(d["patients"], d["min_patients"]) for d in sex["directions"]] == [(4, 7), (1, 7)]
    assert sex["verdict"] == "insufficient data" and "1 patient (3 images)" in sex["reason"]
    assert "sex: insufficient data (M -> F: 4 of 7 patients, F -> M: 1 of 7 patients)" in result.stdout
    # regression figures on fixed seeds (the seeded tiny generator and brightness classifier, the 8 sample images)
    found = [(d["delta_p_corrected"], d["effectiveness"]) for d in sex["directions"]]
    assert found == [pytest.approx((0.0002955, 1.0), abs=5e-6), pytest.approx((0.0022031, 0.0), abs=5e-6)]
    assert table[["p_factual", "p_counterfactual", "p_null"]].mean().tolist() == pytest.approx(
        [0.7556625, 0.7205695, 0.717131], abs=1e-5
    )
    # 8 images in groups of 3 and 5: every subgroup rate is withheld, every row says its n
    assert {"sex", "age"} <= set(summary["subgroups"])
    for records in summary["subgroups"].values():
        assert sum(record["n"] for record in records) == 8
        assert all(record[key] == "n too small" for record in records for key in ("auc", "tpr", "fpr"))

    html = (out / "report.html").read_text()
    collector = _Collector()
    collector.feed(html)
    assert all(source.startswith("data:image/png;base64,") for source in collector.sources), collector.sources
    assert "<script" not in html.lower() and "@import" not in html and "url(" not in html
    text = " ".join(collector.text)
    for name, found in summary["attributes"].items():
        assert name in text and found["verdict"] in text and found["reason"] in text
    assert "n too small" in text and "AUC 0" not in text
    assert 'alt="forest plot of the corrected delta p per direction"' in html

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=["medcf-cxr-audit"], output_format="list")
    assert run.info.status == "FINISHED" and run.data.tags["medcf.verdict.sex"] == "insufficient data"
    assert run.data.metrics["sex.M-F.patients"] == 4
    assert {"audit.csv", "summary.json", "report.html"} <= {
        a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)
    }


def audit(tiny_files, tmp_path, **changes):
    settings = dict(
        output_dir=tmp_path / "out",
        classifier=tiny_files / "classifier.ts",
        classifier_settings=ClassifierSettings(),
        model_path=tiny_files / "model.pt",
        graph_path=BUNDLE / "models" / "graph.json",
        predictors_path=tiny_files / "predictors.pt",
        preparer=ChestPreparer(32),
        dataset_dir=BUNDLE / "sample_data",
        labels=BUNDLE / "sample_data" / "cohort.csv",
        interventions=["do(sex=F)"],
        guidance={"mode": "dcfg", "w_aff": 2.0, "w_inv": 1.0},
        steps=2,
        progress=False,
    )
    return AuditRun(**{**settings, **changes})


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"interventions": ["do(height=2)"]}, InterventionError, r"height"),
        ({"interventions": ["do()"]}, ValueError, r"do\(\) is the control the audit adds itself"),
        ({"classifier": None}, ClassifierError, r"classifier: none given; pass --classifier"),
        ({"classifier": "missing.ts"}, ClassifierError, r"classifier: missing.ts does not exist"),
        ({"guidance": {"mode": "dcfg", "w_aff": -1}}, ValueError, r"guidance_settings\[0\]: w_aff"),
        ({"label_attribute": "sex", "positive_value": "X"}, ValueError, r"positive_value: 'X' is not a value of sex"),
        ({"label_attribute": "height"}, ValueError, r"label_attribute: 'height' is not one of"),
        ({"gate": 0}, ValueError, r"gate: 0 must lie in \(0, 1\]"),
        ({"interventions": ["do(age=+1000)"]}, InterventionError, r"takes every age in \[18, 95\] outside that range"),
        ({"labels": None, "dataset_dir": REPO / "tests"}, ValueError, r"labels: .*cohort.csv does not exist"),
        ({"dataset_dir": None}, ValueError, r"dataset_dir: none given and heldout_subjects is 0"),
    ],
)
def test_bad_input_fails_in_one_line_before_any_output(tiny_files, tmp_path, changes, error, message):
    with pytest.raises(error, match=message) as caught:
        audit(tiny_files, tmp_path, **changes).run()
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_an_intervention_no_image_can_take_ends_before_decoding_and_leaves_no_report(tiny_files, tmp_path, monkeypatch):
    """The sample images are 54-91 years old: do(age=+70) takes every one past 95. One line, no table, summary or
    report (a report with verdicts on nothing would read as a result)."""
    line = audit_refusal(tiny_files, tmp_path, monkeypatch, interventions=["do(sex=F)", "do(age=+70)"])
    assert "do(age=+70) takes age outside [18, 95] for every one of the 8 images (age 54-91)" in line
    assert not any((tmp_path / "OUT" / name).exists() for name in ("audit.csv", "summary.json", "report.html"))


def test_an_audit_without_a_usable_image_exits_without_a_report(tiny_files, tmp_path, monkeypatch):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "broken.dcm").write_bytes(b"not a dicom file")
    pd.read_csv(BUNDLE / "sample_data" / "cohort.csv").to_csv(folder / "cohort.csv", index=False)
    line = audit_refusal(tiny_files, tmp_path, monkeypatch, dataset_dir=folder)
    assert "none of the 1 files" in line and "not_dicom" in line
    assert not any((tmp_path / "OUT" / name).exists() for name in ("audit.csv", "summary.json", "report.html"))


def test_a_cohort_without_patients_is_refused(tiny_files, tmp_path):
    cohort = pd.read_csv(BUNDLE / "sample_data" / "cohort.csv").drop(columns=["patient"])
    cohort.to_csv(tmp_path / "cohort.csv", index=False)
    with pytest.raises(ValueError, match=r"needs a patient column"):
        audit(tiny_files, tmp_path, labels=tmp_path / "cohort.csv").run()


def test_the_classifiers_label_is_held_when_it_descends_from_the_intervened_attribute(tiny_files, tmp_path):
    """do(age=+20) on a disease classifier is decoded as do(age=+20, disease=<the image's own>): the audit asks
    what the classifier does when only age changes, not the effusion that age causes in the phantom."""
    from medcf.core.causal import CausalGraph
    from medcf.core.engine import CounterfactualEngine
    from medcf.core.interventions import parse_intervention
    from medcf.core.network import load_checkpoint
    from medcf.measure.evaluation_set import load_evaluation_set

    model, _ = load_checkpoint(tiny_files / "model.pt")
    engine = CounterfactualEngine(
        model, DiffusionConfig(), CausalGraph.load(model.schema, BUNDLE / "models" / "graph.json")
    )
    chunk = load_evaluation_set(
        BUNDLE / "sample_data", BUNDLE / "sample_data" / "cohort.csv", ChestPreparer(32), model.schema
    )
    run = audit(tiny_files, tmp_path, label_attribute="disease", positive_value="Pleural Effusion")
    everyone = [k for k, row in enumerate(chunk.factual) if row["age"] + 20 <= 95]  # the images do(age=+20) can take
    held = run._holding_the_label(engine, parse_intervention(model.schema, "do(age=+20)"), chunk, everyone)
    assert sorted(k for _, members in held for k in members) == everyone
    for intervention, members in held:
        assert set(intervention.names) == {"age", "disease"}
        (value,) = {chunk.factual[k]["disease"] for k in members}
        assert intervention.apply(model.schema, chunk.factual[members[0]])["disease"] == value
    sex = parse_intervention(model.schema, "do(sex=F)")
    assert run._holding_the_label(engine, sex, chunk, everyone) == [(sex, everyone)], "sex does not cause disease"


def test_the_default_chest_audit_has_the_patients_for_a_verdict_on_sex(tmp_path):
    """The no-argument chest audit's data (held-out phantom subjects, the bundle's preparer) gives every default
    direction at least the patients its test needs to reach significance in the family: it can reach a verdict
    (the full run, 5 minutes on 2 CPU cores, is measured in the README)."""
    from monai.bundle import ConfigParser

    from medcf.core.interventions import parse_intervention
    from medcf.jobs.phantom_sets import phantom_export_with_cohort
    from medcf.measure.evaluation_set import load_evaluation_set
    from medcf.measure.statistics import minimum_patients

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "audit.yaml"))
    assert parser.get_parsed_content("dataset_dir") is None
    subjects, seed = parser.get_parsed_content("heldout_subjects"), parser.get_parsed_content("heldout_seed")
    schema, preparer = parser.get_parsed_content("schema"), parser.get_parsed_content("preparer")
    interventions = [parse_intervention(schema, text) for text in parser.get_parsed_content("interventions")]
    assert {i.names[0] for i in interventions} == {"sex"}
    export, cohort = phantom_export_with_cohort("cxr", tmp_path, subjects, 128, seed)
    pool = load_evaluation_set(export, cohort, preparer, schema)
    patients = pd.read_csv(cohort, dtype=str).set_index("path")["patient"]
    needed = minimum_patients(len(interventions))
    for intervention in interventions:
        changed = {patients[s] for s, row in zip(pool.sources, pool.factual, strict=True)
                   if intervention.apply(schema, row)["sex"] != row["sex"]}  # fmt: skip
        assert len(changed) >= needed, f"{intervention.text}: {len(changed)} patients, {needed} needed"
