"""What every counterfactual job (inference, evaluation, audit) loads first, all checked before any image is
read: the model file (weights only), its causal graph, the interventions and the preparation's image size."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from medcf.core.attributes import AttributeSchema
from medcf.core.causal import CausalGraph
from medcf.core.diffusion import DiffusionConfig
from medcf.core.interventions import Intervention, InterventionError, parse_intervention
from medcf.core.network import CHECKPOINT_FORMAT, CounterfactualUNet, load_checkpoint, read_medcf_file
from medcf.prepare.base import Preparer
from medcf.runtime.devices import resolve_device
from medcf.runtime.files import file_sha256


@dataclass
class LoadedModel:
    """A counterfactual model with what decoding needs.

    Attributes:
        model: the network, on ``device``.
        diffusion: the diffusion process it was trained with (timesteps, noise schedule, prediction type).
        graph: its fitted causal graph.
        sha256: SHA-256 of the model file.
        device: where the model is (default the CPU).
        training_run_id: the MLflow run that trained it (empty for files made before medcf recorded it).
    """

    model: CounterfactualUNet
    diffusion: DiffusionConfig
    graph: CausalGraph
    sha256: str
    device: torch.device = torch.device("cpu")
    training_run_id: str = ""  # the MLflow run that trained it (empty for files made before medcf recorded it)

    def lineage_tags(self) -> dict[str, str]:
        """MLflow tags linking a job's run to the training run of its model.

        Returns:
            ``{"medcf.training_run_id": ...}``, or no tag when the run is not recorded.
        """
        return {"medcf.training_run_id": self.training_run_id} if self.training_run_id else {}


def load_model(
    model_path: str | Path,
    graph_path: str | Path,
    preparer: Preparer,
    schema: AttributeSchema | None = None,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """The model file and its graph, the model on ``device`` (``auto``: CUDA when present); refused when the
    model is for other attributes than ``schema`` or the preparation makes images of another size or channel
    count than the model was trained on.

    Args:
        model_path: the medcf model file, read weights-only.
        graph_path: its fitted causal graph (``graph.json``).
        preparer: the job's preparation; its ``image_size`` must be the size the model was trained at.
        schema: the attributes the job expects (None: not checked).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or a device (default ``cpu``).

    Returns:
        The model on its device, its diffusion settings, graph, file hash and training run.

    Raises:
        FileNotFoundError: when ``model_path`` or ``graph_path`` is not a file.
        ValueError: when ``device`` is not one this machine has, the file is not a medcf model, the model does
            not take 1-channel images, or the preparation's image size is not the model's.
        SchemaError: when the model is for other attributes than ``schema``, or the graph does not fit the
            model's attributes.
    """
    device = resolve_device(device)
    _require_file("model_path", model_path)
    _require_file("graph_path", graph_path)
    model, payload = load_checkpoint(model_path, expected_schema=schema)
    graph = CausalGraph.load(model.schema, graph_path)
    if model.config.in_channels != 1:
        raise ValueError(f"prepared images have 1 channel(s); the model takes {model.config.in_channels}")
    trained = tuple(payload.get("image_size") or ())
    size = getattr(preparer, "image_size", None)
    size = (size, size) if isinstance(size, int) else tuple(size or ())
    if trained and size and size != trained:
        raise ValueError(
            f"image_size: prepared images are {size[0]}x{size[1]}, the model was trained at "
            f"{trained[0]}x{trained[1]}: set image_size to match"
        )
    sha256 = file_sha256(model_path)
    trained_by = str(payload.get("training_run_id") or "")
    return LoadedModel(model.to(device), DiffusionConfig(**payload["diffusion"]), graph, sha256, device, trained_by)


def _require_file(setting: str, path: str | Path) -> None:
    """FileNotFoundError, one line naming the setting, unless ``path`` is a file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{setting}: {path} does not exist or is not a file")


def trained_image_size(model_path: str | Path) -> list[int]:
    """The image size recorded in a model file (the size it was trained at), [height, width]: a bundle config's
    default ``image_size``, so that a model trained at another size needs no second setting (the bundle's
    preparer, :func:`medcf.jobs.bundles.preparer`, takes a chest size as its one side).

    Args:
        model_path: the medcf model file.

    Returns:
        [height, width].

    Raises:
        FileNotFoundError: when ``model_path`` is not a file.
        ValueError: when the file is not a medcf model or does not record its image size.
    """
    _require_file("model_path", model_path)
    payload, _ = read_medcf_file(model_path, CHECKPOINT_FORMAT, "medcf checkpoint")
    size = [int(side) for side in payload.get("image_size") or ()]
    if len(size) != 2:
        raise ValueError(f"model_path: {model_path} does not record its image size; give --image_size")
    return size


def parse_interventions(schema: AttributeSchema, texts: Sequence[str] | str) -> list[Intervention]:
    """The interventions of a job (one string is one intervention); none or a repeated one is an error.

    Args:
        schema: the model's attributes.
        texts: intervention texts such as ``do(sex=F)``, or one such text.

    Returns:
        The parsed interventions, in the given order.

    Raises:
        InterventionError: when a text is not a valid intervention on ``schema``.
        ValueError: when none is given, or one is given more than once.
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    try:
        interventions = [parse_intervention(schema, text) for text in texts]
    except InterventionError as error:  # the setting's name first, as every other setting's refusal
        raise InterventionError(f"interventions: {error}") from None
    if not interventions:
        raise ValueError("interventions: none given; e.g. ['do(sex=F)'] (do() is the null intervention)")
    repeated = sorted(text for text, count in Counter(i.text for i in interventions).items() if count > 1)
    if repeated:
        raise ValueError(f"interventions: {', '.join(repeated)} given more than once")
    return interventions
