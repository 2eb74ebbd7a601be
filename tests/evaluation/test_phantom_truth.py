"""The phantom's true counterfactuals, rendered and prepared like the bundles' sample files."""

import json
import shutil
from pathlib import Path

import pytest

from medcf.core.interventions import parse_intervention
from medcf.measure import ground_truth
from medcf.measure.evaluation_set import TrueChanges, load_evaluation_set
from medcf.measure.phantom_truth import PhantomTruth, TruthError
from medcf.phantoms.cxr import CXR_SCHEMA
from medcf.phantoms.mammo import MAMMO_SCHEMA
from medcf.prepare import ChestPreparer, MammoPreparer

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
CASES = {
    "cxr": (BUNDLES / "cxr_counterfactual" / "sample_data", CXR_SCHEMA, ChestPreparer(64), "do(sex=F)"),
    "mammo": (BUNDLES / "mammo_counterfactual" / "sample_data", MAMMO_SCHEMA, MammoPreparer((64, 64)), "do(density=D)"),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def sample(request):
    folder, schema, preparer, text = CASES[request.param]
    images = load_evaluation_set(folder, folder / "cohort.csv", preparer, schema)
    truth = PhantomTruth.find(folder, schema, request.param)
    return images, TrueChanges(truth, images, preparer), parse_intervention(schema, text), schema


def test_the_rendered_factual_is_the_prepared_file(sample):
    images, changes, _, _ = sample
    error = (changes.factual - images.images).abs().flatten(1).mean(1) / 2
    assert len(images) >= 6 and float(error.max()) < 0.002


def test_the_null_intervention_changes_nothing(sample):
    images, changes, _, schema = sample
    assert float(changes.of_intervention(parse_intervention(schema, "do()"), range(len(images))).abs().max()) == 0


def test_an_intervention_changes_only_subjects_it_moves(sample):
    images, changes, intervention, _ = sample
    (name,) = intervention.names
    value = intervention.assignments[0].value
    change = changes.of_intervention(intervention, range(len(images))).abs().flatten(1).mean(1)
    for k, subject in enumerate(changes.subjects):
        assert (change[k] == 0) == (subject.attributes[name] == value), (k, subject.attributes[name])
    assert (change > 0).any()


def test_the_phantoms_own_counterfactual_has_target_ratio_one_against_the_read_files(sample):
    # the "model" is the phantom: its counterfactual minus the factual as READ from the DICOM files
    images, changes, intervention, _ = sample
    true_change = changes.of_intervention(intervention, range(len(images)))
    counterfactual = changes.factual + true_change
    change = counterfactual - images.images
    direction = ground_truth.unit_direction(true_change)
    assert ground_truth.target_ratio(change, true_change, direction) == pytest.approx(1.0, abs=0.02)
    assert ground_truth.truth_error(change, true_change) < 0.002


def test_directions_are_unit_maps_or_zero_where_the_phantom_draws_nothing(sample):
    _, changes, intervention, schema = sample
    directions = changes.directions()
    assert set(directions) == set(schema.names)
    norms = {name: float(direction.norm()) for name, direction in directions.items()}
    for name, norm in norms.items():
        assert norm == pytest.approx(1.0, abs=1e-4) or norm == 0.0, name
    assert norms[intervention.names[0]] == pytest.approx(1.0, abs=1e-4)
    # the mammogram phantom has no mechanism from race to the image; every chest attribute shows
    assert (norms["race"] == 0.0) == (schema is MAMMO_SCHEMA)


def _copy(name: str, tmp_path: Path) -> Path:
    folder = tmp_path / name
    shutil.copytree(CASES[name][0], folder)
    return folder


def test_a_truth_file_of_another_phantom_is_refused_in_one_line(tmp_path):
    folder = _copy("mammo", tmp_path)
    with pytest.raises(TruthError, match=r"ground truth of a mammo phantom; this model is for cxr images") as caught:
        PhantomTruth.find(folder, CXR_SCHEMA, "cxr")
    assert "\n" not in str(caught.value)


def test_a_truth_file_for_other_attributes_is_refused(tmp_path):
    folder = _copy("cxr", tmp_path)
    other = CXR_SCHEMA.from_config([row for row in CXR_SCHEMA.to_config() if row["name"] != "race"])
    with pytest.raises(TruthError, match=r"phantom's attributes \(age, sex, race, disease\) are not the model's"):
        PhantomTruth.find(folder, other, "cxr")


def test_a_truth_file_without_its_phantom_description_or_columns_is_refused(tmp_path):
    folder = _copy("cxr", tmp_path)
    (folder / "phantom.json").unlink()
    with pytest.raises(TruthError, match=r"found without phantom.json"):
        PhantomTruth.find(folder, CXR_SCHEMA, "cxr")
    folder = _copy("mammo", tmp_path / "second")
    config = json.loads((folder / "phantom.json").read_text())
    (folder / "phantom.json").write_text(json.dumps({**config, "kind": "cxr"}))
    with pytest.raises(TruthError, match=r"phantom.json: population: unknown field"):
        PhantomTruth.find(folder, CXR_SCHEMA, "cxr")


def test_a_file_missing_from_the_truth_is_named(tmp_path):
    truth = PhantomTruth.find(CASES["cxr"][0], CXR_SCHEMA, "cxr")
    with pytest.raises(TruthError, match=r"no row for files/p10/elsewhere.dcm"):
        truth.subject("files/p10/elsewhere.dcm")


def test_no_truth_file_means_no_ground_truth(tmp_path):
    assert PhantomTruth.find(tmp_path, CXR_SCHEMA, "cxr") is None
