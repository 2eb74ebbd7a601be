"""Diffusion process settings: noise schedule and prediction target, and the training target."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from monai.networks.schedulers import DDIMScheduler


@dataclass(frozen=True)
class DiffusionConfig:
    """Args:
    num_train_timesteps: T of the forward process.
    schedule: MONAI noise schedule, "linear_beta" or "cosine" (also "scaled_linear_beta", "sigmoid_beta").
    prediction_type: "epsilon" (the noise) or "v_prediction" (v = sqrt(a) eps - sqrt(1 - a) x0).
    """

    num_train_timesteps: int = 1000
    schedule: str = "linear_beta"
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"

    def __post_init__(self) -> None:
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type: {self.prediction_type!r} must be 'epsilon' or 'v_prediction'")
        if self.schedule not in ("linear_beta", "scaled_linear_beta", "sigmoid_beta", "cosine"):
            raise ValueError(
                f"schedule: {self.schedule!r} must be linear_beta, scaled_linear_beta, sigmoid_beta or cosine"
            )

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain data.

        Returns:
            ``num_train_timesteps``, ``schedule`` and ``prediction_type`` by name.
        """
        return asdict(self)

    def alphas_cumprod(self) -> torch.Tensor:
        """abar_t for t = 0..T-1, from MONAI's scheduler for the chosen schedule.

        Returns:
            A float32 tensor of length ``num_train_timesteps``.
        """
        scheduler = DDIMScheduler(
            self.num_train_timesteps,
            schedule=self.schedule,
            clip_sample=False,
            prediction_type=self.prediction_type,
        )
        return scheduler.alphas_cumprod.to(torch.float32)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        """What the network learns to predict for x_t = sqrt(abar) x0 + sqrt(1 - abar) noise.

        Args:
            x0: the clean images.
            noise: the Gaussian noise added to them.
            alpha_bar: abar of each image's timestep, broadcastable to ``x0``.

        Returns:
            ``noise`` (epsilon), or v = sqrt(abar) noise - sqrt(1 - abar) x0 (v-prediction).
        """
        if self.prediction_type == "epsilon":
            return noise
        return alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0

    def min_snr_weight(self, alpha_bar: torch.Tensor, gamma: float) -> torch.Tensor:
        """Min-SNR-gamma loss weight (Hang et al. 2023, arXiv 2303.09556) of a sample at abar, for this config's
        target: with SNR = abar / (1 - abar), min(SNR, gamma) / SNR for epsilon and min(SNR, gamma) / (SNR + 1)
        for v-prediction. Both equal the weight that makes the loss min(SNR, gamma) ||x0_hat - x0||^2, so the
        nearly clean steps (large SNR), whose easy targets otherwise dominate the gradient, count no more than the
        steps at SNR gamma.

        Args:
            alpha_bar: abar of each sample's timestep.
            gamma: the SNR cap; must be > 0.

        Returns:
            The weights, shaped like ``alpha_bar``.

        Raises:
            ValueError: if ``gamma`` is not > 0.
        """
        if not gamma > 0:
            raise ValueError(f"min-SNR gamma: {gamma!r} must be > 0")
        snr = alpha_bar / (1 - alpha_bar)
        clipped = snr.clamp(max=gamma)
        return clipped / snr if self.prediction_type == "epsilon" else clipped / (snr + 1)
