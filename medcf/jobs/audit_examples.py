"""The audit report's examples: per attribute the counterfactuals whose classifier prediction moved most, kept
while the chunks are measured and merged in a single process's order across a sharded run."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Triplet:
    """One example for the report: a factual image and its counterfactual on [-1, 1], (H, W), and how far the
    classifier's probability moved (the report draws their difference beside them).

    Attributes:
        attribute: the intervened attribute.
        direction: the row's ``from -> to`` (e.g. ``M -> F``, or ``observed -> +20`` for a shift).
        delta_p: the classifier's probability of the counterfactual minus that of the factual image.
        factual: the factual image, (H, W) on [-1, 1].
        counterfactual: the counterfactual, (H, W) on [-1, 1].
    """

    attribute: str
    direction: str
    delta_p: float
    factual: np.ndarray
    counterfactual: np.ndarray


class ExampleKeeper:
    """The report's examples: per attribute the ``count`` triplets whose prediction moved most (of equal moves the
    earlier row's), each with its row's place in a single process's order, ``(chunk start, row in the chunk)``.

    Args:
        count: examples kept per attribute.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.kept: list[tuple[tuple[int, int], Triplet]] = []

    def add(self, order: tuple[int, int], triplet: Triplet) -> None:
        """Keep ``triplet`` if it is among the ``count`` largest moves of its attribute so far.

        Args:
            order: the row's place in a single process's order, ``(chunk start, row in the chunk)``; of equal
                moves the earlier is kept.
            triplet: the example.
        """
        self.kept.append((order, triplet))
        mine = [entry for entry in self.kept if entry[1].attribute == triplet.attribute]
        mine.sort(key=lambda entry: (-abs(entry[1].delta_p), entry[0]))
        dropped = {id(entry) for entry in mine[self.count :]}
        self.kept = [entry for entry in self.kept if id(entry) not in dropped]

    @property
    def triplets(self) -> list[Triplet]:
        """The kept examples, in the order they were kept."""
        return [triplet for _, triplet in self.kept]
