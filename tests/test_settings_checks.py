"""A job's plain settings are checked once, when the job is made from its YAML keys, in one line naming the key."""

import re

import pytest

from medcf.jobs.calibrate import CalibrationRun
from medcf.jobs.inference import InferenceRun
from medcf.prepare import ChestPreparer
from medcf.runtime.settings import require_integer, require_number


def test_an_integer_setting_is_refused_below_its_minimum_or_as_another_type():
    assert require_integer("steps", 5, 1) == 5
    for value in (0, 2.0, True, "3", None):
        with pytest.raises(ValueError, match=rf"^steps: {value!r} must be an integer >= 1$"):
            require_integer("steps", value, 1)


def test_a_number_setting_is_refused_outside_its_bound_or_as_another_type():
    assert require_number("tolerance", 0, 0) == 0 and require_number("tolerance", 0.5, 0) == 0.5
    assert require_number("minutes", None, 0, exclusive=True, allow_none=True) is None
    for value in (-0.1, float("inf"), float("nan"), True, "1", None):
        with pytest.raises(ValueError, match=rf"^tolerance: {re.escape(repr(value))} must be a number >= 0$"):
            require_number("tolerance", value, 0)
    with pytest.raises(ValueError, match=r"^minutes: 0 must be a number > 0, or null$"):
        require_number("minutes", 0, 0, exclusive=True, allow_none=True)


@pytest.mark.parametrize(("key", "value", "minimum"), [("batch_size", 0, 1), ("workers", -1, 0)])
def test_the_inference_job_refuses_a_bad_number_when_it_is_made(tmp_path, key, value, minimum):
    settings = dict(
        dataset_dir=tmp_path, output_dir=tmp_path / "out", model_path=tmp_path / "model.pt",
        graph_path=tmp_path / "graph.json", labels=tmp_path / "cohort.csv", preparer=ChestPreparer(64),
        interventions=["do(sex=F)"],
    )  # fmt: skip
    with pytest.raises(ValueError, match=rf"^{key}: {value} must be an integer >= {minimum}$"):
        InferenceRun(**settings, **{key: value})
    assert not (tmp_path / "out").exists()


def test_the_calibrate_job_refuses_a_rule_whose_weights_are_not_group_weights(tmp_path):
    with pytest.raises(ValueError, match=r"^rule: 'apg' must be one of linear, nested$"):
        CalibrationRun(
            tmp_path / "out", tmp_path / "model.pt", tmp_path / "graph.json", tmp_path / "predictors.pt",
            ChestPreparer(64), "cxr", rule="apg",
        )  # fmt: skip
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("tolerance", [-0.01, float("inf"), True, "0.02"])
def test_the_calibrate_job_refuses_a_bad_texture_tolerance_when_it_is_made(tmp_path, tolerance):
    with pytest.raises(ValueError, match=r"^texture_tolerance: .* must be a number >= 0$"):
        CalibrationRun(
            tmp_path / "out", tmp_path / "model.pt", tmp_path / "graph.json", tmp_path / "predictors.pt",
            ChestPreparer(64), "cxr", texture_tolerance=tolerance,
        )  # fmt: skip
    assert not (tmp_path / "out").exists()
