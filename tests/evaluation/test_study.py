"""The study's choices and tables on hand-made metrics tables with known answers."""

import pandas as pd
import pytest

from medcf.jobs.study import grid_settings
from medcf.measure.study_tables import closest_to_right_size, equal_weight_table, matched_table, select_weights


def rows(intervention, metric, values, seeds=(0, 1), source=None):
    """One row per seed of each guidance label -> effectiveness value (same for every seed)."""
    out = []
    for guidance, effect in values.items():
        mode = guidance.split()[0]
        w = float(guidance.split("=")[1]) if mode == "cfg" else float("nan")
        w_aff = float(guidance.split("w_aff=")[1].split()[0]) if "w_aff" in guidance else float("nan")
        for seed in seeds:
            out.append({
                "intervention": intervention, "guidance": guidance, "mode": mode, "w": w, "w_aff": w_aff,
                "seed": seed, "effectiveness": effect, "effectiveness_metric": metric,
                "truth_off_target": 0.1, "truth_off_target_source": (source or {}).get(guidance, 0.2) + 0.01 * seed,
                "target_ratio": 1.0, "off_target": 0.1,
            })  # fmt: skip
    return out


def test_grid_holds_none_cfg_dcfg_at_every_weight_and_the_variants():
    settings = grid_settings([1, 3])
    assert settings[0] == {"mode": "none"}
    assert {"mode": "cfg", "weight": 3.0} in settings and {"mode": "dcfg", "w_aff": 1.0, "w_inv": 1.0} in settings
    assert {s.get("rule") for s in settings} >= {"cfg++", "apg"} and any("interval" in s for s in settings)


def test_the_smallest_weight_within_tolerance_of_the_best_is_selected():
    table = pd.DataFrame(
        rows(
            "do(sex=F)",
            "accuracy",
            {"dcfg w_aff=1 w_inv=1": 0.5, "dcfg w_aff=2 w_inv=1": 0.96, "dcfg w_aff=3 w_inv=1": 1.0},
        )  # fmt: skip
        + rows(
            "do(age=+20)",
            "mae",
            {"dcfg w_aff=1 w_inv=1": 12.0, "dcfg w_aff=3 w_inv=1": 9.5, "dcfg w_aff=5 w_inv=1": 9.0},
        )  # fmt: skip
    )
    # accuracy: best 1.0, 0.96 is within 0.05; MAE (lower is better): best 9.0, 9.5 is within 1 year
    assert select_weights(table) == {"do(sex=F)": 2.0, "do(age=+20)": 3.0}


def test_matched_effectiveness_compares_each_family_at_its_smallest_weight_reaching_the_common_level():
    table = pd.DataFrame(
        rows(
            "do(sex=F)",
            "accuracy",
            {
                "none": 0.4,
                "cfg w=1": 0.4,
                "cfg w=3": 0.9,
                "cfg w=5": 1.0,
                "dcfg w_aff=1 w_inv=1": 0.4,
                "dcfg w_aff=3 w_inv=1": 0.8,
                "dcfg w_aff=5 w_inv=1": 0.95,
            },
        )  # fmt: skip
    )
    matched = matched_table(table)
    # the level both families reach is DCFG's best (0.95): CFG first reaches it at w=5, DCFG at w_aff=5
    assert list(matched["guidance"]) == ["cfg w=5", "dcfg w_aff=5 w_inv=1", "none"]
    assert matched.loc[0, "effectiveness"] == "1 ± 0" and (matched["seeds"] == 2).all()


def test_equal_weight_pairs_cfg_and_dcfg_per_seed():
    table = pd.DataFrame(
        rows(
            "do(sex=F)",
            "accuracy",
            {"none": 1.0, "cfg w=3": 1.0, "dcfg w_aff=3 w_inv=1": 1.0, "cfg w=5": 1.0},
            source={"none": 0.1, "cfg w=3": 0.4, "dcfg w_aff=3 w_inv=1": 0.2},
        )  # fmt: skip
    )
    equal = equal_weight_table(table)
    assert list(equal["w"]) == ["3"], "a weight without its DCFG partner is left out"
    (row,) = equal.to_dict("records")
    assert row["truth_off_target_source cfg"] == "0.405 ± 0.0071"
    assert row["truth_off_target_source dcfg"] == "0.205 ± 0.0071"
    # seed 0: (0.20 - 0.40) / 0.40 = -50 %; seed 1: (0.21 - 0.41) / 0.41 = -48.8 %
    mean = float(row["dcfg vs cfg, % (source)"].split(" ± ")[0])
    assert mean == pytest.approx(-49.4, abs=0.05)
    # excess over the unguided decoder: DCFG 0.2 - 0.1 against CFG 0.4 - 0.1, the same on both seeds
    ratio, spread = (float(v) for v in row["amplification dcfg / cfg"].split(" ± "))
    assert ratio == pytest.approx(1 / 3, abs=1e-3) and spread < 1e-9


def test_the_best_single_weight_is_the_one_closest_to_the_right_size_on_a_log_scale():
    rows = [("cfg w=1", 0.5), ("cfg w=2", 1.9), ("cfg w=3", 3.0), ("cfg w=1", 0.6), ("cfg w=2", 2.1)]
    family = pd.DataFrame(rows, columns=["guidance", "exact_target_ratio"])
    assert closest_to_right_size(family) == "cfg w=1"  # 0.55x is nearer to 1 than 2x on a log scale
    assert closest_to_right_size(family.drop(columns="exact_target_ratio")) is None
