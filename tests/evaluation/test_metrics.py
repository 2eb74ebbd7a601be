"""Soundness metrics and ground-truth metrics on hand-made cases with known answers."""

import math

import numpy as np
import pytest
import torch

from medcf.core.attributes import AttributeSchema
from medcf.measure import ground_truth, metrics

SCHEMA = AttributeSchema.from_config(
    [
        {"name": "age", "kind": "continuous", "low": 18, "high": 95},
        {"name": "sex", "kind": "categorical", "values": ["M", "F"]},
        {"name": "race", "kind": "categorical", "values": ["White", "Asian", "Black"]},
    ]
)


def images(n=3, value=0.0, size=16):
    return torch.full((n, 1, size, size), value)


class TestDistances:
    def test_identical_images_are_zero_apart_and_fully_similar(self):
        x = torch.rand(3, 1, 16, 16) * 2 - 1
        assert metrics.l1_255(x, x).tolist() == [0.0, 0.0, 0.0]
        assert metrics.ssim(x, x).tolist() == pytest.approx([1.0, 1.0, 1.0])

    def test_a_pure_shift_is_its_size_on_the_255_scale(self):
        # +0.2 on the [-1, 1] scale is +0.1 on [0, 1]: 25.5 grey levels
        assert metrics.l1_255(images(2, 0.2), images(2, 0.0)).tolist() == pytest.approx([25.5, 25.5])

    def test_ssim_falls_for_a_different_structure(self):
        x = torch.rand(2, 1, 32, 32) * 2 - 1
        assert (metrics.ssim(x, -x) < 0.5).all()


class TestRocAuc:
    def test_hand_computed(self):
        # pairs (pos, neg): (0.35, 0.1) yes, (0.35, 0.4) no, (0.8, 0.1) yes, (0.8, 0.4) yes -> 3/4
        assert metrics.roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75

    def test_ties_count_half_and_one_class_is_nan(self):
        assert metrics.roc_auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
        assert math.isnan(metrics.roc_auc(np.array([0.2, 0.9]), np.array([1, 1])))


class TestEffectiveness:
    def test_a_known_flip(self):
        # four counterfactuals asked to be F: the predictor says F for three of them
        predicted = {"sex": torch.tensor([[0.1, 0.9], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])}
        targets = [{"sex": "F"}] * 4
        scores = metrics.effectiveness(SCHEMA, "sex", predicted, targets)
        assert scores["accuracy"] == 0.75
        assert scores["target_probability"] == pytest.approx((0.9 + 0.8 + 0.4 + 0.7) / 4)
        assert math.isnan(scores["auroc"]), "one target class: no AUROC"

    def test_auroc_with_both_targets(self):
        predicted = {"sex": torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])}
        targets = [{"sex": v} for v in ("M", "F", "M", "F")]
        scores = metrics.effectiveness(SCHEMA, "sex", predicted, targets)
        assert scores["accuracy"] == 1.0 and scores["auroc"] == 1.0

    def test_age_is_a_mean_absolute_error_in_years(self):
        scores = metrics.effectiveness(SCHEMA, "age", {"age": torch.tensor([50.0, 70.0])}, [{"age": 55}, {"age": 60}])
        assert scores == {"mae": 7.5}

    def test_macro_auroc_over_the_targets_present(self):
        probabilities = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.2, 0.1, 0.7]])
        targets = [{"race": "White"}, {"race": "Black"}, {"race": "Black"}]
        scores = metrics.effectiveness(SCHEMA, "race", {"race": probabilities}, targets)
        assert scores["accuracy"] == 1.0 and scores["auroc"] == 1.0


class TestOffTarget:
    def test_signed_and_absolute_change_of_the_own_value(self):
        factual = [{"sex": "M", "race": "White", "age": 40}, {"sex": "F", "race": "Black", "age": 60}]
        before = {"sex": torch.tensor([[0.9, 0.1], [0.2, 0.8]]), "age": torch.tensor([41.0, 58.0])}
        after = {"sex": torch.tensor([[0.7, 0.3], [0.1, 0.9]]), "age": torch.tensor([45.0, 58.0])}
        changes = metrics.off_target_change(SCHEMA, ["sex", "age"], before, after, factual)
        # own-value probability: M 0.9 -> 0.7 (-0.2), F 0.8 -> 0.9 (+0.1)
        assert changes["sex"]["signed"] == pytest.approx(-0.05)
        assert changes["sex"]["absolute"] == pytest.approx(0.15)
        assert changes["age"] == {"signed": 2.0, "absolute": 2.0}

    def test_unchanged_predictions_give_zero(self):
        factual = [{"sex": "M"}]
        before = {"sex": torch.tensor([[0.6, 0.4]])}
        assert metrics.off_target_change(SCHEMA, ["sex"], before, before, factual)["sex"] == {
            "signed": 0.0,
            "absolute": 0.0,
        }


