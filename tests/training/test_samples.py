"""Conditional sample grids: the sweeps, shared starting noise and guidance weight semantics."""

import torch
from PIL import Image

from medcf.core.diffusion import DiffusionConfig
from medcf.phantoms.cxr import CXR_SCHEMA
from medcf.training.samples import SampleGridWriter, attribute_sweeps, conditional_samples


def test_sweeps_vary_one_attribute_around_a_shared_base():
    sweeps = attribute_sweeps(CXR_SCHEMA, per_attribute=3)
    assert tuple(sweeps) == CXR_SCHEMA.names
    assert [row["sex"] for row in sweeps["sex"]] == ["M", "F"]
    assert [row["age"] for row in sweeps["age"]] == [18.0, 56.5, 95.0]
    for name, rows in sweeps.items():
        for other in CXR_SCHEMA.names:
            if other != name:
                assert len({row[other] for row in rows}) == 1, f"{other} varies in the {name} sweep"


def test_unconditional_weight_ignores_attributes_and_conditional_sampling_does_not(
    conditioned_tiny_model, one_torch_thread
):
    model, config = conditioned_tiny_model, DiffusionConfig()
    rows = attribute_sweeps(CXR_SCHEMA)["sex"]
    args = (model, config.alphas_cumprod(), config.prediction_type, rows, 4, 0, (16, 16))
    unconditional = conditional_samples(*args, guidance_weight=0.0)
    torch.testing.assert_close(unconditional[0], unconditional[1])
    conditional = conditional_samples(*args)
    assert (conditional[0] - conditional[1]).abs().max() > 1e-3
    assert conditional.abs().max() <= 1.0


def test_writer_draws_one_row_pair_per_attribute(conditioned_tiny_model, tmp_path, one_torch_thread):
    writer = SampleGridWriter(conditioned_tiny_model, DiffusionConfig(), image_size=16, steps=2, guidance_weight=2.0)
    path = writer(3, tmp_path)
    assert path.name == "samples_epoch0003.png"
    width, height = Image.open(path).size
    assert height > width, "one sample row and one difference row for each of the four attributes"
