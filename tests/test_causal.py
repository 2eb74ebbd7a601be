"""The fitted causal graph: mechanisms recover the phantom's structural equations, abduction is consistent,
descendants follow interventions, pinned values stay."""

import numpy as np
import pandas as pd
import pytest

from medcf.core.attributes import SchemaError
from medcf.core.causal import CausalGraph
from medcf.phantoms.cxr import CXR_SCHEMA, ChestXRayPhantom, CXRPopulation
from medcf.phantoms.mammo import MAMMO_SCHEMA, MammogramPhantom


@pytest.fixture(scope="module")
def chest():
    phantom = ChestXRayPhantom(CXRPopulation(noise_correlations={}))
    subjects = phantom.sample(6000, np.random.default_rng(0))
    table = pd.DataFrame([s.attributes for s in subjects])
    return phantom, subjects, CausalGraph.fit(CXR_SCHEMA, table)


def test_fitted_disease_mechanism_recovers_the_phantom_equation(chest):
    """P(effusion | age) of the fit matches the phantom's logistic curve within 0.04 over 20-90 years."""
    phantom, _, graph = chest
    mechanism = graph.mechanisms["disease"]
    for age in range(20, 91, 10):
        fitted = 1 - mechanism.cumulative(CXR_SCHEMA, {"age": float(age)})[0]
        assert abs(fitted - phantom.effusion_probability(float(age))) < 0.04


def test_abduction_is_consistent_and_the_null_intervention_is_identity(chest):
    """Re-predicting with the abducted noise gives the factual value; do() and do(age=own age) change nothing."""
    _, subjects, graph = chest
    for subject in subjects[:300]:
        factual = dict(subject.attributes)
        assert graph.counterfactual(factual, {}) == factual
        assert graph.counterfactual(factual, {"age": factual["age"]}) == factual


def test_older_can_only_gain_effusion_and_younger_only_lose_it(chest):
    """Monotone counterfactuals: do(age=90) never removes an effusion, do(age=20) never adds one; some change."""
    _, subjects, graph = chest
    older = [graph.counterfactual(s.attributes, {"age": 90.0})["disease"] for s in subjects[:500]]
    younger = [graph.counterfactual(s.attributes, {"age": 20.0})["disease"] for s in subjects[:500]]
    factual = [s.attributes["disease"] for s in subjects[:500]]
    assert all(f != "Pleural Effusion" or o == "Pleural Effusion" for f, o in zip(factual, older, strict=True))
    assert all(f != "No Finding" or y == "No Finding" for f, y in zip(factual, younger, strict=True))
    assert sum(f != o for f, o in zip(factual, older, strict=True)) > 20


def test_roots_change_nothing_else_and_pinned_descendants_stay(chest):
    """do(sex) only changes sex; do(age=90, disease=No Finding) keeps the pinned disease."""
    _, subjects, graph = chest
    factual = dict(subjects[0].attributes)
    flipped = "F" if factual["sex"] == "M" else "M"
    assert graph.counterfactual(factual, {"sex": flipped}) == {**factual, "sex": flipped}
    pinned = graph.counterfactual(factual, {"age": 90.0, "disease": "No Finding"})
    assert pinned["disease"] == "No Finding" and pinned["age"] == 90.0
    assert graph.affected({"age"}) == {"age", "disease"} and graph.affected({"sex"}) == {"sex"}


def test_ordinal_density_mechanism_and_config_round_trip():
    """Density given age: older means less dense in the fit; the fitted graph survives to_config/from_config."""
    phantom = MammogramPhantom()
    table = pd.DataFrame([s.attributes for s in phantom.sample(4000, np.random.default_rng(1))])
    graph = CausalGraph.fit(MAMMO_SCHEMA, table)
    mechanism = graph.mechanisms["density"]
    assert mechanism.cumulative(MAMMO_SCHEMA, {"age": 80.0})[1] > mechanism.cumulative(MAMMO_SCHEMA, {"age": 40.0})[1]
    again = CausalGraph.from_config(MAMMO_SCHEMA, graph.to_config())
    factual = dict(table.iloc[0])
    assert again.counterfactual(factual, {"age": 85.0}) == graph.counterfactual(factual, {"age": 85.0})
    with pytest.raises(SchemaError, match="non-root attributes are \\['density'\\]"):
        CausalGraph.from_config(MAMMO_SCHEMA, {"mechanisms": []})


def test_cohort_without_the_needed_columns_is_refused():
    """Fitting needs the child and its parents in the cohort."""
    with pytest.raises(SchemaError, match="no column\\(s\\) disease"):
        CausalGraph.fit(CXR_SCHEMA, pd.DataFrame({"age": [50.0], "sex": ["M"], "race": ["White"]}))
