"""The guidance plan file: written and read back, refused when it is not a plan for this model, and turned into
the calibrated guidance every job decodes with."""

import json
import math

import pytest
import torch

from medcf.core.guidance import guidance_plan
from medcf.core.guidance_plan import (
    MAX_PLAN_BYTES,
    AttributeGuidance,
    CalibratedPlan,
    PlanError,
    guidance_settings,
    plan_if_used,
)
from medcf.core.guidance_settings import GuidanceSettings, calibrated_interval, guidance_label, guidance_settings_from
from medcf.phantoms.cxr import CXR_SCHEMA


def a_plan() -> CalibratedPlan:
    return CalibratedPlan(
        attributes={
            "sex": AttributeGuidance(1.4, None, "matched", {"ratio_at_weights": {"1": 0.7, "2": 1.3}}),
            "disease": AttributeGuidance(5.5, (0.5, math.inf), "bound"),
            "age": AttributeGuidance(0.8, (0.0, 3.0)),
        },
        w_inv=1.0,
        steps=50,
        model_sha256="ab" * 32,
        data={"fingerprint": "f" * 64, "images": 20},
    )


def test_a_saved_plan_reads_back_in_schema_order_with_its_identity(tmp_path):
    path = a_plan().save(tmp_path / "guidance_plan.json")
    plan = CalibratedPlan.load(path, CXR_SCHEMA, model_sha256="ab" * 32)
    assert list(plan.attributes) == ["age", "sex", "disease"]
    assert plan.weights() == {"age": 0.8, "sex": 1.4, "disease": 5.5}
    assert plan.attributes["disease"].interval == (0.5, math.inf) and plan.attributes["disease"].status == "bound"
    assert plan.label.startswith("guidance_plan.json sha256:") and len(plan.label.split(":")[1]) == 12
    assert plan.describe() == "age w=0.8 at sigma in (0, 3], sex w=1.4, disease w=5.5 at sigma in (0.5, inf]; w_inv=1"
    assert plan.inversion_refinements is None  # not recorded: a plan calibrated before the refinement existed
    refined = CalibratedPlan(**{**a_plan().__dict__, "inversion_refinements": 1}).save(tmp_path / "refined.json")
    assert CalibratedPlan.load(refined, CXR_SCHEMA).inversion_refinements == 1


def test_the_plan_becomes_calibrated_settings_and_one_group_per_affected_attribute(tmp_path):
    plan = CalibratedPlan.load(a_plan().save(tmp_path / "p.json"), CXR_SCHEMA)
    settings = plan.settings(steps=20, per_attribute={"sex": 3.0}, weight=9.0)
    assert settings.mode == "calibrated" and settings.steps == 20 and settings.plan == plan.label
    assert settings.per_attribute == {"age": 0.8, "sex": 3.0, "disease": 5.5}  # the override wins
    assert settings.overrides == {"sex": 3.0} and plan.settings().overrides == {}
    made = guidance_plan(CXR_SCHEMA, "calibrated", {"age", "disease"}, w_inv=1.0, per_attribute=settings.per_attribute)
    assert made.groups == (("age",), ("disease",), ("sex", "race")) and made.weights == (0.8, 5.5, 1.0)
    assert made.keep.shape == (4, 4) and not made.keep[0].any()
    assert calibrated_interval(settings, {"age", "disease"}) == (0.0, math.inf)  # the band holding both
    assert calibrated_interval(settings, {"age", "sex"}) is None  # sex is guided at every step
    assert calibrated_interval(settings, set()) is None


def test_a_plan_and_its_variants_have_their_own_labels(tmp_path):
    """Weights given in place of the plan's name the setting, so one evaluation can compare a plan with its
    variants; overrides belong to mode calibrated only."""
    plan = CalibratedPlan.load(a_plan().save(tmp_path / "p.json"), CXR_SCHEMA)
    entries = [{"mode": "calibrated"}, {"mode": "calibrated", "per_attribute": {"sex": 1, "age": 2.5}}]
    labels = [guidance_label(s) for s in guidance_settings_from(entries, steps=5, plan=plan)]
    assert labels == ["calibrated", "calibrated age=2.5,sex=1"]
    with pytest.raises(ValueError, match="guidance_settings: calibrated given more than once"):
        guidance_settings_from([{"mode": "calibrated"}, {"mode": "calibrated", "per_attribute": {}}], 5, plan=plan)
    with pytest.raises(ValueError, match="overrides: .* must be a mapping, for mode calibrated only"):
        GuidanceSettings(mode="dcfg", overrides={"sex": 1.0})


