"""Tests for medcf.core.attributes: attributes, the causal schema (DAG order, descendants) and strict parsing."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medcf.core.attributes import Attribute, AttributeSchema, SchemaError
from medcf.phantoms.cxr import CXR_SCHEMA
from medcf.phantoms.mammo import MAMMO_SCHEMA

AGE = Attribute("age", "continuous", low=18.0, high=95.0, unit="years")
SEX = Attribute("sex", "categorical", values=("M", "F"))
RACE = Attribute("race", "categorical", values=("White", "Asian", "Black"))


def chain_schema() -> AttributeSchema:
    """a -> b -> c, plus an unrelated root d, declared children first."""
    return AttributeSchema(
        (
            Attribute("c", "categorical", values=("x", "y"), parents=("b",)),
            Attribute("b", "categorical", values=("x", "y"), parents=("a",)),
            Attribute("d", "continuous", low=0.0, high=1.0),
            Attribute("a", "continuous", low=0.0, high=1.0),
        )
    )


class TestAttributeConstruction:
    @pytest.mark.parametrize("name", ["Age", "1age", "age-x", "", "age x", "_age", "âge"])
    def test_bad_names_are_rejected_and_named(self, name):
        """Names must be lower-case letters, digits and _, starting with a letter; the message quotes it."""
        with pytest.raises(SchemaError, match=re.escape(repr(name))):
            Attribute(name, "continuous", low=0.0, high=1.0)

    @pytest.mark.parametrize("name", ["age", "a", "age_2", "bmi_z"])
    def test_good_names_are_accepted(self, name):
        """Well-formed names build an attribute that keeps its name."""
        assert Attribute(name, "continuous", low=0.0, high=1.0).name == name

    @pytest.mark.parametrize("values", [(), ("only",)])
    def test_categorical_needs_two_values(self, values):
        """A categorical attribute with fewer than two values is rejected, naming the attribute."""
        with pytest.raises(SchemaError, match="'colour'.*at least two values"):
            Attribute("colour", "categorical", values=values)

    @pytest.mark.parametrize(("low", "high"), [(1.0, 1.0), (2.0, 1.0), (math.nan, 1.0), (0.0, math.nan)])
    def test_continuous_needs_low_below_high(self, low, high):
        """A continuous range must satisfy low < high (NaN bounds included), naming the attribute."""
        with pytest.raises(SchemaError, match="'dose'.*low < high"):
            Attribute("dose", "continuous", low=low, high=high)

    def test_unknown_kind_is_rejected(self):
        """A kind other than categorical/continuous is rejected, naming the attribute."""
        with pytest.raises(SchemaError, match="'grade'.*kind must be categorical or continuous"):
            Attribute("grade", "ordinal", values=("1", "2"))  # type: ignore[arg-type]

    def test_schema_error_is_a_value_error(self):
        """SchemaError subclasses ValueError, so generic callers can catch it."""
        assert issubclass(SchemaError, ValueError)


class TestCategoricalParse:
    @pytest.mark.parametrize("value", ["White", "Asian", "Black"])
    def test_exact_values_parse_to_themselves(self, value):
        """Each allowed value parses to itself."""
        assert RACE.parse(value) == value

    @pytest.mark.parametrize(("text", "expected"), [("white", "White"), ("BLACK", "Black"), ("  asian ", "Asian")])
    def test_case_and_whitespace_are_normalised(self, text, expected):
        """Parsing folds case and strips surrounding whitespace, returning the canonical spelling."""
        assert RACE.parse(text) == expected

    @given(
        st.sampled_from(RACE.values).flatmap(
            lambda v: st.tuples(st.just(v), st.lists(st.booleans(), min_size=len(v), max_size=len(v)))
        )
    )
    def test_any_casing_parses_to_the_canonical_value(self, value_and_mask):
        """Any upper/lower-case mix of an allowed value parses to the canonical value."""
        value, mask = value_and_mask
        text = "".join(c.upper() if up else c.lower() for c, up in zip(value, mask, strict=True))
        assert RACE.parse(text) == value

    @pytest.mark.parametrize("text", ["Hispanic", "", "Whit", "White Black", "0", 1])
    def test_unknown_values_are_rejected_listing_allowed(self, text):
        """An unknown value names the attribute, the bad value and every allowed value."""
        with pytest.raises(SchemaError) as info:
            RACE.parse(text)
        message = str(info.value)
        assert message.startswith("race: unknown value ")
        assert repr(str(text).strip()) in message
        assert "allowed: White, Asian, Black" in message

    def test_index_follows_the_coding_order(self):
        """index() gives the position in the declared order."""
        assert [RACE.index(v) for v in ("White", "Asian", "Black")] == [0, 1, 2]
        assert SEX.index("F") == 1


class TestContinuousParse:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [("63.5", 63.5), (" 40 ", 40.0), (70, 70.0), ("6.3e1", 63.0), ("18", 18.0), (95, 95.0)],
    )
    def test_numbers_and_numeric_text_parse_to_float(self, text, expected):
        """Numeric text and numbers give a float; both bounds are inclusive."""
        value = AGE.parse(text)
        assert isinstance(value, float)
        assert value == expected

    @given(st.floats(min_value=18.0, max_value=95.0))
    def test_any_in_range_float_round_trips(self, x):
        """Any in-range float survives parse from its repr, its str and itself, exactly."""
        assert AGE.parse(repr(x)) == x
        assert AGE.parse(str(x)) == x
        assert AGE.parse(x) == x

    @given(st.one_of(st.floats(max_value=17.999999, allow_nan=False), st.floats(min_value=95.000001, allow_nan=False)))
    def test_any_out_of_range_float_is_rejected(self, x):
        """Values outside [low, high] (infinities included) are rejected with the range in the message."""
        with pytest.raises(SchemaError, match=r"^age: .* is outside the allowed range \[18, 95\]$"):
            AGE.parse(x)

    @pytest.mark.parametrize(("text", "shown"), [("120", "120"), ("-3", "-3"), ("17.5", "17.5")])
    def test_range_error_names_the_value(self, text, shown):
        """The range error names attribute, value and the allowed range."""
        with pytest.raises(SchemaError, match=rf"^age: {re.escape(shown)} is outside the allowed range \[18, 95\]$"):
            AGE.parse(text)

    def test_range_error_does_not_round_the_value_into_the_range(self):
        """A value just past a bound is shown with enough digits to see that it is outside."""
        with pytest.raises(SchemaError) as info:
            AGE.parse("95.0000001")
        assert "95.0000001" in str(info.value)

    @pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", float("nan"), float("inf")])
    def test_non_finite_values_are_rejected(self, text):
        """NaN and infinities are never valid values."""
        with pytest.raises(SchemaError, match="^age: .* is outside the allowed range"):
            AGE.parse(text)

    @pytest.mark.parametrize("text", ["sixty", "", "60 years", "6O", None, "1/2", "__import__('os')"])
    def test_non_numbers_are_rejected(self, text):
        """Text that is not a number names the attribute and the bad value."""
        with pytest.raises(SchemaError, match=rf"^age: {re.escape(repr(text))} is not a number$"):
            AGE.parse(text)


class TestSchemaConstruction:
    def test_duplicate_names_are_rejected(self):
        """Two attributes with the same name make an invalid schema."""
        with pytest.raises(SchemaError, match="unique"):
            AttributeSchema((AGE, SEX, Attribute("age", "continuous", low=0.0, high=1.0)))

    def test_unknown_parent_is_rejected_naming_both(self):
        """A parent outside the schema is rejected, naming the child and the missing parent."""
        child = Attribute("disease", "categorical", values=("no", "yes"), parents=("smoking",))
        with pytest.raises(SchemaError, match=r"attribute 'disease': parent 'smoking' is not in the schema"):
            AttributeSchema((AGE, child))

    def test_self_loop_is_a_cycle(self):
        """An attribute that is its own parent is a cycle."""
        loop = Attribute("a", "categorical", values=("x", "y"), parents=("a",))
        with pytest.raises(SchemaError, match=r"cycle through 'a'"):
            AttributeSchema((loop,))

    def test_two_and_three_cycles_are_rejected(self):
        """Longer cycles are detected too, wherever they start."""
        two = (
            Attribute("a", "categorical", values=("x", "y"), parents=("b",)),
            Attribute("b", "categorical", values=("x", "y"), parents=("a",)),
        )
        with pytest.raises(SchemaError, match="cycle"):
            AttributeSchema(two)
        three = (
            Attribute("r", "continuous", low=0.0, high=1.0),
            Attribute("a", "categorical", values=("x", "y"), parents=("c", "r")),
            Attribute("b", "categorical", values=("x", "y"), parents=("a",)),
            Attribute("c", "categorical", values=("x", "y"), parents=("b",)),
        )
        with pytest.raises(SchemaError, match=r"cycle through '[abc]'"):
            AttributeSchema(three)

    def test_diamond_is_not_a_cycle(self):
        """Two paths to the same node (a->b->d, a->c->d) form a valid DAG."""
        schema = AttributeSchema(
            (
                Attribute("d", "categorical", values=("x", "y"), parents=("b", "c")),
                Attribute("b", "categorical", values=("x", "y"), parents=("a",)),
                Attribute("c", "categorical", values=("x", "y"), parents=("a",)),
                Attribute("a", "continuous", low=0.0, high=1.0),
            )
        )
        assert schema.descendants(["a"]) == {"b", "c", "d"}
        order = schema.topological_order()
        assert order.index("a") < order.index("b") < order.index("d")
        assert order.index("c") < order.index("d")


class TestSchemaLookup:
    def test_names_keep_declaration_order(self):
        """names lists attributes in the order given."""
        assert CXR_SCHEMA.names == ("age", "sex", "race", "disease")
        assert chain_schema().names == ("c", "b", "d", "a")

    def test_getitem_and_contains(self):
        """Known names look up their attribute; membership works for known and unknown names."""
        assert CXR_SCHEMA["sex"].values == ("M", "F")
        assert "disease" in CXR_SCHEMA
        assert "colour" not in CXR_SCHEMA
        assert 3 not in CXR_SCHEMA

    def test_unknown_attribute_lists_the_known_ones(self):
        """Looking up an unknown name names it and lists every known attribute."""
        with pytest.raises(SchemaError, match=r"^unknown attribute 'colour'; known: age, sex, race, disease$"):
            CXR_SCHEMA["colour"]


class TestTopologicalOrder:
    def test_parents_come_first_in_the_chain(self):
        """a before b before c, although they are declared the other way round; every name appears once."""
        order = chain_schema().topological_order()
        assert sorted(order) == ["a", "b", "c", "d"]
        assert order.index("a") < order.index("b") < order.index("c")

    @pytest.mark.parametrize("schema", [CXR_SCHEMA, MAMMO_SCHEMA, chain_schema()], ids=["cxr", "mammo", "chain"])
    def test_every_parent_precedes_its_children(self, schema):
        """For every edge parent -> child, the parent comes first; the order is a permutation of names."""
        order = schema.topological_order()
        assert sorted(order) == sorted(schema.names)
        for attribute in schema.attributes:
            for parent in attribute.parents:
                assert order.index(parent) < order.index(attribute.name)

    def test_cxr_age_before_disease(self):
        """In the chest schema age is solved before disease."""
        order = CXR_SCHEMA.topological_order()
        assert order.index("age") < order.index("disease")


class TestDescendants:
    @pytest.mark.parametrize(
        ("names", "expected"),
        [(["age"], {"disease"}), (["sex"], set()), (["race"], set()), (["disease"], set()), ([], set())],
    )
    def test_cxr_descendants(self, names, expected):
        """In the chest graph only disease lies downstream of age; sex, race and disease have none."""
        assert CXR_SCHEMA.descendants(names) == expected

    @pytest.mark.parametrize(
        ("names", "expected"),
        [(["age"], {"density"}), (["race"], set()), (["view", "marker"], set()), (["density"], set())],
    )
    def test_mammo_descendants(self, names, expected):
        """In the breast graph only density lies downstream of age."""
        assert MAMMO_SCHEMA.descendants(names) == expected

    def test_descendants_are_transitive(self):
        """Grandchildren are found; the unrelated root is not."""
        schema = chain_schema()
        assert schema.descendants(["a"]) == {"b", "c"}
        assert schema.descendants(["b"]) == {"c"}
        assert schema.descendants(["d"]) == set()
        assert schema.children("a") == ("b",)

    def test_descendants_of_unknown_attribute_raise(self):
        """Asking for an unknown attribute's descendants is a SchemaError naming it."""
        with pytest.raises(SchemaError, match="unknown attribute 'colour'"):
            CXR_SCHEMA.descendants(["age", "colour"])


