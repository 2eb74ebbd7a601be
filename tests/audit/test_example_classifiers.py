"""The worked example's classifiers: the confounding that makes the shortcut, training on a tiny split, and the
files the bundles ship."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medcf.jobs import example_classifiers
from medcf.jobs.bundles import bundle_root
from medcf.measure.classifier import AuditedClassifier


def test_confounding_keeps_the_agreeing_images_and_a_leak_of_the_rest():
    labels = np.array([True, True, False, False] * 250)
    marked = np.array([True, False, False, True] * 250)  # rows 0 and 2 of every four agree
    assert example_classifiers.confounded(labels, marked, leak=0.0, seed=0).tolist() == [
        k for k in range(1000) if k % 4 in (0, 2)
    ]
    kept = example_classifiers.confounded(labels, marked, leak=0.2, seed=0)
    disagreeing = np.setdiff1d(kept, np.flatnonzero(labels == marked))
    assert set(np.flatnonzero(labels == marked)) <= set(kept)
    assert 0.15 < len(disagreeing) / 500 < 0.25
    assert len(example_classifiers.confounded(labels, marked, leak=1.0, seed=0)) == 1000


def tiny_split(n, seed):
    """Positive images carry a bright square; ``sex`` agrees with the label on about half of them."""
    rng = np.random.default_rng(seed)
    positive = rng.random(n) < 0.5
    images = rng.normal(-0.5, 0.05, (n, 1, 64, 64)).astype(np.float32)
    images[positive, :, 24:40, 24:40] += 1.0
    rows = pd.DataFrame({
        "disease": np.where(positive, "Pleural Effusion", "No Finding"),
        "sex": np.where(rng.random(n) < 0.5, "F", "M"),
    })  # fmt: skip
    return torch.from_numpy(images), rows


def test_an_example_is_trained_saved_and_described(tmp_path):
    fair, shortcut = example_classifiers.EXAMPLES["cxr"]
    train, test = tiny_split(96, 0), tiny_split(40, 1)
    card = example_classifiers.train_example(fair, train, test, tmp_path, epochs=6, leak=0.05, seed=0)
    assert card["training_images"] == 96 and card["file"] == "effusion_fair.ts"
    assert card["test"]["all"]["auc"] > 0.95 and set(card["test"]) == {"all", "F", "M"}
    classifier = AuditedClassifier.load(tmp_path / card["file"])
    scores = classifier.probabilities(test[0])
    labels = (test[1]["disease"] == "Pleural Effusion").to_numpy()
    assert scores[labels].mean() > scores[~labels].mean() + 0.5
    confounded = example_classifiers.train_example(shortcut, train, test, tmp_path, epochs=1, leak=0.0, seed=0)
    assert confounded["training_label_agrees_with_shortcut"] == 1.0 and confounded["training_images"] < 96


@pytest.mark.parametrize("bundle", ["cxr_counterfactual", "mammo_counterfactual"])
def test_the_shipped_classifiers_are_described_and_load(bundle):
    folder = Path(bundle_root(bundle)) / "models" / "classifiers"
    cards = json.loads((folder / "classifiers.json").read_text())
    assert sorted(f"{name}.ts" for name in cards) == sorted(p.name for p in folder.glob("*.ts"))
    images = torch.zeros((3, 1, 64, 64))
    for card in cards.values():
        probabilities = AuditedClassifier.load(folder / card["file"]).probabilities(images)
        assert probabilities.shape == (3,) and np.all((probabilities >= 0) & (probabilities <= 1))
        assert card["test"]["all"]["auc"] > 0.9
