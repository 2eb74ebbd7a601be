"""Tests for medcf.core.sampling: timestep schedules, epsilon/v conversion and DDIM inversion/decoding.

The DDIM tests use the exact denoiser of Gaussian data: for x0 ~ N(0, s^2) per pixel and
x_t = sqrt(a) x0 + sqrt(1 - a) eps, the optimal noise prediction is E[eps | x_t] = sqrt(1 - a) x_t / (a s^2 + 1 - a).
"""

from __future__ import annotations

import pytest
import torch

from medcf.core.diffusion import DiffusionConfig
from medcf.core.sampling import DDIMSampler, split_prediction, timestep_schedule

S = 0.5  # data standard deviation (images live in [-1, 1])
SETTINGS = [(schedule, kind) for schedule in ("linear_beta", "cosine") for kind in ("epsilon", "v_prediction")]
# measured at 50 steps on the images below: linear_beta 0.0108, cosine 0.0072 (eps and v alike)
ERROR_BOUND_50 = {"linear_beta": 0.016, "cosine": 0.011}


def gaussian_denoiser(config: DiffusionConfig, s: float = S):
    """The exact epsilon (or v) prediction for N(0, s^2) data under ``config``'s schedule."""
    alphas_cumprod = config.alphas_cumprod().to(torch.float64)

    def predict(x: torch.Tensor, t: int) -> torch.Tensor:
        a = alphas_cumprod[t]
        x64 = x.to(torch.float64)
        eps = (1 - a).sqrt() * x64 / (a * s * s + 1 - a)
        if config.prediction_type == "epsilon":
            return eps.to(x.dtype)
        x0_hat = (x64 - (1 - a).sqrt() * eps) / a.sqrt()
        return (a.sqrt() * eps - (1 - a).sqrt() * x0_hat).to(x.dtype)

    return predict


def images(seed: int = 0, batch: int = 4, size: int = 32) -> torch.Tensor:
    return S * torch.randn(batch, 1, size, size, generator=torch.Generator().manual_seed(seed))


