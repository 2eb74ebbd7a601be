"""The training's wall-clock budget: it stops at the end of the last epoch that fits (fake clock), lets a run
without a budget go to max_epochs and refuses a bad setting. The bundles' trainings stopped by it:
tests/training/test_train_bundles.py (resumed, and under torchrun)."""

import pytest
from ignite.engine import Engine, Events

from medcf.training.time_budget import TimeBudget


class FakeClock:
    """Seconds that advance only when an iteration does (``per_iteration`` each)."""

    def __init__(self, per_iteration: float) -> None:
        self.now, self.per_iteration = 100.0, per_iteration

    def __call__(self) -> float:
        return self.now

    def tick(self, engine: Engine) -> None:
        self.now += self.per_iteration


def trained_epochs(minutes: float | None, per_iteration: float, max_epochs: int = 10, slow_epoch: int = 0) -> int:
    clock = FakeClock(per_iteration)
    engine = Engine(lambda engine, batch: None)
    engine.add_event_handler(Events.ITERATION_COMPLETED, clock.tick)
    if slow_epoch:  # one epoch (e.g. with validation) takes 60 s more
        engine.add_event_handler(
            Events.EPOCH_COMPLETED(once=slow_epoch), lambda _: setattr(clock, "now", clock.now + 60)
        )
    TimeBudget(minutes, clock=clock).attach(engine)
    engine.run(range(6), max_epochs=max_epochs)  # 6 iterations per epoch
    return engine.state.epoch


def test_stops_at_the_last_epoch_that_fits():
    # 6 x 5 s = 30 s per epoch and 2 minutes: after epoch 3 (90 s) a fourth would end at 120 s, within the budget;
    # after epoch 4 (120 s) a fifth would end past it
    assert trained_epochs(2.0, 5.0) == 4
    assert trained_epochs(2.0, 4.0) == 5  # 24 s per epoch: 5 x 24 = 120 s, a sixth would reach 144 s
    assert trained_epochs(0.25, 5.0) == 1, "an epoch longer than the budget still ends, then the run stops"


def test_the_longest_epoch_decides():
    # epoch 2 took 90 s (60 s of validation): from then on the next epoch is expected to take 90 s as well
    assert trained_epochs(3.9, 5.0) == 7  # 30 s epochs: after epoch 7 (210 s) an eighth would end past 234 s
    assert trained_epochs(3.9, 5.0, slow_epoch=2) == 3  # after epoch 3: 150 s + 90 s > 234 s
    assert trained_epochs(4.0, 5.0, slow_epoch=2) == 4  # 150 s + 90 s = 240 s fits; after epoch 4, 270 s would not


def test_no_budget_runs_to_max_epochs_and_bad_settings_are_refused():
    assert trained_epochs(None, 1000.0, max_epochs=7) == 7
    for bad in (0, -1, float("inf"), float("nan"), "5", True):
        with pytest.raises(ValueError, match="max_minutes: .* must be a number > 0, or null"):
            TimeBudget(bad)
