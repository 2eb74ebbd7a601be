"""The classifier under audit: a TorchScript file or a MONAI bundle folder, fed each prepared image adapted to
its input (size, value range) and read as one probability per image.

Prepared images are (B, 1, H, W) in [-1, 1] at the generator's size. ``size`` resizes them (bilinear,
antialiased) and ``value_range`` maps [-1, 1] linearly onto the classifier's range. The output may be (B,),
(B, 1) or (B, C); with C > 1 one column is audited, chosen by ``index`` or by ``name`` among ``class_names``.
``kind`` says what the numbers are: ``logits`` (a sigmoid per column, the multi-label convention of chest
X-ray classifiers), ``softmax`` (logits of mutually exclusive classes) or ``probabilities`` (used as they are).
Every way a classifier can fail to fit is a one-line ``ClassifierError`` naming the setting to change.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medcf.core.network import read_torch_file

OUTPUT_KINDS = ("logits", "softmax", "probabilities")
BUNDLE_CONFIGS = ("inference.json", "inference.yaml", "train.json", "train.yaml")


class ClassifierError(ValueError):
    """The classifier cannot be loaded or its input / output does not fit the audit's settings.

    Args:
        message: one line naming the file or the setting to change.
    """


def parse_class_names(names: Sequence[str] | str | None) -> tuple[str, ...] | None:
    """``class_names`` as given on the command line: a list, or one comma-separated string.

    Args:
        names: the class names, a comma-separated string of them, or None.

    Returns:
        The names as a tuple of strings (blank parts of a string dropped), or None when ``names`` is None.
    """
    if names is None:
        return None
    if isinstance(names, str):
        names = [part.strip() for part in names.split(",") if part.strip()]
    return tuple(str(name) for name in names)


@dataclass(frozen=True)
class ClassifierSettings:
    """How images go in and what comes out (see the module docstring).

    Attributes:
        size: (height, width) the images are resized to; None (default) keeps the generator's size.
        value_range: (low, high) that [-1, 1] is mapped onto linearly (default (-1, 1): unchanged).
        kind: what the outputs are: ``logits`` (default; a sigmoid per column), ``softmax`` or ``probabilities``.
        index: the audited output column; None (default) when the output has one column or ``name`` picks it.
        name: the audited output by its name among ``class_names``; None (default) to use ``index``.
        class_names: the names of the output columns, a sequence or one comma-separated string (default None).
        threshold: the probability at or above which a prediction is positive, in (0, 1) (default 0.5).

    Raises:
        ClassifierError: when a setting is out of its range: an unknown ``kind``, ``value_range`` not
            low < high, ``size`` not two positive integers, ``name`` not among ``class_names`` or naming
            another column than ``index``, ``threshold`` outside (0, 1).
    """

    size: tuple[int, int] | None = None
    value_range: tuple[float, float] = (-1.0, 1.0)
    kind: str = "logits"
    index: int | None = None
    name: str | None = None
    class_names: tuple[str, ...] | None = None
    threshold: float = 0.5

    def __post_init__(self) -> None:
        # configs and command lines give lists: keep tuples, and class_names may be one comma-separated string
        if self.size is not None:
            object.__setattr__(self, "size", tuple(int(side) for side in self.size))
        object.__setattr__(self, "value_range", tuple(float(v) for v in self.value_range))
        object.__setattr__(self, "class_names", parse_class_names(self.class_names))
        if self.kind not in OUTPUT_KINDS:
            raise ClassifierError(f"output_kind: {self.kind!r} is not one of {', '.join(OUTPUT_KINDS)}")
        low, high = self.value_range
        if not low < high:
            raise ClassifierError(f"classifier_range: {list(self.value_range)} must be [low, high] with low < high")
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise ClassifierError(f"classifier_size: {self.size!r} must be [height, width] of positive integers")
        if self.name is not None:
            if not self.class_names or self.name not in self.class_names:
                raise ClassifierError(
                    f"output_name: {self.name!r} is not among class_names {list(self.class_names or [])}"
                )
            if self.index is not None and self.class_names.index(self.name) != self.index:
                raise ClassifierError(f"output_index {self.index} and output_name {self.name!r} disagree")
        if not 0.0 < self.threshold < 1.0:
            raise ClassifierError(f"threshold: {self.threshold!r} must lie in (0, 1)")

    @property
    def column(self) -> int | None:
        """The audited output column (None: the output has one column)."""
        return self.class_names.index(self.name) if self.name is not None else self.index


def load_network(path: str | Path | None, device: torch.device | str = "cpu") -> nn.Module:
    """A TorchScript file, or a MONAI bundle folder read as data only (see :func:`bundle_network`), in eval mode
    on ``device``.

    A TorchScript file is a program: PyTorch's security policy says to load only TorchScript you trust. The
    folder form runs nothing from the folder.

    Args:
        path: a TorchScript file or a MONAI bundle folder.
        device: where the network is put (default ``cpu``).

    Returns:
        The network, in eval mode on ``device``.

    Raises:
        ClassifierError: when no path is given, it does not exist, the file is not TorchScript, or the folder
            does not hold a network that can be built (see :func:`bundle_network`).
    """
    if path is None or str(path).strip() == "":
        raise ClassifierError("classifier: none given; pass --classifier PATH (a TorchScript file or a bundle folder)")
    path = Path(path)
    if path.is_dir():
        return bundle_network(path, device)
    if not path.is_file():
        raise ClassifierError(f"classifier: {path} does not exist")
    try:
        network = torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError) as error:
        raise ClassifierError(f"classifier: {path} is not a TorchScript file ({_first_line(error)})") from None
    return network.eval()


#: The largest config file of a classifier folder that is read (bytes).
MAX_CONFIG_BYTES = 1_000_000
#: How deep ``network_def``'s arguments may nest (lists and mappings).
MAX_DEPTH = 16
#: Arguments that make a network fetch weights from elsewhere when built: they must be absent, None or false
#: (the folder's models/model.pt holds the weights).
FETCHING_ARGUMENTS = ("pretrained", "pretrained_url", "weights")
#: Classes of monai.networks.nets that download weights whenever they are built.
FETCHING_CLASSES = ("Transchex",)
#: What a folder's ``network_def`` may name, as the README and the refusals say it.
ALLOWED_TARGETS = (
    "a class of monai.networks.nets (DenseNet121 or monai.networks.nets.DenseNet121) or a torchvision model "
    "builder such as torchvision.models.resnet18 (when torchvision is installed)"
)
#: In a MONAI config string these start an expression, a reference and a macro: code or other files.
_MONAI_SYNTAX = {"$": "a $ expression", "@": "an @ reference", "%": "a % macro"}
_LITERALS = (str, int, float, bool, type(None))


def bundle_network(folder: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """The network of a MONAI bundle folder, built from data alone: ``network_def`` of the first of
    ``configs/{inference,train}.{json,yaml}`` that has one, read as plain JSON / YAML (no MONAI config parsing:
    nothing is evaluated, referenced or imported), and the weights of ``models/model.pt`` read weights-only.

    ``network_def`` must be a mapping of ``_target_`` (a class of ``monai.networks.nets`` or a
    ``torchvision.models`` builder) and arguments of literal values (strings, numbers, booleans, null, lists
    and mappings of these): no other ``_``-key, no nested ``_target_``, no string holding ``$``, ``@`` or ``%``,
    no argument that downloads weights. Everything else is a one-line :class:`ClassifierError` naming the file.

    Args:
        folder: the bundle folder, holding ``configs/`` and ``models/model.pt``.
        device: where the network is put (default ``cpu``).

    Returns:
        The network with the folder's weights, in eval mode on ``device``.

    Raises:
        ClassifierError: when the configs, ``network_def``, its target or arguments, or the weights file are
            refused, or the weights do not fit the network.
    """
    folder = Path(folder)
    config, definition = _network_definition(folder)
    target, arguments = _checked_definition(config, definition)
    weights = folder / "models" / "model.pt"
    if not weights.is_file():
        raise ClassifierError(f"classifier: {folder} has no models/model.pt (the weights of network_def)")
    try:
        state: object = read_torch_file(weights, "cpu", "weights file")
    except ValueError as error:  # the one line naming the file (a pickle payload is refused before it runs)
        raise ClassifierError(f"classifier: {error}") from None
    state = _state_dict(weights, state)
    builder = _builder(config, target, arguments)
    try:
        network = builder(**arguments)
    except Exception as error:  # any class refuses arguments in its own way (TypeError, ValueError, assert ...)
        failure = f"{type(error).__name__}: {_first_line(error)}"
        raise ClassifierError(
            f"classifier: {config}: network_def {target} cannot be built from its arguments ({failure})"
        ) from None
    if not isinstance(network, nn.Module):
        raise ClassifierError(f"classifier: {config}: network_def {target} gave a {type(network).__name__}")
    _load_weights(network, state, weights, config, target)
    return network.to(device).eval()


def _network_definition(folder: Path) -> tuple[Path, object]:
    """The first config of the folder that holds ``network_def``, and that value, parsed as plain data."""
    for name in BUNDLE_CONFIGS:
        config = folder / "configs" / name
        if not config.exists():
            continue
        if not config.is_file():
            raise ClassifierError(f"classifier: {config} is not a regular file")
        size = config.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ClassifierError(
                f"classifier: {config} is {size:,} bytes; a network_def config may hold at most {MAX_CONFIG_BYTES:,}"
            )
        with open(config, "rb") as stream:
            raw = stream.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:  # it grew since
            raise ClassifierError(f"classifier: {config} holds more than {MAX_CONFIG_BYTES:,} bytes")
        content = _parse(config, raw)
        if isinstance(content, dict) and "network_def" in content:
            return config, content["network_def"]
    raise ClassifierError(f"classifier: {folder} has no configs/{{inference,train}}.{{json,yaml}} with network_def")


def _parse(config: Path, raw: bytes) -> object:
    """A config file's content as plain data: JSON, or YAML's safe subset (no Python tags)."""
    import yaml  # PyYAML: MONAI's YAML configs need it (mlflow requires it)

    kind = "JSON" if config.suffix == ".json" else "YAML"
    try:
        text = raw.decode("utf-8")
        return json.loads(text) if kind == "JSON" else yaml.safe_load(text)
    except (ValueError, RecursionError, yaml.YAMLError) as error:  # JSON and UTF-8 errors are ValueErrors
        reason = " ".join(str(error).split())[:200] or type(error).__name__  # YAML's messages span lines
        raise ClassifierError(f"classifier: {config} cannot be read as {kind} ({reason})") from None


def _checked_definition(config: Path, definition: object) -> tuple[str, dict[str, object]]:
    """``network_def``'s ``_target_`` and arguments, once every value in it is a literal."""
    _check_literal(config, "network_def", definition, 0, set())
    if not isinstance(definition, dict):
        raise ClassifierError(
            f"classifier: {config}: network_def is a {type(definition).__name__}; it must be a mapping of "
            "_target_ and literal arguments"
        )
    target = definition.get("_target_")
    if not isinstance(target, str) or not target.strip():
        raise ClassifierError(f"classifier: {config}: network_def has no _target_ naming its network class")
    arguments = {key: value for key, value in definition.items() if key != "_target_"}
    for key, value in arguments.items():
        if key.startswith("_"):
            raise ClassifierError(
                f"classifier: {config}: network_def key {key!r} is MONAI config syntax; only _target_ and the "
                "network's arguments are read"
            )
        if not key.isidentifier():
            raise ClassifierError(f"classifier: {config}: network_def key {key!r} is not an argument name")
        if key in FETCHING_ARGUMENTS and value not in (None, False):
            raise ClassifierError(
                f"classifier: {config}: network_def {key}: {value!r} would fetch weights from elsewhere; "
                f"the folder's models/model.pt holds them (set {key} to null or false)"
            )
    return target.strip(), arguments


