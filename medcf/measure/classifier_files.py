"""Reading the classifier handed to the audit, which is untrusted input: a TorchScript file, or a MONAI bundle
folder read as data only.

A TorchScript file is a program: PyTorch's security policy says to load only TorchScript you trust, and the README
says so. A folder runs nothing: its ``configs/inference.{json,yaml}`` (or ``train``) is parsed as plain JSON / YAML
(no MONAI ConfigParser, no ``$`` / ``@`` / ``%``), its ``network_def`` must name an allow-listed network class
(``monai.networks.nets``, torchvision model builders) with literal arguments, and its ``models/model.pt`` goes
through the same weights-only reader as a medcf model file. Every refusal is one :class:`ClassifierError` line
naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from medcf.core.network import read_torch_file

BUNDLE_CONFIGS = ("inference.json", "inference.yaml", "train.json", "train.yaml")


class ClassifierError(ValueError):
    """The classifier cannot be loaded or its input / output does not fit the audit's settings.

    Args:
        message: one line naming the file or the setting to change.
    """


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
