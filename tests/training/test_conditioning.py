"""Tests for medcf.core.conditioning: attribute encoding, the attribute-split embedder and condition dropout."""

from __future__ import annotations

import math
import re

import pytest
import torch

from medcf.core.attributes import SchemaError
from medcf.core.conditioning import AttributeEmbedder, ConditionDropout, encode_attributes
from medcf.phantoms.cxr import CXR_SCHEMA
from medcf.phantoms.mammo import MAMMO_SCHEMA

AGE, SEX, RACE, DISEASE = range(4)  # column of each CXR attribute
GROUPS = [["age", "disease"], ["sex"], ["race"]]
N = 20000  # rows for the empirical dropout rates


def cxr_row(**changes) -> dict:
    row = {"age": 63.5, "sex": "F", "race": "Black", "disease": "Pleural Effusion"}
    row.update(changes)
    return row


def within(observed: float, p: float, n: int = N, sigmas: float = 5.0) -> bool:
    """``observed`` is a binomial fraction of ``n`` trials with success probability ``p``, up to ``sigmas`` SE."""
    return abs(observed - p) <= sigmas * math.sqrt(p * (1 - p) / n) + 1e-12


def make_embedder(learned_null: bool = False, seed: int = 0) -> AttributeEmbedder:
    torch.manual_seed(seed)
    return AttributeEmbedder(CXR_SCHEMA, block_dim=8, hidden_dim=16, learned_null=learned_null)


def cxr_values() -> torch.Tensor:
    return torch.tensor([[30.0, 0, 0, 0], [63.5, 1, 2, 1], [95.0, 1, 1, 0]])


class TestEncodeAttributes:
    def test_categorical_to_index_continuous_to_raw_value(self):
        """Categories become their index in the coding order, continuous values stay raw."""
        codes = encode_attributes(CXR_SCHEMA, [cxr_row(), cxr_row(age=18, sex="M", race="White", disease="No Finding")])
        assert codes.dtype == torch.float32
        assert codes.tolist() == [[63.5, 1.0, 2.0, 1.0], [18.0, 0.0, 0.0, 0.0]]

    def test_columns_follow_schema_order_not_row_order(self):
        """The column order is the schema's, whatever the order of the row's keys."""
        row = {"disease": "No Finding", "race": "Asian", "age": 40.0, "sex": "M"}
        assert encode_attributes(CXR_SCHEMA, [row]).tolist() == [[40.0, 0.0, 1.0, 0.0]]
        mammo = {"marker": "circle", "view": "MLO", "density": "C", "race": "Asian", "age": 50.0}
        assert encode_attributes(MAMMO_SCHEMA, [mammo]).tolist() == [[50.0, 2.0, 2.0, 1.0, 1.0]]

    def test_values_are_parsed(self):
        """Text numbers and case-folded categories are parsed like user input."""
        assert encode_attributes(CXR_SCHEMA, [cxr_row(age="70", sex="m", race="asian")]).tolist() == [
            [70.0, 0.0, 1.0, 1.0]
        ]

    def test_no_rows_gives_empty_batch(self):
        """Zero rows give a (0, K) tensor."""
        assert encode_attributes(CXR_SCHEMA, []).shape == (0, 4)

    @pytest.mark.parametrize(
        ("name", "value"),
        [("race", "Martian"), ("sex", "X"), ("disease", "Cancer"), ("age", 120.0), ("age", 17.5), ("age", "old")],
    )
    def test_bad_value_raises_schema_error_naming_attribute_and_value(self, name, value):
        """A value outside the schema fails with a SchemaError naming the attribute and the value."""
        with pytest.raises(SchemaError) as info:
            encode_attributes(CXR_SCHEMA, [cxr_row(), cxr_row(**{name: value})])
        message = str(info.value)
        assert name in message
        assert (f"{value:g}" if isinstance(value, float) else value) in message

    @pytest.mark.parametrize("missing", ["age", "sex", "race", "disease"])
    def test_missing_attribute_raises(self, missing):
        """A row without one of the schema's attributes is an error naming it."""
        row = cxr_row()
        del row[missing]
        with pytest.raises((KeyError, SchemaError), match=missing):
            encode_attributes(CXR_SCHEMA, [row])


