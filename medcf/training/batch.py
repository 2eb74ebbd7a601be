"""From a batch of clean images to the denoising task: noisy images, target, timesteps and kept attributes, and
the inferer that applies a per-sample loss weight (min-SNR-gamma) inside MONAI's plain MSE training loop."""

from __future__ import annotations

from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines.utils import PrepareBatch
from monai.inferers import Inferer
from torch import nn

from medcf.core.attributes import AttributeSchema
from medcf.core.conditioning import ConditionDropout
from medcf.core.denoiser import check_precision, precision_autocast
from medcf.core.diffusion import DiffusionConfig

#: Per-sample loss weightings of :class:`NoisingPrepareBatch`.
LOSS_WEIGHTINGS = ("none", "min_snr")


class NoisingPrepareBatch(PrepareBatch):
    """``prepare_batch`` for MONAI engines: returns ``(x_t, target, (), {timesteps, attributes, keep})`` so that
    a SimpleInferer calls ``network(x_t, timesteps=..., attributes=..., keep=...)``.

    Args:
        diffusion: schedule and prediction target.
        schema: attribute order of the ``attributes`` tensors.
        dropout: condition dropout policy (validation passes ``ConditionDropout(whole=0)``).
        seed: seed the noise, timesteps and dropout (validation uses a fixed seed to be comparable, and
            :class:`SameNoiseEachPass` restarts the draws at every validation pass).
        loss_weighting: ``none`` (every sample weighs 1: the plain MSE of the target) or ``min_snr``
            (:meth:`~medcf.core.diffusion.DiffusionConfig.min_snr_weight` with ``snr_gamma``). The weight w reaches the
            loss as sqrt(w) on the target here and on the prediction in :class:`LossWeightedInferer`, so that
            MSE(sqrt(w) pred, sqrt(w) target) = mean of w (pred - target)^2.
        snr_gamma: gamma of min_snr (the paper's 5).

    Raises:
        ValueError: when ``loss_weighting`` is unknown, or ``snr_gamma`` is not > 0 with ``min_snr``.
    """

    def __init__(
        self,
        diffusion: DiffusionConfig,
        schema: AttributeSchema,
        dropout: ConditionDropout,
        seed: int | None = None,
        loss_weighting: str = "none",
        snr_gamma: float = 5.0,
    ) -> None:
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting: {loss_weighting!r} is not one of {', '.join(LOSS_WEIGHTINGS)}")
        if loss_weighting == "min_snr" and not snr_gamma > 0:
            raise ValueError(f"snr_gamma: {snr_gamma!r} must be > 0")
        self.loss_weighting, self.snr_gamma = loss_weighting, float(snr_gamma)
        self.diffusion, self.schema, self.dropout = diffusion, schema, dropout
        self.alphas_cumprod = diffusion.alphas_cumprod()
        self.seed = seed
        self.generator = torch.Generator()
        self.restart()

    def restart(self) -> None:
        """Draw from the start of the seeded sequence again (nothing to restart without a seed)."""
        if self.seed is not None:
            self.generator.manual_seed(self.seed)

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple:
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
        extra = {"timesteps": timesteps.to(**move), "attributes": attributes.to(**move), "keep": keep.to(**move)}
        if self.loss_weighting == "min_snr":
            scale = self.diffusion.min_snr_weight(alpha_bar, self.snr_gamma).sqrt()
            target = target * scale
            extra["loss_scale"] = scale.to(**move)
        return x_t.to(**move), target.to(**move), (), extra


class SameNoiseEachPass:
    """Ignite handler of a validation engine: at the start of every pass it restarts the seeded draws of its
    :class:`NoisingPrepareBatch`, so every validation sees the same noise, timesteps and dropout per image and the
    validation loss compares between epochs (otherwise each pass draws new timesteps, and a loss that varies by
    orders of magnitude over t moves by chance from one epoch to the next).

    Args:
        prepare_batch: the validation's batch preparation (with a ``seed``).
    """

    def __init__(self, prepare_batch: NoisingPrepareBatch) -> None:
        self.prepare_batch = prepare_batch

    def attach(self, engine: Engine) -> None:
        """Restart the draws when each of ``engine``'s passes starts.

        Args:
            engine: the validation engine (MONAI's SupervisedEvaluator).
        """
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        self.prepare_batch.restart()


class LossWeightedInferer(Inferer):
    """MONAI inferer of the denoising network: ``network(x_t, **kwargs)``, times ``loss_scale`` (the per-sample
    sqrt of the loss weight, shaped to broadcast) when the batch carries one. Without it (validation, or
    ``loss_weighting: none``) and in fp32 it is MONAI's SimpleInferer.

    Args:
        precision: ``fp32`` (default), or ``bf16``: the network runs under bfloat16 autocast on the inputs' device
            and its prediction comes back in float32, so the loss and the optimiser stay in float32 (MONAI's own
            ``amp`` autocasts to float16 on CUDA only; this one also runs on a CPU with bfloat16 instructions,
            1.66x faster at 64 px on the one measured, see README "Training the denoiser").

    Raises:
        ValueError: if ``precision`` is not one of :data:`medcf.core.denoiser.PRECISIONS`.

    Calling the inferer takes ``inputs`` (the noisy images ``x_t``), ``network`` (the denoising network), further
    positional arguments of ``network`` and its keyword arguments (``timesteps``, ``attributes``, ``keep``) plus
    the optional ``loss_scale``, which is taken out and not passed on; it returns the prediction, times
    ``loss_scale`` when given.
    """

    def __init__(self, precision: str = "fp32") -> None:
        super().__init__()
        self.precision = check_precision(precision)

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        scale = kwargs.pop("loss_scale", None)
        with precision_autocast(inputs.device.type, self.precision):
            prediction = network(inputs, *args, **kwargs)
        if self.precision == "bf16":
            prediction = prediction.float()  # the loss and the optimiser stay in float32
        return prediction if scale is None else prediction * scale.to(prediction.dtype)
