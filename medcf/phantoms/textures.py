"""Small numerical building blocks for rendering: coordinate grids, soft masks, correlated noise fields."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(y, x)`` in [-1, 1], y growing downwards; float32, shape (size, size).

    Args:
        size: image side in pixels.

    Returns:
        The ``y`` and ``x`` coordinate arrays.
    """
    axis = ((np.arange(size, dtype=np.float32) + 0.5) / size) * 2.0 - 1.0
    return np.meshgrid(axis, axis, indexing="ij")


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    """0 below ``edge0``, 1 above ``edge1``, a smooth cubic in between (edges may be reversed).

    Args:
        edge0: value mapped to 0.
        edge1: value mapped to 1; must differ from ``edge0``.
        x: values to map.

    Returns:
        Values in [0, 1], shaped like ``x``.
    """
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def soft_inside(signed_distance: np.ndarray, width: float) -> np.ndarray:
    """Soft indicator of ``signed_distance > 0`` (positive inside), blurred over ``width``.

    Args:
        signed_distance: signed distance to the boundary, positive inside.
        width: half-width of the transition, in the units of ``signed_distance``.

    Returns:
        Values in [0, 1]: 0 beyond ``width`` outside, 1 beyond ``width`` inside.
    """
    return smoothstep(-width, width, signed_distance)


def power_law_noise(
    rng: np.random.Generator, size: int, beta: float, low_cut: float = 1.0, high_cut: float | None = None
) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian field with power spectrum ~ 1 / f**beta.

    ``low_cut`` and ``high_cut`` are in cycles per image and bound the band that carries power.

    Args:
        rng: random generator for the white noise.
        size: image side in pixels.
        beta: spectral exponent; larger values give smoother fields.
        low_cut: frequencies below it carry no power (default 1.0, which removes the mean).
        high_cut: if given, power is damped by ``exp(-(f / high_cut)**2)`` above it; None keeps every
            frequency.

    Returns:
        The float32 field, shape (size, size).
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
    """Thin curvilinear structures along the zero crossings of a smooth field (vessels, ligaments).

    Args:
        field: smooth field whose zero crossings become ridges.
        width: ridge width, in the units of ``field``.

    Returns:
        ``exp(-(field / width)**2)``: 1 on the zero crossings, falling off away from them.
    """
    return np.exp(-((field / width) ** 2))


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with ``sigma`` in pixels (no-op for sigma <= 0).

    Args:
        image: the image to blur.
        sigma: standard deviation of the Gaussian, in pixels.

    Returns:
        The blurred image (``image`` itself when ``sigma <= 0``).
    """
    return ndimage.gaussian_filter(image, sigma, mode="nearest") if sigma > 0 else image


def unsharp(image: np.ndarray, sigma: float, amount: float) -> np.ndarray:
    """Edge enhancement as done by CR/DR post-processing: image + amount * (image - blur(image)).

    Args:
        image: the image to enhance.
        sigma: blur standard deviation in pixels, the scale of the enhanced detail.
        amount: gain of the detail added back.

    Returns:
        The enhanced image.
    """
    return image + amount * (image - blur(image, sigma))


def blob(y: np.ndarray, x: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    """Thickness profile of an ellipsoid seen in projection: sqrt(1 - r^2) inside, 0 outside.

    Args:
        y: y coordinates (e.g. from :func:`grid`).
        x: x coordinates, shaped like ``y``.
        cy: y of the centre.
        cx: x of the centre.
        ry: semi-axis along y.
        rx: semi-axis along x.

    Returns:
        The profile, 1 at the centre, shaped like ``y``.
    """
    r2 = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2
    return np.sqrt(np.clip(1.0 - r2, 0.0, None))


def lerp(low: float, high: float, u: float) -> float:
    """Map a factor in (0, 1) linearly onto [low, high].

    Args:
        low: value at ``u = 0``.
        high: value at ``u = 1``.
        u: the factor.

    Returns:
        ``low + (high - low) * u``.
    """
    return low + (high - low) * u
