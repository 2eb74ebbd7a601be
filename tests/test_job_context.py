"""The one shell of the bundle jobs: the folder's lock, the MLflow run with the job's tags, and the clock."""

import mlflow
import pytest
import torch

from medcf.jobs.context import JobContext
from medcf.outputs.lock import OutputFolderInUse
from medcf.runtime.distributed import Shard
from medcf.runtime.tracking import RUN_MARKER


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_a_single_process_is_rank_0_of_one_and_holds_the_folder_alone(tmp_path):
    job = JobContext("evaluate", tmp_path / "OUT", "medcf-test")
    assert job.main and job.shard.world == 1 and job.output_dir == tmp_path / "OUT"
    with job.folder() as folder:
        assert folder == tmp_path / "OUT" and folder.is_dir()
        with pytest.raises(OutputFolderInUse, match="another medcf job is writing"):
            with JobContext("audit", tmp_path / "OUT", "medcf-test").folder():
                pass
    with JobContext("audit", tmp_path / "OUT", "medcf-test").folder():  # released when the job left it
        pass


def test_the_job_tags_name_the_job_device_processes_lineage_and_more(tmp_path):
    job = JobContext("evaluate", tmp_path, "medcf-test", shard=Shard(rank=0, world=2, local_rank=0))
    tags = job.tags("cpu", {"medcf.model_sha256": "abc"}, ground_truth="phantom")
    assert tags == {
        "medcf.job": "evaluate",
        "medcf.device": "cpu",
        "medcf.processes": "2",
        "medcf.model_sha256": "abc",
        "medcf.ground_truth": "phantom",
    }


def test_rank_0_opens_one_tagged_run_and_the_other_ranks_none(tmp_path, tracking):
    main = JobContext("inference", tmp_path / "OUT", "medcf-test")
    with main.folder(), main.tracked("counterfactuals", "cpu", {"medcf.model_sha256": "abc"}):
        run = mlflow.active_run()
        assert (tmp_path / "OUT" / RUN_MARKER).is_file()
    assert not (tmp_path / "OUT" / RUN_MARKER).exists()
    finished = mlflow.get_run(run.info.run_id)
    assert finished.info.status == "FINISHED" and finished.info.run_name == "counterfactuals"
    assert finished.data.tags["medcf.job"] == "inference" and finished.data.tags["medcf.model_sha256"] == "abc"

    other = JobContext("inference", tmp_path / "OUT", "medcf-test", shard=Shard(rank=1, world=2, local_rank=1))
    with other.folder(), other.tracked("counterfactuals", "cpu"):
        assert mlflow.active_run() is None


def test_a_failing_job_ends_its_run_failed(tmp_path, tracking):
    job = JobContext("audit", tmp_path / "OUT", "medcf-test")
    with pytest.raises(RuntimeError, match="boom"), job.folder(), job.tracked("audit", "cpu"):
        run_id = mlflow.active_run().info.run_id
        raise RuntimeError("boom")
    assert mlflow.get_run(run_id).info.status == "FAILED"


def test_a_job_without_an_experiment_cannot_open_a_run(tmp_path):
    job = JobContext("prepare", tmp_path / "OUT")
    with pytest.raises(ValueError, match="prepare: a tracked job needs an MLflow experiment"):
        with job.tracked("prepare", "cpu"):
            pass


def test_the_clock_runs_from_the_jobs_start(tmp_path):
    job = JobContext("calibrate", tmp_path, "medcf-test", started=0.0)
    assert job.seconds > 0 and JobContext("calibrate", tmp_path).seconds < job.seconds


def test_rank_0_says_once_that_bf16_would_run_faster_where_the_cpu_has_its_instructions(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("medcf.runtime.devices.cpu_bf16_instructions", lambda cpuinfo: ("avx512_bf16",))
    cpu = torch.device("cpu")
    JobContext("evaluate", tmp_path).note_precision(cpu, ["fp32", "bf16", "fp32"], "--precision bf16")
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("this CPU has bfloat16 instructions (avx512_bf16): --precision bf16")
    JobContext("evaluate", tmp_path).note_precision(cpu, ["bf16"], "--precision bf16")
    JobContext("evaluate", tmp_path, shard=Shard(rank=1, world=2, local_rank=1)).note_precision(
        cpu, ["fp32"], "--precision bf16"
    )
    assert capsys.readouterr().out == ""
