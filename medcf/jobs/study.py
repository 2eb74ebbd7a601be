"""The guidance study: CFG against DCFG (and the variants beyond the paper) on a phantom's ground truth.

    python -m medcf.jobs.study --bundle cxr_counterfactual --output_dir study_cxr
        [--seeds 0 1 2] [--images_per_seed 8] [--steps 20] [--weights 1 1.5 2 3 5] [--heldout_subjects 48]
        [--device auto] [--model_path OTHER/model.pt]

Steps (each an evaluate run of :mod:`medcf.jobs.evaluate` on the bundle's shipped weights, predictors
and a held-out phantom set, written to its own sub-folder so that a stopped study keeps what it finished):

1. ``grid/seed_<s>``: on each seed, no guidance, CFG with w in ``weights``, DCFG with w_aff in ``weights``
   and w_inv = 1, at w_aff = 3 the variants factored CFG++ (weights 1), factored APG and the guidance
   interval sigma in (0.3, 5], and the bundle's calibrated guidance plan (``models/guidance_plan.json``, chosen
   without the truth by the calibrate job). The report puts the plan beside CFG and DCFG at the single weight
   closest to the right size on the truth (hindsight no user has).
2. ``selection``: a user without ground truth picks, per intervention, the DCFG weight on separate held-out
   images (seed ``selection_seed``) by the predictors alone: the smallest w_aff whose effectiveness is
   within 0.05 (accuracy) or 1 year (age MAE) of the best the grid reaches. Larger weights buy no
   measurable effectiveness, only risk of overshoot.
3. ``selected/seed_<s>``: DCFG with each intervention's selected weight, on the grid's seeds; where it lands
   on the ground truth is the test of the selection.

The report (``study.md``, ``study.csv``, ``matched.csv``, ``equal_weight.csv``, ``plots/``) gives, per
intervention, mean +- sd over seeds at matched effectiveness (for CFG and DCFG the smallest weight reaching the
level both families reach) and CFG against DCFG at equal weight.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from monai.bundle import ConfigParser

from medcf.jobs.bundles import bundle_root
from medcf.jobs.evaluation_plots import save_study_plots
from medcf.measure.study_tables import equal_weight_table, markdown_table, matched_table, select_weights
from medcf.runtime.files import write_csv_atomic, write_json_atomic, write_text_atomic

STUDY_INTERVENTIONS = {
    "cxr_counterfactual": ["do(sex=F)", "do(race=Black)", "do(age=+20)", "do(disease=Pleural Effusion)"],
    "mammo_counterfactual": ["do(density=D)", "do(density=A)", "do(age=+15)"],
}
VARIANTS = [
    {"mode": "dcfg", "w_aff": 1.0, "w_inv": 1.0, "rule": "cfg++"},
    {"mode": "dcfg", "w_aff": 3.0, "w_inv": 1.0, "rule": "apg"},
    {"mode": "dcfg", "w_aff": 3.0, "w_inv": 1.0, "interval": [0.3, 5.0]},
]


def grid_settings(weights: Sequence[float]) -> list[dict[str, Any]]:
    """No guidance, CFG and DCFG over ``weights``, the variants and the bundle's calibrated plan.

    Args:
        weights: the guidance weights: CFG's w and DCFG's w_aff (with w_inv = 1).

    Returns:
        The evaluate job's ``guidance_settings`` entries, in that order.
    """
    return [
        {"mode": "none"},
        *({"mode": "cfg", "weight": float(w)} for w in weights),
        *({"mode": "dcfg", "w_aff": float(w), "w_inv": 1.0} for w in weights),
        *VARIANTS,
        {"mode": "calibrated"},
    ]


def _evaluation(bundle: str, output_dir: Path, heldout: Path | None, **settings: Any) -> Any:
    """The bundle's evaluate job (its evaluate.yaml's ``evaluation``) with ``settings`` overriding the config: the
    study runs the job as the bundle command would, without importing it."""
    root = Path(bundle_root(bundle))
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "evaluate.yaml"))
    parser["output_dir"] = str(output_dir)
    if heldout is not None:
        parser["dataset_dir"], parser["labels"] = str(heldout / "export"), str(heldout / "cohort.csv")
    for key, value in settings.items():
        parser[key] = value
    return parser.get_parsed_content("evaluation")


def run_study(
    bundle: str,
    output_dir: str | Path,
    seeds: Sequence[int] = (0, 1, 2),
    images_per_seed: int = 8,
    steps: int = 20,
    weights: Sequence[float] = (1.0, 1.5, 2.0, 3.0, 5.0),
    heldout_subjects: int = 48,
    selection_seed: int = 100,
    device: str = "auto",
    model_path: str | Path | None = None,
) -> pd.DataFrame:
    """Run (or resume) the study of one bundle (of ``model_path`` instead of the shipped weights when given);
    returns the combined metrics table.

    Args:
        bundle: a key of :data:`STUDY_INTERVENTIONS` (``cxr_counterfactual`` or ``mammo_counterfactual``).
        output_dir: where the stages' folders and the report go; a stage finished there earlier is kept.
        seeds: the seeds of the grid and the selected stage; each draws its own images.
        images_per_seed: held-out images each seed draws.
        steps: DDIM steps of every setting.
        weights: the guidance weights of the grid and of the selection (CFG's w, DCFG's w_aff).
        heldout_subjects: subjects of the held-out phantom set, made once in ``output_dir/heldout_data`` and used
            by every stage.
        selection_seed: the seed that draws the selection stage's images (default 100).
        device: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        model_path: another model file of the bundle's schema (default None: the shipped weights).

    Returns:
        Every grid and selected row (also written to ``study.csv``).

    Raises:
        KeyError: when ``bundle`` is not a key of :data:`STUDY_INTERVENTIONS`.
    """
    started = time.perf_counter()
    output_dir = Path(output_dir)
    interventions = STUDY_INTERVENTIONS[bundle]
    common = {
        "steps": steps,
        "images_per_seed": images_per_seed,
        "composition_images": 0,
        "reversibility": False,
        "interventions": interventions,
        "device": device,
        **({"model_path": str(model_path)} if model_path else {}),
    }
    heldout = output_dir / "heldout_data"
    _evaluation(bundle, output_dir, None, heldout_subjects=heldout_subjects).make_heldout_set(heldout)

    def stage(folder: Path, seed: int, settings: list[dict[str, Any]], **overrides: Any) -> pd.DataFrame:
        evaluation = _evaluation(
            bundle, folder, heldout, seeds=[seed], guidance_settings=settings, **{**common, **overrides}
        )
        if not evaluation.metrics_path.exists():  # finished stages are kept: a stopped study resumes
            evaluation.run()
        return pd.read_csv(evaluation.metrics_path)

    grid = pd.concat([stage(output_dir / "grid" / f"seed_{s}", s, grid_settings(weights)) for s in seeds])
    dcfg_grid = [{"mode": "dcfg", "w_aff": float(w), "w_inv": 1.0} for w in weights]
    selection = stage(output_dir / "selection", selection_seed, dcfg_grid)
    chosen = select_weights(selection)
    selected = []
    for intervention, weight in chosen.items():
        for seed in seeds:
            folder = output_dir / "selected" / f"{_slug(intervention)}_seed_{seed}"
            dcfg = [{"mode": "dcfg", "w_aff": weight, "w_inv": 1.0}]
            table = stage(folder, seed, dcfg, interventions=[intervention])
            table["guidance"] = f"dcfg selected w_aff={weight:g} w_inv=1"
            selected.append(table)
    combined = pd.concat([grid, *selected], ignore_index=True)
    write_csv_atomic(output_dir / "study.csv", combined)
    save_study_plots(combined, output_dir / "plots")
    matched = matched_table(combined)
    write_csv_atomic(output_dir / "matched.csv", matched)
    equal = equal_weight_table(combined)
    write_csv_atomic(output_dir / "equal_weight.csv", equal)
    minutes = (time.perf_counter() - started) / 60
    write_json_atomic(
        output_dir / "study.json",
        {"bundle": bundle, "model": str(model_path or "shipped"), "seeds": list(seeds),
         "images_per_seed": images_per_seed, "steps": steps, "weights": list(weights), "selected_w_aff": chosen,
         "device": device, "minutes_this_call": round(minutes, 1)},
    )  # fmt: skip
    write_text_atomic(output_dir / "study.md", _markdown(bundle, matched, equal, chosen, seeds, images_per_seed, steps))
    return combined


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")


def _markdown(
    bundle: str,
    matched: pd.DataFrame,
    equal: pd.DataFrame,
    chosen: dict[str, float],
    seeds: Sequence[int],
    images: int,
    steps: int,
) -> str:
    lines = [
        f"# Guidance study: {bundle}",
        "",
        f"Seeds {', '.join(map(str, seeds))} ({images} held-out phantom images each), {steps} DDIM steps. "
        "Mean ± sd over seeds. effectiveness: accuracy of the intervened attribute (age: MAE in years); "
        "off_target: mean |delta p| of the attributes nobody intervened on; truth_error: mean |change - true "
        "change| on [0, 1]; target_ratio: 1 = the right size, above 1 = overshoot; truth_off_target: movement "
        "along the true effects of untouched attributes that the truth lacks, of the intervention's change "
        "(against the null reconstruction under the same guidance); truth_off_target_source: the same of the "
        "whole change from the source image (decoding drift and amplification included); per image against the "
        "exact counterfactual: exact_target_ratio (1 = the right size), exact_off_target (movement along each "
        "image's own effects of the untouched attributes, relative to the true change's size) and texture_ratio "
        "(fine texture kept against the exact counterfactual, relative to decoding: well below 1 = washed out).",
        "",
        "## At matched effectiveness",
        "",
        "Selected DCFG weights (predictors only, seed held out from the table): "
        + ", ".join(f"{k}: w_aff={v:g}" for k, v in chosen.items()),
        "",
        markdown_table(matched),
        "",
        "## At equal weight: CFG w against DCFG w_aff = w, w_inv = 1",
        "",
        markdown_table(equal),
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study from the command line (see the module docstring) and print the report's path as JSON.

    Args:
        argv: the command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0, or 2 on a ValueError or OSError (one line on stderr).
    """
    parser = argparse.ArgumentParser(prog="python -m medcf.jobs.study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, choices=sorted(STUDY_INTERVENTIONS))
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--images_per_seed", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--weights", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0, 5.0])
    parser.add_argument("--heldout_subjects", type=int, default=48)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    parser.add_argument("--model_path", default=None, help="another model.pt of the bundle's schema (default: shipped)")
    args = parser.parse_args(argv)
    try:
        run_study(
            args.bundle, args.output_dir, args.seeds, args.images_per_seed, args.steps, args.weights,
            args.heldout_subjects, device=args.device, model_path=args.model_path,
        )  # fmt: skip
    except (ValueError, OSError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"report": str(Path(args.output_dir) / "study.md")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
