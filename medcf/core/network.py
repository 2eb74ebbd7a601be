"""The denoiser: MONAI's DiffusionModelUNet conditioned on an attribute-split embedding.

``forward(x, timesteps, attributes, keep)`` evaluates any mix of kept attributes per row in one call, so a
sampler can batch every guidance term of a step together. By default the condition is added to the UNet's
time embedding (through the UNet's own class-embedding path, whose lookup table is replaced by our
projection); ``conditioning="cross_attention"`` passes the attribute blocks as cross-attention tokens.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from monai.networks.nets import DiffusionModelUNet
from torch import nn

from medcf.core.attributes import AttributeSchema, SchemaError, attribute_text
from medcf.core.conditioning import AttributeEmbedder
from medcf.runtime.files import atomic_path

CHECKPOINT_FORMAT = "medcf-ddim/1"


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the denoiser (saved with every checkpoint).

    Attributes:
        channels: the UNet's channels at each resolution level.
        attention_levels: whether each level has self-attention (all levels do with cross-attention conditioning).
        num_res_blocks: residual blocks per level.
        num_head_channels: channels per attention head.
        norm_num_groups: GroupNorm groups (default 8, not MONAI's 32, so that 32-channel levels still see the
            added timestep and condition).
        in_channels: image channels, in and out.
        block_dim: size of each attribute's condition block.
        hidden_dim: width of each attribute's embedding MLP.
        conditioning: ``time`` (added to the time embedding) or ``cross_attention`` (blocks as tokens).
        learned_null: a learned null token per attribute instead of zeros.
        l2_normalize: with ``time`` conditioning, L2-normalise the concatenated blocks (times the square root of
            their length) before the projection.

    Raises:
        ValueError: if ``conditioning`` is not allowed or ``channels`` and ``attention_levels`` differ in length.
    """

    channels: tuple[int, ...] = (32, 64, 128)
    attention_levels: tuple[bool, ...] = (False, False, True)
    num_res_blocks: int = 1
    num_head_channels: int = 32
    # 8, not MONAI's 32: with one channel per group the GroupNorm after the time-embedding addition would
    # subtract the added condition exactly, so 32-channel levels would see neither timestep nor attributes
    norm_num_groups: int = 8
    in_channels: int = 1
    block_dim: int = 32
    hidden_dim: int = 64
    conditioning: Literal["time", "cross_attention"] = "time"
    learned_null: bool = False
    l2_normalize: bool = False

    def __post_init__(self) -> None:
        if self.conditioning not in ("time", "cross_attention"):
            raise ValueError(f"conditioning: {self.conditioning!r} must be 'time' or 'cross_attention'")
        if len(self.channels) != len(self.attention_levels):
            raise ValueError("channels and attention_levels must have the same length")


