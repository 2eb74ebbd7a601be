"""Chest phantom image mechanisms: each attribute changes the picture measurably, and where it should."""

import numpy as np
import pytest

from medcf.phantoms.cxr import ChestXRayPhantom
from medcf.phantoms.textures import smoothstep

SIZE = 128


@pytest.fixture(scope="module")
def phantom() -> ChestXRayPhantom:
    return ChestXRayPhantom()


@pytest.fixture(scope="module")
def subjects(phantom):
    """Middle-aged men without disease: a baseline every intervention below moves away from."""
    return phantom.sample(6, np.random.default_rng(11), do={"sex": "M", "disease": "No Finding", "age": 50.0})


def _difference(phantom, subject, do_a, do_b):
    _, image_a = phantom.true_counterfactual(subject, do_a, SIZE)
    _, image_b = phantom.true_counterfactual(subject, do_b, SIZE)
    return image_b - image_a


class TestExactness:
    def test_null_intervention_reproduces_factual_image_exactly(self, phantom, subjects):
        """do() and do(attribute = its own value) give the factual image bit for bit."""
        for subject in subjects:
            factual = phantom.render(subject, SIZE)
            assert np.array_equal(phantom.true_counterfactual(subject, {}, SIZE)[1], factual)
            same = {"sex": subject.attributes["sex"], "race": subject.attributes["race"]}
            assert np.array_equal(phantom.true_counterfactual(subject, same, SIZE)[1], factual)

    def test_rendering_is_deterministic_and_in_range(self, phantom, subjects):
        """Same subject, same pixels; values lie in [0, 1] and use most of the range."""
        image = phantom.render(subjects[0], SIZE)
        assert np.array_equal(image, phantom.render(subjects[0], SIZE))
        assert image.dtype == np.float32 and image.shape == (SIZE, SIZE)
        assert image.min() >= 0.0 and image.max() <= 1.0
        assert np.percentile(image, 99) - np.percentile(image, 1) > 0.6

    def test_age_acts_on_the_image_only_through_its_recomputed_disease_and_its_own_mechanism(self, phantom, subjects):
        """do(age=a) renders exactly as do(age=a, disease=f(a, u_disease))."""
        for subject in subjects:
            counterfactual, image = phantom.true_counterfactual(subject, {"age": 88.0}, SIZE)
            expected = (
                "Pleural Effusion" if subject.noise["u_disease"] < phantom.effusion_probability(88.0) else "No Finding"
            )
            assert counterfactual.attributes["disease"] == expected
            pinned = phantom.true_counterfactual(subject, {"age": 88.0, "disease": expected}, SIZE)[1]
            assert np.array_equal(image, pinned)


class TestAnatomyVaries:
    def test_different_seeds_give_different_anatomy(self, phantom, subjects):
        """Lung masks of different subjects overlap clearly less than perfectly, and images differ."""
        masks = [phantom.geometry(s, SIZE).lungs > 0.5 for s in subjects]
        for a, b in zip(masks, masks[1:], strict=False):
            iou = (a & b).sum() / (a | b).sum()
            assert iou < 0.97
        images = [phantom.render(s, SIZE) for s in subjects[:3]]
        assert np.abs(images[0] - images[1]).mean() > 0.02

    def test_lateral_view_differs_from_frontal(self, phantom, subjects):
        """The lateral view is a different projection, not the frontal one again."""
        frontal = phantom.render(subjects[0], SIZE)
        lateral = phantom.render(subjects[0], SIZE, view="LATERAL")
        assert lateral.shape == frontal.shape
        assert np.abs(lateral - frontal).mean() > 0.05


class TestMechanismsAreLocal:
    def test_effusion_fills_the_costophrenic_recess(self, phantom, subjects):
        """Pleural effusion brightens the lower lungs; the rest of the image is untouched."""
        for subject in subjects:
            diff = _difference(phantom, subject, {"disease": "No Finding"}, {"disease": "Pleural Effusion"})
            g = phantom.geometry(subject, SIZE)
            lower = g.y > g.params["dome_y"] - 0.45
            assert np.abs(diff[lower]).sum() > 0.97 * np.abs(diff).sum()
            lower_lungs = diff[lower & (g.lungs > 0.5)]
            assert (lower_lungs > 0.05).mean() > 0.05  # a visible opacity over part of the lower lungs
            assert np.percentile(lower_lungs, 95) > 0.1

    def test_female_sex_adds_breast_shadows_over_the_lower_zones(self, phantom, subjects):
        """do(sex=F) brightens the lower lateral chest and leaves the upper chest alone."""
        for subject in subjects:
            diff = _difference(phantom, subject, {"sex": "M"}, {"sex": "F"})
            g = phantom.geometry(subject, SIZE)
            upper = g.y < g.params["dome_y"] - 0.45
            assert np.abs(diff[upper]).sum() < 0.05 * np.abs(diff).sum()
            lower_lateral = ~upper & (np.abs(g.x) > 0.3) & (g.body > 0.5)
            assert diff[lower_lateral].mean() > 0.01

    def test_race_mechanism_is_subtle_and_outside_the_lungs(self, phantom, subjects):
        """Synthetic race mechanism: a small density step in the chest wall, hardly anything in the lungs."""
        for subject in subjects:
            diff = _difference(phantom, subject, {"race": "White"}, {"race": "Black"})
            g = phantom.geometry(subject, SIZE)
            lungs = g.lungs > 0.5
            wall = (g.body > 0.5) & (smoothstep(0.0, 0.6, g.lungs) < 0.05) & (g.heart == 0)
            assert np.abs(diff[lungs]).sum() < 0.15 * np.abs(diff).sum()
            assert 0.005 < diff[wall].mean() < 0.08

    def test_ageing_calcifies_cartilage_and_thins_bone(self, phantom, subjects):
        """With disease pinned, old age adds bright cartilage calcifications beside the heart."""
        for subject in subjects:
            diff = _difference(
                phantom,
                subject,
                {"age": 25.0, "disease": "No Finding"},
                {"age": 90.0, "disease": "No Finding"},
            )
            g = phantom.geometry(subject, SIZE)
            cartilage = (np.abs(g.x) > 0.12) & (np.abs(g.x) < 0.4) & (g.y > -0.1) & (g.y < 0.4)
            assert diff[cartilage].max() > 0.1
            assert np.abs(diff).mean() > 0.003
