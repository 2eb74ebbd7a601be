"""Deterministic DDIM decoding and inversion on explicit timestep pairs.

Both directions walk the same pairs (t, t_prev) of a descending schedule T-1 ... 0, ending at "t = -1"
(abar = 1, the clean image), so inversion followed by decoding is as exact as the model allows. The
network is reached only through ``predict(x, t)``, so guidance (CFG, DCFG, CFG++, APG) plugs in there: it returns
the network's prediction (epsilon or v), or a :class:`GuidedPrediction` when the step re-noises with another
prediction than the one that gives the clean image (CFG++).

Notation (Song et al. 2021, DDIM, eq. 12 with sigma = 0): abar_t = alphas_cumprod[t];
x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t);  x_{t_prev} = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps.
Inversion uses eps(x_{t_prev}, t) in place of eps(x_t, t), the usual DDIM inversion approximation; each
``refinement`` re-solves the step with eps(x_t, t) of the latest x_t, a fixed-point iteration of the implicit
inversion step (Pan et al. 2023, AIDI; Garibi et al. 2024, ReNoise) that makes decoding retrace the inversion: one
refinement takes the 50-step round trip of the shipped models from about 0.045 to 0.006 mean absolute error.
The noise level of timestep t is sigma_t = sqrt((1 - abar_t) / abar_t) (x_t / sqrt(abar_t) = x0 + sigma_t eps, the
variance-exploding view of Karras et al. 2022), the unit of guidance intervals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GuidedPrediction:
    """A step's two predictions, both in the network's parametrisation (epsilon or v).

    Attributes:
        prediction: gives the clean-image estimate x0 of the step (the guided prediction).
        renoise: gives the noise the step moves to t_prev with; None: ``prediction`` (plain DDIM). CFG++ re-noises
            with the unconditional prediction.
    """

    prediction: torch.Tensor
    renoise: torch.Tensor | None = None


Predict = Callable[[torch.Tensor, int], torch.Tensor | GuidedPrediction]


def timestep_schedule(num_train_timesteps: int, steps: int) -> list[int]:
    """``steps`` descending timesteps from T-1 to 0, evenly spaced.

    Args:
        num_train_timesteps: T of the trained schedule.
        steps: how many timesteps, in [1, T].

    Returns:
        The timesteps, rounded to integers.

    Raises:
        ValueError: if ``steps`` is outside [1, T].
    """
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps: {steps} must lie in [1, {num_train_timesteps}]")
    return torch.linspace(num_train_timesteps - 1, 0, steps).round().long().tolist()


def noise_level(alpha_bar: torch.Tensor) -> torch.Tensor:
    """sigma = sqrt((1 - abar) / abar): the noise standard deviation of x_t / sqrt(abar) = x0 + sigma eps.

    Args:
        alpha_bar: abar, one value or a tensor of them.

    Returns:
        sigma, shaped like ``alpha_bar``.
    """
    return ((1 - alpha_bar) / alpha_bar).sqrt()


def split_prediction(
    prediction: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(eps, x0) from the network output: an epsilon or a v prediction.

    Args:
        prediction: the network output at ``x_t``.
        x_t: the noisy images.
        alpha_bar: abar of the step.
        prediction_type: "epsilon"; anything else is read as "v_prediction".

    Returns:
        (eps, x0).
    """
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if prediction_type == "epsilon":
        return prediction, (x_t - s * prediction) / a
    return s * x_t + a * prediction, a * x_t - s * prediction


