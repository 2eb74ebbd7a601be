"""Matching statistics (medcf.measure.matching, pixel_effect, weight_search): expected shifts from real images, the
shift ratio, the pixel effect and the weight search."""

import math

import numpy as np
import pytest
import torch

from medcf.measure.matching import expected_effect, raw_readings, reading, rendering_slope, shift_ratio
from medcf.measure.pixel_effect import pixel_effect
from medcf.measure.predictors import AttributePredictor
from medcf.measure.weight_search import grows_with_weight, match_weight, search_weight
from medcf.phantoms.cxr import CXR_SCHEMA


def rows_with(name, values, seed=0):
    """Attribute rows with ``name`` set to ``values`` and the other attributes drawn independently."""
    rng = np.random.default_rng(seed)
    rows = []
    for value in values:
        row = {"age": float(rng.uniform(20, 90)), "sex": str(rng.choice(["M", "F"]))}
        row["race"] = str(rng.choice(["White", "Asian", "Black"]))
        row["disease"] = str(rng.choice(["No Finding", "Pleural Effusion"]))
        rows.append({**row, name: value})
    return rows


def test_expected_shift_is_the_difference_of_class_means_of_the_contrast_logit():
    rng = np.random.default_rng(0)
    labels = ["M"] * 30 + ["F"] * 30
    logits = torch.zeros(60, 2, dtype=torch.float64)
    logits[:30, 0] = torch.from_numpy(rng.normal(2.0, 0.5, 30))  # M images: logit_M high
    logits[30:, 1] = torch.from_numpy(rng.normal(3.0, 0.5, 30))  # F images: logit_F high
    effect = expected_effect(CXR_SCHEMA, "sex", logits, rows_with("sex", labels))
    contrast = (logits[:, 1] - logits[:, 0]).numpy()
    plain = contrast[30:].mean() - contrast[:30].mean()  # the other attributes are independent of sex here
    assert effect.of("M", "F") == pytest.approx(plain, abs=0.15)
    assert effect.of("F", "M") == pytest.approx(effect.of("M", "F"))  # L_MF = -L_FM, and the classes swap
    assert effect.detected and effect.z > 20 and effect.counts == {"M": 30, "F": 30}
    assert torch.equal(reading(CXR_SCHEMA, "sex", logits, "M", "F"), logits[:, 1] - logits[:, 0])


def test_no_effect_is_detected_where_the_classes_read_alike_or_a_value_has_one_image():
    rng = np.random.default_rng(1)
    logits = torch.from_numpy(rng.normal(0, 1, (40, 3)))
    alike = expected_effect(CXR_SCHEMA, "race", logits, rows_with("race", ["White", "Black"] * 20))
    assert not alike.detected and alike.z < 3
    lone = expected_effect(CXR_SCHEMA, "race", logits, rows_with("race", ["White"] * 39 + ["Asian"]))
    assert not lone.detected and math.isnan(lone.of("White", "Asian"))


def test_a_continuous_attribute_expects_the_predictors_own_slope_times_the_shift():
    ages = np.linspace(20, 90, 50)
    read = torch.from_numpy(40 + 0.5 * ages + np.random.default_rng(2).normal(0, 1, 50))
    effect = expected_effect(CXR_SCHEMA, "age", read, rows_with("age", list(ages)))
    assert effect.slope == pytest.approx(0.5, abs=0.03) and effect.detected
    assert effect.of(40.0, 60.0) == pytest.approx(20 * effect.slope)


def test_an_attribute_associated_with_the_intervened_one_is_not_credited_to_it():
    """The sex logit reads age only; older patients are more often female. The class means differ, but holding age
    fixed sex has no effect on the reading: nothing to match."""
    rng = np.random.default_rng(3)
    ages = rng.uniform(20, 90, 200)
    sexes = np.where(rng.uniform(size=200) < (ages - 10) / 90, "F", "M")
    logits = torch.zeros(200, 2, dtype=torch.float64)
    logits[:, 1] = torch.from_numpy(0.08 * ages + rng.normal(0, 0.3, 200))
    rows = [
        {**row, "age": float(a), "sex": str(s)} for row, a, s in zip(rows_with("sex", sexes), ages, sexes, strict=True)
    ]
    plain = float(logits[sexes == "F", 1].mean() - logits[sexes == "M", 1].mean())
    effect = expected_effect(CXR_SCHEMA, "sex", logits, rows)
    assert plain > 1.0 and abs(effect.of("M", "F")) < 0.15 and not effect.detected


