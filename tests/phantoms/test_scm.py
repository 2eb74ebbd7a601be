"""Tests for medcf.phantoms.scm: the copula over attribute noise, sampling, interventions, counterfactuals,
follow-up images and population settings, on the two concrete phantoms (no rendering)."""

from __future__ import annotations

import copy
import json
import math
import re

import numpy as np
import pytest
from scipy.special import ndtri

from medcf.core.attributes import SchemaError
from medcf.phantoms.cxr import ChestXRayPhantom, CXRPopulation
from medcf.phantoms.mammo import MammogramPhantom, MammoPopulation
from medcf.phantoms.scm import (
    Population,
    Subject,
    categorical_from_noise,
    check_fraction,
    check_probabilities,
)

N = 4000
EFFUSION = "Pleural Effusion"


def se(p: float, n: int) -> float:
    """Binomial standard error of a proportion p estimated from n draws."""
    return math.sqrt(max(p * (1 - p), 1e-4) / n)


def column(subjects: list[Subject], name: str) -> np.ndarray:
    return np.array([s.attributes[name] for s in subjects])


def noise_column(subjects: list[Subject], name: str) -> np.ndarray:
    return np.array([s.noise[name] for s in subjects])


def rate_difference(flags: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """P(flag | a) - P(flag | b) and its standard error."""
    pa, pb = flags[a].mean(), flags[b].mean()
    return pa - pb, math.hypot(se(pa, int(a.sum())), se(pb, int(b.sum())))


@pytest.fixture(scope="module")
def cxr() -> ChestXRayPhantom:
    return ChestXRayPhantom()


@pytest.fixture(scope="module")
def mammo() -> MammogramPhantom:
    return MammogramPhantom()


@pytest.fixture(scope="module")
def cxr_sample(cxr) -> list[Subject]:
    return cxr.sample(N, np.random.default_rng(20240601))


@pytest.fixture(scope="module")
def independent_population() -> CXRPopulation:
    """No copula, and non-default marginals (so a parameter that is ignored cannot pass by luck)."""
    return CXRPopulation(noise_correlations={}, female_fraction=0.3, race_probabilities=(0.2, 0.3, 0.5))


@pytest.fixture(scope="module")
def independent_sample(independent_population) -> list[Subject]:
    return ChestXRayPhantom(independent_population).sample(N, np.random.default_rng(7))


@pytest.fixture(scope="module")
def mammo_sample(mammo) -> list[Subject]:
    return mammo.sample(N, np.random.default_rng(99))


# -- helpers of scm ----------------------------------------------------------------------------------


class TestCategoricalFromNoise:
    @pytest.mark.parametrize(
        ("u", "expected"),
        [(0.0, "a"), (0.19, "a"), (0.2, "b"), (0.49, "b"), (0.5, "c"), (0.999999, "c"), (1.0, "c")],
    )
    def test_inverse_cdf(self, u, expected):
        """u falls in the cumulative interval of its value; the right end goes to the last value."""
        assert categorical_from_noise(u, ("a", "b", "c"), (0.2, 0.3, 0.5)) == expected

    def test_rounding_past_the_total_gives_the_last_value(self):
        """Probabilities summing to slightly less than 1 never index past the end."""
        assert categorical_from_noise(0.9999999, ("a", "b", "c"), (0.2, 0.3, 0.4999)) == "c"


class TestCheckProbabilities:
    def test_valid_probabilities_pass(self):
        """Non-negative entries of the right count summing to 1 are accepted."""
        check_probabilities("race_probabilities", (0.6, 0.15, 0.25), 3)
        check_probabilities("race_probabilities", (1.0, 0.0, 0.0), 3)

    def test_wrong_count_is_named(self):
        """The message names the field, the expected and the actual count."""
        with pytest.raises(SchemaError, match=r"^race_probabilities: expected 3 probabilities, got 2$"):
            check_probabilities("race_probabilities", (0.5, 0.5), 3)

    @pytest.mark.parametrize("probabilities", [(0.5, 0.5, 0.1), (0.4, 0.4, 0.1), (1.2, -0.1, -0.1)])
    def test_bad_values_are_named(self, probabilities):
        """Negative entries or a sum other than 1 are rejected, showing the probabilities."""
        with pytest.raises(SchemaError, match=r"^race_probabilities: probabilities must be >= 0 and sum to 1"):
            check_probabilities("race_probabilities", probabilities, 3)

    def test_nan_probabilities_are_rejected(self):
        """A NaN probability is not a probability."""
        with pytest.raises(SchemaError, match="race_probabilities"):
            check_probabilities("race_probabilities", (math.nan, 0.5, 0.5), 3)

    @pytest.mark.parametrize("value", [-0.01, 1.01, math.nan])
    def test_check_fraction(self, value):
        """Fractions outside [0, 1] (and NaN) are rejected, naming the field."""
        with pytest.raises(SchemaError, match="^female_fraction: .* must lie in"):
            check_fraction("female_fraction", value)
        check_fraction("female_fraction", 0.0)
        check_fraction("female_fraction", 1.0)


# -- population settings --------------------------------------------------------------------------------


class TestPopulationFromMapping:
    def test_unknown_field_is_named_with_the_known_ones(self):
        """An unknown field is named, with the source and the sorted list of known fields."""
        with pytest.raises(SchemaError) as info:
            CXRPopulation.from_mapping({"female_fraction": 0.4, "colour": 1, "bogus": 2}, source="pop.json")
        message = str(info.value)
        assert message.startswith("pop.json: unknown field(s) bogus, colour; known: ")
        assert "female_fraction" in message and "noise_correlations" in message and "race_probabilities" in message

    def test_base_population_knows_only_noise_correlations(self):
        """The base Population has noise_correlations as its only field."""
        with pytest.raises(SchemaError, match=r"^population: unknown field\(s\) female_fraction; known: noise_corr"):
            Population.from_mapping({"female_fraction": 0.5})
        assert Population.from_mapping({"noise_correlations": {"a~b": 0.1}}).noise_correlations == {"a~b": 0.1}

    def test_lists_become_tuples(self):
        """JSON lists become tuples, so the settings equal those built directly."""
        population = CXRPopulation.from_mapping({"race_probabilities": [0.2, 0.3, 0.5], "age_mean": 50.0})
        assert population.race_probabilities == (0.2, 0.3, 0.5)
        assert isinstance(population.race_probabilities, tuple)
        assert population == CXRPopulation(race_probabilities=(0.2, 0.3, 0.5), age_mean=50.0)

    def test_empty_mapping_gives_defaults(self):
        """No fields, default population."""
        assert MammoPopulation.from_mapping({}) == MammoPopulation()

    def test_type_errors_become_schema_errors_naming_the_source(self):
        """A value of the wrong type is a SchemaError that names the source."""
        with pytest.raises(SchemaError, match=r"^settings\.json: "):
            CXRPopulation.from_mapping({"female_fraction": "half"}, source="settings.json")

    def test_validation_errors_name_the_field(self):
        """Invalid values are rejected by the population's own checks, naming the field."""
        with pytest.raises(SchemaError, match="^race_probabilities: probabilities must be >= 0 and sum to 1"):
            CXRPopulation.from_mapping({"race_probabilities": [0.5, 0.5, 0.5]})
        with pytest.raises(SchemaError, match="^density_probabilities: expected 4 probabilities, got 3"):
            MammoPopulation.from_mapping({"density_probabilities": [0.2, 0.4, 0.4]})
        with pytest.raises(SchemaError, match="^marker_fraction: "):
            MammoPopulation.from_mapping({"marker_fraction": 2})

    def test_nan_age_sd_is_rejected(self):
        """A NaN age spread is not a valid population setting."""
        with pytest.raises(ValueError, match="age_sd"):
            CXRPopulation.from_mapping({"age_sd": math.nan})


class TestPopulationFromJson:
    def test_round_trip_through_json(self, tmp_path):
        """to_dict -> JSON file -> from_json gives back an equal population."""
        population = CXRPopulation(
            female_fraction=0.35, race_probabilities=(0.5, 0.2, 0.3), noise_correlations={"age~race": 0.2}
        )
        path = tmp_path / "population.json"
        path.write_text(json.dumps(population.to_dict()))
        assert CXRPopulation.from_json(path) == population
        assert MammoPopulation.from_json(_write(tmp_path / "m.json", MammoPopulation().to_dict())) == MammoPopulation()

    def test_missing_file_is_named(self, tmp_path):
        """A path that does not exist gives a SchemaError naming the path."""
        path = tmp_path / "nope.json"
        with pytest.raises(SchemaError, match=rf"^{re.escape(str(path))}: cannot read population settings"):
            CXRPopulation.from_json(path)

    def test_directory_is_named(self, tmp_path):
        """A directory instead of a file gives a SchemaError, not an OSError."""
        with pytest.raises(SchemaError, match="cannot read population settings"):
            CXRPopulation.from_json(tmp_path)

    def test_invalid_json_is_named(self, tmp_path):
        """Malformed JSON gives a SchemaError naming the path."""
        path = _write_text(tmp_path / "bad.json", '{"female_fraction": 0.5,')
        with pytest.raises(SchemaError, match=rf"^{re.escape(str(path))}: cannot read population settings"):
            CXRPopulation.from_json(path)

    @pytest.mark.parametrize("content", ["[0.5, 0.5]", '"female"', "3", "null"])
    def test_non_object_json_is_rejected(self, tmp_path, content):
        """JSON that is not an object gives a SchemaError saying an object is needed."""
        path = _write_text(tmp_path / "list.json", content)
        with pytest.raises(SchemaError, match=rf"^{re.escape(str(path))}: population settings must be a JSON object$"):
            CXRPopulation.from_json(path)

    def test_unknown_field_names_the_file(self, tmp_path):
        """An unknown field in a file is reported with the file's path as the source."""
        path = _write(tmp_path / "p.json", {"femal_fraction": 0.5})
        with pytest.raises(SchemaError, match=rf"^{re.escape(str(path))}: unknown field\(s\) femal_fraction"):
            CXRPopulation.from_json(str(path))

    def test_undecodable_file_gives_schema_error(self, tmp_path):
        """A binary (non-UTF-8) file is reported like any unreadable file."""
        path = tmp_path / "binary.json"
        path.write_bytes(b"\xff\xfe\x00{\x80\x81")
        with pytest.raises(SchemaError, match="cannot read population settings"):
            CXRPopulation.from_json(path)


def _write(path, values):
    path.write_text(json.dumps(values))
    return path


def _write_text(path, text):
    path.write_text(text)
    return path


# -- the copula -----------------------------------------------------------------------------------------


class TestCopulaSettings:
    @pytest.mark.parametrize("key", ["age~age", "age~colour", "nope", "colour~age", "age~sex~race", "age-sex", ""])
    def test_bad_keys_are_named(self, key):
        """Keys must be 'a~b' with two different attributes; the message quotes the key, lists attributes."""
        population = CXRPopulation(noise_correlations={key: 0.2})
        with pytest.raises(SchemaError) as info:
            ChestXRayPhantom(population)
        message = str(info.value)
        assert f"key {key!r} must be 'a~b' with two different attributes" in message
        assert message.endswith("age, sex, race, disease")

    @pytest.mark.parametrize("rho", [1.0, -1.0, 1.5, -3, math.nan, math.inf])
    def test_rho_outside_the_open_interval_is_named(self, rho):
        """Correlations must lie strictly inside (-1, 1); the message names key and value."""
        population = CXRPopulation(noise_correlations={"age~sex": rho})
        with pytest.raises(SchemaError, match=r"^noise_correlations\['age~sex'\]: .* strictly between -1 and 1$"):
            ChestXRayPhantom(population)

    @pytest.mark.parametrize("signs", [(0.9, 0.9, -0.9), (-0.9, -0.9, -0.9), (0.9, -0.9, 0.9)])
    def test_jointly_impossible_correlations_are_rejected(self, signs):
        """Pairwise-valid correlations that are not jointly positive definite are rejected."""
        a, b, c = signs
        population = CXRPopulation(noise_correlations={"age~sex": a, "age~race": b, "sex~race": c})
        with pytest.raises(SchemaError, match=r"^noise_correlations: .*not positive definite"):
            ChestXRayPhantom(population)

    def test_mammo_checks_its_own_schema(self):
        """The breast phantom validates keys against its own attributes (no 'sex' there)."""
        with pytest.raises(SchemaError, match=r"key 'age~sex'.*age, race, density, view, marker"):
            MammogramPhantom(MammoPopulation(noise_correlations={"age~sex": 0.1}))

    def test_strong_but_possible_correlations_are_accepted(self):
        """A single correlation near the bounds and a consistent triple are fine."""
        ChestXRayPhantom(CXRPopulation(noise_correlations={"age~disease": 0.99}))
        ChestXRayPhantom(CXRPopulation(noise_correlations={"age~sex": 0.5, "age~race": 0.5, "sex~race": 0.5}))


class TestCopulaSampling:
    def test_noise_keys_and_ranges(self, cxr, cxr_sample):
        """Every subject has u_<attr> for each attribute and each image factor, all strictly in (0, 1)."""
        expected = {f"u_{n}" for n in cxr.schema.names} | {f.name for f in cxr.factors}
        for subject in cxr_sample[:200]:
            assert set(subject.noise) == expected
            assert set(subject.seeds) == set(cxr.seed_names)
            assert all(0.0 < v < 1.0 for v in subject.noise.values())
            assert all(0 <= v < 2**31 for v in subject.seeds.values())

    def test_sampling_is_reproducible(self, cxr):
        """The same seed gives the same subjects; another seed different ones."""
        a = cxr.sample(20, np.random.default_rng(5))
        b = cxr.sample(20, np.random.default_rng(5))
        c = cxr.sample(20, np.random.default_rng(6))
        assert a == b
        assert [s.noise for s in a] != [s.noise for s in c]

    def test_attribute_noise_is_uniform(self, cxr, cxr_sample):
        """Each u_<attr> is marginally uniform: mean 1/2, deciles ~ 10 % each (the copula keeps marginals)."""
        for name in cxr.schema.names:
            u = noise_column(cxr_sample, f"u_{name}")
            assert abs(u.mean() - 0.5) < 4 * math.sqrt(1 / 12 / N)
            counts = np.histogram(u, bins=10, range=(0, 1))[0] / N
            assert np.all(np.abs(counts - 0.1) < 4 * se(0.1, N))

    @pytest.mark.parametrize("which", ["cxr", "mammo"])
    def test_latent_correlations_match_the_settings(self, which, cxr, cxr_sample, mammo, mammo_sample):
        """Correlations of Phi^-1(u) match noise_correlations; pairs not listed are uncorrelated."""
        phantom, subjects = (cxr, cxr_sample) if which == "cxr" else (mammo, mammo_sample)
        names = phantom.schema.names
        latent = np.column_stack([ndtri(noise_column(subjects, f"u_{n}")) for n in names])
        observed = np.corrcoef(latent, rowvar=False)
        expected = np.eye(len(names))
        for key, rho in phantom.population.noise_correlations.items():
            i, j = (names.index(p) for p in key.split("~"))
            expected[i, j] = expected[j, i] = rho
        assert len(phantom.population.noise_correlations) == 2
        # sampling sd of a correlation estimate is (1 - rho^2) / sqrt(n) <= 0.016 here
        np.testing.assert_allclose(observed, expected, atol=4 / math.sqrt(N))


class TestCxrPopulationAssociations:
    def test_black_patients_have_more_effusion(self, cxr_sample):
        """Default copula (race~disease = -0.3): P(effusion | Black) clearly exceeds P(effusion | White)."""
        race, disease = column(cxr_sample, "race"), column(cxr_sample, "disease") == EFFUSION
        difference, error = rate_difference(disease, race == "Black", race == "White")
        assert difference > 6 * error
        assert difference > 0.1

    def test_older_patients_are_more_often_female(self, cxr_sample):
        """Default copula (age~sex = -0.3): patients aged 60+ are more often F than younger ones."""
        age, female = column(cxr_sample, "age").astype(float), column(cxr_sample, "sex") == "F"
        difference, error = rate_difference(female, age >= 60, age < 60)
        assert difference > 6 * error
        assert difference > 0.1

    def test_associations_vanish_without_correlations(self, independent_sample):
        """With noise_correlations={} the race-disease and age-sex associations are within sampling error."""
        race = column(independent_sample, "race")
        disease = column(independent_sample, "disease") == EFFUSION
        difference, error = rate_difference(disease, race == "Black", race == "White")
        assert abs(difference) < 4 * error
        age, female = (
            column(independent_sample, "age").astype(float),
            column(independent_sample, "sex") == "F",
        )
        difference, error = rate_difference(female, age >= 60, age < 60)
        assert abs(difference) < 4 * error

    def test_latent_noise_is_independent_without_correlations(self, independent_sample):
        """Without a copula every pair of latent noises has correlation ~0."""
        names = ("age", "sex", "race", "disease")
        latent = np.column_stack([ndtri(noise_column(independent_sample, f"u_{n}")) for n in names])
        np.testing.assert_allclose(np.corrcoef(latent, rowvar=False), np.eye(4), atol=4 / math.sqrt(N))

    @pytest.mark.parametrize("which", ["default", "independent"])
    def test_marginals_follow_the_population(self, which, cxr_sample, independent_sample, independent_population):
        """Female fraction and race frequencies match the population's settings within 4 standard errors."""
        subjects, population = (
            (cxr_sample, CXRPopulation()) if which == "default" else (independent_sample, independent_population)
        )
        female = np.mean(column(subjects, "sex") == "F")
        assert abs(female - population.female_fraction) < 4 * se(population.female_fraction, N)
        race = column(subjects, "race")
        for value, p in zip(("White", "Asian", "Black"), population.race_probabilities, strict=True):
            assert abs(np.mean(race == value) - p) < 4 * se(p, N), value

    def test_ages_lie_in_range_around_the_mean(self, cxr_sample):
        """Ages stay in [18, 95] and their mean is near age_mean (truncation is nearly symmetric)."""
        age = column(cxr_sample, "age").astype(float)
        assert age.min() >= 18.0 and age.max() <= 95.0
        assert abs(age.mean() - 60.0) < 4 * 18.0 / math.sqrt(N) + 0.5
        assert 14.0 < age.std() < 18.0


class TestMammoPopulation:
    def test_all_four_densities_occur(self, mammo_sample):
        """Every BI-RADS density appears in a default sample, each in at least 5 %."""
        density = column(mammo_sample, "density")
        for value in ("A", "B", "C", "D"):
            assert np.mean(density == value) > 0.05, value

    def test_dense_breasts_are_younger(self, mammo_sample):
        """density_shift_per_decade < 0: the mean age of D is clearly below the mean age of A."""
        density, age = column(mammo_sample, "density"), column(mammo_sample, "age").astype(float)
        a, d = age[density == "A"], age[density == "D"]
        error = math.hypot(a.std() / math.sqrt(a.size), d.std() / math.sqrt(d.size))
        assert a.mean() - d.mean() > 6 * error

    def test_race_frequencies(self, mammo_sample):
        """Race (a root, associated with density only through noise) keeps its marginal frequencies."""
        race = column(mammo_sample, "race")
        for value, p in zip(("White", "Black", "Asian"), MammoPopulation().race_probabilities, strict=True):
            assert abs(np.mean(race == value) - p) < 4 * se(p, N), value

    def test_density_frequencies_at_the_reference_age(self, mammo):
        """At age 57, do(age) shows density_probabilities exactly as documented."""
        subjects = mammo.sample(1500, np.random.default_rng(3), do={"age": 57})
        density = column(subjects, "density")
        for value, p in zip("ABCD", mammo.population.density_probabilities, strict=True):
            assert abs(np.mean(density == value) - p) < 4 * se(p, 1500), value


# -- the mechanism -----------------------------------------------------------------------------------


class TestEffusionMechanism:
    def test_probability_curve(self, cxr):
        """effusion_probability is the documented logistic curve: sigmoid(-1) at 60, +0.7 logit per decade."""
        assert cxr.effusion_probability(60.0) == pytest.approx(1 / (1 + math.exp(1.0)))
        assert cxr.effusion_probability(80.0) == pytest.approx(1 / (1 + math.exp(1.0 - 1.4)))
        ages = np.linspace(18, 95, 30)
        assert np.all(np.diff([cxr.effusion_probability(a) for a in ages]) > 0)

    def test_each_subject_follows_its_equation(self, cxr, cxr_sample):
        """disease is Pleural Effusion exactly when u_disease < effusion_probability(age)."""
        for s in cxr_sample:
            expected = s.noise["u_disease"] < cxr.effusion_probability(s.attributes["age"])
            assert (s.attributes["disease"] == EFFUSION) == expected

    def test_rate_by_age_decade_follows_the_curve(self, cxr, cxr_sample):
        """Per age decade, the effusion rate matches the mean of effusion_probability within 4 SE."""
        age = column(cxr_sample, "age").astype(float)
        disease = column(cxr_sample, "disease") == EFFUSION
        checked = []
        for start in range(20, 95, 10):
            inside = (age >= start) & (age < start + 10)
            if inside.sum() < 100:
                continue
            expected = np.mean([cxr.effusion_probability(a) for a in age[inside]])
            observed = disease[inside].mean()
            assert abs(observed - expected) < 4 * se(expected, int(inside.sum())), start
            checked.append(observed)
        assert len(checked) >= 6
        assert checked == sorted(checked)  # the rate rises decade by decade

    def test_other_population_parameters_are_used(self):
        """A steeper, shifted curve shows up in the samples: effusion_logit_* are honoured."""
        population = CXRPopulation(effusion_logit_at_60=1.0, effusion_logit_per_decade=0.0)
        phantom = ChestXRayPhantom(population)
        assert phantom.effusion_probability(20.0) == pytest.approx(1 / (1 + math.exp(-1.0)))
        disease = column(phantom.sample(1000, np.random.default_rng(1), do={"age": 30.0}), "disease") == EFFUSION
        assert abs(disease.mean() - 0.7311) < 4 * se(0.7311, 1000)


# -- sampling under do ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def old_and_young(cxr):
    old = cxr.sample(1000, np.random.default_rng(11), do={"age": 90})
    young = cxr.sample(1000, np.random.default_rng(12), do={"age": "20"})
    return old, young


class TestSampleWithDo:
    def test_every_subject_has_the_intervened_value(self, old_and_young):
        """do(age) sets every subject's age to the parsed float value."""
        old, young = old_and_young
        assert all(s.attributes["age"] == 90.0 for s in old)
        assert all(s.attributes["age"] == 20.0 and isinstance(s.attributes["age"], float) for s in young)

    def test_descendants_follow(self, cxr, old_and_young):
        """Disease follows the mechanism at the intervened age: far more effusion at 90 than at 20."""
        old, young = old_and_young
        rate_old = np.mean(column(old, "disease") == EFFUSION)
        rate_young = np.mean(column(young, "disease") == EFFUSION)
        assert abs(rate_old - cxr.effusion_probability(90)) < 4 * se(cxr.effusion_probability(90), 1000)
        assert abs(rate_young - cxr.effusion_probability(20)) < 4 * se(cxr.effusion_probability(20), 1000)
        assert rate_old - rate_young > 0.5

    def test_do_leaves_non_descendants_and_noise_alone(self, cxr):
        """Same seed: do(disease) changes only disease; noise, seeds, age, sex and race are identical."""
        plain = cxr.sample(300, np.random.default_rng(21))
        forced = cxr.sample(300, np.random.default_rng(21), do={"disease": "pleural effusion"})
        for a, b in zip(plain, forced, strict=True):
            assert a.noise == b.noise and a.seeds == b.seeds
            assert {k: a.attributes[k] for k in ("age", "sex", "race")} == {
                k: b.attributes[k] for k in ("age", "sex", "race")
            }
            assert b.attributes["disease"] == EFFUSION

    def test_do_on_a_root_breaks_its_copula_association(self, cxr):
        """do(race=Black) for all leaves every subject's disease as it was: race -> disease is no edge."""
        forced = cxr.sample(400, np.random.default_rng(31), do={"race": "Black"})
        plain = cxr.sample(400, np.random.default_rng(31))
        assert all(s.attributes["race"] == "Black" for s in forced)
        assert column(forced, "disease").tolist() == column(plain, "disease").tolist()

    @pytest.mark.parametrize(
        ("do", "match"),
        [
            ({"colour": "red"}, "unknown attribute 'colour'"),
            ({"age": 10}, "age: 10 is outside"),
            ({"sex": "X"}, "sex"),
        ],
    )
    def test_invalid_do_is_rejected(self, cxr, do, match):
        """An unknown attribute or an invalid value in do is a SchemaError before anything is drawn."""
        with pytest.raises(SchemaError, match=match):
            cxr.sample(3, np.random.default_rng(0), do=do)


# -- counterfactuals --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def subjects(cxr_sample):
    return cxr_sample[:600]


class TestCounterfactual:
    def test_null_intervention_is_the_identity(self, cxr, subjects):
        """do={} returns identical attributes, noise and seeds."""
        for s in subjects:
            cf = cxr.counterfactual(s, {})
            assert cf.attributes == s.attributes
            assert cf.noise == s.noise
            assert cf.seeds == s.seeds

    def test_do_own_value_is_the_identity(self, cxr, subjects):
        """Setting each attribute to its factual value changes nothing (consistency)."""
        for s in subjects[:200]:
            for name in cxr.schema.names:
                assert cxr.counterfactual(s, {name: s.attributes[name]}).attributes == s.attributes

    @pytest.mark.parametrize(
        ("name", "flip"),
        [("sex", {"M": "F", "F": "M"}), ("race", {"White": "Black", "Asian": "White", "Black": "Asian"})],
    )
    def test_do_on_a_root_changes_only_that_attribute(self, cxr, subjects, name, flip):
        """do(sex) or do(race) changes that attribute and nothing else, despite the copula."""
        for s in subjects:
            target = flip[s.attributes[name]]
            cf = cxr.counterfactual(s, {name: target})
            assert cf.attributes == {**s.attributes, name: target}

    @pytest.mark.parametrize("new_age", [18.0, 20.0, 45.5, 60.0, 90.0, 95.0])
    def test_do_age_recomputes_disease_with_own_noise(self, cxr, subjects, new_age):
        """do(age): sex and race are kept, disease is Pleural Effusion iff u_disease < p(new age)."""
        threshold = cxr.effusion_probability(new_age)
        for s in subjects:
            cf = cxr.counterfactual(s, {"age": new_age})
            assert cf.attributes["age"] == new_age
            assert cf.attributes["sex"] == s.attributes["sex"]
            assert cf.attributes["race"] == s.attributes["race"]
            assert (cf.attributes["disease"] == EFFUSION) == (s.noise["u_disease"] < threshold)

    def test_do_age_actually_changes_some_diagnoses(self, cxr, subjects):
        """Ageing everyone to 95 turns some healthy subjects ill and never the reverse (monotone curve)."""
        cured = turned = 0
        for s in subjects:
            before = s.attributes["disease"] == EFFUSION
            after = cxr.counterfactual(s, {"age": 95.0}).attributes["disease"] == EFFUSION
            turned += after and not before
            cured += before and not after
        assert turned > 50
        assert cured == 0

    @pytest.mark.parametrize("value", ["No Finding", "Pleural Effusion"])
    def test_do_disease_leaves_its_parent_alone(self, cxr, subjects, value):
        """do(disease) sets disease and keeps age, sex and race."""
        for s in subjects:
            cf = cxr.counterfactual(s, {"disease": value})
            assert cf.attributes == {**s.attributes, "disease": value}

    def test_values_set_by_an_earlier_do_are_kept(self, cxr):
        """Non-descendants keep their factual value even when U would give another (set by do at sampling)."""
        pinned = cxr.sample(300, np.random.default_rng(71), do={"age": 88.0, "disease": "No Finding"})
        would_be_ill = 0
        for s in pinned:
            would_be_ill += s.noise["u_disease"] < cxr.effusion_probability(88.0)
            for do in ({"race": "Asian"}, {"sex": "F"}, {}):
                cf = cxr.counterfactual(s, do)
                assert cf.attributes["age"] == 88.0
                assert cf.attributes["disease"] == "No Finding"
        assert would_be_ill > 100  # the kept disease really differs from what the equation would give

    def test_round_trip_restores_the_factual_subject(self, cxr, subjects):
        """do(age=90), then do(age=original) gives back the factual attributes (same U)."""
        for s in subjects:
            there = cxr.counterfactual(s, {"age": 90.0})
            back = cxr.counterfactual(there, {"age": s.attributes["age"]})
            assert back.attributes == s.attributes

    def test_noise_seeds_and_input_are_never_changed(self, cxr, subjects):
        """Counterfactuals do not alter U, the seeds, or the factual subject."""
        for s in subjects[:100]:
            before = copy.deepcopy(s)
            for do in ({"age": 30.0}, {"disease": "No Finding"}, {"sex": "F", "race": "Asian"}, {}):
                cf = cxr.counterfactual(s, do)
                assert cf.noise == before.noise and cf.seeds == before.seeds
            assert s == before

    def test_do_values_are_parsed(self, cxr, subjects):
        """do values are validated like user input: case-folded categories and numeric text."""
        cf = cxr.counterfactual(subjects[0], {"sex": "f", "age": "70"})
        assert cf.attributes["sex"] == "F" and cf.attributes["age"] == 70.0
        with pytest.raises(SchemaError, match="^race: unknown value 'Martian'"):
            cxr.counterfactual(subjects[0], {"race": "Martian"})

    def test_mammo_do_age_recomputes_density_only(self, mammo, mammo_sample):
        """In the breast model do(age) recomputes density from u_density and keeps race, view and marker."""
        for s in mammo_sample[:300]:
            cf = mammo.counterfactual(s, {"age": 85.0})
            expected = mammo.mechanism("density", s.noise, {"age": 85.0})
            assert cf.attributes == {**s.attributes, "age": 85.0, "density": expected}
            # ageing never makes a breast denser (density_shift_per_decade < 0)
            assert cf.attributes["density"] <= s.attributes["density"] or s.attributes["age"] > 85.0


# -- follow-up images ---------------------------------------------------------------------------------------


def _factor_names(phantom, level):
    return [f.name for f in phantom.factors if f.level == level]


class TestFollowUpChest:
    def test_cxr_factor_levels(self, cxr):
        """The chest phantom has patient- and study-level factors and no image-level factor."""
        assert _factor_names(cxr, "patient") and _factor_names(cxr, "study")
        assert _factor_names(cxr, "image") == []

    def test_study_follow_up_redraws_study_factors_and_disease_noise(self, cxr, cxr_sample):
        """levels=("study",): study factors and u_disease redrawn, patient factors, u_age/u_sex/u_race and
        the anatomy seed kept, the noise seed redrawn."""
        rng = np.random.default_rng(41)
        for s in cxr_sample[:200]:
            f = cxr.follow_up(s, rng, ("study",))
            for name in _factor_names(cxr, "patient") + ["u_age", "u_sex", "u_race"]:
                assert f.noise[name] == s.noise[name], name
            for name in _factor_names(cxr, "study") + ["u_disease"]:
                assert f.noise[name] != s.noise[name], name
                assert 0.0 < f.noise[name] < 1.0
            assert f.seeds["anatomy"] == s.seeds["anatomy"]
            assert f.seeds["noise"] != s.seeds["noise"]

    def test_study_follow_up_keeps_patient_attributes_and_resolves_disease(self, cxr, cxr_sample):
        """Age, sex and race are kept; disease follows the new u_disease at the same age."""
        rng = np.random.default_rng(42)
        changed = 0
        for s in cxr_sample[:400]:
            f = cxr.follow_up(s, rng, ("study",))
            assert {k: f.attributes[k] for k in ("age", "sex", "race")} == {
                k: s.attributes[k] for k in ("age", "sex", "race")
            }
            expected = f.noise["u_disease"] < cxr.effusion_probability(s.attributes["age"])
            assert (f.attributes["disease"] == EFFUSION) == expected
            changed += f.attributes["disease"] != s.attributes["disease"]
        assert changed > 40  # disease really is redrawn per study

    def test_image_follow_up_keeps_all_noise(self, cxr, cxr_sample):
        """levels=("image",) on the chest phantom: no noise changes (no image factors), attributes kept."""
        rng = np.random.default_rng(43)
        for s in cxr_sample[:100]:
            f = cxr.follow_up(s, rng, ("image",))
            assert f.noise == s.noise
            assert f.attributes == s.attributes
            assert f.seeds["anatomy"] == s.seeds["anatomy"] and f.seeds["noise"] != s.seeds["noise"]

    def test_follow_up_with_do_age_recomputes_disease_from_new_noise(self, cxr, cxr_sample):
        """As in the MIMIC export: do(age=older) at a new study sets age and solves disease with new U."""
        rng = np.random.default_rng(44)
        for s in cxr_sample[:200]:
            older = min(s.attributes["age"] + 2.0, 95.0)
            f = cxr.follow_up(s, rng, ("study", "image"), {"age": older})
            assert f.attributes["age"] == older
            assert f.attributes["sex"] == s.attributes["sex"] and f.attributes["race"] == s.attributes["race"]
            assert (f.attributes["disease"] == EFFUSION) == (f.noise["u_disease"] < cxr.effusion_probability(older))

    def test_follow_up_does_not_mutate_the_subject(self, cxr, cxr_sample):
        """The input subject's noise, seeds and attributes are unchanged by a follow-up."""
        s = cxr_sample[0]
        before = copy.deepcopy(s)
        cxr.follow_up(s, np.random.default_rng(0), ("study", "image"), {"disease": "No Finding"})
        assert s == before

    def test_follow_up_is_reproducible(self, cxr, cxr_sample):
        """The same rng state gives the same follow-up."""
        s = cxr_sample[1]
        assert cxr.follow_up(s, np.random.default_rng(8), ("study",)) == cxr.follow_up(
            s, np.random.default_rng(8), ("study",)
        )

    def test_do_on_study_attribute_wins_over_redrawn_noise(self, cxr, cxr_sample):
        """do(disease) at a study follow-up fixes disease although its noise is redrawn."""
        rng = np.random.default_rng(45)
        for s in cxr_sample[:100]:
            f = cxr.follow_up(s, rng, ("study",), {"disease": EFFUSION})
            assert f.attributes["disease"] == EFFUSION
            assert f.noise["u_disease"] != s.noise["u_disease"]


@pytest.fixture(scope="module")
def aged_mammo(mammo):
    """Mammo subjects whose age was set by do(age=88), far from what their own u_age gives."""
    subjects = mammo.sample(200, np.random.default_rng(51), do={"age": 88.0})
    natural = [mammo.mechanism("age", s.noise, {}) for s in subjects]
    assert all(abs(a - 88.0) > 1e-6 for a in natural)
    assert sum(abs(a - 88.0) > 10 for a in natural) > 150  # most differ a lot
    return subjects


class TestFollowUpMammo:
    def test_mammo_image_follow_up_keeps_intervened_age_and_density(self, mammo, aged_mammo):
        """levels=("image",), do(view=CC): age stays 88 (not re-solved from u_age), density and marker stay,
        only the image-level factor is redrawn."""
        rng = np.random.default_rng(52)
        for s in aged_mammo:
            f = mammo.follow_up(s, rng, ("image",), {"view": "CC"})
            assert f.attributes == {**s.attributes, "view": "CC"}
            for name in _factor_names(mammo, "patient") + _factor_names(mammo, "study"):
                assert f.noise[name] == s.noise[name], name
            for name in _factor_names(mammo, "image"):
                assert f.noise[name] != s.noise[name], name
            assert {k: v for k, v in f.noise.items() if k.startswith("u_")} == {
                k: v for k, v in s.noise.items() if k.startswith("u_")
            }
            assert f.seeds["anatomy"] == s.seeds["anatomy"]

    def test_mammo_study_follow_up_keeps_intervened_age_and_redraws_density(self, mammo, aged_mammo):
        """levels=("study",): age stays 88, race and view stay; density and marker follow their new noise,
        density at the kept age; the image-level factor is kept."""
        rng = np.random.default_rng(53)
        for s in aged_mammo:
            f = mammo.follow_up(s, rng, ("study",))
            assert f.attributes["age"] == 88.0
            assert f.attributes["race"] == s.attributes["race"] and f.attributes["view"] == s.attributes["view"]
            assert f.noise["u_density"] != s.noise["u_density"] and f.noise["u_marker"] != s.noise["u_marker"]
            assert f.noise["u_age"] == s.noise["u_age"] and f.noise["u_race"] == s.noise["u_race"]
            assert f.attributes["density"] == mammo.mechanism("density", f.noise, {"age": 88.0})
            assert f.attributes["marker"] == mammo.mechanism("marker", f.noise, {})
            for name in _factor_names(mammo, "image") + _factor_names(mammo, "patient"):
                assert f.noise[name] == s.noise[name], name
            for name in _factor_names(mammo, "study"):
                assert f.noise[name] != s.noise[name], name


class TestFollowUpPopulation:
    def test_follow_up_studies_keep_the_population_association(self, cxr, cxr_sample):
        """Follow-ups come from the same population: still P(effusion | Black) > P(effusion | White)."""
        rng = np.random.default_rng(61)
        follow_ups = [cxr.follow_up(s, rng, ("study",)) for s in cxr_sample]
        race, disease = column(follow_ups, "race"), column(follow_ups, "disease") == EFFUSION
        difference, error = rate_difference(disease, race == "Black", race == "White")
        # the factual sample shows a difference of about 0.2 (see TestCxrPopulationAssociations)
        assert difference > 6 * error
