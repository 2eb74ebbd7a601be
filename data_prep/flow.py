"""What the cohort builders share: input tables, the flow table, joins, the patient-level split, output, CLI.

**Flow table.** Every filter a builder applies is one row, in order: ``rows_in``, ``rows_kept``,
``rows_dropped``, ``patients_kept`` and the ``reason`` a dropped row was dropped for. A filter's
``rows_in`` is the previous filter's ``rows_kept``; the drops plus the final count add up to the input rows.

**Split.** :func:`patient_split` assigns whole patients, never single images, to train / val / test. The
sorted unique patient ids (as text) are shuffled by ``numpy.random.default_rng(seed).permutation``; the
first ``round(f_train * P)`` patients of that order go to train, up to ``round((f_train + f_val) * P)`` to
val, the rest to test. The same ids, fractions and seed always give the same split, whatever the row order.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import numpy as np
import pandas as pd

from medcf.runtime.files import write_csv_atomic

SPLIT_NAMES = ("train", "val", "test")
DEFAULT_SPLIT = (0.6, 0.1, 0.3)
DEFAULT_SEED = 42

Column = str | tuple[str, ...]  # a required column, or alternative names of one (renamed to the first)
Builder = Callable[[Path, bool], tuple[pd.DataFrame, "Flow"]]


class CohortError(Exception):
    """A problem with the inputs or options, reported to the user as one line."""


# -- input tables -------------------------------------------------------------------------------------


def locate_tables(root: Path, names: Sequence[str]) -> dict[str, Path]:
    """The path of each named table in ``root`` (or its MIMIC-IV ``hosp/`` / ``core/`` subfolders), as
    ``name`` or ``name.gz``."""
    if not root.is_dir():
        raise CohortError(f"root folder {root} does not exist")
    found = {}
    for name in names:
        candidates = [folder / f"{name}{gz}" for folder in (root, root / "hosp", root / "core") for gz in ("", ".gz")]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise CohortError(
                f"missing input table {name} (or {name}.gz) in {root}; expected: {', '.join(names)}"
                " (each as .csv or .csv.gz)"
            )
        found[name] = path
    return found


def _alternatives(column: Column) -> tuple[str, ...]:
    return (column,) if isinstance(column, str) else column


def read_table(
    path: Path, columns: Sequence[Column], optional: Sequence[str] = (), ids: Sequence[str] = ()
) -> pd.DataFrame:
    """Read only the needed columns of a CSV (or .csv.gz); ``ids`` are read as stripped text.

    Raises:
        CohortError: the file cannot be parsed, or a required column is missing (naming table and column).
    """
    wanted = {name for column in columns for name in _alternatives(column)} | set(optional)
    try:
        header = pd.read_csv(path, nrows=0).columns
        text = {c: str for c in ids if c in header}
        table = pd.read_csv(path, usecols=lambda c: c in wanted, dtype=text, low_memory=False)
    except (OSError, ValueError) as error:
        raise CohortError(f"{path.name}: cannot read table ({error})") from None
    for column in columns:
        names = _alternatives(column)
        present = next((n for n in names if n in table.columns), None)
        if present is None:
            others = "".join(f" (or {n!r})" for n in names[1:])
            raise CohortError(f"{path.name}: missing column {names[0]!r}{others}")
        table = table.rename(columns={present: names[0]})
    for column in ids:
        if column in table.columns:
            table[column] = table[column].str.strip()
    return table


def clean_text(values: pd.Series) -> pd.Series:
    """Text values with surrounding blanks removed and inner runs of blanks collapsed (NaN stays NaN)."""
    return values.map(lambda value: " ".join(value.split()) if isinstance(value, str) else value)


# -- flow table ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlowStep:
    """One filter of the flow table."""

    reason: str
    rows_in: int
    rows_kept: int
    patients_kept: int


@dataclass
class Flow:
    """The filters applied to the image table, in order, with their row counts."""

    patient: str  # the column that identifies a patient
    steps: list[FlowStep] = field(default_factory=list)

    def keep(self, frame: pd.DataFrame, mask: pd.Series | np.ndarray, reason: str) -> pd.DataFrame:
        """Keep the rows where ``mask`` is true; record the others as dropped for ``reason``."""
        mask = np.asarray(mask, dtype=bool)
        kept = frame[mask]
        self.steps.append(FlowStep(reason, len(frame), len(kept), kept[self.patient].nunique()))
        return kept

    def table(self) -> pd.DataFrame:
        """One row per filter: step, reason, rows_in, rows_kept, rows_dropped, patients_kept."""
        rows = [
            {
                "step": k,
                "reason": s.reason,
                "rows_in": s.rows_in,
                "rows_kept": s.rows_kept,
                "rows_dropped": s.rows_in - s.rows_kept,
                "patients_kept": s.patients_kept,
            }
            for k, s in enumerate(self.steps, start=1)
        ]
        columns = ["step", "reason", "rows_in", "rows_kept", "rows_dropped", "patients_kept"]
        return pd.DataFrame(rows, columns=columns)


def attach_unique(
    frame: pd.DataFrame,
    table: pd.DataFrame,
    on: Sequence[str],
    flow: Flow,
    missing: str,
    conflict: str,
) -> pd.DataFrame:
    """Join ``table`` to ``frame`` on ``on``, keeping rows that find exactly one distinct row in ``table``.

    Rows with no match are dropped for ``missing``; rows whose key has several different rows in ``table``
    (after exact duplicates are merged) are dropped for ``conflict``.
    """
    on = list(on)
    distinct = table.drop_duplicates()
    counts = distinct.groupby(on).size().rename("_matches").reset_index()
    matches = frame[on].merge(counts, on=on, how="left")["_matches"].fillna(0).to_numpy()
    frame = flow.keep(frame, matches > 0, missing)
    frame = flow.keep(frame, matches[matches > 0] == 1, conflict)
    unique = distinct[~distinct.duplicated(on, keep=False)]
    return frame.merge(unique, on=on, how="left", validate="many_to_one")


def keep_existing_files(frame: pd.DataFrame, root: Path, flow: Flow) -> pd.DataFrame:
    """Drop rows whose ``path`` (relative to ``root``) is not an existing file."""
    exists = [(root / path).is_file() for path in frame["path"]]
    return flow.keep(frame, exists, "DICOM file missing")


# -- split --------------------------------------------------------------------------------------------


def check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    """Split fractions as given, if there are three, none negative, summing to 1."""
    values = tuple(float(f) for f in fractions)
    shown = " ".join(f"{f:g}" for f in values)
    if len(values) != len(SPLIT_NAMES) or not all(math.isfinite(f) and f >= 0 for f in values):
        raise CohortError(f"--split {shown}: need three non-negative fractions (train val test)")
    if not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise CohortError(f"--split {shown}: fractions must sum to 1 (they sum to {sum(values):g})")
    return values


def patient_split(patients: pd.Series, fractions: Sequence[float], seed: int) -> pd.Series:
    """The split name of each row, assigning whole patients (see the module docstring for the rule)."""
    ids = np.sort(patients.astype(str).unique())
    shuffled = ids[np.random.default_rng(seed).permutation(len(ids))]
    bounds = np.rint(np.cumsum(fractions) * len(ids)).astype(int)
    bounds[-1] = len(ids)
    names: dict[str, str] = {}
    start = 0
    for name, stop in zip(SPLIT_NAMES, bounds, strict=True):
        names.update(dict.fromkeys(shuffled[start:stop], name))
        start = max(start, stop)
    return patients.astype(str).map(names)


# -- output -------------------------------------------------------------------------------------------


def flow_path(out: Path) -> Path:
    """``<cohort stem>_flow.csv`` beside the cohort table."""
    stem = out.name.removesuffix(".gz").removesuffix(".csv")
    return out.with_name(f"{stem}_flow.csv")


def summary(cohort: pd.DataFrame, attributes: Sequence[str]) -> str:
    """One line: images and patients per split, images per attribute value, age range."""
    parts = [f"cohort: {len(cohort)} images of {cohort['patient'].nunique()} patients"]
    by_split = cohort.groupby("split")["patient"].agg(["size", "nunique"])
    parts.append(
        "split "
        + ", ".join(
            f"{name} {by_split.loc[name, 'size'] if name in by_split.index else 0} images"
            f"/{by_split.loc[name, 'nunique'] if name in by_split.index else 0} patients"
            for name in SPLIT_NAMES
        )
    )
    for attribute in attributes:
        counts = cohort[attribute].value_counts().sort_index()
        parts.append(f"{attribute} " + ", ".join(f"{value} {n}" for value, n in counts.items()))
    if len(cohort):
        age = cohort["age"]
        parts.append(f"age {age.min():.1f}-{age.max():.1f} (mean {age.mean():.1f})")
    return " | ".join(parts)


# -- command line -------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: ``prog: error: message``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The options both builders take."""
    parser = _Parser(prog=prog, description=description)
    parser.add_argument("--root", type=Path, required=True, help="folder holding the export's tables and files")
    parser.add_argument("--out", type=Path, required=True, help="cohort CSV to write (flow table beside it)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the patient-level split")
    parser.add_argument(
        "--split",
        type=float,
        nargs=3,
        default=DEFAULT_SPLIT,
        metavar=("TRAIN", "VAL", "TEST"),
        help="fractions of patients per split, summing to 1 (default: 0.6 0.1 0.3)",
    )
    parser.add_argument(
        "--no-check-files",
        dest="check_files",
        action="store_false",
        help="do not drop rows whose DICOM file is missing (table-only use)",
    )
    return parser


def run_cli(
    prog: str,
    description: str,
    build: Builder,
    columns: Sequence[str],
    attributes: Sequence[str],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse options, build the cohort, split it, write cohort and flow table, print both; exit status."""
    args = make_parser(prog, description).parse_args(argv)
    try:
        fractions = check_fractions(args.split)
        cohort, flow = build(args.root, args.check_files)
        cohort = cohort.assign(split=patient_split(cohort["patient"], fractions, args.seed))
        cohort = cohort.sort_values(["patient", "study", "image_id"], kind="stable")[list(columns)]
        write_outputs(cohort, flow.table(), args.out)
    except CohortError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    print(flow.table().to_string(index=False))
    if not args.check_files:
        print("(DICOM files not checked: --no-check-files)")
    print(summary(cohort, attributes))
    print(f"wrote {args.out} and {flow_path(args.out)}")
    return 0


def write_outputs(cohort: pd.DataFrame, flow: pd.DataFrame, out: Path) -> None:
    """Write the cohort and, beside it, the flow table (each atomically)."""
    try:
        write_csv_atomic(out, cohort)
        write_csv_atomic(flow_path(out), flow)
    except OSError as error:
        raise CohortError(f"cannot write {out}: {error.strerror or error}") from None
