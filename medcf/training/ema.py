"""Exponential moving average of the weights, updated after every optimiser step (an ignite handler)."""

from __future__ import annotations

import copy

import torch
from ignite.engine import Engine, Events
from torch import nn


class EMAHandler:
    """Keeps ``ema_model`` = decay * ema_model + (1 - decay) * model after each iteration.

    Args:
        model: the trained network.
        decay: EMA decay (0.999 is typical; lower for short runs).
        warmup: iterations over which the effective decay ramps up from 0 (the average starts as the model).

    Raises:
        ValueError: when ``decay`` is not in [0, 1).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: int = 100) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay: {decay!r} must lie in [0, 1)")
        self.model, self.decay, self.warmup = model, decay, warmup
        self.ema_model = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    def attach(self, engine: Engine) -> None:
        """Run :meth:`update` after every iteration of ``engine``.

        Args:
            engine: the ignite trainer.
        """
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)

    @torch.no_grad()
    def update(self, engine: Engine | None = None) -> None:
        """Move the average one step towards the model's current weights.

        The effective decay is ``min(decay, updates / (updates + warmup))``; buffers that are not floating
        point (e.g. counters) are copied.

        Args:
            engine: the calling engine (not read; ignite passes it).
        """
        self.updates += 1
        decay = min(self.decay, self.updates / (self.updates + self.warmup)) if self.warmup else self.decay
        source = self.model.module if hasattr(self.model, "module") else self.model  # DistributedDataParallel
        for average, current in zip(self.ema_model.state_dict().values(), source.state_dict().values(), strict=True):
            if average.dtype.is_floating_point:
                average.mul_(decay).add_(current.detach(), alpha=1 - decay)
            else:
                average.copy_(current)

    def state_dict(self) -> dict:
        """The state to put in a checkpoint.

        Returns:
            ``{"ema_model": weights of the average, "updates": number of updates so far}``.
        """
        return {"ema_model": self.ema_model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        """Restore the average and the update count.

        Args:
            state: a dict as made by :meth:`state_dict`.
        """
        self.ema_model.load_state_dict(state["ema_model"])
        self.updates = int(state["updates"])
