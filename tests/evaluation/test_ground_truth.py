"""The per-image measures against the exact counterfactual (medcf.measure.ground_truth), on constructed maps."""

import math
from pathlib import Path

import pytest
import torch
from monai.transforms import GaussianSmooth

from medcf.core.interventions import parse_intervention
from medcf.measure import ground_truth
from medcf.measure.evaluation_set import TrueChanges, load_evaluation_set
from medcf.measure.phantom_truth import PhantomTruth
from medcf.phantoms.cxr import CXR_SCHEMA
from medcf.phantoms.mammo import MAMMO_SCHEMA
from medcf.prepare import ChestPreparer, MammoPreparer

SIZE = 32
BUNDLES = Path(__file__).resolve().parents[2] / "bundles"


def _textured(count: int, seed: int = 0) -> torch.Tensor:
    """Factual images (N, 1, H, W) on [-1, 1]: a disc of tissue with pixel-scale texture on a -1 background."""
    generator = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    disc = ((y - SIZE / 2 + 0.5) ** 2 + (x - SIZE / 2 + 0.5) ** 2) < (SIZE * 0.4) ** 2
    tissue = 0.2 + 0.4 * torch.rand(count, 1, SIZE, SIZE, generator=generator)
    return torch.where(disc, tissue, torch.full_like(tissue, -1.0))


def _smooth_change(count: int, seed: int = 1) -> torch.Tensor:
    """True changes: a smooth brightening of the tissue, different in size per image."""
    y = torch.linspace(0, 1, SIZE).view(1, 1, SIZE, 1)
    sizes = 0.1 + 0.1 * torch.rand(count, 1, 1, 1, generator=torch.Generator().manual_seed(seed))
    return (sizes * y).expand(count, 1, SIZE, SIZE).clone()


def _blurred(images: torch.Tensor, sigma: float) -> torch.Tensor:
    smooth = GaussianSmooth(sigma=sigma)
    return torch.stack([torch.as_tensor(smooth(image)) for image in images])


@pytest.fixture
def maps():
    generator = torch.Generator().manual_seed(3)
    true_change = torch.randn(4, 1, 8, 8, generator=generator) * 0.1
    effects = {
        "age": torch.randn(4, 1, 8, 8, generator=generator),
        "race": torch.randn(4, 1, 8, 8, generator=generator),
    }
    return true_change, {name: ground_truth.unit_maps(effect) for name, effect in effects.items()}


class TestExactTargetRatio:
    def test_the_truth_itself_is_one_and_twice_it_two(self, maps):
        true_change, _ = maps
        assert ground_truth.exact_target_ratio(true_change, true_change) == pytest.approx(1.0)
        assert ground_truth.exact_target_ratio(2 * true_change, true_change) == pytest.approx(2.0)
        assert ground_truth.exact_target_ratio(torch.zeros_like(true_change), true_change) == 0.0

    def test_images_the_intervention_leaves_alone_do_not_count(self, maps):
        true_change, _ = maps
        true_change = true_change.clone()
        true_change[1:3] = 0  # e.g. do(sex=F) on female subjects
        change = true_change.clone()
        change[1:3] = torch.randn(2, 1, 8, 8)  # whatever the model does there is not a size error
        assert ground_truth.exact_target_ratio(change, true_change) == pytest.approx(1.0)

    def test_the_ratio_weighs_images_by_their_true_change(self):
        true_change = torch.zeros(2, 1, 2, 2)
        true_change[0, 0, 0, 0], true_change[1, 0, 0, 0] = 1.0, 3.0
        change = torch.zeros_like(true_change)
        change[0, 0, 0, 0], change[1, 0, 0, 0] = 2.0, 3.0  # (1*2 + 3*3) / (1 + 9)
        assert ground_truth.exact_target_ratio(change, true_change) == pytest.approx(1.1)

    def test_no_changed_image_is_nan(self):
        assert math.isnan(ground_truth.exact_target_ratio(torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)))


