"""Guidance beyond the paper: factored CFG++, factored APG, nested groups and the guidance interval.

Expected values are worked out by hand (in the comments) on two-pixel "images", not by the functions under test.
"""

import math

import pytest
import torch

from medcf.core.denoiser import GuidedDenoiser
from medcf.core.diffusion import DiffusionConfig
from medcf.core.guidance import (
    APGParameters,
    GuidancePlan,
    cfg_plus_plus,
    dcfg,
    factored_apg,
    guidance_plan,
    in_interval,
    limit_norm,
    nested,
    project,
)
from medcf.core.sampling import (
    DDIMSampler,
    GuidedPrediction,
    ddim_step,
    noise_level,
    prediction_from_x0,
    split_prediction,
)
from medcf.phantoms.cxr import CXR_SCHEMA

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def t64(*rows) -> torch.Tensor:
    """A float64 batch, one row of pixels per image."""
    return torch.tensor(rows, dtype=torch.float64)


def _random(seed: int, shape=(3, 1, 4, 4)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class LinearModel(torch.nn.Module):
    """A fake network, elementwise in x (no batch effects), whose output depends on the kept attributes:
    out = x * (0.1 + 0.05 sum(keep * (code + 1))) + 0.02 sum(keep * code)."""

    def __init__(self):
        super().__init__()
        self.rows = []  # rows (= batch size) of each forward call
        self.kept = []  # keep-masks of each forward call

    def forward(self, x, timesteps, attributes, keep):
        self.rows.append(x.shape[0])
        self.kept.append(keep.clone())
        kept = keep.to(x.dtype)
        scale = 0.1 + 0.05 * (kept * (attributes + 1)).sum(dim=1)
        shift = 0.02 * (kept * attributes).sum(dim=1)
        shape = (-1, *([1] * (x.ndim - 1)))
        return x * scale.view(shape) + shift.view(shape)


CODES = torch.tensor([[0.5, 1, 2, 0], [0.9, 0, 0, 1], [0.2, 1, 1, 0]])


class TestCfgPlusPlus:
    def test_combination_and_renoise_by_hand(self):
        """eps_hat = eps_null + sum l_m (eps_m - eps_null), re-noised with eps_null:
        (1, 2) + 0.5 (2, -2) + 0.25 (0, 2) = (2, 1.5)."""
        null, a, b = t64([1.0, 2.0]), t64([3.0, 0.0]), t64([1.0, 4.0])
        guided = cfg_plus_plus(null, [a, b], [0.5, 0.25])
        assert torch.equal(guided.prediction, t64([2.0, 1.5]))
        assert torch.equal(guided.renoise, null)

    @pytest.mark.parametrize("weight", [-0.1, 1.5])
    def test_weights_outside_the_unit_interval_raise(self, weight):
        """CFG++ weights lie in [0, 1]."""
        with pytest.raises(ValueError, match=r"cfg\+\+ weights must lie in \[0, 1\]"):
            cfg_plus_plus(t64([0.0]), [t64([1.0])], [weight])

    def test_ddim_step_renoises_with_the_given_noise(self):
        """abar 0.64 -> 0.36, x = 1, eps = 0.5: x0 = (1 - 0.6 * 0.5) / 0.8 = 0.875; re-noised with -1:
        0.6 * 0.875 + 0.8 * (-1) = -0.275; with eps itself: 0.525 + 0.4 = 0.925."""
        x, eps = t64([1.0]), t64([0.5])
        a_s, a_t = torch.tensor(0.64, dtype=torch.float64), torch.tensor(0.36, dtype=torch.float64)
        assert torch.allclose(ddim_step(x, eps, a_s, a_t, renoise=t64([-1.0])), t64([-0.275]), atol=1e-15)
        assert torch.allclose(ddim_step(x, eps, a_s, a_t), t64([0.925]), atol=1e-15)

    def test_sampler_decodes_a_guided_prediction_by_hand(self):
        """abar (0.64, 0.36), pairs (1, 0), (0, -1); constant prediction 0.5, re-noise -1, from x = 1:
        step 1: x0 = (1 - 0.8 * 0.5) / 0.6 = 1, x = 0.8 * 1 + 0.6 * (-1) = 0.2;
        step 2: x0 = (0.2 - 0.6 * 0.5) / 0.8 = -0.125 (abar_prev = 1). Plain DDIM: 1.1, then (1.1 - 0.3) / 0.8 = 1."""
        sampler = DDIMSampler(torch.tensor([0.64, 0.36]), "epsilon", steps=2)
        assert sampler.pairs == [(1, 0), (0, -1)]
        x = t64([1.0])
        guided = sampler.decode(lambda x, t: GuidedPrediction(t64([0.5]), t64([-1.0])), x)
        plain = sampler.decode(lambda x, t: t64([0.5]), x)
        assert torch.allclose(guided, t64([-0.125]), atol=1e-6)
        assert torch.allclose(plain, t64([1.0]), atol=1e-6)

    def test_invert_is_the_inverse_of_decode_for_constant_predictions(self):
        """Inversion swaps the roles (x0 from the re-noising prediction, re-noised with the guided one): with
        predictions that do not depend on x, decoding retraces it exactly."""
        config = DiffusionConfig()
        sampler = DDIMSampler(config.alphas_cumprod(), "epsilon", 10)
        guided, renoise = _random(1, (2, 1, 4, 4)), _random(2, (2, 1, 4, 4))
        x0 = _random(3, (2, 1, 4, 4)).clamp(-1, 1)
        predict = lambda x, t: GuidedPrediction(guided, renoise)  # noqa: E731
        assert torch.allclose(sampler.decode(predict, sampler.invert(predict, x0)), x0, atol=1e-8)

    @pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
    def test_zero_weights_decode_like_unconditional_ddim(self, prediction_type):
        """All l_m = 0: the clean image and the re-noising both come from the null prediction: unconditional DDIM,
        bit for bit."""
        config = DiffusionConfig(prediction_type=prediction_type)
        sampler = DDIMSampler(config.alphas_cumprod(), prediction_type, 8)
        plan = guidance_plan(CXR_SCHEMA, "dcfg", affected={"sex"}, w_aff=0.0, w_inv=0.0, rule="cfg++")
        null = GuidancePlan(torch.zeros(1, 4, dtype=torch.bool), (), ((),))  # one row, every attribute nulled
        x_T = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
        guided = sampler.decode(GuidedDenoiser(LinearModel(), CODES, plan), x_T)
        unconditional = sampler.decode(GuidedDenoiser(LinearModel(), CODES, null), x_T)
        assert torch.equal(guided, unconditional)


class TestAPG:
    def test_project_by_hand(self):
        """v = (3, 4) on d = (1, 1): <v, d> / <d, d> = 7 / 2, parallel (3.5, 3.5), orthogonal (-0.5, 0.5); on
        d = (1, 0): (3, 0) and (0, 4); a zero direction leaves all of v orthogonal. Per image."""
        parallel, orthogonal = project(t64([3.0, 4.0], [3.0, 4.0], [3.0, 4.0]), t64([1.0, 1.0], [2.0, 0.0], [0, 0]))
        assert torch.allclose(parallel, t64([3.5, 3.5], [3.0, 0.0], [0.0, 0.0]), atol=1e-15)
        assert torch.allclose(orthogonal, t64([-0.5, 0.5], [0.0, 4.0], [3.0, 4.0]), atol=1e-15)

    def test_limit_norm_by_hand(self):
        """Per image: (3, 4) has norm 5, at most 2.5 -> (1.5, 2); (0.6, 0.8) (norm 1) and zero stay; inf: no limit."""
        v = t64([3.0, 4.0], [0.6, 0.8], [0.0, 0.0])
        assert torch.allclose(limit_norm(v, 2.5), t64([1.5, 2.0], [0.6, 0.8], [0.0, 0.0]), atol=1e-15)
        assert torch.equal(limit_norm(v, math.inf), v)

    def test_one_group_without_momentum_by_hand(self):
        """D_null = (1, 0), D_1 = (1, 2), w = 3: Delta = (0, 2); on D_1: <Delta, D_1> / <D_1, D_1> = 4 / 5,
        parallel (0.8, 1.6), orthogonal (-0.8, 0.4).
        eta 0: D_1 + 2 (-0.8, 0.4) = (-0.6, 2.8); eta 0.5: D_1 + 2 (-0.4, 1.2) = (0.2, 4.4);
        eta 1, r = 1: ||Delta|| = 2, limited (0, 1): D_1 + 2 (0, 1) = (1, 4)."""
        null, cond = t64([1.0, 0.0]), t64([1.0, 2.0])
        cases = [(0.0, math.inf, [-0.6, 2.8]), (0.5, math.inf, [0.2, 4.4]), (1.0, 1.0, [1.0, 4.0])]
        for eta, limit, expected in cases:
            guided, (average,) = factored_apg(null, [cond], [3.0], None, eta=eta, momentum=-0.5, norm_limit=limit)
            assert torch.allclose(guided, t64(expected), atol=1e-12), (eta, limit)
            assert torch.equal(average, t64([0.0, 2.0]))  # the running average is kept unlimited

    def test_momentum_over_two_steps_by_hand(self):
        """beta = -0.5, w = 3. Step 1 as above: A = (0, 2). Step 2: D_null = (1, 0), D_1 = (2, 1), Delta = (1, 1),
        A = (1, 1) - 0.5 (0, 2) = (1, 0).
        eta 1, r = inf: D_1 + 2 (1, 0) = (4, 1).
        eta 0, r = 0.5: limited (0.5, 0); on D_1: 1 / 5 -> parallel (0.4, 0.2), orthogonal (0.1, -0.2);
        D_1 + 2 (0.1, -0.2) = (2.2, 0.6)."""
        _, first = factored_apg(t64([1.0, 0.0]), [t64([1.0, 2.0])], [3.0], None, eta=1.0, momentum=-0.5)
        null, cond = t64([1.0, 0.0]), t64([2.0, 1.0])
        guided, (average,) = factored_apg(null, [cond], [3.0], first, eta=1.0, momentum=-0.5)
        assert torch.allclose(guided, t64([4.0, 1.0]), atol=1e-12)
        assert torch.equal(average, t64([1.0, 0.0]))
        guided, _ = factored_apg(null, [cond], [3.0], first, eta=0.0, momentum=-0.5, norm_limit=0.5)
        assert torch.allclose(guided, t64([2.2, 0.6]), atol=1e-12)

    def test_two_groups_by_hand(self):
        """D_null = (1, 0); group a: D_a = (1, 2), w 3 (term (0, 2) + 2 (-0.8, 0.4) = (-1.6, 2.8)); group b:
        D_b = (2, 0), w 1 (term Delta_b = (1, 0), its projection weighted by w - 1 = 0): D = (0.4, 2.8)."""
        guided, averages = factored_apg(t64([1.0, 0.0]), [t64([1.0, 2.0]), t64([2.0, 0.0])], [3.0, 1.0], None)
        assert torch.allclose(guided, t64([0.4, 2.8]), atol=1e-12)
        assert [a.tolist() for a in averages] == [[[0.0, 2.0]], [[1.0, 0.0]]]

    def test_reduces_to_dcfg_with_eta_one_no_momentum_no_limit(self):
        """eta = 1, beta = 0, r = inf: D_null + sum_m w_m (D_m - D_null), whatever the previous averages."""
        null, a, b = _random(0), _random(1), _random(2)
        previous = [_random(3), _random(4)]
        guided, _ = factored_apg(null, [a, b], [2.5, 0.7], previous, eta=1.0, momentum=0.0, norm_limit=math.inf)
        assert torch.allclose(guided, null + 2.5 * (a - null) + 0.7 * (b - null), atol=1e-12)

    def test_inputs_are_not_modified(self):
        """The combination is pure: inputs and previous averages are left as they were."""
        null, a, previous = _random(0), _random(1), _random(2)
        copies = [null.clone(), a.clone(), previous.clone()]
        factored_apg(null, [a], [4.0], [previous], eta=0.0, momentum=-0.75, norm_limit=1.0)
        assert all(torch.equal(x, c) for x, c in zip([null, a, previous], copies, strict=True))

    def test_mismatched_lengths_raise(self):
        """One weight and one running average per group."""
        with pytest.raises(ValueError, match="one weight per group"):
            factored_apg(_random(0), [_random(1)], [1.0, 2.0])
        with pytest.raises(ValueError, match="one running average per group"):
            factored_apg(_random(0), [_random(1)], [1.0], [_random(2), _random(3)])

    @pytest.mark.parametrize(
        ("values", "match"),
        [(dict(eta=1.5), "eta"), (dict(momentum=-1.0), "momentum"), (dict(norm_limit=0.0), "norm limit")],
    )
    def test_bad_parameters_raise(self, values, match):
        """eta in [0, 1], momentum in (-1, 1), norm limit > 0."""
        with pytest.raises(ValueError, match=match):
            APGParameters(**values)


def _sampler(prediction_type="epsilon", steps=5) -> DDIMSampler:
    config = DiffusionConfig(prediction_type=prediction_type)
    return DDIMSampler(config.alphas_cumprod(), prediction_type, steps)


def _denoiser(plan, sampler, model=None, max_rows=None) -> GuidedDenoiser:
    return GuidedDenoiser(
        model or LinearModel(),
        CODES,
        plan,
        max_rows,
        alphas_cumprod=sampler.alphas_cumprod,
        prediction_type=sampler.prediction_type,
    )


class TestAPGDenoiser:
    @pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
    def test_eta_one_no_momentum_no_limit_decodes_like_dcfg(self, prediction_type):
        """Combining in the clean-image space and converting back gives DCFG's decode (eps or v model)."""
        sampler = _sampler(prediction_type)
        common = dict(affected={"age", "disease"}, w_aff=2.5, w_inv=1.0)
        apg = guidance_plan(
            CXR_SCHEMA, "dcfg", **common, rule="apg", apg=APGParameters(eta=1.0, momentum=0.0, norm_limit=math.inf)
        )
        x_T = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
        linear = sampler.decode(_denoiser(guidance_plan(CXR_SCHEMA, "dcfg", **common), sampler), x_T)
        projected = sampler.decode(_denoiser(apg, sampler), x_T)
        assert torch.allclose(projected, linear, rtol=1e-5, atol=1e-5)

    def test_running_average_lives_in_the_denoiser(self):
        """The second step's guidance uses the first step's running average (checked against factored_apg on the
        clean-image estimates); chunking by images changes nothing; a fresh denoiser starts again."""
        sampler = _sampler()
        parameters = APGParameters(eta=0.0, momentum=-0.5, norm_limit=2.0)
        plan = guidance_plan(CXR_SCHEMA, "dcfg", affected={"sex"}, w_aff=3.0, rule="apg", apg=parameters)
        x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))
        model = LinearModel()
        separate = torch.stack([model(x, None, CODES, row.expand(3, -1)) for row in plan.keep]).double()
        averages = None
        denoiser, chunked = _denoiser(plan, sampler), _denoiser(plan, sampler, max_rows=3)
        for t in (999, 749):
            a = sampler.alpha_bar(t)
            _, d = split_prediction(separate, x.double(), a, "epsilon")
            expected, averages = factored_apg(d[0], list(d[1:]), plan.weights, averages, 0.0, -0.5, 2.0)
            expected = prediction_from_x0(expected, x.double(), a, "epsilon")
            assert torch.allclose(denoiser(x, t), expected, atol=1e-6)
            assert torch.allclose(chunked(x, t), expected, atol=1e-6)
        fresh = _denoiser(plan, sampler)(x, 749)
        assert not torch.allclose(fresh, expected, atol=1e-3)
        with pytest.raises(ValueError, match="one decode of one batch"):
            denoiser(x[:2], 500)

    def test_needs_the_noise_schedule(self):
        """APG works on clean-image estimates: the denoiser must know the schedule and parametrisation."""
        plan = guidance_plan(CXR_SCHEMA, "cfg", weight=2.0, rule="apg")
        with pytest.raises(ValueError, match="alphas_cumprod and prediction_type"):
            GuidedDenoiser(LinearModel(), CODES, plan)


