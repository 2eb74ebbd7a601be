"""The two intensity scales of medcf and the one map between them.

Preparation maps a radiograph's display image, in [0, 1] with bright = attenuating, to the model's scale [-1, 1]
(:func:`to_model_scale`); everything that shows, writes or measures a model-scale image maps it back
(:func:`to_unit_scale`): previews, counterfactual DICOM and PNG files, metrics on the 0-255 scale, sample grids.
Both work on numpy arrays and torch tensors alike and keep their dtype.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

Image = TypeVar("Image", np.ndarray, torch.Tensor)


def to_model_scale(unit: Image) -> Image:
    """A display-scale image ([0, 1]) on the model's scale ([-1, 1]).

    Args:
        unit: array or tensor with values in [0, 1].

    Returns:
        ``2 * unit - 1``, of the same type and dtype.
    """
    return unit * 2.0 - 1.0


def to_unit_scale(image: Image, clip: bool = True) -> Image:
    """A model-scale image ([-1, 1]) on the display scale ([0, 1]).

    Args:
        image: array or tensor on the model's scale; a decoded image may stray outside [-1, 1].
        clip: clip the result to [0, 1] (False: keep what strays outside, for measures that must see it).

    Returns:
        ``(image + 1) / 2``, of the same type and dtype.
    """
    unit = (image + 1.0) / 2.0
    if not clip:
        return unit
    return unit.clamp(0.0, 1.0) if isinstance(unit, torch.Tensor) else np.clip(unit, 0.0, 1.0)
