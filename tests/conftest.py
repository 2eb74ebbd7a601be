"""Test settings shared by the whole suite."""

from hypothesis import settings

# CI machines are small and shared: no per-example deadline, and the same examples on every run.
settings.register_profile("medcf", deadline=None, derandomize=True, max_examples=100)
settings.load_profile("medcf")

import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from medcf.core.attributes import AttributeSchema  # noqa: E402
from medcf.core.causal import CausalGraph  # noqa: E402
from medcf.core.diffusion import DiffusionConfig  # noqa: E402
from medcf.core.network import CounterfactualUNet, ModelConfig, save_checkpoint  # noqa: E402
from medcf.measure.predictors import AttributePredictor, save_predictors  # noqa: E402
from medcf.phantoms import write_phantom_dataset  # noqa: E402
from medcf.phantoms.cxr import CXR_SCHEMA, ChestXRayPhantom  # noqa: E402
from medcf.phantoms.mammo import MAMMO_SCHEMA  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def one_torch_thread():
    """Run a test on one torch thread (tiny models: less overhead, and fair to a parallel job on 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _RunsCommand:
    """Unpickling this runs a shell command: the payload a malicious model file would carry."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


@pytest.fixture
def pickle_payload_file(tmp_path):
    """``make(path, **entries)``: a torch file that looks like a medcf file (the given entries) but also holds
    a pickle payload that creates ``tmp_path / "payload-ran"`` when unpickled; returns that marker path."""
    marker = tmp_path / "payload-ran"

    def make(path, **entries):
        torch.save({**entries, "extra": _RunsCommand(f"touch '{marker}'")}, path)
        return marker

    return make


def _dciodvfy_errors(path) -> list[str]:
    import shutil
    import subprocess

    assert shutil.which("dciodvfy"), "dciodvfy is missing: apt-get install -y dicom3tools (.ci/run installs it)"
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture
def dciodvfy_errors():
    """``errors(path)``: the Error lines dicom3tools' dciodvfy reports for a DICOM file (warnings allowed).
    Fails, never skips, where dciodvfy is missing: CI installs it, so must a developer."""
    return _dciodvfy_errors


def _chest_wall_right(display) -> bool:
    from medcf.prepare.base import resize_area
    from medcf.prepare.breast import breast_mask, chest_wall_on_right

    scale = min(1.0, 512 / max(display.shape))
    small = resize_area(display, (max(1, round(display.shape[0] * scale)), max(1, round(display.shape[1] * scale))))
    return chest_wall_on_right(breast_mask(small))


@pytest.fixture
def chest_wall_right():
    """``right(display)``: whether the breast in a display image has its chest wall on the image's right, as a
    reader sees it (tissue mass in the right half)."""
    return _chest_wall_right


SMALL_UNET = ModelConfig(
    channels=(8, 16), attention_levels=(False, False), num_head_channels=8, block_dim=8, hidden_dim=16
)


def conditioned_tiny(schema: AttributeSchema) -> CounterfactualUNet:
    """A tiny model whose output depends on its condition: MONAI zero-initialises the output layers, so
    those get small random weights (seeded)."""
    torch.manual_seed(0)
    model = CounterfactualUNet(schema, SMALL_UNET)
    for parameter in model.parameters():
        if not parameter.detach().any():
            parameter.data.normal_(0, 0.05)
    return model.eval()


@pytest.fixture
def conditioned_tiny_model() -> CounterfactualUNet:
    """A tiny chest model whose output depends on its condition."""
    return conditioned_tiny(CXR_SCHEMA)


@pytest.fixture
def conditioned_tiny_mammo_model() -> CounterfactualUNet:
    """A tiny mammogram model whose output depends on its condition."""
    return conditioned_tiny(MAMMO_SCHEMA)


INFERENCE_UNET = ModelConfig(
    channels=(32, 64), attention_levels=(False, False), num_head_channels=8, block_dim=8, hidden_dim=16
)


def save_tiny_chest_model(root) -> None:
    """``root/model.pt`` (an untrained chest model trained "at" 32 x 32, seeded) and ``root/graph.json`` (fitted on
    1,000 phantom subjects): what the inference job and bundle need besides images."""
    torch.manual_seed(0)
    model = CounterfactualUNet(CXR_SCHEMA, INFERENCE_UNET)
    save_checkpoint(root / "model.pt", model, DiffusionConfig().to_dict(), image_size=[32, 32])
    table = pd.DataFrame([s.attributes for s in ChestXRayPhantom().sample(1000, np.random.default_rng(0))])
    CausalGraph.fit(CXR_SCHEMA, table).save(root / "graph.json")