class TestExactOffTarget:
    def test_the_truth_itself_has_none(self, maps):
        true_change, effects = maps
        assert ground_truth.exact_off_target(true_change, true_change, effects) == pytest.approx(0.0, abs=1e-12)

    def test_adding_k_times_another_attributes_unit_effect_gives_k_over_the_true_size(self):
        true_change = torch.zeros(2, 1, 4, 4)
        true_change[0, 0, 0, :] = 0.5  # |t_0| = 1
        true_change[1, 0, 1, :] = 1.0  # |t_1| = 2
        age = torch.zeros(2, 1, 4, 4)
        age[:, 0, 3, 0] = 3.0  # each image's own age effect, not yet of unit norm
        effects = {"age": ground_truth.unit_maps(age)}
        k = 0.3
        change = true_change + k * effects["age"]
        assert ground_truth.exact_off_target(change, true_change, effects) == pytest.approx((k / 1 + k / 2) / 2)
        # twice as far along the attribute: twice the error, whatever the sign
        assert ground_truth.exact_off_target(true_change - 2 * k * effects["age"], true_change, effects) == (
            pytest.approx(2 * (k / 1 + k / 2) / 2)
        )

    def test_each_image_is_measured_along_its_own_effect(self):
        true_change = torch.zeros(2, 1, 4, 4)
        true_change[:, 0, 0, 0] = 1.0
        age = torch.zeros(2, 1, 4, 4)
        age[0, 0, 2, 2], age[1, 0, 3, 3] = 1.0, 1.0  # the attribute draws in different places on the two images
        change = true_change.clone()
        change[0, 0, 3, 3] = 0.5  # image 0 moves where image 1's effect is, not where its own is
        assert ground_truth.exact_off_target(change, true_change, {"age": age}) == pytest.approx(0.0)
        change[1, 0, 3, 3] = 0.5
        assert ground_truth.exact_off_target(change, true_change, {"age": age}) == pytest.approx(0.25)

    def test_attributes_add_and_zero_effects_are_skipped(self):
        true_change = torch.zeros(1, 1, 4, 4)
        true_change[0, 0, 0, 0] = 2.0
        age, race, nothing = (torch.zeros(1, 1, 4, 4) for _ in range(3))
        age[0, 0, 1, 1], race[0, 0, 2, 2] = 1.0, 1.0
        change = true_change + 0.2 * age - 0.4 * race
        effects = {"age": age, "race": race, "nothing": nothing}
        assert ground_truth.exact_off_target(change, true_change, effects) == pytest.approx((0.2 + 0.4) / 2)

    def test_nothing_to_measure_is_nan(self, maps):
        true_change, effects = maps
        assert math.isnan(ground_truth.exact_off_target(true_change, torch.zeros_like(true_change), effects))
        zero = {"race": torch.zeros_like(true_change)}  # mammogram race: no mechanism, no direction
        assert math.isnan(ground_truth.exact_off_target(2 * true_change, true_change, zero))
        assert math.isnan(ground_truth.exact_off_target(2 * true_change, true_change, {}))


class TestUnitMaps:
    def test_each_map_has_norm_one_or_stays_zero(self):
        maps = torch.randn(3, 1, 5, 5)
        maps[1] = 0
        units = ground_truth.unit_maps(maps)
        norms = units.flatten(1).norm(dim=1)
        assert norms[0] == pytest.approx(1.0) and norms[2] == pytest.approx(1.0) and norms[1] == 0.0
        assert torch.allclose(units[2] * maps[2].norm(), maps[2].double())


class TestTexture:
    def test_the_field_is_the_tissue_eroded_by_two_pixels(self):
        factual = torch.full((1, 1, 12, 12), -1.0)
        factual[0, 0, 2:10, 2:10] = 0.3
        field = ground_truth.field_mask(factual)
        assert field.shape == factual.shape and field.dtype == torch.bool
        assert field[0, 0, 4:8, 4:8].all() and int(field.sum()) == 16

    def test_an_exact_counterfactual_scores_one_and_a_blurred_one_well_below(self):
        factual = _textured(3)
        true_change = _smooth_change(3)
        exact = factual + true_change
        reference = factual  # a decoder that keeps every detail
        assert ground_truth.texture_ratio(exact, reference, factual, true_change) == pytest.approx(1.0, abs=1e-6)
        washed = _blurred(exact, sigma=2.0)
        ratio = ground_truth.texture_ratio(washed, reference, factual, true_change)
        assert 0 < ratio < 0.7

    def test_texture_is_measured_relative_to_what_decoding_keeps(self):
        factual = _textured(2)
        true_change = _smooth_change(2)
        # a decoder that halves the texture everywhere, counterfactual included: no loss the intervention adds
        mean = factual.mean()
        reference = mean + 0.5 * (factual - mean)
        counterfactual = mean + 0.5 * (factual + true_change - mean)
        ratio = ground_truth.texture_ratio(counterfactual, reference, factual, true_change)
        assert ratio == pytest.approx(1.0, abs=0.02)

    def test_unchanged_images_do_not_count_and_none_changed_is_nan(self):
        factual = _textured(2)
        true_change = _smooth_change(2)
        true_change[1] = 0
        counterfactual = factual + true_change
        counterfactual[1] = _blurred(counterfactual[1:], sigma=2.0)[0]  # a blurred image the truth leaves alone
        assert ground_truth.texture_ratio(counterfactual, factual, factual, true_change) == pytest.approx(1.0)
        zero = torch.zeros_like(true_change)
        assert math.isnan(ground_truth.texture_ratio(counterfactual, factual, factual, zero))

    def test_high_frequency_is_the_residual_of_a_one_pixel_blur(self):
        flat = torch.full((1, 1, 16, 16), 0.3)
        field = torch.ones(1, 1, 16, 16, dtype=torch.bool)
        # a constant image, the border included (reflected, not zero-padded): no texture at all
        assert float(ground_truth.high_frequency(flat, field)[0]) == pytest.approx(0.0, abs=1e-12)
        checker = 0.3 + 0.1 * (torch.arange(16).view(16, 1) + torch.arange(16).view(1, 16)) % 2
        assert float(ground_truth.high_frequency(checker.view(1, 1, 16, 16).float(), field)[0]) > 0.03
        assert math.isnan(float(ground_truth.high_frequency(flat, torch.zeros_like(field))[0]))


