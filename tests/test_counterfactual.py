"""The counterfactual engine on a small untrained model: shared abduction, guidance costs, causal actions."""

import numpy as np
import pandas as pd
import pytest
import torch

from medcf.core.causal import CausalGraph
from medcf.core.conditioning import encode_attributes
from medcf.core.denoiser import GuidedDenoiser
from medcf.core.diffusion import DiffusionConfig
from medcf.core.engine import CounterfactualEngine
from medcf.core.guidance import GuidancePlan
from medcf.core.guidance_settings import GuidanceSettings
from medcf.core.interventions import parse_intervention
from medcf.core.network import CounterfactualUNet, ModelConfig
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


def test_each_inversion_refinement_is_one_more_network_row_per_image_and_step(parts):
    """Abduction runs one conditional row per image and step, and one more per refinement (the default is one);
    decoding is not refined."""
    model, _ = parts
    rows: list[int] = []
    hook = model.register_forward_hook(lambda module, inputs, output: rows.append(inputs[0].shape[0]))
    try:
        for refinements in (0, 1, 2):
            rows.clear()
            engine(parts, mode="none", inversion_refinements=refinements).abduct(images(), FACTUAL)
            assert sum(rows) == 2 * 8 * (1 + refinements)
    finally:
        hook.remove()
    assert GuidanceSettings().inversion_refinements == 1


def test_descendants_are_guided_only_where_their_value_changes_when_asked(parts):
    """affected_descendants changed: an image whose disease an age shift leaves as it was is decoded with age alone
    as the affected group (disease stays invariant); all (the default) guides the graph's whole set everywhere. An
    intervention without descendants decodes the same either way, and each image's reference follows its plan."""
    older = parse_intervention(CXR_SCHEMA, "do(age=+10)")
    everywhere = engine(parts, mode="dcfg", w_aff=2.5)
    where_changed = engine(parts, mode="dcfg", w_aff=2.5, affected_descendants="changed")
    latents = everywhere.abduct(images(), FACTUAL)
    full = everywhere.predict(latents, FACTUAL, older)
    per_image = where_changed.predict(latents, FACTUAL, older)
    assert full.image_affected == [frozenset({"age", "disease"})] * 2
    for j, row in enumerate(per_image.attributes):
        changed = {"disease"} if row["disease"] != FACTUAL[j]["disease"] else set()
        assert per_image.image_affected[j] == {"age"} | changed
        assert per_image.image_plans[j].describe() == where_changed.plan_for({"age"} | changed).describe()
    assert per_image.image_affected != full.image_affected, "no age shift here changes the disease"
    assert not torch.equal(per_image.images, full.images)
    references = where_changed.references(latents, FACTUAL).of(per_image)
    assert torch.equal(references[0], where_changed.reconstruct(latents, FACTUAL, per_image.image_affected[0])[0].cpu())
    sex = parse_intervention(CXR_SCHEMA, "do(sex=F)")
    assert torch.equal(
        where_changed.predict(latents, FACTUAL, sex).images, everywhere.predict(latents, FACTUAL, sex).images
    )
    with pytest.raises(ValueError, match="affected_descendants: 'some' is not allowed"):
        GuidanceSettings(affected_descendants="some")


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


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(rule="cfgpp"), r"rule: 'cfgpp' is not allowed: must be one of linear, cfg\+\+, apg"),
        (dict(rule="cfg++"), r"w_aff: 2.0 is not allowed: must be a finite number in \[0, 1\] for rule cfg\+\+"),
        (dict(rule="cfg++", mode="cfg", weight=1.5), r"w: 1.5 is not allowed: .* for rule cfg\+\+"),
        (
            dict(rule="cfg++", mode="dcfg_per_attribute", w_aff=1.0, per_attribute={"sex": 3.0}),
            r"per_attribute.sex: 3.0 is not allowed: .* for rule cfg\+\+",
        ),
        (dict(apg_eta=1.5), r"apg_eta: 1.5 is not allowed: must be a number in \[0, 1\]"),
        (dict(apg_eta=float("nan")), r"apg_eta: nan is not allowed"),
        (dict(apg_momentum=-1), r"apg_momentum: -1 is not allowed: must be a number in \(-1, 1\)"),
        (dict(apg_momentum="0.5"), r"apg_momentum: '0.5' is not allowed"),
        (dict(apg_norm_limit=0.0), r"apg_norm_limit: 0.0 is not allowed: must be a number > 0 \(inf: no limit\)"),
        (dict(apg_norm_limit=-float("inf")), r"apg_norm_limit: -inf is not allowed"),
        (dict(interval=(5.0, 1.0)), r"interval: \(5.0, 1.0\) is not allowed: must be None or \[low, high\]"),
        (dict(interval=[-1, 2]), r"interval: \[-1, 2\] is not allowed"),
        (dict(interval=[1.0]), r"interval: \[1.0\] is not allowed"),
        (dict(interval="0.5,5"), r"interval: '0.5,5' is not allowed"),
        (dict(interval=(float("inf"), float("inf"))), r"interval: \(inf, inf\) is not allowed"),
    ],
)
def test_bad_variant_settings_are_named(settings, message):
    """Every bad rule, APG or interval value is a one-line ValueError naming the setting."""
    with pytest.raises(ValueError, match=message) as error:
        GuidanceSettings(**settings)
    assert "\n" not in str(error.value)


