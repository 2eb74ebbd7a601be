"""Guidance settings: how counterfactuals are decoded (mode, weights, rule, interval, steps, precision), each
value checked once, when the settings are made, with a one-line error naming the setting; and the short label a
table or a file name shows for them.

The settings are the keys of the bundles' ``guidance`` entries; :func:`guidance_settings_from` turns a job's list
of entries (``[{mode: cfg, weight: 3}, {mode: calibrated}]``) into settings, reading the calibrated plan for
``mode: calibrated``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from medcf.core.denoiser import PRECISIONS
from medcf.core.guidance import GUIDANCE_MODES, GUIDANCE_RULES

if TYPE_CHECKING:  # the plan module imports these settings
    from medcf.core.guidance_plan import CalibratedPlan


AFFECTED_DESCENDANTS = ("all", "changed")
"""Which descendants of the intervened attributes a decode guides as affected (see GuidanceSettings)."""

SHARED_DECODING = ("steps", "inversion_depth", "inversion_refinements")
"""Settings a job gives every guidance setting alike (one abduction serves them all); not part of a setting's label."""


def _require(ok: bool, setting: str, value: object, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{setting}: {value!r} is not allowed: must be {allowed}")


def _is_number(value: object, allow_inf: bool = False) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
        return False
    return allow_inf and value == math.inf or math.isfinite(value)


def _band(setting: str, band: object) -> tuple[float, float] | None:
    """A guidance interval as (low, high) floats, or None; a one-line error naming ``setting`` otherwise."""
    if band is None:
        return None
    _require(
        isinstance(band, Sequence)
        and not isinstance(band, str)
        and len(band) == 2
        and _is_number(band[0])
        and _is_number(band[1], allow_inf=True)
        and 0 <= band[0] < band[1],
        setting,
        band,
        "None or [low, high] noise levels sigma with 0 <= low < high (high may be inf)",
    )
    return float(band[0]), float(band[1])


def calibrated_interval(settings: GuidanceSettings, affected: set[str]) -> tuple[float, float] | None:
    """The band a ``calibrated`` decode is guided in: the smallest band holding every affected attribute's band
    (None, every step, as soon as one affected attribute has none); ``settings.interval`` when none is affected.

    Args:
        settings: the calibrated settings, with their per-attribute ``intervals``.
        affected: intervened attributes and their causal descendants.

    Returns:
        (low, high), or None: guide at every step.
    """
    if not affected:
        return settings.interval
    bands = [settings.intervals.get(name) for name in sorted(affected)]
    if any(band is None for band in bands):
        return None
    return min(band[0] for band in bands), max(band[1] for band in bands)


@dataclass(frozen=True)
class GuidanceSettings:
    """How counterfactuals are decoded; every value is checked when the settings are made.

    Args:
        mode: ``none`` (conditional, no guidance), ``cfg`` (one global ``weight``), ``dcfg`` (``w_aff`` for the
            intervened attributes and their descendants, ``w_inv`` for the rest), ``dcfg_per_attribute`` or
            ``calibrated`` (each affected attribute its own group with its ``per_attribute`` weight and its
            ``intervals`` band, the rest one group with ``w_inv``: what a calibrated guidance plan sets, see
            :meth:`medcf.core.guidance_plan.CalibratedPlan.settings`).
        weight: the CFG weight (bundle key ``w``), a finite number >= 0.
        w_aff, w_inv: the DCFG group weights, finite numbers >= 0.
        per_attribute: ``dcfg_per_attribute`` / ``calibrated`` weights by attribute name (others get w_aff / w_inv).
        steps: DDIM steps (>= 1).
        inversion_depth: fraction of the schedule inverted, in (0, 1].
        inversion_refinements: fixed-point refinements of each inversion step (an integer >= 0; each costs one
            network evaluation per image and step of the abduction, shared by all interventions of a batch): 0 is
            plain DDIM inversion; the default 1 makes the ``do()`` output retrace its source (see
            :meth:`medcf.core.sampling.DDIMSampler.invert`).
        max_rows: rows per forward call; -1: the whole batch on a GPU, about 9 rows on a CPU; None: all.
        rule: how the mode's terms combine at a decoding step: ``linear`` (the weighted sum, CFG / DCFG),
            ``cfg++`` (factored CFG++: the clean image from the weighted sum, re-noised with the null prediction;
            the mode's weights must lie in [0, 1]), ``apg`` (factored adaptive projected guidance, in the
            clean-image space, with ``apg_eta``, ``apg_momentum``, ``apg_norm_limit``) or ``nested`` (the groups
            chained, unaffected first: at w_inv = 1 one row fewer per step; :func:`medcf.core.guidance.nested`).
            Inversion is never guided.
        apg_eta: apg: weight of the part of a group's guidance difference parallel to the group's conditional
            clean-image estimate, in [0, 1] (0: dropped; 1: kept as in DCFG).
        apg_momentum: apg: beta of the running average of a group's guidance difference over the guided steps,
            A = difference + beta A_previous, in (-1, 1) (0: none; the APG paper uses -0.5).
        apg_norm_limit: apg: the largest L2 norm of a group's (averaged) guidance difference per image, over its
            pixels on the model's [-1, 1] clean-image scale, > 0; inf: no limit.
        precision: ``fp32``, or ``bf16``: the network runs under bfloat16 autocast (guidance sums and sampler in
            float32); faster on GPUs and on CPUs with bf16 instructions (benchmarks/throughput.py --precisions).
        interval: None (guide at every step) or (low, high): guide only at the steps whose DDIM noise level
            sigma_t = sqrt((1 - abar_t) / abar_t) lies in (low, high], 0 <= low < high (high may be inf); the
            other steps decode with the conditional prediction alone (w = 1), one network evaluation per image.
        intervals: ``calibrated``: a band (or None) per attribute; a decode is guided inside the smallest band
            holding every affected attribute's band (None when one of them has none; ``interval`` for ``do()``).
        plan: ``calibrated``: the plan's identity (file name and SHA-256 prefix), recorded with every output.
        affected_descendants: ``all`` (every descendant the causal graph names is guided with the intervened
            attributes, in every image) or ``changed`` (per image, only the descendants whose value the intervention
            changes there; the others stay in the invariant group, so a descendant's weight does not amplify the
            image's own, unchanged value).
        overrides: ``calibrated``: the weights given in place of the plan's (they are in ``per_attribute`` too); they
            name the setting (``calibrated age=1``), so that a plan and its variants can be compared in one run.

    The defaults (rule linear, no interval) are plain CFG / DCFG; the APG values are then unused.
    """

    mode: str = "dcfg"
    weight: float = 1.0
    w_aff: float = 2.0
    w_inv: float = 1.0
    per_attribute: Mapping[str, float] = field(default_factory=dict)
    steps: int = 50
    inversion_depth: float = 1.0
    inversion_refinements: int = 1
    max_rows: int | None = -1
    rule: str = "linear"
    apg_eta: float = 0.0
    apg_momentum: float = -0.5
    apg_norm_limit: float = math.inf
    interval: tuple[float, float] | None = None
    precision: str = "fp32"
    intervals: Mapping[str, tuple[float, float] | None] = field(default_factory=dict)
    plan: str | None = None
    affected_descendants: str = "all"
    overrides: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(self.mode in GUIDANCE_MODES, "guidance", self.mode, f"one of {', '.join(GUIDANCE_MODES)}")
        _require(self.rule in GUIDANCE_RULES, "rule", self.rule, f"one of {', '.join(GUIDANCE_RULES)}")
        _require(self.precision in PRECISIONS, "precision", self.precision, f"one of {', '.join(PRECISIONS)}")
        weights = {"w": self.weight, "w_aff": self.w_aff, "w_inv": self.w_inv}
        _require(isinstance(self.per_attribute, Mapping), "per_attribute", self.per_attribute, "a mapping")
        weights.update({f"per_attribute.{name}": value for name, value in self.per_attribute.items()})
        for setting, value in weights.items():
            _require(_is_number(value) and value >= 0, setting, value, "a finite number >= 0")
        if self.rule == "cfg++":  # the weights the mode uses
            used = {"none": set(), "cfg": {"w"}, "dcfg": {"w_aff", "w_inv"}}.get(self.mode, set(weights) - {"w"})
            for setting in [name for name in weights if name in used]:
                _require(weights[setting] <= 1, setting, weights[setting], "a finite number in [0, 1] for rule cfg++")
        _require(_is_number(self.apg_eta) and 0 <= self.apg_eta <= 1, "apg_eta", self.apg_eta, "a number in [0, 1]")
        _require(
            _is_number(self.apg_momentum) and -1 < self.apg_momentum < 1,
            "apg_momentum",
            self.apg_momentum,
            "a number in (-1, 1)",
        )
        _require(
            _is_number(self.apg_norm_limit, allow_inf=True) and self.apg_norm_limit > 0,
            "apg_norm_limit",
            self.apg_norm_limit,
            "a number > 0 (inf: no limit)",
        )
        for name in ("apg_eta", "apg_momentum", "apg_norm_limit"):  # 0 and 0.0 in a YAML file are one setting
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "interval", _band("interval", self.interval))
        _require(isinstance(self.intervals, Mapping), "intervals", self.intervals, "a mapping")
        bands = {name: _band(f"intervals.{name}", band) for name, band in self.intervals.items()}
        object.__setattr__(self, "intervals", bands)
        _require(
            self.affected_descendants in AFFECTED_DESCENDANTS,
            "affected_descendants",
            self.affected_descendants,
            f"one of {', '.join(AFFECTED_DESCENDANTS)}",
        )
        _require(
            isinstance(self.overrides, Mapping) and (not self.overrides or self.mode == "calibrated"),
            "overrides",
            self.overrides,
            "a mapping, for mode calibrated only",
        )
        object.__setattr__(self, "overrides", dict(self.overrides))
        if self.mode == "calibrated":
            _require(
                isinstance(self.plan, str) and bool(self.plan), "plan", self.plan, "the plan's name for mode calibrated"
            )
        _require(
            isinstance(self.steps, int) and not isinstance(self.steps, bool) and self.steps >= 1,
            "steps",
            self.steps,
            "an integer >= 1",
        )
        _require(
            _is_number(self.inversion_depth) and 0 < self.inversion_depth <= 1,
            "inversion_depth",
            self.inversion_depth,
            "a number in (0, 1]",
        )
        _require(
            isinstance(self.inversion_refinements, int)
            and not isinstance(self.inversion_refinements, bool)
            and self.inversion_refinements >= 0,
            "inversion_refinements",
            self.inversion_refinements,
            "an integer >= 0",
        )
        _require(
            self.max_rows is None or (isinstance(self.max_rows, int) and (self.max_rows == -1 or self.max_rows >= 1)),
            "max_rows",
            self.max_rows,
            "None, -1 or an integer >= 1",
        )


