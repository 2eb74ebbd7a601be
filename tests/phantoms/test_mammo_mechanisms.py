"""Mammogram phantom image mechanisms: each acts measurably and where it should; race not at all."""

import numpy as np
import pytest

from medcf.phantoms.mammo import DENSITIES, MammogramPhantom

SIZE = 128


@pytest.fixture(scope="module")
def phantom() -> MammogramPhantom:
    return MammogramPhantom()


@pytest.fixture(scope="module")
def subjects(phantom):
    return phantom.sample(6, np.random.default_rng(5), do={"marker": "none", "view": "CC", "age": 45.0})


class TestExactness:
    def test_null_intervention_reproduces_factual_image_exactly(self, phantom, subjects):
        """do() gives the factual image bit for bit."""
        for subject in subjects:
            assert np.array_equal(phantom.true_counterfactual(subject, {}, SIZE)[1], phantom.render(subject, SIZE))

    def test_race_has_no_image_mechanism(self, phantom, subjects):
        """A faithful do(race) changes race only, and the image not by a single bit."""
        for subject in subjects:
            for race in ("White", "Black", "Asian"):
                counterfactual, image = phantom.true_counterfactual(subject, {"race": race}, SIZE)
                assert counterfactual.attributes["density"] == subject.attributes["density"]
                assert np.array_equal(image, phantom.render(subject, SIZE))

    def test_canonical_orientation_has_the_chest_wall_on_the_left(self, phantom, subjects):
        """Rendered breasts touch the left edge and their tissue lies mostly in the left half."""
        for subject in subjects:
            mask = phantom.breast_mask(subject, SIZE) > 0.5
            assert mask[:, 0].mean() > 0.4
            assert mask[:, : SIZE // 2].sum() > 1.5 * mask[:, SIZE // 2 :].sum()


class TestMechanisms:
    def test_density_raises_fibroglandular_brightness_monotonically(self, phantom, subjects):
        """Mean brightness inside the breast grows from density A to D for the same woman."""
        for subject in subjects:
            mask = phantom.breast_mask(subject, SIZE) > 0.5
            means = [phantom.true_counterfactual(subject, {"density": d}, SIZE)[1][mask].mean() for d in DENSITIES]
            assert all(b > a + 0.01 for a, b in zip(means, means[1:], strict=False)), means

    def test_marker_is_a_small_bright_ring_on_the_breast(self, phantom, subjects):
        """do(marker=circle) adds a compact, very bright structure inside the breast and nothing else."""
        for subject in subjects:
            plain = phantom.render(subject, SIZE)
            marked = phantom.true_counterfactual(subject, {"marker": "circle"}, SIZE)[1]
            changed = np.abs(marked - plain) > 0.02
            assert 0.001 < changed.mean() < 0.03
            assert (marked - plain).max() > 0.3
            assert (phantom.breast_mask(subject, SIZE)[changed] > 0.5).mean() > 0.9

    def test_mlo_shows_the_pectoral_muscle(self, phantom, subjects):
        """The top corner at the chest wall is bright muscle in MLO and not in CC."""
        corner = (slice(0, SIZE // 8), slice(0, SIZE // 16))
        for subject in subjects:
            cc = phantom.true_counterfactual(subject, {"view": "CC"}, SIZE)[1]
            mlo = phantom.true_counterfactual(subject, {"view": "MLO"}, SIZE)[1]
            assert mlo[corner].mean() > 0.4
            assert mlo[corner].mean() > cc[corner].mean() + 0.2

    def test_age_calcifies_vessels_beyond_its_effect_on_density(self, phantom, subjects):
        """With density pinned, old age adds thin bright vessel-wall calcifications."""
        for subject in subjects:
            density = subject.attributes["density"]
            young = phantom.true_counterfactual(subject, {"age": 40.0, "density": density}, SIZE)[1]
            old = phantom.true_counterfactual(subject, {"age": 88.0, "density": density}, SIZE)[1]
            brighter = (old - young) > 0.05
            assert 0.002 < brighter.mean() < 0.08
            assert (old - young).min() > -0.05  # ageing adds, it does not erase tissue

    def test_age_lowers_density_through_its_mechanism(self, phantom):
        """Under do(age=85) fewer women are dense (C/D) than under do(age=35), each with her own noise."""
        women = phantom.sample(400, np.random.default_rng(2))
        dense = {
            age: np.mean([phantom.counterfactual(w, {"age": age}).attributes["density"] in "CD" for w in women])
            for age in (35.0, 85.0)
        }
        assert dense[85.0] < dense[35.0] - 0.15

    def test_for_processing_is_raw_detector_signal(self, phantom, subjects):
        """FOR PROCESSING: bright background and darker tissue; FOR PRESENTATION: black background."""
        subject = subjects[0]
        raw = phantom.render(subject, SIZE, for_processing=True)
        shown = phantom.render(subject, SIZE)
        background = phantom.breast_mask(subject, SIZE) < 0.01
        assert raw[background].mean() > 0.95 and shown[background].mean() < 0.02
        tissue = phantom.breast_mask(subject, SIZE) > 0.99
        assert raw[tissue].mean() < raw[background].mean() - 0.2
        assert np.corrcoef(raw[tissue], shown[tissue])[0, 1] < -0.5
