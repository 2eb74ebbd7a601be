"""The audit's worked example: small classifiers trained on a phantom, saved as TorchScript files the audit
bundle takes (and ships as its default classifiers).

    python -m medcf.jobs.example_classifiers --kind cxr --out bundles/cxr_counterfactual/models/classifiers
    python -m medcf.jobs.example_classifiers --kind mammo --out bundles/mammo_counterfactual/models/classifiers
        [--manifest PREPARED/manifest.csv] [--epochs 15] [--seed 0]

Every one is the same MONAI ``Classifier`` (four strided convolution blocks, one logit), trained the same way on
the prepared phantom training set (``--manifest``; default: the phantom training set, made once in
``phantom_train_<kind>``). Chest: two pleural-effusion classifiers. The fair one sees the training split as it
is (effusion and sex nearly independent). The shortcut one sees it with effusion confounded with sex: of the
images whose sex "disagrees" with their label (effusion in a man, no finding in a woman) only ``--leak`` (5 %)
are kept, so that the sex shadows predict the label almost as well as the effusion itself. Mammogram: one fair
classifier of density D (extremely dense). The held-out test split (patients seen by none) gives each one's
AUC, TPR and FPR overall and per subgroup, written to ``classifiers.json`` beside them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.networks.nets import Classifier
from torch import nn

from medcf.measure.audit_summary import subgroup_rates


@dataclass(frozen=True)
class Example:
    """One example classifier: ``label`` == ``positive`` is what it predicts; with ``shortcut`` = (attribute,
    value) its training set is confounded so that ``value`` goes with the positive label; ``subgroups`` names
    the attribute its test rates are broken down by.

    Attributes:
        name: the classifier's name: its file ``<name>.ts`` and its entry in ``classifiers.json``.
        label: the manifest column (attribute) it predicts.
        positive: the value of ``label`` that is the positive class.
        subgroups: the attribute its test rates are broken down by.
        shortcut: (attribute, value) that goes with the positive label in its training set (default None: the
            training split as it is).
    """

    name: str
    label: str
    positive: str
    subgroups: str
    shortcut: tuple[str, str] | None = None


EXAMPLES = {
    "cxr": (
        Example("effusion_fair", "disease", "Pleural Effusion", "sex"),
        Example("effusion_shortcut", "disease", "Pleural Effusion", "sex", shortcut=("sex", "F")),
    ),
    "mammo": (Example("density_d_fair", "density", "D", "race"),),
}


def load_split(manifest: str | Path, split: str) -> tuple[torch.Tensor, pd.DataFrame]:
    """Prepared images (N, 1, H, W) of one split with their manifest rows.

    Args:
        manifest: a preparation manifest (``OUT/manifest.csv``); the arrays are read from beside it.
        split: ``train``, ``val`` or ``test`` (the cohort's patient-level split).

    Returns:
        The split's prepared images, float32 (N, 1, H, W), and its ``ok`` rows (as text), in the same order.

    Raises:
        ValueError: when the manifest has no prepared image in ``split``.
    """
    manifest = Path(manifest)
    table = pd.read_csv(manifest, dtype=str)
    table = table[(table["status"] == "ok") & (table["split"] == split)].reset_index(drop=True)
    if table.empty:
        raise ValueError(f"{manifest}: no prepared images in split {split!r}")
    images = np.stack([np.load(manifest.parent / output) for output in table["output"]]).astype(np.float32)
    return torch.from_numpy(images), table


def confounded(labels: np.ndarray, marked: np.ndarray, leak: float, seed: int) -> np.ndarray:
    """Positions to keep so that the positive label goes with ``marked`` (e.g. sex F) and the negative with the
    rest: every image that agrees, and a random ``leak`` share of those that do not.

    Args:
        labels: per image, whether its label is positive.
        marked: per image, whether it has the shortcut's value.
        leak: the share of the images that disagree to keep, in [0, 1].
        seed: seed of the random draw.

    Returns:
        The positions kept, ascending.
    """
    agrees = labels == marked
    rng = np.random.default_rng(seed)
    return np.flatnonzero(agrees | (rng.random(len(labels)) < leak))


def network() -> nn.Module:
    """The untrained example classifier: MONAI ``Classifier`` on (1, 64, 64) images, one logit.

    Returns:
        The network.
    """
    return Classifier(in_shape=(1, 64, 64), classes=1, channels=(16, 32, 64, 128), strides=(2, 2, 2, 2))


def train(images: torch.Tensor, labels: np.ndarray, epochs: int, seed: int) -> nn.Module:
    """Adam (1e-3), batch 64, binary cross-entropy, horizontal shifts of up to 4 pixels as augmentation.

    Args:
        images: prepared training images (N, 1, 64, 64).
        labels: per image, whether its label is positive.
        epochs: passes over the images.
        seed: seed of the initial weights, the batch order and the shifts.

    Returns:
        The trained :func:`network`, in eval mode.
    """
    torch.manual_seed(seed)
    model = network()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    targets = torch.from_numpy(labels.astype(np.float32))
    loss = nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(images), generator=generator).split(64):
            shift = int(torch.randint(-4, 5, (1,), generator=generator))
            inputs = torch.roll(images[batch], shifts=shift, dims=3)
            optimiser.zero_grad()
            loss(model(inputs)[:, 0], targets[batch]).backward()
            optimiser.step()
    return model.eval()


@torch.no_grad()
def scores(model: nn.Module, images: torch.Tensor) -> np.ndarray:
    """The model's probability (sigmoid of its logit) per image, 256 images at a time.

    Args:
        model: a classifier with one logit (:func:`train`).
        images: prepared images (N, 1, H, W).

    Returns:
        One probability per image, (N,).
    """
    return torch.cat([model(images[k : k + 256])[:, 0].sigmoid() for k in range(0, len(images), 256)]).numpy()


def train_example(
    example: Example, train_split: tuple[torch.Tensor, pd.DataFrame], test_split: tuple[torch.Tensor, pd.DataFrame],
    out: Path, epochs: int, leak: float, seed: int,
) -> dict[str, Any]:  # fmt: skip
    """Train ``example``, save it as ``out/<name>.ts`` and return its card (training set and test rates).

    Args:
        example: the classifier to train.
        train_split: (images, manifest rows) of the training split (:func:`load_split`).
        test_split: (images, manifest rows) of the test split, for the rates.
        out: the folder the TorchScript file goes to.
        epochs: training epochs.
        leak: for an example with a ``shortcut``, the share of the images that disagree with it kept
            (:func:`confounded`).
        seed: seed of the training and of the confounding draw.

    Returns:
        The card: the file, what it predicts, the shortcut and how often the training labels agree with it (if
        any), the number of training images and their positive share, and the test AUC, TPR and FPR (``all`` and per
        subgroup, at threshold 0.5).
    """
    images, rows = train_split
    labels = (rows[example.label] == example.positive).to_numpy()
    keep = np.arange(len(labels))
    card: dict[str, Any] = {"file": f"{example.name}.ts", "predicts": f"{example.label} = {example.positive}"}
    if example.shortcut is not None:
        attribute, value = example.shortcut
        marked = (rows[attribute] == value).to_numpy()
        keep = confounded(labels, marked, leak, seed)
        card["shortcut"] = f"{example.positive} goes with {attribute} = {value}"
        card["training_label_agrees_with_shortcut"] = float(np.mean(labels[keep] == marked[keep]))
    model = train(images[keep], labels[keep], epochs, seed)
    torch.jit.trace(model, images[:2]).save(str(out / card["file"]))
    test_images, test_rows = test_split
    test_labels = (test_rows[example.label] == example.positive).to_numpy()
    test_scores = scores(model, test_images)
    overall = subgroup_rates(test_scores, test_labels, np.full(len(test_labels), "all"), 0.5)
    rates = subgroup_rates(test_scores, test_labels, test_rows[example.subgroups].to_numpy(), 0.5)
    card.update({
        "training_images": int(len(keep)),
        "training_positive_share": float(labels[keep].mean()),
        "test": {str(group): record for group, record in pd.concat([overall, rates]).to_dict("index").items()},
    })  # fmt: skip
    return card


def main(argv: Sequence[str] | None = None) -> int:
    """Train the examples of ``--kind``; write their files and ``classifiers.json`` (their cards) to ``--out``.

    Args:
        argv: the command-line arguments (default: ``sys.argv[1:]``), see the module docstring.

    Returns:
        The exit status, 0.
    """
    parser = argparse.ArgumentParser(
        prog="python -m medcf.jobs.example_classifiers", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--kind", choices=sorted(EXAMPLES), default="cxr")
    parser.add_argument("--out", required=True)
    parser.add_argument("--manifest", default=None)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--leak", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    manifest = args.manifest
    if manifest is None:
        from medcf.jobs.phantom_sets import phantom_training_set

        manifest = phantom_training_set(args.kind, f"phantom_train_{args.kind}", 2000, 64, 0)
    train_split, test_split = load_split(manifest, "train"), load_split(manifest, "test")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cards = {}
    for example in EXAMPLES[args.kind]:
        cards[example.name] = card = train_example(
            example, train_split, test_split, out, args.epochs, args.leak, args.seed
        )
        print(f"{example.name}: {card['training_images']} training images; test AUC {card['test']['all']['auc']:.3f}")
    (out / "classifiers.json").write_text(json.dumps(cards, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
