"""Tests for medcf.core.network: the attribute-conditioned denoiser, its keep-mask semantics and its checkpoints."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from medcf.core.attributes import Attribute, AttributeSchema, SchemaError
from medcf.core.diffusion import DiffusionConfig
from medcf.core.network import CounterfactualUNet, ModelConfig, load_checkpoint, save_checkpoint
from medcf.phantoms.cxr import CXR_SCHEMA
from medcf.phantoms.mammo import MAMMO_SCHEMA

# MONAI's UNet needs channels divisible by its norm groups (32 by default), and a 32-channel level cannot see the
# time embedding (see TestConditionReachesTheUNet): (32, 64) is the smallest net whose output depends on the condition.
TINY = {"channels": (32, 64), "num_head_channels": 8, "block_dim": 8, "hidden_dim": 16}
MODES = ["time", "cross_attention"]
AGE, SEX, RACE, DISEASE = range(4)
B = 3


def tiny_config(conditioning: str = "time", **changes) -> ModelConfig:
    return ModelConfig(**TINY, attention_levels=(False, True), conditioning=conditioning, **changes)


def perturb(model: CounterfactualUNet, seed: int = 0, scale: float = 0.05) -> CounterfactualUNet:
    """Move every UNet weight (and the projection) off its init: MONAI zero-initialises the output convs."""
    generator = torch.Generator().manual_seed(seed)
    modules = [model.unet, *([model.project] if hasattr(model, "project") else [])]
    with torch.no_grad():
        for module in modules:
            for p in module.parameters():
                p.add_(scale * torch.randn(p.shape, generator=generator))
    return model


def make_model(conditioning: str = "time", seed: int = 0, perturbed: bool = True, **changes) -> CounterfactualUNet:
    torch.manual_seed(seed)
    model = CounterfactualUNet(CXR_SCHEMA, tiny_config(conditioning, **changes)).eval()
    return perturb(model, seed) if perturbed else model


def inputs(batch: int = B, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, 16, 16, generator=generator)
    timesteps = torch.tensor([10, 500, 990, 250, 0, 750][:batch])
    attributes = torch.tensor([[30.0, 0, 0, 0], [63.5, 1, 2, 1], [80.0, 1, 1, 0], [45.0, 0, 2, 1]][:batch])
    return x, timesteps, attributes


def changed_value(attributes: torch.Tensor, k: int) -> torch.Tensor:
    """A copy of ``attributes`` with column k moved to another valid value in every row."""
    changed = attributes.clone()
    if k == AGE:
        changed[:, k] = 113.0 - attributes[:, k]  # stays within [18, 95] for the rows above
    else:
        size = len(CXR_SCHEMA.attributes[k].values)
        changed[:, k] = (attributes[:, k] + 1) % size
    assert not torch.equal(changed, attributes)
    return changed


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny models gain nothing from threads, and two threads beside a busy CPU job stall for seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=MODES)
def model(request) -> CounterfactualUNet:
    return make_model(request.param)


class TestForwardShape:
    @pytest.mark.parametrize(
        ("conditioning", "learned_null", "l2_normalize"),
        [
            ("time", False, False),
            ("time", True, False),
            ("time", False, True),
            ("time", True, True),
            ("cross_attention", False, False),
            ("cross_attention", True, False),
        ],
    )
    def test_output_shape_equals_input_shape(self, conditioning, learned_null, l2_normalize):
        """The prediction has the shape of the noisy images, in every conditioning variant."""
        net = make_model(conditioning, learned_null=learned_null, l2_normalize=l2_normalize)
        x, t, a = inputs()
        keep = torch.tensor([[True] * 4, [False] * 4, [True, False, True, False]])
        with torch.no_grad():
            y = net(x, t, a, keep)
        assert y.shape == x.shape
        assert torch.isfinite(y).all()

    def test_condition_shapes(self):
        """The condition is a (B, 4 C0) time offset, or (B, K, block_dim) cross-attention tokens."""
        x, t, a = inputs()
        keep = torch.ones(B, 4, dtype=torch.bool)
        assert make_model("time", perturbed=False).condition(a, keep).shape == (B, 4 * 32)  # 4 * channels[0]
        assert make_model("cross_attention", perturbed=False).condition(a, keep).shape == (B, 4, 8)


class TestKeepMaskSemantics:
    def test_output_is_zero_at_init(self):
        """At init MONAI's zero output conv makes the output constant: the tests below perturb weights first."""
        x, t, a = inputs()
        with torch.no_grad():
            y = make_model("time", perturbed=False)(x, t, a, torch.ones(B, 4, dtype=torch.bool))
        assert torch.equal(y, torch.zeros_like(y))

    @pytest.mark.parametrize("k", [AGE, SEX, RACE, DISEASE])
    def test_nulled_attribute_has_no_effect(self, model, k):
        """With attribute k nulled in row i, changing attributes[i, k] leaves every output row bit-identical."""
        x, t, a = inputs()
        keep = torch.ones(B, 4, dtype=torch.bool)
        keep[1, k] = False
        changed = a.clone()
        changed[1] = changed_value(a, k)[1]
        with torch.no_grad():
            assert torch.equal(model(x, t, a, keep), model(x, t, changed, keep))

    @pytest.mark.parametrize(("conditioning", "l2_normalize"), [("time", True), ("cross_attention", False)])
    def test_nulled_attribute_has_no_effect_with_learned_null(self, conditioning, l2_normalize):
        """The learned null token and the l2-normalised projection keep nulled values invisible."""
        net = make_model(conditioning, learned_null=True, l2_normalize=l2_normalize)
        with torch.no_grad():
            net.embedder.null_tokens.normal_()
        x, t, a = inputs()
        keep = torch.tensor([[True, False, True, True], [False, True, True, False], [True, True, False, True]])
        changed = a.clone()
        for k in range(4):
            changed[~keep[:, k], k] = changed_value(a, k)[~keep[:, k], k]
        with torch.no_grad():
            assert torch.equal(net(x, t, a, keep), net(x, t, changed, keep))

    def test_all_nulled_is_independent_of_all_values(self, model):
        """With every attribute nulled, the output does not depend on any attribute value."""
        x, t, a = inputs()
        keep = torch.zeros(B, 4, dtype=torch.bool)
        other = torch.tensor([[95.0, 1, 2, 1], [18.0, 0, 0, 0], [40.0, 0, 2, 1]])
        with torch.no_grad():
            assert torch.equal(model(x, t, a, keep), model(x, t, other, keep))

    @pytest.mark.parametrize("k", [AGE, SEX, RACE, DISEASE])
    def test_kept_attribute_changes_output(self, model, k):
        """With attribute k kept, changing its value changes the output of every row."""
        x, t, a = inputs()
        keep = torch.ones(B, 4, dtype=torch.bool)
        with torch.no_grad():
            before, after = model(x, t, a, keep), model(x, t, changed_value(a, k), keep)
        assert ((before - after).abs().flatten(1).amax(dim=1) > 1e-4).all()

    def test_nulling_changes_output(self, model):
        """Nulling a kept attribute (without learned null) changes the output: null is not a no-op."""
        x, t, a = inputs()
        keep = torch.ones(B, 4, dtype=torch.bool)
        nulled = keep.clone()
        nulled[:, SEX] = False
        with torch.no_grad():
            assert (model(x, t, a, keep) - model(x, t, a, nulled)).abs().max() > 1e-4

    def test_keep_mask_may_be_integer(self, model):
        """A 0/1 integer keep-mask means the same as the boolean one."""
        x, t, a = inputs()
        keep = torch.tensor([[True, False, True, False], [False] * 4, [True] * 4])
        with torch.no_grad():
            assert torch.equal(model(x, t, a, keep), model(x, t, a, keep.long()))