def prediction_from_x0(
    x0: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """The network output that :func:`split_prediction` reads as the clean image ``x0`` at ``x_t`` (abar < 1):
    eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar);  v = (sqrt(abar) x_t - x0) / sqrt(1 - abar).

    Args:
        x0: the clean-image estimate.
        x_t: the noisy images.
        alpha_bar: abar of the step, < 1.
        prediction_type: "epsilon"; anything else is read as "v_prediction".

    Returns:
        The network output in that parametrisation.
    """
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if prediction_type == "epsilon":
        return (x_t - a * x0) / s
    return (a * x_t - x0) / s


def ddim_step(
    x: torch.Tensor,
    eps: torch.Tensor,
    alpha_bar_source: torch.Tensor,
    alpha_bar_target: torch.Tensor,
    renoise: torch.Tensor | None = None,
    clip_x0: bool = False,
) -> torch.Tensor:
    """One deterministic DDIM move of x from noise level ``alpha_bar_source`` to ``alpha_bar_target``, in float64.

    x0 = (x - sqrt(1 - a_source) eps) / sqrt(a_source);  x_target = sqrt(a_target) x0 + sqrt(1 - a_target) n,
    with n = ``renoise`` (CFG++: the unconditional noise) or, if None, ``eps`` (DDIM eq. 12, sigma = 0).

    ``clip_x0`` clamps x0 to [-1, 1]; without ``renoise`` the noise n is then re-derived from the clamped x0
    (n = (x - sqrt(a_source) x0) / sqrt(1 - a_source)), with ``renoise`` it is used as given.
    The result has the dtype of ``x``.

    Args:
        x: the images at noise level ``alpha_bar_source``.
        eps: the noise that gives x0.
        alpha_bar_source: abar where ``x`` is.
        alpha_bar_target: abar to move to (1: the clean image).
        renoise: the noise to move with; None: ``eps``.
        clip_x0: clamp x0 to [-1, 1].

    Returns:
        x at ``alpha_bar_target``.
    """
    x64 = x.to(torch.float64)
    x0 = (x64 - (1 - alpha_bar_source).sqrt() * eps) / alpha_bar_source.sqrt()
    noise = eps if renoise is None else renoise
    if clip_x0:
        x0 = x0.clamp(-1, 1)
        if renoise is None:
            noise = (x64 - alpha_bar_source.sqrt() * x0) / (1 - alpha_bar_source).sqrt()
    return (alpha_bar_target.sqrt() * x0 + (1 - alpha_bar_target).sqrt() * noise).to(x.dtype)


class DDIMSampler:
    """DDIM (eta = 0) over ``steps`` evenly spaced timesteps of a trained schedule.

    Args:
        alphas_cumprod: abar_t of the trained schedule, t = 0..T-1 (kept as float64).
        prediction_type: the network's parametrisation, "epsilon" or "v_prediction".
        steps: how many timesteps to walk, in [1, T].

    Raises:
        ValueError: if ``steps`` is outside [1, T].
    """

    def __init__(self, alphas_cumprod: torch.Tensor, prediction_type: str, steps: int = 50) -> None:
        self.alphas_cumprod = alphas_cumprod.to(torch.float64)
        self.prediction_type = prediction_type
        self.timesteps = timestep_schedule(len(alphas_cumprod), steps)

    def truncated(self, depth: float) -> DDIMSampler:
        """The same sampler over only the least noisy ``depth`` fraction of its steps (partial inversion:
        the latent keeps more of the image, the counterfactual can change less).

        Args:
            depth: the fraction of the steps kept, in (0, 1]; at least one step is kept.

        Returns:
            A new sampler; this one is unchanged.

        Raises:
            ValueError: if ``depth`` is outside (0, 1].
        """
        if not 0.0 < depth <= 1.0:
            raise ValueError(f"inversion depth: {depth!r} must lie in (0, 1]")
        keep = max(1, round(depth * len(self.timesteps)))
        partial = DDIMSampler.__new__(DDIMSampler)
        partial.alphas_cumprod, partial.prediction_type = self.alphas_cumprod, self.prediction_type
        partial.timesteps = self.timesteps[-keep:]
        return partial

    def alpha_bar(self, t: int) -> torch.Tensor:
        """abar_t of timestep t (1 for t = -1, the clean image).

        Args:
            t: a timestep of the schedule, or -1.

        Returns:
            A float64 scalar tensor.
        """
        return self.alphas_cumprod[t] if t >= 0 else torch.tensor(1.0, dtype=torch.float64)

    def noise_level(self, t: int) -> float:
        """sigma_t = sqrt((1 - abar_t) / abar_t) of timestep t (0 for t = -1, the clean image).

        Args:
            t: a timestep of the schedule, or -1.

        Returns:
            sigma_t.
        """
        return float(noise_level(self.alpha_bar(t)))

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """(t, t_prev) pairs of the decoding direction; t_prev = -1 is the clean image."""
        return list(zip(self.timesteps, [*self.timesteps[1:], -1], strict=True))

    def _eps(self, predict: Predict, x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The step's noise and, for a :class:`GuidedPrediction` with ``renoise``, its re-noising noise."""
        output = predict(x, t)
        guided = output if isinstance(output, GuidedPrediction) else GuidedPrediction(output)
        x64, alpha_bar = x.to(torch.float64), self.alpha_bar(t)
        eps, _ = split_prediction(guided.prediction.to(torch.float64), x64, alpha_bar, self.prediction_type)
        if guided.renoise is None:
            return eps, None
        renoise, _ = split_prediction(guided.renoise.to(torch.float64), x64, alpha_bar, self.prediction_type)
        return eps, renoise

    @torch.no_grad()
    def decode(self, predict: Predict, x_T: torch.Tensor, clip_x0: bool = False) -> torch.Tensor:
        """From noise (or an inverted latent) at the sampler's first timestep to the image.

        ``predict`` returns a prediction or a :class:`GuidedPrediction`: x0 from its ``prediction``, re-noised
        with its ``renoise`` (CFG++). ``clip_x0`` is for sampling from noise (it keeps an imperfect model's
        trajectory inside the image range); never for counterfactual decoding, which must retrace the inversion.

        Args:
            predict: the (guided) prediction at ``(x, t)``.
            x_T: noise or an inverted latent at the sampler's first timestep.
            clip_x0: clamp each step's x0 to [-1, 1].

        Returns:
            The decoded images, shaped like ``x_T``.
        """
        x = x_T
        for t, t_prev in self.pairs:
            eps, renoise = self._eps(predict, x, t)
            x = ddim_step(x, eps, self.alpha_bar(t), self.alpha_bar(t_prev), renoise, clip_x0)
        return x

    @torch.no_grad()
    def invert(self, predict: Predict, x0: torch.Tensor, refinements: int = 0) -> torch.Tensor:
        """From an image to its latent at t = T-1 (abduction of the exogenous noise).

        Each step moves x_{t_prev} to x_t with the noise predicted at x_{t_prev}, then ``refinements`` times with the
        noise predicted at the latest x_t (the fixed point is the x_t that the decoding step maps back to x_{t_prev}).
        For a :class:`GuidedPrediction` with ``renoise`` the roles swap (x0 from ``renoise``, re-noised with
        ``prediction``), the algebraic inverse of its decoding step.

        Args:
            predict: the prediction at ``(x, t)`` (the engine inverts without guidance).
            x0: the images, on the model's scale [-1, 1].
            refinements: fixed-point refinements per step (each one more network evaluation per step); 0: plain
                DDIM inversion.

        Returns:
            The latents at the sampler's first timestep, shaped like ``x0``.

        Raises:
            ValueError: if ``refinements`` is negative.
        """
        if refinements < 0:
            raise ValueError(f"inversion refinements: {refinements!r} must be >= 0")
        x = x0
        for t, t_prev in reversed(self.pairs):
            x_t = x
            for _ in range(1 + refinements):
                x_t = self._inverse_step(predict, x, x_t, t, t_prev)
            x = x_t
        return x

    def _inverse_step(
        self, predict: Predict, x_prev: torch.Tensor, at: torch.Tensor, t: int, t_prev: int
    ) -> torch.Tensor:
        """x_t from ``x_prev`` (at t_prev) with the noise predicted at ``at`` for timestep t."""
        eps, renoise = self._eps(predict, at, t)
        if renoise is None:
            return ddim_step(x_prev, eps, self.alpha_bar(t_prev), self.alpha_bar(t))
        return ddim_step(x_prev, renoise, self.alpha_bar(t_prev), self.alpha_bar(t), renoise=eps)
