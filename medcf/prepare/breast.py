"""Image analysis for mammograms: the breast mask (which removes burned-in labels), which side the chest
wall is on, and the crop box around the breast."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: display value above which a pixel may be tissue (about 5/255, as in the EMBED preprocessing)
TISSUE_THRESHOLD = 5.0 / 255.0


def breast_mask(image: np.ndarray, threshold: float = TISSUE_THRESHOLD) -> np.ndarray:
    """The largest connected bright region with its holes filled: the breast. Burned-in text, markers off
    the skin and film labels are separate components and fall away.

    Args:
        image: the display image (H, W), [0, 1].
        threshold: display value above which a pixel may be tissue (default :data:`TISSUE_THRESHOLD`).

    Returns:
        A boolean mask (H, W), 8-connected; all False when no pixel is above ``threshold``.
    """
    candidates = image > threshold
    labels, count = ndimage.label(candidates, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return np.zeros_like(candidates)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return ndimage.binary_fill_holes(labels == int(np.argmax(sizes)))


def chest_wall_on_right(mask: np.ndarray) -> bool:
    """True when the breast's tissue mass lies in the right half (chest wall on the image's right).

    Args:
        mask: the breast mask (H, W).

    Returns:
        Whether the mask's mean column lies right of the centre; False for an empty mask.
    """
    columns = np.nonzero(mask)[1]
    return bool(columns.mean() > (mask.shape[1] - 1) / 2.0) if columns.size else False


def crop_box(mask: np.ndarray, aspect: float, margin: float = 0.02) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) around the mask with a small margin, widened or heightened to the output
    aspect ratio (height / width) and anchored at the chest wall (the left edge, after flipping).

    Args:
        mask: the breast mask (H, W), chest wall on the left, with at least one pixel set.
        aspect: the output's height / width.
        margin: the margin above, below and right of the mask, as a fraction of the mask's height (rows) and
            width (columns); none on the left (default 0.02).

    Returns:
        The box in the mask's pixels; bottom and right are exclusive, left is always 0.
    """
    rows, columns = np.nonzero(mask)
    height, width = mask.shape
    pad_r, pad_c = int(margin * height), int(margin * width)
    top, bottom = max(rows.min() - pad_r, 0), min(rows.max() + 1 + pad_r, height)
    left, right = 0, min(columns.max() + 1 + pad_c, width)
    box_h, box_w = bottom - top, right - left
    if box_h / box_w > aspect:  # too tall: widen towards the nipple side
        right = min(left + int(round(box_h / aspect)), width)
    else:  # too wide: grow vertically around the centre
        want = min(int(round(box_w * aspect)), height)
        centre = (top + bottom) // 2
        top = int(np.clip(centre - want // 2, 0, height - want))
        bottom = top + want
    return top, bottom, left, right
