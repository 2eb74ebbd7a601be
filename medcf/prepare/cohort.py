"""Matching input files to the rows of a cohort table written by ``data_prep``.

A file's row is the one whose ``path`` equals the file's path relative to the data set folder. A cohort may
also carry a ``sop_instance_uid`` column: then a file whose path has no row is matched by the SOP Instance
UID in its header, and a path match whose UID names another image is refused. A match by file name alone is
never made: two patients' files often share a name (``1.dcm``, ``image.dcm``), and their labels must not be
swapped. A file with no row, or with more than one, gets no labels and the reason why.
"""

from __future__ import annotations

import math
import posixpath
import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

UID_COLUMN = "sop_instance_uid"


class CohortMatchError(LookupError):
    """A file has no cohort row, or more than one; ``reason`` is one line for the manifest.

    Args:
        reason: why the file has no labels, one line without the file's path (kept as ``reason``).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def normalise_path(path: str) -> str:
    """A relative POSIX path in one spelling: backslashes as slashes, no ``./`` or ``a/../`` parts, Unicode in
    composed form (a table written on macOS spells accented names decomposed).

    Args:
        path: a path relative to the data set folder, as a cohort table or the folder listing spells it.

    Returns:
        The path in NFC, normalised with ``posixpath.normpath``.
    """
    return unicodedata.normalize("NFC", posixpath.normpath(str(path).replace("\\", "/")))


@dataclass(frozen=True)
class CohortIndex:
    """Cohort rows by file path (relative to the data set folder) and, when the table has the column, by
    SOP Instance UID. Several rows under one key are kept so that the ambiguity can be reported.

    Attributes:
        by_path: normalised path (see :func:`normalise_path`) -> the rows with that path, without their ``path``.
        by_uid: SOP Instance UID (stripped) -> the rows with that UID; None when the table has no
            ``sop_instance_uid`` column.
    """

    by_path: dict[str, list[dict[str, Any]]]
    by_uid: dict[str, list[dict[str, Any]]] | None = None

    @classmethod
    def from_csv(cls, path: str | Path) -> CohortIndex:
        """The index of a cohort table written by ``data_prep``.

        Args:
            path: the CSV file. It needs a ``path`` column, read verbatim (``00012`` and ``NA`` stay text);
                ``patient``, ``study``, ``image_id`` and ``sop_instance_uid`` are read as text. With a
                ``sop_instance_uid`` column the rows are also indexed by UID.

        Returns:
            The index (see :meth:`from_records`).

        Raises:
            ValueError: the file cannot be read as a table, or has no ``path`` column (one line naming the file).
        """
        try:
            table = pd.read_csv(path, dtype={"patient": str, "study": str, "image_id": str, UID_COLUMN: str})
            if "path" not in table.columns:
                raise ValueError("no 'path' column (write it with python -m data_prep.mimic_cxr/embed)")
            # paths verbatim: a file named 00012 or NA is not the number 12 or a missing value
            table["path"] = pd.read_csv(path, usecols=["path"], dtype=str, keep_default_na=False)["path"]
        except (OSError, ValueError) as error:
            raise ValueError(f"cohort {path}: cannot read the table ({error})") from None
        return cls.from_records(table.to_dict("records"), with_uid=UID_COLUMN in table.columns)

    @classmethod
    def from_records(cls, records: list[dict[str, Any]], with_uid: bool = False) -> CohortIndex:
        """The index of cohort rows given as dictionaries.

        Args:
            records: the rows, each with a ``path`` relative to the data set folder; NaN values become None.
            with_uid: also index the rows by ``sop_instance_uid`` (rows without one are only indexed by path).

        Returns:
            The index; ``by_uid`` is None without ``with_uid``.
        """
        by_path: dict[str, list[dict[str, Any]]] = defaultdict(list)
        by_uid: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in records:
            row = {k: _clean(v) for k, v in record.items()}
            by_path[normalise_path(row.pop("path"))].append(row)
            if with_uid and row.get(UID_COLUMN):
                by_uid[str(row[UID_COLUMN]).strip()].append(row)
        return cls(dict(by_path), dict(by_uid) if with_uid else None)

    def labels_for(self, source: str, sop_instance_uid: str | None = None) -> dict[str, Any]:
        """The cohort row of a file, given its path relative to the data set folder and (optionally) the SOP
        Instance UID from its header.

        Args:
            source: the file's path relative to the data set folder.
            sop_instance_uid: SOPInstanceUID (0008,0018) from the file's header. With a UID column it finds the
                row when no row has the path, and refuses a path match whose row lists another UID.

        Returns:
            A copy of the file's row, without its ``path``.

        Raises:
            CohortMatchError: no row, several rows, or a row whose UID is another image's.
        """
        rows = self.by_path.get(normalise_path(source), [])
        if len(rows) > 1:
            raise CohortMatchError(f"ambiguous labels: {len(rows)} cohort rows have this file's path")
        if rows:
            row = rows[0]
            listed = str(row.get(UID_COLUMN) or "").strip()
            if self.by_uid is not None and listed and sop_instance_uid and listed != sop_instance_uid:
                raise CohortMatchError(
                    f"wrong labels: the cohort row for this path names another image ({UID_COLUMN} differs "
                    "from the file's SOPInstanceUID)"
                )
            return dict(row)
        if self.by_uid is None:
            raise CohortMatchError("not in the cohort table (no row with this path relative to dataset_dir)")
        matches = self.by_uid.get(sop_instance_uid or "", [])
        if len(matches) > 1:
            raise CohortMatchError(f"ambiguous labels: {len(matches)} cohort rows have this file's {UID_COLUMN}")
        if not matches:
            raise CohortMatchError(
                f"not in the cohort table (no row with this path relative to dataset_dir, nor this {UID_COLUMN})"
            )
        return dict(matches[0])


def _clean(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value
