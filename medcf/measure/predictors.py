"""Anti-causal attribute predictors: the measuring instruments of counterfactual evaluation.

One small MONAI ResNet trunk is shared by one linear head per attribute of the schema: logits over the values
of a categorical attribute, the value scaled to [0, 1] over its range for a continuous one. Images are the
prepared arrays, (B, 1, H, W) in [-1, 1]. Attribute codes are those of
:func:`medcf.core.conditioning.encode_attributes` (category index, raw value).

Trained by the bundles' ``train_predictors.yaml`` (:mod:`medcf.measure.predictor_training`); this module holds the
network, its predictions and its file (``predictors.pt``, read weights-only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import ResNet
from torch import nn

from medcf.core.attributes import AttributeSchema, SchemaError, attribute_text
from medcf.core.network import read_medcf_file
from medcf.runtime.files import atomic_path

PREDICTORS_FORMAT = "medcf-predictors/1"

DEFAULT_NETWORK: dict[str, Any] = {
    "block": "basic",
    "layers": [1, 1, 1, 1],
    "block_inplanes": [16, 32, 64, 128],
}
"""Settings of the MONAI ResNet trunk (any ``monai.networks.nets.ResNet`` argument may be overridden)."""


def head_width(schema: AttributeSchema, name: str) -> int:
    """The number of outputs of an attribute's head.

    Args:
        schema: the attributes.
        name: the attribute.

    Returns:
        Its number of values when categorical, 1 when continuous.
    """
    attribute = schema[name]
    return len(attribute.values) if attribute.kind == "categorical" else 1


class AttributePredictor(nn.Module):
    """A MONAI ResNet trunk (2D, one input channel, no classifier) with one linear head per attribute.

    Args:
        schema: the attributes to predict (heads in schema order).
        network_settings: ``monai.networks.nets.ResNet`` arguments overriding :data:`DEFAULT_NETWORK`.
    """

    def __init__(self, schema: AttributeSchema, **network_settings: Any) -> None:
        super().__init__()
        self.schema = schema
        self.network_settings = {**DEFAULT_NETWORK, **network_settings}
        self.trunk = ResNet(spatial_dims=2, n_input_channels=1, feed_forward=False, **self.network_settings)
        with torch.no_grad():  # the feature width, in eval mode so no BatchNorm statistics move
            width = self.trunk.eval()(torch.zeros(1, 1, 32, 32)).shape[1]
        self.trunk.train()
        self.heads = nn.ModuleList(nn.Linear(width, head_width(schema, name)) for name in schema.names)
        ranges = [(a.low, a.high) if a.kind == "continuous" else (0.0, 1.0) for a in schema.attributes]
        self.register_buffer("low", torch.tensor([r[0] for r in ranges]), persistent=False)
        self.register_buffer("high", torch.tensor([r[1] for r in ranges]), persistent=False)
        self.image_size: tuple[int, int] | None = None  # set by load_predictors from the file

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) images in [-1, 1] -> (B, F) pooled trunk features.

        Args:
            images: (B, 1, H, W) in [-1, 1].

        Returns:
            (B, F) the trunk's pooled features.
        """
        return self.trunk(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """All heads' raw outputs side by side, (B, sum of head widths), in schema order.

        Args:
            images: (B, 1, H, W) in [-1, 1].

        Returns:
            (B, sum of head widths): logits of a categorical head, the scaled value of a continuous one.
        """
        features = self.features(images)
        return torch.cat([head(features) for head in self.heads], dim=1)

    def split_outputs(self, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw outputs -> attribute name -> its head's columns (B, width).

        Args:
            outputs: (B, sum of head widths), as :meth:`forward` gives them.

        Returns:
            attribute name -> its columns (B, width), in schema order.
        """
        widths = [head.out_features for head in self.heads]
        return dict(zip(self.schema.names, outputs.split(widths, dim=1), strict=True))

    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Categorical attribute -> probabilities (B, n_values); continuous -> value in its units (B,),
        clamped to the attribute's range.

        Args:
            images: (B, 1, H, W) in [-1, 1].

        Returns:
            attribute name -> its prediction, as above.
        """
        predictions = {}
        for k, (name, output) in enumerate(self.split_outputs(self(images)).items()):
            if self.schema[name].kind == "categorical":
                predictions[name] = output.softmax(dim=1)
            else:
                low, high = self.low[k], self.high[k]
                predictions[name] = low + output[:, 0].clamp(0.0, 1.0) * (high - low)
        return predictions


@torch.no_grad()
def predict_all(predictor: AttributePredictor, images: torch.Tensor, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """:meth:`AttributePredictor.predict` over many images in eval mode, batch by batch, on the CPU.

    Args:
        predictor: the predictor (evaluated in eval mode, restored afterwards).
        images: (N, 1, H, W) in [-1, 1]; moved to the predictor's device a batch at a time.
        batch_size: images per forward pass (default 64).

    Returns:
        attribute name -> its predictions for every image, on the CPU.
    """
    was_training = predictor.training
    predictor.eval()
    device = next(predictor.parameters()).device
    try:
        parts = [
            {name: value.cpu() for name, value in predictor.predict(images[i : i + batch_size].to(device)).items()}
            for i in range(0, len(images), batch_size)
        ]
    finally:
        predictor.train(was_training)
    return {name: torch.cat([part[name] for part in parts]) for name in predictor.schema.names}


def save_predictors(predictor: AttributePredictor, path: str | Path, extra: dict | None = None) -> Path:
    """Write the weights, schema and trunk settings (plus ``extra``: plain data only) atomically.

    Args:
        predictor: the predictor to save.
        path: the file to write.
        extra: more entries for the file (None: none).

    Returns:
        The path written.
    """
    payload = {
        "format": PREDICTORS_FORMAT,
        "schema": predictor.schema.to_config(),
        "network": predictor.network_settings,
        "state_dict": {key: value.detach().cpu() for key, value in predictor.state_dict().items()},
        **(extra or {}),
    }
    with atomic_path(path) as temporary:
        torch.save(payload, temporary)
    return Path(path)


def describe_attribute(schema: AttributeSchema, name: str) -> str:
    """``sex{M,F}``, ``age[18,95]``, with ``<-parents`` when it has any.

    Args:
        schema: the attributes.
        name: the attribute described.

    Returns:
        The short description.
    """
    a = schema[name]
    return attribute_text(a) + (f"<-{','.join(a.parents)}" if a.parents else "")


def schema_difference(found: AttributeSchema, expected: AttributeSchema) -> str:
    """What differs between two schemas, in a few words.

    Args:
        found: the schema of the file.
        expected: the schema wanted.

    Returns:
        The differences joined by ``; `` (the attribute order when nothing else differs).
    """
    parts = [f"{describe_attribute(found, n)} is not expected" for n in found.names if n not in expected]
    parts += [f"{describe_attribute(expected, n)} is missing" for n in expected.names if n not in found]
    parts += [
        f"{n}: the file has {describe_attribute(found, n)}, expected {describe_attribute(expected, n)}"
        for n in found.names
        if n in expected and describe_attribute(found, n) != describe_attribute(expected, n)
    ]
    if not parts:
        parts.append(f"attribute order {','.join(found.names)}, expected {','.join(expected.names)}")
    return "; ".join(parts)


def load_predictors(path: str | Path, expected_schema: AttributeSchema | None = None) -> AttributePredictor:
    """The predictor saved in ``path`` (weights-only read, eval mode, on the CPU); ``image_size`` is set from
    the file when it records one. A file for another schema than ``expected_schema`` is a one-line error.

    Args:
        path: the predictors file.
        expected_schema: the schema the predictors must be for (None: any).

    Returns:
        The predictor in eval mode on the CPU.

    Raises:
        SchemaError: when the file is for another schema than ``expected_schema``.
        ValueError: when the file cannot be read or is not a medcf predictors file.
    """
    payload, schema = read_medcf_file(path, PREDICTORS_FORMAT, "medcf predictors file")
    if expected_schema is not None and schema.to_config() != expected_schema.to_config():
        raise SchemaError(
            f"{path}: predictors for another attribute schema ({schema_difference(schema, expected_schema)}); "
            "train predictors for this schema or use the matching bundle's"
        )
    predictor = AttributePredictor(schema, **payload["network"])
    predictor.load_state_dict(payload["state_dict"])
    if payload.get("image_size") is not None:
        predictor.image_size = tuple(int(side) for side in payload["image_size"])
    return predictor.eval()
