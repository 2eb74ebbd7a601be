"""Conditional sample grids: what the model draws for each attribute value (for MLflow and model cards).

Each attribute is swept over its values while the others stay at a base; every image of a sweep starts
from the same noise, so the only difference along a row is the attribute. Under each row of samples the
grid shows |sample - first sample of the row|: what the attribute changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medcf.core.attributes import AttributeSchema
from medcf.core.conditioning import encode_attributes
from medcf.core.denoiser import GuidedDenoiser, default_max_rows
from medcf.core.guidance import guidance_plan
from medcf.core.intensity import to_unit_scale
from medcf.core.network import CounterfactualUNet
from medcf.core.sampling import DDIMSampler
from medcf.outputs.grids import save_figure


def attribute_sweeps(schema: AttributeSchema, per_attribute: int = 4) -> dict[str, list[dict[str, Any]]]:
    """For each attribute, rows of attribute values sweeping it while the others stay at a base (the first
    category; the middle of a continuous range).

    Args:
        schema: the attributes.
        per_attribute: number of evenly spaced values of a continuous attribute, ends included (default 4);
            a categorical attribute takes all its values.

    Returns:
        Attribute name -> rows of values of every attribute, one row per swept value (numbers rounded to 0.1).
    """
    base = {
        a.name: (a.values[0] if a.kind == "categorical" else round((a.low + a.high) / 2, 1)) for a in schema.attributes
    }
    sweeps = {}
    for a in schema.attributes:
        if a.kind == "categorical":
            values = list(a.values)
        else:
            values = [round(a.low + (a.high - a.low) * k / max(per_attribute - 1, 1), 1) for k in range(per_attribute)]
        sweeps[a.name] = [{**base, a.name: value} for value in values]
    return sweeps


@torch.no_grad()
def conditional_samples(
    model: CounterfactualUNet,
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
    rows: Sequence[Mapping[str, Any]],
    steps: int = 25,
    seed: int = 0,
    size: tuple[int, int] = (64, 64),
    guidance_weight: float = 1.0,
) -> torch.Tensor:
    """One DDIM sample per row of attribute values, all from the same starting noise (B, 1, H, W).

    ``guidance_weight`` != 1 samples with classifier-free guidance of that weight (0: unconditional).

    Args:
        model: the denoising network; it is put in eval mode for sampling and restored after.
        alphas_cumprod: cumulative products of the noise schedule.
        prediction_type: what the network predicts ("epsilon" or "v_prediction").
        rows: attribute values of each sample.
        steps: DDIM steps (default 25).
        seed: seed of the starting noise (default 0).
        size: sample height and width (default (64, 64)).
        guidance_weight: classifier-free guidance weight (default 1.0: plain conditional sampling).

    Returns:
        The samples, clamped to [-1, 1], on the model's device.
    """
    device = next(model.parameters()).device
    attributes = encode_attributes(model.schema, rows).to(device)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((1, model.config.in_channels, *size), generator=generator).to(device)
    noise = noise.expand(len(rows), -1, -1, -1).contiguous()
    mode = "none" if guidance_weight == 1.0 else "cfg"
    plan = guidance_plan(model.schema, mode, weight=guidance_weight)
    denoiser = GuidedDenoiser(model, attributes, plan, default_max_rows(device))
    was_training = model.training
    model.eval()
    samples = DDIMSampler(alphas_cumprod, prediction_type, steps).decode(denoiser, noise, clip_x0=True)
    model.train(was_training)
    return samples.clamp(-1, 1)


def save_sweep_grid(sweeps: Mapping[str, torch.Tensor], labels: Mapping[str, Sequence[str]], path: str | Path) -> Path:
    """Save sweeps (attribute -> samples (V, 1, H, W) on [-1, 1]) as a PNG: a row of samples per attribute,
    each followed by a row of |sample - first sample|.

    Args:
        sweeps: attribute name -> samples (V, 1, H, W) on [-1, 1].
        labels: attribute name -> the V value labels written over the samples.
        path: PNG file to write.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(len(samples) for samples in sweeps.values())
    fig, axes = plt.subplots(2 * len(sweeps), columns, figsize=(1.5 * columns, 3.3 * len(sweeps)), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for line, (name, samples) in enumerate(sweeps.items()):
        images = to_unit_scale(samples[:, 0].cpu().numpy(), clip=False)  # imshow clips to vmin / vmax
        for k, image in enumerate(images):
            axes[2 * line, k].imshow(image, cmap="gray", vmin=0, vmax=1)
            axes[2 * line, k].set_title(f"{name}={labels[name][k]}", fontsize=7)
            axes[2 * line + 1, k].imshow(np.abs(image - images[0]), cmap="magma", vmin=0, vmax=0.25)
        axes[2 * line + 1, 0].set_title("|difference| (0-0.25)", fontsize=6)
    fig.tight_layout()
    return save_figure(fig, path)


class SampleGridWriter:
    """``writer(epoch, folder) -> PNG``: a grid sweeping each attribute from one starting noise.

    Args:
        model: the (EMA) denoiser.
        diffusion: its ``DiffusionConfig``.
        image_size: sample size.
        steps: DDIM steps.
        seed: the starting noise.
        guidance_weight: classifier-free guidance weight (1: plain conditional sampling).
    """

    def __init__(
        self,
        model: CounterfactualUNet,
        diffusion: Any,
        image_size: int | Sequence[int] = 64,
        steps: int = 25,
        seed: int = 0,
        guidance_weight: float = 1.0,
    ) -> None:
        self.model, self.diffusion, self.steps, self.seed = model, diffusion, steps, seed
        self.guidance_weight = guidance_weight
        self.size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.sweeps = attribute_sweeps(model.schema)
        self.alphas_cumprod = diffusion.alphas_cumprod()

    def __call__(self, epoch: int, folder: Path) -> Path:
        rows = [row for sweep in self.sweeps.values() for row in sweep]
        drawn = conditional_samples(
            self.model,
            self.alphas_cumprod,
            self.diffusion.prediction_type,
            rows,
            self.steps,
            self.seed,
            self.size,  # type: ignore[arg-type]
            self.guidance_weight,
        )  # every sweep in one batch: all rows share the starting noise anyway
        samples = dict(zip(self.sweeps, drawn.split([len(s) for s in self.sweeps.values()]), strict=True))
        labels = {name: [str(row[name]) for row in rows] for name, rows in self.sweeps.items()}
        return save_sweep_grid(samples, labels, Path(folder) / f"samples_epoch{epoch:04d}.png")
