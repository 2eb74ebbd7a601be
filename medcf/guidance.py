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

The combining functions are pure. :func:`guidance_plan` lists the keep-masks a mode needs (null first);
:class:`GuidedDenoiser` evaluates all of them for a batch in ONE forward call and combines them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from medcf.attributes import AttributeSchema

GuidanceMode = Literal["none", "cfg", "dcfg", "dcfg_per_attribute"]
GUIDANCE_MODES: tuple[str, ...] = ("none", "cfg", "dcfg", "dcfg_per_attribute")


def cfg(eps_null: torch.Tensor, eps_cond: torch.Tensor, weight: float) -> torch.Tensor:
    """Classifier-free guidance: eps_null + w (eps_cond - eps_null). w = 1 is the conditional prediction."""
    return eps_null + weight * (eps_cond - eps_null)


def dcfg(eps_null: torch.Tensor, eps_groups: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Decoupled CFG: eps_null + sum_m w_m (eps_m - eps_null), one term per attribute group."""
    if len(eps_groups) != len(weights) or not eps_groups:
        raise ValueError(f"dcfg needs one weight per group: {len(eps_groups)} groups, {len(weights)} weights")
    guided = eps_null.clone()
    for eps_m, w_m in zip(eps_groups, weights, strict=True):
        guided = guided + w_m * (eps_m - eps_null)
    return guided


@dataclass(frozen=True)
class GuidancePlan:
    """The forward evaluations of one guided step and how to combine them.

    ``keep`` (R, K): row 0 is the null condition when ``weights`` is not empty; rows 1..M are the groups.
    Mode "none" has a single row (every attribute kept) and no weights: its prediction is used as is.
    """

    keep: torch.Tensor
    weights: tuple[float, ...]
    groups: tuple[tuple[str, ...], ...]

    @property
    def evaluations(self) -> int:
        """Network evaluations per step per image."""
        return self.keep.shape[0]

    def describe(self) -> str:
        """The groups and their weights, e.g. ``age+disease w=2, race+sex w=1`` (``no guidance`` for mode none)."""
        if not self.weights:
            return "no guidance"
        return ", ".join(
            f"{'+'.join(group)} w={weight:g}" for group, weight in zip(self.groups, self.weights, strict=True)
        )

    def combine(self, predictions: torch.Tensor) -> torch.Tensor:
        """Predictions (R, B, ...) in the plan's row order -> the guided prediction (B, ...)."""
        if not self.weights:
            return predictions[0]
        return dcfg(predictions[0], list(predictions[1:]), self.weights)


def guidance_plan(
    schema: AttributeSchema,
    mode: str,
    affected: Collection[str] = (),
    weight: float = 1.0,
    w_aff: float = 1.0,
    w_inv: float = 1.0,
    per_attribute: Mapping[str, float] | None = None,
) -> GuidancePlan:
    """Keep-masks and weights of a guidance mode.

    Args:
        schema: the model's attributes (column order of the keep-masks).
        mode: "none" (conditional, w = 1), "cfg" (one global ``weight``), "dcfg" (affected group with
            ``w_aff``, invariant group with ``w_inv``), "dcfg_per_attribute" (one weight per attribute from
            ``per_attribute``, missing ones get ``w_inv`` if not affected else ``w_aff``).
        affected: intervened attributes and their descendants (for the DCFG modes).
    """
    names = schema.names
    unknown = set(affected) - set(names)
    if unknown:
        raise ValueError(f"affected attributes {sorted(unknown)} are not in the schema ({', '.join(names)})")
    if mode == "none":
        return GuidancePlan(torch.ones(1, len(names), dtype=torch.bool), (), (names,))
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
    else:
        raise ValueError(f"guidance mode {mode!r} is not one of {', '.join(GUIDANCE_MODES)}")
    keep = torch.zeros(len(groups) + 1, len(names), dtype=torch.bool)
    for row, group in enumerate(groups, start=1):
        keep[row, [names.index(n) for n in group]] = True
    return GuidancePlan(keep, tuple(float(w) for w in weights), tuple(tuple(g) for g in groups))


class GuidedDenoiser:
    """``predict(x, t)`` for the DDIM sampler: every guidance term of the step in one batched forward.

    Args:
        model: a network with ``forward(x, timesteps, attributes, keep)``.
        attributes: (B, K) attribute codes the batch is decoded under.
        plan: the guidance plan.
        max_rows: at most this many rows per forward call (None: the whole batch, all terms, one call). The
            batch is split by images, so an image's guidance terms always share one call. On a CPU the cost
            per row grows with the batch (activations leave the cache), so calls of about 9 rows are faster.
    """

    def __init__(
        self, model: nn.Module, attributes: torch.Tensor, plan: GuidancePlan, max_rows: int | None = None
    ) -> None:
        self.model, self.attributes, self.plan, self.max_rows = model, attributes, plan, max_rows
        self.calls = 0

    def __call__(self, x: torch.Tensor, t: int) -> torch.Tensor:
        rows, batch = self.plan.evaluations, x.shape[0]
        images_per_call = batch if self.max_rows is None else max(1, self.max_rows // rows)
        self.calls += 1
        keep = self.plan.keep.to(x.device)
        guided = []
        for start in range(0, batch, images_per_call):
            images = x[start : start + images_per_call]
            n = images.shape[0]
            predictions = self.model(
                images.repeat(rows, *([1] * (x.ndim - 1))),
                torch.full((rows * n,), t, device=x.device, dtype=torch.long),
                self.attributes[start : start + n].repeat(rows, 1),
                keep.repeat_interleave(n, dim=0),
            )
            guided.append(self.plan.combine(predictions.reshape(rows, n, *x.shape[1:])))
        return torch.cat(guided)


def default_max_rows(device: torch.device) -> int | None:
    """Rows per forward call: the whole stacked batch on a GPU; on a CPU about 9 rows (three images with their
    three DCFG terms), where benchmarks/counterfactual_speed.py measured one 24-row call slower than three
    8-row calls."""
    return None if device.type == "cuda" else 9
