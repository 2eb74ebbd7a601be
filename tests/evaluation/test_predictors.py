"""Attribute predictors: the API, the loss and the scores on hand-made values, safe loading, the shipped
predictors on a freshly made phantom set, and the train_predictors bundle as users run it."""

import difflib
import json
import math
import re
from pathlib import Path

import mlflow
import pytest
import torch
from monai.bundle import ConfigParser
from monai.engines import SupervisedTrainer

from medcf.core.attributes import AttributeSchema, SchemaError
from medcf.jobs.phantom_sets import phantom_training_set
from medcf.measure.predictor_training import PredictorLoss, constant_baseline, heldout_scores, score_predictions
from medcf.measure.predictors import PREDICTORS_FORMAT, AttributePredictor, load_predictors, save_predictors
from medcf.phantoms.cxr import CXR_SCHEMA
from medcf.phantoms.mammo import MAMMO_SCHEMA
from medcf.training.data import prepared_dataset
from tests.conftest import run_bundle

REPO = Path(__file__).resolve().parents[2]
BUNDLES = {"cxr": "cxr_counterfactual", "mammo": "mammo_counterfactual"}
SMALL = {"block_inplanes": [4, 8, 8, 8]}
AGE_SEX = AttributeSchema.from_config(
    [
        {"name": "age", "kind": "continuous", "low": 0, "high": 100},
        {"name": "sex", "kind": "categorical", "values": ["M", "F"]},
    ]
)


def config(kind: str, name: str = "train_predictors.yaml") -> str:
    return str(REPO / "bundles" / BUNDLES[kind] / "configs" / name)


@pytest.fixture(scope="module")
def fresh_sets(tmp_path_factory):
    """Small phantom sets made through the export -> cohort -> prepare path at 64 x 64, with a seed the shipped
    predictors never saw (their training set used seed 0). Mammograms come about five per patient, so that
    set is larger (84 images of about 17 patients)."""
    root = tmp_path_factory.mktemp("fresh_phantoms")
    sizes = {"cxr": 48, "mammo": 96}
    return {kind: phantom_training_set(kind, root / kind, n, 64, seed=11, workers=1) for kind, n in sizes.items()}


def test_shapes_and_api():
    torch.manual_seed(0)
    predictor = AttributePredictor(CXR_SCHEMA, **SMALL).eval()
    images = torch.rand(3, 1, 64, 64) * 2 - 1
    assert predictor.schema is CXR_SCHEMA
    assert predictor(images).shape == (3, 1 + 2 + 3 + 2)
    assert predictor.features(images).shape == (3, 8)
    predicted = predictor.predict(images)
    assert list(predicted) == ["age", "sex", "race", "disease"]
    assert predicted["age"].shape == (3,) and ((predicted["age"] >= 18) & (predicted["age"] <= 95)).all()
    for name, width in (("sex", 2), ("race", 3), ("disease", 2)):
        assert predicted[name].shape == (3, width)
        assert torch.allclose(predicted[name].sum(dim=1), torch.ones(3))
    assert AttributePredictor(MAMMO_SCHEMA, **SMALL)(images).shape == (3, 1 + 3 + 4 + 2 + 2)


def test_loss_on_hand_made_values():
    """age 70 on [0, 100] predicted as 0.5 (scaled): L1 0.2; sex logits (0, 0) for F: ln 2."""
    outputs = torch.tensor([[0.5, 0.0, 0.0], [0.7, 10.0, -10.0]])
    codes = torch.tensor([[70.0, 1.0], [70.0, 0.0]])
    cross_entropy = (math.log(2) + math.log1p(math.exp(-20.0))) / 2
    assert PredictorLoss(AGE_SEX)(outputs, codes).item() == pytest.approx(0.1 + cross_entropy, abs=1e-6)
    weighted = PredictorLoss(AGE_SEX, weights={"age": 3.0})(outputs, codes).item()
    assert weighted == pytest.approx(0.3 + cross_entropy, abs=1e-6)
    with pytest.raises(SchemaError, match="unknown attribute.*height"):
        PredictorLoss(AGE_SEX, weights={"height": 1.0})


def test_scores_of_hand_made_predictions():
    schema = AttributeSchema.from_config(
        [*AGE_SEX.to_config(), {"name": "race", "kind": "categorical", "values": ["White", "Asian", "Black"]}]
    )
    codes = torch.tensor([[25.0, 0, 0], [30.0, 0, 0], [40.0, 1, 1], [50.0, 1, 1]])
    predictions = {
        "age": torch.tensor([20.0, 30.0, 44.0, 50.0]),
        "sex": torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.6, 0.4], [0.1, 0.9]]),
        # Black never occurs: macro AUROC over White (1.0) and Asian (0.5, with two ties)
        "race": torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.2, 0.3], [0.3, 0.2, 0.5], [0.1, 0.3, 0.6]]),
    }
    scores = score_predictions(schema, predictions, codes)
    assert scores["age"] == {"mae": pytest.approx(9 / 4), "n": 4}
    assert scores["sex"] == {"accuracy": 0.5, "auroc": pytest.approx(0.75), "n": 4}
    assert scores["race"]["accuracy"] == 0.5 and scores["race"]["auroc"] == pytest.approx(0.75)
    one_class = score_predictions(schema, predictions, codes.index_fill(1, torch.tensor([1]), 0.0))
    assert math.isnan(one_class["sex"]["auroc"])