class TestMeanAbsChange:
    def test_the_mean_over_every_pixel_and_image_on_the_model_scale(self):
        change = torch.zeros(2, 1, 2, 2)
        change[0, 0, 0, 0], change[1, 0, 1, 1], change[1, 0, 0, 1] = 0.8, -0.4, 0.4  # 1.6 over 8 pixels
        assert ground_truth.mean_abs_change(change) == pytest.approx(0.2)
        assert ground_truth.mean_abs_change(torch.zeros(3, 1, 4, 4)) == 0.0


@pytest.fixture(scope="module", params=["cxr", "mammo"])
def phantom(request):
    folder, schema, preparer, text = {
        "cxr": (BUNDLES / "cxr_counterfactual" / "sample_data", CXR_SCHEMA, ChestPreparer(64), "do(sex=F)"),
        "mammo": (
            BUNDLES / "mammo_counterfactual" / "sample_data",
            MAMMO_SCHEMA,
            MammoPreparer((64, 64)),
            "do(age=+15)",
        ),
    }[request.param]
    images = load_evaluation_set(folder, folder / "cohort.csv", preparer, schema)
    truth = PhantomTruth.find(folder, schema, request.param)
    return images, TrueChanges(truth, images, preparer), parse_intervention(schema, text)


def test_each_images_own_directions_are_unit_maps_sharing_the_renders_of_the_set_direction(phantom):
    images, changes, _ = phantom
    own, mean = changes.image_directions(), changes.directions()
    assert set(own) == set(mean)
    for name, maps in own.items():
        assert maps.shape == images.images.shape, name
        norms = maps.flatten(1).norm(dim=1)
        assert all(n == pytest.approx(1.0, abs=1e-4) or n == 0.0 for n in norms.tolist()), name
        effects = changes.controlled_effects()[name]
        assert torch.equal(mean[name], ground_truth.unit_direction(effects).float()), name
        # the same maps, up to each image's own size
        assert torch.allclose(
            maps.double() * effects.double().flatten(1).norm(dim=1).view(-1, 1, 1, 1), effects.double(), atol=1e-5
        )


def test_the_phantoms_own_counterfactual_is_exact_on_every_per_image_measure(phantom):
    images, changes, intervention = phantom
    everyone = range(len(images))
    true_change = changes.of_intervention(intervention, everyone)
    assert ground_truth.changed_images(true_change).any()
    counterfactual = changes.factual + true_change
    change = counterfactual - changes.factual  # the "model" is the phantom, its reconstruction the factual render
    own = {name: maps for name, maps in changes.image_directions().items() if name not in intervention.names}
    assert ground_truth.exact_target_ratio(change, true_change) == pytest.approx(1.0, abs=1e-5)
    assert ground_truth.exact_off_target(change, true_change, own) == pytest.approx(0.0, abs=1e-5)
    texture = ground_truth.texture_ratio(counterfactual, changes.factual, changes.factual, true_change)
    assert texture == pytest.approx(1.0, abs=1e-4)
    assert ground_truth.mean_abs_change(change) == pytest.approx(float(true_change.abs().mean()), rel=1e-5)
