"""A job's plain settings are checked once, when the job is made from its YAML keys, in one line naming the key."""

import pytest

from medcf.jobs.inference import InferenceRun
from medcf.prepare import ChestPreparer
from medcf.runtime.settings import require_integer


def test_an_integer_setting_is_refused_below_its_minimum_or_as_another_type():
    assert require_integer("steps", 5, 1) == 5
    for value in (0, 2.0, True, "3", None):
        with pytest.raises(ValueError, match=rf"^steps: {value!r} must be an integer >= 1$"):
            require_integer("steps", value, 1)


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
