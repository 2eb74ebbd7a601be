"""The search for the guidance weight whose counterfactuals are the right size: the weight w with ratio R(w) = 1
(:mod:`medcf.measure.matching`, :mod:`medcf.measure.pixel_effect`) for a ratio that grows with the weight, by
secant steps, bracketing and interpolating between the two closest weights tried (:func:`search_weight`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WeightSearch:
    """The outcome of :func:`search_weight`.

    Attributes:
        weight: the chosen weight.
        status: ``matched`` (R = 1 bracketed, or met within the tolerance) or ``bound`` (R = 1 lies beyond the
            search bounds; the bound closest to it).
        tried: weight -> R for every weight evaluated, in the order tried.
    """

    weight: float
    status: str
    tried: dict[float, float]


def search_weight(
    ratio_at: Callable[[float], float],
    start: Sequence[float] = (1.0, 2.0),
    bounds: tuple[float, float] = (0.0, 8.0),
    tolerance: float = 0.05,
    max_evaluations: int = 5,
) -> WeightSearch:
    """The weight w with shift ratio R(w) = 1, for an R that grows with w.

    Starts from two weights, then takes secant steps (clipped to ``bounds``) until |R - 1| <= ``tolerance`` or
    ``max_evaluations`` weights are spent; the answer interpolates linearly between the two tried weights that
    bracket R = 1 and lie closest to it.

    Args:
        ratio_at: w -> R(w) (a decode of the calibration images at weight w, measured).
        start: the first two weights.
        bounds: the weights allowed (low, high).
        tolerance: |R - 1| accepted without a further step.
        max_evaluations: at most this many weights are decoded.

    Returns:
        The chosen weight, its status and every weight tried.
    """
    low, high = bounds
    if not (0 <= low < high) or len(start) != 2 or max_evaluations < 2:
        raise ValueError("search_weight: needs 0 <= low < high, two start weights and max_evaluations >= 2")
    tried: dict[float, float] = {}
    for w in start:
        tried[float(min(max(w, low), high))] = ratio_at(float(min(max(w, low), high)))
    while len(tried) < max_evaluations:
        best = min(tried, key=lambda w: abs(tried[w] - 1) if math.isfinite(tried[w]) else math.inf)
        if math.isfinite(tried[best]) and abs(tried[best] - 1) <= tolerance:
            break
        proposal = _next_weight(tried, low, high)
        if proposal is None or any(abs(proposal - w) < 1e-3 for w in tried):
            break
        tried[proposal] = ratio_at(proposal)
    return _choose(tried, low, high, tolerance)


def grows_with_weight(tried: Mapping[float, float], tolerance: float) -> bool:
    """Whether a ratio responds to the weight as :func:`search_weight` assumes: R at the largest tried weight
    exceeds R at the smallest by more than ``tolerance`` (both finite).

    Args:
        tried: weight -> R, as :attr:`WeightSearch.tried` holds it.
        tolerance: the rise a response needs (the search's tolerance on |R - 1|).

    Returns:
        False for a flat or falling R, or fewer than two finite points.
    """
    points = sorted((w, r) for w, r in tried.items() if math.isfinite(r))
    return len(points) >= 2 and points[-1][1] - points[0][1] > tolerance


def match_weight(
    ratio_at: Callable[[float, str], float],
    measure: str,
    fallback: str | None = None,
    **search: Any,
) -> tuple[WeightSearch, str]:
    """:func:`search_weight` on ``measure``; where that ratio does not rise with the weight but ``fallback`` does at
    the same weights (:func:`grows_with_weight`), the search is run again on ``fallback``.

    Args:
        ratio_at: (w, measure) -> that ratio of the decode at w; it should cache its decodes, since the fallback
            reads the weights already tried again.
        measure: the ratio matched first (e.g. ``pixel_ratio``).
        fallback: the ratio matched where ``measure`` does not respond (e.g. ``shift_ratio``); None: none.
        search: ``start``, ``bounds``, ``tolerance``, ``max_evaluations`` of :func:`search_weight`.

    Returns:
        The search matched and the name of its ratio.
    """
    found = search_weight(lambda w: ratio_at(w, measure), **search)
    tolerance = search.get("tolerance", 0.05)
    if fallback is None or grows_with_weight(found.tried, tolerance):
        return found, measure
    if not grows_with_weight({w: ratio_at(w, fallback) for w in found.tried}, tolerance):
        return found, measure
    return search_weight(lambda w: ratio_at(w, fallback), **search), fallback


def _bracket(tried: Mapping[float, float]) -> tuple[float, float] | None:
    """The two adjacent tried weights whose R straddle 1 (the pair closest to R = 1), or None."""
    points = sorted((w, r) for w, r in tried.items() if math.isfinite(r))
    pairs = [(a, b) for a, b in zip(points, points[1:], strict=False) if (a[1] - 1) * (b[1] - 1) <= 0]
    if not pairs:
        return None
    a, b = min(pairs, key=lambda pair: abs(pair[0][1] - 1) + abs(pair[1][1] - 1))
    return a[0], b[0]


def _interpolate(tried: Mapping[float, float], a: float, b: float) -> float:
    ra, rb = tried[a], tried[b]
    if ra == rb:
        return a
    return a + (1 - ra) * (b - a) / (rb - ra)


def _next_weight(tried: Mapping[float, float], low: float, high: float) -> float | None:
    bracket = _bracket(tried)
    if bracket is not None:
        return _interpolate(tried, *bracket)
    points = sorted((w, r) for w, r in tried.items() if math.isfinite(r))
    if len(points) < 2:
        return None
    (w1, r1), (w2, r2) = sorted(points, key=lambda p: abs(p[1] - 1))[:2]
    if r1 == r2 or (r2 - r1) / (w2 - w1) <= 0:  # flat or falling: step towards the side that should help
        step = high if r1 < 1 else low
        return None if any(abs(step - w) < 1e-3 for w in tried) else step
    return float(min(max(w1 + (1 - r1) * (w2 - w1) / (r2 - r1), low), high))


def _choose(tried: Mapping[float, float], low: float, high: float, tolerance: float) -> WeightSearch:
    finite = {w: r for w, r in tried.items() if math.isfinite(r)}
    if not finite:
        return WeightSearch(1.0, "bound", dict(tried))
    bracket = _bracket(finite)
    if bracket is not None:
        return WeightSearch(round(_interpolate(finite, *bracket), 3), "matched", dict(tried))
    best = min(finite, key=lambda w: abs(finite[w] - 1))
    status = "matched" if abs(finite[best] - 1) <= tolerance else "bound"
    return WeightSearch(round(best, 3), status, dict(tried))