class TestInterval:
    def test_membership_by_hand(self):
        """(low, high] = (0.5, 2]: 0.5 out, 0.6 in, 2 in, 2.1 out; None: every noise level."""
        assert [in_interval(s, (0.5, 2.0)) for s in (0.5, 0.6, 2.0, 2.1)] == [False, True, True, False]
        assert in_interval(1e6, None) and in_interval(0.0, (0.0, math.inf)) is False

    def test_noise_level_by_hand(self):
        """sigma = sqrt((1 - abar) / abar): abar 0.2 -> 2, 0.5 -> 1; the clean image (t = -1) has 0."""
        assert torch.allclose(noise_level(t64(0.2, 0.5)), t64(2.0, 1.0), atol=1e-15)
        assert _sampler().noise_level(-1) == 0.0

    def test_steps_outside_use_one_conditional_evaluation(self):
        """5 steps have sigma 157.4, 17.2, 3.44, 0.958, 0.01: with (0.5, 5] the middle two evaluate the three DCFG
        rows, the others one row with every attribute kept: 2 * 3 + 3 * 1 = 9 evaluations per image."""
        sampler = _sampler()
        plan = guidance_plan(CXR_SCHEMA, "dcfg", affected={"sex"}, w_aff=2.0, interval=(0.5, 5.0))
        model = LinearModel()
        denoiser = _denoiser(plan, sampler, model)
        sampler.decode(denoiser, torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(2)))
        assert model.rows == [3, 3, 9, 9, 3]
        assert denoiser.calls == 5 and denoiser.evaluations == 9
        assert model.kept[0].all() and model.kept[-1].all()
        assert torch.equal(model.kept[2], plan.keep.repeat_interleave(3, dim=0))

    @pytest.mark.parametrize("rule", ["linear", "cfg++", "apg", "nested"])
    def test_interval_covering_every_step_equals_no_interval(self, rule):
        """(0, inf) holds every sigma_t of the schedule: the decode is bit for bit the one without an interval."""
        sampler = _sampler(steps=8)
        common = dict(affected={"sex"}, w_aff=1.0 if rule == "cfg++" else 2.5, w_inv=0.5, rule=rule)
        x_T = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(3))
        everywhere = guidance_plan(CXR_SCHEMA, "dcfg", **common, interval=(0.0, math.inf))
        always = sampler.decode(_denoiser(guidance_plan(CXR_SCHEMA, "dcfg", **common), sampler), x_T)
        assert torch.equal(sampler.decode(_denoiser(everywhere, sampler), x_T), always)

    @pytest.mark.parametrize("rule", ["linear", "cfg++", "apg", "nested"])
    def test_interval_outside_every_step_equals_mode_none(self, rule):
        """A band above every sigma_t: conditional decoding, bit for bit, with one evaluation per step."""
        sampler = _sampler(steps=8)
        plan = guidance_plan(CXR_SCHEMA, "cfg", weight=1.0, rule=rule, interval=(1e6, 1e7))
        x_T = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(4))
        outside, none = _denoiser(plan, sampler, max_rows=4), _denoiser(guidance_plan(CXR_SCHEMA, "none"), sampler)
        assert torch.equal(sampler.decode(outside, x_T), sampler.decode(none, x_T))
        assert outside.evaluations == none.evaluations == 8

    @pytest.mark.parametrize("interval", [(2.0, 1.0), (-1.0, 1.0), (1.0, 1.0), (0.0, math.nan), (1.0,), "ab"])
    def test_bad_intervals_raise(self, interval):
        """0 <= low < high (high may be inf)."""
        with pytest.raises(ValueError, match="guidance interval"):
            guidance_plan(CXR_SCHEMA, "cfg", interval=interval)


