"""A failing bundle run ends with one line naming the setting and the problem, as a user sees it on the
terminal; one intervention may be given as a plain string."""

import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from medcf.core.network import ModelConfig
from tests.conftest import run_bundle, save_tiny_chest_model

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles" / "cxr_counterfactual" / "configs"
TINY = ModelConfig(channels=(32, 64), attention_levels=(False, False), num_head_channels=8, block_dim=8, hidden_dim=16)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    save_tiny_chest_model(root)
    return root


def bundle(config: str, cwd: Path, *overrides: str, **environment: str) -> subprocess.CompletedProcess:
    return run_bundle(CONFIGS / config, cwd, *overrides, environment=environment)


def last_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()][-3:]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--guidance", "sideways"], r"medcf: guidance: 'sideways' is not allowed: must be one of none, cfg, dcfg"),
        (["--w_aff", "-1"], r"medcf: w_aff: -1.* a finite number >= 0"),
        (["--model_path", "missing.pt"], r"medcf: model_path: missing.pt does not exist"),
        (["--interventions", "do(sex=X)"], r"medcf: .*sex.*X"),
    ],
)
def test_a_bad_setting_ends_the_run_with_one_line(tmp_path, overrides, message):
    result = bundle("inference.yaml", tmp_path, "--output_dir", "out", *overrides)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "ConfigExpression" not in result.stderr, result.stderr[-2000:]
    *_, last = last_lines(result)
    assert re.search(message, last), last


def test_the_full_traceback_is_one_setting_away(tmp_path):
    result = bundle("inference.yaml", tmp_path, "--guidance", "sideways", MEDCF_TRACEBACK="1")
    assert result.returncode != 0 and "Traceback" in result.stderr and "medcf: " not in result.stderr


def test_one_intervention_as_a_plain_string_and_the_image_size_from_the_model_file(tmp_path, tiny):
    """The tiny model was trained at 32 x 32: no --image_size is needed (the bundle's default reads it)."""
    result = bundle(
        "inference.yaml", tmp_path, "--output_dir", "out", "--interventions", "do(sex=F)",
        "--model_path", str(tiny / "model.pt"), "--graph_path", str(tiny / "graph.json"), "--steps", "2",
        "--guidance", "dcfg",  # the bundle's plan is calibrated for its own model, not this one
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv", keep_default_na=False)
    assert set(manifest["intervention"]) == {"do(sex=F)"} and (manifest["status"] == "ok").any()


def test_the_one_line_is_the_refusal_not_what_it_replaced():
    """``raise ValueError(...) from None`` replaces the error it was raised in: the one line shows the new message
    (as Python's own traceback would), not the hidden one, even through MONAI's wrapping RuntimeError."""
    from medcf.jobs.bundles import _user_error

    try:
        try:
            try:
                raise ValueError("age 80 +70 = 150 is outside [18, 95]")
            except ValueError:
                raise ValueError("interventions: do(age=+70) takes age outside [18, 95] for every image") from None
        except ValueError as refusal:
            raise RuntimeError("Failed to evaluate ConfigExpression") from refusal
    except RuntimeError as wrapped:
        assert str(_user_error(wrapped)).startswith("interventions: do(age=+70)")
