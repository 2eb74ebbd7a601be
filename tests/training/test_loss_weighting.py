"""Min-SNR-gamma loss weighting: the weight per noise level, and the weighted loss through MONAI's MSE."""

import pytest
import torch
from ignite.engine import Engine

from medcf.core.conditioning import ConditionDropout
from medcf.core.diffusion import DiffusionConfig
from medcf.phantoms.cxr import CXR_SCHEMA
from medcf.training.batch import LossWeightedInferer, NoisingPrepareBatch, SameNoiseEachPass


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weight_makes_the_loss_min_snr_gamma_times_the_clean_image_error(prediction_type):
    """For both targets, weight * ||target_hat - target||^2 = min(SNR, gamma) ||x0_hat - x0||^2 at a fixed x_t."""
    diffusion = DiffusionConfig(prediction_type=prediction_type)
    alpha_bar = diffusion.alphas_cumprod()[torch.tensor([0, 50, 300, 999])].double()
    snr = alpha_bar / (1 - alpha_bar)
    weight = diffusion.min_snr_weight(alpha_bar, gamma=5.0)
    # a target error e in epsilon is an x0 error of sqrt(1 - a) / sqrt(a) e; in v of sqrt(1 - a) e
    x0_error_per_target_error = (1 - alpha_bar) / alpha_bar if prediction_type == "epsilon" else 1 - alpha_bar
    assert weight / x0_error_per_target_error == pytest.approx(snr.clamp(max=5.0), rel=1e-9)
    assert weight.max() <= 1.0 + 1e-12
    with pytest.raises(ValueError, match="gamma"):
        diffusion.min_snr_weight(alpha_bar, gamma=0.0)


def test_weighted_batch_and_inferer_give_the_weighted_mse():
    diffusion = DiffusionConfig()
    images = {"image": torch.randn(6, 1, 8, 8), "attributes": torch.zeros(6, len(CXR_SCHEMA.names))}
    dropout = ConditionDropout(whole=0.0)
    plain = NoisingPrepareBatch(diffusion, CXR_SCHEMA, dropout, seed=3)
    weighted = NoisingPrepareBatch(diffusion, CXR_SCHEMA, dropout, seed=3, loss_weighting="min_snr", snr_gamma=5.0)
    x_t, target, _, kwargs = plain(images)
    x_w, target_w, _, kwargs_w = weighted(images)
    assert torch.equal(x_t, x_w) and "loss_scale" not in kwargs
    scale = kwargs_w["loss_scale"]
    assert torch.allclose(target_w, target * scale)

    def network(x, timesteps, attributes, keep):
        return x * 0.5  # any prediction

    inferer = LossWeightedInferer()
    prediction = inferer(x_w, network, **kwargs_w)
    loss = torch.nn.MSELoss()(prediction, target_w)
    alpha_bar = diffusion.alphas_cumprod()[kwargs_w["timesteps"]].view(-1, 1, 1, 1)
    expected = (diffusion.min_snr_weight(alpha_bar, 5.0) * (network(x_w, None, None, None) - target) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.equal(inferer(x_t, network, **kwargs), network(x_t, None, None, None))  # no weight: SimpleInferer
    with pytest.raises(ValueError, match="loss_weighting"):
        NoisingPrepareBatch(diffusion, CXR_SCHEMA, dropout, loss_weighting="snr")


def test_a_bf16_inferer_runs_the_network_in_bfloat16_and_returns_float32(conditioned_tiny_model):
    """The prediction comes back in float32 (the loss and optimiser stay there), within bfloat16's rounding of the
    fp32 one and not equal to it (the autocast ran); another precision is refused in one line."""
    torch.manual_seed(0)
    x, scale = torch.randn(4, 1, 16, 16), torch.rand(4, 1, 1, 1)
    kwargs = {"timesteps": torch.tensor([10, 200, 500, 900]), "attributes": torch.zeros(4, len(CXR_SCHEMA.names))}
    kwargs["keep"] = torch.ones(4, len(CXR_SCHEMA.names), dtype=torch.bool)
    with torch.no_grad():
        fp32 = LossWeightedInferer()(x, conditioned_tiny_model, **kwargs, loss_scale=scale)
        bf16 = LossWeightedInferer("bf16")(x, conditioned_tiny_model, **kwargs, loss_scale=scale)
    assert fp32.dtype == bf16.dtype == torch.float32
    relative = float((bf16 - fp32).abs().mean() / fp32.abs().mean())
    assert 0 < relative < 0.02
    with pytest.raises(ValueError, match=r"^precision: 'fp16' is not one of fp32, bf16$"):
        LossWeightedInferer("fp16")


def test_every_validation_pass_draws_the_same_noise_and_its_batches_differ():
    """SameNoiseEachPass restarts the validation draws when a pass starts: two passes over three batches see the
    same timesteps and noise batch for batch, while the batches of one pass differ from each other."""
    images = {"image": torch.randn(4, 1, 8, 8), "attributes": torch.zeros(4, len(CXR_SCHEMA.names))}
    prepare = NoisingPrepareBatch(DiffusionConfig(), CXR_SCHEMA, ConditionDropout(whole=0.0), seed=7)
    drawn = []
    validation = Engine(lambda engine, batch: drawn.append(prepare(batch)[3]["timesteps"]))
    SameNoiseEachPass(prepare).attach(validation)
    for _ in range(2):
        validation.run([images] * 3, max_epochs=1)
    assert all(torch.equal(a, b) for a, b in zip(drawn[:3], drawn[3:], strict=True))
    assert not torch.equal(drawn[0], drawn[1]) and not torch.equal(drawn[1], drawn[2])
    unseeded = NoisingPrepareBatch(DiffusionConfig(), CXR_SCHEMA, ConditionDropout(whole=0.0))
    state = unseeded.generator.get_state()
    unseeded.restart()  # no seed: nothing to restart, the draws go on
    assert torch.equal(unseeded.generator.get_state(), state)
