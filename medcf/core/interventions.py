"""Interventions as users write them: ``do(sex=F)``, ``do(age=80, race=Black)``, ``do(age=+20)``, ``do()``.

Grammar (strict; parsed by hand, never evaluated)::

    intervention := "do(" [assignment ("," assignment)*] ")"
    assignment   := name "=" value
    value        := number | ("+" | "-") number      (continuous attributes; a sign means relative)
                  | category | "category" | 'category' (categorical attributes, matched case-insensitively)

``do()`` is the null intervention: reconstruction under the factual attributes (the composition check and
the audit's control). Every error is one line naming the problem.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from medcf.core.attributes import AttributeSchema, AttributeValue, SchemaError

_OUTER = re.compile(r"\s*do\s*\((.*)\)\s*", re.DOTALL)
_ASSIGNMENT = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")


class InterventionError(SchemaError):
    """A malformed or impossible intervention.

    Args:
        *args: the one-line message, as for :class:`ValueError`.
    """


@dataclass(frozen=True)
class Assignment:
    """One intervened attribute: a value to set, or (continuous only) a shift relative to the factual value.

    Attributes:
        name: the attribute.
        value: the value to set (parsed), or the signed shift when ``relative``.
        relative: ``value`` is added to the factual value.
    """

    name: str
    value: AttributeValue
    relative: bool = False


@dataclass(frozen=True)
class Intervention:
    """A parsed ``do(...)``; :meth:`apply` gives the intervened values for one image's factual attributes.

    Attributes:
        assignments: one per intervened attribute, in the order written; empty for ``do()``.
    """

    assignments: tuple[Assignment, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.assignments)

    @property
    def is_null(self) -> bool:
        return not self.assignments

    @property
    def text(self) -> str:
        """Canonical spelling, e.g. ``do(age=+20, sex=F)``."""
        parts = []
        for a in self.assignments:
            value = f"{a.value:+.12g}" if a.relative else (f"{a.value:.12g}" if isinstance(a.value, float) else a.value)
            parts.append(f"{a.name}={value}")
        return f"do({', '.join(parts)})"

    def apply(self, schema: AttributeSchema, factual: Mapping[str, AttributeValue]) -> dict[str, AttributeValue]:
        """The intervened attributes' new values (relative shifts resolved and range-checked).

        Args:
            schema: the attributes the intervention was parsed against.
            factual: one image's factual attribute values (needed for the relatively shifted attributes).

        Returns:
            Intervened attribute name -> its new value.

        Raises:
            InterventionError: if a shift takes this image's value outside the attribute's range.
        """
        values: dict[str, AttributeValue] = {}
        for a in self.assignments:
            if a.relative:
                target = float(factual[a.name]) + float(a.value)
                attribute = schema[a.name]
                if not attribute.low <= target <= attribute.high:
                    raise InterventionError(
                        f"{self.text}: {a.name} {float(factual[a.name]):g} {float(a.value):+g} = {target:g} is outside "
                        f"[{attribute.low:g}, {attribute.high:g}]"
                    )
                values[a.name] = target
            else:
                values[a.name] = a.value
        return values


def parse_intervention(schema: AttributeSchema, text: str) -> Intervention:
    """Parse one intervention string against ``schema``.

    Args:
        schema: the attributes that may be intervened on.
        text: the intervention, e.g. ``do(sex=F)``, ``do(age=+20)`` or ``do()`` (grammar in the module docstring).

    Returns:
        The parsed intervention.

    Raises:
        InterventionError: if the text is malformed, assigns an attribute twice, names an unknown attribute, gives a
            value that is not allowed, or a shift larger than the attribute's range.
    """
    outer = _OUTER.fullmatch(text)
    if outer is None:
        raise InterventionError(f"malformed intervention {text!r}: expected do(name=value, ...), e.g. do(sex=F)")
    body = outer.group(1).strip()
    assignments: list[Assignment] = []
    for piece in _split(body, text) if body else []:
        match = _ASSIGNMENT.fullmatch(piece)
        if match is None or not match.group(2):
            raise InterventionError(f"malformed assignment {piece.strip()!r} in {text!r}: expected name=value")
        name, raw = match.group(1), match.group(2)
        if name in (a.name for a in assignments):
            raise InterventionError(f"{text!r}: {name} is assigned twice")
        assignments.append(_assignment(schema, name, raw, text))
    return Intervention(tuple(assignments))


def _split(body: str, text: str) -> list[str]:
    """Split on commas outside quotes."""
    pieces, current, quote = [], "", ""
    for char in body:
        if char in "\"'" and (not quote or quote == char):
            quote = "" if quote else char
        if char == "," and not quote:
            pieces.append(current)
            current = ""
        else:
            current += char
    if quote:
        raise InterventionError(f"unbalanced quote in {text!r}")
    return [*pieces, current]


def _assignment(schema: AttributeSchema, name: str, raw: str, text: str) -> Assignment:
    try:
        attribute = schema[name]
    except SchemaError as error:
        raise InterventionError(f"{text!r}: {error}") from None
    if attribute.kind == "categorical":
        value = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'" else raw
        try:
            return Assignment(name, attribute.parse(value))
        except SchemaError as error:
            raise InterventionError(f"{text!r}: {error}") from None
    if _NUMBER.fullmatch(raw) is None:
        raise InterventionError(f"{text!r}: {name}: {raw!r} is not a number (write e.g. {name}=80 or {name}=+20)")
    number = float(raw)
    if raw[0] in "+-":
        if not math.isfinite(number):
            raise InterventionError(f"{text!r}: {name}: {raw!r} is not a finite shift")
        if abs(number) > attribute.high - attribute.low:
            raise InterventionError(
                f"{text!r}: {name}: a shift of {raw} takes every {name} in [{attribute.low:g}, {attribute.high:g}] "
                "outside that range"
            )
        return Assignment(name, number, relative=True)
    try:
        return Assignment(name, attribute.parse(number))
    except SchemaError as error:
        raise InterventionError(f"{text!r}: {error}") from None
