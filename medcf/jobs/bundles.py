"""Where medcf's MONAI bundles live, for configs run from anywhere (``bundle_root`` in their YAML), what every
config of a bundle shares (its ``configs/common.yaml``), where training finds its data, and how a failing bundle
run reports its error (one line)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import medcf
from medcf.radiograph.header import DEFAULT_MAX_PIXEL_BYTES

if TYPE_CHECKING:
    from medcf.prepare.base import Preparer

BUNDLE_NAMES = ("cxr_counterfactual", "mammo_counterfactual")


def bundle_root(name: str) -> str:
    """The folder of bundle ``name``: inside the medcf checkout (editable install), else ./bundles/<name>.

    Args:
        name: one of :data:`BUNDLE_NAMES`.

    Returns:
        The bundle's folder.

    Raises:
        ValueError: when ``name`` is not a bundle medcf ships.
    """
    if name not in BUNDLE_NAMES:
        raise ValueError(f"unknown bundle {name!r}; medcf ships {', '.join(BUNDLE_NAMES)}")
    in_checkout = Path(medcf.__file__).resolve().parents[1] / "bundles" / name
    return str(in_checkout if in_checkout.is_dir() else Path("bundles") / name)


#: The keys of a bundle's configs/common.yaml.
COMMON_KEYS = (
    "kind",
    "attributes",
    "files",
    "phantom_training_set",
    "guidance",
    "steps",
    "inversion_refinements",
    "max_pixel_bytes",
    "defaults",
)


def common(root: str | Path) -> dict[str, Any]:
    """The settings every config of the bundle at ``root`` shares (``configs/common.yaml``), its ``files``
    made absolute under ``root``. A config reads it once (``common: $medcf.jobs.bundles.common(@bundle_root)``)
    and takes its attributes, model files, phantom training set and guidance defaults from it.

    Args:
        root: the bundle's folder.

    Returns:
        The settings, one entry per key of :data:`COMMON_KEYS`; ``files`` maps each name to an absolute path.

    Raises:
        FileNotFoundError: when the bundle has no ``configs/common.yaml``.
        ValueError: when the file lacks a key of :data:`COMMON_KEYS` or has another key.
    """
    from monai.bundle import ConfigParser

    path = Path(root) / "configs" / "common.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (every bundle keeps its shared settings there)")
    settings = ConfigParser.load_config_file(path)
    missing = [key for key in COMMON_KEYS if key not in settings]
    unknown = sorted(set(settings) - set(COMMON_KEYS))
    if missing or unknown:
        raise ValueError(f"{path}: missing {missing or 'nothing'}, unknown {unknown or 'nothing'}")
    settings["files"] = {name: str(Path(root) / relative) for name, relative in settings["files"].items()}
    return settings


def preparer(
    kind: str,
    image_size: int | Sequence[int],
    max_pixel_bytes: int = DEFAULT_MAX_PIXEL_BYTES,
    square_crop: bool = False,
) -> Preparer:
    """The preparer of a bundle's kind, so that the two bundles' job configs name one target: chest X-rays
    (:class:`~medcf.prepare.ChestPreparer`, a square side) or mammograms (:class:`~medcf.prepare.MammoPreparer`,
    height and width).

    Args:
        kind: ``cxr`` or ``mammo`` (common.yaml's ``kind``).
        image_size: the side, or [height, width] (a chest size must be square).
        max_pixel_bytes: the pixel budget per file (default 128 MiB).
        square_crop: chest only: crop the centre square instead of squeezing the aspect ratio.

    Returns:
        The preparer.

    Raises:
        ValueError: for another kind, a chest size that is not square, or ``square_crop`` for mammograms.
    """
    from medcf.prepare import ChestPreparer, MammoPreparer

    if kind == "cxr":
        sides = [image_size] if isinstance(image_size, int) else list(image_size)
        if len(set(sides)) != 1:
            raise ValueError(f"image_size: {image_size!r}; a chest X-ray is prepared square (one side)")
        return ChestPreparer(sides[0], square_crop=square_crop, max_pixel_bytes=max_pixel_bytes)
    if kind == "mammo":
        if square_crop:
            raise ValueError("square_crop: mammograms keep their aspect ratio; leave it false")
        return MammoPreparer(image_size, max_pixel_bytes=max_pixel_bytes)
    raise ValueError(f"kind: {kind!r} is not a bundle kind (cxr or mammo)")


def training_manifest(
    manifest: str | Path | None, kind: str, phantom_dir: str | Path, phantom_n: int, image_size: int, seed: int
) -> str:
    """The preparation manifest a training bundle reads: ``manifest`` when given, else the bundle's phantom
    training set (made once in ``phantom_dir`` by the phantoms package; in a distributed run rank 0 makes it
    while the others wait). Training itself only ever sees this path.

    Args:
        manifest: a preparation manifest (``OUT/manifest.csv`` of prepare.yaml); None or empty: the phantom
            training set.
        kind: ``cxr`` or ``mammo``: the phantom of the training set.
        phantom_dir: the folder the phantom training set is made in (once).
        phantom_n: images of the phantom export (see :func:`medcf.jobs.phantom_sets.phantom_training_set`).
        image_size: the side of the prepared images, in pixels.
        seed: the phantom's seed.

    Returns:
        The manifest's path.

    Raises:
        FileNotFoundError: when ``manifest`` is given and is not a file.
    """
    if manifest:
        if not Path(manifest).is_file():
            raise FileNotFoundError(f"manifest: {manifest} is not a file (OUT/manifest.csv of prepare.yaml)")
        return str(manifest)
    from medcf.jobs.phantom_sets import phantom_training_set_once

    return str(phantom_training_set_once(kind, phantom_dir, phantom_n, image_size, seed))


#: Errors that describe a bad input or setting in their message: a bundle run ends with that one line.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, IsADirectoryError, PermissionError)


def one_line_errors() -> None:
    """Make a failing bundle run end with one line naming the setting and the problem (``medcf: ...``) instead of
    MONAI's chain of ConfigExpression tracebacks; the first entry of every bundle's ``run`` list. Only errors
    of :data:`USER_ERRORS` and medcf's own refusals are shortened; anything else, or any error with
    ``MEDCF_TRACEBACK=1`` in the environment, keeps its full traceback."""
    if getattr(sys.excepthook, "medcf", False) or os.environ.get("MEDCF_TRACEBACK") == "1":
        return
    default = sys.excepthook

    def hook(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
        line = one_line(error)
        if line is None:
            default(kind, error, trace)
            return
        print(line, file=sys.stderr)

    hook.medcf = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def one_line(error: BaseException) -> str | None:
    """The one line a bundle run that failed with ``error`` ends with.

    Args:
        error: what the run raised (MONAI wraps a setting's error in its own; the chain is searched).

    Returns:
        ``medcf: <the refusal's message>  (full traceback: MEDCF_TRACEBACK=1)``, or None when no error of the chain
        is a refusal for the user (the run then keeps its full traceback).
    """
    cause = _user_error(error)
    if cause is None:
        return None
    message = " ".join(str(cause).split()) or type(cause).__name__
    return f"medcf: {message}  (full traceback: MEDCF_TRACEBACK=1)"


def _user_error(error: BaseException) -> BaseException | None:
    """The innermost error of the chain that is a refusal with a message for the user, if any."""
    from medcf.jobs.prepare import NothingPreparedError
    from medcf.outputs.lock import OutputFolderInUse
    from medcf.prepare.cohort import CohortMatchError

    found, seen = None, set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (*USER_ERRORS, OutputFolderInUse, NothingPreparedError, CohortMatchError)):
            found = error
        # as Python prints a chain: the explicit cause, else the context unless ``raise ... from None`` hid it
        error = (
            error.__cause__
            if error.__cause__ is not None
            else (None if error.__suppress_context__ else error.__context__)
        )
    return found
