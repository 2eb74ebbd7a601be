"""Shared fixtures of the training tests."""

import pytest
import torch

from medcf.attributes import AttributeSchema
from medcf.model import CounterfactualUNet, ModelConfig
from medcf.phantoms.cxr import CXR_SCHEMA
from medcf.phantoms.mammo import MAMMO_SCHEMA

SMALL_UNET = ModelConfig(
    channels=(8, 16), attention_levels=(False, False), num_head_channels=8, block_dim=8, hidden_dim=16
)


def conditioned_tiny(schema: AttributeSchema) -> CounterfactualUNet:
    """A tiny model whose output depends on its condition: MONAI zero-initialises the output layers, so
    those get small random weights (seeded)."""
    torch.manual_seed(0)
    model = CounterfactualUNet(schema, SMALL_UNET)
    for parameter in model.parameters():
        if not parameter.detach().any():
            parameter.data.normal_(0, 0.05)
    return model.eval()


@pytest.fixture
def conditioned_tiny_model() -> CounterfactualUNet:
    """A tiny chest model whose output depends on its condition."""
    return conditioned_tiny(CXR_SCHEMA)


@pytest.fixture
def conditioned_tiny_mammo_model() -> CounterfactualUNet:
    """A tiny mammogram model whose output depends on its condition."""
    return conditioned_tiny(MAMMO_SCHEMA)
