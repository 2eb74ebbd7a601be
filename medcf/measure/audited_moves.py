"""What one audit row says about its intervention, from the attributes alone: whether the intervention changes the
image at all, the row's direction (``from`` -> ``to``), whether the attribute predictors recognise the move on
the counterfactual, and the one-line refusal of an intervention that moves none of the images."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from medcf.core.attributes import AttributeSchema, AttributeValue
from medcf.core.interventions import Intervention, InterventionError


def refuse_inapplicable(
    schema: AttributeSchema, interventions: Sequence[Intervention], factual: Sequence[Mapping[str, AttributeValue]]
) -> None:
    """ValueError, one line, for an intervention that changes none of the images (before any is decoded): every
    image already has the value, or the shift takes every image outside the attribute's range.

    Args:
        schema: the attributes.
        interventions: the audited interventions.
        factual: every audited image's attributes.

    Raises:
        ValueError: for the first intervention that moves none of the images, naming why.
    """
    for intervention in interventions:
        if any(changes_image(schema, intervention, attributes) for attributes in factual):
            continue
        name = intervention.names[0]
        try:
            for attributes in factual:
                intervention.apply(schema, attributes)
        except InterventionError:
            attribute = schema[name]
            values = [float(attributes[name]) for attributes in factual]
            raise ValueError(
                f"interventions: {intervention.text} takes {name} outside [{attribute.low:g}, {attribute.high:g}] for "
                f"every one of the {len(factual)} images ({name} {min(values):g}-{max(values):g}); nothing to audit"
            ) from None
        raise ValueError(
            f"interventions: {intervention.text} changes none of the {len(factual)} images (each already has "
            f"{name} = {intervention.assignments[0].value}); nothing to audit"
        )


def changes_image(schema: AttributeSchema, intervention: Intervention, factual: Mapping[str, AttributeValue]) -> bool:
    """Whether ``intervention`` changes any attribute of this image (do(sex=F) leaves a female image alone).

    Args:
        schema: the attributes.
        intervention: the intervention.
        factual: the image's attributes.

    Returns:
        True when an attribute changes; False when none does or the intervention does not apply.
    """
    try:
        intervened = intervention.apply(schema, factual)
    except InterventionError:
        return False
    return any(intervened[name] != factual[name] for name in intervened)


def row_direction(intervention: Intervention, factual: Mapping[str, AttributeValue]) -> tuple[str, str]:
    """``from`` and ``to`` of a row: ``M`` and ``F`` for a set value, ``observed`` and ``+20`` for a shift.

    Args:
        intervention: the row's intervention (one assignment).
        factual: the image's attributes.

    Returns:
        (from, to) as text.
    """
    assignment = intervention.assignments[0]
    if assignment.relative:
        return "observed", f"{float(assignment.value):+g}"
    return str(factual[assignment.name]), str(assignment.value)


def recognised_moves(
    schema: AttributeSchema,
    name: str,
    before: Mapping[str, torch.Tensor],
    after: Mapping[str, torch.Tensor],
    intervened: Sequence[Mapping[str, AttributeValue]],
    factual: Sequence[Mapping[str, AttributeValue]],
) -> list[float]:
    """Per counterfactual, 1 where the predictors recognise the intervention, else 0: the intervened value is the
    predicted class (categorical), or the predicted value moved at least half the shift its way (continuous).

    Args:
        schema: the attributes.
        name: the intervened attribute.
        before: the predictors' outputs on the factual images (or their ``do()`` outputs), per attribute.
        after: the predictors' outputs on the counterfactuals, per attribute.
        intervened: each counterfactual's attributes.
        factual: each image's factual attributes, in the same order.

    Returns:
        1.0 or 0.0 per counterfactual.
    """
    attribute = schema[name]
    if attribute.kind == "categorical":
        predicted = after[name].argmax(dim=1).tolist()
        return [float(attribute.values[p] == row[name]) for p, row in zip(predicted, intervened, strict=True)]
    moved = (after[name].reshape(-1) - before[name].reshape(-1)).tolist()
    shifts = [float(row[name]) - float(source[name]) for row, source in zip(intervened, factual, strict=True)]
    return [float(m * s > 0 and abs(m) >= abs(s) / 2) for m, s in zip(moved, shifts, strict=True)]


def age_band(value: float, width: int = 20) -> str:
    """The subgroup of a continuous value (age) in the audit's subgroup rates.

    Args:
        value: the value.
        width: the band's width.

    Returns:
        ``low-high`` of the band, e.g. ``60-79``.
    """
    low = int(value // width * width)
    return f"{low}-{low + width - 1}"