def test_a_plan_is_refused_with_one_line_naming_the_file(tmp_path):
    path = a_plan().save(tmp_path / "p.json")
    with pytest.raises(PlanError, match="calibrated for model sha256:abababababab, not this model"):
        CalibratedPlan.load(path, CXR_SCHEMA, model_sha256="cd" * 32)
    content = json.loads(path.read_text())
    cases = [
        ({**content, "format": "other/1"}, "is not a medcf-guidance-plan/1 file"),
        ({**content, "attributes": {"density": {"weight": 1}}}, "density are not attributes of the model"),
        ({**content, "attributes": {"sex": {"weight": -1}}}, r"attributes.sex.weight: -1 must be a finite number"),
        ({**content, "attributes": {"sex": {"weight": 1, "interval": [3, 1]}}}, "must satisfy 0 <= low < high"),
        ({**content, "attributes": {"sex": {"weight": 1, "status": "guessed"}}}, "status: 'guessed' is not one of"),
        ({**content, "w_inv": "1"}, "w_inv: '1' must be a finite number"),
        ({**content, "inversion_refinements": -1}, "inversion_refinements: -1 must be an integer >= 0"),
    ]
    for bad, message in cases:
        path.write_text(json.dumps(bad))
        with pytest.raises(PlanError, match=message):
            CalibratedPlan.load(path, CXR_SCHEMA)
    path.write_text("{not json")
    with pytest.raises(PlanError, match="is not JSON"):
        CalibratedPlan.load(path, CXR_SCHEMA)
    path.write_bytes(b" " * (MAX_PLAN_BYTES + 1))
    with pytest.raises(PlanError, match="more than a plan's"):
        CalibratedPlan.load(path, CXR_SCHEMA)
    with pytest.raises(PlanError, match="is not a file"):
        CalibratedPlan.load(tmp_path / "missing.json", CXR_SCHEMA)


def test_jobs_read_the_plan_only_for_mode_calibrated(tmp_path):
    path = a_plan().save(tmp_path / "p.json")
    assert plan_if_used([{"mode": "cfg", "weight": 3}], tmp_path / "missing.json", CXR_SCHEMA, None) is None
    assert plan_if_used({"mode": "calibrated"}, path, CXR_SCHEMA, None).weights()["sex"] == 1.4
    by_hand = guidance_settings("dcfg", None, CXR_SCHEMA, w_aff=3.0, steps=10)
    assert by_hand == GuidanceSettings(mode="dcfg", w_aff=3.0, steps=10)
    assert guidance_settings("calibrated", path, CXR_SCHEMA, steps=10).per_attribute["disease"] == 5.5
    with pytest.raises(PlanError, match="needs a plan file"):
        guidance_settings("calibrated", None, CXR_SCHEMA)


@pytest.mark.parametrize(
    ("setting", "default", "other"), [("rule", "linear", "nested"), ("affected_descendants", "all", "changed")]
)
def test_the_plan_decodes_as_it_was_calibrated_unless_a_job_names_another(tmp_path, setting, default, other):
    content = json.loads(a_plan().save(tmp_path / "p.json").read_text())
    assert content[setting] == default
    del content[setting]  # a plan written before the setting was recorded
    (tmp_path / "old.json").write_text(json.dumps(content))
    assert getattr(CalibratedPlan.load(tmp_path / "old.json", CXR_SCHEMA).settings(), setting) == default
    calibrated = CalibratedPlan(**{**a_plan().__dict__, setting: other}).save(tmp_path / "other.json")
    plan = CalibratedPlan.load(calibrated, CXR_SCHEMA)
    assert getattr(plan, setting) == other and getattr(plan.settings(), setting) == other
    assert getattr(plan.settings(**{setting: None}), setting) == other
    assert getattr(plan.settings(**{setting: default}), setting) == default  # a job's explicit choice wins
    assert getattr(guidance_settings("calibrated", calibrated, CXR_SCHEMA, **{setting: None}), setting) == other
    no_plan = guidance_settings("dcfg", None, CXR_SCHEMA, **{setting: None})
    assert getattr(no_plan, setting) == default  # no plan: the default
    (tmp_path / "bad.json").write_text(json.dumps({**content, setting: "sometimes"}))
    with pytest.raises(PlanError, match=f"{setting}: 'sometimes' must be one of {default}, {other}"):
        CalibratedPlan.load(tmp_path / "bad.json", CXR_SCHEMA)


def test_calibrated_settings_need_the_plan_name_and_valid_bands():
    with pytest.raises(ValueError, match="plan: None is not allowed"):
        GuidanceSettings(mode="calibrated")
    with pytest.raises(ValueError, match=r"intervals.sex: \(2, 1\) is not allowed"):
        GuidanceSettings(mode="calibrated", plan="p", intervals={"sex": (2, 1)})
    null_intervention = guidance_plan(CXR_SCHEMA, "calibrated", set(), w_inv=1.0)
    assert torch.equal(null_intervention.keep, torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]]).bool())
