"""Skin-marker presence: the phantom's marker as a matched filter, separation scores and the CLI."""

import json

import numpy as np
import pytest
import torch

from medcf.core.diffusion import DiffusionConfig
from medcf.core.network import save_checkpoint
from medcf.measure.marker_presence import (
    main,
    marker_scores,
    marker_template,
    model_pairs,
    phantom_pairs,
    separation,
)
from medcf.phantoms.dataset import make_phantom

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def mammo():
    return make_phantom("mammo")


def test_template_is_a_zero_mean_ring(mammo):
    """The averaged marker is a ring: bright on its rim, dark in its middle, and zero-mean, so flat
    tissue scores nothing."""
    template = marker_template(mammo, size=64, subjects=16)
    assert template.shape == (11, 11) and abs(template.sum()) < 1e-4
    assert template[5, 5] < 0 < template.max(), "the ring's centre should be darker than its rim"


def test_every_phantom_marker_is_told_apart_and_unmarked_images_are_not(mammo):
    template = marker_template(mammo, size=64, subjects=16)
    subjects = mammo.sample(24, np.random.default_rng(3))
    marked, unmarked = (marker_scores(images, template) for images in phantom_pairs(mammo, subjects, 64))
    truth = separation(marked, unmarked)
    assert truth["auc"] == 1.0 and truth["paired_fraction"] == 1.0
    halves = separation(unmarked[:12], unmarked[12:])  # two groups of unmarked breasts
    assert 0.2 < halves["auc"] < 0.8 and truth["median_score_with"] > 2 * truth["median_score_without"]


def test_samples_without_the_condition_cannot_show_the_marker(conditioned_tiny_mammo_model, mammo):
    """Unconditional sampling (weight 0) draws the same image with and without the marker: AUC exactly 0.5
    and no pair where the marked one scores higher; with the condition the two samples differ."""
    model, diffusion, subjects = (
        conditioned_tiny_mammo_model,
        DiffusionConfig(),
        mammo.sample(4, np.random.default_rng(0)),
    )
    marked, unmarked = model_pairs(model, diffusion, subjects, steps=2, size=(32, 32), guidance_weight=0.0, per_noise=2)
    assert marked.shape == (4, 32, 32) and np.array_equal(marked, unmarked)
    template = marker_template(mammo, size=32, subjects=8)
    scores = marker_scores(marked, template)
    assert separation(scores, scores)["auc"] == 0.5 and separation(scores, scores)["paired_fraction"] == 0.0
    marked, unmarked = model_pairs(model, diffusion, subjects, steps=2, size=(32, 32))
    assert np.abs(marked - unmarked).max() > 1e-3


def test_command_line_reports_phantom_and_model_and_refuses_a_chest_model(
    conditioned_tiny_mammo_model, conditioned_tiny_model, tmp_path, capsys
):
    mammo_file, chest_file = tmp_path / "mammo.pt", tmp_path / "chest.pt"
    save_checkpoint(mammo_file, conditioned_tiny_mammo_model, DiffusionConfig().to_dict(), image_size=[32, 32])
    save_checkpoint(chest_file, conditioned_tiny_model, DiffusionConfig().to_dict(), image_size=[32, 32])
    assert main(["--model", str(mammo_file), "--subjects", "4", "--steps", "2", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["phantom"]["auc"] == 1.0
    # regression figures of the seeded tiny model on the CPU (4 subjects, 2 steps): the ring scores of its samples
    assert (result["model"]["auc"], result["model"]["paired_fraction"]) == (0.1875, 0.0)
    assert result["model"]["median_score_with"] == pytest.approx(1.241253, rel=1e-4)
    assert result["model"]["median_score_without"] == pytest.approx(1.244515, rel=1e-4)
    assert (result["subjects"], result["steps"], result["device"]) == (4, 2, "cpu")
    assert main(["--model", str(mammo_file), "--subjects", "2", "--steps", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["device"] == ("cuda" if torch.cuda.is_available() else "cpu"), "auto"
    assert main(["--model", str(chest_file), "--subjects", "4", "--steps", "2"]) == 2
    assert "schema" in capsys.readouterr().err
