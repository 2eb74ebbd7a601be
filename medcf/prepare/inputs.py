"""The inputs of a dataset folder: every candidate DICOM file under it, with one rule for symbolic links."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from medcf.prepare.base import Rejected, dataset_file

logger = logging.getLogger("medcf.prepare")

#: files with these suffixes are never inputs (label tables, notes, pictures next to the DICOM files)
NOT_DICOM_SUFFIXES = {
    ".csv",
    ".gz",
    ".json",
    ".txt",
    ".md",
    ".png",
    ".jpg",
    ".jpeg",
    ".npy",
    ".nii",
    ".yaml",
    ".yml",
    ".log",
    ".zip",
    ".xlsx",
    ".pdf",
}


def discover_inputs(dataset_dir: Path) -> list[str]:
    """Relative paths (POSIX) of every candidate DICOM file under ``dataset_dir``, recursively, sorted.

    A candidate is any file whose suffix is not a known non-DICOM one (DICOM files often have no suffix,
    or odd ones); files that turn out not to be DICOM become rejected rows, never silently skipped. Names
    starting with a dot are skipped, files and folders alike.

    Symbolic links follow one rule (:func:`medcf.prepare.base.dataset_file`): a link whose target lies inside
    ``dataset_dir`` is followed (a linked folder is searched too; a link back to a folder above it, a loop,
    is not searched again); a link whose target lies outside, to a file or to a folder, is listed as it is, one
    candidate per link, and becomes a rejected ``outside_dataset`` row: nothing outside is listed or read.

    A folder that cannot be listed is logged as a warning (without its path) and its files are left out.

    Args:
        dataset_dir: the data set folder.

    Returns:
        The candidates' paths relative to ``dataset_dir``, with forward slashes, sorted.
    """
    root = Path(dataset_dir)
    found: list[str] = []
    pending = [(root, frozenset({_identity(root)}))]
    while pending:
        folder, above = pending.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as error:  # an unreadable folder: said once, without its path (paths hold patient IDs)
            logger.warning("a folder under dataset_dir cannot be listed (%s); its files are not inputs", error.strerror)
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            if _is_folder(entry):
                if entry.is_symlink() and not _inside(root, path.relative_to(root).as_posix()):
                    found.append(path.relative_to(root).as_posix())  # outside: a rejected row, never searched
                    continue
                identity = _identity(path)
                if identity not in above:  # a link back to a folder above is a loop
                    pending.append((path, above | {identity}))
            elif path.suffix.lower() not in NOT_DICOM_SUFFIXES:
                found.append(path.relative_to(root).as_posix())
    return sorted(found)


def _inside(dataset_dir: Path, source: str) -> bool:
    """Whether ``source`` resolves inside ``dataset_dir``: the rule of :func:`medcf.prepare.base.dataset_file`."""
    try:
        dataset_file(dataset_dir, source)
    except Rejected:
        return False
    return True


def _is_folder(entry: os.DirEntry) -> bool:
    """Whether a folder entry is a folder, through symbolic links (a broken or looping link is not)."""
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:
        return False


def _identity(folder: Path) -> tuple[int, int]:
    """(device, inode) of a folder, through symbolic links."""
    stat = folder.stat()
    return stat.st_dev, stat.st_ino