def test_constant_baseline_is_the_training_median_and_majority():
    train = torch.tensor([[20.0, 1], [30.0, 1], [90.0, 0]])
    heldout = torch.tensor([[30.0, 0], [40.0, 1], [50.0, 1], [60.0, 1]])
    baseline = constant_baseline(AGE_SEX, train, heldout)
    assert baseline == {"age": {"mae": pytest.approx(15.0)}, "sex": {"accuracy": 0.75, "auroc": 0.5}}


class Oracle(AttributePredictor):
    """Reads the true codes back from the first pixels of each image: a perfect predictor."""

    def forward(self, images):
        codes = images[:, 0, 0, : len(self.schema.names)]
        outputs = []
        for k, attribute in enumerate(self.schema.attributes):
            if attribute.kind == "categorical":
                outputs.append(20.0 * torch.nn.functional.one_hot(codes[:, k].long(), len(attribute.values)))
            else:
                outputs.append(((codes[:, k] - attribute.low) / (attribute.high - attribute.low))[:, None])
        return torch.cat(outputs, dim=1).float()


def test_perfect_predictor_scores_one_and_zero_error():
    codes = torch.tensor([[20.0, 0, 0, 0], [50.0, 1, 1, 1], [80.0, 1, 2, 0], [33.0, 0, 2, 1], [90.0, 0, 1, 1]])
    images = torch.zeros(5, 1, 16, 16)
    images[:, 0, 0, :4] = codes
    oracle = Oracle(CXR_SCHEMA, **SMALL).train()
    scores = heldout_scores(oracle, images, codes, batch_size=2)
    assert scores["age"]["mae"] == pytest.approx(0.0, abs=1e-4)
    for name in ("sex", "race", "disease"):
        assert scores[name]["accuracy"] == 1.0 and scores[name]["auroc"] == 1.0 and scores[name]["n"] == 5
    assert oracle.training  # restored after scoring in eval mode


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(1)
    predictor = AttributePredictor(CXR_SCHEMA, **SMALL).eval()
    path = save_predictors(predictor, tmp_path / "p.pt", extra={"image_size": [64, 64], "note": "x"})
    loaded = load_predictors(path, expected_schema=CXR_SCHEMA)
    images = torch.rand(2, 1, 64, 64)
    assert torch.equal(loaded(images), predictor(images)) and not loaded.training
    assert loaded.image_size == (64, 64) and loaded.network_settings["block_inplanes"] == [4, 8, 8, 8]
    assert [p.name for p in tmp_path.iterdir()] == ["p.pt"]  # no temporary left behind


