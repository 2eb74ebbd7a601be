"""Reconstruction through DDIM inversion: the abduction-prediction round trip under the factual attributes.

    python -m medcf.measure.reconstruction --model MODEL.pt --manifest OUT/manifest.csv [--split test]
        [--count 64] [--steps 50] [--refinements 0] [--device auto|cpu|cuda|cuda:N]

Each held-out image is inverted to its latent and decoded again under its own attributes, without
guidance. The error is reported on the [0, 1] intensity scale (half the error on the [-1, 1] scale the
model works in). For an exact Gaussian model and the linear schedule, 50-step inversion alone gives about
0.01-0.02; a model that reconstructs its held-out images within 0.03 is fit for counterfactual inference.

With the default ``--refinements 0`` (plain DDIM inversion) the error measures the model: how far its noise
predictions at neighbouring steps disagree, the figure the training log compares. The jobs refine each inversion
step once (``inversion_refinements``, a fixed-point iteration), which takes the shipped models' 50-step error from
about 0.023 to 0.003 on this scale.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from medcf.core.diffusion import DiffusionConfig
from medcf.core.network import CounterfactualUNet, load_checkpoint
from medcf.core.sampling import DDIMSampler
from medcf.measure.report import command_parser, report
from medcf.runtime.devices import resolve_device
from medcf.training.data import manifest_items


@torch.no_grad()
def reconstruction_errors(
    model: CounterfactualUNet,
    diffusion: DiffusionConfig,
    images: torch.Tensor,
    attributes: torch.Tensor,
    steps: int = 50,
    batch_size: int = 32,
    refinements: int = 0,
) -> np.ndarray:
    """Mean absolute error per image on the [0, 1] scale after invert + decode under the factual attributes, on the
    model's device.

    Args:
        model: the trained network (put in eval mode).
        diffusion: the model's noise schedule and prediction type.
        images: prepared images (N, 1, H, W) in [-1, 1].
        attributes: the images' attribute codes (N, K), every attribute kept (no guidance).
        steps: DDIM steps of the inversion and of the decoding (default 50).
        batch_size: images per batch (default 32).
        refinements: fixed-point refinements per inversion step (default 0: plain DDIM inversion).

    Returns:
        (N,) the mean absolute error per image on the [0, 1] scale.
    """
    model.eval()
    device = next(model.parameters()).device
    sampler = DDIMSampler(diffusion.alphas_cumprod(), diffusion.prediction_type, steps)
    errors = []
    for start in range(0, len(images), batch_size):
        x0, codes = images[start : start + batch_size].to(device), attributes[start : start + batch_size].to(device)
        keep = torch.ones_like(codes, dtype=torch.bool)

        def predict(x: torch.Tensor, t: int, codes: torch.Tensor = codes, keep: torch.Tensor = keep) -> torch.Tensor:
            return model(x, torch.full((x.shape[0],), t, device=device), codes, keep)

        rebuilt = sampler.decode(predict, sampler.invert(predict, x0, refinements))
        errors.append(((rebuilt - x0).abs() / 2).flatten(1).mean(1).cpu())
    return torch.cat(errors).numpy()


def evaluate(
    model_path: str | Path,
    manifest: str | Path,
    split: str = "test",
    count: int = 64,
    steps: int = 50,
    device: str = "auto",
    refinements: int = 0,
) -> dict[str, float]:
    """Load a medcf model file and measure its reconstruction error on ``count`` images of ``split`` (the model
    on ``device``: auto = CUDA when present).

    Args:
        model_path: the medcf model file.
        manifest: ``manifest.csv`` of prepared images with a cohort.
        split: the manifest split to measure (default ``test``).
        count: how many images, the first by image path (default 64).
        steps: DDIM steps of the inversion and of the decoding (default 50).
        device: ``auto`` (default), ``cpu``, ``cuda`` or ``cuda:N``.
        refinements: fixed-point refinements per inversion step (default 0: plain DDIM inversion).

    Returns:
        The number of images, the steps, the refinements, the mean, median, 95th percentile and largest error, the
        seconds the round trips took and the device used.
    """
    chosen = resolve_device(device)
    model, payload = load_checkpoint(model_path)
    model = model.to(chosen)
    diffusion = DiffusionConfig(**payload["diffusion"])
    items = sorted(manifest_items(manifest, model.schema, split), key=lambda item: item["image"])[:count]
    images = torch.stack([torch.from_numpy(np.load(item["image"])) for item in items]).float()
    attributes = torch.stack([torch.as_tensor(item["attributes"]) for item in items]).float()
    started = time.perf_counter()
    errors = reconstruction_errors(model, diffusion, images, attributes, steps, refinements=refinements)
    return {
        "images": len(errors),
        "steps": steps,
        "refinements": refinements,
        "mae_mean": float(errors.mean()),
        "mae_median": float(np.median(errors)),
        "mae_p95": float(np.percentile(errors, 95)),
        "mae_max": float(errors.max()),
        "seconds": round(time.perf_counter() - started, 1),
        "device": str(chosen),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m medcf.measure.reconstruction``: invert and decode held-out images and print the reconstruction
    errors as JSON (:func:`evaluate`).

    Args:
        argv: the arguments (None: ``sys.argv[1:]``).

    Returns:
        The exit status: 0, or 2 on a bad input.
    """
    parser = command_parser("medcf.measure.reconstruction", __doc__, "medcf model file (models/model.pt)")
    parser.add_argument("--manifest", required=True, help="manifest.csv of prepared images with a cohort")
    parser.add_argument("--split", default="test")
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--refinements", type=int, default=0, help="fixed-point refinements per inversion step")
    args = parser.parse_args(argv)
    return report(
        parser.prog,
        lambda: evaluate(args.model, args.manifest, args.split, args.count, args.steps, args.device, args.refinements),
    )


if __name__ == "__main__":
    sys.exit(main())