def round_trip_error(config: DiffusionConfig, steps: int, x0: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Mean absolute invert-then-decode error on the [0, 1] scale, and the inverted latent."""
    sampler = DDIMSampler(config.alphas_cumprod(), config.prediction_type, steps)
    predict = gaussian_denoiser(config)
    latent = sampler.invert(predict, x0)
    return ((sampler.decode(predict, latent) - x0).abs().mean() / 2).item(), latent


class TestTimestepSchedule:
    @pytest.mark.parametrize(("T", "steps"), [(1000, 50), (1000, 20), (1000, 7), (1000, 2), (10, 10), (1000, 1000)])
    def test_descending_from_t_minus_one_to_zero(self, T, steps):
        """``steps`` distinct integer timesteps, strictly descending from T-1 to 0."""
        schedule = timestep_schedule(T, steps)
        assert len(schedule) == steps
        assert schedule[0] == T - 1 and schedule[-1] == 0
        assert all(isinstance(t, int) for t in schedule)
        assert all(a > b for a, b in zip(schedule, schedule[1:], strict=False))

    def test_evenly_spaced(self):
        """Gaps between consecutive timesteps differ by at most one (rounding)."""
        gaps = [a - b for a, b in zip(timestep_schedule(1000, 50), timestep_schedule(1000, 50)[1:], strict=False)]
        assert max(gaps) - min(gaps) <= 1
        assert timestep_schedule(10, 4) == [9, 6, 3, 0]

    def test_all_steps_is_every_timestep(self):
        """steps = T walks every timestep."""
        assert timestep_schedule(100, 100) == list(range(99, -1, -1))

    @pytest.mark.parametrize(("T", "steps"), [(1000, 0), (1000, -5), (1000, 1001), (10, 11)])
    def test_bad_steps_raise(self, T, steps):
        """A number of steps outside [1, T] is a ValueError naming it."""
        with pytest.raises(ValueError, match=str(steps)):
            timestep_schedule(T, steps)

    def test_sampler_pairs_end_at_the_clean_image(self):
        """The sampler's (t, t_prev) pairs chain the schedule and end at t_prev = -1 (abar = 1)."""
        sampler = DDIMSampler(DiffusionConfig().alphas_cumprod(), "epsilon", steps=5)
        assert sampler.pairs == [(999, 749), (749, 500), (500, 250), (250, 0), (0, -1)]
        assert sampler.alpha_bar(-1).item() == 1.0


class TestSplitPrediction:
    @pytest.fixture
    def process(self):
        generator = torch.Generator().manual_seed(0)
        x0 = torch.randn(3, 1, 8, 8, generator=generator, dtype=torch.float64)
        eps = torch.randn(3, 1, 8, 8, generator=generator, dtype=torch.float64)
        alpha_bar = torch.tensor([0.999, 0.5, 0.01], dtype=torch.float64)[:, None, None, None]
        x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
        return x0, eps, alpha_bar, x_t

    def test_epsilon_prediction(self, process):
        """An epsilon prediction is returned as eps, with the x0 that reproduces x_t."""
        x0, eps, alpha_bar, x_t = process
        eps_out, x0_out = split_prediction(eps, x_t, alpha_bar, "epsilon")
        assert torch.equal(eps_out, eps)
        assert torch.allclose(x0_out, x0, atol=1e-10)
        assert torch.allclose(alpha_bar.sqrt() * x0_out + (1 - alpha_bar).sqrt() * eps_out, x_t, atol=1e-12)

    def test_v_prediction_round_trips(self, process):
        """v = sqrt(a) eps - sqrt(1 - a) x0 built from known eps and x0 gives them back."""
        x0, eps, alpha_bar, x_t = process
        v = alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0
        eps_out, x0_out = split_prediction(v, x_t, alpha_bar, "v_prediction")
        assert torch.allclose(eps_out, eps, atol=1e-12)
        assert torch.allclose(x0_out, x0, atol=1e-12)
        assert torch.allclose(alpha_bar.sqrt() * x0_out + (1 - alpha_bar).sqrt() * eps_out, x_t, atol=1e-12)

    def test_v_prediction_matches_diffusion_target(self, process):
        """The v target of DiffusionConfig is what split_prediction decodes as v."""
        x0, eps, alpha_bar, x_t = process
        v = DiffusionConfig(prediction_type="v_prediction").target(x0, eps, alpha_bar)
        eps_out, x0_out = split_prediction(v, x_t, alpha_bar, "v_prediction")
        assert torch.allclose(eps_out, eps, atol=1e-12) and torch.allclose(x0_out, x0, atol=1e-12)

    def test_epsilon_and_v_differ(self, process):
        """The same tensor read as epsilon or as v gives different noise: the type is not ignored."""
        x0, eps, alpha_bar, x_t = process
        assert not torch.allclose(split_prediction(eps, x_t, alpha_bar, "v_prediction")[0], eps, atol=1e-3)


class TestGaussianDenoiserRoundTrip:
    @pytest.mark.parametrize(("schedule", "prediction_type"), SETTINGS)
    def test_invert_then_decode_reconstructs(self, schedule, prediction_type):
        """With the exact denoiser, 50-step inversion then decoding reconstructs the image to within ~1%."""
        config = DiffusionConfig(schedule=schedule, prediction_type=prediction_type)
        error, latent = round_trip_error(config, 50, images())
        assert error < ERROR_BOUND_50[schedule] < 0.03
        assert 0.9 < latent.std().item() < 1.1
        assert abs(latent.mean().item()) < 0.05

    @pytest.mark.parametrize(("schedule", "prediction_type"), SETTINGS)
    def test_error_decreases_with_steps(self, schedule, prediction_type):
        """More DDIM steps give a smaller inversion/reconstruction error."""
        config = DiffusionConfig(schedule=schedule, prediction_type=prediction_type)
        x0 = images(1, batch=2)
        errors = [round_trip_error(config, steps, x0)[0] for steps in (20, 50, 200)]
        assert errors[0] > errors[1] > errors[2]
        assert errors[2] < errors[0] / 4  # first-order method: 10x the steps, roughly a tenth of the error

    @pytest.mark.parametrize("schedule", ["linear_beta", "cosine"])
    def test_epsilon_and_v_models_invert_alike(self, schedule):
        """The exact model in epsilon and in v parametrisation gives the same latent and reconstruction."""
        x0 = images(2, batch=2)
        latents = []
        for prediction_type in ("epsilon", "v_prediction"):
            config = DiffusionConfig(schedule=schedule, prediction_type=prediction_type)
            latents.append(round_trip_error(config, 50, x0)[1])
        assert torch.allclose(latents[0], latents[1], atol=1e-4)

    @pytest.mark.parametrize(("schedule", "prediction_type"), SETTINGS)
    def test_decoded_noise_has_data_std(self, schedule, prediction_type):
        """Decoding pure noise with the exact denoiser gives samples with the data's std (within 15%)."""
        config = DiffusionConfig(schedule=schedule, prediction_type=prediction_type)
        sampler = DDIMSampler(config.alphas_cumprod(), prediction_type, 50)
        noise = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(3))
        samples = sampler.decode(gaussian_denoiser(config), noise)
        assert abs(samples.std().item() - S) < 0.15 * S
        assert abs(samples.mean().item()) < 0.05

    def test_constant_noise_prediction_inverts_exactly(self):
        """When the prediction does not depend on x, inversion and decoding are exact inverses."""
        config = DiffusionConfig()
        sampler = DDIMSampler(config.alphas_cumprod(), "epsilon", 20)
        generator = torch.Generator().manual_seed(4)
        fixed = torch.randn(2, 1, 16, 16, generator=generator, dtype=torch.float64)
        x0 = images(5, batch=2, size=16).to(torch.float64)
        latent = sampler.invert(lambda x, t: fixed, x0)
        assert torch.allclose(sampler.decode(lambda x, t: fixed, latent), x0, atol=1e-8)