def chest_export_with_cohort(root, subjects: int, seed: int):
    """A phantom chest export of ``subjects`` subjects in ``root/data`` and its cohort table, built by the
    data_prep command a user runs: (export folder, cohort path)."""
    data = write_phantom_dataset("cxr", root / "data", subjects, 64, seed=seed, workers=1, progress=False)
    cohort = root / "cohort.csv"
    subprocess.run(
        [sys.executable, "-m", "data_prep.mimic_cxr", "--root", str(data), "--out", str(cohort)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return data, cohort


class BrightnessLogit(torch.nn.Module):
    """A classifier that reads brightness: logit = 3 x the image's mean."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3.0 * x.mean(dim=(1, 2, 3))[:, None]


def save_tiny_evaluation_files(root) -> None:
    """What the evaluate and audit jobs need besides images and the bundle's graph, tiny and seeded:
    ``root/model.pt`` (a conditioned chest model trained "at" 32 x 32), ``root/predictors.pt`` (untrained attribute
    predictors) and ``root/classifier.ts`` (TorchScript :class:`BrightnessLogit`)."""
    save_checkpoint(root / "model.pt", conditioned_tiny(CXR_SCHEMA), DiffusionConfig().to_dict(), image_size=[32, 32])
    torch.manual_seed(0)
    save_predictors(AttributePredictor(CXR_SCHEMA), root / "predictors.pt")
    torch.jit.script(BrightnessLogit()).save(str(root / "classifier.ts"))


def bundle_command(
    configs: str | Path | Sequence[str | Path], *overrides: str, processes: int = 1, **settings: object
) -> list[str]:
    """The command line of ``python -m monai.bundle run`` as a user types it: ``configs`` (one file, or several
    layered in order), then ``overrides`` (``"--name", "value"`` as typed) and ``--name str(value)`` per setting (a
    name such as ``guidance#mode`` is passed as ``**{"guidance#mode": ...}``). With ``processes`` > 1 under
    ``torchrun --standalone --nproc_per_node`` (it picks a free port; gloo on the CPU)."""
    files = [str(configs)] if isinstance(configs, str | Path) else [str(c) for c in configs]
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    named = [part for name, value in settings.items() for part in (f"--{name}", str(value))]
    config = str(files) if len(files) > 1 else files[0]
    return [*launcher, "-m", "monai.bundle", "run", "--config_file", config, *map(str, overrides), *named]


def run_bundle(
    configs: str | Path | Sequence[str | Path],
    cwd: Path,
    *overrides: str,
    processes: int = 1,
    timeout: float = 600,
    tracking: bool = True,
    environment: dict[str, str] | None = None,
    **settings: object,
) -> subprocess.CompletedProcess:
    """Run :func:`bundle_command` in ``cwd`` with one torch thread per process: the one way the tests run a bundle.

    ``tracking``: MLflow in ``cwd/mlflow.db`` (False: ``MLFLOW_TRACKING_URI`` unset, the job's own default);
    ``environment``: more variables. A run past ``timeout`` seconds (a rank stuck waiting for another) is killed
    with its workers and fails the test."""
    command = bundle_command(configs, *overrides, processes=processes, **settings)
    variables = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    variables["OMP_NUM_THREADS"] = "1"
    if tracking:
        variables["MLFLOW_TRACKING_URI"] = f"sqlite:///{cwd / 'mlflow.db'}"
    variables.update(environment or {})
    with subprocess.Popen(
        command, cwd=cwd, env=variables, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    ) as process:  # fmt: skip
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the launcher's session: torchrun and its workers
            stdout, stderr = process.communicate()
            pytest.fail(f"{' '.join(command[:8])} ... did not end in {timeout:g} s:\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def bundle_refusal(configs: str | Path | Sequence[str | Path], cwd: Path, monkeypatch, **settings: object) -> str:
    """Run a bundle in this process, as :func:`run_bundle` does in a fresh one, and return the line its refusal ends
    with (:func:`medcf.jobs.bundles.one_line`: what the user's terminal shows). For the checks of bad settings: a
    fresh interpreter spends most of such a run importing MONAI. That a real run prints this line and nothing
    more is checked once, in a subprocess (tests/bundles/test_bundle_errors.py).

    ``settings``: values as the command line's parser gives them (``w_aff=-1``; ``**{"guidance#mode": ...}``).
    Fails the test when the run does not fail, or fails with an error that is not a refusal for the user."""
    from monai.bundle import run

    from medcf.jobs.bundles import one_line

    files = [str(configs)] if isinstance(configs, str | Path) else [str(c) for c in configs]
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{cwd / 'mlflow.db'}")
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # the bundle installs its one-line hook: put it back
    monkeypatch.setattr(sys, "path", list(sys.path))  # monai.bundle.run puts the bundle folder on it
    random_state = torch.get_rng_state()  # a model built before the refusal draws from torch's generator
    try:  # logging_file=False: the bundle's logging.conf would replace pytest's log handlers for the whole worker
        run(config_file=files if len(files) > 1 else files[0], logging_file=False, **settings)
    except Exception as error:  # any failure: the refusal's line, or the test fails below
        line = one_line(error)
        assert line is not None, f"not a refusal for the user: {error!r}"
        return line
    finally:
        torch.set_rng_state(random_state)
        if mlflow.active_run() is not None:
            mlflow.end_run("FAILED")
    pytest.fail(f"{files[-1]} with {settings} ran instead of refusing")


def mlflow_runs(folder: Path, experiment: str) -> list:
    """The runs of ``experiment`` in ``folder/mlflow.db``, oldest first (none when it has no such experiment)."""
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id], order_by=["attributes.start_time"])
