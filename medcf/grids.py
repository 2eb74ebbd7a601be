"""Counterfactual grids for people: one row per image, columns factual | counterfactual | |difference| for each
intervention (what the inference job logs to MLflow and writes under ``OUT/grids/``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from medcf.atomic import atomic_path


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Save a matplotlib figure as a PNG atomically (a temporary file renamed into place) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_path(path) as temporary:
            fig.savefig(temporary, dpi=dpi)
    finally:
        plt.close(fig)
    return path


def counterfactual_grid(
    factual: Sequence[np.ndarray],
    counterfactuals: Mapping[str, Sequence[np.ndarray | None]],
    path: str | Path,
    row_labels: Sequence[str] | None = None,
) -> Path:
    """Save a labelled grid PNG atomically.

    Args:
        factual: one image per row on a [0, 1] scale.
        counterfactuals: intervention text -> one image per row on [0, 1] (None: not made, left blank).
        path: the PNG to write.
        row_labels: a short label per row (e.g. the source file).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name, images in counterfactuals.items():
        if len(images) != len(factual):
            raise ValueError(f"{name}: {len(images)} counterfactuals for {len(factual)} factual images")
    columns = 1 + 2 * len(counterfactuals)
    fig, axes = plt.subplots(len(factual), columns, figsize=(1.6 * columns, 1.7 * len(factual) + 0.3), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for row, image in enumerate(factual):
        axes[row, 0].imshow(image, cmap="gray", vmin=0, vmax=1)
        if row_labels is not None:
            axes[row, 0].text(
                0.5, -0.03, row_labels[row][-30:], fontsize=5, ha="center", va="top", transform=axes[row, 0].transAxes
            )
        for k, images in enumerate(counterfactuals.values()):
            counterfactual = images[row]
            if counterfactual is None:
                continue
            axes[row, 1 + 2 * k].imshow(counterfactual, cmap="gray", vmin=0, vmax=1)
            axes[row, 2 + 2 * k].imshow(np.abs(counterfactual - image), cmap="magma", vmin=0, vmax=0.25)
    axes[0, 0].set_title("factual", fontsize=7)
    for k, name in enumerate(counterfactuals):
        axes[0, 1 + 2 * k].set_title(name, fontsize=7)
        axes[0, 2 + 2 * k].set_title("|difference| (0-0.25)", fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
