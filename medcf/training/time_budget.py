"""A wall-clock budget for a training run (an ignite handler): stop at the end of the last epoch that fits.

A lent GPU is often held for about 15 minutes. A training given ``max_minutes`` ends cleanly inside that time: after
each epoch it compares the time spent plus the longest epoch so far (validation included) with the budget, and
when the next epoch would not fit, it terminates the trainer. Ignite then fires COMPLETED, so the checkpoint and the
exported model are written at an epoch boundary, and the next session resumes from them (same ``output_dir``).
Under torchrun every process stops at the same epoch: the decision is the maximum over the ranks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events

from medcf.runtime.settings import require_number

logger = logging.getLogger(__name__)


class TimeBudget:
    """Terminate the trainer at the end of the last epoch that fits in ``minutes`` of wall-clock time.

    Args:
        minutes: the budget from the trainer's start; None: no budget (the handler does nothing).
        clock: seconds of a monotonic clock (default :func:`time.monotonic`; tests pass their own).

    Raises:
        ValueError: when ``minutes`` is not None and not a finite number > 0.
    """

    def __init__(self, minutes: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.minutes = require_number("max_minutes", minutes, 0, exclusive=True, allow_none=True)
        self.clock = clock
        self.started = self.last_epoch_end = self.longest_epoch = 0.0

    def attach(self, trainer: Engine) -> None:
        """Start the clock at STARTED and check the budget at every EPOCH_COMPLETED (nothing without a budget).

        Args:
            trainer: the ignite trainer.
        """
        if self.minutes is None:
            return
        trainer.add_event_handler(Events.STARTED, self.start)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self.check)

    def start(self, trainer: Engine | None = None) -> None:
        """Start the budget's clock.

        Args:
            trainer: the ignite trainer (not read; ignite passes it).
        """
        self.started = self.last_epoch_end = self.clock()
        self.longest_epoch = 0.0

    def check(self, trainer: Engine) -> bool:
        """Terminate ``trainer`` when another epoch as long as the longest so far would end past the budget.

        Args:
            trainer: the ignite trainer.

        Returns:
            Whether the trainer was told to stop.
        """
        now = self.clock()
        self.longest_epoch = max(self.longest_epoch, now - self.last_epoch_end)
        self.last_epoch_end = now
        spent = now - self.started
        stop = spent + self.longest_epoch > 60.0 * self.minutes  # attached only with a budget
        if idist.get_world_size() > 1:  # every rank stops at the same epoch, or the others wait forever
            stop = bool(idist.all_reduce(torch.tensor(float(stop)), op="MAX").item())
        if stop:
            logger.info(
                "time budget: stopping after epoch %d (%.1f of %g minutes spent, the longest epoch took %.1f s); "
                "run the same command again to resume",
                trainer.state.epoch,
                spent / 60.0,
                self.minutes,
                self.longest_epoch,
            )
            trainer.terminate()
        return stop