class TestBatchedMixedKeepMasks:
    def test_batched_equals_row_by_row(self, model):
        """One forward over rows keeping different attribute subsets equals separate forwards (DCFG batching)."""
        generator = torch.Generator().manual_seed(3)
        image = torch.randn(1, 1, 16, 16, generator=generator)
        x = torch.cat([image.expand(4, -1, -1, -1), torch.randn(2, 1, 16, 16, generator=generator)])
        t = torch.tensor([500, 500, 500, 500, 20, 980])
        a = torch.tensor([[63.5, 1, 2, 1]] * 4 + [[30.0, 0, 0, 0], [80.0, 1, 1, 0]])
        keep = torch.tensor(
            [
                [True, True, True, True],
                [False, False, False, False],
                [True, False, True, False],
                [False, True, False, False],
                [True, True, False, True],
                [False, False, True, True],
            ]
        )
        with torch.no_grad():
            batched = model(x, t, a, keep)
            rows = torch.cat([model(x[i : i + 1], t[i : i + 1], a[i : i + 1], keep[i : i + 1]) for i in range(6)])
        assert torch.allclose(batched, rows, atol=1e-5, rtol=0)
        # the guidance terms of one image really differ, so the comparison above is not vacuous
        assert (batched[0] - batched[1]).abs().max() > 1e-4
        assert (batched[2] - batched[3]).abs().max() > 1e-4