def _check_literal(config: Path, where: str, value: object, depth: int, seen: set[int]) -> None:
    """Refuse anything in ``value`` that is not plain data, or that MONAI would read as code or a reference."""
    if depth > MAX_DEPTH:
        raise ClassifierError(f"classifier: {config}: {where} nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        for mark, what in _MONAI_SYNTAX.items():
            if mark in value:
                shown = value if len(value) <= 60 else value[:57] + "..."
                raise ClassifierError(
                    f"classifier: {config}: {where} is {what} ({shown!r}); a classifier folder is read as data "
                    "and nothing in it is evaluated: write the literal value"
                )
        return
    if isinstance(value, _LITERALS):
        return
    if not isinstance(value, (list, dict)):
        raise ClassifierError(
            f"classifier: {config}: {where} is a {type(value).__name__}; arguments are strings, numbers, "
            "booleans, null and lists or mappings of these"
        )
    if id(value) in seen:  # a YAML alias: shared, and a way to make a small file expand enormously
        raise ClassifierError(f"classifier: {config}: {where} repeats a YAML anchor; write the value out")
    seen.add(id(value))
    if isinstance(value, list):
        for k, item in enumerate(value):
            _check_literal(config, f"{where}[{k}]", item, depth + 1, seen)
        return
    for key, item in value.items():
        if not isinstance(key, str):
            raise ClassifierError(f"classifier: {config}: {where} has a key {key!r} that is not a string")
        _check_literal(config, f"{where} key", key, depth + 1, seen)
        if key == "_target_" and depth > 0:
            raise ClassifierError(
                f"classifier: {config}: {where} holds a nested _target_; only network_def names a class"
            )
        if key.startswith("_") and depth > 0:
            raise ClassifierError(f"classifier: {config}: {where} key {key!r} is MONAI config syntax, not an argument")
        _check_literal(config, f"{where}.{key}", item, depth + 1, seen)


def _builder(config: Path, target: str, arguments: dict[str, object]) -> type[nn.Module]:
    """The allow-listed class or builder ``target`` names; nothing named in the file is imported."""
    parts = target.split(".")
    refused = ClassifierError(
        f"classifier: {config}: network_def _target_ {target!r} is not an allowed network; allowed: {ALLOWED_TARGETS}"
    )
    if not all(part.isidentifier() and not part.startswith("_") for part in parts):
        raise refused
    name = parts[-1]
    if parts[:2] == ["torchvision", "models"] and len(parts) == 3:
        return _torchvision_builder(config, target, name, arguments)
    import monai.networks.nets as nets

    found = getattr(nets, name, None)
    module = getattr(found, "__module__", "")
    if not (isinstance(found, type) and issubclass(found, nn.Module) and module.startswith("monai.networks.nets")):
        raise refused
    prefix = ".".join(parts[:-1])
    if prefix not in ("", "monai.networks.nets", module):  # DenseNet121, monai.networks.nets[.densenet].DenseNet121
        raise refused
    if name in FETCHING_CLASSES:
        raise ClassifierError(
            f"classifier: {config}: network_def {target} downloads weights whenever it is built; not accepted"
        )
    return found


def _torchvision_builder(config: Path, target: str, name: str, arguments: dict[str, object]) -> type[nn.Module]:
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        raise ClassifierError(
            f"classifier: {config}: network_def {target} needs torchvision, which is not installed "
            "(pip install torchvision, or use a class of monai.networks.nets)"
        )
    import torchvision.models

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ClassifierError(
            f"classifier: {config}: network_def _target_ {target!r} is not a torchvision.models classification "
            f"builder; allowed: {ALLOWED_TARGETS}"
        )
    return torchvision.models.get_model_builder(name)


def _state_dict(weights: Path, state: object) -> dict[str, torch.Tensor]:
    """The state dict of a weights file: the file's mapping, or its ``model`` entry (MONAI's checkpoint form)."""
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()
    ):
        raise ClassifierError(
            f"classifier: {weights} is not a state_dict (a mapping of parameter names to tensors, or one under 'model')"
        )
    return state


