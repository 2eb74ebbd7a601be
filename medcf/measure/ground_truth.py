"""Error against the TRUE counterfactual, which only a phantom has: pure functions on change maps.

Notation (all maps (N, 1, H, W) on the model's [-1, 1] scale, one per image):

- change = counterfactual - null-intervention reconstruction under the same guidance (the reconstruction
  error cancels; what remains is what the intervention did);
- true change = true counterfactual - factual image, both rendered by the phantom and prepared the same way;
- d_A = the unit direction of attribute A: the mean true change map of A's intervention over the images,
  divided by its Euclidean norm.

Then

- truth_error = mean |change - true change| over pixels and images, on the [0, 1] intensity scale
  (half the [-1, 1] difference); 0 = the model changed exactly what the phantom changes;
- target_ratio = sum_i <change_i, d_A> / sum_i <true change_i, d_A>: 1 = the intervened attribute changed by
  the right amount, above 1 = overshoot, below 1 = too weak (NaN where the truth does not move along d_A);
- off-target error along B = mean_i |<change_i, d_B> - <true change_i, d_B>|: the change along an attribute
  nobody intervened on that the truth does not have (attribute amplification), in [0, 1]-scale units times
  the square root of the number of pixels.

Measured per image against the exact counterfactual (../shared/reference/evaluation.md, "Right size, measured
per image against the exact counterfactual"): for image i with factual x_i, the model's null-intervention output
r_i and its counterfactual c_i, the model's change is d_i = c_i - r_i and the truth's t_i = T_i - x_i, with T_i
the phantom's exact counterfactual rendered and prepared like x_i. An image is *changed* when |t_i| > 0 (L2 norm
over its pixels; do(sex=F) leaves female subjects unchanged). Over the changed images:

- exact_target_ratio = sum_i <d_i, t_i> / sum_i |t_i|^2: 1 = the right size, above 1 = overshoot, below 1 =
  under-drawn (NaN when no image changes);
- exact_off_target = mean_i sum_o |<d_i - t_i, u_io>| / |t_i|, u_io the image's own unit exact effect of untouched
  attribute o (only o set to the last value of its sweep minus only o set to the first, divided by its norm;
  o skipped for an image where that effect is zero): movement along attributes nobody intervened on, relative
  to the size of the true change (0 = none; NaN when no changed image has an untouched effect to measure);
- texture_ratio = mean_i (HF(c_i) / HF(T_i)) / (HF(r_i) / HF(x_i)), HF(image) the standard deviation of the
  image minus its Gaussian blur (sigma 1 pixel) inside the breast or lung field (x_i above the background,
  > -0.95, eroded by 2 pixels so that the skin edge does not dominate; the same field for all four images):
  1 = the counterfactual keeps the fine texture decoding keeps, well below 1 = washed out;

and over every image made, changed or not:

- mean_abs_change = mean |d_i| over pixels and images on the [-1, 1] scale: the figure that matters for an
  attribute whose true effect is zero (mammogram race).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from monai.networks.layers import gaussian_1d, separable_filtering
from scipy import ndimage

BACKGROUND = -0.95  # the [-1, 1] value above which a pixel belongs to the breast or lung field
FIELD_EROSION = 2  # pixels taken off the field's edge
TEXTURE_SIGMA = 1.0  # the Gaussian blur (pixels) whose residual is the high-frequency texture
_TINY = 1e-9


def unit_direction(true_change: torch.Tensor) -> torch.Tensor:
    """The mean of the true change maps (N, ...) divided by its norm, shape (...); zeros where it is zero.

    Args:
        true_change: the true change maps, (N, ...).

    Returns:
        The unit direction d_A, float64 (...).
    """
    mean = true_change.double().mean(0)
    norm = mean.norm()
    return mean / norm if norm > 1e-12 else torch.zeros_like(mean)


def projections(maps: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """<map_i, direction> for each map (N,), on the [0, 1] scale.

    Args:
        maps: (N, ...) change maps on the [-1, 1] scale.
        direction: a unit direction with as many elements as one map.

    Returns:
        (N,) float64, half the inner product.
    """
    return (maps.double().flatten(1) @ direction.double().flatten()) / 2


def truth_error(change: torch.Tensor, true_change: torch.Tensor) -> float:
    """Mean absolute difference of the model's and the true change maps, on the [0, 1] scale.

    Args:
        change: the model's change maps, (N, 1, H, W) on [-1, 1].
        true_change: the true change maps, same shape.

    Returns:
        The mean absolute difference halved (0 = the model changed exactly what the phantom changes).
    """
    return float((change.double() - true_change.double()).abs().mean() / 2)


def target_ratio(change: torch.Tensor, true_change: torch.Tensor, direction: torch.Tensor) -> float:
    """Size of the model's change along ``direction`` over the true size (NaN when the truth has none).

    Args:
        change: the model's change maps, (N, 1, H, W).
        true_change: the true change maps, same shape.
        direction: the intervened attribute's unit direction d_A (see :func:`unit_direction`).

    Returns:
        sum_i <change_i, d_A> / sum_i <true change_i, d_A>: 1 = the right amount; NaN when the denominator is
        below 1e-9 in size.
    """
    true_size = float(projections(true_change, direction).sum())
    if abs(true_size) < 1e-9:
        return math.nan
    return float(projections(change, direction).sum()) / true_size


def off_target_error(change: torch.Tensor, true_change: torch.Tensor, direction: torch.Tensor) -> float:
    """Mean |<change, d_B> - <true change, d_B>| over images: movement along B that the truth lacks.

    Args:
        change: the model's change maps, (N, 1, H, W).
        true_change: the true change maps, same shape.
        direction: the unit direction d_B of an attribute nobody intervened on.

    Returns:
        The mean absolute difference of the projections, on the [0, 1] scale (0 = none).
    """
    return float((projections(change, direction) - projections(true_change, direction)).abs().mean())


def changed_images(true_change: torch.Tensor) -> torch.Tensor:
    """Which images the intervention changes.

    Args:
        true_change: the true change maps t_i, (N, ...).

    Returns:
        (N,) bool: |t_i| > 0 (above 1e-9, float rounding aside).
    """
    return true_change.double().flatten(1).norm(dim=1) > _TINY


def unit_maps(maps: torch.Tensor) -> torch.Tensor:
    """Each map divided by its own L2 norm.

    Args:
        maps: (N, ...) one map per image.

    Returns:
        (N, ...) float64 unit maps; all zeros for a map that is zero.
    """
    maps = maps.double()
    norms = maps.flatten(1).norm(dim=1)
    scale = torch.where(norms > _TINY, 1 / norms.clamp_min(_TINY), torch.zeros_like(norms))
    return maps * scale.view(-1, *([1] * (maps.dim() - 1)))


def exact_target_ratio(change: torch.Tensor, true_change: torch.Tensor) -> float:
    """sum_i <d_i, t_i> / sum_i |t_i|^2 over the images the intervention changes.

    Args:
        change: the model's change maps d_i = c_i - r_i, (N, 1, H, W).
        true_change: the true change maps t_i = T_i - x_i, same shape.

    Returns:
        1 for the right size, above 1 for overshoot, below 1 for under-drawn; NaN when no image changes.
    """
    moved = changed_images(true_change)
    if not bool(moved.any()):
        return math.nan
    d, t = change.double().flatten(1)[moved], true_change.double().flatten(1)[moved]
    return float((d * t).sum() / (t * t).sum())


def exact_off_target(
    change: torch.Tensor, true_change: torch.Tensor, unit_effects: Mapping[str, torch.Tensor]
) -> float:
    """mean_i sum_o |<d_i - t_i, u_io>| / |t_i| over the images the intervention changes.

    Args:
        change: the model's change maps d_i, (N, 1, H, W).
        true_change: the true change maps t_i, same shape.
        unit_effects: untouched attribute o -> its per-image unit exact effects u_io, (N, 1, H, W) (zero maps
            where the attribute draws nothing on an image: skipped there).

    Returns:
        The off-target movement relative to the true change's size (0 = none); NaN when no image changes or no
        changed image has a non-zero untouched effect.
    """
    moved = changed_images(true_change)
    if not bool(moved.any()):
        return math.nan
    error = (change.double() - true_change.double()).flatten(1)[moved]
    size = true_change.double().flatten(1)[moved].norm(dim=1)
    total, measured = torch.zeros_like(size), False
    for effect in unit_effects.values():
        u = effect.double().flatten(1)[moved]
        present = u.norm(dim=1) > _TINY
        measured = measured or bool(present.any())
        total += torch.where(present, (error * u).sum(1).abs(), torch.zeros_like(size))
    return float((total / size).mean()) if measured else math.nan


def field_mask(factual: torch.Tensor, background: float = BACKGROUND, erosion: int = FIELD_EROSION) -> torch.Tensor:
    """The breast or lung field of each factual image: above the background, eroded off its edge.

    Args:
        factual: the factual images x_i, (N, 1, H, W) on [-1, 1].
        background: the value above which a pixel belongs to the field.
        erosion: pixels taken off the field's edge (and off the image's border, which erosion treats as
            background).

    Returns:
        (N, 1, H, W) bool.
    """
    above = (factual > background).cpu().numpy()
    eroded = [ndimage.binary_erosion(image[0], iterations=erosion) if erosion else image[0] for image in above]
    return torch.from_numpy(np.stack(eroded)[:, None])


def high_frequency(images: torch.Tensor, field: torch.Tensor, sigma: float = TEXTURE_SIGMA) -> torch.Tensor:
    """HF per image: the standard deviation of the image minus its Gaussian blur, inside its field.

    The blur is MONAI's Gaussian kernel (``gaussian_1d``, as ``GaussianFilter``) applied separably with the image
    reflected at its border (not zero-padded), so that no dark frame enters the residual.

    Args:
        images: (N, 1, H, W), H and W above the kernel's half-width (4 sigma).
        field: (N, 1, H, W) bool, the pixels measured.
        sigma: the blur's standard deviation in pixels.

    Returns:
        (N,) float64; NaN for an image whose field has fewer than two pixels.
    """
    images = images.double()
    kernel = gaussian_1d(torch.tensor(float(sigma), dtype=torch.float64), truncated=4.0).to(images)
    residual = images - separable_filtering(images, [kernel, kernel], mode="reflect")
    nan = torch.tensor(math.nan).to(residual)
    field = field.to(residual.device)
    return torch.stack([r[m].std() if int(m.sum()) > 1 else nan for r, m in zip(residual, field, strict=True)])


def texture_ratio(
    counterfactual: torch.Tensor,
    reference: torch.Tensor,
    factual: torch.Tensor,
    true_change: torch.Tensor,
    sigma: float = TEXTURE_SIGMA,
) -> float:
    """mean_i (HF(c_i) / HF(T_i)) / (HF(r_i) / HF(x_i)) over the images the intervention changes.

    Args:
        counterfactual: the model's counterfactuals c_i, (N, 1, H, W) on [-1, 1].
        reference: the model's null-intervention outputs r_i, same shape.
        factual: the phantom's factual renders x_i, same shape (their field is measured in all four images).
        true_change: t_i, so that T_i = x_i + t_i.
        sigma: the blur of HF in pixels.

    Returns:
        1 = the counterfactual keeps as much fine texture relative to the truth as decoding keeps; well below
        1 = washed out. NaN when no changed image has a finite ratio (no field, or a flat truth).
    """
    moved = changed_images(true_change)
    if not bool(moved.any()):
        return math.nan
    factual = factual[moved].double()
    field = field_mask(factual)

    def hf(images: torch.Tensor) -> torch.Tensor:
        return high_frequency(images, field, sigma)

    truth = factual + true_change[moved].double()
    ratios = (hf(counterfactual[moved]) / hf(truth)) / (hf(reference[moved]) / hf(factual))
    ratios = ratios[torch.isfinite(ratios)]
    return float(ratios.mean()) if len(ratios) else math.nan


def mean_abs_change(change: torch.Tensor) -> float:
    """Mean |d_i| over every pixel of every image made, on the [-1, 1] scale.

    Args:
        change: the model's change maps d_i = c_i - r_i, (N, 1, H, W).

    Returns:
        The mean absolute change (NaN for no images).
    """
    return float(change.double().abs().mean()) if change.numel() else math.nan
