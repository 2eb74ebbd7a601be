"""The counterfactual core: prepared images + factual attributes + interventions -> counterfactual images and
attributes, in memory (no files, no MLflow), shared by the inference, evaluation and audit jobs.

1. Abduction: DDIM inversion of the factual image under its factual attributes (conditional, no guidance)
   on explicit timestep pairs, over the whole schedule or the least noisy ``inversion_depth`` of it, each step
   refined ``inversion_refinements`` times (fixed-point iteration); once per image, whatever the number of
   interventions.
2. Action: the intervention is applied to each image's factual attributes, once; the causal graph recomputes
   descendants and names the affected group (intervened + descendants). An image the intervention cannot
   apply to (a shift past the attribute's range) is left out with the reason.
3. Prediction: DDIM decoding from the same latent under the counterfactual attributes with the chosen
   guidance (none, cfg, dcfg, dcfg_per_attribute, calibrated), every guidance term of a step in one batched
   forward, combined by the chosen rule (linear, cfg++, apg, nested), optionally only inside a band of noise levels.

Settings (:class:`~medcf.core.guidance_settings.GuidanceSettings`) are checked when made and against the model's
schema when the engine is built, before any image is inverted.

Example::

    engine = CounterfactualEngine(model, diffusion, graph, GuidanceSettings(mode="dcfg", w_aff=2.0))
    for result in engine.run(images, factual, [parse_intervention(model.schema, "do(sex=F)")]):
        result.images, result.attributes, result.rejected
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from medcf.core.attributes import AttributeValue
from medcf.core.causal import CausalGraph
from medcf.core.conditioning import encode_attributes
from medcf.core.denoiser import GuidedDenoiser, default_max_rows
from medcf.core.diffusion import DiffusionConfig
from medcf.core.guidance import APGParameters, GuidancePlan, guidance_plan
from medcf.core.guidance_settings import GuidanceSettings, calibrated_interval
from medcf.core.interventions import Intervention, InterventionError
from medcf.core.network import CounterfactualUNet
from medcf.core.sampling import DDIMSampler


@dataclass
class CounterfactualBatch:
    """Counterfactuals of a batch of images under one intervention.

    Attributes:
        intervention: the intervention.
        affected: intervened attributes and their causal descendants.
        plan: the guidance plan of ``affected`` (every image's with ``affected_descendants: all``; see ``image_plans``).
        made: positions (in the input batch) of the images that have a counterfactual.
        attributes: the counterfactual attributes, one per made image.
        images: the counterfactual images (len(made), C, H, W), on the model's scale [-1, 1].
        rejected: position -> reason, for images the intervention could not apply to.
        network_evaluations: network evaluations per image of the decoding (counted: a step outside the guidance
            interval costs one, a guided step ``plan.evaluations``), the mean over the made images.
        image_affected: per made image, the affected set its guidance was planned for: ``affected``, or with
            ``affected_descendants: changed`` the intervened attributes and the descendants whose value changed.
        image_plans: per made image, the guidance plan it was decoded with.
    """

    intervention: Intervention
    affected: set[str]
    plan: GuidancePlan
    made: list[int]
    attributes: list[dict[str, AttributeValue]]
    images: torch.Tensor
    rejected: dict[int, str]
    network_evaluations: float
    image_affected: list[frozenset[str]] = field(default_factory=list)
    image_plans: list[GuidancePlan] = field(default_factory=list)


def parts_by_set(sets: Sequence[frozenset[str]]) -> dict[frozenset[str], list[int]]:
    """The positions of each distinct affected set, in first-seen order (one decode per part).

    Args:
        sets: one affected set per image.

    Returns:
        set -> the positions (into ``sets``) that have it.
    """
    parts: dict[frozenset[str], list[int]] = {}
    for j, chosen in enumerate(sets):
        parts.setdefault(chosen, []).append(j)
    return parts


class CounterfactualEngine:
    """Abduct a batch once with :meth:`abduct`, then call :meth:`predict` for each intervention (or
    :meth:`run` for both). The settings are checked against the model's schema on construction.

    Args:
        model: the trained network; it is put in eval mode.
        diffusion: the model's noise schedule and prediction type.
        graph: the fitted causal graph; its schema must be the model's.
        settings: how counterfactuals are decoded (guidance, steps, inversion depth, precision).

    Raises:
        ValueError: if the graph and the model have different schemas, or the settings do not fit the schema
            (e.g. per-attribute weights for unknown attributes).
    """

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
        (the empty set: the ``do()`` output's).

        Args:
            affected: intervened attribute names and their causal descendants. Mode ``calibrated`` takes its
                guidance interval from their bands (:func:`~medcf.core.guidance_settings.calibrated_interval`).

        Returns:
            The plan for the engine's settings.

        Raises:
            ValueError: if ``affected`` names unknown attributes or the settings do not fit the schema.
        """
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
        """Latents of the images (DDIM inversion under the factual attributes, no guidance).

        Args:
            images: the batch (B, C, H, W) on the model's scale [-1, 1].
            factual: the factual attributes, one mapping per image.

        Returns:
            The latents, shaped like ``images``, on the model's device.
        """
        codes = encode_attributes(self.model.schema, factual).to(self.model_device)
        denoiser = self._denoiser(codes, guidance_plan(self.model.schema, "none"))
        return self.sampler.invert(denoiser, images.to(self.model_device), self.settings.inversion_refinements)

    @torch.no_grad()
    def predict(
        self, latents: torch.Tensor, factual: Sequence[Mapping[str, AttributeValue]], intervention: Intervention
    ) -> CounterfactualBatch:
        """Decode the latents under ``intervention`` applied (once) to each image's factual attributes.

        Args:
            latents: abducted latents of the batch (:meth:`abduct`).
            factual: the batch's factual attributes, one mapping per image.
            intervention: the intervention to apply.

        Returns:
            The counterfactuals; images the intervention cannot apply to are left out and listed in ``rejected``.
        """
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
        sets = [self.image_affected(affected, intervention, factual[p], row) for p, row in zip(made, rows, strict=True)]
        images = latents.new_empty((len(made), *latents.shape[1:]))
        part_plans: dict[frozenset[str], GuidancePlan] = {}
        evaluations = 0.0
        for chosen, part in parts_by_set(sets).items():
            part_plans[chosen] = plan if chosen == affected else self.plan_for(set(chosen))
            codes = encode_attributes(schema, [rows[j] for j in part]).to(self.model_device)
            denoiser = self._denoiser(codes, part_plans[chosen])
            images[part] = self.sampler.decode(denoiser, latents[[made[j] for j in part]])
            evaluations += denoiser.evaluations * len(part) / len(made)
        plans = [part_plans[chosen] for chosen in sets]
        return CounterfactualBatch(intervention, affected, plan, made, rows, images, rejected, evaluations, sets, plans)

    def image_affected(
        self,
        affected: frozenset[str] | set[str],
        intervention: Intervention,
        factual: Mapping[str, AttributeValue],
        counterfactual: Mapping[str, AttributeValue],
    ) -> frozenset[str]:
        """The affected set one image's guidance is planned for (see ``affected_descendants``).

        Args:
            affected: the intervened attributes and all their descendants.
            intervention: the intervention.
            factual: the image's factual attributes.
            counterfactual: its counterfactual attributes.

        Returns:
            ``affected`` (``all``), or the intervened attributes and the descendants whose value changed (``changed``).
        """
        if self.settings.affected_descendants == "all":
            return frozenset(affected)
        intervened = set(intervention.names)
        return frozenset(n for n in affected if n in intervened or counterfactual[n] != factual[n])

    @torch.no_grad()
    def reconstruct(
        self, latents: torch.Tensor, factual: Sequence[Mapping[str, AttributeValue]], affected: set[str]
    ) -> torch.Tensor:
        """Decode the latents under their own factual attributes with the guidance plan an intervention on
        ``affected`` gets: the null-intervention reference of that intervention's counterfactuals (same
        guidance, no attribute changed), so that counterfactual minus reference is the intervention's change.

        Args:
            latents: abducted latents of the batch (:meth:`abduct`).
            factual: the batch's factual attributes, one mapping per image.
            affected: intervened attributes and their causal descendants (the empty set: the ``do()`` output).

        Returns:
            The decoded images, shaped like ``latents`` (none if ``factual`` is empty).
        """
        if not len(factual):
            return latents[:0]
        codes = encode_attributes(self.model.schema, factual).to(self.model_device)
        return self.sampler.decode(self._denoiser(codes, self.plan_for(set(affected))), latents)

    def references(self, latents: torch.Tensor, factual: Sequence[Mapping[str, AttributeValue]]) -> NullReferences:
        """The null-intervention references of a batch of latents, each guidance plan decoded once (see
        :class:`NullReferences`).

        Args:
            latents: abducted latents of the batch (:meth:`abduct`).
            factual: the batch's factual attributes.

        Returns:
            A cache that decodes the reference of an affected set on first use.
        """
        return NullReferences(self, latents, factual)

    def run(
        self,
        images: torch.Tensor,
        factual: Sequence[Mapping[str, AttributeValue]],
        interventions: Sequence[Intervention],
    ) -> list[CounterfactualBatch]:
        """One abduction, then every intervention from the same latents.

        Args:
            images: the batch (B, C, H, W) on the model's scale [-1, 1].
            factual: the factual attributes, one mapping per image.
            interventions: the interventions to apply, each to the whole batch.

        Returns:
            One :class:`CounterfactualBatch` per intervention, in order.
        """
        latents = self.abduct(images, factual)
        return [self.predict(latents, factual, intervention) for intervention in interventions]


class NullReferences:
    """The null-intervention references (:meth:`CounterfactualEngine.reconstruct`) of one batch of latents, decoded
    once per guidance plan and kept on the CPU, where metrics and classifiers read them.

    Interventions whose affected sets get the same plan share one decode: under CFG every intervention's plan is
    the same, and every intervention's ``do()`` output (``references(set())``) is one decode for all.

    Args:
        engine: the engine whose plans and sampler decode.
        latents: abducted latents of the batch.
        factual: the batch's factual attributes.
    """

    def __init__(
        self, engine: CounterfactualEngine, latents: torch.Tensor, factual: Sequence[Mapping[str, AttributeValue]]
    ) -> None:
        self.engine, self.latents, self.factual = engine, latents, factual
        self._decoded: dict[str, torch.Tensor] = {}

    def __call__(self, affected: set[str]) -> torch.Tensor:
        """The reference of an intervention on ``affected`` (the empty set: the ``do()`` output).

        Args:
            affected: intervened attributes and their causal descendants.

        Returns:
            The batch decoded under its factual attributes with that plan, (N, 1, H, W) on the CPU.
        """
        key = self.engine.plan_for(set(affected)).describe()
        if key not in self._decoded:
            self._decoded[key] = self.engine.reconstruct(self.latents, self.factual, affected).cpu()
        return self._decoded[key]

    def of(self, batch: CounterfactualBatch, positions: Sequence[int] | None = None) -> torch.Tensor:
        """Each made image's reference under the plan it was decoded with (``batch.image_affected``).

        Args:
            batch: counterfactuals predicted from (a subset of) this cache's latents.
            positions: the made images' positions among this cache's latents; None: ``batch.made`` (the batch was
                predicted from all of them).

        Returns:
            (len(batch.made), 1, H, W) on the CPU.
        """
        positions = list(batch.made if positions is None else positions)
        references = self.latents.new_empty((len(positions), *self.latents.shape[1:]), device="cpu")
        for chosen, part in parts_by_set(batch.image_affected).items():  # only the plans the images were decoded with
            references[part] = self(set(chosen))[[positions[j] for j in part]]
        return references

    @property
    def decodes(self) -> int:
        """How many plans were decoded so far."""
        return len(self._decoded)
