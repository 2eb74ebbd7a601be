"""Attribute effect maps: phantom truth, model maps averaged over noises, agreement figures and the CLI."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from medcf.core.attributes import SchemaError
from medcf.core.diffusion import DiffusionConfig
from medcf.core.network import save_checkpoint
from medcf.measure.attribute_effects import (
    effect_agreement,
    effect_contrasts,
    main,
    model_effect_maps,
    true_effect_maps,
)
from medcf.phantoms.cxr import CXR_SCHEMA
from medcf.phantoms.dataset import make_phantom

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_contrasts_compare_the_ends_of_each_sweep():
    contrasts = effect_contrasts(CXR_SCHEMA)
    assert (contrasts["age"][0]["age"], contrasts["age"][1]["age"]) == (18.0, 95.0)
    first, last = contrasts["disease"]
    assert (first["disease"], last["disease"]) == ("No Finding", "Pleural Effusion")
    assert contrasts["disease"][0]["sex"] == contrasts["disease"][1]["sex"] == "M"


def test_a_subset_of_contrasts_keeps_the_given_order_and_unknown_names_are_refused():
    assert list(effect_contrasts(CXR_SCHEMA, ["race", "sex"])) == ["race", "sex"]
    assert effect_contrasts(CXR_SCHEMA, ["sex"])["sex"] == effect_contrasts(CXR_SCHEMA)["sex"]
    with pytest.raises(SchemaError, match=r"attributes: 'height'; choose from age, sex, race, disease"):
        effect_contrasts(CXR_SCHEMA, ["sex", "height"])
    with pytest.raises(SchemaError, match=r"attributes: none given"):
        effect_contrasts(CXR_SCHEMA, [])


def test_phantom_truth_is_local_for_effusion_and_zero_for_a_mechanism_free_attribute():
    """Effusion brightens only the lower third of a chest (the costophrenic recesses); the mammogram
    phantom has no race mechanism, so its race map is exactly zero while density's is not."""
    chest = true_effect_maps(make_phantom("cxr"), subjects=4, size=32)
    effusion = chest["disease"]
    assert effusion.shape == (32, 32) and effusion.max() > 0.1
    assert np.abs(effusion[: 32 // 2]).max() < 1e-6, "effusion changed the upper half of the chest"
    breast = true_effect_maps(make_phantom("mammo"), subjects=4, size=32)
    assert np.abs(breast["race"]).max() == 0 and np.abs(breast["density"]).mean() > 0.01


def test_agreement_scores_identical_opposite_and_absent_effects():
    truth = {"a": np.arange(16.0).reshape(4, 4), "b": np.zeros((4, 4))}
    same = effect_agreement({"a": 2 * truth["a"], "b": np.ones((4, 4))}, truth)
    assert same["a"]["correlation"] == pytest.approx(1.0) and same["a"]["size_ratio"] == pytest.approx(2.0)
    assert same["b"]["correlation"] is None and same["b"]["size_ratio"] is None and same["b"]["model_size"] == 1.0
    opposite = effect_agreement({"a": -truth["a"], "b": np.zeros((4, 4))}, truth)
    assert opposite["a"]["correlation"] == pytest.approx(-1.0)


def test_model_maps_vanish_without_a_condition_and_average_over_seeds(conditioned_tiny_model):
    """Unconditional sampling (weight 0) cannot tell the two ends apart: every map is exactly zero. With the
    condition the maps are non-zero, and a two-seed map is the mean of the two one-seed maps."""
    model, diffusion = conditioned_tiny_model, DiffusionConfig()
    unconditional = model_effect_maps(model, diffusion, seeds=2, steps=3, size=(16, 16), guidance_weight=0.0)
    assert set(unconditional) == set(CXR_SCHEMA.names)
    assert all(np.abs(m).max() == 0 for m in unconditional.values())
    two = model_effect_maps(model, diffusion, seeds=2, steps=3, size=(16, 16))
    one = model_effect_maps(model, diffusion, seeds=1, steps=3, size=(16, 16))
    assert np.abs(two["sex"]).max() > 1e-3
    second_only = 2 * two["sex"] - one["sex"]  # the seed-1 map implied by the average
    assert not np.allclose(second_only, one["sex"]), "both seeds drew the same noise"
    only_sex = model_effect_maps(model, diffusion, seeds=2, steps=3, size=(16, 16), attributes=["sex"])
    assert list(only_sex) == ["sex"]  # the same noise per seed: the map of a subset is the map of the whole
    np.testing.assert_allclose(only_sex["sex"], two["sex"], atol=1e-5)


def test_command_line_writes_json_and_figure_and_refuses_a_foreign_schema(conditioned_tiny_model, tmp_path, capsys):
    """The CLI reports every attribute and draws the figure; a chest model is refused for the mammogram
    phantom with a message naming the schemas."""
    model = conditioned_tiny_model
    save_checkpoint(tmp_path / "model.pt", model, DiffusionConfig().to_dict(), image_size=[16, 16])
    figure = tmp_path / "effects.png"
    args = ["--model", str(tmp_path / "model.pt"), "--seeds", "1", "--steps", "2", "--figure", str(figure)]
    assert main([*args, "--phantom", "cxr"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["attributes"]) == set(CXR_SCHEMA.names) and result["seeds"] == 1
    assert result["device"] == ("cuda" if torch.cuda.is_available() else "cpu"), "--device auto"
    assert Image.open(figure).size[0] > Image.open(figure).size[1], "four attribute columns, two rows"
    assert main([*args, "--phantom", "cxr", "--attributes", "disease", "sex"]) == 0
    assert list(json.loads(capsys.readouterr().out)["attributes"]) == ["disease", "sex"]
    assert main([*args, "--phantom", "mammo"]) == 2
    assert "schema" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main([*args, "--phantom", "cxr", "--device", "cuda"]) == 2
        assert "device: 'cuda' asked for, but no CUDA GPU is usable here" in capsys.readouterr().err