class TestMinimality:
    def test_relative_to_the_distance_between_real_images_sharing_the_attribute(self):
        real = torch.cat([images(1, -1.0), images(1, 0.0), images(1, 1.0)])
        rows = [{"sex": "F"}, {"sex": "F"}, {"sex": "M"}]
        # the only F pair is 0 vs -1: 127.5 grey levels; the counterfactual moved 25.5 -> 0.2
        value = metrics.minimality(images(1, 0.0), images(1, 0.2), [{"sex": "F"}], real, rows, ["sex"])
        assert value == pytest.approx(0.2)

    def test_an_unmoved_counterfactual_is_zero(self):
        real = torch.cat([images(1, -1.0), images(1, 1.0)])
        rows = [{"sex": "F"}, {"sex": "M"}]
        assert metrics.minimality(images(1, 0.3), images(1, 0.3), [{"sex": "F"}], real, rows, ["sex"]) == 0.0


class TestFrechetDistance:
    def test_same_features_are_zero_and_a_mean_shift_is_its_squared_size(self):
        generator = torch.Generator().manual_seed(0)
        features = torch.randn(200, 4, generator=generator, dtype=torch.float64)
        assert metrics.frechet_distance(features, features) == pytest.approx(0.0, abs=1e-6)
        shifted = features + torch.tensor([3.0, 0.0, 4.0, 0.0], dtype=torch.float64)
        assert metrics.frechet_distance(shifted, features) == pytest.approx(25.0, abs=1e-6)

    def test_too_few_images_is_nan(self):
        assert math.isnan(metrics.frechet_distance(torch.zeros(1, 3), torch.zeros(5, 3)))


class TestGroundTruth:
    def setup_method(self):
        generator = torch.Generator().manual_seed(1)
        self.true_change = torch.randn(4, 1, 8, 8, generator=generator) * 0.1 + 0.05

    def test_the_true_change_itself_has_no_error_and_ratio_one(self):
        direction = ground_truth.unit_direction(self.true_change)
        assert ground_truth.truth_error(self.true_change, self.true_change) == 0.0
        assert ground_truth.target_ratio(self.true_change, self.true_change, direction) == pytest.approx(1.0)
        assert ground_truth.off_target_error(self.true_change, self.true_change, direction) == 0.0

    def test_twice_the_change_overshoots_two_fold_and_none_is_zero(self):
        direction = ground_truth.unit_direction(self.true_change)
        assert ground_truth.target_ratio(2 * self.true_change, self.true_change, direction) == pytest.approx(2.0)
        assert ground_truth.target_ratio(0 * self.true_change, self.true_change, direction) == 0.0

    def test_truth_error_is_on_the_unit_scale(self):
        # a change of 0.4 on [-1, 1] where the truth has none: 0.2 on [0, 1]
        assert ground_truth.truth_error(torch.full((2, 1, 4, 4), 0.4), torch.zeros(2, 1, 4, 4)) == pytest.approx(0.2)

    def test_unit_direction_has_norm_one(self):
        assert float(ground_truth.unit_direction(self.true_change).norm()) == pytest.approx(1.0)
        assert float(ground_truth.unit_direction(torch.zeros(3, 1, 4, 4)).abs().sum()) == 0.0

    def test_no_true_effect_gives_nan_ratio(self):
        zero = torch.zeros(2, 1, 4, 4)
        assert math.isnan(ground_truth.target_ratio(torch.ones(2, 1, 4, 4), zero, ground_truth.unit_direction(zero)))

    def test_off_target_error_measures_movement_along_another_direction(self):
        direction = torch.zeros(1, 4, 4)
        direction[0, 0, 0] = 1.0  # a unit map on one pixel
        change = torch.zeros(2, 1, 4, 4)
        change[:, 0, 0, 0] = 0.6  # 0.3 on the unit scale, along the direction; the truth has none
        assert ground_truth.off_target_error(change, torch.zeros_like(change), direction) == pytest.approx(0.3)
