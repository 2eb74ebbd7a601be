"""Small numerical building blocks for rendering: coordinate grids, soft masks, correlated noise fields."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(y, x)`` in [-1, 1], y growing downwards; float32, shape (size, size)."""
    axis = ((np.arange(size, dtype=np.float32) + 0.5) / size) * 2.0 - 1.0
    return np.meshgrid(axis, axis, indexing="ij")


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    """0 below ``edge0``, 1 above ``edge1``, a smooth cubic in between (edges may be reversed)."""
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def soft_inside(signed_distance: np.ndarray, width: float) -> np.ndarray:
    """Soft indicator of ``signed_distance > 0`` (positive inside), blurred over ``width``."""
    return smoothstep(-width, width, signed_distance)


def power_law_noise(
    rng: np.random.Generator, size: int, beta: float, low_cut: float = 1.0, high_cut: float | None = None
) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian field with power spectrum ~ 1 / f**beta.

    ``low_cut`` and ``high_cut`` are in cycles per image and bound the band that carries power.
    """
    white = rng.standard_normal((size, size)).astype(np.float32)
    spectrum = np.fft.rfft2(white)
    fy = np.fft.fftfreq(size)[:, None] * size
    fx = np.fft.rfftfreq(size)[None, :] * size
    f = np.sqrt(fx * fx + fy * fy)
    gain = np.where(f >= low_cut, np.maximum(f, low_cut) ** (-beta / 2.0), 0.0)
    if high_cut is not None:
        gain = gain * np.exp(-((f / high_cut) ** 2))
    field = np.fft.irfft2(spectrum * gain, s=(size, size)).astype(np.float32)
    field -= field.mean()
    std = field.std()
    return field / std if std > 0 else field


def ridges(field: np.ndarray, width: float) -> np.ndarray:
    """Thin curvilinear structures along the zero crossings of a smooth field (vessels, ligaments)."""
    return np.exp(-((field / width) ** 2))


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with ``sigma`` in pixels (no-op for sigma <= 0)."""
    return ndimage.gaussian_filter(image, sigma, mode="nearest") if sigma > 0 else image


def unsharp(image: np.ndarray, sigma: float, amount: float) -> np.ndarray:
    """Edge enhancement as done by CR/DR post-processing: image + amount * (image - blur(image))."""
    return image + amount * (image - blur(image, sigma))


def blob(y: np.ndarray, x: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    """Thickness profile of an ellipsoid seen in projection: sqrt(1 - r^2) inside, 0 outside."""
    r2 = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2
    return np.sqrt(np.clip(1.0 - r2, 0.0, None))


def lerp(low: float, high: float, u: float) -> float:
    """Map a factor in (0, 1) linearly onto [low, high]."""
    return low + (high - low) * u
