"""The calibrate job's choice between candidate guidance intervals: matched before unmatched, texture first, and of
the bands whose texture counts as equal the one that costs fewest network evaluations."""

import math

from medcf.jobs.calibrator import BandOutcome, choose_band
from medcf.measure.weight_search import WeightSearch

EVERY_STEP, MIDDLE = None, (0.3, 5.0)


def outcome(band, texture: float, evaluations: int, status: str = "matched") -> BandOutcome:
    return BandOutcome(band, WeightSearch(2.0, status, {1.0: 0.8, 2.0: 1.0}), texture, "shift_ratio", evaluations)


def test_of_equal_texture_the_cheaper_band_wins():
    every, middle = outcome(EVERY_STEP, 0.99, 150), outcome(MIDDLE, 0.975, 84)
    assert choose_band([every, middle], texture_tolerance=0.02) is middle
    assert choose_band([middle, every], texture_tolerance=0.02) is middle, "not the order tried"


def test_a_clearly_worse_texture_is_not_bought_by_cost():
    every, middle = outcome(EVERY_STEP, 0.99, 150), outcome(MIDDLE, 0.95, 84)
    assert choose_band([every, middle], texture_tolerance=0.02) is every
    assert choose_band([every, middle], texture_tolerance=0.0) is every
    assert choose_band([every, middle], texture_tolerance=0.05) is middle


def test_equal_cost_falls_back_to_the_better_texture_and_a_match_beats_no_match():
    assert choose_band([outcome(EVERY_STEP, 1.015, 84), outcome(MIDDLE, 0.995, 84)], 0.02).band == MIDDLE
    unmatched = outcome(MIDDLE, 1.0, 84, status="bound")
    assert choose_band([outcome(EVERY_STEP, 0.9, 150), unmatched], 0.02).band is EVERY_STEP
    none_matched = [outcome(EVERY_STEP, 0.9, 150, "bound"), outcome(MIDDLE, 0.99, 84, "bound")]
    assert choose_band(none_matched, 0.02).band == MIDDLE


def test_unmeasured_texture_leaves_the_choice_to_cost():
    every, middle = outcome(EVERY_STEP, math.nan, 150), outcome(MIDDLE, math.nan, 84)
    assert choose_band([every, middle], 0.02) is middle
    assert choose_band([outcome(EVERY_STEP, 1.0, 150), middle], 0.02).band is EVERY_STEP


def test_a_band_that_decoded_nothing_does_not_win_on_cost():
    empty = outcome(MIDDLE, math.nan, 0)  # no image could be moved: no cost measured
    assert choose_band([outcome(EVERY_STEP, math.nan, 150), empty], 0.02).band is EVERY_STEP
