"""Skin-marker presence: does a mammogram model draw the phantom's ring marker when asked to?

    python -m medcf.measure.marker_presence --model MODEL.pt [--subjects 48] [--steps 25] [--device auto]
        [--guidance-weight 1]

Effect maps (:mod:`medcf.measure.attribute_effects`) cannot answer this: the marker lies at a random
place on the skin, so a mean difference map spreads it out, and even a perfect model's map from 16 noises
correlates only about 0.3 with the phantom's. This check looks for the marker in each image instead.

- Score: a matched filter. The template is the phantom's own rendered marker (the difference
  ``render(do(marker=circle)) - render(do(marker=none))``), centred on its centre of mass and averaged over
  subjects. An image's score is the largest correlation of the zero-mean template with the image.
- Presence: the AUC of the scores of images with the marker against images without it, for the same
  subjects (phantom: the exact counterfactual pairs; model: both samples from one starting noise, the
  other attributes those of phantom subjects). 1 means the marker is always told apart, 0.5 that it is
  not drawn. The paired fraction is how often a subject's marked image outscores its unmarked one.

Images are on the [0, 1] scale.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage, stats

from medcf.core.diffusion import DiffusionConfig
from medcf.core.intensity import to_unit_scale
from medcf.core.network import CounterfactualUNet, load_checkpoint
from medcf.measure.attribute_effects import square_image_size
from medcf.measure.report import command_parser, report
from medcf.phantoms.dataset import make_phantom
from medcf.phantoms.scm import Phantom, Subject
from medcf.runtime.devices import resolve_device
from medcf.training.samples import conditional_samples

WITH, WITHOUT = {"marker": "circle"}, {"marker": "none"}


def marker_template(phantom: Phantom, size: int = 64, subjects: int = 64, half_width: int = 5) -> np.ndarray:
    """The phantom's marker as a zero-mean (2 * half_width + 1)^2 filter: rendered marker differences,
    each centred on its centre of mass (markers too near the border are skipped), averaged.

    Args:
        phantom: the mammogram phantom whose marker is rendered.
        size: side of the square renders in pixels (default 64).
        subjects: phantom subjects drawn (seed 0) to render the marker on (default 64).
        half_width: half the filter's side in pixels, centre excluded (default 5).

    Returns:
        The zero-mean template, (2 * half_width + 1, 2 * half_width + 1).

    Raises:
        ValueError: when no subject's marker lies at least ``half_width`` pixels from the border.
    """
    crops = []
    marked, unmarked = phantom_pairs(phantom, phantom.sample(subjects, np.random.default_rng(0)), size)
    for marker in marked - unmarked:
        if marker.max() <= 0:
            continue
        row, col = (int(round(c)) for c in ndimage.center_of_mass(np.clip(marker, 0, None)))
        if half_width <= row < size - half_width and half_width <= col < size - half_width:
            crops.append(marker[row - half_width : row + half_width + 1, col - half_width : col + half_width + 1])
    if not crops:
        raise ValueError(f"the phantom drew no marker away from the border of a {size}x{size} image")
    template = np.mean(crops, axis=0)
    return template - template.mean()


def marker_scores(images: np.ndarray, template: np.ndarray) -> np.ndarray:
    """Largest matched-filter response of each (H, W) image in ``images`` (N, H, W).

    Args:
        images: (N, H, W) images on the [0, 1] scale.
        template: the zero-mean filter of :func:`marker_template`.

    Returns:
        (N,) the largest correlation of the template with each image (borders extended with the nearest pixel).
    """
    return np.array([ndimage.correlate(image, template, mode="nearest").max() for image in images])


def separation(with_marker: np.ndarray, without_marker: np.ndarray) -> dict[str, float]:
    """AUC of marked against unmarked scores, the paired fraction, and each group's median score.

    Args:
        with_marker: the scores of the images with the marker, (N,).
        without_marker: the scores of the same subjects' images without it, (N,), in the same order.

    Returns:
        ``auc``, ``paired_fraction``, ``median_score_with`` and ``median_score_without``.
    """
    auc = stats.mannwhitneyu(with_marker, without_marker).statistic / (len(with_marker) * len(without_marker))
    return {
        "auc": float(auc),
        "paired_fraction": float(np.mean(with_marker > without_marker)),
        "median_score_with": float(np.median(with_marker)),
        "median_score_without": float(np.median(without_marker)),
    }


def phantom_pairs(phantom: Phantom, subjects: Sequence[Subject], size: int) -> tuple[np.ndarray, np.ndarray]:
    """(with, without) exact counterfactual images of ``subjects``, each (N, size, size).

    Args:
        phantom: the mammogram phantom.
        subjects: the subjects to render under do(marker=circle) and do(marker=none).
        size: side of the square renders in pixels.

    Returns:
        (marked, unmarked) renders, each (N, size, size).
    """
    marked, unmarked = (
        np.stack([phantom.true_counterfactual(subject, do, size)[1] for subject in subjects]) for do in (WITH, WITHOUT)
    )
    return marked, unmarked


@torch.no_grad()
def model_pairs(
    model: CounterfactualUNet,
    diffusion: DiffusionConfig,
    subjects: Sequence[Subject],
    steps: int = 25,
    size: tuple[int, int] = (64, 64),
    guidance_weight: float = 1.0,
    per_noise: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """(with, without) model samples under the subjects' attributes, (N, H, W) on [0, 1]. Both samples of a
    subject start from the same noise; each run of ``per_noise`` subjects shares one noise (one batch).

    Args:
        model: the trained mammogram network.
        diffusion: the model's noise schedule and prediction type.
        subjects: phantom subjects whose attributes (marker aside) condition the samples.
        steps: DDIM steps per sample (default 25).
        size: (H, W) of the samples (default (64, 64)).
        guidance_weight: classifier-free guidance weight; 1 (default) samples plain conditional.
        per_noise: subjects per batch, sharing one starting noise (default 8); a batch's seed is the index of
            its first subject.

    Returns:
        (marked, unmarked) samples, each (N, H, W) on [0, 1] (not clipped).
    """
    alphas_cumprod, marked, unmarked = diffusion.alphas_cumprod(), [], []
    for start in range(0, len(subjects), per_noise):
        chunk = subjects[start : start + per_noise]
        rows = [{**dict(s.attributes), **do} for s in chunk for do in (WITH, WITHOUT)]
        samples = conditional_samples(
            model, alphas_cumprod, diffusion.prediction_type, rows, steps, start, size, guidance_weight
        )
        images = to_unit_scale(samples[:, 0].cpu().numpy(), clip=False)
        marked.append(images[0::2])
        unmarked.append(images[1::2])
    return np.concatenate(marked), np.concatenate(unmarked)


def evaluate(
    model_path: str | Path, subjects: int = 48, steps: int = 25, guidance_weight: float = 1.0, device: str = "auto"
) -> dict[str, Any]:
    """Marker presence in a mammogram model's samples (drawn on ``device``: auto = CUDA when present), next to the
    phantom's own (the ceiling).

    Args:
        model_path: the medcf mammogram model file.
        subjects: phantom subjects (seed 1) whose attributes are sampled (default 48).
        steps: DDIM steps per sample (default 25).
        guidance_weight: classifier-free guidance weight; 1 (default) samples plain conditional.
        device: ``auto`` (default), ``cpu``, ``cuda`` or ``cuda:N``.

    Returns:
        The settings, the device used, and the :func:`separation` of the ``phantom`` and of the ``model``.

    Raises:
        SchemaError: when the model's image size is not square.
        ValueError: when the phantom draws no marker away from the border.
    """
    phantom = make_phantom("mammo")
    chosen = resolve_device(device)
    model, payload = load_checkpoint(model_path, expected_schema=phantom.schema)
    model = model.to(chosen)
    height, width = square_image_size(payload)
    template = marker_template(phantom, height)
    drawn = phantom.sample(subjects, np.random.default_rng(1))
    truth = phantom_pairs(phantom, drawn, height)
    samples = model_pairs(
        model, DiffusionConfig(**payload["diffusion"]), drawn, steps, (height, width), guidance_weight
    )
    settings = {"subjects": subjects, "steps": steps, "guidance_weight": guidance_weight, "device": str(chosen)}
    return {
        **settings,
        "phantom": separation(*(marker_scores(images, template) for images in truth)),
        "model": separation(*(marker_scores(images, template) for images in samples)),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m medcf.measure.marker_presence``: sample mammograms with and without the marker and print how well
    the marker separates them, as JSON (:func:`evaluate`).

    Args:
        argv: the arguments (None: ``sys.argv[1:]``).

    Returns:
        The exit status: 0, or 2 on a bad input.
    """
    parser = command_parser("medcf.measure.marker_presence", __doc__, "medcf mammogram model file (models/model.pt)")
    parser.add_argument("--subjects", type=int, default=48, help="phantom subjects whose attributes to sample")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps per sample")
    parser.add_argument("--guidance-weight", type=float, default=1.0, help="CFG weight (1: plain conditional)")
    args = parser.parse_args(argv)
    if args.subjects < 2 or args.steps < 1:
        parser.error("--subjects must be at least 2 and --steps at least 1")
    return report(
        parser.prog, lambda: evaluate(args.model, args.subjects, args.steps, args.guidance_weight, args.device)
    )


if __name__ == "__main__":
    sys.exit(main())
