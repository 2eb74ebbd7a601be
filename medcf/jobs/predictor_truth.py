"""Do the attribute predictors size a counterfactual as the phantom truth does?

The calibrate job chooses each weight by the predictors' reading, never the truth (:mod:`medcf.jobs.calibrator`),
so its plan is only as right as that reading. On a held-out phantom set, for the calibrate job's own images and
moves, three shift ratios against the same expected shift (1: the right size):

- ``exact``: the exact counterfactuals (the phantom's truth) read against their factual renders, against the real
  images' adjusted difference: is the expected shift the truth's?
- ``round_trip``: the exact counterfactuals after the product's abduction and ``do()``, read against the sources'
  ``do()`` outputs, against the calibrator's target (expected shift x rendering slope): is a counterfactual of
  the truth's size matched at ratio 1?
- ``model``: the model's counterfactuals under the bundle's plan, read as the calibrate job reads them, beside
  their exact ``target_ratio`` (change projected on the true change, :func:`exact_target_ratio`).

Where ``exact`` and ``round_trip`` are near 1 the statistic is sound on the truth, and a ``model`` shift ratio far
from the ``target_ratio`` says the predictors read the generator's change as another size than it has: it draws a
cue of the attribute, not the attribute's whole effect, and no weight chosen by reading can right-size it.

    python -m medcf.jobs.predictor_truth --bundle cxr_counterfactual [--images 48] [--steps 25]
        [--attributes sex race] [--heldout_subjects 200] [--heldout_seed 2000] [--work DIR] [--out TABLE.csv]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from monai.bundle import ConfigParser

from medcf.core.attributes import AttributeSchema, AttributeValue
from medcf.core.engine import CounterfactualEngine
from medcf.core.guidance_plan import CalibratedPlan
from medcf.core.interventions import Intervention
from medcf.jobs.bundles import bundle_root
from medcf.jobs.calibrator import Calibrator, Move
from medcf.measure.evaluation_set import TrueChanges
from medcf.measure.ground_truth import changed_images, exact_target_ratio
from medcf.measure.matching import raw_readings, reading, shift_ratio
from medcf.measure.phantom_truth import PhantomTruth
from medcf.runtime.files import file_sha256

COLUMNS = ["attribute", "moves", "exact", "round_trip", "model", "target_ratio"]


def predictor_truth(
    calibrator: Calibrator, truth: TrueChanges, plan: CalibratedPlan, names: Sequence[str]
) -> pd.DataFrame:
    """The three shift ratios and the model's exact target ratio per attribute (see the module docstring).

    Args:
        calibrator: a calibrator built on the held-out pool and the chosen images (its abduction and ``do()``
            outputs are the controls).
        truth: the exact changes of the chosen images.
        plan: the guidance plan the model's counterfactuals are decoded with.
        names: the attributes to check.

    Returns:
        One row per attribute: ``attribute, moves, exact, round_trip, model, target_ratio``.
    """
    factual_readings = raw_readings(calibrator.predictor, truth.factual)  # the truth's factual renders, read once
    null = calibrator.engine({}, {})
    model = calibrator.engine(plan.weights(), plan.intervals())
    rows = [_attribute_row(calibrator, truth, factual_readings, null, model, name) for name in names]
    return pd.DataFrame(rows, columns=COLUMNS)


@dataclass
class _Shifts:
    """Measured and expected shifts of one kind of counterfactual, move by move."""

    measured: list[float] = field(default_factory=list)
    expected: list[float] = field(default_factory=list)

    def add(
        self,
        schema: AttributeSchema,
        name: str,
        before: torch.Tensor,
        after: torch.Tensor,
        pair: tuple[AttributeValue, AttributeValue],
        expected: float,
    ) -> None:
        """Record one move: the reading's change from ``before`` to ``after`` and the shift it is judged against.

        Args:
            schema: the attributes.
            name: the attribute moved.
            before: its raw reading of the image the change starts from (1, ...).
            after: its raw reading of the changed image (1, ...).
            pair: the (source, target) values of the move.
            expected: the shift the move should show.
        """
        source, target = pair
        change = reading(schema, name, after, source, target) - reading(schema, name, before, source, target)
        self.measured.append(float(change))
        self.expected.append(expected)


def _attribute_row(
    calibrator: Calibrator,
    truth: TrueChanges,
    factual_readings: dict[str, torch.Tensor],
    null: CounterfactualEngine,
    model: CounterfactualEngine,
    name: str,
) -> dict[str, Any]:
    """One attribute's row of :func:`predictor_truth` (``factual_readings``: the predictors' raw readings of the
    truth's factual renders; ``null`` decodes without guidance, ``model`` with the plan)."""
    schema, chosen, predictor = calibrator.schema, calibrator.chosen, calibrator.predictor
    effect, before = calibrator.expected(name), calibrator.reference_readings[name]
    shifts = {kind: _Shifts() for kind in ("exact", "round_trip", "model")}
    model_changes, true_changes = [], []
    for move in calibrator.moves(name):
        true = truth.of_intervention(move.intervention, move.positions)
        moved = changed_images(true).tolist()
        positions = [p for p, m in zip(move.positions, moved, strict=True) if m]
        if not positions:
            continue
        exact = (truth.factual[positions] + true[moved]).clamp(-1, 1)
        labels = [_labels(calibrator, truth, move.intervention, p) for p in positions]
        round_trip = null.predict(null.abduct(exact, labels), labels, Intervention(())).images.cpu()
        factual_read = factual_readings[name][positions]
        exact_read = raw_readings(predictor, exact)[name]
        round_trip_read = raw_readings(predictor, round_trip)[name]
        for j, position in enumerate(positions):
            pair = (chosen.factual[position][name], labels[j][name])
            expected = effect.of(*pair)
            one = slice(j, j + 1)
            shifts["exact"].add(schema, name, factual_read[one], exact_read[one], pair, expected)
            target = expected * calibrator.slope(name, *pair)
            shifts["round_trip"].add(schema, name, before[position : position + 1], round_trip_read[one], pair, target)
        read = calibrator.read_move(model, name, Move(move.intervention, positions))
        if read is None:
            continue
        shifts["model"].measured += read.measured
        shifts["model"].expected += read.expected
        model_changes.append(read.images - calibrator.reference[read.positions])
        index = {p: k for k, p in enumerate(move.positions)}
        true_changes.append(true[[index[p] for p in read.positions]])
    size = exact_target_ratio(torch.cat(model_changes), torch.cat(true_changes)) if model_changes else math.nan
    return {
        "attribute": name,
        "moves": len(shifts["exact"].measured),
        **{kind: round(shift_ratio(s.measured, s.expected), 3) for kind, s in shifts.items()},
        "target_ratio": round(size, 3),
    }


