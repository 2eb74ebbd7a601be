"""From a batch of clean images to the denoising task: noisy images, target, timesteps and kept attributes."""

from __future__ import annotations

from typing import Any

import torch
from monai.engines.utils import PrepareBatch

from medcf.attributes import AttributeSchema
from medcf.conditioning import ConditionDropout
from medcf.diffusion import DiffusionConfig


class NoisingPrepareBatch(PrepareBatch):
    """``prepare_batch`` for MONAI engines: returns ``(x_t, target, (), {timesteps, attributes, keep})`` so that
    a SimpleInferer calls ``network(x_t, timesteps=..., attributes=..., keep=...)``.

    Args:
        diffusion: schedule and prediction target.
        schema: attribute order of the ``attributes`` tensors.
        dropout: condition dropout policy (validation passes ``ConditionDropout(whole=0)``).
        seed: seed the noise, timesteps and dropout (validation uses a fixed seed to be comparable).
    """

    def __init__(
        self,
        diffusion: DiffusionConfig,
        schema: AttributeSchema,
        dropout: ConditionDropout,
        seed: int | None = None,
        reseed_every_call: bool = False,
    ) -> None:
        self.diffusion, self.schema, self.dropout = diffusion, schema, dropout
        self.alphas_cumprod = diffusion.alphas_cumprod()
        self.seed, self.reseed_every_call = seed, reseed_every_call
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(seed)

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple:
        if self.reseed_every_call and self.seed is not None:
            self.generator.manual_seed(self.seed)
        x0 = torch.as_tensor(batchdata["image"]).float()
        attributes = torch.as_tensor(batchdata["attributes"]).float()
        batch = x0.shape[0]
        timesteps = torch.randint(0, self.diffusion.num_train_timesteps, (batch,), generator=self.generator)
        noise = torch.randn(x0.shape, generator=self.generator)
        alpha_bar = self.alphas_cumprod[timesteps].view(batch, *([1] * (x0.ndim - 1)))
        x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
        target = self.diffusion.target(x0, noise, alpha_bar)
        keep = self.dropout.keep_mask(self.schema, batch, self.generator)
        move = {"device": device, "non_blocking": non_blocking}
        return (
            x_t.to(**move),
            target.to(**move),
            (),
            {"timesteps": timesteps.to(**move), "attributes": attributes.to(**move), "keep": keep.to(**move)},
        )
