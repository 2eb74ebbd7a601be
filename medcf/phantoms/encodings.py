"""Random but realistic pixel encodings for phantom DICOM files: the mix a hospital export contains."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medcf.radiograph.encode import TRANSFER_SYNTAXES, PixelEncoding

#: (slope, intercept) pairs seen in radiograph exports
RESCALES = ((1.0, 0.0), (1.0, 0.0), (0.5, -1024.0), (2.0, 0.0))


def random_encoding(
    rng: np.random.Generator,
    bits: Sequence[int] = (12, 14, 15, 16),
    monochrome1: float = 0.3,
    voi_weights: Sequence[float] = (0.5, 0.25, 0.25),
    transfer_weights: Sequence[float] = (0.4, 0.2, 0.2, 0.2),
) -> PixelEncoding:
    """Draw an encoding: photometric, bit depth, rescale, VOI function (LINEAR, LINEAR_EXACT, SIGMOID),
    window placement and transfer syntax (uncompressed, RLE, JPEG 2000 or JPEG-LS, all lossless).

    Args:
        rng: random generator for every choice.
        bits: bit depths to choose from, uniformly.
        monochrome1: probability of MONOCHROME1 (stored high = dark) instead of MONOCHROME2 (default 0.3).
        voi_weights: probabilities of the VOI functions LINEAR, LINEAR_EXACT and SIGMOID.
        transfer_weights: probabilities of the transfer syntaxes, in the order of
            :data:`~medcf.radiograph.encode.TRANSFER_SYNTAXES`.

    Returns:
        The encoding; rescale is one of :data:`RESCALES`, the window starts in [0.02, 0.15) of the stored range
        and ends at least 0.6 above that, below 0.98.
    """
    slope, intercept = RESCALES[int(rng.integers(len(RESCALES)))]
    low = float(rng.uniform(0.02, 0.15))
    return PixelEncoding(
        photometric="MONOCHROME1" if rng.uniform() < monochrome1 else "MONOCHROME2",
        bits_stored=int(rng.choice(list(bits))),
        rescale_slope=slope,
        rescale_intercept=intercept,
        voi_function=str(rng.choice(["LINEAR", "LINEAR_EXACT", "SIGMOID"], p=list(voi_weights))),
        window_low_fraction=low,
        window_high_fraction=float(rng.uniform(low + 0.6, 0.98)),
        transfer_syntax=TRANSFER_SYNTAXES[int(rng.choice(len(TRANSFER_SYNTAXES), p=list(transfer_weights)))],
    )


def describe_encoding(encoding: PixelEncoding) -> dict[str, str | int]:
    """The encoding's choices as flat columns for the ground-truth sidecar.

    Args:
        encoding: the encoding to describe.

    Returns:
        ``photometric``, ``bits_stored``, ``voi_function`` and ``transfer_syntax`` (as a string).
    """
    return {
        "photometric": encoding.photometric,
        "bits_stored": encoding.bits_stored,
        "voi_function": encoding.voi_function,
        "transfer_syntax": str(encoding.transfer_syntax),
    }
