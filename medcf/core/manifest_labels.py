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
    refused = pd.Series("", index=table.index)  # the reason of each refused row: its first value not allowed
    for name in reversed([name for name in schema.names if name in table.columns]):  # the earliest attribute wins
        column = table[name]
        reasons = {value: _refusal(schema, name, value) for value in column.dropna().unique()}  # once per value
        reason = column.map(reasons).fillna("")
        refused = refused.where(reason == "", reason)
    refused = refused[refused != ""]
    if len(refused):
        first = refused.index[0]
        logger.warning(
            "%s: %d of %d rows left out, their labels are outside the model's attributes (first, line %d: %s)",
            manifest,
            len(refused),
            len(table),
            first + 2,
            refused[first],
        )
    return table.drop(index=refused.index)


def _refusal(schema: AttributeSchema, name: str, value: object) -> str:
    """Why ``schema`` does not allow ``value`` for ``name``; empty when it does."""
    try:
        schema[name].parse(value)
    except SchemaError as error:
        return str(error)
    return ""
