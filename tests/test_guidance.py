"""Guidance functions against the formula of dcfg-method.md, and the one-forward-per-step denoiser."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from medcf.core.denoiser import GuidedDenoiser
from medcf.core.guidance import cfg, dcfg, guidance_plan
from medcf.phantoms.cxr import CXR_SCHEMA

weights = st.floats(-5, 10, allow_nan=False)


def _eps(seed: int, shape=(2, 1, 4, 4)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class TestFormulas:
    @given(weights)
    def test_dcfg_with_one_group_is_cfg(self, w):
        """M = 1: eps_null + w (eps_1 - eps_null) is exactly CFG."""
        null, cond = _eps(0), _eps(1)
        assert torch.allclose(dcfg(null, [cond], [w]), cfg(null, cond, w))

    @given(weights, weights)
    def test_dcfg_two_groups_matches_the_formula(self, w_a, w_b):
        """eps_null + w_a (eps_a - eps_null) + w_b (eps_b - eps_null), term by term."""
        null, a, b = _eps(0), _eps(1), _eps(2)
        assert torch.allclose(dcfg(null, [a, b], [w_a, w_b]), null + w_a * (a - null) + w_b * (b - null))

    def test_zero_weights_give_the_unconditional_prediction(self):
        """All weights 0: the null prediction; CFG with w = 1: the conditional one."""
        null, a, b = _eps(0), _eps(1), _eps(2)
        assert torch.equal(dcfg(null, [a, b], [0.0, 0.0]), null)
        assert torch.allclose(cfg(null, a, 1.0), a)

    def test_mismatched_weights_raise(self):
        """One weight per group is required."""
        with pytest.raises(ValueError, match="one weight per group"):
            dcfg(_eps(0), [_eps(1)], [1.0, 2.0])

    def test_inputs_are_not_modified(self):
        """The combination is pure."""
        null, a = _eps(0), _eps(1)
        copy = null.clone()
        dcfg(null, [a], [3.0])
        assert torch.equal(null, copy)


class TestPlans:
    def test_modes_build_the_expected_keep_masks(self):
        """null row first; cfg keeps all; dcfg splits affected/invariant; per-attribute keeps one each."""
        none = guidance_plan(CXR_SCHEMA, "none")
        assert none.evaluations == 1 and none.keep.all() and none.weights == ()
        plain = guidance_plan(CXR_SCHEMA, "cfg", weight=3.0)
        assert plain.keep.tolist() == [[False] * 4, [True] * 4] and plain.weights == (3.0,)
        split = guidance_plan(CXR_SCHEMA, "dcfg", affected={"age", "disease"}, w_aff=2.5, w_inv=1.0)
        assert split.keep.tolist() == [[False] * 4, [True, False, False, True], [False, True, True, False]]
        assert split.weights == (2.5, 1.0) and split.evaluations == 3
        each = guidance_plan(
            CXR_SCHEMA, "dcfg_per_attribute", affected={"sex"}, w_aff=3.0, w_inv=1.0, per_attribute={"race": 0.5}
        )
        assert each.evaluations == 5 and each.weights == (1.0, 3.0, 0.5, 1.0)
        assert each.keep[1:].sum(dim=1).tolist() == [1, 1, 1, 1]

    def test_dcfg_without_affected_attributes_has_one_group(self):
        """The null intervention leaves one (invariant) group."""
        plan = guidance_plan(CXR_SCHEMA, "dcfg", affected=(), w_aff=3.0, w_inv=1.0)
        assert plan.weights == (1.0,) and plan.keep[1].all()

    def test_bad_mode_and_attributes_raise(self):
        """Unknown modes and attribute names are named in the error."""
        with pytest.raises(ValueError, match="guidance mode 'apg' is not one of"):
            guidance_plan(CXR_SCHEMA, "apg")
        with pytest.raises(ValueError, match="colour"):
            guidance_plan(CXR_SCHEMA, "dcfg", affected={"colour"})


class RecordingModel(torch.nn.Module):
    """A fake denoiser whose output encodes which attributes each row kept: eps = x * (1 + sum(keep * code))."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def forward(self, x, timesteps, attributes, keep):
        self.batches.append(x.shape[0])
        factor = 1 + (keep.to(x.dtype) * (attributes + 1)).sum(dim=1)
        return x * factor.view(-1, *([1] * (x.ndim - 1)))


def test_guided_denoiser_is_one_forward_and_equals_separate_evaluations():
    """All M + 1 terms of a DCFG step come from one batched call and combine as separate calls would."""
    model = RecordingModel()
    attributes = torch.tensor([[50.0, 1, 2, 0], [70.0, 0, 0, 1]])
    plan = guidance_plan(CXR_SCHEMA, "dcfg", affected={"age", "disease"}, w_aff=3.0, w_inv=1.0)
    x = torch.randn(2, 1, 4, 4)
    guided = GuidedDenoiser(model, attributes, plan)(x, 500)
    assert model.batches == [6]
    separate = [model(x, None, attributes, row.expand(2, -1)) for row in plan.keep]
    assert torch.allclose(guided, dcfg(separate[0], separate[1:], [3.0, 1.0]))


def test_chunked_evaluation_equals_one_forward():
    """Evaluating the batch in chunks of images (the CPU setting) gives the same guided prediction; every
    image's three guidance terms stay in one call."""
    attributes = torch.tensor([[50.0, 1, 2, 0], [70.0, 0, 0, 1], [30.0, 1, 1, 0]])
    plan = guidance_plan(CXR_SCHEMA, "dcfg", affected={"sex"}, w_aff=2.0)
    x = torch.randn(3, 1, 4, 4)
    whole, chunked = RecordingModel(), RecordingModel()
    expected = GuidedDenoiser(whole, attributes, plan)(x, 10)
    result = GuidedDenoiser(chunked, attributes, plan, max_rows=5)(x, 10)
    assert whole.batches == [9] and chunked.batches == [3, 3, 3]
    assert torch.allclose(result, expected)
