"""Statistics of the classifier bias audit on hand-made tables with known answers."""

import json
import math
import time

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from medcf.audit import statistics

DIRECTION_KEYS = [
    "from",
    "to",
    "n",
    "flip_rate",
    "flips",
    "neg_to_pos",
    "pos_to_neg",
    "delta_p",
    "delta_p_ci",
    "delta_p_abs",
    "delta_p_null",
    "delta_p_corrected",
    "delta_p_corrected_ci",
    "p_value",
    "p_adjusted",
]


def direction_rows(attribute, source, target, factual, counterfactual, null, images_per_patient=2):
    """Audit rows of one direction; consecutive images belong to the same patient."""
    n = len(factual)
    return pd.DataFrame(
        {
            "source": [f"{attribute}-{source}-img{i}" for i in range(n)],
            "patient": [f"{source}-pt{i // images_per_patient}" for i in range(n)],
            "attribute": attribute,
            "from": source,
            "to": target,
            "p_factual": factual,
            "p_counterfactual": counterfactual,
            "p_null": null,
            "flipped": (np.asarray(factual) >= 0.5) != (np.asarray(counterfactual) >= 0.5),
        }
    )


def shifted_rows(attribute, source, target, shift, rng, n=40, noise=0.01, null_follows=False):
    """p_counterfactual = p_factual + shift (+ noise); p_null = p_factual, or = p_counterfactual if null_follows."""
    factual = rng.uniform(0.25, 0.55, n)
    counterfactual = factual + shift + (rng.normal(0, noise, n) if noise else 0.0)
    null = counterfactual if null_follows else factual
    return direction_rows(attribute, source, target, factual, counterfactual, null)


def sex_and_race_table(seed=0, sex_shift=0.2):
    """A classifier that reads only sex: +shift for M->F, -shift for F->M, race interventions change nothing."""
    rng = np.random.default_rng(seed)
    return pd.concat(
        [
            shifted_rows("sex", "M", "F", sex_shift, rng),
            shifted_rows("race", "White", "Asian", 0.0, rng, noise=0),
            shifted_rows("sex", "F", "M", -sex_shift, rng),
            shifted_rows("race", "Asian", "White", 0.0, rng, noise=0),
        ],
        ignore_index=True,
    )


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
        interval = statistics.patient_bootstrap_interval(values, patients, resamples=500, seed=7)
        assert interval == statistics.patient_bootstrap_interval(values, patients, resamples=500, seed=7)
        assert interval != statistics.patient_bootstrap_interval(values, patients, resamples=500, seed=8)
        assert interval[0] < values.mean() < interval[1]

    def test_the_pseudonym_key_does_not_change_the_interval(self):
        """Another key renames every patient (and reorders the names); the rows stay in the same order."""
        rng = np.random.default_rng(3)
        values = rng.normal(0.1, 0.2, 60)
        patients = np.repeat([f"CF-{k:02d}" for k in range(30)], 2)
        renamed = np.array([f"CF-{99 - int(p[3:]):02d}" for p in patients])  # reversed sort order
        assert statistics.patient_bootstrap_interval(values, patients, 500, 0) == statistics.patient_bootstrap_interval(
            values, renamed, 500, 0
        )

    def test_a_constant_gives_a_point(self):
        assert statistics.patient_bootstrap_interval(np.full(7, 0.3), [1, 1, 2, 3, 3, 3, 4]) == (0.3, 0.3)

    def test_resamples_patients_not_rows(self):
        # one patient with 100 rows of 1, nine patients with one row of 0: a resample misses the big patient
        # with probability 0.9 ** 10 = 0.35, so the mean spans [0, ~0.96]; as 109 independent rows it is ~0.92 +- 0.05
        values = np.r_[np.ones(100), np.zeros(9)]
        by_patient = statistics.patient_bootstrap_interval(values, np.r_[np.zeros(100), np.arange(1, 10)])
        by_row = statistics.patient_bootstrap_interval(values, np.arange(109))
        assert by_patient[0] == 0.0 and by_patient[1] > 0.9
        assert by_patient[1] - by_patient[0] > 5 * (by_row[1] - by_row[0])

    def test_fast_for_5000_rows(self):
        rng = np.random.default_rng(0)
        start = time.perf_counter()
        statistics.patient_bootstrap_interval(rng.random(5000), np.arange(5000), resamples=2000)
        assert time.perf_counter() - start < 1.0


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


