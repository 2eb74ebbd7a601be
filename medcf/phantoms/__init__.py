"""Causal phantoms: structural causal models that render chest X-rays and mammograms with known ground
truth, and writers that export them shaped like MIMIC-CXR and EMBED."""

from medcf.phantoms.cxr import CXR_SCHEMA, ChestXRayPhantom, CXRPopulation
from medcf.phantoms.dataset import make_phantom, write_phantom_dataset
from medcf.phantoms.mammo import MAMMO_SCHEMA, MammogramPhantom, MammoPopulation
from medcf.phantoms.scm import Phantom, Population, Subject

__all__ = [
    "CXR_SCHEMA",
    "MAMMO_SCHEMA",
    "ChestXRayPhantom",
    "CXRPopulation",
    "MammogramPhantom",
    "MammoPopulation",
    "Phantom",
    "Population",
    "Subject",
    "make_phantom",
    "write_phantom_dataset",
]
