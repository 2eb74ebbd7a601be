"""The audit's worked example: two small pleural-effusion classifiers for the chest phantom, one fair and one
with a sex shortcut, saved as TorchScript files the audit bundle takes.

    python -m medcf.audit.example_classifiers --out bundles/cxr_counterfactual/models/classifiers
        [--manifest PREPARED/manifest.csv] [--epochs 15] [--seed 0]

Both are the same MONAI ``Classifier`` (four strided convolution blocks, one logit), trained the same way on the
prepared phantom training set (``--manifest``; default: the chest phantom training set, made once in
``phantom_train_cxr``). The fair one sees the training split as it is (effusion and sex nearly independent).
The shortcut one sees it with effusion confounded with sex: of the images whose sex "disagrees" with their
label (effusion in a man, no finding in a woman) only ``--leak`` (5 %) are kept, so that the sex shadows
predict the label almost as well as the effusion itself. The held-out test split (patients seen by neither)
gives each one's AUC overall and per sex.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from monai.networks.nets import Classifier
from torch import nn

from medcf.audit.statistics import subgroup_rates

POSITIVE = "Pleural Effusion"


def load_split(manifest: str | Path, split: str) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Prepared images (N, 1, H, W) of one split with their effusion labels and sexes."""
    manifest = Path(manifest)
    table = pd.read_csv(manifest, dtype=str)
    table = table[(table["status"] == "ok") & (table["split"] == split)]
    if table.empty:
        raise ValueError(f"{manifest}: no prepared images in split {split!r}")
    images = np.stack([np.load(manifest.parent / output) for output in table["output"]]).astype(np.float32)
    return torch.from_numpy(images), (table["disease"] == POSITIVE).to_numpy(), table["sex"].to_numpy()


def confounded(labels: np.ndarray, sexes: np.ndarray, leak: float, seed: int) -> np.ndarray:
    """Positions to keep so that effusion goes with F and no finding with M: every image that agrees, and
    a random ``leak`` share of those that do not."""
    agrees = labels == (sexes == "F")
    rng = np.random.default_rng(seed)
    return np.flatnonzero(agrees | (rng.random(len(labels)) < leak))


def network() -> nn.Module:
    return Classifier(in_shape=(1, 64, 64), classes=1, channels=(16, 32, 64, 128), strides=(2, 2, 2, 2))


def train(images: torch.Tensor, labels: np.ndarray, epochs: int, seed: int) -> nn.Module:
    """Adam (1e-3), batch 64, binary cross-entropy, horizontal shifts of up to 4 pixels as augmentation."""
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
    return torch.cat([model(images[k : k + 256])[:, 0].sigmoid() for k in range(0, len(images), 256)]).numpy()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m medcf.audit.example_classifiers", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--manifest", default=None)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--leak", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    manifest = args.manifest
    if manifest is None:
        from medcf.phantoms.training_set import phantom_training_set

        manifest = phantom_training_set("cxr", "phantom_train_cxr", 2000, 64, 0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    images, labels, sexes = load_split(manifest, "train")
    test_images, test_labels, test_sexes = load_split(manifest, "test")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    card = {}
    for name, keep in (
        ("fair", np.arange(len(labels))),
        ("shortcut", confounded(labels, sexes, args.leak, args.seed)),
    ):
        model = train(images[keep], labels[keep], args.epochs, args.seed)
        path = out / f"effusion_{name}.ts"
        torch.jit.trace(model, images[:2]).save(str(path))
        rates = subgroup_rates(scores(model, test_images), test_labels, test_sexes, 0.5)
        overall = subgroup_rates(scores(model, test_images), test_labels, np.full(len(test_labels), "all"), 0.5)
        agreement = float(np.mean(labels[keep] == (sexes[keep] == "F")))
        card[name] = {
            "file": path.name,
            "training_images": int(len(keep)),
            "training_effusion_share": float(labels[keep].mean()),
            "training_label_agrees_with_sex": agreement,
            "test": {"all": overall.reset_index().to_dict("records")[0], **{
                str(group): record for group, record in rates.to_dict("index").items()
            }},
        }  # fmt: skip
        print(f"{name}: {len(keep)} training images, label agrees with sex {agreement:.2f}; test AUC "
              f"{card[name]['test']['all']['auc']:.3f}")  # fmt: skip
    (out / "classifiers.json").write_text(json.dumps(card, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