class TestGradients:
    @pytest.mark.parametrize("conditioning", MODES)
    def test_gradient_reaches_kept_attributes_only(self, conditioning):
        """Kept attributes' MLPs get non-zero gradients; an attribute nulled in every row gets exactly zero."""
        net = make_model(conditioning).train()
        x, t, a = inputs()
        keep = torch.tensor([[True, True, False, True], [True, False, False, True], [False, True, False, False]])
        net(x, t, a, keep).square().mean().backward()
        for k in (AGE, SEX, DISEASE):
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.embedder.mlps[k].parameters())
        for p in net.embedder.mlps[RACE].parameters():
            assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p))
        assert net.embedder.null_tokens.grad is None  # not learned: stays frozen at zero

    def test_gradient_reaches_learned_null_of_nulled_attribute(self):
        """With learned_null, the null token of a nulled attribute gets a gradient; unused tokens get zero."""
        net = make_model("time", learned_null=True).train()
        x, t, a = inputs()
        keep = torch.ones(B, 4, dtype=torch.bool)
        keep[:, RACE] = False
        net(x, t, a, keep).square().mean().backward()
        grad = net.embedder.null_tokens.grad
        assert grad[RACE].abs().sum() > 0
        assert torch.equal(grad[[AGE, SEX, DISEASE]], torch.zeros(3, 8))


