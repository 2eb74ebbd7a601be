"""Classifier-free guidance for counterfactual decoding: plain CFG and decoupled CFG (DCFG).

Decoupled classifier-free guidance (Xia et al. 2025, arXiv 2506.14399) splits the attributes into M disjoint
groups c^(1..M) and combines one conditional prediction per group:

    eps = eps(x_t, null) + sum_m w_m * (eps(x_t, c^(m) only) - eps(x_t, null))

Notation: ``null`` = every attribute nulled (all blocks of the attribute-split embedding zeroed);
``c^(m) only`` = group m kept, every other attribute nulled; ``w_m`` = the group's guidance weight.
M = 1 with the group holding every attribute is plain CFG, eps_null + w (eps_c - eps_null); M = K gives one
weight per attribute. For counterfactuals the default is M = 2: the affected group (intervened attributes and
their causal descendants, weight w_aff) and the invariant group (the rest, weight w_inv ~ 1), so guidance
pushes what should change without amplifying what should not.

Beyond the paper's linear combination, a plan's ``rule`` picks how the same terms combine, and its ``interval``
at which noise levels they are used at all:

- ``linear``: the DCFG sum above (CFG for M = 1).
- ``cfg++``: factored CFG++ (Chung et al. 2024, arXiv 2406.08070), :func:`cfg_plus_plus`: the clean image from
  the DCFG sum with weights in [0, 1], the re-noising to t_prev with the null prediction.
- ``apg``: factored adaptive projected guidance (Sadat et al. 2024, arXiv 2410.02416), :func:`factored_apg`: per
  group, in the clean-image space, a running average of the guidance difference, limited in norm, with its part
  parallel to the group's conditional prediction damped by eta.
- ``nested``: the groups chained instead of summed from the null condition (as InstructPix2Pix, Brooks et al. 2023,
  arXiv 2211.09800, chains image and text guidance), :func:`nested`: the groups that are not affected first, then the
  affected ones; with r_m the prediction with groups 1..m kept (r_0 = null),
  eps = r_0 + sum_m w_m (r_m - r_{m-1}). Each group's guidance is measured with the groups before it kept, not
  against the null condition, and when the first weight is 1 (w_inv = 1, the default) r_0 cancels: DCFG with
  one affected group then costs two rows per step, as CFG does, instead of three. With additive conditions
  (eps_c = eps_null + sum_m (eps_m - eps_null)) it is the linear DCFG sum; M = 1 is CFG.
- ``interval`` (Kynkaanniemi et al. 2024, arXiv 2404.07724), :func:`in_interval`: guidance only at the steps whose
  noise level sigma_t = sqrt((1 - abar_t) / abar_t) lies in (low, high]; the other steps use the conditional
  prediction (every attribute kept, w = 1), ONE network evaluation per image instead of the plan's rows.

The combining functions are pure. :func:`guidance_plan` lists the keep-masks a mode needs (null first);
:class:`medcf.core.denoiser.GuidedDenoiser` evaluates all of them for a batch in ONE forward call and combines them
(and holds the APG running averages of one decode).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from medcf.core.attributes import AttributeSchema
from medcf.core.sampling import GuidedPrediction

GuidanceMode = Literal["none", "cfg", "dcfg", "dcfg_per_attribute", "calibrated"]
GUIDANCE_MODES: tuple[str, ...] = ("none", "cfg", "dcfg", "dcfg_per_attribute", "calibrated")
GuidanceRule = Literal["linear", "cfg++", "apg", "nested"]
GUIDANCE_RULES: tuple[str, ...] = ("linear", "cfg++", "apg", "nested")


def cfg(eps_null: torch.Tensor, eps_cond: torch.Tensor, weight: float) -> torch.Tensor:
    """Classifier-free guidance: eps_null + w (eps_cond - eps_null). w = 1 is the conditional prediction.

    Args:
        eps_null: the prediction with every attribute nulled.
        eps_cond: the prediction with every attribute kept.
        weight: the guidance weight w.

    Returns:
        The guided prediction.
    """
    return eps_null + weight * (eps_cond - eps_null)


def dcfg(eps_null: torch.Tensor, eps_groups: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Decoupled CFG: eps_null + sum_m w_m (eps_m - eps_null), one term per attribute group.

    Args:
        eps_null: the prediction with every attribute nulled.
        eps_groups: one prediction per group, with only that group's attributes kept.
        weights: one weight w_m per group.

    Returns:
        The guided prediction (a new tensor).

    Raises:
        ValueError: if there are no groups or the numbers of groups and weights differ.
    """
    if len(eps_groups) != len(weights) or not eps_groups:
        raise ValueError(f"dcfg needs one weight per group: {len(eps_groups)} groups, {len(weights)} weights")
    guided = eps_null.clone()
    for eps_m, w_m in zip(eps_groups, weights, strict=True):
        guided = guided + w_m * (eps_m - eps_null)
    return guided


