"""What one guidance setting decoded on a seed's held-out images, for the evaluate job: per intervention the
counterfactuals with their references, the way back and what the predictors read, and the composition cycles.

Under torchrun each process decodes its share of the images (every N-th); :meth:`DecodedSetting.joined` puts the
shares back together in the order of the seed's images, so rank 0 measures what a single process would have.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from medcf.core.attributes import AttributeValue


def in_order(positions: Sequence[int], items: Sequence[Any]) -> list[Any]:
    """The processes' shares back in the order of the seed's images.

    Args:
        positions: each item's position in the seed's images.
        items: the items, in the order the shares were concatenated.

    Returns:
        The items sorted by position.
    """
    return [item for _, item in sorted(zip(positions, items, strict=True), key=lambda pair: pair[0])]


def joined_rows(positions: Sequence[int], tensors: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    """The shares' per-image tensors as one.

    Args:
        positions: each row's position in the seed's images, in the order of the shares' rows.
        tensors: one tensor per share (rows: images).

    Returns:
        One tensor, rows in the order of ``positions``; None when there is no share or one share has none.
    """
    if not tensors or any(t is None for t in tensors):
        return None
    rows = [row for tensor in tensors for row in tensor]
    return torch.stack(in_order(positions, rows))


@dataclass
class MadeCounterfactuals:
    """One intervention's counterfactuals under one setting, for the images of the seed's set at ``positions``
    (one process's share, or every share joined): their attributes and images, the null-intervention
    ``reference`` (same guidance), the ``null_output`` (the ``do()`` output, as inference makes it), the way
    ``back`` (with reversibility), the predictors' outputs on the counterfactuals
    (``after``) and on the references (``reconstructed``), and their ``features`` (FID).

    Attributes:
        positions: positions in the seed's images of the images that have a counterfactual.
        attributes: the counterfactual attributes, one per position.
        rejected: how many images the intervention could not apply to.
        network_evaluations: network evaluations per image of the decoding (the mean over the images).
        images: the counterfactuals (N, 1, H, W) on [-1, 1]; None when none was made.
        reference: the null-intervention outputs under the same guidance, one per counterfactual.
        null_output: the null intervention's ``do()`` output, as inference makes it, one per counterfactual.
        back: the counterfactuals decoded back under the factual attributes; None unless reversibility is measured.
        after: predicted attribute -> the predictors' outputs on the counterfactuals.
        reconstructed: predicted attribute -> the predictors' outputs on the references.
        features: the predictors' features of the counterfactuals (for FID).
        seconds: time spent decoding and predicting (default 0).
    """

    positions: list[int]
    attributes: list[dict[str, AttributeValue]]
    rejected: int
    network_evaluations: float
    images: torch.Tensor | None = None
    reference: torch.Tensor | None = None
    null_output: torch.Tensor | None = None
    back: torch.Tensor | None = None
    after: dict[str, torch.Tensor] = field(default_factory=dict)
    reconstructed: dict[str, torch.Tensor] = field(default_factory=dict)
    features: torch.Tensor | None = None
    seconds: float = 0.0

    @classmethod
    def joined(cls, shares: Sequence[MadeCounterfactuals]) -> MadeCounterfactuals:
        """Every process's share as one, in the order of the seed's images.

        Args:
            shares: each process's counterfactuals of the same intervention and setting (shares without images
                add only their ``rejected``, ``network_evaluations`` and ``seconds``).

        Returns:
            One :class:`MadeCounterfactuals`: rows in the order of the seed's images, ``rejected`` and ``seconds``
            summed, ``network_evaluations`` the largest of the shares'.
        """
        filled = [share for share in shares if share.positions]
        positions = [k for share in filled for k in share.positions]

        def join(pick: Any) -> torch.Tensor | None:
            return joined_rows(positions, [pick(share) for share in filled])

        names = list(filled[0].after) if filled else []
        return cls(
            positions=sorted(positions),
            attributes=in_order(positions, [a for share in filled for a in share.attributes]),
            rejected=sum(share.rejected for share in shares),
            network_evaluations=max(share.network_evaluations for share in shares),
            images=join(lambda share: share.images),
            reference=join(lambda share: share.reference),
            null_output=join(lambda share: share.null_output),
            back=join(lambda share: share.back),
            after={name: join(lambda share, n=name: share.after[n]) for name in names},
            reconstructed={name: join(lambda share, n=name: share.reconstructed[n]) for name in names},
            features=join(lambda share: share.features),
            seconds=sum(share.seconds for share in shares),
        )


@dataclass
class DecodedSetting:
    """One setting on a seed's images (one process's share, or every share joined): L1 and SSIM per image of the
    composition cycles (``cycled``: the positions of those images) and each intervention's counterfactuals.

    Attributes:
        cycled: positions in the seed's images of the images whose composition cycles were measured.
        composition: measure name (``composition_<cycle>``, ``composition_ssim_<cycle>``) -> one value per
            cycled image.
        made: intervention text -> its counterfactuals.
    """

    cycled: list[int]
    composition: dict[str, torch.Tensor]
    made: dict[str, MadeCounterfactuals]

    @classmethod
    def joined(cls, shares: Sequence[DecodedSetting]) -> DecodedSetting:
        """Every process's share as one, in the order of the seed's images.

        Args:
            shares: each process's decoding of the same setting, at least one, all with the same interventions.

        Returns:
            One :class:`DecodedSetting` with the composition values and each intervention's counterfactuals
            joined (see :meth:`MadeCounterfactuals.joined`).
        """
        cycled = [k for share in shares for k in share.cycled]
        names = next((list(share.composition) for share in shares if share.composition), [])
        composition = {
            name: joined_rows(cycled, [share.composition[name] for share in shares if share.cycled]) for name in names
        }
        made = {text: MadeCounterfactuals.joined([share.made[text] for share in shares]) for text in shares[0].made}
        return cls(sorted(cycled), composition, made)