def guidance_label(settings: GuidanceSettings) -> str:
    """A short name of a guidance setting, e.g. ``cfg w=3``, ``dcfg w_aff=3 w_inv=1``, ``none``.

    Settings other than the mode's weights, steps, the inversion's depth and refinements, max_rows and the
    calibrated plan's are appended as ``name=value`` where they differ from the defaults (e.g. ``rule=apg``).

    Args:
        settings: the settings to name.

    Returns:
        The label.
    """
    if settings.mode == "none":
        label = "none"
    elif settings.mode == "calibrated":
        label = "calibrated"
        if settings.overrides:
            label += " " + ",".join(f"{k}={v:g}" for k, v in sorted(settings.overrides.items()))
    elif settings.mode == "cfg":
        label = f"cfg w={settings.weight:g}"
    else:
        label = f"{settings.mode} w_aff={settings.w_aff:g} w_inv={settings.w_inv:g}"
        if settings.per_attribute:
            label += " " + ",".join(f"{k}={v:g}" for k, v in sorted(settings.per_attribute.items()))
    defaults = GuidanceSettings()
    for extra in fields(GuidanceSettings):
        if extra.name in {
            "mode",
            "weight",
            "w_aff",
            "w_inv",
            "per_attribute",
            "max_rows",
            "intervals",
            "plan",
            "overrides",
            *SHARED_DECODING,
        }:
            continue
        value = getattr(settings, extra.name)
        if value != getattr(defaults, extra.name):
            label += f" {extra.name}={short_value(value)}"
    return label