def nested(chain: Sequence[torch.Tensor], weights: Sequence[float], from_null: bool = True) -> torch.Tensor:
    """Nested guidance: r_0 + sum_m w_m (r_m - r_{m-1}), each group's term measured with the groups before it kept.

    Args:
        chain: the predictions r_0 (every attribute nulled), r_1 (group 1 kept), r_2 (groups 1 and 2 kept), ...;
            without ``from_null`` the chain starts at r_1 (the first weight is then 1, and r_0 cancels).
        weights: one weight w_m per group.
        from_null: whether ``chain`` starts with the null prediction.

    Returns:
        The guided prediction (a new tensor).

    Raises:
        ValueError: if the chain does not hold one prediction per group (plus the null one with ``from_null``), or
            it starts at r_1 while the first weight is not 1.
    """
    if len(chain) != len(weights) + int(from_null) or not weights:
        raise ValueError(f"nested guidance needs one prediction per group: {len(chain)} for {len(weights)} groups")
    if not from_null and weights[0] != 1.0:
        raise ValueError(f"nested guidance without the null prediction needs a first weight of 1, not {weights[0]:g}")
    terms = weights if from_null else weights[1:]
    guided = chain[0].clone()
    for previous, current, w_m in zip(chain[:-1], chain[1:], terms, strict=True):
        guided = guided + w_m * (current - previous)
    return guided


def cfg_plus_plus(
    eps_null: torch.Tensor, eps_groups: Sequence[torch.Tensor], weights: Sequence[float]
) -> GuidedPrediction:
    """Factored CFG++ (Chung et al. 2024, arXiv 2406.08070, Algorithm 1 with DCFG's groups).

    Notation: eps_null = every attribute nulled, eps_m = group m only kept, l_m = the group's weight in [0, 1]::

        eps_hat = eps_null + sum_m l_m (eps_m - eps_null)
        x0 = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)
        x_{t_prev} = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps_null

    Epsilon and v predictions work alike: both are affine in eps at a fixed x_t and the coefficients of the
    combination sum to 1. All l_m = 0 is unconditional DDIM.

    Args:
        eps_null: the prediction with every attribute nulled.
        eps_groups: one prediction per group, with only that group's attributes kept.
        weights: one weight l_m per group, each in [0, 1].

    Returns:
        ``GuidedPrediction(eps_hat, renoise=eps_null)``; the sampler takes the step
        (:func:`medcf.core.sampling.ddim_step`).

    Raises:
        ValueError: if a weight lies outside [0, 1], there are no groups, or the numbers of groups and weights differ.
    """
    bad = [w for w in weights if not 0.0 <= w <= 1.0]
    if bad:
        raise ValueError(f"cfg++ weights must lie in [0, 1]: got {', '.join(f'{w:g}' for w in bad)}")
    return GuidedPrediction(dcfg(eps_null, eps_groups, weights), renoise=eps_null)


def _per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.ndim - 1)))