class TestCheckpoint:
    @pytest.mark.parametrize("conditioning", MODES)
    def test_round_trip_gives_identical_outputs(self, tmp_path, conditioning):
        """save_checkpoint then load_checkpoint restores schema, config, diffusion settings and outputs."""
        net = make_model(conditioning, learned_null=True)
        with torch.no_grad():
            net.embedder.null_tokens.normal_()
        diffusion = DiffusionConfig(schedule="cosine", prediction_type="v_prediction").to_dict()
        path = tmp_path / "sub" / "model.pt"
        save_checkpoint(path, net, diffusion, step=7)
        loaded, payload = load_checkpoint(path, expected_schema=CXR_SCHEMA)
        assert loaded.config == net.config
        assert loaded.schema.to_config() == CXR_SCHEMA.to_config()
        assert payload["diffusion"] == diffusion and payload["step"] == 7
        assert not list(path.parent.glob(".*.tmp"))
        x, t, a = inputs()
        keep = torch.tensor([[True] * 4, [False] * 4, [True, False, True, False]])
        with torch.no_grad():
            expected = net(x, t, a, keep)
            assert expected.abs().max() > 0
            assert torch.equal(loaded.eval()(x, t, a, keep), expected)

    def test_explicit_state_dict_is_saved(self, tmp_path):
        """A state_dict passed to save_checkpoint (e.g. EMA weights) is what load_checkpoint restores."""
        net, other = make_model(seed=0), make_model(seed=1)
        save_checkpoint(tmp_path / "ema.pt", net, DiffusionConfig().to_dict(), state_dict=other.state_dict())
        loaded, _ = load_checkpoint(tmp_path / "ema.pt")
        x, t, a = inputs()
        keep = torch.ones(B, 4, dtype=torch.bool)
        with torch.no_grad():
            assert torch.equal(loaded.eval()(x, t, a, keep), other(x, t, a, keep))

    def test_other_schema_raises_naming_both(self, tmp_path):
        """Loading a CXR checkpoint for the mammography schema names both schemas' attributes."""
        save_checkpoint(tmp_path / "m.pt", make_model(perturbed=False), DiffusionConfig().to_dict())
        with pytest.raises(SchemaError) as info:
            load_checkpoint(tmp_path / "m.pt", expected_schema=MAMMO_SCHEMA)
        message = str(info.value)
        for name in ("sex", "disease", "density", "view", "marker"):
            assert name in message
        assert "sex{M,F}" in message and "density{A,B,C,D}" in message

    def test_reordered_values_raise(self, tmp_path):
        """The same attributes with categories in another coding order is a different schema."""
        save_checkpoint(tmp_path / "m.pt", make_model(perturbed=False), DiffusionConfig().to_dict())
        rows = CXR_SCHEMA.to_config()
        rows[RACE]["values"] = ["White", "Black", "Asian"]
        reordered = AttributeSchema.from_config(rows)
        with pytest.raises(SchemaError) as info:
            load_checkpoint(tmp_path / "m.pt", expected_schema=reordered)
        assert "race{White,Asian,Black}" in str(info.value) and "race{White,Black,Asian}" in str(info.value)

    def test_changed_range_raises(self, tmp_path):
        """A continuous attribute with another range is a different schema."""
        save_checkpoint(tmp_path / "m.pt", make_model(perturbed=False), DiffusionConfig().to_dict())
        changed = AttributeSchema((Attribute("age", "continuous", low=30.0, high=95.0), *CXR_SCHEMA.attributes[1:]))
        with pytest.raises(SchemaError, match=re.escape("age[18,95]")):
            load_checkpoint(tmp_path / "m.pt", expected_schema=changed)

    @pytest.mark.parametrize("payload", [{"weights": torch.randn(3)}, {"format": "other/1"}, [1, 2, 3]])
    def test_foreign_torch_file_raises(self, tmp_path, payload):
        """A torch file that is not a medcf checkpoint fails with a ValueError saying so."""
        torch.save(payload, tmp_path / "foreign.pt")
        with pytest.raises(ValueError, match="not a medcf checkpoint"):
            load_checkpoint(tmp_path / "foreign.pt")

    def test_missing_file_raises(self, tmp_path):
        """A missing file fails with a ValueError naming it."""
        with pytest.raises(ValueError, match="missing.pt"):
            load_checkpoint(tmp_path / "missing.pt")

    @pytest.mark.parametrize("content", [b"not a checkpoint\n", b"hello world\n", b""])
    def test_non_torch_file_raises_value_error(self, tmp_path, content):
        """A text (or empty) file fails with a ValueError saying it is not a medcf checkpoint."""
        (tmp_path / "notes.txt").write_bytes(content)
        with pytest.raises(ValueError, match="medcf checkpoint|cannot read the checkpoint"):
            load_checkpoint(tmp_path / "notes.txt")


