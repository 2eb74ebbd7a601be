"""Matching input files to the rows of a cohort table written by ``data_prep``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd


@dataclass(frozen=True)
class CohortIndex:
    """Cohort rows by file path (relative to the data set root) and, as a fallback, by file stem."""

    by_path: dict[str, dict[str, Any]]
    by_stem: dict[str, dict[str, Any]]

    @classmethod
    def from_csv(cls, path: str | Path) -> CohortIndex:
        try:
            table = pd.read_csv(path, dtype={"patient": str, "study": str, "image_id": str})
        except (OSError, ValueError) as error:
            raise ValueError(f"cohort {path}: cannot read the table ({error})") from None
        if "path" not in table.columns:
            raise ValueError(f"cohort {path}: no 'path' column (write it with python -m data_prep.mimic_cxr/embed)")
        if table["path"].duplicated().any():
            duplicate = table.loc[table["path"].duplicated(), "path"].iloc[0]
            raise ValueError(f"cohort {path}: file {duplicate} has more than one row")
        rows = [{k: _clean(v) for k, v in row.items()} for row in table.to_dict("records")]
        by_path = {str(PurePosixPath(r.pop("path"))): r for r in rows}
        stems = pd.Series([PurePosixPath(p).stem for p in by_path])
        unique = set(stems[~stems.duplicated(keep=False)])
        by_stem = {PurePosixPath(p).stem: r for p, r in by_path.items() if PurePosixPath(p).stem in unique}
        return cls(by_path, by_stem)

    def labels_for(self, source: str) -> dict[str, Any] | None:
        """The cohort row of a file (its path relative to the data set root), or None."""
        row = self.by_path.get(source)
        if row is None:
            row = self.by_stem.get(PurePosixPath(source).stem)
        return row


def _clean(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value
