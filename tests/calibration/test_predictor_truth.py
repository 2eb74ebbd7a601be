"""The check of the calibrate job's statistic against the phantom truth (``python -m medcf.jobs.predictor_truth``), with
the chest bundle's own model, predictors and plan on a small held-out set and 2 DDIM steps: the exact
counterfactuals read as the expected shift says (ratio near 1), and every column is measured."""

import math

from medcf.jobs.predictor_truth import COLUMNS, main


def test_exact_counterfactuals_read_at_the_expected_shift_and_every_column_is_measured(tmp_path):
    table = main(
        [
            "--bundle", "cxr_counterfactual", "--images", "8", "--steps", "2", "--heldout_subjects", "60",
            "--attributes", "sex", "age", "--work", str(tmp_path), "--out", str(tmp_path / "table.csv"),
        ]
    )  # fmt: skip
    assert list(table.columns) == COLUMNS and list(table["attribute"]) == ["sex", "age"]
    rows = table.set_index("attribute")
    assert rows.loc["sex", "moves"] == 8  # every image moved to the other sex
    assert 1 <= rows.loc["age", "moves"] <= 8  # +20 years: not past the model's range
    for name in ("sex", "age"):  # the phantom's exact change, read by the bundle's predictors (1.04 / 0.98 measured)
        assert abs(rows.loc[name, "exact"] - 1) < 0.2, rows.loc[name].to_dict()
        assert all(math.isfinite(rows.loc[name, column]) for column in ("round_trip", "model", "target_ratio"))
    assert (tmp_path / "table.csv").read_text().splitlines()[0] == ",".join(COLUMNS)