def _load_weights(network: nn.Module, state: dict[str, torch.Tensor], weights: Path, config: Path, target: str) -> None:
    expected = network.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    shapes = [key for key in expected if key in state and tuple(state[key].shape) != tuple(expected[key].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]!r})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})")
    if shapes:
        key = shapes[0]
        problems.append(
            f"{len(shapes)} of another shape (e.g. {key!r}: {list(state[key].shape)} in the file, "
            f"{list(expected[key].shape)} in the network)"
        )
    try:
        if not problems:
            network.load_state_dict(state)
    except (RuntimeError, ValueError) as error:
        problems.append(_first_line(error))
    if problems:
        raise ClassifierError(
            f"classifier: {weights} does not fit network_def {target} of {config}: {'; '.join(problems)}"
        )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


class AuditedClassifier:
    """The classifier's probability of the audited output for prepared images.

    Args:
        network: the classifier, in eval mode (see :func:`load_network`).
        settings: how images go in and what comes out (default: :class:`ClassifierSettings`'s defaults).
    """

    def __init__(self, network: nn.Module, settings: ClassifierSettings = ClassifierSettings()) -> None:
        self.network, self.settings = network, settings

    @classmethod
    def load(
        cls, path: str | Path, settings: ClassifierSettings = ClassifierSettings(), device: torch.device | str = "cpu"
    ) -> AuditedClassifier:
        """The classifier at ``path`` (see :func:`load_network`), read with ``settings``.

        Args:
            path: a TorchScript file or a MONAI bundle folder.
            settings: how images go in and what comes out (default: :class:`ClassifierSettings`'s defaults).
            device: where the network is put (default ``cpu``).

        Returns:
            The audited classifier.

        Raises:
            ClassifierError: when the network cannot be loaded.
        """
        return cls(load_network(path, device), settings)

    def adapt(self, images: torch.Tensor) -> torch.Tensor:
        """Prepared images (B, 1, H, W) in [-1, 1] -> the classifier's size and value range.

        Args:
            images: prepared images (B, 1, H, W) in [-1, 1].

        Returns:
            float images (B, 1, h, w) at the settings' size (bilinear, antialiased) and in their value range.
        """
        images = images.float()
        if self.settings.size is not None and tuple(images.shape[-2:]) != tuple(self.settings.size):
            images = F.interpolate(images, size=tuple(self.settings.size), mode="bilinear", antialias=True)
        low, high = self.settings.value_range
        return low + (images + 1.0) * (high - low) / 2.0

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, batch_size: int = 32) -> np.ndarray:
        """One probability per image, (B,) float64.

        Args:
            images: prepared images (B, 1, H, W) in [-1, 1]; moved to the network's device a batch at a time.
            batch_size: images per forward pass (default 32).

        Returns:
            The audited output's probability per image, (B,) float64 (empty when there are no images).

        Raises:
            ClassifierError: when the classifier rejects the adapted input, or its output does not fit the
                settings (shape, column, non-finite values, probabilities outside [0, 1]).
        """
        device = _device_of(self.network)
        parts = [self._batch(images[k : k + batch_size].to(device)) for k in range(0, len(images), batch_size)]
        return np.concatenate(parts) if parts else np.zeros(0)

    def _batch(self, images: torch.Tensor) -> np.ndarray:
        adapted = self.adapt(images)
        try:
            output = self.network(adapted)
        except RuntimeError as error:
            first = str(error).strip().splitlines()[0][:200]
            raise ClassifierError(
                f"classifier rejected an input of shape {list(adapted.shape)} ({first}); "
                "set classifier_size (and classifier_range) to what it was trained on"
            ) from None
        return self._read(output, len(images))

    def _read(self, output: object, batch: int) -> np.ndarray:
        if isinstance(output, (tuple, list)) or not isinstance(output, torch.Tensor):
            raise ClassifierError(f"classifier output is a {type(output).__name__}; the audit needs one tensor")
        output = output.detach().double().cpu()
        if output.ndim == 1:
            output = output[:, None]
        if output.ndim != 2 or output.shape[0] != batch:
            raise ClassifierError(
                f"classifier output has shape {list(output.shape)} for {batch} images; expected ({batch},), "
                f"({batch}, 1) or ({batch}, classes)"
            )
        column = self.settings.column
        classes = output.shape[1]
        if classes > 1 and column is None:
            raise ClassifierError(
                f"classifier gives {classes} outputs per image: set output_index (0-{classes - 1}) or "
                "output_name with class_names"
            )
        if column is not None and not 0 <= column < classes:
            raise ClassifierError(f"output_index {column} is out of range for {classes} output(s) per image")
        if not torch.isfinite(output).all():
            raise ClassifierError("classifier output holds NaN or infinite values")
        kind = self.settings.kind
        if kind == "softmax":
            output = output.softmax(dim=1)
        elif kind == "logits":
            output = output.sigmoid()
        elif ((output < 0) | (output > 1)).any():
            raise ClassifierError(
                "output_kind probabilities, but the classifier gives values outside [0, 1]: use logits"
            )
        return output[:, column if column is not None else 0].numpy()


def _device_of(network: nn.Module) -> torch.device:
    parameter = next(iter(network.parameters()), None)
    return parameter.device if parameter is not None else torch.device("cpu")
