"""The shipped demo weights: abduction then the null intervention do() (no guidance, 50 DDIM steps, the default one
inversion refinement) gives back the bundle's first 4 sample images within the reconstruction bar: mean absolute
error <= 0.01 on a [0, 1] scale, issue 23's 0.02 on the model's [-1, 1] scale (plain DDIM inversion: about 0.023)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from medcf.core.causal import CausalGraph
from medcf.core.diffusion import DiffusionConfig
from medcf.core.engine import CounterfactualEngine
from medcf.core.guidance_settings import GuidanceSettings
from medcf.core.interventions import parse_intervention
from medcf.core.network import load_checkpoint
from medcf.measure.attribute_effects import evaluate as evaluate_effects
from medcf.measure.marker_presence import evaluate as evaluate_marker
from medcf.prepare.cohort import CohortIndex
from medcf.prepare.inputs import discover_inputs

REPO = Path(__file__).resolve().parents[1]
RECONSTRUCTION_BAR = 0.01  # [0, 1] scale
# sample images reconstructed, the first in file order (all 8 chest and 12 mammogram images: 0.0055, 0.0052 on [-1, 1])
RECONSTRUCTED = 4


def sample_images(bundle: str, model) -> tuple[torch.Tensor, list[dict]]:
    """The bundle's sample DICOMs prepared by the bundle's own inference preparer, with their labels."""
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / "inference.yaml"))
    preparer, dataset_dir = parser.get_parsed_content("preparer"), Path(parser.get_parsed_content("dataset_dir"))
    labels = CohortIndex.from_csv(parser.get_parsed_content("labels"))
    images, factual = [], []
    for source in discover_inputs(dataset_dir):
        outcome = preparer.prepare(str(dataset_dir / source), labels, source)
        if outcome.status == "ok":
            images.append(torch.from_numpy(outcome.array))
            factual.append({name: outcome.details[name] for name in model.schema.names})
    return torch.stack(images), factual


@pytest.mark.parametrize("bundle", ["cxr_counterfactual", "mammo_counterfactual"])
def test_demo_weights_reconstruct_held_out_images(bundle):
    models = REPO / "bundles" / bundle / "models"
    if not (models / "model.pt").is_file():
        pytest.skip(f"{bundle} has no demo weights (models/model.pt) yet")
    model, payload = load_checkpoint(models / "model.pt")
    graph = CausalGraph.load(model.schema, models / "graph.json")
    images, factual = sample_images(bundle, model)
    assert len(images) >= RECONSTRUCTED
    images, factual = images[:RECONSTRUCTED], factual[:RECONSTRUCTED]  # the suite's time: 150 network rows per image
    assert tuple(images.shape[-2:]) == tuple(payload["image_size"])
    engine = CounterfactualEngine(
        model, DiffusionConfig(**payload["diffusion"]), graph, GuidanceSettings(mode="none", steps=50)
    )
    (result,) = engine.run(images, factual, [parse_intervention(model.schema, "do()")])
    errors = ((result.images - images).abs() / 2).flatten(1).mean(1).numpy()
    assert np.mean(errors) <= RECONSTRUCTION_BAR, f"mean absolute error {np.mean(errors):.4f} per image: {errors}"


LEARNT_ATTRIBUTES = {
    "cxr_counterfactual": ("cxr", ("sex", "race")),
    "mammo_counterfactual": ("mammo", ("density", "view")),
}


@pytest.mark.parametrize("bundle", sorted(LEARNT_ATTRIBUTES))
def test_demo_weights_draw_the_phantom_effects_of_their_main_attributes(bundle):
    """Averaged over four starting noises, what sex/race (chest) and density/view (mammogram) change in a
    sample matches where and how the phantom changes it: effect-map correlation above 0.4 (an unconditional
    model draws no effect at all; the model cards give the 16-noise figures)."""
    models = REPO / "bundles" / bundle / "models"
    if not (models / "model.pt").is_file():
        pytest.skip(f"{bundle} has no demo weights (models/model.pt) yet")
    kind, attributes = LEARNT_ATTRIBUTES[bundle]
    result = evaluate_effects(models / "model.pt", kind, seeds=4, steps=10, attributes=attributes)["attributes"]
    for name in attributes:
        assert result[name]["correlation"] > 0.4, f"{name}: {result[name]}"


def test_demo_mammogram_weights_draw_the_skin_marker():
    """Twelve phantom subjects sampled with and without the marker (10 DDIM steps, guidance 3): most marked
    samples show a stronger ring than their unmarked twins (an unconditional model: none; measured 12 of
    12) and the ring scores separate (AUC measured 0.76; the phantom's own images: 1.0)."""
    model = REPO / "bundles" / "mammo_counterfactual" / "models" / "model.pt"
    if not model.is_file():
        pytest.skip("mammo_counterfactual has no demo weights (models/model.pt) yet")
    result = evaluate_marker(model, subjects=12, steps=10, guidance_weight=3.0)
    assert result["phantom"]["auc"] == 1.0
    assert result["model"]["paired_fraction"] >= 0.75 and result["model"]["auc"] > 0.6, result["model"]
