"""Atomic file writes: a file is either complete or absent, never half-written.

Every writer in medcf (arrays, CSV and JSON files, figures, model files, DICOM) goes through
:func:`atomic_path`: it writes into a hidden temporary file beside the target and renames it into place
(``os.replace`` is atomic on one file system), so a crash or a kill never leaves a truncated output under the
real name. The temporary name keeps the target's suffixes (``.png``, ``.nii.gz``), which some writers read
to choose the format.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TEMPORARY_MARK = ".tmp"
"""Part of every temporary name (``.<name>.<token>.tmp<suffixes>``); a folder may be swept of them."""


@contextlib.contextmanager
def atomic_path(path: str | Path, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on any error it is removed.

    Args:
        path: the file to create or replace (its folder is created when missing).
        durable: fsync the finished file before the rename (for files that must survive a power cut).

    Yields:
        The hidden temporary path beside ``path``, keeping its suffixes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMPORARY_MARK}{''.join(path.suffixes)}")
    try:
        yield temporary
        if durable:
            with open(temporary, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically.

    Args:
        path: the file to create or replace (its folder is created when missing).
        text: the file's content.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    """Write ``payload`` as indented JSON atomically (numpy scalars and other objects as plain values).

    Args:
        path: the file to create or replace (its folder is created when missing).
        payload: the data; values ``json`` does not know go through :func:`plain_json`.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    return write_text_atomic(path, json.dumps(payload, indent=2, default=plain_json) + "\n")


def write_csv_atomic(path: str | Path, table: Any, mode: int | None = None) -> Path:
    """Write a pandas table as CSV (no index) atomically; ``mode`` sets the file's permissions (e.g. 0o600).

    Paths that are not valid UTF-8 (possible on Linux) are written byte for byte (``surrogateescape``).

    Args:
        path: the file to create or replace (its folder is created when missing).
        table: a pandas DataFrame (anything with ``to_csv``).
        mode: the file's permission bits; None: the default.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    with atomic_path(path) as temporary:
        table.to_csv(temporary, index=False, errors="surrogateescape")
        if mode is not None:
            os.chmod(temporary, mode)
    return Path(path)


def plain_json(value: Any) -> Any:
    """JSON for values ``json`` does not know: numpy scalars as Python numbers, anything else as text.

    Args:
        value: the value ``json`` could not encode (used as ``json.dumps(..., default=plain_json)``).

    Returns:
        ``value.item()`` for a 0-dimensional value with ``item``, else ``str(value)``.
    """
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", None) == 0:
        return item()
    return str(value)


def remove_temporaries(folder: str | Path) -> int:
    """Delete temporary files a killed writer left under ``folder`` (recursively); how many were removed.

    Args:
        folder: the folder to sweep.

    Returns:
        The number of files removed.
    """
    removed = 0
    for stale in Path(folder).rglob(f".*{TEMPORARY_MARK}*"):
        if stale.is_file():
            stale.unlink(missing_ok=True)
            removed += 1
    return removed


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (model and graph files are recorded by it).

    Args:
        path: the file.

    Returns:
        The digest as 64 hexadecimal characters.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