class TestAttributeEmbedder:
    def test_output_shape(self):
        """Blocks come out as (batch, K, block_dim)."""
        embedder = make_embedder()
        blocks = embedder(cxr_values(), torch.ones(3, 4, dtype=torch.bool))
        assert blocks.shape == (3, 4, 8)
        assert embedder.num_attributes == 4

    def test_nulled_block_is_zeros(self):
        """Without a learned null, a nulled block is exactly zero and the kept blocks are not."""
        embedder = make_embedder()
        keep = torch.tensor([[True, False, True, False], [False, True, False, True], [False] * 4])
        blocks = embedder(cxr_values(), keep)
        assert torch.equal(blocks[~keep], torch.zeros(int((~keep).sum()), 8))
        assert (blocks[keep].abs().sum(dim=1) > 0).all()

    def test_nulled_block_is_the_learned_token(self):
        """With learned_null, a nulled block of attribute k equals attribute k's null token."""
        embedder = make_embedder(learned_null=True)
        with torch.no_grad():
            embedder.null_tokens.normal_()
        keep = torch.tensor([[True, False, True, False], [False, True, False, True], [False] * 4])
        blocks = embedder(cxr_values(), keep)
        for i, k in (~keep).nonzero().tolist():
            assert torch.equal(blocks[i, k], embedder.null_tokens[k])

    def test_learned_null_token_is_trained(self):
        """The learned null token requires grad and moves under one optimiser step when used."""
        embedder = make_embedder(learned_null=True)
        assert embedder.null_tokens.requires_grad
        before = embedder.null_tokens.detach().clone()
        optimiser = torch.optim.SGD(embedder.parameters(), lr=0.1)
        keep = torch.zeros(3, 4, dtype=torch.bool)
        target = torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(1))
        (embedder(cxr_values(), keep) - target).square().mean().backward()
        optimiser.step()
        assert (embedder.null_tokens.detach() - before).abs().min() > 0

    def test_zero_null_is_not_trained(self):
        """Without learned_null the null token is frozen at zero through an optimiser step."""
        embedder = make_embedder()
        assert not embedder.null_tokens.requires_grad
        optimiser = torch.optim.SGD(embedder.parameters(), lr=0.1)
        keep = torch.zeros(3, 4, dtype=torch.bool)
        keep[0] = True  # something to train, so the step happens
        (embedder(cxr_values(), keep) - 1.0).square().mean().backward()
        optimiser.step()
        assert torch.equal(embedder.null_tokens.detach(), torch.zeros(4, 8))

    @pytest.mark.parametrize("learned_null", [False, True])
    @pytest.mark.parametrize(("k", "other"), [(AGE, 18.0), (AGE, 90.0), (SEX, 0.0), (RACE, 0.0), (DISEASE, 0.0)])
    def test_nulled_attribute_value_has_no_effect(self, learned_null, k, other):
        """Changing the value of a nulled attribute leaves every block bit-identical."""
        embedder = make_embedder(learned_null)
        with torch.no_grad():
            embedder.null_tokens.normal_()
        values = cxr_values()
        keep = torch.ones(3, 4, dtype=torch.bool)
        keep[:, k] = False
        changed = values.clone()
        changed[:, k] = other
        assert torch.equal(embedder(values, keep), embedder(changed, keep))

    @pytest.mark.parametrize(("k", "other"), [(AGE, 20.0), (SEX, 0.0), (RACE, 0.0), (DISEASE, 0.0)])
    def test_kept_attribute_changes_only_its_own_block(self, k, other):
        """Changing a kept attribute changes its own block and no other block."""
        embedder = make_embedder()
        values = cxr_values()[1:2]  # age 63.5, F, Black, Pleural Effusion: every `other` is a change
        keep = torch.ones(1, 4, dtype=torch.bool)
        changed = values.clone()
        changed[0, k] = other
        before, after = embedder(values, keep), embedder(changed, keep)
        assert not torch.allclose(before[0, k], after[0, k])
        others = [j for j in range(4) if j != k]
        assert torch.equal(before[0, others], after[0, others])

    def test_continuous_value_is_scaled_to_unit_range(self):
        """The MLP of a continuous attribute sees its value mapped from [low, high] to [-1, 1]."""
        embedder = make_embedder()
        seen = []
        hook = embedder.mlps[AGE][0].register_forward_hook(lambda module, args, out: seen.append(args[0]))
        try:
            values = torch.tensor([[18.0, 0, 0, 0], [56.5, 0, 0, 0], [95.0, 0, 0, 0], [37.25, 0, 0, 0]])
            embedder(values, torch.ones(4, 4, dtype=torch.bool))
        finally:
            hook.remove()
        assert len(seen) == 1
        assert torch.allclose(seen[0], torch.tensor([[-1.0], [0.0], [1.0], [-0.5]]), atol=1e-6)

    def test_categorical_value_is_one_hot(self):
        """The MLP of a categorical attribute sees the one-hot code of its index."""
        embedder = make_embedder()
        seen = []
        hook = embedder.mlps[RACE][0].register_forward_hook(lambda module, args, out: seen.append(args[0]))
        try:
            embedder(cxr_values(), torch.ones(3, 4, dtype=torch.bool))
        finally:
            hook.remove()
        assert torch.equal(seen[0], torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]]))

    @pytest.mark.parametrize(
        ("values_shape", "keep_shape"),
        [((3,), (3,)), ((3, 3), (3, 3)), ((3, 5), (3, 5)), ((3, 4), (3, 3)), ((3, 4), (2, 4)), ((3, 4, 1), (3, 4, 1))],
    )
    def test_wrong_shapes_raise_naming_expected_shape(self, values_shape, keep_shape):
        """Values or keep of the wrong shape fail with a ValueError naming (batch, K)."""
        embedder = make_embedder()
        with pytest.raises(ValueError, match=re.escape("(batch, 4)")):
            embedder(torch.zeros(values_shape), torch.ones(keep_shape, dtype=torch.bool))


