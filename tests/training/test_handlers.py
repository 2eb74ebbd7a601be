"""Training handlers: the EMA of the weights and warm start from a model file."""

import pytest
import torch
from ignite.engine import Engine

from medcf.core.attributes import SchemaError
from medcf.core.diffusion import DiffusionConfig
from medcf.core.network import CounterfactualUNet, ModelConfig, save_checkpoint
from medcf.phantoms.cxr import CXR_SCHEMA
from medcf.phantoms.mammo import MAMMO_SCHEMA
from medcf.training.checkpoint import ResumableCheckpoint
from medcf.training.ema import EMAHandler

TINY = ModelConfig(channels=(32, 64), attention_levels=(False, False), num_head_channels=8, block_dim=8, hidden_dim=16)


def _perturbed(schema=CXR_SCHEMA, seed=0) -> CounterfactualUNet:
    torch.manual_seed(seed)
    model = CounterfactualUNet(schema, TINY)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


class TestEMA:
    def test_average_follows_the_formula(self):
        """Without warm-up, one update gives decay * old + (1 - decay) * new for every weight."""
        model = torch.nn.Linear(3, 2)
        ema = EMAHandler(model, decay=0.9, warmup=0)
        old = {k: v.clone() for k, v in ema.ema_model.state_dict().items()}
        with torch.no_grad():
            model.weight.add_(1.0)
        ema.update()
        expected = 0.9 * old["weight"] + 0.1 * model.weight
        assert torch.allclose(ema.ema_model.weight, expected)
        assert not ema.ema_model.weight.requires_grad

    def test_state_round_trip_and_bad_decay(self):
        """The EMA state restores exactly; a decay outside [0, 1) is refused."""
        ema = EMAHandler(torch.nn.Linear(3, 2), decay=0.5)
        ema.update()
        other = EMAHandler(torch.nn.Linear(3, 2), decay=0.5)
        other.load_state_dict(ema.state_dict())
        assert other.updates == 1 and torch.equal(other.ema_model.weight, ema.ema_model.weight)
        with pytest.raises(ValueError, match="ema decay"):
            EMAHandler(torch.nn.Linear(3, 2), decay=1.0)


class TestWarmStart:
    def test_no_checkpoint_starts_from_the_model_file(self, tmp_path):
        """Without checkpoint.pt the network and its EMA take the weights of init_weights."""
        trained = _perturbed(seed=1)
        save_checkpoint(tmp_path / "model.pt", trained, DiffusionConfig().to_dict())
        network = CounterfactualUNet(CXR_SCHEMA, TINY)
        ema = EMAHandler(network)
        optimizer = torch.optim.AdamW(network.parameters())
        handler = ResumableCheckpoint(
            tmp_path / "checkpoint.pt",
            network,
            optimizer,
            DiffusionConfig(),
            ema=ema,
            init_weights=tmp_path / "model.pt",
        )
        engine = Engine(lambda engine, batch: None)
        handler.load(engine)
        for name, value in trained.state_dict().items():
            assert torch.equal(network.state_dict()[name], value)
            assert torch.equal(ema.ema_model.state_dict()[name], value)
        assert engine.state.iteration == 0

    def test_model_file_of_another_schema_is_refused(self, tmp_path):
        """Warm-starting a chest model from mammogram weights fails with the schema message."""
        save_checkpoint(tmp_path / "model.pt", _perturbed(MAMMO_SCHEMA), DiffusionConfig().to_dict())
        network = CounterfactualUNet(CXR_SCHEMA, TINY)
        handler = ResumableCheckpoint(
            tmp_path / "checkpoint.pt",
            network,
            torch.optim.AdamW(network.parameters()),
            DiffusionConfig(),
            init_weights=tmp_path / "model.pt",
        )
        with pytest.raises(SchemaError, match="trained for attributes age\\[30,95\\]"):
            handler.load(Engine(lambda engine, batch: None))

    def test_checkpoint_wins_over_init_weights(self, tmp_path):
        """When checkpoint.pt exists it is resumed and init_weights is ignored."""
        network = _perturbed(seed=2)
        optimizer = torch.optim.AdamW(network.parameters())
        engine = Engine(lambda engine, batch: None)
        engine.state.epoch, engine.state.iteration = 3, 30
        ResumableCheckpoint(tmp_path / "checkpoint.pt", network, optimizer, DiffusionConfig()).save(engine)
        save_checkpoint(tmp_path / "model.pt", _perturbed(seed=3), DiffusionConfig().to_dict())
        fresh = CounterfactualUNet(CXR_SCHEMA, TINY)
        resumed = Engine(lambda engine, batch: None)
        ResumableCheckpoint(
            tmp_path / "checkpoint.pt",
            fresh,
            torch.optim.AdamW(fresh.parameters()),
            DiffusionConfig(),
            init_weights=tmp_path / "model.pt",
        ).load(resumed)
        assert (resumed.state.epoch, resumed.state.iteration) == (3, 30)
        assert all(torch.equal(fresh.state_dict()[k], v) for k, v in network.state_dict().items())


def test_a_training_checkpoint_with_a_pickle_payload_is_refused(tmp_path, pickle_payload_file):
    """Resuming reads the checkpoint weights-only: a payload is refused, never run."""
    network = _perturbed()
    optimizer = torch.optim.AdamW(network.parameters())
    engine = Engine(lambda engine, batch: None)
    ResumableCheckpoint(tmp_path / "checkpoint.pt", network, optimizer, DiffusionConfig()).save(engine)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    marker = pickle_payload_file(tmp_path / "checkpoint.pt", **state)
    handler = ResumableCheckpoint(tmp_path / "checkpoint.pt", network, optimizer, DiffusionConfig())
    with pytest.raises(ValueError, match=r"checkpoint\.pt: refused: the file holds Python objects"):
        handler.load(Engine(lambda engine, batch: None))
    assert not marker.exists()