class TestSummarize:
    def test_a_constant_classifier(self):
        table = direction_rows("sex", "M", "F", [0.3] * 10, [0.3] * 10, [0.3] * 10)
        report = statistics.summarize(table, {"sex": 0.95})
        attribute = report["attributes"]["sex"]
        assert attribute["verdict"] == "no dependence detected" and attribute["effectiveness"] == 0.95
        (direction,) = attribute["directions"]
        assert list(direction) == DIRECTION_KEYS
        assert direction["delta_p"] == direction["delta_p_corrected"] == direction["delta_p_abs"] == 0.0
        assert direction["delta_p_ci"] == direction["delta_p_corrected_ci"] == [0.0, 0.0]
        assert direction["flips"] == 0 and direction["flip_rate"] == 0.0
        assert direction["p_value"] == direction["p_adjusted"] == 1.0
        json.dumps(report)

    def test_a_classifier_that_reads_only_sex(self):
        report = statistics.summarize(sex_and_race_table(), {"sex": 0.95, "race": 0.9}, resamples=500)
        sex, race = report["attributes"]["sex"], report["attributes"]["race"]
        assert list(report["attributes"]) == ["sex", "race"]
        assert sex["verdict"] == "depends" and race["verdict"] == "no dependence detected"
        to_female, to_male = sex["directions"]
        assert (to_female["from"], to_female["to"], to_male["from"], to_male["to"]) == ("M", "F", "F", "M")
        assert to_female["delta_p"] == pytest.approx(0.2, abs=0.01)
        assert to_male["delta_p"] == pytest.approx(-0.2, abs=0.01)
        assert to_female["delta_p_corrected_ci"][0] > 0 and to_male["delta_p_corrected_ci"][1] < 0
        assert [d["delta_p"] for d in race["directions"]] == [0.0, 0.0]
        # one BH family over the four directions of both attributes
        family = sex["directions"] + race["directions"]
        adjusted = statistics.adjust_p_values([d["p_value"] for d in family])
        assert [d["p_adjusted"] for d in family] == pytest.approx(adjusted.tolist())

    def test_effectiveness_per_direction_from_the_recognised_column(self):
        table = sex_and_race_table()
        table["recognised"] = (table["from"] == "M") | (table.index % 2 == 0)  # M->F all, F->M half
        report = statistics.summarize(table, {"sex": 0.75, "race": 0.9}, resamples=100)
        to_female, to_male = report["attributes"]["sex"]["directions"]
        assert to_female["effectiveness"] == 1.0 and to_male["effectiveness"] == 0.5

    def test_the_null_intervention_removes_generator_artefacts(self):
        # p_null moves exactly as p_counterfactual: the shift is the generator's, not the attribute's
        table = shifted_rows("sex", "M", "F", 0.15, np.random.default_rng(1), null_follows=True)
        attribute = statistics.summarize(table, {"sex": 0.95}, resamples=500)["attributes"]["sex"]
        (direction,) = attribute["directions"]
        assert direction["delta_p"] == pytest.approx(0.15, abs=0.01)
        assert direction["delta_p_null"] == pytest.approx(direction["delta_p"])
        assert direction["delta_p_corrected"] == 0.0 and direction["delta_p_corrected_ci"] == [0.0, 0.0]
        assert direction["p_value"] == 1.0
        assert attribute["verdict"] == "no dependence detected"

    @pytest.mark.parametrize("effectiveness", [0.5, math.nan])
    def test_ineffective_counterfactuals_are_unreliable_even_for_a_strong_effect(self, effectiveness):
        report = statistics.summarize(sex_and_race_table(sex_shift=0.4), {"sex": effectiveness, "race": 0.9})
        assert report["attributes"]["sex"]["verdict"] == "unreliable"

    def test_a_missing_column_is_named(self):
        table = sex_and_race_table().drop(columns=["p_null", "patient"])
        with pytest.raises(ValueError, match="patient, p_null") as error:
            statistics.summarize(table, {"sex": 0.9, "race": 0.9})
        assert "\n" not in str(error.value)

    def test_an_attribute_without_effectiveness_is_named(self):
        with pytest.raises(ValueError, match="race") as error:
            statistics.summarize(sex_and_race_table(), {"sex": 0.9})
        assert "\n" not in str(error.value)

    def test_direction_summary_wants_one_direction(self):
        with pytest.raises(ValueError, match="one direction"):
            statistics.direction_summary(sex_and_race_table(), 0.5, 100, 0)


class TestVerdict:
    def direction(self, interval, p_adjusted):
        return {"delta_p_corrected_ci": interval, "p_adjusted": p_adjusted}

    def test_needs_both_an_interval_off_zero_and_a_small_adjusted_p(self):
        assert statistics.verdict([self.direction([0.1, 0.3], 0.01)], 0.9, 0.8) == "depends"
        assert statistics.verdict([self.direction([-0.3, -0.1], 0.01)], 0.9, 0.8) == "depends"
        assert statistics.verdict([self.direction([0.0, 0.3], 0.01)], 0.9, 0.8) == "no dependence detected"
        assert statistics.verdict([self.direction([0.1, 0.3], 0.2)], 0.9, 0.8) == "no dependence detected"
        assert statistics.verdict([self.direction([0.1, 0.3], math.nan)], 0.9, 0.8) == "no dependence detected"
        assert statistics.verdict([self.direction([0.1, 0.3], 0.01)], 0.79, 0.8) == "unreliable"


class TestSubgroupRates:
    def test_a_hand_made_case(self):
        scores = [0.9, 0.8, 0.2, 0.1, 0.6, 0.4, 0.7, 0.3, 0.9]
        labels = [1, 1, 0, 0, 1, 1, 0, 0, 1]
        groups = ["A", "A", "A", "A", "B", "B", "B", "B", "C"]
        rates = statistics.subgroup_rates(scores, labels, groups, threshold=0.5)
        assert list(rates.index) == ["A", "B", "C"] and list(rates.columns) == ["n", "auc", "tpr", "fpr"]
        assert rates.loc["A"].tolist() == [4, 1.0, 1.0, 0.0]  # perfect scores
        # B: positives 0.6, 0.4 against negatives 0.7, 0.3 win 2 of 4 pairs; 0.6 and 0.7 pass the threshold
        assert rates.loc["B"].tolist() == [4, 0.5, 0.5, 0.5]
        # C: no negatives, so no AUC and no FPR
        assert rates.loc["C", "n"] == 1 and rates.loc["C", "tpr"] == 1.0
        assert math.isnan(rates.loc["C", "auc"]) and math.isnan(rates.loc["C", "fpr"])

    def test_ties_count_half(self):
        rates = statistics.subgroup_rates([0.5, 0.5], [1, 0], ["A", "A"], threshold=0.5)
        assert rates.loc["A"].tolist() == [2, 0.5, 1.0, 1.0]