class TestNested:
    def test_combination_by_hand(self):
        """Chain r0 = (0, 0), r1 = (1, 2), r2 = (4, 0), weights (1.5, 2): (0, 0) + 1.5 (1, 2) + 2 (3, -2) =
        (7.5, -1); from r1 with weights (1, 2): (1, 2) + 2 (3, -2) = (7, -2)."""
        r0, r1, r2 = t64([0.0, 0.0]), t64([1.0, 2.0]), t64([4.0, 0.0])
        assert torch.equal(nested([r0, r1, r2], [1.5, 2.0]), t64([7.5, -1.0]))
        assert torch.equal(nested([r1, r2], [1.0, 2.0], from_null=False), t64([7.0, -2.0]))
        with pytest.raises(ValueError, match="first weight of 1, not 1.5"):
            nested([r1, r2], [1.5, 2.0], from_null=False)
        with pytest.raises(ValueError, match="one prediction per group: 2 for 2 groups"):
            nested([r1, r2], [1.0, 2.0])

    def test_rows_chain_the_groups_unaffected_first_and_drop_the_null_row_at_w_inv_1(self):
        """do(sex=F) under DCFG: two rows (age+race+disease, then everything) where the linear rule needs three; a
        first weight other than 1 keeps the null row; CFG at w = 1 is the conditional row alone."""
        names = list(CXR_SCHEMA.names)  # age, sex, race, disease
        plan = guidance_plan(CXR_SCHEMA, "dcfg", affected={"sex"}, w_aff=2.0, w_inv=1.0, rule="nested")
        assert plan.keep.tolist() == [[True, False, True, True], [True, True, True, True]]
        assert plan.groups == (("age", "race", "disease"), ("sex",)) and plan.weights == (1.0, 2.0)
        assert plan.evaluations == 2 and guidance_plan(CXR_SCHEMA, "dcfg", affected={"sex"}).evaluations == 3
        assert plan.describe() == "age+race+disease w=1, sex w=2; rule nested"
        half = guidance_plan(CXR_SCHEMA, "dcfg", affected={"sex"}, w_aff=2.0, w_inv=0.5, rule="nested")
        assert half.keep.tolist() == [[False] * 4, [True, False, True, True], [True] * 4]
        calibrated = guidance_plan(
            CXR_SCHEMA, "calibrated", affected={"age", "disease"}, per_attribute={"age": 3.0, "disease": 2.0},
            rule="nested",
        )  # fmt: skip
        assert [[names[k] for k in range(4) if row[k]] for row in calibrated.keep.tolist()] == [
            ["sex", "race"],
            ["age", "sex", "race"],
            ["age", "sex", "race", "disease"],
        ]
        assert guidance_plan(CXR_SCHEMA, "cfg", weight=1.0, rule="nested").keep.tolist() == [[True] * 4]

    @pytest.mark.parametrize("w_inv", [1.0, 0.5])
    def test_additive_conditions_decode_like_linear_dcfg(self, w_inv):
        """LinearModel's output is additive in the kept attributes, so the chained sum equals the DCFG sum: the
        decodes agree (to float rounding) with 2 rows per step at w_inv = 1 against 3."""
        sampler = _sampler(steps=6)
        common = dict(affected={"age", "disease"}, w_aff=2.5, w_inv=w_inv)
        x_T = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(6))
        linear = _denoiser(guidance_plan(CXR_SCHEMA, "dcfg", **common), sampler)
        chained = _denoiser(guidance_plan(CXR_SCHEMA, "dcfg", **common, rule="nested"), sampler)
        assert torch.allclose(sampler.decode(chained, x_T), sampler.decode(linear, x_T), rtol=1e-6, atol=1e-6)
        assert (linear.evaluations, chained.evaluations) == (18, 12 if w_inv == 1.0 else 18)


