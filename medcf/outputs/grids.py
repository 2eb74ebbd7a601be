"""Counterfactual grids for people: one row per image, columns factual | counterfactual | |difference| for each
intervention (what the inference job logs to MLflow and writes under ``OUT/grids/``); a counterfactual that was
not made shows why in its cell."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from medcf.runtime.files import atomic_path


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Save a matplotlib figure as a PNG atomically (a temporary file renamed into place) and close it.

    Args:
        fig: the matplotlib figure; closed also when saving fails.
        path: the PNG file to create or replace.
        dpi: resolution in dots per inch (default 100).

    Returns:
        ``path``.
    """
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
    counterfactuals: Mapping[str, Sequence[np.ndarray | str | None]],
    path: str | Path,
    row_labels: Sequence[str] | None = None,
) -> Path:
    """Save a labelled grid PNG atomically (the figure of :func:`counterfactual_figure`).

    Args:
        factual: one image per row on a [0, 1] scale.
        counterfactuals: intervention text -> per row an image on [0, 1], the reason it was not made (text), or
            None (see :func:`counterfactual_figure`).
        path: the PNG file to create or replace (written at 110 dpi).
        row_labels: a short label per row (e.g. the source file).

    Returns:
        ``path``.

    Raises:
        ValueError: an intervention has not one entry per factual image.
    """
    return save_figure(counterfactual_figure(factual, counterfactuals, row_labels), path, dpi=110)


#: Characters per line and lines of the text printed in a cell whose counterfactual was not made.
CELL_TEXT_WIDTH, CELL_TEXT_LINES = 30, 8


def counterfactual_figure(
    factual: Sequence[np.ndarray],
    counterfactuals: Mapping[str, Sequence[np.ndarray | str | None]],
    row_labels: Sequence[str] | None = None,
):
    """The grid as a matplotlib figure: per row the factual image, then counterfactual and |difference| per
    intervention.

    Args:
        factual: one image per row on a [0, 1] scale.
        counterfactuals: intervention text -> per row an image on [0, 1], or for a counterfactual that was not
            made the reason as text (printed, wrapped, in its cell), or None (left blank).
        row_labels: a short label per row (e.g. the source file).

    Returns:
        The figure (the caller closes it, e.g. with :func:`save_figure`).

    Raises:
        ValueError: an intervention has not one entry per factual image.
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
            if isinstance(counterfactual, str):  # not made: why, in the counterfactual's cell
                cell = axes[row, 1 + 2 * k]
                cell.text(
                    0.5, 0.5, cell_text(counterfactual), fontsize=6, ha="center", va="center", transform=cell.transAxes
                )
                continue
            axes[row, 1 + 2 * k].imshow(counterfactual, cmap="gray", vmin=0, vmax=1)
            axes[row, 2 + 2 * k].imshow(np.abs(counterfactual - image), cmap="magma", vmin=0, vmax=0.25)
    axes[0, 0].set_title("factual", fontsize=7)
    for k, name in enumerate(counterfactuals):
        axes[0, 1 + 2 * k].set_title(name, fontsize=7)
        axes[0, 2 + 2 * k].set_title("|difference| (0-0.25)", fontsize=7)
    fig.tight_layout()
    return fig


def cell_text(text: str) -> str:
    """``text`` wrapped to fit a grid cell: :data:`CELL_TEXT_WIDTH` characters a line, at most
    :data:`CELL_TEXT_LINES` lines (the last ending in "..." when cut).

    Args:
        text: the text, e.g. why a counterfactual was not made; runs of whitespace count as one space.

    Returns:
        The lines joined by newlines.
    """
    lines = textwrap.wrap(" ".join(text.split()), CELL_TEXT_WIDTH, break_on_hyphens=False) or [""]
    if len(lines) > CELL_TEXT_LINES:
        lines = [
            *lines[: CELL_TEXT_LINES - 1],
            textwrap.shorten(" ".join(lines[CELL_TEXT_LINES - 1 :]), CELL_TEXT_WIDTH, placeholder=" ..."),
        ]
    return "\n".join(lines)
