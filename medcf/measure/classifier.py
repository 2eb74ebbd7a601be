"""The classifier under audit: a TorchScript file or a MONAI bundle folder, fed each prepared image adapted to
its input (size, value range) and read as one probability per image.

Prepared images are (B, 1, H, W) in [-1, 1] at the generator's size. ``size`` resizes them (bilinear,
antialiased) and ``value_range`` maps [-1, 1] linearly onto the classifier's range. The output may be (B,),
(B, 1) or (B, C); with C > 1 one column is audited, chosen by ``index`` or by ``name`` among ``class_names``.
``kind`` says what the numbers are: ``logits`` (a sigmoid per column, the multi-label convention of chest
X-ray classifiers), ``softmax`` (logits of mutually exclusive classes) or ``probabilities`` (used as they are).
Every way a classifier can fail to fit is a one-line ``ClassifierError`` naming the setting to change. The file or
folder is read by :mod:`medcf.measure.classifier_files` (untrusted input: a folder runs no code).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medcf.measure.classifier_files import ClassifierError, load_network

OUTPUT_KINDS = ("logits", "softmax", "probabilities")


def parse_class_names(names: Sequence[str] | str | None) -> tuple[str, ...] | None:
    """``class_names`` as given on the command line: a list, or one comma-separated string.

    Args:
        names: the class names, a comma-separated string of them, or None.

    Returns:
        The names as a tuple of strings (blank parts of a string dropped), or None when ``names`` is None.
    """
    if names is None:
        return None
    if isinstance(names, str):
        names = [part.strip() for part in names.split(",") if part.strip()]
    return tuple(str(name) for name in names)


@dataclass(frozen=True)
class ClassifierSettings:
    """How images go in and what comes out (see the module docstring).

    Attributes:
        size: (height, width) the images are resized to; None (default) keeps the generator's size.
        value_range: (low, high) that [-1, 1] is mapped onto linearly (default (-1, 1): unchanged).
        kind: what the outputs are: ``logits`` (default; a sigmoid per column), ``softmax`` or ``probabilities``.
        index: the audited output column; None (default) when the output has one column or ``name`` picks it.
        name: the audited output by its name among ``class_names``; None (default) to use ``index``.
        class_names: the names of the output columns, a sequence or one comma-separated string (default None).
        threshold: the probability at or above which a prediction is positive, in (0, 1) (default 0.5).

    Raises:
        ClassifierError: when a setting is out of its range: an unknown ``kind``, ``value_range`` not
            low < high, ``size`` not two positive integers, ``name`` not among ``class_names`` or naming
            another column than ``index``, ``threshold`` outside (0, 1).
    """

    size: tuple[int, int] | None = None
    value_range: tuple[float, float] = (-1.0, 1.0)
    kind: str = "logits"
    index: int | None = None
    name: str | None = None
    class_names: tuple[str, ...] | None = None
    threshold: float = 0.5

    def __post_init__(self) -> None:
        # configs and command lines give lists: keep tuples, and class_names may be one comma-separated string
        if self.size is not None:
            object.__setattr__(self, "size", tuple(int(side) for side in self.size))
        object.__setattr__(self, "value_range", tuple(float(v) for v in self.value_range))
        object.__setattr__(self, "class_names", parse_class_names(self.class_names))
        if self.kind not in OUTPUT_KINDS:
            raise ClassifierError(f"output_kind: {self.kind!r} is not one of {', '.join(OUTPUT_KINDS)}")
        low, high = self.value_range
        if not low < high:
            raise ClassifierError(f"classifier_range: {list(self.value_range)} must be [low, high] with low < high")
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise ClassifierError(f"classifier_size: {self.size!r} must be [height, width] of positive integers")
        if self.name is not None:
            if not self.class_names or self.name not in self.class_names:
                raise ClassifierError(
                    f"output_name: {self.name!r} is not among class_names {list(self.class_names or [])}"
                )
            if self.index is not None and self.class_names.index(self.name) != self.index:
                raise ClassifierError(f"output_index {self.index} and output_name {self.name!r} disagree")
        if not 0.0 < self.threshold < 1.0:
            raise ClassifierError(f"threshold: {self.threshold!r} must lie in (0, 1)")

    @property
    def column(self) -> int | None:
        """The audited output column (None: the output has one column)."""
        return self.class_names.index(self.name) if self.name is not None else self.index


class AuditedClassifier:
    """The classifier's probability of the audited output for prepared images.

    Args:
        network: the classifier, in eval mode (see :func:`load_network`).
        settings: how images go in and what comes out (default: :class:`ClassifierSettings`'s defaults).
    """

    def __init__(self, network: nn.Module, settings: ClassifierSettings = ClassifierSettings()) -> None:
        self.network, self.settings = network, settings

    @classmethod
    def load(
        cls, path: str | Path, settings: ClassifierSettings = ClassifierSettings(), device: torch.device | str = "cpu"
    ) -> AuditedClassifier:
        """The classifier at ``path`` (see :func:`load_network`), read with ``settings``.

        Args:
            path: a TorchScript file or a MONAI bundle folder.
            settings: how images go in and what comes out (default: :class:`ClassifierSettings`'s defaults).
            device: where the network is put (default ``cpu``).

        Returns:
            The audited classifier.

        Raises:
            ClassifierError: when the network cannot be loaded.
        """
        return cls(load_network(path, device), settings)

    def adapt(self, images: torch.Tensor) -> torch.Tensor:
        """Prepared images (B, 1, H, W) in [-1, 1] -> the classifier's size and value range.

        Args:
            images: prepared images (B, 1, H, W) in [-1, 1].

        Returns:
            float images (B, 1, h, w) at the settings' size (bilinear, antialiased) and in their value range.
        """
        images = images.float()
        if self.settings.size is not None and tuple(images.shape[-2:]) != tuple(self.settings.size):
            images = F.interpolate(images, size=tuple(self.settings.size), mode="bilinear", antialias=True)
        low, high = self.settings.value_range
        return low + (images + 1.0) * (high - low) / 2.0

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, batch_size: int = 32) -> np.ndarray:
        """One probability per image, (B,) float64.

        Args:
            images: prepared images (B, 1, H, W) in [-1, 1]; moved to the network's device a batch at a time.
            batch_size: images per forward pass (default 32).

        Returns:
            The audited output's probability per image, (B,) float64 (empty when there are no images).

        Raises:
            ClassifierError: when the classifier rejects the adapted input, or its output does not fit the
                settings (shape, column, non-finite values, probabilities outside [0, 1]).
        """
        device = _device_of(self.network)
        parts = [self._batch(images[k : k + batch_size].to(device)) for k in range(0, len(images), batch_size)]
        return np.concatenate(parts) if parts else np.zeros(0)

    def _batch(self, images: torch.Tensor) -> np.ndarray:
        adapted = self.adapt(images)
        try:
            output = self.network(adapted)
        except RuntimeError as error:
            first = str(error).strip().splitlines()[0][:200]
            raise ClassifierError(
                f"classifier rejected an input of shape {list(adapted.shape)} ({first}); "
                "set classifier_size (and classifier_range) to what it was trained on"
            ) from None
        return self._read(output, len(images))

    def _read(self, output: object, batch: int) -> np.ndarray:
        if isinstance(output, (tuple, list)) or not isinstance(output, torch.Tensor):
            raise ClassifierError(f"classifier output is a {type(output).__name__}; the audit needs one tensor")
        output = output.detach().double().cpu()
        if output.ndim == 1:
            output = output[:, None]
        if output.ndim != 2 or output.shape[0] != batch:
            raise ClassifierError(
                f"classifier output has shape {list(output.shape)} for {batch} images; expected ({batch},), "
                f"({batch}, 1) or ({batch}, classes)"
            )
        column = self.settings.column
        classes = output.shape[1]
        if classes > 1 and column is None:
            raise ClassifierError(
                f"classifier gives {classes} outputs per image: set output_index (0-{classes - 1}) or "
                "output_name with class_names"
            )
        if column is not None and not 0 <= column < classes:
            raise ClassifierError(f"output_index {column} is out of range for {classes} output(s) per image")
        if not torch.isfinite(output).all():
            raise ClassifierError("classifier output holds NaN or infinite values")
        kind = self.settings.kind
        if kind == "softmax":
            output = output.softmax(dim=1)
        elif kind == "logits":
            output = output.sigmoid()
        elif ((output < 0) | (output > 1)).any():
            raise ClassifierError(
                "output_kind probabilities, but the classifier gives values outside [0, 1]: use logits"
            )
        return output[:, column if column is not None else 0].numpy()


def _device_of(network: nn.Module) -> torch.device:
    parameter = next(iter(network.parameters()), None)
    return parameter.device if parameter is not None else torch.device("cpu")
