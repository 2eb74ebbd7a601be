"""Attribute effect maps: does the model change the image where, and the way, the phantom does?

    python -m medcf.measure.attribute_effects --model MODEL.pt --phantom cxr|mammo [--seeds 16]
        [--steps 25] [--subjects 64] [--guidance-weight 1] [--attributes NAME ...] [--figure effects.png]
        [--device auto]

For each attribute, the contrast is its sweep's first value against its last (age 18 -> 95, sex M -> F,
density A -> D, ...) with every other attribute at the sweep base of
:func:`medcf.training.samples.attribute_sweeps`.

- The model's effect map is the mean, over ``seeds`` starting noises, of sample(last) - sample(first),
  both drawn from the same noise. One pair of samples also differs wherever the two DDIM trajectories
  part ways; averaging over noises keeps what the attribute changes every time, so small local effects
  (a costophrenic effusion, a skin marker) show.
- The phantom's effect map is the mean, over ``subjects`` phantom subjects (cheap: no sampling), of the
  exact counterfactual difference under the same two interventions.

Agreement is the Pearson correlation of the two maps and the ratio of their mean absolute sizes. An
attribute with no mechanism in the phantom (a zero map) gets no correlation; its model size is then the
spurious effect. Maps are on the model's [-1, 1] scale.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medcf.core.attributes import AttributeSchema, SchemaError
from medcf.core.diffusion import DiffusionConfig
from medcf.core.network import CounterfactualUNet, load_checkpoint
from medcf.measure.report import command_parser, report
from medcf.outputs.grids import save_figure
from medcf.phantoms.dataset import make_phantom
from medcf.phantoms.scm import Phantom
from medcf.runtime.devices import resolve_device
from medcf.training.samples import attribute_sweeps, conditional_samples


def effect_contrasts(
    schema: AttributeSchema, attributes: Sequence[str] | None = None
) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """attribute -> (first, last) rows of its sweep: the two attribute settings an effect map compares.

    Args:
        schema: the attributes to contrast; each is swept with :func:`medcf.training.samples.attribute_sweeps`.
        attributes: the attributes to contrast, in this order; None (default) for all of the schema's.

    Returns:
        attribute name -> (first row, last row), each a full row of attribute values.

    Raises:
        SchemaError: when ``attributes`` names an attribute the schema does not have.
    """
    sweeps = attribute_sweeps(schema)
    if attributes is not None:
        unknown = [name for name in attributes if name not in sweeps]
        if unknown or not attributes:
            raise SchemaError(
                f"attributes: {', '.join(map(repr, unknown)) or 'none given'}; choose from {', '.join(sweeps)}"
            )
        sweeps = {name: sweeps[name] for name in attributes}
    return {name: (rows[0], rows[-1]) for name, rows in sweeps.items()}


@torch.no_grad()
def model_effect_maps(
    model: CounterfactualUNet,
    diffusion: DiffusionConfig,
    seeds: int = 16,
    steps: int = 25,
    size: tuple[int, int] = (64, 64),
    guidance_weight: float = 1.0,
    attributes: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """attribute -> mean over ``seeds`` noises of sample(last) - sample(first), shape (H, W).

    Args:
        model: the trained network; its schema gives the contrasts.
        diffusion: the model's noise schedule and prediction type.
        seeds: starting noises to average over (seeds 0 .. seeds - 1; default 16).
        steps: DDIM steps per sample (default 25).
        size: (H, W) of the samples (default (64, 64)).
        guidance_weight: classifier-free guidance weight; 1 (default) samples plain conditional.
        attributes: the attributes to map (None, the default: every attribute of the model's schema).

    Returns:
        attribute name -> mean difference map, float (H, W) on the model's [-1, 1] scale.
    """
    contrasts = effect_contrasts(model.schema, attributes)
    rows = [row for pair in contrasts.values() for row in pair]
    alphas_cumprod, total = diffusion.alphas_cumprod(), torch.zeros((len(rows), *size))
    for seed in range(seeds):  # every contrast of a seed in one batch: all rows share that seed's noise
        samples = conditional_samples(
            model, alphas_cumprod, diffusion.prediction_type, rows, steps, seed, size, guidance_weight
        )
        total += samples[:, 0].cpu()
    mean = (total / seeds).numpy()
    return {name: mean[2 * k + 1] - mean[2 * k] for k, name in enumerate(contrasts)}


def true_effect_maps(
    phantom: Phantom, subjects: int = 64, size: int = 64, seed: int = 0, attributes: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """attribute -> mean over ``subjects`` phantom subjects of the exact counterfactual difference
    render(do(last)) - render(do(first)) on the [-1, 1] scale, shape (size, size).

    Args:
        phantom: the phantom whose exact counterfactuals are the truth.
        subjects: phantom subjects to average over (default 64).
        size: side of the square renders in pixels (default 64).
        seed: seed of the random generator that draws the subjects (default 0).
        attributes: the attributes to map (None, the default: every attribute of the phantom's schema).

    Returns:
        attribute name -> mean difference map, (size, size).
    """
    drawn = phantom.sample(subjects, np.random.default_rng(seed))
    maps = {}
    for name, (first, last) in effect_contrasts(phantom.schema, attributes).items():
        differences = [
            phantom.true_counterfactual(subject, last, size)[1] - phantom.true_counterfactual(subject, first, size)[1]
            for subject in drawn
        ]
        maps[name] = 2 * np.mean(differences, axis=0)
    return maps


def effect_agreement(
    model_maps: Mapping[str, np.ndarray], true_maps: Mapping[str, np.ndarray]
) -> dict[str, dict[str, float | None]]:
    """attribute -> correlation of the maps (None where either map is constant: no effect to correlate),
    their mean absolute sizes and the size ratio model/true (None where the true map is zero).

    Args:
        model_maps: attribute name -> the model's effect map (from :func:`model_effect_maps`); must hold every
            attribute of ``true_maps``.
        true_maps: attribute name -> the phantom's effect map (from :func:`true_effect_maps`); its attributes
            are the ones compared.

    Returns:
        attribute name -> ``{"correlation", "model_size", "true_size", "size_ratio"}``.
    """
    agreement = {}
    for name, true_map in true_maps.items():
        model_map = model_maps[name]
        true_size, model_size = float(np.abs(true_map).mean()), float(np.abs(model_map).mean())
        has_effect = np.ptp(true_map) > 1e-6 and np.ptp(model_map) > 0
        agreement[name] = {
            "correlation": float(np.corrcoef(model_map.ravel(), true_map.ravel())[0, 1]) if has_effect else None,
            "model_size": model_size,
            "true_size": true_size,
            "size_ratio": model_size / true_size if true_size > 1e-6 else None,
        }
    return agreement


def save_effect_grid(
    true_maps: Mapping[str, np.ndarray],
    model_maps: Mapping[str, np.ndarray],
    agreement: Mapping[str, Mapping[str, float | None]],
    labels: Mapping[str, str],
    path: str | Path,
) -> Path:
    """Two rows of signed maps (red: brighter, blue: darker), phantom above model, one column per attribute,
    each map on its own symmetric colour scale.

    Args:
        true_maps: attribute name -> the phantom's effect map; its order gives the columns.
        model_maps: attribute name -> the model's effect map.
        agreement: attribute name -> the scores of :func:`effect_agreement` (its correlation titles the model map).
        labels: attribute name -> the column's title.
        path: the PNG file to write.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(true_maps)
    fig, axes = plt.subplots(2, len(names), figsize=(2.1 * len(names), 4.7), squeeze=False)
    for column, name in enumerate(names):
        correlation = agreement[name]["correlation"]
        scores = "no effect in phantom" if correlation is None else f"r = {correlation:.2f}"
        for row, (image, title) in enumerate(
            ((true_maps[name], f"{labels[name]}\nphantom (truth)"), (model_maps[name], f"model, {scores}"))
        ):
            limit = max(float(np.abs(image).max()), 1e-3)
            axes[row, column].imshow(image, cmap="RdBu_r", vmin=-limit, vmax=limit)
            axes[row, column].set_title(title, fontsize=7)
            axes[row, column].set_axis_off()
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def square_image_size(payload: Mapping[str, Any]) -> tuple[int, int]:
    """The (H, W) a model file was trained at (64 x 64 when unrecorded); phantoms render square images only.

    Args:
        payload: the model file's contents, as :func:`medcf.core.network.load_checkpoint` returns them.

    Returns:
        (H, W), with H == W.

    Raises:
        SchemaError: when the recorded image size is not square.
    """
    height, width = (int(n) for n in payload.get("image_size", (64, 64)))
    if height != width:
        raise SchemaError(f"image_size: the phantom renders square images, the model draws {(height, width)}")
    return height, width


def evaluate(
    model_path: str | Path,
    phantom_kind: str,
    seeds: int = 16,
    steps: int = 25,
    guidance_weight: float = 1.0,
    figure: str | Path | None = None,
    subjects: int = 64,
    device: str = "auto",
    attributes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Effect maps of a medcf model file (sampled on ``device``: auto = CUDA when present) against its phantom;
    optionally saves the figure.

    Args:
        model_path: the medcf model file.
        phantom_kind: the phantom the model learnt (``cxr`` or ``mammo``).
        seeds: starting noises to average the model's maps over (default 16).
        steps: DDIM steps per sample (default 25).
        guidance_weight: classifier-free guidance weight; 1 (default) samples plain conditional.
        figure: PNG to write the phantom and model maps to; None (default) writes none.
        subjects: phantom subjects to average the truth over (default 64).
        device: ``auto`` (default), ``cpu``, ``cuda`` or ``cuda:N``.
        attributes: the attributes to compare (None, the default: all of the phantom's); fewer cost less.

    Returns:
        The settings, the device used and ``attributes``: the agreement of :func:`effect_agreement`.

    Raises:
        SchemaError: when the model's image size is not square, or ``attributes`` names an unknown attribute.
    """
    phantom = make_phantom(phantom_kind)
    chosen = resolve_device(device)
    model, payload = load_checkpoint(model_path, expected_schema=phantom.schema)
    model = model.to(chosen)
    size = square_image_size(payload)
    diffusion = DiffusionConfig(**payload["diffusion"])
    model_maps = model_effect_maps(model, diffusion, seeds, steps, size, guidance_weight, attributes)
    true_maps = true_effect_maps(phantom, subjects, size[0], attributes=attributes)
    agreement = effect_agreement(model_maps, true_maps)
    if figure is not None:
        contrasts = effect_contrasts(phantom.schema, attributes)
        labels = {name: f"{name}: {first[name]} -> {last[name]}" for name, (first, last) in contrasts.items()}
        save_effect_grid(true_maps, model_maps, agreement, labels, figure)
    settings = {"seeds": seeds, "steps": steps, "subjects": subjects, "guidance_weight": guidance_weight}
    return {**settings, "device": str(chosen), "attributes": agreement}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m medcf.measure.attribute_effects``: compare the model's attribute effect maps with the phantom's
    and print the agreement as JSON (:func:`evaluate`).

    Args:
        argv: the arguments (None: ``sys.argv[1:]``).

    Returns:
        The exit status: 0, or 2 on a bad input.
    """
    parser = command_parser("medcf.measure.attribute_effects", __doc__, "medcf model file (models/model.pt)")
    parser.add_argument("--phantom", required=True, choices=("cxr", "mammo"), help="the phantom the model learnt")
    parser.add_argument("--seeds", type=int, default=16, help="starting noises to average the model's map over")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps per sample")
    parser.add_argument("--subjects", type=int, default=64, help="phantom subjects to average the truth over")
    parser.add_argument("--guidance-weight", type=float, default=1.0, help="CFG weight (1: plain conditional)")
    parser.add_argument("--attributes", nargs="+", metavar="NAME", help="the attributes to compare (default: all)")
    parser.add_argument("--figure", help="PNG to write the phantom and model maps to")
    args = parser.parse_args(argv)
    if min(args.seeds, args.steps, args.subjects) < 1:
        parser.error("--seeds, --steps and --subjects must be at least 1")
    return report(
        parser.prog,
        lambda: evaluate(
            args.model,
            args.phantom,
            args.seeds,
            args.steps,
            args.guidance_weight,
            args.figure,
            args.subjects,
            args.device,
            args.attributes,
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
