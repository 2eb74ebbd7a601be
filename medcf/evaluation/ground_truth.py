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
"""

from __future__ import annotations

import math

import torch


def unit_direction(true_change: torch.Tensor) -> torch.Tensor:
    """The mean of the true change maps (N, ...) divided by its norm, shape (...); zeros where it is zero."""
    mean = true_change.double().mean(0)
    norm = mean.norm()
    return mean / norm if norm > 1e-12 else torch.zeros_like(mean)


def projections(maps: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """<map_i, direction> for each map (N,), on the [0, 1] scale."""
    return (maps.double().flatten(1) @ direction.double().flatten()) / 2


def truth_error(change: torch.Tensor, true_change: torch.Tensor) -> float:
    """Mean absolute difference of the model's and the true change maps, on the [0, 1] scale."""
    return float((change.double() - true_change.double()).abs().mean() / 2)


def target_ratio(change: torch.Tensor, true_change: torch.Tensor, direction: torch.Tensor) -> float:
    """Size of the model's change along ``direction`` over the true size (NaN when the truth has none)."""
    true_size = float(projections(true_change, direction).sum())
    if abs(true_size) < 1e-9:
        return math.nan
    return float(projections(change, direction).sum()) / true_size


def off_target_error(change: torch.Tensor, true_change: torch.Tensor, direction: torch.Tensor) -> float:
    """Mean |<change, d_B> - <true change, d_B>| over images: movement along B that the truth lacks."""
    return float((projections(change, direction) - projections(true_change, direction)).abs().mean())
