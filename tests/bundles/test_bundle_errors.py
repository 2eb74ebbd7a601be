"""A failing bundle run ends with one line naming the setting and the problem, as a user sees it on the
terminal; one intervention may be given as a plain string."""

import subprocess
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import bundle_refusal, run_bundle, save_tiny_chest_model

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles" / "cxr_counterfactual" / "configs"
TRACEBACK_HINT = "(full traceback: MEDCF_TRACEBACK=1)"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    save_tiny_chest_model(root)
    return root


def bundle(config: str, cwd: Path, *overrides: str, **environment: str) -> subprocess.CompletedProcess:
    return run_bundle(CONFIGS / config, cwd, *overrides, environment=environment)


def last_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()][-3:]


def test_a_bad_setting_ends_the_run_with_one_line_and_nothing_else(tmp_path):
    """As the user's terminal shows it: a fresh interpreter, the command as typed."""
    result = bundle("inference.yaml", tmp_path, "--output_dir", "out", "--guidance", "sideways")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "ConfigExpression" not in result.stderr, result.stderr[-2000:]
    *_, last = last_lines(result)
    allowed = "none, cfg, dcfg, dcfg_per_attribute, calibrated"
    assert last == f"medcf: guidance: 'sideways' is not allowed: must be one of {allowed}  {TRACEBACK_HINT}"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"w_aff": -1}, "medcf: w_aff: -1 is not allowed: must be a finite number >= 0"),
        ({"model_path": "missing.pt"}, "medcf: model_path: missing.pt does not exist or is not a file"),
        ({"interventions": "do(sex=X)"}, "medcf: interventions: 'do(sex=X)': sex: unknown value 'X'; allowed: M, F"),
    ],
)
def test_each_bad_setting_names_itself_in_the_one_line(tmp_path, monkeypatch, settings, message):
    line = bundle_refusal(CONFIGS / "inference.yaml", tmp_path, monkeypatch, output_dir="out", **settings)
    assert line == f"{message}  {TRACEBACK_HINT}"
    assert not (tmp_path / "out").exists()


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
    from medcf.jobs.bundles import one_line

    try:
        try:
            try:
                raise ValueError("age 80 +70 = 150 is outside [18, 95]")
            except ValueError:
                raise ValueError("interventions: do(age=+70) takes age outside [18, 95] for every image") from None
        except ValueError as refusal:
            raise RuntimeError("Failed to evaluate ConfigExpression") from refusal
    except RuntimeError as wrapped:
        assert one_line(wrapped).startswith("medcf: interventions: do(age=+70)")