def test_variant_settings_defaults_and_normal_form():
    """The defaults are today's guidance; cfg++ checks only the weights its mode uses; YAML lists and integers
    become the tuple and floats that the settings fingerprint sees."""
    default = GuidanceSettings()
    assert (default.rule, default.interval) == ("linear", None)
    GuidanceSettings(rule="cfg++", mode="dcfg", w_aff=1.0, w_inv=0.5, weight=2.0)  # w unused by dcfg
    GuidanceSettings(rule="cfg++", mode="none")
    settings = GuidanceSettings(rule="apg", apg_eta=0, apg_momentum=0, apg_norm_limit=float("inf"), interval=[0, 5])
    assert settings.interval == (0.0, 5.0) and isinstance(settings.interval[0], float)
    assert (settings.apg_eta, settings.apg_momentum) == (0.0, 0.0) and isinstance(settings.apg_eta, float)


def test_network_evaluations_are_counted_with_an_interval(parts):
    """8 steps have sigma 157, 41, 13.3, 5.17, 2.35, 1.15, 0.50, 0.01: (1, 20] guides 4 of them; the other 4 cost
    one evaluation per image."""
    intervention = parse_intervention(CXR_SCHEMA, "do(age=+10)")
    counts = {
        mode: engine(parts, mode=mode, interval=(1.0, 20.0)).run(images(), FACTUAL, [intervention])[0]
        for mode in ("none", "cfg", "dcfg")
    }
    assert {mode: r.network_evaluations for mode, r in counts.items()} == {"none": 8, "cfg": 12, "dcfg": 16}
    assert counts["dcfg"].plan.evaluations == 3


@pytest.mark.parametrize(
    "variant",
    [
        dict(rule="cfg++", w_aff=1.0, w_inv=0.5),
        dict(rule="apg", w_aff=4.0, apg_momentum=-0.5, apg_norm_limit=5.0),
        dict(rule="apg", w_aff=4.0, interval=(1.0, 20.0)),
        dict(rule="linear", w_aff=3.0, interval=(1.0, 20.0)),
    ],
)
def test_each_rule_runs_end_to_end(parts, variant):
    """Abduction, counterfactual decoding and the null-intervention reference run with every rule; the plan
    says which rule was used."""
    cf = engine(parts, mode="dcfg", **variant)
    latents = cf.abduct(images(), FACTUAL)
    (result,) = [cf.predict(latents, FACTUAL, parse_intervention(CXR_SCHEMA, "do(sex=F)"))]
    reference = cf.reconstruct(latents, FACTUAL, result.affected)
    assert result.images.shape == reference.shape == (2, 1, 16, 16)
    assert torch.isfinite(result.images).all() and torch.isfinite(reference).all()
    assert result.plan.rule == variant["rule"] and (variant["rule"] == "linear") != ("rule" in result.plan.describe())
    assert result.network_evaluations == (16 if "interval" in variant else 24)


def test_nested_rule_costs_cfg_rows_and_names_itself(parts):
    """Through the engine, rule nested decodes do(sex=F) with CFG's row count (2 x 8 steps) where the linear rule
    needs 3 x 8, do(age=+10) (age and disease per attribute, one invariant group) with 3 rows per step
    against 4, and do() as the conditional decode; the outputs' description names the rule."""
    sex, age, null = (parse_intervention(CXR_SCHEMA, t) for t in ("do(sex=F)", "do(age=+10)", "do()"))
    nested = engine(parts, mode="dcfg", w_aff=2.5, rule="nested").run(images(), FACTUAL, [sex, null])
    cfg = engine(parts, mode="cfg", weight=2.5).run(images(), FACTUAL, [sex])[0]
    assert nested[0].network_evaluations == cfg.network_evaluations == 16
    assert nested[0].plan.describe() == "age+race+disease w=1, sex w=2.5; rule nested"
    (plain,) = engine(parts, mode="none").run(images(), FACTUAL, [null])
    assert nested[1].network_evaluations == 8 and torch.allclose(nested[1].images, plain.images, rtol=1e-3, atol=1e-3)
    per_attribute = {"age": 3.0, "disease": 2.0}
    rows = {
        rule: engine(parts, mode="calibrated", per_attribute=per_attribute, rule=rule, plan="test plan")
        .run(images(), FACTUAL, [age])[0]
        .network_evaluations
        for rule in ("linear", "nested")
    }
    assert rows == {"linear": 4 * 8, "nested": 3 * 8}


