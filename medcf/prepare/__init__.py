"""Preparation of hospital radiographs for training: DICOM -> checked, normalised, resized arrays."""

from medcf.prepare.base import PreparedImage, Preparer, Rejected
from medcf.prepare.chest import ChestPreparer
from medcf.prepare.mammo import MammoPreparer
from medcf.prepare.runner import NothingPreparedError, PreparationRun

__all__ = [
    "ChestPreparer",
    "MammoPreparer",
    "NothingPreparedError",
    "PreparationRun",
    "PreparedImage",
    "Preparer",
    "Rejected",
]
