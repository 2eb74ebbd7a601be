"""Preview grids: factual phantom images beside their exact counterfactuals, one per attribute."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medcf.core.attributes import Attribute, AttributeValue  # noqa: E402
from medcf.outputs.grids import save_figure  # noqa: E402
from medcf.phantoms.scm import Phantom, Subject  # noqa: E402


def showcase_intervention(attribute: Attribute, value: AttributeValue) -> AttributeValue:
    """A telling counterfactual value: the other end of a continuous range, the next category, or the
    far category of an ordered one (density A/B -> D, C/D -> A).

    Args:
        attribute: the attribute to intervene on.
        value: the subject's factual value of it.

    Returns:
        For a continuous attribute, 10 below the top of the range if ``value`` is in the lower half, else 7
        above the bottom (rounded to 0.1). For a categorical one with more than 3 values, the last value if
        ``value`` is in the first half, else the first; otherwise the next value, wrapping around.
    """
    if attribute.kind == "continuous":
        middle = (attribute.low + attribute.high) / 2
        return round(attribute.high - 10 if float(value) < middle else attribute.low + 7, 1)
    values = attribute.values
    index = values.index(str(value))
    if len(values) > 3:
        return values[-1] if index < len(values) / 2 else values[0]
    return values[(index + 1) % len(values)]


def _describe(subject: Subject) -> str:
    return ", ".join(f"{v:.0f}" if isinstance(v, float) else str(v) for v in subject.attributes.values())


def _changes(factual: Subject, counterfactual: Subject) -> str:
    changed = [
        f"{k}={v:.0f}" if isinstance(v, float) else f"{k}={v}"
        for k, v in counterfactual.attributes.items()
        if v != factual.attributes[k]
    ]
    return "do(" + ", ".join(changed) + ")"


def preview_grid(phantom: Phantom, subjects: list[Subject], size: int, path: str | Path) -> Path:
    """Save a grid: one row per subject, the factual image then one exact counterfactual per attribute.

    Each counterfactual's title lists every attribute that changed, descendants included; the image
    under it is the phantom's true counterfactual (same exogenous noise).

    Args:
        phantom: the phantom that renders the images.
        subjects: the subjects, one row each.
        size: image side in pixels.
        path: PNG file to write.

    Returns:
        ``path``.
    """
    names = phantom.schema.names
    fig, axes = plt.subplots(
        len(subjects), len(names) + 1, figsize=(2.2 * (len(names) + 1), 2.45 * len(subjects)), squeeze=False
    )
    for row, subject in zip(axes, subjects, strict=True):
        cells = [("factual\n" + _describe(subject), phantom.render(subject, size))]
        for name in names:
            target = showcase_intervention(phantom.schema[name], subject.attributes[name])
            counterfactual, image = phantom.true_counterfactual(subject, {name: target}, size)
            cells.append((_changes(subject, counterfactual), image))
        for ax, (title, image) in zip(row, cells, strict=True):
            ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="lanczos")
            ax.set_title(title, fontsize=7)
            ax.set_axis_off()
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def preview_subjects(phantom: Phantom, rows: int, seed: int) -> list[Subject]:
    """``rows`` subjects drawn from the phantom's population.

    Args:
        phantom: the phantom to sample from.
        rows: number of subjects.
        seed: seed of the random generator.

    Returns:
        The subjects.
    """
    return phantom.sample(rows, np.random.default_rng(seed))


def true_sweeps(phantom: Phantom, subject: Subject, size: int) -> tuple[dict, dict[str, list[str]]]:
    """The phantom's own answer to a model's sample grid: the attribute sweeps of
    :func:`medcf.training.samples.attribute_sweeps` applied as interventions to one subject (exact
    counterfactuals with the subject's exogenous noise). Returns (attribute -> images (V, 1, H, W) on
    [-1, 1], attribute -> value labels).

    Args:
        phantom: the phantom that renders the counterfactuals.
        subject: the factual subject.
        size: image side in pixels.

    Returns:
        The images of each sweep as a float32 tensor, and the sweep's values as strings, both by attribute.
    """
    import torch

    from medcf.training.samples import attribute_sweeps

    sweeps, labels = {}, {}
    for name, rows in attribute_sweeps(phantom.schema).items():
        images = [phantom.true_counterfactual(subject, row, size)[1] for row in rows]
        sweeps[name] = torch.from_numpy(2 * np.stack(images)[:, None].astype(np.float32) - 1)
        labels[name] = [str(row[name]) for row in rows]
    return sweeps, labels


def true_sweep_grid(phantom: Phantom, subject: Subject, size: int, path: str | Path) -> Path:
    """:func:`true_sweeps` drawn like a model's sample grid (samples, then |difference| rows).

    Args:
        phantom: the phantom that renders the counterfactuals.
        subject: the factual subject.
        size: image side in pixels.
        path: PNG file to write.

    Returns:
        ``path``.
    """
    from medcf.training.samples import save_sweep_grid

    return save_sweep_grid(*true_sweeps(phantom, subject, size), path)
