"""Where medcf's MONAI bundles live, for configs run from anywhere (``bundle_root`` in their YAML)."""

from __future__ import annotations

from pathlib import Path

import medcf

BUNDLE_NAMES = ("cxr_counterfactual", "mammo_counterfactual")


def bundle_root(name: str) -> str:
    """The folder of bundle ``name``: inside the medcf checkout (editable install), else ./bundles/<name>."""
    if name not in BUNDLE_NAMES:
        raise ValueError(f"unknown bundle {name!r}; medcf ships {', '.join(BUNDLE_NAMES)}")
    in_checkout = Path(medcf.__file__).resolve().parents[1] / "bundles" / name
    return str(in_checkout if in_checkout.is_dir() else Path("bundles") / name)
