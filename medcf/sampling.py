"""Deterministic DDIM decoding and inversion on explicit timestep pairs.

Both directions walk the same pairs (t, t_prev) of a descending schedule T-1 ... 0, ending at "t = -1"
(abar = 1, the clean image), so inversion followed by decoding is as exact as the model allows. The
network is reached only through ``predict(x, t) -> prediction``, so guidance (CFG, DCFG) plugs in there.

Notation (Song et al. 2021, DDIM, eq. 12 with sigma = 0): abar_t = alphas_cumprod[t];
x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t);  x_{t_prev} = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps.
Inversion uses eps(x_{t_prev}, t) in place of eps(x_t, t), the usual DDIM inversion approximation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Predict = Callable[[torch.Tensor, int], torch.Tensor]


def timestep_schedule(num_train_timesteps: int, steps: int) -> list[int]:
    """``steps`` descending timesteps from T-1 to 0, evenly spaced."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps: {steps} must lie in [1, {num_train_timesteps}]")
    return torch.linspace(num_train_timesteps - 1, 0, steps).round().long().tolist()


def split_prediction(
    prediction: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(eps, x0) from the network output: an epsilon or a v prediction."""
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if prediction_type == "epsilon":
        return prediction, (x_t - s * prediction) / a
    return s * x_t + a * prediction, a * x_t - s * prediction


class DDIMSampler:
    """DDIM (eta = 0) over ``steps`` evenly spaced timesteps of a trained schedule."""

    def __init__(self, alphas_cumprod: torch.Tensor, prediction_type: str, steps: int = 50) -> None:
        self.alphas_cumprod = alphas_cumprod.to(torch.float64)
        self.prediction_type = prediction_type
        self.timesteps = timestep_schedule(len(alphas_cumprod), steps)

    def truncated(self, depth: float) -> DDIMSampler:
        """The same sampler over only the least noisy ``depth`` fraction of its steps (partial inversion:
        the latent keeps more of the image, the counterfactual can change less)."""
        if not 0.0 < depth <= 1.0:
            raise ValueError(f"inversion depth: {depth!r} must lie in (0, 1]")
        keep = max(1, round(depth * len(self.timesteps)))
        partial = DDIMSampler.__new__(DDIMSampler)
        partial.alphas_cumprod, partial.prediction_type = self.alphas_cumprod, self.prediction_type
        partial.timesteps = self.timesteps[-keep:]
        return partial

    def alpha_bar(self, t: int) -> torch.Tensor:
        return self.alphas_cumprod[t] if t >= 0 else torch.tensor(1.0, dtype=torch.float64)

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """(t, t_prev) pairs of the decoding direction; t_prev = -1 is the clean image."""
        return list(zip(self.timesteps, [*self.timesteps[1:], -1], strict=True))

    def _step(
        self, x: torch.Tensor, eps: torch.Tensor, source: int, target: int, clip_x0: bool = False
    ) -> torch.Tensor:
        """Move x from timestep ``source`` to ``target`` along the predicted noise (either direction).

        ``clip_x0`` clamps the predicted clean image to [-1, 1] and re-derives the noise from it (generation
        from pure noise only: it makes the step non-invertible)."""
        a_source, a_target = self.alpha_bar(source), self.alpha_bar(target)
        x64 = x.to(torch.float64)
        x0 = (x64 - (1 - a_source).sqrt() * eps) / a_source.sqrt()
        if clip_x0:
            x0 = x0.clamp(-1, 1)
            eps = (x64 - a_source.sqrt() * x0) / (1 - a_source).sqrt()
        return (a_target.sqrt() * x0 + (1 - a_target).sqrt() * eps).to(x.dtype)

    def _eps(self, predict: Predict, x: torch.Tensor, t: int) -> torch.Tensor:
        eps, _ = split_prediction(
            predict(x, t).to(torch.float64), x.to(torch.float64), self.alpha_bar(t), self.prediction_type
        )
        return eps

    @torch.no_grad()
    def decode(self, predict: Predict, x_T: torch.Tensor, clip_x0: bool = False) -> torch.Tensor:
        """From noise (or an inverted latent) at the sampler's first timestep to the image.

        ``clip_x0`` is for sampling from noise (it keeps an imperfect model's trajectory inside the image
        range); never for counterfactual decoding, which must retrace the inversion."""
        x = x_T
        for t, t_prev in self.pairs:
            x = self._step(x, self._eps(predict, x, t), source=t, target=t_prev, clip_x0=clip_x0)
        return x

    @torch.no_grad()
    def invert(self, predict: Predict, x0: torch.Tensor) -> torch.Tensor:
        """From an image to its latent at t = T-1 (abduction of the exogenous noise)."""
        x = x0
        for t, t_prev in reversed(self.pairs):
            x = self._step(x, self._eps(predict, x, t), source=t_prev, target=t)
        return x