def _labels(calibrator: Calibrator, truth: TrueChanges, intervention: Intervention, position: int) -> dict[str, Any]:
    """The model's labels of the exact counterfactual of the image at ``position``: its truth's attributes (the
    descendants as the phantom's mechanisms set them), validated by the model's schema."""
    subject = truth.counterfactual_subject(intervention, position)
    return calibrator.schema.validate({n: subject.attributes[n] for n in calibrator.schema.names})


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    """Command line: the check for a bundle's calibrate settings, model, predictors and plan (module docstring).

    Args:
        argv: the arguments (None: ``sys.argv``).

    Returns:
        The table, also printed and written to ``--out`` when given.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bundle", default="cxr_counterfactual", choices=["cxr_counterfactual", "mammo_counterfactual"]
    )
    parser.add_argument("--images", type=int, default=48, help="held-out images moved (the calibrate job: 16-24)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the plan's)")
    parser.add_argument("--attributes", nargs="+", default=None, help="default: every attribute the plan guides")
    parser.add_argument("--heldout_subjects", type=int, default=None, help="default: calibrate.yaml's")
    parser.add_argument("--heldout_seed", type=int, default=None, help="default: calibrate.yaml's")
    parser.add_argument("--plan", type=Path, default=None, help="default: the bundle's models/guidance_plan.json")
    parser.add_argument("--work", type=Path, default=None, help="where the held-out set is made (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=None, help="CSV of the table")
    args = parser.parse_args(argv)
    config = ConfigParser()
    root = Path(bundle_root(args.bundle))
    config.read_config(str(root / "configs" / "calibrate.yaml"))
    model_sha256 = file_sha256(config.get_parsed_content("model_path"))
    plan_path = args.plan or root / "models" / "guidance_plan.json"
    plan = CalibratedPlan.load(plan_path, config.get_parsed_content("schema"), model_sha256=model_sha256)
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        config["output_dir"] = str(work)
        config["images"] = args.images
        config["steps"] = args.steps or plan.steps
        # the model's counterfactuals are decoded as the plan was calibrated (its w_inv, rule and descendants)
        config["w_inv"], config["rule"] = plan.w_inv, plan.rule
        config["affected_descendants"] = plan.affected_descendants
        for key in ("heldout_subjects", "heldout_seed"):
            if getattr(args, key) is not None:
                config[key] = getattr(args, key)
        run = config.get_parsed_content("calibration")
        loaded, predictor = run.load(torch.device("cpu"))
        data, pool, chosen, patients = run.held_out(loaded.model.schema, work / "calibration_data")
        truth = PhantomTruth.find(data.dataset_dir, loaded.model.schema, run.phantom_kind)
        if truth is None:
            raise SystemExit(f"medcf: {data.dataset_dir} has no phantom truth (phantom_truth.csv)")
        calibrator = Calibrator(run, loaded, predictor, pool, chosen, patients)
        names = args.attributes or [n for n, g in plan.attributes.items() if g.status != "no_effect"]
        table = predictor_truth(calibrator, TrueChanges(truth, chosen, run.preparer), plan, names)
    print(table.to_string(index=False))
    if args.out is not None:
        table.to_csv(args.out, index=False)
    return table


if __name__ == "__main__":
    main()
