"""Conditional sample grids: what the model draws for each attribute value (for MLflow and model cards)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medcf.conditioning import encode_attributes
from medcf.model import CounterfactualUNet
from medcf.sampling import DDIMSampler


@torch.no_grad()
def conditional_samples(
    model: CounterfactualUNet,
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
    rows: Sequence[Mapping[str, Any]],
    steps: int = 25,
    seed: int = 0,
    size: tuple[int, int] = (64, 64),
) -> torch.Tensor:
    """One DDIM sample per row of attribute values, all from the same starting noise (B, 1, H, W)."""
    device = next(model.parameters()).device
    attributes = encode_attributes(model.schema, rows).to(device)
    keep = torch.ones_like(attributes, dtype=torch.bool)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((1, model.config.in_channels, *size), generator=generator).to(device)
    noise = noise.expand(len(rows), -1, -1, -1).contiguous()
    sampler = DDIMSampler(alphas_cumprod, prediction_type, steps)
    was_training = model.training
    model.eval()

    def predict(x: torch.Tensor, t: int) -> torch.Tensor:
        return model(x, torch.full((x.shape[0],), t, device=device), attributes, keep)

    samples = sampler.decode(predict, noise).clamp(-1, 1)
    model.train(was_training)
    return samples


def save_grid(samples: torch.Tensor, rows: Sequence[Mapping[str, Any]], path: str | Path, columns: int = 8) -> Path:
    """Save samples as a labelled PNG grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(rows)
    columns = min(columns, count)
    lines = (count + columns - 1) // columns
    fig, axes = plt.subplots(lines, columns, figsize=(1.5 * columns, 1.75 * lines), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    base = rows[0]
    for ax, image, row in zip(axes.flat, samples.cpu().numpy(), rows, strict=False):
        ax.imshow(np.asarray(image[0]), cmap="gray", vmin=-1, vmax=1)
        changed = {k: v for k, v in row.items() if v != base[k]} or dict(list(row.items())[:1])
        ax.set_title(", ".join(f"{k}={v}" for k, v in changed.items()), fontsize=6)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class SampleGridWriter:
    """``writer(epoch, folder) -> PNG``: a grid sweeping each attribute from one starting noise."""

    def __init__(
        self,
        model: CounterfactualUNet,
        diffusion: Any,
        image_size: int | Sequence[int] = 64,
        steps: int = 25,
        seed: int = 0,
    ) -> None:
        from medcf.training.data import attribute_grid

        self.model, self.diffusion, self.steps, self.seed = model, diffusion, steps, seed
        self.size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.rows = attribute_grid(model.schema)
        self.alphas_cumprod = diffusion.alphas_cumprod()

    def __call__(self, epoch: int, folder: Path) -> Path:
        samples = conditional_samples(
            self.model, self.alphas_cumprod, self.diffusion.prediction_type, self.rows, self.steps, self.seed, self.size
        )  # type: ignore[arg-type]
        return save_grid(samples, self.rows, Path(folder) / f"samples_epoch{epoch:04d}.png")
