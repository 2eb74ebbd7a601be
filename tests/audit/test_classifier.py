"""The classifier under audit: loading (TorchScript, MONAI bundle folder), input adaptation, output reading,
and one-line errors for everything that does not fit. A bundle folder is data: nothing in it runs."""

import importlib.util
import json
import os
import re

import numpy as np
import pytest
import torch
from monai.networks.nets import Classifier
from torch import nn

from medcf.measure.classifier import AuditedClassifier, ClassifierError, ClassifierSettings, parse_class_names
from tests.audit.test_audit_bundle import run_audit
from tests.conftest import save_tiny_evaluation_files


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


SMALL = {"in_shape": [1, 16, 16], "classes": 2, "channels": [4], "strides": [2]}  # a MONAI Classifier's arguments


class RunsCommand:
    """Pickles as a call of os.system: loading a file holding it with plain pickle would run ``command``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def classifier_folder(folder, network_def, config="inference.json", weights=None):
    """A MONAI bundle folder as a user hands it to --classifier: configs/<config> with ``network_def`` (a JSON
    value, or YAML text for a .yaml config) and models/model.pt (``weights``: a state dict, or any object)."""
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    text = json.dumps({"network_def": network_def}) if config.endswith(".json") else network_def
    (folder / "configs" / config).write_text(text)
    if weights is None:
        weights = Classifier(in_shape=(1, 16, 16), classes=2, channels=(4,), strides=(2,)).state_dict()
    torch.save(weights, folder / "models" / "model.pt")
    return folder


def refused(folder) -> str:
    with pytest.raises(ClassifierError) as caught:
        AuditedClassifier.load(folder)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("classifier: ")
    # nothing shown underneath (raise ... from None): a bundle run's one line is this refusal
    assert caught.value.__cause__ is None and (caught.value.__context__ is None or caught.value.__suppress_context__)
    return message


def test_a_target_that_runs_a_command_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "MARKER"
    folder = classifier_folder(tmp_path / "folder", {"_target_": "os.system", "command": f"touch {marker}"})
    message = refused(folder)
    assert "configs/inference.json: network_def _target_ 'os.system' is not an allowed network" in message
    assert not marker.exists()


@pytest.mark.parametrize(
    ("network_def", "reason"),
    [
        # a $ expression that would write a file and return a real network
        ("$open(MARKER, 'w').close() or monai.networks.nets.Classifier((1, 16, 16), 2, (4,), (2,))",
         r"network_def is a \$ expression \(\"\$open\(MARKER"),
        ({"_target_": "Classifier", **SMALL, "classes": "$open(MARKER, 'w').close() or 2"},
         r"network_def.classes is a \$ expression"),
        ({"_target_": "Classifier", **SMALL, "in_shape": "@shape"}, r"network_def.in_shape is an @ reference"),
        ("%configs/other.json#network_def", r"network_def is a % macro"),
        ({"_target_": "Classifier", **SMALL, "_requires_": "x"},
         r"network_def key '_requires_' is MONAI config syntax"),
        ({"_target_": "Classifier", **SMALL, "_disabled_": False}, r"network_def key '_disabled_' is MONAI config"),
        ({"_target_": "Classifier", **SMALL, "act": {"_target_": "torch.nn.ReLU"}},
         r"network_def.act holds a nested _target_"),
        ({"_target_": "torch.nn.Linear", "in_features": 256, "out_features": 2},
         r"_target_ 'torch.nn.Linear' is not an allowed network; allowed: a class of monai.networks.nets"),
        ({"_target_": "builtins.eval", "source": "1"}, r"_target_ 'builtins.eval' is not an allowed network"),
        ({"_target_": "monai.networks.nets.unet.Classifier", **SMALL}, r"'monai.networks.nets.unet.Classifier' is not"),
        ({"_target_": "DenseNet121", "spatial_dims": 2, "in_channels": 1, "out_channels": 2, "pretrained": True},
         r"network_def pretrained: True would fetch weights from elsewhere"),
        ({"_target_": "Classifier", **SMALL, "bogus": 1},
         r"network_def Classifier cannot be built from its arguments \(TypeError: .*unexpected keyword argument"),
        ({"_target_": "Classifier", **SMALL, "classes": 3},
         r"model.pt does not fit network_def Classifier of .*inference.json: 2 of another shape \(e.g. "
         r"'final.1.weight': \[2, 256\] in the file, \[3, 256\] in the network\)"),
    ],
)  # fmt: skip
def test_anything_but_an_allow_listed_class_with_literal_arguments_is_refused_in_one_line(
    tmp_path, monkeypatch, network_def, reason
):
    monkeypatch.chdir(tmp_path)  # MARKER would be made here
    message = refused(classifier_folder(tmp_path / "folder", network_def))
    assert re.search(reason, message), message
    assert not (tmp_path / "MARKER").exists()


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed here")
def test_a_torchvision_builder_without_torchvision_is_refused_in_one_line(tmp_path):
    folder = classifier_folder(tmp_path / "folder", {"_target_": "torchvision.models.resnet18", "num_classes": 2})
    assert refused(folder) == (
        f"classifier: {folder / 'configs' / 'inference.json'}: network_def torchvision.models.resnet18 needs "
        "torchvision, which is not installed (pip install torchvision, or use a class of monai.networks.nets)"
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("network_def: !!python/object/apply:os.system ['touch MARKER']\n",
         r"inference.yaml cannot be read as YAML \(could not determine a constructor for the tag"),
        ("network_def:\n  _target_: Classifier\n  in_shape: &shape [1, 16, 16]\n  x: *shape\n",
         r"network_def.x repeats a YAML anchor"),
        ("network_def:\n  _target_: Classifier\n  when: 2026-01-01\n", r"network_def.when is a date; arguments are"),
    ],
)  # fmt: skip
def test_a_yaml_config_is_read_as_plain_data(tmp_path, monkeypatch, text, reason):
    monkeypatch.chdir(tmp_path)
    message = refused(classifier_folder(tmp_path / "folder", text, config="inference.yaml"))
    assert re.search(reason, message), message
    assert not (tmp_path / "MARKER").exists()


def test_a_config_over_one_megabyte_is_not_read(tmp_path):
    folder = classifier_folder(tmp_path / "folder", {"_target_": "Classifier", **SMALL, "pad": "x" * 1_000_001})
    assert re.search(
        r"inference.json is 1,000,\d{3} bytes; a network_def config may hold at most 1,000,000", refused(folder)
    )


def test_a_pickle_payload_in_the_weights_is_refused_in_one_line_and_runs_nothing(tmp_path):
    marker = tmp_path / "MARKER"
    weights = {"final.1.weight": RunsCommand(f"touch {marker}")}
    folder = classifier_folder(tmp_path / "folder", {"_target_": "Classifier", **SMALL}, weights=weights)
    message = refused(folder)
    assert message.startswith(f"classifier: {folder / 'models' / 'model.pt'}: refused: the file holds Python objects")
    assert "posix.system" in message and not marker.exists()


@pytest.mark.parametrize(
    ("target", "config", "wrapped"),
    [("Classifier", "inference.yaml", False), ("monai.networks.nets.classifier.Classifier", "train.json", True)],
)
def test_an_allow_listed_network_with_its_weights_gives_the_probabilities_of_that_network(
    tmp_path, target, config, wrapped
):
    """A bare MONAI class name in YAML, or a module path in train.json with MONAI's {"model": state} checkpoint."""
    torch.manual_seed(0)
    network = Classifier(in_shape=(1, 16, 16), classes=2, channels=(4,), strides=(2,))
    definition = {"_target_": target, **SMALL}
    if config.endswith(".yaml"):
        definition = "network_def:\n" + "".join(f"  {key}: {json.dumps(value)}\n" for key, value in definition.items())
    weights = {"model": network.state_dict(), "epoch": 3} if wrapped else network.state_dict()
    folder = classifier_folder(tmp_path / "folder", definition, config=config, weights=weights)
    images = torch.rand(3, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        expected = network.eval()(images)[:, 1].sigmoid().double().numpy()
    loaded = AuditedClassifier.load(folder, ClassifierSettings(index=1)).probabilities(images)
    assert loaded == pytest.approx(expected, abs=1e-6) and not np.allclose(expected, expected[0])


def test_a_hostile_folder_ends_the_audit_bundle_with_one_line_and_runs_nothing(tmp_path):
    """python -m monai.bundle run ... audit.yaml --classifier FOLDER, a pickle payload in models/model.pt: the
    refusal comes before any image is read."""
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    save_tiny_evaluation_files(tiny)
    marker = tmp_path / "MARKER"
    weights = {"final.1.weight": RunsCommand(f"touch {marker}")}
    folder = classifier_folder(tmp_path / "folder", {"_target_": "Classifier", **SMALL}, weights=weights)
    result = run_audit(tiny, tmp_path, classifier=folder)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("medcf:")]
    assert len(lines) == 1 and lines[0] == result.stderr.strip().splitlines()[-1], result.stderr[-3000:]
    assert lines[0].startswith(f"medcf: classifier: {folder / 'models' / 'model.pt'}: refused: the file holds Python")
    assert not marker.exists() and not (tmp_path / "OUT").exists()
