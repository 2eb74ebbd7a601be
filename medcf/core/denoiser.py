"""The guided denoiser: ``predict(x, t)`` for the DDIM sampler, every guidance term of a step in ONE batched forward
of the network, combined by the plan's rule (:mod:`medcf.core.guidance`).

A plan with M groups needs M + 1 network rows per image and step (null first; rule "nested" with a first weight of 1:
M rows); outside the plan's guidance interval one conditional row. The rows of a batch are stacked into one call (or
calls of ``max_rows`` rows on a CPU), so the launch and memory cost of a guided step is one forward, not M + 1.
"""

from __future__ import annotations

import torch
from torch import nn

from medcf.core.guidance import GuidancePlan, cfg_plus_plus, factored_apg, in_interval
from medcf.core.sampling import GuidedPrediction, noise_level, prediction_from_x0, split_prediction

#: How a network runs: in float32, or under bfloat16 autocast (:func:`precision_autocast`).
PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    """Refuse, in one line, a precision that is not one of :data:`PRECISIONS`.

    Args:
        precision: the setting.

    Returns:
        ``precision``, unchanged.

    Raises:
        ValueError: naming the setting and the allowed values.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    return precision


def precision_autocast(device_type: str, precision: str) -> torch.autocast:
    """The autocast a network's forward runs under at ``precision``: bfloat16 for ``bf16`` (on any device type),
    none for ``fp32``. The caller casts the output back to its working dtype.

    Args:
        device_type: the inputs' device type (``cpu``, ``cuda``).
        precision: one of :data:`PRECISIONS`.

    Returns:
        The context manager.
    """
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16")


class GuidedDenoiser:
    """``predict(x, t)`` for the DDIM sampler: every guidance term of the step in one batched forward.

    Args:
        model: a network with ``forward(x, timesteps, attributes, keep)``.
        attributes: (B, K) attribute codes the batch is decoded under.
        plan: the guidance plan.
        max_rows: at most this many rows per forward call (None: the whole batch, all terms, one call). The
            batch is split by images, so an image's guidance terms always share one call. On a CPU the cost
            per row grows with the batch (activations leave the cache), so calls of about 9 rows are faster.
        alphas_cumprod, prediction_type: the model's noise schedule and parametrisation ("epsilon" or
            "v_prediction"); needed by a guided plan with rule "apg" (clean-image space) or an ``interval``.
        precision: "fp32", or "bf16": the network runs under bfloat16 autocast (on the input's device) and its
            predictions come back as float32, so the guidance sums and the sampler stay in float32.

    Returns of a call: the prediction, in the model's parametrisation (rule "apg": float64); rule "cfg++": a
    :class:`~medcf.core.sampling.GuidedPrediction` that re-noises with the null prediction.

    ``calls`` counts the steps, ``evaluations`` the network evaluations per image so far (``plan.evaluations`` at a
    guided step, 1 at a step outside the interval). Rule "apg" keeps each group's running average per image over
    the guided steps, so a denoiser serves ONE decode of one batch: make a fresh one per decode.
    """

    def __init__(
        self,
        model: nn.Module,
        attributes: torch.Tensor,
        plan: GuidancePlan,
        max_rows: int | None = None,
        *,
        alphas_cumprod: torch.Tensor | None = None,
        prediction_type: str | None = None,
        precision: str = "fp32",
    ) -> None:
        self.model, self.attributes, self.plan, self.max_rows = model, attributes, plan, max_rows
        self.precision = check_precision(precision)
        needs_schedule = bool(plan.weights) and (plan.rule == "apg" or plan.interval is not None)
        if needs_schedule and (alphas_cumprod is None or prediction_type is None):
            raise ValueError("GuidedDenoiser needs alphas_cumprod and prediction_type for rule apg or an interval")
        self.alphas_cumprod = None if alphas_cumprod is None else alphas_cumprod.to(torch.float64)
        self.prediction_type = prediction_type
        self.calls = 0
        self.evaluations = 0
        self._averages: torch.Tensor | None = None  # APG: (M, B, ...) running averages of the guided steps so far

    def guided(self, t: int) -> bool:
        """Whether step t evaluates the plan's guidance terms (else: the conditional prediction alone).

        Args:
            t: the training timestep of the step.

        Returns:
            True if the plan has no weights or no interval, or the step's noise level lies in the interval.
        """
        if not self.plan.weights or self.plan.interval is None:
            return True
        return in_interval(float(noise_level(self.alphas_cumprod[t])), self.plan.interval)

    def __call__(self, x: torch.Tensor, t: int) -> torch.Tensor | GuidedPrediction:
        guided = self.guided(t)
        keep = self.plan.keep if guided else torch.ones(1, self.plan.keep.shape[1], dtype=torch.bool)
        keep = keep.to(x.device)
        rows, batch = keep.shape[0], x.shape[0]
        images_per_call = batch if self.max_rows is None else max(1, self.max_rows // rows)
        rule = self.plan.rule if guided and self.plan.weights else "linear"
        if rule == "apg" and self._averages is not None and self._averages.shape[1:] != (batch, *x.shape[1:]):
            raise ValueError("an APG GuidedDenoiser serves one decode of one batch: make a fresh one per decode")
        self.calls += 1
        self.evaluations += rows
        outputs, averages = [], []
        for start in range(0, batch, images_per_call):
            images = x[start : start + images_per_call]
            n = images.shape[0]
            with precision_autocast(x.device.type, self.precision):
                predictions = self.model(
                    images.repeat(rows, *([1] * (x.ndim - 1))),
                    torch.full((rows * n,), t, device=x.device, dtype=torch.long),
                    self.attributes[start : start + n].repeat(rows, 1),
                    keep.repeat_interleave(n, dim=0),
                )
            predictions = predictions.to(x.dtype).reshape(rows, n, *x.shape[1:])
            if rule in ("linear", "nested"):
                outputs.append(self.plan.combine(predictions) if guided else predictions[0])
            elif rule == "cfg++":
                outputs.append(cfg_plus_plus(predictions[0], list(predictions[1:]), self.plan.weights))
            else:
                output, average = self._apg(predictions, images, t, start)
                outputs.append(output)
                averages.append(average)
        if averages:
            self._averages = torch.cat(averages, dim=1)
        if isinstance(outputs[0], GuidedPrediction):
            return GuidedPrediction(torch.cat([o.prediction for o in outputs]), torch.cat([o.renoise for o in outputs]))
        return torch.cat(outputs)

    def _apg(
        self, predictions: torch.Tensor, images: torch.Tensor, t: int, start: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rule apg on one chunk of images: (guided prediction, the groups' running averages (M, n, ...))."""
        x64, alpha_bar, kind = images.to(torch.float64), self.alphas_cumprod[t], self.prediction_type
        _, d = split_prediction(predictions.to(torch.float64), x64, alpha_bar, kind)
        previous = None if self._averages is None else self._averages[:, start : start + images.shape[0]]
        apg = self.plan.apg
        d_guided, averages = factored_apg(
            d[0], list(d[1:]), self.plan.weights, previous, apg.eta, apg.momentum, apg.norm_limit
        )
        return prediction_from_x0(d_guided, x64, alpha_bar, kind), torch.stack(averages)


def default_max_rows(device: torch.device) -> int | None:
    """Rows per forward call: the whole stacked batch on a GPU; on a CPU about 9 rows (three images with their
    three DCFG terms), where benchmarks/counterfactual_speed.py measured one 24-row call slower than three
    8-row calls.

    Args:
        device: the device the network runs on.

    Returns:
        None (no limit) for a CUDA device, else 9.
    """
    return None if device.type == "cuda" else 9
