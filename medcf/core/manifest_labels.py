"""The attribute labels of a preparation manifest, as training and the fitted causal graph read them: the rows a
model's attributes allow. A hospital's cohort can hold values the model was not made for (MIMIC-CXR's age at the
study, anchor age plus the years since, passes 95); such a row is left out with one warning that names the
manifest, how many rows and the first one's line and reason, and the job goes on. Paths are not logged: a hospital
export's paths hold patient and study IDs."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from medcf.core.attributes import AttributeSchema, SchemaError

logger = logging.getLogger("medcf")


def read_manifest(manifest: str | Path, split: str | None = None) -> pd.DataFrame:
    """The ``ok`` rows of a preparation manifest (of ``split`` when given and the manifest has splits).

    Args:
        manifest: the manifest CSV.
        split: keep only this split's rows; None keeps all.

    Returns:
        The rows, indexed by their position in the file (line = index + 2, after the header).
    """
    table = pd.read_csv(manifest, keep_default_na=False, na_values=[""])
    table = table[table["status"] == "ok"]
    if split is not None and "split" in table.columns:
        table = table[table["split"] == split]
    return table


def allowed_rows(table: pd.DataFrame, schema: AttributeSchema, manifest: str | Path) -> pd.DataFrame:
    """The rows whose attribute values ``schema`` allows; missing values are left for the caller to judge.

    Args:
        table: manifest rows (:func:`read_manifest`); the schema's attributes that are columns are checked.
        schema: the model's attributes (their values and ranges).
        manifest: the manifest's path, for the warning.

    Returns:
        ``table`` without the rows holding a value outside the schema (one warning when there are any).
    """
    names = [name for name in schema.names if name in table.columns]
    refused: dict[int, str] = {}
    for index, row in zip(table.index, table[names].to_dict("records"), strict=True):
        try:
            schema.validate({name: value for name, value in row.items() if not pd.isna(value)})
        except SchemaError as error:
            refused[index] = str(error)
    if refused:
        first = next(iter(refused))
        logger.warning(
            "%s: %d of %d rows left out, their labels are outside the model's attributes (first, line %d: %s)",
            manifest,
            len(refused),
            len(table),
            first + 2,
            refused[first],
        )
    return table.drop(index=list(refused))