def test_a_patients_images_count_as_one_patient_of_evidence_not_five():
    """Twenty patients of five images each; the sex logit reads each patient's own offset (sd 1) and a sex effect
    of 1. Counted per image the effect looks detected (z 4.0); clustered by patient its standard error is the
    patients' (z 1.8; over six draws the clustered z is 2.2-2.3x smaller)."""
    rng = np.random.default_rng(5)
    patients, per_patient = 20, 5
    sexes = np.repeat(np.asarray(["M", "F"] * (patients // 2)), per_patient)
    offsets = np.repeat(rng.normal(0, 1.0, patients), per_patient)
    logits = torch.zeros(patients * per_patient, 2, dtype=torch.float64)
    logits[:, 1] = torch.from_numpy(offsets + 1.0 * (sexes == "F") + rng.normal(0, 0.1, len(sexes)))
    rows = rows_with("sex", sexes)
    owners = [f"p{k // per_patient}" for k in range(len(rows))]
    per_image = expected_effect(CXR_SCHEMA, "sex", logits, rows)
    clustered = expected_effect(CXR_SCHEMA, "sex", logits, rows, patients=owners)
    assert clustered.of("M", "F") == per_image.of("M", "F")  # the same estimate, another standard error
    assert per_image.detected and not clustered.detected
    assert clustered.z < per_image.z / 1.8


def test_shift_ratio_projects_measured_on_expected_and_skips_unknown_moves():
    assert shift_ratio([2.0, 4.0], [1.0, 2.0]) == pytest.approx(2.0)
    assert shift_ratio([1.0, 5.0, 3.0], [1.0, math.nan, 3.0]) == pytest.approx(1.0)
    assert math.isnan(shift_ratio([1.0], [0.0]))


def test_search_finds_the_weight_of_ratio_one_on_a_monotone_response():
    calls = []

    def ratio(w):
        calls.append(w)
        return 0.2 + 0.4 * w**1.2  # R = 1 at w = 2 ** (1 / 1.2)

    found = search_weight(ratio, start=(1.0, 2.0), bounds=(0.0, 8.0), tolerance=0.01, max_evaluations=5)
    assert found.status == "matched" and found.weight == pytest.approx(2 ** (1 / 1.2), abs=0.02)
    assert calls[:2] == [1.0, 2.0] and len(calls) <= 5


def test_search_reports_the_bound_when_the_match_lies_beyond_it():
    found = search_weight(lambda w: 0.05 + 0.02 * w, bounds=(0.0, 8.0), max_evaluations=4)
    assert found.status == "bound" and found.weight == 8.0
    overshoot = search_weight(lambda w: 1.5 + 0.5 * w, bounds=(0.0, 8.0), max_evaluations=4)
    assert overshoot.status == "bound" and overshoot.weight == 0.0
    with pytest.raises(ValueError, match="search_weight"):
        search_weight(lambda w: 1.0, bounds=(3.0, 1.0))


def test_raw_readings_do_not_clamp_age_or_squash_logits():
    torch.manual_seed(0)
    predictor = AttributePredictor(CXR_SCHEMA)
    images = torch.randn(3, 1, 32, 32)
    readings = raw_readings(predictor, images)
    predictor.eval()
    with torch.no_grad():
        raw = predictor.split_outputs(predictor(images))
    assert torch.allclose(readings["sex"], raw["sex"].double())
    assert torch.allclose(readings["age"], (18 + raw["age"][:, 0] * (95 - 18)).double())
    predictor.train()
    raw_readings(predictor, images)
    assert predictor.training


def test_the_pixel_effect_map_is_the_adjusted_class_difference_and_its_norm_is_unbiased():
    """Images = noise + 0.5 x a pattern for F + 0.02 x age x another pattern, older patients more often F: the
    map of M -> F is the first pattern (age held fixed), its squared norm estimate is near |pattern|^2 although
    each half's map carries noise, and pure noise is not taken for an effect."""
    rng = np.random.default_rng(4)
    n, side = 240, 16
    sex_pattern = np.zeros((side, side))
    sex_pattern[10:, 2:14] = 1.0
    age_pattern = np.zeros((side, side))
    age_pattern[:6, :] = 1.0
    ages = rng.uniform(20, 90, n)
    sexes = np.where(rng.uniform(size=n) < (ages - 10) / 90, "F", "M")
    images = rng.normal(0, 0.3, (n, 1, side, side))
    images[:, 0] += 0.5 * (sexes == "F")[:, None, None] * sex_pattern + 0.02 * ages[:, None, None] * age_pattern
    rows = [
        {**row, "age": float(a), "sex": str(s)} for row, a, s in zip(rows_with("sex", sexes), ages, sexes, strict=True)
    ]
    effect = pixel_effect(CXR_SCHEMA, "sex", torch.from_numpy(images), rows)
    found, squared = effect.of("M", "F")
    assert effect.detected
    assert np.abs(found[0].numpy() - 0.5 * sex_pattern).mean() < 0.05  # age's pattern is not in it
    assert squared == pytest.approx(float(((0.5 * sex_pattern) ** 2).sum()), rel=0.15)
    noise = pixel_effect(CXR_SCHEMA, "sex", torch.from_numpy(rng.normal(0, 0.3, (n, 1, side, side))), rows)
    assert not noise.detected


def test_the_squared_norm_of_the_map_splits_patients_so_their_shared_anatomy_is_not_counted_as_effect():
    """Four images per patient sharing the patient's anatomy (a random pattern of sd 0.4) with sex set per patient:
    halves that split images put each patient's anatomy in both halves' maps and <m_1, m_2> then counts it as
    effect (measured 1.9x |effect|^2 with these draws, 1.5-2.0x over six seeds); halves of patients do not (1.08x;
    0.7-1.2x)."""
    rng = np.random.default_rng(4)
    patients, per_patient, side = 60, 4, 16
    effect_map = np.zeros((side, side))
    effect_map[8:, 4:12] = 0.2
    sexes = np.repeat(np.where(rng.uniform(size=patients) < 0.5, "F", "M"), per_patient)
    anatomy = np.repeat(rng.normal(0, 0.4, (patients, side, side)), per_patient, axis=0)
    images = anatomy + rng.normal(0, 0.05, anatomy.shape) + (sexes == "F")[:, None, None] * effect_map
    rows = [{**row, "age": 50.0} for row in rows_with("sex", sexes)]
    owners = [f"p{k // per_patient}" for k in range(len(rows))]
    truth = float((effect_map**2).sum())
    by_image = pixel_effect(CXR_SCHEMA, "sex", torch.from_numpy(images[:, None]), rows).of("M", "F")[1]
    by_patient = pixel_effect(CXR_SCHEMA, "sex", torch.from_numpy(images[:, None]), rows, patients=owners)
    assert by_image > 1.5 * truth
    assert by_patient.of("M", "F")[1] == pytest.approx(truth, rel=0.3)
    with pytest.raises(ValueError, match="patients: 3 given for 240 images"):
        pixel_effect(CXR_SCHEMA, "sex", torch.from_numpy(images[:, None]), rows, patients=owners[:3])


def test_rendering_slope_is_how_much_of_a_reading_survives_the_round_trip():
    real = [0.0, 1.0, 2.0, 3.0, -1.0]
    assert rendering_slope(real, [0.7 * x + 0.2 for x in real]) == pytest.approx(0.7)
    assert math.isnan(rendering_slope([1.0, 1.0, 1.0], [0.0, 1.0, 2.0]))


def test_a_ratio_that_does_not_rise_with_the_weight_hands_the_search_to_the_fallback():
    # the skin marker as calibrated on the shipped mammogram weights: drawn anywhere, it projects on the data's mean
    # ring at random signs (pixel ratio falling with w) while the predictors read it growing
    responses = {"pixel_ratio": lambda w: -0.03 * w, "shift_ratio": lambda w: 0.35 + 0.25 * w}
    decodes = []

    def ratio_at(w, measure):
        if w not in decodes:
            decodes.append(w)
        return responses[measure](w)

    search = {"start": (1.0, 2.0), "bounds": (0.0, 8.0), "tolerance": 0.05, "max_evaluations": 5}
    found, measure = match_weight(ratio_at, "pixel_ratio", fallback="shift_ratio", **search)
    assert measure == "shift_ratio" and found.status == "matched" and found.weight == pytest.approx(2.6, abs=0.01)
    assert decodes[:3] == [1.0, 2.0, 8.0]  # the pixel search's weights are read again, not decoded again

    kept, measure = match_weight(ratio_at, "pixel_ratio", fallback=None, **search)
    assert measure == "pixel_ratio" and kept.status == "bound"


def test_the_first_ratio_is_kept_where_it_rises_or_where_neither_does():
    rising = {"pixel_ratio": lambda w: 0.5 * w, "shift_ratio": lambda w: 0.9}
    found, measure = match_weight(lambda w, m: rising[m](w), "pixel_ratio", fallback="shift_ratio")
    assert measure == "pixel_ratio" and found.weight == pytest.approx(2.0)
    flat = {"pixel_ratio": lambda w: 1.6, "shift_ratio": lambda w: 0.96 - 0.05 * w}  # mammogram age: insensitive
    found, measure = match_weight(lambda w, m: flat[m](w), "pixel_ratio", fallback="shift_ratio")
    assert measure == "pixel_ratio"
    assert not grows_with_weight({1.0: 0.9, 2.0: 0.8}, 0.05) and grows_with_weight({1.0: 0.5, 2.0: 0.6}, 0.05)
    assert not grows_with_weight({1.0: math.nan, 2.0: 0.6}, 0.05)
