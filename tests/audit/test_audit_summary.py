"""The audit's report per attribute (summaries, verdicts, subgroup rates) on hand-made tables with known answers."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from medcf.measure import audit_summary, statistics

DIRECTION_KEYS = [
    "from",
    "to",
    "n",
    "patients",
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
    "min_patients",
    "detectable_effect",
    "insufficient",
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
            shifted_rows("race", "White", "Asian", 0.0, rng),
            shifted_rows("sex", "F", "M", -sex_shift, rng),
            shifted_rows("race", "Asian", "White", 0.0, rng),
        ],
        ignore_index=True,
    )


class TestSummarize:
    def test_a_constant_classifier_has_a_degenerate_bootstrap(self):
        table = direction_rows("sex", "M", "F", [0.3] * 20, [0.3] * 20, [0.3] * 20)
        report = audit_summary.summarize(table, {"sex": 0.95})
        attribute = report["attributes"]["sex"]
        (direction,) = attribute["directions"]
        assert list(direction) == DIRECTION_KEYS
        assert direction["delta_p"] == direction["delta_p_corrected"] == direction["delta_p_abs"] == 0.0
        assert direction["delta_p_ci"] == direction["delta_p_corrected_ci"] == [0.0, 0.0]
        assert direction["flips"] == 0 and direction["flip_rate"] == 0.0
        assert direction["p_value"] == direction["p_adjusted"] == 1.0
        assert direction["patients"] == 10 and direction["min_patients"] == 6
        assert attribute["verdict"] == "insufficient data" and "zero width" in attribute["reason"]
        json.dumps(report)

    def test_a_classifier_that_reads_only_sex(self):
        report = audit_summary.summarize(sex_and_race_table(), {"sex": 0.95, "race": 0.9}, resamples=500)
        sex, race = report["attributes"]["sex"], report["attributes"]["race"]
        assert list(report["attributes"]) == ["sex", "race"]
        assert sex["verdict"] == "depends" and race["verdict"] == "no dependence detected"
        to_female, to_male = sex["directions"]
        assert (to_female["from"], to_female["to"], to_male["from"], to_male["to"]) == ("M", "F", "F", "M")
        assert to_female["delta_p"] == pytest.approx(0.2, abs=0.01)
        assert to_male["delta_p"] == pytest.approx(-0.2, abs=0.01)
        assert to_female["delta_p_corrected_ci"][0] > 0 and to_male["delta_p_corrected_ci"][1] < 0
        assert "M -> F: corrected delta p +0.2" in sex["reason"]
        # one BH family over the four directions of both attributes
        family = sex["directions"] + race["directions"]
        adjusted = statistics.adjust_p_values([d["p_value"] for d in family])
        assert [d["p_adjusted"] for d in family] == pytest.approx(adjusted.tolist())
        assert {d["min_patients"] for d in family} == {statistics.minimum_patients(4)} == {8}
        # what the race audit could have seen: per-patient noise 0.01 / sqrt(2) on 20 patients at 0.05 / 4
        assert 0.005 < race["detectable_effect"] < 0.02
        assert race["detectable_effect"] == max(d["detectable_effect"] for d in race["directions"])
        assert "would have detected |corrected delta p| >= " in race["reason"] and "80% power" in race["reason"]
        assert math.isnan(sex["detectable_effect"])  # stated only beside "no dependence detected"

    def test_the_sample_data_case_is_insufficient_not_cleared(self):
        """The reported defect: a sex-reading classifier on 8 images, M -> F over 5 patients with an interval
        excluding 0, F -> M over one patient's 3 images. Neither can reach p < 0.05 / 2: insufficient data."""
        rng = np.random.default_rng(4)
        factual = rng.uniform(0.2, 0.5, 5)
        to_female = direction_rows("sex", "M", "F", factual, factual + 0.185, factual, images_per_patient=1)
        to_male = direction_rows("sex", "F", "M", [0.5] * 3, [0.34, 0.35, 0.33], [0.5] * 3, images_per_patient=3)
        report = audit_summary.summarize(pd.concat([to_female, to_male], ignore_index=True), {"sex": 1.0})
        sex = report["attributes"]["sex"]
        assert sex["verdict"] == "insufficient data"
        assert "M -> F: 5 patients (5 images)" in sex["reason"] and "F -> M: 1 patient (3 images)" in sex["reason"]
        assert "at least 7" in sex["reason"]
        line = audit_summary.verdict_line("sex", sex)
        assert line == "sex: insufficient data (M -> F: 5 of 7 patients, F -> M: 1 of 7 patients)"

    def test_one_image_is_insufficient(self):
        table = direction_rows("sex", "M", "F", [0.3], [0.9], [0.3])
        sex = audit_summary.summarize(table, {"sex": 1.0})["attributes"]["sex"]
        assert sex["verdict"] == "insufficient data" and "1 patient (1 image)" in sex["reason"]

    def test_enough_in_one_direction_and_too_few_in_the_other(self):
        """A clear effect in one direction is reported; silence in a direction without patients clears nothing."""
        rng = np.random.default_rng(5)
        enough = shifted_rows("sex", "M", "F", 0.2, rng)
        few = direction_rows("sex", "F", "M", [0.4] * 4, [0.41, 0.39, 0.4, 0.42], [0.4] * 4)
        found = audit_summary.summarize(pd.concat([enough, few], ignore_index=True), {"sex": 1.0})["attributes"]["sex"]
        assert found["verdict"] == "depends"
        quiet = shifted_rows("sex", "M", "F", 0.0, rng)
        found = audit_summary.summarize(pd.concat([quiet, few], ignore_index=True), {"sex": 1.0})["attributes"]["sex"]
        assert found["verdict"] == "insufficient data" and "F -> M: 2 patients" in found["reason"]

    def test_effectiveness_per_direction_from_the_recognised_column(self):
        table = sex_and_race_table()
        table["recognised"] = (table["from"] == "M") | (table.index % 2 == 0)  # M->F all, F->M half
        report = audit_summary.summarize(table, {"sex": 0.75, "race": 0.9}, resamples=100)
        to_female, to_male = report["attributes"]["sex"]["directions"]
        assert to_female["effectiveness"] == 1.0 and to_male["effectiveness"] == 0.5

    def test_the_null_intervention_removes_generator_artefacts(self):
        # p_null moves exactly as p_counterfactual: the shift is the generator's, not the attribute's
        table = shifted_rows("sex", "M", "F", 0.15, np.random.default_rng(1), null_follows=True)
        attribute = audit_summary.summarize(table, {"sex": 0.95}, resamples=500)["attributes"]["sex"]
        (direction,) = attribute["directions"]
        assert direction["delta_p"] == pytest.approx(0.15, abs=0.01)
        assert direction["delta_p_null"] == pytest.approx(direction["delta_p"])
        assert direction["delta_p_corrected"] == 0.0 and direction["delta_p_corrected_ci"] == [0.0, 0.0]
        assert direction["p_value"] == 1.0
        # a classifier that never moves beyond the generator: every patient's delta is 0, a degenerate bootstrap
        assert attribute["verdict"] == "insufficient data" and "zero width" in attribute["reason"]

    @pytest.mark.parametrize("effectiveness", [0.5, math.nan])
    def test_ineffective_counterfactuals_are_unreliable_even_for_a_strong_effect(self, effectiveness):
        report = audit_summary.summarize(sex_and_race_table(sex_shift=0.4), {"sex": effectiveness, "race": 0.9})
        assert report["attributes"]["sex"]["verdict"] == "unreliable"

    def test_a_missing_column_is_named(self):
        table = sex_and_race_table().drop(columns=["p_null", "patient"])
        with pytest.raises(ValueError, match="patient, p_null") as error:
            audit_summary.summarize(table, {"sex": 0.9, "race": 0.9})
        assert "\n" not in str(error.value)

    def test_an_attribute_without_effectiveness_is_named(self):
        with pytest.raises(ValueError, match="race") as error:
            audit_summary.summarize(sex_and_race_table(), {"sex": 0.9})
        assert "\n" not in str(error.value)

    def test_direction_summary_wants_one_direction(self):
        with pytest.raises(ValueError, match="one direction"):
            audit_summary.direction_summary(sex_and_race_table(), 0.5, 100, 0)