class TestConditionDropout:
    def test_whole_drops_entire_rows(self):
        """whole=p alone drops all attributes of a row with probability p and never part of a row."""
        keep = ConditionDropout(whole=0.3).keep_mask(CXR_SCHEMA, N, torch.Generator().manual_seed(0))
        assert keep.shape == (N, 4) and keep.dtype == torch.bool
        all_dropped, all_kept = (~keep).all(dim=1), keep.all(dim=1)
        assert (all_dropped | all_kept).all()
        assert within(all_dropped.float().mean().item(), 0.3)

    def test_no_dropout_keeps_everything(self):
        """All probabilities zero keep every attribute of every row."""
        keep = ConditionDropout(whole=0.0).keep_mask(CXR_SCHEMA, 100, torch.Generator().manual_seed(0))
        assert keep.all()

    def test_whole_one_drops_everything(self):
        """whole=1 drops every attribute of every row."""
        keep = ConditionDropout(whole=1.0).keep_mask(CXR_SCHEMA, 100, torch.Generator().manual_seed(0))
        assert not keep.any()

    def test_per_attribute_drops_columns_independently(self):
        """per_attribute=p drops each column with probability p, pairs of columns with p^2."""
        p = 0.3
        dropped = ~ConditionDropout(whole=0.0, per_attribute=p).keep_mask(
            CXR_SCHEMA, N, torch.Generator().manual_seed(1)
        )
        for k in range(4):
            assert within(dropped[:, k].float().mean().item(), p)
        for j in range(4):
            for k in range(j + 1, 4):
                assert within((dropped[:, j] & dropped[:, k]).float().mean().item(), p * p)
        assert 0 < (dropped.any(dim=1) & ~dropped.all(dim=1)).float().mean().item()  # partial rows exist

    def test_per_group_drops_groups_together(self):
        """per_group=p drops the columns of a group together, each group with probability p independently."""
        p = 0.3
        dropped = ~ConditionDropout(whole=0.0, per_group=p, groups=GROUPS).keep_mask(
            CXR_SCHEMA, N, torch.Generator().manual_seed(2)
        )
        assert torch.equal(dropped[:, AGE], dropped[:, DISEASE])
        for k in (AGE, SEX, RACE):
            assert within(dropped[:, k].float().mean().item(), p)
        for j, k in ((AGE, SEX), (AGE, RACE), (SEX, RACE)):
            assert within((dropped[:, j] & dropped[:, k]).float().mean().item(), p * p)

    def test_per_group_leaves_ungrouped_attributes(self):
        """Attributes in no group are never dropped by per_group."""
        dropped = ~ConditionDropout(whole=0.0, per_group=0.5, groups=[["sex"]]).keep_mask(
            CXR_SCHEMA, 1000, torch.Generator().manual_seed(3)
        )
        assert dropped[:, SEX].any()
        assert not dropped[:, [AGE, RACE, DISEASE]].any()

    def test_combined_policies_multiply(self):
        """Keep probability of an attribute is (1 - whole)(1 - per_attribute)(1 - per_group)."""
        whole, per_attribute, per_group = 0.1, 0.2, 0.3
        dropout = ConditionDropout(whole=whole, per_attribute=per_attribute, per_group=per_group, groups=GROUPS)
        keep = dropout.keep_mask(CXR_SCHEMA, N, torch.Generator().manual_seed(4))
        p_keep = (1 - whole) * (1 - per_attribute) * (1 - per_group)
        for k in range(4):
            assert within(keep[:, k].float().mean().item(), p_keep)
        # age and disease share the group and the row draw, and have independent per-attribute draws
        p_both = (1 - whole) * (1 - per_group) * (1 - per_attribute) ** 2
        assert within((keep[:, AGE] & keep[:, DISEASE]).float().mean().item(), p_both)
        # a row loses everything by the row draw, or by each group being dropped (as a group or attribute-wise)
        q_pair = per_group + (1 - per_group) * per_attribute**2
        q_single = per_group + (1 - per_group) * per_attribute
        p_none = whole + (1 - whole) * q_pair * q_single**2
        assert within((~keep).all(dim=1).float().mean().item(), p_none)

    @pytest.mark.parametrize("name", ["whole", "per_attribute", "per_group"])
    @pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
    def test_invalid_probability_raises(self, name, value):
        """A probability outside [0, 1] fails with a SchemaError naming the field."""
        with pytest.raises(SchemaError, match=name):
            ConditionDropout(**{name: value}, groups=GROUPS)

    def test_per_group_without_groups_raises(self):
        """per_group > 0 without groups is a SchemaError."""
        with pytest.raises(SchemaError, match="groups"):
            ConditionDropout(per_group=0.2)

    def test_unknown_group_attribute_raises(self):
        """A group naming an attribute outside the schema fails with a SchemaError naming it."""
        dropout = ConditionDropout(per_group=0.2, groups=[["age", "bmi"]])
        with pytest.raises(SchemaError, match="bmi"):
            dropout.keep_mask(CXR_SCHEMA, 10, torch.Generator().manual_seed(0))

    def test_same_seed_same_mask(self):
        """The same generator seed gives the same mask; another seed a different one."""
        dropout = ConditionDropout(whole=0.1, per_attribute=0.2, per_group=0.3, groups=GROUPS)
        first = dropout.keep_mask(CXR_SCHEMA, 500, torch.Generator().manual_seed(7))
        second = dropout.keep_mask(CXR_SCHEMA, 500, torch.Generator().manual_seed(7))
        other = dropout.keep_mask(CXR_SCHEMA, 500, torch.Generator().manual_seed(8))
        assert torch.equal(first, second)
        assert not torch.equal(first, other)
