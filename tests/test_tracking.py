"""The MLflow tracker of training runs, on a real sqlite store: a resumed training whose run cannot be reopened."""

import logging

import mlflow
import pytest
from ignite.engine import Engine

from medcf.runtime.tracking import RESUMED_FROM_TAG, MLflowTracker, use_experiment

GONE = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("where", ["another store", "another experiment"])
def test_a_resumed_training_whose_run_is_not_here_starts_a_new_run_tagged_with_it(tmp_path, monkeypatch, caplog, where):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)  # the runs' artifacts
    previous = GONE
    if where == "another experiment":
        use_experiment("medcf-other")
        with mlflow.start_run() as run:
            previous = run.info.run_id
    settings = {"params": {"lr": 0.1}, "log_every": 1, "output_transform": float}
    tracker = MLflowTracker("medcf-test", resume_run_id=previous, **settings)
    engine = Engine(lambda engine, batch: 0.5)
    tracker.attach(engine)
    with caplog.at_level(logging.WARNING, logger="medcf.runtime.tracking"):
        engine.run([0, 0], max_epochs=1)
    assert f"MLflow run {previous} is not in experiment 'medcf-test'" in caplog.text
    client = mlflow.MlflowClient()
    (run,) = client.search_runs([mlflow.get_experiment_by_name("medcf-test").experiment_id])
    assert run.info.run_id != previous and run.info.status == "FINISHED"
    assert run.data.tags[RESUMED_FROM_TAG] == previous and run.data.params == {"lr": "0.1"}
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