class TestVerdict:
    def direction(self, interval, p_adjusted, insufficient=None, detectable=0.05):
        return {"from": "M", "to": "F", "patients": 20, "min_patients": 7, "n": 20, "delta_p_corrected": 0.2,
                "delta_p_corrected_ci": interval, "p_adjusted": p_adjusted, "insufficient": insufficient,
                "detectable_effect": detectable}  # fmt: skip

    def test_needs_both_an_interval_off_zero_and_a_small_adjusted_p(self):
        def name(*directions, effectiveness=0.9):
            return audit_summary.verdict(list(directions), effectiveness, 0.8)[0]

        assert name(self.direction([0.1, 0.3], 0.01)) == "depends"
        assert name(self.direction([-0.3, -0.1], 0.01)) == "depends"
        assert name(self.direction([0.0, 0.3], 0.01)) == "no dependence detected"
        assert name(self.direction([0.1, 0.3], 0.2)) == "no dependence detected"
        assert name(self.direction([0.1, 0.3], math.nan)) == "no dependence detected"
        assert name(self.direction([0.1, 0.3], 0.01), effectiveness=0.79) == "unreliable"

    def test_insufficient_data_comes_first_and_never_clears(self):
        short = self.direction([0.1, 0.3], 0.01, insufficient="F -> M: 3 patients")
        assert audit_summary.verdict([short], 0.9, 0.8) == ("insufficient data", "F -> M: 3 patients")
        assert audit_summary.verdict([short], 0.1, 0.8)[0] == "insufficient data"  # nothing to gate on 3 patients
        assert audit_summary.verdict([self.direction([0.0, 0.3], 0.5), short], 0.9, 0.8)[0] == "insufficient data"
        assert audit_summary.verdict([self.direction([0.1, 0.3], 0.01), short], 0.9, 0.8)[0] == "depends"

    def test_no_dependence_names_the_detectable_effect(self):
        found, reason = audit_summary.verdict([self.direction([-0.01, 0.03], 0.4, detectable=0.042)], 0.9, 0.8)
        assert found == "no dependence detected"
        assert reason == "would have detected |corrected delta p| >= 0.042 (M -> F, 20 patients) with 80% power"
        line = audit_summary.verdict_line("sex", {"verdict": found, "detectable_effect": 0.042, "directions": []})
        assert line == "sex: no dependence detected (|corrected delta p| >= 0.042 detectable at 80% power)"


