"""The classifier under audit: loading (TorchScript, MONAI bundle folder), input adaptation, output reading,
and one-line errors for everything that does not fit."""

import json

import numpy as np
import pytest
import torch
from monai.networks.nets import Classifier
from torch import nn

from medcf.audit.classifier import AuditedClassifier, ClassifierError, ClassifierSettings, parse_class_names


class MeanLogit(nn.Module):
    """Logit = 4 x the mean pixel value, (B, 1): easy to compute by hand."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 4.0 * x.mean(dim=(1, 2, 3))[:, None]


class TwoHeads(nn.Module):
    """Two columns: [mean, -mean]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3))
        return torch.stack([mean, -mean], dim=1)


class MapOutput(nn.Module):
    """A segmentation-like output (B, 1, H, W): not something the audit can read."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def scripted(module: nn.Module, folder, name="model.ts"):
    path = folder / name
    torch.jit.script(module).save(str(path))
    return path


def test_torchscript_logits_become_sigmoid_probabilities(tmp_path):
    classifier = AuditedClassifier.load(scripted(MeanLogit(), tmp_path))
    images = torch.stack([torch.full((1, 8, 8), v) for v in (-1.0, 0.0, 0.5)])
    expected = 1 / (1 + np.exp(-4 * np.array([-1.0, 0.0, 0.5])))
    assert classifier.probabilities(images) == pytest.approx(expected)


def test_value_range_and_size_are_adapted_before_the_classifier_sees_the_image(tmp_path):
    settings = ClassifierSettings(size=(16, 12), value_range=(0.0, 1.0), kind="probabilities")
    classifier = AuditedClassifier.load(scripted(MeanLogit(), tmp_path), settings)
    adapted = classifier.adapt(torch.full((2, 1, 8, 8), -1.0))
    assert adapted.shape == (2, 1, 16, 12) and float(adapted.abs().max()) == 0.0
    # 0.5 on the prepared [-1, 1] scale is 0.75 on the classifier's [0, 1]
    assert float(classifier.adapt(torch.full((1, 1, 8, 8), 0.5)).mean()) == pytest.approx(0.75)


def test_a_column_is_chosen_by_index_or_by_name(tmp_path):
    path = scripted(TwoHeads(), tmp_path)
    images = torch.full((2, 1, 4, 4), 0.5)
    by_index = AuditedClassifier.load(path, ClassifierSettings(index=1)).probabilities(images)
    names = parse_class_names("effusion, no effusion")
    by_name = AuditedClassifier.load(path, ClassifierSettings(name="no effusion", class_names=names))
    assert by_index == pytest.approx(1 / (1 + np.exp(0.5)))
    assert by_name.probabilities(images) == pytest.approx(by_index)
    softmax = AuditedClassifier.load(path, ClassifierSettings(index=0, kind="softmax")).probabilities(images)
    assert softmax == pytest.approx(np.exp(0.5) / (np.exp(0.5) + np.exp(-0.5)))


def test_a_monai_bundle_folder_loads_its_network_def_and_weights(tmp_path):
    network = Classifier(in_shape=(1, 16, 16), classes=2, channels=(4,), strides=(2,))
    (tmp_path / "configs").mkdir()
    (tmp_path / "models").mkdir()
    definition = {
        "_target_": "monai.networks.nets.Classifier", "in_shape": [1, 16, 16], "classes": 2, "channels": [4],
        "strides": [2],
    }  # fmt: skip
    (tmp_path / "configs" / "inference.json").write_text(json.dumps({"network_def": definition}))
    torch.save(network.state_dict(), tmp_path / "models" / "model.pt")
    images = torch.rand(3, 1, 16, 16) * 2 - 1
    loaded = AuditedClassifier.load(tmp_path, ClassifierSettings(index=1))
    with torch.no_grad():
        expected = network.eval()(images)[:, 1].sigmoid().double().numpy()
    assert loaded.probabilities(images) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("module", "settings", "message"),
    [
        (MapOutput(), ClassifierSettings(), r"classifier output has shape \[2, 1, 8, 8\] for 2 images"),
        (TwoHeads(), ClassifierSettings(), r"gives 2 outputs per image: set output_index"),
        (TwoHeads(), ClassifierSettings(index=5), r"output_index 5 is out of range for 2 output"),
        (TwoHeads(), ClassifierSettings(kind="probabilities", index=1), r"outside \[0, 1\]: use logits"),
        (nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 1)), ClassifierSettings(), r"rejected an input of shape"),
    ],
)
def test_outputs_and_inputs_that_do_not_fit_fail_in_one_line(tmp_path, module, settings, message):
    classifier = AuditedClassifier.load(scripted(module, tmp_path), settings)
    with pytest.raises(ClassifierError, match=message) as caught:
        classifier.probabilities(torch.full((2, 1, 8, 8), 0.5))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kind": "odds"}, r"output_kind: 'odds' is not one of"),
        ({"value_range": (1.0, 0.0)}, r"classifier_range"),
        ({"name": "effusion"}, r"output_name: 'effusion' is not among class_names"),
        ({"threshold": 1.0}, r"threshold: 1.0 must lie in \(0, 1\)"),
    ],
)
def test_bad_settings_fail_in_one_line(changes, message):
    with pytest.raises(ClassifierError, match=message):
        ClassifierSettings(**changes)


def test_files_that_are_not_classifiers_are_refused(tmp_path):
    pickle_file = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(2)}, pickle_file)
    with pytest.raises(ClassifierError, match=r"is not a TorchScript file"):
        AuditedClassifier.load(pickle_file)
    with pytest.raises(ClassifierError, match=r"does not exist"):
        AuditedClassifier.load(tmp_path / "missing.ts")
    with pytest.raises(ClassifierError, match=r"has no configs/"):
        AuditedClassifier.load(tmp_path)
