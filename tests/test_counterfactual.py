"""The counterfactual engine on a small untrained model: shared abduction, guidance costs, causal actions."""

import numpy as np
import pandas as pd
import pytest
import torch

from medcf.causal import CausalGraph
from medcf.counterfactual import CounterfactualEngine, GuidanceSettings
from medcf.diffusion import DiffusionConfig
from medcf.interventions import parse_intervention
from medcf.model import CounterfactualUNet, ModelConfig
from medcf.phantoms.cxr import CXR_SCHEMA, ChestXRayPhantom
from medcf.phantoms.mammo import MAMMO_SCHEMA

TINY = ModelConfig(channels=(32, 64), attention_levels=(False, False), num_head_channels=8, block_dim=8, hidden_dim=16)
FACTUAL = [
    {"age": 30.0, "sex": "M", "race": "White", "disease": "No Finding"},
    {"age": 75.0, "sex": "F", "race": "Black", "disease": "Pleural Effusion"},
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    model = CounterfactualUNet(CXR_SCHEMA, TINY)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    table = pd.DataFrame([s.attributes for s in ChestXRayPhantom().sample(2000, np.random.default_rng(0))])
    return model, CausalGraph.fit(CXR_SCHEMA, table)


def engine(parts, **settings) -> CounterfactualEngine:
    model, graph = parts
    return CounterfactualEngine(model, DiffusionConfig(), graph, GuidanceSettings(steps=8, **settings))


def images() -> torch.Tensor:
    return torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_shared_abduction_equals_separate_runs(parts):
    """Several interventions from one abduction give exactly what separate abductions give."""
    cf = engine(parts, mode="dcfg", w_aff=2.5)
    interventions = [parse_intervention(CXR_SCHEMA, t) for t in ("do(sex=F)", "do(age=+10)", "do()")]
    abductions = []
    abduct = cf.abduct
    cf.abduct = lambda *args: abductions.append(1) or abduct(*args)
    together = cf.run(images(), FACTUAL, interventions)
    assert len(abductions) == 1, "one inversion serves every intervention"
    for intervention, shared in zip(interventions, together, strict=True):
        (alone,) = cf.run(images(), FACTUAL, [intervention])
        assert torch.equal(shared.images, alone.images)


def test_null_intervention_dcfg_with_unit_weight_is_the_conditional_decode(parts):
    """do() under DCFG (one invariant group, w_inv = 1) decodes exactly like unguided conditional decoding."""
    null = parse_intervention(CXR_SCHEMA, "do()")
    (guided,) = engine(parts, mode="dcfg", w_aff=3.0, w_inv=1.0).run(images(), FACTUAL, [null])
    (plain,) = engine(parts, mode="none").run(images(), FACTUAL, [null])
    assert guided.affected == set() and guided.attributes == FACTUAL
    # equal up to float32 rounding of batched vs single forwards, amplified by the untrained decode (|x| ~ 100)
    assert torch.allclose(guided.images, plain.images, rtol=1e-3, atol=1e-3)


def test_network_evaluations_per_step_follow_the_guidance_mode(parts):
    """Per step: none 1, cfg 2, dcfg 3 (M = 2), per-attribute K + 1; partial inversion halves the steps."""
    intervention = parse_intervention(CXR_SCHEMA, "do(age=+10)")
    counts = {
        mode: engine(parts, mode=mode).run(images(), FACTUAL, [intervention])[0].network_evaluations
        for mode in ("none", "cfg", "dcfg", "dcfg_per_attribute")
    }
    assert counts == {"none": 8, "cfg": 16, "dcfg": 24, "dcfg_per_attribute": 40}
    half = engine(parts, mode="cfg", inversion_depth=0.5).run(images(), FACTUAL, [intervention])[0]
    assert half.network_evaluations == 8


def test_action_updates_descendants_and_names_the_affected_group(parts):
    """do(age=95) recomputes disease with each image's abducted noise; do(sex) touches sex only."""
    older = engine(parts).run(images(), FACTUAL, [parse_intervention(CXR_SCHEMA, "do(age=95)")])[0]
    assert older.affected == {"age", "disease"}
    assert [row["age"] for row in older.attributes] == [95.0, 95.0]
    assert older.attributes[1]["disease"] == "Pleural Effusion"  # older never loses an effusion
    sex = engine(parts).run(images(), FACTUAL, [parse_intervention(CXR_SCHEMA, "do(sex=F)")])[0]
    assert sex.affected == {"sex"}
    assert [{k: v for k, v in row.items() if k != "sex"} for row in sex.attributes] == [
        {k: v for k, v in row.items() if k != "sex"} for row in FACTUAL
    ]


def test_graph_of_another_schema_is_refused(parts):
    """The model and the causal graph must describe the same attributes."""
    model, _ = parts
    graph = CausalGraph.from_config(
        MAMMO_SCHEMA,
        {
            "mechanisms": [
                {
                    "child": "density",
                    "categories": ["A", "B", "C", "D"],
                    "parents": ["age"],
                    "centre": {"age": 58.0},
                    "scale": {"age": 11.0},
                    "beta": [-0.4],
                    "thresholds": [-2.0, 0.0, 2.0],
                }
            ]
        },
    )
    with pytest.raises(ValueError, match="different attribute schemas"):
        CounterfactualEngine(model, DiffusionConfig(), graph)