class CounterfactualUNet(nn.Module):
    """DDIM denoiser with an attribute-split condition (see the module docstring).

    Args:
        schema: the attributes the model is conditioned on.
        config: the architecture; None: a :class:`ModelConfig` built from ``overrides``.
        **overrides: :class:`ModelConfig` fields (lists become tuples), used only when ``config`` is None.
    """

    def __init__(self, schema: AttributeSchema, config: ModelConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        config = config or ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
        self.schema, self.config = schema, config
        self.embedder = AttributeEmbedder(schema, config.block_dim, config.hidden_dim, config.learned_null)
        cross = config.conditioning == "cross_attention"
        self.unet = DiffusionModelUNet(
            spatial_dims=2,
            in_channels=config.in_channels,
            out_channels=config.in_channels,
            channels=config.channels,
            attention_levels=config.attention_levels if not cross else tuple(True for _ in config.channels),
            num_res_blocks=config.num_res_blocks,
            num_head_channels=config.num_head_channels,
            norm_num_groups=config.norm_num_groups,
            with_conditioning=cross,
            cross_attention_dim=config.block_dim if cross else None,
            num_class_embeds=None if cross else 1,
        )
        if not cross:
            self.unet.class_embedding = nn.Identity()  # the projected condition is added to the time embedding
            self.project = nn.Linear(len(schema.names) * config.block_dim, config.channels[0] * 4)

    def condition(self, attributes: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The condition the UNet sees: time-embedding offset (B, 4 C0) or tokens (B, K, block_dim).

        Args:
            attributes: (B, K) attribute codes in schema order.
            keep: (B, K) bool, which attributes each row is conditioned on.

        Returns:
            The projected condition (``time``) or the attribute blocks (``cross_attention``).
        """
        blocks = self.embedder(attributes, keep)
        if self.config.conditioning == "cross_attention":
            return blocks
        flat = blocks.flatten(1)
        if self.config.l2_normalize:
            flat = nn.functional.normalize(flat, dim=1) * math.sqrt(flat.shape[1])
        return self.project(flat)

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, attributes: torch.Tensor, keep: torch.Tensor
    ) -> torch.Tensor:
        """Noise (or v) prediction for images ``x`` at ``timesteps`` under the kept ``attributes``.

        Args:
            x: (B, C, H, W) noisy images.
            timesteps: (B,) integer timesteps.
            attributes: (B, K) attribute codes in schema order (see ``medcf.core.conditioning.encode_attributes``).
            keep: (B, K) bool, which attributes each row is conditioned on (False = nulled).

        Returns:
            The prediction, shaped like ``x``.
        """
        condition = self.condition(attributes, keep.to(torch.bool))
        if self.config.conditioning == "cross_attention":
            return self.unet(x, timesteps, context=condition)
        return self.unet(x, timesteps, class_labels=condition)


def save_checkpoint(
    path: str | Path,
    model: CounterfactualUNet,
    diffusion: dict[str, Any],
    state_dict: dict[str, torch.Tensor] | None = None,
    **extra: Any,
) -> None:
    """Weights + schema + architecture + diffusion settings, written atomically.

    Args:
        path: the file to write (with ``torch.save``).
        model: the model whose schema and architecture are recorded.
        diffusion: the diffusion settings, e.g. :meth:`~medcf.core.diffusion.DiffusionConfig.to_dict`.
        state_dict: the weights to save; None: ``model.state_dict()``.
        **extra: further entries of the payload (plain data and tensors only, so :func:`read_torch_file` can read
            them).
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "schema": model.schema.to_config(),
        "model": asdict(model.config),
        "diffusion": diffusion,
        "state_dict": state_dict if state_dict is not None else model.state_dict(),
        **extra,
    }
    with atomic_path(path) as temporary:
        torch.save(payload, temporary)


def read_torch_file(
    path: str | Path, map_location: str | torch.device = "cpu", what: str = "medcf checkpoint", mmap: bool = False
) -> Any:
    """The contents of a file written with ``torch.save``, read safely: tensors and plain data only
    (``mmap``: tensors mapped from the file, not read, for a look at its plain entries).

    ``torch.load(weights_only=True)`` refuses every other Python object, so a file carrying a pickle payload
    (code that runs when the file is loaded) is rejected before anything in it runs. Every medcf model file
    and training checkpoint holds only tensors, numbers, strings, lists, tuples and dicts.

    Args:
        path: the file.
        map_location: where tensors are loaded (as for ``torch.load``).
        what: what the file should be, for the error message.
        mmap: map tensors from the file instead of reading them.

    Returns:
        The loaded object.

    Raises:
        ValueError: one line naming the file and the reason (unreadable, so not a ``what``, or holding objects
            other than weights).
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        found = next((line.strip() for line in str(error).splitlines() if "GLOBAL" in line), None)
        if found is None:  # not a pickle at all (a text file, say)
            raise ValueError(f"{path}: not a {what}: cannot read it (not a torch file)") from None
        raise ValueError(
            f"{path}: refused: the file holds Python objects, not only weights, and loading them could run code "
            f"({found.rstrip('.')}); medcf reads tensors and plain data only"
        ) from None
    except Exception as error:  # torch.load raises many types (KeyError, EOFError, ...) for files it cannot parse
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path}: not a {what}: cannot read it ({first})") from None


def read_medcf_file(
    path: str | Path, file_format: str | int, what: str, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Any], AttributeSchema]:
    """A medcf file's payload (read weights-only) and the attribute schema it records; a file of another
    format is a one-line error naming it as not a ``what``.

    Args:
        path: the file.
        file_format: the ``format`` entry the payload must have, e.g. ``CHECKPOINT_FORMAT``.
        what: what the file should be, for error messages.
        map_location: where tensors are loaded (as for ``torch.load``).

    Returns:
        (payload, schema).

    Raises:
        ValueError: if the file cannot be read safely (:func:`read_torch_file`) or is of another format.
        SchemaError: if the recorded schema is invalid.
    """
    payload = read_torch_file(path, map_location, what)
    if not isinstance(payload, dict) or payload.get("format") != file_format:
        raise ValueError(f"{path}: not a {what} (format {file_format} expected)")
    return payload, AttributeSchema.from_config(payload["schema"])


def load_checkpoint(
    path: str | Path, expected_schema: AttributeSchema | None = None, map_location: str | torch.device = "cpu"
) -> tuple[CounterfactualUNet, dict[str, Any]]:
    """The model of a checkpoint and its full payload; with ``expected_schema`` a different attribute
    schema is an error naming both. The file is read with :func:`read_torch_file` (weights only).

    Args:
        path: the checkpoint file.
        expected_schema: the schema the model must have; None: not checked.
        map_location: where tensors are loaded (as for ``torch.load``).

    Returns:
        (model, payload): the model with its weights loaded, and the file's full payload.

    Raises:
        ValueError: if the file is not a medcf checkpoint or cannot be read safely.
        SchemaError: if its schema differs from ``expected_schema``.
    """
    payload, schema = read_medcf_file(path, CHECKPOINT_FORMAT, "medcf checkpoint", map_location)
    if expected_schema is not None and schema.to_config() != expected_schema.to_config():
        raise SchemaError(
            f"{path}: the checkpoint was trained for attributes {describe(schema)}, but the configuration "
            f"expects {describe(expected_schema)}; train a model for this schema or use the matching bundle"
        )
    model = CounterfactualUNet(
        schema,
        ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in payload["model"].items()}),
    )
    model.load_state_dict(payload["state_dict"])
    return model, payload


def describe(schema: AttributeSchema) -> str:
    """A schema in one line, e.g. ``sex{M,F} age[18,95]`` (:func:`~medcf.core.attributes.attribute_text`).

    Args:
        schema: the schema to describe.

    Returns:
        Its attributes' short texts, separated by spaces.
    """
    return " ".join(attribute_text(a) for a in schema.attributes)
