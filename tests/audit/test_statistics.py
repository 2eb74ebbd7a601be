"""Statistics of the classifier bias audit on hand-made tables with known answers."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from medcf.measure import statistics


class TestFlipCounts:
    def test_a_hand_made_example(self):
        factual = [0.2, 0.7, 0.5, 0.49, 0.9, 0.1]
        counterfactual = [0.6, 0.8, 0.49, 0.5, 0.8, 0.2]
        # neg->pos: rows 0 and 3 (0.49 -> 0.5 reaches the threshold); pos->neg: row 2 (0.5 is positive)
        assert statistics.flip_counts(factual, counterfactual, 0.5) == {
            "n": 6,
            "flips": 3,
            "neg_to_pos": 2,
            "pos_to_neg": 1,
            "flip_rate": 0.5,
        }

    def test_the_threshold_moves_the_flips(self):
        assert statistics.flip_counts([0.2, 0.7], [0.6, 0.8], 0.65)["flips"] == 0

    def test_no_rows_give_a_nan_rate(self):
        counts = statistics.flip_counts([], [], 0.5)
        assert counts["n"] == counts["flips"] == 0 and math.isnan(counts["flip_rate"])


class TestPatientBootstrap:
    def test_reproducible_and_contains_the_mean(self):
        rng = np.random.default_rng(3)
        values, patients = rng.normal(1.0, 1.0, 300), rng.integers(0, 40, 300)
        estimate, interval = statistics.patient_bootstrap(values, patients, resamples=500, seed=7)
        assert (estimate, interval) == statistics.patient_bootstrap(values, patients, resamples=500, seed=7)
        assert interval != statistics.patient_bootstrap(values, patients, resamples=500, seed=8)[1]
        assert estimate == pytest.approx(values.mean()) and interval[0] < estimate < interval[1]

    def test_the_pseudonym_key_does_not_change_the_interval(self):
        """Another key renames every patient (and reorders the names); the rows stay in the same order."""
        rng = np.random.default_rng(3)
        values = rng.normal(0.1, 0.2, 60)
        patients = np.repeat([f"CF-{k:02d}" for k in range(30)], 2)
        renamed = np.array([f"CF-{99 - int(p[3:]):02d}" for p in patients])  # reversed sort order
        assert statistics.patient_bootstrap(values, patients, 500, 0) == statistics.patient_bootstrap(
            values, renamed, 500, 0
        )

    def test_a_constant_gives_a_point(self):
        assert statistics.patient_bootstrap(np.full(7, 0.3), [1, 1, 2, 3, 3, 3, 4]) == (0.3, (0.3, 0.3))

    def test_one_patient_gives_its_mean_as_a_point_of_zero_width(self):
        """The failure of make test on a fresh clone: one patient's three rows (the F -> M direction of the
        sample data). The mean and the interval come from the same sums, so the interval is exactly the mean."""
        values = [0.2739233746429086, -0.4604265724722594, -0.9180529521276106]  # np.mean rounds differently
        estimate, (low, high) = statistics.patient_bootstrap(values, ["a", "a", "a"])
        assert low == estimate == high and estimate == pytest.approx(np.mean(values))

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(st.tuples(st.floats(-1, 1, allow_nan=False), st.integers(0, 5)), min_size=1, max_size=30),
        st.integers(1, 60),
        st.integers(0, 3),
    )
    def test_the_interval_contains_its_estimate_by_construction(self, rows, resamples, seed):
        values, patients = zip(*rows, strict=True)
        estimate, (low, high) = statistics.patient_bootstrap(values, patients, resamples, seed)
        assert low <= estimate <= high

    def test_resamples_patients_not_rows(self):
        # one patient with 100 rows of 1, nine patients with one row of 0: a resample misses the big patient
        # with probability 0.9 ** 10 = 0.35, so the mean spans [0, ~0.96]; as 109 independent rows it is ~0.92 +- 0.05
        values = np.r_[np.ones(100), np.zeros(9)]
        _, by_patient = statistics.patient_bootstrap(values, np.r_[np.zeros(100), np.arange(1, 10)])
        _, by_row = statistics.patient_bootstrap(values, np.arange(109))
        assert by_patient[0] == 0.0 and by_patient[1] > 0.9
        assert by_patient[1] - by_patient[0] > 5 * (by_row[1] - by_row[0])


class TestPairedPValue:
    def test_averages_per_patient_before_the_signed_rank_test(self):
        # rows of each patient disagree in sign, their means are all positive and distinct:
        # the exact two-sided p-value of 6 positive ranks is 2 / 2**6
        deltas = [0.5, -0.1, 0.3, 0.4, -0.2, 0.8, 0.5, 0.6, 0.7, -0.1, 0.9]
        patients = ["a", "a", "b", "c", "c", "d", "e", "e", "f", "f", "f"]
        assert statistics.paired_p_value(deltas, patients) == pytest.approx(2 / 2**6)

    def test_matches_wilcoxon_on_patient_means(self):
        assert statistics.paired_p_value([1, 3, 2, -1], ["a", "a", "b", "c"]) == stats.wilcoxon([2, 2, -1]).pvalue

    def test_all_zero_means_give_one(self):
        assert statistics.paired_p_value([0.1, -0.1, 0.0], ["a", "a", "b"]) == 1.0

    def test_one_patient_gives_nan(self):
        assert math.isnan(statistics.paired_p_value([0.1, 0.2], ["a", "a"]))


class TestAdjustPValues:
    def test_benjamini_hochberg_by_hand(self):
        # sorted 0.01, 0.03, 0.04, 0.2 -> 4p/rank = 0.04, 0.06, 0.0533, 0.2 -> running minimum from the top
        adjusted = statistics.adjust_p_values([0.01, 0.04, 0.03, 0.2])
        np.testing.assert_allclose(adjusted, [0.04, 0.16 / 3, 0.16 / 3, 0.2])

    def test_nans_stay_and_do_not_count(self):
        adjusted = statistics.adjust_p_values([0.01, math.nan, 0.04, 0.03, 0.2])
        assert math.isnan(adjusted[1])
        np.testing.assert_allclose(adjusted[[0, 2, 3, 4]], [0.04, 0.16 / 3, 0.16 / 3, 0.2])
        assert np.isnan(statistics.adjust_p_values([math.nan, math.nan])).all()


class TestWhatAnAuditCouldSee:
    @pytest.mark.parametrize("n", range(2, 21))
    def test_the_smallest_p_of_the_exact_signed_rank_test(self, n):
        assert statistics.smallest_p_value(n) == pytest.approx(2 / 2**n)
        # and no arrangement of n patient means gives less
        assert statistics.paired_p_value(np.arange(1, n + 1) * 0.01, np.arange(n)) == statistics.smallest_p_value(n)

    def test_below_two_patients_no_test_runs(self):
        assert statistics.smallest_p_value(1) == statistics.smallest_p_value(0) == 1.0

    @pytest.mark.parametrize(("directions", "patients"), [(1, 6), (2, 7), (4, 8), (10, 9), (40, 11)])
    def test_the_minimum_patients_reach_alpha_over_the_family(self, directions, patients):
        """The fewest patients whose smallest attainable p is at most 0.05 / directions, and no fewer."""
        assert statistics.minimum_patients(directions) == patients
        assert statistics.smallest_p_value(patients) <= 0.05 / directions < statistics.smallest_p_value(patients - 1)

    @pytest.mark.parametrize("n", [7, 20])
    def test_the_detectable_effect_has_the_stated_power(self, n):
        """Checked on fresh draws: the signed-rank test at level 0.025 on n patients with per-patient sd 0.1 rejects
        a shift of the detectable effect in 80 % of them (7 patients: the exact test's coarse p-values included)."""
        rng = np.random.default_rng(n)
        spread, level = 0.1, 0.025
        sample = rng.normal(0.0, spread, n)
        sample = (sample - sample.mean()) / sample.std(ddof=1) * spread  # an sd of exactly 0.1
        effect = statistics.detectable_effect(sample, level)
        assert 0.05 < effect < 0.25
        draws = rng.normal(effect, spread, (4000, n))
        assert np.mean(stats.wilcoxon(draws, axis=1).pvalue < level) == pytest.approx(0.8, abs=0.03)
        assert np.mean(stats.wilcoxon(draws - 0.2 * effect, axis=1).pvalue < level) < 0.75  # and no less would do

    def test_more_patients_detect_less(self):
        sample = np.random.default_rng(0).normal(0.0, 0.1, 20)
        effects = [statistics.detectable_effect(np.tile(sample, k), 0.025) for k in (1, 4)]
        assert effects[1] == pytest.approx(effects[0] / 2, rel=0.1)  # the 1 / sqrt(n) law

    def test_too_few_patients_for_the_level_state_no_power(self):
        assert math.isnan(statistics.detectable_effect([0.1, 0.3, 0.2, 0.5, 0.4], 0.025))  # 5 patients: p >= 1/16

    def test_no_spread_or_one_patient_states_no_power(self):
        assert math.isnan(statistics.detectable_effect([0.2, 0.2, 0.2], 0.05))
        assert math.isnan(statistics.detectable_effect([0.2], 0.05))