class TestParseAssignment:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("sex=F", ("sex", "F")),
            ("sex=f", ("sex", "F")),
            ("  age = 63.5  ", ("age", 63.5)),
            ("race='Black'", ("race", "Black")),
            ('race="asian"', ("race", "Asian")),
            ("disease=Pleural Effusion", ("disease", "Pleural Effusion")),
            ("disease = no finding", ("disease", "No Finding")),
        ],
    )
    def test_valid_assignments(self, text, expected):
        """name=value with optional spaces and quotes parses to the canonical (name, value)."""
        assert CXR_SCHEMA.parse_assignment(text) == expected

    @pytest.mark.parametrize("text", ["sex", "=F", "sex=", "sex:F", "1sex=F", "", "   ", "sex=F\nage=3", "se x=F"])
    def test_malformed_assignments(self, text):
        """Text that is not name=value is rejected, quoting the text and showing an example."""
        with pytest.raises(SchemaError, match=r"^malformed assignment .*; expected name=value, e.g. sex=F$") as info:
            CXR_SCHEMA.parse_assignment(text)
        assert repr(text) in str(info.value)

    def test_unknown_name_lists_known(self):
        """An unknown name in an assignment lists the known attributes."""
        with pytest.raises(SchemaError, match=r"unknown attribute 'colour'; known: age, sex, race, disease"):
            CXR_SCHEMA.parse_assignment("colour=red")

    def test_names_are_case_sensitive(self):
        """Attribute names are not case-folded (only categorical values are)."""
        with pytest.raises(SchemaError, match="unknown attribute 'SEX'"):
            CXR_SCHEMA.parse_assignment("SEX=F")

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("age=__import__('os')", "age: \"__import__('os')\" is not a number"),
            ("age=200", "age: 200 is outside the allowed range [18, 95]"),
            ("sex=X", "sex: unknown value 'X'; allowed: M, F"),
            ("age==60", "age: '=60' is not a number"),
        ],
    )
    def test_bad_values_name_attribute_and_value(self, text, message):
        """Bad values are rejected with the attribute's own message."""
        with pytest.raises(SchemaError, match=re.escape(message)):
            CXR_SCHEMA.parse_assignment(text)

    def test_value_text_is_never_evaluated(self, tmp_path):
        """Python code as a value is rejected and has no side effect."""
        target = tmp_path / "evaluated"
        for name in ("age", "sex"):
            with pytest.raises(SchemaError):
                CXR_SCHEMA.parse_assignment(f"{name}=open({str(target)!r}, 'w').close() or 60")
        assert not target.exists()

    @given(st.floats(min_value=18.0, max_value=95.0))
    def test_in_range_age_assignment_round_trips(self, x):
        """age=<repr of any in-range float> gives back exactly that float."""
        assert CXR_SCHEMA.parse_assignment(f"age={x!r}") == ("age", x)

    @given(st.text(alphabet="()[]{};,.'\"+-*/ _abcxyzMF0123456789=", max_size=30))
    def test_arbitrary_text_is_rejected_or_gives_a_valid_assignment(self, text):
        """Any text either raises SchemaError or yields a known attribute and a value that validates."""
        try:
            name, value = CXR_SCHEMA.parse_assignment(text)
        except SchemaError:
            return
        assert name in CXR_SCHEMA
        assert CXR_SCHEMA[name].parse(value) == value

    @settings(max_examples=50)
    @given(
        st.sampled_from(CXR_SCHEMA.names),
        st.text(min_size=1, max_size=15).filter(lambda s: "\n" not in s),
    )
    def test_values_with_call_syntax_are_always_rejected(self, name, junk):
        """A value containing a call '(...)' is junk for every attribute: always a SchemaError."""
        with pytest.raises(SchemaError):
            CXR_SCHEMA.parse_assignment(f"{name}=f({junk})")


class TestValidate:
    def test_returns_a_parsed_copy(self):
        """validate parses every value and does not touch the input mapping."""
        values = {"age": "63", "sex": "f", "race": "BLACK"}
        parsed = CXR_SCHEMA.validate(values)
        assert parsed == {"age": 63.0, "sex": "F", "race": "Black"}
        assert values == {"age": "63", "sex": "f", "race": "BLACK"}

    def test_empty_mapping_is_valid(self):
        """No values, nothing to check."""
        assert CXR_SCHEMA.validate({}) == {}

    def test_unknown_or_bad_entries_raise(self):
        """An unknown name or a bad value anywhere in the mapping is a SchemaError naming it."""
        with pytest.raises(SchemaError, match="unknown attribute 'colour'"):
            CXR_SCHEMA.validate({"age": 50, "colour": "red"})
        with pytest.raises(SchemaError, match="^disease: unknown value 'Cancer'"):
            CXR_SCHEMA.validate({"disease": "Cancer"})
