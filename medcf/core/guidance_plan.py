"""The calibrated guidance plan: per attribute the DCFG weight (and guidance interval) a calibrate job chose, the
data it was chosen on and the figures it matched; the default guidance of inference, evaluate and audit.

The file (``models/guidance_plan.json`` of a bundle) is JSON, read as data only: it is refused when larger than
:data:`MAX_PLAN_BYTES`, of another format, made for another model, or naming attributes, weights or bands the
schema and the guidance rules do not allow. Example (abridged)::

    {"format": "medcf-guidance-plan/1", "w_inv": 1.0, "steps": 50, "rule": "linear",
     "affected_descendants": "changed",
     "model_sha256": "...", "predictors_sha256": "...",
     "data": {"fingerprint": "...", "images": 32, "description": "held-out phantom set, seed 2000"},
     "attributes": {"sex": {"weight": 1.4, "interval": null, "status": "matched", "figures": {...}}, ...}}

:meth:`CalibratedPlan.settings` turns it into the :class:`~medcf.core.guidance_settings.GuidanceSettings` of mode
``calibrated``; :func:`guidance_settings` is the bundles' one entry point (a plan, or settings given by hand).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medcf.core.attributes import AttributeSchema
from medcf.core.guidance_settings import AFFECTED_DESCENDANTS, GuidanceSettings
from medcf.runtime.files import file_sha256, write_json_atomic
from medcf.runtime.settings import require_integer

PLAN_FORMAT = "medcf-guidance-plan/1"
MAX_PLAN_BYTES = 1 << 20  # a plan is a few kB; anything larger is not one
STATUSES = ("matched", "bound", "insensitive", "no_effect", "unmeasured")
PLAN_RULES = ("linear", "nested")  # the rules whose weights are DCFG group weights (see medcf.core.guidance)
PLANS_OWN = ("rule", "affected_descendants")
"""Settings a plan was calibrated under and decodes with unless a job names another (None or absent: the plan's)."""


class PlanError(ValueError):
    """A guidance plan that cannot be used (one line naming the file and the reason).

    Args:
        *args: the one-line message, as for :class:`ValueError`.
    """


@dataclass(frozen=True)
class AttributeGuidance:
    """The guidance of one attribute when it is intervened on (or is a descendant of an intervened one).

    Args:
        weight: its DCFG group weight, finite, >= 0.
        interval: the noise levels (low, high] its decodes are guided at; None: every step.
        status: ``matched`` (the predictors read the counterfactuals as real images with the value), ``bound``
            (the match lies beyond the weights searched: the closest bound is used), ``insensitive`` (the weight
            does not move what is matched: 1, the conditional prediction, is used), ``no_effect`` (the data show
            no difference between the attribute's values: the weight that changes the image least) or
            ``unmeasured`` (not calibrated: the fallback weight).
        figures: what was matched (expected and measured shifts, the weights tried), for the record.
    """

    weight: float
    interval: tuple[float, float] | None = None
    status: str = "matched"
    figures: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the plan file.

        Returns:
            ``weight``, ``interval`` (a list, an infinite high written ``"inf"``, or None), ``status`` and
            ``figures``.
        """
        band = None if self.interval is None else [self.interval[0], _json_float(self.interval[1])]
        return {"weight": self.weight, "interval": band, "status": self.status, "figures": dict(self.figures)}


def _json_float(value: float) -> float | str:
    return "inf" if value == math.inf else value


@dataclass(frozen=True)
class CalibratedPlan:
    """A guidance plan (see the module docstring).

    Args:
        attributes: attribute name -> its guidance.
        w_inv: the weight of the invariant group (every attribute neither intervened nor affected).
        steps: the DDIM steps it was calibrated at (decoding at other steps uses it as well; recorded).
        rule: how its groups combine at a step (:data:`PLAN_RULES`): ``linear`` (each group against the null
            condition) or ``nested`` (the groups chained, CFG's row count at w_inv 1); its weights were matched
            under this rule, so decoding uses it unless a job names another.
        affected_descendants: which descendants of an intervened attribute were guided while calibrating (``all``
            or ``changed``, see :class:`~medcf.core.guidance_settings.GuidanceSettings`); an intervention's weight
            was matched with its descendants guided this way, so decoding does the same unless a job names another.
        inversion_refinements: the fixed-point refinements per inversion step of its abductions (None: a plan
            written before they were recorded, plain inversion); recorded only: decoding uses the job's own
            ``inversion_refinements``.
        model_sha256, predictors_sha256: the model it was calibrated for and the predictors that judged.
        data: fingerprint, image and patient counts and a PHI-free description of the calibration data.
        created: ISO time of the calibration; medcf: medcf's version.
        source: the file it was read from (None when made in memory); sha256: that file's SHA-256.
    """

    attributes: Mapping[str, AttributeGuidance]
    w_inv: float = 1.0
    steps: int = 50
    rule: str = "linear"
    affected_descendants: str = "all"
    inversion_refinements: int | None = None
    model_sha256: str = ""
    predictors_sha256: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)
    created: str = ""
    medcf: str = ""
    source: Path | None = None
    sha256: str = ""

    @property
    def label(self) -> str:
        """The plan's identity in every output: ``guidance_plan.json sha256:0123456789ab`` (``in memory``)."""
        if self.source is None:
            return "in memory"
        return f"{self.source.name} sha256:{self.sha256[:12]}"

    def weights(self) -> dict[str, float]:
        """The plan's weights.

        Returns:
            Attribute name -> its DCFG group weight.
        """
        return {name: guidance.weight for name, guidance in self.attributes.items()}

    def intervals(self) -> dict[str, tuple[float, float] | None]:
        """The plan's guidance intervals.

        Returns:
            Attribute name -> the noise levels (low, high] its decodes are guided at; None: every step.
        """
        return {name: guidance.interval for name, guidance in self.attributes.items()}

    def describe(self) -> str:
        """e.g. ``age w=1.8, sex w=1.2, ...; w_inv=1`` (plus each band, where one is set).

        Returns:
            The plan's weights (and bands) in one line.
        """
        parts = []
        for name, guidance in self.attributes.items():
            band = (
                ""
                if guidance.interval is None
                else f" at sigma in ({guidance.interval[0]:g}, {guidance.interval[1]:g}]"
            )
            parts.append(f"{name} w={guidance.weight:.3g}{band}")
        return ", ".join(parts) + f"; w_inv={self.w_inv:g}"

    def settings(self, **options: Any) -> GuidanceSettings:
        """The GuidanceSettings of mode ``calibrated`` (``options``: steps, rule, precision, ...; a
        ``per_attribute`` mapping overrides the plan's weights of the attributes it names; ``rule`` or
        ``affected_descendants`` None or absent is the plan's).

        Args:
            **options: other GuidanceSettings fields; ``mode``, ``weight``, ``w_inv``, ``intervals``, ``plan`` and
                ``overrides`` are ignored (the plan sets them; ``per_attribute`` becomes ``overrides``).

        Returns:
            The settings, with the plan's weights, bands, ``w_inv``, rule and affected descendants (unless
            ``options`` names them) and :attr:`label`.

        Raises:
            ValueError: if an option is not allowed (see :class:`~medcf.core.guidance_settings.GuidanceSettings`).
        """
        overrides = dict(options.pop("per_attribute", None) or {})
        weights = {**self.weights(), **overrides}
        intervals = self.intervals()
        for ignored in ("mode", "weight", "w_inv", "intervals", "plan", "overrides"):
            options.pop(ignored, None)
        own = {name: options.pop(name, None) or getattr(self, name) for name in PLANS_OWN}
        return GuidanceSettings(
            mode="calibrated",
            per_attribute=weights,
            w_inv=self.w_inv,
            intervals=intervals,
            plan=self.label,
            overrides=overrides,
            **own,
            **options,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the plan file (:meth:`load` reads it back).

        Returns:
            The format tag, the plan's fields and each attribute's :meth:`AttributeGuidance.to_dict`; ``source``
            and ``sha256`` are left out.
        """
        return {
            "format": PLAN_FORMAT,
            "w_inv": self.w_inv,
            "steps": self.steps,
            "rule": self.rule,
            "affected_descendants": self.affected_descendants,
            "inversion_refinements": self.inversion_refinements,
            "model_sha256": self.model_sha256,
            "predictors_sha256": self.predictors_sha256,
            "data": dict(self.data),
            "created": self.created,
            "medcf": self.medcf,
            "attributes": {name: guidance.to_dict() for name, guidance in self.attributes.items()},
        }

    def save(self, path: str | Path) -> Path:
        """Write the plan atomically as JSON; returns the path.

        Args:
            path: the file to write.

        Returns:
            ``path`` as a :class:`~pathlib.Path`.
        """
        path = Path(path)
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | Path, schema: AttributeSchema, model_sha256: str | None = None) -> CalibratedPlan:
        """Read and check a plan file (untrusted data: JSON only, size checked before reading).

        Args:
            path: the plan file.
            schema: the model's attributes; a plan naming others is refused.
            model_sha256: the model it will guide; a plan calibrated for another model is refused.

        Returns:
            The plan, with ``source`` and ``sha256`` set.

        Raises:
            PlanError: if the file is missing, too large, not JSON, of another format, calibrated for another
                model, or holds attributes, weights, bands, statuses or steps that are not allowed.
        """
        path = Path(path)
        if not path.is_file():
            raise PlanError(
                f"guidance_plan: {path} is not a file (run the bundle's calibrate.yaml, or choose "
                "--guidance dcfg with --w_aff / --w_inv)"
            )
        if path.stat().st_size > MAX_PLAN_BYTES:
            raise PlanError(
                f"guidance_plan: {path} is {path.stat().st_size} bytes, more than a plan's "
                f"{MAX_PLAN_BYTES}: not a guidance plan"
            )
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise PlanError(f"guidance_plan: {path} is not JSON ({error})") from None
        if not isinstance(content, dict) or content.get("format") != PLAN_FORMAT:
            found = content.get("format") if isinstance(content, dict) else type(content).__name__
            raise PlanError(f"guidance_plan: {path} is not a {PLAN_FORMAT} file (format {found!r})")
        if model_sha256 and content.get("model_sha256") not in (None, "", model_sha256):
            raise PlanError(
                f"guidance_plan: {path} was calibrated for model sha256:{str(content['model_sha256'])[:12]}, "
                f"not this model (sha256:{model_sha256[:12]}); calibrate it again or choose --guidance dcfg"
            )
        try:
            attributes = _attributes(content.get("attributes"), schema)
            w_inv = _weight(content.get("w_inv", 1.0), "w_inv")
            steps = require_integer("steps", content.get("steps", 50), 1)
            # plans written before these were recorded: linear, all
            rule = _one_of(content.get("rule", "linear"), "rule", PLAN_RULES)
            affected = _one_of(content.get("affected_descendants", "all"), "affected_descendants", AFFECTED_DESCENDANTS)
            refinements = content.get("inversion_refinements")
            if refinements is not None:
                refinements = require_integer("inversion_refinements", refinements, 0)
        except ValueError as error:
            raise PlanError(f"guidance_plan: {path}: {error}") from None
        return cls(
            attributes=attributes,
            w_inv=w_inv,
            steps=steps,
            rule=rule,
            affected_descendants=affected,
            inversion_refinements=refinements,
            model_sha256=str(content.get("model_sha256", "")),
            predictors_sha256=str(content.get("predictors_sha256", "")),
            data=dict(content.get("data") or {}),
            created=str(content.get("created", "")),
            medcf=str(content.get("medcf", "")),
            source=path,
            sha256=file_sha256(path),
        )


def _one_of(value: Any, setting: str, allowed: tuple[str, ...]) -> str:
    """``value`` when it is one of ``allowed``, else a one-line ValueError naming ``setting``."""
    if value not in allowed:
        raise ValueError(f"{setting}: {value!r} must be one of {', '.join(allowed)}")
    return value


def _weight(value: Any, setting: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{setting}: {value!r} must be a finite number >= 0")
    return float(value)


def _band(value: Any, setting: str) -> tuple[float, float] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError(f"{setting}: {value!r} must be null or [low, high]")
    low, high = value[0], math.inf if value[1] == "inf" else value[1]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)):
        raise ValueError(f"{setting}: {value!r} must hold two numbers")
    if not (math.isfinite(low) and 0 <= low < high):
        raise ValueError(f"{setting}: {value!r} must satisfy 0 <= low < high")
    return float(low), float(high)


def _attributes(entries: Any, schema: AttributeSchema) -> dict[str, AttributeGuidance]:
    if not isinstance(entries, dict) or not entries:
        raise ValueError("attributes: must map attribute names to their guidance")
    unknown = sorted(set(entries) - set(schema.names))
    if unknown:
        raise ValueError(f"attributes {', '.join(unknown)} are not attributes of the model ({', '.join(schema.names)})")
    attributes = {}
    for name in schema.names:  # schema order, whatever the file's
        if name not in entries:
            continue
        entry = entries[name]
        if not isinstance(entry, dict):
            raise ValueError(f"attributes.{name}: must be a mapping with a weight")
        status = entry.get("status", "matched")
        if status not in STATUSES:
            raise ValueError(f"attributes.{name}.status: {status!r} is not one of {', '.join(STATUSES)}")
        figures = entry.get("figures") or {}
        if not isinstance(figures, dict):
            raise ValueError(f"attributes.{name}.figures: must be a mapping")
        attributes[name] = AttributeGuidance(
            _weight(entry.get("weight"), f"attributes.{name}.weight"),
            _band(entry.get("interval"), f"attributes.{name}.interval"),
            status,
            figures,
        )
    return attributes


def plan_if_used(
    entries: Any, plan_path: str | Path | None, schema: AttributeSchema, model_sha256: str | None
) -> CalibratedPlan | None:
    """The plan at ``plan_path`` when a guidance entry (a mapping, or a list of them) has mode ``calibrated``,
    checked against the model; None otherwise (a job given weights by hand needs no plan file).

    Args:
        entries: the job's guidance entry or entries (None: none).
        plan_path: the guidance plan file; None when the job has none.
        schema: the model's attributes.
        model_sha256: the model's SHA-256; None (or empty): not checked.

    Returns:
        The loaded plan, or None.

    Raises:
        PlanError: if a plan is needed and ``plan_path`` is None, or the plan cannot be used
            (:meth:`CalibratedPlan.load`).
    """
    listed = [entries] if isinstance(entries, Mapping) else list(entries or [])
    if not any(isinstance(entry, Mapping) and entry.get("mode") == "calibrated" for entry in listed):
        return None
    if plan_path is None:
        raise PlanError("guidance_plan: mode calibrated needs a plan file (or give the guidance by hand)")
    return CalibratedPlan.load(plan_path, schema, model_sha256)


def guidance_settings(
    mode: str,
    plan_path: str | Path | None,
    schema: AttributeSchema,
    model_path: str | Path | None = None,
    **options: Any,
) -> GuidanceSettings:
    """The guidance of a job: mode ``calibrated`` reads the plan (checked against the model at ``model_path``);
    any other mode is the settings given by hand (``options``: weight, w_aff, w_inv, per_attribute, steps, ...).

    Args:
        mode: none | cfg | dcfg | dcfg_per_attribute | calibrated.
        plan_path: the guidance plan file (mode calibrated).
        schema: the model's attributes.
        model_path: the model the plan must have been calibrated for (None: not checked).
        options: the other GuidanceSettings fields.

    Returns:
        GuidanceSettings; a missing or bad plan is a one-line PlanError naming the file.

    Raises:
        PlanError: for mode calibrated, if ``plan_path`` is None or the plan cannot be used.
        ValueError: if a setting is not allowed.
    """
    if mode != "calibrated":
        for name in PLANS_OWN:  # None: the plan's, and without a plan the default
            if name in options and options[name] is None:
                options.pop(name)
        return GuidanceSettings(mode=mode, **options)
    if plan_path is None:
        raise PlanError("guidance_plan: mode calibrated needs a plan file (or choose --guidance dcfg)")
    sha256 = file_sha256(model_path) if model_path is not None and Path(model_path).is_file() else None
    return CalibratedPlan.load(plan_path, schema, sha256).settings(**options)
