"""Layers stay one-way: the model, sampling, guidance, inference and training code never import the phantoms (or the
evaluation and audit tools built on top of them); a bundle hands training a manifest path."""

import subprocess
import sys

LOWER_LAYERS = [
    "medcf.training.data",
    "medcf.training.batch",
    "medcf.training.checkpoint",
    "medcf.training.ema",
    "medcf.training.samples",
    "medcf.model",
    "medcf.sampling",
    "medcf.guidance",
    "medcf.counterfactual",
    "medcf.inference",
]
UPPER_LAYERS = ("medcf.phantoms", "medcf.evaluation", "medcf.audit")


def test_lower_layers_do_not_import_phantoms_evaluation_or_audit():
    """One fresh interpreter imports every lower module: none of them may pull in an upper layer."""
    probe = (
        f"import sys, {', '.join(LOWER_LAYERS)}\n"
        f"print(' '.join(sorted(m for m in sys.modules if m.startswith({UPPER_LAYERS!r}))))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"the lower layers import {result.stdout.strip()}"
