"""Preparation of hospital radiographs for training: DICOM -> checked, normalised, resized arrays."""

from medcf.prepare.base import PreparedImage, Preparer, Rejected
from medcf.prepare.chest import ChestPreparer
from medcf.prepare.mammo import MammoPreparer

__all__ = [
    "ChestPreparer",
    "MammoPreparer",
    "PreparedImage",
    "Preparer",
    "Rejected",
]
