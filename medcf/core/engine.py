"""The counterfactual core: prepared images + factual attributes + interventions -> counterfactual images and
attributes, in memory (no files, no MLflow), shared by the inference, evaluation and audit jobs.

1. Abduction: DDIM inversion of the factual image under its factual attributes (conditional, no guidance)
   on explicit timestep pairs, over the whole schedule or the least noisy ``inversion_depth`` of it; once per
   image, whatever the number of interventions.
2. Action: the intervention is applied to each image's factual attributes, once; the causal graph recomputes
   descendants and names the affected group (intervened + descendants). An image the intervention cannot
   apply to (a shift past the attribute's range) is left out with the reason.
3. Prediction: DDIM decoding from the same latent under the counterfactual attributes with the chosen
   guidance (none, cfg, dcfg, dcfg_per_attribute, calibrated), every guidance term of a step in one batched
   forward, combined by the chosen rule (linear, cfg++, apg), optionally only inside a band of noise levels.

Settings are checked when the engine is built, before any image is inverted.

Example::

    engine = CounterfactualEngine(model, diffusion, graph, GuidanceSettings(mode="dcfg", w_aff=2.0))
    for result in engine.run(images, factual, [parse_intervention(model.schema, "do(sex=F)")]):
        result.images, result.attributes, result.rejected
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from medcf.attributes import AttributeValue
from medcf.causal import CausalGraph
from medcf.conditioning import encode_attributes
from medcf.diffusion import DiffusionConfig
from medcf.guidance import (
    GUIDANCE_MODES,
    GUIDANCE_RULES,
    PRECISIONS,
    APGParameters,
    GuidancePlan,
    GuidedDenoiser,
    default_max_rows,
    guidance_plan,
)
from medcf.interventions import Intervention, InterventionError
from medcf.model import CounterfactualUNet
from medcf.sampling import DDIMSampler


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
    (None, every step, as soon as one affected attribute has none); ``settings.interval`` when none is affected."""
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
            :meth:`medcf.calibration.plan.CalibratedPlan.settings`).
        weight: the CFG weight (bundle key ``w``), a finite number >= 0.
        w_aff, w_inv: the DCFG group weights, finite numbers >= 0.
        per_attribute: ``dcfg_per_attribute`` / ``calibrated`` weights by attribute name (others get w_aff / w_inv).
        steps: DDIM steps (>= 1).
        inversion_depth: fraction of the schedule inverted, in (0, 1].
        max_rows: rows per forward call; -1: the whole batch on a GPU, about 9 rows on a CPU; None: all.
        rule: how the mode's terms combine at a decoding step: ``linear`` (the weighted sum, CFG / DCFG),
            ``cfg++`` (factored CFG++: the clean image from the weighted sum, re-noised with the null prediction;
            the mode's weights must lie in [0, 1]) or ``apg`` (factored adaptive projected guidance, in the
            clean-image space, with ``apg_eta``, ``apg_momentum``, ``apg_norm_limit``). Inversion is never guided.
        apg_eta: apg: weight of the part of a group's guidance difference parallel to the group's conditional
            clean-image estimate, in [0, 1] (0: dropped; 1: kept as in DCFG).
        apg_momentum: apg: beta of the running average of a group's guidance difference over the guided steps,
            A = difference + beta A_previous, in (-1, 1) (0: none; the APG paper uses -0.5).
        apg_norm_limit: apg: the largest L2 norm of a group's (averaged) guidance difference per image, over its
            pixels on the model's [-1, 1] clean-image scale, > 0; inf: no limit.
        precision: ``fp32``, or ``bf16``: the network runs under bfloat16 autocast (guidance sums and sampler in
            float32); faster on GPUs and on CPUs with bf16 instructions, see benchmarks/precision.py.
        interval: None (guide at every step) or (low, high): guide only at the steps whose DDIM noise level
            sigma_t = sqrt((1 - abar_t) / abar_t) lies in (low, high], 0 <= low < high (high may be inf); the
            other steps decode with the conditional prediction alone (w = 1), one network evaluation per image.
        intervals: ``calibrated``: a band (or None) per attribute; a decode is guided inside the smallest band
            holding every affected attribute's band (None when one of them has none; ``interval`` for ``do()``).
        plan: ``calibrated``: the plan's identity (file name and SHA-256 prefix), recorded with every output.

    The defaults (rule linear, no interval) are plain CFG / DCFG; the APG values are then unused.
    """

    mode: str = "dcfg"
    weight: float = 1.0
    w_aff: float = 2.0
    w_inv: float = 1.0
    per_attribute: Mapping[str, float] = field(default_factory=dict)
    steps: int = 50
    inversion_depth: float = 1.0
    max_rows: int | None = -1
    rule: str = "linear"
    apg_eta: float = 0.0
    apg_momentum: float = -0.5
    apg_norm_limit: float = math.inf
    interval: tuple[float, float] | None = None
    precision: str = "fp32"
    intervals: Mapping[str, tuple[float, float] | None] = field(default_factory=dict)
    plan: str | None = None

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
            self.max_rows is None or (isinstance(self.max_rows, int) and (self.max_rows == -1 or self.max_rows >= 1)),
            "max_rows",
            self.max_rows,
            "None, -1 or an integer >= 1",
        )


@dataclass
class CounterfactualBatch:
    """Counterfactuals of a batch of images under one intervention.

    Attributes:
        intervention: the intervention.
        affected: intervened attributes and their causal descendants.
        plan: the guidance plan used for decoding.
        made: positions (in the input batch) of the images that have a counterfactual.
        attributes: the counterfactual attributes, one per made image.
        images: the counterfactual images (len(made), C, H, W), on the model's scale [-1, 1].
        rejected: position -> reason, for images the intervention could not apply to.
        network_evaluations: network evaluations per image of the decoding (counted: a step outside the guidance
            interval costs one, a guided step ``plan.evaluations``).
    """

    intervention: Intervention
    affected: set[str]
    plan: GuidancePlan
    made: list[int]
    attributes: list[dict[str, AttributeValue]]
    images: torch.Tensor
    rejected: dict[int, str]
    network_evaluations: int


class CounterfactualEngine:
    """Abduct a batch once with :meth:`abduct`, then call :meth:`predict` for each intervention (or
    :meth:`run` for both). The settings are checked against the model's schema on construction."""

    def __init__(
        self,
        model: CounterfactualUNet,
        diffusion: DiffusionConfig,
        graph: CausalGraph,
        settings: GuidanceSettings = GuidanceSettings(),
    ) -> None:
        if graph.schema.to_config() != model.schema.to_config():
            raise ValueError("the causal graph and the model have different attribute schemas")
        self.model, self.graph, self.settings = model.eval(), graph, settings
        self.plan_for(set())  # unknown per-attribute names and other bad settings fail here, before any work
        full = DDIMSampler(diffusion.alphas_cumprod(), diffusion.prediction_type, settings.steps)
        self.sampler = full.truncated(settings.inversion_depth)

    @property
    def model_device(self) -> torch.device:
        """Where the model, the guidance batch and the sampler run."""
        return next(self.model.parameters()).device

    def plan_for(self, affected: set[str]) -> GuidancePlan:
        """The guidance plan of an intervention whose intervened attributes and descendants are ``affected``
        (the empty set: the ``do()`` output's)."""
        s = self.settings
        interval = calibrated_interval(s, affected) if s.mode == "calibrated" else s.interval
        return guidance_plan(
            self.model.schema,
            s.mode,
            affected,
            s.weight,
            s.w_aff,
            s.w_inv,
            s.per_attribute,
            rule=s.rule,
            apg=APGParameters(s.apg_eta, s.apg_momentum, s.apg_norm_limit),
            interval=interval,
        )

    def _denoiser(self, codes: torch.Tensor, plan: GuidancePlan) -> GuidedDenoiser:
        """A fresh denoiser (one per decode: it counts the decode's evaluations and holds APG's running averages)."""
        max_rows = default_max_rows(self.model_device) if self.settings.max_rows == -1 else self.settings.max_rows
        return GuidedDenoiser(
            self.model,
            codes,
            plan,
            max_rows,
            alphas_cumprod=self.sampler.alphas_cumprod,
            prediction_type=self.sampler.prediction_type,
            precision=self.settings.precision,
        )

    @torch.no_grad()
    def abduct(self, images: torch.Tensor, factual: Sequence[Mapping[str, AttributeValue]]) -> torch.Tensor:
        """Latents of the images (DDIM inversion under the factual attributes, no guidance)."""
        codes = encode_attributes(self.model.schema, factual).to(self.model_device)
        denoiser = self._denoiser(codes, guidance_plan(self.model.schema, "none"))
        return self.sampler.invert(denoiser, images.to(self.model_device))

    @torch.no_grad()
    def predict(
        self, latents: torch.Tensor, factual: Sequence[Mapping[str, AttributeValue]], intervention: Intervention
    ) -> CounterfactualBatch:
        """Decode the latents under ``intervention`` applied (once) to each image's factual attributes."""
        schema = self.model.schema
        made, rows, rejected = [], [], {}
        for position, attributes in enumerate(factual):
            try:
                rows.append(self.graph.counterfactual(attributes, intervention.apply(schema, attributes)))
                made.append(position)
            except InterventionError as error:  # e.g. a shift past the attribute's range for this image
                rejected[position] = str(error)
        affected = self.graph.affected(intervention.names)
        plan = self.plan_for(affected)
        if not made:
            empty = latents[:0]
            return CounterfactualBatch(intervention, affected, plan, [], [], empty, rejected, 0)
        denoiser = self._denoiser(encode_attributes(schema, rows).to(self.model_device), plan)
        images = self.sampler.decode(denoiser, latents[made])
        evaluations = denoiser.evaluations
        return CounterfactualBatch(intervention, affected, plan, made, rows, images, rejected, evaluations)

    @torch.no_grad()
    def reconstruct(
        self, latents: torch.Tensor, factual: Sequence[Mapping[str, AttributeValue]], affected: set[str]
    ) -> torch.Tensor:
        """Decode the latents under their own factual attributes with the guidance plan an intervention on
        ``affected`` gets: the null-intervention reference of that intervention's counterfactuals (same
        guidance, no attribute changed), so that counterfactual minus reference is the intervention's change."""
        if not len(factual):
            return latents[:0]
        codes = encode_attributes(self.model.schema, factual).to(self.model_device)
        return self.sampler.decode(self._denoiser(codes, self.plan_for(set(affected))), latents)

    def run(
        self,
        images: torch.Tensor,
        factual: Sequence[Mapping[str, AttributeValue]],
        interventions: Sequence[Intervention],
    ) -> list[CounterfactualBatch]:
        """One abduction, then every intervention from the same latents."""
        latents = self.abduct(images, factual)
        return [self.predict(latents, factual, intervention) for intervention in interventions]