class TestPlans:
    def test_describe_names_the_rule_and_the_interval(self):
        """Defaults read as before; the variants say what they are (this text goes into the DICOM description)."""
        common = dict(affected={"sex"}, w_aff=1.0, w_inv=0.5)
        assert guidance_plan(CXR_SCHEMA, "dcfg", **common).describe() == "sex w=1, age+race+disease w=0.5"
        assert guidance_plan(CXR_SCHEMA, "dcfg", **common, rule="cfg++").describe().endswith("; rule cfg++")
        apg = guidance_plan(CXR_SCHEMA, "cfg", weight=3.0, rule="apg", interval=(0.3, 5.0))
        assert apg.describe() == (
            "age+sex+race+disease w=3; rule apg (eta=0, beta=-0.5, r=inf); guided at sigma in (0.3, 5]"
        )
        assert guidance_plan(CXR_SCHEMA, "none", rule="apg").describe() == "no guidance"

    def test_bad_rule_and_cfgpp_weights_raise(self):
        """Unknown rules are named; cfg++ refuses weights above 1."""
        with pytest.raises(ValueError, match="guidance rule 'cfgpp' is not one of linear, cfg\\+\\+, apg, nested"):
            guidance_plan(CXR_SCHEMA, "cfg", rule="cfgpp")
        with pytest.raises(ValueError, match=r"rule cfg\+\+ needs guidance weights in \[0, 1\]: got 2, 1"):
            guidance_plan(CXR_SCHEMA, "dcfg", affected={"sex"}, w_aff=2.0, w_inv=1.0, rule="cfg++")


def test_linear_rule_still_matches_dcfg():
    """The default rule is the DCFG sum of the model's predictions."""
    plan = guidance_plan(CXR_SCHEMA, "dcfg", affected={"sex"}, w_aff=2.0)
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    model = LinearModel()
    separate = [model(x, None, CODES, row.expand(3, -1)) for row in plan.keep]
    assert torch.allclose(GuidedDenoiser(model, CODES, plan)(x, 10), dcfg(separate[0], separate[1:], [2.0, 1.0]))