def short_value(value: Any) -> str:
    """A setting's value as a label shows it: floats in %g, sequences joined by ``-``.

    Args:
        value: the value; a tuple or list is written item by item.

    Returns:
        The text (``str(value)`` for anything else).
    """
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple | list):
        return "-".join(short_value(v) for v in value)
    return str(value)


def guidance_settings_from(
    entries: Sequence[Mapping[str, Any]],
    steps: int,
    inversion_depth: float = 1.0,
    plan: CalibratedPlan | None = None,
    inversion_refinements: int = 1,
) -> list[GuidanceSettings]:
    """GuidanceSettings from config entries like ``{mode: cfg, weight: 3}`` or ``{mode: calibrated}`` (the
    ``plan``'s weights; other keys of the entry, e.g. ``per_attribute``, override it); one line per bad entry.

    Args:
        entries: a non-empty list of mappings of GuidanceSettings fields (not ``steps`` or the inversion's).
        steps: the DDIM steps of every setting.
        inversion_depth: the inverted fraction of the schedule, for every setting.
        plan: the calibrated plan, needed by an entry with mode ``calibrated``.
        inversion_refinements: the fixed-point refinements per inversion step, for every setting (one abduction
            serves them all).

    Returns:
        One GuidanceSettings per entry, in order.

    Raises:
        ValueError: if ``entries`` is not a non-empty list of mappings, an entry has an unknown or bad setting, an
            entry has mode ``calibrated`` and there is no plan, or two entries have the same label.
    """
    if isinstance(entries, Mapping) or not entries:
        raise ValueError("guidance_settings: give a list of settings, e.g. [{mode: cfg, weight: 3}]")
    shared = dict(zip(SHARED_DECODING, (steps, inversion_depth, inversion_refinements), strict=True))
    known = {f.name for f in fields(GuidanceSettings)} - set(shared)
    settings = []
    for k, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise ValueError(f"guidance_settings[{k}]: {entry!r} is not a mapping of setting: value")
        unknown = sorted(set(entry) - known)
        if unknown:
            raise ValueError(f"guidance_settings[{k}]: unknown setting(s) {', '.join(unknown)}; known: {sorted(known)}")
        try:
            if entry.get("mode") == "calibrated":
                if plan is None:
                    raise ValueError("mode calibrated needs a guidance plan (guidance_plan: the bundle's plan file)")
                settings.append(plan.settings(**dict(entry), **shared))
            else:
                settings.append(GuidanceSettings(**dict(entry), **shared))
        except ValueError as error:
            raise ValueError(f"guidance_settings[{k}]: {error}") from None
    labels = [guidance_label(s) for s in settings]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"guidance_settings: {', '.join(repeated)} given more than once")
    return settings