def test_loading_refuses_a_pickle_payload(tmp_path, pickle_payload_file):
    path = tmp_path / "predictors.pt"
    marker = pickle_payload_file(path, format=PREDICTORS_FORMAT, schema=CXR_SCHEMA.to_config(), state_dict={})
    with pytest.raises(ValueError, match="refused") as error:
        load_predictors(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    assert not marker.exists()


def test_loading_refuses_another_schema_in_one_line(tmp_path):
    path = save_predictors(AttributePredictor(CXR_SCHEMA, **SMALL), tmp_path / "predictors.pt")
    with pytest.raises(SchemaError) as error:
        load_predictors(path, expected_schema=MAMMO_SCHEMA)
    message = str(error.value)
    assert message.startswith(f"{path}: predictors for another attribute schema") and "\n" not in message
    assert "sex{M,F} is not expected" in message and "density{A,B,C,D}<-age is missing" in message
    reordered = AttributeSchema.from_config(
        [
            row if row["name"] != "race" else {**row, "values": ["White", "Black", "Asian"]}
            for row in CXR_SCHEMA.to_config()
        ]
    )
    with pytest.raises(SchemaError, match=r"race: the file has race\{White,Asian,Black\}, expected race\{White,Black"):
        load_predictors(path, expected_schema=reordered)
    (tmp_path / "notes.pt").write_text("not a model")
    with pytest.raises(ValueError, match="not a medcf predictors file"):
        load_predictors(tmp_path / "notes.pt")


@pytest.mark.parametrize("kind", ["cxr", "mammo"])
def test_shipped_predictors_reach_their_stated_scores_on_fresh_phantoms(fresh_sets, kind):
    """The shipped predictors on prepared images of phantom subjects they never saw: every accuracy within
    three binomial standard errors (plus 0.05) of the stated test accuracy, every age error within 1.5x + 2."""
    schema = CXR_SCHEMA if kind == "cxr" else MAMMO_SCHEMA
    predictor = load_predictors(REPO / "bundles" / BUNDLES[kind] / "models" / "predictors.pt", schema)
    payload = torch.load(REPO / "bundles" / BUNDLES[kind] / "models" / "predictors.pt", weights_only=True)
    stated = payload["heldout_scores"]
    dataset = prepared_dataset(fresh_sets[kind], schema)
    images = torch.stack([torch.as_tensor(item["image"]) for item in dataset])
    codes = torch.stack([torch.as_tensor(item["attributes"]) for item in dataset])
    assert predictor.image_size == tuple(images.shape[-2:]) == (64, 64)
    scores = heldout_scores(predictor, images, codes)
    for name, measured in scores.items():
        if "mae" in measured:
            assert measured["mae"] <= 1.5 * stated[name]["mae"] + 2.0, (name, measured, stated[name])
            continue
        accuracy, n = stated[name]["accuracy"], measured["n"]
        margin = 3 * math.sqrt(accuracy * (1 - accuracy) / n) + 0.05
        assert measured["accuracy"] >= accuracy - margin, (name, measured, stated[name])


def test_train_predictors_bundle_runs_end_to_end(tmp_path, fresh_sets):
    """One epoch of `python -m monai.bundle run` from another working directory: both files, loadable, with
    test scores, the split sizes and an MLflow run holding the held-out metrics and the config."""
    result = run_bundle(
        config("cxr"), tmp_path, manifest=fresh_sets["cxr"], max_epochs=1, output_dir=tmp_path / "out", device="cpu"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "out" / "predictors.json").read_text())
    predictor = load_predictors(tmp_path / "out" / "predictors.pt", CXR_SCHEMA)
    payload = torch.load(tmp_path / "out" / "predictors.pt", weights_only=True)
    assert predictor.image_size == (64, 64) and payload["heldout_scores"].keys() == record["heldout_scores"].keys()
    assert set(record["heldout_scores"]) == {"age", "sex", "race", "disease"}
    # the recorded test scores are the saved predictor's own on the manifest's test split, recomputed here
    test = prepared_dataset(fresh_sets["cxr"], CXR_SCHEMA, split="test")
    images = torch.stack([torch.as_tensor(item["image"]) for item in test])
    codes = torch.stack([torch.as_tensor(item["attributes"]) for item in test])
    for name, measured in heldout_scores(predictor, images, codes).items():
        for key, value in measured.items():
            recorded = record["heldout_scores"][name][key]  # None: undefined (e.g. an AUROC with one class)
            recorded = math.nan if recorded is None else recorded
            assert recorded == pytest.approx(value, rel=1e-4, nan_ok=True), (name, key)
    sizes = record["split_sizes"]
    assert sizes["test"] == len(test) == record["heldout_scores"]["sex"]["n"] and min(sizes.values()) > 0
    assert sum(sizes.values()) == len(prepared_dataset(fresh_sets["cxr"], CXR_SCHEMA))
    assert record["constant_baseline"]["sex"]["auroc"] == 0.5
    assert record["selected_epoch"] == 1 and record["selection"] == "last" and record["settings"]["max_epochs"] == 1
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("medcf-cxr-predictors").experiment_id])
    assert run.info.status == "FINISHED" and "test_sex_accuracy" in run.data.metrics and "val_loss" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"predictors.json", "predictors.pt", "config"} <= artifacts


def test_mammo_config_builds_its_trainer(fresh_sets):
    """The mammogram config resolves to a SupervisedTrainer over its five attribute heads."""
    parser = ConfigParser()
    parser.read_config(config("mammo"))
    parser["manifest"] = str(fresh_sets["mammo"])
    trainer = parser.get_parsed_content("train#trainer")
    assert isinstance(trainer, SupervisedTrainer)
    assert parser.get_parsed_content("network").schema.names == MAMMO_SCHEMA.names


def test_the_two_predictor_configs_differ_only_where_the_bundles_differ():
    cxr = Path(config("cxr")).read_text().splitlines()
    mammo = Path(config("mammo")).read_text().splitlines()
    changed = [line for line in difflib.unified_diff(cxr, mammo, lineterm="", n=0) if line[:1] in "+-"]
    changed = [line for line in changed if not line.startswith(("+++", "---"))]
    allowed = re.compile(r"^[+-](#|bundle_root|output_dir|      experiment)")
    assert changed and all(allowed.match(line) for line in changed), changed