class TestModelConfig:
    def test_mismatched_channels_and_attention_levels_raise(self):
        """channels and attention_levels of different lengths are a ValueError."""
        with pytest.raises(ValueError, match="attention_levels"):
            ModelConfig(channels=(32, 64), attention_levels=(False,))

    @pytest.mark.parametrize("conditioning", ["film", "concat", ""])
    def test_bad_conditioning_raises(self, conditioning):
        """An unknown conditioning mode is a ValueError naming it."""
        with pytest.raises(ValueError, match=re.escape(repr(conditioning))):
            ModelConfig(conditioning=conditioning)

    def test_overrides_build_the_config(self):
        """Keyword overrides (lists from YAML included) build the ModelConfig."""
        net = CounterfactualUNet(CXR_SCHEMA, **{**TINY, "channels": [32, 32], "attention_levels": [False, False]})
        expected = dataclasses.replace(tiny_config(), channels=(32, 32), attention_levels=(False, False))
        assert net.config == expected


class TestConditionReachesTheUNet:
    @pytest.mark.parametrize(
        "level",
        [
            pytest.param(0, id="first level, 32 channels"),
            pytest.param(1, id="wider level, 64 channels (two per norm group): the control case"),
        ],
    )
    def test_every_resnet_block_of_the_default_model_sees_the_embedding(self, level):
        """The first resnet block of each level responds to the time (+ condition) embedding."""
        torch.manual_seed(0)
        net = perturb(CounterfactualUNet(CXR_SCHEMA, ModelConfig()))
        block = net.unet.down_blocks[level].resnets[0]  # its input has 32 channels
        generator = torch.Generator().manual_seed(1)
        h = torch.randn(2, 32, 8, 8, generator=generator)
        emb = torch.randn(2, 4 * 32, generator=generator)
        with torch.no_grad():
            difference = (block(h, emb) - block(h, emb + torch.randn(2, 4 * 32, generator=generator))).abs().max()
        assert difference > 1e-3

    def test_time_mode_model_with_32_channels_sees_the_condition(self):
        """A time-conditioned model with channels (32, 32) depends on its kept attributes and its timestep."""
        torch.manual_seed(0)
        config = dataclasses.replace(tiny_config("time"), channels=(32, 32))
        net = perturb(CounterfactualUNet(CXR_SCHEMA, config).eval())
        x, t, a = inputs()
        keep = torch.ones(B, 4, dtype=torch.bool)
        with torch.no_grad():
            base = net(x, t, a, keep)
            assert (base - net(x, t, changed_value(a, SEX), keep)).abs().max() > 1e-4
            assert (base - net(x, 999 - t, a, keep)).abs().max() > 1e-4


class TestSafeLoading:
    def test_a_model_file_with_a_pickle_payload_is_refused_before_it_runs(self, tmp_path, pickle_payload_file):
        """A model.pt carrying code is refused with one line naming the file and why; the code never runs."""
        model = make_model()
        save_checkpoint(tmp_path / "good.pt", model, DiffusionConfig().to_dict())
        good = torch.load(tmp_path / "good.pt", weights_only=True)
        marker = pickle_payload_file(tmp_path / "model.pt", **good)
        with pytest.raises(ValueError) as info:
            load_checkpoint(tmp_path / "model.pt")
        message = str(info.value)
        assert "\n" not in message and str(tmp_path / "model.pt") in message
        assert "refused" in message and "could run code" in message and "posix.system" in message
        assert not marker.exists()

    def test_files_written_by_medcf_load_with_weights_only(self, tmp_path):
        """save_checkpoint writes only what a weights-only load accepts (tensors and plain data)."""
        model = make_model()
        save_checkpoint(tmp_path / "m.pt", model, DiffusionConfig().to_dict(), image_size=[64, 64], trained_epochs=3)
        loaded, payload = load_checkpoint(tmp_path / "m.pt")
        assert payload["image_size"] == [64, 64] and payload["trained_epochs"] == 3
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