class TestRefinedInversion:
    @pytest.mark.parametrize(("schedule", "prediction_type"), SETTINGS)
    def test_each_refinement_brings_the_round_trip_closer(self, schedule, prediction_type):
        """Fixed-point refinements of the inversion steps shrink the invert-then-decode error of an x-dependent
        model (measured at 20 steps: 0.029 -> 0.0059 -> 0.0012 -> 0.00005 at 0, 1, 2, 4 refinements, linear;
        0.018 -> 0.0036 -> 0.0013 -> 0.0008, cosine)."""
        config = DiffusionConfig(schedule=schedule, prediction_type=prediction_type)
        sampler = DDIMSampler(config.alphas_cumprod(), prediction_type, 20)
        predict, x0 = gaussian_denoiser(config), images(7)

        def error(refinements: int) -> float:
            return ((sampler.decode(predict, sampler.invert(predict, x0, refinements)) - x0).abs().mean() / 2).item()

        errors = [error(k) for k in (0, 1, 2, 4)]
        assert errors == sorted(errors, reverse=True)
        assert errors[1] < 0.25 * errors[0]
        assert errors[3] < 0.1 * errors[0]

    def test_negative_refinements_are_refused(self):
        config = DiffusionConfig()
        sampler = DDIMSampler(config.alphas_cumprod(), "epsilon", 3)
        with pytest.raises(ValueError, match="inversion refinements: -1 must be >= 0"):
            sampler.invert(lambda x, t: x, torch.zeros(1, 1, 4, 4), refinements=-1)


class TestDeterminism:
    def test_invert_and_decode_are_deterministic_and_pure(self):
        """invert and decode give identical results on repeat, keep the dtype and leave their inputs untouched."""
        config = DiffusionConfig()
        sampler = DDIMSampler(config.alphas_cumprod(), "epsilon", 10)
        predict = gaussian_denoiser(config)
        x0 = images(6, batch=2, size=16)
        x0_copy = x0.clone()
        latent = sampler.invert(predict, x0)
        assert torch.equal(sampler.invert(predict, x0), latent)
        assert torch.equal(x0, x0_copy)
        latent_copy = latent.clone()
        decoded = sampler.decode(predict, latent)
        assert torch.equal(sampler.decode(predict, latent), decoded)
        assert torch.equal(latent, latent_copy)
        assert latent.dtype == decoded.dtype == torch.float32
        assert not torch.equal(latent, x0)

    def test_predict_sees_the_schedule(self):
        """decode calls predict once per schedule step in descending order; invert in ascending order, once more per
        refinement."""
        config = DiffusionConfig()
        sampler = DDIMSampler(config.alphas_cumprod(), "epsilon", 5)
        seen: list[int] = []

        def predict(x: torch.Tensor, t: int) -> torch.Tensor:
            seen.append(t)
            return torch.zeros_like(x)

        sampler.decode(predict, torch.zeros(1, 1, 4, 4))
        assert seen == [999, 749, 500, 250, 0]
        seen.clear()
        sampler.invert(predict, torch.zeros(1, 1, 4, 4))
        assert seen == [0, 250, 500, 749, 999]
        seen.clear()  # each refinement is one more prediction at the step's own timestep
        sampler.invert(predict, torch.zeros(1, 1, 4, 4), refinements=2)
        assert seen == [t for t in (0, 250, 500, 749, 999) for _ in range(3)]


def test_clip_x0_keeps_samples_of_an_overconfident_model_in_the_image_range():
    """A model that predicts too little noise drives samples outside [-1, 1]; clipping the predicted clean
    image at each step keeps them inside, and is a no-op for a model whose predictions already fit."""
    config = DiffusionConfig()
    sampler = DDIMSampler(config.alphas_cumprod(), "epsilon", 20)
    noise = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(3))

    def overconfident(x: torch.Tensor, t: int) -> torch.Tensor:
        return 0.2 * x

    assert sampler.decode(overconfident, noise).abs().max() > 1.5
    assert sampler.decode(overconfident, noise, clip_x0=True).abs().max() <= 1.0 + 1e-6
    exact = gaussian_denoiser(config, s=0.05)
    torch.testing.assert_close(sampler.decode(exact, noise, clip_x0=True), sampler.decode(exact, noise))
