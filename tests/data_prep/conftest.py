"""What the cohort builders' tests share: a phantom export's tables copied (edited or gzipped) beside its image
folders, a builder run as a module, and the flow table's dropped rows."""

import gzip
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[2]
IDS = {"patient": str, "study": str, "image_id": str}

Edit = Callable[[pd.DataFrame], pd.DataFrame]


@dataclass(frozen=True)
class ModuleRun:
    returncode: int
    stdout: str
    stderr: str
    out: Path


def run_builder(module: str, root: Path, out: Path) -> ModuleRun:
    """The builder ``module`` run as ``python -m module --root ROOT --out OUT``."""
    command = [sys.executable, "-m", module, "--root", str(root), "--out", str(out)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    return ModuleRun(result.returncode, result.stdout, result.stderr, out)


def copy_tables(
    root: Path, dst: Path, edits: dict[str, Edit] | None = None, gz: bool = False, *, tables: Sequence[str]
) -> Path:
    """A copy of the export's ``tables`` (edited, or gzipped) beside links to its image folders."""
    dst.mkdir()
    for folder in root.iterdir():
        if folder.is_dir():
            (dst / folder.name).symlink_to(folder)
    for name in tables:
        table = pd.read_csv(root / name, dtype=str)
        table = (edits or {}).get(name, lambda t: t)(table)
        if gz:
            with gzip.open(dst / f"{name}.gz", "wt") as stream:
                table.to_csv(stream, index=False)
        else:
            table.to_csv(dst / name, index=False)
    return dst


def dropped(flow: pd.DataFrame, reason: str) -> int:
    """Rows the flow table says were dropped for ``reason``."""
    return int(flow.loc[flow["reason"] == reason, "rows_dropped"].sum())
