"""Attribute schema: the named attributes a model or phantom is conditioned on, and strict value parsing.

An attribute is either categorical (a fixed, ordered list of values) or continuous (a closed numeric range).
Parents give the causal graph: an attribute's parents are the attributes its structural equation reads.
Values typed by users (command line, configs) go through :meth:`AttributeSchema.parse_value`, which never
evaluates text and fails with a one-line message naming the attribute, the value and what is allowed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

AttributeValue = str | float


class SchemaError(ValueError):
    """A bad attribute name or value (unknown attribute, value not allowed, malformed assignment).

    Args:
        *args: the one-line message, as for :class:`ValueError`.
    """


@dataclass(frozen=True)
class Attribute:
    """One attribute of the schema.

    Args:
        name: identifier used everywhere (configs, CSV columns, interventions), e.g. ``"age"``.
        kind: ``"categorical"`` or ``"continuous"``.
        values: the allowed values of a categorical attribute, in their coding order.
        low: smallest allowed value of a continuous attribute.
        high: largest allowed value of a continuous attribute.
        parents: names of the attributes this one's structural equation depends on.
        unit: unit of a continuous attribute, for messages and plots.
    """

    name: str
    kind: Literal["categorical", "continuous"]
    values: tuple[str, ...] = ()
    low: float = -math.inf
    high: float = math.inf
    parents: tuple[str, ...] = ()
    unit: str = ""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise SchemaError(f"attribute name {self.name!r} must be lower-case letters, digits and _")
        if self.kind == "categorical" and len(self.values) < 2:
            raise SchemaError(f"categorical attribute {self.name!r} needs at least two values")
        if len({v.lower() for v in self.values}) != len(self.values):
            raise SchemaError(f"categorical attribute {self.name!r} has repeated values {self.values}")
        if self.kind == "continuous" and not self.low < self.high:
            raise SchemaError(f"continuous attribute {self.name!r} needs low < high")
        if self.kind not in ("categorical", "continuous"):
            raise SchemaError(f"attribute {self.name!r}: kind must be categorical or continuous")

    def parse(self, text: str | float) -> AttributeValue:
        """Parse and validate one value of this attribute (text from a user, or a number).

        Args:
            text: the value as typed (e.g. ``"F"``, ``"63.5"``) or a number. A categorical value is stripped and, if
                not found as written, matched ignoring case.

        Returns:
            The category as spelled in ``values`` (categorical), or the number as a ``float`` (continuous).

        Raises:
            SchemaError: if a categorical value is not allowed, or a continuous value is not a number, not finite
                or outside ``[low, high]``.
        """
        if self.kind == "categorical":
            value = str(text).strip()
            if value not in self.values:
                folded = {v.lower(): v for v in self.values}
                if value.lower() in folded:
                    return folded[value.lower()]
                raise SchemaError(f"{self.name}: unknown value {value!r}; allowed: {', '.join(self.values)}")
            return value
        try:
            number = float(text)
        except (TypeError, ValueError):
            raise SchemaError(f"{self.name}: {text!r} is not a number") from None
        if not math.isfinite(number) or not self.low <= number <= self.high:
            raise SchemaError(f"{self.name}: {number:.12g} is outside the allowed range [{self.low:g}, {self.high:g}]")
        return number

    def index(self, value: AttributeValue) -> int:
        """Position of a categorical value in the coding order.

        Args:
            value: one of ``values``, compared as text (exact spelling).

        Returns:
            The 0-based index of ``value`` in ``values``.

        Raises:
            ValueError: if ``value`` is not one of ``values``.
        """
        return self.values.index(str(value))


@dataclass(frozen=True)
class AttributeSchema:
    """An ordered set of attributes forming a causal DAG (parents must be attributes of the schema).

    Attributes:
        attributes: the attributes, in schema order.

    Raises:
        SchemaError: if attribute names repeat, a parent is not in the schema, or the parents form a cycle.
    """

    attributes: tuple[Attribute, ...]
    _by_name: dict[str, Attribute] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name = {a.name: a for a in self.attributes}
        if len(by_name) != len(self.attributes):
            raise SchemaError("attribute names must be unique")
        for a in self.attributes:
            for p in a.parents:
                if p not in by_name:
                    raise SchemaError(f"attribute {a.name!r}: parent {p!r} is not in the schema")
        object.__setattr__(self, "_by_name", by_name)
        self.topological_order()  # raises on cycles

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.attributes)

    def __getitem__(self, name: str) -> Attribute:
        try:
            return self._by_name[name]
        except KeyError:
            raise SchemaError(f"unknown attribute {name!r}; known: {', '.join(self.names)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def topological_order(self) -> tuple[str, ...]:
        """Attribute names ordered so that every parent comes before its children.

        Returns:
            All attribute names, each after its parents.

        Raises:
            SchemaError: if the parents form a cycle.
        """
        order: list[str] = []
        state: dict[str, int] = {}

        def visit(name: str) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                raise SchemaError(f"the causal graph has a cycle through {name!r}")
            state[name] = 1
            for p in self._by_name[name].parents:
                visit(p)
            state[name] = 2
            order.append(name)

        for a in self.attributes:
            visit(a.name)
        return tuple(order)

    def children(self, name: str) -> tuple[str, ...]:
        """The attributes that list ``name`` among their parents.

        Args:
            name: an attribute name.

        Returns:
            The names of its direct children, in schema order (empty if it has none).
        """
        return tuple(a.name for a in self.attributes if name in a.parents)

    def descendants(self, names: Iterable[str]) -> set[str]:
        """All attributes causally downstream of ``names`` (not including them).

        Args:
            names: attribute names to start from.

        Returns:
            The names of their children, grandchildren and so on.

        Raises:
            SchemaError: if a name is not an attribute of the schema.
        """
        found: set[str] = set()
        stack = [self[n].name for n in names]
        while stack:
            for child in self.children(stack.pop()):
                if child not in found:
                    found.add(child)
                    stack.append(child)
        return found

    def parse_assignment(self, text: str) -> tuple[str, AttributeValue]:
        """Parse ``"name=value"`` strictly (no evaluation), e.g. ``"sex=F"`` or ``"age=63.5"``.

        Args:
            text: the assignment; spaces around the name and value and quotes around the value are ignored.

        Returns:
            The attribute name and the value parsed by :meth:`Attribute.parse`.

        Raises:
            SchemaError: if the text is not ``name=value``, the name is unknown or the value is not allowed.
        """
        match = re.fullmatch(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.+?)\s*", text)
        if match is None:
            raise SchemaError(f"malformed assignment {text!r}; expected name=value, e.g. sex=F")
        name, raw = match.group(1), match.group(2).strip("\"'")
        return name, self[name].parse(raw)

    def to_config(self) -> list[dict[str, object]]:
        """Plain data (for YAML configs and checkpoints); :meth:`from_config` reads it back.

        Returns:
            One mapping per attribute, in schema order: ``name``, ``kind``, then ``values`` (categorical) or
            ``low`` and ``high`` (continuous), and ``parents`` when there are any.
        """
        rows: list[dict[str, object]] = []
        for a in self.attributes:
            row: dict[str, object] = {"name": a.name, "kind": a.kind}
            if a.kind == "categorical":
                row["values"] = list(a.values)
            else:
                row.update(low=a.low, high=a.high)
            if a.parents:
                row["parents"] = list(a.parents)
            rows.append(row)
        return rows

    @classmethod
    def from_config(cls, rows: Sequence[Mapping[str, object]]) -> AttributeSchema:
        """Build from a list of ``{name, kind, values | low, high, parents}`` mappings (a bundle config).

        Args:
            rows: one mapping per attribute, in schema order; each needs ``name`` and ``kind`` and may have
                ``values``, ``low``, ``high``, ``parents`` and ``unit``.

        Returns:
            The schema.

        Raises:
            SchemaError: if a mapping lacks ``name`` or ``kind`` or has other keys, or the attributes are invalid.
        """
        attributes = []
        for k, row in enumerate(rows):
            unknown = set(row) - {"name", "kind", "values", "low", "high", "parents", "unit"}
            if unknown or "name" not in row or "kind" not in row:
                raise SchemaError(
                    f"attributes[{k}]: needs name and kind, may have values, low, high, parents, "
                    f"unit; got {sorted(row)}"
                )
            attributes.append(
                Attribute(
                    name=str(row["name"]),
                    kind=row["kind"],  # type: ignore[arg-type]
                    values=tuple(str(v) for v in row.get("values", ())),  # type: ignore[union-attr]
                    low=float(row.get("low", -math.inf)),
                    high=float(row.get("high", math.inf)),  # type: ignore[arg-type]
                    parents=tuple(str(p) for p in row.get("parents", ())),  # type: ignore[union-attr]
                    unit=str(row.get("unit", "")),
                )
            )
        return cls(tuple(attributes))

    def validate(self, values: Mapping[str, AttributeValue]) -> dict[str, AttributeValue]:
        """Check a mapping of attribute values; returns a copy with parsed values.

        Args:
            values: attribute name -> value (text or number); attributes may be left out.

        Returns:
            The same names with the values parsed by :meth:`Attribute.parse`.

        Raises:
            SchemaError: if a name is unknown or a value is not allowed.
        """
        return {name: self[name].parse(value) for name, value in values.items()}


def attribute_text(attribute: Attribute) -> str:
    """An attribute in a few characters: ``sex{M,F}``, ``age[18,95]``.

    Args:
        attribute: the attribute to describe.

    Returns:
        Its name followed by its values (categorical) or its range (continuous).
    """
    if attribute.kind == "categorical":
        return f"{attribute.name}{{{','.join(attribute.values)}}}"
    return f"{attribute.name}[{attribute.low:g},{attribute.high:g}]"