class TestSubgroupRates:
    def test_a_hand_made_case(self):
        scores = [0.9, 0.8, 0.2, 0.1, 0.6, 0.4, 0.7, 0.3, 0.9]
        labels = [1, 1, 0, 0, 1, 1, 0, 0, 1]
        groups = ["A", "A", "A", "A", "B", "B", "B", "B", "C"]
        rates = audit_summary.subgroup_rates(scores, labels, groups, threshold=0.5, min_images=0, min_class=0)
        assert list(rates.index) == ["A", "B", "C"]
        assert list(rates.columns) == ["n", "positives", "negatives", "auc", "tpr", "fpr"]
        assert rates.loc["A"].tolist() == [4, 2, 2, 1.0, 1.0, 0.0]  # perfect scores
        # B: positives 0.6, 0.4 against negatives 0.7, 0.3 win 2 of 4 pairs; 0.6 and 0.7 pass the threshold
        assert rates.loc["B"].tolist() == [4, 2, 2, 0.5, 0.5, 0.5]
        # C: no negatives, so no AUC and no FPR, whatever the minimum
        assert rates.loc["C"].tolist() == [1, 1, 0, "n too small", 1.0, "n too small"]

    def test_ties_count_half(self):
        rates = audit_summary.subgroup_rates([0.5, 0.5], [1, 0], ["A", "A"], threshold=0.5, min_images=0, min_class=0)
        assert rates.loc["A"].tolist() == [2, 1, 1, 0.5, 1.0, 1.0]

    def test_rates_on_too_few_images_are_withheld(self):
        """Defaults: 20 images in the group and 5 of the class a rate is taken over."""
        rng = np.random.default_rng(0)
        scores = rng.random(60)
        labels = np.r_[np.ones(8), np.zeros(12), np.ones(3), np.zeros(17), np.ones(2), np.zeros(3)].astype(bool)
        groups = np.repeat(["big", "few positives", "small"], [20, 20, 5])
        rates = audit_summary.subgroup_rates(scores[:45], labels[:45], groups, threshold=0.5)
        assert rates.loc["big", ["n", "positives", "negatives"]].tolist() == [20, 8, 12]
        assert all(isinstance(rates.loc["big", key], float) for key in ("auc", "tpr", "fpr"))
        assert rates.loc["few positives", ["auc", "tpr"]].tolist() == ["n too small"] * 2
        assert isinstance(rates.loc["few positives", "fpr"], float)
        assert rates.loc["small", ["n", "auc", "tpr", "fpr"]].tolist() == [5, *["n too small"] * 3]