def project(vector: torch.Tensor, direction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(parallel, orthogonal) parts of ``vector`` with respect to ``direction``, per image (dim 0 indexes images):
    parallel = (<v, d> / <d, d>) d, orthogonal = v - parallel, inner products over all of an image's pixels. A zero
    direction has no parallel part.

    Args:
        vector: the tensor v to split, (B, ...).
        direction: the direction d, shaped like ``vector``.

    Returns:
        (parallel, orthogonal), each shaped like ``vector``; they sum to it.
    """
    dot = (vector * direction).flatten(1).sum(dim=1)
    square = (direction * direction).flatten(1).sum(dim=1)
    coefficient = torch.where(square > 0, dot / torch.where(square > 0, square, 1.0), 0.0)
    parallel = _per_image(coefficient, vector) * direction
    return parallel, vector - parallel


def limit_norm(vector: torch.Tensor, limit: float) -> torch.Tensor:
    """v min(1, r / ||v||) per image (||.||: L2 norm over an image's pixels): at most norm r; r = inf: v as is.

    Args:
        vector: the tensor v, (B, ...), dim 0 indexing images.
        limit: the largest norm r per image; inf: no limit.

    Returns:
        ``vector`` scaled down per image where its norm exceeds ``limit`` (``vector`` itself when ``limit`` is inf).
    """
    if math.isinf(limit):
        return vector
    norm = vector.flatten(1).norm(dim=1)
    return vector * _per_image((limit / norm).clamp(max=1.0), vector)


def factored_apg(
    d_null: torch.Tensor,
    d_groups: Sequence[torch.Tensor],
    weights: Sequence[float],
    averages: Sequence[torch.Tensor] | None = None,
    eta: float = 0.0,
    momentum: float = -0.5,
    norm_limit: float = math.inf,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Factored adaptive projected guidance (Sadat et al. 2024, arXiv 2410.02416, Algorithm 1, one term per group).

    Notation: clean-image (x0) estimates D_null (every attribute nulled) and D_m (group m only kept: the group's
    "conditional prediction", = D_null + Delta_m); w_m the group's weight; beta = ``momentum``; r = ``norm_limit``;
    A_m' the group's running average after the previous guided step (0 at the first); ||.|| and <.,.> over the
    pixels of one image::

        Delta_m = D_m - D_null
        A_m     = Delta_m + beta A_m'                         (momentum; the paper uses beta < 0, e.g. -0.5)
        L_m     = A_m min(1, r / ||A_m||)                     (norm limit)
        L_m_par = (<L_m, D_m> / <D_m, D_m>) D_m,  L_m_orth = L_m - L_m_par
        D       = D_null + sum_m [Delta_m + (w_m - 1)(L_m_orth + eta L_m_par)]

    M = 1 is the paper's APG: D_1 + (w - 1)(L_orth + eta L_par). eta = 1, beta = 0, r = inf gives
    D_null + sum_m w_m Delta_m, DCFG on the clean-image estimates (the same as DCFG on the noise, x0 being affine
    in eps at a fixed x_t). eta = 1 skips the projection (L_orth + L_par = L).

    Args:
        d_null: the clean-image estimate D_null with every attribute nulled, (B, ...).
        d_groups: one clean-image estimate D_m per group, with only that group's attributes kept.
        weights: one weight w_m per group.
        averages: the running averages A_m' returned by the previous guided step of this decode; None at the first.
        eta: weight of the parallel part, in [0, 1].
        momentum: beta of the running average.
        norm_limit: the norm limit r per image; inf: no limit.

    Returns:
        (D, (A_1, ..., A_M)): the guided clean image and the running averages to pass as ``averages`` at the
        next guided step of the same decode. The inputs are not modified.

    Raises:
        ValueError: if there are no groups, or the numbers of groups, weights and (given) averages differ.
    """
    if len(d_groups) != len(weights) or not d_groups:
        raise ValueError(f"factored_apg needs one weight per group: {len(d_groups)} groups, {len(weights)} weights")
    if averages is not None and len(averages) != len(d_groups):
        raise ValueError(f"factored_apg needs one running average per group: {len(averages)} for {len(d_groups)}")
    guided, updated = d_null.clone(), []
    for m, (d_m, w_m) in enumerate(zip(d_groups, weights, strict=True)):
        delta = d_m - d_null
        average = delta if averages is None else delta + momentum * averages[m]
        limited = limit_norm(average, norm_limit)
        if eta != 1.0:
            parallel, orthogonal = project(limited, d_m)
            limited = orthogonal + eta * parallel
        guided = guided + delta + (w_m - 1.0) * limited
        updated.append(average)
    return guided, tuple(updated)


def in_interval(sigma: float, interval: tuple[float, float] | None) -> bool:
    """Guidance interval (Kynkaanniemi et al. 2024, arXiv 2404.07724): guide when low < sigma <= high, with sigma
    the step's noise level sqrt((1 - abar_t) / abar_t); None guides at every step.

    Args:
        sigma: the step's noise level.
        interval: (low, high), or None.

    Returns:
        Whether the step is guided.
    """
    return interval is None or interval[0] < sigma <= interval[1]


@dataclass(frozen=True)
class APGParameters:
    """Adaptive projected guidance settings (:func:`factored_apg`).

    Args:
        eta: weight of the part of each group's guidance difference parallel to its conditional prediction,
            in [0, 1] (0: drop it, the paper's choice; 1: keep it, as CFG does).
        momentum: beta of the running average A = Delta + beta A', in (-1, 1) (0: none; the paper: -0.5).
        norm_limit: r > 0, the largest L2 norm (over an image's pixels, on the model's [-1, 1] scale) of a group's
            guidance difference; inf: no limit.
    """

    eta: float = 0.0
    momentum: float = -0.5
    norm_limit: float = math.inf

    def __post_init__(self) -> None:
        if not (math.isfinite(self.eta) and 0.0 <= self.eta <= 1.0):
            raise ValueError(f"APG eta: {self.eta!r} must lie in [0, 1]")
        if not -1.0 < self.momentum < 1.0:
            raise ValueError(f"APG momentum: {self.momentum!r} must lie in (-1, 1)")
        if not self.norm_limit > 0:
            raise ValueError(f"APG norm limit: {self.norm_limit!r} must be > 0 (inf: no limit)")

    def describe(self) -> str:
        """The settings in a few characters.

        Returns:
            e.g. ``eta=0, beta=-0.5, r=inf``.
        """
        return f"eta={self.eta:g}, beta={self.momentum:g}, r={self.norm_limit:g}"


def check_interval(interval: tuple[float, float] | None) -> tuple[float, float] | None:
    """The band as a (low, high) tuple of floats; ValueError unless 0 <= low < high (high may be inf).

    Args:
        interval: a pair of numbers (low, high), or None.

    Returns:
        (low, high) as floats, or None for None.

    Raises:
        ValueError: if ``interval`` is not a pair of numbers, or not 0 <= low < high with low finite.
    """
    if interval is None:
        return None
    try:
        low, high = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"guidance interval: {interval!r} must be None or (low, high)") from None
    if not (math.isfinite(low) and 0.0 <= low < high) or math.isnan(high):
        raise ValueError(f"guidance interval: {interval!r} must satisfy 0 <= low < high (high may be inf)")
    return low, high


@dataclass(frozen=True)
class GuidancePlan:
    """The forward evaluations of one guided step and how to combine them.

    ``keep`` (R, K): row 0 is the null condition when ``weights`` is not empty; rows 1..M are the groups. Rule
    "nested": row m keeps groups 1..m (:func:`nested`), and the null row is left out when the first weight is 1.
    Mode "none" has a single row (every attribute kept) and no weights: its prediction is used as is (the rule and
    the interval then change nothing).
    ``rule``: "linear" (DCFG / CFG), "cfg++", "apg" (with ``apg``) or "nested"; ``interval``: the noise levels
    sigma_t in (low, high] at which the guidance terms are evaluated (None: every step); at the other steps the
    conditional prediction (every attribute kept) is the step's only evaluation.

    Attributes:
        keep: (R, K) bool keep-masks, one row per network evaluation of a guided step.
        weights: one weight per group (empty for mode "none").
        groups: the attribute names of each group, in the order of rows 1..M (mode "none": every name, one group).
        rule: how the terms combine: "linear", "cfg++" or "apg".
        apg: the APG settings, used by rule "apg".
        interval: (low, high) noise levels at which to guide, or None.
    """

    keep: torch.Tensor
    weights: tuple[float, ...]
    groups: tuple[tuple[str, ...], ...]
    rule: str = "linear"
    apg: APGParameters = field(default_factory=APGParameters)
    interval: tuple[float, float] | None = None

    @property
    def evaluations(self) -> int:
        """Network evaluations per guided step per image (a step outside the interval has one)."""
        return self.keep.shape[0]

    def describe(self) -> str:
        """The groups and their weights, e.g. ``age+disease w=2, race+sex w=1`` (``no guidance`` for mode none),
        then the rule and the interval when they are not the defaults, e.g. ``; rule apg (eta=0, beta=-0.5, r=inf);
        guided at sigma in (0.3, 5]``.

        Returns:
            The description; :class:`~medcf.core.engine.NullReferences` keys its decodes by it.
        """
        if not self.weights:
            return "no guidance"
        text = ", ".join(
            f"{'+'.join(group)} w={weight:g}" for group, weight in zip(self.groups, self.weights, strict=True)
        )
        if self.rule in ("cfg++", "nested"):
            text += f"; rule {self.rule}"
        elif self.rule == "apg":
            text += f"; rule apg ({self.apg.describe()})"
        if self.interval is not None:
            text += f"; guided at sigma in ({self.interval[0]:g}, {self.interval[1]:g}]"
        return text

    def combine(self, predictions: torch.Tensor) -> torch.Tensor:
        """Predictions (R, B, ...) in the plan's row order -> the guided prediction (B, ...).

        Args:
            predictions: one prediction per keep-mask row, stacked on dim 0.

        Returns:
            Row 0 when the plan has no weights, else the linear DCFG sum (:func:`dcfg`), or for rule "nested" the
            chained sum (:func:`nested`).
        """
        if not self.weights:
            return predictions[0]
        if self.rule == "nested":
            return nested(list(predictions), self.weights, from_null=not bool(self.keep[0].any()))
        return dcfg(predictions[0], list(predictions[1:]), self.weights)


def guidance_plan(
    schema: AttributeSchema,
    mode: str,
    affected: Collection[str] = (),
    weight: float = 1.0,
    w_aff: float = 1.0,
    w_inv: float = 1.0,
    per_attribute: Mapping[str, float] | None = None,
    *,
    rule: str = "linear",
    apg: APGParameters | None = None,
    interval: tuple[float, float] | None = None,
) -> GuidancePlan:
    """Keep-masks and weights of a guidance mode.

    Args:
        schema: the model's attributes (column order of the keep-masks).
        mode: "none" (conditional, w = 1), "cfg" (one global ``weight``), "dcfg" (affected group with
            ``w_aff``, invariant group with ``w_inv``), "dcfg_per_attribute" (one weight per attribute from
            ``per_attribute``, missing ones get ``w_inv`` if not affected else ``w_aff``), "calibrated" (each affected
            attribute its own group with its ``per_attribute`` weight, ``w_aff`` where it has none; the other
            attributes one invariant group with ``w_inv``).
        affected: intervened attributes and their descendants (for the DCFG modes).
        weight: the CFG weight (mode "cfg").
        w_aff: the weight of the affected attributes (modes "dcfg", "dcfg_per_attribute", "calibrated").
        w_inv: the weight of the other attributes (modes "dcfg", "dcfg_per_attribute", "calibrated").
        per_attribute: weights by attribute name (modes "dcfg_per_attribute" and "calibrated").
        rule: "linear" (the weighted sum), "cfg++" (weights in [0, 1]), "apg" (with ``apg``, default
            :class:`APGParameters`) or "nested" (the groups chained, those not affected first; :func:`nested`).
        apg: the APG settings for rule "apg"; None: the defaults.
        interval: (low, high): guide only at noise levels sigma_t in (low, high]; None: at every step.

    Returns:
        The plan: null row first, then one keep-mask row per group (a single all-kept row for mode "none").

    Raises:
        ValueError: if ``affected`` or ``per_attribute`` names unknown attributes, the mode or rule is unknown, the
            interval is invalid, or rule "cfg++" gets a weight outside [0, 1].
    """
    names = schema.names
    unknown = set(affected) - set(names)
    if unknown:
        raise ValueError(f"affected attributes {sorted(unknown)} are not in the schema ({', '.join(names)})")
    if rule not in GUIDANCE_RULES:
        raise ValueError(f"guidance rule {rule!r} is not one of {', '.join(GUIDANCE_RULES)}")
    variant = {"rule": rule, "apg": apg or APGParameters(), "interval": check_interval(interval)}
    if mode == "none":
        return GuidancePlan(torch.ones(1, len(names), dtype=torch.bool), (), (names,), **variant)
    if mode == "cfg":
        groups, weights = [names], [weight]
    elif mode == "dcfg":
        affected_group = tuple(n for n in names if n in affected)
        invariant_group = tuple(n for n in names if n not in affected)
        pairs = [(g, w) for g, w in ((affected_group, w_aff), (invariant_group, w_inv)) if g]
        groups, weights = [g for g, _ in pairs], [w for _, w in pairs]
    elif mode == "dcfg_per_attribute":
        per_attribute = dict(per_attribute or {})
        extra = set(per_attribute) - set(names)
        if extra:
            raise ValueError(f"per-attribute weights for unknown attributes {sorted(extra)}")
        groups = [(n,) for n in names]
        weights = [per_attribute.get(n, w_aff if n in affected else w_inv) for n in names]
    elif mode == "calibrated":
        per_attribute = dict(per_attribute or {})
        extra = set(per_attribute) - set(names)
        if extra:
            raise ValueError(f"calibrated weights for unknown attributes {sorted(extra)}")
        invariant_group = tuple(n for n in names if n not in affected)
        groups = [(n,) for n in names if n in affected] + ([invariant_group] if invariant_group else [])
        weights = [per_attribute.get(n, w_aff) for n in names if n in affected] + ([w_inv] if invariant_group else [])
    else:
        raise ValueError(f"guidance mode {mode!r} is not one of {', '.join(GUIDANCE_MODES)}")
    if rule == "cfg++" and not all(0.0 <= w <= 1.0 for w in weights):
        raise ValueError(f"rule cfg++ needs guidance weights in [0, 1]: got {', '.join(f'{w:g}' for w in weights)}")
    if rule == "nested":
        return _nested_plan(names, groups, weights, set(affected), variant)
    keep = torch.zeros(len(groups) + 1, len(names), dtype=torch.bool)
    for row, group in enumerate(groups, start=1):
        keep[row, [names.index(n) for n in group]] = True
    return GuidancePlan(keep, tuple(float(w) for w in weights), tuple(tuple(g) for g in groups), **variant)


def _nested_plan(
    names: Sequence[str],
    groups: Sequence[Sequence[str]],
    weights: Sequence[float],
    affected: set[str],
    variant: Mapping[str, object],
) -> GuidancePlan:
    """The plan of rule "nested": groups without affected attributes first (kept in their order), row m keeping
    groups 1..m, and the null row only when the first weight is not 1."""
    order = sorted(range(len(groups)), key=lambda m: any(n in affected for n in groups[m]))
    groups, weights = [tuple(groups[m]) for m in order], [float(weights[m]) for m in order]
    from_null = weights[0] != 1.0
    keep = torch.zeros(len(groups) + int(from_null), len(names), dtype=torch.bool)
    kept: list[str] = []
    for row, group in enumerate(groups, start=int(from_null)):
        kept += group
        keep[row, [names.index(n) for n in kept]] = True
    return GuidancePlan(keep, tuple(weights), tuple(groups), **variant)
