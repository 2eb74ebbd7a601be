"""The intervention grammar: what parses, what each error says, relative shifts, and that nothing is evaluated."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medcf.core.interventions import Assignment, InterventionError, parse_intervention
from medcf.phantoms.cxr import CXR_SCHEMA
from medcf.phantoms.mammo import MAMMO_SCHEMA

FACTUAL = {"age": 60.0, "sex": "M", "race": "White", "disease": "No Finding"}


class TestParsing:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("do(sex=F)", (Assignment("sex", "F"),)),
            ("do(age=80, race=Black)", (Assignment("age", 80.0), Assignment("race", "Black"))),
            ("do(age=+20)", (Assignment("age", 20.0, relative=True),)),
            ("do(age=-5.5)", (Assignment("age", -5.5, relative=True),)),
            ("do()", ()),
            ("  do ( sex = f )  ", (Assignment("sex", "F"),)),
            ("do(disease=Pleural Effusion)", (Assignment("disease", "Pleural Effusion"),)),
            ("do(disease='pleural effusion')", (Assignment("disease", "Pleural Effusion"),)),
        ],
    )
    def test_valid_interventions(self, text, expected):
        """The documented forms parse to their assignments (categories case-insensitively, quotes optional)."""
        assert parse_intervention(CXR_SCHEMA, text).assignments == expected

    def test_canonical_text_round_trips(self):
        """The canonical spelling parses to the same intervention."""
        intervention = parse_intervention(CXR_SCHEMA, "do( age=+20,sex=f)")
        assert intervention.text == "do(age=+20, sex=F)"
        assert parse_intervention(CXR_SCHEMA, intervention.text) == intervention
        assert parse_intervention(CXR_SCHEMA, "do()").is_null

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("sex=F", "malformed intervention 'sex=F'"),
            ("do(sex=F", "malformed intervention"),
            ("do(colour=red)", "unknown attribute 'colour'; known: age, sex, race, disease"),
            ("do(sex=X)", "sex: unknown value 'X'; allowed: M, F"),
            ("do(age=200)", "age: 200 is outside the allowed range [18, 95]"),
            ("do(age=old)", "age: 'old' is not a number"),
            ("do(age=1e3)", "is not a number"),
            ("do(sex=F, sex=M)", "sex is assigned twice"),
            ("do(sex)", "malformed assignment 'sex'"),
            ("do(sex=)", "malformed assignment 'sex='"),
            ("do(,)", "malformed assignment ''"),
            ("do(race='Black)", "unbalanced quote"),
        ],
    )
    def test_errors_are_one_line_naming_the_problem(self, text, message):
        """Each malformed or impossible intervention fails with a specific one-line message."""
        with pytest.raises(InterventionError) as error:
            parse_intervention(CXR_SCHEMA, text)
        assert message in str(error.value) and "\n" not in str(error.value)

    @given(st.one_of(st.text(max_size=40), st.text(max_size=40).map(lambda body: f"do({body})")))
    def test_arbitrary_text_never_crashes_or_evaluates(self, text):
        """Any string, with or without the do(...) wrapper, either parses into known attributes or raises a
        one-line InterventionError; calls and imports are never run."""
        try:
            parsed = parse_intervention(CXR_SCHEMA, text)
        except InterventionError as error:
            assert "\n" not in str(error)
        else:
            assert set(parsed.names) <= set(CXR_SCHEMA.names)

    def test_code_is_not_evaluated(self):
        """Python inside a value is just an unknown value."""
        with pytest.raises(InterventionError, match="not a number"):
            parse_intervention(CXR_SCHEMA, "do(age=__import__('os').system('true'))")


class TestApply:
    def test_relative_shift_resolves_against_the_factual_value(self):
        """do(age=+20) on a 60-year-old sets age 80; set values pass through."""
        values = parse_intervention(CXR_SCHEMA, "do(age=+20, sex=F)").apply(CXR_SCHEMA, FACTUAL)
        assert values == {"age": 80.0, "sex": "F"}

    def test_shift_out_of_range_names_the_arithmetic(self):
        """A shift past the attribute's range is an error showing the sum."""
        with pytest.raises(InterventionError, match="age 60 \\+40 = 100 is outside \\[18, 95\\]"):
            parse_intervention(CXR_SCHEMA, "do(age=+40)").apply(CXR_SCHEMA, FACTUAL)

    @pytest.mark.parametrize("shift", ["+1000", "-78", "+77.5"])
    def test_a_shift_wider_than_the_range_is_refused_when_parsed(self, shift):
        """No age in [18, 95] can take a shift of more than 77 years: refused before any image is seen."""
        with pytest.raises(InterventionError, match=r"takes every age in \[18, 95\] outside that range") as error:
            parse_intervention(CXR_SCHEMA, f"do(age={shift})")
        assert "\n" not in str(error.value)
        assert parse_intervention(CXR_SCHEMA, "do(age=+77)").apply(CXR_SCHEMA, {**FACTUAL, "age": 18.0})["age"] == 95

    def test_relative_is_only_for_continuous_attributes(self):
        """A signed value for a categorical attribute is an unknown category."""
        with pytest.raises(InterventionError, match="density: unknown value"):
            parse_intervention(MAMMO_SCHEMA, "do(density=+1)")
