"""The run manifest of a batch job: one row per item with its status, kept safe as rows finish.

Shared by the prepare and counterfactual jobs. Files in the job's output folder::

    manifest.csv      the table: the key columns, status (ok | rejected), reason, then the other columns
    .journal.jsonl    rows finished since the table was last saved, one JSON line each
    .journal.rankN.jsonl   the same, of rank N > 0 of a sharded job (torchrun)

A job writes an item's outputs first, then :meth:`RunManifest.record` appends its row to the journal and
flushes it, so a job killed at any moment loses at most the rows in flight. Opening a folder reads the table
and replays the journal; :meth:`RunManifest.save` rewrites the table atomically (every ``save_every``
seconds while rows come in, and when the job ends) and empties the journal. A re-run decides from the rows
which items are finished (see the jobs).

In a sharded job every rank records into its own journal and only rank 0 writes the table
(``writes_table``): rank 0 opens the folder first and saves (folding in whatever a killed run left in any
journal), the other ranks open it after that, and when they have finished rank 0 calls :meth:`collect` and
saves once more: one table, the same as a single process would have written.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from medcf.runtime.files import plain_json, write_csv_atomic

MANIFEST = "manifest.csv"
JOURNAL = ".journal.jsonl"
JOURNALS = ".journal*.jsonl"
STATUSES = ("ok", "rejected")


class RunManifest:
    """Rows by key, persisted in ``folder`` (see the module docstring).

    Args:
        folder: the job's output folder.
        key: the columns that identify a row (e.g. ``("source",)``, ``("image", "intervention")``).
        first: columns written first, in this order (the key, status and reason are always among them);
            the others follow sorted by name.
        save_every: seconds between rewrites of the table while rows are recorded.
        rank: this process's rank in a sharded job (its journal's name); writes_table: whether it rewrites
            manifest.csv (rank 0, or a single process).
    """

    def __init__(
        self,
        folder: str | Path,
        key: Sequence[str],
        first: Sequence[str] = (),
        save_every: float = 30.0,
        rank: int = 0,
        writes_table: bool = True,
    ):
        self.folder, self.key = Path(folder), tuple(key)
        self.first = tuple(dict.fromkeys((*self.key, "status", "reason", *first)))
        self.save_every, self.writes_table = save_every, writes_table
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / MANIFEST
        self.journal_path = self.folder / (JOURNAL if rank == 0 else f".journal.rank{rank}.jsonl")
        self.rows: dict[tuple[str, ...], dict[str, Any]] = {}
        self._collected: set[Path] = set()  # other journals folded into the rows: removed at the next save
        self._load()
        self._journal = open(self.journal_path, "a", encoding="utf-8")
        self._saved_at = time.monotonic()

    def key_of(self, row: Mapping[str, Any]) -> tuple[str, ...]:
        """The key of a row: its values of the key columns, as text.

        Args:
            row: a row with every key column.

        Returns:
            The key, in the order of ``key``.
        """
        return tuple(str(row[name]) for name in self.key)

    def get(self, *key: str) -> dict[str, Any] | None:
        """The row with this key.

        Args:
            *key: the values of the key columns, as text, in the order of ``key``.

        Returns:
            The row (values as text), or None when there is none.
        """
        return self.rows.get(tuple(key))

    def record(self, row: Mapping[str, Any]) -> None:
        """Add or replace a row; it is on disk (in the journal) when this returns.

        Saves the table too when ``save_every`` seconds have passed since the last save (only where this process
        writes the table).

        Args:
            row: column -> value, with the key columns, ``status`` (``"ok"`` or ``"rejected"``) and ``reason``;
                values are kept as text (see :func:`as_text`).

        Raises:
            ValueError: a key column, ``status`` or ``reason`` is missing, or the status is neither.
        """
        missing = [name for name in (*self.key, "status", "reason") if name not in row]
        if missing or row["status"] not in STATUSES:
            raise ValueError(f"manifest row needs {', '.join(missing) or 'a status in ' + str(STATUSES)}: {row}")
        text = {name: as_text(value) for name, value in row.items()}
        self._journal.write(json.dumps(text) + "\n")
        self._journal.flush()
        self.rows[self.key_of(text)] = text
        if self.writes_table and time.monotonic() - self._saved_at >= self.save_every:
            self.save()

    def retain(self, keep: Callable[[dict[str, Any]], bool]) -> None:
        """Drop the rows for which ``keep`` is false (e.g. inputs that are gone); saved with the next save.

        Args:
            keep: row -> whether to keep it.
        """
        self.rows = {key: row for key, row in self.rows.items() if keep(row)}

    def table(self) -> pd.DataFrame:
        """The rows sorted by key, the ``first`` columns first.

        Returns:
            The table, every value as text (missing ones empty); only the ``first`` columns when there are no rows.
        """
        ordered = [self.rows[key] for key in sorted(self.rows)]
        table = pd.DataFrame(ordered, columns=None if ordered else list(self.first))
        for name in self.first:
            if name not in table.columns:
                table[name] = ""
        return table[list(self.first) + sorted(c for c in table.columns if c not in self.first)].fillna("")

    def save(self) -> pd.DataFrame:
        """Rewrite manifest.csv atomically with every row, then empty the journal and remove the other journals
        folded in (a process that does not write the table keeps its journal: rank 0 collects it).

        Returns:
            The table (see :meth:`table`), also where this process does not write it.
        """
        table = self.table()
        if not self.writes_table:
            return table
        write_csv_atomic(self.path, table)
        self._journal.close()
        self._journal = open(self.journal_path, "w", encoding="utf-8")
        for path in self._collected:
            path.unlink(missing_ok=True)
        self._collected.clear()
        self._saved_at = time.monotonic()
        return table

    def collect(self) -> None:
        """Fold in the rows of the other journals in the folder (rank 0 of a sharded job, once every other rank
        has finished); they are removed at the next :meth:`save`."""
        for path in sorted(self.folder.glob(JOURNALS)):
            if path != self.journal_path:
                self._replay(path)

    def close(self) -> pd.DataFrame:
        """Save and close the journal.

        Returns:
            The table (see :meth:`save`).
        """
        table = self.save()
        self._journal.close()
        return table

    def __enter__(self) -> RunManifest:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _load(self) -> None:
        """The table, then every journal in the folder (this process's and what other ranks of a killed sharded
        run left): rows recorded after the last save."""
        if self.path.exists():
            table = pd.read_csv(self.path, keep_default_na=False, dtype=str, encoding_errors="surrogateescape")
            for row in table.to_dict("records"):
                self.rows[self.key_of(row)] = row
        self._replay(self.journal_path)
        if self.writes_table:
            self.collect()

    def _replay(self, path: Path) -> None:
        for row in _journal_rows(path):
            if all(name in row for name in self.key):
                self.rows[self.key_of(row)] = row
        if path != self.journal_path and path.exists():
            self._collected.add(path)


def as_text(value: Any) -> str:
    """A value as manifest.csv holds it, so that a row reads the same in memory, in the journal and after a
    reload: None and NaN as "", numpy scalars as Python values, everything as its ``str``.

    Args:
        value: a cell's value.

    Returns:
        The text.
    """
    value = plain_json(value) if getattr(value, "ndim", None) == 0 else value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _journal_rows(path: Path) -> Iterable[dict[str, Any]]:
    """The rows of a journal; a torn last line (a job killed while writing it) is skipped."""
    if not path.exists():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            yield row