def test_apg_without_projection_momentum_or_limit_is_dcfg(parts):
    """APG with eta = 1, beta = 0, r = inf decodes like DCFG (combined in the clean-image space instead)."""
    intervention = parse_intervention(CXR_SCHEMA, "do(age=+10)")
    (linear,) = engine(parts, mode="dcfg", w_aff=3.0).run(images(), FACTUAL, [intervention])
    apg = dict(rule="apg", apg_eta=1.0, apg_momentum=0.0, apg_norm_limit=float("inf"))
    (projected,) = engine(parts, mode="dcfg", w_aff=3.0, **apg).run(images(), FACTUAL, [intervention])
    # float32 (linear) vs float64 (apg) combination, amplified by the untrained decode (|x| ~ 100)
    assert torch.allclose(projected.images, linear.images, rtol=1e-3, atol=1e-3)
    assert projected.network_evaluations == linear.network_evaluations == 24


def test_cfgpp_with_zero_weight_is_unconditional_ddim(parts):
    """CFG++ with weight 0: the clean image and the re-noising from the null prediction alone."""
    cf = engine(parts, mode="cfg", weight=0.0, rule="cfg++")
    latents = cf.abduct(images(), FACTUAL)
    (result,) = [cf.predict(latents, FACTUAL, parse_intervention(CXR_SCHEMA, "do()"))]
    model, _ = parts
    null = GuidancePlan(torch.zeros(1, len(CXR_SCHEMA.names), dtype=torch.bool), (), ((),))
    codes = encode_attributes(CXR_SCHEMA, FACTUAL)
    unconditional = cf.sampler.decode(GuidedDenoiser(model, codes, null), latents)
    # equal up to float32 rounding of batched vs single forwards, amplified by the untrained decode
    assert torch.allclose(result.images, unconditional, rtol=1e-3, atol=1e-3)


def test_interval_outside_every_step_is_mode_none_with_fewer_evaluations(parts):
    """A band above every noise level of the schedule decodes exactly like mode none, one evaluation per step;
    a band holding them all is the guidance without an interval."""
    intervention = parse_intervention(CXR_SCHEMA, "do(age=+10)")
    (outside,) = engine(parts, mode="dcfg", interval=(1e6, 1e7)).run(images(), FACTUAL, [intervention])
    (none,) = engine(parts, mode="none").run(images(), FACTUAL, [intervention])
    assert torch.equal(outside.images, none.images)
    assert outside.network_evaluations == none.network_evaluations == 8
    (everywhere,) = engine(parts, mode="dcfg", interval=(0.0, float("inf"))).run(images(), FACTUAL, [intervention])
    (always,) = engine(parts, mode="dcfg").run(images(), FACTUAL, [intervention])
    assert torch.equal(everywhere.images, always.images) and everywhere.network_evaluations == 24


@pytest.mark.parametrize(("mode", "decodes"), [("cfg", 1), ("dcfg", 3)])
def test_null_references_decode_each_guidance_plan_once(parts, mode, decodes):
    """CFG's plan is the same for every affected set (one decode); DCFG's differs by affected set (sex, age and the
    do() output: three). Each reference is exactly what reconstruct() decodes, kept on the CPU."""
    cf = engine(parts, mode=mode, weight=2.0, w_aff=2.0)
    latents = cf.abduct(images(), FACTUAL)
    references = cf.references(latents, FACTUAL)
    affected_sets = [{"sex"}, {"age", "disease"}, {"sex"}, set(), {"age", "disease"}]
    first = [references(affected) for affected in affected_sets]
    assert references.decodes == decodes
    assert first[0] is first[2] and first[1] is first[4], "a plan already decoded is not decoded again"
    for affected, reference in zip(affected_sets, first, strict=True):
        assert reference.device.type == "cpu"
        assert torch.equal(reference, cf.reconstruct(latents, FACTUAL, affected).cpu())
