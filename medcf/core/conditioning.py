"""Attribute-split condition embedding and condition dropout.

Each attribute has its own small MLP (categorical: one-hot in; continuous: the value scaled to [-1, 1] over
its range) producing a block of ``block_dim`` numbers. A nulled attribute's block is zeros (or a learned
null token). Because every attribute owns its block, any subset of attributes can be kept for any row of a
batch: that is what decoupled classifier-free guidance needs (Xia et al. 2025, arXiv 2506.14399).

Attribute values travel as one float tensor ``(batch, K)`` in schema order: the category index for a
categorical attribute, the raw value for a continuous one (:func:`encode_attributes`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from medcf.core.attributes import AttributeSchema, AttributeValue, SchemaError


def encode_attributes(schema: AttributeSchema, rows: Sequence[Mapping[str, AttributeValue]]) -> torch.Tensor:
    """Rows of attribute values -> float tensor ``(len(rows), K)``: category index or raw value.

    Args:
        schema: the attributes; columns follow its order.
        rows: one mapping per image, attribute name -> value (text or number); every attribute is needed.

    Returns:
        The float32 codes, shape ``(len(rows), K)``.

    Raises:
        SchemaError: if a value is not allowed.
        KeyError: if a row lacks an attribute.
    """
    codes = []
    for row in rows:
        parsed = schema.validate({name: row[name] for name in schema.names})
        codes.append(
            [
                float(schema[n].index(parsed[n])) if schema[n].kind == "categorical" else float(parsed[n])
                for n in schema.names
            ]
        )
    return torch.tensor(codes, dtype=torch.float32).reshape(len(rows), len(schema.names))


class AttributeEmbedder(nn.Module):
    """Per-attribute MLPs to ``block_dim`` blocks, nulled per row by a keep-mask.

    Args:
        schema: the attributes, in the order of the value tensor's columns.
        block_dim: size of each attribute's block.
        hidden_dim: width of each attribute's MLP.
        learned_null: use a learned null token per attribute instead of zeros.
    """

    def __init__(
        self, schema: AttributeSchema, block_dim: int = 32, hidden_dim: int = 64, learned_null: bool = False
    ) -> None:
        super().__init__()
        self.schema = schema
        self.block_dim = block_dim
        widths = [len(a.values) if a.kind == "categorical" else 1 for a in schema.attributes]
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(w, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, block_dim)) for w in widths
        )
        self.null_tokens = nn.Parameter(torch.zeros(len(widths), block_dim), requires_grad=learned_null)
        ranges = [(a.low, a.high) if a.kind == "continuous" else (0.0, 1.0) for a in schema.attributes]
        self.register_buffer("low", torch.tensor([r[0] for r in ranges]), persistent=False)
        self.register_buffer("high", torch.tensor([r[1] for r in ranges]), persistent=False)

    @property
    def num_attributes(self) -> int:
        return len(self.mlps)

    def forward(self, values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``values`` (B, K) codes, ``keep`` (B, K) bool -> blocks (B, K, block_dim).

        Args:
            values: attribute codes as made by :func:`encode_attributes`, shape (B, K).
            keep: which attributes each row keeps, shape (B, K); a dropped attribute's block is the null token.

        Returns:
            The blocks, shape (B, K, block_dim).

        Raises:
            ValueError: if ``values`` is not (B, K) or ``keep`` has another shape.
        """
        if values.ndim != 2 or values.shape[1] != self.num_attributes or keep.shape != values.shape:
            raise ValueError(
                f"AttributeEmbedder expects values and keep of shape (batch, {self.num_attributes}); "
                f"got {tuple(values.shape)} and {tuple(keep.shape)}"
            )
        blocks = []
        for k, (attribute, mlp) in enumerate(zip(self.schema.attributes, self.mlps, strict=True)):
            if attribute.kind == "categorical":
                inputs = nn.functional.one_hot(values[:, k].long(), len(attribute.values)).to(values.dtype)
            else:
                inputs = 2.0 * (values[:, k : k + 1] - self.low[k]) / (self.high[k] - self.low[k]) - 1.0
            blocks.append(mlp(inputs))
        stacked = torch.stack(blocks, dim=1)
        null = self.null_tokens.to(stacked.dtype).expand_as(stacked)
        return torch.where(keep[..., None], stacked, null)


@dataclass
class ConditionDropout:
    """Which attributes each training row keeps: classifier-free guidance needs rows without some or all.

    Args:
        whole: probability that a row drops every attribute (the paper's policy).
        per_attribute: probability that each attribute is dropped, independently.
        per_group: probability that each group in ``groups`` is dropped as a whole, independently.
        groups: attribute-name groups for ``per_group`` (e.g. [["age", "disease"], ["sex"], ["race"]]).
    """

    whole: float = 0.1
    per_attribute: float = 0.0
    per_group: float = 0.0
    groups: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("whole", "per_attribute", "per_group"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise SchemaError(f"condition dropout {name}: {value!r} must lie in [0, 1]")
        if self.per_group > 0 and not self.groups:
            raise SchemaError("condition dropout per_group > 0 needs groups")

    def keep_mask(self, schema: AttributeSchema, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """A (batch, K) bool mask of kept attributes.

        Per-attribute, per-group and whole-row drops are drawn independently, in that order.

        Args:
            schema: the attributes; columns follow its order.
            batch: the number of rows.
            generator: random generator for the draws (None: torch's default).

        Returns:
            The mask, True where an attribute is kept.

        Raises:
            SchemaError: if a group names an unknown attribute.
        """
        k = len(schema.names)
        keep = torch.ones(batch, k, dtype=torch.bool)
        if self.per_attribute > 0:
            keep &= torch.rand(batch, k, generator=generator) >= self.per_attribute
        for group in self.groups if self.per_group > 0 else []:
            columns = [schema.names.index(schema[name].name) for name in group]
            dropped = torch.rand(batch, generator=generator) < self.per_group
            keep[dropped.nonzero(as_tuple=True)[0][:, None], torch.tensor(columns)] = False
        if self.whole > 0:
            keep &= (torch.rand(batch, generator=generator) >= self.whole)[:, None]
        return keep
