"""The phantom's exact attribute sweeps (the reference a model's sample grid is read against)."""

import numpy as np
from PIL import Image

from medcf.phantoms.cxr import ChestXRayPhantom
from medcf.phantoms.mammo import MammogramPhantom
from medcf.phantoms.preview import true_sweep_grid, true_sweeps


def test_true_sweeps_change_exactly_what_the_mechanisms_change():
    phantom = MammogramPhantom()
    (subject,) = phantom.sample(1, np.random.default_rng(4))
    sweeps, labels = true_sweeps(phantom, subject, 32)
    assert labels["density"] == ["A", "B", "C", "D"] and sweeps["density"].shape == (4, 1, 32, 32)
    assert sweeps["density"].min() >= -1 and sweeps["density"].max() <= 1
    race = sweeps["race"]
    assert (race == race[0]).all(), "race has no mechanism in the mammogram phantom"
    density = sweeps["density"]
    assert (density[3] - density[0]).abs().mean() > 0.01, "density D is denser than A"


def test_true_sweep_grid_draws_a_row_pair_per_attribute(tmp_path):
    phantom = ChestXRayPhantom()
    (subject,) = phantom.sample(1, np.random.default_rng(0))
    path = true_sweep_grid(phantom, subject, 32, tmp_path / "truth.png")
    width, height = Image.open(path).size
    assert height > width
